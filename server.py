#!/usr/bin/env python3
"""np-social login server: `./server HOST PORT [options]` (see --help)."""
import argparse
import logging
import os
import signal
import socket
import sys

from lib import flags
from lib.loop.address import format_address, parse_address
from lib.messaging import probe
from lib.messaging import credentials as broker_credentials, setup as broker_setup
from lib.fleet.pool import Fleet
from lib.social import limits
from lib.social.login_server import LoginServer
from lib.social.files import UnsafePath
from lib.loop.process import watch_exit
from lib.loop.reactor import Reactor
from lib.loop.transports import raise_fd_limit
from lib.social.store import SNAPSHOT_EVERY, Store, StoreError, StoreFailure, StoreLocked

# Exit statuses (--help, README "Exit codes"): 0 stopped by SIGTERM/SIGINT,
# 2 usage (argparse's), and:
EXIT_FAILED = 1           # cannot listen, or the data directory is another server's
EXIT_STORE_FAILED = 3     # the data directory cannot be used, or a write to it failed
EXIT_CODES = """exit status:
  0  stopped by SIGTERM or Ctrl-C (after a snapshot)
  1  cannot start: cannot listen on HOST PORT (in use, no such address), or
     another np-social server owns the data directory
  2  usage: a bad argument (one line on stderr)
  3  the data directory cannot be created, read or written, or a write to it
     failed while running (nothing unsaved was acknowledged; docs/durability.md)"""
ACCOUNTS = """accounts: the TCP service's accounts live in DIR/users.txt of --data DIR
(`register` creates them). The repository's users.txt holds the UDP hub's
accounts (udp_hub.py), not these."""

LAUNCHERS = ("local", "ec2")


def parse_args(argv):
    p = flags.ArgumentParser(prog="server", description="np-social login server: accounts, "
                             "sessions and social data; launches application servers.",
                             epilog=ACCOUNTS + "\n\n" + EXIT_CODES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("host", help="address to listen on, e.g. 0.0.0.0")
    p.add_argument("port", type=flags.port(), help="client port, e.g. 8888 (0: any free port)")
    p.add_argument("--data", default="./data", metavar="DIR",
                   help="data directory: the TCP accounts (DIR/users.txt), journal, snapshot "
                        "(default ./data, relative to the current directory; the start-up line "
                        "gives its absolute path)")
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
    p.add_argument("--broker", default=None, metavar="HOST:PORT",
                   type=flags.address_text(),
                   help="ActiveMQ STOMP address (default 127.0.0.1:61613); checked at start: "
                        "one warning line if nothing answers there (the server still serves)")
    p.add_argument("--internal-host", default=None, metavar="HOST",
                   help="address the port app servers register on listens on (default 127.0.0.1 "
                        "with --launcher local; with --launcher ec2 the wildcard of HOST's family, "
                        "0.0.0.0 or ::, so instances reach it at --advertise)")
    p.add_argument("--internal-port", type=flags.port(), default=0, metavar="N",
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
    args.broker_given = args.broker is not None    # else: the local one, set up at start
    args.broker = args.broker or broker_setup.DEFAULT_BROKER
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


def listen_problem(host, port):
    """Why HOST PORT cannot be listened on ("Address already in use", no such
    address), or None. Checked before the data directory opens, so that the
    error is the only line on stderr; listen() itself still decides."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as Listener does
            sock.bind((host, port))
    except OSError as e:
        return e.strerror or str(e)
    return None


def data_error(path, error):
    """One line for a data directory the store cannot use (`error`: what it raised)."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"data directory {path} is not a directory"
    if isinstance(error, OSError):
        return f"data directory {path}: {error.filename or path}: {error.strerror or error}"
    return str(error)


def make_launcher(args, reactor, internal_address):
    host, port = internal_address
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if args.launcher == "ec2":
        from lib.fleet.launchers import ec2
        return ec2.make(args, reactor, internal_address, args.broker_credentials)
    from lib.fleet.launchers.local import LocalLauncher
    return LocalLauncher(reactor, (host, port), args.host, broker=args.broker,
                         env=broker_credentials.env(args.broker_credentials),
                         extra_args=limits.to_argv(limits.from_args(args), only=limits.APP_SERVER))


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise_fd_limit()
    reactor = Reactor()
    for host, port in ((args.host, args.port), (internal_host(args), args.internal_port)):
        problem = listen_problem(host, port)
        if problem:
            print(f"server: cannot listen on {format_address(host, port)}: {problem}", file=sys.stderr)
            return EXIT_FAILED
    data = os.path.abspath(args.data)
    try:
        store = Store(data, fsync=not args.no_fsync, snapshot_every=args.snapshot_every,
                      watch_child=lambda pid, on_exit: watch_exit(reactor, pid, on_exit)).open()
    except StoreLocked as e:
        print(f"server: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (StoreError, UnsafePath, OSError) as e:
        print(f"server: {data_error(data, e)}", file=sys.stderr)
        return EXIT_STORE_FAILED
    reactor.add_before_sleep(store.commit)   # group commit: before the turn's replies leave
    try:   # credentials, and the local broker set up for them (after the argument checks)
        args.broker_credentials = broker_setup.prepare(data, local=not args.broker_given)
    except broker_setup.CredentialsError as e:
        print(f"server: {e}", file=sys.stderr)
        store.close()
        return EXIT_FAILED
    service = LoginServer(reactor, store, fleet=None, conn_idle=args.conn_idle,
                          limits=limits.from_args(args))
    try:
        public, internal = service.listen(args.host, args.port, internal_host(args), args.internal_port)
    except OSError as e:
        print(f"server: cannot listen on {args.host}:{args.port} (app servers: "
              f"{internal_host(args)}:{args.internal_port}): {e.strerror}", file=sys.stderr)
        store.close()
        return EXIT_FAILED
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
    probe.check_at_start(reactor, *parse_address(args.broker))   # one line if nobody answers
    logging.getLogger("login").info("np-social login server on %s, app servers register on %s, "
                                    "data in %s (TCP accounts: %s)", format_address(*public),
                                    format_address(*internal), data, os.path.join(data, "users.txt"))
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
