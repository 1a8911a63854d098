#!/usr/bin/env python3
"""np-social on EC2 from an empty account to a demo and back (docs/ec2.md).

  scripts/ec2-demo.sh up      [options]   create what is missing; start the login host
  scripts/ec2-demo.sh status  [options]   print what the state file records and what exists
  scripts/ec2-demo.sh down    [options]   remove everything the state file records

`up` makes a key pair (private key saved 0600 next to the state file), two
security groups (clients reach only the login server's and the app servers'
client ports, from your address; the internal port and the broker's STOMP
port only from the app servers' group), picks or builds the image
(scripts/build_ami.py), an IAM instance profile for the login host (or the
lab's existing one with --learner-lab), and the login host, whose first boot
installs ActiveMQ and starts the login server (`--launcher ec2`) as a service.

Every resource's name goes into the state file (default
./ec2-demo.state.json) before the call that creates it, and its id as soon as
AWS returns it, so `down` finds everything even after a crash half-way; `down`
treats "not found" as done and may be run again after a partial failure.
Resources are tagged np-social:demo=NAME; the app servers the login server
starts carry np-social:cluster=NAME, and `down` terminates them too.

Credentials and region come from boto3's usual chain (AWS_PROFILE, ~/.aws,
the environment; AWS_ENDPOINT_URL too, which is how the tests use moto).
Exit status: 0 done; 1 an AWS call failed or a wait timed out (one line says
which; the state file keeps what exists); 2 usage, or a state file that does
not fit the options.
"""
import argparse
import datetime
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lib.fleet.launchers.ec2.userdata import quote, render  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_STATE = "ec2-demo.state.json"
TAG_DEMO = "np-social:demo"            # every resource the demo makes: the demo's name
TAG_ROLE = "np-social:role"
TAG_CLUSTER = "np-social:cluster"      # the app servers (lib/fleet/launchers/ec2/options.py)
IMAGE_ROLE = "appserver-image"         # scripts/build_ami.py tags its images so
LAB_PROFILE = "LabInstanceProfile"     # AWS Academy Learner Lab: the lab's profile of LabRole
PROJECT_DIR = "/opt/np-social"         # where the image holds the project
SSH_USER = "admin"                     # Debian's
POLICY = os.path.join(ROOT, "docs", "ec2-iam-policy.json")
CHECKIP = "https://checkip.amazonaws.com"
PROGRESS_EVERY = 15.0                  # seconds between "still waiting" lines
LIVE = ("pending", "running", "stopping", "stopped", "shutting-down")
# Everything that goes into the login host's unit file: no quoting needed
# there, nothing a shell or systemd would expand (no $ ` ' " % or spaces).
SAFE = re.compile(r"[A-Za-z0-9._:/,=@+-]+")
NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
ASSUME_EC2 = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


class DemoError(Exception):
    """One line for the user; `code` is the exit status."""

    def __init__(self, message, code=EXIT_FAILED):
        super().__init__(message)
        self.code = code


def say(message):
    print(f"ec2-demo: {message}", file=sys.stderr, flush=True)


# -- the security groups' rules (pure) ---------------------------------------------------
@dataclass(frozen=True)
class Ports:
    client: int = 8888       # the login server's client port
    internal: int = 8899     # the login server's internal port (app servers register)
    broker: int = 61613      # ActiveMQ STOMP on the login host
    app: int = 9000          # the app servers' client port (--app-port)


@dataclass(frozen=True)
class Rule:
    group: str      # "login" or "app": the group the rule is in
    port: int
    source: str     # a CIDR, or "app": the app servers' group
    what: str


def ingress_plan(ports, clients, admins):
    """The ingress rules: `clients` (CIDRs) reach the two client ports,
    `admins` (CIDRs) ssh; the internal and broker ports only the app servers'
    group. Nothing is open to the world unless a CIDR says so."""
    rules = []
    for cidr in clients:
        rules += [Rule("login", ports.client, cidr, "np-social login server: clients"),
                  Rule("app", ports.app, cidr, "np-social app servers: clients")]
    for cidr in admins:
        rules += [Rule("login", 22, cidr, "ssh"), Rule("app", 22, cidr, "ssh (debugging)")]
    rules += [Rule("login", ports.internal, "app", "internal port: app servers register"),
              Rule("login", ports.broker, "app", "ActiveMQ STOMP: app servers only")]
    return rules


def permission(rule, group_ids):
    """`rule` as an IpPermissions entry (group_ids: "login"/"app" -> sg id)."""
    perm = {"IpProtocol": "tcp", "FromPort": rule.port, "ToPort": rule.port}
    if rule.source in group_ids:
        perm["UserIdGroupPairs"] = [{"GroupId": group_ids[rule.source], "Description": rule.what}]
    else:
        perm["IpRanges"] = [{"CidrIp": rule.source, "Description": rule.what}]
    return perm


def cidr(text):
    """An argparse type: an IPv4 address or network -> "a.b.c.d/n"."""
    try:
        return str(ipaddress.IPv4Network(text.strip(), strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv4 address or CIDR: {text!r}") from None


# -- the login host's first boot (pure) --------------------------------------------------
LOGIN_HOST_USER_DATA = r"""#!/bin/bash
# np-social login host of demo @DEMO@, written by scripts/ec2_demo.py (each
# placeholder replaced by a shell-quoted value). cloud-init runs it as root at
# first boot (output in /var/log/cloud-init-output.log):
#   1. the broker credentials DATA/broker.credentials (0600, made by the user
#      the login server runs as: it refuses a file owned by anyone else);
#   2. ActiveMQ, which is not in the image: apt installs it (~1 min), then
#      scripts/activemq.sh starts it on the private address with that login
#      (512 MB Java heap, on a 1 GiB t3.micro);
#   3. the login server (--launcher ec2) as the systemd service np-social-login.
# tests/pure/test_ec2_userdata.py runs it with NP_ADVERTISE, NP_HOME, NP_PYTHON,
# NP_DATA, NP_USER, NP_UNIT_DIR and NP_SYSTEMCTL set: then it touches neither
# the instance metadata service nor the machine's services.
set -euo pipefail
say() { echo "np-social login host: $*" >&2; }
if [ -z "${NP_ADVERTISE:-}" ]; then
  imds=http://169.254.169.254/latest
  token=
  for _ in $(seq 1 60); do
    token=$(curl -sf -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$imds/api/token") && break
    sleep 1
  done
  NP_ADVERTISE=$(curl -sf -m 2 -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/local-ipv4") \
    || { say "no private address from the instance metadata service"; exit 1; }
fi
NP_HOME=${NP_HOME:-@PROJECT_DIR@}
NP_PYTHON=${NP_PYTHON:-$NP_HOME/.venv/bin/python}
NP_DATA=${NP_DATA:-/var/lib/np-social}
NP_USER=${NP_USER:-np-social}
NP_UNIT_DIR=${NP_UNIT_DIR:-/etc/systemd/system}
systemctl=${NP_SYSTEMCTL:-systemctl}
as_user=()
if [ "$(id -u)" = 0 ]; then as_user=(runuser -u "$NP_USER" --); fi
cd "$NP_HOME"
install -d -m 0700 -o "$NP_USER" "$NP_DATA"
credentials=$NP_DATA/broker.credentials
${as_user[@]+"${as_user[@]}"} "$NP_PYTHON" -c 'import sys
from lib.messaging.credentials import load_or_create
load_or_create(sys.argv[1])' "$credentials"
say "installing and starting ActiveMQ on $NP_ADVERTISE:@BROKER_PORT@ (apt: about a minute)"
NP_BROKER_BIND=$NP_ADVERTISE NP_BROKER_PORT=@BROKER_PORT@ "$NP_HOME/scripts/activemq.sh" ensure "$credentials"
say "starting the login server: systemd unit np-social-login (journalctl -u np-social-login)"
cat >"$NP_UNIT_DIR/np-social-login.service" <<EOF
[Unit]
Description=np-social login server (demo @DEMO@)
Wants=network-online.target
After=network-online.target

[Service]
User=$NP_USER
WorkingDirectory=$NP_HOME
ExecStart=$NP_PYTHON $NP_HOME/server.py 0.0.0.0 @CLIENT_PORT@ --data $NP_DATA --advertise $NP_ADVERTISE --broker $NP_ADVERTISE:@BROKER_PORT@ @SERVER_ARGS@
# SIGTERM: the login server terminates its app servers (waiting at most 30 s)
TimeoutStopSec=60
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
"$systemctl" daemon-reload
"$systemctl" enable --now np-social-login.service
say "started; clients connect to port @CLIENT_PORT@ of the public address"
"""


def server_args(opts, state):
    """The login server's options after HOST PORT --data --advertise --broker."""
    args = ["--launcher", "ec2", "--region", state["region"], "--ami", state["image"]["id"],
            "--cluster", state["name"], "--internal-port", str(opts.internal_port),
            "--security-group", state["app_sg"]["id"], "--key-name", state["key"]["name"],
            "--instance-type", opts.instance_type, "--app-port", str(opts.app_port),
            "--spare", str(opts.spare), "--idle-timeout", f"{opts.idle_timeout:g}",
            "--max-app-servers", str(opts.max_app_servers)]
    return args + list(opts.server_arg)


def login_user_data(opts, state):
    """The login host's user-data: LOGIN_HOST_USER_DATA filled in."""
    args = server_args(opts, state)
    unsafe = [a for a in args if not SAFE.fullmatch(a)]
    if unsafe:
        raise DemoError(f"login server option {unsafe[0]!r}: only letters, digits and ._:/,=@+- "
                        "may go into the login host's service file", EXIT_USAGE)
    return render(LOGIN_HOST_USER_DATA, {
        "DEMO": quote(state["name"]), "PROJECT_DIR": quote(PROJECT_DIR),
        "CLIENT_PORT": str(int(opts.client_port)), "BROKER_PORT": str(int(opts.broker_port)),
        "SERVER_ARGS": " ".join(quote(a) for a in args)})


PLACEHOLDERS = re.compile(r"\b(REGION|ACCOUNT_ID|AMI_ID|CLUSTER|APP_SG_ID|VPC_ID|KEY_NAME|INSTANCE_TYPE)\b")


def fill_policy(text, values):
    """docs/ec2-iam-policy.json with its placeholders replaced; the JSON text."""
    doc = json.loads(text)

    def fill(node):
        if isinstance(node, str):
            return PLACEHOLDERS.sub(lambda m: values[m.group(1)], node)
        if isinstance(node, list):
            return [fill(n) for n in node]
        if isinstance(node, dict):
            return {fill(k): fill(v) for k, v in node.items()}
        return node
    return json.dumps(fill(doc), indent=1)


# -- the state file ----------------------------------------------------------------------
class State:
    """The JSON record of one demo; saved (atomically, mode 0600) after every change."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        self.data = {}

    def load(self):
        """True if the file exists."""
        try:
            with open(self.path, encoding="utf-8") as f:
                self.data = json.load(f)
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as e:
            raise DemoError(f"state file {self.path}: {e}", EXIT_USAGE) from None
        if not isinstance(self.data, dict) or self.data.get("version") != 1:
            raise DemoError(f"state file {self.path}: not an ec2-demo state file", EXIT_USAGE)
        return True

    def save(self):
        self.data["version"] = 1
        tmp = f"{self.path}.tmp.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, self.path)

    def __getitem__(self, key):
        return self.data[key]

    def get(self, key, default=None):
        return self.data.get(key, default)

    def set(self, key, value):
        self.data[key] = value
        self.save()

    def update(self, key, **fields):
        """Merge `fields` into the dict at `key` (created if missing) and save."""
        self.data.setdefault(key, {}).update(fields)
        self.save()

    def drop(self, key):
        if self.data.pop(key, None) is not None:
            self.save()

    def key_file(self):
        base = self.path[:-len(".state.json")] if self.path.endswith(".state.json") \
            else os.path.splitext(self.path)[0]
        return base + ".pem"


# -- AWS ---------------------------------------------------------------------------------
def error_code(e):
    return getattr(e, "response", {}).get("Error", {}).get("Code", "")


def describe_error(e):
    """One line for a botocore exception."""
    code = error_code(e)
    if code:
        message = e.response["Error"].get("Message", "")
        return f"{getattr(e, 'operation_name', '?')}: {code}: {message}".strip()
    return f"{type(e).__name__}: {e}"


class Aws:
    def __init__(self, region):
        import boto3
        self.session = boto3.session.Session(region_name=region)
        if not self.session.region_name:
            raise DemoError("no region: pass --region (or set AWS_DEFAULT_REGION)", EXIT_USAGE)
        self.region = self.session.region_name
        self.ec2 = self.session.client("ec2")
        self.iam = self.session.client("iam")
        self.sts = self.session.client("sts")
        self.s3 = self.session.client("s3")

    def instances(self, filters):
        """{id: instance dict} matching `filters`, every state."""
        out = {}
        for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    out[inst["InstanceId"]] = inst
        return out

    def instance(self, instance_id):
        try:
            found = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except Exception as e:
            if error_code(e).startswith("InvalidInstanceID"):
                return None
            raise
        return found[0]["Instances"][0] if found else None

    def group(self, group_id=None, name=None, vpc=None):
        """The security group by id, or by name in `vpc`; None if there is none."""
        try:
            if group_id:
                groups = self.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
            else:
                groups = self.ec2.describe_security_groups(Filters=[
                    {"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"]
        except Exception as e:
            if error_code(e) in ("InvalidGroup.NotFound", "InvalidGroupId.NotFound", "InvalidGroupId.Malformed"):
                return None
            raise
        return groups[0] if groups else None

    def key_pair(self, name):
        try:
            return self.ec2.describe_key_pairs(KeyNames=[name])["KeyPairs"][0]
        except Exception as e:
            if error_code(e) == "InvalidKeyPair.NotFound":
                return None
            raise

    def image(self, image_id):
        try:
            images = self.ec2.describe_images(ImageIds=[image_id])["Images"]
        except Exception as e:
            if error_code(e) in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable", "InvalidAMIID.Malformed"):
                return None
            raise
        return images[0] if images else None


def tags(demo, role, name):
    return [{"Key": "Name", "Value": name}, {"Key": TAG_DEMO, "Value": demo}, {"Key": TAG_ROLE, "Value": role}]


def wait(what, probe, timeout, poll):
    """Poll probe() -> (done, status) until done; a progress line when the
    status changes and every PROGRESS_EVERY s. DemoError after `timeout`."""
    started = time.monotonic()
    last_status, last_line = None, 0.0
    while True:
        done, status = probe()
        now = time.monotonic()
        if done:
            if now - started >= 1:
                say(f"{what}: {status} after {now - started:.0f} s")
            return status
        if status != last_status or now - last_line >= PROGRESS_EVERY:
            say(f"waiting for {what}: {status} ({now - started:.0f} s)")
            last_status, last_line = status, now
        if now - started > timeout:
            raise DemoError(f"{what}: still {status} after {timeout:g} s (--timeout)")
        time.sleep(poll)


def git_commit():
    """HEAD's short commit (as scripts/build_ami.py names images), or None."""
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None, False
    return out, bool(dirty)


def my_address(timeout=10.0):
    """This machine's public IPv4 as AWS sees it, as a /32."""
    try:
        with urllib.request.urlopen(CHECKIP, timeout=timeout) as r:
            return cidr(r.read().decode("ascii", "replace").strip())
    except (OSError, argparse.ArgumentTypeError) as e:
        raise DemoError(f"cannot learn your public address from {CHECKIP} ({e}); pass --my-ip") from None


# -- up ----------------------------------------------------------------------------------
class Up:
    def __init__(self, opts, state, aws):
        self.opts, self.state, self.aws = opts, state, aws
        self.name = state["name"]

    def run(self):
        s, opts = self.state, self.opts
        if not s.get("account"):
            s.set("account", self.aws.sts.get_caller_identity()["Account"])
        if not s.get("vpc"):
            vpcs = self.aws.ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
            if not vpcs:
                raise DemoError(f"no default VPC in {self.aws.region}: create one "
                                "(aws ec2 create-default-vpc) or use another region")
            s.set("vpc", vpcs[0]["VpcId"])
        clients = sorted(set(s.get("clients", []) + s["my_ip"] + opts.allow))
        s.set("clients", clients)
        self.key_pair()
        self.security_groups(clients, s["my_ip"])
        self.image()
        self.instance_profile()
        self.login_host()
        self.summary()

    def key_pair(self):
        s, key_name = self.state, f"np-social-{self.name}"
        path = s.key_file()
        key = s.get("key") or {}
        if key.get("id") and self.aws.key_pair(key_name):
            if not os.path.exists(key["file"]):
                say(f"warning: {key['file']} is gone: ssh to the instances is impossible")
            return
        if not key and self.aws.key_pair(key_name):
            raise DemoError(f"key pair {key_name} exists but {s.path} does not record it (another "
                            "demo of that name?): pass --name, or delete the key pair", EXIT_USAGE)
        if os.path.exists(path) and not key:
            raise DemoError(f"{path} exists: move it away (it would be overwritten)", EXIT_USAGE)
        s.set("key", {"name": key_name, "file": path})        # the name first: `down` finds it
        self.aws.ec2.delete_key_pair(KeyName=key_name)        # a half-made one of ours: no private key
        made = self.aws.ec2.create_key_pair(KeyName=key_name, TagSpecifications=[
            {"ResourceType": "key-pair", "Tags": tags(self.name, "demo-key", key_name)}])
        if os.path.exists(path):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(made["KeyMaterial"].rstrip("\n") + "\n")
        s.update("key", id=made.get("KeyPairId", key_name))
        say(f"key pair {key_name}; private key {path} (mode 0600)")

    def security_groups(self, clients, admins):
        s, ec2 = self.state, self.aws.ec2
        ids = {}
        for role, what in (("app", "np-social app servers"), ("login", "np-social login host")):
            key, name = f"{role}_sg", f"np-social-{self.name}-{role}"
            record = s.get(key) or {}
            group = self.aws.group(group_id=record.get("id")) if record.get("id") else None
            if group is None:
                if self.aws.group(name=name, vpc=s["vpc"]) is not None and not record:
                    raise DemoError(f"security group {name} exists but {s.path} does not record it: "
                                    "pass --name, or delete the group", EXIT_USAGE)
                s.set(key, {"name": name})
                group = self.aws.group(name=name, vpc=s["vpc"])   # made before a crash: ours
                if group is None:
                    group_id = ec2.create_security_group(
                        GroupName=name, Description=f"{what} (demo {self.name})", VpcId=s["vpc"],
                        TagSpecifications=[{"ResourceType": "security-group",
                                            "Tags": tags(self.name, f"{role}-sg", name)}])["GroupId"]
                    say(f"security group {name}: {group_id}")
                else:
                    group_id = group["GroupId"]
                s.update(key, id=group_id)
            ids[role] = s[key]["id"]
        plan = ingress_plan(self.ports(), clients, admins)
        for rule in plan:
            try:
                ec2.authorize_security_group_ingress(GroupId=ids[rule.group],
                                                     IpPermissions=[permission(rule, ids)])
            except Exception as e:
                if error_code(e) != "InvalidPermission.Duplicate":
                    raise
        s.set("rules", [f"{r.group} {r.port} from {ids.get(r.source, r.source)}: {r.what}" for r in plan])

    def ports(self):
        o = self.opts
        return Ports(client=o.client_port, internal=o.internal_port, broker=o.broker_port, app=o.app_port)

    def image(self):
        s, opts, ec2 = self.state, self.opts, self.aws.ec2
        image = s.get("image") or {}
        if opts.ami:
            if image.get("id") not in (None, opts.ami):
                raise DemoError(f"{s.path} records image {image['id']}; --ami {opts.ami} differs "
                                "(run down first)", EXIT_USAGE)
            if self.aws.image(opts.ami) is None:
                raise DemoError(f"image {opts.ami} not found in {self.aws.region}")
            if not image:
                s.set("image", {"id": opts.ami, "built": False})
            return
        if image.get("built") and not image.get("id"):
            # a build that crashed after create_image: its image carries the recorded name
            made = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [image["name"]]}])
            if made["Images"]:
                s.update("image", id=made["Images"][0]["ImageId"])
                image = s["image"]
        if image.get("id"):
            found = self.aws.image(image["id"])
            if found is not None and found["State"] == "available":
                return
            if found is not None and image.get("built"):
                self.wait_image(image["id"])
                return
        commit, dirty = git_commit()
        if commit and not image.get("built"):
            ours = ec2.describe_images(Owners=["self"], Filters=[
                {"Name": f"tag:{TAG_ROLE}", "Values": [IMAGE_ROLE]},
                {"Name": "tag:np-social:commit", "Values": [commit]},
                {"Name": "state", "Values": ["available"]}])["Images"]
            if ours:
                pick = max(ours, key=lambda i: i.get("CreationDate", ""))
                s.set("image", {"id": pick["ImageId"], "built": False})
                say(f"image {pick['ImageId']} ({pick.get('Name', '')}) holds commit {commit}: using it")
                return
        if not commit:
            raise DemoError("no git commit to build an image from: pass --ami", EXIT_USAGE)
        if dirty:
            say("note: uncommitted changes are not in the image (it holds the commit HEAD)")
        self.build(commit)

    def build(self, commit):
        s, opts = self.state, self.opts
        bucket = opts.bucket or f"np-social-build-{s['account']}-{self.aws.region}"
        if not (s.get("bucket") or {}).get("name"):
            created = False
            try:
                self.aws.s3.head_bucket(Bucket=bucket)
            except Exception as e:
                if error_code(e) not in ("404", "NoSuchBucket", "NotFound"):
                    raise
                s.set("bucket", {"name": bucket, "created": True})
                params = {"Bucket": bucket}
                if self.aws.region != "us-east-1":
                    params["CreateBucketConfiguration"] = {"LocationConstraint": self.aws.region}
                self.aws.s3.create_bucket(**params)
                created = True
            if not created:
                s.set("bucket", {"name": bucket, "created": False})
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        name = f"np-social-{self.name}-{commit}-{stamp}"
        s.set("image", {"name": name, "built": True})       # `down` finds it by name after a crash
        cmd = [sys.executable, os.path.join(ROOT, "scripts", "build_ami.py"), "--region", self.aws.region,
               "--bucket", s["bucket"]["name"], "--name", name, "--poll", f"{opts.poll:g}",
               "--timeout", f"{opts.build_timeout:g}"]
        if opts.base_ami:
            cmd += ["--base-ami", opts.base_ami]
        say(f"building image {name} from commit {commit} (scripts/build_ami.py, ~5-8 min)")
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)   # its progress: our stderr
        lines = done.stdout.split()
        if done.returncode != 0 or not lines or not lines[-1].startswith("ami-"):
            raise DemoError(f"scripts/build_ami.py failed (status {done.returncode}); see its lines above")
        s.update("image", id=lines[-1])
        say(f"image {lines[-1]}")

    def wait_image(self, image_id):
        def probe():
            found = self.aws.image(image_id)
            state = found["State"] if found else "gone"
            if state in ("failed", "error", "invalid", "deregistered", "gone"):
                raise DemoError(f"image {image_id} is {state}: run down, then up")
            return state == "available", state
        wait(f"image {image_id}", probe, self.opts.timeout, self.opts.poll)

    def instance_profile(self):
        s, opts, iam = self.state, self.opts, self.aws.iam
        profile = opts.instance_profile or (LAB_PROFILE if opts.learner_lab else None)
        record = s.get("iam") or {}
        if profile:
            if record.get("created"):
                raise DemoError(f"{s.path} records the instance profile this demo made; run down "
                                "before switching to --learner-lab / --instance-profile", EXIT_USAGE)
            try:
                iam.get_instance_profile(InstanceProfileName=profile)
            except Exception as e:
                if error_code(e) == "NoSuchEntity":
                    raise DemoError(f"instance profile {profile} does not exist: name the lab's with "
                                    "--instance-profile NAME (IAM -> Roles in the console)") from None
                if error_code(e) not in ("AccessDenied", "AccessDeniedException"):
                    raise      # may not read IAM: run_instances will tell
            s.set("iam", {"profile": profile, "created": False})
            return
        role = profile = f"np-social-{self.name}-login"
        if not record:
            s.set("iam", {"role": role, "profile": profile, "created": True})
        with open(POLICY, encoding="utf-8") as f:
            policy = fill_policy(f.read(), {
                "REGION": self.aws.region, "ACCOUNT_ID": s["account"], "AMI_ID": s["image"]["id"],
                "CLUSTER": self.name, "APP_SG_ID": s["app_sg"]["id"], "VPC_ID": s["vpc"],
                "KEY_NAME": s["key"]["name"], "INSTANCE_TYPE": opts.instance_type})
        try:
            try:
                iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(ASSUME_EC2),
                                Description=f"np-social login host of demo {self.name}",
                                Tags=[{"Key": TAG_DEMO, "Value": self.name}])
                say(f"IAM role {role}")
            except Exception as e:
                if error_code(e) != "EntityAlreadyExists":
                    raise
            iam.put_role_policy(RoleName=role, PolicyName="np-social-fleet", PolicyDocument=policy)
            try:
                iam.create_instance_profile(InstanceProfileName=profile)
            except Exception as e:
                if error_code(e) != "EntityAlreadyExists":
                    raise
            roles = iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]["Roles"]
            if not any(r["RoleName"] == role for r in roles):
                iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=role)
        except Exception as e:
            if error_code(e) in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
                raise DemoError(f"{describe_error(e)}: this account may not create IAM roles; on AWS "
                                "Academy / Learner Lab use --learner-lab (the lab's LabInstanceProfile), "
                                "elsewhere --instance-profile NAME") from None
            raise

    def login_host(self):
        s, opts = self.state, self.opts
        record = s.get("login_host") or {}
        inst = self.aws.instance(record["id"]) if record.get("id") else None
        if inst is None and not record.get("id"):
            # a launch that crashed before its id was saved
            found = self.aws.instances([{"Name": f"tag:{TAG_DEMO}", "Values": [self.name]},
                                        {"Name": f"tag:{TAG_ROLE}", "Values": ["login"]},
                                        {"Name": "instance-state-name", "Values": ["pending", "running"]}])
            inst = next(iter(found.values()), None)
            if inst is not None:
                s.update("login_host", id=inst["InstanceId"])
        state = inst["State"]["Name"] if inst else None
        if state == "stopping":
            raise DemoError(f"login host {inst['InstanceId']} is stopping: run up again once it has stopped")
        if state == "stopped":
            # a Learner Lab session ended, or a stop by hand: the same host, started again
            # (its service starts by itself; its public address changes)
            self.aws.ec2.start_instances(InstanceIds=[inst["InstanceId"]])
            say(f"login host {inst['InstanceId']} was stopped: starting it")
        if state in ("pending", "running", "stopped"):
            instance_id = inst["InstanceId"]
        else:
            instance_id = self.launch_login_host()
        wait(f"login host {instance_id}", lambda: self.running(instance_id), opts.timeout, opts.poll)
        inst = self.aws.instance(instance_id)
        s.update("login_host", id=instance_id, public_ip=inst.get("PublicIpAddress"),
                 private_ip=inst.get("PrivateIpAddress"), client_port=opts.client_port)
        if not opts.no_wait:
            self.wait_login_server()

    def launch_login_host(self):
        s, opts = self.state, self.opts
        name = f"np-social {self.name} login"
        params = dict(
            ImageId=s["image"]["id"], InstanceType=opts.instance_type, MinCount=1, MaxCount=1,
            KeyName=s["key"]["name"], SecurityGroupIds=[s["login_sg"]["id"]],
            IamInstanceProfile={"Name": s["iam"]["profile"]},
            UserData=login_user_data(opts, s),
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
            TagSpecifications=[{"ResourceType": kind, "Tags": tags(self.name, "login", name)}
                               for kind in ("instance", "volume")])
        s.set("login_host", {"name": name})
        started = time.monotonic()
        while True:
            try:
                instance_id = self.aws.ec2.run_instances(**params)["Instances"][0]["InstanceId"]
                break
            except Exception as e:
                # a fresh instance profile takes a few seconds to be usable (IAM is eventually consistent)
                young = "instance profile" in str(e).lower() or "iaminstanceprofile" in str(e).lower()
                if not (young and error_code(e) == "InvalidParameterValue") \
                        or time.monotonic() - started > opts.iam_wait:
                    raise
                say("the new instance profile is not usable yet (IAM propagates in ~10 s); retrying")
                time.sleep(opts.poll)
        s.update("login_host", id=instance_id)
        say(f"login host {instance_id} ({opts.instance_type}) launched")
        return instance_id

    def running(self, instance_id):
        inst = self.aws.instance(instance_id)
        state = inst["State"]["Name"] if inst else "not listed yet"
        if state in ("shutting-down", "terminated", "stopping", "stopped"):
            raise DemoError(f"login host {instance_id} is {state}: see its console output "
                            f"(aws ec2 get-console-output --instance-id {instance_id})")
        return state == "running", state

    def wait_login_server(self):
        host = self.state["login_host"].get("public_ip")
        if not host:
            raise DemoError("the login host has no public address (a subnet without public IPs?)")

        def probe():
            try:
                socket.create_connection((host, self.opts.client_port), timeout=3).close()
                return True, "answering"
            except OSError:
                return False, "booting, installing ActiveMQ, starting the login server"
        wait(f"the login server on {host}:{self.opts.client_port}", probe, self.opts.timeout, self.opts.poll)

    def summary(self):
        s, host = self.state, self.state["login_host"].get("public_ip")
        script = "scripts/ec2-demo.sh" if os.getcwd() == ROOT else os.path.join(ROOT, "scripts", "ec2-demo.sh")
        where = "" if s.path == os.path.abspath(DEFAULT_STATE) else f" --state {s.path}"
        say("up. Next:")
        print(f"  ./client {host} {self.opts.client_port}")
        print(f"  ssh -i {s['key']['file']} {SSH_USER}@{host}     # journalctl -u np-social-login -f")
        print(f"  {script} status{where}")
        print(f"  {script} down{where}")


# -- status ------------------------------------------------------------------------------
def status(opts, state, aws):
    s, name = state, state["name"]
    print(f"demo {name} in {aws.region} (state {s.path})")
    key = s.get("key") or {}
    if key:
        exists = aws.key_pair(key["name"]) is not None
        print(f"  key pair     {key['name']}: {'exists' if exists else 'absent'}; private key {key['file']}"
              f"{'' if os.path.exists(key['file']) else ' (missing)'}")
    for role in ("login", "app"):
        record = s.get(f"{role}_sg") or {}
        if record:
            group = aws.group(group_id=record["id"]) if record.get("id") else None
            print(f"  {role + ' group':12} {record.get('id', '?')} {record['name']}: "
                  f"{'exists' if group else 'absent'}")
            for perm in (group or {}).get("IpPermissions", ()):
                sources = [r["CidrIp"] for r in perm.get("IpRanges", ())] + \
                          [p["GroupId"] for p in perm.get("UserIdGroupPairs", ())]
                print(f"                 tcp {perm.get('FromPort')} from {', '.join(sources)}")
    image = s.get("image") or {}
    if image:
        found = aws.image(image["id"]) if image.get("id") else None
        how = "built by this demo: down deletes it" if image.get("built") else "not this demo's: kept"
        print(f"  image        {image.get('id', image.get('name'))}: "
              f"{found['State'] if found else 'absent'} ({how})")
    iam = s.get("iam") or {}
    if iam:
        how = "made by this demo" if iam.get("created") else "existing, kept"
        print(f"  profile      {iam['profile']} ({how})")
    bucket = s.get("bucket") or {}
    if bucket.get("created"):
        print(f"  bucket       {bucket['name']} (made by this demo)")
    record = s.get("login_host") or {}
    if record.get("id"):
        inst = aws.instance(record["id"])
        state_name = inst["State"]["Name"] if inst else "absent"
        public = (inst or {}).get("PublicIpAddress") or record.get("public_ip")
        print(f"  login host   {record['id']}: {state_name}  public {public}  "
              f"private {(inst or {}).get('PrivateIpAddress')}")
        port = record.get("client_port", opts.client_port)
        if state_name == "running" and public and not opts.no_probe:
            try:
                socket.create_connection((public, port), timeout=3).close()
                print(f"  login server answering: ./client {public} {port}")
            except OSError:
                print(f"  login server not answering on {public}:{port} yet "
                      "(first boot: ActiveMQ install, ~2-3 min)")
    apps = aws.instances([{"Name": f"tag:{TAG_CLUSTER}", "Values": [name]},
                          {"Name": "instance-state-name", "Values": list(LIVE)}])
    print(f"  app servers  {len(apps)}")
    for iid, inst in sorted(apps.items()):
        server = {t["Key"]: t["Value"] for t in inst.get("Tags", ())}.get("np-social:server-id", "?")
        print(f"               {iid} {server}: {inst['State']['Name']}  {inst.get('PublicIpAddress')}")
    return EXIT_OK


# -- down --------------------------------------------------------------------------------
class Down:
    """Removes what the state records, step by step; each step drops its record
    once done ("not found" counts as done) and a failed step leaves its record
    for the next run without stopping the others."""

    def __init__(self, opts, state, aws):
        self.opts, self.state, self.aws = opts, state, aws
        self.name = state["name"]
        self.failures = []

    def run(self):
        for step in (self.instances, self.instance_profile, self.security_groups, self.key_pair,
                     self.image, self.bucket):
            try:
                step()
            except DemoError as e:
                self.failures.append(str(e))
            except Exception as e:
                self.failures.append(describe_error(e))
        if self.failures:
            for line in self.failures:
                say(f"down: {line}")
            raise DemoError(f"{len(self.failures)} step(s) failed; {self.state.path} keeps what is "
                            "left: run down again")
        os.unlink(self.state.path)
        say(f"down: everything {self.state.path} recorded is gone (state file removed)")

    def instances(self):
        s, ec2 = self.state, self.aws.ec2
        ids = set()
        record = s.get("login_host") or {}
        if record.get("id"):
            ids.add(record["id"])
        searches = [[{"Name": f"tag:{TAG_DEMO}", "Values": [self.name]}],      # the login host
                    [{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.name]}]]   # its app servers
        image = s.get("image") or {}
        if image.get("built") and image.get("name"):     # a builder left by a crashed build
            searches.append([{"Name": "tag:Name", "Values": [f"{image['name']} builder"]}])
        for filters in searches:
            ids |= {iid for iid, inst in self.aws.instances(
                filters + [{"Name": "instance-state-name", "Values": list(LIVE)}]).items()}
        live = [iid for iid in sorted(ids) if (self.aws.instance(iid) or {}).get("State", {}).get("Name")
                not in (None, "terminated")]
        if live:
            ec2.terminate_instances(InstanceIds=live)
            say(f"terminating {', '.join(live)}")

            def probe():
                states = {iid: (self.aws.instance(iid) or {}).get("State", {}).get("Name", "terminated")
                          for iid in live}
                left = sorted(f"{iid} {st}" for iid, st in states.items() if st != "terminated")
                return not left, ", ".join(left) or "terminated"
            wait("the instances to terminate", probe, self.opts.timeout, self.opts.poll)
        s.drop("login_host")

    def instance_profile(self):
        s, iam = self.state, self.aws.iam
        record = s.get("iam") or {}
        if record.get("created"):
            role, profile = record["role"], record["profile"]
            for call in (lambda: iam.remove_role_from_instance_profile(InstanceProfileName=profile, RoleName=role),
                         lambda: iam.delete_instance_profile(InstanceProfileName=profile),
                         lambda: iam.delete_role_policy(RoleName=role, PolicyName="np-social-fleet"),
                         lambda: iam.delete_role(RoleName=role)):
                try:
                    call()
                except Exception as e:
                    if error_code(e) != "NoSuchEntity":
                        raise
            say(f"deleted instance profile and role {role}")
        s.drop("iam")

    def security_groups(self):
        # the login group's rules name the app group: delete it first
        for role in ("login", "app"):
            key = f"{role}_sg"
            record = self.state.get(key) or {}
            if not record:
                continue
            group_id = record.get("id")
            if not group_id and self.state.get("vpc"):
                group = self.aws.group(name=record["name"], vpc=self.state["vpc"])
                group_id = group["GroupId"] if group else None
            if group_id:
                self.delete_group(group_id, record["name"])
            self.state.drop(key)

    def delete_group(self, group_id, name):
        def probe():
            try:
                self.aws.ec2.delete_security_group(GroupId=group_id)
            except Exception as e:
                code = error_code(e)
                if code in ("InvalidGroup.NotFound", "InvalidGroupId.NotFound"):
                    return True, "gone"
                if code == "DependencyViolation":   # network interfaces still detaching
                    return False, "in use"
                raise
            return True, "deleted"
        result = wait(f"security group {name} ({group_id})", probe, self.opts.timeout, self.opts.poll)
        say(f"security group {name} ({group_id}): {result}")

    def key_pair(self):
        record = self.state.get("key") or {}
        if record:
            self.aws.ec2.delete_key_pair(KeyName=record["name"])
            if os.path.exists(record["file"]):
                os.unlink(record["file"])
            say(f"deleted key pair {record['name']} and {record['file']}")
        self.state.drop("key")

    def image(self):
        s, ec2 = self.state, self.aws.ec2
        record = s.get("image") or {}
        if record.get("built") and not self.opts.keep_image:
            images = []
            if record.get("id"):
                found = self.aws.image(record["id"])
                images = [found] if found else []
            elif record.get("name"):
                images = ec2.describe_images(Owners=["self"], Filters=[
                    {"Name": "name", "Values": [record["name"]]}])["Images"]
            for image in images:
                snapshots = [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", ())
                             if m.get("Ebs", {}).get("SnapshotId")]
                ec2.deregister_image(ImageId=image["ImageId"])
                for snapshot in snapshots:
                    try:
                        ec2.delete_snapshot(SnapshotId=snapshot)
                    except Exception as e:
                        if error_code(e) != "InvalidSnapshot.NotFound":
                            raise
                say(f"deleted image {image['ImageId']} and snapshots {', '.join(snapshots) or '-'}")
        elif record.get("built"):
            say(f"kept image {record.get('id')} (--keep-image): the next up with this commit uses it")
        s.drop("image")

    def bucket(self):
        s3 = self.aws.s3
        record = self.state.get("bucket") or {}
        if record.get("created"):
            try:
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=record["name"]):
                    for obj in page.get("Contents", ()):
                        s3.delete_object(Bucket=record["name"], Key=obj["Key"])
                s3.delete_bucket(Bucket=record["name"])
                say(f"deleted bucket {record['name']}")
            except Exception as e:
                if error_code(e) not in ("NoSuchBucket", "404"):
                    raise
        self.state.drop("bucket")


# -- main --------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="ec2-demo.sh", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("up", "status", "down"))
    p.add_argument("--state", default=DEFAULT_STATE, metavar="FILE",
                   help=f"the demo's state file (default ./{DEFAULT_STATE}); the private key goes "
                        "next to it (FILE without .state.json, plus .pem)")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="demo name: resource names, tag np-social:demo and the login server's --cluster "
                        "(default np-demo; recorded in the state file)")
    p.add_argument("--region", default=None, help="AWS region (default: the state file's, else boto3's; "
                   "us-east-1 with --learner-lab)")
    p.add_argument("--instance-type", default="t3.micro", metavar="TYPE",
                   help="login host and app servers (default t3.micro: 1 GiB, enough for ActiveMQ's 512 MB heap)")
    g = p.add_argument_group("access")
    g.add_argument("--my-ip", type=cidr, default=None, metavar="CIDR",
                   help=f"your address (default: asked of {CHECKIP}, as a /32); client ports and ssh")
    g.add_argument("--allow", type=cidr, action="append", default=[], metavar="CIDR",
                   help="also let CIDR reach the client ports, e.g. a TA's address (repeatable)")
    g = p.add_argument_group("IAM")
    g.add_argument("--learner-lab", action="store_true",
                   help="AWS Academy / Learner Lab: no IAM role is created; the login host uses the lab's "
                        f"instance profile ({LAB_PROFILE}, of LabRole)")
    g.add_argument("--instance-profile", default=None, metavar="NAME",
                   help="an existing instance profile for the login host (then none is created)")
    g = p.add_argument_group("image")
    g.add_argument("--ami", default=None, metavar="ID",
                   help="use this image (default: one of yours holding HEAD's commit, else build one)")
    g.add_argument("--base-ami", default=None, metavar="ID",
                   help="base image of a build (default build_ami.py's: the newest Debian 12)")
    g.add_argument("--bucket", default=None, metavar="NAME",
                   help="S3 bucket for a build (default np-social-build-ACCOUNT-REGION, made and removed "
                        "by the demo if missing)")
    g.add_argument("--keep-image", action="store_true", help="down: keep an image this demo built")
    g = p.add_argument_group("the login server")
    g.add_argument("--client-port", type=int, default=8888, metavar="N", help="its client port (default 8888)")
    g.add_argument("--internal-port", type=int, default=8899, metavar="N",
                   help="the port app servers register on (default 8899)")
    g.add_argument("--broker-port", type=int, default=61613, metavar="N", help="ActiveMQ STOMP (default 61613)")
    g.add_argument("--app-port", type=int, default=9000, metavar="N",
                   help="the app servers' client port (default 9000)")
    g.add_argument("--spare", type=int, default=1, metavar="N",
                   help="empty app servers kept booted, so a login does not wait 30-60 s for one "
                        "(default 1; 0 saves an instance)")
    g.add_argument("--idle-timeout", type=float, default=120.0, metavar="S",
                   help="terminate an app server S s after its last user left (default 120)")
    g.add_argument("--max-app-servers", type=int, default=3, metavar="N",
                   help="never more app servers than N (default 3: a demo, and a cost cap)")
    g.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for server.py, e.g. --server-arg=--capacity=2 (repeatable)")
    g = p.add_argument_group("waiting")
    g.add_argument("--no-wait", action="store_true",
                   help="up: return once the login host runs, without waiting for the login server")
    g.add_argument("--no-probe", action="store_true", help="status: do not connect to the login server")
    g.add_argument("--timeout", type=float, default=900.0, metavar="S",
                   help="give up any one wait after S s (default 900)")
    g.add_argument("--build-timeout", type=float, default=1800.0, metavar="S",
                   help="give up an image build after S s (default 1800)")
    g.add_argument("--iam-wait", type=float, default=90.0, metavar="S",
                   help="retry a launch refused for a fresh instance profile for S s (default 90)")
    g.add_argument("--poll", type=float, default=5.0, metavar="S", help="seconds between checks (default 5)")
    opts = p.parse_args(argv)
    if opts.name is not None and not NAME.fullmatch(opts.name):
        p.error("--name: a lowercase letter, then up to 30 lowercase letters, digits or -")
    for flag in ("client_port", "internal_port", "broker_port", "app_port"):
        if not 0 < getattr(opts, flag) < 65536:
            p.error(f"--{flag.replace('_', '-')} must be 1-65535")
    unsafe = [a for a in opts.server_arg if not SAFE.fullmatch(a)]
    if unsafe:
        p.error(f"--server-arg {unsafe[0]!r}: only letters, digits and ._:/,=@+- (it goes into a "
                "systemd unit file unquoted)")
    if opts.spare < 0 or opts.max_app_servers < 1 or opts.poll <= 0 or opts.timeout <= 0:
        p.error("--spare must be >= 0, --max-app-servers >= 1, --poll and --timeout > 0")
    return opts


def open_state(opts):
    """The state, checked against the options; DemoError on a mismatch."""
    state = State(opts.state)
    exists = state.load()
    if exists:
        for key, given in (("name", opts.name), ("region", opts.region)):
            if given and state.get(key) and state.get(key) != given:
                raise DemoError(f"{state.path} is demo {state.get('name')} in {state.get('region')}; "
                                f"--{key} {given} differs (another --state FILE for another demo)", EXIT_USAGE)
    return state, exists


def main(argv=None):
    opts = parse_args(argv)
    try:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError:
        print("ec2-demo: needs boto3 (scripts/venv.sh installs it)", file=sys.stderr)
        return EXIT_FAILED
    try:
        state, exists = open_state(opts)
        if opts.command != "up" and not exists:
            say(f"nothing recorded in {state.path}: nothing to {'show' if opts.command == 'status' else 'remove'}")
            return EXIT_OK
        region = state.get("region") or opts.region or ("us-east-1" if opts.learner_lab else None)
        aws = Aws(region)
        if opts.command == "status":
            return status(opts, state, aws)
        if opts.command == "down":
            Down(opts, state, aws).run()
            return EXIT_OK
        if not exists:
            state.data = {"name": opts.name or "np-demo", "region": aws.region}
            state.save()
            say(f"recording demo {state['name']} ({aws.region}) in {state.path}")
        if opts.my_ip or not state.get("my_ip"):
            state.set("my_ip", sorted(set(state.get("my_ip", []) + [opts.my_ip or my_address()])))
        Up(opts, state, aws).run()
        return EXIT_OK
    except DemoError as e:
        say(str(e))
        code = e.code
    except NoCredentialsError:
        say("no AWS credentials: `aws configure`, AWS_PROFILE, or (Learner Lab) the lab's "
            "AWS Details pasted into ~/.aws/credentials")
        code = EXIT_FAILED
    except (ClientError, BotoCoreError) as e:
        say(describe_error(e))
        code = EXIT_FAILED
    except KeyboardInterrupt:
        say("interrupted")
        code = EXIT_FAILED
    if opts.command == "up" and os.path.exists(opts.state):
        say(f"what was made is recorded in {os.path.abspath(opts.state)}: `scripts/ec2-demo.sh down "
            f"--state {opts.state}` removes it; `up` again carries on")
    return code


if __name__ == "__main__":
    sys.exit(main())
