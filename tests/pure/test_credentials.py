"""Broker credentials (lib/messaging/credentials.py), the server's broker
set-up (lib/messaging/setup.py, with a fake runner), and the broker
configuration templates scripts/activemq.sh renders (scripts/activemq/)."""
import logging
import os
import re
import stat
import subprocess
import tempfile
import unittest
import xml.etree.ElementTree as ET

from lib import ROOT
from lib.messaging import credentials, setup
from lib.messaging.credentials import Credentials, CredentialsError

GOOD = Credentials("np-0a1b2c3d", "S3cret-with_url.safe~chars+/=")
TEMPLATES = os.path.join(ROOT, "scripts", "activemq")
SCRIPT = os.path.join(ROOT, "scripts", "activemq.sh")
CORE = "{http://activemq.apache.org/schema/core}"


class CredentialsTest(unittest.TestCase):

    def test_generated_credentials_have_the_contract_shape(self):
        a, b = credentials.generate(), credentials.generate()
        self.assertRegex(a.user, r"^np-[0-9a-f]{8}$")
        self.assertEqual(len(a.password), 32)
        self.assertNotEqual((a.user, a.password), (b.user, b.password))

    def test_the_password_never_shows_in_repr(self):
        self.assertNotIn(GOOD.password, repr(GOOD))
        self.assertIn(GOOD.user, repr(GOOD))

    def test_malformed_values_are_refused(self):
        for user, password in (("", GOOD.password), ("a b", GOOD.password), ("a=b", GOOD.password),
                               ("x" * 65, GOOD.password), (GOOD.user, "short"),
                               (GOOD.user, "sixteen chars ok"), (GOOD.user, "back\\slash" * 3),
                               (GOOD.user, "new\nline" * 3), (GOOD.user, "é" * 20)):
            with self.subTest(user=user, password=password):
                with self.assertRaises(CredentialsError):
                    Credentials(user, password)

    def test_from_env(self):
        self.assertIsNone(credentials.from_env({}))
        self.assertIsNone(credentials.from_env({"NP_BROKER_USER": "", "NP_BROKER_PASSWORD": ""}))
        self.assertEqual(credentials.from_env({"NP_BROKER_USER": GOOD.user,
                                               "NP_BROKER_PASSWORD": GOOD.password}), GOOD)
        for env in ({"NP_BROKER_USER": GOOD.user}, {"NP_BROKER_PASSWORD": GOOD.password}):
            with self.subTest(env=list(env)):
                with self.assertRaisesRegex(CredentialsError, "is set but .* is not"):
                    credentials.from_env(env)
        with self.assertRaisesRegex(CredentialsError, "NP_BROKER_USER/NP_BROKER_PASSWORD"):
            credentials.from_env({"NP_BROKER_USER": GOOD.user, "NP_BROKER_PASSWORD": "weak"})

    def test_env_round_trips(self):
        self.assertEqual(credentials.env(GOOD), {"NP_BROKER_USER": GOOD.user,
                                                 "NP_BROKER_PASSWORD": GOOD.password})
        self.assertEqual(credentials.from_env(credentials.env(GOOD)), GOOD)


class CredentialsFileTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(self.dir))
        self.path = os.path.join(self.dir, "broker.credentials")

    def write(self, text, mode=0o600):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(self.path, mode)

    def test_created_once_with_mode_0600_and_two_lines(self):
        creds = credentials.load_or_create(self.path)
        st = os.stat(self.path)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        with open(self.path) as f:
            self.assertEqual(f.read(), f"user={creds.user}\npassword={creds.password}\n")
        self.assertEqual(credentials.load_or_create(self.path), creds)   # kept, not regenerated
        self.assertEqual([n for n in os.listdir(self.dir)], ["broker.credentials"])  # no temp left

    def test_an_existing_file_is_read_not_replaced(self):
        self.write(f"user={GOOD.user}\npassword={GOOD.password}\n")
        self.assertEqual(credentials.load_or_create(self.path), GOOD)
        self.assertFalse(credentials.write_new(self.path, credentials.generate()))
        self.assertEqual(credentials.read_file(self.path), GOOD)

    def test_a_file_others_can_read_is_refused_in_one_line(self):
        for mode in (0o644, 0o640, 0o604, 0o660):
            with self.subTest(mode=oct(mode)):
                self.write(f"user={GOOD.user}\npassword={GOOD.password}\n", mode)
                with self.assertRaises(CredentialsError) as caught:
                    credentials.load_or_create(self.path)
                message = str(caught.exception)
                self.assertNotIn("\n", message)
                self.assertIn("readable by other users", message)
                self.assertIn("chmod 600", message)
                self.assertNotIn(GOOD.password, message)

    def test_a_symlink_is_not_followed(self):
        target = os.path.join(self.dir, "elsewhere")
        with open(target, "w") as f:
            f.write(f"user={GOOD.user}\npassword={GOOD.password}\n")
        os.chmod(target, 0o600)
        os.symlink(target, self.path)
        with self.assertRaisesRegex(CredentialsError, "symbolic link"):
            credentials.load_or_create(self.path)
        os.unlink(self.path)
        os.symlink(os.path.join(self.dir, "missing"), self.path)   # dangling: not created through
        with self.assertRaisesRegex(CredentialsError, "symbolic link"):
            credentials.load_or_create(self.path)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "missing")))

    def test_malformed_files_are_refused_without_echoing_the_secret(self):
        for text in ("", "user=np-0a1b2c3d\n", f"password={GOOD.password}\n",
                     f"user={GOOD.user}\npassword={GOOD.password}\nuser=other\n",
                     f"user={GOOD.user}\npassword=short\n", f"login={GOOD.user}\npassword=x\n",
                     f"user={GOOD.user}\npassword {GOOD.password}\n", "\xff"):
            with self.subTest(text=text):
                self.write(text)
                with self.assertRaises(CredentialsError) as caught:
                    credentials.load_or_create(self.path)
                self.assertNotIn("\n", str(caught.exception))
                self.assertNotIn(GOOD.password, str(caught.exception))

    def test_comments_and_blank_lines_are_allowed(self):
        self.write(f"# broker\n\nuser={GOOD.user}\npassword={GOOD.password}\n")
        self.assertEqual(credentials.read_file(self.path), GOOD)


class FakeRun:
    """subprocess.run as the set-up calls it, recorded; exits with `code`."""

    def __init__(self, code=0):
        self.code, self.calls = code, []

    def __call__(self, argv, env=None, **kwargs):
        self.calls.append((argv, env))
        return subprocess.CompletedProcess(argv, self.code)


class SetupTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(self.dir))
        self.path = os.path.join(self.dir, "broker.credentials")

    def test_local_broker_is_ensured_with_the_file_credentials_in_its_environment(self):
        run = FakeRun()
        with self.assertLogs("broker", logging.INFO) as logs:
            creds = setup.prepare(self.dir, local=True, environ={"PATH": "/bin"}, run=run)
        self.assertEqual(credentials.read_file(self.path), creds)
        self.assertIn("created", logs.output[0])
        self.assertNotIn(creds.password, " ".join(logs.output))
        [(argv, env)] = run.calls
        self.assertEqual(argv, [setup.SCRIPT, "ensure"])          # no secret in argv
        self.assertEqual((env["NP_BROKER_USER"], env["NP_BROKER_PASSWORD"]),
                         (creds.user, creds.password))
        self.assertEqual(env["NP_BROKER_CREDENTIALS_FILE"], self.path)
        self.assertEqual(env["PATH"], "/bin")
        # the next start: the same credentials, no new file
        run2 = FakeRun()
        self.assertEqual(setup.prepare(self.dir, local=True, environ={}, run=run2), creds)
        self.assertEqual(run2.calls[0][1]["NP_BROKER_PASSWORD"], creds.password)

    def test_environment_credentials_win_and_no_file_is_made(self):
        run = FakeRun()
        creds = setup.prepare(self.dir, local=True, environ=credentials.env(GOOD), run=run)
        self.assertEqual(creds, GOOD)
        self.assertFalse(os.path.exists(self.path))
        self.assertNotIn("NP_BROKER_CREDENTIALS_FILE", run.calls[0][1])

    def test_a_named_broker_is_not_set_up_here(self):
        run = FakeRun()
        self.assertEqual(setup.prepare(self.dir, local=False, environ=credentials.env(GOOD),
                                       run=run), GOOD)
        self.assertEqual(run.calls, [])

    def test_a_failed_set_up_is_one_warning_and_the_server_goes_on(self):
        with self.assertLogs("broker", logging.WARNING) as logs:
            creds = setup.prepare(self.dir, local=True, environ=credentials.env(GOOD),
                                  run=FakeRun(code=4))
        self.assertEqual(creds, GOOD)
        [line] = logs.output
        self.assertIn("exit 4", line)
        self.assertIn("send and send-group will fail", line)

    def test_bad_credentials_stop_the_start(self):
        with self.assertRaises(CredentialsError):
            setup.prepare(self.dir, local=True, environ={"NP_BROKER_USER": "np-x"}, run=FakeRun())
        with open(self.path, "w") as f:
            f.write(f"user={GOOD.user}\npassword={GOOD.password}\n")
        os.chmod(self.path, 0o644)
        run = FakeRun()
        with self.assertRaisesRegex(CredentialsError, "readable by other users"):
            setup.prepare(self.dir, local=True, environ={}, run=run)
        self.assertEqual(run.calls, [])      # nothing set up with credentials others may read


class BrokerTemplatesTest(unittest.TestCase):
    """scripts/activemq/: the configuration of the machine's broker and the
    tests' own (`scripts/activemq.sh render`)."""

    def read(self, name):
        with open(os.path.join(TEMPLATES, name)) as f:
            return f.read()

    def broker_element(self):
        text = self.read("activemq.xml.in").replace("@BIND@", "127.0.0.1").replace("@PORT@", "61613")
        return ET.fromstring(text).find(f"{CORE}broker")

    def test_stomp_is_the_only_connector(self):
        broker = self.broker_element()
        connectors = list(broker.iter(f"{CORE}transportConnector"))
        self.assertEqual([(c.get("name"), c.get("uri")) for c in connectors],
                         [("stomp", "stomp://127.0.0.1:61613?transport.tcpNoDelay=true")])
        self.assertNotIn("openwire", self.read("activemq.xml.in").replace("no OpenWire", ""))

    def test_personal_queues_leave_nothing_behind(self):
        """Expired personal messages are dropped (no dead-letter queue) and
        empty queues without a subscriber are collected."""
        broker = self.broker_element()
        [entry] = broker.iter(f"{CORE}policyEntry")
        self.assertEqual((entry.get("queue"), entry.get("gcInactiveDestinations")), ("np.u.>", "true"))
        [dead] = entry.iter(f"{CORE}sharedDeadLetterStrategy")
        self.assertEqual(dead.get("processExpired"), "false")
        self.assertTrue(broker.get("schedulePeriodForDestinationPurge"))

    def test_every_connection_must_log_in(self):
        broker = self.broker_element()
        [plugins] = broker.findall(f"{CORE}plugins")
        self.assertEqual([(p.tag, dict(p.attrib)) for p in plugins],
                         [(f"{CORE}jaasAuthenticationPlugin", {"configuration": "activemq"})])
        login = self.read("login.config")
        self.assertRegex(login, r"activemq \{\s*org\.apache\.activemq\.jaas\.PropertiesLoginModule required")
        self.assertIn('org.apache.activemq.jaas.properties.user="users.properties"', login)
        self.assertIn("reload=true;", login)
        self.assertNotIn("GuestLoginModule", login)

    def test_no_default_users_anywhere(self):
        texts = {name: self.read(name) for name in os.listdir(TEMPLATES)}
        with open(SCRIPT) as f:
            texts["activemq.sh"] = f.read()
        for name, text in texts.items():
            for default in ("admin=admin", "guest=guest", "system=manager", "admin: admin"):
                self.assertNotIn(default, text, name)
        groups = [line for line in self.read("groups.properties").splitlines()
                  if line.strip() and not line.startswith("#")]
        self.assertEqual(groups, [])

    def test_the_script_checks_the_same_characters_as_credentials_py(self):
        with open(SCRIPT) as f:
            script = f.read()
        user_re = re.search(r"^USER_RE='\^(.*)\$'$", script, re.M).group(1)
        pass_re = re.search(r"^PASS_RE='\^(.*)\$'$", script, re.M).group(1)
        self.assertEqual(user_re, credentials.USER_RE.pattern)
        self.assertEqual(pass_re, credentials.PASSWORD_RE.pattern)


if __name__ == "__main__":
    unittest.main()
