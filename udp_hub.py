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

from lib import flags  # noqa: E402
from lib.hub import limits  # noqa: E402
from lib.hub.session import DEFAULT_EXPIRY  # noqa: E402
from lib.hub.server import DEFAULT_USERS, HubServer  # noqa: E402
from lib.loop.reactor import Reactor  # noqa: E402

log = logging.getLogger("udp_hub")

EXIT_FAILED = 1     # cannot bind HOST PORT
EXIT_ACCOUNTS = 3   # the accounts file cannot be read at start
EXIT_CODES = """exit status:
  0  stopped by SIGTERM or Ctrl-C
  1  cannot bind HOST PORT (in use, no such address)
  2  usage: a bad argument (one line on stderr)
  3  the accounts file (--users) cannot be read at start (missing, unreadable,
     a directory); once running, a file that goes away keeps the accounts loaded"""
ACCOUNTS = """accounts: the repository's users.txt holds the UDP hub's accounts. The TCP
login server (./server) keeps its own, in DATA/users.txt of its --data
directory: an account in one is not an account in the other."""


def read_check(path):
    """None if the accounts file can be opened and read, else the one-line reason."""
    try:
        with open(path, "rb") as f:
            f.read(1)
        return None
    except OSError as e:
        return f"cannot read the accounts file {path}: {e.strerror or e}"


def main(argv):
    ap = flags.ArgumentParser(prog="udp_hub.py", description="UDP message hub (see docs/udp-hub.md).",
                              epilog=ACCOUNTS + "\n\nEvery limit, and what a client sees when it "
                              "hits it:\ndocs/limits.md, section \"UDP hub\".\n\n" + EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host", help="address to bind, e.g. 127.0.0.1")
    ap.add_argument("port", type=flags.port(), help="UDP port (0: any free port, logged at start)")
    ap.add_argument("--users", default=DEFAULT_USERS, metavar="FILE",
                    help="the hub's accounts, one `ID PASSWORD` a line, re-read when it changes "
                         "(default: users.txt next to this script, the repository's)")
    ap.add_argument("--expiry", type=float, default=DEFAULT_EXPIRY, metavar="S",
                    help="seconds without a datagram before a client is logged off (default: 300)")
    ap.add_argument("-v", "--verbose", action="store_true", help="also log every dropped datagram")
    limits.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.expiry <= 0:
        ap.error("--expiry must be positive")
    users = os.path.abspath(args.users)
    problem = read_check(users)
    if problem:
        print(f"udp_hub.py: {problem}", file=sys.stderr)
        return EXIT_ACCOUNTS
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s udp_hub %(levelname)s %(message)s")
    hub_limits = limits.from_args(args)
    reactor = Reactor(workers=hub_limits.check_threads)
    try:
        server = HubServer(reactor, args.host, args.port, users, args.expiry, hub_limits)
    except OSError as e:
        log.error("cannot bind %s:%s: %s", args.host, args.port, e.strerror or e)
        return EXIT_FAILED
    for signum in (signal.SIGINT, signal.SIGTERM):
        reactor.add_signal_handler(signum, reactor.stop)
    log.info("listening on %s:%s (expiry %g s); %d UDP hub accounts from %s (TCP accounts "
             "are the login server's, in its DATA/users.txt)", *server.address, args.expiry,
             len(server.hub.accounts), users)
    reactor.run()
    server.close()
    log.info("stopped; datagram counts: %s", dict(server.hub.stats) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
