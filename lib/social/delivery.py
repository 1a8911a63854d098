"""What an application server delivers: the broker subscriptions it holds for
the users it serves, and the chat lines it pushes to their connections.
Sans-I/O, like app_core (which owns one `Delivery` and feeds it): each
method is an event, its result the list of actions, in order.

- **Attach** (from the login server: login, locate): subscribe to the user's
  personal queue (ack=client-individual) and its groups' topics (ack=auto,
  one subscription per topic however many local members). `AttachDone`
  once the broker confirmed every one with a receipt, or one failed, or
  ATTACH_TIMEOUT passed; the login server answers the login only then.
- **Bind**: a connection on which a request of the user succeeded with its
  token (`listen`, right after login, or any command) gets its messages.
- **Personal message**: pushed to every connection bound to its user; the
  STOMP ACK goes out once the line has been written to each of those sockets
  (`Written`). With no connection yet it is held, unacked. If every
  connection closed before the write, it is held again.
- **Group message**: pushed to the local members the message names as
  recipients (online when it was sent); held briefly (--max-held-group) for a
  member with no connection yet.
- **Broker connection lost**: unacked messages are forgotten; the broker
  redelivers them on the next connection and the client drops repeats by
  message id (so each message is printed once).
- **Detach**: after logout, delete or expiry (`drop`) what is held is acked
  (nobody will read it), so the broker keeps nothing; after a move it is
  left unacked, and the broker hands it to the user's new app server.
"""
import collections
import enum
import json
import logging
from dataclasses import dataclass

from lib.loop.timers import CancelTimer, SetTimer
from lib.social import protocol
from lib.social.limits import Limits

# Events and actions are values; not frozen: a frozen dataclass costs ~1 us
# more per object, and every relayed request makes several (as login_events).
message = dataclass(slots=True)

log = logging.getLogger("app")

# Defaults of the limits (lib/social/limits.py: --subscribe-timeout,
# --max-held-group, --prefetch; docs/limits.md).
_DEFAULTS = Limits()
ATTACH_TIMEOUT = _DEFAULTS.subscribe_timeout   # seconds for the broker to confirm subscriptions
MAX_HELD_GROUP = _DEFAULTS.max_held_group      # group messages held per user with no connection yet
PREFETCH = str(_DEFAULTS.prefetch)             # unacked personal messages per subscription


class Wait(enum.Enum):
    """What waits for subscriptions: a login's attach, or a group join."""
    ATTACH = "attach"
    JOIN = "join"


# -- actions ----------------------------------------------------------------------------
@message
class Subscribe:
    """Subscribe (idempotent); report `Subscribed(waiter, destination, ok)`."""
    destination: str
    ack: str                  # "auto" | "client-individual"
    headers: dict
    waiter: tuple             # (Wait, key)


@message
class Unsubscribe:
    destination: str


@message
class Ack:
    """Acknowledge one message (its MESSAGE headers, as the broker link gave them)."""
    headers: dict


@message
class Push:
    """Write `line` to `conn`; report `Written(conn, token)` once it is in the socket."""
    conn: object
    line: bytes
    token: object


@message
class KeepOpen:
    """`conn` gets pushes now: no idle limit for it (its client may only
    listen for hours); --max-conns-per-address still bounds such connections."""
    conn: object


@message
class AttachDone:
    id: int
    ok: bool


@message
class JoinDone:
    """The join of the request on `conn` is subscribed (or failed: `ok`)."""
    conn: object
    ok: bool


# -- state --------------------------------------------------------------------------------
class _Message:
    """One chat line for one user; `headers` is None for a group message (no ack)."""
    __slots__ = ("user", "line", "headers", "waiting", "written", "dead")

    def __init__(self, user, line, headers):
        self.user, self.line, self.headers = user, line, headers
        self.waiting = set()      # connections it is on its way to
        self.written = False      # it reached at least one socket
        self.dead = False         # forgotten (detach, broker connection lost)


class _User:
    __slots__ = ("queue", "groups", "conns", "held")

    def __init__(self, queue):
        self.queue = queue
        self.groups = {}                  # group -> topic
        self.conns = set()                # bound connections
        self.held = collections.deque()   # _Message with no connection yet


class Delivery:
    def __init__(self, limits=None):
        limits = limits or _DEFAULTS
        self.timeout = limits.subscribe_timeout
        self.max_held_group = limits.max_held_group
        self.prefetch = {"activemq.prefetchSize": str(limits.prefetch)}
        self.users = {}                   # user -> _User (attached here)
        self.queue_user = {}              # personal queue -> user
        self.members = {}                 # topic -> {local member: None}
        self.group_of = {}                # topic -> group name
        self.bound = {}                   # conn -> {user: None}
        self.inflight = {}                # conn -> {_Message: None} written but not confirmed
        self.waits = {}                   # (Wait, key) -> destinations not confirmed yet

    # -- the login server ------------------------------------------------------------
    def attach(self, attach_id, user, queue, topics):
        """Subscribe for `user`; AttachDone(attach_id, ok) once confirmed."""
        u = self.users.get(user)
        actions = []
        if u is not None and u.queue != queue:   # a new session: its queue replaces the old
            actions += self.detach(user, drop=False)
            u = None
        if u is None:
            u = self.users[user] = _User(queue)
            self.queue_user[queue] = user
        for group, topic in topics.items():
            self._add_member(u, user, group, topic)
        destinations = [(queue, "client-individual")] + [(t, "auto") for t in u.groups.values()]
        return actions + self._wait((Wait.ATTACH, attach_id), destinations)

    def join(self, conn, user, group, topic):
        """`user` joined `group` by the request on `conn`: JoinDone(conn, ok) once subscribed."""
        u = self.users.get(user)
        if u is None:     # not attached here (a race with its detach): nothing to wait for
            return [JoinDone(conn, True)]
        self._add_member(u, user, group, topic)
        return self._wait((Wait.JOIN, conn), [(topic, "auto")])

    def detach(self, user, drop):
        u = self.users.pop(user, None)
        if u is None:
            return []
        del self.queue_user[u.queue]
        actions = []
        for m in list(u.held) + [m for conn in u.conns for m in self.inflight.get(conn, ())
                                 if m.user == user]:
            if not m.dead:
                m.dead = True
                if drop and m.headers is not None:
                    actions.append(Ack(m.headers))
        actions.append(Unsubscribe(u.queue))
        for topic in u.groups.values():
            members = self.members[topic]
            members.pop(user, None)
            if not members:   # the last local member: this server stops listening
                del self.members[topic], self.group_of[topic]
                actions.append(Unsubscribe(topic))
        for conn in u.conns:
            self.bound[conn].pop(user, None)
        return actions

    def _add_member(self, u, user, group, topic):
        u.groups[group] = topic
        self.members.setdefault(topic, {})[user] = None
        self.group_of[topic] = group

    # -- subscriptions confirmed -----------------------------------------------------------
    def _wait(self, waiter, destinations):
        self.waits[waiter] = {d for d, _ in destinations}
        headers = self.prefetch
        return [Subscribe(d, ack, headers if ack != "auto" else {}, waiter)
                for d, ack in destinations] + [SetTimer(waiter, self.timeout)]

    def subscribed(self, waiter, destination, ok):
        pending = self.waits.get(waiter)
        if pending is None:
            return []
        pending.discard(destination)
        if ok and pending:
            return []
        return self._done(waiter, ok)

    def timer(self, waiter):
        if waiter not in self.waits:
            return []
        log.warning("the broker did not confirm the subscriptions for %s %s in %g s",
                    waiter[0].value, waiter[1], self.timeout)
        return self._done(waiter, False)[:-1]    # the timer has fired: no CancelTimer

    def _done(self, waiter, ok):
        del self.waits[waiter]
        kind, key = waiter
        done = AttachDone(key, ok) if kind is Wait.ATTACH else JoinDone(key, ok)
        return [done, CancelTimer(waiter)]

    # -- clients -----------------------------------------------------------------------
    def bind(self, conn, user):
        """A request of `user` succeeded on `conn` with its token."""
        u = self.users.get(user)
        if u is None or conn in u.conns:
            return []
        u.conns.add(conn)
        actions = [] if conn in self.bound else [KeepOpen(conn)]
        self.bound.setdefault(conn, {})[user] = None
        held, u.held = u.held, collections.deque()
        for m in held:
            actions += self._deliver(m)
        return actions

    def conn_closed(self, conn):
        for user in self.bound.pop(conn, ()):
            self.users[user].conns.discard(conn)
        self.waits.pop((Wait.JOIN, conn), None)
        actions = []
        for m in self.inflight.pop(conn, ()):
            m.waiting.discard(conn)
            if not m.waiting and not m.dead:
                # Every write failed: to the user's other connections, or held.
                actions += self._finish(m) if m.written else self._deliver(m)
        return actions

    def written(self, conn, m):
        """`m`'s line is in `conn`'s socket."""
        waiting = self.inflight.get(conn)
        if waiting is None or m not in waiting:
            return []
        del waiting[m]
        m.waiting.discard(conn)
        m.written = True
        return self._finish(m) if not m.waiting and not m.dead else []

    def _finish(self, m):
        m.dead = True
        return [Ack(m.headers)] if m.headers is not None else []

    # -- the broker ----------------------------------------------------------------------
    def message(self, destination, body, headers):
        """A MESSAGE from the broker."""
        user = self.queue_user.get(destination)
        members = self.members.get(destination) if user is None else None
        if user is None and members is None:
            return []     # unsubscribed meanwhile; a personal one returns to the broker
        try:
            chat = json.loads(body)
            msg_id = headers["message-id"]
            line = protocol.push_line(msg_id, user, chat)   # checks a group's body too
            recipients = set(chat.get("recipients") or ()) if user is None else ()
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("unreadable message on %s dropped", destination)
            return [Ack(headers)] if user is not None else []
        if user is not None:
            return self._deliver(_Message(user, line, headers))
        actions = []
        for member in members:
            if member in recipients:
                actions += self._deliver(
                    _Message(member, protocol.push_line(msg_id, member, chat), None))
        return actions

    def broker_state(self, up):
        """The broker link went down (up=False): what is unacked will come again."""
        if up:
            return []
        for u in self.users.values():
            for m in u.held:
                if m.headers is not None:
                    m.dead = True
            u.held = collections.deque(m for m in u.held if not m.dead)
        for waiting in self.inflight.values():
            for m in waiting:
                if m.headers is not None:
                    m.dead = True
        return []

    def _deliver(self, m):
        u = self.users.get(m.user)
        if u is None or m.dead:
            return []
        if not u.conns:
            u.held.append(m)
            # Only group messages count: personal ones are bounded by PREFETCH.
            if m.headers is None and len(u.held) > self.max_held_group and \
                    sum(x.headers is None for x in u.held) > self.max_held_group:
                self._drop_oldest_group(u)
            return []
        m.waiting = set(u.conns)
        actions = []
        for conn in u.conns:
            self.inflight.setdefault(conn, {})[m] = None
            actions.append(Push(conn, m.line, m))
        return actions

    def _drop_oldest_group(self, u):
        for m in u.held:
            if m.headers is None:
                u.held.remove(m)
                log.warning("group message for %s dropped: %d held with no connection",
                            m.user, self.max_held_group)
                return
