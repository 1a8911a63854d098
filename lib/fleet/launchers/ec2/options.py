"""The EC2 launcher's options, its configuration, the names it gives
instances and what run_instances is asked: the command-line group, `Ec2Config`,
the default cluster name, the tags of an app server and `run_params`."""
import hashlib
import os
import socket
from dataclasses import dataclass, field

from lib.fleet.launchers.ec2.userdata import user_data
from lib.loop.address import format_address, parse_address
from lib.social import limits

# Every instance carries these tags (and Name = "np-social <cluster> <server-id>").
TAG_CLUSTER = "np-social:cluster"      # the cluster name (one per login server, --cluster)
TAG_ROLE = "np-social:role"            # ROLE
TAG_SERVER = "np-social:server-id"     # the fleet's id: app-1, app-2, ...
TAG_LAUNCHER = "np-social:launcher"    # a random id of the login-server process that launched it
ROLE = "appserver"


def add_arguments(parser):
    g = parser.add_argument_group(
        "EC2 launcher", "with --launcher ec2: app servers are EC2 instances (docs/ec2.md). AWS "
        "credentials and region come from boto3's usual chain (env, ~/.aws, instance role).")
    g.add_argument("--ami", metavar="ID", help="image holding the project (required with --launcher ec2)")
    g.add_argument("--instance-type", default="t3.micro", metavar="TYPE",
                   help="instance type of app servers (default t3.micro)")
    g.add_argument("--region", default=None, help="AWS region (default: boto3's, e.g. AWS_DEFAULT_REGION)")
    g.add_argument("--subnet", default=None, metavar="ID", help="subnet for app servers (default: the default VPC's)")
    g.add_argument("--security-group", action="append", default=[], metavar="SG",
                   help="security group id (sg-...) or name; repeatable or comma-separated")
    g.add_argument("--key-name", default=None, metavar="NAME", help="EC2 key pair (for ssh while debugging)")
    g.add_argument("--instance-profile", default=None, metavar="NAME|ARN",
                   help="IAM instance profile for app servers (not needed by np-social itself)")
    g.add_argument("--advertise", default=None, metavar="HOST",
                   help="address instances use to reach this login server's internal port "
                        "(required with --launcher ec2; e.g. its private IP)")
    g.add_argument("--cluster", default=None, metavar="NAME",
                   help="tag value naming this login server's fleet (default: np-<hostname>-<hash of "
                        "the absolute --data path>, stable across restarts on the same host and data "
                        "dir so orphans of a crash are found; must be unique per login server)")
    g.add_argument("--app-port", type=int, default=9000, metavar="N",
                   help="port the app server listens on inside the instance (default 9000)")
    g.add_argument("--app-address", choices=("public", "private"), default="public",
                   help="which instance address clients are sent to (default public, "
                        "falling back to private when the instance has none)")
    g.add_argument("--app-broker", default=None, metavar="HOST:PORT",
                   help="broker address for the instances (default --broker, with a loopback or "
                        "wildcard host replaced by --advertise)")
    g.add_argument("--project-dir", default="/opt/np-social", metavar="DIR",
                   help="where the image holds the project (default /opt/np-social)")
    g.add_argument("--launch-deadline", type=float, default=300.0, metavar="S",
                   help="terminate an instance that has not registered after S seconds (default 300)")
    g.add_argument("--poll-interval", type=float, default=5.0, metavar="S",
                   help="describe the cluster's instances every S seconds (default 5)")


def default_cluster(data_dir, host=None):
    """np-<hostname>-<10 hex of sha256(hostname:abs data dir)>: one login server
    per data dir per host (the store's lock), the same name after a restart."""
    host = host or socket.gethostname() or "localhost"
    path = os.path.abspath(data_dir or "./data")
    digest = hashlib.sha256(f"{host}:{path}".encode("utf-8")).hexdigest()[:10]
    short = "".join(c if c.isalnum() or c in "-." else "-" for c in host.split(".")[0])[:40]
    return f"np-{short}-{digest}"


@dataclass
class Ec2Config:
    ami: str
    login_address: tuple                     # (host, port) instances connect to
    cluster: str
    instance_type: str = "t3.micro"
    region: str = None
    subnet: str = None
    security_groups: list = field(default_factory=list)
    key_name: str = None
    instance_profile: str = None
    app_port: int = 9000
    app_address: str = "public"
    broker: str = None
    project_dir: str = "/opt/np-social"
    launch_deadline: float = 300.0
    poll_interval: float = 5.0
    # the broker login of app servers (.user, .password: lib/messaging/credentials.py's
    # Credentials); it reaches them in user-data, never in argv or a tag
    credentials: object = field(default=None, repr=False)
    # flags every app server gets (the connection limits, as local ones get them)
    app_args: tuple = ()


def split_groups(values):
    """--security-group values, repeated and/or comma-separated -> a flat list."""
    out = []
    for value in values or ():
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


def is_unspecified(host):
    """A loopback or wildcard host: meaningless as seen from an instance."""
    return host in ("", "0.0.0.0", "::", "localhost") or host.startswith("127.") or host == "::1"


def instance_broker(broker, advertise):
    """The broker address as seen from an instance: a loopback or wildcard host
    means "the login server's machine", i.e. the advertised address."""
    if not broker:
        return None
    host, port = parse_address(broker, default_port=61613)
    if is_unspecified(host) and not is_unspecified(advertise):
        host = advertise
    return format_address(host, port)


def config_from_args(args, internal_address, credentials=None):
    """`Ec2Config` from parsed options (and the broker credentials app servers
    get); SystemExit with the reason when an option the launcher needs is missing."""
    missing = [opt for opt, value in (("--ami", args.ami), ("--advertise", args.advertise)) if not value]
    if missing:
        raise SystemExit(f"server: --launcher ec2 needs {' and '.join(missing)} (see --help, docs/ec2.md)")
    port = internal_address[1]
    return Ec2Config(
        ami=args.ami, login_address=(args.advertise, port),
        cluster=args.cluster or default_cluster(getattr(args, "data", None)),
        instance_type=args.instance_type, region=args.region, subnet=args.subnet,
        security_groups=split_groups(args.security_group), key_name=args.key_name,
        instance_profile=args.instance_profile, app_port=args.app_port, app_address=args.app_address,
        broker=args.app_broker or instance_broker(getattr(args, "broker", None), args.advertise),
        project_dir=args.project_dir, launch_deadline=args.launch_deadline,
        poll_interval=args.poll_interval, credentials=credentials,
        app_args=tuple(limits.to_argv(limits.from_args(args), only=limits.APP_SERVER)))


def instance_tags(cluster, server_id, session):
    """The tags of `server_id`'s instance (and its volume)."""
    return [{"Key": "Name", "Value": f"np-social {cluster} {server_id}"},
            {"Key": TAG_CLUSTER, "Value": cluster},
            {"Key": TAG_ROLE, "Value": ROLE},
            {"Key": TAG_SERVER, "Value": server_id},
            {"Key": TAG_LAUNCHER, "Value": session}]


def run_params(config, server_id, secret, session):
    """run_instances' parameters for `server_id` (session: this process's launcher tag)."""
    c = config
    tags = instance_tags(c.cluster, server_id, session)
    params = {
        "ImageId": c.ami, "InstanceType": c.instance_type, "MinCount": 1, "MaxCount": 1,
        "UserData": user_data(c, server_id, secret),
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                            "HttpPutResponseHopLimit": 1},
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                              {"ResourceType": "volume", "Tags": tags}],
        # the same token on every retry of this launch: AWS then starts one instance only
        "ClientToken": f"{session}-{server_id}"[:64],
    }
    ids = [g for g in c.security_groups if g.startswith("sg-")]
    names = [g for g in c.security_groups if not g.startswith("sg-")]
    if ids:
        params["SecurityGroupIds"] = ids
    if names:
        params["SecurityGroups"] = names
    if c.subnet:
        params["SubnetId"] = c.subnet
    if c.key_name:
        params["KeyName"] = c.key_name
    if c.instance_profile:
        key = "Arn" if c.instance_profile.startswith("arn:") else "Name"
        params["IamInstanceProfile"] = {key: c.instance_profile}
    return params
