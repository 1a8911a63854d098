"""LineConnection.send's `on_sent`: called back once the bytes are in the
socket (the app server acks a chat message only then), on real socket pairs
behind a socket that takes a few bytes per send."""
import socket
import unittest

from lib.loop.reactor import Reactor
from lib.loop.transports import LineConnection


class ShortSocket:
    """Takes at most `limit` bytes per send (None: all); `full` refuses every
    send as a full buffer would, `broken` fails them as a reset would."""

    def __init__(self, sock, limit=None):
        self.sock, self.limit = sock, limit
        self.full = self.broken = False
        self.sent = 0

    def send(self, data):
        if self.broken:
            raise ConnectionResetError(104, "reset by peer")
        if self.full:
            raise BlockingIOError(11, "would block")
        n = self.sock.send(bytes(data[:self.limit] if self.limit else data))
        self.sent += n
        return n

    def __getattr__(self, name):
        return getattr(self.sock, name)


class OnSentTest(unittest.TestCase):
    def setUp(self):
        self.reactor, self.seen = Reactor(), []
        a, self.peer = socket.socketpair()
        self.sock = ShortSocket(a)
        self.conn = LineConnection(self.reactor, self.sock, lambda c, line: None)
        self.addCleanup(self.peer.close)
        self.addCleanup(self.conn.close)

    def callback(self, name):
        return lambda: self.seen.append(name)

    def turn(self):
        self.reactor.run_once(max_wait=0.5)
        return self.sock.sent, list(self.seen)

    def test_called_back_in_the_turn_after_its_last_byte_went_out(self):
        self.sock.limit = 4
        self.conn.send(b"aaaa\n", on_sent=self.callback("a"))
        self.conn.send(b"cc\n")                                 # no callback between two
        self.conn.send(b"bb\n", on_sent=self.callback("b"))
        # 4 bytes of "aaaa\n"; then its last byte (a callback for the next
        # turn's input phase); then all of it; then nothing more
        self.assertEqual([self.turn() for _ in range(4)],
                         [(4, []), (8, []), (11, ["a"]), (11, ["a", "b"])])
        self.assertEqual(self.peer.recv(100), b"aaaa\ncc\nbb\n")

    def test_sends_out_in_one_write_are_called_back_in_order(self):
        for name in "xyz":
            self.conn.send(name.encode() + b"\n", on_sent=self.callback(name))
        self.assertEqual(self.turn(), (6, []))
        self.assertEqual(self.turn(), (6, ["x", "y", "z"]))

    def test_never_while_the_socket_takes_nothing(self):
        self.sock.full = True
        self.conn.send(b"x\n", on_sent=self.callback("x"))
        self.conn.reactor.run_once(max_wait=0)
        self.assertEqual(self.seen, [])
        self.sock.full = False
        self.assertEqual([self.turn(), self.turn()], [(2, []), (2, ["x"])])

    def test_never_for_bytes_unsent_at_a_close(self):
        self.sock.limit = 2
        self.conn.send(b"abcd\n", on_sent=self.callback("partly"))
        self.turn()
        self.conn.close()
        self.conn.send(b"late\n", on_sent=self.callback("late"))   # closed: dropped
        for _ in range(3):
            self.reactor.run_once(max_wait=0)
        self.assertEqual((self.sock.sent, self.seen), (2, []))

    def test_never_when_the_socket_fails(self):
        closed = []
        self.conn.on_close = closed.append
        self.sock.limit = 2
        self.conn.send(b"abcd\n", on_sent=self.callback("x"))
        self.turn()
        self.sock.broken = True
        for _ in range(3):
            self.reactor.run_once(max_wait=0.1)
        self.assertEqual((closed, self.seen), ([self.conn], []))

    def test_a_close_once_flushed_calls_back_before_on_close(self):
        # The peer half-closed: what it was sent is in the socket, so it counts
        # as written (the app server acks it) before the close is heard of.
        self.conn.on_close = lambda c: self.seen.append("closed")
        self.sock.limit = 2
        self.conn.send(b"abcd\n", on_sent=self.callback("x"))
        self.conn.close_after_flush()
        self.assertEqual([self.turn() for _ in range(4)],
                         [(2, []), (4, []), (5, []), (5, ["x", "closed"])])


if __name__ == "__main__":
    unittest.main()
