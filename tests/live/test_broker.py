"""lib/messaging/broker.py against the real ActiveMQ, and scripts/activemq.sh.

BrokerTest: BrokerLinks on the run's own broker (tests/broker_instance.py:
tests.support.BROKER, logged in with NP_BROKER_USER / NP_BROKER_PASSWORD).
Destinations are named as the social service names them (lib/social/commands.py
`Context`); tests/pure/test_broker_link.py checks those names and the link's
logic with a fake connection. Each BrokerLink runs on its own Reactor in a
background thread of this test process (as the app server does); the test
thread talks to a reactor only through `Loop.call`. Some tests stop and
restart the run's broker (never the machine's); they leave it running.

ActivemqScriptTest: the script on a throwaway Debian instance of its own
(NP_BROKER_INSTANCE=nptest-PID on a free port, removed at the end; needs
root); never the machine's `main`. NonRootTest: the one line a user without
root gets.
"""
import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

import stomp

from tests.support import ROOT  # noqa: E402
sys.path.insert(0, ROOT)

from lib.messaging import broker, credentials  # noqa: E402
from lib.loop.reactor import Reactor  # noqa: E402
from lib.social.commands import Context  # noqa: E402
from tests import broker_instance  # noqa: E402
from tests.live.test_broker_auth import connect, listening_ports  # noqa: E402
from tests.support import BROKER, accepts, alive, disturbs_broker, holds_for, own_broker, wait_for  # noqa: E402

SCRIPT = os.path.join(ROOT, "scripts", "activemq.sh")
HOST, PORT = broker.parse_address(BROKER)
NAMES = Context()   # random destinations, as the servers make them


def login():
    """The run's broker credentials (None: no login headers)."""
    return credentials.from_env(os.environ)


class Loop:
    """A Reactor running in a background thread of the test process."""

    def __init__(self):
        self.reactor = Reactor()
        self.thread = threading.Thread(target=self.reactor.run, daemon=True)
        self.thread.start()

    def call(self, fn, *args):
        """Run fn(*args) on the reactor thread and return its result."""
        box, ready = [], threading.Event()

        def run():
            try:
                box.append((fn(*args), None))
            except Exception as e:  # handed back to the test thread
                box.append((None, e))
            ready.set()
        self.reactor.call_soon_threadsafe(run)
        if not ready.wait(5):
            raise AssertionError("reactor did not run %r" % fn)
        result, error = box[0]
        if error:
            raise error
        return result

    def stop(self):
        self.reactor.call_soon_threadsafe(self.reactor.stop)
        self.thread.join(5)


class Client:
    """A BrokerLink on its own Loop, recording what its callbacks saw."""

    def __init__(self, name):
        self.loop = Loop()
        self.messages = []          # (destination, body, headers)
        self.states = []            # (monotonic time, connected)
        self.link = broker.BrokerLink(
            self.loop.reactor, HOST, PORT, on_message=self._on_message,
            on_state=self._on_state, name=name, credentials=login())
        self.loop.call(self.link.start)

    def _on_message(self, destination, body, headers):
        self._check_thread()
        self.messages.append((destination, body, headers))

    def _on_state(self, connected):
        self._check_thread()
        self.states.append((time.monotonic(), connected))

    def _check_thread(self):
        if threading.current_thread() is not self.loop.thread:
            self.messages.append(("WRONG THREAD", "", {}))

    def wait_connected(self, timeout=10):
        return wait_for(lambda: self.link.connected, timeout)

    def publish(self, destination, body, persistent=False, timeout=5.0):
        """Publish on the loop; returns a list that receives (ok, error, seconds, thread ok)."""
        results = []

        def go():
            t0 = time.monotonic()
            self.link.publish(destination, body, persistent, lambda ok, err: results.append(
                (ok, err, time.monotonic() - t0, threading.current_thread() is self.loop.thread)),
                timeout=timeout)
        self.loop.call(go)
        return results

    def publish_wait(self, destination, body, persistent=False, timeout=10):
        results = self.publish(destination, body, persistent)
        if not wait_for(lambda: results, timeout):
            raise AssertionError("publish got no done() within %s s" % timeout)
        return results[0]

    def subscribe_wait(self, destination, timeout=10):
        results = []
        self.loop.call(self.link.subscribe, destination, lambda ok, err: results.append((ok, err)))
        if not wait_for(lambda: results, timeout):
            raise AssertionError("subscription to %s not confirmed" % destination)
        return results[0]

    def bodies(self, destination=None):
        return [b for d, b, _ in self.messages if destination in (None, d)]

    def close(self):
        self.loop.call(self.link.close)
        self.loop.stop()


class BrokerTest(unittest.TestCase):

    @classmethod
    def tearDownClass(cls):
        broker_now = own_broker()
        if broker_now is not None and not broker_now.running():
            broker_now.start()      # whatever happened, leave the run's broker running

    def setUp(self):
        self.clients = []

    def tearDown(self):
        for client in self.clients:
            client.close()

    def client(self, name):
        client = Client(name)
        self.clients.append(client)
        self.assertTrue(client.wait_connected(), "%s never connected" % name)
        return client

    # -- publish / subscribe --------------------------------------------------------
    def test_queue_publish_with_receipt(self):
        pub, sub = self.client("pub"), self.client("sub")
        queue = NAMES.new_queue()
        self.assertEqual(sub.subscribe_wait(queue), (True, None))
        ok, err, latency, on_loop = pub.publish_wait(queue, "hello ünïcode", persistent=True)
        self.assertEqual((ok, err), (True, None))
        self.assertTrue(on_loop, "done() must run on the reactor thread")
        self.assertTrue(wait_for(lambda: sub.messages, 5), "message not delivered")
        destination, body, headers = sub.messages[0]
        self.assertEqual((destination, body), (queue, "hello ünïcode"))
        self.assertEqual(headers.get("persistent"), "true")
        # Subscribing again is a no-op (no duplicate delivery) and confirms at once.
        self.assertEqual(sub.subscribe_wait(queue), (True, None))
        latencies = []
        for i in range(50):
            ok, err, latency, _ = pub.publish_wait(queue, "m%d" % i, persistent=True)
            self.assertTrue(ok, err)
            latencies.append(latency)
        self.assertTrue(wait_for(lambda: len(sub.messages) == 51, 5))
        self.assertEqual(sub.bodies()[1:], ["m%d" % i for i in range(50)])
        latencies.sort()
        print("\n  persistent publish->receipt: median %.2f ms, max %.2f ms"
              % (latencies[25] * 1000, latencies[-1] * 1000), file=sys.stderr)

    def test_topic_fanout(self):
        pub, a, b = self.client("pub"), self.client("a"), self.client("b")
        topic = NAMES.new_topic()
        self.assertEqual(a.subscribe_wait(topic), (True, None))
        self.assertEqual(b.subscribe_wait(topic), (True, None))
        ok, err, _, _ = pub.publish_wait(topic, "to everyone")
        self.assertTrue(ok, err)
        for client in (a, b):
            self.assertTrue(wait_for(lambda: client.messages, 5))
            self.assertEqual(client.bodies(), ["to everyone"])
        # After unsubscribe, `b` gets nothing more; `a` still does.
        b.loop.call(b.link.unsubscribe, topic)
        # UNSUBSCRIBE carries no receipt, but the broker handles one
        # connection's frames in order: the receipt of a later frame from `b`
        # (a publish to a topic nobody reads) says the UNSUBSCRIBE has landed.
        self.assertEqual(b.publish_wait(NAMES.new_topic(), "fence")[:2], (True, None))
        self.assertTrue(pub.publish_wait(topic, "second")[0])
        self.assertTrue(wait_for(lambda: len(a.messages) == 2, 5))
        # Marker: `b` subscribes again and `pub` publishes once more. The
        # broker dispatches one topic's messages in publish order over `b`'s
        # one connection, so once "third" is in, "second" would be too.
        self.assertEqual(b.subscribe_wait(topic), (True, None))
        self.assertTrue(pub.publish_wait(topic, "third")[0])
        self.assertTrue(wait_for(lambda: "third" in b.bodies(), 5), "the marker never reached b")
        self.assertEqual(b.bodies(), ["to everyone", "third"])
        self.assertTrue(wait_for(lambda: len(a.messages) == 3, 5))
        self.assertEqual(a.bodies(), ["to everyone", "second", "third"])
        self.assertNotIn("WRONG THREAD", [m[0] for m in a.messages + b.messages])

    def test_guessable_names_receive_nothing(self):
        """A STOMP client subscribing to /queue/<username> or /topic/<group>
        sees nothing of what BrokerLink sends to the random names."""
        pub, sub = self.client("pub"), self.client("sub")
        queue, topic = NAMES.new_queue(), NAMES.new_topic()
        self.assertTrue(sub.subscribe_wait(queue)[0])
        self.assertTrue(sub.subscribe_wait(topic)[0])

        snoop = stomp.Connection12([(HOST, PORT)])
        snooped = []
        receipts = threading.Event()

        class Snoop(stomp.ConnectionListener):
            def on_message(self, frame):
                snooped.append(frame.body)

            def on_receipt(self, frame):
                if frame.headers.get("receipt-id") == "snoop-last":
                    receipts.set()
        snoop.set_listener("snoop", Snoop())
        creds = login()
        snoop.connect(creds.user, creds.password, wait=True)
        try:
            guesses = ["/queue/alice", "/queue/np.u.alice", "/topic/friends",
                       "/topic/np.g.friends", "/queue/np.alice", "/topic/friends.alice"]
            for i, destination in enumerate(guesses):
                receipt = "snoop-last" if i == len(guesses) - 1 else "snoop-%d" % i
                snoop.subscribe(destination, id="g%d" % i, ack="auto", headers={"receipt": receipt})
            self.assertTrue(receipts.wait(5))
            for destination in (queue, topic):
                self.assertTrue(pub.publish_wait(destination, "secret for alice", True)[0])
            self.assertTrue(wait_for(lambda: len(sub.messages) == 2, 5))
            # Markers: one to each guessed name, published after the secrets
            # and by the same connection. A destination's messages reach its
            # subscriber in order, so once every marker is in, a secret that
            # had gone to a guessed name would be in too.
            markers = ["marker for %s" % destination for destination in guesses]
            for destination, marker in zip(guesses, markers):
                self.assertTrue(pub.publish_wait(destination, marker)[0])
            self.assertTrue(wait_for(lambda: set(markers) <= set(snooped), 5),
                            "markers missing: %r" % snooped)
            self.assertEqual(sorted(snooped), sorted(markers))   # nothing but the markers
        finally:
            snoop.disconnect()
        self.assertEqual(sub.bodies(), ["secret for alice"] * 2)

    # -- failures ---------------------------------------------------------------
    def test_outstanding_publishes_fail_exactly_once(self):
        pub, sub = self.client("pub"), self.client("sub")
        queue = NAMES.new_queue()
        calls = {}

        def burst():
            for i in range(20):
                pub.link.publish(queue, "x%d" % i, True,
                                 lambda ok, err, i=i: calls.setdefault(i, []).append((ok, err)))
            # Same reactor turn: no receipt can have arrived yet. Drop the link.
            pub.link._on_lost(pub.link._gen, "simulated loss")
        pub.loop.call(burst)
        self.assertTrue(wait_for(lambda: len(calls) == 20, 5))
        # Receipts of the dead connection may still come in: for 0.5 s, and
        # at every moment of it, each publish has had done() exactly once.
        self.assertTrue(holds_for(lambda: len(calls) == 20 and all(len(r) == 1 for r in calls.values()),
                                  0.5), "done() ran again: %r" % calls)
        self.assertEqual(sorted(calls), list(range(20)))
        for results in calls.values():
            self.assertEqual(results, [(False, "simulated loss")])
        self.assertTrue(pub.wait_connected(5), "no reconnect after a simulated loss")
        self.assertTrue(pub.publish_wait(queue, "after", True)[0])
        del sub

    @disturbs_broker
    def test_zz_broker_down_then_back(self):
        """Publishing while the broker is stopped fails at the publish's
        timeout, never sent (it waits that long for the link to come back);
        when the broker comes back the link reconnects and resubscribes by
        itself, and a publish made just before is sent then."""
        pub, sub = self.client("pub"), self.client("sub")
        queue = NAMES.new_queue()
        self.assertTrue(sub.subscribe_wait(queue)[0])
        try:
            own_broker().stop()
            self.assertTrue(wait_for(lambda: not pub.link.connected, 10), "link did not notice")
            t0 = time.monotonic()
            ok, err, latency, _ = pub.publish_wait(queue, "lost", True, timeout=10)
            self.assertEqual((ok, err), (False, "broker not connected"))
            self.assertTrue(4.5 < time.monotonic() - t0 < 8, time.monotonic() - t0)   # BrokerLink's 5 s
            # Not a wait for a condition: the behaviour under test is a stretch
            # of time with the broker gone (the links retry every 0.2, 0.4,
            # 0.8 s...), after which both links are still alive and still
            # report themselves down.
            time.sleep(1.0)
            self.assertEqual(pub.states[-1][1], False)
            self.assertEqual(sub.states[-1][1], False)
            early = pub.publish(queue, "early", True)   # held while the link is down
        finally:
            own_broker().start()
        up = time.monotonic()
        self.assertTrue(pub.wait_connected(10) and sub.wait_connected(10))
        print("\n  reconnect after broker start: %.2f s" % (time.monotonic() - up), file=sys.stderr)
        self.assertTrue(self.publish_until_delivered(pub, sub, queue, "back"))
        if early and early[0][0]:   # it went out within its 5 s: delivered, never "lost"
            self.assertTrue(wait_for(lambda: "early" in sub.bodies(queue), 10))
        self.assertNotIn("lost", sub.bodies(queue))

    @disturbs_broker
    def test_zz_restart_reconnects_and_resubscribes(self):
        pub, sub = self.client("pub"), self.client("sub")
        queue, topic = NAMES.new_queue(), NAMES.new_topic()
        self.assertTrue(sub.subscribe_wait(queue)[0])
        self.assertTrue(sub.subscribe_wait(topic)[0])
        t0 = time.monotonic()
        own_broker().restart()
        restarted = time.monotonic()
        self.assertTrue(wait_for(lambda: len(pub.states) >= 3 and pub.link.connected, 10),
                        "publisher did not reconnect: %r" % pub.states)
        self.assertTrue(wait_for(lambda: len(sub.states) >= 3 and sub.link.connected, 10))
        print("\n  restart: %.2f s, links up %.2f s after it returned"
              % (restarted - t0, max(pub.states[-1][0], sub.states[-1][0]) - restarted),
              file=sys.stderr)
        self.assertEqual([s for _, s in pub.states], [True, False, True])
        self.assertTrue(self.publish_until_delivered(pub, sub, queue, "after restart"))
        self.assertTrue(self.publish_until_delivered(pub, sub, topic, "topic after restart"))

    @disturbs_broker
    def test_zz_persistent_message_survives_restart(self):
        pub = self.client("pub")
        queue = NAMES.new_queue()
        self.assertEqual(pub.publish_wait(queue, "kept", persistent=True)[:2], (True, None))
        self.assertEqual(pub.publish_wait(queue, "dropped", persistent=False)[:2], (True, None))
        own_broker().restart()
        sub = self.client("late-sub")
        self.assertTrue(sub.subscribe_wait(queue)[0])
        self.assertTrue(wait_for(lambda: sub.messages, 5), "persistent message lost")
        # Marker: a message queued after the restart comes after anything the
        # queue kept through it, so once it is in, "dropped" would be too.
        self.assertTrue(pub.wait_connected(10), "publisher did not reconnect after the restart")
        self.assertEqual(pub.publish_wait(queue, "marker", persistent=True)[:2], (True, None))
        self.assertTrue(wait_for(lambda: "marker" in sub.bodies(), 5), "the marker never arrived")
        self.assertEqual(sub.bodies(), ["kept", "marker"])

    def publish_until_delivered(self, pub, sub, destination, body):
        """The subscription is restored right after CONNECTED, but a topic
        message published before its SUBSCRIBE lands is not kept: retry a
        few times, as an application would see it."""
        for attempt in range(20):
            text = "%s #%d" % (body, attempt)
            if pub.publish_wait(destination, text)[0] and \
                    wait_for(lambda: text in sub.bodies(destination), 0.5):
                return True
        return False


# ------------------------------------------------------------------------------------
INSTANCE = f"nptest-{os.getpid()}"   # never `main`: that is the machine's broker
# An install from before logins were required: OpenWire, STOMP, no plugin
# (what scripts/activemq.sh wrote until issue 12), with our ports.
OLD_XML = """<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
    <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>
    <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false" brokerName="localhost"
            dataDirectory="${{activemq.base}}/data">
        <persistenceAdapter><kahaDB directory="${{activemq.base}}/data/kahadb"/></persistenceAdapter>
        <transportConnectors>
            <transportConnector name="openwire" uri="tcp://127.0.0.1:{openwire}"/>
            <transportConnector name="stomp" uri="stomp://127.0.0.1:{stomp}"/>
        </transportConnectors>
    </broker>
</beans>
"""


def as_nobody():
    """argv prefix that drops root (setpriv), or [] when we are not root."""
    if os.geteuid() != 0:
        return []
    nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    return ["setpriv", f"--reuid={nobody}", f"--regid={nogroup}", "--clear-groups"]


def script(command, *args, port, creds=None, instance=INSTANCE, prefix=(), extra_env=None):
    """Run scripts/activemq.sh on `instance`; the run's own credentials are
    taken out of the environment, `creds` put in. -> CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NP_BROKER_")}
    env.update(NP_BROKER_INSTANCE=instance, NP_BROKER_PORT=str(port), **(extra_env or {}))
    if creds is not None:
        env.update(credentials.env(creds))
    return subprocess.run([*prefix, SCRIPT, command, *args], env=env, capture_output=True,
                          text=True, timeout=240)


def login_answer(port, creds=None):
    answer, session = connect("127.0.0.1", port, *((creds.user, creds.password) if creds else ()))
    session.close()
    return answer[0] if answer else None


@unittest.skipUnless(os.path.isfile(broker_instance.JAR), "the activemq package is not installed")
class ActivemqScriptTest(unittest.TestCase):
    """ensure / start / stop / restart / purge on a throwaway instance."""

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root: makes a throwaway Debian instance of ActiveMQ")
        cls.port = broker_instance.free_port()
        cls.creds = credentials.generate()
        cls.pidfile = f"/var/run/activemq/{INSTANCE}.pid"
        t0 = time.monotonic()
        proc = script("ensure", port=cls.port, creds=cls.creds)
        if proc.returncode != 0:
            script("purge", port=cls.port)
            raise AssertionError(f"ensure of a new instance failed: {proc.stderr}")
        print(f"\n  first ensure of instance {INSTANCE}: {time.monotonic() - t0:.2f} s",
              file=sys.stderr)

    @classmethod
    def tearDownClass(cls):
        proc = script("purge", port=cls.port)
        assert proc.returncode == 0, proc.stderr

    def pid(self):
        with open(self.pidfile) as f:
            return int(f.read())

    def ensure(self, creds=None, **kwargs):
        proc = script("ensure", port=self.port, creds=creds or self.creds, **kwargs)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertNotIn((creds or self.creds).password, proc.stdout + proc.stderr)
        return proc

    def test_ensure_is_idempotent_and_fast_when_all_is_in_place(self):
        pid = self.pid()
        self.ensure()
        times = []
        for _ in range(5):
            t0 = time.monotonic()
            proc = self.ensure()
            times.append(time.monotonic() - t0)
            self.assertEqual(proc.stderr, "")        # nothing to say, nothing done
        self.assertEqual(self.pid(), pid)
        self.assertEqual(script("status", port=self.port).returncode, 0)
        print("\n  `activemq.sh ensure`, all in place: median %.1f ms" % (sorted(times)[2] * 1000),
              file=sys.stderr)

    def test_the_instance_requires_a_login_and_speaks_stomp_only(self):
        self.assertEqual(login_answer(self.port, self.creds), "CONNECTED")
        self.assertEqual(login_answer(self.port), "ERROR")
        self.assertEqual(login_answer(self.port, credentials.Credentials(
            self.creds.user, self.creds.password[::-1])), "ERROR")
        self.assertEqual(listening_ports(self.pid()), [self.port])
        users = os.stat(f"/etc/activemq/instances-available/{INSTANCE}/users.properties")
        self.assertEqual((users.st_mode & 0o777, users.st_uid, users.st_gid),
                         (0o640, 0, grp.getgrnam("activemq").gr_gid))

    def test_a_new_user_needs_no_restart(self):
        pid = self.pid()
        newcomer = credentials.generate()
        self.assertEqual(login_answer(self.port, newcomer), "ERROR")
        self.ensure(newcomer)
        self.assertEqual(self.pid(), pid)
        self.assertEqual(login_answer(self.port, newcomer), "CONNECTED")
        self.assertEqual(login_answer(self.port, self.creds), "CONNECTED")   # the first one stays
        # a changed password replaces the old one
        changed = credentials.Credentials(newcomer.user, credentials.generate().password)
        self.ensure(changed)
        self.assertEqual(login_answer(self.port, changed), "CONNECTED")
        self.assertEqual(login_answer(self.port, newcomer), "ERROR")
        self.assertEqual(self.pid(), pid)

    def test_credentials_from_a_file(self):
        newcomer = credentials.generate()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "broker.credentials")
            credentials.write_new(path, newcomer)
            proc = script("ensure", path, port=self.port)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(login_answer(self.port, newcomer), "CONNECTED")

    def test_without_root_a_present_user_passes_and_a_new_one_gets_one_line(self):
        """Non-root users cannot read users.properties: the script asks the
        broker whether the login works."""
        proc = script("ensure", port=self.port, creds=self.creds, prefix=as_nobody())
        self.assertEqual((proc.returncode, proc.stderr), (0, ""))
        proc = script("ensure", port=self.port, creds=credentials.generate(), prefix=as_nobody())
        self.assertEqual(proc.returncode, 4)
        self.assertEqual(proc.stderr.count("\n"), 1, proc.stderr)
        self.assertTrue(proc.stderr.startswith("activemq: needs root for the one-time set-up: run sudo"))

    def test_stop_start_restart(self):
        pid = self.pid()
        proc = script("stop", port=self.port)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertFalse(accepts(self.port))
        self.assertFalse(alive(pid))
        self.assertEqual(script("status", port=self.port).returncode, 1)
        self.assertEqual(script("start", port=self.port).returncode, 0)
        self.assertEqual(login_answer(self.port, self.creds), "CONNECTED")
        pid = self.pid()
        proc = script("restart", port=self.port)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertNotEqual(self.pid(), pid)
        self.assertEqual(login_answer(self.port, self.creds), "CONNECTED")
        self.assertEqual(login_answer(self.port), "ERROR")

    def test_zz_an_install_without_login_is_upgraded_and_keeps_its_messages(self):
        """The instance as the script left it before logins were required:
        anonymous STOMP, OpenWire open. `ensure` restarts it with logins
        required and OpenWire gone; a persistent message stays."""
        self.assertEqual(script("stop", port=self.port).returncode, 0)
        avail = f"/etc/activemq/instances-available/{INSTANCE}"
        openwire = broker_instance.free_port()
        with open(f"{avail}/activemq.xml", "w") as f:
            f.write(OLD_XML.format(openwire=openwire, stomp=self.port))
        with open(f"{avail}/options") as f:
            options = f.read()
        with open(f"{avail}/options", "w") as f:
            f.write(options.replace(f" -Djava.security.auth.login.config=/etc/activemq/instances-enabled/"
                                    f"{INSTANCE}/login.config", ""))
        # started as Debian's init script starts an instance
        env = dict(PATH=os.environ["PATH"], INSTANCE=INSTANCE, ACTIVEMQ_USER="activemq",
                   ACTIVEMQ_PIDFILE=self.pidfile, ACTIVEMQ_HOME="/usr/share/activemq",
                   ACTIVEMQ_CONFIG_DIR=f"/etc/activemq/instances-enabled/{INSTANCE}")
        subprocess.run(["start-stop-daemon", "--start", "--quiet", "--pidfile", self.pidfile,
                        "--chuid", "activemq", "--background", "--name", "java", "--startas",
                        "/usr/bin/activemq", "--", "start", "xbean:activemq.xml"],
                       env=env, check=True, timeout=30)
        self.assertTrue(wait_for(lambda: accepts(self.port) and accepts(openwire), 60),
                        "the old-style broker did not come up")
        old_pid = self.pid()
        self.assertEqual(login_answer(self.port), "CONNECTED")       # anonymous, before
        queue = f"/queue/np.upgrade.{uuid.uuid4().hex}"
        answer, session = connect("127.0.0.1", self.port)
        session.send_frame("SEND", {"destination": queue, "persistent": "true", "receipt": "r"},
                           "kept through the upgrade")
        self.assertEqual(session.read_frame()[0], "RECEIPT")
        session.close()

        proc = self.ensure()
        self.assertIn("configured instance", proc.stderr)
        self.assertNotEqual(self.pid(), old_pid)
        self.assertEqual(login_answer(self.port), "ERROR")           # anonymous, after
        self.assertFalse(accepts(openwire))
        self.assertEqual(listening_ports(self.pid()), [self.port])
        answer, session = connect("127.0.0.1", self.port, self.creds.user, self.creds.password)
        try:
            self.assertEqual(answer[0], "CONNECTED")
            session.send_frame("SUBSCRIBE", {"id": "1", "destination": queue, "ack": "auto"})
            command, _, body = session.read_frame()
            self.assertEqual((command, body), ("MESSAGE", "kept through the upgrade"))
        finally:
            session.close()


class NonRootTest(unittest.TestCase):
    """Without root, `ensure` says in one line what is needed (no `Permission
    denied` from a lock file), never the password, and exits 4."""

    def setUp(self):
        if os.geteuid() == 0 and not shutil.which("setpriv"):
            self.skipTest("running as root and no setpriv to drop it")

    def needs_root_line(self, creds=None, extra_env=None):
        proc = script("ensure", port=broker_instance.free_port(), creds=creds,
                      instance=f"nptest-absent-{os.getpid()}", prefix=as_nobody(),
                      extra_env=extra_env)
        self.assertEqual(proc.returncode, 4, proc.stderr)
        self.assertEqual(proc.stdout, "")
        self.assertEqual(proc.stderr.count("\n"), 1, proc.stderr)
        self.assertNotIn("Permission denied", proc.stderr)
        if creds:
            self.assertNotIn(creds.password, proc.stderr)
        return proc.stderr.rstrip("\n")

    def test_without_credentials(self):
        self.assertEqual(self.needs_root_line(),
                         f"activemq: needs root for the one-time set-up: run sudo {SCRIPT} ensure")

    def test_with_credentials_from_the_environment(self):
        self.assertEqual(self.needs_root_line(credentials.generate()),
                         "activemq: needs root for the one-time set-up: run sudo "
                         f"--preserve-env=NP_BROKER_USER,NP_BROKER_PASSWORD {SCRIPT} ensure")

    def test_with_credentials_from_a_data_directory(self):
        line = self.needs_root_line(credentials.generate(), extra_env={
            "NP_BROKER_CREDENTIALS_FILE": "/srv/np/data/broker.credentials"})
        self.assertEqual(line, "activemq: needs root for the one-time set-up: run sudo "
                               f"{SCRIPT} ensure /srv/np/data/broker.credentials")
        self.assertFalse(os.path.exists(f"/etc/activemq/instances-available/nptest-absent-{os.getpid()}"))


if __name__ == "__main__":
    unittest.main()
