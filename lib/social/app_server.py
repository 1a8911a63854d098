"""The application server's driver: carries out an `AppCore`'s actions on the
client listener, the link to the login server, the reactor's timers and the
broker link. It only moves bytes; every decision is in lib/social/app_core.py.
"""
import logging
import os
import socket
import time

from lib.loop.timers import TimerTable, timer_handlers
from lib.loop.transports import LineConnection
from lib.social import app_core as core
from lib.social.limits import Limits
from lib.social import applink, protocol
from lib.social.request_server import RequestServer

log = logging.getLogger("app")

CONNECT_TIMEOUT = 5.0     # seconds for one connect attempt to the login server
LINK_POOL = "login-link"  # its own worker, so a slow connect never holds the broker's


def make_broker_link(reactor, address, on_message, on_state):
    """A started BrokerLink to `address` with the credentials of our
    environment (NP_BROKER_USER/NP_BROKER_PASSWORD), or None without stomp.py
    (every send then answers that the message service is unavailable)."""
    try:
        from lib.messaging import broker
    except ImportError:    # no stomp.py
        return None
    from lib.messaging import credentials
    try:
        login = credentials.from_env(os.environ)
    except credentials.CredentialsError as e:
        log.error("no broker link: %s", e)
        return None
    host, port = broker.parse_address(address)
    link = broker.BrokerLink(reactor, host, port, name="appserver", on_message=on_message,
                             on_state=on_state, credentials=login)
    link.start()
    return link


def open_link(address):
    """Connect to the login server (blocking: runs on a worker, so a name
    lookup or an unanswered SYN never stalls the loop)."""
    sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
    # No Nagle: a request written right after a heartbeat (which gets no
    # reply, so its ACK is delayed ~40 ms) must not wait for it.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class AppServer:
    """Listens for clients at once; `start()` begins connecting to the login
    server at `login` = (host, port). `status` is the exit status once the
    core has asked to exit (the reactor is then stopped)."""

    def __init__(self, reactor, server_id, login, secret, host="0.0.0.0", port=0,
                 advertise=None, broker=None, conn_idle=300.0, limits=None):
        self.reactor, self.login = reactor, login
        self.limits = limits or Limits()
        self.front = RequestServer(reactor, host, port, self._request, conn_idle, limits=self.limits)
        self.address = self.front.address
        advertise = advertise if advertise is not None else self.address[0]
        self.publisher = make_broker_link(
            reactor, broker, lambda destination, body, headers: self._handle(
                core.BrokerMessage(destination, body, headers)),
            lambda up: self._handle(core.BrokerState(up))) if broker else None
        self.core = core.AppCore(server_id, secret, advertise, self.address[1],
                                 broker=self.publisher is not None, limits=self.limits)
        self.timers = TimerTable(reactor, self._timer)
        self.link = None
        self.status = None
        self._watched = set()     # client connections whose close the core hears of
        reactor.add_pool(LINK_POOL, 1)

    def start(self):
        self._handle(core.Start(self.reactor.clock()))

    def close(self):
        """Release everything once the loop has stopped; the core hears no more."""
        for key in core.TimerKey:
            self.timers.cancel(key)
        if self.publisher:
            self.publisher.close()
        if self.link:
            self.link.on_close = None
            self.link.close()
        self.front.close()

    # -- events in -------------------------------------------------------------------
    def _handle(self, event):
        for action in self.core.handle(event):
            _DO[type(action)](self, action)

    def _request(self, conn, request):
        if conn not in self._watched:
            self._watch(conn)
        for action in self.core.client_request(conn, request):   # ClientRequest, made by no one
            _DO[type(action)](self, action)

    def _watch(self, conn):
        # RequestServer owns the connection's on_close (its client set):
        # chain ours behind it.
        self._watched.add(conn)
        theirs = conn.on_close

        def closed(c):
            self._watched.discard(c)
            if theirs:
                theirs(c)
            self._handle(core.ClientClosed(c))
        conn.on_close = closed

    def _timer(self, key):
        self._handle(core.TimerFired(key))

    def _connect_done(self, sock, error):
        if error is not None:
            self._handle(core.ConnectFailed(self.reactor.clock(), str(error)))
            return
        self.link = LineConnection(self.reactor, sock, self._link_line, on_close=self._link_closed,
                                   max_line=applink.MAX_LINE, quiet=None)
        self._handle(core.LinkConnected())

    def _link_line(self, conn, raw):
        for action in self.core.link_line(raw):   # LinkLine, made by no one
            _DO[type(action)](self, action)

    def _link_closed(self, conn):
        self._handle(core.LinkLost())

    # -- actions out -----------------------------------------------------------------
    def _connect(self, action):
        self.reactor.run_in_thread(open_link, self.login, done=self._connect_done, pool=LINK_POOL)

    def _send_link(self, action):
        self.link.send(action.line)

    def _close_link(self, action):
        self.link.close()

    def _reply(self, action):
        reply = action.reply
        action.conn.send(reply if type(reply) is bytes else protocol.encode(reply))

    def _relay(self, action):
        action.conn.pause()
        self.link.send(action.line)

    def _answer(self, action):
        self._reply(action)
        action.conn.resume()

    def _pause(self, action):
        action.conn.pause()

    def _resume(self, action):
        action.conn.resume()

    def _publish(self, action):
        conn = action.conn
        # A personal message waits in the broker for its recipient's app
        # server at most --message-ttl (docs/protocol.md §7).
        expires = time.time() + self.limits.message_ttl if action.persistent else None
        self.publisher.publish(action.destination, action.body, action.persistent,
                               lambda ok, error: self._handle(core.Published(conn, ok, error)),
                               expires=expires)

    def _subscribe(self, action):
        waiter, destination = action.waiter, action.destination
        self.publisher.subscribe(
            destination, ack=action.ack, headers=action.headers,
            done=lambda ok, error: self._handle(core.Subscribed(waiter, destination, ok)))

    def _unsubscribe(self, action):
        self.publisher.unsubscribe(action.destination)

    def _ack(self, action):
        self.publisher.ack(action.headers)

    def _push(self, action):
        conn, token = action.conn, action.token
        conn.send(action.line, on_sent=lambda: self._handle(core.Written(conn, token)))

    def _exit(self, action):
        self.status = action.status
        self.reactor.stop()


_DO = {
    core.Connect: AppServer._connect, **timer_handlers(),
    core.SendLink: AppServer._send_link, core.CloseLink: AppServer._close_link,
    core.Reply: AppServer._reply, core.Pause: AppServer._pause, core.Resume: AppServer._resume,
    core.Relay: AppServer._relay, core.Answer: AppServer._answer,
    core.KeepOpen: lambda server, action: action.conn.keep_open(),
    core.Publish: AppServer._publish, core.Exit: AppServer._exit,
    core.Subscribe: AppServer._subscribe, core.Unsubscribe: AppServer._unsubscribe,
    core.Ack: AppServer._ack, core.Push: AppServer._push,
}
