"""UDP hub: the server's session state machine (one session per client id).

Bring your own I/O (like h11): nothing here touches a socket or a clock.
`Hub.datagram(data, addr, now)`, `Hub.verified(ticket, ok, now)` and
`Hub.timer(key, now)` return a list of actions -- `Send`, `SetTimer`,
`CancelTimer` (lib/hub/actions.py) and `Verify` (lib/hub/logins.py) -- that a driver
(lib/hub/server.py) carries out. The datagrams are read and written by
lib/hub/wire.py; their exact strings are fixed by docs/udp-hub.md.

The seed's diagram is the table `_ON_DATAGRAM` at the end: (kind, state) ->
(guards, transition). A guard either lets the datagram through (None) or
answers it itself (a list of actions, maybe empty); the defences against
floods, guessing, replays and reflection are guards (policies in
lib/hub/guards.py, numbers in lib/hub/limits.py). docs/udp-hub.md explains
the states, the timers and each guard.
"""
import hmac
import logging
from collections import Counter

from lib.hub.actions import CancelTimer, Send, SetTimer
from lib.hub.guards import Buckets, CheckQueue, KnownPasswords, Ledger, address_key
from lib.hub.limits import HubLimits
from lib.hub.logins import Logins, Verify, expire_key as _expire_key  # noqa: F401 (Verify: re-exported)
from lib.hub.state import (LOGGED_IN, LOGIN_RECEIVED, MESSAGE_FORWARD, OFFLINE, ONLINE, Pending,  # noqa: F401
                           Session, SessionState, same_ip)  # (SessionState: re-exported)
from lib.hub.wire import (ERR_LOGIN_AGAIN, ERR_OFFLINE, ERR_TOKEN, MAX_DATAGRAM, SUCCESS,
                          Login, Logoff, LogoffFailed, Malformed, Message, Receipt, Reply,
                          TokenAck, new_token, parse)

log = logging.getLogger("hub")

RESEND_INTERVAL = 1.0               # seconds between copies of an unanswered forward
MAX_RESENDS = 5                     # copies after the first (to an address that has shown it receives)
DEFAULT_EXPIRY = 300.0              # seconds without a datagram before OFFLINE


def _resend_key(sid, sender, msgid):
    return ("resend", sid, sender, msgid)


class Hub(Logins):
    """All sessions of one hub. Sessions are created only for known ids, so
    spoofed ids cost no memory."""

    def __init__(self, accounts=None, expiry=DEFAULT_EXPIRY, token_factory=new_token, limits=None):
        self.accounts = dict(accounts or {})
        self.expiry = expiry
        self.new_token = token_factory
        self.limits = limits = limits or HubLimits()
        self.sessions = {}
        self.stats = Counter()          # dropped/answered datagrams by reason
        self.checks = CheckQueue(limits.check_threads, limits.check_queue, limits.checks_per_address)
        self.login_rate = Buckets(limits.logins_per_minute, 60.0, limits.address_table)
        self.session_token_errors = Buckets(limits.token_errors_per_minute, 60.0, limits.address_table)
        self.address_token_errors = Buckets(limits.address_token_errors_per_minute, 60.0,
                                            limits.address_table)
        self.ledger = Ledger(limits.reflect_allowance, limits.address_table)
        self.known = KnownPasswords()
        self._tickets = 0
        self._received = 0              # bytes of the datagram being handled (pays for its answer)
        # Per-message debug lines cost a logging call each even when off: ask once
        # (udp_hub.py configures logging before it builds the hub).
        self._trace = log.isEnabledFor(logging.DEBUG)

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
        self._received = size
        if size > MAX_DATAGRAM:
            return self._drop("oversized", f"{size} bytes from {addr}")
        try:
            dgram = parse(data)
        except Malformed as e:
            return self._drop("malformed", f"{e} from {addr}")
        if type(dgram) not in _CLIENT_KINDS:
            return self._drop("malformed", f"{type(dgram).__name__} sent to the server from {addr}")
        session = self.sessions.get(dgram.src) or Session(dgram.src)
        guards, transition = _ON_DATAGRAM.get((type(dgram), session.state), _STALE)
        for guard in guards:
            answer = guard(self, session, dgram, addr, now)
            if answer is not None:
                return answer
        return transition(self, session, dgram, addr, now)

    def timer(self, key, now):
        """Timer `key` (set through SetTimer) fired."""
        return _ON_TIMER[key[0]](self, now, *key[1:])

    # -- guards: (session, dgram, addr, now) -> None (pass) or the answer ---------------
    def _token(self, session, dgram, addr, now):
        """The session's token, from its IP; else `token error!`. Wrong tokens
        are charged to the address, and to the session when they come from
        its IP (from elsewhere one could never pass, so it must not lock the
        owner out); after a burst of either, the answer is `token error!`
        without checking. Passing proves the session's address: only that
        address was sent the token."""
        limited = (self.address_token_errors.buckets or self.session_token_errors.buckets) and not (
            self.address_token_errors.available(address_key(addr[0]), now)
            and (not same_ip(session.addr[0], addr[0]) or self.session_token_errors.available(session.id, now)))
        if limited:
            self.stats["token limited"] += 1
        elif (session.token is not None   # (inline: this is on every message's path)
                and hmac.compare_digest(dgram.token.encode("utf-8"), session.token.encode("utf-8"))
                and same_ip(addr[0], session.addr[0])):
            session.last_seen = now
            session.proven = True
            return None
        else:
            self.stats["spoofed"] += 1
            log.debug("bad token or IP for %s from %s:%s", session.id, *addr)
            self.address_token_errors.charge(address_key(addr[0]), now)
            if same_ip(session.addr[0], addr[0]):
                self.session_token_errors.charge(session.id, now)
        return self._token_error(session, dgram, addr)

    def _replayed(self, sender, dgram, addr, now):
        """A MSGID this session already sent: the same answer again, no second forward."""
        forwarded = sender.answered.get(dgram.msgid)
        if forwarded is None:
            return None
        self.stats["replayed"] += 1
        body = SUCCESS + dgram.body if forwarded else ERR_OFFLINE
        return [Send(Reply(sender.id, dgram.token, dgram.msgid, body).text(), sender.addr)]

    # -- transitions, by (kind, state of the sender's session) ----------------------------
    def _message(self, sender, dgram, addr, now):
        """ONLINE/MESSAGE_FORWARD + message (authentic, new): echo to A, and
        forward to B with B's token (B becomes MESSAGE_FORWARD)."""
        dest = self.sessions.get(dgram.dst)
        online = dest is not None and dest.state in LOGGED_IN
        sender.remember(dgram.msgid, online, self.limits.replay_memory)   # for `_replayed`
        if not online:
            return [Send(Reply(sender.id, dgram.token, dgram.msgid, ERR_OFFLINE).text(), sender.addr)]
        forward = Message(sender.id, dest.id, dest.token, dgram.msgid, dgram.body).text()
        dest.pending.setdefault(dgram.msgid, {})[sender.id] = Pending(forward, dgram.body)
        dest.state = MESSAGE_FORWARD
        self.stats["forwarded"] += 1
        if self._trace:
            log.debug("forward %s %s->%s", dgram.msgid, sender.id, dest.id)
        reply = Reply(sender.id, dgram.token, dgram.msgid, SUCCESS + dgram.body)
        out = [Send(reply.text(), sender.addr)]
        if dest.proven:
            out.append(Send(forward, dest.addr))
        else:   # one datagram per datagram received about it, within the ledger
            out += self._send(forward, dest.addr, False, self._received)
        out.append(SetTimer(("resend", dest.id, sender.id, dgram.msgid), RESEND_INTERVAL))   # _resend_key
        return out

    def _not_logged_in(self, session, dgram, addr, now):
        """OFFLINE/LOGIN_RECEIVED + message: never logged in, logged off or expired."""
        to, proven = self._answer_to(session, addr)
        return self._send(Reply(dgram.src, dgram.token, dgram.msgid, ERR_LOGIN_AGAIN).text(), to, proven,
                          self._received)

    def _receipt(self, dest, dgram, addr, now):
        """MESSAGE_FORWARD + receipt: the forward it names (MSGID, then TEXT
        among senders that picked the same MSGID) is done; -> ONLINE once
        every forward is answered."""
        senders = dest.pending.get(dgram.msgid)
        if not senders:
            return []  # a receipt for a resent copy we already counted
        if len(senders) == 1:
            for sender in senders:   # the one (the common case, without calls)
                break
        else:
            sender = next((s for s, p in senders.items() if p.body == dgram.body), None)
            if sender is None:
                return self._drop("receipt unmatched", f"{dgram.msgid} from {dest.id}")
        if self._trace:
            log.debug("receipt %s from %s", dgram.msgid, dest.id)
        del senders[sender]
        if not senders:
            del dest.pending[dgram.msgid]
        if not dest.pending:
            dest.state = ONLINE
        return [CancelTimer(("resend", dest.id, sender, dgram.msgid))]   # _resend_key

    def _logoff(self, session, dgram, addr, now):
        """ONLINE/MESSAGE_FORWARD + logoff: -> OFFLINE."""
        reply = Send(TokenAck(session.id, session.token).text(), session.addr)
        log.info("%s logged off", session.id)
        return [reply] + self._go_offline(session)

    def _logoff_rejected(self, session, dgram, addr, now):
        """OFFLINE/LOGIN_RECEIVED + logoff: there is no token to match."""
        to, proven = self._answer_to(session, addr)
        return self._send(LogoffFailed(dgram.src).text(), to, proven, self._received)

    def _stale(self, session, dgram, addr, now):
        """A receipt from a client that is not logged in: nothing to close."""
        return self._drop("stale", f"{type(dgram).__name__} from {dgram.src} in {session.state.name}")

    # -- timers ----------------------------------------------------------------------
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

    def _resend(self, now, sid, sender, msgid):
        """A forward still without receipt: again, at most MAX_RESENDS times --
        but only to an address that has shown it receives (no amplification:
        an unproven one gets one datagram per datagram received about it)."""
        session = self.sessions.get(sid)
        pending = session.pending.get(msgid, {}).get(sender) if session else None
        if pending is None:
            return []
        if pending.resends < MAX_RESENDS:
            pending.resends += 1
            again = SetTimer(_resend_key(sid, sender, msgid), RESEND_INTERVAL)
            if session.proven:
                return [Send(pending.text, session.addr), again]
            self.stats["resend withheld"] += 1
            return [again]
        del session.pending[msgid][sender]
        if not session.pending[msgid]:
            del session.pending[msgid]
        self.stats["undelivered"] += 1
        log.info("forward %s from %s to %s: no receipt after %d resends", msgid, sender, sid, MAX_RESENDS)
        if not session.pending:
            session.state = ONLINE
        return []

    # -- helpers -------------------------------------------------------------------
    def _answer_to(self, session, addr):
        """(address, proven) for an answer about `session`: its remembered
        address when the datagram comes from the session's IP, else the source."""
        if session.addr is not None and same_ip(session.addr[0], addr[0]):
            return session.addr, session.proven
        return addr, False

    def _proven(self, session, addr):
        return session.proven and addr == session.addr

    def _token_error(self, session, dgram, addr):
        build = _TOKEN_ERROR[type(dgram)]
        if build is None:
            return []  # the protocol has no answer to a bad receipt
        to, proven = self._answer_to(session, addr)
        return self._send(build(dgram), to, proven, self._received)

    def _send(self, text, addr, proven, about):
        """One datagram to `addr`. To an address that has not shown it
        receives, only within the ledger of its IP, credited with `about`:
        the bytes of the datagram this answers (or forwards). So the bytes
        sent there never exceed those received, beyond the allowance."""
        if proven:
            return [Send(text, addr)]
        key = address_key(addr[0])
        self.ledger.credit(key, about)
        if self.ledger.spend(key, len(text.encode("utf-8"))):
            return [Send(text, addr)]
        return self._drop("reflection", f"{len(text)} bytes to unproven {addr}")

    def _clear_pending(self, session):
        actions = [CancelTimer(_resend_key(session.id, sender, msgid))
                   for sender, msgid in session.pending_keys()]
        session.pending.clear()
        return actions

    def _go_offline(self, session):
        """-> OFFLINE; the address (and whether it has proven itself) stays until the next login."""
        actions = self._clear_pending(session) + [CancelTimer(_expire_key(session.id))]
        session.state, session.token = OFFLINE, None
        session.forget_answers()
        return actions

    def _drop(self, reason, detail):
        self.stats[reason] += 1
        log.debug("dropped (%s): %s", reason, detail)
        return []


_CLIENT_KINDS = (Login, Logoff, Message, Receipt)
_TOKEN_ERROR = {   # the answer to a wrong token, by kind
    Message: lambda d: Reply(d.src, d.token, d.msgid, ERR_TOKEN).text(),
    Logoff: lambda d: LogoffFailed(d.src).text(),
    Receipt: None,
}

# The server diagram as a table: (datagram kind, sender's session state) ->
# (guards, transition). A missing pair is dropped as stale.
_LOGIN = ((Hub._login_rate,), Hub._login)
_AUTHENTIC = (Hub._token,)
_STALE = ((), Hub._stale)
_ON_DATAGRAM = {
    (Login, OFFLINE): _LOGIN,
    (Login, LOGIN_RECEIVED): _LOGIN,
    (Login, ONLINE): _LOGIN,
    (Login, MESSAGE_FORWARD): _LOGIN,
    (Message, OFFLINE): ((), Hub._not_logged_in),
    (Message, LOGIN_RECEIVED): ((), Hub._not_logged_in),
    (Message, ONLINE): (_AUTHENTIC + (Hub._replayed,), Hub._message),
    (Message, MESSAGE_FORWARD): (_AUTHENTIC + (Hub._replayed,), Hub._message),
    (Receipt, ONLINE): (_AUTHENTIC, Hub._receipt),
    (Receipt, MESSAGE_FORWARD): (_AUTHENTIC, Hub._receipt),
    (Logoff, OFFLINE): ((), Hub._logoff_rejected),
    (Logoff, LOGIN_RECEIVED): ((), Hub._logoff_rejected),
    (Logoff, ONLINE): (_AUTHENTIC, Hub._logoff),
    (Logoff, MESSAGE_FORWARD): (_AUTHENTIC, Hub._logoff),
}
_ON_TIMER = {"expire": Hub._expire, "resend": Hub._resend}
