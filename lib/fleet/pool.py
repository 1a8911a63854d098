"""The application-server pool: assignment, scale-out, scale-in, health.

Policy (README "Fleet"): at most `capacity` users per app server; a
login goes to the fullest server with room (so others drain); when all are
full a new one is launched and the login waits for it (reserved slot, never
blocking the reactor); `max_servers` caps the fleet; `spare` servers are kept
empty and warm; a server with no users for `idle_timeout` seconds is
terminated; a server that dies or stops heart-beating is dropped and its
users are reassigned at once.

The fleet never starts processes itself: a launcher (lib/fleet/launchers/) does,
through `launch(server_id, secret)` / `terminate(server_id)`, and reports a
death with `fleet.lost(server_id, reason)`. App servers prove who they are
with the one-time secret issued at launch (`register`).

The fleet does no I/O and keeps no timers: `tick()` is called periodically
and every time comes from `clock`, the reactor's unless given, so a test
drives it with a fake launcher and a fake clock and no reactor at all.
"""
import enum
import logging
import secrets
import time
from dataclasses import dataclass, field

log = logging.getLogger("fleet")


class AppState(enum.Enum):
    LAUNCHING = "launching"   # started, has not registered yet
    READY = "ready"           # registered; serving
    GONE = "gone"             # terminated or dead


@dataclass(eq=False)
class AppServer:
    id: str
    secret: str
    state: AppState = AppState.LAUNCHING
    address: tuple = None                 # (host, port) clients connect to
    users: set = field(default_factory=set)
    waiting: list = field(default_factory=list)   # [(user, callback)] for a LAUNCHING server
    launched_at: float = 0.0
    idle_since: float = 0.0
    last_seen: float = 0.0
    link: object = None                   # the internal connection, set by the login service

    @property
    def load(self):
        return len(self.users) + len(self.waiting)


RELEASED_WHILE_WAITING = "Logged out while waiting for an application server; log in again"


class FleetFull(Exception):
    pass


class Fleet:
    def __init__(self, reactor, launcher, capacity=10, max_servers=None, idle_timeout=30.0,
                 spare=0, launch_deadline=60.0, heartbeat_timeout=5.0, clock=None):
        """`reactor` only lends its clock (None: pass `clock`, or time.monotonic)."""
        self.launcher = launcher
        self.capacity, self.max_servers = capacity, max_servers
        self.idle_timeout, self.spare = idle_timeout, spare
        self.launch_deadline, self.heartbeat_timeout = launch_deadline, heartbeat_timeout
        self.clock = clock or getattr(reactor, "clock", None) or time.monotonic
        self.servers = {}          # id -> AppServer (LAUNCHING or READY)
        self.by_secret = {}        # one-time secret -> AppServer
        self.user_server = {}      # user -> AppServer
        self._counter = 0
        self._closing = False
        self.launches = 0

    # -- assignment ------------------------------------------------------------
    def assign(self, user, callback):
        """`callback(server, None)` once `user` has a READY server, or
        `callback(None, message)` when the fleet cannot take it."""
        server = self.user_server.get(user)
        if server is not None:
            self._deliver(server, user, callback)
            return
        candidates = [s for s in self.servers.values() if s.load < self.capacity]
        if candidates:
            # fullest first; among equals prefer READY, then the oldest
            server = max(candidates, key=lambda s: (s.load, s.state is AppState.READY, -s.launched_at))
        else:
            try:
                server = self._launch()
            except FleetFull as e:
                callback(None, str(e))
                return
        self.user_server[user] = server
        self._deliver(server, user, callback)
        self._keep_spares()

    def _deliver(self, server, user, callback):
        if server.state is AppState.READY:
            server.users.add(user)
            callback(server, None)
        else:
            server.waiting.append((user, callback))

    def adopt(self, user, server):
        """A session that outlived the login server's restart is used on
        `server` before any login or locate: does the user stay there? Yes
        if it is assigned there already, or is nowhere and `server` has room."""
        current = self.user_server.get(user)
        if current is not None:
            return current is server
        if server.state is not AppState.READY or server.load >= self.capacity:
            return False
        self.user_server[user] = server
        server.users.add(user)
        return True

    def release(self, user):
        """The user logged out or was deleted."""
        server = self.user_server.pop(user, None)
        if server is None:
            return
        server.users.discard(user)
        waiting = [cb for u, cb in server.waiting if u == user]
        server.waiting = [(u, cb) for u, cb in server.waiting if u != user]
        if server.load == 0:
            server.idle_since = self.clock()
        # A login (or locate) of this user still waiting for a launch, when a
        # logout or delete from another connection frees the slot, must not
        # be left unanswered (the client would wait minutes): it is told why.
        for callback in waiting:
            callback(None, RELEASED_WHILE_WAITING)

    # -- lifecycle -------------------------------------------------------------
    def _launch(self):
        if self._closing:
            raise FleetFull("The login server is shutting down")
        if self.max_servers is not None and len(self.servers) >= self.max_servers:
            raise FleetFull(f"No application server available: all {self.max_servers} are full, try again later")
        self._counter += 1
        server = AppServer(id=f"app-{self._counter}", secret=secrets.token_urlsafe(32))
        server.launched_at = server.idle_since = server.last_seen = self.clock()
        self.servers[server.id] = server
        self.by_secret[server.secret] = server
        self.launches += 1
        log.info("launching %s (%d servers)", server.id, len(self.servers))
        try:
            self.launcher.launch(server.id, server.secret)
        except Exception as e:
            log.exception("launch of %s failed", server.id)
            self._drop(server)
            raise FleetFull(f"No application server available: launch failed ({e})")
        return server

    def register(self, secret, address, link=None):
        """An app server presents its one-time secret; None if unknown or used."""
        server = self.by_secret.pop(secret, None)
        if server is None or server.state is not AppState.LAUNCHING:
            return None
        server.state = AppState.READY
        server.address = address
        server.link = link
        server.last_seen = server.idle_since = self.clock()
        log.info("%s ready at %s:%s after %.2f s", server.id, address[0], address[1],
                 self.clock() - server.launched_at)
        waiting, server.waiting = server.waiting, []
        for user, callback in waiting:
            if self.user_server.get(user) is server:
                server.users.add(user)
                callback(server, None)
        return server

    def heartbeat(self, server):
        server.last_seen = self.clock()

    def lost(self, server_id, reason):
        """A server died, stopped heart-beating or never came up: drop it and
        reassign its users (and anyone waiting for it) elsewhere."""
        server = self.servers.get(server_id)
        if server is None:
            return
        log.warning("%s lost: %s", server_id, reason)
        self._drop(server)
        if self._closing:
            for user, callback in server.waiting:
                callback(None, "The login server is shutting down")
            return
        for user in list(server.users):
            if self.user_server.get(user) is server:
                del self.user_server[user]
                self.assign(user, _ignore)
        for user, callback in server.waiting:
            if self.user_server.get(user) is server:
                del self.user_server[user]
                self.assign(user, callback)

    def _drop(self, server):
        server.state = AppState.GONE
        self.servers.pop(server.id, None)
        self.by_secret.pop(server.secret, None)
        if server.link is not None:
            server.link.close()
            server.link = None

    def terminate(self, server, reason):
        log.info("terminating %s: %s", server.id, reason)
        self._drop(server)
        for user in list(server.users):
            self.user_server.pop(user, None)
        try:
            self.launcher.terminate(server.id)
        except Exception:
            log.exception("terminate of %s failed", server.id)

    def tick(self):
        """Periodic duties: health, launch deadlines, idle scale-in, spares."""
        now = self.clock()
        for server in list(self.servers.values()):
            if server.state is AppState.LAUNCHING and now - server.launched_at > self.launch_deadline:
                self.lost(server.id, f"did not register within {self.launch_deadline:.0f} s")
                self.launcher.terminate(server.id)
            elif server.state is AppState.READY and now - server.last_seen > self.heartbeat_timeout:
                self.lost(server.id, f"no heartbeat for {self.heartbeat_timeout:.0f} s")
                self.launcher.terminate(server.id)
        empty = [s for s in self.servers.values() if s.state is AppState.READY and s.load == 0]
        empty.sort(key=lambda s: s.idle_since)
        keep = self.spare
        for server in empty:
            if now - server.idle_since >= self.idle_timeout and self._empty_count() > keep:
                self.terminate(server, f"idle for {self.idle_timeout:g} s")
        self._keep_spares()

    def _empty_count(self):
        return sum(1 for s in self.servers.values() if s.load == 0)

    def _keep_spares(self):
        while not self._closing and self._empty_count() < self.spare:
            try:
                self._launch()
            except FleetFull:
                return

    def shutdown(self):
        """Terminate every server (login server stopping)."""
        self._closing = True
        for server in list(self.servers.values()):
            self.terminate(server, "login server stopping")


def _ignore(*_):
    pass
