"""5. UDP hub: forwarded messages/s with receipts, 100 clients, against the
UDP echo baseline (same 100 sockets, same datagram size).

Each bench client u_i is logged in and, in a closed loop, sends
`u_i->u_j#<TOKEN><MSGID>TEXT` to its neighbour u_j; the message is done when
u_i has its `Success:` reply and u_j has the forward (u_j answers every
forward with its receipt at once). Per forwarded message the hub handles 2
datagrams in and sends 2 out; the echo baseline 1 and 1 per round trip.
Target: forwarded/s >= 0.4 of echo round trips/s. The hub runs as
deployed: logging at INFO to a file.
"""
import os
import selectors
import socket
import subprocess
import time

from bench.common import (CFG, HOST, PYTHON, ROOT, Baseline, alternate, cpu_seconds, ms, pct,
                          save, table, target, tmpdir, udp_echo_loop)

NAME = "hub"
CLIENTS = 100
TEXT = "hello through the hub, a short chat line"


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Hub:
    """udp_hub.py with `n` plain-password accounts u0..u(n-1), and n logged-in sockets."""

    def __init__(self, n, root=ROOT):
        self.n, self.root = n, root
        self.dir = tmpdir("np-bench-hub-")
        self.users = os.path.join(self.dir, "users.txt")
        with open(self.users, "w") as f:
            f.writelines(f"u{i} pw{i}\n" for i in range(n))
        self.proc = None
        self.socks, self.tokens = [], []

    def start(self):
        self.port = free_udp_port()
        self.log = open(os.path.join(self.dir, "hub.log"), "wb")
        self.proc = subprocess.Popen([PYTHON, os.path.join(self.root, "udp_hub.py"), HOST, str(self.port),
                                      "--users", self.users], stdout=self.log, stderr=self.log, cwd=self.dir)
        for i in range(self.n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((HOST, 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.socks.append(s)
            self.tokens.append(None)
        until = time.monotonic() + 15
        while None in self.tokens and time.monotonic() < until:
            for i, s in enumerate(self.socks):
                if self.tokens[i] is None:
                    s.sendto(f"u{i}->server#login<pw{i}><{HOST}><{s.getsockname()[1]}>".encode(), (HOST, self.port))
            time.sleep(0.2)
            for i, s in enumerate(self.socks):
                s.setblocking(False)
                try:
                    while True:
                        text = s.recv(65535).decode()
                        if "#Success<" in text:
                            self.tokens[i] = text.split("#Success<", 1)[1][:6]
                except BlockingIOError:
                    pass
        if None in self.tokens:
            raise RuntimeError("hub logins failed")
        return self

    def stop(self):
        for s in self.socks:
            s.close()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        if self.proc:
            self.log.close()


def hub_loop(hub, duration=None, warmup=None, max_messages=500_000):
    """The closed loop described above; returns rps (forwarded messages/s), p50/p99."""
    duration = CFG.duration if duration is None else duration
    warmup = CFG.warmup if warmup is None else warmup
    n = hub.n
    sel = selectors.DefaultSelector()
    for i, s in enumerate(hub.socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    dest = (HOST, hub.port)
    seq = [0]
    pending = {}            # msgid -> [sender, sent_at, got_reply, got_forward]
    by_sender = {}
    lat, completed, in_window, lost = [], 0, 0, 0
    perf = time.perf_counter
    t0 = perf()
    t_measure, t_end = t0 + warmup, t0 + warmup + duration
    t_last, cpu0 = t_measure, None
    run_id = int(t0 * 1000) % 100000

    def send(i):
        seq[0] += 1
        msgid = f"{run_id:05d}{seq[0] % 100000:05d}"
        j = (i + 1) % n
        pending[msgid] = [i, perf(), False, False]
        by_sender[i] = msgid
        hub.socks[i].sendto(f"u{i}->u{j}#<{hub.tokens[i]}><{msgid}>{TEXT}".encode(), dest)

    for i in range(n):
        send(i)
    active = set(range(n))
    next_check = t0 + 1.0
    while active:
        now = perf()
        if cpu0 is None and now >= t_measure:
            cpu0 = cpu_seconds([hub.proc.pid])
        if now > t_end + 5:
            break
        if now >= next_check:                      # a message lost on the way: give up on it
            next_check = now + 0.5
            for i in list(active):
                msgid = by_sender.get(i)
                p = pending.get(msgid)
                if p and now - p[1] > 2.0:
                    lost += 1
                    del pending[msgid]
                    send(i)
        for key, _ in sel.select(0.2):
            i = key.data
            s = hub.socks[i]
            while True:
                try:
                    data = s.recv(65535)
                except (BlockingIOError, InterruptedError):
                    break
                text = data.decode()
                head, _, body = text.partition("#")
                msgid = body[9:19]
                if head.startswith("server->"):
                    p = pending.get(msgid)
                    if p is not None:
                        p[2] = True
                else:                              # a forward: answer with the receipt
                    s.sendto(f"u{i}->server#{body[:20]}Success: {body[20:]}".encode(), dest)
                    p = pending.get(msgid)
                    if p is not None:
                        p[3] = True
                if p is not None and p[2] and p[3]:
                    del pending[msgid]
                    sender = p[0]
                    now = perf()
                    completed += 1
                    if t_measure <= now <= t_end:
                        in_window += 1
                        t_last = now
                        if p[1] >= t_measure:
                            lat.append(now - p[1])
                    if now < t_end and completed < max_messages:
                        send(sender)
                    else:
                        active.discard(sender)
    cpu1 = cpu_seconds([hub.proc.pid])
    # let the last receipts land so the next round starts clean
    time.sleep(0.1)
    for s in hub.socks:
        try:
            while True:
                s.recv(65535)
        except BlockingIOError:
            pass
        sel.unregister(s)
    window = max(1e-9, (t_last if completed >= max_messages else t_end) - t_measure)
    result = {"clients": n, "requests": completed, "rps": in_window / window,
              "p50_ms": ms(pct(lat, .5)), "p99_ms": ms(pct(lat, .99)), "errors": lost}
    if cpu0 is not None and in_window:
        result["cpu_us_per_req"] = round((cpu1 - cpu0) / in_window * 1e6, 1)
    return result


def run():
    hub = Hub(CLIENTS)
    echo = Baseline("udp_echo.py")
    rows, figures = [], []
    try:
        hub.start()
        echo.start()
        payload = lambda i: f"u{i}->u{(i + 1) % CLIENTS}#<abcdef><0123456789>{TEXT}".encode()  # noqa: E731
        res = alternate([
            ("echo", lambda: udp_echo_loop(echo.port, CLIENTS, payload, cpu_pids=[echo.pid])),
            ("hub", lambda: hub_loop(hub)),
        ])
        base = res["echo"]["rps"]
        for what, label in (("echo", "UDP echo round trips"), ("hub", "hub messages forwarded + receipted")):
            r = res[what]
            rows.append({"subject": label, "per s": r["rps"], "x echo": round(r["rps"] / base, 3),
                         "p50 ms": r["p50_ms"], "p99 ms": r["p99_ms"], "cpu us/msg": r.get("cpu_us_per_req"),
                         "lost": r["errors"], "rounds per s": r["rps_all"], "key": what})
        figures.append(target(f"UDP hub forwarded/s / UDP echo, {CLIENTS} clients",
                              round(res["hub"]["rps"] / base, 3), 0.4, ">="))
    finally:
        echo.stop()
        hub.stop()
    table(f"5. UDP hub vs UDP echo, {CLIENTS} clients (closed loop, medians of rounds)",
          ["subject", "per s", "x echo", "p50 ms", "p99 ms", "cpu us/msg", "lost", "rounds per s"], rows)
    data = {"rows": rows, "figures": figures}
    save(NAME, data)
    return data


def compare(other, label="other"):
    """This tree's hub against `other`'s (e.g. a worktree of the commit
    before a change), the same load in alternating rounds of one run: the
    machine's noise hits both alike. Prints and saves rps, p50, p99, CPU."""
    hubs = {label: Hub(CLIENTS, root=other), "this": Hub(CLIENTS)}
    rows = []
    try:
        for h in hubs.values():
            h.start()
        res = alternate([(name, lambda h=h: hub_loop(h)) for name, h in hubs.items()])
        for name, r in res.items():
            rows.append({"tree": name, "per s": r["rps"], "this/other": round(res["this"]["rps"] / r["rps"], 3),
                         "p50 ms": r["p50_ms"], "p99 ms": r["p99_ms"], "cpu us/msg": r.get("cpu_us_per_req"),
                         "lost": r["errors"], "rounds per s": r["rps_all"]})
    finally:
        for h in hubs.values():
            h.stop()
    table(f"UDP hub forwards + receipts, {CLIENTS} clients: this tree vs {other} "
          f"(medians of {CFG.rounds} alternating rounds)",
          ["tree", "per s", "this/other", "p50 ms", "p99 ms", "cpu us/msg", "lost", "rounds per s"], rows)
    save(NAME + "-compare", {"other": other, "rows": rows})
    return rows


if __name__ == "__main__":   # python -m bench.bench_hub [--against TREE [--rounds N]]
    import argparse
    import sys
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", metavar="TREE", help="compare with the hub of another checkout")
    ap.add_argument("--rounds", type=int, default=CFG.rounds)
    args = ap.parse_args()
    CFG.rounds = args.rounds
    sys.exit(print(compare(os.path.abspath(args.against)) if args.against else run()))
