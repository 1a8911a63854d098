"""2. Application server: round trips/s for `post`, `receive-post` and
`list-friend` through one app server and the login server's store (each
request: client -> app server -> internal link -> store -> back), with 1, 16
and 64 concurrent persistent clients, side by side with the line-echo
baseline fed the same bytes. Target: >= 0.3 of echo.

Every bench user b_i is a friend of `star`, who has 5 posts: receive-post
returns those 5 posts and list-friend returns ["star"] however long the run
(the users' own posts, written by the post load, are seen by nobody).
"""
from bench.common import (CFG, HOST, Baseline, Conn, addr_of, alternate, closed_loop, login_all,
                          save, server_pids, server_with_users, start_quiet, table, target)

NAME = "app"
LEVELS = (1, 16, 64)
COMMANDS = {
    "post": ("post {t} hello from the benchmark, a short post", b'"Success!"'),
    "receive-post": ("receive-post {t}", b'"post": [{"id": "star"'),
    "list-friend": ("list-friend {t}", b'{"status": 0, "friend": ["star"]}'),
}


def befriend_star(port, replies, names):
    star = replies["star"]
    s = Conn(star["app_server"])
    for i in range(5):
        assert s.request(f"post {star['token']} star post number {i}")["status"] == 0
    for n in names:
        assert s.request(f"invite {star['token']} {n}")["status"] == 0
    by_app = {}
    for n in names:
        r = replies[n]
        c = by_app.get(r["app_server"]) or by_app.setdefault(r["app_server"], Conn(r["app_server"]))
        assert c.request(f"accept-invite {r['token']} star")["status"] == 0
    for c in list(by_app.values()) + [s]:
        c.close()


def setup(extra=(), n_users=64):
    """A login server (one app server for every user) with b0.. befriended by star."""
    users = {"star": "pw"} | {f"b{i}": "pw" for i in range(n_users)}
    server = server_with_users(users, "--capacity", "1000", "--idle-timeout", "600", *extra)
    start_quiet(server)
    replies = login_all(server.port, users)
    names = [n for n in users if n != "star"]
    befriend_star(server.port, replies, names)
    return server, replies, names


def run():
    levels = (1, 16) if CFG.quick else LEVELS
    echo = Baseline("echo_server.py")
    rows, figures = [], []
    server = None
    try:
        server, replies, names = setup()
        echo.start()
        pids = server_pids(server)
        for c in levels:
            reqs = {cmd: [(addr_of(replies[n]["app_server"]), (tmpl.format(t=replies[n]["token"]) + "\n").encode())
                          for n in names[:c]] for cmd, (tmpl, _) in COMMANDS.items()}
            pairs = [("echo", lambda: closed_loop([((HOST, echo.port), r) for _, r in reqs["list-friend"]],
                                                  cpu_pids=[echo.pid]))]
            for cmd, (_, expect) in COMMANDS.items():
                pairs.append((cmd, lambda cmd=cmd, expect=expect: closed_loop(reqs[cmd], expect=expect,
                                                                               cpu_pids=pids)))
            res = alternate(pairs)
            base = res["echo"]["rps"]
            for what, r in res.items():
                rows.append({"clients": c, "subject": "echo baseline" if what == "echo" else what + " (app+store)",
                             "req/s": r["rps"], "x echo": round(r["rps"] / base, 3), "p50 ms": r["p50_ms"],
                             "p99 ms": r["p99_ms"], "cpu us/req": r.get("cpu_us_per_req"),
                             "errors": r["errors"], "rounds req/s": r["rps_all"], "key": what})
                if what != "echo":
                    figures.append(target(f"app server {what} / echo, {c} clients",
                                          round(r["rps"] / base, 3), 0.3, ">="))
    finally:
        echo.stop()
        if server:
            server.cleanup()
    table("2. app server + store vs line-echo baseline (closed loop; cpu = app + login server)",
          ["clients", "subject", "req/s", "x echo", "p50 ms", "p99 ms", "cpu us/req", "errors",
           "rounds req/s"], rows)
    data = {"rows": rows, "figures": figures}
    save(NAME, data)
    return data
