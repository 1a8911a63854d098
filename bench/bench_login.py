"""1. Login server: requests/s and p50/p99 for
  - `login ID PW` of users already logged in (the keyed-digest cache skips
    scrypt, the fleet already knows their app server: no journal write), and
  - the token-checked command `list-friend TOKEN` sent to the login server
    (token digest looked up, arity checked, answered
    "Send list-friend to your application server"; no write),
with 1, 16, 64 and 256 concurrent persistent clients, side by side with the
line-echo baseline fed the same request bytes. Target: token-checked >= 0.5
of echo.
"""
import time

from bench.common import (CFG, HOST, Baseline, alternate, closed_loop, login_all, rss_kib, save,
                          server_pids, server_with_users, start_quiet, table, target)

NAME = "login"
LEVELS = (1, 16, 64, 256)
TOKEN_REPLY = b"Send list-friend to your application server"


def run():
    levels = (1, 16, 256) if CFG.quick else LEVELS
    users = {f"lu{i}": "pw-bench" for i in range(max(levels))}
    server = server_with_users(users, "--capacity", "1000", "--idle-timeout", "600", hashed=True)
    echo = Baseline("echo_server.py")
    rows, figures = [], []
    try:
        start_quiet(server)
        echo.start()
        replies = login_all(server.port, users)            # first logins: real scrypt
        names = list(users)
        tokens = [replies[n]["token"] for n in names]
        spids = server_pids(server)
        rss_before, served = rss_kib(spids[0]), 0
        for c in levels:
            token_req = [f"list-friend {tokens[i]}\n".encode() for i in range(c)]
            login_req = [f"login {names[i]} pw-bench\n".encode() for i in range(c)]
            res = alternate([
                ("echo", lambda: closed_loop([((HOST, echo.port), r) for r in token_req],
                                             cpu_pids=[echo.pid])),
                ("token", lambda: closed_loop([((HOST, server.port), r) for r in token_req],
                                              expect=TOKEN_REPLY, cpu_pids=spids[:1])),
                ("login", lambda: closed_loop([((HOST, server.port), r) for r in login_req],
                                              expect=b'"status": 0', cpu_pids=spids[:1])),
            ])
            base = res["echo"]["rps"]
            served += sum(r["requests"] for what in ("token", "login") for r in res[what]["each"])
            for what in ("echo", "token", "login"):
                r = res[what]
                rows.append({"clients": c, "subject": {"echo": "echo baseline",
                                                        "token": "list-friend TOKEN (token check)",
                                                        "login": "login (cached, logged in)"}[what],
                             "req/s": r["rps"], "p50 ms": r["p50_ms"], "p99 ms": r["p99_ms"],
                             "cpu us/req": r.get("cpu_us_per_req"),
                             "x echo": round(r["rps"] / base, 3), "errors": r["errors"],
                             "rounds req/s": r["rps_all"], "key": what})
            figures.append(target(f"login server token-checked cmd / echo, {c} clients",
                                  round(res["token"]["rps"] / base, 3), 0.5, ">="))
            figures.append(target(f"login server cached login / echo, {c} clients",
                                  round(res["login"]["rps"] / base, 3), 0.5, ">=",
                                  info=True))
        # memory the login server keeps per request served (should be ~0)
        time.sleep(0.5)
        grown = rss_kib(spids[0]) - rss_before
        retained = {"rss_before_kib": rss_before, "rss_after_kib": rss_before + grown, "requests": served,
                    "bytes_per_request": round(grown * 1024 / max(1, served), 1)}
        figures.append(target("login server memory retained per request served (bytes)",
                              retained["bytes_per_request"], 16, "<", " B", info=True))
    finally:
        echo.stop()
        server.cleanup()
    table("1. login server vs line-echo baseline (closed loop, medians of rounds)",
          ["clients", "subject", "req/s", "x echo", "p50 ms", "p99 ms", "cpu us/req", "errors",
           "rounds req/s"], rows)
    print(f"login server RSS {retained['rss_before_kib']} -> {retained['rss_after_kib']} KiB over "
          f"{retained['requests']:,} requests: {retained['bytes_per_request']} bytes kept per request", flush=True)
    data = {"rows": rows, "figures": figures, "retained": retained}
    save(NAME, data)
    return data
