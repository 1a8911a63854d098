"""The broker takes only its users' logins, and speaks only STOMP.

Against the run's own broker (tests/broker_instance.py), configured exactly
as scripts/activemq.sh configures the machine's: plain sockets speak STOMP
here, so this checks the broker, not a client library. The configuration
files themselves are checked in tests/pure/test_credentials.py.
"""
import os
import socket
import subprocess
import tempfile
import unittest
import xml.etree.ElementTree as ET

from tests.support import BROKER, ROOT, own_broker

SCRIPT = os.path.join(ROOT, "scripts", "activemq.sh")
CORE = "{http://activemq.apache.org/schema/core}"


class RawStomp:
    """A STOMP 1.2 session on a plain socket: frames out, frames in."""

    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def send_frame(self, command, headers=None, body=""):
        head = "".join(f"{k}:{v}\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"{command}\n{head}\n{body}".encode("utf-8") + b"\x00")

    def read_frame(self):
        """(command, headers, body); None when the broker closed the connection."""
        while True:
            self.buf = self.buf.lstrip(b"\r\n")          # heart-beats
            if b"\x00" in self.buf:
                raw, self.buf = self.buf.split(b"\x00", 1)
                head, _, body = raw.decode("utf-8").partition("\n\n")
                command, *lines = head.split("\n")
                return command, dict(line.split(":", 1) for line in lines if ":" in line), body
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.buf += data

    def closed_by_broker(self):
        """Does the broker close the connection (it may send nothing more)?"""
        while True:
            frame = self.read_frame()
            if frame is None:
                return True
            if frame[0] != "ERROR":
                return False

    def close(self):
        self.sock.close()


def connect(host, port, login=None, passcode=None):
    """(the broker's answer to CONNECT, the open session)."""
    session = RawStomp(host, port)
    headers = {"accept-version": "1.2", "host": "localhost"}
    if login is not None:
        headers.update(login=login, passcode=passcode)
    session.send_frame("CONNECT", headers)
    return session.read_frame(), session


def listening_ports(pid):
    """TCP ports process `pid` listens on (from ss)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return sorted({int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()
                   if f"pid={pid}," in line})


class BrokerAuthTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.broker = own_broker()
        if cls.broker is None or cls.broker.address != BROKER:
            raise unittest.SkipTest("needs the run's own broker (run it through ./run-tests)")
        cls.host, _, cls.port = BROKER.rpartition(":")
        cls.user, cls.password = os.environ["NP_BROKER_USER"], os.environ["NP_BROKER_PASSWORD"]

    def assert_refused(self, login, passcode):
        answer, session = connect(self.host, self.port, login, passcode)
        try:
            self.assertIsNotNone(answer, "closed without an answer")   # ActiveMQ says why first
            command, headers, _ = answer
            self.assertEqual(command, "ERROR", f"login {login!r} was accepted")
            self.assertIn("password is invalid", headers.get("message", ""))
            self.assertTrue(session.closed_by_broker(), "the refused connection stayed open")
        finally:
            session.close()

    def test_anonymous_is_refused(self):
        self.assert_refused(None, None)

    def test_default_credentials_are_refused(self):
        for login, passcode in (("admin", "admin"), ("guest", "guest"), ("system", "manager"),
                                ("admin", ""), ("", "")):
            with self.subTest(login=login):
                self.assert_refused(login, passcode)

    def test_wrong_password_of_the_right_user_is_refused(self):
        for wrong in (self.password[:-1], self.password + "x", self.password.upper(), ""):
            with self.subTest(wrong=len(wrong)):
                self.assert_refused(self.user, wrong)

    def test_the_right_credentials_connect_and_work(self):
        answer, session = connect(self.host, self.port, self.user, self.password)
        try:
            self.assertIsNotNone(answer)
            self.assertEqual(answer[0], "CONNECTED", answer)
            # a real session: subscribe, send, receive
            destination = f"/queue/np.test.auth.{os.getpid()}"
            session.send_frame("SUBSCRIBE", {"id": "1", "destination": destination, "ack": "auto",
                                             "receipt": "sub"})
            self.assertEqual(session.read_frame()[:2], ("RECEIPT", {"receipt-id": "sub"}))
            session.send_frame("SEND", {"destination": destination}, "only for servers")
            command, headers, body = session.read_frame()
            self.assertEqual((command, body), ("MESSAGE", "only for servers"))
            session.send_frame("DISCONNECT", {"receipt": "bye"})
            self.assertEqual(session.read_frame()[0], "RECEIPT")
        finally:
            session.close()

    def test_the_broker_listens_on_its_stomp_port_only(self):
        """No OpenWire (61616), AMQP, MQTT or web console beside STOMP."""
        self.assertEqual(listening_ports(self.broker.proc.pid), [int(self.port)])


class RenderTest(unittest.TestCase):
    """`scripts/activemq.sh render DIR`: what the machine's broker and the
    test broker run with."""

    def test_render_writes_a_stomp_only_login_required_configuration(self):
        with tempfile.TemporaryDirectory() as tmp:
            conf = os.path.join(tmp, "conf")
            env = dict(os.environ, NP_BROKER_BIND="127.0.0.1", NP_BROKER_PORT="61999",
                       NP_BROKER_USER="np-0123abcd", NP_BROKER_PASSWORD="p" * 20)
            proc = subprocess.run([SCRIPT, "render", conf], env=env, capture_output=True, text=True)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertNotIn("p" * 20, proc.stdout + proc.stderr)
            broker = ET.parse(os.path.join(conf, "activemq.xml")).getroot().find(f"{CORE}broker")
            uris = [c.get("uri") for c in broker.iter(f"{CORE}transportConnector")]
            self.assertEqual(uris, ["stomp://127.0.0.1:61999?transport.tcpNoDelay=true"])
            plugins = broker.find(f"{CORE}plugins")
            self.assertEqual([p.tag for p in plugins], [f"{CORE}jaasAuthenticationPlugin"])
            self.assertEqual(plugins[0].get("configuration"), "activemq")
            with open(os.path.join(conf, "login.config")) as f:
                login = f.read()
            self.assertIn("activemq {", login)
            self.assertIn("org.apache.activemq.jaas.PropertiesLoginModule required", login)
            self.assertIn("reload=true", login)
            users = os.path.join(conf, "users.properties")
            self.assertEqual(os.stat(users).st_mode & 0o777, 0o600)
            with open(users) as f:
                entries = [line for line in f.read().splitlines() if not line.startswith("#")]
            self.assertEqual(entries, ["np-0123abcd=" + "p" * 20])


if __name__ == "__main__":
    unittest.main()
