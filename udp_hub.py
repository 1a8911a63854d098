#!/usr/bin/env python3
"""UDP hub: clients log in with a password and message each other through it.

Thin main: argparse, one UDP socket, lib/reactor.py, and the session state
machine of lib/hub.py. The accounts file (users.txt format) is re-read when it
changes. Protocol: shared/spec/UDP-HUB.md; overview: docs/udp-hub.md.
"""
import argparse
import logging
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lib import hub, passwords  # noqa: E402
from lib.reactor import Reactor  # noqa: E402

log = logging.getLogger("udp_hub")
DEFAULT_USERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "users.txt")
WATCH_INTERVAL = 1.0  # seconds between checks of the accounts file


class HubServer:
    """Carries out a Hub's actions on one UDP socket and the reactor's timers."""

    def __init__(self, reactor, host, port, users_path, expiry):
        self.reactor, self.users_path = reactor, users_path
        self.hub = hub.Hub(expiry=expiry)
        self.timers = {}
        self._users_sig = None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
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

    def _set_timer(self, action):
        self._cancel_timer(action)
        self.timers[action.key] = self.reactor.call_later(action.delay, self._fire, action.key)

    def _cancel_timer(self, action):
        timer = self.timers.pop(action.key, None)
        if timer:
            timer.cancel()

    def _fire(self, key):
        self.timers.pop(key, None)
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
                    accounts = passwords.parse_accounts(f.read())
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


_DO = {hub.Send: HubServer._send, hub.SetTimer: HubServer._set_timer,
       hub.CancelTimer: HubServer._cancel_timer, hub.Verify: HubServer._verify}


def main(argv):
    ap = argparse.ArgumentParser(description="UDP message hub (see docs/udp-hub.md).")
    ap.add_argument("host", help="address to bind, e.g. 127.0.0.1")
    ap.add_argument("port", type=int, help="UDP port (0: any free port, logged at start)")
    ap.add_argument("--users", default=DEFAULT_USERS, metavar="FILE",
                    help="accounts, one `ID PASSWORD` a line (default: users.txt next to this script)")
    ap.add_argument("--expiry", type=float, default=hub.DEFAULT_EXPIRY, metavar="S",
                    help="seconds without a datagram before a client is logged off (default: 300)")
    ap.add_argument("-v", "--verbose", action="store_true", help="also log every dropped datagram")
    args = ap.parse_args(argv)
    if args.expiry <= 0:
        ap.error("--expiry must be positive")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s udp_hub %(levelname)s %(message)s")
    reactor = Reactor()
    try:
        server = HubServer(reactor, args.host, args.port, args.users, args.expiry)
    except OSError as e:
        log.error("cannot bind %s:%s: %s", args.host, args.port, e)
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):
        reactor.add_signal_handler(signum, reactor.stop)
    log.info("listening on %s:%s (expiry %g s)", *server.address, args.expiry)
    reactor.run()
    server.close()
    log.info("stopped; datagram counts: %s", dict(server.hub.stats) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
