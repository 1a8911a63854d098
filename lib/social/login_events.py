"""The login server's events (in) and actions (out): plain values that
lib/social/login_core.py and its driver (lib/social/login_server.py) trade."""
from dataclasses import dataclass

from lib.social import protocol


class IllegalEvent(Exception):
    """An event the state of its connection or link does not allow (a driver bug)."""


# Events and actions are values. Not frozen: that costs ~1 us more per object
# and a relayed command makes three (LinkLine, FleetHeartbeat, SendLink).
message = dataclass(slots=True)


# -- events ------------------------------------------------------------------------
@message
class ClientEvent:
    conn: object

@message
class ClientRequest(ClientEvent):
    request: protocol.Request

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
    """"host:port" as the client should dial it, or None and the fleet's error."""
    app_server: str
    error: str = None

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
class HelloTimedOut(LinkEvent):
    pass

@message
class LinkClosed(LinkEvent):
    pass


# -- actions (Hash, Verify, FleetAssign and FleetRegister are answered by the
# events Hashed, Verified, Assigned and FleetRegistered) -------------------------------
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
