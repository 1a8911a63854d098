"""The UDP hub's wire format: one class per datagram, `parse`, and the
protocol's constants; shared by the hub (lib/hub/session.py) and the client
(lib/clients/udp.py).

Every form is fixed by the hub's contract (docs/udp-hub.md); `X.text()` builds a datagram,
`parse()` reads one (bytes or str, trailing newline tolerated) or raises
`Malformed`. Tokens and MSGIDs are generated here too: their alphabet and
length are part of the wire format. Pure: no socket, no clock, no state.
"""
import re
import secrets
import string
from dataclasses import dataclass

from lib.accounts import names

SERVER = "server"
MAX_DATAGRAM = 2048                 # bytes; larger datagrams are dropped
TOKEN_ALPHABET = string.ascii_letters + string.digits + "!$%&*+-=?@^_~"
TOKEN_LEN = 6
MSGID_LEN = 10

ERR_PASSWORD = "Error: password does not match!"
ERR_TOKEN = "Error: token error!"
ERR_OFFLINE = "Error: destination offline!"
ERR_LOGIN_AGAIN = "Error: please log in again!"
SUCCESS = "Success: "


def new_token():
    """A fresh session token: 6 characters from TOKEN_ALPHABET, via `secrets`."""
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LEN))


def new_msgid():
    """A fresh message id: 10 random digits, via `secrets`."""
    return "".join(secrets.choice(string.digits) for _ in range(MSGID_LEN))


def is_token(text):
    return len(text) == TOKEN_LEN and all(c in TOKEN_ALPHABET for c in text)


def is_msgid(text):
    return len(text) == MSGID_LEN and text.isascii() and text.isdigit()


# -- datagrams ----------------------------------------------------------------
class Malformed(ValueError):
    """The datagram matches no form of the contract."""


@dataclass(frozen=True)
class Login:
    """`A->server#login<PASSWORD><IP><PORT>`"""
    src: str
    password: str
    ip: str
    port: int

    def text(self):
        return f"{self.src}->{SERVER}#login<{self.password}><{self.ip}><{self.port}>"


@dataclass(frozen=True)
class Logoff:
    """`A->server#logoff<TOKEN>`"""
    src: str
    token: str

    def text(self):
        return f"{self.src}->{SERVER}#logoff<{self.token}>"


@dataclass(frozen=True)
class Message:
    """`A->B#<TOKEN><MSGID>TEXT`: client to server, and the forward to B
    (then TOKEN is B's)."""
    src: str
    dst: str
    token: str
    msgid: str
    body: str

    def text(self):
        return f"{self.src}->{self.dst}#<{self.token}><{self.msgid}>{self.body}"


@dataclass(frozen=True)
class Receipt:
    """`B->server#<B_TOKEN><MSGID>Success: TEXT` (body is TEXT)."""
    src: str
    token: str
    msgid: str
    body: str

    def text(self):
        return f"{self.src}->{SERVER}#<{self.token}><{self.msgid}>{SUCCESS}{self.body}"


@dataclass(frozen=True)
class TokenAck:
    """`server->A#Success<TOKEN>`: login accepted, or logoff accepted."""
    dst: str
    token: str

    def text(self):
        return f"{SERVER}->{self.dst}#Success<{self.token}>"


@dataclass(frozen=True)
class LoginFailed:
    """`server->A#Error: password does not match!`"""
    dst: str

    def text(self):
        return f"{SERVER}->{self.dst}#{ERR_PASSWORD}"


@dataclass(frozen=True)
class LogoffFailed:
    """`server->A#Error: token error!` (answer to a logoff)."""
    dst: str

    def text(self):
        return f"{SERVER}->{self.dst}#{ERR_TOKEN}"


@dataclass(frozen=True)
class Reply:
    """`server->A#<TOKEN><MSGID>Success: TEXT` or `...Error: ...` (body is
    everything after MSGID)."""
    dst: str
    token: str
    msgid: str
    body: str

    def text(self):
        return f"{SERVER}->{self.dst}#<{self.token}><{self.msgid}>{self.body}"

    @property
    def ok(self):
        return self.body.startswith(SUCCESS)


# The framing of an id: no white space (users.txt) and none of the name
# rule's delimiters, so `->`, `#` and `<...>` split a datagram unambiguously.
# The rest of lib/accounts/names.py's rule is for new names; ids of
# existing accounts only have to frame.
_ID = rf"[^\s{re.escape(names.DELIMITERS)}]{{1,{names.MAX_LEN}}}"
_HEAD = re.compile(rf"(?P<src>{_ID}?)->(?P<dst>{_ID})#(?P<body>.*)\Z", re.S)
# The token field is parsed loosely (a wrong token earns "token error!", not
# silence); the MSGID strictly.
_TOK = r"<(?P<token>[^<>\s]{1,32})>"
_TOK_ID = _TOK + r"<(?P<msgid>\d{10})>"

_TO_SERVER = (   # (body pattern, constructor) for `A->server#...`; the forms start
    # differently (`<`, `login<`, `logoff<`), so the order is only speed: receipts are the most
    (re.compile(_TOK_ID + re.escape(SUCCESS) + r"(?P<body>.*)\Z", re.S),
     lambda h, m: Receipt(h["src"], m["token"], m["msgid"], m["body"])),
    (re.compile(r"login<(?P<password>.*)><(?P<ip>[^<>\s]{1,45})><(?P<port>\d{1,5})>\Z", re.S),
     lambda h, m: Login(h["src"], m["password"], m["ip"], int(m["port"]))),
    (re.compile(r"logoff" + _TOK + r"\Z"),
     lambda h, m: Logoff(h["src"], m["token"])),
)
_FROM_SERVER = (  # for `server->A#...`
    (re.compile(r"Success" + _TOK + r"\Z"), lambda h, m: TokenAck(h["dst"], m["token"])),
    (re.compile(re.escape(ERR_PASSWORD) + r"\Z"), lambda h, m: LoginFailed(h["dst"])),
    (re.compile(re.escape(ERR_TOKEN) + r"\Z"), lambda h, m: LogoffFailed(h["dst"])),
    (re.compile(_TOK_ID + r"(?P<body>.*)\Z", re.S),
     lambda h, m: Reply(h["dst"], m["token"], m["msgid"], m["body"])),
)
_BETWEEN_CLIENTS = (  # for `A->B#...`
    (re.compile(_TOK_ID + r"(?P<body>.*)\Z", re.S),
     lambda h, m: Message(h["src"], h["dst"], m["token"], m["msgid"], m["body"])),
)


def _head(text):
    """Match `A->B#` on the NFC form of `text`: ids, passwords and text then
    compare as the TCP service stores them (lib/social/protocol.py decode_line)."""
    return _HEAD.match(names.normalize(text))


def split_head(text):
    """`A->B#BODY` -> (A, B, BODY), or None. Also used for typed lines."""
    head = _head(text)
    return (head["src"], head["dst"], head["body"]) if head else None


def parse(data):
    """Bytes or str of one datagram -> a datagram object; raises Malformed."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("not UTF-8") from None
    if data.endswith("\n"):  # tolerated, not required
        data = data[:-2] if data.endswith("\r\n") else data[:-1]
    head = _head(data)
    if head is None:
        raise Malformed("no A->B# header")
    src, dst = head["src"], head["dst"]
    if src == dst == SERVER:
        raise Malformed("server to server")
    forms = _FROM_SERVER if src == SERVER else _TO_SERVER if dst == SERVER else _BETWEEN_CLIENTS
    for pattern, build in forms:
        match = pattern.match(head["body"])
        if match:
            return build(head, match)
    raise Malformed("unknown body")

