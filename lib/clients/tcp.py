"""The TCP social client: `./client HOST PORT < testcase > output`.

`TcpClient` is the driver around `ClientMachine` (tcp_machine.py): it turns
stdin, its TCP connections and timers into events, and runs
the actions the machine returns. It decides nothing: connecting without
blocking the loop and moving bytes is all it does. At a terminal, lines come
from the line editor (terminal.py) and are printed above the line being typed.
"""
import collections
import errno
import logging
import os
import socket
import sys

from lib import flags
from lib.clients.tcp_events import (
    Close, Closed, Connect, ConnectFailed, Connected, EndOfInput, Print, ReplyLine, Send, Stop,
    TimerFired, Typed)
from lib.clients.tcp_machine import LISTEN_TIMEOUT, ClientMachine
from lib.clients.tcp_routing import REMEMBER_PUSHES
from lib.loop.reactor import Reactor
from lib.loop.timers import TimerTable, timer_handlers
from lib.loop.transports import LineConnection, LineReader
from lib.social import protocol

log = logging.getLogger("client")

RESOLVER = "resolve"          # worker pool for host names (DNS may block)
_IN_PROGRESS = (0, errno.EINPROGRESS, errno.EAGAIN, errno.EINTR)
# Exit statuses (client.py's --help and the README list them; 2 is a usage error).
EXIT_OK, EXIT_OUTPUT, EXIT_UNREACHABLE = 0, 1, 3
EXITS = {EXIT_OK: "every request was answered",
         EXIT_OUTPUT: "stdout was closed",
         EXIT_UNREACHABLE: "`Error: cannot reach the server at HOST:PORT` was printed (at least once)"}


class _Connector:
    """One non-blocking connect to (host, port): each resolved address in
    turn, completion when the socket turns writable, the outcome from
    SO_ERROR. Its timeout is the machine's (ConnectTimeout, then Close)."""

    def __init__(self, driver, address):
        self.driver, self.reactor, self.address = driver, driver.reactor, address
        self.sock = None
        self.infos = []
        self.error = "no address"
        self.aborted = False

    def start(self):
        host, port = self.address
        try:
            self.infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                            flags=socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError):
            # a host name: resolve it off the loop
            self.reactor.run_in_thread(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM,
                                       done=self._resolved, pool=RESOLVER)
            return
        self._try_next()

    def _resolved(self, infos, error):
        if self.aborted:
            return
        if error is not None:
            self.error = str(error)
        self.infos = list(infos or [])
        self._try_next()

    def _try_next(self):
        while self.infos:
            family, kind, proto, _, sockaddr = self.infos.pop(0)
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as e:
                self.error = str(e)
                continue
            try:
                sock.setblocking(False)
                err = sock.connect_ex(sockaddr)
            except OSError as e:
                sock.close()
                self.error = str(e)
                continue
            if err in _IN_PROGRESS:
                self.sock = sock
                self.reactor.add_writer(sock, self._writable)
                return
            sock.close()
            self.error = os.strerror(err)
        self.driver.connect_failed(self, self.error)

    def _writable(self):
        # The reactor runs writers in its output phase, which runs no
        # application code: the outcome is handled in the next input phase.
        self.reactor.remove_writer(self.sock)
        self.reactor.call_soon(self._check)

    def _check(self):
        if self.aborted:
            return
        sock, self.sock = self.sock, None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            self.error = os.strerror(err)
            self._try_next()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.driver.connected(self, sock)

    def close(self):
        self.aborted = True
        if self.sock is not None:
            self.reactor.forget(self.sock)
            self.sock.close()
            self.sock = None


class TcpClient:
    """Runs a ClientMachine on one reactor over stdin and TCP."""

    def __init__(self, host, port, out=sys.stdout, linger=0.5, stdin_fd=0,
                 listen_timeout=LISTEN_TIMEOUT, remember_pushes=REMEMBER_PUSHES, terminal=None):
        self.reactor = Reactor(workers=1)
        self.reactor.add_pool(RESOLVER, 1)
        self.machine = ClientMachine((host, port), linger=linger, listen_timeout=listen_timeout,
                                     remember_pushes=remember_pushes)
        self.timers = TimerTable(self.reactor, lambda key: self.feed(TimerFired(key)))
        self.out = out
        self.stdin_fd = stdin_fd
        self.make_terminal = terminal   # terminal.factory(): stdin is a terminal
        self.terminal = None
        self.conns = {}           # address -> _Connector, then LineConnection
        self.exit_code = 0
        self._events = collections.deque()
        self._feeding = False

    def run(self):
        on_line, on_eof = lambda line: self.feed(Typed(line)), lambda: self.feed(EndOfInput())
        if self.make_terminal is not None:
            self.terminal = self.make_terminal(self.reactor, on_line, on_eof)
        else:
            LineReader(self.reactor, self.stdin_fd, on_line, on_eof)
        try:
            self.reactor.run()
        finally:
            if self.terminal is not None:
                self.terminal.close()     # the terminal back as it was, even after Ctrl-C
        for address in list(self.conns):
            self._close(Close(address))
        if self.machine.unreachable:
            self.exit_code = self.exit_code or EXIT_UNREACHABLE
        return self.exit_code

    def feed(self, event):
        """Hand `event` to the machine and run its actions. An action that
        causes an event at once (a connect refused on the spot) queues it
        behind the actions still to run, so the machine sees events in order."""
        self._events.append(event)
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._events:
                for action in self.machine.feed(self._events.popleft()):
                    _DO[type(action)](self, action)
        finally:
            self._feeding = False

    # -- connections ----------------------------------------------------------------------
    def _connect(self, action):
        connector = self.conns[action.address] = _Connector(self, action.address)
        connector.start()

    def connected(self, connector, sock):
        if self.conns.get(connector.address) is not connector:
            sock.close()
            return
        conn = LineConnection(self.reactor, sock, self._on_line, on_close=self._on_close,
                              max_line=protocol.MAX_REPLY, quiet=None)
        conn.address = connector.address
        self.conns[conn.address] = conn
        self.feed(Connected(conn.address))

    def connect_failed(self, connector, error):
        if self.conns.get(connector.address) is connector:
            del self.conns[connector.address]
            self.feed(ConnectFailed(connector.address, error))

    def _on_line(self, conn, raw):
        self.feed(ReplyLine(conn.address, raw))

    def _on_close(self, conn):
        if self.conns.get(conn.address) is conn:
            del self.conns[conn.address]
            self.feed(Closed(conn.address))

    def _send(self, action):
        conn = self.conns.get(action.address)
        if isinstance(conn, LineConnection):
            # closed meanwhile: send() drops it, and Closed is on its way
            conn.send((action.line + "\n").encode("utf-8"))
        else:
            log.warning("send to %s: not connected", action.address)

    def _close(self, action):
        conn = self.conns.pop(action.address, None)
        if isinstance(conn, LineConnection):
            conn.on_close = None  # the machine asked: no Closed event
        if conn is not None:
            conn.close()

    # -- output, timers, the end ------------------------------------------------------------
    def _print(self, action):
        try:
            if self.terminal is not None:
                self.terminal.write(action.lines)   # above the line being typed
            else:
                self.out.write("".join(line + "\n" for line in action.lines))
                self.out.flush()
        except (OSError, ValueError):   # BrokenPipe; EIO: the terminal is gone
            self.exit_code = EXIT_OUTPUT    # nobody reads our output any more
            self.reactor.stop()

    def _stop(self, action):
        self.exit_code = self.exit_code or action.exit_code
        self.reactor.stop()


_DO = {
    Connect: TcpClient._connect, Send: TcpClient._send, Close: TcpClient._close,
    Print: TcpClient._print, **timer_handlers(),
    Stop: TcpClient._stop,
}


def add_options(group):
    """The TCP client's own options; client.py's parser holds them (and
    refuses them with --udp). Returns their argparse actions."""
    return [
        group.add_argument("--linger", type=flags.number(float, zero_ok=True), default=0.5, metavar="S",
                           help="seconds to wait for chat messages at end of input (default 0.5)"),
        group.add_argument("--listen-timeout", type=flags.number(float), default=LISTEN_TIMEOUT,
                           metavar="S", help="seconds a login waits for its app server's `listen` "
                           f"reply before the next line (default {LISTEN_TIMEOUT:g})"),
        group.add_argument("--remember-pushes", type=flags.number(int), default=REMEMBER_PUSHES,
                           metavar="N", help="chat messages remembered (by id and user) so a "
                           f"redelivered one is not printed twice (default {REMEMBER_PUSHES})"),
    ]


def run(args, terminal=None):
    """The client on client.py's parsed `args` (host, port, add_options' names);
    `terminal`: the line editor's factory when stdin is a terminal. -> exit status."""
    return TcpClient(args.host, args.port, linger=args.linger, listen_timeout=args.listen_timeout,
                     remember_pushes=args.remember_pushes, terminal=terminal).run()
