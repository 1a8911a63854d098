"""The UDP hub's I/O driver: carries out a `lib.hub.session.Hub`'s actions on
one UDP socket, the reactor's timers and the worker pool (scrypt), and re-reads
the accounts file when it changes. All protocol logic is in lib/hub/session.py
(sessions) and lib/hub/wire.py (datagrams)."""
import logging
import os
import socket
import time

from lib import ROOT
from lib.accounts import names, passwords
from lib.hub import session as hub
from lib.hub.actions import Send
from lib.loop.timers import TimerTable, timer_handlers

log = logging.getLogger("udp_hub")
DEFAULT_USERS = os.path.join(ROOT, "users.txt")
WATCH_INTERVAL = 1.0  # seconds between checks of the accounts file
MAX_NAMED = 20        # refused ids named in the load warning


def load_accounts(text, source):
    """users.txt text -> {id: stored password}. Ids that lib/accounts/names.py's rule
    refuses still load (existing files keep working); one warning names them."""
    accounts = passwords.parse_accounts(text)
    refused = [name for name in accounts if names.check(name)]
    if refused:
        more = f" and {len(refused) - MAX_NAMED} more" if len(refused) > MAX_NAMED else ""
        log.warning("%s: %d account id(s) break the name rule, loaded anyway: %s%s", source,
                    len(refused), ", ".join(map(repr, refused[:MAX_NAMED])), more)
    return accounts


class HubServer:
    """Carries out a Hub's actions on one UDP socket and the reactor's timers."""

    def __init__(self, reactor, host, port, users_path, expiry, limits=None):
        """`reactor`'s worker pool should have `limits.check_threads` threads:
        the hub asks for that many password checks at once."""
        self.reactor, self.users_path = reactor, users_path
        self.hub = hub.Hub(expiry=expiry, limits=limits)
        self.timers = TimerTable(reactor, self._fire)
        self._users_sig = None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        try:  # bursts from many clients must not overflow the default ~200 KiB
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        except OSError:
            pass
        self.address = self.sock.getsockname()[:2]
        self._watch_users()
        reactor.add_reader(self.sock, self._on_readable)

    def _on_readable(self):
        for _ in range(64):  # bounded so timers still run under a flood
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("recvfrom: %s", e)
                continue
            self._apply(self.hub.datagram(data, addr[:2], time.monotonic()))

    def _apply(self, actions):
        for action in actions:
            _DO[type(action)](self, action)

    def _send(self, action):
        try:
            self.sock.sendto(action.text.encode("utf-8"), action.addr)
        except OSError as e:  # full buffer or bad address: UDP may lose it anyway
            log.info("sendto %s: %s", action.addr, e)

    def _fire(self, key):
        self._apply(self.hub.timer(key, time.monotonic()))

    def _verify(self, action):
        # scrypt takes ~50 ms: off the loop, so other clients are not stalled.
        def done(ok, error):
            if error:
                log.warning("password check failed: %s", error)
            self._apply(self.hub.verified(action.ticket, bool(ok) and not error, time.monotonic()))
        self.reactor.run_in_thread(passwords.verify, action.stored, action.password, done=done)

    def _watch_users(self):
        """Reload the accounts when the file's mtime/size/inode change."""
        try:
            st = os.stat(self.users_path)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
            if sig != self._users_sig:
                with open(self.users_path, encoding="utf-8", errors="replace") as f:
                    accounts = load_accounts(f.read(), self.users_path)
                self.hub.set_accounts(accounts)
                self._users_sig = sig
                log.info("loaded %d accounts from %s", len(accounts), self.users_path)
        except OSError as e:
            if self._users_sig != "missing":
                log.warning("cannot read accounts (%s); keeping %d", e, len(self.hub.accounts))
                self._users_sig = "missing"
        self.reactor.call_later(WATCH_INTERVAL, self._watch_users)

    def close(self):
        self.reactor.forget(self.sock)
        self.sock.close()


_DO = {Send: HubServer._send, hub.Verify: HubServer._verify, **timer_handlers()}
