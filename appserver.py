#!/usr/bin/env python3
"""np-social application server (started by the login server's launcher).

The one-time join secret comes in the environment variable NP_JOIN_SECRET.
"""
import argparse
import logging
import os
import signal
import sys

from lib import flags
from lib.loop.address import parse_address
from lib.social import limits
from lib.loop.process import die_with_parent
from lib.loop.reactor import Reactor
from lib.loop.transports import raise_fd_limit
from lib.social.app_server import AppServer


EXIT_FAILED = 1     # cannot listen, or cannot reach the login server
EXIT_USAGE = flags.USAGE
EXIT_CODES = """exit status:
  0  stopped: SIGTERM or Ctrl-C, the login server ended or lost the link,
     or (--die-with-parent) the parent died
  1  cannot listen on --host/--port, or cannot reach the login server at --login
  2  usage: a bad argument, or NP_JOIN_SECRET is not set (one line on stderr)"""


def parse_args(argv):
    p = flags.ArgumentParser(prog="appserver.py", description="np-social application server",
                             epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--login", required=True, metavar="HOST:PORT", type=flags.address_text(),
                   help="the login server's internal (app-server) address")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on for clients")
    p.add_argument("--port", type=flags.port(), default=0, help="client port (default: any free port)")
    p.add_argument("--advertise", default=None, metavar="HOST",
                   help="address clients should use (default: the listen address)")
    p.add_argument("--id", default=f"app-{os.getpid()}", help="name in logs")
    p.add_argument("--broker", default="127.0.0.1:61613", metavar="HOST:PORT",
                   type=flags.address_text(), help="ActiveMQ STOMP address (default 127.0.0.1:61613)")
    p.add_argument("--die-with-parent", action="store_true",
                   help="exit when the parent process dies (local launcher)")
    p.add_argument("--log-level", default="INFO")
    limits.add_arguments(p, only=limits.APP_SERVER)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.die_with_parent:
        if not die_with_parent():
            sys.exit(0)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s {args.id} %(levelname)s %(message)s")
    secret = os.environ.pop("NP_JOIN_SECRET", "")
    if not secret:
        print("appserver.py: NP_JOIN_SECRET is not set", file=sys.stderr)
        return EXIT_USAGE
    raise_fd_limit()
    reactor = Reactor()
    # Before the listening socket exists: a SIGTERM as soon as it accepts is a clean stop.
    reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
    reactor.add_signal_handler(signal.SIGINT, reactor.stop)
    try:
        server = AppServer(reactor, args.id, parse_address(args.login), secret, args.host, args.port,
                           advertise=args.advertise, broker=args.broker, limits=limits.from_args(args))
    except OSError as e:
        print(f"appserver.py: cannot listen on {args.host}:{args.port}: {e.strerror or e}",
              file=sys.stderr)
        return EXIT_FAILED
    server.start()
    reactor.run()
    server.close()
    return server.status or 0


if __name__ == "__main__":
    sys.exit(main())
