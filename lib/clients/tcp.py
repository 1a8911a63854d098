"""The TCP social client: `./client HOST PORT < testcase > output`.

`ClientCore` is the pure part (no sockets): it keeps a token per user, turns
a typed line into a wire request and a destination (PROTOCOL.md §2), and
turns a reply into printed lines and subscription changes (§5).
`TcpClient` drives it on one reactor over stdin, its TCP connections and the
broker link (whose receiver thread only wakes the reactor up).
"""
import json
import logging
import socket
import sys
from dataclasses import dataclass, field

from lib.loop.address import format_address, parse_address
from lib.social import applink, protocol
from lib.social.protocol import COMMANDS, Server
from lib.loop.reactor import Reactor
from lib.loop.transports import LineConnection, LineReader

log = logging.getLogger("client")

LOGIN_SERVER = "login"        # Step.target for the login server; else a user name (their app server)


@dataclass
class Login:
    token: str
    app: tuple = None             # (host, port) of this user's application server
    queue: str = None
    topics: dict = field(default_factory=dict)   # group -> broker destination

    def destinations(self):
        return ([self.queue] if self.queue else []) + list(self.topics.values())


@dataclass
class Step:
    """One request: what to send, where, and for whom."""
    name: str
    wire: str
    target: str                   # LOGIN_SERVER or the user whose app server serves it
    user: str = None
    with_token: bool = False


EXIT = object()


class ClientCore:
    def __init__(self):
        self.logins = {}          # user -> Login

    def route(self, line):
        """A typed line -> Step, EXIT, or None (blank)."""
        if line.strip() == "exit":
            return EXIT
        words = line.split()
        if not words:
            return None
        name = words[0]
        command = COMMANDS.get(name)
        if name in ("register", "login") or len(words) == 1:
            return Step(name, " ".join(words), LOGIN_SERVER, words[1] if len(words) > 1 else None)
        user = words[1]
        login = self.logins.get(user)
        if login is None:
            # No token: drop the user; the login server answers Not login yet.
            return Step(name, " ".join([name] + words[2:]), LOGIN_SERVER, user)
        wire = " ".join([name, login.token] + words[2:])
        on_app = command is not None and command.server is Server.APP
        return Step(name, wire, user if on_app else LOGIN_SERVER, user, with_token=True)

    def app_of(self, user):
        login = self.logins.get(user)
        return login.app if login else None

    def on_reply(self, step, reply):
        """-> (lines to print, destinations to subscribe, destinations to drop),
        destinations as (user, destination) pairs."""
        lines = protocol.render(reply)
        add, drop = [], []
        ok = reply.get("status") == 0
        login = self.logins.get(step.user) if step.user else None
        if step.name == "login" and ok and "token" in reply:
            old = self.logins.get(step.user)
            new = Login(reply["token"], _address(reply.get("app_server")), reply.get("queue"),
                        dict(reply.get("topics") or {}))
            if old:
                drop += [(step.user, d) for d in old.destinations()]
            self.logins[step.user] = new
            add += [(step.user, d) for d in new.destinations()]
        elif step.name in ("logout", "delete") and ok and login:
            del self.logins[step.user]
            drop += [(step.user, d) for d in login.destinations()]
        elif step.name == "locate" and ok and login:
            login.app = _address(reply.get("app_server"))
        elif step.with_token and login and reply.get("message") == protocol.NOT_LOGIN:
            # The server no longer knows this token (deleted elsewhere): forget it.
            del self.logins[step.user]
            drop += [(step.user, d) for d in login.destinations()]
        if ok and login and step.user in self.logins and reply.get("topics"):
            for group, dest in reply["topics"].items():
                if login.topics.get(group) != dest:
                    login.topics[group] = dest
                    add.append((step.user, dest))
        return lines, add, drop


def _address(text):
    return parse_address(text) if text else None


class TcpClient:
    """The driver: one request at a time, in input order; chat lines are
    printed as they arrive."""

    REPLY_TIMEOUT = 30.0
    DRAIN = 0.5                   # seconds a logged-out user's subscriptions stay
    LAUNCH_TIMEOUT = 300.0        # login/locate may wait for an app server to boot
    RELOCATE_DELAY, RELOCATE_TRIES = 0.25, 40   # locate naming the dead server again: retry for 10 s

    def __init__(self, host, port, out=sys.stdout, linger=0.5, stdin_fd=0):
        self.reactor = Reactor(workers=1)
        self.login_address = (host, port)
        self.core = ClientCore()
        self.out = out
        self.linger = linger
        self.stdin_fd = stdin_fd
        self.lines = []
        self.eof = False
        self.conns = {}           # (host, port) -> LineConnection
        self.step = None          # the request in flight
        self._retried = False
        self._dead, self._relocations = None, 0   # the app server that just failed us
        self._timer = None
        self.broker = None
        self.subs = {}            # destination -> set of local users subscribed
        self._stopping = False
        self._dropping = set()    # (user, destination) pairs being drained
        self._unconfirmed = 0     # subscriptions the broker has not confirmed yet
        self._sub_timer = None
        self.exit_code = 0

    # -- output ------------------------------------------------------------------------
    def emit(self, lines):
        if lines:
            self.out.write("".join(line + "\n" for line in lines))
            self.out.flush()

    # -- input -------------------------------------------------------------------------
    def run(self):
        LineReader(self.reactor, self.stdin_fd, self._typed, self._end_of_input)
        self.reactor.run()
        for conn in list(self.conns.values()):
            conn.close()
        if self.broker:
            self.broker.close()
        return self.exit_code

    def _typed(self, line):
        if not self.eof:          # nothing after `exit` counts
            self.lines.append(line)
            self._next()

    def _end_of_input(self):
        self.eof = True
        self._next()

    # -- requests ----------------------------------------------------------------------
    def _next(self):
        while self.step is None:
            if not self.lines:
                if self.eof:
                    self._finish()
                return
            step = self.core.route(self.lines.pop(0))
            if step is EXIT:
                self.lines.clear()
                self.eof = True
                self._finish()
                return
            if step is not None:
                self._retried = False
                self._dead, self._relocations = None, 0
                self._send(step)

    def _send(self, step):
        self.step = step
        if step.target == LOGIN_SERVER:
            address = self.login_address
        else:
            address = self.core.app_of(step.target)
            if address is None:
                self._relocate()
                return
        conn = self._connect(address)
        if conn is None:
            self._failed(address)
            return
        conn.send((step.wire + "\n").encode("utf-8"))
        timeout = self.LAUNCH_TIMEOUT if step.name in ("login", "locate") else self.REPLY_TIMEOUT
        self._timer = self.reactor.call_later(timeout, self._timed_out, conn)

    def _connect(self, address):
        conn = self.conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        try:
            sock = socket.create_connection(address, timeout=5.0)
        except OSError as e:
            log.debug("connect %s: %s", address, e)
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = LineConnection(self.reactor, sock, self._on_reply, on_close=self._on_closed,
                              max_line=applink.MAX_LINE, quiet=None)
        conn.address = address
        self.conns[address] = conn
        return conn

    def _on_reply(self, conn, raw):
        step = self.step
        if step is None:
            return   # nothing asked: ignore
        if self._timer:
            self._timer.cancel()
        try:
            reply = json.loads(raw.decode("utf-8"))
        except ValueError:
            reply = protocol.fail("Error: unreadable reply from server")
        self.step = None
        if getattr(step, "retry", None):       # a locate made on behalf of `step.retry`
            self._located(step, reply)
            return
        lines, add, drop = self.core.on_reply(step, reply)
        self.emit(lines)
        self._resubscribe(add, drop, reply.get("broker"))
        self._next_when_subscribed()

    def _on_closed(self, conn):
        if self.conns.get(conn.address) is conn:
            del self.conns[conn.address]
        step = self.step
        if step is not None and self._address_of(step) == conn.address:
            if self._timer:
                self._timer.cancel()
            self._failed(conn.address)

    def _address_of(self, step):
        if step.target == LOGIN_SERVER:
            return self.login_address
        return self.core.app_of(step.target)

    def _failed(self, address):
        """The request got no reply: the server is gone or closed on us."""
        step, self.step = self.step, None
        if step.target != LOGIN_SERVER and not self._retried:
            self._retried = True
            self._dead = address
            self.step = step
            self._relocate()
            return
        if step.target == LOGIN_SERVER and not self._retried and getattr(step, "retry", None) is None:
            self._retried = True       # perhaps an idle connection it had closed: once more
            self._send(step)
            return
        if getattr(step, "retry", None):
            step = step.retry
        self.emit([f"Error: cannot reach the server at {format_address(*address)}"])
        self._next()

    def _relocate(self):
        """Ask the login server for the user's (new) application server."""
        original = self.step
        self.step = None
        login = self.core.logins.get(original.target)
        if login is None:
            self.emit([protocol.NOT_LOGIN])
            self._next()
            return
        locate = Step("locate", f"locate {login.token}", LOGIN_SERVER, original.target, with_token=True)
        locate.retry = original
        self._send(locate)

    def _located(self, locate, reply):
        original = locate.retry
        lines, add, drop = self.core.on_reply(locate, reply)
        if reply.get("status") == 0 and self.core.app_of(original.target):
            if self.core.app_of(original.target) == self._dead and self._relocations < self.RELOCATE_TRIES:
                # The login server has not noticed the death yet (it learns
                # of it within ms, or by the heartbeat timeout): ask again.
                self._relocations += 1
                self.step = original
                self.reactor.call_later(self.RELOCATE_DELAY, self._relocate)
                return
            self._send(original)          # silently, on the new server
            return
        self.emit(lines)                  # e.g. Not login yet: the user must log in again
        self._resubscribe(add, drop, None)
        self._next_when_subscribed()

    def _timed_out(self, conn):
        self.emit(["Error: no reply from server"])
        conn.close()

    # -- broker ------------------------------------------------------------------------
    def _resubscribe(self, add, drop, broker_address):
        """Messages sent while a user was online may still be in flight when
        the logout reply arrives (broker dispatch is slower than our request
        loop): drops take effect after DRAIN seconds, unless re-added."""
        for pair in add:
            self._dropping.discard(pair)
        if drop:
            self._dropping.update(drop)
            self.reactor.call_later(self.DRAIN, self._drop, drop)
        if not add:
            return
        if self.broker is None:
            self._start_broker(broker_address)
        for user, dest in add:
            users = self.subs.setdefault(dest, set())
            if not users and self.broker:
                self._unconfirmed += 1
                self.broker.subscribe(dest, done=self._subscribed)
            users.add(user)

    def _drop(self, drop):
        for pair in drop:
            if pair not in self._dropping:
                continue      # logged in again meanwhile
            self._dropping.discard(pair)
            user, dest = pair
            users = self.subs.get(dest)
            if users is not None:
                users.discard(user)
                if not users:
                    del self.subs[dest]
                    if self.broker:
                        self.broker.unsubscribe(dest)

    def _subscribed(self, ok, error):
        self._unconfirmed = max(0, self._unconfirmed - 1)
        if not ok:
            log.warning("subscription failed: %s", error)
        if self._unconfirmed == 0 and self._sub_timer:
            self._sub_timer.cancel()
            self._sub_timer = None
            self._next()

    def _next_when_subscribed(self):
        """Topics are not durable: the next command (say, a send-group) waits
        until the broker has confirmed our new subscriptions, or 2 s."""
        if self._unconfirmed == 0:
            self._next()
            return

        def give_up():
            self._sub_timer = None
            self._unconfirmed = 0
            log.warning("broker did not confirm subscriptions; going on")
            self._next()

        self._sub_timer = self.reactor.call_later(2.0, give_up)

    def _start_broker(self, address):
        try:
            from lib.messaging import broker
        except ImportError:
            return
        host, port = broker.parse_address(address or "127.0.0.1:61613")
        self.broker = broker.BrokerLink(self.reactor, host, port, on_message=self._chat, name="client")
        self.broker.start()

    def _chat(self, destination, body, headers):
        try:
            line = protocol.render_chat(body)
            recipients = set(protocol.chat_recipients(body))
        except (ValueError, KeyError, TypeError):
            return
        # once per recipient (online when it was sent) subscribed on this client
        local = self.subs.get(destination, ())
        self.emit([line] * sum(1 for user in local if user in recipients))

    def _finish(self):
        if not self.subs or self.linger <= 0:
            self.reactor.stop()
        elif not self._stopping:
            # let in-flight chat messages (and drains) arrive before we go
            self._stopping = True
            self.reactor.call_later(self.linger, self.reactor.stop)


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
