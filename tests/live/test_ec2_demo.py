"""scripts/ec2-demo.sh up | status | down against moto, and the first-boot
scripts of EC2 instances run with bash.

AWS is out of reach: `python -m moto.server` on 127.0.0.1 (as in
tests/live/test_ec2.py) serves EC2, IAM, STS and S3; EC2 requests go through
a small proxy (also on 127.0.0.1) that can answer an action with an error,
the way AWS refuses to delete a security group whose network interfaces are
still detaching. Every process gets dummy credentials,
AWS_EC2_METADATA_DISABLED and loopback endpoints; the demo always runs with
--my-ip/--no-wait/--no-probe, so it never asks checkip.amazonaws.com or
connects to the (made-up) public address moto gives the login host.

The user-data classes run the scripts instances get at first boot with
stub commands: the app server's (credentials into a 0600 file and the
environment, never argv) and the demo login host's (credentials file,
ActiveMQ's `ensure`, the systemd unit of the login server).
"""
import base64
import http.client
import http.server
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import unittest
from urllib.parse import parse_qs, urlencode

from tests import moto_proxy
from tests.support import ROOT, accepts, free_port, wait_for

sys.path.insert(0, ROOT)

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
for _key in [k for k in os.environ if k.startswith("AWS_")]:
    del os.environ[_key]
os.environ.update(AWS_ENV)   # this process too: never any real credentials or IMDS probe

import boto3  # noqa: E402

from lib.fleet.launchers.ec2.options import Ec2Config  # noqa: E402
from lib.fleet.launchers.ec2.userdata import user_data  # noqa: E402
from lib.messaging import credentials as broker_credentials  # noqa: E402

PYTHON = sys.executable
SCRIPT = os.path.join(ROOT, "scripts", "ec2-demo.sh")
AMI = "ami-760aaa0f"             # one of moto's images
MY_IP = "198.51.100.7/32"        # documentation addresses: only strings to moto
TA = "203.0.113.0/24"


# -- an EC2 proxy in front of moto: errors on demand --------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        params = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        action = params.get("Action", [""])[0]
        self.server.calls.append(action)
        fault = self.server.take_fault(action)
        if fault:
            data = (f"<Response><Errors><Error><Code>{fault}</Code><Message>{fault} injected by "
                    f"the test</Message></Error></Errors><RequestID>t</RequestID></Response>").encode()
            self.send_response(400)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if action == "CreateImage":
            body = without_snapshot_tags(params)
        moto_proxy.relay(self, self.server.upstream, body)

    def log_message(self, *args):
        pass


def without_snapshot_tags(params):
    """CreateImage's body minus the snapshot's TagSpecification, which moto
    5.2 does not implement (scripts/build_ami.py tags image and snapshot)."""
    snapshot = {key.split(".")[1] for key, values in params.items()
                if key.startswith("TagSpecification.") and key.endswith(".ResourceType")
                and values == ["snapshot"]}
    kept = {k: v for k, v in params.items()
            if not (k.startswith("TagSpecification.") and k.split(".")[1] in snapshot)}
    return urlencode(kept, doseq=True).encode()


class Ec2Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.faults = {}            # EC2 Action -> [error code, times left (None: always)]
        self.calls = []
        self.lock = threading.Lock()
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def take_fault(self, action):
        with self.lock:
            fault = self.faults.get(action)
            if not fault:
                return None
            code, left = fault
            if left is not None:
                if left <= 0:
                    return None
                fault[1] = left - 1
            return code


class BuilderStopper:
    """Plays scripts/build_ami.py's builder: powers off (stops) every running
    instance tagged np-social:role=image-builder, as its user-data does."""

    def __init__(self, ec2):
        self.ec2, self.stopped = ec2, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.1):
            found = self.ec2.describe_instances(Filters=[
                {"Name": "tag:np-social:role", "Values": ["image-builder"]},
                {"Name": "instance-state-name", "Values": ["running"]}])["Reservations"]
            ids = [i["InstanceId"] for r in found for i in r["Instances"]]
            if ids:
                self.ec2.stop_instances(InstanceIds=ids)
                self.stopped += ids

    def close(self):
        self._stop.set()
        self._thread.join(5)


class DemoTestCase(unittest.TestCase):
    REGION = "eu-west-3"

    @classmethod
    def setUpClass(cls):
        cls.moto_port = free_port()
        cls.moto_log = tempfile.TemporaryFile()
        cls.moto = subprocess.Popen([PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(cls.moto_port)],
                                    stdout=cls.moto_log, stderr=subprocess.STDOUT, env=dict(os.environ, **AWS_ENV),
                                    start_new_session=True)
        if not wait_for(lambda: accepts(cls.moto_port), 20):
            cls.moto.kill()
            raise RuntimeError("moto server did not start")
        cls.endpoint = f"http://127.0.0.1:{cls.moto_port}"
        cls.proxy = Ec2Proxy(cls.moto_port)
        session = boto3.session.Session(region_name=cls.REGION)
        cls.ec2 = session.client("ec2", endpoint_url=cls.endpoint)
        cls.iam = session.client("iam", endpoint_url=cls.endpoint)
        cls.s3 = session.client("s3", endpoint_url=cls.endpoint)
        cls.ec2.describe_instances()   # moto's first calls are slow

    @classmethod
    def tearDownClass(cls):
        cls.proxy.shutdown()
        cls.proxy.server_close()
        os.killpg(cls.moto.pid, signal.SIGTERM)
        cls.moto.wait(10)
        cls.moto_log.close()

    def setUp(self):
        self.proxy.faults.clear()
        self.tmp = tempfile.mkdtemp(prefix="np-ec2-demo-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.state = os.path.join(self.tmp, "ec2-demo.state.json")

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ENV, AWS_ENDPOINT_URL=self.endpoint,
                   AWS_ENDPOINT_URL_EC2=f"http://127.0.0.1:{self.proxy.port}")
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}

    def demo(self, command, *args, expect=0, env=None, state=None):
        """Run scripts/ec2-demo.sh; (stdout, stderr). Never lets it reach the
        internet: --my-ip is given, and nothing waits on or probes a port."""
        argv = [SCRIPT, command, "--state", state or self.state, "--poll", "0.1"]
        if command == "up":
            argv += ["--my-ip", MY_IP, "--no-wait"]
        if command == "status":
            argv += ["--no-probe"]
        done = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=180,
                              env=env or self.env(), cwd=self.tmp)
        self.assertEqual(done.returncode, expect, f"{command} {args}: exit {done.returncode}\n"
                         f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
        return done.stdout, done.stderr

    def read_state(self, path=None):
        with open(path or self.state) as f:
            return json.load(f)

    def instance(self, instance_id):
        return self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]

    def group(self, group_id):
        try:
            return self.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
        except Exception as e:
            if "NotFound" in str(e):
                return None
            raise

    def key_exists(self, name):
        return bool(self.ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [name]}])["KeyPairs"])

    def rules(self, group_id):
        """{port: (set of CIDRs, set of source group ids)} of a group's ingress."""
        out = {}
        for perm in self.group(group_id)["IpPermissions"]:
            cidrs, groups = out.setdefault(perm["FromPort"], (set(), set()))
            self.assertEqual(perm["FromPort"], perm["ToPort"])
            self.assertEqual(perm["IpProtocol"], "tcp")
            cidrs |= {r["CidrIp"] for r in perm.get("IpRanges", ())}
            groups |= {g["GroupId"] for g in perm.get("UserIdGroupPairs", ())}
        return out

    def app_server(self, name):
        """An instance tagged as the login server tags its app servers."""
        tags = [{"Key": "np-social:cluster", "Value": name}, {"Key": "np-social:role", "Value": "appserver"},
                {"Key": "np-social:server-id", "Value": "app-1"}]
        return self.ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                      TagSpecifications=[{"ResourceType": "instance", "Tags": tags}]
                                      )["Instances"][0]["InstanceId"]

    def profile_exists(self, name):
        try:
            self.iam.get_instance_profile(InstanceProfileName=name)
            return True
        except self.iam.exceptions.NoSuchEntityException:
            return False


class UpStatusDownTest(DemoTestCase):
    def test_up_status_down_and_down_again(self):
        name = "demo-a"
        _, err = self.demo("up", "--name", name, "--region", self.REGION, "--ami", AMI, "--allow", TA)
        s = self.read_state()
        self.assertEqual((s["name"], s["region"], s["image"]), (name, self.REGION, {"id": AMI, "built": False}))
        # the key pair, its private key next to the state file, mode 0600
        key_file = os.path.join(self.tmp, "ec2-demo.pem")
        self.assertEqual(s["key"]["file"], key_file)
        self.assertEqual(stat.S_IMODE(os.stat(key_file).st_mode), 0o600)
        with open(key_file) as f:
            self.assertIn("PRIVATE KEY", f.read())
        self.assertTrue(self.key_exists(s["key"]["name"]))
        self.assertEqual(stat.S_IMODE(os.stat(self.state).st_mode), 0o600)
        # security groups: clients and the TA reach the client ports only; the
        # internal and broker ports are open to the app servers' group only
        login_sg, app_sg = s["login_sg"]["id"], s["app_sg"]["id"]
        self.assertEqual(self.rules(login_sg), {
            22: ({MY_IP}, set()), 8888: ({MY_IP, TA}, set()),
            8899: (set(), {app_sg}), 61613: (set(), {app_sg})})
        self.assertEqual(self.rules(app_sg), {22: ({MY_IP}, set()), 9000: ({MY_IP, TA}, set())})
        # the login host
        host = self.instance(s["login_host"]["id"])
        self.assertEqual(host["State"]["Name"], "running")
        self.assertEqual([g["GroupId"] for g in host["SecurityGroups"]], [login_sg])
        self.assertEqual(host["KeyName"], s["key"]["name"])
        self.assertTrue(host["IamInstanceProfile"]["Arn"].endswith(f"/np-social-{name}-login"))
        tags = {t["Key"]: t["Value"] for t in host["Tags"]}
        self.assertEqual((tags["np-social:demo"], tags["np-social:role"]), (name, "login"))
        self.assertNotIn("np-social:cluster", tags, "the login server would terminate it as an orphan")
        script = base64.b64decode(self.ec2.describe_instance_attribute(
            InstanceId=host["InstanceId"], Attribute="userData")["UserData"]["Value"]).decode()
        for part in (f"--cluster {name}", f"--security-group {app_sg}", f"--ami {AMI}",
                     f"--region {self.REGION}", "--internal-port 8899", "--spare 1",
                     f"--key-name {s['key']['name']}", 'activemq.sh" ensure'):
            self.assertIn(part, script)
        # the login host's role: the fleet policy filled in for this demo
        policy = self.iam.get_role_policy(RoleName=f"np-social-{name}-login", PolicyName="np-social-fleet")
        text = json.dumps(policy["PolicyDocument"])
        for part in (f"security-group/{app_sg}", f"image/{AMI}", f'"{name}"', s["vpc"], '"t3.micro"'):
            self.assertIn(part, text)
        self.assertNotIn("ACCOUNT_ID", text)
        # up again, after the host was stopped (a Learner Lab session ended):
        # the same host started again, nothing new
        self.ec2.stop_instances(InstanceIds=[host["InstanceId"]])
        self.assertTrue(wait_for(lambda: self.instance(host["InstanceId"])["State"]["Name"] == "stopped", 10))
        _, err = self.demo("up")
        self.assertIn("was stopped: starting it", err)
        self.assertEqual(self.instance(host["InstanceId"])["State"]["Name"], "running")
        again = self.read_state()
        for key in ("login_sg", "app_sg", "key", "iam", "image"):
            self.assertEqual(again[key], s[key], key)
        self.assertEqual(again["login_host"]["id"], host["InstanceId"])
        self.assertEqual(again["login_host"]["public_ip"],
                         self.instance(host["InstanceId"])["PublicIpAddress"], "the new address recorded")
        hosts = self.ec2.describe_instances(Filters=[{"Name": "tag:np-social:demo", "Values": [name]}])
        self.assertEqual(sum(len(r["Instances"]) for r in hosts["Reservations"]), 1)
        # an app server the login server started: status shows it, down terminates it
        app = self.app_server(name)
        out, _ = self.demo("status")
        for part in (s["login_host"]["id"], login_sg, app_sg, app, "app-1", "61613 from " + app_sg):
            self.assertIn(part, out)
        saved = self.read_state()
        _, err = self.demo("down")
        self.assertFalse(os.path.exists(self.state))
        self.assertFalse(os.path.exists(key_file))
        for iid in (app, s["login_host"]["id"]):
            self.assertEqual(self.instance(iid)["State"]["Name"], "terminated", iid)
        self.assertIsNone(self.group(login_sg))
        self.assertIsNone(self.group(app_sg))
        self.assertFalse(self.key_exists(s["key"]["name"]))
        self.assertFalse(self.profile_exists(f"np-social-{name}-login"))
        # down again, from the same record: everything is already gone
        with open(self.state, "w") as f:
            json.dump(saved, f)
        self.demo("down")
        self.assertFalse(os.path.exists(self.state))
        _, err = self.demo("down")
        self.assertIn("nothing recorded", err)
        out, err = self.demo("status")
        self.assertIn("nothing recorded", err)

    def test_down_after_a_partial_failure(self):
        name = "demo-b"
        self.demo("up", "--name", name, "--region", self.REGION, "--ami", AMI)
        s = self.read_state()
        # AWS refuses the groups while network interfaces detach: first a
        # while (down retries, with progress lines), then for good
        self.proxy.faults["DeleteSecurityGroup"] = ["DependencyViolation", None]
        _, err = self.demo("down", "--timeout", "0.5", expect=1)
        self.assertIn("waiting for security group", err)
        self.assertIn("still in use after 0.5 s (--timeout)", err)
        self.assertIn("run down again", err.strip().splitlines()[-1])
        left = self.read_state()
        self.assertEqual(set(left) & {"login_host", "key", "iam", "login_sg", "app_sg"},
                         {"login_sg", "app_sg"}, "only what failed stays recorded")
        self.assertFalse(self.key_exists(s["key"]["name"]))
        self.assertEqual(self.instance(s["login_host"]["id"])["State"]["Name"], "terminated")
        self.assertIsNotNone(self.group(s["login_sg"]["id"]))
        # detached after a few more refusals: the next down finishes
        self.proxy.faults["DeleteSecurityGroup"] = ["DependencyViolation", 2]
        _, err = self.demo("down")
        self.assertIn("): in use (", err)     # the progress line of the retries
        self.assertIsNone(self.group(s["login_sg"]["id"]))
        self.assertIsNone(self.group(s["app_sg"]["id"]))
        self.assertFalse(os.path.exists(self.state))

    def test_down_finds_what_a_crash_left_unrecorded(self):
        """A crash between a create call and the save of its id: the name
        recorded first leads down to it."""
        name = "demo-c"
        self.demo("up", "--name", name, "--region", self.REGION, "--ami", AMI)
        s = self.read_state()
        for key in ("login_sg", "app_sg", "login_host"):
            s[key].pop("id")
        with open(self.state, "w") as f:
            json.dump(s, f)
        full = self.read_state()
        self.demo("down")
        groups = self.ec2.describe_security_groups(Filters=[
            {"Name": "group-name", "Values": [full["login_sg"]["name"], full["app_sg"]["name"]]}])
        self.assertEqual(groups["SecurityGroups"], [])
        hosts = self.ec2.describe_instances(Filters=[{"Name": "tag:np-social:demo", "Values": [name]}])
        self.assertEqual({i["State"]["Name"] for r in hosts["Reservations"] for i in r["Instances"]},
                         {"terminated"})


class LearnerLabTest(DemoTestCase):
    def test_the_labs_instance_profile_and_no_role_of_ours(self):
        name = "demo-lab"
        env = self.env(AWS_DEFAULT_REGION=None)    # the lab's region is the default
        _, err = self.demo("up", "--name", name, "--ami", AMI, "--learner-lab", expect=1, env=env)
        self.assertIn("instance profile LabInstanceProfile does not exist", err)
        self.assertIn("--instance-profile", err)
        self.assertIn("down", err.strip().splitlines()[-1])
        self.assertNotIn("Traceback", err)
        self.assertEqual(self.read_state()["region"], "us-east-1")
        # the lab's role and profile, as AWS Academy makes them
        iam = boto3.session.Session(region_name="us-east-1").client("iam", endpoint_url=self.endpoint)
        iam.create_role(RoleName="LabRole", AssumeRolePolicyDocument="{}")
        iam.create_instance_profile(InstanceProfileName="LabInstanceProfile")
        iam.add_role_to_instance_profile(InstanceProfileName="LabInstanceProfile", RoleName="LabRole")
        self.demo("up", "--learner-lab", env=env)
        s = self.read_state()
        self.assertEqual(s["iam"], {"profile": "LabInstanceProfile", "created": False})
        ec2 = boto3.session.Session(region_name="us-east-1").client("ec2", endpoint_url=self.endpoint)
        host = ec2.describe_instances(InstanceIds=[s["login_host"]["id"]])["Reservations"][0]["Instances"][0]
        self.assertTrue(host["IamInstanceProfile"]["Arn"].endswith("/LabInstanceProfile"))
        roles = [r["RoleName"] for r in iam.list_roles()["Roles"]]
        self.assertNotIn(f"np-social-{name}-login", roles)
        self.demo("down", env=env)
        iam.get_instance_profile(InstanceProfileName="LabInstanceProfile")   # the lab's: kept
        iam.get_role(RoleName="LabRole")


class ImageTest(DemoTestCase):
    def test_build_pick_and_delete(self):
        stopper = BuilderStopper(self.ec2)
        self.addCleanup(stopper.close)
        self.demo("up", "--name", "demo-build", "--region", self.REGION, "--base-ami", AMI)
        s = self.read_state()
        self.assertTrue(s["image"]["built"])
        image_id = s["image"]["id"]
        image = self.ec2.describe_images(ImageIds=[image_id])["Images"][0]
        tags = {t["Key"]: t["Value"] for t in image.get("Tags", ())}
        self.assertEqual(tags["np-social:role"], "appserver-image")
        self.assertEqual(len(stopper.stopped), 1)
        self.assertEqual(self.instance(s["login_host"]["id"])["ImageId"], image_id)
        bucket = s["bucket"]["name"]
        self.assertTrue(s["bucket"]["created"])
        # a second demo picks the image that holds this commit, builds nothing
        other = os.path.join(self.tmp, "other.state.json")
        _, err = self.demo("up", "--name", "demo-pick", "--region", self.REGION, state=other)
        self.assertEqual(self.read_state(other)["image"], {"id": image_id, "built": False})
        self.assertIn("using it", err)
        self.assertEqual(len(stopper.stopped), 1)
        self.demo("down", state=other)       # not its image: kept
        self.assertEqual(self.ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"], "available")
        self.demo("down")                     # its own: deregistered, snapshot and bucket deleted
        self.assertEqual(self.ec2.describe_images(Owners=["self"], Filters=[
            {"Name": "image-id", "Values": [image_id]}])["Images"], [])
        snapshots = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"] if "Ebs" in m]
        self.assertTrue(snapshots)
        found = self.ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": snapshots}])
        self.assertEqual(found["Snapshots"], [])
        self.assertNotIn(bucket, [b["Name"] for b in self.s3.list_buckets()["Buckets"]])


class UsageTest(DemoTestCase):
    def test_exit_codes_and_one_line_errors(self):
        _, err = self.demo("up", "--name", "Bad_Name", expect=2)
        self.assertIn("--name", err.strip().splitlines()[-1])
        self.demo("up", "--name", "demo-u", "--ami", AMI)
        _, err = self.demo("up", "--region", "us-west-2", expect=2)
        self.assertEqual(len(err.strip().splitlines()), 2, err)   # the error, and what down does
        self.assertIn("--region us-west-2 differs", err)
        _, err = self.demo("up", "--name", "demo-u2", "--ami", "ami-12345678",
                           state=os.path.join(self.tmp, "u2.state.json"), expect=1)
        self.assertIn("image ami-12345678 not found", err)
        self.demo("down", state=os.path.join(self.tmp, "u2.state.json"))
        no_creds = self.env(AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None,
                            AWS_SHARED_CREDENTIALS_FILE=os.path.join(self.tmp, "none"),
                            AWS_CONFIG_FILE=os.path.join(self.tmp, "none"))
        _, err = self.demo("status", expect=1, env=no_creds)
        self.assertEqual(err.strip().splitlines(), [
            "ec2-demo: no AWS credentials: `aws configure`, AWS_PROFILE, or (Learner Lab) the lab's "
            "AWS Details pasted into ~/.aws/credentials"])
        self.demo("down")


# -- the scripts instances run at first boot ----------------------------------------------
def stub(directory, name, body):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!/bin/bash\n" + body + "\n")
    os.chmod(path, 0o755)
    return path


class AppServerUserDataTest(unittest.TestCase):
    """userdata.sh.in with credentials: a stub python stands in for appserver.py
    and records its argv, its broker environment and the file it came from."""
    PASSWORD = "s3cret-Pass_word.0123456789+/="

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="np-userdata-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.python = stub(self.dir, "python", f'''
{{ printf '%s\\n' "$*"; printf '%s\\n' "${{NP_BROKER_USER-unset}}" "${{NP_BROKER_PASSWORD-unset}}"
  tr '\\0' ' ' < /proc/$$/cmdline; echo; }} > {self.dir}/python.log''')
        self.creds = broker_credentials.Credentials("np-0a1b2c3d", self.PASSWORD)

    def run_script(self, creds, **env):
        config = Ec2Config(ami=AMI, login_address=("10.0.0.5", 8899), cluster="c", broker="10.0.0.5:61613",
                           credentials=creds, app_args=("--max-conns-per-address", "7"))
        script = user_data(config, "app-1", "join-secret")
        base = {"PATH": os.environ["PATH"], "NP_HOME": self.dir, "NP_PYTHON": self.python,
                "NP_ADVERTISE": "127.0.0.1", "TMPDIR": os.path.join(self.dir, "tmp")}
        os.makedirs(base["TMPDIR"], exist_ok=True)
        base.update(env)
        done = subprocess.run(["bash", "-c", script], env=base, capture_output=True, text=True, timeout=20)
        log = None
        if os.path.exists(os.path.join(self.dir, "python.log")):
            with open(os.path.join(self.dir, "python.log")) as f:
                log = f.read().splitlines()
        return done, log

    def test_credentials_reach_the_environment_through_a_0600_file(self):
        env_file = os.path.join(self.dir, "run", "appserver.env")
        done, log = self.run_script(self.creds, NP_ENV_FILE=env_file)
        self.assertEqual(done.returncode, 0, done.stderr)
        argv, user, password, cmdline = log
        self.assertEqual((user, password), ("np-0a1b2c3d", self.PASSWORD))
        self.assertNotIn(self.PASSWORD, argv)
        self.assertNotIn(self.PASSWORD, cmdline)
        self.assertIn("--max-conns-per-address 7", argv)
        self.assertIn("--broker 10.0.0.5:61613", argv)
        self.assertEqual(stat.S_IMODE(os.stat(env_file).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(env_file)).st_mode), 0o700)
        with open(env_file) as f:
            self.assertEqual(f.read(), f"NP_BROKER_USER=np-0a1b2c3d\nNP_BROKER_PASSWORD={self.PASSWORD}\n")

    def test_off_ec2_no_copy_is_left_behind(self):
        done, log = self.run_script(self.creds)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(log[1:3], ["np-0a1b2c3d", self.PASSWORD])
        self.assertEqual(os.listdir(os.path.join(self.dir, "tmp")), [])

    def test_without_credentials_nothing_is_written(self):
        done, log = self.run_script(None, NP_ENV_FILE=os.path.join(self.dir, "run", "appserver.env"))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(log[1:3], ["unset", "unset"])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "run")))

    def test_unwritable_file_stops_before_the_app_server(self):
        blocker = os.path.join(self.dir, "not-a-dir")
        open(blocker, "w").close()
        done, log = self.run_script(self.creds, NP_ENV_FILE=os.path.join(blocker, "appserver.env"))
        self.assertEqual(done.returncode, 1)
        self.assertIsNone(log, "the app server must not start without its credentials")
        self.assertIn("cannot write the broker credentials", done.stderr)


class LoginHostUserDataTest(unittest.TestCase):
    """The demo login host's first boot with stubs for activemq.sh and systemctl."""

    def test_credentials_broker_and_service(self):
        from tests.pure.test_ec2_userdata import STATE, Opts, demo, load_server
        d = tempfile.mkdtemp(prefix="np-loginhost-")
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        home = os.path.join(d, "home")
        os.makedirs(os.path.join(home, "scripts"))
        os.symlink(os.path.join(ROOT, "lib"), os.path.join(home, "lib"))
        stub(os.path.join(home, "scripts"), "activemq.sh", f'''
stat -c %a "$2" > {d}/activemq.mode
printf '%s\\n' "$*" "$NP_BROKER_BIND" "$NP_BROKER_PORT" "${{NP_BROKER_PASSWORD-unset}}" > {d}/activemq.log''')
        systemctl = stub(d, "systemctl", f'echo "$*" >> {d}/systemctl.log')
        units = os.path.join(d, "units")
        os.makedirs(units)
        data = os.path.join(d, "data")
        user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        script = demo.login_user_data(Opts(), STATE)
        env = {"PATH": os.environ["PATH"], "NP_ADVERTISE": "10.1.2.3", "NP_HOME": home, "NP_PYTHON": PYTHON,
               "NP_DATA": data, "NP_USER": user, "NP_UNIT_DIR": units, "NP_SYSTEMCTL": systemctl}
        for _ in range(2):       # a second run (a re-run by hand) keeps the credentials
            done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
            self.assertEqual(done.returncode, 0, done.stderr)
            if _ == 0:
                first = broker_credentials.read_file(os.path.join(data, "broker.credentials"))
        creds = broker_credentials.read_file(os.path.join(data, "broker.credentials"))   # 0600, ours
        self.assertEqual(creds, first)
        self.assertEqual(stat.S_IMODE(os.stat(data).st_mode), 0o700)
        with open(os.path.join(d, "activemq.log")) as f:
            self.assertEqual(f.read().splitlines(), [f"ensure {data}/broker.credentials", "10.1.2.3", "61613",
                                                     "unset"])
        with open(os.path.join(d, "activemq.mode")) as f:
            self.assertEqual(f.read().strip(), "600")
        with open(os.path.join(d, "systemctl.log")) as f:
            self.assertEqual(f.read().splitlines(), ["daemon-reload", "enable --now np-social-login.service"] * 2)
        with open(os.path.join(units, "np-social-login.service")) as f:
            unit = f.read()
        self.assertIn(f"User={user}\n", unit)
        self.assertIn(f"WorkingDirectory={home}\n", unit)
        exec_start = shlex.split(next(line for line in unit.splitlines() if line.startswith("ExecStart=")))
        self.assertEqual(exec_start[:2], [f"ExecStart={PYTHON}", f"{home}/server.py"])
        args = load_server().parse_args(exec_start[2:])
        self.assertEqual((args.data, args.advertise, args.broker), (data, "10.1.2.3", "10.1.2.3:61613"))
        self.assertEqual((args.launcher, args.cluster, args.security_group), ("ec2", "np-demo", ["sg-0app"]))
        self.assertNotIn(creds.password, unit + script)


if __name__ == "__main__":
    unittest.main()
