"""The application server as a sans-I/O core: events in, actions out.

Nothing here touches a socket, a thread, a clock or the reactor (the model
is lib/hub/session.py); lib/social/app_server.py carries the actions out.

Each client request is relayed verbatim to the login server over the
internal link (one round trip; the login server applies it atomically, in
priority order). For send/send-group the reply names a broker destination:
the message is published and the client hears `Success!` only after the
broker's receipt. One request per client connection is in progress at a
time, so replies keep their order: later ones wait in that connection's
queue, and the driver stops reading it meanwhile (`Pause`/`Resume`).

What a request meets depends on the link's state (`_DISPATCH`): relayed when
READY, held until the welcome while CONNECTING/HELLO_SENT (the login server
may send a client here before it has welcomed us), refused with
UNAVAILABLE once the link is REJECTED or CLOSED. When the link is lost,
every held and relayed request is answered and the core asks to exit.

Chat (lib/social/delivery.py): the login server's `attach`/`detach` and the
`user`/`join` of its replies drive the broker subscriptions this server
holds for its users and the lines it pushes to their connections. A
create-group or join-group is answered once its topic subscription is
confirmed.
"""
import collections
import enum
import logging
from dataclasses import dataclass

from lib.loop.timers import SetTimer, TimerFired  # noqa: F401  (shared timer values)
from lib.social import applink, delivery
from lib.social.applink import Input, State
from lib.social.delivery import (  # noqa: F401  (the driver carries these out too)
    Ack, AttachDone, JoinDone, KeepOpen, Push, Subscribe, Unsubscribe)
from lib.social.protocol import Request, fail

# Events and actions are values; not frozen: a frozen dataclass costs ~1 us
# more per object, and every relayed request makes several (as login_events).
message = dataclass(slots=True)

log = logging.getLogger("app")

UNAVAILABLE = "Service unavailable, try again"
BROKER_DOWN = "Message service unavailable, try again later"


class TimerKey(enum.Enum):
    HEARTBEAT = "heartbeat"       # the next ping to the login server
    CONNECT = "connect"           # the next connect attempt


# -- events (what happened) -----------------------------------------------------------
@message
class Start:
    """The server is up at time `now`: begin connecting to the login server."""
    now: float


@message
class LinkConnected:
    """The connect that `Connect` asked for succeeded."""


@message
class ConnectFailed:
    now: float
    error: str


@message
class LinkLine:
    """One line (no newline) from the login server."""
    raw: bytes


@message
class LinkLost:
    """The link's connection is closed (by either end)."""


@message
class ClientRequest:
    conn: object
    request: Request


@message
class ClientClosed:
    conn: object


@message
class Published:
    """The broker's answer to `Publish(conn, ...)`."""
    conn: object
    ok: bool
    error: str = None


@message
class Subscribed:
    """The broker's answer to `Subscribe(destination, ..., waiter)`."""
    waiter: tuple
    destination: str
    ok: bool


@message
class BrokerMessage:
    destination: str
    body: str
    headers: dict


@message
class BrokerState:
    up: bool


@message
class Written:
    """The line of `Push(conn, line, token)` is in the socket."""
    conn: object
    token: object


# -- actions (what the driver must do) -------------------------------------------------
@message
class Connect:
    """Start connecting to the login server; report LinkConnected or ConnectFailed."""


@message
class SendLink:
    line: bytes


@message
class CloseLink:
    pass


@message
class Reply:
    """Send `reply` to the client: a protocol reply dict, or the encoded line
    the login server made (passed on as it is)."""
    conn: object
    reply: object


@message
class Relay:
    """Pause `conn` and send `line` on the link: a request relayed (Pause and
    SendLink in one action: one per request, the hot path)."""
    conn: object
    line: bytes


@message
class Answer:
    """Reply, then Resume: the request is over and none waits behind it."""
    conn: object
    reply: object


@message
class Pause:
    """Stop reading the client's requests until Resume."""
    conn: object


@message
class Resume:
    conn: object


@message
class Publish:
    """Publish through the broker; report Published(conn, ok, error)."""
    conn: object
    destination: str
    body: str
    persistent: bool


@message
class Exit:
    """Stop the server with this exit status."""
    status: int


class AppCore:
    """One application server: the link machine, held requests, publishes."""

    def __init__(self, server_id, secret, host, port, broker=True, link=None, limits=None):
        """`host`/`port`: where clients reach us (sent in the hello);
        `broker`: False when there is no broker link (publishes then fail)."""
        self.id = server_id
        self.link = link or applink.AppLink(server_id, secret, host, port)
        self.broker = broker
        self.early = []          # (conn, request) held until the welcome
        self.queues = {}         # conn with a request in progress -> requests waiting behind
                                 # it (a deque), or None while none waits
        self.publishing = {}     # conn -> its reply, until the broker's receipt
        self.joining = {}        # conn -> its reply, until the topic subscription is confirmed
        self.delivery = delivery.Delivery(limits)
        self.exited = False

    @property
    def state(self):
        return self.link.state

    def handle(self, event):
        """One event -> the list of actions it calls for, in order."""
        return _ON_EVENT[type(event)](self, event)

    # -- the link's connection ---------------------------------------------------------
    def _start(self, event):
        self.link.start(event.now)
        return [Connect()]

    def _connected(self, event):
        # The first ping right behind the hello: the login server's health
        # check hears from us at once.
        return [SendLink(self.link.connected())] + self._heartbeat()

    def _connect_failed(self, event):
        delay = self.link.connect_failed(event.now)
        if delay is not None:
            return [SetTimer(TimerKey.CONNECT, delay)]
        log.error("%s cannot reach the login server: %s", self.id, event.error)
        return self._answer_all(()) + [Exit(1)]

    def _heartbeat(self):
        if not self.link.allows(Input.PING):
            return []   # rejected or closed: the heartbeat ends
        return [SendLink(self.link.ping()), SetTimer(TimerKey.HEARTBEAT, applink.HEARTBEAT)]

    def _timer(self, event):
        if type(event.key) is tuple:          # a delivery wait: (Wait, key)
            return self._chat(self.delivery.timer(event.key))
        return _ON_TIMER[event.key](self)

    def _link_lost(self, event):
        abandoned = self.link.lost()
        if self.exited:
            return []
        log.warning("%s lost its login server link", self.id)
        return self._answer_all(abandoned) + [Exit(0)]

    def _answer_all(self, abandoned):
        """The end: every held and relayed (`abandoned`) request is answered."""
        self.exited = True
        early, self.early = self.early, []
        actions = []
        for conn in [conn for conn, _ in early] + list(abandoned):
            actions += self._finish(conn, fail(UNAVAILABLE))
        return actions

    # -- what the login server says ----------------------------------------------------
    def link_line(self, raw):
        """The event `LinkLine(raw)`, for a driver to call without making the
        event (one per relayed request: the hot path)."""
        try:
            message = self.link.receive(raw)
        except applink.RemoteError as e:
            log.error("bad message from the login server: %s", e)
            return []
        return _ON_LINK[type(message)](self, message)

    def _link_line(self, event):
        return self.link_line(event.raw)

    def _welcome(self, message):
        log.info("%s registered with the login server", self.id)
        early, self.early = self.early, []
        actions = []
        for conn, request in early:
            actions += self._relay(conn, request)
        return actions

    def _rejected(self, message):
        # The login server closes the link next; LinkLost answers and exits.
        log.error("login server rejected us: %s", message.reason)
        return []

    def _reply(self, message):
        conn = message.tag
        reply, status = message.reply, message.status   # the encoded line, passed on
        if reply is None:
            reply, status = fail(UNAVAILABLE), 1
        publish = message.publish
        # The token's user is served here: this connection gets its messages
        # (unless it closed meanwhile: its request left `queues` with it).
        user = message.user
        if user is not None and conn in self.queues and user not in self.delivery.bound.get(conn, ()):
            actions = self._chat(self.delivery.bind(conn, user))
        else:
            actions = []      # the usual case: bound by an earlier request
        if message.join is not None and status == 0 and message.user:
            if not self.broker:
                return actions + self._finish(conn, reply)
            self.joining[conn] = reply
            return actions + self._chat(self.delivery.join(conn, message.user, *message.join))
        if publish is None or status != 0:
            return actions + self._finish(conn, reply)
        if not self.broker:
            return actions + self._finish(conn, fail(BROKER_DOWN))
        self.publishing[conn] = reply
        return actions + [Publish(conn, publish.destination, publish.body, publish.persistent)]

    def _attach(self, message):
        if not self.broker:    # nothing to subscribe with: the login goes on without chat
            return [SendLink(self.link.attached(message.id, False))]
        return self._chat(self.delivery.attach(message.id, message.user, message.queue,
                                               message.topics))

    def _detach(self, message):
        return self._chat(self.delivery.detach(message.user, message.drop))

    # -- chat: what the delivery core asks for ------------------------------------------
    def _chat(self, actions):
        """Delivery's actions, with its answers turned into ours."""
        out = []
        for action in actions:
            kind = type(action)
            if kind is AttachDone:
                if self.link.allows(Input.ATTACHED):
                    out.append(SendLink(self.link.attached(action.id, action.ok)))
            elif kind is JoinDone:
                reply = self.joining.pop(action.conn, None)
                if reply is not None:
                    out += self._finish(action.conn, reply)
            else:
                out.append(action)
        return out

    def _subscribed(self, event):
        return self._chat(self.delivery.subscribed(event.waiter, event.destination, event.ok))

    def _broker_message(self, event):
        return self._chat(self.delivery.message(event.destination, event.body, event.headers))

    def _broker_state(self, event):
        return self._chat(self.delivery.broker_state(event.up))

    def _written(self, event):
        return self._chat(self.delivery.written(event.conn, event.token))

    def _shutdown(self, message):
        log.info("%s: the login server ends the link", self.id)
        return self._answer_all(message.abandoned) + [CloseLink(), Exit(0)]

    # -- clients -----------------------------------------------------------------------
    def client_request(self, conn, request):
        """The event `ClientRequest(conn, request)`, for a driver to call
        without making the event (one per request: the hot path)."""
        queues = self.queues
        if conn in queues:                  # behind the one in progress
            waiting = queues[conn]
            if waiting is None:
                waiting = queues[conn] = collections.deque()
            waiting.append(request)
            return []
        queues[conn] = None
        if self.link.state is State.READY:  # _DISPATCH's common case, without the lookup
            return [Relay(conn, self.link.request(" ".join((request.name,) + request.words), conn))]
        return [Pause(conn)] + self._dispatch(conn, request)

    def _client_request(self, event):
        return self.client_request(event.conn, event.request)

    def _dispatch(self, conn, request):
        return _DISPATCH[self.link.state](self, conn, request)

    def _relay(self, conn, request):
        line = " ".join((request.name,) + request.words)
        return [SendLink(self.link.request(line, conn))]

    def _hold(self, conn, request):
        self.early.append((conn, request))
        return []

    def _refuse(self, conn, request):
        return self._finish(conn, fail(UNAVAILABLE))

    def _finish(self, conn, reply):
        """The one way a request ends: its reply, then the connection's next
        request (or reading resumes)."""
        waiting = self.queues.get(conn)
        if waiting:
            return [Reply(conn, reply)] + self._dispatch(conn, waiting.popleft())
        self.queues.pop(conn, None)
        return [Answer(conn, reply)]

    def _published(self, event):
        reply = self.publishing.pop(event.conn, None)
        if reply is None:
            return []
        if not event.ok:
            log.warning("publish to broker failed: %s", event.error)
        return self._finish(event.conn, reply if event.ok else fail(BROKER_DOWN))

    def _client_closed(self, event):
        # Its queued and held requests are dropped (a held request must not
        # run for a client that has gone); relayed ones and publishes finish.
        self.queues.pop(event.conn, None)
        self.joining.pop(event.conn, None)
        if self.early:
            self.early = [(conn, req) for conn, req in self.early if conn is not event.conn]
        return self._chat(self.delivery.conn_closed(event.conn))


_ON_EVENT = {
    Start: AppCore._start, LinkConnected: AppCore._connected,
    ConnectFailed: AppCore._connect_failed, LinkLine: AppCore._link_line,
    LinkLost: AppCore._link_lost, ClientRequest: AppCore._client_request,
    ClientClosed: AppCore._client_closed, Published: AppCore._published,
    TimerFired: AppCore._timer, Subscribed: AppCore._subscribed,
    BrokerMessage: AppCore._broker_message, BrokerState: AppCore._broker_state,
    Written: AppCore._written,
}
_ON_LINK = {
    applink.Welcome: AppCore._welcome, applink.Rejected: AppCore._rejected,
    applink.Reply: AppCore._reply, applink.Shutdown: AppCore._shutdown,
    applink.Attach: AppCore._attach, applink.Detach: AppCore._detach,
}
_ON_TIMER = {
    TimerKey.HEARTBEAT: AppCore._heartbeat,
    TimerKey.CONNECT: lambda core: [Connect()],
}
# What a client request meets, by the link's state.
_DISPATCH = {
    State.CONNECTING: AppCore._hold, State.HELLO_SENT: AppCore._hold,
    State.READY: AppCore._relay,
    State.REJECTED: AppCore._refuse, State.CLOSED: AppCore._refuse,
}
