#!/usr/bin/env python3
"""np-social login server: `./server HOST PORT [options]` (see --help)."""
import argparse
import logging
import os
import signal
import sys

from lib.loop.address import format_address
from lib.fleet.pool import Fleet
from lib.social import limits
from lib.social.login_server import LoginServer
from lib.social.files import UnsafePath
from lib.loop.process import watch_exit
from lib.loop.reactor import Reactor
from lib.loop.transports import raise_fd_limit
from lib.social.store import SNAPSHOT_EVERY, Store, StoreError, StoreFailure

# Exit status when a write to the data directory failed (docs/durability.md).
EXIT_STORE_FAILED = 3

LAUNCHERS = ("local", "ec2")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="server", description="np-social login server: accounts, "
                                "sessions and social data; launches application servers.")
    p.add_argument("host", help="address to listen on, e.g. 0.0.0.0")
    p.add_argument("port", type=int, help="client port, e.g. 8888")
    p.add_argument("--data", default="./data", help="data directory (default ./data)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="how app servers are started (default local processes)")
    p.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                   help="terminate an app server with no users after S seconds (default 30)")
    p.add_argument("--max-app-servers", type=int, default=30, metavar="N",
                   help="never run more than N app servers (default 30: free accounts must not "
                        "buy servers; logins over it get a clear error)")
    p.add_argument("--spare", type=int, default=0, metavar="N",
                   help="keep N empty app servers warm (default 0)")
    p.add_argument("--capacity", type=int, default=10, metavar="N",
                   help="users per app server (default 10, as the course requires)")
    p.add_argument("--broker", default="127.0.0.1:61613", metavar="HOST:PORT",
                   help="ActiveMQ STOMP address (default 127.0.0.1:61613)")
    p.add_argument("--internal-host", default=None, metavar="HOST",
                   help="address the port app servers register on listens on (default 127.0.0.1 "
                        "with --launcher local; with --launcher ec2 the wildcard of HOST's family, "
                        "0.0.0.0 or ::, so instances reach it at --advertise)")
    p.add_argument("--internal-port", type=int, default=0, metavar="N",
                   help="port app servers register on (default: any free port)")
    p.add_argument("--conn-idle", type=float, default=300.0, metavar="S",
                   help="close client connections silent for S seconds (default 300)")
    p.add_argument("--snapshot-every", type=int, default=SNAPSHOT_EVERY, metavar="BYTES",
                   help="write a snapshot (in a child process) after BYTES of journal "
                        f"(default {SNAPSHOT_EVERY})")
    p.add_argument("--no-fsync", action="store_true",
                   help="do not fsync (benchmarks only: a crash may lose acknowledged writes)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    limits.add_arguments(p)
    try:
        from lib.fleet.launchers import ec2
        ec2.add_arguments(p)
    except ImportError:
        pass
    args = p.parse_args(argv)
    if args.capacity < 1 or (args.max_app_servers is not None and args.max_app_servers < 1) \
            or args.spare < 0 or args.idle_timeout < 0 or args.snapshot_every < 1:
        p.error("--capacity, --max-app-servers and --snapshot-every must be >= 1; "
                "--spare and --idle-timeout >= 0")
    return args


def internal_host(args):
    """Loopback unless app servers run elsewhere (EC2), so strangers on the
    network never reach the internal port."""
    if args.internal_host:
        return args.internal_host
    if args.launcher == "ec2":
        return "::" if ":" in args.host else "0.0.0.0"
    return "127.0.0.1"


def make_launcher(args, reactor, internal_address):
    host, port = internal_address
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if args.launcher == "ec2":
        from lib.fleet.launchers import ec2
        return ec2.make(args, reactor, internal_address)
    from lib.fleet.launchers.local import LocalLauncher
    return LocalLauncher(reactor, (host, port), args.host, broker=args.broker,
                         extra_args=limits.to_argv(limits.from_args(args), only=limits.APP_SERVER))


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise_fd_limit()
    reactor = Reactor()
    try:
        store = Store(args.data, fsync=not args.no_fsync, snapshot_every=args.snapshot_every,
                      watch_child=lambda pid, on_exit: watch_exit(reactor, pid, on_exit)).open()
    except (StoreError, UnsafePath) as e:
        print(f"server: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"server: data directory {os.path.abspath(args.data)}: {e.strerror}", file=sys.stderr)
        return 1
    reactor.add_before_sleep(store.commit)   # group commit: before the turn's replies leave
    service = LoginServer(reactor, store, fleet=None, broker=args.broker, conn_idle=args.conn_idle,
                          limits=limits.from_args(args))
    try:
        public, internal = service.listen(args.host, args.port, internal_host(args), args.internal_port)
    except OSError as e:
        print(f"server: cannot listen on {args.host}:{args.port} (app servers: "
              f"{internal_host(args)}:{args.internal_port}): {e.strerror}", file=sys.stderr)
        store.close()
        return 1
    launcher = make_launcher(args, reactor, internal)
    fleet = Fleet(reactor, launcher, capacity=args.capacity, max_servers=args.max_app_servers,
                  idle_timeout=args.idle_timeout, spare=args.spare,
                  launch_deadline=getattr(launcher, "launch_deadline", 30.0))
    launcher.on_exit = fleet.lost
    service.fleet = fleet

    def tick():
        fleet.tick()
        reactor.call_later(0.5, tick)

    def shutdown():
        logging.getLogger("login").info("stopping")
        fleet.shutdown()
        launcher.close()
        service.close()
        store.close()
        reactor.stop()

    reactor.add_signal_handler(signal.SIGINT, shutdown)
    reactor.add_signal_handler(signal.SIGTERM, shutdown)
    tick()
    logging.getLogger("login").info("np-social login server on %s, app servers register on %s, data in %s",
                                    format_address(*public), format_address(*internal),
                                    os.path.abspath(args.data))
    try:
        reactor.run()
    except StoreFailure as e:
        # The turn's replies were never sent (see lib/loop/reactor.py); stop the
        # fleet and exit rather than acknowledge writes the disk refused.
        logging.getLogger("login").critical("%s; stopping so that no unsaved write is "
                                            "acknowledged", e)
        fleet.shutdown()
        launcher.close()
        return EXIT_STORE_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
