#!/usr/bin/env python3
"""Profile a server under benchmark load with py-spy (sampling, no code change).

    python bench/profile.py token      login server, `list-friend TOKEN`, 16 clients
    python bench/profile.py login      login server, cached `login`, 16 clients
    python bench/profile.py app        app server + login server, `list-friend`, 16 clients
    python bench/profile.py hub        udp_hub.py, 100 clients with receipts
    python bench/profile.py send       app + login server, `send` at 1,000 msg/s (open loop)

Prints, for each profiled process, the functions with the most samples
(self = on top of the stack, total = anywhere on it) and writes the
collapsed stacks to bench/results/profile-SCENARIO-PROC.txt (feed them to
flamegraph.pl or speedscope). py-spy is in bench/requirements.txt.
"""
import collections
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import common  # noqa: E402
from bench.common import HOST, closed_loop, login_all, server_with_users, start_quiet  # noqa: E402

SECONDS = 6


def pyspy():
    exe = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return exe if os.path.exists(exe) else shutil.which("py-spy")


def record(pid, label, seconds):
    out = os.path.join(common.RESULTS, f"profile-{label}.txt")
    os.makedirs(common.RESULTS, exist_ok=True)
    proc = subprocess.Popen([pyspy(), "record", "--pid", str(pid), "--duration", str(seconds),
                             "--rate", "250", "--format", "raw", "--output", out, "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, out


def report(path, label, top=25):
    self_n, total_n, samples = collections.Counter(), collections.Counter(), 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            n = int(count)
            frames = [fr.split(" (")[0] + " (" + fr.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                      if " (" in fr else fr for fr in stack.split(";")]
            idle = frames[-1].startswith(("select (selectors", "poll (selectors"))
            samples += n
            if idle:
                self_n["<idle in select>"] += n
                continue
            self_n[frames[-1]] += n
            for fr in set(frames):
                total_n[fr] += n
    print(f"\n== {label}: {samples} samples")
    print(f"{'self %':>7} {'total %':>8}  function")
    for fr, n in self_n.most_common(top):
        print(f"{100 * n / samples:7.1f} {100 * total_n.get(fr, n) / samples:8.1f}  {fr}")
    print("-- by inclusive time --")
    for fr, n in total_n.most_common(top):
        print(f"{100 * self_n.get(fr, 0) / samples:7.1f} {100 * n / samples:8.1f}  {fr}")


def main(argv):
    scenario = argv[0] if argv else "token"
    users = {f"pu{i}": "pw" for i in range(16)}
    if scenario == "hub":
        return profile_hub()
    if scenario == "send":
        return profile_send()
    server = server_with_users(users, "--capacity", "100", "--idle-timeout", "600")
    try:
        start_quiet(server)
        replies = login_all(server.port, users)
        names = list(users)
        if scenario == "token":
            targets = [((HOST, server.port), f"list-friend {replies[n]['token']}\n".encode()) for n in names]
        elif scenario == "login":
            targets = [((HOST, server.port), f"login {n} pw\n".encode()) for n in names]
        else:
            targets = [(common.addr_of(replies[n]["app_server"]), f"list-friend {replies[n]['token']}\n".encode())
                       for n in names]
        pids = common.server_pids(server)
        recs = [record(pid, f"{scenario}-{'login' if pid == pids[0] else 'app'}", SECONDS) for pid in pids]
        time.sleep(0.3)
        print(closed_loop(targets, duration=SECONDS, warmup=0.2))
        for (proc, out), pid in zip(recs, pids):
            proc.wait(30)
            report(out, f"{scenario}: {'login server' if pid == pids[0] else 'app server'} pid {pid}")
    finally:
        server.cleanup()
    return 0


def profile_send():
    from bench import bench_broker
    users = {"ps": "pw", "pr": "pw"}
    server = server_with_users(users, "--capacity", "100", "--idle-timeout", "600")
    try:
        start_quiet(server)
        r = login_all(server.port, users)
        c = common.Conn(r["ps"]["app_server"])
        c.request(f"invite {r['ps']['token']} pr")
        c.close()
        c = common.Conn(r["pr"]["app_server"])
        c.request(f"accept-invite {r['pr']['token']} ps")
        c.close()
        sub = bench_broker.Subscriber([r["pr"]["queue"]], "prof")
        pids = common.server_pids(server)
        recs = [record(pid, f"send-{'login' if pid == pids[0] else 'app'}", SECONDS) for pid in pids]
        time.sleep(0.3)
        sched, replied, failed = bench_broker.open_loop(
            common.addr_of(r["ps"]["app_server"]), lambda j: f"send {r['ps']['token']} pr p{j}\n".encode(),
            1000, 1000 * (SECONDS - 1), b"Success!")
        lat = [replied[j] - sched[j] for j in replied]
        print("reply p50 %.1f ms p99 %.1f ms" % (1e3 * common.pct(lat, .5), 1e3 * common.pct(lat, .99)))
        for (proc, out), pid in zip(recs, pids):
            proc.wait(30)
            report(out, f"send: {'login server' if pid == pids[0] else 'app server'} pid {pid}")
        sub.close()
    finally:
        server.cleanup()
    return 0


def profile_hub():
    from bench import bench_hub
    hub = bench_hub.Hub(100)
    try:
        hub.start()
        proc, out = record(hub.proc.pid, "hub", SECONDS)
        time.sleep(0.3)
        print(bench_hub.hub_loop(hub, duration=SECONDS, warmup=0.2))
        proc.wait(30)
        report(out, f"hub pid {hub.proc.pid}")
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
