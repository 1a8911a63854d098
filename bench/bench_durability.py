"""3. What durability costs: registrations/s and `post` writes/s with fsync on
(the default: group commit, every acknowledged write fsync'd before its reply)
against `--no-fsync`, 64 concurrent clients, the two servers measured
alternately in the same run. Target: durability costs < 2x.

Registration hashes the password with scrypt (~50 ms of CPU, 2 worker
threads), which dominates it whatever the disk does; `post` (app server +
store, one journal line each) isolates the fsync cost.
"""
from bench import bench_app
from bench.common import (CFG, HOST, alternate, closed_loop, save, server_pids,
                          table, target)

NAME = "durability"
CLIENTS = 64


def register_loop(server, tag, per_client):
    counter = {"round": 0}

    def run():
        counter["round"] += 1
        r = counter["round"]

        def req_for(i):
            return lambda seq: f"register {tag}{r}_{i}_{seq} pw{seq}\n".encode()
        return closed_loop([((HOST, server.port), req_for(i)) for i in range(CLIENTS)],
                           duration=3.0 if CFG.quick else 6.0, warmup=1.0,
                           max_requests=CLIENTS * per_client, expect=b'"Success!"',
                           cpu_pids=server_pids(server))
    return run


def run():
    rows, figures = [], []
    servers = {}
    try:
        for mode, extra in (("fsync", ()), ("no-fsync", ("--no-fsync",))):
            servers[mode] = bench_app.setup(extra, n_users=CLIENTS)
        # registrations: scrypt-bound
        per_client = 4 if CFG.quick else 8
        res = alternate([(mode, register_loop(servers[mode][0], mode.replace("-", ""), per_client))
                         for mode in servers], rounds=1 if CFG.quick else 2)
        for mode, r in res.items():
            rows.append({"write": "register (scrypt + fsync)", "durability": mode, "writes/s": r["rps"],
                         "p50 ms": r["p50_ms"], "p99 ms": r["p99_ms"], "cpu us/write": r.get("cpu_us_per_req"),
                         "errors": r["errors"], "rounds writes/s": r["rps_all"]})
        reg_cost = res["no-fsync"]["rps"] / res["fsync"]["rps"]
        figures.append(target("durability cost, register/s (no-fsync / fsync)", round(reg_cost, 3), 2.0, "<"))
        # posts: fsync-bound (one journal line each, group-committed per reactor turn)
        post = {}
        for mode, (server, replies, names) in servers.items():
            post[mode] = [(bench_app.addr_of(replies[n]["app_server"]),
                           f"post {replies[n]['token']} a durable post of about fifty bytes\n".encode())
                          for n in names[:CLIENTS]]
        res = alternate([(mode, lambda mode=mode: closed_loop(post[mode], expect=b'"Success!"',
                                                              cpu_pids=server_pids(servers[mode][0])))
                         for mode in servers])
        for mode, r in res.items():
            rows.append({"write": "post (journal line)", "durability": mode, "writes/s": r["rps"],
                         "p50 ms": r["p50_ms"], "p99 ms": r["p99_ms"], "cpu us/write": r.get("cpu_us_per_req"),
                         "errors": r["errors"], "rounds writes/s": r["rps_all"]})
        post_cost = res["no-fsync"]["rps"] / res["fsync"]["rps"]
        figures.append(target("durability cost, post writes/s (no-fsync / fsync)", round(post_cost, 3), 2.0, "<"))
        # single client: no group commit to share the fsync with
        one = {mode: post[mode][:1] for mode in post}
        res = alternate([(mode, lambda mode=mode: closed_loop(one[mode], expect=b'"Success!"'))
                         for mode in servers])
        for mode, r in res.items():
            rows.append({"write": "post, 1 client", "durability": mode, "writes/s": r["rps"],
                         "p50 ms": r["p50_ms"], "p99 ms": r["p99_ms"], "errors": r["errors"],
                         "rounds writes/s": r["rps_all"]})
        figures.append(target("durability cost, post writes/s with 1 client (no-fsync / fsync)",
                              round(res["no-fsync"]["rps"] / res["fsync"]["rps"], 3), 2.0, "<",
                              info=True))
    finally:
        for server, _, _ in servers.values():
            server.cleanup()
    table(f"3. durability: fsync on vs --no-fsync, {CLIENTS} clients (medians of alternating rounds)",
          ["write", "durability", "writes/s", "p50 ms", "p99 ms", "cpu us/write", "errors",
           "rounds writes/s"], rows)
    data = {"rows": rows, "figures": figures}
    save(NAME, data)
    return data
