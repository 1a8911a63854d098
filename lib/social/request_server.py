"""Client-facing TCP service shared by the login and application servers:
accepts connections, frames lines, answers `Bad request` for over-long or
non-UTF-8 lines, and hands each decoded request to `on_request(conn, request)`.

What one source address may cost is bounded here (lib/social/limits.py):
connections at once (`max_conns_per_address`: the one over it is answered
TOO_MANY and closed), time to the first request (`first_request_timeout`),
requests per loop turn (`pipeline_lines`) and unsent output before its
requests stop being read (`max_unsent`; `max_output` drops it)."""
import collections

from lib.loop.listener import BurstLog, refuse
from lib.loop.transports import LineConnection, Listener
from lib.social import protocol
from lib.social.limits import Limits

TOO_MANY = "Too many connections from your address"


def answer(conn, reply):
    """The one way to answer a client: queue the reply (it leaves after the
    turn's commit) and read the connection's next request, if it was paused."""
    conn.send(protocol.encode(reply))
    conn.resume()


class RequestServer:
    def __init__(self, reactor, host, port, on_request, conn_idle=300.0, limits=None,
                 listener=Listener):
        """`listener(reactor, host, port, accept)`: what accepts; tests may
        pass their own and call `accept(sock, addr)`."""
        self.reactor, self.on_request, self.conn_idle = reactor, on_request, conn_idle
        self.limits = limits or Limits()
        self.clients = set()
        self.per_address = collections.Counter()   # source address -> open connections
        self._too_many = protocol.encode(protocol.fail(TOO_MANY))
        self.listener = listener(reactor, host, port, self.accept)
        self.address = self.listener.address
        self.refusals = BurstLog(reactor, f"port {self.address[1]}: an address is over "
                                 f"--max-conns-per-address {self.limits.max_conns_per_address}",
                                 f"port {self.address[1]}: %d connections refused for "
                                 "--max-conns-per-address")

    def accept(self, sock, addr):
        source = addr[0]
        if self.per_address[source] >= self.limits.max_conns_per_address:
            self.refusals.hit()
            refuse(self.reactor, sock, self._too_many)
            return
        self.per_address[source] += 1
        limits = self.limits
        conn = LineConnection(self.reactor, sock, self._line, on_close=self._closed,
                              on_overflow=self.bad_request, idle_timeout=self.conn_idle,
                              first_timeout=limits.first_request_timeout,
                              budget=limits.pipeline_lines, max_unsent=limits.max_unsent,
                              max_output=limits.max_output, peer=addr)
        self.clients.add(conn)

    def _closed(self, conn):
        self.clients.discard(conn)
        source = conn.peer[0]
        self.per_address[source] -= 1
        if not self.per_address[source]:
            del self.per_address[source]

    def bad_request(self, conn):
        answer(conn, protocol.fail(protocol.BAD_REQUEST))

    def _line(self, conn, raw):
        try:
            request = protocol.decode_line(raw)
        except ValueError:
            self.bad_request(conn)
            return
        if request is not None:
            self.on_request(conn, request)

    def close(self):
        for conn in list(self.clients):
            conn.close()
        self.listener.close()
