"""The EC2 launcher (lib/fleet/launchers/ec2/) end to end, against moto's EC2 server.

AWS is out of reach: `python -m moto.server` on 127.0.0.1 holds the API state,
tests/cloudsim.py plays the instances (it runs each one's user-data with bash
on this machine), and a real login server (`server.py --launcher ec2`) runs as
a subprocess; clients speak the protocol over TCP on 127.0.0.1.

Every boto3 user here gets dummy credentials, AWS_EC2_METADATA_DISABLED and a
loopback AWS_ENDPOINT_URL, so nothing ever reaches 169.254.169.254 or AWS.
The login server reaches moto through a small delaying HTTP proxy (also on
127.0.0.1) so a test can make run_instances slow.

The last class tests the launcher in process with a fake EC2 client (retries,
terminate during run_instances, permanent errors, a bounded close). The
reconcile rules and the fleet policy have pure tests of their own
(tests/pure/test_ec2_reconcile.py, tests/pure/test_fleet.py).
"""
import datetime
import http.client
import logging
import http.server
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock
from urllib.parse import parse_qs

from tests.support import BROKER, ROOT  # noqa: E402  (the tests' own broker, never the machine's)
sys.path.insert(0, ROOT)

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
for _key in [k for k in os.environ if k.startswith("AWS_")]:
    del os.environ[_key]
os.environ.update(AWS_ENV)   # this process too: never any real credentials or IMDS probe

import boto3  # noqa: E402
from botocore.exceptions import ClientError, EndpointConnectionError  # noqa: E402

from lib.fleet.launchers import ec2  # noqa: E402
from lib.fleet.launchers.ec2 import errors as ec2_errors, userdata  # noqa: E402
from lib.loop.reactor import Reactor  # noqa: E402
from tests.cloudsim import CloudSim  # noqa: E402
from tests import moto_proxy  # noqa: E402
from tests.support import accepts, free_port, stop_process, wait_for  # noqa: E402

AMI = "ami-760aaa0f"
PYTHON = sys.executable


# -- a delaying proxy in front of moto ----------------------------------------------
class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self._forward()

    def do_GET(self):
        self._forward()

    def _forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        params = parse_qs(body.decode("utf-8", "replace"))
        action = params.get("Action", [""])[0]
        self.server.calls.append((action, params))   # on arrival, before any delay
        delay = self.server.delays.get(action, 0.0)
        if delay:
            time.sleep(delay)   # the slowness a test injects (not a wait)
        moto_proxy.relay(self, self.server.upstream, body)

    def log_message(self, *args):
        pass


class DelayProxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.delays = {}          # EC2 Action -> seconds
        self.calls = []           # (EC2 Action, {parameter: [values]}) of every request, as it arrives
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def count(self, action):
        """How many `action` requests have reached the proxy."""
        return sum(1 for a, _ in list(self.calls) if a == action)

    def naming(self, value):
        """The actions of the requests that carried `value` as a parameter."""
        return [a for a, params in list(self.calls) if any(value in v for v in params.values())]


# -- protocol clients ---------------------------------------------------------------
def ask(port, line, timeout=30.0):
    """One request line to 127.0.0.1:port; the JSON reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(line.encode("utf-8") + b"\n")
        raw = s.makefile("rb").readline()
    if not raw:
        raise ConnectionError(f"no reply to {line.split()[0]!r}")
    return json.loads(raw)


def ask_address(address, line, timeout=10.0):
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1", address
    return ask(int(port), line, timeout)


class MotoTestCase(unittest.TestCase):
    """Starts moto's EC2 server and the proxy once for the class."""

    @classmethod
    def setUpClass(cls):
        cls.moto_port = free_port()
        cls.moto_log = tempfile.TemporaryFile()
        env = dict(os.environ, **AWS_ENV)
        cls.moto = subprocess.Popen([PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(cls.moto_port)],
                                    stdout=cls.moto_log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        if not wait_for(lambda: accepts(cls.moto_port), 20):
            cls.moto.kill()
            raise RuntimeError("moto server did not start")
        cls.endpoint = f"http://127.0.0.1:{cls.moto_port}"
        cls.proxy = DelayProxy(cls.moto_port)
        cls.ec2 = boto3.session.Session().client("ec2", endpoint_url=cls.endpoint, region_name="us-east-1")
        cls.ec2.describe_instances()   # warm moto up (its first calls are slow)

    @classmethod
    def tearDownClass(cls):
        cls.proxy.shutdown()
        cls.proxy.server_close()
        stop_process(cls.moto, timeout=5)
        cls.moto_log.close()

    # -- helpers ----------------------------------------------------------------
    def setUp(self):
        self.server = None
        self.sim = None
        self.proxy.delays.clear()
        self.proxy.calls.clear()
        self.tmp = tempfile.TemporaryDirectory(prefix="np-ec2-test-")
        self.addCleanup(self.tmp.cleanup)

    def tearDown(self):
        self.proxy.delays.clear()
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(40)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        if self.sim is not None:
            self.sim.stop()
        if self.server is not None:
            self.server_log.close()

    def start_sim(self, cluster):
        self.sim = CloudSim(self.endpoint, cluster, interval=0.1).start()
        return self.sim

    def start_server(self, cluster, *extra):
        self.port, self.internal = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ENV, AWS_ENDPOINT_URL=f"http://127.0.0.1:{self.proxy.port}", PYTHONUNBUFFERED="1")
        self.server_log = open(os.path.join(self.tmp.name, "server.log"), "w+b")
        cmd = [PYTHON, os.path.join(ROOT, "server.py"), "127.0.0.1", str(self.port),
               "--launcher", "ec2", "--ami", AMI, "--advertise", "127.0.0.1",
               "--internal-port", str(self.internal), "--idle-timeout", "2",
               "--data", os.path.join(self.tmp.name, "data"), "--cluster", cluster,
               "--poll-interval", "1", "--no-fsync", "--broker", BROKER, *extra]
        self.server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                       stdout=self.server_log, stderr=subprocess.STDOUT)
        self.assertTrue(wait_for(lambda: accepts(self.port) or self.server.poll() is not None, 15))
        self.assertIsNone(self.server.poll(), self.server_output())
        return self.server

    def server_output(self):
        self.server_log.flush()
        self.server_log.seek(0)
        return self.server_log.read().decode("utf-8", "replace")[-6000:]

    def instances(self, cluster, states=None):
        """{instance id: instance dict} of `cluster` (optionally only in `states`)."""
        filters = [{"Name": "tag:np-social:cluster", "Values": [cluster]}]
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        out = {}
        for reservation in self.ec2.describe_instances(Filters=filters)["Reservations"]:
            for inst in reservation["Instances"]:
                out[inst["InstanceId"]] = inst
        return out

    def register(self, *names):
        for name in names:
            reply = ask(self.port, f"register {name} pw-{name}")
            self.assertEqual(reply["status"], 0, reply)

    def stop_server(self, timeout=40):
        started = time.monotonic()
        self.server.send_signal(signal.SIGTERM)
        try:
            code = self.server.wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail("login server did not stop:\n" + self.server_output())
        self.assertEqual(code, 0, self.server_output())
        return time.monotonic() - started


class Ec2FleetTest(MotoTestCase):
    def test_scale_out_serve_and_scale_in(self):
        cluster = "test-scale"
        self.start_sim(cluster)
        self.start_server(cluster)
        users = [f"user{i:02d}" for i in range(12)]
        self.register(*users)
        replies = {}
        for user in users:
            reply = ask(self.port, f"login {user} pw-{user}", timeout=60)
            self.assertEqual(reply["status"], 0, f"{reply}\n{self.server_output()}")
            replies[user] = reply
        running = self.instances(cluster, ["pending", "running"])
        self.assertEqual(len(running), 2, self.server_output())
        server_ids = set()
        for inst in running.values():
            self.assertEqual(inst["State"]["Name"], "running")
            self.assertEqual(inst["ImageId"], AMI)
            self.assertEqual(inst["InstanceType"], "t3.micro")
            tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
            self.assertEqual(tags["np-social:cluster"], cluster)
            self.assertEqual(tags["np-social:role"], "appserver")
            self.assertTrue(tags["Name"].startswith("np-social"), tags)
            server_ids.add(tags["np-social:server-id"])
        self.assertEqual(server_ids, {"app-1", "app-2"})
        # every login reply names an app server (a process the simulator
        # started from user-data) that answers a command
        addresses = {r["app_server"] for r in replies.values()}
        self.assertEqual(len(addresses), 2, addresses)
        for user, reply in replies.items():
            answer = ask_address(reply["app_server"], f"list-friend {reply['token']}")
            self.assertEqual(answer, {"status": 0, "friend": []}, user)
        self.assertEqual(sorted(self.sim.running_processes()), sorted(running))
        # everyone leaves: both instances go after the idle timeout (2 s)
        for user, reply in replies.items():
            self.assertEqual(ask(self.port, f"logout {reply['token']}")["status"], 0)
        self.assertTrue(wait_for(lambda: not self.instances(cluster, ["pending", "running"]), 15),
                        self.server_output())
        states = {i["State"]["Name"] for i in self.instances(cluster).values()}
        self.assertLessEqual(states, {"shutting-down", "terminated"})
        self.assertTrue(wait_for(lambda: not self.sim.running_processes(), 10))

    def test_orphans_terminated_at_start_other_clusters_untouched(self):
        cluster = "test-orphans"

        def run(cluster_name, server_id):
            tags = [{"Key": "np-social:cluster", "Value": cluster_name},
                    {"Key": "np-social:role", "Value": "appserver"},
                    {"Key": "np-social:server-id", "Value": server_id},
                    {"Key": "np-social:launcher", "Value": "crashed-process"}]
            r = self.ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                       TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
            return r["Instances"][0]["InstanceId"]
        orphan = run(cluster, "app-1")
        stopped_orphan = run(cluster, "app-2")
        self.ec2.stop_instances(InstanceIds=[stopped_orphan])
        foreign = run("test-someone-else", "app-1")
        self.start_server(cluster)
        gone = ("shutting-down", "terminated")
        self.assertTrue(wait_for(lambda: all(self.instances(cluster)[i]["State"]["Name"] in gone
                                             for i in (orphan, stopped_orphan)), 10), self.server_output())
        # another full poll (DescribeInstances #n+1 starts only after #n was
        # reconciled and its terminations sent): still untouched
        polls = self.proxy.count("DescribeInstances")
        self.assertTrue(wait_for(lambda: self.proxy.count("DescribeInstances") >= polls + 2, 10),
                        self.server_output())
        self.assertEqual(self.instances("test-someone-else")[foreign]["State"]["Name"], "running")
        self.assertEqual(self.proxy.naming(foreign), [], "the login server asked about another cluster's instance")
        self.assertIn("orphan", self.server_output())
        self.stop_server()
        self.assertEqual(self.instances("test-someone-else")[foreign]["State"]["Name"], "running")
        self.ec2.terminate_instances(InstanceIds=[foreign])

    def test_sigterm_terminates_every_instance(self):
        cluster = "test-sigterm"
        self.start_sim(cluster)
        self.start_server(cluster, "--capacity", "2")
        users = ["ann", "bob", "cat"]
        self.register(*users)
        for user in users:
            reply = ask(self.port, f"login {user} pw-{user}", timeout=60)
            self.assertEqual(reply["status"], 0, reply)
        self.assertEqual(len(self.instances(cluster, ["running"])), 2)
        self.assertEqual(len(self.sim.running_processes()), 2)
        took = self.stop_server()
        # close() returned only after terminate_instances did: nothing is left
        # running the moment the process has exited
        self.assertEqual(self.instances(cluster, ["pending", "running", "stopping", "stopped"]), {},
                         self.server_output())
        self.assertLess(took, 30)
        self.assertTrue(wait_for(lambda: not self.sim.running_processes(), 10),
                        self.sim.running_processes())

    def test_loop_answers_while_run_instances_is_slow(self):
        cluster = "test-slow"
        self.start_sim(cluster)
        self.start_server(cluster)
        self.register("slowpoke")
        self.proxy.delays["RunInstances"] = 3.0
        result = {}

        def login():
            result["reply"] = ask(self.port, "login slowpoke pw-slowpoke", timeout=60)
        waiter = threading.Thread(target=login)
        started = time.monotonic()
        waiter.start()
        # run_instances is now under way (and slow)
        self.assertTrue(wait_for(lambda: self.proxy.count("RunInstances"), 10), self.server_output())
        t0 = time.monotonic()
        reply = ask(self.port, "register newcomer pw-newcomer", timeout=10)
        self.assertEqual(reply["status"], 0, reply)
        self.assertLess(time.monotonic() - t0, 1.5, "the login server stalled behind run_instances")
        self.assertTrue(waiter.is_alive())
        waiter.join(60)
        self.assertGreater(time.monotonic() - started, 3.0)
        self.assertEqual(result["reply"]["status"], 0, result)
        answer = ask_address(result["reply"]["app_server"], f"list-friend {result['reply']['token']}")
        self.assertEqual(answer["status"], 0)

    def test_sigterm_while_run_instances_is_under_way(self):
        cluster = "test-sigterm-launching"
        self.start_sim(cluster)
        self.start_server(cluster)
        self.register("early")
        self.proxy.delays["RunInstances"] = 2.0
        box = {}

        def login():
            try:
                box["reply"] = ask(self.port, "login early pw-early", timeout=60)
            except (OSError, ValueError) as e:
                box["error"] = e
        waiter = threading.Thread(target=login)
        waiter.start()
        # SIGTERM while run_instances is under way: the proxy holds it for 2 s
        self.assertTrue(wait_for(lambda: self.proxy.count("RunInstances"), 10), self.server_output())
        self.stop_server()
        waiter.join(10)
        # the instance created by the slow call was terminated all the same
        self.assertEqual(self.instances(cluster, ["pending", "running", "stopping", "stopped"]), {},
                         self.server_output())
        self.assertEqual(len(self.instances(cluster)), 1, self.server_output())
        self.assertTrue(wait_for(lambda: not self.sim.running_processes(), 10))


# -- the launcher in process, with a fake EC2 client --------------------------------
def client_error(code, op="RunInstances"):
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": 400}}, op)


class FakeEc2:
    """run_instances/terminate_instances/describe_instances with scripted failures."""

    def __init__(self):
        self.lock = threading.Lock()
        self.run_failures = []         # exceptions raised by the next run_instances calls
        self.terminate_failures = []
        self.terminate_calls = []      # (instance ids, error code or None) of every call
        self.run_gate = None           # threading.Event run_instances waits for
        self.terminate_gate = None     # threading.Event terminate_instances waits for
        self.runs, self.terminated, self.instances = [], [], {}
        self.counter = 0

    def run_instances(self, **params):
        if self.run_gate is not None:
            self.run_gate.wait(10)
        with self.lock:
            self.runs.append(params)
            if self.run_failures:
                raise self.run_failures.pop(0)
            self.counter += 1
            iid = f"i-{self.counter:017x}"
            tags = params["TagSpecifications"][0]["Tags"]
            self.instances[iid] = {"InstanceId": iid, "State": {"Name": "pending"}, "Tags": tags,
                                   "LaunchTime": datetime.datetime.now(datetime.timezone.utc)}
            return {"Instances": [dict(self.instances[iid])]}

    def terminate_instances(self, InstanceIds):
        if self.terminate_gate is not None:
            self.terminate_gate.wait(30)
        with self.lock:
            if self.terminate_failures:
                error = self.terminate_failures.pop(0)
                code = getattr(error, "response", {}).get("Error", {}).get("Code", type(error).__name__)
                self.terminate_calls.append((list(InstanceIds), code))
                raise error
            self.terminate_calls.append((list(InstanceIds), None))
            for iid in InstanceIds:
                self.terminated.append(iid)
                if iid in self.instances:
                    self.instances[iid]["State"] = {"Name": "terminated"}
            return {}

    def get_paginator(self, name):
        fake = self

        class Paginator:
            def paginate(self, Filters):
                with fake.lock:
                    return [{"Reservations": [{"Instances": [dict(i) for i in fake.instances.values()]}]}]
        return Paginator()


class LauncherUnitTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeEc2()
        self.reactor = Reactor()
        config = ec2.Ec2Config(ami=AMI, login_address=("10.0.0.5", 7000), cluster="unit",
                               launch_deadline=30, poll_interval=0.2, broker="10.0.0.5:61613")
        self.launcher = ec2.Ec2Launcher(self.reactor, config, client_factory=lambda: self.fake)
        self.exits = []
        self.launcher.on_exit = lambda sid, reason: self.exits.append((sid, reason))
        self.addCleanup(setattr, ec2_errors, "BACKOFF_BASE", ec2_errors.BACKOFF_BASE)
        ec2_errors.BACKOFF_BASE = 0.05
        self.addCleanup(self.stop_pool)
        logger = logging.getLogger("launcher.ec2")   # expected warnings: keep the output readable
        self.addCleanup(setattr, logger, "disabled", logger.disabled)
        logger.disabled = True

    def stop_pool(self):
        """Release the fake's gates, stop the reactor (which shuts its worker
        pools down) and wait for the worker threads to end."""
        for gate in (self.fake.run_gate, self.fake.terminate_gate):
            if gate is not None:
                gate.set()
        self.reactor.call_soon(self.reactor.stop)
        self.reactor.run()
        workers = lambda: [t for t in threading.enumerate() if t.name.startswith("offloop-aws")]  # noqa: E731
        self.assertTrue(wait_for(lambda: not workers(), 10), workers())

    def turn_until(self, predicate, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.reactor.run_once(max_wait=0.02)
        return predicate()

    def test_user_data_and_params(self):
        params = self.launcher.run_params("app-7", "s3cr3t'x")
        script = params["UserData"]
        self.assertIn("--login 10.0.0.5:7000", script)
        self.assertIn("--broker 10.0.0.5:61613", script)
        self.assertIn("--id app-7", script)
        self.assertIn("export NP_JOIN_SECRET='s3cr3t'\"'\"'x'", script)
        self.assertIn('if [ -z "${NP_ADVERTISE:-}" ]', script)
        self.assertIn("${NP_HOME:-/opt/np-social}", script)
        self.assertIn('"${NP_APP_PORT:-9000}"', script)
        self.assertEqual(params["MinCount"], 1)
        self.assertEqual(params["MaxCount"], 1)
        self.assertEqual(params["MetadataOptions"]["HttpTokens"], "required")
        tags = {t["Key"]: t["Value"] for t in params["TagSpecifications"][0]["Tags"]}
        self.assertEqual(tags["np-social:server-id"], "app-7")
        self.assertNotIn("s3cr3t", json.dumps(params["TagSpecifications"]))
        self.assertEqual(subprocess.run(["bash", "-n"], input=script.encode()).returncode, 0)
        self.assertEqual(ec2.instance_broker("127.0.0.1:61613", "10.0.0.5"), "10.0.0.5:61613")
        self.assertEqual(ec2.instance_broker("mq.internal:61613", "10.0.0.5"), "mq.internal:61613")
        self.assertEqual(ec2.default_cluster("/srv/data", "login.example"),
                         ec2.default_cluster("/srv/data", "login.example"))
        self.assertNotEqual(ec2.default_cluster("/srv/data", "a"), ec2.default_cluster("/srv/other", "a"))

    def test_user_data_asks_imds_only_without_np_advertise(self):
        """The EC2 branch of the script, with stub commands: PATH holds only
        the stub directory, so no real curl can reach 169.254.169.254."""
        script = self.launcher.run_params("app-3", "the-secret")["UserData"]
        with tempfile.TemporaryDirectory() as d:
            def stub(name, body):
                path = os.path.join(d, name)
                with open(path, "w") as f:
                    f.write("#!/bin/bash\n" + body + "\n")
                os.chmod(path, 0o755)
            stub("curl", f'echo "$*" >> {d}/curl.log\n'
                         'case "$*" in *api/token*) echo TOKEN;; *public-ipv4*) exit 22;; '
                         '*local-ipv4*) echo 10.1.2.3;; esac')
            stub("poweroff", f": > {d}/poweroff.called")
            stub("python", f'echo "$PWD|$NP_JOIN_SECRET|$*" > {d}/python.log')
            for tool in ("seq", "id", "sleep"):
                os.symlink(subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True,
                                          text=True).stdout.strip(), os.path.join(d, tool))
            env = {"PATH": d, "NP_HOME": d, "NP_PYTHON": os.path.join(d, "python")}
            subprocess.run(["/bin/bash", "-c", script], env=env, timeout=10, check=True,
                           stderr=subprocess.DEVNULL)
            with open(os.path.join(d, "curl.log")) as f:
                calls = f.read()
            self.assertIn("-X PUT", calls)
            self.assertIn("X-aws-ec2-metadata-token: TOKEN", calls)
            with open(os.path.join(d, "python.log")) as f:
                cwd, secret, argv = f.read().strip().split("|")
            self.assertEqual((cwd, secret), (d, "the-secret"))
            self.assertIn("--advertise 10.1.2.3", argv)   # no public address: the private one
            self.assertIn("--port 9000", argv)
            self.assertTrue(os.path.exists(os.path.join(d, "poweroff.called")))
            # with NP_ADVERTISE set (the simulator) there is no metadata call and no poweroff
            os.unlink(os.path.join(d, "curl.log"))
            os.unlink(os.path.join(d, "poweroff.called"))
            subprocess.run(["/bin/bash", "-c", script], env=dict(env, NP_ADVERTISE="127.0.0.1"),
                           timeout=10, check=True, stderr=subprocess.DEVNULL)
            self.assertFalse(os.path.exists(os.path.join(d, "curl.log")))
            self.assertFalse(os.path.exists(os.path.join(d, "poweroff.called")))

    def test_user_data_template_quotes_every_value_once(self):
        config = ec2.Ec2Config(ami=AMI, login_address=("10.0.0.5", 7000), cluster="c @SECRET@",
                               project_dir="/opt/my dir", broker="mq:61613")
        hostile = "@LOGIN@$(touch /tmp/pwned)`id`;\"'"
        plain = self.launcher.run_params("app-1", "secret")["UserData"]
        self.assertIsNone(re.search(r"@[A-Z_]+@", plain), "a placeholder was left unfilled")
        script = ec2.user_data(config, "app-1", hostile)
        self.assertEqual(script.count(shlex.quote(hostile)), 1)   # filled in one pass: once
        self.assertIn("export NP_JOIN_SECRET=" + shlex.quote(hostile) + "\n", script)
        self.assertIn("of cluster 'c @SECRET@', written", script)
        self.assertIn("NP_HOME=${NP_HOME:-'/opt/my dir'}", script)
        # bash reads the secret back unchanged and runs nothing in it
        probe = script.split("run_as=()")[0].replace("cd \"$NP_HOME\" || exit 1", "")
        out = subprocess.run(["bash", "-c", probe + 'printf %s "$NP_JOIN_SECRET"'], capture_output=True,
                             env={"PATH": os.environ["PATH"], "NP_ADVERTISE": "127.0.0.1"}, timeout=10)
        self.assertEqual(out.stdout.decode(), hostile)
        with self.assertRaises(ValueError):
            ec2.user_data(config, "app-1\nreboot", "secret")
        with open(userdata.TEMPLATE) as f:
            self.assertTrue(f.read().startswith("#!/bin/bash\n"))

    def test_throttling_and_connection_errors_are_retried(self):
        self.fake.run_failures = [client_error("RequestLimitExceeded"),
                                  EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
                                  client_error("InsufficientInstanceCapacity")]
        self.launcher.launch("app-1", "secret")
        self.assertTrue(self.turn_until(lambda: "app-1" in self.launcher.instances))
        self.assertEqual(len(self.fake.runs), 4)
        tokens = {p["ClientToken"] for p in self.fake.runs}
        self.assertEqual(len(tokens), 1, "a retry must reuse the launch's ClientToken")
        self.assertEqual(self.exits, [])

    def test_permanent_error_reports_exit_and_refuses_launches_briefly(self):
        self.fake.run_failures = [client_error("InvalidAMIID.NotFound")]
        self.launcher.launch("app-1", "secret")
        self.assertTrue(self.turn_until(lambda: self.exits))
        self.assertEqual(self.exits[0][0], "app-1")
        self.assertIn("InvalidAMIID.NotFound", self.exits[0][1])
        with self.assertRaises(RuntimeError):
            self.launcher.launch("app-2", "secret")

    def test_terminate_before_run_instances_returns(self):
        self.fake.run_gate = threading.Event()
        self.launcher.launch("app-1", "secret")
        self.reactor.run_once(max_wait=0.05)
        self.assertTrue(wait_for(lambda: self.launcher._inflight_launches == 1, 2))
        self.launcher.terminate("app-1")       # the fleet gave up on it
        self.fake.run_gate.set()
        self.assertTrue(self.turn_until(lambda: self.fake.terminated))
        self.assertEqual(self.fake.terminated, ["i-00000000000000001"])
        self.assertEqual(self.launcher.instances, {})

    def test_terminate_retries_not_found_right_after_launch(self):
        self.launcher.launch("app-1", "secret")
        self.launcher.launch("app-2", "secret")
        self.assertTrue(self.turn_until(lambda: len(self.launcher.instances) == 2))
        victim = self.launcher.instances["app-1"].instance_id
        bystander = self.launcher.instances["app-2"].instance_id
        # EC2 is eventually consistent: an id run_instances just returned may
        # be NotFound for a while; then throttled once
        self.fake.terminate_failures = [client_error("InvalidInstanceID.NotFound", "TerminateInstances"),
                                        client_error("InvalidInstanceID.NotFound", "TerminateInstances"),
                                        client_error("Throttling", "TerminateInstances")]
        self.launcher.terminate("app-1")
        self.assertTrue(self.turn_until(lambda: self.fake.terminated),
                        f"not terminated; calls: {self.fake.terminate_calls}")
        # the same instance, asked again after each failure, until it went
        self.assertEqual(self.fake.terminate_calls, [([victim], "InvalidInstanceID.NotFound"),
                                                     ([victim], "InvalidInstanceID.NotFound"),
                                                     ([victim], "Throttling"),
                                                     ([victim], None)])
        self.assertEqual(self.fake.terminated, [victim])
        self.assertIn(victim, self.launcher.terminated)
        self.assertNotIn(victim, self.launcher.terminating)
        self.assertEqual(set(self.launcher.instances), {"app-2"})
        self.assertEqual(self.launcher.instances["app-2"].instance_id, bystander)
        self.assertEqual(self.exits, [])

    def test_poll_reports_dead_instances_and_close_terminates(self):
        self.launcher.start()
        self.launcher.launch("app-1", "secret")
        self.launcher.launch("app-2", "secret")
        self.assertTrue(self.turn_until(lambda: len(self.launcher.instances) == 2))
        dead = self.launcher.instances["app-1"].instance_id
        with self.fake.lock:
            self.fake.instances[dead]["State"] = {"Name": "terminated"}
        self.assertTrue(self.turn_until(lambda: self.exits, timeout=3))
        self.assertEqual(self.exits[0][0], "app-1")
        self.assertIn("terminated", self.exits[0][1])
        alive = self.launcher.instances["app-2"].instance_id
        self.launcher.close()
        self.assertIn(alive, self.fake.terminated)
        with self.assertRaises(RuntimeError):
            self.launcher.launch("app-3", "secret")

    def test_close_retries_in_a_worker_never_sleeping_on_the_loop(self):
        self.launcher.launch("app-1", "secret")
        self.assertTrue(self.turn_until(lambda: len(self.launcher.instances) == 1))
        alive = self.launcher.instances["app-1"].instance_id
        self.fake.terminate_failures = [client_error("Throttling", "TerminateInstances"),
                                        client_error("RequestLimitExceeded", "TerminateInstances")]
        sleepers, real_sleep = [], time.sleep

        def sleep(seconds):
            sleepers.append(threading.current_thread())
            real_sleep(seconds)
        with mock.patch("time.sleep", sleep):
            self.launcher.close()
        self.assertEqual([code for _, code in self.fake.terminate_calls],
                         ["Throttling", "RequestLimitExceeded", None])
        self.assertIn(alive, self.fake.terminated)
        self.assertEqual(len(sleepers), 2)
        self.assertNotIn(threading.current_thread(), sleepers)

    def test_close_is_bounded_when_aws_does_not_answer(self):
        self.launcher.launch("app-1", "secret")
        self.assertTrue(self.turn_until(lambda: len(self.launcher.instances) == 1))
        self.fake.terminate_gate = threading.Event()      # terminate_instances hangs
        started = time.monotonic()
        self.launcher.close(timeout=1.0)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(self.fake.terminated, [])
        with self.assertRaises(RuntimeError):
            self.launcher.launch("app-2", "secret")


if __name__ == "__main__":
    unittest.main()
