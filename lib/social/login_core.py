"""The login server's logic without I/O, like h11 and lib/hub/session.py.

`LoginCore.handle(event)` -> the actions the driver (lib/social/login_server.py)
carries out. No socket, thread, reactor or clock here; `conn` and `link` are
the driver's opaque handles. The core owns register's names being hashed,
login's cache of verified passwords (keyed digests), the tokens this process
issued (only digests are stored), and the hello and relay of app-server links.

- Store: the core calls `store.record(mutations)`: that applies and buffers;
  the disk write is the reactor's before-sleep commit, and a reply is an
  action the driver queues for the output phase after it. So the barrier
  holds, and a handler reads the state it just changed.
- Fleet: calls are actions (`FleetAssign`, ...) and answers events
  (`Assigned`, `FleetRegistered`): the fleet launches processes and answers
  when it likes (launch, death, tick), and tests need no fleet.
- Limits (limits.py; policies in fairness.py): sign-ups and logins per
  source address (`ClientRequest.peer`); a token works only on the app server
  its user was last `Assigned` to (the fleet may move users silently: the
  client's `locate` tells us; after a restart, `FleetAdopt`); sessions idle
  for `session_idle` s end on a `Tick`. Time comes only with events (a relayed
  request counts at the latest time known, at most a tick old).

Each client connection and link has a state; `_TABLE` lists the legal
(event, state) pairs, any other raises IllegalEvent.
"""
import enum
import hashlib
import hmac
import itertools
import logging
import os
from dataclasses import dataclass

from lib.social import applink, commands, protocol
from lib.social.commands import Assign, Join, Publish, Release
from lib.social.fairness import IdleSessions, TokenBuckets
from lib.social.protocol import Server, fail
from lib.social.login_events import (  # noqa: F401  (re-exported for the driver and tests)
    IllegalEvent, ClientEvent, ClientRequest, Hashed, Verified, Assigned, CheckRefused, Tick, LinkEvent, LinkOpened, LinkLine, FleetRegistered, Adopted, HelloTimedOut, LinkClosed, Reply, Hash, Verify, FleetAssign, FleetAdopt, FleetRelease, FleetRegister, FleetHeartbeat, FleetLost, SendLink, CloseLink, StartHelloTimer, StopHelloTimer, TOO_MANY, WRONG_SERVER)

log = logging.getLogger("login")

HELLO_TIMEOUT = 5.0     # seconds an unauthenticated link gets to say hello
NO_USER = "No such user or password error"


# -- states ------------------------------------------------------------------------
class Phase(enum.Enum):
    """Of a client connection; the driver reads one request at a time."""
    __hash__ = object.__hash__   # members are singletons; Enum's own hash is Python code, hot in tables
    IDLE = "idle"
    HASHING = "hashing"         # register: waiting for Hashed
    VERIFYING = "verifying"     # login: waiting for Verified
    ASSIGNING = "assigning"     # login, locate: waiting for Assigned
    ATTACHING = "attaching"     # login, locate: waiting for the app server's `attached`


class LinkState(enum.Enum):
    __hash__ = object.__hash__   # members are singletons; Enum's own hash is Python code, hot in tables
    UNKNOWN = "unknown"         # not opened, or closed
    HELLO = "hello"             # opened; must say hello within HELLO_TIMEOUT
    CHECKING = "checking"       # hello sent to the fleet
    READY = "ready"             # welcomed: relays commands
    CLOSING = "closing"         # CloseLink sent; lines are ignored


@dataclass
class _Waiting:
    phase: Phase
    name: str
    password: str = None
    stored: str = None          # None: no such user (the dummy is verified)
    reply: dict = None          # locate's reply; None: login's, made once assigned


@dataclass
class _Link:
    state: LinkState
    peer: object = None
    server: object = None


class LoginCore:
    def __init__(self, store, dummy, ctx=None, key=None):
        """`store`: `.state` and `.record(mutations)` (lib/social/store.py);
        `dummy`: a hashed record, verified when the user does not exist so a
        wrong id costs the same time as a wrong password."""
        self.store, self.dummy = store, dummy
        self.ctx = ctx or commands.Context()
        limits = self.ctx.limits
        self.attempts = {"register": TokenBuckets(limits.signups_per_minute),
                         "login": TokenBuckets(limits.logins_per_minute)}   # per source address
        self.idle = IdleSessions(limits.session_idle)
        self.assigned = {}          # user -> the fleet's handle of its app server (memory only)
        self.now, self.started = 0.0, False   # the latest time an event brought; any yet?
        self.tokens = {}            # user -> token issued by this process (memory only)
        self.verified = {}          # user -> (stored, keyed digest of the verified password)
        self.registering = set()    # names being hashed right now
        self.waiting = {}           # conn -> _Waiting
        self.links = {}             # link -> _Link
        self.link_of = {}           # the fleet's server handle -> its link (READY links)
        self.attaching = {}         # attach id -> (conn, link): a reply waits for `attached`
        self._attach_ids = itertools.count(1)
        self._key = key or os.urandom(32)

    def handle(self, event):
        """One event -> the list of actions it calls for."""
        if isinstance(event, ClientEvent):
            waiting = self.waiting.get(event.conn)
            state = waiting.phase if waiting else Phase.IDLE
        elif isinstance(event, LinkEvent):
            link = self.links.get(event.link)
            state = link.state if link else LinkState.UNKNOWN
        else:
            state = None            # the server's own events (Tick)
        handler = _TABLE.get((type(event), state))
        if handler is None:
            raise IllegalEvent(f"{type(event).__name__} in state {getattr(state, 'name', state)}")
        return handler(self, event)

    # -- time and sessions ---------------------------------------------------------------
    def _clock(self, now):
        if now is None:
            return
        if not self.started:    # sessions restored from the store count from our start
            self.started = True
            for name, user in self.store.state.users.items():
                if user.session:
                    self.idle.touch(name, now)
        self.now = max(self.now, now)

    def _active(self, words):
        """The user of a token request, whose session it keeps alive (None: no session)."""
        me = self.store.state.user_for_token(words[0]) if words else None
        if me is not None:
            self.idle.touch(me, self.now)
        return me

    def _tick(self, ev):
        self._clock(ev.now)
        actions = []
        for name in self.idle.expired(self.now):
            user = self.store.state.users.get(name)
            if user is None or user.session is None:
                continue
            log.info("session of %s expired after %g s without a request", name, self.idle.limit)
            self.store.record([("logout", name)])
            actions += self._end_session(name)
        return actions

    def _end_session(self, user):
        self.tokens.pop(user, None)
        server = self.assigned.pop(user, None)
        self.idle.forget(user)
        # Its app server stops subscribing for it and drops what it holds.
        return [FleetRelease(user)] + self._detach(user, server, drop=True)

    def _detach(self, user, server, drop):
        link = self.link_of.get(server) if server is not None else None
        if link is None:
            return []
        return [SendLink(link, {"op": "detach", "user": user, "drop": drop})]

    def _attach(self, user, server):
        """-> (attach id, the SendLink asking `server` to subscribe for
        `user`), or None (not logged in, or no link to that server)."""
        link = self.link_of.get(server)
        subs = commands.subscriptions(self.store.state, user)
        if link is None or subs is None:
            return None
        rid = next(self._attach_ids)
        queue, topics = subs
        return rid, SendLink(link, {"op": "attach", "id": rid, "user": user,
                                    "queue": queue, "topics": topics})

    # -- client requests -------------------------------------------------------------
    def _request(self, ev):
        if self.started and ev.now is not None:   # _clock's common case, inline: every request
            if ev.now > self.now:
                self.now = ev.now
        else:
            self._clock(ev.now)
        special = _TWO_PHASE.get(ev.request.name)
        if special:
            return special(self, ev.conn, ev.request.words, ev.peer)
        me = self._active(ev.request.words) if ev.request.command is not None else None
        outcome = commands.handle(self.store.state, ev.request, self.ctx, Server.LOGIN, me=me)
        return self._complete(ev.conn, outcome)

    def _too_many(self, kind, peer):
        """Over the rate limit of `kind` for this source address?"""
        return not self.attempts[kind].take(peer, self.now)

    def _complete(self, conn, outcome):
        """Record the outcome's mutations, then carry out its effect and reply."""
        if outcome.mutations:
            self.store.record(outcome.mutations)
        if outcome.effect is None:      # most requests: a reply, nothing else
            return [Reply(conn, outcome.reply)]
        return _ON_EFFECT[type(outcome.effect)](self, conn, outcome)

    def _just_reply(self, conn, outcome):
        return [Reply(conn, outcome.reply)]

    def _release(self, conn, outcome):
        user = outcome.effect.user
        if outcome.effect.forget_password:
            self.verified.pop(user, None)
        return self._end_session(user) + [Reply(conn, outcome.reply)]

    def _assign(self, conn, outcome):   # locate
        user = outcome.effect.user
        self.waiting[conn] = _Waiting(Phase.ASSIGNING, user, reply=outcome.reply)
        return [FleetAssign(conn, user)]

    # -- register: usage, name, then hash off the loop ------------------------------------
    def _register(self, conn, words, peer):
        reply = commands.check_register(self.store.state, words)
        name = words[0] if words else None
        if reply is None and name in self.registering:
            reply = fail(f"{name} is already used")
        if reply is None and self._too_many("register", peer):
            reply = fail(TOO_MANY)
        if reply is not None:
            return [Reply(conn, reply)]
        self.registering.add(name)
        self.waiting[conn] = _Waiting(Phase.HASHING, name)
        return [Hash(conn, words[1])]

    def _hashed(self, ev):
        name = self.waiting.pop(ev.conn).name
        self.registering.discard(name)
        if ev.error:
            log.error("hashing failed: %s", ev.error)
            return [Reply(ev.conn, fail("Internal error, try again"))]
        return self._complete(ev.conn, commands.finish_register(self.store.state, name, ev.stored))

    # -- login: usage, password (cached or verified off the loop), then a server --------------
    def _login(self, conn, words, peer):
        reply, stored = commands.check_login(self.store.state, words)
        if reply is None and self._too_many("login", peer):
            reply = fail(TOO_MANY)   # cached or not: each login may take an app-server slot
        if reply is not None:
            return [Reply(conn, reply)]
        name, password = words
        cached = self.verified.get(name)
        if stored is not None and cached and cached[0] == stored and \
                hmac.compare_digest(cached[1], self._digest(password)):
            return self._login_verified(conn, name, password, stored)
        self.waiting[conn] = _Waiting(Phase.VERIFYING, name, password, stored)
        return [Verify(conn, stored if stored is not None else self.dummy, password)]

    def _digest(self, password):
        return hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()

    def _verified(self, ev):
        w = self.waiting.pop(ev.conn)
        if not ev.matched or w.stored is None:   # the dummy never logs anyone in
            return [Reply(ev.conn, fail(NO_USER))]
        return self._login_verified(ev.conn, w.name, w.password, w.stored)

    def _check_refused(self, ev):
        w = self.waiting.pop(ev.conn)
        if w.phase is Phase.HASHING:
            self.registering.discard(w.name)
        return [Reply(ev.conn, fail(TOO_MANY))]

    def _login_verified(self, conn, name, password, stored):
        # Repeated logins skip scrypt: remember a keyed digest, in memory only.
        self.verified[name] = (stored, self._digest(password))
        self.waiting[conn] = _Waiting(Phase.ASSIGNING, name)
        return [FleetAssign(conn, name)]

    def _assigned(self, ev):
        w = self.waiting.pop(ev.conn)
        if ev.app_server is None:
            return [Reply(ev.conn, fail(ev.error))]
        actions = []
        reply = w.reply
        if reply is None:
            reply = self._finish_login(w.name)
            if reply["status"] != 0:   # deleted meanwhile: give the slot back
                actions.append(FleetRelease(w.name))
        if reply["status"] != 0:
            return actions + [Reply(ev.conn, reply)]
        reply["app_server"] = ev.app_server
        # From now on the user's token works there only (see _relay); a
        # server it leaves stops subscribing for it.
        old = self.assigned.get(w.name)
        self.assigned[w.name] = ev.server
        self.idle.touch(w.name, self.now)
        if old is not None and old != ev.server:
            actions += self._detach(w.name, old, drop=False)
        # The reply waits until the app server's subscriptions are confirmed,
        # so a message sent after it always arrives (docs/protocol.md §7).
        attach = self._attach(w.name, ev.server)
        if attach is None:
            return actions + [Reply(ev.conn, reply)]
        rid, send = attach
        self.waiting[ev.conn] = _Waiting(Phase.ATTACHING, w.name, reply=reply)
        self.attaching[rid] = (ev.conn, send.link)
        return actions + [send]

    def _attached(self, link, msg):
        rid = msg.get("id")
        # Only an int id (true and 1.0 hash like 1; a list does not hash) of an
        # attach sent on this link: another app server cannot answer for it.
        conn, sent_on = self.attaching.get(rid, (None, None)) if type(rid) is int else (None, None)
        if conn is None or sent_on != link:
            return []   # an attach nobody waits for (adoption), or a repeated id
        del self.attaching[rid]
        if not msg.get("ok"):
            # Login still succeeds: the app server keeps trying to subscribe,
            # and the broker keeps personal messages until it does.
            log.warning("app server could not confirm the subscriptions of %s",
                        self.waiting[conn].name)
        return [Reply(conn, self.waiting.pop(conn).reply)]

    def _finish_login(self, name):
        # Decided only once the app server is ready: the state may have
        # changed meanwhile (logout, delete, another login of this user).
        user = self.store.state.users.get(name)
        known = self.tokens.get(name) if user and user.session else None
        outcome = commands.finish_login(self.store.state, name, True, self.ctx, known_token=known)
        self.store.record(outcome.mutations)
        if outcome.reply.get("token"):
            self.tokens[name] = outcome.reply["token"]
        return outcome.reply

    # -- app-server links --------------------------------------------------------------
    def _link_opened(self, ev):
        self.links[ev.link] = _Link(LinkState.HELLO, ev.peer)
        return [StartHelloTimer(ev.link, HELLO_TIMEOUT)]

    def _hello(self, ev):
        link = self.links[ev.link]
        msg = _decode(ev.data, self.ctx.limits.link_json_depth)
        actions = [StopHelloTimer(ev.link)]
        if msg is None:
            link.state = LinkState.CLOSING
            return actions + [CloseLink(ev.link)]
        address = None
        if msg["op"] == "hello" and isinstance(msg.get("secret"), str):
            try:
                address = (str(msg["host"]), int(msg["port"]))
            except (KeyError, ValueError, TypeError):
                pass
        if address is None:
            return actions + self._reject(ev.link)
        link.state = LinkState.CHECKING
        return actions + [FleetRegister(ev.link, msg["secret"], address)]

    def _registered(self, ev):
        if ev.server is None:
            return self._reject(ev.link)
        link = self.links[ev.link]
        link.state, link.server = LinkState.READY, ev.server
        self.link_of[ev.server] = ev.link
        return [SendLink(ev.link, {"op": "welcome"})]

    def _reject(self, link):
        log.warning("rejected app-server link from %s", self.links[link].peer)
        self.links[link].state = LinkState.CLOSING
        return [SendLink(link, {"op": "rejected", "reason": "unknown or used join secret"}),
                CloseLink(link, flush=True)]

    def _hello_timed_out(self, ev):
        self.links[ev.link].state = LinkState.CLOSING
        return [CloseLink(ev.link)]

    def link_line(self, link, data):
        """The event `LinkLine(link, data)`, for a driver to call without
        making the event (one per relayed request: the hot path)."""
        entry = self.links.get(link)
        if entry is None or entry.state is not LinkState.READY:
            return self.handle(LinkLine(link, data))   # the table decides (or raises)
        msg = _decode(data, self.ctx.limits.link_json_depth)
        if msg is None:
            entry.state = LinkState.CLOSING
            return [CloseLink(link)]
        op = _LINK_OPS.get(msg["op"])
        return op(self, link, msg) if op else []

    def _link_line(self, ev):
        return self.link_line(ev.link, ev.data)

    def _ping(self, link, msg):
        # Pings come every applink.HEARTBEAT seconds however busy the app
        # server is, so they alone tell the fleet it is alive (not every command).
        return [FleetHeartbeat(self.links[link].server)]

    def _relay(self, link, msg):
        """One client request from an app server: the reply, and what to publish."""
        # Decoded once: the checks below and the command share it. Whatever
        # JSON value "line" holds is read as text; none, or undecodable: a Bad request.
        try:
            request = protocol.decode_line(str(msg["line"]).encode("utf-8")) if "line" in msg else None
        except ValueError:
            request = None
        me, bound = self._app_user(request)
        server = self.links[link].server
        if bound and me not in self.assigned:
            # A session restored after our restart, used before any locate:
            # it stays on this server if the fleet has room for it there.
            return [FleetAdopt(link, server, me, msg)]
        if bound and self.assigned[me] != server:
            return self._answer(link, msg, commands.Outcome(fail(WRONG_SERVER)))
        outcome = commands.handle_relayed(self.store.state, request, self.ctx, me=me)
        return self._answer(link, msg, outcome, me if bound else None)

    def _adopted(self, ev):
        if not ev.ok:
            return self._answer(ev.link, ev.msg, commands.Outcome(fail(WRONG_SERVER)))
        server = self.links[ev.link].server
        self.assigned[ev.user] = server
        # Its subscriptions go ahead of the reply on the link (nobody waits).
        attach = self._attach(ev.user, server)
        return ([attach[1]] if attach else []) + self._relay(ev.link, ev.msg)

    def _answer(self, link, msg, outcome, user=None):
        """The reply line; `user`: the token's user, served by this app server
        (it binds the client's connection to that user, for pushes)."""
        if outcome.mutations:
            self.store.record(outcome.mutations)
        message = {"op": "reply", "id": msg.get("id"), "reply": outcome.reply, "publish": None}
        e = outcome.effect   # send, send-group: the app server publishes, then replies
        if type(e) is Publish:
            message["publish"] = [e.destination, e.body, e.persistent]
        elif type(e) is Join:   # create-group, join-group: it subscribes, then replies
            message["join"] = [e.group, e.topic]
        if user is not None:
            message["user"] = user
        return [SendLink(link, message)]

    def _app_user(self, request):
        """(the token's user or None, whether that user must be on this app
        server): a request that passes the token, usage and which-server
        checks (docs/protocol.md §3) must come from the user's app server. Any
        valid token keeps its session active."""
        command = request.command if request else None
        if command is None or not command.token:
            return None, False
        words = request.words   # _active, inline: every relayed request
        me = self.store.state.user_for_token(words[0]) if words else None
        if me is None:
            return None, False
        self.idle.touch(me, self.now)
        return me, command.server is Server.APP and protocol.arity_ok(command, words[1:])

    def _nothing(self, *_):
        return []

    def _link_closed(self, ev):
        link = self.links.pop(ev.link)
        if link.state is LinkState.READY:
            if self.link_of.get(link.server) is ev.link:
                del self.link_of[link.server]
            # Logins waiting for this server's `attached` are answered now;
            # the client's next command finds the user a new server.
            actions = []
            for rid, (conn, waited_on) in list(self.attaching.items()):
                if waited_on is ev.link:
                    del self.attaching[rid]
                    actions.append(Reply(conn, self.waiting.pop(conn).reply))
            return actions + [FleetLost(link.server, "link closed")]
        if link.state is LinkState.HELLO:
            return [StopHelloTimer(ev.link)]
        return []


def _decode(data, max_depth):
    """The link message, or None: not JSON, not UTF-8, no "op", or nested
    deeper than `max_depth` (--link-json-depth; json's decoder would only
    reach a RecursionError)."""
    try:
        return applink.decode(data, max_depth)
    except ValueError:
        return None


_TWO_PHASE = {"register": LoginCore._register, "login": LoginCore._login}
_ON_EFFECT = {type(None): LoginCore._just_reply, Release: LoginCore._release,
              Assign: LoginCore._assign}
_LINK_OPS = {"cmd": LoginCore._relay, "attached": LoginCore._attached, "ping": LoginCore._ping}

# The legal (event, state) pairs; any other raises IllegalEvent.
_TABLE = {
    (ClientRequest, Phase.IDLE): LoginCore._request,
    (Hashed, Phase.HASHING): LoginCore._hashed,
    (Verified, Phase.VERIFYING): LoginCore._verified,
    (Assigned, Phase.ASSIGNING): LoginCore._assigned,
    (CheckRefused, Phase.HASHING): LoginCore._check_refused,
    (CheckRefused, Phase.VERIFYING): LoginCore._check_refused,
    (Tick, None): LoginCore._tick,
    (LinkOpened, LinkState.UNKNOWN): LoginCore._link_opened,
    (LinkLine, LinkState.HELLO): LoginCore._hello,
    (LinkLine, LinkState.READY): LoginCore._link_line,
    (LinkLine, LinkState.CLOSING): LoginCore._nothing,   # a rejected link, before its close
    (FleetRegistered, LinkState.CHECKING): LoginCore._registered,
    (Adopted, LinkState.READY): LoginCore._adopted,
    (Adopted, LinkState.CLOSING): LoginCore._nothing,
    (HelloTimedOut, LinkState.HELLO): LoginCore._hello_timed_out,
    **{(LinkClosed, s): LoginCore._link_closed for s in LinkState if s is not LinkState.UNKNOWN},
}
