"""The TCP social client: `./client HOST PORT < testcase > output`.

`TcpClient` is the driver around `ClientMachine` (tcp_machine.py): it turns
stdin, its TCP connections, timers and the broker link into events, and runs
the actions the machine returns. It decides nothing: connecting without
blocking the loop and moving bytes is all it does.
"""
import collections
import errno
import logging
import os
import socket
import sys

from lib.clients.tcp_events import (
    ChatMessage, Close, Closed, Connect, ConnectFailed, Connected, EndOfInput, Print,
    ReplyLine, Send, StartBroker, Stop, Subscribe, Subscribed, TimerFired, Typed, Unsubscribe)
from lib.clients.tcp_machine import ClientMachine
from lib.loop.reactor import Reactor
from lib.loop.timers import TimerTable, timer_handlers
from lib.loop.transports import LineConnection, LineReader
from lib.social import protocol

log = logging.getLogger("client")

RESOLVER = "resolve"          # worker pool for host names (DNS may block)
DEFAULT_BROKER = "127.0.0.1:61613"
_IN_PROGRESS = (0, errno.EINPROGRESS, errno.EAGAIN, errno.EINTR)


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
    """Runs a ClientMachine on one reactor over stdin, TCP and the broker."""

    def __init__(self, host, port, out=sys.stdout, linger=0.5, stdin_fd=0):
        self.reactor = Reactor(workers=1)
        self.reactor.add_pool(RESOLVER, 1)
        self.machine = ClientMachine((host, port), linger=linger)
        self.timers = TimerTable(self.reactor, lambda key: self.feed(TimerFired(key)))
        self.out = out
        self.stdin_fd = stdin_fd
        self.conns = {}           # address -> _Connector, then LineConnection
        self.broker = None
        self.exit_code = 0
        self._events = collections.deque()
        self._feeding = False

    def run(self):
        LineReader(self.reactor, self.stdin_fd, lambda line: self.feed(Typed(line)),
                   lambda: self.feed(EndOfInput()))
        self.reactor.run()
        for address in list(self.conns):
            self._close(Close(address))
        if self.broker:
            self.broker.close()
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
            self.out.write("".join(line + "\n" for line in action.lines))
            self.out.flush()
        except (BrokenPipeError, ValueError):
            self.exit_code = 1    # nobody reads our output any more
            self.reactor.stop()

    def _stop(self, action):
        self.exit_code = self.exit_code or action.exit_code
        self.reactor.stop()

    # -- broker ----------------------------------------------------------------------------
    def _start_broker(self, action):
        try:
            from lib.messaging import broker
        except ImportError:       # no stomp.py: no chat, every subscription fails
            return
        host, port = broker.parse_address(action.address or DEFAULT_BROKER)
        self.broker = broker.BrokerLink(self.reactor, host, port, name="client",
                                        on_message=lambda dest, body, headers:
                                        self.feed(ChatMessage(dest, body)))
        self.broker.start()

    def _subscribe(self, action):
        if self.broker is None:
            self.feed(Subscribed(False, "no broker link"))
            return
        self.broker.subscribe(action.destination, done=lambda ok, error: self.feed(Subscribed(ok, error)))

    def _unsubscribe(self, action):
        if self.broker:
            self.broker.unsubscribe(action.destination)


_DO = {
    Connect: TcpClient._connect, Send: TcpClient._send, Close: TcpClient._close,
    Print: TcpClient._print, **timer_handlers(),
    Stop: TcpClient._stop, StartBroker: TcpClient._start_broker, Subscribe: TcpClient._subscribe,
    Unsubscribe: TcpClient._unsubscribe,
}


def main(argv):
    import argparse
    parser = argparse.ArgumentParser(prog="client", description="np-social client: reads commands "
                                     "from stdin, prints replies (see README).")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--linger", type=float, default=0.5,
                        help="seconds to wait for chat messages at end of input (default 0.5)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s client %(levelname)s %(message)s")
    return TcpClient(args.host, args.port, linger=args.linger).run()
