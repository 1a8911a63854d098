"""The hub's per-client session record and its states (the seed's server
diagram), shared by the machine (lib/hub/session.py) and its tests."""
import enum
import ipaddress
from collections import deque
from dataclasses import dataclass, field


class SessionState(enum.Enum):
    OFFLINE = "OFFLINE"
    LOGIN_RECEIVED = "LOGIN_RECEIVED"
    ONLINE = "ONLINE"
    MESSAGE_FORWARD = "MESSAGE_FORWARD"


OFFLINE, LOGIN_RECEIVED, ONLINE, MESSAGE_FORWARD = SessionState
LOGGED_IN = (ONLINE, MESSAGE_FORWARD)


@dataclass
class Pending:
    """A forward awaiting its receipt; a receipt names it by MSGID and TEXT."""
    text: str
    body: str
    resends: int = 0


@dataclass
class Session:
    id: str
    state: SessionState = OFFLINE
    token: str = None
    # Where answers about this session go: the login's IP:PORT (or its source,
    # behind NAT). Kept after logoff or expiry, until the next login, so
    # `please log in again!` reaches a client that receives elsewhere.
    addr: tuple = None
    proven: bool = False                # addr has shown that it receives: the token was used
    last_seen: float = 0.0
    checks: int = 0                     # password checks running or waiting for this id
    pending: dict = field(default_factory=dict)      # MSGID -> {sender id: Pending}
    answered: dict = field(default_factory=dict)     # own MSGID -> forwarded (else: offline)
    answered_order: deque = field(default_factory=deque)   # the same MSGIDs, oldest first

    def remember(self, msgid, forwarded, limit):
        """Keep the answer to our message `msgid` (replays get it again), at most `limit`."""
        self.answered[msgid] = forwarded
        self.answered_order.append(msgid)
        if len(self.answered_order) > limit:   # (a deque: O(1), unlike a dict's first key)
            del self.answered[self.answered_order.popleft()]

    def forget_answers(self):
        self.answered.clear()
        self.answered_order.clear()

    def pending_keys(self):
        return [(sender, msgid) for msgid, senders in self.pending.items() for sender in senders]


def same_ip(a, b):
    """IP equality that tolerates IPv4-mapped IPv6 and spelling differences."""
    if a == b:   # the common case, without parsing
        return True
    try:
        a, b = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    a = getattr(a, "ipv4_mapped", None) or a
    b = getattr(b, "ipv4_mapped", None) or b
    return a == b
