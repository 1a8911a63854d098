"""The reactor and line framing, on real socket pairs."""
import socket
import threading
import time
import unittest

from lib.loop.reactor import Reactor
from lib.loop.transports import LineConnection


class RecordingSocket:
    """A socket that notes each send in `order`; can take only one byte of a
    send (`short_sends`) or fail every send (`fail_sends`)."""

    def __init__(self, sock, order):
        self.sock, self.order = sock, order
        self.short_sends, self.fail_sends = 0, False

    def send(self, data):
        if self.fail_sends:
            raise ConnectionResetError(104, "reset by peer")
        if self.short_sends:
            self.short_sends -= 1
            data = bytes(data[:1])
        self.order.append(("sent", bytes(data)))
        return self.sock.send(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def recv_until(sock, marker, limit=1 << 20):
    got = b""
    while marker not in got and len(got) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


class ReactorTest(unittest.TestCase):
    def test_timers_run_in_order_and_cancel(self):
        r, seen = Reactor(), []
        r.call_later(0.02, seen.append, 2)
        r.call_later(0.01, seen.append, 1)
        r.call_later(0.015, seen.append, "x").cancel()
        r.call_later(0.03, r.stop)
        r.run()
        self.assertEqual(seen, [1, 2])

    def test_call_soon_threadsafe_wakes_the_loop(self):
        r, seen = Reactor(), []
        threading.Timer(0.05, r.call_soon_threadsafe, (lambda: (seen.append(1), r.stop()),)).start()
        start = time.monotonic()
        r.run()
        self.assertEqual(seen, [1])
        self.assertLess(time.monotonic() - start, 2)

    def test_run_in_thread_returns_on_the_loop(self):
        r, got = Reactor(), []
        loop_thread = threading.get_ident()

        def done(result, error):
            got.append((result, error, threading.get_ident() == loop_thread))
            r.stop()

        r.run_in_thread(sum, [1, 2, 3], done=done)
        r.run()
        self.assertEqual(got, [(6, None, True)])

    # -- the durability barrier: no output of a turn before its hooks --------
    def barrier_setup(self, on_line=None):
        """A LineConnection over a recording socket; `order` gets "hook" when
        the before-sleep hook runs and ("sent", bytes) for each send."""
        r, order = Reactor(), []
        a, b = socket.socketpair()
        rec = RecordingSocket(a, order)
        conn = LineConnection(r, rec, on_line or (lambda c, line: c.send(b"REPLY " + line + b"\n")))
        r.add_before_sleep(lambda: order.append("hook"))
        self.addCleanup(b.close)
        self.addCleanup(conn.close)
        return r, conn, rec, b, order

    def assert_hook_before_reply(self, order):
        sent_reply = [i for i, e in enumerate(order) if e != "hook" and b"REPLY" in e[1]]
        self.assertTrue(sent_reply, order)
        self.assertIn("hook", order[:sent_reply[0]], f"reply left before the hook: {order}")

    def test_reply_queued_by_a_read_waits_for_the_hook_even_when_writable(self):
        # Leftover output registers the connection for writing; then the same
        # turn finds it readable (a request) and writable: the reader queues
        # a reply, and the writer must not send it before the hook (AE_BARRIER).
        r, conn, rec, b, order = self.barrier_setup()
        rec.short_sends = 1                 # the first send takes one byte only
        conn.send(b"leftover\n")
        r.run_once(max_wait=0)             # leaves "eftover\n" queued, writer armed
        self.assertTrue(conn.outbuf)
        del order[:]
        b.sendall(b"hello\n")
        r.run_once(max_wait=1)
        self.assert_hook_before_reply(order)
        b.settimeout(1)
        self.assertIn(b"REPLY hello\n", recv_until(b, b"REPLY hello\n"))

    def test_reply_queued_by_a_timer_waits_for_the_hook(self):
        r, conn, rec, b, order = self.barrier_setup()
        r.call_later(0, conn.send, b"REPLY timer\n")
        r.run_once(max_wait=1)
        self.assert_hook_before_reply(order)

    def test_reply_queued_by_a_thread_completion_waits_for_the_hook(self):
        r, conn, rec, b, order = self.barrier_setup()
        r.run_in_thread(lambda: b"REPLY thread\n", done=lambda result, err: conn.send(result))
        deadline = time.monotonic() + 5
        while not any(e != "hook" for e in order) and time.monotonic() < deadline:
            r.run_once(max_wait=0.05)
        self.assert_hook_before_reply(order)

    def test_a_failing_hook_stops_the_loop_before_any_output(self):
        r, conn, rec, b, order = self.barrier_setup()

        def failing_commit():
            raise OSError(28, "No space left on device")

        r.add_before_sleep(failing_commit)
        b.sendall(b"hello\n")
        r.call_later(2, r.stop)
        with self.assertRaises(OSError):
            r.run()
        self.assertEqual([e for e in order if e != "hook"], [])
        self.assertEqual(conn.outbuf, b"REPLY hello\n")   # queued, never sent

    def test_the_output_phase_runs_no_application_code(self):
        # A send that fails closes the socket at once, but on_close (which
        # may change state) waits for the next turn's input phase.
        r, closed = Reactor(), []
        a, b = socket.socketpair()
        rec = RecordingSocket(a, [])
        conn = LineConnection(r, rec, lambda c, line: None, on_close=closed.append)
        rec.fail_sends = True
        conn.send(b"x\n")
        r.run_once(max_wait=0)
        self.assertTrue(conn.closed)
        self.assertEqual(closed, [])
        r.run_once(max_wait=0)
        self.assertEqual(closed, [conn])
        b.close()

    def test_pipelined_requests_answered_synchronously_after_pause(self):
        # pause() then an immediate resume() from inside on_line, 5,000 times
        # in one read: must not recurse.
        r = Reactor()
        a, b = socket.socketpair()

        def on_line(c, line):
            c.pause()
            c.send(line + b"\n")
            c.resume()

        LineConnection(r, a, on_line)
        payload = b"".join(b"%d\n" % i for i in range(5000))
        threading.Thread(target=b.sendall, args=(payload,)).start()
        got = b""
        b.settimeout(0.01)
        deadline = time.monotonic() + 10
        while len(got) < len(payload) and time.monotonic() < deadline:
            r.run_once(max_wait=0.01)
            try:
                got += b.recv(1 << 20)
            except socket.timeout:
                pass
        self.assertEqual(got, payload)
        b.close()

    def test_line_without_newline_completes_after_quiet_time(self):
        r, lines = Reactor(), []
        a, b = socket.socketpair()
        LineConnection(r, a, lambda c, line: lines.append(line), quiet=0.05)
        b.sendall(b"no newline")
        deadline = time.monotonic() + 2
        while not lines and time.monotonic() < deadline:
            r.run_once(max_wait=0.01)
        self.assertEqual(lines, [b"no newline"])
        b.close()

    def test_over_long_line_reports_overflow_and_resyncs(self):
        r, lines, bad = Reactor(), [], []
        a, b = socket.socketpair()
        LineConnection(r, a, lambda c, line: lines.append(line), on_overflow=lambda c: bad.append(1),
                       max_line=10)
        b.sendall(b"x" * 50 + b"\nok\n")
        deadline = time.monotonic() + 2
        while not lines and time.monotonic() < deadline:
            r.run_once(max_wait=0.01)
        self.assertEqual((lines, len(bad)), ([b"ok"], 1))
        b.close()


if __name__ == "__main__":
    unittest.main()
