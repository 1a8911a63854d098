"""Transports on the reactor: TCP streams framed in lines, and line input
from a file descriptor (stdin); listeners are in lib/loop/listener.py. They
only move bytes; what a line means is their owner's business."""
import collections
import math
import os
import stat
import sys

from lib.loop.listener import Listener, raise_fd_limit  # noqa: F401  (imported from here too)


_UNBOUNDED = sys.maxsize         # "no budget": lines per pass


class LineConnection:
    """A TCP stream framed in lines, driven by a Reactor.

    `on_line(conn, bytes)` gets each complete line (no newline). A line with no
    newline is complete after `quiet` seconds with no further byte (course-era
    clients send one line without "\\n" and wait). A line over `max_line`
    bytes calls `on_overflow(conn)` once; the rest of it is skipped. `on_close(conn)`
    runs once. Reading can be paused (`pause`, `resume`) so a slow request
    keeps replies in order. Output is queued and flushed at the end of the turn.

    What one peer may cost (None: unbounded):
    - `budget`: lines delivered per pass; the rest wait behind every other
      connection's pass (`call_soon` is first in, first out), so a pipelining
      peer cannot hold the loop;
    - `max_unsent`: while more output than this is unsent at the end of a
      turn, no line is read or delivered (backpressure), until half of it
      has left;
    - `max_output`: unsent bytes at which the peer is dropped (it never reads);
    - `first_timeout`: seconds from connect to the first line; `idle_timeout`:
      seconds without a byte. Neither runs out while a request is in progress.
    Reading also stops while READ_AHEAD bytes wait to be delivered.
    """

    READ_AHEAD = 256 * 1024          # bytes read but not yet delivered before we stop reading
    MAX_OUTPUT = 16 * 1024 * 1024    # the default max_output

    def __init__(self, reactor, sock, on_line, on_close=None, on_overflow=None,
                 max_line=8192, quiet=0.05, idle_timeout=None, peer=None, first_timeout=None,
                 budget=None, max_unsent=None, max_output=MAX_OUTPUT):
        self.reactor, self.sock = reactor, sock
        self.on_line, self.on_close, self.on_overflow = on_line, on_close, on_overflow
        self.max_line, self.quiet, self.peer = max_line, quiet, peer
        self.idle_timeout, self.first_timeout = idle_timeout, first_timeout
        self.budget, self.max_unsent, self.max_output = budget, max_unsent, max_output
        self._unsent_cap = math.inf if max_unsent is None else max_unsent
        self._timed = idle_timeout is not None or first_timeout is not None
        self._clock = reactor.clock
        self.inbuf = bytearray()
        self._scanned = 0            # leading bytes of inbuf known to hold no newline
        self.outbuf = bytearray()
        self._marks = None           # deque of [unsent bytes ahead, on_sent] (see send)
        self.closed = False
        self.paused = False
        self.eof = False
        self._blocked = False        # over max_unsent: lines wait for the peer to read
        self._more = False           # a next pass over buffered lines is scheduled
        self._delivering = False
        self._close_when_flushed = False
        self._quiet_timer = None
        self._idle_timer = None
        self._opened = self._last_active = reactor.clock()
        self._spoke = False          # a line has been delivered (the first request came)
        self._discarding = False     # skipping the rest of an over-long line
        self._reading = True         # registered for reading with the reactor
        self._writing = False        # registered for writing with the reactor
        self._flush_cb = self._flush   # one bound method: a cheap key in the reactor's output set
        sock.setblocking(False)
        reactor.add_reader(sock, self._on_readable)
        self._arm_idle()

    # -- input ---------------------------------------------------------------
    def pause(self):
        # Only a flag: the socket stays registered (no epoll_ctl per request);
        # reading stops when READ_AHEAD bytes wait (see _sync_reading).
        self.paused = True

    def resume(self):
        """Continue delivering; lines already buffered come first."""
        if self.closed or not self.paused:
            return
        self.paused = False
        if not self._delivering:   # resumed from inside on_line: the running loop goes on
            self._deliver()
            if not self._reading:  # stopped while lines waited: they are fewer now
                self._sync_reading()

    def _on_readable(self):
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if data:
            self._arm_idle()
            self.inbuf += data
        else:
            # Peer finished sending (half-close): answer what it sent, then close.
            self.eof = True
            self._sync_reading()
            if self.inbuf and not self.inbuf.endswith(b"\n"):
                self.inbuf += b"\n"  # a last line without newline still counts
        if self.paused or self._more or self._blocked:
            self._sync_reading()     # their turn comes later; only bound the read-ahead
        else:
            self._deliver()

    def _deliver(self):
        """Deliver buffered lines, then settle: close at end of input, or wait
        `quiet` for the rest of a line without newline."""
        self._delivering = True
        try:
            self._deliver_lines()
        finally:
            self._delivering = False
        if (self.inbuf or self.eof) and not (self.paused or self._more or self._blocked
                                             or self.closed):
            if self.eof:
                self.close_after_flush()
            else:
                self._arm_quiet()

    def _deliver_lines(self):
        inbuf, left = self.inbuf, self.budget or _UNBOUNDED
        while not (self.paused or self.closed or self._blocked):
            # A long line arrives in many reads: search only the new bytes.
            nl = inbuf.find(b"\n", self._scanned)
            if nl < 0:
                if inbuf:
                    if self._discarding:   # the rest of an over-long line, already answered
                        inbuf.clear()
                    elif len(inbuf) > self.max_line:   # its end has not come yet
                        inbuf.clear()
                        self._discarding = True
                        self._overflow()
                    self._scanned = len(inbuf)
                return
            if self._discarding:
                del inbuf[:nl + 1]
                self._scanned, self._discarding = 0, False
                continue
            if not left:
                self._schedule_pass()
                return
            left -= 1
            if nl > self.max_line:
                del inbuf[:nl + 1]
                self._scanned = 0
                self._overflow()
                continue
            line = bytes(inbuf[:nl])
            del inbuf[:nl + 1]
            self._scanned = 0
            if line.endswith(b"\r"):
                line = line[:-1]
            self._spoke = True
            self.on_line(self, line)

    def _overflow(self):
        # One report per over-long line, so replies still line up with requests.
        if self.on_overflow:
            self.on_overflow(self)

    def _schedule_pass(self):
        if not self._more:
            self._more = True
            self.reactor.call_soon(self._next_pass)

    def _next_pass(self):
        self._more = False
        if not self.closed:
            self._deliver()
            if not self._reading:
                self._sync_reading()

    def _sync_reading(self):
        # Lines waiting their turn are bounded by READ_AHEAD; a line still
        # arriving only by max_line (its end must be read to deliver it).
        waiting = self.paused or self._more
        want = not (self.eof or self._blocked or (waiting and len(self.inbuf) > self.READ_AHEAD))
        if want != self._reading and not self.closed:
            self._reading = want
            if want:
                self.reactor.add_reader(self.sock, self._on_readable)
            else:
                self.reactor.remove_reader(self.sock)

    def _arm_quiet(self):
        if self.quiet is None:
            return
        if self._quiet_timer:
            self._quiet_timer.cancel()
        self._quiet_timer = self.reactor.call_later(self.quiet, self._quiet_expired)

    def _quiet_expired(self):
        self._quiet_timer = None
        if (self.closed or self.paused or self._more or self._blocked or not self.inbuf
                or self._discarding):
            return
        line = bytes(self.inbuf)
        self.inbuf.clear()
        self._scanned = 0
        self._spoke = True
        self.on_line(self, line.rstrip(b"\r"))

    def _arm_idle(self):
        # One timer per connection, re-armed lazily when it fires: a busy
        # connection costs a clock read per recv, not a Timer in the heap.
        if not self._timed:
            return
        self._last_active = self._clock()
        if self._idle_timer is None:
            delay = self._deadline() - self._last_active
            if delay != math.inf:
                self._idle_timer = self.reactor.call_later(delay, self._idle_expired)

    def _deadline(self):
        """When silence closes us: `idle_timeout` after the last byte, and
        `first_timeout` after connect if no line came by then."""
        deadline = math.inf if self.idle_timeout is None else self._last_active + self.idle_timeout
        if not self._spoke and self.first_timeout is not None:
            deadline = min(deadline, self._opened + self.first_timeout)
        return deadline

    def _idle_expired(self):
        self._idle_timer = None
        if self.closed:
            return
        left = self._deadline() - self.reactor.clock()
        if left == math.inf:
            return               # the first line came and there is no idle limit
        if left > 0 or self.paused or self._more:   # active since, or a request is in progress
            self._idle_timer = self.reactor.call_later(
                left if left > 0 else self.idle_timeout or self.first_timeout, self._idle_expired)
            return
        self.close()

    def keep_open(self):
        """No idle limit from now on: a connection that only receives (pushes)."""
        self.idle_timeout = None

    # -- output --------------------------------------------------------------
    def send(self, data, on_sent=None):
        """Queue `data`; it leaves in this turn's output phase (after the commit).
        `on_sent()` runs (in a later turn's input phase) once all of it is in
        the socket; never if the connection closes first."""
        if self.closed:
            return
        self.outbuf += data
        if on_sent is not None:
            if self._marks is None:
                self._marks = collections.deque()
            self._marks.append([len(self.outbuf), on_sent])
        self.reactor.want_output(self._flush_cb)

    def close_after_flush(self):
        self._close_when_flushed = True
        self.reactor.want_output(self._flush_cb)

    def _flush(self):
        # Runs in the output phase, so it only moves bytes: a connection that
        # fails here is torn down now but its on_close (application code)
        # runs in the next turn's input phase, as do lines a drained
        # backpressure lets through.
        if self.closed:
            return
        if self.outbuf:
            try:
                sent = self.sock.send(self.outbuf)
                del self.outbuf[:sent]
                if self._marks:
                    self._passed(sent)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.close(notify_later=True)
                return
        if self._blocked and len(self.outbuf) <= self._unsent_cap / 2:
            self._blocked = False
            self._sync_reading()
            self._schedule_pass()    # the lines waiting: application code, next turn
        if self.outbuf:
            unsent = len(self.outbuf)
            if self.max_output is not None and unsent > self.max_output:
                self.close(notify_later=True)
                return
            if unsent > self._unsent_cap and not self._blocked:
                # Backpressure: read no more requests until the peer reads.
                # (Checked once a turn: the budget bounds one turn's output.)
                self._blocked = True
                self._sync_reading()
            if not self._writing:
                self._writing = True
                self.reactor.add_writer(self.sock, self._flush)
        else:
            if self._writing:
                self._writing = False
                self.reactor.remove_writer(self.sock)
            if self._close_when_flushed:
                self.close(notify_later=True)

    def _passed(self, sent):
        """`sent` more bytes are in the socket: call back the sends now wholly out."""
        marks = self._marks
        for mark in marks:
            mark[0] -= sent
        while marks and marks[0][0] <= 0:
            self.reactor.call_soon(marks.popleft()[1])   # application code: not in this phase

    def close(self, notify_later=False):
        """Close now; `on_close` runs now, or next turn if `notify_later`."""
        if self.closed:
            return
        self.closed = True
        for timer in (self._quiet_timer, self._idle_timer):
            if timer:
                timer.cancel()
        self.reactor.forget(self.sock)
        try:
            self.sock.close()
        except OSError:
            pass
        if self.on_close:
            if notify_later:
                self.reactor.call_soon(self.on_close, self)
            else:
                self.on_close(self)


class LineReader:
    """Text lines from a file descriptor such as stdin: `on_line(str)` for
    each line (a last one without newline counts), then `on_eof()`.

    A pipe or terminal is watched by the selector; a regular file (or
    /dev/null), which epoll cannot watch and which is always readable, is
    read a chunk per turn so the loop still runs timers and sockets."""

    def __init__(self, reactor, fd, on_line, on_eof):
        self.reactor, self.fd, self.on_line, self.on_eof = reactor, fd, on_line, on_eof
        self.buf = b""
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            regular = True   # no stdin at all: read() reports EOF
        if not regular:
            try:
                reactor.add_reader(fd, self._on_readable)
                return
            except (OSError, ValueError):
                pass
        reactor.call_soon(self._read_chunk)

    def _read_chunk(self):
        if self._read():
            self.reactor.call_soon(self._read_chunk)

    def _on_readable(self):
        if not self._read():
            self.reactor.remove_reader(self.fd)

    def _read(self):
        """Deliver complete lines; False at end of input."""
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if data:
            self.buf += data
            *lines, self.buf = self.buf.split(b"\n")
            for line in lines:
                self.on_line(line.decode("utf-8", "replace").rstrip("\r"))
            return True
        if self.buf:
            line, self.buf = self.buf, b""
            self.on_line(line.decode("utf-8", "replace").rstrip("\r"))
        self.on_eof()
        return False
