"""Application servers as EC2 instances (`server.py --launcher ec2`).

One app server = one instance started by `run_instances` from an image that
holds the project (docs/ec2.md, scripts/build_ami.py). Its user-data is a
shell script that runs `appserver.py` pointed at the login server's internal
port (`--advertise` HOST : the internal port) with the one-time join secret.
The script asks IMDSv2 for the instance's address only when NP_ADVERTISE is
not set, and honours NP_HOME / NP_PYTHON / NP_APP_PORT, so tests/cloudsim.py
can run the very same script on this machine against moto.

Every instance is tagged
  np-social:cluster   = the cluster name (one per login server, see --cluster)
  np-social:role      = appserver
  np-social:server-id = the fleet's id (app-1, app-2, ...)
  np-social:launcher  = a random id of this login-server process
  Name                = np-social <cluster> <server-id>

The reactor never waits on AWS: every boto3 call runs through
`reactor.run_in_thread` and its result comes back through `done` on the loop;
retries (throttling, capacity, connection errors, eventual consistency) are
timers (`call_later`) with exponential backoff and jitter. AWS calls run on
the reactor's "aws" worker pool, so a slow AWS never starves the password
hashing of the default pool.

Hygiene: at start and then every `--poll-interval` seconds one
`describe_instances` (filtered on the cluster tag) finds
  - instances of ours that are gone (terminated, stopped, vanished): reported
    with `on_exit(server_id, reason)` (the wiring sets it to `fleet.lost`);
  - orphans: instances of the cluster left by an earlier process (a crash),
    or strays of this process nobody tracks: terminated.
  Instances of other clusters are never touched.
`close()` (SIGINT/SIGTERM of the login server) terminates every instance of
this process, and blocks (bounded) until the terminate call has returned.
"""
import collections
import datetime
import hashlib
import logging
import os
import random
import secrets
import shlex
import socket
import threading
import time
from dataclasses import dataclass, field

from lib.loop.address import format_address, parse_address

log = logging.getLogger("launcher.ec2")

TAG_CLUSTER = "np-social:cluster"
TAG_ROLE = "np-social:role"
TAG_SERVER = "np-social:server-id"
TAG_LAUNCHER = "np-social:launcher"
ROLE = "appserver"
AWS_POOL, AWS_WORKERS = "aws", 2   # the reactor's worker pool for boto3 calls

ACTIVE_STATES = ("pending", "running", "stopping", "stopped")
# ClientError codes worth retrying (throttling, capacity, AWS-side trouble).
TRANSIENT_CODES = frozenset((
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "SlowDown",
    "InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity", "InternalError", "InternalFailure", "ServiceUnavailable",
    "Unavailable", "RequestTimeout", "RequestTimeoutException", "EC2ThrottledException",
))
# Right after run_instances AWS may not know the id yet (eventual consistency).
NOT_FOUND_CODES = frozenset(("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"))

BACKOFF_BASE, BACKOFF_CAP = 0.5, 20.0
NOT_FOUND_GRACE = 60.0     # retry NotFound this long after launch; a launched id missing from
                           # describe this long is gone
ORPHAN_SKEW = 30.0         # instances launched up to this long after our start still count as
                           # orphans (clock skew between us and AWS)
BROKEN_COOLDOWN = 30.0     # after a permanent run_instances error, refuse launches this long


# -- command line -------------------------------------------------------------------
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


def _split_groups(values):
    out = []
    for value in values or ():
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


def _is_unspecified(host):
    return host in ("", "0.0.0.0", "::", "localhost") or host.startswith("127.") or host == "::1"


def instance_broker(broker, advertise):
    """The broker address as seen from an instance: a loopback or wildcard host
    means "the login server's machine", i.e. the advertised address."""
    if not broker:
        return None
    host, port = parse_address(broker, default_port=61613)
    if _is_unspecified(host) and not _is_unspecified(advertise):
        host = advertise
    return format_address(host, port)


def make(args, reactor, internal_address):
    """The launcher for `server.py --launcher ec2` (see add_arguments)."""
    missing = [opt for opt, value in (("--ami", args.ami), ("--advertise", args.advertise)) if not value]
    if missing:
        raise SystemExit(f"server: --launcher ec2 needs {' and '.join(missing)} (see --help, docs/ec2.md)")
    try:
        import boto3  # noqa: F401  (imported for real off the loop; fail early and clearly)
    except ImportError:
        raise SystemExit("server: --launcher ec2 needs boto3 (pip install -r requirements.txt)")
    listen_host, port = internal_address[0], internal_address[1]
    if listen_host.startswith("127.") and not _is_unspecified(args.advertise):
        log.warning("the internal port listens on %s only: instances cannot reach %s:%d "
                    "(start the login server on 0.0.0.0)", listen_host, args.advertise, port)
    cluster = args.cluster or default_cluster(getattr(args, "data", None))
    config = Ec2Config(
        ami=args.ami, login_address=(args.advertise, port), cluster=cluster,
        instance_type=args.instance_type, region=args.region, subnet=args.subnet,
        security_groups=_split_groups(args.security_group), key_name=args.key_name,
        instance_profile=args.instance_profile, app_port=args.app_port, app_address=args.app_address,
        broker=args.app_broker or instance_broker(getattr(args, "broker", None), args.advertise),
        project_dir=args.project_dir, launch_deadline=args.launch_deadline,
        poll_interval=args.poll_interval)
    for name in ("botocore", "urllib3"):
        # their DEBUG output would include request bodies, user-data and its join secret
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.INFO)
    launcher = Ec2Launcher(reactor, config)
    launcher.start()
    return launcher


# -- user data ----------------------------------------------------------------------
USER_DATA = r"""#!/bin/bash
# np-social application server {server_id} of cluster {cluster}, written by the
# login server's EC2 launcher (lib/launchers/ec2.py). cloud-init runs it as root
# at first boot (output in /var/log/cloud-init-output.log); tests/cloudsim.py
# runs it on the test machine with NP_ADVERTISE, NP_HOME, NP_PYTHON and
# NP_APP_PORT set, so it then never touches the instance metadata service.
set -u
on_ec2=0
if [ -z "${{NP_ADVERTISE:-}}" ]; then
  on_ec2=1
  imds=http://169.254.169.254/latest
  token=
  for _ in $(seq 1 60); do
    token=$(curl -sf -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$imds/api/token") && break
    sleep 1
  done
  md() {{ curl -sf -m 2 -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/$1"; }}
  NP_ADVERTISE=$(md {first_address}) || NP_ADVERTISE=
  [ -n "$NP_ADVERTISE" ] || NP_ADVERTISE=$(md local-ipv4) || NP_ADVERTISE=
  if [ -z "$NP_ADVERTISE" ]; then
    echo "np-social: no address from the instance metadata service" >&2
    poweroff
    exit 1
  fi
fi
NP_HOME=${{NP_HOME:-{project_dir}}}
if [ -z "${{NP_PYTHON:-}}" ]; then
  if [ -x "$NP_HOME/.venv/bin/python" ]; then NP_PYTHON=$NP_HOME/.venv/bin/python; else NP_PYTHON=python3; fi
fi
cd "$NP_HOME" || exit 1
# One-time secret: worthless once this server has registered.
export NP_JOIN_SECRET={secret}
run_as=()
if [ "$on_ec2" = 1 ] && [ "$(id -u)" = 0 ] && id np-social >/dev/null 2>&1; then
  run_as=(runuser -u np-social --)
fi
${{run_as[@]+"${{run_as[@]}}"}} "$NP_PYTHON" appserver.py --login {login} --host 0.0.0.0 \
  --port "${{NP_APP_PORT:-{app_port}}}" --advertise "$NP_ADVERTISE" --id {server_id}{broker}
status=$?
echo "np-social: appserver.py exited with status $status" >&2
# On EC2 the instance is launched with shutdown behaviour "terminate".
if [ "$on_ec2" = 1 ]; then poweroff; fi
exit $status
"""


def user_data(config, server_id, secret):
    host, port = config.login_address
    login = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return USER_DATA.format(
        server_id=shlex.quote(server_id), cluster=config.cluster.replace("\n", " "),
        first_address="public-ipv4" if config.app_address == "public" else "local-ipv4",
        project_dir=shlex.quote(config.project_dir), secret=shlex.quote(secret),
        login=shlex.quote(login), app_port=int(config.app_port),
        broker=f" --broker {shlex.quote(config.broker)}" if config.broker else "")


# -- errors -------------------------------------------------------------------------
def error_code(err):
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code", "") or ""
    return ""


def is_transient(err):
    """Worth retrying: throttling, capacity, AWS 5xx, connection trouble."""
    try:
        from botocore import exceptions as bx
    except ImportError:
        return False
    if isinstance(err, (bx.ConnectionError, bx.HTTPClientError)):
        return True
    if isinstance(err, bx.ClientError):
        if error_code(err) in TRANSIENT_CODES:
            return True
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500
    return False


def describe_error(err):
    code = error_code(err)
    if code:
        message = err.response.get("Error", {}).get("Message", "")
        return f"{code}: {message}" if message else code
    return f"{type(err).__name__}: {err}"


def backoff(attempt):
    """Exponential backoff with jitter: ~0.5, 1, 2, 4 ... s, capped at 20 s."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt) * random.uniform(0.5, 1.0)


# -- the launcher -------------------------------------------------------------------
@dataclass(eq=False)
class _Launch:
    server_id: str
    params: dict
    started: float
    attempts: int = 0
    cancelled: bool = False
    in_flight: bool = False
    timer: object = None


@dataclass(eq=False)
class _Instance:
    server_id: str
    instance_id: str
    launched: float            # monotonic time run_instances returned


class Ec2Launcher:
    """launch / terminate / close / on_exit / launch_deadline, like LocalLauncher."""

    name = "ec2"

    def __init__(self, reactor, config, client_factory=None, clock=time.monotonic):
        self.reactor, self.config, self.clock = reactor, config, clock
        self.launch_deadline = config.launch_deadline
        self.on_exit = None                        # callback(server_id, reason), set by the wiring
        self.session = secrets.token_hex(8)        # np-social:launcher tag of this process
        self.started_wall = time.time()
        self.instances = {}                        # server_id -> _Instance
        self.launching = {}                        # server_id -> _Launch (run_instances not done)
        self.terminating = {}                      # instance_id -> monotonic time of the request
        self.terminated = {}                       # instance_id -> when terminate_instances succeeded
        self._client_factory = client_factory or self._default_client
        self._client = None
        self._client_lock = threading.Lock()
        self._queue = collections.deque()          # AWS calls waiting for a pool slot
        self._busy = 0
        # AWS calls get a pool of their own: a slow AWS never takes the
        # threads that hash passwords.
        reactor.add_pool(AWS_POOL, AWS_WORKERS)
        self._max_busy = reactor.pool_size(AWS_POOL)
        # shared with pool threads: run_instances in flight, and what they created
        self._cond = threading.Condition()
        self._inflight_launches = 0
        self._landed = {}                          # server_id -> instance_id, until the loop knows
        self._closed = False
        self._poll_timer = None
        self._polling = False
        self._poll_failures = 0
        self._broken_until, self._broken_reason = 0.0, ""
        self._warned_foreign = set()

    # -- boto3, off the loop ----------------------------------------------------
    def _default_client(self):
        import boto3
        from botocore.config import Config
        cfg = Config(connect_timeout=5, read_timeout=20,
                     retries={"mode": "standard", "total_max_attempts": 1},  # we retry on the loop
                     user_agent_extra="np-social")
        return boto3.session.Session(region_name=self.config.region).client("ec2", config=cfg)

    def client(self):
        """The EC2 client, created on first use (in a pool thread: building it
        resolves credentials, which may mean a network round trip)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def _call(self, fn, *args, done):
        """Run blocking `fn(*args)` in the reactor's pool, at most `_max_busy` at
        a time; `done(result, error)` runs on the loop."""
        self._queue.append((fn, args, done))
        self._pump()

    def _pump(self):
        while self._queue and self._busy < self._max_busy and not self._closed:
            fn, args, done = self._queue.popleft()
            self._busy += 1

            def finished(result, error, done=done):
                self._busy -= 1
                try:
                    done(result, error)
                finally:
                    self._pump()
            self.reactor.run_in_thread(fn, *args, done=finished, pool=AWS_POOL)

    # -- launch -----------------------------------------------------------------
    def tags(self, server_id):
        return [{"Key": "Name", "Value": f"np-social {self.config.cluster} {server_id}"},
                {"Key": TAG_CLUSTER, "Value": self.config.cluster},
                {"Key": TAG_ROLE, "Value": ROLE},
                {"Key": TAG_SERVER, "Value": server_id},
                {"Key": TAG_LAUNCHER, "Value": self.session}]

    def run_params(self, server_id, secret):
        c = self.config
        tags = self.tags(server_id)
        params = {
            "ImageId": c.ami, "InstanceType": c.instance_type, "MinCount": 1, "MaxCount": 1,
            "UserData": user_data(c, server_id, secret),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                                "HttpPutResponseHopLimit": 1},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
            # the same token on every retry of this launch: AWS then starts one instance only
            "ClientToken": f"{self.session}-{server_id}"[:64],
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

    def launch(self, server_id, secret):
        """Start an instance for `server_id` (returns at once; the instance
        registers with the secret when it has booted)."""
        if self._closed:
            raise RuntimeError("the EC2 launcher is closed")
        if self.clock() < self._broken_until:
            raise RuntimeError(self._broken_reason)
        attempt = _Launch(server_id, self.run_params(server_id, secret), started=self.clock())
        self.launching[server_id] = attempt
        log.info("%s: run_instances %s %s (cluster %s)", server_id, self.config.ami,
                 self.config.instance_type, self.config.cluster)
        self._submit(attempt)

    def _submit(self, attempt):
        attempt.timer = None
        if attempt.cancelled or self._closed:
            self.launching.pop(attempt.server_id, None)
            return
        attempt.in_flight = True
        self._call(self._run_instance, attempt,
                   done=lambda result, error: self._launched(attempt, result, error))

    def _run_instance(self, attempt):                         # pool thread
        with self._cond:
            self._inflight_launches += 1
        try:
            if attempt.cancelled:   # terminated while queued (reading a bool set on the loop)
                return None
            response = self.client().run_instances(**attempt.params)
            instance_id = response["Instances"][0]["InstanceId"]
            with self._cond:
                self._landed[attempt.server_id] = instance_id
            return instance_id
        finally:
            with self._cond:
                self._inflight_launches -= 1
                self._cond.notify_all()

    def _launched(self, attempt, instance_id, error):
        attempt.in_flight = False
        sid = attempt.server_id
        if error is None:
            with self._cond:
                self._landed.pop(sid, None)
            self.launching.pop(sid, None)
            if instance_id is None:
                return   # cancelled before it reached AWS
            self._broken_until = 0.0
            if attempt.cancelled or self._closed:
                log.info("%s: %s started after its launch was cancelled; terminating it", sid, instance_id)
                self._terminate_instance(instance_id, sid, self.clock())
                return
            self.instances[sid] = _Instance(sid, instance_id, self.clock())
            log.info("%s: instance %s pending (attempt %d)", sid, instance_id, attempt.attempts + 1)
            return
        if attempt.cancelled or self._closed:
            self.launching.pop(sid, None)
            return
        delay = backoff(attempt.attempts)
        if is_transient(error) and self.clock() + delay - attempt.started < self.launch_deadline:
            attempt.attempts += 1
            log.warning("%s: run_instances: %s; retry %d in %.1f s", sid, describe_error(error),
                        attempt.attempts, delay)
            attempt.timer = self.reactor.call_later(delay, self._submit, attempt)
            return
        self.launching.pop(sid, None)
        reason = f"run_instances failed: {describe_error(error)}"
        log.error("%s: %s", sid, reason)
        if not is_transient(error):
            # e.g. a wrong AMI or missing permission: do not hammer AWS with
            # launches that cannot succeed; fleet.launch answers this at once.
            self._broken_until = self.clock() + BROKEN_COOLDOWN
            self._broken_reason = reason
        if self.on_exit:
            self.on_exit(sid, reason)

    # -- terminate --------------------------------------------------------------
    def terminate(self, server_id):
        """Stop `server_id`'s instance (also while its run_instances is still
        under way: the instance is then terminated as soon as it exists)."""
        attempt = self.launching.get(server_id)
        if attempt is not None:
            attempt.cancelled = True
            if not attempt.in_flight:       # waiting for a retry: just drop it
                if attempt.timer:
                    attempt.timer.cancel()
                self.launching.pop(server_id, None)
            log.info("%s: launch cancelled", server_id)
            return
        inst = self.instances.pop(server_id, None)
        if inst is not None:
            self._terminate_instance(inst.instance_id, server_id, inst.launched)

    def _terminate_instance(self, instance_id, server_id, launched, attempt=0):
        if self._closed:
            self.terminating.setdefault(instance_id, self.clock())   # close() takes it from here
            return
        self.terminating[instance_id] = self.clock()
        if attempt == 0:
            log.info("%s: terminating %s", server_id, instance_id)
        self._call(self._terminate_blocking, [instance_id],
                   done=lambda result, error: self._terminated(instance_id, server_id, launched,
                                                               attempt, error))

    def _terminate_blocking(self, instance_ids):            # pool thread
        return self.client().terminate_instances(InstanceIds=list(instance_ids))

    def _terminated(self, instance_id, server_id, launched, attempt, error):
        if error is None:
            self.terminating.pop(instance_id, None)
            self.terminated[instance_id] = self.clock()
            return
        if self._closed:
            return
        retry = is_transient(error) or (error_code(error) in NOT_FOUND_CODES
                                        and self.clock() - launched < NOT_FOUND_GRACE)
        if retry and attempt < 12:
            delay = backoff(attempt)
            log.warning("%s: terminate %s: %s; retry in %.1f s", server_id, instance_id,
                        describe_error(error), delay)
            self.reactor.call_later(delay, self._terminate_instance, instance_id, server_id,
                                    launched, attempt + 1)
            return
        if error_code(error) in NOT_FOUND_CODES:
            self.terminating.pop(instance_id, None)
            return
        # Leave it in `terminating`: the poll retries it once the request is stale.
        log.error("%s: terminate %s failed: %s", server_id, instance_id, describe_error(error))

    # -- polling and orphans ----------------------------------------------------
    def start(self):
        """First poll now (it terminates orphans of an earlier run), then every
        `poll_interval` seconds."""
        log.info("EC2 launcher: cluster %s, session %s, ami %s, instances join %s:%d",
                 self.config.cluster, self.session, self.config.ami, *self.config.login_address)
        self._poll()

    def _poll(self):
        self._poll_timer = None
        if self._closed:
            return
        if self._polling:
            self._schedule_poll()
            return
        self._polling = True
        started = self.clock()
        self._call(self._describe_cluster, done=lambda result, error: self._polled(started, result, error))

    def _schedule_poll(self):
        if self._closed:
            return
        interval = self.config.poll_interval
        if self._poll_failures:
            interval = min(60.0, interval * 2 ** min(self._poll_failures, 4))
        self._poll_timer = self.reactor.call_later(interval, self._poll)

    def _describe_cluster(self, states=None, session=None):   # pool thread (and close())
        filters = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.config.cluster]}]
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        if session:
            filters.append({"Name": f"tag:{TAG_LAUNCHER}", "Values": [session]})
        found = []
        paginator = self.client().get_paginator("describe_instances")
        for page in paginator.paginate(Filters=filters):
            for reservation in page.get("Reservations", ()):
                for inst in reservation.get("Instances", ()):
                    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", ())}
                    found.append({"id": inst["InstanceId"], "state": inst["State"]["Name"],
                                  "reason": (inst.get("StateReason") or {}).get("Message", ""),
                                  "launch_time": inst.get("LaunchTime"), "tags": tags})
        return found

    def _polled(self, started, found, error):
        self._polling = False
        if self._closed:
            return
        if error is not None:
            self._poll_failures += 1
            log.warning("describe_instances: %s", describe_error(error))
            self._schedule_poll()
            return
        self._poll_failures = 0
        by_id = {item["id"]: item for item in found}
        now = self.clock()
        for iid, when in list(self.terminated.items()):
            if now - when > 600:
                del self.terminated[iid]
        # 1. our instances that went away
        for sid, inst in list(self.instances.items()):
            item = by_id.get(inst.instance_id)
            if item is not None and item["state"] in ("pending", "running"):
                continue
            if item is not None:
                reason = f"instance {inst.instance_id} is {item['state']}"
                if item["reason"]:
                    reason += f" ({item['reason']})"
            elif inst.launched < started - NOT_FOUND_GRACE:
                reason = f"instance {inst.instance_id} no longer exists"
            else:
                continue  # just launched: describe may not show it yet
            del self.instances[sid]
            log.warning("%s: %s", sid, reason)
            if item is not None and item["state"] in ("stopping", "stopped"):
                self._terminate_instance(inst.instance_id, sid, inst.launched)
            if self.on_exit:
                self.on_exit(sid, reason)
        # 2. orphans and strays of the cluster
        known = {inst.instance_id for inst in self.instances.values()}
        with self._cond:
            landed = set(self._landed.values())
        for item in found:
            iid = item["id"]
            if item["state"] not in ACTIVE_STATES or iid in known or iid in landed:
                if item["state"] not in ACTIVE_STATES:
                    self.terminating.pop(iid, None)
                    self.terminated.pop(iid, None)
                continue
            asked = self.terminating.get(iid, self.terminated.get(iid))
            if asked is not None and now - asked < NOT_FOUND_GRACE:
                continue   # terminate already requested (describe may lag behind)
            tags = item["tags"]
            sid = tags.get(TAG_SERVER, "?")
            if tags.get(TAG_LAUNCHER) == self.session:
                if sid in self.launching:
                    continue   # its run_instances has not returned yet
                log.warning("terminating stray %s (%s) of this login server", iid, sid)
            elif self._launched_before_us(item["launch_time"]):
                log.warning("terminating orphan %s (%s, %s) of cluster %s", iid, sid, item["state"],
                            self.config.cluster)
            else:
                if iid not in self._warned_foreign:
                    self._warned_foreign.add(iid)
                    log.error("instance %s of cluster %s was launched by another live login server; "
                              "leaving it alone (give each login server its own --cluster)",
                              iid, self.config.cluster)
                continue
            self._terminate_instance(iid, sid, now - NOT_FOUND_GRACE)
        self._schedule_poll()

    def _launched_before_us(self, launch_time):
        if not isinstance(launch_time, datetime.datetime):
            return True
        if launch_time.tzinfo is None:
            launch_time = launch_time.replace(tzinfo=datetime.timezone.utc)
        return launch_time.timestamp() < self.started_wall + ORPHAN_SKEW

    # -- shutdown ---------------------------------------------------------------
    def close(self, timeout=30.0):
        """Terminate every instance of this login server and wait (at most
        `timeout` s) for the terminate call to return. Runs on the loop at
        shutdown, the one place where it may block."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        if self._poll_timer:
            self._poll_timer.cancel()
        for attempt in self.launching.values():
            attempt.cancelled = True
            if attempt.timer:
                attempt.timer.cancel()
        # A run_instances under way may still create an instance: let it return.
        with self._cond:
            self._cond.wait_for(lambda: self._inflight_launches == 0,
                                timeout=max(0.0, (deadline - time.monotonic()) / 2))
            landed = set(self._landed.values())
        ids = {inst.instance_id for inst in self.instances.values()} | landed | set(self.terminating)
        try:
            # also strays; an instance terminated just now may still look
            # active here, terminating it again is harmless
            ids |= {item["id"] for item in self._describe_cluster(ACTIVE_STATES, self.session)}
        except Exception as e:
            log.warning("close: describe_instances: %s", describe_error(e))
        ids = sorted(ids)
        attempt = 0
        while ids:
            try:
                for i in range(0, len(ids), 500):
                    self._terminate_blocking(ids[i:i + 500])
                log.info("terminated %d instance(s) of cluster %s: %s", len(ids), self.config.cluster,
                         " ".join(ids))
                break
            except Exception as e:
                if error_code(e) in NOT_FOUND_CODES and len(ids) > 1:
                    # one unknown id fails the whole call: go one by one
                    ids = [iid for iid in ids if self._terminate_one_quietly(iid)]
                elif not (is_transient(e) or error_code(e) in NOT_FOUND_CODES):
                    log.error("close: could not terminate %s: %s", " ".join(ids), describe_error(e))
                    break
                delay = backoff(attempt)
                attempt += 1
                if ids and time.monotonic() + delay > deadline:
                    log.error("close: gave up terminating %s: %s", " ".join(ids), describe_error(e))
                    break
                if ids:
                    time.sleep(delay)   # shutdown: nothing else is served any more
        self.instances.clear()
        self.launching.clear()
        self.terminating.clear()
        self.terminated.clear()

    def _terminate_one_quietly(self, instance_id):
        """True when `instance_id` still needs terminating (a transient error)."""
        try:
            self._terminate_blocking([instance_id])
            return False
        except Exception as e:
            return is_transient(e)

    # -- introspection ------------------------------------------------------------
    def known(self):
        return {sid: inst.instance_id for sid, inst in self.instances.items()}
