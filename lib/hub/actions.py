"""Actions both UDP state machines return and their drivers carry out: the
hub's sessions (lib/hub/session.py) and the client (lib/clients/udp.py).
Each machine adds its own (`Verify` for the hub, `Print` for the client)."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Send:
    """Send `text` as one datagram to `addr` (None: the client's server)."""
    text: str
    addr: tuple = None


@dataclass(frozen=True)
class SetTimer:
    """(Re)arm the timer `key` to fire in `delay` s; replaces one with the same key."""
    key: tuple
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    key: tuple
