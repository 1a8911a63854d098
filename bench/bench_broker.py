"""4. Broker: `send` -> the message received by a subscriber on the
recipient's queue (the destination the login reply names, as the client
subscribes), latency p50/p99 at an offered 100, 300 and 1,000 messages/s
(open loop: each message has a scheduled send time and latencies count from
it, so a stall is not hidden by a sender that waits); and `send-group` to a
50-member group (50 subscriptions on the group's topic, on one broker
connection: ten connections' receiver threads in this one process fought
for the GIL and added ~40 ms that was ours, not np-social's).
Target: send p99 < 20 ms at 1,000 msg/s.
"""
import collections
import json
import secrets
import selectors
import socket
import threading
import time

import stomp

from bench.common import (CFG, Baseline, Conn, addr_of, login_all, ms, pct, save, server_with_users,
                          start_quiet, table, target)

NAME = "broker"
BROKER = ("127.0.0.1", 61613)
POOL = 32          # sender connections to the app server (one request in flight each)


class Subscriber(stomp.ConnectionListener):
    """Records when each message arrives (stomp.py's receiver thread)."""

    def __init__(self, destinations, name):
        self.got = []                       # (message text, perf_counter, subscription)
        self.lock = threading.Lock()
        self.conn = stomp.Connection12([BROKER], heartbeats=(0, 0))
        self.conn.set_listener(name, self)
        self.conn.connect(wait=True)
        self.receipts = set()
        for k, dest in enumerate(destinations):
            rid = f"{name}-sub{k}"
            self.conn.subscribe(dest, id=str(k), ack="auto", headers={"receipt": rid})
            self.receipts.add(rid)

    def on_receipt(self, frame):
        with self.lock:
            self.receipts.discard(frame.headers.get("receipt-id"))

    def on_message(self, frame):
        now = time.perf_counter()
        try:
            text = json.loads(frame.body)["message"]
        except (ValueError, KeyError):
            return
        self.got.append((text, now, frame.headers.get("subscription")))

    def ready(self):
        return not self.receipts

    def close(self):
        try:
            self.conn.disconnect()
        except Exception:
            pass


def open_loop(addr, make_req, rate, count, expect, pool=POOL, tag="m"):
    """Offer `count` requests at `rate`/s over `pool` connections. Returns
    (scheduled times, reply times, failures)."""
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(pool):
        s = socket.create_connection(addr, timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        socks.append(s)
    idle, backlog = collections.deque(range(pool)), collections.deque()
    inflight, bufs = {}, [b""] * pool
    sched, replied, failed = {}, {}, []
    t0 = time.perf_counter() + 0.05
    k = 0
    deadline = t0 + count / rate + 15.0
    while len(replied) + len(failed) < count and time.perf_counter() < deadline:
        now = time.perf_counter()
        while k < count and t0 + k / rate <= now:
            sched[k] = t0 + k / rate
            backlog.append(k)
            k += 1
        while backlog and idle:
            j, i = backlog.popleft(), idle.popleft()
            inflight[i] = j
            socks[i].send(make_req(j))
        wait = max(0.0, t0 + k / rate - time.perf_counter()) if k < count else 0.2
        for key, _ in sel.select(min(wait, 0.2)):
            i = key.data
            data = socks[i].recv(65536)
            if not data:
                raise ConnectionError("app server closed a sender connection")
            buf = bufs[i] + data
            if b"\n" not in buf:
                bufs[i] = buf
                continue
            line, _, bufs[i] = buf.partition(b"\n")
            j = inflight.pop(i)
            replied[j] = time.perf_counter()
            if expect not in line:
                failed.append((j, line[:100]))
            idle.append(i)
    for s in socks:
        s.close()
    return sched, replied, failed


def raw_baseline(rate, count):
    """The broker alone: one stomp.py publisher sends `count` persistent
    messages (with receipts, as the app server does) at `rate`/s, open loop,
    to a fresh queue; one subscriber. Returns delivery latencies (s)."""
    dest = "/queue/np.bench." + secrets.token_hex(8)
    sub = Subscriber([dest], "raw-sub")
    until = time.monotonic() + 10
    while not sub.ready() and time.monotonic() < until:
        time.sleep(0.02)
    pub = stomp.Connection12([BROKER], heartbeats=(0, 0))
    pub.connect(wait=True)
    sched = {}
    try:
        t0 = time.perf_counter() + 0.05
        for j in range(count):
            when = t0 + j / rate
            delay = when - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sched[j] = when
            pub.send(dest, json.dumps({"message": f"raw{j}"}),
                     headers={"persistent": "true", "receipt": f"raw-{j}"})
        wait_deliveries([sub], count)
        return [when - sched[int(text[3:])] for text, when, _ in sub.got if text.startswith("raw")]
    finally:
        pub.disconnect()
        sub.close()


def wait_deliveries(subs, want, timeout=15.0):
    until = time.monotonic() + timeout
    while time.monotonic() < until and sum(len(s.got) for s in subs) < want:
        time.sleep(0.05)
    time.sleep(0.2)


def run():
    duration = 1.5 if CFG.quick else 3.0
    members = [f"g{i}" for i in range(50)]
    users = {"ps": "pw", "pr": "pw"} | {m: "pw" for m in members}
    server = server_with_users(users, "--capacity", "1000", "--idle-timeout", "600")
    rows, figures, subs, cleanup = [], [], [], []
    try:
        start_quiet(server)
        replies = login_all(server.port, users)
        ps, pr = replies["ps"], replies["pr"]
        c = Conn(ps["app_server"])
        assert c.request(f"invite {ps['token']} pr")["status"] == 0
        c.close()
        c = Conn(pr["app_server"])
        assert c.request(f"accept-invite {pr['token']} ps")["status"] == 0
        c.close()
        sub = Subscriber([pr["queue"]], "pr")
        subs.append(sub)
        until = time.monotonic() + 10
        while not sub.ready() and time.monotonic() < until:
            time.sleep(0.02)
        app = addr_of(ps["app_server"])
        # warm-up (JIT-free Python, but the broker's JVM and connections warm up)
        sched, replied, failed = open_loop(app, lambda j: f"send {ps['token']} pr warm{j}\n".encode(),
                                           200, 200, b"Success!")
        wait_deliveries([sub], 200)
        echo = Baseline("echo_server.py").start()
        cleanup.append(echo.stop)
        for rate in (100, 300, 1000):
            count = int(rate * duration)
            # the machine's own floor: the same open loop against the line echo
            es, er, _ = open_loop(("127.0.0.1", echo.port), lambda j: f"send token pr e{j}\n".encode(),
                                  rate, count, b"send")
            lat = [er[j] - es[j] for j in er]
            rows.append({"load": f"baseline: TCP line echo at {rate}/s", "messages": count,
                         "reply p50 ms": ms(pct(lat, .5)), "reply p99 ms": ms(pct(lat, .99)),
                         "rate": rate, "kind": "echo"})
            raw = raw_baseline(rate, count)
            rows.append({"load": f"baseline: stomp.py -> ActiveMQ at {rate}/s", "messages": count,
                         "delivered": len(raw), "delivery p50 ms": ms(pct(raw, .5)),
                         "delivery p99 ms": ms(pct(raw, .99)), "rate": rate, "kind": "raw"})
            sub.got.clear()
            tag = f"r{rate}m"
            sched, replied, failed = open_loop(
                app, lambda j, tag=tag: f"send {ps['token']} pr {tag}{j}\n".encode(), rate, count, b"Success!")
            wait_deliveries([sub], count)
            arrived = {}
            for text, when, _ in sub.got:
                if text.startswith(tag):
                    arrived.setdefault(int(text[len(tag):]), when)
            deliver = [arrived[j] - sched[j] for j in arrived]
            reply = [replied[j] - sched[j] for j in replied]
            acked = {j for j in replied if j not in {f[0] for f in failed}}
            lost = len(acked - set(arrived))
            rows.append({"load": f"send at {rate}/s", "messages": count, "answered Success!": len(acked),
                         "delivered": len(arrived), "lost": lost,
                         "reply p50 ms": ms(pct(reply, .5)), "reply p99 ms": ms(pct(reply, .99)),
                         "delivery p50 ms": ms(pct(deliver, .5)), "delivery p99 ms": ms(pct(deliver, .99)),
                         "rate": rate, "kind": "send"})
            if rate == 1000:
                figures.append(target("broker send -> received, p99 at 1,000 msg/s (ms)",
                                      ms(pct(deliver, .99)), 20, "<", " ms"))
            if rate == 100:
                figures.append(target("broker send -> received, p99 at 100 msg/s (ms)",
                                      ms(pct(deliver, .99)), 20, "<", " ms",
                                      info=True))
            figures.append(target(f"broker: acknowledged sends lost at {rate} msg/s", lost, 1, "<"))
        # send-group to 50 members
        g0 = replies["g0"]
        c = Conn(g0["app_server"])
        made = c.request(f"create-group {g0['token']} benchclub")
        assert made["status"] == 0, made
        topic = made["topics"]["benchclub"]
        for m in members[1:]:
            cm = Conn(replies[m]["app_server"])
            assert cm.request(f"join-group {replies[m]['token']} benchclub")["status"] == 0
            cm.close()
        c.close()
        group_subs = [Subscriber([topic] * 50, "grp")]
        subs += group_subs
        until = time.monotonic() + 10
        while not all(s.ready() for s in group_subs) and time.monotonic() < until:
            time.sleep(0.02)
        gapp = addr_of(g0["app_server"])
        for rate in (10, 50):
            count = int(rate * duration)
            tag = f"grp{rate}x"
            for s in group_subs:
                s.got.clear()
            sched, replied, failed = open_loop(
                gapp, lambda j, tag=tag: f"send-group {g0['token']} benchclub {tag}{j}\n".encode(),
                rate, count, b"Success!", pool=8)
            wait_deliveries(group_subs, count * 50)
            per, last = [], {}
            n = 0
            for s in group_subs:
                for text, when, _ in s.got:
                    if text.startswith(tag):
                        j = int(text[len(tag):])
                        per.append(when - sched[j])
                        last[j] = max(last.get(j, 0), when)
                        n += 1
            done = [last[j] - sched[j] for j in last]
            reply = [replied[j] - sched[j] for j in replied]
            rows.append({"load": f"send-group x50 at {rate}/s", "messages": count,
                         "answered Success!": len(replied) - len(failed), "delivered": n,
                         "lost": count * 50 - n if not failed else None,
                         "reply p50 ms": ms(pct(reply, .5)), "reply p99 ms": ms(pct(reply, .99)),
                         "delivery p50 ms": ms(pct(per, .5)), "delivery p99 ms": ms(pct(per, .99)),
                         "all 50 p50 ms": ms(pct(done, .5)), "all 50 p99 ms": ms(pct(done, .99)),
                         "rate": rate, "kind": "group"})
    finally:
        for s in subs:
            s.close()
        for stop in cleanup:
            stop()
        server.cleanup()
    table("4. broker: send -> subscriber on the recipient's queue; send-group -> 50 topic subscriptions",
          ["load", "messages", "answered Success!", "delivered", "lost", "reply p50 ms", "reply p99 ms",
           "delivery p50 ms", "delivery p99 ms", "all 50 p50 ms", "all 50 p99 ms"], rows)
    data = {"rows": rows, "figures": figures}
    save(NAME, data)
    return data
