"""Bad input never crashes or stalls a server: over-long lines, invalid UTF-8,
binary garbage, half-sent lines, silent clients, thousands of connections."""
import random
import select
import socket
import time
import unittest

from lib.loop.transports import raise_fd_limit
from tests.support import Conn, LoginServer, login, wait_for

BAD = {"status": 1, "message": "Bad request"}


def closed_by_peer(sock):
    """Has the other end closed `sock` (end of file waiting)? Never blocks."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""


class RobustnessTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        raise_fd_limit()   # this test process opens 2,000 sockets itself
        # 2,000 connections from one address: over the default per-address cap
        # (tests/live/test_hostile_connections.py tests the cap itself)
        cls.server = LoginServer("--conn-idle", "2", "--max-conns-per-address", "4000").start()
        c = Conn(cls.server.port)
        c.request("register rob pw")
        cls.token = c.request("login rob pw")
        c.close()
        cls.ports = {"login": cls.server.port, "app": cls.token["app_server"]}

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()

    def alive(self):
        """Both servers still answer a well-formed request promptly."""
        start = time.monotonic()
        c = Conn(self.server.port, timeout=5)
        self.assertEqual(c.request("list-group"), {"status": 1, "message": "Not login yet"})
        c.close()
        app = Conn(self.token["app_server"], timeout=5)
        self.assertEqual(app.request(f"list-group {self.token['token']}")["status"], 0)
        app.close()
        self.assertLess(time.monotonic() - start, 3)

    def each_server(self):
        for name, port in self.ports.items():
            with self.subTest(server=name):
                yield Conn(port, timeout=5)

    def test_over_long_line(self):
        for c in self.each_server():
            self.assertEqual(c.request("post x " + "a" * 9000), BAD)
            # still usable after the bad line
            self.assertEqual(c.request("list-group"), {"status": 1, "message": "Not login yet"})
            c.send_raw(b"b" * 100_000)       # no newline at all
            self.assertEqual(c.read_reply(), BAD)
            c.close()
        self.alive()

    def test_invalid_utf8(self):
        for c in self.each_server():
            c.send_raw(b"login \xff\xfe \xc3\x28\n")
            self.assertEqual(c.read_reply(), BAD)
            c.close()
        self.alive()

    def test_binary_garbage(self):
        rng = random.Random(1234)
        for _ in range(3):
            for c in self.each_server():
                c.send_raw(bytes(rng.randrange(256) for _ in range(20000)))
                c.sock.shutdown(socket.SHUT_WR)
                c.sock.settimeout(5)
                while c.sock.recv(65536):    # replies, then the server closes
                    pass
                c.close()
        self.alive()

    def test_half_sent_line_is_answered_after_a_quiet_pause(self):
        # course-era clients send one line without "\n" and wait
        for c in self.each_server():
            c.send_raw(b"list-friend")
            self.assertEqual(c.read_reply(), {"status": 1, "message": "Not login yet"})
            c.send_raw(b"list-")
            time.sleep(0.01)   # not a wait: a pause shorter than the 50 ms quiet window is the behaviour
            c.send_raw(b"group\n")
            self.assertEqual(c.read_reply(), {"status": 1, "message": "Not login yet"})
            c.close()

    def test_half_closed_connection_still_gets_its_answer(self):
        c = Conn(self.server.port)
        c.send_raw(b"login rob pw")          # slow (password check), then EOF
        c.sock.shutdown(socket.SHUT_WR)
        self.assertEqual(c.read_reply()["status"], 0)
        c.close()

    def test_silent_clients_are_closed_and_do_not_block_others(self):
        opened = time.monotonic()
        silent = [socket.create_connection(("127.0.0.1", self.server.port)) for _ in range(20)]
        self.alive()
        # --conn-idle 2: the server closes each after 2 s of silence, not before
        self.assertTrue(wait_for(lambda: all(closed_by_peer(s) for s in silent), timeout=15),
                        "silent connections still open")
        self.assertGreater(time.monotonic() - opened, 1.5, "closed before --conn-idle passed")
        for s in silent:
            s.settimeout(2)
            self.assertEqual(s.recv(10), b"")
            s.close()

    def test_thousands_of_connections(self):
        conns = []
        try:
            for _ in range(2000):
                conns.append(socket.create_connection(("127.0.0.1", self.server.port), timeout=5))
            start = time.monotonic()
            self.assertEqual(login(self.server.port, "rob", "pw")["status"], 0)
            self.alive()
            self.assertLess(time.monotonic() - start, 3)
            # and they are all served
            for s in conns[::100]:
                s.sendall(b"list-group\n")
                self.assertIn(b"Not login yet", s.recv(100))
        finally:
            for s in conns:
                s.close()
        self.alive()

    def test_internal_port_rejects_strangers(self):
        log = self.server.read_log()
        port = int(log.split("app servers register on ")[1].split(",")[0].rsplit(":", 1)[1])
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b'{"op": "hello", "secret": "guess", "host": "127.0.0.1", "port": 1}\n')
        self.assertIn(b"rejected", s.recv(1000))
        s.close()
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"\x00\x01garbage\n")
        s.settimeout(5)
        self.assertEqual(s.recv(100), b"")
        s.close()
        self.alive()


if __name__ == "__main__":
    unittest.main()
