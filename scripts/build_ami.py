#!/usr/bin/env python3
"""Build the np-social image (AMI) that `server.py --launcher ec2` boots.

  .venv/bin/python scripts/build_ami.py --region eu-west-3 --bucket my-np-build-bucket

What it does (docs/ec2.md has the whole walk-through):
  1. `git archive` of the commit (default HEAD: commit your work first) ->
     s3://BUCKET/np-social/build/<commit>.tar.gz, readable by the builder
     through a presigned URL (valid 1 h), so the builder needs no IAM role;
  2. launches a builder instance from the newest official Debian 12 image
     (owner 136693071363; or --base-ami) whose user-data installs python3,
     venv, curl, unpacks the project into /opt/np-social, creates its
     virtual env (scripts/venv.sh) and the unprivileged user np-social, prints
     a marker on the serial console and powers off;
  3. waits for `stopped`, checks the console for the marker, `create_image`
     (image and snapshot tagged np-social:role=appserver-image), waits for
     `available`, terminates the builder, deletes the uploaded archive;
  4. prints the AMI id.
Use --dry-run to print the builder's user-data and parameters and touch nothing.

Credentials and region come from boto3's usual chain (AWS_PROFILE,
~/.aws/config, env). The same image serves the login server too (docs/ec2.md).
"""
import argparse
import datetime
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN_OWNER = "136693071363"     # the Debian cloud team's AWS account
OK_MARK, FAIL_MARK = "NP-SOCIAL-BUILD-OK", "NP-SOCIAL-BUILD-FAILED"

BUILDER_USER_DATA = r"""#!/bin/bash
# np-social image builder (scripts/build_ami.py): runs once as root, then powers off.
set -euo pipefail
trap 'echo "{fail}" | tee /dev/console; poweroff' ERR
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends python3 python3-venv curl ca-certificates tar gzip
mkdir -p /opt/np-social
curl -fsSL --retry 5 {url} | tar -xz -C /opt/np-social --strip-components=1
cd /opt/np-social
scripts/venv.sh requirements.txt >/dev/null      # /opt/np-social/.venv with the pinned packages
# the app server's modules, and the EC2 launcher with its user-data template (login host)
.venv/bin/python -c 'import stomp, boto3, lib.loop.reactor, lib.social.app_server
from lib.fleet.launchers.ec2 import userdata; userdata.template()'
id np-social >/dev/null 2>&1 || useradd --system --home-dir /opt/np-social --shell /usr/sbin/nologin np-social
chown -R root:root /opt/np-social
chmod -R a+rX,go-w /opt/np-social
echo "{commit}" > /opt/np-social/IMAGE_COMMIT
apt-get clean
sync
echo "{ok}" | tee /dev/console
poweroff
"""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bucket", required=True, help="S3 bucket for the project archive (must exist)")
    p.add_argument("--region", default=None, help="AWS region (default: boto3's)")
    p.add_argument("--ref", default="HEAD", help="git commit to put in the image (default HEAD)")
    p.add_argument("--base-ami", default=None, help="base image (default: newest official Debian 12 amd64)")
    p.add_argument("--instance-type", default="t3.micro")
    p.add_argument("--subnet", default=None, help="subnet with internet access (default: the default VPC's)")
    p.add_argument("--security-group", action="append", default=[], metavar="SG_ID",
                   help="security group ids for the builder (default: the VPC's default group; "
                        "it needs outbound HTTPS only)")
    p.add_argument("--name", default=None, help="image name (default np-social-<commit>-<UTC time>)")
    p.add_argument("--timeout", type=float, default=1800, help="give up after S seconds (default 1800)")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between state checks (default 10)")
    p.add_argument("--keep-builder", action="store_true", help="do not terminate the builder instance")
    p.add_argument("--dry-run", action="store_true", help="print what would be done; no AWS call")
    return p.parse_args(argv)


def git(*args):
    return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True).stdout


def builder_user_data(url, commit):
    return BUILDER_USER_DATA.format(url=shlex.quote(url), commit=commit, ok=OK_MARK, fail=FAIL_MARK)


def newest_debian(ec2):
    images = ec2.describe_images(Owners=[DEBIAN_OWNER], Filters=[
        {"Name": "name", "Values": ["debian-12-amd64-*"]},
        {"Name": "architecture", "Values": ["x86_64"]},
        {"Name": "state", "Values": ["available"]}])["Images"]
    if not images:
        raise SystemExit("build_ami: no Debian 12 image found; pass --base-ami")
    return max(images, key=lambda i: i["CreationDate"])["ImageId"]


def wait_state(ec2, instance_id, wanted, deadline, poll):
    while True:
        state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]
        if state == wanted:
            return
        if state in ("terminated", "shutting-down"):
            raise SystemExit(f"build_ami: builder {instance_id} is {state}")
        if time.monotonic() > deadline:
            raise SystemExit(f"build_ami: builder {instance_id} still {state}; giving up (--timeout)")
        time.sleep(poll)


def main(argv=None):
    args = parse_args(argv)
    commit = git("rev-parse", "--short=12", args.ref).decode().strip()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = args.name or f"np-social-{commit}-{stamp}"
    key = f"np-social/build/{commit}.tar.gz"
    tags = [{"Key": "Name", "Value": f"{name} builder"}, {"Key": "np-social:role", "Value": "image-builder"}]
    if args.dry_run:
        print(f"# would upload git archive {commit} to s3://{args.bucket}/{key}")
        print(f"# would run a builder ({args.instance_type}) with this user-data, then create image {name}:")
        print(builder_user_data("https://PRESIGNED-URL", commit))
        return 0

    import boto3
    session = boto3.session.Session(region_name=args.region)
    ec2, s3 = session.client("ec2"), session.client("s3")
    deadline = time.monotonic() + args.timeout

    archive = git("archive", "--format=tar.gz", "--prefix=np-social/", args.ref)
    s3.put_object(Bucket=args.bucket, Key=key, Body=archive)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": args.bucket, "Key": key}, ExpiresIn=3600)
    print(f"build_ami: uploaded {len(archive)} bytes to s3://{args.bucket}/{key}", file=sys.stderr)

    base = args.base_ami or newest_debian(ec2)
    params = dict(ImageId=base, InstanceType=args.instance_type, MinCount=1, MaxCount=1,
                  UserData=builder_user_data(url, commit),
                  InstanceInitiatedShutdownBehavior="stop",
                  MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
                  TagSpecifications=[{"ResourceType": "instance", "Tags": tags},
                                     {"ResourceType": "volume", "Tags": tags}])
    if args.subnet:
        params["SubnetId"] = args.subnet
    if args.security_group:
        params["SecurityGroupIds"] = args.security_group
    instance_id = ec2.run_instances(**params)["Instances"][0]["InstanceId"]
    print(f"build_ami: builder {instance_id} from {base}; waiting for it to install and power off "
          "(~3-6 min)", file=sys.stderr)
    image_id = None
    try:
        wait_state(ec2, instance_id, "stopped", deadline, args.poll)
        try:
            console = ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output", "") or ""
        except Exception as e:   # not fatal: the marker is a convenience
            console = ""
            print(f"build_ami: no console output ({e})", file=sys.stderr)
        if FAIL_MARK in console:
            raise SystemExit(f"build_ami: the build failed on {instance_id}; console:\n{console[-4000:]}")
        if OK_MARK not in console:
            print("build_ami: warning: success marker not seen on the console (it may lag); "
                  "creating the image anyway", file=sys.stderr)
        image_tags = [{"Key": "Name", "Value": name}, {"Key": "np-social:role", "Value": "appserver-image"},
                      {"Key": "np-social:commit", "Value": commit}]
        image_id = ec2.create_image(InstanceId=instance_id, Name=name,
                                    Description=f"np-social {commit}: project in /opt/np-social",
                                    TagSpecifications=[{"ResourceType": "image", "Tags": image_tags},
                                                       {"ResourceType": "snapshot", "Tags": image_tags}])["ImageId"]
        print(f"build_ami: creating {image_id}", file=sys.stderr)
        while True:
            state = ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"]
            if state == "available":
                break
            if state in ("failed", "error", "invalid", "deregistered"):
                raise SystemExit(f"build_ami: image {image_id} is {state}")
            if time.monotonic() > deadline:
                raise SystemExit(f"build_ami: image {image_id} still {state}; giving up (--timeout)")
            time.sleep(args.poll)
    finally:
        if not args.keep_builder:
            ec2.terminate_instances(InstanceIds=[instance_id])
        try:
            s3.delete_object(Bucket=args.bucket, Key=key)
        except Exception as e:
            print(f"build_ami: could not delete s3://{args.bucket}/{key}: {e}", file=sys.stderr)
    print(image_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
