"""Transports on the reactor: TCP streams framed in lines, listeners, and
line input from a file descriptor (stdin). They only move bytes; what a
line means is their owner's business."""
import errno
import logging
import os
import socket
import stat
import time


log = logging.getLogger("transport")


class LineConnection:
    """A TCP stream framed in lines, driven by a Reactor.

    `on_line(conn, bytes)` gets each complete line (no newline). A line with no
    newline is complete after `quiet` seconds with no further byte (course-era
    clients send one line without "\\n" and wait). A line over `max_line`
    bytes calls `on_overflow(conn)`. `on_close(conn)` runs once. Reading can
    be paused so a slow request keeps replies in order and applies
    backpressure. Output is queued and flushed at the end of the turn.
    """

    def __init__(self, reactor, sock, on_line, on_close=None, on_overflow=None,
                 max_line=8192, quiet=0.05, idle_timeout=None, peer=None):
        self.reactor, self.sock = reactor, sock
        self.on_line, self.on_close, self.on_overflow = on_line, on_close, on_overflow
        self.max_line, self.quiet, self.idle_timeout = max_line, quiet, idle_timeout
        self.peer = peer
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closed = False
        self.paused = False
        self.eof = False
        self._delivering = False
        self._close_when_flushed = False
        self._quiet_timer = None
        self._idle_timer = None
        self._last_active = 0.0
        self._discarding = False
        self._reading = True         # registered for reading with the reactor
        self._writing = False        # registered for writing with the reactor
        self._flush_cb = self._flush   # one bound method: a cheap key in the reactor's output set
        sock.setblocking(False)
        reactor.add_reader(sock, self._on_readable)
        self._arm_idle()

    # -- input ---------------------------------------------------------------
    PAUSED_BUFFER = 256 * 1024   # bytes read ahead while paused before we stop reading

    def pause(self):
        # Only a flag: the socket stays registered (no epoll_ctl per request);
        # reading stops when PAUSED_BUFFER bytes wait (see _on_readable).
        self.paused = True

    def resume(self):
        """Continue reading; lines already buffered are delivered first."""
        if self.closed or not self.paused:
            return
        self.paused = False
        if not self.eof and not self._reading:
            self._reading = True
            self.reactor.add_reader(self.sock, self._on_readable)
        if self._delivering:
            return  # resumed from inside on_line: the running _deliver loop goes on
        self._deliver()
        if self.eof:
            self._finish_if_eof()
        elif not self.paused and self.inbuf and not self.closed:
            self._arm_quiet()

    def _finish_if_eof(self):
        if not self.paused and not self.closed:
            self.close_after_flush()

    def _on_readable(self):
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            # Peer finished sending (half-close): answer what it sent, then close.
            self.eof = True
            self._reading = False
            self.reactor.remove_reader(self.sock)
            if not self._discarding and self.inbuf and b"\n" not in self.inbuf:
                self.inbuf += b"\n"  # a last line without newline still counts
            self._deliver()
            self._finish_if_eof()
            return
        self._arm_idle()
        self.inbuf += data
        if self.paused:
            if len(self.inbuf) > self.PAUSED_BUFFER:
                self._reading = False
                self.reactor.remove_reader(self.sock)
            return
        self._deliver()
        if self.inbuf and not self.paused and not self.closed:
            self._arm_quiet()

    def _deliver(self):
        self._delivering = True
        try:
            self._deliver_lines()
        finally:
            self._delivering = False

    def _deliver_lines(self):
        while not self.paused and not self.closed:
            nl = self.inbuf.find(b"\n")
            if nl < 0:
                if len(self.inbuf) > self.max_line:
                    self._overflow()
                return
            line = bytes(self.inbuf[:nl])
            del self.inbuf[:nl + 1]
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self.max_line:
                self._overflow(resync=False)
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            self.on_line(self, line)

    def _overflow(self, resync=True):
        # Drop the over-long line; keep the connection usable after its newline.
        if resync:  # the line's end has not arrived yet: skip up to it
            self.inbuf.clear()
            self._discarding = True
        if self.on_overflow:
            self.on_overflow(self)

    def _arm_quiet(self):
        if self.quiet is None:
            return
        if self._quiet_timer:
            self._quiet_timer.cancel()
        self._quiet_timer = self.reactor.call_later(self.quiet, self._quiet_expired)

    def _quiet_expired(self):
        self._quiet_timer = None
        if self.closed or self.paused or not self.inbuf or self._discarding:
            return
        line = bytes(self.inbuf)
        self.inbuf.clear()
        self.on_line(self, line.rstrip(b"\r"))

    def _arm_idle(self):
        # One timer per connection, re-armed lazily when it fires: a busy
        # connection costs a clock read per recv, not a Timer in the heap.
        if self.idle_timeout is None:
            return
        self._last_active = time.monotonic()
        if self._idle_timer is None:
            self._idle_timer = self.reactor.call_later(self.idle_timeout, self._idle_expired)

    def _idle_expired(self):
        self._idle_timer = None
        if self.closed:
            return
        left = self._last_active + self.idle_timeout - time.monotonic()
        if left > 0 or self.paused:  # active since, or a request is in progress
            self._idle_timer = self.reactor.call_later(left if left > 0 else self.idle_timeout,
                                                       self._idle_expired)
            return
        self.close()

    # -- output --------------------------------------------------------------
    MAX_OUTPUT = 16 * 1024 * 1024   # unsent bytes before we drop a peer that never reads

    def send(self, data):
        """Queue `data`; it leaves in this turn's output phase (after the commit)."""
        if self.closed:
            return
        self.outbuf += data
        self.reactor.want_output(self._flush_cb)

    def close_after_flush(self):
        self._close_when_flushed = True
        self.reactor.want_output(self._flush_cb)

    def _flush(self):
        # Runs in the output phase, so it only moves bytes: a connection that
        # fails here is torn down now but its on_close (application code)
        # runs in the next turn's input phase.
        if self.closed:
            return
        if self.outbuf:
            try:
                sent = self.sock.send(self.outbuf)
                del self.outbuf[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.close(notify_later=True)
                return
        if self.outbuf:
            if len(self.outbuf) > self.MAX_OUTPUT:
                self.close(notify_later=True)
                return
            if not self._writing:
                self._writing = True
                self.reactor.add_writer(self.sock, self._flush)
        else:
            if self._writing:
                self._writing = False
                self.reactor.remove_writer(self.sock)
            if self._close_when_flushed:
                self.close(notify_later=True)

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


class Listener:
    """Accept TCP connections on (host, port) and hand each socket to `on_accept`."""

    def __init__(self, reactor, host, port, on_accept, backlog=1024):
        self.reactor, self.on_accept = reactor, on_accept
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(backlog)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]
        self._paused_until = 0
        reactor.add_reader(self.sock, self._accept)

    def _accept(self):
        for _ in range(64):  # bounded so one busy listener cannot starve the rest
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting briefly instead of spinning.
                    log.warning("accept: %s; pausing accepts for 100 ms", e)
                    self.reactor.remove_reader(self.sock)
                    self.reactor.call_later(0.1, self.reactor.add_reader, self.sock, self._accept)
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.on_accept(sock, addr)

    def close(self):
        self.reactor.forget(self.sock)
        self.sock.close()


def raise_fd_limit():
    """Thousands of connections need more than the default 1024 descriptors."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass



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
