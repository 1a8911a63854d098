"""6. Scale: 2,000 concurrent idle client connections to the login server.
Memory per connection = (server RSS with them - RSS before) / 2,000, measured
after they connected and again after each sent one request and went idle
(buffers touched). Target < 16 KiB. Meanwhile one active client's latency
(`list-friend TOKEN`, token-checked, closed loop) against the same client
with no idle connections, measured alternately.
"""
import socket
import time

from bench.common import (CFG, HOST, alternate, closed_loop, login_all, rss_kib, save, server_with_users,
                          start_quiet, table, target)

NAME = "scale"
IDLE = 2000


def settle(pid, seconds=0.6):
    time.sleep(seconds)
    return rss_kib(pid)


def run():
    users = {"active": "pw"}
    server = server_with_users(users, "--capacity", "100", "--idle-timeout", "600")
    rows, figures, idle = [], [], []
    try:
        start_quiet(server)
        token = login_all(server.port, users)["active"]["token"]
        pid = server.proc.pid
        active = [((HOST, server.port), f"list-friend {token}\n".encode())]
        quiet = lambda: closed_loop(active, duration=1.0 if CFG.quick else 2.0)  # noqa: E731
        quiet()                                              # warm up
        before = alternate([("no idle connections", quiet)])["no idle connections"]
        rss0 = settle(pid)
        for _ in range(IDLE):
            s = socket.create_connection((HOST, server.port), timeout=10)
            idle.append(s)
        # the server has accepted them all once a request behind them is answered
        closed_loop(active, duration=0.2, warmup=0)
        rss1 = settle(pid)
        for s in idle:
            s.sendall(b"list-group\n")
        for s in idle:
            s.settimeout(10)
            assert b"Not login yet" in s.recv(200)
        rss2 = settle(pid)
        during = alternate([("2,000 idle connections", quiet)])["2,000 idle connections"]
        connected_kib = (rss1 - rss0) / IDLE
        used_kib = (rss2 - rss0) / IDLE
        rows.append({"measure": "server RSS before (KiB)", "value": rss0})
        rows.append({"measure": "RSS with 2,000 idle connections (KiB)", "value": rss1})
        rows.append({"measure": "... after one request each (KiB)", "value": rss2})
        rows.append({"measure": "per connection, connected (KiB)", "value": round(connected_kib, 2)})
        rows.append({"measure": "per connection, after a request (KiB)", "value": round(used_kib, 2)})
        for label, r in (("active client, no idle", before), ("active client, 2,000 idle", during)):
            rows.append({"measure": f"{label}: req/s", "value": r["rps"]})
            rows.append({"measure": f"{label}: p50 ms", "value": r["p50_ms"]})
            rows.append({"measure": f"{label}: p99 ms", "value": r["p99_ms"]})
        figures.append(target("memory per idle connection (KiB, after one request each)",
                              round(max(connected_kib, used_kib), 2), 16, "<", " KiB"))
        figures.append(target("active client p99 with 2,000 idle / without",
                              round(during["p99_ms"] / before["p99_ms"], 2), 2.0, "<",
                              info=True))
    finally:
        for s in idle:
            s.close()
        server.cleanup()
    table(f"6. scale: {IDLE} idle connections to the login server", ["measure", "value"], rows)
    data = {"rows": rows, "figures": figures, "rss_kib": {"before": rss0, "connected": rss1, "used": rss2},
            "active": {"before": before, "during": during}}
    save(NAME, data)
    return data
