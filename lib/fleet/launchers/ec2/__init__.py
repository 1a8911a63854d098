"""Application servers as EC2 instances (`server.py --launcher ec2`, docs/ec2.md).

One app server = one instance started by `run_instances` from an image that
holds the project (scripts/build_ami.py). Its user-data (`userdata.sh.in`)
runs `appserver.py` pointed at the login server's internal port with the
one-time join secret; tests/cloudsim.py runs the very same script against
moto. The parts:

  options.py      command-line options, Ec2Config, the cluster name and the tags
  userdata.py     the user-data script: userdata.sh.in filled with shell-quoted values
  reconcile.py    the book of instances (a state per instance) and the pure
                  reconcile step: describe_instances -> exits and terminations
  errors.py       which AWS errors to retry; backoff with jitter
  driver.py       Ec2Launcher: boto3 calls on the reactor's "aws" pool, retries as
                  timers, polling, and a bounded clean-up at shutdown

Every instance is tagged np-social:cluster (one cluster per login server,
--cluster), np-social:role=appserver, np-social:server-id (app-1, app-2, ...),
np-social:launcher (a random id of this login-server process) and Name.
Instances of other clusters are never touched.
"""
import logging

from lib.fleet.launchers.ec2.driver import AWS_POOL, Ec2Launcher
from lib.fleet.launchers.ec2.options import (Ec2Config, add_arguments, config_from_args,
                                             default_cluster, instance_broker, is_unspecified)
from lib.fleet.launchers.ec2.userdata import user_data

__all__ = ["AWS_POOL", "Ec2Config", "Ec2Launcher", "add_arguments", "default_cluster",
           "instance_broker", "make", "user_data"]

log = logging.getLogger("launcher.ec2")


def make(args, reactor, internal_address, credentials=None):
    """The launcher for `server.py --launcher ec2` (see add_arguments), started;
    `credentials`: the broker's, handed to instances through user-data."""
    config = config_from_args(args, internal_address, credentials)
    try:
        import boto3  # noqa: F401  (imported for real off the loop; fail early and clearly)
    except ImportError:
        raise SystemExit("server: --launcher ec2 needs boto3 (pip install -r requirements.txt)")
    listen_host, port = internal_address[0], internal_address[1]
    if listen_host.startswith("127.") and not is_unspecified(args.advertise):
        log.warning("the internal port listens on %s only: instances cannot reach %s:%d "
                    "(leave out --internal-host, or give one they can reach)",
                    listen_host, args.advertise, port)
    for name in ("botocore", "urllib3"):
        # their DEBUG output would include request bodies, user-data and its join secret
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.INFO)
    launcher = Ec2Launcher(reactor, config)
    launcher.start()
    return launcher
