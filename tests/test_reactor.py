"""The reactor and line framing, on real socket pairs."""
import socket
import threading
import time
import unittest

from lib.reactor import LineConnection, Reactor


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

    def test_after_turn_hooks_run_before_output_is_flushed(self):
        r = Reactor()
        a, b = socket.socketpair()
        order = []
        conn = LineConnection(r, a, lambda c, line: c.send(line.upper() + b"\n"))
        r.add_after_turn(lambda: order.append("hook"))
        b.sendall(b"hello\n")
        r.run_once(max_wait=1)
        b.settimeout(1)
        self.assertEqual(b.recv(100), b"HELLO\n")
        self.assertIn("hook", order)
        conn.close()
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
