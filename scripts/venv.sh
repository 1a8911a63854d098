#!/usr/bin/env bash
# Make sure .venv exists and holds the pinned packages of the given
# requirements file (default requirements.txt). Quick (a hash compare) when
# nothing changed. Prints the venv's python path on stdout.
#   usage: scripts/venv.sh [requirements-file]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
req=${1:-requirements.txt}
venv=$root/.venv
stamp=$venv/.installed-$(basename "$req")
want=$(cat "$root/requirements.txt" "$root/$req" | sha256sum | cut -c1-64)
if [ ! -x "$venv/bin/python" ]; then
  echo "np-social: creating virtual env in .venv" >&2
  python3 -m venv "$venv" >&2
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "np-social: installing $req into .venv" >&2
  (cd "$root" && "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2)
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
