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
from lib.loop.transports import LineConnection, Listener
from lib.social import applink, commands
from lib.social.limits import Limits
from lib.social import login_core as core
from lib.social.request_server import RequestServer, answer

log = logging.getLogger("login")


class LoginServer:
    def __init__(self, reactor, store, fleet=None, broker="127.0.0.1:61613", ctx=None,
                 conn_idle=300.0, limits=None):
        """`fleet` may be set later (it needs the internal address to launch)."""
        self.reactor, self.fleet, self.conn_idle = reactor, fleet, conn_idle
        self.limits = limits or Limits()
        # Verified when the user does not exist, so a wrong id costs the same
        # time as a wrong password (no user enumeration by timing).
        dummy = passwords.hash_password("np-social-dummy-password")
        self.core = core.LoginCore(store, dummy, broker=broker,
                                   ctx=ctx or commands.Context(self.limits))
        self.timers = TimerTable(reactor, lambda link: self._feed(core.HelloTimedOut(link)))
        self.links = set()
        self._events = collections.deque()
        self._feeding = False

    def listen(self, host, port, internal_host, internal_port):
        self.front = RequestServer(self.reactor, host, port, self._client_request, self.conn_idle)
        self.internal_listener = Listener(self.reactor, internal_host, internal_port, self._accept_link)
        return self.front.address, self.internal_listener.address

    def close(self):
        for conn in list(self.links):
            conn.close()
        self.front.close()
        self.internal_listener.close()

    # -- bytes in -> events ---------------------------------------------------------
    def _client_request(self, conn, request):
        conn.pause()   # until its Reply: one request at a time
        self._feed(core.ClientRequest(conn, request))

    def _accept_link(self, sock, addr):
        conn = LineConnection(self.reactor, sock, self._link_line, on_close=self._link_closed,
                              max_line=applink.MAX_LINE, quiet=None, peer=addr)
        self.links.add(conn)
        self._feed(core.LinkOpened(conn, addr))

    def _link_line(self, conn, raw):
        self._feed(core.LinkLine(conn, raw))

    def _link_closed(self, conn):
        self.links.discard(conn)
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
            while self._events:
                event = self._events.popleft()
                try:
                    for action in self.core.handle(event):
                        _DO[type(action)](self, action)
                except Exception:
                    # As the reactor's guard: one bad event must not stop the rest.
                    log.exception("handling %s failed", type(event).__name__)
        finally:
            self._feeding = False

    # -- actions ---------------------------------------------------------------------
    def _reply(self, a):
        answer(a.conn, a.reply)

    def _hash(self, a):
        done = lambda stored, error: self._feed(core.Hashed(a.conn, stored, error))
        self.reactor.run_in_thread(passwords.hash_password, a.password, done=done)

    def _verify(self, a):
        done = lambda matched, error: self._feed(core.Verified(a.conn, bool(matched), error))
        self.reactor.run_in_thread(passwords.verify, a.stored, a.password, done=done)

    def _assign(self, a):
        def assigned(server, error):
            address = _client_address(a.conn, server.address) if server else None
            self._feed(core.Assigned(a.conn, address, error))
        self.fleet.assign(a.user, assigned)

    def _release(self, a):
        self.fleet.release(a.user)

    def _register(self, a):
        server = self.fleet.register(a.secret, a.address, link=a.link)
        self._feed(core.FleetRegistered(a.link, server))

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
    core.FleetRegister: LoginServer._register, core.FleetHeartbeat: LoginServer._heartbeat,
    core.FleetLost: LoginServer._lost, core.SendLink: LoginServer._send_link,
    core.CloseLink: LoginServer._close_link, core.StartHelloTimer: LoginServer._start_timer,
    core.StopHelloTimer: LoginServer._stop_timer,
}
