#!/usr/bin/env python3
"""8. Snapshots off the loop (issue 9, item 4): the latency of a cheap request
answered by the login server's loop while snapshots of an ~80 MB state are
taken, on the tree before the change (snapshot written synchronously on the
loop) and after it, alternating rounds in one run. Target: p99 < 20 ms.

    python bench/bench_snapshot.py [--quick] [--rounds N] [--before TREE] [--after TREE]
    ./bench/run --only snapshot [--quick]

"before" is a checkout of 93d1b28 (`git worktree add --detach /tmp/np-before
93d1b28`; `--before` or $NP_BENCH_SNAPSHOT_BEFORE name another); without it
only "after" (this tree) is measured. "after" gets `--snapshot-every 8388608`
(the old constant SNAPSHOT_EVERY, so both trees do the same work) if its
server.py knows the flag.

One round, on a fresh copy of the same data directory:
- state: `snapshot.json` written directly in the store's format (10,000
  users with 8 posts of 1,000 characters each: ~80 MB of JSON) with a
  matching `users.txt` (plain-text passwords; users.txt is the authority on
  which accounts exist); the server loads it at start.
- writer: `post` of 8,000-byte lines through the app server, paced at 250/s
  over 4 connections (bench_broker.open_loop): ~2 MB/s of journal, a
  snapshot every ~4 s (every 8 MiB of journal). The same offered load for
  both trees. The posts also grow the state (~2 MB/s), so a round's last
  snapshot is larger than its first; the table gives both sizes.
- probe: a separate process (no GIL shared with the writer) sends
  `list-friend TOKEN` to the login server (answered on its loop: "Send
  list-friend to your application server"), one request at a time, paced
  at 200/s; latency counts from the scheduled send time, so a stall is
  charged to every probe it delayed, not only to the one in flight (a probe
  that waits for the previous reply would record one slow sample per stall).
  The service time (send -> reply) is kept as well.
- snapshots: counted from the server log: lines at INFO (or DEBUG) whose
  message starts with `snapshot` (`snapshot at seq N`), one per snapshot
  taken, written while the writer ran (a child still writing is waited for,
  at most 15 s); such lines at WARNING/ERROR are reported as failures. The
  sizes snapshot.json took are sampled every 0.1 s.
- memory: the login server's VmRSS after loading and its peak while writing
  (sampled every 0.1 s; VmHWM, which includes loading, is in the JSON); any
  other child of the server (a forked snapshot writer) is sampled every 0.1 s
  for its private memory (smaps_rollup: what copy-on-write cost).
- control ("after, no snapshot"; if the after tree knows the flag; skip with
  --no-control): the after tree with --snapshot-every 2**40, the same load
  and no snapshot: the latency this machine gives without any snapshot.
  "probe self-delay" is how late the probe process itself sent a probe that
  was not waiting for a reply (its own descheduling on a busy machine).
Every loop is bounded in requests and seconds; everything is on 127.0.0.1.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import (CFG, HOST, PYTHON, ROOT, alternate, children, login_all, ms, pct,  # noqa: E402
                          rss_kib, save, table, target, wait_port)

NAME = "snapshot"
SNAPSHOT_EVERY = 8 * 1024 * 1024       # journal bytes between snapshots (the old SNAPSHOT_EVERY)
BEFORE_DEFAULT = "/tmp/np-before"
USERS, POSTS_PER_USER, POST_CHARS = 10_000, 8, 1_000
POST_LINE = 8_000                      # bytes of each writer line (the client limit is 8 KiB)
WRITE_RATE, WRITERS = 250, 4           # posts/s offered, connections
PROBE_RATE = 200                       # probes/s
GOAL_MS = 20
SNAPSHOT_LINE = re.compile(rb"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+(snapshot\b[^\r\n]*)")
NEVER = 2 ** 40                        # --snapshot-every for the control: no snapshot in a round
TROUBLE_LINE = re.compile(rb"Traceback|\b(?:ERROR|CRITICAL)\b")


# ---------------------------------------------------------------------------------------
# the data directory

def build_state(path, users=USERS, posts=POSTS_PER_USER, chars=POST_CHARS):
    """Write snapshot.json (the store's format: see lib/social/snapshot.py,
    lib/social/store.py) and users.txt for `users` accounts, each with `posts` posts
    of `chars` characters, into the directory `path`. Returns its facts."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    words = ("np social snapshot journal state loop fork child post friend group "
             "latency durable commit reactor store user message").split()
    pool = []
    for k in range(997):                   # distinct texts; json.loads makes each post its own string
        text, i = [], k
        while sum(map(len, text)) + len(text) < chars:
            text.append(words[i % len(words)])
            i = i * 7 + 3
        pool.append(f"#{k} " + " ".join(text))
    pool = [t[:chars] for t in pool]
    names = [f"s{i:05d}" for i in range(users)]
    state = {"seq": users,
             "users": [{"name": n, "password": "pw", "invites": [], "accepted_by_me": [],
                        "accepted_mine": [], "joined": [],
                        "posts": [pool[(i * posts + j) % len(pool)] for j in range(posts)]}
                       for i, n in enumerate(names)],
             "groups": [], "sessions": []}
    with open(os.path.join(path, "snapshot.json"), "w", encoding="utf-8") as f:
        json.dump(state, f, ensure_ascii=False)
    with open(os.path.join(path, "users.txt"), "w", encoding="utf-8") as f:
        f.write("# np-social accounts: ID PASSWORD (plain text written by the benchmark)\n")
        f.writelines(f"{n} pw\n" for n in names + ["writer", "prober"])
    for name in ("snapshot.json", "users.txt"):
        os.chmod(os.path.join(path, name), 0o600)
    return {"users": users, "posts": users * posts,
            "snapshot_bytes": os.path.getsize(os.path.join(path, "snapshot.json"))}


def knows_snapshot_flag(tree):
    with open(os.path.join(tree, "server.py"), encoding="utf-8") as f:
        return "--snapshot-every" in f.read()


def knows_post_quotas(tree):
    """Does `tree`'s server take --max-post-length and --max-posts-per-user?"""
    path = os.path.join(tree, "lib", "social", "limits.py")
    if not os.path.exists(path):
        return False
    with open(path, encoding="utf-8") as f:
        return "max_posts_per_user" in f.read()


# ---------------------------------------------------------------------------------------
# the probe (runs as its own process: `bench_snapshot.py --probe PORT TOKEN RATE COUNT`)

def probe_main(port, token, rate, count):
    """Send `list-friend TOKEN` `count` times at `rate`/s, one in flight;
    print one JSON line: [[scheduled, sent, replied], ...] (perf_counter,
    CLOCK_MONOTONIC: comparable across processes) and bad replies."""
    s = socket.create_connection((HOST, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    line = f"list-friend {token}\n".encode()
    print("ready", flush=True)
    sys.stdin.readline()                     # "go"
    samples, bad, buf = [], [], b""
    perf = time.perf_counter
    t0 = perf() + 0.01
    deadline = t0 + count / rate + 30.0
    for k in range(count):
        sched = t0 + k / rate
        now = perf()
        if now > deadline:
            break
        if sched > now:
            time.sleep(sched - now)
        sent = perf()
        s.sendall(line)
        while b"\n" not in buf:
            data = s.recv(65536)
            if not data:
                raise ConnectionError("login server closed the probe connection")
            buf += data
        reply, _, buf = buf.partition(b"\n")
        samples.append((sched, sent, perf()))
        if b"Send list-friend" not in reply:
            bad.append(reply[:100].decode("utf-8", "replace"))
    s.close()
    print(json.dumps({"samples": samples, "bad": bad[:5], "bad_count": len(bad)}), flush=True)


def self_delays(samples):
    """How late the probe process itself sent each probe that was not held
    back by the previous reply (its own sleep overshoot or descheduling:
    CPU contention on the bench machine, not the server)."""
    out, prev = [], None
    for sched, sent, replied in samples:
        out.append(sent - max(sched, prev if prev is not None else sched))
        prev = replied
    return out


# ---------------------------------------------------------------------------------------
# one round

class Sampler(threading.Thread):
    """Every 0.1 s: the server's VmRSS, the private memory of its children
    other than `known` (app servers), and snapshot.json's size."""

    def __init__(self, pid, known, data):
        super().__init__(daemon=True)
        self.pid, self.known, self.path = pid, set(known), os.path.join(data, "snapshot.json")
        self.stop = threading.Event()
        self.rss_max = 0
        self.child_private_max = 0
        self.forked = set()
        self.sizes = []                      # distinct (mtime, size) of snapshot.json

    def run(self):
        until = time.monotonic() + 600
        while not self.stop.wait(0.1) and time.monotonic() < until:
            try:
                self.rss_max = max(self.rss_max, rss_kib(self.pid) or 0)
            except FileNotFoundError:
                return
            for c in children(self.pid):
                if c not in self.known:
                    self.forked.add(c)
                    self.child_private_max = max(self.child_private_max, private_kib(c))
            try:
                st = os.stat(self.path)
                if not self.sizes or self.sizes[-1][0] != st.st_mtime_ns:
                    self.sizes.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                pass


def private_kib(pid):
    """Private_Clean + Private_Dirty of a process (its own pages, not shared
    copy-on-write with its parent), KiB; 0 if it is gone."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        return 0
    return total


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


class SnapServer(common.LoginServer):
    """server.py of `tree` on a data directory copied from `template`;
    waits up to 120 s for the state to load."""

    def __init__(self, tree, template, *extra):
        super().__init__(*extra)
        self.tree = tree
        shutil.rmtree(self.data)
        shutil.copytree(template, self.data)
        os.chmod(self.data, 0o700)

    def start(self):
        self.log = open(self.log_path, "ab")
        cmd = [PYTHON, os.path.join(self.tree, "server.py"), HOST, str(self.port),
               "--data", self.data, "--broker", self.broker] + self.extra
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, cwd=self.tree)
        until = time.monotonic() + 120
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode} at start: "
                                   + self.read_log()[-2000:])
            try:
                wait_port(self.port, timeout=1.0)
                return self
            except TimeoutError:
                pass
        raise TimeoutError(f"{self.tree}/server.py did not load its state within 120 s")


def one_round(tree, template, seconds, snapshot_every=SNAPSHOT_EVERY):
    """Start `tree`'s server on a copy of `template`, write and probe for
    `seconds`, stop it; the round's figures. `snapshot_every` is passed as
    --snapshot-every if the tree knows the flag."""
    extra = ["--capacity", "10", "--idle-timeout", "600", "--log-level", "INFO"]
    flag = knows_snapshot_flag(tree)
    if flag:
        extra += ["--snapshot-every", str(snapshot_every)]
    if knows_post_quotas(tree):   # the same load as before the quotas: 8,000-byte posts, all kept
        extra += ["--max-post-length", str(POST_LINE), "--max-posts-per-user", str(2**31)]
    server = SnapServer(tree, template, *extra)
    probe = sampler = None
    try:
        t_start = time.monotonic()
        server.start()
        load_s = time.monotonic() - t_start
        pid = server.proc.pid
        rss_loaded = rss_kib(pid)
        replies = login_all(server.port, {"writer": "pw", "prober": "pw"}, threads=2)
        w = replies["writer"]
        app = common.addr_of(w["app_server"])
        prefix = f"post {w['token']} "
        body = "x" * (POST_LINE - len(prefix) - len("000000 \n"))
        # warm the app server path (and check it) before the clock starts
        c = common.Conn(w["app_server"])
        assert c.request(prefix + "warm-up")["status"] == 0
        c.close()
        probe = subprocess.Popen([PYTHON, os.path.abspath(__file__), "--probe", str(server.port),
                                  replies["prober"]["token"], str(PROBE_RATE), str(int(PROBE_RATE * seconds))],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        if probe.stdout.readline().strip() != b"ready":
            raise RuntimeError("the probe process did not start")
        with open(server.log_path, "rb") as f:
            log_offset = f.seek(0, os.SEEK_END)
        sampler = Sampler(pid, children(pid), server.data)
        sampler.start()
        probe.stdin.write(b"go\n")
        probe.stdin.flush()
        from bench.bench_broker import open_loop
        t0 = time.perf_counter()
        sched, replied, failed = open_loop(app, lambda j: f"{prefix}{j:06d} {body}\n".encode(),
                                           WRITE_RATE, int(WRITE_RATE * seconds), b"Success!",
                                           pool=WRITERS)
        write_s = time.perf_counter() - t0
        try:
            out, _ = probe.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            probe.kill()
            out, _ = probe.communicate()
        if probe.returncode != 0 or not out.strip():
            raise RuntimeError(f"the probe failed (exit {probe.returncode})")
        got = json.loads(out.decode().strip().splitlines()[-1])
        # a snapshot still being written by a child logs when it ends: wait for it (bounded)
        until = time.monotonic() + 15
        while set(children(pid)) - sampler.known and time.monotonic() < until:
            time.sleep(0.05)
        sampler.stop.set()
        sampler.join(5)
        with open(server.log_path, "rb") as f:
            f.seek(log_offset)
            log_tail = f.read()
        rss_end, hwm = rss_kib(pid), vm_hwm_kib(pid)
    finally:
        if probe and probe.poll() is None:
            probe.kill()
            probe.wait()
        if sampler:
            sampler.stop.set()
        server.cleanup()
    found = [(m.group(1), m.group(2).decode("utf-8", "replace")) for m in SNAPSHOT_LINE.finditer(log_tail)]
    snaps = [text for level, text in found if level in (b"DEBUG", b"INFO")]
    snap_failed = [text for level, text in found if level not in (b"DEBUG", b"INFO")]
    trouble = [ln.decode("utf-8", "replace")[:200] for ln in log_tail.splitlines() if TROUBLE_LINE.search(ln)]
    samples = got["samples"]
    lat = [r - s for s, _, r in samples]             # from the scheduled time
    svc = [r - t for _, t, r in samples]             # from the actual send
    wlat = [replied[j] - sched[j] for j in replied]
    own = self_delays(samples)
    sizes = [size for _, size in sampler.sizes]
    return {
        "tree": tree, "snapshot_flag": flag, "seconds": seconds, "load_s": round(load_s, 2),
        "probes": len(samples), "rps": len(samples) / seconds,
        "p50_ms": ms(pct(lat, .50)), "p99_ms": ms(pct(lat, .99)), "max_ms": ms(max(lat) if lat else None),
        "over_goal": sum(1 for x in lat if x * 1000 >= GOAL_MS),
        "service_p99_ms": ms(pct(svc, .99)), "service_max_ms": ms(max(svc) if svc else None),
        "probe_self_delay_p99_ms": ms(pct(own, .99)), "probe_self_delay_max_ms": ms(max(own) if own else None),
        "errors": got["bad_count"] + len(failed), "bad_probe_replies": got["bad"],
        "posts": len(replied), "posts_offered": len(sched), "post_errors": len(failed),
        "post_p99_ms": ms(pct(wlat, .99)), "write_s": round(write_s, 2),
        "journal_mib": round(len(replied) * (POST_LINE + 60) / 2**20, 1),
        "snapshots": len(snaps), "snapshot_lines": snaps[:20], "snapshot_failures": snap_failed[:10],
        "snapshot_json_mb": [round(x / 1e6, 1) for x in sizes],
        "rss_loaded_mib": round(rss_loaded / 1024, 1), "rss_end_mib": round(rss_end / 1024, 1),
        "rss_peak_mib": round(sampler.rss_max / 1024, 1),     # while writing and probing
        "rss_hwm_mib": round((hwm or 0) / 1024, 1),           # VmHWM: includes loading the state
        "forked_children": len(sampler.forked),
        "child_private_max_mib": round(sampler.child_private_max / 1024, 1),
        "log_trouble": trouble[:10],
    }


# ---------------------------------------------------------------------------------------

def trees(before=None, after=None):
    before = before or os.environ.get("NP_BENCH_SNAPSHOT_BEFORE") or BEFORE_DEFAULT
    out = {}
    if os.path.exists(os.path.join(before, "server.py")):
        out["before"] = os.path.abspath(before)
    else:
        print(f"snapshot bench: no 'before' tree at {before} (git worktree add --detach {before} 93d1b28); "
              "measuring 'after' only", flush=True)
    out["after"] = os.path.abspath(after or ROOT)
    return out


def run(before=None, after=None, seconds=None, rounds=None, control=True):
    """`control`: also measure the after tree with --snapshot-every 2**40 (the
    same load, no snapshot: what the machine gives without any), if it knows
    the flag."""
    seconds = seconds or (10.0 if CFG.quick else 16.0)
    rounds = rounds or (1 if CFG.quick else CFG.rounds)
    which = trees(before, after)
    series = [(name, tree, SNAPSHOT_EVERY) for name, tree in which.items()]
    if control and knows_snapshot_flag(which["after"]):
        series.append(("after, no snapshot", which["after"], NEVER))
    template = common.tmpdir("np-bench-snapshot-")
    try:
        t0 = time.monotonic()
        state = build_state(template)
        print(f"snapshot bench: state of {state['users']:,} users, {state['posts']:,} posts, "
              f"snapshot.json {state['snapshot_bytes'] / 1e6:.1f} MB (built in {time.monotonic() - t0:.1f} s)",
              flush=True)
        res = alternate([(name, lambda tree=tree, every=every: one_round(tree, template, seconds, every))
                         for name, tree, every in series], rounds=rounds)
    finally:
        shutil.rmtree(template, ignore_errors=True)
    rows, figures = [], []
    for name, r in res.items():
        each = r["each"]

        def med(key):
            return common.median([e.get(key) for e in each])
        sizes = each[0]["snapshot_json_mb"]
        rows.append({"tree": name, "probe p50 ms": r["p50_ms"], "probe p99 ms": r["p99_ms"],
                     "probe max ms": med("max_ms"), f"probes >= {GOAL_MS} ms": med("over_goal"),
                     "service p99 ms": med("service_p99_ms"), "service max ms": med("service_max_ms"),
                     "probe self-delay max ms": med("probe_self_delay_max_ms"),
                     "snapshots": [e["snapshots"] for e in each],
                     "posts/s": round(med("posts") / seconds, 1), "post p99 ms": med("post_p99_ms"),
                     "snapshot.json MB": f"{sizes[0]}..{sizes[-1]}" if sizes else None,
                     "RSS MiB loaded": med("rss_loaded_mib"), "RSS MiB peak": med("rss_peak_mib"),
                     "child MiB": med("child_private_max_mib"), "errors": r["errors"],
                     "rounds p99 ms": [e["p99_ms"] for e in each]})
        for e in each:
            if e["snapshots"] == 0 and not name.endswith("no snapshot"):
                print(f"snapshot bench: WARNING: no snapshot logged in a round of {name} ({e['tree']})", flush=True)
            if e["snapshot_failures"]:
                print(f"snapshot bench: {name}: snapshot failures logged: {e['snapshot_failures'][:3]}", flush=True)
            if e["log_trouble"]:
                print(f"snapshot bench: {name} server log: {e['log_trouble'][:3]}", flush=True)
    note = (f"{state['snapshot_bytes'] / 1e6:.0f} MB state, snapshot every {SNAPSHOT_EVERY >> 20} MiB of journal, "
            f"probe {PROBE_RATE}/s")
    if "before" in res:
        figures.append(target("p99 during snapshots, before (ms; synchronous snapshot)", res["before"]["p99_ms"],
                              GOAL_MS, "<", " ms", note=note, info=True))
    taken = min(e["snapshots"] for e in res["after"]["each"])
    figures.append(target("p99 < 20 ms during snapshots (ms)", res["after"]["p99_ms"], GOAL_MS, "<", " ms",
                          note=note + ("" if taken else "; NO snapshot logged: not measured")))
    if not taken:
        figures[-1]["met"] = None
    if "after, no snapshot" in res:
        figures.append(target("p99 with the same load and no snapshot (ms; control)",
                              res["after, no snapshot"]["p99_ms"], GOAL_MS, "<", " ms", note=note, info=True))
    table(f"8. login-server request latency while snapshots of a {state['snapshot_bytes'] / 1e6:.0f} MB state "
          f"are taken (probe {PROBE_RATE}/s, posts {WRITE_RATE}/s x {POST_LINE} B, {seconds:.0f} s a round; "
          f"medians of {rounds} alternating rounds)",
          ["tree", "probe p50 ms", "probe p99 ms", "probe max ms", f"probes >= {GOAL_MS} ms", "service p99 ms",
           "service max ms", "probe self-delay max ms", "snapshots", "posts/s", "post p99 ms", "snapshot.json MB",
           "RSS MiB loaded", "RSS MiB peak", "child MiB", "errors", "rounds p99 ms"], rows)
    data = {"trees": which, "state": state, "seconds_per_round": seconds, "rounds": rounds,
            "write_rate": WRITE_RATE, "post_line": POST_LINE, "probe_rate": PROBE_RATE,
            "snapshot_every": SNAPSHOT_EVERY, "rows": rows, "results": res, "figures": figures}
    save(NAME, data)
    return data


def main(argv):
    if argv[:1] == ["--probe"]:
        port, token, rate, count = argv[1:5]
        probe_main(int(port), token, float(rate), int(count))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 10 s per tree")
    ap.add_argument("--rounds", type=int, help="alternating rounds (default 3, --quick 1)")
    ap.add_argument("--seconds", type=float, help="seconds of load per round (default 16, --quick 10)")
    ap.add_argument("--before", help=f"tree before the change (default $NP_BENCH_SNAPSHOT_BEFORE or {BEFORE_DEFAULT})")
    ap.add_argument("--after", help="tree after the change (default: this tree)")
    ap.add_argument("--no-control", action="store_true",
                    help="skip the control series (after tree, same load, no snapshot)")
    args = ap.parse_args(argv)
    if args.quick:
        CFG.quick, CFG.rounds = True, 1
    if args.rounds:
        CFG.rounds = args.rounds
    t0 = time.monotonic()
    data = run(args.before, args.after, args.seconds, CFG.rounds, control=not args.no_control)
    common.table("snapshot: figures against their targets", ["figure", "measured", "target", "met", "note"],
                 data["figures"])
    print(f"({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
