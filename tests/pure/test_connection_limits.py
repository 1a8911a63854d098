"""What one peer may cost a server, on socket pairs (issue 11, items 1, 5-8):
lines per pass, backpressure, one `Bad request` per over-long line, the
first-request deadline, connections per source address, the output cap,
and the internal link's JSON depth check."""
import json
import socket
import sys
import unittest

from lib.loop.reactor import Reactor
from lib.loop.transports import LineConnection
from lib.social import applink, protocol
from lib.social.limits import Limits
from lib.social.request_server import TOO_MANY, RequestServer, answer


def spin(reactor, done, turns=2000):
    """Run turns until `done()` (at most `turns`); its last value."""
    for _ in range(turns):
        if done():
            return True
        reactor.run_once(max_wait=0.005)
    return done()


def pair(test):
    a, b = socket.socketpair()
    test.addCleanup(a.close)
    test.addCleanup(b.close)
    b.settimeout(5)
    return a, b


class StallingSocket:
    """A socket whose sends can be refused (`stalled`): a peer that does not read."""

    def __init__(self, sock):
        self.sock, self.stalled = sock, False

    def send(self, data):
        if self.stalled:
            raise BlockingIOError(11, "would block")
        return self.sock.send(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- item 6: fair pipelining and backpressure -------------------------------------------
class PipeliningTest(unittest.TestCase):
    def test_each_pass_takes_at_most_the_budget_and_connections_take_turns(self):
        r, order = Reactor(), []
        peers = []
        for name in (b"A", b"B"):
            a, b = pair(self)
            LineConnection(r, a, lambda c, line: order.append(line[:1]), budget=4)
            b.sendall(b"".join(name + b"%d\n" % i for i in range(40)))
            peers.append(b)
        r.run_once(max_wait=1)
        self.assertLess(len(order), 80, "one turn delivered every pipelined line")
        self.assertTrue(spin(r, lambda: len(order) == 80))
        runs = []   # lengths of the runs of lines from one connection
        for i, name in enumerate(order):
            if i and name == order[i - 1]:
                runs[-1] += 1
            else:
                runs.append(1)
        self.assertEqual(runs, [4] * 20, order)

    def test_without_a_budget_one_pass_takes_everything(self):
        r, lines = Reactor(), []
        a, b = pair(self)
        LineConnection(r, a, lambda c, line: lines.append(line))
        b.sendall(b"x\n" * 100)
        r.run_once(max_wait=1)
        self.assertEqual(len(lines), 100)

    def test_a_line_longer_than_the_read_ahead_still_arrives(self):
        r, lines = Reactor(), []
        a, b = pair(self)
        LineConnection(r, a, lambda c, line: lines.append(len(line)), max_line=4 * 1024 * 1024,
                       budget=4)
        b.setblocking(False)
        data = memoryview(b"y" * (3 * LineConnection.READ_AHEAD) + b"\n")

        def sent():
            nonlocal data
            try:
                data = data[b.send(data):]
            except BlockingIOError:
                pass
            return not data and lines
        self.assertTrue(spin(r, sent))
        self.assertEqual(lines, [3 * LineConnection.READ_AHEAD])

    def test_reading_stops_above_max_unsent_and_resumes_below(self):
        r, lines = Reactor(), []
        a, b = pair(self)
        sock = StallingSocket(a)
        sock.stalled = True
        conn = LineConnection(r, sock, lambda c, line: (lines.append(line), c.send(b"r" * 99 + b"\n")),
                              max_unsent=1000, budget=4)
        b.sendall(b"x\n" * 500)
        spin(r, lambda: False, turns=50)
        # stopped after the turn whose replies went over 1,000 bytes unsent
        self.assertEqual(len(lines), 12)
        self.assertFalse(conn._reading)
        b.sendall(b"y\n" * 10)
        spin(r, lambda: False, turns=20)
        self.assertEqual(len(lines), 12)
        sock.stalled = False           # the peer reads again
        got = bytearray()
        b.setblocking(False)

        def drained():
            try:
                got.extend(b.recv(1 << 20))
            except BlockingIOError:
                pass
            return len(lines) == 510 and len(got) == 510 * 100
        self.assertTrue(spin(r, drained), (len(lines), len(got)))
        self.assertTrue(conn._reading)
        self.assertFalse(conn.closed)

    def test_buffers_shrink_after_a_burst(self):
        r = Reactor()
        a, b = pair(self)
        sock = StallingSocket(a)
        sock.stalled = True
        conn = LineConnection(r, sock, lambda c, line: c.send(b"r" * 999 + b"\n"), budget=16,
                              max_unsent=256 * 1024)
        b.sendall(b"x\n" * 20000)
        spin(r, lambda: False, turns=400)
        self.assertGreater(len(conn.outbuf), 200 * 1024)
        self.assertLess(len(conn.outbuf), 300 * 1024)      # bounded by max_unsent
        self.assertLessEqual(len(conn.inbuf), LineConnection.READ_AHEAD + 65536)
        sock.stalled = False
        b.setblocking(False)
        got = [0]

        def drained():
            try:
                got[0] += len(b.recv(1 << 20))
            except BlockingIOError:
                pass
            return got[0] == 20000 * 1000
        self.assertTrue(spin(r, drained, turns=20000), got)
        self.assertLess(sys.getsizeof(conn.outbuf) + sys.getsizeof(conn.inbuf), 64 * 1024)


# -- item 1: the output cap is a parameter -------------------------------------------------
class OutputCapTest(unittest.TestCase):
    def unread_output(self, **kwargs):
        r = Reactor()
        a, b = pair(self)
        sock = StallingSocket(a)
        sock.stalled = True
        conn = LineConnection(r, sock, lambda c, line: None, **kwargs)
        conn.send(b"x" * (2 * 1024 * 1024))
        r.run_once(max_wait=0)
        return conn

    def test_a_peer_that_never_reads_is_dropped_over_max_output(self):
        self.assertTrue(self.unread_output(max_output=1024 * 1024).closed)
        self.assertFalse(self.unread_output(max_output=4 * 1024 * 1024).closed)

    def test_no_cap_for_an_app_server_link(self):
        self.assertFalse(self.unread_output(max_output=None).closed)


# -- item 8: one Bad request per over-long line ------------------------------------------------
class OverlongLineTest(unittest.TestCase):
    def test_one_overflow_per_line_however_many_reads_it_takes(self):
        r, lines, bad = Reactor(), [], []
        a, b = pair(self)
        LineConnection(r, a, lambda c, line: lines.append(line), on_overflow=bad.append,
                       max_line=100)
        for _ in range(20):                       # 20 reads of 10 KB, one line
            b.sendall(b"a" * 10000)
            r.run_once(max_wait=0.1)
        b.sendall(b"\nok\n" + b"b" * 5000 + b"\nok again\n")
        self.assertTrue(spin(r, lambda: len(lines) == 2))
        self.assertEqual((lines, len(bad)), ([b"ok", b"ok again"], 2))

    def test_replies_line_up_with_requests_through_the_request_server(self):
        r = Reactor()
        server = RequestServer(r, "127.0.0.1", 0, lambda c, req: answer(c, protocol.ok(req.name)),
                               listener=FakeListener)
        a, b = pair(self)
        server.accept(a, ("127.0.0.2", 5000))
        b.sendall(b"first\n")
        for _ in range(200):                      # a 10 MB line, read in many chunks
            b.sendall(b"z" * 50_000)
            r.run_once(max_wait=0)
        b.sendall(b"\nsecond\n")
        replies = read_lines(r, b, 3)
        self.assertEqual(replies, [protocol.ok("first"), protocol.fail(protocol.BAD_REQUEST),
                                   protocol.ok("second")])


# -- item 5: connections ------------------------------------------------------------------
class FakeListener:
    def __init__(self, reactor, host, port, accept):
        self.address = (host, port)

    def close(self):
        pass


def read_lines(reactor, sock, n):
    """Turn the loop until `sock` has received n lines; them, decoded."""
    got = bytearray()
    sock.setblocking(False)

    def enough():
        try:
            got.extend(sock.recv(65536))
        except BlockingIOError:
            pass
        return got.count(b"\n") >= n
    spin(reactor, enough)
    return [json.loads(line) for line in bytes(got).splitlines()]


class ConnectionLimitsTest(unittest.TestCase):
    def server(self, **limits):
        r = Reactor()
        return r, RequestServer(r, "127.0.0.1", 0, lambda c, req: answer(c, protocol.ok(req.name)),
                                limits=Limits(**limits), listener=FakeListener)

    def connect(self, server, source):
        a, b = pair(self)
        server.accept(a, (source, 40000))
        return b

    def test_over_the_per_address_cap_one_line_then_closed(self):
        r, server = self.server(max_conns_per_address=2)
        first, second = self.connect(server, "127.0.0.2"), self.connect(server, "127.0.0.2")
        third = self.connect(server, "127.0.0.2")
        r.run_once(max_wait=0)
        self.assertEqual(third.recv(1000), protocol.encode(protocol.fail(TOO_MANY)))
        self.assertEqual(third.recv(1000), b"")                  # and closed
        other = self.connect(server, "127.0.0.1")                # another address is served
        other.sendall(b"hello\n")
        self.assertEqual(read_lines(r, other, 1), [protocol.ok("hello")])
        first.close()                                            # a slot frees up
        self.assertTrue(spin(r, lambda: server.per_address["127.0.0.2"] == 1))
        again = self.connect(server, "127.0.0.2")
        again.sendall(b"again\n")
        self.assertEqual(read_lines(r, again, 1), [protocol.ok("again")])
        second.close()
        self.assertEqual(server.per_address["127.0.0.2"], 2)

    def deadline_pair(self, **kwargs):
        clock = FakeClock()
        r = Reactor(clock=clock)
        a, b = pair(self)
        conn = LineConnection(r, a, lambda c, line: None, quiet=None, **kwargs)
        return clock, r, conn, b

    def at(self, clock, r, t):
        clock.now = 1000.0 + t
        r.run_once(max_wait=0)
        r.run_once(max_wait=0)

    def test_silent_connection_closed_at_the_first_request_deadline(self):
        clock, r, conn, b = self.deadline_pair(first_timeout=10, idle_timeout=300)
        self.at(clock, r, 5)
        b.sendall(b"slow")                  # bytes, but no request: the deadline stands
        self.at(clock, r, 9.9)
        self.assertFalse(conn.closed)
        self.at(clock, r, 10.1)
        self.assertTrue(conn.closed)

    def test_after_the_first_request_the_idle_limit_applies(self):
        clock, r, conn, b = self.deadline_pair(first_timeout=10, idle_timeout=300)
        b.sendall(b"hello\n")
        self.at(clock, r, 1)
        self.at(clock, r, 10.1)
        self.assertFalse(conn.closed)
        self.at(clock, r, 300.5)            # 299.5 s after its last byte
        self.assertFalse(conn.closed)
        self.at(clock, r, 301.5)
        self.assertTrue(conn.closed)

    def test_a_connection_kept_open_has_no_idle_limit(self):
        """A client that only listens for pushes (the app server's KeepOpen)."""
        clock, r, conn, b = self.deadline_pair(first_timeout=10, idle_timeout=300)
        b.sendall(b"listen T\n")
        self.at(clock, r, 1)
        conn.keep_open()
        for t in (302, 3600, 86400):
            self.at(clock, r, t)
            self.assertFalse(conn.closed)

    def test_a_shorter_idle_limit_still_applies_before_the_first_request(self):
        clock, r, conn, b = self.deadline_pair(first_timeout=10, idle_timeout=2)
        self.at(clock, r, 2.5)
        self.assertTrue(conn.closed)

    def test_no_deadline_while_a_request_is_in_progress(self):
        clock, r, conn, b = self.deadline_pair(first_timeout=10, idle_timeout=30)
        conn.on_line = lambda c, line: c.pause()
        b.sendall(b"slow request\n")
        self.at(clock, r, 1)
        self.at(clock, r, 100)
        self.assertFalse(conn.closed)
        conn.resume()
        self.at(clock, r, 200)
        self.assertTrue(conn.closed)


# -- item 7: the internal link's JSON depth ---------------------------------------------------
class LinkDepthTest(unittest.TestCase):
    def test_depth_is_counted_outside_strings(self):
        self.assertFalse(applink.too_deep(b"[[[]]]", 3))
        self.assertTrue(applink.too_deep(b"[[[]]]", 2))
        quoted = json.dumps({"op": "cmd", "line": "[[[[[[ \\\" {{{{{{ \\\\"}).encode()
        self.assertFalse(applink.too_deep(quoted, 1))
        nested = json.dumps({"a": "x\\", "b": [[[["]]]]"]]]]}).encode()
        self.assertFalse(applink.too_deep(nested, 5))
        self.assertTrue(applink.too_deep(nested, 4))

    def test_a_line_nested_100k_deep_is_a_value_error(self):
        for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"op":' * 100_000):
            with self.assertRaises(ValueError) as caught:
                applink.decode(raw)
            self.assertIn("nested deeper", str(caught.exception))
        self.assertEqual(applink.decode(b'{"op": "ping", "x": [[[]]]}', max_depth=4)["op"], "ping")
        with self.assertRaises(ValueError):
            applink.decode(b'{"op": "ping", "x": [[[]]]}', max_depth=3)

    def test_the_app_side_reports_it_as_a_remote_error(self):
        link = applink.AppLink("app-1", "s", "127.0.0.1", 1)
        with self.assertRaises(applink.RemoteError):
            link.receive(b'{"op": "welcome", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")


class InternalHostTest(unittest.TestCase):
    def test_loopback_unless_the_app_servers_are_elsewhere(self):
        import server
        for argv, host in ((["0.0.0.0", "8888"], "127.0.0.1"),
                           (["10.0.0.5", "8888"], "127.0.0.1"),
                           (["0.0.0.0", "8888", "--launcher", "ec2"], "0.0.0.0"),
                           (["::", "8888", "--launcher", "ec2"], "::"),
                           (["0.0.0.0", "8888", "--internal-host", "10.0.0.5"], "10.0.0.5")):
            with self.subTest(argv=argv):
                self.assertEqual(server.internal_host(server.parse_args(argv)), host)


if __name__ == "__main__":
    unittest.main()
