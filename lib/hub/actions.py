"""Actions both UDP state machines return and their drivers carry out: the
hub's sessions (lib/hub/session.py) and the client (lib/clients/udp.py).
Each machine adds its own (`Verify` for the hub, `Print` for the client)."""
from dataclasses import dataclass

from lib.loop.timers import CancelTimer, SetTimer  # noqa: F401  (the timer actions, shared)


@dataclass(frozen=True)
class Send:
    """Send `text` as one datagram to `addr` (None: the client's server)."""
    text: str
    addr: tuple = None


