"""What the TCP client knows of its users, and nothing of sockets or time.

`ClientCore` keeps a token per user, turns a typed line into a `Step` (the
wire request and where it goes, PROTOCOL.md §2) and a reply into the lines
to print and the broker destinations to add or drop (§5). `chat_lines` is
what a message from the broker prints. The client's state machine
(tcp_machine.py) uses both.
"""
from dataclasses import dataclass, field
from typing import NamedTuple

from lib.loop.address import parse_address
from lib.social import protocol
from lib.social.protocol import COMMANDS, Server

LOGIN_SERVER = "login"        # Step.target for the login server; else a user name (their app server)
EXIT = object()               # route(): the exact line `exit`


@dataclass
class Login:
    token: str
    app: tuple = None             # (host, port) of this user's application server
    queue: str = None
    topics: dict = field(default_factory=dict)   # group -> broker destination

    def destinations(self):
        return ([self.queue] if self.queue else []) + list(self.topics.values())


@dataclass
class Step:
    """One request: what to send, where, and for whom."""
    name: str
    wire: str
    target: str                   # LOGIN_SERVER or the user whose app server serves it
    user: str = None
    with_token: bool = False


class Outcome(NamedTuple):
    """What one reply means to the client; destinations as (user, destination)."""
    lines: list
    add: list
    drop: list


class ClientCore:
    def __init__(self):
        self.logins = {}          # user -> Login

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
        """-> Outcome: lines to print, destinations to subscribe and to drop."""
        out = Outcome(protocol.render(reply), [], [])
        ok = reply.get("status") == 0
        login = self.logins.get(step.user) if step.user else None
        if ok and step.name in _ON_SUCCESS:
            _ON_SUCCESS[step.name](self, step, reply, login, out)
        elif step.with_token and login and reply.get("message") == protocol.NOT_LOGIN:
            # The server no longer knows this token (deleted elsewhere): forget it.
            self._forget(step.user, out)
        if ok and login and self.logins.get(step.user) is login and reply.get("topics"):
            # a group joined or created (a login's own topics came with it above)
            for group, dest in reply["topics"].items():
                if login.topics.get(group) != dest:
                    login.topics[group] = dest
                    out.add.append((step.user, dest))
        return out

    def _logged_in(self, step, reply, old, out):
        if "token" not in reply:
            return
        new = Login(reply["token"], _address(reply.get("app_server")), reply.get("queue"),
                    dict(reply.get("topics") or {}))
        if old:
            out.drop.extend((step.user, d) for d in old.destinations())
        self.logins[step.user] = new
        out.add.extend((step.user, d) for d in new.destinations())

    def _logged_out(self, step, reply, login, out):
        if login:
            self._forget(step.user, out)

    def _located(self, step, reply, login, out):
        if login:
            login.app = _address(reply.get("app_server"))

    def _forget(self, user, out):
        login = self.logins.pop(user)
        out.drop.extend((user, d) for d in login.destinations())


# What a successful reply to each command changes (others change no login).
_ON_SUCCESS = {"login": ClientCore._logged_in, "logout": ClientCore._logged_out,
               "delete": ClientCore._logged_out, "locate": ClientCore._located}


def chat_lines(subs, destination, body):
    """The lines a broker message prints: once per recipient (online when it
    was sent) subscribed to `destination` on this client (`subs`: destination
    -> set of local users); none for a body we cannot read."""
    try:
        line = protocol.render_chat(body)
        recipients = set(protocol.chat_recipients(body))
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
    return [line] * sum(1 for user in subs.get(destination, ()) if user in recipients)


def _address(text):
    return parse_address(text) if text else None
