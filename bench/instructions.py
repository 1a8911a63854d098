#!/usr/bin/env python3
"""Instructions per login-server request, counted by callgrind: a figure
the machine's load cannot move (unlike req/s on shared cores).

    python bench/instructions.py [OTHER_TREE ...]

Runs this tree's server.py (and each OTHER_TREE's) under
`valgrind --tool=callgrind`, sends N `list-friend nosuchtoken` requests from
one client (the login server's request path: framing, decode, priority
checks, reply, group-commit hook, output), stops it, and reports
(I(N2) - I(N1)) / (N2 - N1), so start-up and shutdown cancel out.
Needs valgrind (Debian package) and no broker. Loopback only; bounded.
"""
import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N1, N2 = 500, 2500


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def instructions(tree, n, python=sys.executable):
    """Total instructions of one server run that answered `n` requests."""
    data = tempfile.mkdtemp(prefix="np-instr-")
    with open(os.path.join(data, "users.txt"), "w") as f:
        f.write("alice pw\n")
    out, port = os.path.join(data, "callgrind.out"), free_port()
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python,
           os.path.join(tree, "server.py"), "127.0.0.1", str(port), "--data", data,
           "--no-fsync", "--broker", "127.0.0.1:1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tree)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{tree}: the server did not start under valgrind")
                time.sleep(0.2)
        with sock, sock.makefile("rwb") as f:
            for _ in range(n):
                f.write(b"list-friend nosuchtoken\n")
                f.flush()
                f.readline()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    with open(out) as f:
        return int(re.search(r"^(?:summary|totals):\s+(\d+)", f.read(), re.M).group(1))


def per_request(tree):
    return (instructions(tree, N2) - instructions(tree, N1)) / (N2 - N1)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("others", nargs="*", help="other checkouts to compare with this one")
    args = ap.parse_args(argv)
    base = per_request(ROOT)
    print(f"{'this tree':<40} {base:>10,.0f} instructions/request")
    for other in args.others:
        value = per_request(other)
        print(f"{other:<40} {value:>10,.0f} instructions/request  ({value / base:.3f} of this tree)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
