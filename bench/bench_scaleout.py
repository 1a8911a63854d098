"""7. Scale-out: time from a `login` that needs a new application server to
its reply (local launcher: `appserver.py` processes), with `--spare 0` (the
login waits for a launch) and with `--spare 1` (a warm empty server takes it;
the next spare is launched behind it). `--capacity 1`, so every login needs
a server of its own. The two servers are measured alternately, one login at
a time, and each spare is given time to come up before the next login.
"""
import time

from bench.common import (CFG, Conn, ms, pct, save, server_with_users, table, target,
                          wait_for)

NAME = "scaleout"


def ready_count(server):
    with open(server.log_path, "rb") as f:
        return f.read().count(b" ready at ")


def run():
    n = 3 if CFG.quick else 6
    users = {f"so{i}": "pw" for i in range(n)}
    servers = {}
    rows, figures = [], []
    try:
        for mode, extra in (("--spare 0", ()), ("--spare 1", ("--spare", "1"))):
            # INFO log: each app server's "ready at" line tells us a spare is up
            servers[mode] = server_with_users(users, "--capacity", "1", "--idle-timeout", "600",
                                              *extra).start()
        assert wait_for(lambda: ready_count(servers["--spare 1"]) >= 1, timeout=30), "no spare came up"
        times = {mode: [] for mode in servers}
        conns = {mode: Conn(s.port, timeout=120) for mode, s in servers.items()}
        for i in range(n):
            for mode, server in servers.items():
                t = time.perf_counter()
                reply = conns[mode].request(f"login so{i} pw")
                times[mode].append(time.perf_counter() - t)
                assert reply["status"] == 0, reply
                # wait for every launched server (the new spare) to be ready
                want = i + 2 if mode == "--spare 1" else i + 1
                assert wait_for(lambda: ready_count(server) >= want, timeout=30), "spare not ready"
                time.sleep(0.3)
        for c in conns.values():
            c.close()
        for mode, ts in times.items():
            rows.append({"server": mode, "logins": len(ts), "p50 ms": ms(pct(ts, .5)), "max ms": ms(max(ts)),
                         "min ms": ms(min(ts)), "each ms": [ms(t) for t in ts]})
        speedup = pct(times["--spare 0"], .5) / pct(times["--spare 1"], .5)
        figures.append(target("scale-out: login needing a new app server, p50 (ms), --spare 0",
                              ms(pct(times["--spare 0"], .5)), 0, ">=", " ms", info=True))
        figures.append(target("scale-out: login needing a new app server, p50 (ms), --spare 1",
                              ms(pct(times["--spare 1"], .5)), 0, ">=", " ms", info=True))
        figures.append(target("scale-out: --spare 0 / --spare 1 login time", round(speedup, 1), 1, ">=", info=True))
    finally:
        for s in servers.values():
            s.cleanup()
    table("7. scale-out: login that needs a new app server (local launcher, --capacity 1)",
          ["server", "logins", "p50 ms", "min ms", "max ms", "each ms"], rows)
    data = {"rows": rows, "figures": figures}
    save(NAME, data)
    return data
