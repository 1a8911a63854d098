"""The login half of the hub's session machine (lib/hub/session.py's `Hub`
inherits it): the login guard and transition, and the password checks they
queue. A login is decided at once when no scrypt is needed (plain text, a
known password, an unknown id); otherwise it waits in the `CheckQueue`
(lib/hub/guards.py): at most one check running per id, fair between source
addresses, bounded. It is answered at the address it names when that is
the source's IP, else at the source (NAT).
"""
import logging
from dataclasses import dataclass

from lib.hub.actions import SetTimer
from lib.hub.guards import Check, address_key
from lib.hub.state import LOGGED_IN, LOGIN_RECEIVED, OFFLINE, ONLINE, same_ip
from lib.hub.wire import SERVER, LoginFailed, TokenAck

log = logging.getLogger("hub")


@dataclass(frozen=True)
class Verify:
    """Check `password` against the scrypt record `stored` off the loop, then
    call `Hub.verified(ticket, ok, now)`."""
    ticket: int
    stored: str
    password: str


def expire_key(sid):
    return ("expire", sid)


class Logins:
    """Mixed into `Hub`: uses its sessions, accounts, limits' policies
    (`checks`, `known`, `login_rate`) and helpers (`_send`, `_drop`, ...)."""

    def verified(self, ticket, ok, now):
        """The off-loop scrypt check `ticket` finished."""
        check, started = self.checks.finished(ticket)
        if check is None:
            return []
        if ok:
            self.known.learn(check.sid, check.stored, check.password)
        return self._check_done(check, ok, now) + self._start(started, now)

    def _login_rate(self, session, dgram, addr, now):
        """Logins per source address: a flood beyond the burst is dropped unanswered."""
        if self.login_rate.take(address_key(addr[0]), now):
            return None
        return self._drop("login rate", f"login for {dgram.src} from {addr}")

    def _login(self, session, dgram, addr, now):
        """Any state + login: decide at once when no scrypt is needed, else
        queue a check (OFFLINE -> LOGIN_RECEIVED; a logged-in session stays
        ONLINE until one succeeds, so a wrong password cannot knock it off)."""
        reply_to = self._login_reply_to(dgram, addr)
        stored = self.accounts.get(dgram.src)
        if stored is None or dgram.src == SERVER:
            log.debug("login for unknown id %s from %s:%s", dgram.src, *addr)
            return self._send(LoginFailed(dgram.src).text(), reply_to, False, self._received)
        verdict = self.known.verdict(dgram.src, stored, dgram.password)
        if verdict is not None:
            return self._login_result(session, verdict, reply_to, now, self._received)
        check = Check(self._tickets + 1, dgram.src, address_key(addr[0]), reply_to, dgram.password, stored,
                      self._received)
        if self.checks.duplicate(check):
            return self._drop("login busy", f"{dgram.src} from {addr}: the same login is being checked")
        self._tickets += 1
        started, refused = self.checks.submit(check)
        if check not in refused:
            session.checks += 1
            if session.state is OFFLINE:
                session.state = LOGIN_RECEIVED
            self.sessions[session.id] = session
        for gone in refused:
            self._given_up(gone, is_new=gone is check)
        return self._start(started, now)

    # -- helpers -------------------------------------------------------------------
    def _login_reply_to(self, dgram, addr):
        """Where a login is answered: the IP:PORT it names when that IP is the
        source's (the seed's client receives there), else the observed source
        (behind NAT), never an address the sender has not shown it owns."""
        if same_ip(dgram.ip, addr[0]) and 0 < dgram.port < 65536:
            return (addr[0], dgram.port)
        self.stats["login at source"] += 1
        return addr

    def _start(self, started, now):
        """Checks the queue lets run: `Verify`, or decided here when a check
        that finished meanwhile taught us the answer."""
        actions, work = [], list(started)
        while work:
            check = work.pop(0)
            verdict = self.known.verdict(check.sid, check.stored, check.password)
            if verdict is None:
                actions.append(Verify(check.ticket, check.stored, check.password))
                continue
            work += self.checks.finished(check.ticket)[1]
            actions += self._check_done(check, verdict, now)
        return actions

    def _check_done(self, check, ok, now):
        session = self.sessions[check.sid]
        session.checks -= 1
        return self._login_result(session, ok, check.reply_to, now, check.size)

    def _given_up(self, check, is_new):
        """A check the queue refused (the newcomer) or displaced: no answer;
        the client resends its login."""
        self.stats["check refused" if is_new else "check displaced"] += 1
        log.debug("password check for %s from %s refused (queue)", check.sid, check.key)
        if not is_new:
            session = self.sessions[check.sid]
            session.checks -= 1
            if session.state is LOGIN_RECEIVED and not session.checks:
                session.state = OFFLINE

    def _login_result(self, session, ok, reply_to, now, size):
        """LOGIN_RECEIVED -> ONLINE (match) or OFFLINE (mismatch, no other check
        left); `size`: the login datagram's bytes (they pay for the answer)."""
        if not ok:
            if session.state is LOGIN_RECEIVED and not session.checks:
                session.state = OFFLINE
            log.info("login for %s from %s:%s: password does not match", session.id, *reply_to)
            return self._send(LoginFailed(session.id).text(), reply_to, self._proven(session, reply_to), size)
        actions = []
        if not (session.state in LOGGED_IN and reply_to == session.addr):
            # (else the client resent its login, our answer was lost: same token)
            actions += self._clear_pending(session)
            session.token = self.new_token()
            session.forget_answers()       # a new token: replays of the old one fail anyway
            if reply_to != session.addr:
                session.addr, session.proven = reply_to, False
            session.state = ONLINE
        self.sessions[session.id] = session
        session.last_seen = now
        log.info("%s logged in from %s:%s", session.id, *reply_to)
        return actions + self._send(TokenAck(session.id, session.token).text(), reply_to, session.proven,
                                    size) + [SetTimer(expire_key(session.id), self.expiry)]
