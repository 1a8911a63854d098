"""The TCP client as a state machine: events in, actions out, no I/O.

One user request at a time, in input order (PROTOCOL.md §2, §5):

    IDLE --typed line--> WAITING_REPLY --reply--> IDLE
    WAITING_REPLY, RETRYING --login: Success!--> LISTENING --reply, failure, 2 s--> IDLE (silently)
    WAITING_REPLY --login server: closed, refused, timed out--> RETRYING (sent once more)
    WAITING_REPLY --app server: the same, or `Not your application server`--> RELOCATING
    RELOCATING --new server named (or the refusing one, which now agrees)--> RETRYING
    RELOCATING --the dead server named again--> RELOCATE_WAIT --0.25 s--> RELOCATING
    RETRYING, RELOCATING --fail--> "Error: cannot reach the server at A" --> IDLE
    IDLE --exit, end of input--> LINGERING --linger--> DONE (at once: nobody logged in)
    any state but DONE --push line--> the same state (its chat line printed)

A request whose user has no known app server starts in RELOCATING; one
located that way is a first attempt (WAITING_REPLY). Each request gets one
retry: a connection the login server had closed, or a move to the user's
new app server. After a login the client sends `listen TOKEN` to the user's
app server on its own and waits for the reply (never printed) before the
next line: from then on that connection carries the user's chat as push
lines. A listen that fails is not retried (the user's next request binds
their connection too). A state change the table does not list raises
`IllegalTransition`; an event a state does not expect raises `IllegalEvent`.
Connections (CONNECTING -> OPEN -> gone) are tracked by address beside the
states, and stay open: pushes come on them. A push line may come on any
connection at any time, a reply awaited there included; it is printed (once
per message and user logged in here) and never taken for the reply. Time
comes in only as `TimerFired`.
"""
import collections
import enum
import json
import logging
from dataclasses import dataclass

from lib.clients.tcp_events import (
    CancelTimer, Close, Closed, Connect, ConnectFailed, Connected, ConnectTimeout, EndOfInput, Print,
    ReplyLine, Send, SetTimer, Stop, Timer, TimerFired, Typed)
from lib.clients.tcp_routing import EXIT, LOGIN_SERVER, REMEMBER_PUSHES, ClientCore, Step
from lib.loop.address import format_address
from lib.social import protocol
from lib.social.login_events import WRONG_SERVER

log = logging.getLogger("client")

REPLY_TIMEOUT = 30.0
LAUNCH_TIMEOUT = 300.0        # login/locate may wait for an app server to boot
CONNECT_TIMEOUT = 5.0
LISTEN_TIMEOUT = 2.0          # wait for the listen reply (connect included) before the next line
RELOCATE_DELAY, RELOCATE_TRIES = 0.25, 40   # locate naming the dead server again: retry for 10 s
NO_REPLY = "Error: no reply from server"
UNREADABLE = "Error: unreadable reply from server"


# -- states ----------------------------------------------------------------------------------
class State(enum.Enum):
    IDLE = "idle"                     # nothing on its way; the next typed line starts a request
    WAITING_REPLY = "waiting reply"   # a request's first attempt: connecting or sent
    RETRYING = "retrying"             # its second attempt; a failure now is reported
    RELOCATING = "relocating"         # a locate on behalf of the request: where is the app server?
    RELOCATE_WAIT = "relocate wait"   # locate named the dead server again: ask again soon
    LISTENING = "listening"           # a login's `listen` on its way; no request
    LINGERING = "lingering"           # input over; pushes may still arrive
    DONE = "done"                     # Stop sent; nothing more happens


IDLE, WAITING_REPLY, RETRYING, RELOCATING, RELOCATE_WAIT, LISTENING, LINGERING, DONE = State
REQUEST_WIRE = (WAITING_REPLY, RETRYING, RELOCATING)   # a request's line (or its locate) on its way
SERVING = (*REQUEST_WIRE, RELOCATE_WAIT)               # the states that have a request
ON_THE_WIRE = (*REQUEST_WIRE, LISTENING)               # the states that have an exchange
BUSY = (*SERVING, LISTENING)                           # typed lines wait their turn

TRANSITIONS = {
    # IDLE -> IDLE: a request over before it started (no token left to locate with)
    IDLE: {WAITING_REPLY, RELOCATING, LINGERING, DONE, IDLE},
    # only a login's reply leads to LISTENING; a login goes to the login server, never relocates
    WAITING_REPLY: {RETRYING, RELOCATING, IDLE, LISTENING},
    RETRYING: {IDLE, LISTENING},
    RELOCATING: {WAITING_REPLY, RETRYING, RELOCATE_WAIT, IDLE},
    RELOCATE_WAIT: {RELOCATING, IDLE},
    LISTENING: {IDLE},
    LINGERING: {DONE},
    DONE: set(),
}


class ConnState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"


class IllegalTransition(RuntimeError):
    pass


class IllegalEvent(RuntimeError):
    pass


@dataclass
class Request:
    """The user's request being served, with its failover history."""
    step: Step
    dead: tuple = None            # the app server that failed it: a locate naming it again waits
    relocations: int = 0          # locates that named `dead` again
    refused: bool = False         # an app server said the user is not its (the fleet moved them)


@dataclass
class Exchange:
    """One line on its way to one server (the request itself, a locate, a listen)."""
    address: tuple
    step: Step
    timer: Timer = Timer.REPLY    # REPLY: set when sent; LISTEN: set at the start (connect included)
    timeout: float = REPLY_TIMEOUT
    sent: bool = False            # False while the connection is being made
    armed: bool = False           # its timer is running


class ClientMachine:
    """Feed events with `feed(event)`; run the actions it returns, in order."""

    def __init__(self, login_address, linger=0.5, listen_timeout=LISTEN_TIMEOUT,
                 remember_pushes=REMEMBER_PUSHES):
        self.login_address = tuple(login_address)
        self.linger = linger
        self.listen_timeout = listen_timeout
        self.core = ClientCore(remember_pushes)
        self.state = IDLE
        self.lines = collections.deque()   # typed, not yet started
        self.eof = False
        self.request = None       # Request, in every state between IDLE and its end
        self.exchange = None      # Exchange, exactly in ON_THE_WIRE
        self.conns = {}           # address -> ConnState
        self.unreachable = False  # an `Error: cannot reach the server` line was printed

    def feed(self, event):
        """One event -> the list of actions it causes."""
        if self.state is DONE:
            return []
        handler = _ON_EVENT.get((self.state, type(event))) or _IN_ANY_STATE.get(type(event))
        if handler is None:
            raise IllegalEvent(f"{type(event).__name__} in {self.state.name}")
        return handler(self, event)

    def _goto(self, state):
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.state.name} -> {state.name}")
        self.state = state

    # -- input -------------------------------------------------------------------------
    def _typed_when_idle(self, event):
        self.lines.append(event.line)
        return self._next()

    def _typed_when_busy(self, event):
        self.lines.append(event.line)
        return []

    def _input_over(self, event):
        self.eof = True
        return self._next() if self.state is IDLE else []

    def _ignore(self, event):
        return []

    def _next(self):
        """In IDLE: start the next typed request, or finish at the end of input."""
        actions = []
        while self.state is IDLE:
            if not self.lines:
                if self.eof:
                    actions += self._finish()
                return actions
            step = self.core.route(self.lines.popleft())
            if step is EXIT:      # nothing after `exit` counts
                self.lines.clear()
                self.eof = True
            elif step is not None:
                actions += self._start(step)
        return actions

    def _finish(self):
        if not self.core.logins or self.linger <= 0:
            self._goto(DONE)      # nobody here to print a push for
            return [Stop(0)]
        self._goto(LINGERING)     # let pushes in flight arrive
        return [SetTimer(Timer.LINGER, self.linger)]

    def _stop(self, key):
        self._goto(DONE)
        return [Stop(0)]

    # -- requests ----------------------------------------------------------------------
    def _start(self, step):
        self.request = Request(step)
        if step.target == LOGIN_SERVER:
            return self._exchange(WAITING_REPLY, self.login_address, step)
        address = self.core.app_of(step.target)
        if address is None:
            return self._relocate()
        return self._exchange(WAITING_REPLY, address, step)

    def _relocate(self, key=None):
        """Ask the login server for the user's (new) application server."""
        user = self.request.step.target
        login = self.core.logins.get(user)
        if login is None:
            return [Print((protocol.NOT_LOGIN,))] + self._request_done()
        locate = Step("locate", f"locate {login.token}", LOGIN_SERVER, user, with_token=True)
        return self._exchange(RELOCATING, self.login_address, locate)

    def _exchange(self, state, address, step):
        self._goto(state)
        timeout = LAUNCH_TIMEOUT if step.name in ("login", "locate") else REPLY_TIMEOUT
        self.exchange = Exchange(address, step, timeout=timeout)
        return self._open_and_send()

    def _open_and_send(self):
        address = self.exchange.address
        conn = self.conns.get(address)
        if conn is ConnState.OPEN:
            return self._transmit()
        if conn is None:
            self.conns[address] = ConnState.CONNECTING
            return [Connect(address), SetTimer(ConnectTimeout(address), CONNECT_TIMEOUT)]
        return []                 # connecting already: sent once connected

    def _transmit(self):
        ex = self.exchange
        ex.sent = True
        actions = [Send(ex.address, ex.step.wire)]
        if ex.timer is Timer.REPLY:
            ex.armed = True
            actions.append(SetTimer(Timer.REPLY, ex.timeout))
        return actions

    @staticmethod
    def _disarm(ex):
        return [CancelTimer(ex.timer)] if ex.armed else []

    def _first_reply(self, step, reply):
        """WAITING_REPLY: `Not your application server` (the fleet moved the user)
        is a dead server that is alive: our locate tells the login server, may name it."""
        if step.target != LOGIN_SERVER and reply.get("message") == WRONG_SERVER:
            self.request.refused = True
            return self._relocate()
        return self._replied(step, reply)

    def _replied(self, step, reply):
        """WAITING_REPLY / RETRYING: the request's answer."""
        out = self.core.on_reply(step, reply)
        return self._print(out.lines) + self._request_done(out.listen)

    def _located(self, locate, reply):
        """RELOCATING: the login server says where the user's app server is."""
        request, step = self.request, self.request.step
        out = self.core.on_reply(locate, reply)
        address = self.core.app_of(step.target)
        if reply.get("status") != 0 or address is None:
            # e.g. Not login yet: the user must log in again
            return self._print(out.lines) + self._request_done()
        if address == request.dead and request.relocations < RELOCATE_TRIES:
            # The login server has not noticed the death yet (it learns of
            # it within ms, or by the heartbeat timeout): ask again.
            request.relocations += 1
            self._goto(RELOCATE_WAIT)
            return [SetTimer(Timer.RELOCATE, RELOCATE_DELAY)]
        # silently, on the new server; a move after a failure is the retry
        moved = request.dead or request.refused
        return self._exchange(RETRYING if moved else WAITING_REPLY, address, step)

    def _first_failure(self, address):
        """WAITING_REPLY failed: the login server may have closed an idle
        connection (send once more); an app server may have died (relocate)."""
        if self.request.step.target == LOGIN_SERVER:
            return self._exchange(RETRYING, self.login_address, self.request.step)
        self.request.dead = address
        return self._relocate()

    def _unreachable(self, address):
        self.unreachable = True
        line = f"Error: cannot reach the server at {format_address(*address)}"
        return [Print((line,))] + self._request_done()

    def _request_done(self, listen=None):
        self.request = None
        if listen is not None:
            return self._listen(listen)
        self._goto(IDLE)
        return self._next()

    # -- listen --------------------------------------------------------------------------------
    def _listen(self, step):
        """After a login: bind the user's app-server connection to them, so
        the next line (say, a send to them from here) finds it bound."""
        self._goto(LISTENING)
        self.exchange = Exchange(self.core.app_of(step.target), step, Timer.LISTEN,
                                 self.listen_timeout, armed=True)
        return [SetTimer(Timer.LISTEN, self.listen_timeout)] + self._open_and_send()

    def _listened(self, step, reply):
        if reply.get("status") != 0:
            log.warning("listen for %s: %s", step.user, reply.get("message"))
        return self._listen_over()

    def _listen_failed(self, address):
        log.warning("listen: %s unreachable; chat waits for the user's next request",
                    format_address(*address))
        return self._listen_over()

    def _listen_timeout(self, key):
        ex, self.exchange = self.exchange, None
        log.warning("listen for %s: no reply in %g s; going on", ex.step.user, self.listen_timeout)
        actions = []
        if ex.sent:               # its late reply would be taken for the next request's
            self.conns.pop(ex.address, None)
            actions.append(Close(ex.address))
        return actions + self._listen_over()

    def _listen_over(self):
        self._goto(IDLE)
        return self._next()

    # -- connections and replies ----------------------------------------------------------
    def _on_wire(self, address, sent=None):
        ex = self.exchange
        return ex is not None and ex.address == address and sent in (None, ex.sent)

    def _connected(self, event):
        if self.conns.get(event.address) is not ConnState.CONNECTING:
            raise IllegalEvent(f"Connected to {event.address}, not connecting")
        self.conns[event.address] = ConnState.OPEN
        actions = [CancelTimer(ConnectTimeout(event.address))]
        if self._on_wire(event.address, sent=False):
            actions += self._transmit()
        return actions

    def _connect_failed(self, event):
        if self.conns.pop(event.address, None) is not ConnState.CONNECTING:
            raise IllegalEvent(f"ConnectFailed to {event.address}, not connecting")
        log.debug("connect %s: %s", event.address, event.error)
        return [CancelTimer(ConnectTimeout(event.address))] + self._lost(event.address)

    def _connect_timeout(self, key):
        if self.conns.pop(key.address, None) is not ConnState.CONNECTING:
            raise IllegalEvent(f"connect timeout for {key.address}, not connecting")
        return [Close(key.address)] + self._lost(key.address)

    def _closed(self, event):
        self.conns.pop(event.address, None)
        return self._lost(event.address)

    def _reply_timeout(self, key):
        address = self.exchange.address
        self.conns.pop(address, None)
        return [Print((NO_REPLY,)), Close(address)] + self._lost(address)

    def _lost(self, address):
        """A connection failed: fatal to the exchange on it, if any."""
        if not self._on_wire(address):
            return []
        ex, self.exchange = self.exchange, None
        return self._disarm(ex) + _ON_FAILURE[self.state](self, address)

    def _line(self, event):
        """A line from a server: a push (printed, whatever is awaited), or the reply awaited."""
        obj = _decode(event.raw)
        if protocol.is_push(obj):
            return self._print(self.core.on_push(obj))
        if not self._on_wire(event.address, sent=True):
            log.debug("unexpected line from %s ignored", event.address)
            return []
        ex, self.exchange = self.exchange, None
        return self._disarm(ex) + _ON_REPLY[self.state](self, ex.step, obj)

    # -- timers ------------------------------------------------------------------------------
    def _timer(self, event):
        key = event.key
        handler = _ON_KEYED_TIMER.get(type(key)) or _ON_TIMER.get((self.state, key))
        if handler is None:
            raise IllegalEvent(f"timer {key} in {self.state.name}")
        return handler(self, key)

    @staticmethod
    def _print(lines):
        return [Print(tuple(lines))] if lines else []


def _decode(raw):
    try:
        reply = json.loads(raw.decode("utf-8"))
    except ValueError:
        reply = None
    return reply if isinstance(reply, dict) else protocol.fail(UNREADABLE)


M = ClientMachine
# Typed lines and the end of input, by state.
_ON_EVENT = {
    (IDLE, Typed): M._typed_when_idle,
    (IDLE, EndOfInput): M._input_over,
    **{(state, Typed): M._typed_when_busy for state in BUSY},
    **{(state, EndOfInput): M._input_over for state in BUSY},
    (LINGERING, Typed): M._ignore,            # after `exit`
    (LINGERING, EndOfInput): M._ignore,
}
# Events that may come in any state; their handlers look at the state.
_IN_ANY_STATE = {
    Connected: M._connected, ConnectFailed: M._connect_failed, Closed: M._closed,
    ReplyLine: M._line, TimerFired: M._timer,
}
# The answer to the line on the wire, and its loss, by state.
_ON_REPLY = {WAITING_REPLY: M._first_reply, RETRYING: M._replied, RELOCATING: M._located,
             LISTENING: M._listened}
_ON_FAILURE = {WAITING_REPLY: M._first_failure, RETRYING: M._unreachable, RELOCATING: M._unreachable,
               LISTENING: M._listen_failed}
# Timers: per connection in any state; the others by state.
_ON_KEYED_TIMER = {ConnectTimeout: M._connect_timeout}
_ON_TIMER = {
    **{(state, Timer.REPLY): M._reply_timeout for state in REQUEST_WIRE},
    (RELOCATE_WAIT, Timer.RELOCATE): M._relocate,
    (LISTENING, Timer.LISTEN): M._listen_timeout,
    (LINGERING, Timer.LINGER): M._stop,
}
