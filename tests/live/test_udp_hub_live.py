"""Live tests: a real udp_hub.py process, raw UDP sockets and the real client,
all on 127.0.0.1."""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from lib.accounts import passwords

from tests.support import ROOT, wait_for  # noqa: E402
PY = sys.executable
CLIENT = [PY, "-c", "import sys; from lib.clients import udp; sys.exit(udp.main(sys.argv[1:]))"]
TOKEN_RE = r"[A-Za-z0-9!$%&*+\-=?@^_~]{6}"
HOST = "127.0.0.1"


class UDP:
    """A raw test socket on 127.0.0.1 (or another loopback IP)."""

    def __init__(self, hub_port, ip=HOST):
        self.hub = (HOST, hub_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.ip, self.port = self.sock.getsockname()
        self.token = None

    def send(self, text):
        self.sock.sendto(text.encode() if isinstance(text, str) else text, self.hub)

    def recv(self, timeout=3.0):
        self.sock.settimeout(timeout)
        data, addr = self.sock.recvfrom(65535)
        assert addr == self.hub, addr
        return data.decode()

    def nothing(self, timeout):
        """True when no datagram arrives within `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            self.sock.recvfrom(65535)
        except socket.timeout:
            return True
        return False

    def login(self, who, password=None):
        self.send(f"{who}->server#login<{password or who + '123'}><{self.ip}><{self.port}>")
        reply = self.recv()
        match = re.fullmatch(rf"server->{who}#Success<({TOKEN_RE})>", reply)
        assert match, reply
        self.token = match[1]
        return self.token

    def close(self):
        self.sock.close()


class HubTestCase(unittest.TestCase):
    expiry = 30
    hub_args = ()          # more flags for udp_hub.py
    more_accounts = {}     # more `ID PASSWORD` lines

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.users = os.path.join(self.tmp.name, "users.txt")
        with open(self.users, "w") as f:
            f.write("# test accounts\nalice alice123\nbob bob123\ncarol carol123\n\n")
            f.write(f"dave {passwords.hash_password('dave123')}\n")
            f.writelines(f"{who} {password}\n" for who, password in self.more_accounts.items())
        self.sockets = []
        self.hub, self.port = self.start_hub(self.expiry)

    def start_hub(self, expiry):
        log = open(os.path.join(self.tmp.name, f"hub-{expiry}.log"), "w+")
        self.addCleanup(log.close)
        proc = subprocess.Popen([PY, os.path.join(ROOT, "udp_hub.py"), HOST, "0", "--users", self.users,
                                 "--expiry", str(expiry), "-v", *self.hub_args],
                                stdout=subprocess.DEVNULL, stderr=log, cwd=self.tmp.name)
        self.addCleanup(self.stop_hub, proc, log)

        def listening():
            log.seek(0)
            return re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read()) or proc.poll() is not None
        started = wait_for(listening, 10, interval=0.02)
        self.assertIsNone(proc.poll(), "hub died at start")
        if not started:
            self.fail("hub did not start")
        return proc, int(started[1])

    def stop_hub(self, proc, log):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                self.assertEqual(proc.wait(5), 0)  # SIGTERM is a clean exit
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
        log.seek(0)
        self.hub_log = log.read()

    def tearDown(self):
        for s in self.sockets:
            s.close()

    def udp(self, ip=HOST, port=None):
        s = UDP(port or self.port, ip)
        self.sockets.append(s)
        return s

    def assertAlive(self):
        self.assertIsNone(self.hub.poll(), "hub exited")


class LoginTest(HubTestCase):
    def test_login_success_and_token_format(self):
        a = self.udp()
        token = a.login("alice")
        self.assertRegex(token, rf"\A{TOKEN_RE}\Z")
        b = self.udp()
        self.assertNotEqual(b.login("bob"), token)

    def test_wrong_password_and_unknown_id(self):
        a = self.udp()
        a.send(f"alice->server#login<nope><{a.ip}><{a.port}>")
        self.assertEqual(a.recv(), "server->alice#Error: password does not match!")
        a.send(f"zed->server#login<zed123><{a.ip}><{a.port}>")
        self.assertEqual(a.recv(), "server->zed#Error: password does not match!")

    def test_scrypt_account(self):
        a = self.udp()
        a.send(f"dave->server#login<wrong><{a.ip}><{a.port}>")
        self.assertEqual(a.recv(), "server->dave#Error: password does not match!")
        self.assertRegex(a.login("dave"), rf"\A{TOKEN_RE}\Z")

    def test_login_claiming_another_ip_is_answered_at_its_source(self):
        # As from behind NAT: the claimed IP:PORT is not the source's, so the
        # answer goes to the source (which the hub remembers), never to the claim.
        victim = self.udp(ip="127.0.0.2")
        a = self.udp()
        a.send(f"alice->server#login<alice123><{victim.ip}><{victim.port}>")
        token = re.fullmatch(rf"server->alice#Success<({TOKEN_RE})>", a.recv())[1]
        a.send(f"alice->carol#<{token}><0000000001>hi")
        self.assertEqual(a.recv(), f"server->alice#<{token}><0000000001>Error: destination offline!")
        self.assertTrue(victim.nothing(0.3))  # no reflection to the claimed address

    def test_accounts_file_reloaded(self):
        with open(self.users, "a") as f:
            f.write("erin erin123\n")
        erin = self.udp()

        def logged_in():   # "password does not match!" until the hub has read the new line
            erin.send(f"erin->server#login<erin123><{erin.ip}><{erin.port}>")
            return re.fullmatch(rf"server->erin#Success<({TOKEN_RE})>", erin.recv())
        # the hub checks the file every second: in at most 1.3 s, the login works
        token = wait_for(logged_in, 1.3)
        self.assertTrue(token, "erin cannot log in 1.3 s after the accounts file changed")
        self.assertRegex(token[1], rf"\A{TOKEN_RE}\Z")


class MessageTest(HubTestCase):
    def setUp(self):
        super().setUp()
        self.a, self.b = self.udp(), self.udp()
        self.a.login("alice")
        self.b.login("bob")

    def test_forward_echo_and_receipt(self):
        a, b = self.a, self.b
        a.send(f"alice->bob#<{a.token}><1234567890>hello # <bob>")
        self.assertEqual(a.recv(), f"server->alice#<{a.token}><1234567890>Success: hello # <bob>")
        # The same datagram with B's token in place of A's.
        self.assertEqual(b.recv(), f"alice->bob#<{b.token}><1234567890>hello # <bob>")
        b.send(f"bob->server#<{b.token}><1234567890>Success: hello # <bob>")
        self.assertTrue(b.nothing(1.4))  # the receipt closed MESSAGE_FORWARD: no resend

    def test_forward_resent_until_receipt(self):
        a, b = self.a, self.b
        # bob uses his token first: an address that has not shown it receives gets no resends
        b.send(f"bob->carol#<{b.token}><1111111111>hello?")
        self.assertIn("destination offline!", b.recv())
        a.send(f"alice->bob#<{a.token}><2222222222>are you there")
        a.recv()
        forward = f"alice->bob#<{b.token}><2222222222>are you there"
        t0 = time.monotonic()
        self.assertEqual(b.recv(), forward)  # first copy: "lost", not answered
        self.assertEqual(b.recv(), forward)  # resent about a second later
        self.assertGreater(time.monotonic() - t0, 0.7)
        b.send(f"bob->server#<{b.token}><2222222222>Success: are you there")
        self.assertTrue(b.nothing(1.4))

    def test_destination_offline(self):
        a = self.a
        a.send(f"alice->carol#<{a.token}><3333333333>hi")
        self.assertEqual(a.recv(), f"server->alice#<{a.token}><3333333333>Error: destination offline!")

    def test_token_error(self):
        a, b = self.a, self.b
        a.send(f"alice->bob#<{b.token}><4444444444>spoofed")
        self.assertEqual(a.recv(), f"server->alice#<{b.token}><4444444444>Error: token error!")
        self.assertTrue(b.nothing(0.3))  # nothing forwarded

    def test_logoff(self):
        a, b = self.a, self.b
        a.send(f"alice->server#logoff<{b.token}>")
        self.assertEqual(a.recv(), "server->alice#Error: token error!")
        a.send(f"alice->server#logoff<{a.token}>")
        self.assertEqual(a.recv(), f"server->alice#Success<{a.token}>")
        a.send(f"alice->bob#<{a.token}><5555555555>still there?")
        self.assertEqual(a.recv(), f"server->alice#<{a.token}><5555555555>Error: please log in again!")
        b.send(f"bob->alice#<{b.token}><6666666666>hi")
        self.assertEqual(b.recv(), f"server->bob#<{b.token}><6666666666>Error: destination offline!")

    def test_hostile_datagrams_never_crash_the_hub(self):
        evil = self.udp()
        a, b = self.a, self.b
        for junk in [b"", b"\xff\xfe\x00garbage", b"hello", b"x" * 3000,
                     ("alice->server#login<" + "p" * 2100 + f"><{HOST}><1>").encode(),
                     b"server->bob#Success<abcdef>", b"alice->server#logoff",
                     f"alice->bob#<{b.token}><0000000007>spoof".encode(),
                     f"bob->server#<{a.token}><0000000007>Success: spoof".encode(),
                     "\u00e9\u00e9->bob#<\u00e9\u00e9\u00e9><0000000008>x".encode(),
                     b"a->server#login<x><999.1.1.1><99999>", b"a->b->c#<abcdef><0000000001>x"]:
            evil.send(junk)
        # The hub reads its socket in order and answers a login for an unknown
        # id at once: when that answer is in, every datagram above was handled.
        evil.send(f"fence->server#login<x><{evil.ip}><{evil.port}>")
        fence, replies = "server->fence#Error: password does not match!", []
        try:
            while fence not in replies:
                replies.append(evil.recv())
        except socket.timeout:
            self.fail(f"no answer to the login sent after the junk (hub exited: {self.hub.poll()}); "
                      f"got {replies}")
        self.assertAlive()
        fresh = self.udp()
        self.assertRegex(fresh.login("carol"), rf"\A{TOKEN_RE}\Z")
        self.assertTrue(b.nothing(0.2))  # nothing spoofed got through to bob


class ExpiryTest(HubTestCase):
    expiry = 1

    def test_expiry_then_please_log_in_again(self):
        a, b = self.udp(), self.udp()
        a.login("alice")
        b.login("bob")
        # Not a wait for a condition: the behaviour under test is silence
        # longer than --expiry (1 s), after which both are OFFLINE and the hub
        # has sent neither of them anything.
        time.sleep(1.4)
        self.assertTrue(a.nothing(0.05))
        self.assertTrue(b.nothing(0.05))
        a.send(f"alice->bob#<{a.token}><7777777777>hello?")
        self.assertEqual(a.recv(), f"server->alice#<{a.token}><7777777777>Error: please log in again!")
        a.login("alice")
        a.send(f"alice->bob#<{a.token}><8888888888>hello?")
        self.assertEqual(a.recv(), f"server->alice#<{a.token}><8888888888>Error: destination offline!")


class ClientProcessTest(HubTestCase):
    def run_client(self, script, *args, timeout=15):
        path = os.path.join(self.tmp.name, "script.txt")
        with open(path, "w") as f:
            f.write(script)
        with open(path) as stdin:  # a regular file: the client cannot select() on it
            return subprocess.run(CLIENT + [HOST, str(self.port), *args], stdin=stdin, cwd=ROOT,
                                  capture_output=True, text=True, timeout=timeout)

    def test_script_output(self):
        b = self.udp()
        b.login("bob")
        result = self.run_client("alice->server#login<alice123>\n"
                                 "alice->bob#hi bob\n"
                                 "alice->carol#hi carol\n"
                                 "bob->carol#not me\n"
                                 "alice->server#logoff\n"
                                 "alice->bob#too late")  # no final newline
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        token = re.fullmatch(rf"server->alice#Success<({TOKEN_RE})>", lines[0])[1]
        t = re.escape(token)
        expected = [rf"server->alice#Success<{t}>",
                    rf"server->alice#<{t}><(\d{{10}})>Success: hi bob",
                    rf"server->alice#<{t}><\d{{10}}>Error: destination offline!",
                    r"Error: logged in as alice, not bob",
                    rf"server->alice#Success<{t}>",
                    r"Error: not logged in"]
        self.assertEqual(len(lines), len(expected), lines)
        for line, pattern in zip(lines, expected):
            self.assertRegex(line, rf"\A{pattern}\Z")
        msgid = re.fullmatch(expected[1], lines[1])[1]
        self.assertEqual(b.recv(), f"alice->bob#<{b.token}><{msgid}>hi bob")

    def test_wrong_password_through_client(self):
        result = self.run_client("carol->server#login<bad>\ncarol->bob#x\n")
        self.assertEqual(result.stdout, "server->carol#Error: password does not match!\nError: not logged in\n")

    def test_receiving_client_shows_each_msgid_once(self):
        proc = subprocess.Popen(CLIENT + [HOST, str(self.port), "--stay"], cwd=ROOT, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            proc.stdin.write("bob->server#login<bob123>\n")
            proc.stdin.close()  # end of input: --stay keeps it receiving
            self.assertRegex(proc.stdout.readline(), rf"\Aserver->bob#Success<{TOKEN_RE}>\n\Z")
            a = self.udp()
            a.login("alice")
            log_path = os.path.join(self.tmp.name, f"hub-{self.expiry}.log")

            def receipts():
                with open(log_path) as f:
                    return re.findall(r"receipt (\d{10}) from bob", f.read())
            sent = []
            for msgid in ("1111111111", "1111111111", "2222222222"):
                # The second 1111111111 is a replay: answered again, not forwarded again.
                a.send(f"alice->bob#<{a.token}><{msgid}>copy {msgid}")
                self.assertEqual(a.recv(), f"server->alice#<{a.token}><{msgid}>Success: copy {msgid}")
                if msgid not in sent:
                    sent.append(msgid)
                # bob's client has answered this forward (the hub logs each
                # receipt) before the next datagram goes
                self.assertTrue(wait_for(lambda: receipts() == sent, 5), receipts())
            self.assertIsNone(proc.poll())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(5)
            out, err = proc.stdout.read(), proc.stderr.read()
            proc.stdout.close()
            proc.stderr.close()
        self.assertEqual(proc.returncode, 0, err)
        shown = out.splitlines()
        self.assertEqual([re.sub(r"<[^<>]{6}>", "<T>", l) for l in shown],
                         ["alice->bob#<T><1111111111>copy 1111111111",
                          "alice->bob#<T><2222222222>copy 2222222222"])
        with open(os.path.join(self.tmp.name, f"hub-{self.expiry}.log")) as f:
            receipts = re.findall(r"receipt (\d{10}) from bob", f.read())
        self.assertEqual(receipts, ["1111111111", "2222222222"])  # one forward each: no replay

    def test_help(self):
        for cmd in ([PY, os.path.join(ROOT, "udp_hub.py"), "--help"], CLIENT + ["--help"]):
            result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=10)
            self.assertEqual(result.returncode, 0)
            self.assertIn("usage:", result.stdout)
        self.assertIn("--reflect-allowance", subprocess.run(
            [PY, os.path.join(ROOT, "udp_hub.py"), "--help"], capture_output=True, text=True).stdout)
        self.assertRegex(result.stdout, r"exit status:(.|\n)*3 +a request got no answer(.|\n)*4 +the hub's port")

    def test_no_hub_on_the_port_is_an_immediate_error(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:   # a port nobody listens on
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        t0 = time.monotonic()
        script = "alice->server#login<alice123>\nalice->bob#hi\n"
        result = subprocess.run(CLIENT + [HOST, str(port)], input=script, cwd=ROOT,
                                capture_output=True, text=True, timeout=15)
        self.assertLess(time.monotonic() - t0, 4.0)   # not 4 tries x 2 s of silence
        self.assertEqual(result.stdout, "Error: no server at that address (port unreachable)\n"
                                        "Error: not logged in\n")
        self.assertEqual(result.returncode, 4, result.stderr)

    def test_a_hub_that_never_answers_is_a_non_zero_exit(self):
        silent = self.udp()    # bound, so no "port unreachable", and never answers
        result = subprocess.run(CLIENT + [HOST, str(silent.port), "--timeout", "0.2"], cwd=ROOT,
                                input="alice->server#login<alice123>\n", capture_output=True,
                                text=True, timeout=15)
        self.assertEqual(result.stdout, "Error: no response from server\n")
        self.assertEqual(result.returncode, 3, result.stderr)


class AnswerAddressTest(HubTestCase):
    """The seed's client sends on one socket and receives on the one its
    login names: every answer about its session must reach that one."""

    def setUp(self):
        super().setUp()
        self.tx, self.rx = self.udp(), self.udp()
        self.tx.send(f"alice->server#login<alice123><{self.rx.ip}><{self.rx.port}>")
        self.token = re.fullmatch(rf"server->alice#Success<({TOKEN_RE})>", self.rx.recv())[1]

    def test_token_error_goes_to_the_receiving_socket(self):
        self.tx.send("alice->bob#<zzzzzz><0000000001>hi")
        self.assertEqual(self.rx.recv(), "server->alice#<zzzzzz><0000000001>Error: token error!")
        self.tx.send("alice->server#logoff<zzzzzz>")
        self.assertEqual(self.rx.recv(), "server->alice#Error: token error!")
        self.assertTrue(self.tx.nothing(0.2))

    def test_please_log_in_again_after_logoff_goes_to_the_receiving_socket(self):
        self.tx.send(f"alice->server#logoff<{self.token}>")
        self.assertEqual(self.rx.recv(), f"server->alice#Success<{self.token}>")
        self.tx.send(f"alice->bob#<{self.token}><0000000002>still there?")
        self.assertEqual(self.rx.recv(),
                         f"server->alice#<{self.token}><0000000002>Error: please log in again!")
        self.assertTrue(self.tx.nothing(0.2))


if __name__ == "__main__":
    unittest.main()
