"""The login server's events (in) and actions (out): plain values that
lib/social/login_core.py and its driver (lib/social/login_server.py) trade;
and the replies of its limits, which the client (lib/clients/tcp_machine.py)
recognises too."""
from dataclasses import dataclass

from lib.social import protocol

# A valid token on an app server its user is not assigned to (the fleet moved
# the user): the client asks `locate` and sends again, printing nothing.
WRONG_SERVER = "Not your application server"
# Over a rate limit (sign-ups, logins per source address) or the password
# checks' queue (lib/social/fairness.py): nothing was done.
TOO_MANY = "Too many attempts, try again later"


class IllegalEvent(Exception):
    """An event the state of its connection or link does not allow (a driver bug)."""


# Events and actions are values. Not frozen: that costs ~1 us more per object
# and a relayed command makes two (LinkLine, SendLink).
message = dataclass(slots=True)


# -- events ------------------------------------------------------------------------
@message
class ClientEvent:
    conn: object

@message
class ClientRequest(ClientEvent):
    request: protocol.Request
    peer: object = None     # the source address (host): the key of per-address limits
    now: float = None       # when it came (the driver's clock); None: the latest time known

@message
class Hashed(ClientEvent):
    stored: str
    error: object = None

@message
class Verified(ClientEvent):
    matched: bool
    error: object = None

@message
class Assigned(ClientEvent):
    """"host:port" as the client should dial it, or None and the fleet's error;
    `server`: the fleet's handle, as `FleetRegistered` gave it for that server's link."""
    app_server: str
    error: str = None
    server: object = None

@message
class CheckRefused(ClientEvent):
    """The password check that `Hash`/`Verify` asked for was refused: its
    source address has too many checks queued, or the queue is full."""

@message
class Tick:
    """The driver's clock, about every second: sessions idle too long expire."""
    now: float

@message
class LinkEvent:
    link: object

@message
class LinkOpened(LinkEvent):
    peer: object = None     # for logs only

@message
class LinkLine(LinkEvent):
    data: bytes

@message
class FleetRegistered(LinkEvent):
    server: object          # opaque; None: unknown or used secret

@message
class Adopted(LinkEvent):
    """The fleet's answer to `FleetAdopt`: did the user stay on that server?"""
    user: str
    ok: bool
    msg: dict               # the relayed request, to go on with

@message
class HelloTimedOut(LinkEvent):
    pass

@message
class LinkClosed(LinkEvent):
    pass


# -- actions (Hash, Verify, FleetAssign, FleetAdopt and FleetRegister are answered by
# the events Hashed or CheckRefused, Verified or CheckRefused, Assigned, Adopted and
# FleetRegistered) ------------------------------------------------------------------------
@message
class Reply:
    """Answer the client's request, then read its next one."""
    conn: object
    reply: dict

@message
class Hash:
    conn: object
    password: str

@message
class Verify:
    conn: object
    stored: str
    password: str

@message
class FleetAssign:
    conn: object
    user: str

@message
class FleetAdopt:
    """`user` (a session restored after a restart, not assigned since) used
    `server` (the app server on `link`): keep the user there if it has room.
    Answered by `Adopted` with the relayed `msg`."""
    link: object
    server: object
    user: str
    msg: dict

@message
class FleetRelease:
    user: str

@message
class FleetRegister:
    link: object
    secret: str
    address: tuple

@message
class FleetHeartbeat:
    server: object

@message
class FleetLost:
    server: object
    reason: str

@message
class SendLink:
    link: object
    msg: dict               # encoded by lib/social/applink.py

@message
class CloseLink:
    """Close now, or once what was sent has left (`flush`); then `LinkClosed`."""
    link: object
    flush: bool = False

@message
class StartHelloTimer:
    link: object
    delay: float

@message
class StopHelloTimer:
    link: object
