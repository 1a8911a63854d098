"""UDP hub: the server's session state machine (one session per client id).

Bring your own I/O (like h11): nothing here touches a socket or a clock.
`Hub.datagram(data, addr, now)`, `Hub.verified(ticket, ok, now)` and
`Hub.timer(key, now)` return a list of actions -- `Send`, `SetTimer`,
`CancelTimer` (lib/hub/actions.py) and `Verify` (here) -- that a driver
(lib/hub/server.py) carries out. The datagrams are read and written by
lib/hub/wire.py; their exact strings are fixed by docs/udp-hub.md.
docs/udp-hub.md explains the states and timers.
"""
import enum
import hmac
import ipaddress
import logging
from collections import Counter
from dataclasses import dataclass, field

from lib.accounts import passwords
from lib.hub.actions import CancelTimer, Send, SetTimer
from lib.hub.wire import (ERR_LOGIN_AGAIN, ERR_OFFLINE, ERR_TOKEN, MAX_DATAGRAM, SERVER, SUCCESS,
                          Login, LoginFailed, Logoff, LogoffFailed, Malformed, Message, Receipt, Reply,
                          TokenAck, new_token, parse)

log = logging.getLogger("hub")

RESEND_INTERVAL = 1.0               # seconds between copies of an unanswered forward
MAX_RESENDS = 5                     # copies after the first
DEFAULT_EXPIRY = 300.0              # seconds without a datagram before OFFLINE


# -- the hub's own action (the shared ones are in lib/hub/actions.py) ---------------
@dataclass(frozen=True)
class Verify:
    """Check `password` against the scrypt record `stored` off the loop, then
    call `Hub.verified(ticket, ok, now)`."""
    ticket: int
    stored: str
    password: str


# -- server sessions ---------------------------------------------------------------
class SessionState(enum.Enum):
    OFFLINE = "OFFLINE"
    LOGIN_RECEIVED = "LOGIN_RECEIVED"
    ONLINE = "ONLINE"
    MESSAGE_FORWARD = "MESSAGE_FORWARD"


OFFLINE, LOGIN_RECEIVED, ONLINE, MESSAGE_FORWARD = SessionState
LOGGED_IN = (ONLINE, MESSAGE_FORWARD)


@dataclass
class Pending:
    """A forward awaiting B's receipt."""
    text: str
    resends: int = 0


@dataclass
class Session:
    id: str
    state: SessionState = OFFLINE
    token: str = None
    addr: tuple = None                  # login IP:PORT: where forwards go
    last_seen: float = 0.0
    pending: dict = field(default_factory=dict)   # MSGID -> Pending
    attempt: tuple = None               # (ticket, addr) of the login being verified


def _same_ip(a, b):
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


def _expire_key(sid):
    return ("expire", sid)


def _resend_key(sid, msgid):
    return ("resend", sid, msgid)


class Hub:
    """All sessions of one hub. Sessions are created only for known ids, so
    spoofed ids cost no memory."""

    def __init__(self, accounts=None, expiry=DEFAULT_EXPIRY, token_factory=new_token):
        self.accounts = dict(accounts or {})
        self.expiry = expiry
        self.new_token = token_factory
        self.sessions = {}
        self.stats = Counter()          # dropped/answered datagrams by reason
        self._tickets = 0
        self._attempts = {}             # ticket -> session id, while scrypt runs

    def set_accounts(self, accounts):
        """Replace the accounts (users.txt reloaded); live sessions stay."""
        self.accounts = dict(accounts)

    def state(self, sid):
        session = self.sessions.get(sid)
        return session.state if session else OFFLINE

    # -- events ----------------------------------------------------------------
    def datagram(self, data, addr, now):
        """One datagram from `addr` = (ip, port) at time `now` -> actions."""
        size = len(data.encode("utf-8") if isinstance(data, str) else data)
        if size > MAX_DATAGRAM:
            return self._drop("oversized", f"{size} bytes from {addr}")
        try:
            dgram = parse(data)
        except Malformed as e:
            return self._drop("malformed", f"{e} from {addr}")
        if type(dgram) not in _CLIENT_KINDS:
            return self._drop("malformed", f"{type(dgram).__name__} sent to the server from {addr}")
        session = self.sessions.get(dgram.src) or Session(dgram.src)
        handler = _ON_DATAGRAM.get((type(dgram), session.state), Hub._stale)
        return handler(self, session, dgram, addr, now)

    def verified(self, ticket, ok, now):
        """The off-loop scrypt check of login `ticket` finished."""
        session = self.sessions.get(self._attempts.pop(ticket, None))
        if session is None or not session.attempt or session.attempt[0] != ticket:
            return []  # superseded by a later login, or logged off meanwhile
        return self._login_result(session, ok, session.attempt[1], now)

    def timer(self, key, now):
        """Timer `key` (set through SetTimer) fired."""
        return _ON_TIMER[key[0]](self, now, *key[1:])

    # -- datagram handlers, by (kind, state of the sender's session) -------------
    def _login(self, session, dgram, addr, now):
        """OFFLINE/ONLINE + login: check the IP, then the password (maybe off-loop)."""
        if not _same_ip(dgram.ip, addr[0]) or not 0 < dgram.port < 65536:
            # Answer the real source, never the claimed address (no reflection).
            self.stats["spoofed"] += 1
            log.info("login for %s claims %s:%s but came from %s", dgram.src, dgram.ip, dgram.port, addr[0])
            return [Send(LoginFailed(dgram.src).text(), addr)]
        reply_to = (addr[0], dgram.port)
        stored = self.accounts.get(dgram.src)
        if stored is None or dgram.src == SERVER:
            log.info("login for unknown id %s from %s:%s", dgram.src, *reply_to)
            return [Send(LoginFailed(dgram.src).text(), reply_to)]
        self._tickets += 1
        session.attempt = (self._tickets, reply_to)
        if session.state is OFFLINE:
            session.state = LOGIN_RECEIVED
            self.sessions[session.id] = session
        # A re-login while logged in keeps the session ONLINE until it succeeds,
        # so a wrong password cannot knock a user off.
        if passwords.is_hashed(stored):
            self._attempts[self._tickets] = session.id
            return [Verify(self._tickets, stored, dgram.password)]
        return self._login_result(session, passwords.verify(stored, dgram.password), reply_to, now)

    def _login_busy(self, session, dgram, addr, now):
        """LOGIN_RECEIVED + login: a resend while we verify; the answer is coming."""
        self.stats["login busy"] += 1
        return []

    def _login_result(self, session, ok, addr, now):
        """LOGIN_RECEIVED -> ONLINE (match) or OFFLINE (mismatch)."""
        session.attempt = None
        if not ok:
            if session.state is LOGIN_RECEIVED:
                session.state = OFFLINE
            log.info("login for %s from %s:%s: password does not match", session.id, *addr)
            return [Send(LoginFailed(session.id).text(), addr)]
        actions = []
        if session.state in LOGGED_IN and addr == session.addr:
            pass  # the client resent its login (our answer was lost): same token
        else:
            actions += self._clear_pending(session)
            session.token = self.new_token()
            session.addr = addr
            session.state = ONLINE
        session.last_seen = now
        log.info("%s logged in from %s:%s", session.id, *addr)
        actions += [Send(TokenAck(session.id, session.token).text(), addr),
                    SetTimer(_expire_key(session.id), self.expiry)]
        return actions

    def _message(self, sender, dgram, addr, now):
        """ONLINE/MESSAGE_FORWARD + message: echo to A, forward to B with B's token."""
        if not self._authentic(sender, dgram.token, addr):
            return [Send(Reply(dgram.src, dgram.token, dgram.msgid, ERR_TOKEN).text(), addr)]
        sender.last_seen = now
        dest = self.sessions.get(dgram.dst)
        if dest is None or dest.state not in LOGGED_IN:
            return [Send(Reply(sender.id, dgram.token, dgram.msgid, ERR_OFFLINE).text(), sender.addr)]
        actions = []
        if dgram.msgid not in dest.pending:  # else a resend of one still in flight
            forward = Message(sender.id, dest.id, dest.token, dgram.msgid, dgram.body).text()
            dest.pending[dgram.msgid] = Pending(forward)
            dest.state = MESSAGE_FORWARD
            self.stats["forwarded"] += 1
            log.debug("forward %s %s->%s", dgram.msgid, sender.id, dest.id)
            actions += [Send(forward, dest.addr),
                        SetTimer(_resend_key(dest.id, dgram.msgid), RESEND_INTERVAL)]
        reply = Reply(sender.id, dgram.token, dgram.msgid, SUCCESS + dgram.body)
        return [Send(reply.text(), sender.addr)] + actions

    def _not_logged_in(self, sender, dgram, addr, now):
        """OFFLINE/LOGIN_RECEIVED + message: never logged in, logged off or expired."""
        return [Send(Reply(dgram.src, dgram.token, dgram.msgid, ERR_LOGIN_AGAIN).text(), addr)]

    def _receipt(self, dest, dgram, addr, now):
        """MESSAGE_FORWARD + receipt: -> ONLINE once every forward is answered."""
        if not self._authentic(dest, dgram.token, addr):
            return []  # the protocol has no answer to a bad receipt
        dest.last_seen = now
        log.debug("receipt %s from %s", dgram.msgid, dest.id)
        if dest.pending.pop(dgram.msgid, None) is None:
            return []  # a receipt for a resent copy we already counted
        if not dest.pending:
            dest.state = ONLINE
        return [CancelTimer(_resend_key(dest.id, dgram.msgid))]

    def _logoff(self, session, dgram, addr, now):
        """ONLINE/MESSAGE_FORWARD + logoff: -> OFFLINE."""
        if not self._authentic(session, dgram.token, addr):
            return [Send(LogoffFailed(dgram.src).text(), addr)]
        reply = Send(TokenAck(session.id, session.token).text(), session.addr)
        log.info("%s logged off", session.id)
        return [reply] + self._go_offline(session)

    def _logoff_rejected(self, session, dgram, addr, now):
        """OFFLINE/LOGIN_RECEIVED + logoff: there is no token to match."""
        return [Send(LogoffFailed(dgram.src).text(), addr)]

    def _stale(self, session, dgram, addr, now):
        """A receipt from a client that is not logged in: nothing to close."""
        return self._drop("stale", f"{type(dgram).__name__} from {dgram.src} in {session.state.name}")

    # -- timer handlers ------------------------------------------------------------
    def _expire(self, now, sid):
        """ONLINE/MESSAGE_FORWARD -> OFFLINE after `expiry` s of silence; nothing is sent."""
        session = self.sessions.get(sid)
        if session is None or session.state not in LOGGED_IN:
            return []
        left = session.last_seen + self.expiry - now
        if left > 0:  # heard from it since the timer was set: sleep the rest
            return [SetTimer(_expire_key(sid), left)]
        log.info("%s expired after %g s of silence", sid, self.expiry)
        self.stats["expired"] += 1
        return self._go_offline(session)

    def _resend(self, now, sid, msgid):
        """A forward still without receipt: send it again, at most MAX_RESENDS times."""
        session = self.sessions.get(sid)
        pending = session.pending.get(msgid) if session else None
        if pending is None:
            return []
        if pending.resends < MAX_RESENDS:
            pending.resends += 1
            return [Send(pending.text, session.addr), SetTimer(_resend_key(sid, msgid), RESEND_INTERVAL)]
        del session.pending[msgid]
        self.stats["undelivered"] += 1
        log.info("forward %s to %s: no receipt after %d resends", msgid, sid, MAX_RESENDS)
        if not session.pending:
            session.state = ONLINE
        return []

    # -- helpers -------------------------------------------------------------------
    def _authentic(self, session, token, addr):
        """The token is this session's and the datagram comes from its login IP."""
        ok = (session.token is not None
              and hmac.compare_digest(token.encode("utf-8"), session.token.encode("utf-8"))
              and _same_ip(addr[0], session.addr[0]))
        if not ok:
            self.stats["spoofed"] += 1
            log.info("bad token or IP for %s from %s:%s", session.id, *addr)
        return ok

    def _clear_pending(self, session):
        actions = [CancelTimer(_resend_key(session.id, msgid)) for msgid in session.pending]
        session.pending.clear()
        return actions

    def _go_offline(self, session):
        actions = self._clear_pending(session) + [CancelTimer(_expire_key(session.id))]
        session.state, session.token, session.addr, session.attempt = OFFLINE, None, None, None
        return actions

    def _drop(self, reason, detail):
        self.stats[reason] += 1
        log.debug("dropped (%s): %s", reason, detail)
        return []


_CLIENT_KINDS = (Login, Logoff, Message, Receipt)

# The server diagram as a table: (datagram kind, sender's session state) -> handler.
# A missing pair is dropped as stale.
_ON_DATAGRAM = {
    (Login, OFFLINE): Hub._login,
    (Login, LOGIN_RECEIVED): Hub._login_busy,
    (Login, ONLINE): Hub._login,
    (Login, MESSAGE_FORWARD): Hub._login,
    (Message, OFFLINE): Hub._not_logged_in,
    (Message, LOGIN_RECEIVED): Hub._not_logged_in,
    (Message, ONLINE): Hub._message,
    (Message, MESSAGE_FORWARD): Hub._message,
    (Receipt, ONLINE): Hub._receipt,
    (Receipt, MESSAGE_FORWARD): Hub._receipt,
    (Logoff, OFFLINE): Hub._logoff_rejected,
    (Logoff, LOGIN_RECEIVED): Hub._logoff_rejected,
    (Logoff, ONLINE): Hub._logoff,
    (Logoff, MESSAGE_FORWARD): Hub._logoff,
}
_ON_TIMER = {"expire": Hub._expire, "resend": Hub._resend}
