"""Hostile connections against real processes (issue 11, items 1 and 5-8).

Attackers connect from 127.0.0.2, the legitimate client from 127.0.0.1.
Where an item has a target, the test asserts twice it (a loaded 2-core
machine) and prints the value measured; bench/ holds the figures."""
import json
import os
import resource
import select
import socket
import subprocess
import time
import unittest

from lib.loop.transports import raise_fd_limit
from tests.support import PYTHON, ROOT, Conn, LoginServer, holds_for, wait_for, wait_port

ATTACKER = "127.0.0.2"
MIB = 1024 * 1024
BAD = {"status": 1, "message": "Bad request"}
TOO_MANY = (json.dumps({"status": 1, "message": "Too many connections from your address"})
            + "\n").encode()


def attacker(port, host="127.0.0.1", timeout=10):
    """A connection from ATTACKER (bound before connecting)."""
    s = socket.socket()
    s.bind((ATTACKER, 0))
    s.settimeout(timeout)
    s.connect((host, port))
    return s


class AttackerConn(Conn):
    """tests.support.Conn from ATTACKER."""

    def __init__(self, port, host="127.0.0.1", timeout=30.0):
        self.sock, self.buf = attacker(port, host, timeout), b""


def readable(socks, timeout=0.0):
    """Those of `socks` with something to read (or an end of file)."""
    poller, by_fd = select.poll(), {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(timeout * 1000)]


def closed_by_peer(sock):
    if not readable([sock]):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


def read_all(sock, timeout=5):
    """Everything until the peer closes; AssertionError if it has not
    closed within `timeout` seconds."""
    sock.settimeout(timeout)
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return got
            got += chunk
    except ConnectionError:
        return got
    except socket.timeout:
        raise AssertionError(f"still open after {timeout} s (got {got[:100]!r})") from None


def log_in(port, user, host="127.0.0.1"):
    """Register and log `user` in from 127.0.0.1; the login reply."""
    c = Conn(port, host=host, timeout=30)
    try:
        assert c.request(f"register {user} pw")["status"] == 0
        reply = c.request(f"login {user} pw")
        assert reply["status"] == 0, reply
        return reply
    finally:
        c.close()


class Server(LoginServer):
    """tests.support.LoginServer with a listen host and, optionally, the
    descriptor limits (soft, hard) it starts with."""

    def __init__(self, *extra, host="127.0.0.1", nofile=None):
        super().__init__(*extra)
        self.host, self.nofile = host, nofile

    def start(self):
        self.log = open(self.log_path, "ab")
        cmd = [PYTHON, os.path.join(ROOT, "server.py"), self.host, str(self.port),
               "--data", self.data, "--broker", self.broker] + self.extra
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)) if self.nofile else None
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, cwd=ROOT, preexec_fn=limit)
        wait_port(self.port, host=self.host)
        return self

    def internal(self):
        """(host, port) the app servers register on, from the log."""
        text = wait_for(lambda: "register on " in self.read_log() and self.read_log())
        host, _, port = text.split("register on ")[1].split(",")[0].rpartition(":")
        return host, int(port)

    def proc_field(self, name, pid=None):
        with open(f"/proc/{pid or self.proc.pid}/{name}") as f:
            return f.read()

    def rss_mib(self):
        line = [l for l in self.proc_field("status").splitlines() if l.startswith("VmRSS:")][0]
        return int(line.split()[1]) / 1024

    def soft_fd_limit(self):
        line = [l for l in self.proc_field("limits").splitlines() if l.startswith("Max open files")][0]
        return int(line.split()[3])

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def close_all(socks):
    for s in socks:
        s.close()


# -- item 5: connections ----------------------------------------------------------------------
class ConnectionsTest(unittest.TestCase):
    HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    @classmethod
    def setUpClass(cls):
        raise_fd_limit()   # this process opens 3,000 sockets itself

    def flood(self, port, n, seconds=60):
        socks = []
        self.addCleanup(close_all, socks)
        until = time.monotonic() + seconds
        while len(socks) < n and time.monotonic() < until:
            socks.append(attacker(port))
        self.assertEqual(len(socks), n, "could not open the attackers' connections in time")
        return socks

    def legit_login_time(self, port, user):
        start = time.monotonic()
        log_in(port, user)
        return time.monotonic() - start

    def test_3000_idle_connections_from_one_address_default_limits(self):
        # Target: another address registers and logs in within 2 s.
        with Server(nofile=(1024, self.HARD)) as server:
            log_in(server.port, "warm")                      # its app server is up
            socks = self.flood(server.port, 3000)
            cap = 512                                        # --max-conns-per-address
            self.assertTrue(wait_for(lambda: len(readable(socks)) >= 3000 - cap, timeout=30))
            refused = readable(socks, 0.5)
            self.assertEqual(len(refused), 3000 - cap)
            for s in refused[:100]:
                self.assertEqual(read_all(s), TOO_MANY)
            elapsed = self.legit_login_time(server.port, "legit")
            print(f"\n  register+login beside 3,000 connections (cap {cap}): {elapsed:.2f} s (target 2 s)")
            self.assertLess(elapsed, 4.0)

    def test_3000_idle_connections_need_the_raised_descriptor_limit(self):
        with Server("--max-conns-per-address", "5000", nofile=(1024, self.HARD)) as server:
            self.assertEqual(server.soft_fd_limit(), self.HARD)  # raised at start
            log_in(server.port, "warm")
            socks = self.flood(server.port, 3000)
            self.assertTrue(wait_for(lambda: server.fds() > 3000, timeout=30), server.fds())
            self.assertEqual(readable(socks), [])            # every one held, none refused
            elapsed = self.legit_login_time(server.port, "legit")
            print(f"\n  register+login beside 3,000 held connections: {elapsed:.2f} s (target 2 s)")
            self.assertLess(elapsed, 4.0)

    def test_out_of_descriptors_closes_new_connections_and_logs_once(self):
        # Hard limit 128: raising cannot help; the reserve descriptor must.
        with Server("--max-conns-per-address", "5000", nofile=(128, 128)) as server:
            log_in(server.port, "warm")
            socks = self.flood(server.port, 200)
            self.assertTrue(wait_for(lambda: len(readable(socks)) >= 40, timeout=10),
                            "connections over the descriptor limit left waiting in the backlog")
            # the burst ends (logged 1 s after the last one closed): then count them
            self.assertTrue(wait_for(lambda: "connections were closed unanswered" in server.read_log(),
                                     timeout=10))
            shed = readable(socks)
            for s in shed:
                self.assertEqual(read_all(s), b"")           # closed unanswered
            log = server.read_log()
            self.assertEqual(log.count("out of descriptors"), 1, log[-2000:])
            self.assertIn(f"; {len(shed)} connections were closed unanswered", log)
            close_all(socks[:100])
            self.assertTrue(wait_for(lambda: server.fds() < 100, timeout=10))
            self.assertLess(self.legit_login_time(server.port, "legit"), 10)

    def test_first_request_deadline_then_the_idle_limit(self):
        with Server("--first-request-timeout", "1", "--conn-idle", "30") as server:
            app_port = int(log_in(server.port, "warm")["app_server"].rpartition(":")[2])
            for port in (server.port, app_port):         # the app server got the flag too
                with self.subTest(port=port):
                    silent, talking = attacker(port), attacker(port)
                    self.addCleanup(close_all, [silent, talking])
                    opened = time.monotonic()
                    talking.sendall(b"list-group\n")
                    self.assertTrue(read_all_line(talking))
                    self.assertTrue(wait_for(lambda: closed_by_peer(silent), timeout=5))
                    waited = time.monotonic() - opened
                    self.assertGreater(waited, 0.8)
                    self.assertTrue(holds_for(lambda: not closed_by_peer(talking), 2.0),
                                    "closed before --conn-idle although it sent a request")


def read_all_line(sock, timeout=5):
    sock.settimeout(timeout)
    got = b""
    while not got.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


# -- items 6 and 8: fair pipelining, backpressure, over-long lines ------------------------------
class PipeliningTest(unittest.TestCase):
    def test_8_connections_pipelining_junk_do_not_hold_up_others(self):
        # Target: worst of 10 requests from another client < 0.5 s.
        with Server() as server:
            legit = Conn(server.port, timeout=10)
            self.addCleanup(legit.close)
            legit.request("list-group")
            before = server.rss_mib()
            socks = [attacker(server.port) for _ in range(8)]
            self.addCleanup(close_all, socks)
            for s in socks:                       # 400 KB each, never read
                s.sendall(b"x\n" * 200_000)
            times, peak = [], before
            for _ in range(10):
                start = time.monotonic()
                self.assertEqual(legit.request("list-group")["message"], "Not login yet")
                times.append(time.monotonic() - start)
                peak = max(peak, server.rss_mib())
                time.sleep(0.05)   # not a wait: spreads the samples over the burst
            # backpressure: the server stopped reading them, its memory stays bounded
            self.assertTrue(holds_for(lambda: server.rss_mib() < before + 40, 1.0))
            peak = max(peak, server.rss_mib())
            close_all(socks)
            print(f"\n  legit request during 8 x 400 KB pipelined: worst {max(times) * 1000:.0f} ms, "
                  f"median {sorted(times)[5] * 1000:.0f} ms (target 500 ms); "
                  f"RSS {before:.0f} -> peak {peak:.0f} -> {server.rss_mib():.0f} MiB")
            self.assertLess(max(times), 1.0)
            self.assertLess(peak - before, 40)
            self.assertEqual(legit.request("list-group")["message"], "Not login yet")

    def test_a_client_that_does_not_read_is_not_read_either(self):
        # Replies to 8 KB junk names are 8 KB each: 8 attackers offering 4 MB
        # each would have the server hold 32 MB of replies without backpressure.
        with Server() as server:
            before = server.rss_mib()
            socks = []
            self.addCleanup(close_all, socks)
            for _ in range(8):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # a small window
                s.bind((ATTACKER, 0))
                s.connect(("127.0.0.1", server.port))
                socks.append(s)
            junk = (b"x" * 8000 + b"\n") * 500
            offered = 0
            for s in socks:
                s.settimeout(3)
                try:
                    s.sendall(junk)
                    offered += len(junk)
                except socket.timeout:   # the server stopped reading: what backpressure is for
                    offered += len(junk) // 2
            peak = before
            self.assertTrue(holds_for(lambda: server.rss_mib() < before + 16, 2.0),
                            f"RSS {before:.0f} -> {server.rss_mib():.0f} MiB")
            peak = max(peak, server.rss_mib())
            close_all(socks)
            self.assertTrue(wait_for(lambda: server.rss_mib() < before + 8, timeout=10))
            print(f"\n  8 clients not reading, ~{offered / MIB:.0f} MB offered: RSS {before:.0f} -> "
                  f"{peak:.0f} -> {server.rss_mib():.0f} MiB")

    def test_one_bad_request_per_over_long_line(self):
        with Server() as server:
            reply = log_in(server.port, "owner")
            for name, port, line in (("login", server.port, "list-group"),
                                     ("app", int(reply["app_server"].rpartition(":")[2]),
                                      f"list-group {reply['token']}")):
                with self.subTest(server=name):
                    c = AttackerConn(port)
                    self.addCleanup(c.close)
                    expected = c.request(line)
                    c.send_raw(line.encode() + b"\n" + b"a" * (10 * MIB) + b"\n" + line.encode() + b"\n")
                    self.assertEqual([c.read_reply() for _ in range(3)], [expected, BAD, expected])
                    self.assertTrue(holds_for(lambda: not readable([c.sock]) and not c.buf, 0.5),
                                    "more replies than requests")


# -- item 7: the internal port ---------------------------------------------------------------
class InternalPortTest(unittest.TestCase):
    def test_binds_loopback_whatever_the_client_address(self):
        with Server(host="127.0.0.3") as server:
            host, port = server.internal()
            self.assertEqual(host, "127.0.0.1")
            with self.assertRaises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.3", port), timeout=5)
            self.assertEqual(log_in(server.port, "u", host="127.0.0.3")["app_server"].rpartition(":")[0],
                             "127.0.0.3")

    def test_strangers_get_4_kib_a_line_then_a_depth_check_then_a_cap(self):
        with Server("--max-pending-links", "4") as server:
            host, port = server.internal()
            # a line with no end: closed once it passes 4 KiB, not at the 5 s hello timeout
            s = attacker(port, host)
            start = time.monotonic()
            try:
                s.sendall(b"x" * MIB)
            except ConnectionError:
                pass
            self.assertEqual(read_all(s, timeout=3), b"")
            s.close()
            self.assertLess(time.monotonic() - start, 3)
            # nested 1,500 deep (under 4 KiB): closed at once, no RecursionError
            for line in (b"[" * 1500 + b"]" * 1500, b'{"op": "hello", "secret": ' + b"[" * 1500):
                s = attacker(port, host)
                s.sendall(line + b"\n")
                self.assertEqual(read_all(s, timeout=3), b"")
                s.close()
            # at most 4 links without a hello: the 5th is closed at once
            silent = [attacker(port, host) for _ in range(4)]
            self.addCleanup(close_all, silent)
            self.assertTrue(holds_for(lambda: not readable(silent), 0.3))
            fifth = attacker(port, host)
            self.assertEqual(read_all(fifth, timeout=2), b"")
            fifth.close()
            close_all(silent)
            # app servers still register (a login launches one)
            self.assertEqual(log_in(server.port, "u")["status"], 0)
            log = server.read_log()
            self.assertNotIn("RecursionError", log)
            self.assertNotIn("Traceback", log)
            self.assertEqual(log.count("over --max-pending-links"), 1)


# -- item 1 (the link's part): a large reply does not close the internal link -----------------------
class LargeReplyTest(unittest.TestCase):
    POSTS, SIZE = 4000, 8000          # 32 MB of posts: twice the old 16 MiB output cap

    def test_a_32_mb_reply_reaches_the_client_and_the_link_stays(self):
        with Server("--no-fsync", "--max-post-length", str(self.SIZE), "--max-posts-per-user",
                    str(self.POSTS), "--max-list-items", str(self.POSTS),
                    "--max-output", str(64 * MIB)) as server:
            alice, bob = log_in(server.port, "alice"), log_in(server.port, "bob")
            self.assertEqual(alice["app_server"], bob["app_server"])
            app = Conn(alice["app_server"], timeout=60)
            self.addCleanup(app.close)
            self.assertEqual(app.request(f"invite {alice['token']} bob")["status"], 0)
            self.assertEqual(app.request(f"accept-invite {bob['token']} alice")["status"], 0)
            body = "p" * self.SIZE
            for start in range(0, self.POSTS, 100):       # pipelined, 100 at a time
                app.send_raw(b"".join(f"post {alice['token']} {i} {body[:self.SIZE - 6]}\n".encode()
                                      for i in range(start, start + 100)))
                for _ in range(100):
                    self.assertEqual(app.read_reply()["status"], 0)
            began = time.monotonic()
            app.send_raw(f"receive-post {bob['token']}\n".encode())
            got = bytearray()                 # (Conn.read_reply is quadratic in the line's length)
            while not got.endswith(b"\n"):
                chunk = app.sock.recv(1 << 20)
                self.assertTrue(chunk, "closed by the app server")
                got += chunk
            took = time.monotonic() - began
            reply = json.loads(got)
            self.assertEqual(reply["status"], 0, str(reply)[:200])
            self.assertEqual(len(reply["post"]), self.POSTS)
            print(f"\n  receive-post of {len(json.dumps(reply)) / MIB:.1f} MiB: {took:.1f} s")
            self.assertEqual(app.request(f"list-friend {bob['token']}"), {"status": 0, "friend": ["alice"]})
            log = server.read_log()                        # the same app server, still linked
            self.assertNotIn("link closed", log)
            self.assertNotIn("launching app-2", log)


if __name__ == "__main__":
    unittest.main()
