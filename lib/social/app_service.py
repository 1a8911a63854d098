"""An application server's service: stateless, one reactor.

Each client request is relayed verbatim to the login server over the
internal link (one round trip; the login server's store applies it
atomically, in priority order). For send/send-group the answer carries a
broker destination: the message is published through ActiveMQ and the
client hears `Success!` only after the broker's receipt. A client
connection handles one request at a time, so replies keep their order.
"""
import itertools
import logging

from lib.social import applink, protocol
from lib.social.protocol import fail
from lib.loop.transports import LineConnection
from lib.social.request_server import RequestServer

log = logging.getLogger("app")

UNAVAILABLE = "Service unavailable, try again"
BROKER_DOWN = "Message service unavailable, try again later"


class AppService:
    def __init__(self, reactor, server_id, publisher=None, conn_idle=300.0, on_link_lost=None):
        self.reactor, self.id = reactor, server_id
        self.publisher = publisher        # lib.messaging.broker.BrokerLink or None
        self.conn_idle = conn_idle
        self.on_link_lost = on_link_lost
        self.link = None
        self.ready = False
        self.pending = {}                 # request id -> client connection
        self._early = []                  # (conn, request) that came before the welcome
        self._ids = itertools.count(1)

    def listen(self, host, port):
        self.front = RequestServer(self.reactor, host, port, self._client_request, self.conn_idle)
        return self.front.address

    def attach(self, sock, secret, advertise_host, port):
        """Use `sock` (connected to the login server's internal port) as the link."""
        self.link = LineConnection(self.reactor, sock, self._link_line, on_close=self._link_closed,
                                   max_line=applink.MAX_LINE, quiet=None)
        self.link.send(applink.encode(op="hello", secret=secret, id=self.id,
                                      host=advertise_host, port=port))
        self._heartbeat()

    def _heartbeat(self):
        if self.link is None or self.link.closed:
            return
        self.link.send(applink.encode(op="ping"))
        self.reactor.call_later(applink.HEARTBEAT, self._heartbeat)

    # -- clients ---------------------------------------------------------------------
    def _client_request(self, conn, request):
        if not self.ready:
            if self.link is None or self.link.closed:
                conn.send(protocol.encode(fail(UNAVAILABLE)))
                return
            # Registered but not yet welcomed: the login server may already
            # have sent this client here. Hold the request until the welcome.
            conn.pause()
            self._early.append((conn, request))
            return
        self._relay(conn, request)

    def _relay(self, conn, request):
        rid = next(self._ids)
        self.pending[rid] = conn
        conn.pause()
        self.link.send(applink.encode(op="cmd", id=rid, line=" ".join((request.name,) + request.words)))

    def _answer(self, conn, reply):
        conn.send(protocol.encode(reply))
        conn.resume()

    # -- the link --------------------------------------------------------------------
    def _link_line(self, conn, raw):
        try:
            msg = applink.decode(raw)
        except ValueError:
            log.error("bad message from the login server")
            return
        op = msg["op"]
        if op == "welcome":
            self.ready = True
            log.info("%s registered with the login server", self.id)
            early, self._early = self._early, []
            for client, request in early:
                if not client.closed:
                    self._relay(client, request)
        elif op == "rejected":
            log.error("login server rejected us: %s", msg.get("reason"))
        elif op == "shutdown":
            conn.close()
        elif op == "reply":
            client = self.pending.pop(msg.get("id"), None)
            if client is not None:
                self._deliver(client, msg.get("reply") or fail(UNAVAILABLE), msg.get("publish"))

    def _deliver(self, client, reply, publish):
        if not publish or reply.get("status") != 0:
            self._answer(client, reply)
            return
        destination, body, persistent = publish
        if self.publisher is None:
            self._answer(client, fail(BROKER_DOWN))
            return

        def published(ok, error):
            if not ok:
                log.warning("publish to broker failed: %s", error)
            self._answer(client, reply if ok else fail(BROKER_DOWN))

        self.publisher.publish(destination, body, persistent, published)

    def _link_closed(self, conn):
        self.ready = False
        early, self._early = self._early, []
        for client, _ in early:
            self._answer(client, fail(UNAVAILABLE))
        for client in self.pending.values():
            self._answer(client, fail(UNAVAILABLE))
        self.pending.clear()
        log.warning("%s lost its login server link", self.id)
        if self.on_link_lost:
            self.on_link_lost()
