#!/usr/bin/env python3
"""Chat before and after issue 12: `send` -> printed by the recipient's
./client, and `send-group` -> printed by all 50 members' clients.

    python bench/bench_chat.py [--rounds 3] [--duration 3] [--before TREE]

BEFORE is the tree at 349fc46 (each client subscribes to ActiveMQ itself, on
the queue and broker its login reply names); AFTER is this tree (the app
servers subscribe and push `{"push":"message",...}` lines on the client's
app-server connection). Both run in one process tree at once and are measured
in alternating rounds (B A B A ...), each against a private ActiveMQ of its
own (tests/broker_instance.py; BEFORE's allows anonymous logins, which its
servers and clients need, AFTER's requires the login as deployed).

"Printed" is literal: every receiver is a real ./client of its tree (the
recipient `rx`; the 50 group members g0..g49, 10 per app server on 5 app
servers), run by one stamper process (`bench_chat.py stamp`) that timestamps
each stdout line with CLOCK_MONOTONIC. Each message's text carries its
scheduled send time from the same clock, so latency = printed - scheduled
(open loop: a stall counts against every message it holds back).

Loads: `send` at 100, 500 and 1,000 msg/s from 20 sender users, one
connection each (one request in flight per connection), all friends of `rx`;
`send-group` at 20 msg/s from g0 to the 50-member group (time to the LAST
member's line). CPU per message (utime + stime from /proc, net of each
part's idle rate) of the login server, the app servers, the broker's JVM and
the receiving clients; the harness's own CPU and what other processes used
meanwhile (the machine is shared) are reported beside it.
Target: send -> printed p99 < 20 ms at 1,000 msg/s. Every wait is bounded
(SEND_SLACK, PRINT_WAIT, READY_WAIT); about 5 minutes for 5 rounds.
"""
import argparse
import collections
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(BENCH) not in sys.path:
    sys.path.insert(0, os.path.dirname(BENCH))

from bench import common  # noqa: E402
from bench.common import CFG, Conn, addr_of, children, cpu_seconds, ms, pct, table, target  # noqa: E402

NAME = "chat"
BEFORE_COMMIT = "349fc46"
SENDERS = 20              # sender users, one connection each
MEMBERS = 50              # group members, 10 per app server (the login server's default capacity)
PER_SERVER = 10
RATES = (100, 500, 1000)  # send, msg/s (500: where the knee is on 2 cores; no target)
GROUP_RATE = 20           # send-group, msg/s
PRINT_WAIT = 15.0         # s after the last send for the lines still on their way
SEND_SLACK = 15.0         # s after the last scheduled send before the sender gives up
READY_WAIT = 60.0         # s for every receiver to print a marker
WARMUP, WARMUP_QUICK = 4.0, 1.0   # s of each load per tree before the rounds (the JVMs' JIT)
PASSWORD = "pw"
GROUP = "benchclub"
CHAT_RE = re.compile(rb": (k\d+)\.(\d+)\.(\d+)>>>$")


# ---------------------------------------------------------------------------------------
# the brokers

def broker_classes():
    """TestBroker (login required, as deployed) and a variant that also takes
    anonymous logins: the BEFORE tree has no credentials to give."""
    from tests.broker_instance import TestBroker

    class AnonymousBroker(TestBroker):
        def render(self):
            super().render()
            path = os.path.join(self.conf, "activemq.xml")
            with open(path) as f:
                xml = f.read()
            cut = re.sub(r"\s*<plugins>.*?</plugins>", "", xml, count=1, flags=re.S)
            if cut == xml:
                raise RuntimeError(f"no <plugins> block to remove in {path}")
            with open(path, "w") as f:
                f.write(cut)

    return TestBroker, AnonymousBroker


# ---------------------------------------------------------------------------------------
# the trees

def before_tree(given=None):
    """A checkout of 349fc46: `given`, $NP_BENCH_CHAT_BEFORE, /tmp/np-before when
    it is that commit, else one extracted with `git archive` (no worktree or
    index of this repository is touched)."""
    for path in (given, os.environ.get("NP_BENCH_CHAT_BEFORE")):
        if path:
            return os.path.abspath(path)
    want = subprocess.run(["git", "-C", common.ROOT, "rev-parse", BEFORE_COMMIT], capture_output=True,
                          text=True, check=True).stdout.strip()
    have = subprocess.run(["git", "-C", "/tmp/np-before", "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    if have == want:
        return "/tmp/np-before"
    path = f"/tmp/np-chat-before-{BEFORE_COMMIT}"
    if not os.path.exists(os.path.join(path, "server.py")):
        os.makedirs(path, exist_ok=True)
        archive = subprocess.Popen(["git", "-C", common.ROOT, "archive", BEFORE_COMMIT],
                                   stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", path], stdin=archive.stdout, check=True)
        archive.wait()
    return path


class Tree:
    """One tree's login server (its app servers are its children), broker and receivers."""

    def __init__(self, label, root, broker, env):
        self.label, self.root, self.broker, self.env = label, root, broker, env
        self.server = None
        self.stamper = None
        self.replies = {}
        self.out_path = None
        self.offset = 0           # of printed.txt, read so far

    def start(self, users):
        self.server = common.LoginServer(*common.generous_limits(self.root), "--idle-timeout", "3600",
                                         "--log-level", "WARNING", broker=self.broker.address)
        with open(os.path.join(self.server.data, "users.txt"), "w") as f:
            f.writelines(f"{u} {PASSWORD}\n" for u in users)
        log = open(self.server.log_path, "ab")
        self.server.log = log
        self.server.proc = subprocess.Popen(
            [common.PYTHON, os.path.join(self.root, "server.py"), "127.0.0.1", str(self.server.port),
             "--data", self.server.data, "--broker", self.broker.address] + self.server.extra,
            stdout=log, stderr=log, cwd=self.root, env=self.env)
        try:
            common.wait_port(self.server.port, timeout=60)
        except TimeoutError as e:
            raise RuntimeError(f"{self.label}: {e}; its log:\n{self.server.read_log()[-2000:]}") from None

    def login(self, names):
        self.replies.update(common.login_all(self.server.port, {n: PASSWORD for n in names}))

    def request(self, user, line):
        """One token command through the user's app server."""
        reply = self.replies[user]
        c = Conn(reply["app_server"])
        try:
            c.send_raw(f"{line.split(' ', 1)[0]} {reply['token']} {line.split(' ', 1)[1]}\n".encode())
            while True:                     # a push line may come first (AFTER)
                got = c.read_reply()
                if "push" not in got:
                    return got
        finally:
            c.close()

    def start_receivers(self, users):
        """One ./client of this tree per user, all under one stamper process."""
        self.receivers = list(users)
        self.out_path = os.path.join(self.server.data, "printed.txt")
        self.stamper = subprocess.Popen(
            [common.PYTHON, os.path.abspath(__file__), "stamp", self.out_path, self.root,
             str(self.server.port), *self.receivers], stdin=subprocess.DEVNULL, cwd=self.root,
            env=self.env)

    def read_printed(self):
        """New stamped lines of the receivers' stdout."""
        try:
            with open(self.out_path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        new = []
        for raw in data[:end].splitlines():
            ns, idx, line = raw.split(b" ", 2)
            new.append((int(ns), int(idx), line))
        return new

    def pids(self):
        """The processes whose CPU is counted, by part."""
        login = self.server.proc.pid
        return {"login": [login], "app": children(login), "broker": [self.broker.proc.pid],
                "clients": children(self.stamper.pid) if self.stamper else []}

    def stop(self):
        if self.stamper:
            common.stop_process(self.stamper, timeout=10)
        if self.server:
            self.server.cleanup()


# ---------------------------------------------------------------------------------------
# the sender: open loop over several connections

def open_loop(senders, rate, count, make_line, deadline_slack=SEND_SLACK):
    """Offer `count` requests at `rate`/s, message j at t0 + j/rate (monotonic),
    over one connection per sender ((address, token)); a message waits for an
    idle connection (one request in flight each). Push lines on the senders'
    connections (AFTER binds them to their users) are skipped. Returns
    ({j: scheduled ns}, {j: reply s after schedule}, [failed j])."""
    sel = selectors.DefaultSelector()
    socks, tokens = [], []
    for i, (address, token) in enumerate(senders):
        s = socket.create_connection(addr_of(address), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        socks.append(s)
        tokens.append(token)
    idle, backlog = collections.deque(range(len(socks))), collections.deque()
    inflight, bufs = {}, [b""] * len(socks)
    sched, replied, failed = {}, {}, []
    t0 = time.monotonic_ns() + 50_000_000
    step = 1e9 / rate
    k = 0
    deadline = t0 / 1e9 + count / rate + deadline_slack
    try:
        while len(replied) + len(failed) < count and time.monotonic() < deadline:
            now = time.monotonic_ns()
            while k < count and t0 + k * step <= now:
                sched[k] = int(t0 + k * step)
                backlog.append(k)
                k += 1
            while backlog and idle:
                j, i = backlog.popleft(), idle.popleft()
                inflight[i] = j
                socks[i].send(make_line(j, tokens[i], sched[j]))
            wait = max(0.0, (t0 + k * step - time.monotonic_ns()) / 1e9) if k < count else 0.2
            for key, _ in sel.select(min(wait, 0.2)):
                i = key.data
                data = socks[i].recv(65536)
                if not data:
                    raise ConnectionError("an app server closed a sender connection")
                bufs[i] += data
                while b"\n" in bufs[i]:
                    line, _, bufs[i] = bufs[i].partition(b"\n")
                    if line.startswith(b'{"push"'):
                        continue
                    j = inflight.pop(i)
                    replied[j] = (time.monotonic_ns() - sched[j]) / 1e9
                    if b"Success!" not in line:
                        failed.append(j)
                    idle.append(i)
    finally:
        for s in socks:
            s.close()
    return sched, replied, failed


# ---------------------------------------------------------------------------------------
# one load point on one tree

class Load:
    """A load: who sends, at what rate, and how many printed lines each message makes."""

    def __init__(self, name, rate, command, senders, copies):
        self.name, self.rate, self.command, self.senders, self.copies = name, rate, command, senders, copies


def measure(tree, load, count, tag, print_wait=PRINT_WAIT, idle=None):
    """Send `count` messages of `load` on `tree`; wait (up to `print_wait` s)
    for their printed lines. Returns a dict of the round's figures; `idle`:
    the parts' idle CPU rates (idle_rates()), taken off their CPU."""
    senders = [(tree.replies[u]["app_server"], tree.replies[u]["token"]) for u in load.senders]
    tree.read_printed()                       # skip what came before
    parts = tree.pids()
    harness = [os.getpid(), tree.stamper.pid] if tree.stamper else [os.getpid()]
    cpu0 = {part: cpu_seconds(p) for part, p in parts.items()}
    each0 = {(part, pid): cpu_seconds([pid]) for part, p in parts.items() for pid in p}
    busy0, ours0, t_start = machine_busy(), cpu_seconds(harness), time.monotonic()
    command = load.command
    sched, replied, failed = open_loop(
        senders, load.rate, count,
        lambda j, token, at: f"{command.format(token=token)} {tag}.{j}.{at}\n".encode())
    answered = set(replied) - set(failed)
    want = len(answered) * load.copies
    printed = collections.defaultdict(list)   # j -> [latency ns of each copy]
    last_ns = 0
    seen = set()
    dups = 0
    until = time.monotonic() + print_wait
    got = 0
    while True:
        for ns, idx, line in tree.read_printed():
            m = CHAT_RE.search(line)
            if not m or m.group(1).decode() != tag:
                continue
            j = int(m.group(2))
            if (j, idx) in seen:
                dups += 1
                continue
            seen.add((j, idx))
            printed[j].append(ns - int(m.group(3)))
            last_ns = max(last_ns, ns)
            got += 1
        if got >= want or time.monotonic() > until:
            break
        time.sleep(0.02)
    cpu1 = {part: cpu_seconds(p) for part, p in parts.items()}
    elapsed, busy1, ours1 = time.monotonic() - t_start, machine_busy(), cpu_seconds(harness)
    # the busiest single process: a Python server near 100% of a core is a
    # bottleneck of its own, whatever the machine has left
    hot_s, hot_part = max(((cpu_seconds([pid]) - c, part) for (part, pid), c in each0.items()),
                          default=(0.0, None))
    each = [d / 1e9 for ds in printed.values() for d in ds]
    last = [max(ds) / 1e9 for j, ds in printed.items() if len(ds) == load.copies]
    reply = list(replied.values())
    row = {"messages": count, "answered": len(answered), "failed": len(failed),
           "printed": got, "lost": sum(load.copies - len(printed.get(j, ())) for j in answered),
           "duplicates": dups,
           "reply_p50_ms": ms(pct(reply, .5)), "reply_p99_ms": ms(pct(reply, .99)),
           "p50_ms": ms(pct(each, .5)), "p99_ms": ms(pct(each, .99)), "max_ms": ms(max(each, default=None)),
           "rps": len(replied) / (count / load.rate),
           # messages fully printed per second, first scheduled send to last line:
           # the offered rate while the path keeps up, its capacity once it does not
           "printed_per_s": round(len(last) / max(1e-9, (last_ns - min(sched.values())) / 1e9), 1)
           if last else None}
    if load.copies > 1:
        row.update({"last_p50_ms": ms(pct(last, .5)), "last_p99_ms": ms(pct(last, .99))})
    # CPU per message, net of what the part burns idle (heartbeats, JVM
    # threads, timers): its idle rate, measured in the same round, times the
    # time the load took.
    for part in parts:
        used = cpu1[part] - cpu0[part] - (idle or {}).get(part, 0.0) * elapsed
        row[f"cpu_{part}_us"] = round(used / count * 1e6, 1)
    row["cpu_total_us"] = round(sum(row[f"cpu_{p}_us"] for p in parts), 1)
    row["machine_busy"] = round((busy1[0] - busy0[0]) / max(1e-9, busy1[1] - busy0[1]), 3)
    row["steal"] = round((busy1[2] - busy0[2]) / max(1e-9, busy1[1] - busy0[1]), 3)
    # cores used meanwhile by processes that are neither this tree nor the
    # harness (the other tree idling, other users of the machine)
    ours = sum(cpu1.values()) - sum(cpu0.values()) + ours1 - ours0
    row["others_cores"] = round(max(0.0, busy1[0] - busy0[0] - ours) / elapsed, 2)
    row["harness_us"] = round((ours1 - ours0) / count * 1e6, 1)
    row["hottest_pct"], row["hottest"] = round(hot_s / elapsed * 100), hot_part
    return row


def idle_rates(tree, seconds=1.0):
    """CPU seconds per second each part uses with no load."""
    parts = tree.pids()
    cpu0, t0 = {part: cpu_seconds(p) for part, p in parts.items()}, time.monotonic()
    time.sleep(seconds)
    cpu1, dt = {part: cpu_seconds(p) for part, p in parts.items()}, time.monotonic() - t0
    return {part: (cpu1[part] - cpu0[part]) / dt for part in parts}


def machine_busy():
    """(busy, total, stolen) CPU seconds of the whole machine since boot,
    from /proc/stat: what was in use while a load ran, ours and everyone
    else's, and what the hypervisor gave to other guests."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]   # user .. steal (guests are in user)
    idle, steal = fields[3] + fields[4], fields[7]          # idle + iowait; the hypervisor's
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle - steal) / tick, sum(fields) / tick, steal / tick


# ---------------------------------------------------------------------------------------
# set-up

def names():
    members = [f"g{i}" for i in range(MEMBERS)]
    senders = [f"s{i}" for i in range(SENDERS)]
    return members, senders


def set_up(tree):
    """Accounts, logins (the 50 members first: 10 per app server on 5), friendships, the group."""
    members, senders = names()
    tree.start(members + ["rx"] + senders)
    tree.login(members)
    spread = collections.Counter(tree.replies[m]["app_server"] for m in members)
    if sorted(spread.values()) != [PER_SERVER] * (MEMBERS // PER_SERVER):
        raise RuntimeError(f"{tree.label}: members not 10 per app server: {dict(spread)}")
    tree.login(["rx"] + senders)
    for s in senders:
        ok = tree.request(s, "invite rx")
        assert ok["status"] == 0, ok
        ok = tree.request("rx", f"accept-invite {s}")
        assert ok["status"] == 0, ok
    ok = tree.request(members[0], f"create-group {GROUP}")
    assert ok["status"] == 0, ok
    for m in members[1:]:
        ok = tree.request(m, f"join-group {GROUP}")
        assert ok["status"] == 0, ok
    tree.start_receivers(["rx"] + members)
    return spread


def wait_ready(tree):
    """Markers until every receiver printed one (its login done, its
    subscription or listen in place): a condition, not a sleep."""
    members, senders = names()
    chat = Load("ready", 50, "send {token} rx", [senders[0]], 1)
    group = Load("ready", 50, f"send-group {{token}} {GROUP}", [members[0]], MEMBERS)
    until = time.monotonic() + READY_WAIT
    k = 0
    while time.monotonic() < until:
        k += 1
        a = measure(tree, chat, 1, f"k{90000 + k}", print_wait=2.0)
        b = measure(tree, group, 1, f"k{95000 + k}", print_wait=2.0)
        if a["printed"] == 1 and b["printed"] == MEMBERS:
            return
    raise RuntimeError(f"{tree.label}: receivers not all printing after {READY_WAIT:g} s "
                       f"(last: rx {a['printed']}/1, group {b['printed']}/{MEMBERS})")


def loads():
    members, senders = names()
    out = [Load(f"send at {r}/s", r, "send {token} rx", senders, 1) for r in RATES]
    # One connection for the group's sender: AFTER pushes g0's own copy on it too.
    out.append(Load(f"send-group x{MEMBERS} at {GROUP_RATE}/s", GROUP_RATE,
                    f"send-group {{token}} {GROUP}", [members[0]], MEMBERS))
    return out


# ---------------------------------------------------------------------------------------

def run(before=None, duration=None):
    TestBroker, AnonymousBroker = broker_classes()
    duration = duration or (1.5 if CFG.quick else 3.0)
    warmup = WARMUP_QUICK if CFG.quick else WARMUP
    facts = common.machine_facts()          # the load average at the start among them
    brokers, trees = [], []
    env = {k: v for k, v in os.environ.items() if k not in ("NP_BROKER_USER", "NP_BROKER_PASSWORD")}
    rows, figures = [], []
    try:
        b_broker, a_broker = AnonymousBroker(), TestBroker()
        brokers += [b_broker, a_broker]
        for b in brokers:
            b.start(wait=False)
        for b in brokers:
            b.wait_ready()
        trees = [Tree("before", before_tree(before), b_broker, env),
                 Tree("after", common.ROOT, a_broker, dict(env, **a_broker.env()))]
        print(f"chat: before = {trees[0].root}, after = {trees[1].root}", flush=True)
        for t in trees:
            spread = set_up(t)
            print(f"chat: {t.label}: members on {len(spread)} app servers, "
                  f"{sorted(spread.values())}", flush=True)
        for t in trees:
            wait_ready(t)
        tags = iter(range(1, 1_000_000))
        for t in trees:      # warm-up: the JVM compiles its hot paths, caches fill
            for load in loads():
                measure(t, load, int(load.rate * warmup), f"k{next(tags)}")
        results = {(load.name, t.label): [] for load in loads() for t in trees}
        for _ in range(CFG.rounds):
            idle = {t.label: idle_rates(t) for t in trees}
            for load in loads():
                for t in trees:               # B A, B A, ...: the machine's noise hits both
                    r = measure(t, load, int(load.rate * duration), f"k{next(tags)}", idle=idle[t.label])
                    r.update({f"idle_{part}_pct": round(v * 100, 1) for part, v in idle[t.label].items()})
                    results[(load.name, t.label)].append(r)
        for load in loads():
            for t in trees:
                each = results[(load.name, t.label)]
                row = {"load": load.name, "tree": t.label, "rounds": len(each)}
                for key in each[0]:
                    vals = [r[key] for r in each if r.get(key) is not None]
                    if key in ("messages", "answered", "failed", "printed", "lost", "duplicates"):
                        row[key] = sum(vals)
                    elif key == "hottest":
                        row[key] = collections.Counter(vals).most_common(1)[0][0] if vals else None
                    else:
                        row[key] = common.median(vals)
                row["rounds_p99_ms"] = [r["p99_ms"] for r in each]
                if load.copies > 1:
                    row["rounds_last_p99_ms"] = [r["last_p99_ms"] for r in each]
                row["each"] = each
                rows.append(row)
    finally:
        for t in trees:
            t.stop()
        for b in brokers:
            b.close()
    by = {(r["load"], r["tree"]): r for r in rows}
    for r in rows:
        base = by[(r["load"], "before")]
        r["cpu_total_after_over_before"] = (round(r["cpu_total_us"] / base["cpu_total_us"], 2)
                                            if base.get("cpu_total_us") else None)
    table("chat: send -> printed by the recipient's ./client; send-group -> printed by all 50 members "
          f"(medians of {CFG.rounds} alternating rounds)",
          ["load", "tree", "messages", "answered", "printed", "lost", "duplicates", "p50_ms", "p99_ms",
           "last_p50_ms", "last_p99_ms", "reply_p99_ms", "printed_per_s", "rounds_p99_ms",
           "rounds_last_p99_ms"], rows)
    table("chat: CPU per message (µs, utime + stime from /proc, net of idle; median of rounds), "
          "and the machine's busy share during the load",
          ["load", "tree", "cpu_login_us", "cpu_app_us", "cpu_broker_us", "cpu_clients_us", "cpu_total_us",
           "cpu_total_after_over_before", "harness_us", "hottest", "hottest_pct", "machine_busy", "steal", "others_cores"], rows)
    table("chat: idle CPU of each part (% of one core, median of rounds)",
          ["tree", "idle_login_pct", "idle_app_pct", "idle_broker_pct", "idle_clients_pct"],
          [r for r in rows if r["load"] == rows[0]["load"]])
    after_1000 = by[(f"send at {RATES[-1]}/s", "after")]
    figures.append(target("chat (issue 12): send -> printed p99 at 1,000 msg/s, after (ms)",
                          after_1000["p99_ms"], 20, "<", " ms"))
    figures.append(target("chat (issue 12): send -> printed p99 at 1,000 msg/s, before (ms)",
                          by[(f"send at {RATES[-1]}/s", "before")]["p99_ms"], 20, "<", " ms", info=True))
    figures.append(target("chat (issue 12): send-group x50, last member p99, after (ms)",
                          by[(loads()[-1].name, "after")].get("last_p99_ms"), 20, "<", " ms", info=True))
    figures.append(target("chat (issue 12): printed messages lost, after", sum(
        r["lost"] for r in rows if r["tree"] == "after"), 1, "<"))
    data = {"rows": rows, "figures": figures, "trees": {t.label: t.root for t in trees},
            "machine": facts, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "config": {"rounds": CFG.rounds, "duration": duration, "senders": SENDERS, "members": MEMBERS,
                       "rates": RATES, "group_rate": GROUP_RATE}}
    common.save(NAME, data)
    return data


# ---------------------------------------------------------------------------------------
# the stamper: a separate process, so reading 1,000 lines/s never competes with the sender

def stamp(out_path, tree, port, users):
    """Run one ./client of `tree` per user (typing `login USER pw`), and append
    each line they print to `out_path` as `MONOTONIC_NS CLIENT_INDEX LINE`.
    Ends at SIGTERM: end of input for the clients, then SIGKILL."""
    from lib.loop.process import die_with_parent
    die_with_parent(signal.SIGTERM)
    procs, fds = [], {}
    for i, user in enumerate(users):
        p = subprocess.Popen([sys.executable, os.path.join(tree, "client.py"), "127.0.0.1", port],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             cwd=tree)
        p.stdin.write(f"login {user} {PASSWORD}\n".encode())
        p.stdin.flush()
        procs.append(p)
        fds[p.stdout.fileno()] = i
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sel = selectors.DefaultSelector()
    for fd, i in fds.items():
        sel.register(fd, selectors.EVENT_READ, i)
    bufs = collections.defaultdict(bytes)
    while not stop and fds:
        try:
            ready = sel.select(0.5)
        except InterruptedError:
            continue
        now = b"%d" % time.monotonic_ns()
        chunk = []
        for key, _ in ready:
            i = key.data
            data = os.read(key.fd, 1 << 16)
            if not data:
                sel.unregister(key.fd)
                del fds[key.fd]
                continue
            buf = bufs[i] + data
            *lines, bufs[i] = buf.split(b"\n")
            chunk += [b"%s %d %s\n" % (now, i, line) for line in lines]
        if chunk:
            os.write(out, b"".join(chunk))
    for p in procs:
        try:
            p.stdin.close()           # end of input: the client lingers, then exits
        except OSError:
            pass
    until = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(max(0.1, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return 0


def main(argv):
    if argv and argv[0] == "stamp":
        return stamp(argv[1], argv[2], argv[3], argv[4:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--duration", type=float, default=3.0,
                    help="seconds of sending per load point and round (default 3)")
    ap.add_argument("--before", help=f"a checkout of {BEFORE_COMMIT} (default: /tmp/np-before if it is "
                    "that commit, else one extracted with git archive)")
    args = ap.parse_args(argv)
    CFG.rounds = args.rounds
    run(args.before, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
