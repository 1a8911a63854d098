"""The TCP client machine's vocabulary: events in, actions out, timer keys.

Plain frozen dataclasses (and one enum), so a test compares them with `==`
and a driver dispatches on their type (tcp.py; the machine: tcp_machine.py).
"""
import enum
from dataclasses import dataclass

from lib.loop.timers import CancelTimer, SetTimer, TimerFired  # noqa: F401  (shared timer values)


# -- events in ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Typed:
    line: str


@dataclass(frozen=True)
class EndOfInput:
    pass


@dataclass(frozen=True)
class Connected:
    address: tuple


@dataclass(frozen=True)
class ConnectFailed:
    address: tuple
    error: str = ""


@dataclass(frozen=True)
class ReplyLine:
    address: tuple
    raw: bytes


@dataclass(frozen=True)
class Closed:
    address: tuple


@dataclass(frozen=True)
class Subscribed:
    ok: bool
    error: str = None


@dataclass(frozen=True)
class ChatMessage:
    destination: str
    body: str


# -- actions out ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Connect:
    address: tuple


@dataclass(frozen=True)
class Send:
    address: tuple
    line: str                     # without the newline


@dataclass(frozen=True)
class Close:
    """Close (or stop connecting) silently: no Closed event follows."""
    address: tuple


@dataclass(frozen=True)
class Print:
    lines: tuple


@dataclass(frozen=True)
class StartBroker:
    address: str                  # "host:port" from the login reply, or None (the default)


@dataclass(frozen=True)
class Subscribe:
    destination: str              # answered by one Subscribed event


@dataclass(frozen=True)
class Unsubscribe:
    destination: str


@dataclass(frozen=True)
class Stop:
    exit_code: int


# -- timer keys ----------------------------------------------------------------------------
class Timer(enum.Enum):
    REPLY = "reply"                   # the request on its way
    RELOCATE = "relocate"             # RELOCATE_WAIT: time to ask locate again
    SUBSCRIPTIONS = "subscriptions"   # WAITING_SUBSCRIPTIONS: go on without the broker's word
    LINGER = "linger"                 # LINGERING: time to stop


@dataclass(frozen=True)
class ConnectTimeout:
    address: tuple


@dataclass(frozen=True)
class Drain:
    user: str
    destination: str
