#!/usr/bin/env python3
"""Instructions per login-server request, counted by callgrind: a figure
the machine's load cannot move (unlike req/s on shared cores).

    python bench/instructions.py [--app] [OTHER_TREE ...]

Runs this tree's server.py (and each OTHER_TREE's) under
`valgrind --tool=callgrind`, sends N `list-friend nosuchtoken` requests from
one client (the login server's request path: framing, decode, priority
checks, reply, group-commit hook, output), stops it, and reports
(I(N2) - I(N1)) / (N2 - N1), so start-up and shutdown cancel out.

With --app, the relay path instead: alice logs in, and her `list-friend
TOKEN` requests go to her application server (launched by the login server
under callgrind too: --trace-children), which relays each to the login
server; reported per request for the app server and for the login server.
Needs valgrind (Debian package) and no broker. Loopback only; bounded.
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N1, N2 = 500, 2500


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(proc, port, tree):
    """A connection to the login server `proc` starts under valgrind on `port`."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=300)
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{tree}: the server did not start under valgrind")
            time.sleep(0.2)


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
        sock = _connect(proc, port, tree)
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


def _total(path):
    with open(path) as f:
        found = re.search(r"^(?:summary|totals):\s+(\d+)", f.read(), re.M)
    return int(found.group(1)) if found else None


class NullBroker:
    """A STOMP listener that accepts every CONNECT and answers every receipt
    and nothing else, on a thread of this process: app servers connect once
    and stay connected, so no reconnect attempts (whose cost grows with the
    run's wall time, long under valgrind) count as per-request work."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\0" in buf:
                    frame, buf = buf.split(b"\0", 1)
                    lines = frame.lstrip(b"\r\n").split(b"\n")
                    headers = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
                    if lines[0] in (b"CONNECT", b"STOMP"):
                        conn.sendall(b"CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0")
                    elif b"receipt" in headers:
                        conn.sendall(b"RECEIPT\nreceipt-id:" + headers[b"receipt"] + b"\n\n\0")


def relay_instructions(tree, n, python=sys.executable):
    """(app server's, login server's) total instructions of one run in which
    the app server relayed `n` requests."""
    data = tempfile.mkdtemp(prefix="np-instr-")
    with open(os.path.join(data, "users.txt"), "w") as f:
        f.write("alice pw\n")
    port, broker = free_port(), NullBroker()
    cmd = ["valgrind", "--tool=callgrind", "--trace-children=yes",
           f"--callgrind-out-file={data}/callgrind.out.%p", python,
           os.path.join(tree, "server.py"), "127.0.0.1", str(port), "--data", data,
           "--no-fsync", "--broker", broker.address]
    env = dict(os.environ, NP_BROKER_USER="np-bench", NP_BROKER_PASSWORD="bench-password-0123456789")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tree,
                            env=env)
    try:
        sock = _connect(proc, port, tree)
        with sock, sock.makefile("rwb") as f:
            f.write(b"login alice pw\n")
            f.flush()
            reply = json.loads(f.readline())
        host, _, app_port = reply["app_server"].rpartition(":")
        with socket.create_connection((host, int(app_port)), timeout=300) as app, \
                app.makefile("rwb") as f:
            line = f"list-friend {reply['token']}\n".encode()
            for _ in range(n):
                f.write(line)
                f.flush()
                f.readline()
        proc.send_signal(signal.SIGTERM)
        proc.wait(300)
        # The app server exits once its link is gone; its file is complete then.
        deadline = time.monotonic() + 300
        while _app_total(data) is None and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.kill()
    app = _app_total(data)
    if app is None:
        raise RuntimeError(f"{tree}: no complete callgrind file of the app server")
    return app, _total(os.path.join(data, f"callgrind.out.{proc.pid}"))


def _app_total(data):
    """The app server's total (valgrind followed every child: the app server,
    and forks such as the snapshot writer), or None while it runs."""
    for name in os.listdir(data):
        if name.startswith("callgrind.out."):
            path = os.path.join(data, name)
            with open(path) as f:
                text = f.read()
            if re.search(r"^cmd:.*appserver\.py", text, re.M):
                return _total(path)
    return None


def relay_per_request(tree):
    (a1, l1), (a2, l2) = relay_instructions(tree, N1), relay_instructions(tree, N2)
    return (a2 - a1) / (N2 - N1), (l2 - l1) / (N2 - N1)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("others", nargs="*", help="other checkouts to compare with this one")
    ap.add_argument("--app", action="store_true", help="the relay path: app server + login server")
    args = ap.parse_args(argv)
    if args.app:
        base = relay_per_request(ROOT)
        print(f"{'this tree':<40} app {base[0]:>10,.0f}  login {base[1]:>10,.0f} instructions/request")
        for other in args.others:
            app, login = relay_per_request(other)
            print(f"{other:<40} app {app:>10,.0f}  login {login:>10,.0f} instructions/request"
                  f"  ({app / base[0]:.3f}, {login / base[1]:.3f} of this tree)")
        return 0
    base = per_request(ROOT)
    print(f"{'this tree':<40} {base:>10,.0f} instructions/request")
    for other in args.others:
        value = per_request(other)
        print(f"{other:<40} {value:>10,.0f} instructions/request  ({value / base:.3f} of this tree)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
