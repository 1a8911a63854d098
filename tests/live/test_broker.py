"""lib/messaging/broker.py and scripts/activemq.sh against the real ActiveMQ on 127.0.0.1.

Destinations are named as the social service names them (lib/social/commands.py
`Context`); tests/pure/test_broker_link.py checks those names and the link's
logic with a fake connection.

Each BrokerLink runs on its own Reactor in a background thread of this test
process (as the app server and the client would in theirs); the test thread
talks to a reactor only through `Loop.call`. Some tests stop and restart the
broker; the class always leaves it running.
"""
import os
import socket
import subprocess
import sys
import threading
import time
import unittest

import stomp

from tests.support import ROOT  # noqa: E402
sys.path.insert(0, ROOT)

from lib.messaging import broker  # noqa: E402
from lib.loop.reactor import Reactor  # noqa: E402
from lib.social.commands import Context  # noqa: E402
from tests.support import disturbs_broker, holds_for, wait_for  # noqa: E402

SCRIPT = os.path.join(ROOT, "scripts", "activemq.sh")
PORT = int(os.environ.get("NP_BROKER_PORT", "61613"))
NAMES = Context()   # random destinations, as the servers make them


def activemq(command):
    """Run scripts/activemq.sh; returns (returncode, stderr)."""
    proc = subprocess.run([SCRIPT, command], capture_output=True, text=True, timeout=240)
    return proc.returncode, proc.stderr


def port_open():
    try:
        socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
        return True
    except OSError:
        return False




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
            self.loop.reactor, "127.0.0.1", PORT, on_message=self._on_message,
            on_state=self._on_state, name=name)
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
    def setUpClass(cls):
        rc, err = activemq("ensure")
        if rc != 0:
            raise unittest.SkipTest("scripts/activemq.sh ensure failed:\n" + err)

    @classmethod
    def tearDownClass(cls):
        activemq("ensure")  # whatever happened, leave the broker running

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

    # -- the broker script ---------------------------------------------------------
    # (test_names_and_addresses moved to tests/pure/test_broker_link.py: it needs no broker)
    def test_ensure_is_idempotent(self):
        rc, err = activemq("ensure")
        self.assertEqual(rc, 0, err)
        t0 = time.monotonic()
        rc, err = activemq("ensure")
        elapsed = time.monotonic() - t0
        self.assertEqual(rc, 0, err)
        self.assertTrue(port_open())
        rc, _ = activemq("status")
        self.assertEqual(rc, 0)
        print("\n  second `activemq.sh ensure`: %.3f s" % elapsed, file=sys.stderr)

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

        snoop = stomp.Connection12([("127.0.0.1", PORT)])
        snooped = []
        receipts = threading.Event()

        class Snoop(stomp.ConnectionListener):
            def on_message(self, frame):
                snooped.append(frame.body)

            def on_receipt(self, frame):
                if frame.headers.get("receipt-id") == "snoop-last":
                    receipts.set()
        snoop.set_listener("snoop", Snoop())
        snoop.connect(wait=True)
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
        """Publishing while the broker is stopped fails quickly; when it comes
        back the link reconnects and resubscribes by itself."""
        pub, sub = self.client("pub"), self.client("sub")
        queue = NAMES.new_queue()
        self.assertTrue(sub.subscribe_wait(queue)[0])
        try:
            rc, err = activemq("stop")
            self.assertEqual(rc, 0, err)
            self.assertTrue(wait_for(lambda: not pub.link.connected, 10), "link did not notice")
            t0 = time.monotonic()
            ok, err, latency, _ = pub.publish_wait(queue, "lost", True, timeout=2)
            self.assertFalse(ok)
            self.assertTrue(err)
            self.assertLess(time.monotonic() - t0, 0.5)
            # Not a wait for a condition: the behaviour under test is a stretch
            # of time with the broker gone (the links retry every 0.2, 0.4,
            # 0.8 s...), after which both links are still alive and still
            # report themselves down.
            time.sleep(1.0)
            self.assertEqual(pub.states[-1][1], False)
            self.assertEqual(sub.states[-1][1], False)
        finally:
            rc, err = activemq("start")
        self.assertEqual(rc, 0, err)
        up = time.monotonic()
        self.assertTrue(pub.wait_connected(10) and sub.wait_connected(10))
        print("\n  reconnect after broker start: %.2f s" % (time.monotonic() - up), file=sys.stderr)
        self.assertTrue(self.publish_until_delivered(pub, sub, queue, "back"))

    @disturbs_broker
    def test_zz_restart_reconnects_and_resubscribes(self):
        pub, sub = self.client("pub"), self.client("sub")
        queue, topic = NAMES.new_queue(), NAMES.new_topic()
        self.assertTrue(sub.subscribe_wait(queue)[0])
        self.assertTrue(sub.subscribe_wait(topic)[0])
        t0 = time.monotonic()
        rc, err = activemq("restart")
        self.assertEqual(rc, 0, err)
        restarted = time.monotonic()
        self.assertTrue(wait_for(lambda: len(pub.states) >= 3 and pub.link.connected, 10),
                        "publisher did not reconnect: %r" % pub.states)
        self.assertTrue(wait_for(lambda: len(sub.states) >= 3 and sub.link.connected, 10))
        print("\n  restart: script %.2f s, links up %.2f s after it returned"
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
        rc, err = activemq("restart")
        self.assertEqual(rc, 0, err)
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


if __name__ == "__main__":
    unittest.main()
