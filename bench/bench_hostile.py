"""9. Hostile clients (issue 11): a legitimate client's latency with and
without an attack, against each target. Attackers come from 127.0.0.2, the
legitimate client from 127.0.0.1 (both loopback), so per-address fairness
is what is measured. Each attack runs in a process of its own (this file
with --attack), so its load does not share the measuring process's GIL.

  logins     150 connections flood wrong logins and sign-ups; target: a
             legitimate first login (a real scrypt check) answers in < 1 s
             (median of the logins measured during the flood)
  idle       3,000 idle connections, the server started with a soft limit of
             1,024 descriptors; target: another address registers and logs
             in within 2 s
  pipeline   8 connections pipeline 400 KB of junk each and never read;
             target: another client's request answers in < 0.5 s (worst of 10)

Every loop is bounded in count and time; everything is on 127.0.0.0/8.
"""
import argparse
import os
import resource
import selectors
import socket
import subprocess
import sys
import time

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (CFG, PYTHON, LoginServer, ms, pct, save, server_with_users, table,  # noqa: E402
                          target, wait_port)

NAME = "hostile"
ATTACKER, LEGIT = "127.0.0.2", "127.0.0.1"
SERVER_HOST = "127.0.0.1"


def connect_from(source, port, timeout=30.0):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect((SERVER_HOST, port))
    return sock


def ask(sock, line):
    """One request, one reply line; the reply (bytes)."""
    sock.sendall(line.encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return data


def timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


# -- the attacks (each runs in its own process: `bench_hostile.py --attack KIND ...`) ----
def attack_logins(port, conns, seconds):
    """`conns` connections each send wrong logins and sign-ups back to back."""
    sel = selectors.DefaultSelector()
    until = time.monotonic() + seconds
    sent = 0
    for i in range(conns):
        try:
            sock = connect_from(ATTACKER, port, timeout=5)
        except OSError:
            continue
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, [i, 0, b""])
        sock.send(b"login nosuch%d wrong\n" % i)
    while time.monotonic() < until and sent < 2_000_000:
        for key, _ in sel.select(0.1):
            state = key.data
            try:
                data = key.fileobj.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                continue
            state[2] += data
            while b"\n" in state[2]:
                _, state[2] = state[2].split(b"\n", 1)
                state[1] += 1
                sent += 1
                line = (b"register flood%d_%d pw\n" if state[1] % 2 else b"login nosuch%d_%d wrong\n") \
                    % (state[0], state[1])
                try:
                    key.fileobj.send(line)
                except OSError:
                    pass
    print(sent, flush=True)


def attack_idle(port, conns, seconds):
    """Open `conns` connections and say nothing; hold them for `seconds`."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (conns + 64, max(conns + 64, resource.getrlimit(
        resource.RLIMIT_NOFILE)[1])))
    socks, until = [], time.monotonic() + seconds
    for _ in range(conns):
        if time.monotonic() > until:
            break
        try:
            socks.append(connect_from(ATTACKER, port, timeout=2))
        except OSError:
            pass
    print(len(socks), flush=True)
    time.sleep(max(0.0, until - time.monotonic()))


def attack_pipeline(port, conns, seconds, size=400_000):
    """`conns` connections each send `size` bytes of junk lines and never read."""
    socks = []
    for _ in range(conns):
        sock = connect_from(ATTACKER, port)
        sock.setblocking(False)
        socks.append([sock, b"x\n" * (size // 2)])
    until = time.monotonic() + seconds
    while time.monotonic() < until and any(rest for _, rest in socks):
        for entry in socks:
            if entry[1]:
                try:
                    entry[1] = entry[1][entry[0].send(entry[1]):]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    entry[1] = b""
        time.sleep(0.005)
    print(sum(size - len(rest) for _, rest in socks), flush=True)
    time.sleep(max(0.0, until - time.monotonic()))


ATTACKS = {"logins": attack_logins, "idle": attack_idle, "pipeline": attack_pipeline}


def start_attack(kind, port, conns, seconds):
    return subprocess.Popen([PYTHON, os.path.abspath(__file__), "--attack", kind, str(port), str(conns),
                             str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def end_attack(proc):
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    try:
        return int(out.split()[-1])
    except (ValueError, IndexError):
        return None


# -- the legitimate client's measurements ---------------------------------------------------
def legit_first_logins(port, names):
    """Each a first login on a fresh connection (so a real scrypt check); seconds each."""
    times = []
    for name in names:
        with connect_from(LEGIT, port) as sock:
            times.append(timed(ask, sock, f"login {name} pw"))
    return times


def legit_register_and_login(port, name):
    with connect_from(LEGIT, port) as sock:
        return timed(lambda: (ask(sock, f"register {name} pw"), ask(sock, f"login {name} pw")))


def legit_requests(port, count):
    with connect_from(LEGIT, port) as sock:
        return [timed(ask, sock, "list-invite") for _ in range(count)]


class LimitedServer(LoginServer):
    """A login server started with a soft descriptor limit of `soft`."""

    def __init__(self, *extra, soft=1024):
        super().__init__(*extra)
        self.soft = soft

    def start(self):
        soft = self.soft

        def limit():
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))
        self.log = open(self.log_path, "ab")
        cmd = [PYTHON, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "server.py"), SERVER_HOST, str(self.port), "--data", self.data,
               "--broker", self.broker] + self.extra
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, preexec_fn=limit)
        wait_port(self.port)
        return self


# -- the scenarios ---------------------------------------------------------------------------
def scenario_logins(rows, figures, rates=()):
    """`rates`: extra flags; none = the defaults, whose rate limits refuse
    most of a flood early; raised rate limits let it reach the scheduler of
    password checks, whose fairness is then what is measured."""
    n = 4 if CFG.quick else 8
    users = {f"legit{i}": "pw" for i in range(2 * n)} | {"warm": "pw"}
    server = server_with_users(users, "--capacity", "100", "--log-level", "WARNING", *rates, hashed=True,
                               generous=False)
    seconds = 10 if CFG.quick else 20
    try:
        server.start()
        legit_first_logins(server.port, ["warm"])          # the app server is up before we time
        quiet = legit_first_logins(server.port, [f"legit{i}" for i in range(n)])
        attack = start_attack("logins", server.port, 150, seconds)
        time.sleep(2)                                       # the flood is on
        loud = legit_first_logins(server.port, [f"legit{i}" for i in range(n, 2 * n)])
        flood = end_attack(attack)
    finally:
        server.cleanup()
    limits = "raised rate limits" if rates else "default limits"
    rows.append({"attack": f"150 connections: wrong logins + sign-ups ({limits})", "legit request": "first login",
                 "without p50 ms": ms(pct(quiet, .5)), "with p50 ms": ms(pct(loud, .5)),
                 "with max ms": ms(max(loud)), "attack requests": flood})
    figures.append(target(f"hostile: legit first login during a 150-connection login flood ({limits}), "
                          "median (s)", round(pct(loud, .5), 3), 1.0, "<", " s"))


def scenario_scheduler(rows, figures):
    scenario_logins(rows, figures, rates=("--logins-per-minute", "1000000", "--signups-per-minute", "1000000"))


def scenario_idle(rows, figures):
    server = LimitedServer("--log-level", "WARNING", soft=1024)
    try:
        server.start()
        quiet = legit_register_and_login(server.port, "calm")
        attack = start_attack("idle", server.port, 3000, 30 if not CFG.quick else 15)
        time.sleep(5 if not CFG.quick else 3)               # let the connections pile up
        try:
            loud = legit_register_and_login(server.port, "busy")
        except OSError:
            loud = None
        opened = end_attack(attack)
    finally:
        server.cleanup()
    rows.append({"attack": "3,000 idle connections, soft limit 1,024", "legit request": "register + login",
                 "without p50 ms": ms(quiet), "with p50 ms": ms(loud) if loud is not None else "failed",
                 "with max ms": ms(loud) if loud is not None else "failed", "attack requests": opened})
    figures.append(target("hostile: register + login beside 3,000 idle connections (s)",
                          round(loud, 3) if loud is not None else None, 2.0, "<", " s"))


def scenario_pipeline(rows, figures):
    server = LoginServer("--log-level", "WARNING")
    try:
        server.start()
        quiet = legit_requests(server.port, 10)
        attack = start_attack("pipeline", server.port, 8, 20 if not CFG.quick else 10)
        time.sleep(1.0)                                      # the junk is flowing
        loud = legit_requests(server.port, 10)
        pushed = end_attack(attack)
    finally:
        server.cleanup()
    rows.append({"attack": "8 connections pipelining 400 KB, never reading", "legit request": "one request",
                 "without p50 ms": ms(pct(quiet, .5)), "with p50 ms": ms(pct(loud, .5)),
                 "with max ms": ms(max(loud)), "attack requests": pushed})
    figures.append(target("hostile: a request beside 8 pipelining connections, worst of 10 (s)",
                          round(max(loud), 3), 0.5, "<", " s"))


SCENARIOS = {"logins": scenario_logins, "scheduler": scenario_scheduler, "idle": scenario_idle,
             "pipeline": scenario_pipeline}


def run(only=None):
    rows, figures = [], []
    for name, scenario in SCENARIOS.items():
        if only and name not in only:
            continue
        try:
            scenario(rows, figures)
        except Exception as e:   # one failing scenario must not hide the others
            figures.append({"figure": f"hostile {name}: scenario failed: {e!r}", "met": None})
    table("9. hostile clients (attackers on 127.0.0.2, the legitimate client on 127.0.0.1)",
          ["attack", "legit request", "without p50 ms", "with p50 ms", "with max ms", "attack requests"], rows)
    data = {"rows": rows, "figures": figures}
    save(NAME, data)
    return data


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attack", nargs=4, metavar=("KIND", "PORT", "CONNS", "SECONDS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--only", default="", help="comma-separated subset of " + ",".join(SCENARIOS))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.attack:
        kind, port, conns, seconds = args.attack
        ATTACKS[kind](int(port), int(conns), float(seconds))
        return 0
    CFG.quick = args.quick
    data = run({n for n in args.only.split(",") if n})
    table("hostile: figures against their targets", ["figure", "measured", "target", "met"], data["figures"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
