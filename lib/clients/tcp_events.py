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
    """A line from a server: the reply awaited on that connection, or a push."""
    address: tuple
    raw: bytes


@dataclass(frozen=True)
class Closed:
    address: tuple


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
class Stop:
    exit_code: int


# -- timer keys ----------------------------------------------------------------------------
class Timer(enum.Enum):
    REPLY = "reply"                   # the request on its way
    RELOCATE = "relocate"             # RELOCATE_WAIT: time to ask locate again
    LISTEN = "listen"                 # LISTENING: go on without the app server's word
    LINGER = "linger"                 # LINGERING: time to stop


@dataclass(frozen=True)
class ConnectTimeout:
    address: tuple
