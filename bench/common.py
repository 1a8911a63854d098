"""Shared pieces of the benchmarks: processes, load generators, statistics,
tables and result files. Everything talks to 127.0.0.1 only, and every load
loop is bounded both in requests and in seconds.

The load generators are single-threaded `selectors` loops in the bench
process itself. The same generator drives the baseline and the system under
test in the same run, so its own cost is in both numbers; ratios are what we
report, never a lone absolute time (the machine has 2 cores and is shared).
"""
import json
import os
import platform
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
RESULTS = os.path.join(BENCH, "results")
PYTHON = sys.executable
HOST = "127.0.0.1"

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lib.accounts import passwords  # noqa: E402
from lib.loop.transports import raise_fd_limit  # noqa: E402
from tests.support import (Conn, LoginServer, children, free_port, login_many, stop_process,  # noqa: E402,F401
                           wait_for, wait_port)

raise_fd_limit()

# ---------------------------------------------------------------------------------------
# configuration (set by run_all.py)


class Config:
    duration = 2.0        # seconds measured per load point
    warmup = 0.4          # seconds of load before measuring
    rounds = 3            # baseline and subject alternate this many times; medians reported
    quick = False


CFG = Config()


# ---------------------------------------------------------------------------------------
# statistics

def pct(values, q):
    """The q-quantile (0..1) of `values` by the nearest-rank method; None if empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q * len(s) + 0.5)) - 1))
    return s[k]


def ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 3)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize_rounds(rounds):
    """Median over rounds of rps, p50, p99 (and CPU per request when known)."""
    out = {"rounds": len(rounds)}
    for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "errors", "requests"):
        vals = [r.get(key) for r in rounds]
        if any(v is not None for v in vals):
            out[key] = median(vals) if key not in ("errors", "requests") else sum(v or 0 for v in vals)
    out["rps_all"] = [round(r["rps"], 1) for r in rounds]
    return out


# ---------------------------------------------------------------------------------------
# processes

def cpu_seconds(pids):
    """utime + stime of these processes, in seconds (from /proc)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, IndexError, ValueError):
            pass
    return total / tick


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


class Baseline:
    """bench/echo_server.py or bench/udp_echo.py as a process."""

    def __init__(self, script):
        self.script = script
        self.proc = None
        self.port = None

    def start(self):
        self.proc = subprocess.Popen([PYTHON, os.path.join(BENCH, self.script), HOST, "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.port = int(self.proc.stdout.readline())
        return self

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc:
            stop_process(self.proc, timeout=5)
            self.proc.stdout.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


_SHARED_HASH = None


def shared_scrypt(password):
    """One real salted scrypt record, reused for many bench accounts (a valid
    record for that password; it spares minutes of hashing at set-up)."""
    global _SHARED_HASH
    if _SHARED_HASH is None or _SHARED_HASH[0] != password:
        _SHARED_HASH = (password, passwords.hash_password(password))
    return _SHARED_HASH[1]


# Benchmarks measure capacity, and every load comes from 127.0.0.1: the
# per-address limits that protect a real server against floods
# (lib/social/limits.py) would only measure refusals here. bench_hostile.py
# measures the defaults.
GENEROUS = ("--logins-per-minute", "100000000", "--signups-per-minute", "100000000",
            "--max-conns-per-address", "1000000", "--hash-per-address", "1000000",
            "--max-app-servers", "1000")


def generous_limits(tree=ROOT):
    """The flags lifting the per-address limits, for a tree that has them."""
    return list(GENEROUS) if os.path.exists(os.path.join(tree, "lib", "social", "limits.py")) else []


def server_with_users(users, *extra, hashed=False, generous=True):
    """A LoginServer whose data dir starts with `users` ({name: password})
    written in users.txt (the store takes hand-written lines as registered);
    `generous`: per-address limits lifted (see GENEROUS)."""
    server = LoginServer(*(generous_limits() if generous else []), *extra)
    with open(os.path.join(server.data, "users.txt"), "w") as f:
        for name, pw in users.items():
            f.write(f"{name} {shared_scrypt(pw) if hashed else pw}\n")
    return server


def start_quiet(server):
    """Start a LoginServer with its log at WARNING (INFO logs every app-server event)."""
    if "--log-level" not in server.extra:
        server.extra += ["--log-level", "WARNING"]
    return server.start()


def login_all(port, users, threads=8):
    """Log every user in, in parallel; {name: reply} (see tests.support.login_many)."""
    return login_many(port, users, threads)


def addr_of(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def server_pids(server):
    return [server.proc.pid] + children(server.proc.pid)


# ---------------------------------------------------------------------------------------
# load generators

def closed_loop(targets, duration=None, warmup=None, max_requests=500_000, expect=None,
                cpu_pids=()):
    """Closed-loop load: one persistent TCP connection per target
    ((host, port), request) where request is bytes, or a function of the
    connection's request number (1, 2, ...) returning bytes; each sends its request, waits for the one
    reply line, sends again. Bounded by `max_requests` and by time.

    Returns rps (replies completed inside the measuring window / its length),
    p50/p99 of requests wholly inside the window, errors (replies lacking
    `expect`, or closed connections), and the CPU seconds per request spent
    by `cpu_pids` (the servers) during the window."""
    duration = CFG.duration if duration is None else duration
    warmup = CFG.warmup if warmup is None else warmup
    sel = selectors.DefaultSelector()
    socks, reqs = [], []
    for addr, req in targets:
        s = socket.create_connection(addr, timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
        reqs.append(req)
    n = len(socks)
    sent_at = [0.0] * n
    bufs = [b""] * n
    lat = []
    errors = completed = in_window = 0
    t0 = time.perf_counter()
    t_measure, t_end = t0 + warmup, t0 + warmup + duration
    cpu0 = None
    t_last = t_measure
    seqs = [0] * n

    def request(i):
        req = reqs[i]
        seqs[i] += 1
        return req(seqs[i]) if callable(req) else req

    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
        sent_at[i] = time.perf_counter()
        s.send(request(i))
    active = n
    perf = time.perf_counter
    while active:
        now = perf()
        if cpu0 is None and now >= t_measure:
            cpu0 = cpu_seconds(cpu_pids)
        if now > t_end + 10:
            errors += active        # replies that never came
            break
        for key, _ in sel.select(0.2):
            i = key.data
            s = socks[i]
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                errors += 1
                sel.unregister(s)
                active -= 1
                continue
            buf = bufs[i] + data
            nl = buf.rfind(b"\n")
            if nl < 0:
                bufs[i] = buf
                continue
            line, bufs[i] = buf[:nl], buf[nl + 1:]
            now = perf()
            completed += 1
            if expect is not None and expect not in line:
                errors += 1
            if t_measure <= now <= t_end:
                in_window += 1
                t_last = now
                if sent_at[i] >= t_measure:
                    lat.append(now - sent_at[i])
            if now < t_end and completed < max_requests:
                sent_at[i] = now
                s.send(request(i))
            else:
                sel.unregister(s)
                active -= 1
    return _loop_result(n, socks, cpu_pids, cpu0, completed, max_requests, in_window,
                        t_last, t_end, t_measure, lat, errors)


def udp_echo_loop(port, clients, payload_for, duration=None, warmup=None, max_requests=500_000,
                  cpu_pids=()):
    """Closed loop over `clients` UDP sockets against an echo server: each
    sends its datagram and waits for it back (a lost one is resent after 1 s)."""
    duration = CFG.duration if duration is None else duration
    warmup = CFG.warmup if warmup is None else warmup
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(clients):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        s.connect((HOST, port))
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, i)
    payloads = [payload_for(i) for i in range(clients)]
    sent_at = [0.0] * clients
    lat, completed, in_window, lost = [], 0, 0, 0
    perf = time.perf_counter
    t0 = perf()
    t_measure, t_end = t0 + warmup, t0 + warmup + duration
    t_last, cpu0 = t_measure, None
    for i, s in enumerate(socks):
        sent_at[i] = perf()
        s.send(payloads[i])
    active = set(range(clients))
    next_check = t0 + 1.0
    while active:
        now = perf()
        if cpu0 is None and now >= t_measure:
            cpu0 = cpu_seconds(cpu_pids)
        if now > t_end + 5:
            break
        if now >= next_check:               # resend what was lost
            next_check = now + 0.5
            for i in list(active):
                if now - sent_at[i] > 1.0:
                    lost += 1
                    sent_at[i] = now
                    socks[i].send(payloads[i])
        for key, _ in sel.select(0.2):
            i = key.data
            try:
                socks[i].recv(65535)
            except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                continue
            now = perf()
            completed += 1
            if t_measure <= now <= t_end:
                in_window += 1
                t_last = now
                if sent_at[i] >= t_measure:
                    lat.append(now - sent_at[i])
            if now < t_end and completed < max_requests:
                sent_at[i] = now
                socks[i].send(payloads[i])
            else:
                active.discard(i)
    return _loop_result(clients, socks, cpu_pids, cpu0, completed, max_requests, in_window,
                        t_last, t_end, t_measure, lat, lost)


def _loop_result(clients, socks, cpu_pids, cpu0, completed, max_requests, in_window,
                 t_last, t_end, t_measure, lat, errors):
    """Close the loop's sockets and sum it up: rate in the measured window,
    p50/p99, errors, and the servers' CPU per request."""
    cpu1 = cpu_seconds(cpu_pids)
    for s in socks:
        s.close()
    window = max(1e-9, (t_last if completed >= max_requests else t_end) - t_measure)
    result = {"clients": clients, "requests": completed, "rps": in_window / window,
              "p50_ms": ms(pct(lat, 0.50)), "p99_ms": ms(pct(lat, 0.99)), "errors": errors}
    if cpu_pids and cpu0 is not None and in_window:
        result["cpu_us_per_req"] = round((cpu1 - cpu0) / in_window * 1e6, 1)
    return result


def alternate(pairs, rounds=None):
    """Run each named measurement `rounds` times, interleaved (A B A B ...),
    so slow phases of a noisy machine hit all of them alike. `pairs` is
    [(name, fn)]; returns {name: summarize_rounds(...)}, with every round."""
    rounds = CFG.rounds if rounds is None else rounds
    got = {name: [] for name, _ in pairs}
    for _ in range(rounds):
        for name, fn in pairs:
            got[name].append(fn())
    return {name: dict(summarize_rounds(rs), each=rs) for name, rs in got.items()}


# ---------------------------------------------------------------------------------------
# output

def machine_facts():
    mem_kib = None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nproc": os.cpu_count(),
            "memory_gib": round(mem_kib / 1024 / 1024, 1) if mem_kib else None, "cpu": cpu,
            "python": platform.python_version(), "kernel": platform.release(),
            "loadavg_at_start": os.getloadavg()}


def table(title, columns, rows):
    """Print rows (list of dicts) under `title` as an aligned text table."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[k]) for row in cells]) for k, c in enumerate(columns)]
    lines = [f"\n== {title}", "  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    print("\n".join(lines), flush=True)


def _fmt(v, none="-", no="NO"):
    """A table cell: floats to 3 significant figures, thousands separated."""
    if v is None:
        return none
    if isinstance(v, bool):
        return "yes" if v else no
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, list):
        return ", ".join(_fmt(x, none, no) for x in v)
    return str(v)


def save(name, data):
    os.makedirs(RESULTS, exist_ok=True)
    data.setdefault("date", time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)
    return path


def target(name, measured, goal, op, unit="", note="", info=False):
    """One line of the summary: measured vs goal; op is '>=' or '<'. `info`:
    a figure with no stated target (goal shown for reference, never 'missed')."""
    if measured is None or info:
        ok = None
    elif op == ">=":
        ok = measured >= goal
    else:
        ok = measured < goal
    return {"figure": name, "measured": measured, "target": "(info)" if info and not goal else
            f"{op} {goal}{unit}" + (" (info)" if info else ""), "goal": goal,
            "op": op, "unit": unit, "met": ok, "note": note,
            "ratio_to_target": (round(measured / goal, 2) if measured is not None and goal else None),
            "info": info}


def tmpdir(prefix="np-bench-"):
    return tempfile.mkdtemp(prefix=prefix)


def kill(proc):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
