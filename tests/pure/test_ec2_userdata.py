"""What EC2 instances are told at first boot, checked on the rendered text.

The app server's user-data (lib/fleet/launchers/ec2/userdata.sh.in) carries
the broker credentials into a 0600 environment file, never onto a command
line, and the login server's connection limits onto the app server's command
line; the demo's login host (scripts/ec2_demo.py) gets a script that sets up
ActiveMQ and the login server; the demo's security groups open the internal
and broker ports to the app servers' group only. Running these scripts with
bash is in tests/live/test_ec2_demo.py (this tier starts no process).
"""
import contextlib
import importlib.util
import io
import json
import os
import shlex
import sys
import unittest
from collections import namedtuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from lib.fleet.launchers.ec2.options import Ec2Config, config_from_args, run_params  # noqa: E402
from lib.fleet.launchers.ec2.userdata import user_data  # noqa: E402
from lib.messaging.credentials import Credentials  # noqa: E402
from lib.social import limits  # noqa: E402


def load_demo():
    spec = importlib.util.spec_from_file_location("ec2_demo", os.path.join(ROOT, "scripts", "ec2_demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = load_demo()
PASSWORD = "Zx9_secret-PASSWORD-0123456789abc"
Login = namedtuple("Login", "user password")    # what the launcher needs of credentials


def config(**kw):
    values = dict(ami="ami-1", login_address=("10.0.0.5", 8899), cluster="np-demo", broker="10.0.0.5:61613")
    values.update(kw)
    return Ec2Config(**values)


def app_line(script):
    """The lines of the command that starts appserver.py."""
    start = script.index('"$NP_PYTHON" appserver.py')
    return script[start:script.index("\n", script.index("--id", start))]


class AppServerUserDataTest(unittest.TestCase):
    def test_credentials_only_in_the_environment_file_block(self):
        script = user_data(config(credentials=Credentials("np-0a1b2c3d", PASSWORD)), "app-1", "join")
        self.assertEqual(script.count(PASSWORD), 1, "the password appears once: its assignment")
        self.assertIn(f"broker_password={PASSWORD}\n", script)
        self.assertIn("broker_user=np-0a1b2c3d\n", script)
        self.assertNotIn(PASSWORD, app_line(script))
        self.assertNotIn("np-0a1b2c3d", app_line(script))
        self.assertIn("NP_BROKER_USER=%q\\nNP_BROKER_PASSWORD=%q", script)
        self.assertIn("umask 077", script)
        self.assertIn("/run/np-social/appserver.env", script)
        # assigned before the command that starts the app server, and unset after loading
        self.assertLess(script.index("broker_password="), script.index('"$NP_PYTHON" appserver.py'))
        self.assertIn("unset broker_user broker_password", script)

    def test_credentials_never_in_the_launch_parameters_outside_user_data(self):
        params = run_params(config(credentials=Credentials("np-0a1b2c3d", PASSWORD)), "app-1", "join", "s")
        outside = json.dumps({k: v for k, v in params.items() if k != "UserData"})
        self.assertNotIn(PASSWORD, outside)
        self.assertIn(PASSWORD, params["UserData"])
        self.assertNotIn(PASSWORD, repr(config(credentials=Credentials("np-0a1b2c3d", PASSWORD))))

    def test_without_credentials_the_block_is_inert(self):
        script = user_data(config(), "app-1", "join")
        self.assertIn("broker_user=''\n", script)
        self.assertIn('if [ -n "$broker_user" ]; then', script)

    def test_hostile_values_are_quoted(self):
        nasty = "pa'ss$(touch /tmp/x)`id`\"w"
        script = user_data(config(credentials=Login("u s'r", nasty)), "app-1", "join")
        self.assertIn("broker_password=" + shlex.quote(nasty) + "\n", script)
        self.assertIn("broker_user=" + shlex.quote("u s'r") + "\n", script)
        with self.assertRaises(ValueError):
            user_data(config(credentials=Login("u", "line\nbreak")), "app-1", "join")

    def test_connection_limits_reach_the_app_server_command_line(self):
        server = load_server()
        args = server.parse_args(["0.0.0.0", "8888", "--launcher", "ec2", "--ami", "ami-1",
                                  "--advertise", "10.0.0.5", "--max-conns-per-address", "7",
                                  "--first-request-timeout", "2.5"])
        creds = Credentials("np-0a1b2c3d", PASSWORD)
        cfg = config_from_args(args, ("0.0.0.0", 8899), credentials=creds)
        self.assertIs(cfg.credentials, creds)
        want = limits.to_argv(limits.from_args(args), only=limits.APP_SERVER)
        self.assertEqual(list(cfg.app_args), want)
        self.assertIn("--max-conns-per-address", want)
        line = app_line(user_data(cfg, "app-2", "join"))
        self.assertIn("--max-conns-per-address 7 ", line + " ")
        self.assertIn("--first-request-timeout 2.5", line)
        for name in limits.APP_SERVER:
            self.assertIn("--" + name.replace("_", "-") + " ", line + " ")
        self.assertNotIn("--hash-queue", line, "only the app server's own limits")


def load_server():
    spec = importlib.util.spec_from_file_location("np_server_main", os.path.join(ROOT, "server.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Opts:
    """The options login_user_data reads, as parse_args makes them."""

    def __init__(self, **kw):
        self.__dict__.update(demo.parse_args(["up", *kw.pop("argv", [])]).__dict__)
        self.__dict__.update(kw)


STATE = {"name": "np-demo", "region": "eu-west-3", "image": {"id": "ami-0abc"},
         "app_sg": {"id": "sg-0app"}, "key": {"name": "np-social-np-demo"}}


class LoginHostUserDataTest(unittest.TestCase):
    def test_login_server_options(self):
        script = demo.login_user_data(Opts(argv=["--spare", "2", "--server-arg=--capacity=3"]), STATE)
        exec_start = next(line for line in script.splitlines() if line.startswith("ExecStart="))
        argv = shlex.split(exec_start)[2:]          # after the python and server.py
        # the runtime values the script fills in
        argv = [a.replace("$NP_ADVERTISE", "10.1.2.3").replace("$NP_DATA", "/var/lib/np-social")
                for a in argv]
        args = load_server().parse_args(argv)
        self.assertEqual((args.host, args.port, args.launcher), ("0.0.0.0", 8888, "ec2"))
        self.assertEqual((args.ami, args.cluster, args.region), ("ami-0abc", "np-demo", "eu-west-3"))
        self.assertEqual(args.security_group, ["sg-0app"])
        self.assertEqual(args.key_name, "np-social-np-demo")
        self.assertEqual((args.advertise, args.broker), ("10.1.2.3", "10.1.2.3:61613"))
        self.assertEqual((args.internal_port, args.app_port), (8899, 9000))
        self.assertEqual((args.spare, args.capacity, args.max_app_servers), (2, 3, 3))
        self.assertIn("NP_BROKER_BIND=$NP_ADVERTISE NP_BROKER_PORT=61613", script)
        self.assertIn('scripts/activemq.sh" ensure "$credentials"', script)

    def test_no_placeholder_left_and_unsafe_arguments_refused(self):
        script = demo.login_user_data(Opts(), STATE)
        self.assertIsNone(demo.re.search(r"@[A-Z_]+@", script))
        with self.assertRaises(demo.DemoError):
            demo.login_user_data(Opts(server_arg=["--capacity=$(reboot)"]), STATE)
        with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
            demo.parse_args(["up", "--server-arg", "a b"])
        self.assertIn("--server-arg 'a b'", err.getvalue())


class SecurityGroupPlanTest(unittest.TestCase):
    def test_internal_and_broker_ports_only_from_the_app_servers_group(self):
        ports = demo.Ports()
        rules = demo.ingress_plan(ports, ["198.51.100.7/32", "203.0.113.0/24"], ["198.51.100.7/32"])
        by_port = {}
        for rule in rules:
            by_port.setdefault((rule.group, rule.port), set()).add(rule.source)
        self.assertEqual(by_port, {
            ("login", 8888): {"198.51.100.7/32", "203.0.113.0/24"},
            ("app", 9000): {"198.51.100.7/32", "203.0.113.0/24"},
            ("login", 22): {"198.51.100.7/32"},
            ("app", 22): {"198.51.100.7/32"},
            ("login", 8899): {"app"},
            ("login", 61613): {"app"},
        })
        perm = demo.permission(next(r for r in rules if r.port == 61613), {"app": "sg-a", "login": "sg-l"})
        self.assertEqual(perm["UserIdGroupPairs"][0]["GroupId"], "sg-a")
        self.assertNotIn("IpRanges", perm)

    def test_addresses(self):
        self.assertEqual(demo.cidr("198.51.100.7"), "198.51.100.7/32")
        self.assertEqual(demo.cidr("203.0.113.9/24"), "203.0.113.0/24")
        with self.assertRaises(demo.argparse.ArgumentTypeError):
            demo.cidr("example.com")


class PolicyTest(unittest.TestCase):
    def test_every_placeholder_filled(self):
        with open(demo.POLICY) as f:
            text = f.read()
        values = {"REGION": "eu-west-3", "ACCOUNT_ID": "123456789012", "AMI_ID": "ami-0abc",
                  "CLUSTER": "np-demo", "APP_SG_ID": "sg-0app", "VPC_ID": "vpc-1",
                  "KEY_NAME": "np-social-np-demo", "INSTANCE_TYPE": "t3.small"}
        filled = demo.fill_policy(text, values)
        self.assertIsNone(demo.PLACEHOLDERS.search(filled))
        doc = json.loads(filled)
        run = [st for st in doc["Statement"] if st["Sid"] == "RunOnlyTaggedSmallAppServersWithImdsV2"][0]
        self.assertEqual(run["Condition"]["StringEquals"]["ec2:InstanceType"], "t3.small")
        self.assertEqual(run["Condition"]["StringEquals"]["aws:RequestTag/np-social:cluster"], "np-demo")
        self.assertIn("arn:aws:ec2:eu-west-3:123456789012:security-group/sg-0app", filled)
        self.assertIn("arn:aws:ec2:eu-west-3::image/ami-0abc", filled)


if __name__ == "__main__":
    unittest.main()
