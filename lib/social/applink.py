"""The internal link between an application server and the login server:
one JSON object per line over TCP (the login server's internal port).

  app -> login  {"op": "hello", "secret": S, "id": ID, "host": H, "port": P}
  login -> app  {"op": "welcome"}  |  {"op": "rejected", "reason": R} (then closed)
  app -> login  {"op": "ping"}                       every HEARTBEAT seconds
  app -> login  {"op": "cmd", "id": N, "line": L}    one client request, verbatim
  login -> app  {"op": "reply", "id": N, "status": S, "publish": [dest, body, persistent] | null,
                 "user": U (the token's user, bound to this server) | absent,
                 "join": [group, topic] (create-group, join-group) | absent} TAB {client reply}
                 (the client's reply follows the header after one tab, as the client
                 will get it: the app server passes those bytes on without decoding them)
  login -> app  {"op": "attach", "id": N, "user": U, "queue": Q, "topics": {group: topic}}
  app -> login  {"op": "attached", "id": N, "ok": true|false}   once the broker confirmed
  login -> app  {"op": "detach", "user": U, "drop": true|false}
  login -> app  {"op": "shutdown"}

`attach` asks the app server to subscribe for a user it now serves (login,
locate); the login server answers the client only after `attached`.
`detach` ends that (logout, delete, expiry: `drop` the user's undelivered
messages; a move: leave them to the broker, for the new app server).

`encode`/`decode` are the codec of both ends. `AppLink` is the app server's
end as a sans-I/O state machine (h11-style: nothing here touches a socket
or a clock): it turns received lines into typed events and outgoing
messages into lines, issues request ids and keeps the pending ones.

  CONNECTING  --connected-->       HELLO_SENT --welcome--> READY
  CONNECTING  --connect failed-->  CONNECTING (retried until CONNECT_FOR, then give up)
  HELLO_SENT  --rejected-->        REJECTED
  CONNECTING  --give up-->         CLOSED
  HELLO_SENT, READY --shutdown, lost--> CLOSED;  REJECTED --lost--> CLOSED

A step the table does not list raises: `LocalError` when this end asked for
it (a bug here), `RemoteError` when the login server sent it.
"""
import enum
import itertools
import json
from dataclasses import dataclass

from lib.social import protocol

# Events and actions are values; not frozen: a frozen dataclass costs ~1 us
# more per object, and every relayed request makes several (as login_events).
message = dataclass(slots=True)

HEARTBEAT = 1.0
MAX_LINE = 64 * 1024 * 1024   # replies such as receive-post can be large
MAX_DEPTH = 100               # nesting `decode` accepts at most (--link-json-depth may ask less)
CONNECT_FOR = 30.0            # seconds of connect attempts before the app server gives up
CONNECT_RETRY = 0.2           # seconds between connect attempts


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode   # made once


def encode(**msg):
    reply = msg.get("reply") if msg.get("op") == "reply" else None
    if isinstance(reply, dict):
        # The client's reply after a tab, encoded as the client gets it (JSON
        # has no raw tab): the app server forwards it without a decode and an
        # encode of its own. The header keeps what the app server decides on.
        del msg["reply"]
        status = msg["status"] = reply.get("status")
        head = _plain_reply_header(msg, status) or _ENCODE(msg)
        return (head + "\t" + protocol.encode_text(reply) + "\n").encode("utf-8")
    return (_ENCODE(msg) + "\n").encode("utf-8")


_STR = json.encoder.encode_basestring   # a str as JSON, non-ASCII kept: as _ENCODE does


def _plain_reply_header(msg, status):
    """The header of the usual reply (nothing to publish or join), written
    without the encoder: one per relayed request. None for any other."""
    rid, user = msg.get("id"), msg.get("user")
    if type(rid) is not int or type(status) is not int or "publish" not in msg \
            or msg["publish"] is not None or "join" in msg or len(msg) != 4 + ("user" in msg) \
            or type(user) not in (str, type(None)):
        return None
    if user is None:
        return '{"op":"reply","id":%d,"publish":null,"status":%d}' % (rid, status)
    return '{"op":"reply","id":%d,"publish":null,"user":%s,"status":%d}' % (rid, _STR(user), status)


def decode(raw, max_depth=MAX_DEPTH):
    """bytes -> dict with an "op"; ValueError if it is not one, or if it is
    nested deeper than `max_depth`."""
    if raw.count(b"[") + raw.count(b"{") > max_depth and too_deep(raw, max_depth):
        raise ValueError(f"nested deeper than {max_depth}")   # (the usual line: one count, no call)
    msg = json.loads(raw.decode("utf-8"))
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ValueError("not a link message")
    return msg


_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_OPENING = frozenset(b"[{")


def too_deep(raw, limit):
    """Is the JSON text `raw` (bytes) nested more than `limit` deep? Checked
    before decoding: json's decoder recurses once per level, so a line
    nested 100,000 deep would end in a RecursionError, not a ValueError."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False     # the usual line: fewer brackets than that, in all
    # Brackets outside strings. Escapes first (\\ then \"), so that every quote
    # left delimits a string. Up to json's first error this is its own
    # reading, and it recurses no further than that error.
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    level = 0
    for byte in b"".join(text.split(b'"')[::2]).translate(None, _NOT_BRACKETS):
        level += 1 if byte in _OPENING else -1
        if level > limit:
            return True
    return False


# -- the app server's end as a state machine ------------------------------------------
class LinkError(Exception):
    """A step the link's state machine does not allow."""


class LocalError(LinkError):
    """This end asked for an illegal step (a bug in the caller)."""


class RemoteError(LinkError):
    """The login server sent a malformed or unexpected line."""


class State(enum.Enum):
    __hash__ = object.__hash__   # members are singletons; Enum's own hash is Python code, hot in tables
    CONNECTING = "CONNECTING"     # no connection yet (attempts retried until CONNECT_FOR)
    HELLO_SENT = "HELLO_SENT"     # connected, waiting for welcome/rejected
    READY = "READY"               # welcomed: requests may be relayed
    REJECTED = "REJECTED"         # the join secret was refused; the close follows
    CLOSED = "CLOSED"             # for good


class Input(enum.Enum):
    __hash__ = object.__hash__   # members are singletons; Enum's own hash is Python code, hot in tables
    START = "start"               # local: the first connect attempt begins
    CONNECT_FAILED = "connect failed"
    GIVE_UP = "give up"
    CONNECTED = "connected"       # local: TCP is up, the hello goes out
    PING = "ping"
    REQUEST = "request"
    LOST = "lost"                 # local: the connection is gone
    WELCOME = "welcome"           # remote inputs from here on
    REJECTED = "rejected"
    REPLY = "reply"
    ATTACH = "attach"
    DETACH = "detach"
    SHUTDOWN = "shutdown"
    ATTACHED = "attached"         # local: the answer to an attach


_REMOTE = {Input.WELCOME, Input.REJECTED, Input.REPLY, Input.ATTACH, Input.DETACH,
           Input.SHUTDOWN}

S, I = State, Input
TRANSITIONS = {
    (S.CONNECTING, I.START): S.CONNECTING,
    (S.CONNECTING, I.CONNECT_FAILED): S.CONNECTING,
    (S.CONNECTING, I.GIVE_UP): S.CLOSED,
    (S.CONNECTING, I.CONNECTED): S.HELLO_SENT,
    (S.HELLO_SENT, I.PING): S.HELLO_SENT,
    (S.HELLO_SENT, I.WELCOME): S.READY,
    (S.HELLO_SENT, I.REJECTED): S.REJECTED,
    (S.HELLO_SENT, I.SHUTDOWN): S.CLOSED,
    (S.HELLO_SENT, I.LOST): S.CLOSED,
    (S.READY, I.PING): S.READY,
    (S.READY, I.REQUEST): S.READY,
    (S.READY, I.REPLY): S.READY,
    (S.READY, I.ATTACH): S.READY,
    (S.READY, I.DETACH): S.READY,
    (S.READY, I.ATTACHED): S.READY,
    (S.READY, I.SHUTDOWN): S.CLOSED,
    (S.READY, I.LOST): S.CLOSED,
    (S.REJECTED, I.LOST): S.CLOSED,
    # After a shutdown we close the connection ourselves; its close notice still comes.
    (S.CLOSED, I.LOST): S.CLOSED,
}
del S, I


# -- events: what the login server said ---------------------------------------------
@message
class Welcome:
    pass


@message
class Rejected:
    reason: str


@message
class Publication:
    """What to publish once the reply is a success."""
    destination: str
    body: str
    persistent: bool


@message
class Reply:
    """The answer to request `id`, sent for `tag` (given to `request`). `reply`
    is None when the login server sent nothing usable (the caller answers a
    failure, so no client waits for ever). `user`: the token's user when it
    is served here (the connection is then bound to it); `join`:
    (group, topic) to subscribe to before the reply leaves."""
    id: int
    reply: bytes              # the client's reply line, encoded (None: unusable)
    publish: Publication
    tag: object
    user: str = None
    join: tuple = None
    status: int = None        # the reply's status (0: success)


@message
class Attach:
    """Subscribe for `user` (its `queue`, its groups' `topics`), then answer `id`."""
    id: int
    user: str
    queue: str
    topics: dict


@message
class Detach:
    user: str
    drop: bool


@message
class Shutdown:
    """The login server ends the link; `abandoned`: tags of unanswered requests."""
    abandoned: tuple


def _publication(value):
    """The wire's [dest, body, persistent] or null -> Publication or None."""
    if not value:
        return None
    if (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)
            and isinstance(value[1], str)):
        return Publication(value[0], value[1], bool(value[2]))
    raise ValueError("malformed publish")


class AppLink:
    """The app server's end of one link: state, request ids, pending requests."""

    def __init__(self, server_id, secret, host, port,
                 connect_for=CONNECT_FOR, retry=CONNECT_RETRY):
        self.hello = dict(secret=secret, id=server_id, host=host, port=port)
        self.connect_for, self.retry = connect_for, retry
        self.state = State.CONNECTING
        self.deadline = None
        self.pending = {}                 # request id -> tag, in the order sent
        self._ids = itertools.count(1)

    def allows(self, step):
        return (self.state, step) in TRANSITIONS

    def _step(self, step):
        new = TRANSITIONS.get((self.state, step))
        if new is None:
            error = RemoteError if step in _REMOTE else LocalError
            raise error(f"{step.value} in state {self.state.name}")
        self.state = new

    # -- local steps --------------------------------------------------------------------
    def start(self, now):
        """The first connect attempt begins at `now`."""
        self._step(Input.START)
        self.deadline = now + self.connect_for

    def connect_failed(self, now):
        """-> seconds until the next attempt, or None: given up (CLOSED)."""
        if self.deadline is None:
            raise LocalError("connect failed before start")
        if now < self.deadline:
            self._step(Input.CONNECT_FAILED)
            return self.retry
        self._step(Input.GIVE_UP)
        return None

    def connected(self):
        """TCP is up -> the hello line."""
        self._step(Input.CONNECTED)
        return encode(op="hello", **self.hello)

    def ping(self):
        self._step(Input.PING)
        return encode(op="ping")

    def request(self, line, tag):
        """Relay one client request line -> the cmd line; its reply will carry `tag`."""
        if self.state is not State.READY:   # the table's one (READY, REQUEST) entry, inline
            self._step(Input.REQUEST)
        rid = next(self._ids)
        self.pending[rid] = tag
        return encode(op="cmd", id=rid, line=line)

    def attached(self, attach_id, ok):
        """The answer to `Attach(attach_id)`."""
        self._step(Input.ATTACHED)
        return encode(op="attached", id=attach_id, ok=bool(ok))

    def lost(self):
        """The connection is gone -> tags of the requests never answered."""
        self._step(Input.LOST)
        return self._abandon()

    def _abandon(self):
        abandoned, self.pending = tuple(self.pending.values()), {}
        return abandoned

    # -- remote steps -----------------------------------------------------------------
    def receive(self, raw):
        """One line from the login server -> Welcome, Rejected, Reply, Attach,
        Detach or Shutdown; RemoteError if it is malformed or not allowed now."""
        head, tab, tail = raw.partition(b"\t")
        try:
            msg = decode(head)
        except ValueError as e:
            raise RemoteError(f"malformed line: {e}") from None
        if tab:
            msg["reply"] = tail + b"\n"
        handler = _RECEIVE.get(msg["op"])
        if handler is None:
            raise RemoteError(f"unknown op {msg['op']!r}")
        return handler(self, msg)

    def _welcome(self, msg):
        self._step(Input.WELCOME)
        return Welcome()

    def _rejected(self, msg):
        self._step(Input.REJECTED)
        return Rejected(str(msg.get("reason")))

    def _reply(self, msg):
        if self.state is not State.READY:   # the table's one (READY, REPLY) entry, inline
            self._step(Input.REPLY)
        rid = msg.get("id")
        if type(rid) is not int or rid not in self.pending:
            raise RemoteError(f"reply to unknown request id {rid!r}")
        tag = self.pending.pop(rid)
        reply, status = msg.get("reply"), msg.get("status")
        if isinstance(reply, dict) and reply:     # a reply inside the header (no tab)
            reply, status = protocol.encode(reply), reply.get("status")
        publish, join = msg.get("publish"), msg.get("join")
        try:   # (most replies have neither: no call)
            publish = _publication(publish) if publish else None
            join = _join(join) if join is not None else None
        except ValueError:
            reply, publish, join = None, None, None
        if type(reply) is not bytes or len(reply) < 3 or type(status) is not int:
            reply = None
        user = msg.get("user")
        return Reply(rid, reply, publish, tag, user if isinstance(user, str) else None, join,
                     status)

    def _attach(self, msg):
        self._step(Input.ATTACH)
        rid, user, queue, topics = (msg.get(k) for k in ("id", "user", "queue", "topics"))
        if type(rid) is not int or not isinstance(user, str) or not isinstance(queue, str) \
                or not isinstance(topics, dict) \
                or not all(isinstance(v, str) for v in topics.values()):
            raise RemoteError("malformed attach")
        return Attach(rid, user, queue, topics)

    def _detach(self, msg):
        self._step(Input.DETACH)
        user = msg.get("user")
        if not isinstance(user, str):
            raise RemoteError("malformed detach")
        return Detach(user, bool(msg.get("drop")))

    def _shutdown(self, msg):
        self._step(Input.SHUTDOWN)
        return Shutdown(self._abandon())


def _join(value):
    """The wire's [group, topic] or null -> (group, topic) or None."""
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError("malformed join")


_RECEIVE = {"welcome": AppLink._welcome, "rejected": AppLink._rejected,
            "reply": AppLink._reply, "attach": AppLink._attach, "detach": AppLink._detach,
            "shutdown": AppLink._shutdown}
