"""The np-social TCP protocol: the command table, request parsing, reply
encoding and what the client prints (docs/protocol.md; every string is exact).

Nothing here touches a socket.
"""
import enum
import functools
import json
import unicodedata
from dataclasses import dataclass

from lib.accounts import names

MAX_REQUEST = 8192
MAX_REPLY = 64 * 1024 * 1024   # a reply line the client accepts (receive-post can be large)
BAD_REQUEST = "Bad request"
NOT_LOGIN = "Not login yet"
SUCCESS = "Success!"


class Server(enum.Enum):
    """Who serves a command (docs/protocol.md §6)."""
    LOGIN = "login"
    APP = "app"


@dataclass(frozen=True)
class Command:
    name: str
    server: Server
    token: bool          # False only for register and login
    min_args: int        # arguments after the token
    max_args: int        # None = unbounded (messages)
    usage: str


def _cmd(name, server, args, usage, token=True):
    low, high = args if isinstance(args, tuple) else (args, args)
    return Command(name, server, token, low, high, usage)


L, A = Server.LOGIN, Server.APP
COMMANDS = {c.name: c for c in (
    _cmd("register", L, 2, "Usage: register <username> <password>", token=False),
    _cmd("login", L, 2, "Usage: login <id> <password>", token=False),
    _cmd("logout", L, 0, "Usage: logout <user>"),
    _cmd("delete", L, 0, "Usage: delete <user>"),
    _cmd("invite", A, 1, "Usage: invite <user> <id>"),
    _cmd("list-invite", A, 0, "Usage: list-invite <user>"),
    _cmd("accept-invite", A, 1, "Usage: accept-invite <user> <id>"),
    _cmd("list-friend", A, 0, "Usage: list-friend <user>"),
    _cmd("post", A, (1, None), "Usage: post <user> <message>"),
    _cmd("receive-post", A, 0, "Usage: receive-post <user>"),
    _cmd("send", A, (2, None), "Usage: send <user> <friend> <message>"),
    _cmd("create-group", A, 1, "Usage: create-group <user> <group>"),
    _cmd("list-group", A, 0, "Usage: list-group <user>"),
    _cmd("list-joined", A, 0, "Usage: list-joined <user>"),
    _cmd("join-group", A, 1, "Usage: join-group <user> <group>"),
    _cmd("send-group", A, (2, None), "Usage: send-group <user> <group> <message>"),
    # Our extension: this connection wants the user's messages pushed to it
    # (the client sends it to the app server right after login).
    _cmd("listen", A, 0, "Usage: listen <user>"),
    # Our extension: where is my application server? (used by the client to
    # find a new app server after the old one died; answered by the login server)
    _cmd("locate", L, 0, "Usage: locate <user>"),
)}


class Request:
    """A parsed request line: command word, then the remaining words;
    `command` is the table's entry for the word (None: unknown), looked up
    once. A plain slotted class: one is made per request (a frozen
    dataclass costs several times more to build)."""
    __slots__ = ("name", "words", "command")

    def __init__(self, name, words):
        self.name, self.words, self.command = name, words, COMMANDS.get(name)

    def __eq__(self, other):
        return isinstance(other, Request) and (self.name, self.words) == (other.name, other.words)

    def __hash__(self):
        return hash((self.name, self.words))

    def __repr__(self):
        return f"Request(name={self.name!r}, words={self.words!r})"


def decode_line(raw):
    """bytes -> Request, or None for a blank line; raises ValueError on
    invalid UTF-8 or an over-long line. The text is NFC-normalised, so a
    name typed decomposed finds the account (ASCII is left as it is)."""
    if len(raw) > MAX_REQUEST:
        raise ValueError("too long")
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if not text.isascii():      # the common case skips a call
        text = names.normalize(text)
    words = text.split()
    if not words:
        return None
    return Request(words[0], tuple(words[1:]))


def arity_ok(command, args):
    n = len(args)
    return n >= command.min_args and (command.max_args is None or n <= command.max_args)


def reply(status, message=None, **fields):
    """A reply dict with `status` first, then the fields, then `message`."""
    out = {"status": status}
    out.update(fields)
    if message is not None:
        out["message"] = message
    return out


def ok(message=SUCCESS, **fields):
    return reply(0, message, **fields)


def fail(message, **fields):
    if not fields:      # nearly every refusal: built directly, it is made per request
        return {"status": 1, "message": message}
    return reply(1, message, **fields)


def listing(key, items):
    """List replies carry no `message` key (docs/protocol.md §4); one cut
    to `max_list_items` carries a `note` (lib/social/quotas.py)."""
    return {"status": 0, key: list(items)}


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode   # made once, not per reply


def encode(obj):
    return (_ENCODE(obj) + "\n").encode("utf-8")


encode_text = _ENCODE    # the reply as JSON text, no newline (the internal link appends it)


# -- what the client prints (docs/protocol.md §5) --------------------------------
_LISTS = (("invite", "No invitations"), ("friend", "No friends"),
          ("post", "No posts"), ("group", "No groups"))


def render(reply_obj):
    """The lines the client prints for one reply, in the course's order,
    then a cut list's `note`; every text passes through `shown`."""
    lines = []
    if "message" in reply_obj:
        lines.append(shown(reply_obj["message"]))
    for key, empty in _LISTS:
        if key not in reply_obj:
            continue
        items = reply_obj[key] or []
        if not items:
            lines.append(empty)
        elif key == "post":
            lines.extend(f"{shown(p['id'])}: {shown(p['message'])}" for p in items)
        else:
            lines.extend(shown(item) for item in items)
    if "note" in reply_obj:
        lines.append(shown(reply_obj["note"]))
    return lines


def render_chat(body):
    """The line the client prints for a message from the broker."""
    msg = json.loads(body)
    sender, message = shown(msg["from"]), shown(msg["message"])
    if msg.get("group") is not None:
        return f"<<<{sender}->GROUP<{shown(msg['group'])}>: {message}>>>"
    return f"<<<{sender}->{shown(msg['to'])}: {message}>>>"


def is_push(obj):
    """Is this line from an app server a push (never a reply: no `status`)?"""
    return isinstance(obj, dict) and "push" in obj and "status" not in obj


def render_push(obj):
    """The chat line the client prints for a push object (as render_chat);
    KeyError for a push without `from`, `to` or `message`."""
    sender, message = shown(obj["from"]), shown(obj["message"])
    if obj.get("group") is not None:
        return f"<<<{sender}->GROUP<{shown(obj['group'])}>: {message}>>>"
    return f"<<<{sender}->{shown(obj['to'])}: {message}>>>"


# What others wrote is printed with these as visible escapes, so it cannot
# move the cursor, clear the screen or hide text: control characters (C0,
# DEL, C1: category Cc), format characters (Cf: zero-width, bidi), line and
# paragraph separators, lone surrogates, and the invisible characters of the
# name rule (lib/accounts/names.py).
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_INVISIBLE = names.INVISIBLE_RE   # the name rule's table, not a second one


def shown(text):
    """`text` (any value: str() first) safe to print on a terminal: each
    character above as `\\xhh`, `\\uhhhh` or `\\Uhhhhhhhh` (Python's form);
    all else, printable ASCII included, unchanged."""
    text = str(text)
    if text.isprintable() and (text.isascii() or not _INVISIBLE.search(text)):
        return text       # the common case, in C
    return "".join(map(_shown_char, text))


@functools.lru_cache(maxsize=4096)
def _shown_char(c):
    if unicodedata.category(c) not in _ESCAPED_CATEGORIES and not _INVISIBLE.match(c):
        return c
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def chat_body(sender, message, to=None, group=None, recipients=()):
    """The broker message body for a personal (`to`) or group message.
    `recipients` are the users online when it was sent: a client prints the
    message once for each of them logged in there, and for nobody else."""
    return json.dumps({"from": sender, "to": to, "group": group, "message": message,
                       "recipients": list(recipients)}, ensure_ascii=False)


def push_line(message_id, to, chat):
    """The line an app server pushes to `to`'s connection for the broker
    message `chat` (a chat_body, decoded) with id `message_id`: a JSON
    object with "push" and no "status", so the client tells it from replies.
    KeyError/AttributeError if `chat` is not a chat body."""
    push = {"push": "message", "id": message_id, "to": to,
            "from": chat["from"], "message": chat["message"]}
    if chat.get("group") is not None:
        push["group"] = chat["group"]
    return (json.dumps(push, ensure_ascii=False) + "\n").encode("utf-8")


def chat_recipients(body):
    return json.loads(body).get("recipients") or []
