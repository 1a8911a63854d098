#!/usr/bin/env python3
"""np-social application server (started by the login server's launcher).

The one-time join secret comes in the environment variable NP_JOIN_SECRET.
"""
import argparse
import logging
import os
import signal
import socket
import sys
import time

from lib.loop.address import parse_address
from lib.social.app_service import AppService
from lib.loop.process import die_with_parent
from lib.loop.reactor import Reactor
from lib.loop.transports import raise_fd_limit


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
    return p.parse_args(argv)


def connect_login(address, deadline=30.0):
    until = time.monotonic() + deadline
    while True:
        try:
            sock = socket.create_connection(address, timeout=5.0)
            # No Nagle: a request written right after a heartbeat (which gets
            # no reply, so its ACK is delayed ~40 ms) must not wait for it.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError:
            if time.monotonic() > until:
                raise
            time.sleep(0.2)


def make_publisher(reactor, address):
    try:
        from lib.messaging import broker
    except ImportError:
        return None
    host, port = broker.parse_address(address)
    link = broker.BrokerLink(reactor, host, port, name="appserver")
    link.start()
    return link


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
    publisher = make_publisher(reactor, args.broker)
    service = AppService(reactor, args.id, publisher=publisher, on_link_lost=reactor.stop)
    host, port = service.listen(args.host, args.port)
    advertise = args.advertise if args.advertise is not None else host
    sock = connect_login(parse_address(args.login))
    service.attach(sock, secret, advertise, port)
    reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
    reactor.add_signal_handler(signal.SIGINT, reactor.stop)
    reactor.run()
    if publisher:
        publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
