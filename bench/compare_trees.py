#!/usr/bin/env python3
"""Measure a proposed patch: the same loads against this tree's servers and
another tree's (e.g. a copy with bench/proposed-fixes/*.diff applied), in
alternating rounds of one run, so the machine's noise hits both alike.

    python bench/compare_trees.py /tmp/np-patched [--rounds 5]

Loads: login server `list-friend TOKEN` (16 and 256 clients), app server
`list-friend` and `post` (16 clients), UDP hub with receipts (100 clients),
`send` answered after the broker's receipt (open loop, 100 and 1,000/s);
reported: req/s, p50, p99, server CPU per request, and patched/base ratios.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import bench_app, bench_broker, bench_hub, common  # noqa: E402
from bench.common import HOST, alternate, closed_loop, login_all, save, server_pids, table  # noqa: E402


class TreeServer(common.LoginServer):
    """A LoginServer started from `tree` (server.py and lib/ of that checkout)."""

    def __init__(self, tree, *extra):
        super().__init__(*extra)
        self.tree = tree

    def start(self):
        import subprocess
        self.log = open(self.log_path, "ab")
        cmd = [common.PYTHON, os.path.join(self.tree, "server.py"), "127.0.0.1", str(self.port),
               "--data", self.data, "--broker", self.broker] + self.extra
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, cwd=self.tree)
        common.wait_port(self.port)
        return self


def setup(tree, n):
    users = {"star": "pw"} | {f"b{i}": "pw" for i in range(n)}
    server = TreeServer(tree, *common.generous_limits(tree), "--capacity", "1000", "--idle-timeout", "600",
                        "--log-level", "WARNING")
    with open(os.path.join(server.data, "users.txt"), "w") as f:
        f.writelines(f"{u} {p}\n" for u, p in users.items())
    server.start()
    replies = login_all(server.port, users)
    names = [u for u in users if u != "star"]
    bench_app.befriend_star(server.port, replies, names)
    return server, replies, names


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("other", help="root of the patched tree")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=2.0)
    args = ap.parse_args(argv)
    common.CFG.rounds, common.CFG.duration = args.rounds, args.duration
    trees = {"base": ROOT, "patched": os.path.abspath(args.other)}
    servers, hubs = {}, {}
    rows = []
    try:
        for name, tree in trees.items():
            servers[name] = setup(tree, 256)
            hubs[name] = bench_hub.Hub(100, root=tree).start()
        loads = []
        for label, clients, kind in (("login server list-friend TOKEN", 16, "token"),
                                     ("login server list-friend TOKEN", 256, "token"),
                                     ("app server list-friend", 16, "list-friend"),
                                     ("app server post", 16, "post")):
            pairs = []
            for name, (server, replies, names) in servers.items():
                if kind == "token":
                    targets = [((HOST, server.port), f"list-friend {replies[n]['token']}\n".encode())
                               for n in names[:clients]]
                    expect = b"Send list-friend"
                else:
                    tmpl, expect = bench_app.COMMANDS[kind]
                    targets = [(common.addr_of(replies[n]["app_server"]),
                                (tmpl.format(t=replies[n]["token"]) + "\n").encode()) for n in names[:clients]]
                pids = server_pids(server) if kind != "token" else server_pids(server)[:1]
                pairs.append((name, lambda t=targets, e=expect, p=pids: closed_loop(t, expect=e, cpu_pids=p)))
            loads.append((f"{label}, {clients} clients", pairs))
        loads.append(("UDP hub forwards with receipts, 100 clients",
                      [(name, lambda h=h: bench_hub.hub_loop(h)) for name, h in hubs.items()]))
        for rate in (100, 1000):
            pairs = []
            for name, (server, replies, names) in servers.items():
                def send(server=server, replies=replies, names=names, rate=rate):
                    token = replies[names[0]]["token"]
                    sched, replied, failed = bench_broker.open_loop(
                        common.addr_of(replies[names[0]]["app_server"]),
                        lambda j: f"send {token} star compare {j}\n".encode(), rate, int(rate * 3), b"Success!")
                    lat = [replied[j] - sched[j] for j in replied]
                    return {"rps": len(replied) / 3.0, "p50_ms": common.ms(common.pct(lat, .5)),
                            "p99_ms": common.ms(common.pct(lat, .99)), "errors": len(failed)}
                pairs.append((name, send))
            loads.append((f"send -> Success! (broker receipt), open loop {rate}/s", pairs))
        for label, pairs in loads:
            res = alternate(pairs)
            for name, r in res.items():
                rows.append({"load": label, "tree": name, "req/s": r["rps"], "p50 ms": r["p50_ms"],
                             "p99 ms": r["p99_ms"], "cpu us/req": r.get("cpu_us_per_req"),
                             "patched/base req/s": round(r["rps"] / res["base"]["rps"], 3),
                             "errors": r["errors"], "rounds req/s": r["rps_all"]})
    finally:
        for server, _, _ in servers.values():
            server.cleanup()
        for h in hubs.values():
            h.stop()
    table(f"base tree vs {trees['patched']} (medians of {args.rounds} alternating rounds)",
          ["load", "tree", "req/s", "patched/base req/s", "p50 ms", "p99 ms", "cpu us/req", "errors",
           "rounds req/s"], rows)
    save("compare-trees", {"trees": trees, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
