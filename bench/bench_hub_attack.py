"""5b. UDP hub under a login flood (issue 14): how long the owner of an
account waits for its login answer while another address floods the hub.

An attacker socket on 127.0.0.2 sends FLOOD login datagrams (wrong
passwords; known scrypt ids -- the owners' own among them -- and unknown
ids) at FLOOD_RATE a second. Meanwhile, from 127.0.0.1, the owners log in
every 0.25 s with their right passwords, each from a fresh socket and
for the first time (so each needs a real scrypt check), resending every 2 s
like ./client --udp. Reported: the time to each owner's `Success<TOKEN>`
(an owner with no answer after 6 s counts as 6 s), the hub's CPU during the
flood, and its datagram counts. Target: median < 1 s.

    python -m bench.bench_hub_attack [--tree /tmp/np-hub-before]

(`--tree` runs the same load against another checkout's udp_hub.py.)
"""
import os
import re
import shutil
import socket
import subprocess
import threading
import time

from bench.common import (CFG, HOST, PYTHON, ROOT, cpu_seconds, median, ms, pct, save, shared_scrypt,
                          table, target, tmpdir)
from bench.bench_hub import free_udp_port

NAME = "hub_attack"
ATTACKER = "127.0.0.2"
FLOOD = 4500
FLOOD_RATE = 1200.0        # datagrams per second: the flood outlasts the owners' logins
OWNERS = 12
GIVE_UP = 6.0              # seconds an owner waits (3 tries, 2 s apart)


class FloodedHub:
    """udp_hub.py from `root` with OWNERS + 10 scrypt accounts and one plain one."""

    def __init__(self, root=ROOT, args=()):
        self.root, self.args = root, list(args)
        self.dir = tmpdir("np-bench-hub-attack-")
        self.users = os.path.join(self.dir, "users.txt")
        record = shared_scrypt("owner-pw")       # a real record; each id still needs its own first check
        with open(self.users, "w") as f:
            f.writelines(f"o{i} {record}\n" for i in range(OWNERS))
            f.writelines(f"v{i} {record}\n" for i in range(10))
            f.write("probe probe-pw\n")
        self.proc = None

    def start(self):
        self.port = free_udp_port()
        self.log_path = os.path.join(self.dir, "hub.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([PYTHON, os.path.join(self.root, "udp_hub.py"), HOST, str(self.port),
                                      "--users", self.users, *self.args], stdout=self.log, stderr=self.log, cwd=self.dir)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:   # up when it answers
            s.bind((HOST, 0))
            s.settimeout(0.2)
            for _ in range(100):
                s.sendto(f"probe->server#login<probe-pw><{HOST}><{s.getsockname()[1]}>".encode(), (HOST, self.port))
                try:
                    if b"Success" in s.recv(65535):
                        return self
                except socket.timeout:
                    pass
        raise RuntimeError("the hub did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc:
            self.log.close()
        with open(self.log_path, errors="replace") as f:
            counts = re.findall(r"datagram counts: (.*)", f.read())
        shutil.rmtree(self.dir, ignore_errors=True)
        return counts[-1] if counts else "-"


def flood(port, count, rate, done):
    """The attacker: `count` login datagrams at `rate`/s from 127.0.0.2."""
    ids = [f"o{i}" for i in range(OWNERS)] + [f"v{i}" for i in range(10)] + [f"ghost{i}" for i in range(10)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ATTACKER, 0))
        me = s.getsockname()[1]
        t0, sent = time.monotonic(), 0
        while sent < count and time.monotonic() - t0 < count / rate + 10:
            for _ in range(30):
                who = ids[sent % len(ids)]
                s.sendto(f"{who}->server#login<guess{sent}><{ATTACKER}><{me}>".encode(), (HOST, port))
                sent += 1
            time.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
        done.update(sent=sent, seconds=time.monotonic() - t0)


def owner_login(port, who):
    """One owner's login, resent every 2 s -> seconds to its Success (GIVE_UP if none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        text = f"{who}->server#login<owner-pw><{HOST}><{s.getsockname()[1]}>".encode()
        t0 = time.monotonic()
        next_send = t0
        while time.monotonic() - t0 < GIVE_UP:
            if time.monotonic() >= next_send:
                s.sendto(text, (HOST, port))
                next_send += 2.0
            s.settimeout(max(0.01, min(next_send, t0 + GIVE_UP) - time.monotonic()))
            try:
                if s.recv(65535).startswith(f"server->{who}#Success<".encode()):
                    return time.monotonic() - t0
            except socket.timeout:
                pass
        return GIVE_UP


def measure(root=ROOT, args=()):
    hub = FloodedHub(root, args).start()
    done = {}
    cpu0 = cpu_seconds([hub.proc.pid])
    attacker = threading.Thread(target=flood, args=(hub.port, FLOOD, FLOOD_RATE, done))
    attacker.start()
    time.sleep(0.3)                       # the flood is on
    # Owners start every 0.25 s whatever the others' waits, each on its own thread.
    waits, during, owners = [None] * OWNERS, 0, []
    for i in range(OWNERS):
        during += attacker.is_alive()
        owners.append(threading.Thread(target=lambda i=i: waits.__setitem__(i, owner_login(hub.port, f"o{i}"))))
        owners[-1].start()
        time.sleep(0.25)
    for owner in owners:
        owner.join()
    attacker.join()
    cpu = cpu_seconds([hub.proc.pid]) - cpu0
    time.sleep(1.0)                       # what the flood left behind
    cpu_after = cpu_seconds([hub.proc.pid]) - cpu0 - cpu
    counts = hub.stop()
    return {"flood_sent": done.get("sent"), "flood_s": round(done.get("seconds", 0), 2),
            "owner_p50_ms": ms(median(waits)), "owner_max_ms": ms(max(waits)),
            "owner_p90_ms": ms(pct(waits, 0.9)), "unanswered": sum(w >= GIVE_UP for w in waits),
            "owners": len(waits), "owners_during_flood": during,
            "hub_cpu_s": round(cpu, 2), "hub_cpu_next_s": round(cpu_after, 2),
            "counts": counts, "waits_ms": [ms(w) for w in waits]}


# The figure is for the defaults; the second run switches the per-address
# rate limit off, to show that the check queue's fairness alone holds the target.
VARIANTS = (("defaults", ()), ("no login rate limit", ("--logins-per-minute", "100000000")))


def run(root=ROOT, name=NAME, variants=VARIANTS):
    rows, figures = [], []
    for label, args in variants:
        result = dict(measure(root, args), hub=label)
        rows.append(result)
        print(f"hub datagram counts ({label}):", result["counts"], flush=True)
        figures.append(target(f"UDP hub: owner's login answered during a {result['flood_sent']:,}-datagram "
                              f"login flood from another address, median ({label})",
                              round(result["owner_p50_ms"] / 1000, 3), 1.0, "<", unit=" s",
                              info=label != "defaults"))
    columns = ["hub", "flood_sent", "flood_s", "owners", "owners_during_flood", "owner_p50_ms",
               "owner_p90_ms", "owner_max_ms", "unanswered", "hub_cpu_s", "hub_cpu_next_s"]
    table(f"5b. UDP hub: owner logins during a login flood ({root})", columns, rows)
    data = {"rows": rows, "figures": figures, "tree": root, "quick": CFG.quick}
    save(name, data)
    return data


if __name__ == "__main__":   # python -m bench.bench_hub_attack [--tree DIR]
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=ROOT, help="checkout whose udp_hub.py to flood (default: this one)")
    args = ap.parse_args()
    tree = os.path.abspath(args.tree)
    # another tree may not have this tree's flags: defaults only
    run(tree, NAME if tree == ROOT else NAME + "-other-tree", VARIANTS if tree == ROOT else VARIANTS[:1])
