"""What the TCP client knows of its users, and nothing of sockets or time.

`ClientCore` keeps a token and an app server per logged-in user, turns a
typed line into a `Step` (the wire request and where it goes, PROTOCOL.md
§2), a reply into the lines to print and the `listen` a login needs (§5),
and a push from an app server into its chat line, once per (id, user).
The client's state machine (tcp_machine.py) uses it.
"""
import collections
import logging
from dataclasses import dataclass

from lib.loop.address import parse_address
from lib.social import protocol
from lib.social.protocol import COMMANDS, Server

log = logging.getLogger("client")

LOGIN_SERVER = "login"        # Step.target for the login server; else a user name (their app server)
EXIT = object()               # route(): the exact line `exit`
REMEMBER_PUSHES = 100_000     # (id, user) pairs printed that a repeat is checked against


@dataclass
class Login:
    token: str
    app: tuple = None             # (host, port) of this user's application server


@dataclass
class Step:
    """One request: what to send, where, and for whom."""
    name: str
    wire: str
    target: str                   # LOGIN_SERVER or the user whose app server serves it
    user: str = None
    with_token: bool = False


@dataclass
class Outcome:
    """What one reply means to the client."""
    lines: list
    listen: Step = None           # a login's `listen`, to its app server, before the next line


class ClientCore:
    def __init__(self, remember_pushes=REMEMBER_PUSHES):
        self.logins = {}          # user -> Login
        self.remember = remember_pushes
        self.printed = set()      # (id, user) of the pushes printed, the last `remember` of them
        self.printed_order = collections.deque()

    def route(self, line):
        """A typed line -> Step, EXIT, or None (blank)."""
        if line.strip() == "exit":
            return EXIT
        words = line.split()
        if not words:
            return None
        name = words[0]
        command = COMMANDS.get(name)
        if name in ("register", "login") or len(words) == 1:
            return Step(name, " ".join(words), LOGIN_SERVER, words[1] if len(words) > 1 else None)
        user = words[1]
        login = self.logins.get(user)
        if login is None:
            # No token: drop the user; the login server answers Not login yet.
            return Step(name, " ".join([name] + words[2:]), LOGIN_SERVER, user)
        wire = " ".join([name, login.token] + words[2:])
        on_app = command is not None and command.server is Server.APP
        return Step(name, wire, user if on_app else LOGIN_SERVER, user, with_token=True)

    def app_of(self, user):
        login = self.logins.get(user)
        return login.app if login else None

    def on_reply(self, step, reply):
        """-> Outcome: the lines to print, and a login's `listen`. The
        `broker`, `queue` and `topics` fields of older servers are ignored."""
        out = Outcome(protocol.render(reply))
        login = self.logins.get(step.user) if step.user else None
        if reply.get("status") == 0 and step.name in _ON_SUCCESS:
            _ON_SUCCESS[step.name](self, step, reply, login, out)
        elif step.with_token and login and reply.get("message") == protocol.NOT_LOGIN:
            # The server no longer knows this token (deleted elsewhere): forget it.
            del self.logins[step.user]
        return out

    def _logged_in(self, step, reply, old, out):
        token = reply.get("token")
        if not isinstance(token, str):
            return
        login = self.logins[step.user] = Login(token, _address(reply.get("app_server")))
        if login.app is not None:
            # a second login too: the new token binds the connection again
            out.listen = Step("listen", f"listen {token}", step.user, step.user, with_token=True)

    def _logged_out(self, step, reply, login, out):
        self.logins.pop(step.user, None)

    def _located(self, step, reply, login, out):
        if login:
            login.app = _address(reply.get("app_server"))

    # -- pushes ----------------------------------------------------------------------------
    def on_push(self, obj):
        """A push line (protocol.is_push) -> the lines to print: its chat
        line if it is well-formed, for a user logged in here, and its
        (id, user) not printed before (a redelivery); else none."""
        key = _push_key(obj)
        if key is None:
            log.debug("malformed push ignored: %.200r", obj)
            return []
        if key[1] not in self.logins or key in self.printed:
            return []
        self.printed.add(key)
        self.printed_order.append(key)
        if len(self.printed_order) > self.remember:
            self.printed.discard(self.printed_order.popleft())
        return [protocol.render_push(obj)]


# What a successful reply to each command changes (others change no login).
_ON_SUCCESS = {"login": ClientCore._logged_in, "logout": ClientCore._logged_out,
               "delete": ClientCore._logged_out, "locate": ClientCore._located}


def _push_key(obj):
    """(id, to) of a well-formed message push, else None."""
    if obj.get("push") != "message":
        return None
    ident, to = obj.get("id"), obj.get("to")
    if not isinstance(ident, (str, int)) or isinstance(ident, bool) or not isinstance(to, str):
        return None
    if not all(isinstance(obj.get(k), str) for k in ("from", "message")):
        return None
    if not isinstance(obj.get("group"), (str, type(None))):
        return None
    return ident, to


def _address(text):
    try:
        return parse_address(text) if isinstance(text, str) and text else None
    except ValueError:
        return None
