"""Accepting TCP connections on the reactor, also when descriptors run out;
refusing one with a last line; and the descriptor limit itself.

`Listener` keeps one reserve descriptor (the nginx/libev trick): when
`accept` fails with EMFILE/ENFILE it closes the reserve, accepts the
waiting connection, closes it and takes the reserve back. Without that a
full process leaves connections in the kernel's backlog, the listening
socket stays readable, and clients wait for a reply that never comes. A
burst of such closes is logged twice (start, end with the count), never
once per connection.
"""
import errno
import logging
import os
import socket

log = logging.getLogger("transport")

_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
_NO_MEMORY = (errno.ENOBUFS, errno.ENOMEM)
ACCEPTS_PER_TURN = 64      # so one busy listener cannot starve the rest of the loop


class BurstLog:
    """A warning when a condition starts and one when it has not recurred
    for `quiet` seconds (with how often it happened): two lines per burst."""

    def __init__(self, reactor, start, end, quiet=1.0):
        self.reactor, self.start, self.end, self.quiet = reactor, start, end, quiet
        self.count = 0

    def hit(self):
        self.count += 1
        if self.count == 1:
            log.warning(self.start)
            self.reactor.call_later(self.quiet, self._check, 1)

    def _check(self, seen):
        if self.count > seen:
            self.reactor.call_later(self.quiet, self._check, self.count)
            return
        log.warning(self.end, self.count)
        self.count = 0


def _open_reserve():
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


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
        self._reserve = _open_reserve()
        self.shed = BurstLog(reactor, f"accept on {self.address[1]}: out of descriptors; "
                             "closing new connections at once",
                             f"accept on {self.address[1]}: descriptors free again; "
                             "%d connections were closed unanswered")
        self.stalls = BurstLog(reactor, f"accept on {self.address[1]}: no descriptor or memory "
                               "to spare; pausing accepts 100 ms at a time",
                               f"accept on {self.address[1]}: accepting again after %d pauses")
        reactor.add_reader(self.sock, self._accept)

    def _accept(self):
        if self._reserve is None:
            self._reserve = _open_reserve()
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _NO_DESCRIPTORS and self._reserve is not None:
                    # (accept fails so even with nothing waiting: then we are done)
                    if self._shed_one():
                        continue
                elif e.errno in _NO_DESCRIPTORS + _NO_MEMORY:
                    # No reserve to spend: stop accepting briefly instead of spinning.
                    self.stalls.hit()
                    self.reactor.remove_reader(self.sock)
                    self.reactor.call_later(0.1, self.reactor.add_reader, self.sock, self._accept)
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.on_accept(sock, addr)

    def _shed_one(self):
        """Out of descriptors: spend the reserve on accepting and closing one
        waiting connection. False if none was waiting."""
        os.close(self._reserve)
        try:
            sock, _ = self.sock.accept()
        except OSError:
            sock = None
        if sock is not None:
            sock.close()
            self.shed.hit()
        self._reserve = _open_reserve()
        return sock is not None

    def close(self):
        self.reactor.forget(self.sock)
        self.sock.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None


def refuse(reactor, sock, line):
    """Answer one `line` on a just-accepted socket and close it, in the
    turn's output phase like every other reply (no LineConnection needed)."""
    def answer_and_close():
        try:
            sock.setblocking(False)
            sock.send(line)
            # Closing with unread input sends a reset, which can destroy the
            # line before the peer reads it: read what already arrived.
            sock.recv(65536)
        except OSError:
            pass
        sock.close()
    reactor.want_output(answer_and_close)


def raise_fd_limit():
    """Raise the soft descriptor limit to the hard one (the common default
    soft limit, 1,024, is a few hundred idle clients from one attacker);
    -> the soft limit now in force, or None if it cannot be read."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # Linux refuses an infinite soft limit: the kernel's ceiling is nr_open.
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 65536
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
