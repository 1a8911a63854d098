"""Client-facing TCP service shared by the login and application servers:
accepts connections, frames lines, answers `Bad request` for over-long or
non-UTF-8 lines, and hands each decoded request to `on_request(conn, request)`."""
from lib.social import protocol
from lib.loop.transports import LineConnection, Listener


def answer(conn, reply):
    """The one way to answer a client: queue the reply (it leaves after the
    turn's commit) and read the connection's next request, if it was paused."""
    conn.send(protocol.encode(reply))
    conn.resume()


class RequestServer:
    def __init__(self, reactor, host, port, on_request, conn_idle=300.0):
        self.reactor, self.on_request, self.conn_idle = reactor, on_request, conn_idle
        self.clients = set()
        self.listener = Listener(reactor, host, port, self._accept)
        self.address = self.listener.address

    def _accept(self, sock, addr):
        conn = LineConnection(self.reactor, sock, self._line, on_close=self.clients.discard,
                              on_overflow=self.bad_request, idle_timeout=self.conn_idle, peer=addr)
        self.clients.add(conn)

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
