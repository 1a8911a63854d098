#!/usr/bin/env python3
"""UDP hub: clients log in with a password and message each other through it.

Thin main: argparse and wiring; the driver is lib/hub/server.py, the session
state machine lib/hub/session.py, the datagram codec lib/hub/wire.py. The
accounts file (users.txt format) is re-read when it changes. Protocol and overview: docs/udp-hub.md.
"""
import argparse
import logging
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lib.hub import limits  # noqa: E402
from lib.hub.session import DEFAULT_EXPIRY  # noqa: E402
from lib.hub.server import DEFAULT_USERS, HubServer  # noqa: E402
from lib.loop.reactor import Reactor  # noqa: E402

log = logging.getLogger("udp_hub")


def main(argv):
    ap = argparse.ArgumentParser(description="UDP message hub (see docs/udp-hub.md).",
                                 epilog="Every limit, and what a client sees when it hits it: "
                                        "docs/limits.md, section \"UDP hub\".")
    ap.add_argument("host", help="address to bind, e.g. 127.0.0.1")
    ap.add_argument("port", type=int, help="UDP port (0: any free port, logged at start)")
    ap.add_argument("--users", default=DEFAULT_USERS, metavar="FILE",
                    help="accounts, one `ID PASSWORD` a line (default: users.txt next to this script)")
    ap.add_argument("--expiry", type=float, default=DEFAULT_EXPIRY, metavar="S",
                    help="seconds without a datagram before a client is logged off (default: 300)")
    ap.add_argument("-v", "--verbose", action="store_true", help="also log every dropped datagram")
    limits.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.expiry <= 0:
        ap.error("--expiry must be positive")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s udp_hub %(levelname)s %(message)s")
    hub_limits = limits.from_args(args)
    reactor = Reactor(workers=hub_limits.check_threads)
    try:
        server = HubServer(reactor, args.host, args.port, args.users, args.expiry, hub_limits)
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
