"""STOMP publish/subscribe over ActiveMQ, driven by our reactor (lib/loop/reactor.py).

One `BrokerLink` is one STOMP 1.2 connection (stomp.py) that reconnects and
resubscribes by itself. Threads and who does what:

- the reactor thread owns every bit of state here; all callbacks of ours
  (`on_message`, `on_state`, `done`) run on it;
- stomp.py's receiver thread (and its heartbeat thread) only ever call
  `reactor.call_soon_threadsafe`, so they never wait on the application;
- the reactor's off-loop workers do everything that can block on the
  broker: the TCP connect, and every frame write (stomp.py writes with a
  blocking `sendall`, which stalls when the broker stops reading). Frames go
  out in order: one write job per link at a time takes all queued frames.

The link logs in with the deployment's broker credentials (an object with
`.user` and `.password`, lib/messaging/credentials.py). A broker that
refuses them (an ERROR frame answering CONNECT) is logged once, as
"broker refused our credentials (user NAME): ...", and retried with the
normal backoff; the line comes again only after a connection succeeded or
the refusal changed.

A publish is confirmed by the broker's RECEIPT (for a persistent message,
ActiveMQ answers it after the message is stored), so `done(True, None)`
means the broker has the message. A publish that cannot be confirmed gets
`done(False, reason)` exactly once: link down, write failed, ERROR from the
broker, or no receipt in time.

Subscriptions are `ack="auto"` (the broker forgets a message once it is
written to us) or `ack="client-individual"`: the broker keeps each message
until `ack(headers)` acknowledges it, on the connection it came on. The
headers `on_message` gets carry, under DELIVERY, which connection and
subscription the message came on. Unacked messages go back to the broker
when that connection dies or is closed (acks still queued then are lost)
and when the subscription is unsubscribed (ActiveMQ's behaviour), and the
broker delivers them again, with the same message-id, to the next
subscriber; an ack that comes too late for them is a silent no-op. So an
application acks a message only once it is done with it, and after
`on_state(False)` forgets what it had not acked: it comes again.

Destinations are named by the social service (lib/social/commands.py,
`Context.new_queue` / `new_topic`: 128 random bits each), so nobody can read
a user's messages by guessing `/queue/<username>`. (ActiveMQ's wildcard
subscriptions, `/queue/np.u.>`, still match every name: what keeps them out
is that only servers, logged in, reach the broker.)

`BrokerLink` gets its connections from `connection_factory(host, port)`
(`stomp_connection` unless a test passes a fake); it uses only `set_listener`,
`connect`, `send`, `subscribe`, `unsubscribe`, `ack`, `disconnect`,
`is_connected` and `transport`.
"""
import collections
import dataclasses
import itertools
import logging
import socket

import stomp

from lib.loop import address

log = logging.getLogger("broker")

# stomp.py logs every refused connect (we retry every 2 s while the broker is
# down) and a traceback for every failed write; BrokerLink reports the same
# events once, as link state changes. An application may lower this again.
logging.getLogger("stomp.py").setLevel(logging.CRITICAL)

HEARTBEATS = (4000, 4000)      # ms: a dead broker is noticed within ~6 s
BACKOFF_MIN, BACKOFF_MAX = 0.2, 2.0
CONNECT_TIMEOUT = 5.0          # TCP connect, in the worker
CONNECTED_TIMEOUT = 10.0       # STOMP CONNECTED frame after the TCP connect

ACK_MODES = ("auto", "client-individual")
# SUBSCRIBE headers that are the link's own (ack, id and receipts are set by it).
RESERVED_SUB_HEADERS = frozenset(("destination", "id", "ack", "receipt"))
# Words of an ERROR answering CONNECT that say the login was refused (ActiveMQ:
# "User name [x] or password is invalid.", "User x is not authorized ...").
AUTH_REFUSAL_WORDS = ("password", "user name", "authenticat", "not authorized", "security")
DELIVERY = "_np_delivery"      # key on_message's headers get: a Delivery


@dataclasses.dataclass(frozen=True, eq=False)
class Delivery:
    """Where a message came from, for `ack()`: the link, the connection
    generation, the subscription id, and the STOMP 1.2 `ack` header (None
    for ack=auto: nothing to acknowledge). Not a string, so no header a
    publisher sets can pass for one."""
    link: object
    gen: int
    subscription: str
    ack_id: str | None

    def __repr__(self):
        return "Delivery(gen=%d, subscription=%r, ack=%r)" % (self.gen, self.subscription, self.ack_id)


@dataclasses.dataclass(frozen=True)
class Subscription:
    """One destination's subscription, as sent again after every reconnect."""
    id: str
    ack: str
    headers: dict


def parse_address(text, default_port=61613):
    """The broker's address; STOMP's port 61613 unless one is given."""
    return address.parse_address(text, default_port)


def stomp_connection(host, port):
    """A stomp.py STOMP 1.2 connection to host:port, not opened yet. It makes
    one connect attempt: BrokerLink does the retrying, with its backoff."""
    return stomp.Connection12(
        [(host, port)], heartbeats=HEARTBEATS, timeout=CONNECT_TIMEOUT,
        reconnect_attempts_max=1, reconnect_sleep_initial=0, reconnect_sleep_jitter=0,
        vhost=host)


class _Listener(stomp.ConnectionListener):
    """Runs on stomp.py's threads: forwards each event to the reactor, tagged
    with the connection's generation so events of a dead connection are
    recognised. Never blocks, never raises into stomp.py (an exception there
    would close the connection)."""

    def __init__(self, link, gen):
        self.link, self.gen = link, gen

    def _post(self, method, *args):
        try:
            self.link.reactor.call_soon_threadsafe(method, self.gen, *args)
        except Exception:
            log.exception("broker: could not hand an event to the reactor")

    def on_connected(self, frame):
        self._post(self.link._on_connected)

    def on_disconnected(self):
        self._post(self.link._on_lost, "broker connection lost")

    def on_heartbeat_timeout(self):
        self._post(self.link._on_lost, "broker heartbeat timeout")

    def on_error(self, frame):
        self._post(self.link._on_error, dict(frame.headers), frame.body)

    def on_receipt(self, frame):
        self._post(self.link._on_receipt, frame.headers.get("receipt-id"))

    def on_message(self, frame):
        self._post(self.link._on_message, dict(frame.headers), frame.body)


class BrokerLink:
    """One STOMP connection owned by a reactor; reconnects and resubscribes by itself."""

    def __init__(self, reactor, host="127.0.0.1", port=61613, on_message=None,
                 on_state=None, name="np", connection_factory=stomp_connection,
                 credentials=None):
        self.reactor, self.host, self.port, self.name = reactor, host, port, name
        self.on_message, self.on_state = on_message, on_state
        self.credentials = credentials   # .user, .password; None: no login headers
        self._new_connection = connection_factory
        self._conn = None            # current stomp.Connection12 (connecting or up)
        self._gen = 0                # generation of _conn; events of older ones are stale
        self._up = False
        self._closed = False
        self._started = False
        self._backoff = BACKOFF_MIN
        self._retry_timer = None
        self._connect_timer = None
        self._ids = itertools.count(1)
        self._outbox = collections.deque()   # (method name, args, kwargs) for the writer
        self._writing = None                 # generation of the write job in flight
        self._publishes = {}                 # receipt id -> [done, timer]
        self._held = {}                      # receipt id -> (destination, body, headers): made
                                             # while connecting, sent once connected
        self._subs = {}                      # destination -> Subscription
        self._sub_receipts = {}              # receipt id -> (destination, subscription id)
        self._sub_waiters = {}               # destination -> [done, ...] until confirmed
        self._confirmed = set()              # subscription ids confirmed on this connection
        self._unacked = {}                   # ack id -> subscription id, on this connection
        self._refusal = None                 # refusal line logged since the last CONNECTED

    # -- public API ----------------------------------------------------------
    @property
    def connected(self):
        return self._up

    def start(self):
        """Begin connecting (non-blocking); retries with backoff until close()."""
        if self._started or self._closed:
            return
        self._started = True
        self._connect()

    def publish(self, destination, body, persistent, done, timeout=5.0, expires=None):
        """Send `body`; `done(ok, error)` runs on the reactor once the broker's
        RECEIPT arrives, or with ok=False on failure or after `timeout` s.
        `expires`: the time (Unix seconds) after which the broker drops the
        message undelivered."""
        if self._closed:
            self.reactor.call_soon(done, False, "broker link closed")
            return
        if not self._started:
            self.reactor.call_soon(done, False, "broker not connected")
            return
        rid = "%s-p%d" % (self.name, next(self._ids))
        headers = {"receipt": rid}
        if persistent:
            headers["persistent"] = "true"
        if expires is not None:
            headers["expires"] = str(int(expires * 1000))   # STOMP/JMS: milliseconds
        timer = self.reactor.call_later(timeout, self._publish_timeout, rid, timeout)
        self._publishes[rid] = [done, timer]
        if not self._up:
            # Connecting (a new app server, a broker restart): it goes out
            # once connected, or fails at its timeout never having been sent.
            self._held[rid] = (destination, body, headers)
            return
        self._queue("send", destination, body, headers=headers)

    def subscribe(self, destination, done=None, ack="auto", headers=None):
        """Subscribe; idempotent, and restored after every reconnect with the
        same `ack` mode (ACK_MODES) and extra SUBSCRIBE `headers` (e.g.
        {"activemq.prefetchSize": "500"}). Optional `done(ok, error)` runs
        once the broker has confirmed the subscription (with a receipt), so a
        publish after it is not missed; while the link is down that waits for
        the next connection. ValueError for an unknown mode, a reserved
        header, or another mode/headers than the destination's current
        subscription has."""
        headers = dict(headers or {})
        if ack not in ACK_MODES:
            raise ValueError("ack must be one of %s, not %r" % (", ".join(ACK_MODES), ack))
        if RESERVED_SUB_HEADERS & set(headers):
            raise ValueError("subscribe(): headers %s are set by the link"
                             % sorted(RESERVED_SUB_HEADERS & set(headers)))
        current = self._subs.get(destination)
        if current is not None and (current.ack, current.headers) != (ack, headers):
            raise ValueError("%s is subscribed with ack=%s headers=%r already; unsubscribe first"
                             % (destination, current.ack, current.headers))
        if self._closed:
            if done:
                self.reactor.call_soon(done, False, "broker link closed")
            return
        if done:
            self._sub_waiters.setdefault(destination, []).append(done)
        if current is not None:
            if self._up and current.id in self._confirmed:
                self._finish_sub(destination, True, None)
            return
        self._subs[destination] = Subscription("%s-s%d" % (self.name, next(self._ids)), ack, headers)
        if self._up:
            self._send_subscribe(destination)

    def unsubscribe(self, destination):
        """Forget `destination`; messages already in flight for it are dropped.
        For ack=client-individual, the broker takes back what was not acked
        (ActiveMQ) and redelivers it to the next subscriber; acking it later
        is a no-op."""
        sub = self._subs.pop(destination, None)
        if sub is None:
            return
        self._confirmed.discard(sub.id)
        # ActiveMQ answers an ACK for a subscription it no longer has with an
        # ERROR, which would cost the whole connection.
        for ack_id in [a for a, sid in self._unacked.items() if sid == sub.id]:
            del self._unacked[ack_id]
        self._finish_sub(destination, False, "unsubscribed")
        if self._up:
            self._queue("unsubscribe", sub.id)

    def ack(self, headers):
        """Acknowledge one message of an ack=client-individual subscription:
        `headers` are those `on_message` got with it. The ACK goes out behind
        every frame queued before it. A silent no-op when the broker has
        nothing to take: the connection the message came on has died since,
        its subscription is gone, it was acked already, or it came with
        ack=auto. ValueError for headers that are not from this link's
        `on_message`."""
        delivery = headers.get(DELIVERY)
        if not isinstance(delivery, Delivery) or delivery.link is not self:
            raise ValueError("ack(): the headers are not from this link's on_message")
        if delivery.ack_id is None or delivery.gen != self._gen or not self._up:
            return
        if self._unacked.pop(delivery.ack_id, None) != delivery.subscription:
            return
        self._queue("ack", delivery.ack_id)

    def close(self):
        """Disconnect for good; outstanding publishes get done(False, ...)."""
        if self._closed:
            return
        self._closed = True
        self._up = False
        for timer in (self._retry_timer, self._connect_timer):
            if timer:
                timer.cancel()
        self._fail_all("broker link closed", held_too=True)
        for destination in list(self._sub_waiters):
            self._finish_sub(destination, False, "broker link closed")
        self._drop_conn(graceful=True)

    # -- connecting ----------------------------------------------------------
    def _connect(self):
        self._retry_timer = None
        if self._closed:
            return
        self._gen += 1
        gen = self._gen
        # Building the connection opens nothing; connect() below does the I/O.
        conn = self._new_connection(self.host, self.port)
        conn.set_listener("np", _Listener(self, gen))
        self._conn = conn
        # wait=False: the worker does the TCP connect and writes the STOMP
        # frame; CONNECTED arrives through the listener. stomp.py's own wait
        # has no bound, our timer has.
        self.reactor.run_in_thread(
            _open, conn, self.credentials, done=lambda _r, err: self._connect_done(gen, err))
        self._connect_timer = self.reactor.call_later(
            CONNECTED_TIMEOUT, self._on_lost, gen, "no CONNECTED from broker")

    def _connect_done(self, gen, err):
        if err is not None and gen == self._gen and not self._closed:
            self._on_lost(gen, "connect failed: %s" % (str(err) or type(err).__name__))

    def _on_connected(self, gen):
        if gen != self._gen or self._closed or self._up:
            return
        if self._connect_timer:
            self._connect_timer.cancel()
            self._connect_timer = None
        self._up = True
        self._backoff = BACKOFF_MIN
        self._refusal = None
        log.info("broker %s: connected to %s:%d", self.name, self.host, self.port)
        # Subscriptions first: a publish made from on_state(True) follows them.
        for destination in self._subs:
            self._send_subscribe(destination)
        held, self._held = self._held, {}
        for rid, (destination, body, headers) in held.items():
            self._queue("send", destination, body, headers=headers)
        if self.on_state:
            self.on_state(True)

    def _on_lost(self, gen, reason):
        """The connection `gen` is gone (or never came up): fail what was in
        flight on it, tell the application, and retry after a backoff."""
        if gen != self._gen or self._closed:
            return
        was_up, self._up = self._up, False
        if self._connect_timer:
            self._connect_timer.cancel()
            self._connect_timer = None
        self._gen += 1   # events still coming from the old connection are stale now
        self._outbox.clear()
        self._sub_receipts.clear()
        self._confirmed.clear()
        self._unacked.clear()    # the broker takes them back and redelivers them
        self._fail_all(reason)
        self._drop_conn(graceful=False)
        if was_up:
            log.warning("broker %s: %s; reconnecting", self.name, reason)
            if self.on_state:
                self.on_state(False)
        else:
            log.debug("broker %s: %s; retry in %.1f s", self.name, reason, self._backoff)
        self._retry_timer = self.reactor.call_later(self._backoff, self._connect)
        self._backoff = min(BACKOFF_MAX, self._backoff * 2)

    def _drop_conn(self, graceful):
        conn, self._conn = self._conn, None
        if conn is not None:
            self._run_off_loop(_shut, conn, graceful)

    def _run_off_loop(self, fn, *args, done=None):
        try:
            self.reactor.run_in_thread(fn, *args, done=done)
        except RuntimeError:   # the reactor's pool is already shut down
            if done is None:
                fn(*args)      # only at process exit: closing a socket is quick
            else:
                raise

    # -- writing ---------------------------------------------------------------
    def _queue(self, method, *args, **kwargs):
        self._outbox.append((method, args, kwargs))
        self._pump()

    def _pump(self):
        if not self._up or not self._outbox or self._writing == self._gen:
            return
        gen, batch = self._gen, list(self._outbox)
        self._outbox.clear()
        self._writing = gen
        self._run_off_loop(_write, self._conn, batch,
                           done=lambda _r, err: self._written(gen, err))

    def _written(self, gen, err):
        if self._writing == gen:
            self._writing = None
        if err is not None:
            self._on_lost(gen, "write failed: %s" % (str(err) or type(err).__name__))
        else:
            self._pump()

    def _send_subscribe(self, destination):
        sub = self._subs[destination]
        rid = "%s-r%d" % (self.name, next(self._ids))
        self._sub_receipts[rid] = (destination, sub.id)
        self._queue("subscribe", destination, sub.id, ack=sub.ack,
                    headers=dict(sub.headers, receipt=rid))

    def _sub_id(self, destination):
        sub = self._subs.get(destination)
        return sub and sub.id

    # -- events from the broker (on the reactor) ------------------------------
    def _on_receipt(self, gen, rid):
        entry = self._publishes.pop(rid, None)
        if entry is not None:
            entry[1].cancel()
            entry[0](True, None)
            return
        sub = self._sub_receipts.pop(rid, None)
        if sub is not None and gen == self._gen and self._sub_id(sub[0]) == sub[1]:
            self._confirmed.add(sub[1])
            self._finish_sub(sub[0], True, None)

    def _on_message(self, gen, headers, body):
        destination = headers.get("destination", "")
        sub = self._subs.get(destination)
        if self._closed or sub is None or sub.id != headers.get("subscription"):
            return
        ack_id = None
        if sub.ack != "auto":
            # Not acked on a connection that has died: the broker gives it
            # back and sends it again on the next one; passing it on now
            # would only make a duplicate that cannot be acked.
            if gen != self._gen:
                return
            ack_id = headers.get("ack")
            if ack_id is None:
                log.warning("broker %s: MESSAGE %s without an ack header: cannot be acked",
                            self.name, headers.get("message-id"))
            else:
                self._unacked[ack_id] = sub.id
        # An ack=auto message is the broker's no more even if the connection
        # has died since: pass it on as long as we still want the destination.
        headers[DELIVERY] = Delivery(self, gen, sub.id, ack_id)
        if self.on_message:
            self.on_message(destination, body, headers)

    def _on_error(self, gen, headers, body):
        text = (headers.get("message") or body or "unknown").strip()
        reason = "broker error: %s" % text
        rid = headers.get("receipt-id")
        entry = self._publishes.pop(rid, None) if rid else None
        if entry is not None:
            # ActiveMQ names the failed frame; only that publish failed.
            entry[1].cancel()
            entry[0](False, reason)
            return
        if gen == self._gen and not self._up and not self._closed:
            # The answer to our CONNECT: the broker refused us. Said once, not
            # at every retry; a misconfiguration needs a person, not a log flood.
            line = self._refusal_line(text)
            if line != self._refusal:
                self._refusal = line
                log.error("%s (link %s; retrying every %g s at most)", line, self.name, BACKOFF_MAX)
            self._on_lost(gen, reason)
            return
        # Anything else may leave the connection unusable (STOMP says the
        # server closes after ERROR): start over.
        log.warning("broker %s: %s", self.name, reason)
        self._on_lost(gen, reason)

    def _refusal_line(self, text):
        if not any(word in text.lower() for word in AUTH_REFUSAL_WORDS):
            return "broker refused the connection: %s" % text
        user = self.credentials.user if self.credentials is not None else None
        who = "user %s" % user if user else "no user given"
        return "broker refused our credentials (%s): %s" % (who, text)

    # -- bookkeeping -------------------------------------------------------------
    # Failure and subscription callbacks go through call_soon so they never
    # run inside the caller's own publish()/subscribe()/close().
    def _finish_sub(self, destination, ok, error):
        for done in self._sub_waiters.pop(destination, ()):
            self.reactor.call_soon(done, ok, error)

    def _publish_timeout(self, rid, timeout):
        entry = self._publishes.pop(rid, None)
        if entry is not None:
            why = "broker not connected" if self._held.pop(rid, None) else \
                "no receipt from broker within %g s" % timeout
            entry[0](False, why)

    def _fail_all(self, reason, held_too=False):
        """Fail the publishes sent on a connection that is gone (whether the
        broker stored them is unknown); held ones wait for the next, unless
        `held_too` (the link is closing)."""
        keep = {} if held_too else {rid: self._publishes[rid] for rid in self._held}
        if held_too:
            self._held.clear()
        pending, self._publishes = self._publishes, keep
        for rid, (done, timer) in pending.items():
            if rid in keep:
                continue
            timer.cancel()
            self.reactor.call_soon(done, False, reason)


# -- off-loop work (worker threads) ---------------------------------------------
def _open(conn, credentials=None):
    """TCP connect and STOMP frame (with login and passcode when there are
    credentials); CONNECTED or ERROR arrives through the listener."""
    login = {} if credentials is None else {"username": credentials.user,
                                            "passcode": credentials.password}
    conn.connect(wait=False, **login)
    try:   # stomp.py leaves Nagle on: a frame behind an unanswered one waits ~40 ms
        conn.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


def _write(conn, batch):
    """Write queued frames in order; raises if the socket fails."""
    for method, args, kwargs in batch:
        getattr(conn, method)(*args, **kwargs)


def _shut(conn, graceful):
    """Close a connection; `graceful` says DISCONNECT first so the broker
    does not log an aborted session."""
    try:
        if graceful and conn.is_connected():
            conn.disconnect()
    except Exception:
        pass
    try:
        conn.transport.disconnect_socket()
    except Exception:
        pass
