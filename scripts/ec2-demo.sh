#!/usr/bin/env bash
# scripts/ec2-demo.sh up | status | down [options]   (--help for all options)
# np-social on EC2 from an empty account to a demo and back: key pair,
# security groups, image, instance profile and login host, every id recorded
# in a state file (default ./ec2-demo.state.json) that `down` removes it all
# from. The work is done by scripts/ec2_demo.py (boto3); docs/ec2.md explains.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$("$root/scripts/venv.sh")
exec "$py" "$root/scripts/ec2_demo.py" "$@"
