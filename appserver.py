#!/usr/bin/env python3
"""np-social application server (started by the login server's launcher).

The one-time join secret comes in the environment variable NP_JOIN_SECRET.
"""
import argparse
import logging
import os
import signal
import sys

from lib.loop.address import parse_address
from lib.social import limits
from lib.loop.process import die_with_parent
from lib.loop.reactor import Reactor
from lib.loop.transports import raise_fd_limit
from lib.social.app_server import AppServer


def parse_args(argv):
    p = argparse.ArgumentParser(prog="appserver.py", description="np-social application server")
    p.add_argument("--login", required=True, metavar="HOST:PORT",
                   help="the login server's internal (app-server) address")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on for clients")
    p.add_argument("--port", type=int, default=0, help="client port (default: any free port)")
    p.add_argument("--advertise", default=None, metavar="HOST",
                   help="address clients should use (default: the listen address)")
    p.add_argument("--id", default=f"app-{os.getpid()}", help="name in logs")
    p.add_argument("--broker", default="127.0.0.1:61613", metavar="HOST:PORT")
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
        return 2
    raise_fd_limit()
    reactor = Reactor()
    server = AppServer(reactor, args.id, parse_address(args.login), secret, args.host, args.port,
                       advertise=args.advertise, broker=args.broker, limits=limits.from_args(args))
    server.start()
    reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
    reactor.add_signal_handler(signal.SIGINT, reactor.stop)
    reactor.run()
    server.close()
    return server.status or 0


if __name__ == "__main__":
    sys.exit(main())
