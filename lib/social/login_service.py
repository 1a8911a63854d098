"""The login server's service: client connections, app-server links, and
the glue between the store, the command semantics and the fleet.

Clients are served register, login, logout, delete and locate; every other
command is answered by the same priority rules (Unknown command, Not login
yet, usage, "send it to your application server"). App servers relay their
clients' requests over the internal link; each is applied to the store
atomically on this loop, in one round trip.

Replies leave only after the turn's group commit (see lib/reactor.py), so an
acknowledged write is always on disk.
"""
import hashlib
import hmac
import logging
import os

from lib.accounts import passwords
from lib.loop.address import format_address
from lib.social import applink, commands, protocol
from lib.social.protocol import Server, fail
from lib.loop.transports import LineConnection, Listener
from lib.social.request_server import RequestServer

log = logging.getLogger("login")

# Verified against when the user does not exist, so a wrong id costs the
# same time as a wrong password (no user enumeration by timing).
_DUMMY = passwords.hash_password("np-social-dummy-password")


class LoginService:
    def __init__(self, reactor, store, fleet, broker="127.0.0.1:61613", ctx=None,
                 conn_idle=300.0):
        self.reactor, self.store, self.fleet = reactor, store, fleet
        self.broker = broker
        self.ctx = ctx or commands.Context()
        self.conn_idle = conn_idle
        self.tokens = {}                # user -> token issued by this process (memory only)
        self._pw_cache = {}             # user -> (stored, keyed digest of the verified password)
        self._pw_key = os.urandom(32)
        self._pending_register = set()  # names being hashed right now
        self.links = set()

    @property
    def state(self):
        return self.store.state

    def listen(self, host, port, internal_host, internal_port):
        self.front = RequestServer(self.reactor, host, port, self._client_request, self.conn_idle)
        self.internal_listener = Listener(self.reactor, internal_host, internal_port, self._accept_link)
        return self.front.address, self.internal_listener.address

    def close(self):
        for conn in list(self.links):
            conn.close()
        self.front.close()
        self.internal_listener.close()

    # -- client requests ----------------------------------------------------------
    def _client_request(self, conn, request):
        special = self.CLIENT_SPECIAL.get(request.name)
        if special:
            special(self, conn, request)
        else:
            outcome = commands.handle(self.state, request, self.ctx, Server.LOGIN)
            self._complete(conn, outcome)

    def _reply(self, conn, reply):
        conn.send(protocol.encode(reply))
        conn.resume()

    def _complete(self, conn, outcome):
        """Record the outcome's mutations and finish its effect, then reply."""
        self.store.record(outcome.mutations)
        effect = outcome.effect
        if effect is None:
            self._reply(conn, outcome.reply)
        elif effect[0] == "release":
            user = effect[1]
            self.fleet.release(user)
            self.tokens.pop(user, None)
            if outcome.mutations and outcome.mutations[0][0] == "delete":
                self._pw_cache.pop(user, None)
            self._reply(conn, outcome.reply)
        elif effect[0] == "assign":   # locate
            self._assign(conn, effect[1], lambda: outcome.reply)
        else:
            raise ValueError(f"unexpected effect {effect[0]}")

    def _assign(self, conn, user, make_reply, on_fail=None):
        """Find `user` an app server (maybe launching one), then reply."""
        conn.pause()

        def assigned(server, error):
            if server is None:
                self._reply(conn, fail(error))
                return
            reply = make_reply()
            if reply.get("status") == 0:
                reply["app_server"] = self._client_address(conn, server.address)
                reply["broker"] = self.broker
            elif on_fail:
                on_fail()
            self._reply(conn, reply)

        self.fleet.assign(user, assigned)

    @staticmethod
    def _client_address(conn, address):
        host, port = address
        if host in ("", "0.0.0.0", "::"):
            # The app server listens on every interface of this machine: send
            # the client to the address it already used to reach us.
            try:
                host = conn.sock.getsockname()[0]
            except OSError:
                host = "127.0.0.1"
        return format_address(host, port)

    # register and login hash off the loop -----------------------------------------
    def _register(self, conn, request):
        reply = commands.check_register(self.state, request.words)
        name = request.words[0] if request.words else None
        if reply is None and name in self._pending_register:
            reply = fail(f"{name} is already used")
        if reply is not None:
            self._reply(conn, reply)
            return
        self._pending_register.add(name)
        conn.pause()

        def hashed(stored, error):
            self._pending_register.discard(name)
            if error:
                log.error("hashing failed: %s", error)
                self._reply(conn, fail("Internal error, try again"))
                return
            self._complete(conn, commands.finish_register(self.state, name, stored))

        self.reactor.run_in_thread(passwords.hash_password, request.words[1], done=hashed)

    def _login(self, conn, request):
        reply, stored = commands.check_login(self.state, request.words)
        if reply is not None:
            self._reply(conn, reply)
            return
        name, password = request.words
        cached = self._pw_cache.get(name)
        if stored is not None and cached and cached[0] == stored and \
                hmac.compare_digest(cached[1], self._pw_digest(password)):
            self._login_verified(conn, name, password, stored, True)
            return
        conn.pause()

        def verified(matched, error):
            self._login_verified(conn, name, password, stored, bool(matched) and stored is not None)

        self.reactor.run_in_thread(passwords.verify, stored or _DUMMY, password, done=verified)

    def _pw_digest(self, password):
        return hmac.new(self._pw_key, password.encode("utf-8"), hashlib.sha256).digest()

    def _login_verified(self, conn, name, password, stored, matched):
        if not matched:
            self._reply(conn, fail("No such user or password error"))
            return
        # Repeated logins skip scrypt: remember a keyed digest, in memory only.
        self._pw_cache[name] = (stored, self._pw_digest(password))

        def make_reply():
            # Decided only once the app server is ready: the state may have
            # changed meanwhile (logout, delete, another login of this user).
            user = self.state.users.get(name)
            known = self.tokens.get(name) if user and user.session else None
            outcome = commands.finish_login(self.state, name, matched, self.ctx, known_token=known)
            self.store.record(outcome.mutations)
            if outcome.reply.get("token"):
                self.tokens[name] = outcome.reply["token"]
            return outcome.reply

        self._assign(conn, name, make_reply, on_fail=lambda: self.fleet.release(name))

    CLIENT_SPECIAL = {"register": _register, "login": _login}

    # -- app-server links ------------------------------------------------------------
    def _accept_link(self, sock, addr):
        conn = LineConnection(self.reactor, sock, self._link_line, on_close=self._link_closed,
                              max_line=applink.MAX_LINE, quiet=None, peer=addr)
        conn.app = None
        self.links.add(conn)
        # An unauthenticated link gets a few seconds to say hello.
        self.reactor.call_later(5.0, lambda: conn.app is None and conn.close())

    def _link_line(self, conn, raw):
        try:
            msg = applink.decode(raw)
        except ValueError:
            conn.close()
            return
        if conn.app is None:
            self._link_hello(conn, msg)
            return
        self.fleet.heartbeat(conn.app)
        handler = self.LINK_OPS.get(msg["op"])
        if handler:
            handler(self, conn, msg)

    def _link_hello(self, conn, msg):
        server = None
        if msg["op"] == "hello" and isinstance(msg.get("secret"), str):
            try:
                address = (str(msg["host"]), int(msg["port"]))
                server = self.fleet.register(msg["secret"], address, link=conn)
            except (KeyError, ValueError, TypeError):
                server = None
        if server is None:
            log.warning("rejected app-server link from %s", conn.peer)
            conn.send(applink.encode(op="rejected", reason="unknown or used join secret"))
            conn.close_after_flush()
            return
        conn.app = server
        conn.send(applink.encode(op="welcome"))

    def _link_cmd(self, conn, msg):
        try:
            request = protocol.decode_line(str(msg["line"]).encode("utf-8"))
        except (ValueError, KeyError):
            request = None
        if request is None:
            reply, publish = fail(protocol.BAD_REQUEST), None
        elif request.command is not None and not request.command.token:
            reply, publish = fail(f"Send {request.name} to the login server"), None
        else:
            outcome = commands.handle(self.state, request, self.ctx, Server.APP)
            self.store.record(outcome.mutations)
            reply = outcome.reply
            publish = list(outcome.effect[1:]) if outcome.effect and outcome.effect[0] == "publish" else None
        conn.send(applink.encode(op="reply", id=msg.get("id"), reply=reply, publish=publish))

    def _link_ping(self, conn, msg):
        pass  # heartbeat already noted

    LINK_OPS = {"cmd": _link_cmd, "ping": _link_ping}

    def _link_closed(self, conn):
        self.links.discard(conn)
        if conn.app is not None:
            self.fleet.lost(conn.app.id, "link closed")
