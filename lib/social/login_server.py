"""The login server's I/O driver: carries out a `LoginCore`'s actions with
sockets, the reactor's worker pool and timers, and the fleet, and feeds what
comes back as events. All decisions are in lib/social/login_core.py.

Clients are read one request at a time (paused until their `Reply`), so
replies keep their order and a slow request applies backpressure. Replies
leave only after the turn's group commit (lib/loop/reactor.py), so an
acknowledged write is always on disk.
"""
import collections
import logging

from lib.accounts import passwords
from lib.loop.address import format_address
from lib.loop.timers import TimerTable
from lib.loop.listener import BurstLog
from lib.loop.transports import LineConnection, Listener
from lib.social import applink, commands, protocol
from lib.social.fairness import FairScheduler
from lib.social.limits import Limits
from lib.social import login_core as core
from lib.social.request_server import RequestServer

log = logging.getLogger("login")

TICK = 1.0      # seconds between the core's Tick events (idle sessions)


class LoginServer:
    def __init__(self, reactor, store, fleet=None, ctx=None, conn_idle=300.0, limits=None):
        """`fleet` may be set later (it needs the internal address to launch)."""
        self.reactor, self.fleet, self.conn_idle = reactor, fleet, conn_idle
        self.limits = limits or Limits()
        # Verified when the user does not exist, so a wrong id costs the same
        # time as a wrong password (no user enumeration by timing).
        dummy = passwords.hash_password("np-social-dummy-password")
        self.core = core.LoginCore(store, dummy, ctx=ctx or commands.Context(self.limits))
        self.timers = TimerTable(reactor, lambda link: self._feed(core.HelloTimedOut(link)))
        # Password checks wait here, fairly, so that no more are on the worker
        # pool than it has threads (a flood cannot queue ahead of others there).
        self.checks = FairScheduler(reactor.pool_size(), self.limits.hash_queue,
                                    self.limits.hash_per_address)
        self._ticker = None
        self.links = set()
        self._events = collections.deque()
        self._feeding = False

    def listen(self, host, port, internal_host, internal_port):
        self.front = RequestServer(self.reactor, host, port, self._client_request, self.conn_idle,
                                   limits=self.limits)
        self.internal_listener = Listener(self.reactor, internal_host, internal_port, self._accept_link)
        self.pending_links = set()   # links whose hello is not accepted yet
        self.link_refusals = BurstLog(self.reactor, "internal port: over --max-pending-links; "
                                      "closing new links at once", "internal port: %d links closed "
                                      "for --max-pending-links")
        self._tick()
        return self.front.address, self.internal_listener.address

    def _tick(self):
        """The core's clock for idle sessions (it has none of its own)."""
        self._feed(core.Tick(self.reactor.clock()))
        self._ticker = self.reactor.call_later(TICK, self._tick)

    def close(self):
        if self._ticker is not None:
            self._ticker.cancel()
        for conn in list(self.links):
            conn.close()
        self.front.close()
        self.internal_listener.close()

    # -- bytes in -> events ---------------------------------------------------------
    def _client_request(self, conn, request):
        conn.pause()   # until its Reply: one request at a time
        peer = conn.peer[0] if conn.peer else None   # the key of per-address limits
        self._feed(core.ClientRequest(conn, request, peer, self.reactor.clock()))

    def _accept_link(self, sock, addr):
        if len(self.pending_links) >= self.limits.max_pending_links:
            self.link_refusals.hit()
            sock.close()
            return
        # Strangers get hello_line_max bytes a line until their hello is
        # accepted (_register); no output cap: replies to an app server may
        # be large, and one that stops reading loses its heartbeat instead.
        conn = LineConnection(self.reactor, sock, self._link_line, on_close=self._link_closed,
                              on_overflow=LineConnection.close, max_line=self.limits.hello_line_max,
                              quiet=None, peer=addr, max_output=None)
        self.links.add(conn)
        self.pending_links.add(conn)
        self._feed(core.LinkOpened(conn, addr))

    def _link_line(self, conn, raw):
        # (a line nested deeper than --link-json-depth closes the link: the core's decode)
        if self._feeding:   # not from the reactor: in turn, as any event
            self._feed(core.LinkLine(conn, raw))
            return
        # The hot path: LinkLine made by no one, and no queue unless an action
        # causes an event (then it waits, as in _feed).
        self._feeding = True
        try:
            try:
                for action in self.core.link_line(conn, raw):
                    _DO[type(action)](self, action)
            except Exception:
                log.exception("handling LinkLine failed")
            if self._events:
                self._drain()
        finally:
            self._feeding = False

    def _link_closed(self, conn):
        self.links.discard(conn)
        self.pending_links.discard(conn)
        self._feed(core.LinkClosed(conn))

    def _feed(self, event):
        """Handle `event` and run its actions. An event that an action causes
        (the fleet answering at once, a close) waits until the current
        actions are done, so the core sees events one at a time, in order."""
        self._events.append(event)
        if self._feeding:
            return
        self._feeding = True
        try:
            self._drain()
        finally:
            self._feeding = False

    def _drain(self):
        while self._events:
            event = self._events.popleft()
            try:
                for action in self.core.handle(event):
                    _DO[type(action)](self, action)
            except Exception:
                # As the reactor's guard: one bad event must not stop the rest.
                log.exception("handling %s failed", type(event).__name__)

    # -- actions ---------------------------------------------------------------------
    def _reply(self, a):
        a.conn.send(protocol.encode(a.reply))   # request_server.answer, inline: every request
        a.conn.resume()

    def _hash(self, a):
        event = lambda stored, error: core.Hashed(a.conn, stored, error)
        self._check(a.conn, event, passwords.hash_password, a.password)

    def _verify(self, a):
        event = lambda matched, error: core.Verified(a.conn, bool(matched), error)
        self._check(a.conn, event, passwords.verify, a.stored, a.password)

    def _check(self, conn, event, fn, *args):
        """A password check through the fair scheduler; `event(result, error)` when done."""
        started, refused = self.checks.submit(_source(conn), (conn, event, fn, args))
        for job in refused:
            self._feed(core.CheckRefused(job[0]))
        self._run_checks(started)

    def _run_checks(self, started):
        for key, (conn, event, fn, args) in started:
            def done(result, error, key=key, event=event):
                self._run_checks(self.checks.finished(key))
                self._feed(event(result, error))
            self.reactor.run_in_thread(fn, *args, done=done)

    def _assign(self, a):
        def assigned(server, error):
            address = _client_address(a.conn, server.address) if server else None
            self._feed(core.Assigned(a.conn, address, error, server))
        self.fleet.assign(a.user, assigned)

    def _release(self, a):
        self.fleet.release(a.user)

    def _adopt(self, a):
        self._feed(core.Adopted(a.link, a.user, self.fleet.adopt(a.user, a.server), a.msg))

    def _register(self, a):
        mark = len(self._events)
        server = self.fleet.register(a.secret, a.address, link=a.link)
        if server is not None:   # the hello is accepted: full-size lines from now on
            self.pending_links.discard(a.link)
            a.link.max_line = applink.MAX_LINE
        registered = core.FleetRegistered(a.link, server)
        if self._feeding:
            # register() has just answered the logins that waited for this
            # server (their Assigned events are queued behind us): the core
            # hears first that the server is registered, so it knows the link
            # to attach those users on before their logins are answered.
            self._events.insert(mark, registered)
        else:
            self._feed(registered)

    def _heartbeat(self, a):
        self.fleet.heartbeat(a.server)

    def _lost(self, a):
        self.fleet.lost(a.server.id, a.reason)

    def _send_link(self, a):
        a.link.send(applink.encode(**a.msg))

    def _close_link(self, a):
        if a.flush:
            a.link.close_after_flush()
        else:
            a.link.close()

    def _start_timer(self, a):
        self.timers.set(a.link, a.delay)

    def _stop_timer(self, a):
        self.timers.cancel(a.link)


def _source(conn):
    """The client's source address (host): the key of per-address limits."""
    return conn.peer[0] if conn.peer else None


def _client_address(conn, address):
    host, port = address
    if host in ("", "0.0.0.0", "::"):
        # The app server listens on every interface of this machine: send
        # the client to the address it already used to reach us.
        try:
            host = conn.sock.getsockname()[0]
        except OSError:
            host = "127.0.0.1"
    return format_address(host, port)


_DO = {
    core.Reply: LoginServer._reply, core.Hash: LoginServer._hash, core.Verify: LoginServer._verify,
    core.FleetAssign: LoginServer._assign, core.FleetRelease: LoginServer._release,
    core.FleetAdopt: LoginServer._adopt,
    core.FleetRegister: LoginServer._register, core.FleetHeartbeat: LoginServer._heartbeat,
    core.FleetLost: LoginServer._lost, core.SendLink: LoginServer._send_link,
    core.CloseLink: LoginServer._close_link, core.StartHelloTimer: LoginServer._start_timer,
    core.StopHelloTimer: LoginServer._stop_timer,
}
