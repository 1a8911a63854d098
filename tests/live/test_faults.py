"""Faults with real processes: nothing acknowledged is lost, nobody notices.

- kill -9 of the login server during a stream of writes from 32 clients:
  every acknowledged write is there after the restart;
- kill -9 of an app server holding 10 users: each user's next command (real
  ./client) succeeds through a new app server;
- ActiveMQ restart during a stream of `send`s: every message answered
  `Success!` is printed once by the recipient's real client (its app server
  reconnects, subscribes again and pushes what the broker delivers again);
- a fuzzer (fixed seed) throws 10,000 malformed requests at the login server
  and at an app server and 10,000 datagrams at the UDP hub: all stay up and
  answer a well-formed request afterwards.

No timing asserts: every wait is bounded, generous, and only a ceiling.
"""
import collections
import json
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from tests.support import PYTHON, ROOT, Conn, LoginServer, disturbs_broker, login_many, own_broker, wait_for
from tests.support import InteractiveClient as Client

ACTIVEMQ = os.path.join(ROOT, "scripts", "activemq.sh")
SUCCESS = {"status": 0, "message": "Success!"}


def with_accounts(server, users):
    """Hand-written accounts (plain passwords: logins need no scrypt) that
    the store takes as registered when it opens."""
    with open(os.path.join(server.data, "users.txt"), "w") as f:
        f.writelines(f"{name} {pw}\n" for name, pw in users.items())
    return server


# ----------------------------------------------------------------------------------------
class LoginServerCrashTest(unittest.TestCase):
    CLIENTS = 32
    POOL = 4            # users each writer invites and who accept

    def test_kill_9_during_a_stream_of_writes_loses_no_acknowledged_write(self):
        users = {}
        for k in range(self.CLIENTS):
            users[f"a{k}"] = users[f"b{k}"] = "pw"
            for j in range(self.POOL):
                users[f"c{k}x{j}"] = "pw"
        server = with_accounts(LoginServer("--capacity", "1000", "--idle-timeout", "600"), users)
        server.start()
        self.addCleanup(server.cleanup)
        tok = {n: r["token"] for n, r in login_many(server.port, users).items()}
        app = login_many(server.port, {"a0": "pw"})["a0"]["app_server"]   # everyone is on this one
        setup = Conn(app)
        for k in range(self.CLIENTS):    # b_k sees a_k's posts
            self.assertEqual(setup.request(f"invite {tok[f'a{k}']} b{k}"), SUCCESS)
            self.assertEqual(setup.request(f"accept-invite {tok[f'b{k}']} a{k}"), SUCCESS)
        setup.close()

        acked = {k: {"post": [], "group": [], "join": [], "invite": [], "accept": [], "register": []}
                 for k in range(self.CLIENTS)}
        total = [0]
        lock = threading.Lock()
        stop = threading.Event()
        broke = []

        def writer(k):
            a, b = tok[f"a{k}"], tok[f"b{k}"]
            mine = acked[k]
            try:
                ca, cl = Conn(app, timeout=30), Conn(server.port, timeout=30)
            except OSError:
                return
            try:
                n = 0
                while not stop.is_set() and n < 10_000:
                    steps = [("post", ca, f"post {a} m{k}-{n} of the stream", f"m{k}-{n} of the stream"),
                             ("group", ca, f"create-group {a} g{k}x{n}", f"g{k}x{n}"),
                             ("join", ca, f"join-group {b} g{k}x{n}", f"g{k}x{n}")]
                    if n < self.POOL:
                        c = f"c{k}x{n}"
                        steps += [("invite", ca, f"invite {a} {c}", c),
                                  ("accept", ca, f"accept-invite {tok[c]} a{k}", c)]
                    if n % 3 == 0:
                        steps.append(("register", cl, f"register r{k}x{n} pw{n}", f"r{k}x{n}"))
                    for kind, conn, line, item in steps:
                        reply = conn.request(line)
                        if reply == SUCCESS or (kind in ("group", "join") and reply.get("status") == 0):
                            mine[kind].append(item)
                            with lock:
                                total[0] += 1
                        elif reply.get("status") == 0 or "unavailable" not in str(reply.get("message")):
                            broke.append((line, reply))   # a refusal that is not the crash
                            return
                        else:
                            return                        # the app server lost its login server
                    n += 1
            except (OSError, ValueError):
                return                                    # the crash: connection reset or closed
            finally:
                ca.close()
                cl.close()

        threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(self.CLIENTS)]
        for t in threads:
            t.start()
        # kill in the middle of the stream: once plenty is acknowledged, at a random moment
        self.assertTrue(wait_for(lambda: total[0] >= 400, timeout=60), f"only {total[0]} writes acknowledged")
        time.sleep(random.Random(6).uniform(0.0, 0.2))   # not a wait: the kill lands at a random moment
        server.kill9()
        stop.set()
        for t in threads:
            t.join(60)
        self.assertEqual(broke, [])
        self.assertFalse(any(t.is_alive() for t in threads))
        still_running = sum(1 for k in acked if len(acked[k]["post"]) < 10_000)
        self.assertEqual(still_running, self.CLIENTS, "the stream ended before the kill")

        server.start()
        c = Conn(server.port)
        for k, mine in acked.items():
            for name in mine["register"]:
                self.assertEqual(c.request(f"register {name} other"),
                                 {"status": 1, "message": f"{name} is already used"})
        # sessions are journaled: the old tokens still work; locate finds a new app server
        where = c.request(f"locate {tok['a0']}")
        self.assertEqual(where["status"], 0, where)
        c.close()
        v = Conn(where["app_server"])
        groups = set(v.request(f"list-group {tok['a0']}")["group"])
        for k, mine in acked.items():
            a, b = tok[f"a{k}"], tok[f"b{k}"]
            posts = [p["message"] for p in v.request(f"receive-post {b}")["post"] if p["id"] == f"a{k}"]
            self.assertEqual(posts[:len(mine["post"])], mine["post"], f"a{k}'s posts")
            self.assertLessEqual(set(mine["group"]), groups)
            joined = v.request(f"list-joined {b}")["group"]
            self.assertLessEqual(set(mine["join"]), set(joined), f"b{k}'s groups")
            friends = v.request(f"list-friend {a}")["friend"]
            self.assertLessEqual({f"b{k}"} | set(mine["accept"]), set(friends), f"a{k}'s friends")
            for name in set(mine["invite"]) - set(mine["accept"]):
                # invited, acceptance not acknowledged: still invited, or accepted
                self.assertIn(v.request(f"invite {a} {name}")["message"],
                              ("Already invited", f"{name} is already your friend"))
        v.close()
        counts = {kind: sum(len(m[kind]) for m in acked.values()) for kind in acked[0]}
        self.assertTrue(all(counts.values()), counts)    # every kind of write was in the stream


# ----------------------------------------------------------------------------------------
class AppServerCrashTest(unittest.TestCase):
    def failover(self, strict):
        users = {f"k{i}": f"pw{i}" for i in range(10)}
        server = with_accounts(LoginServer("--idle-timeout", "600"), users).start()
        self.addCleanup(server.cleanup)
        client = Client(server.port)
        self.addCleanup(client.close)
        for name, pw in users.items():
            self.assertEqual(client.say(f"login {name} {pw}"), "Success!")
        for i in range(9):
            self.assertEqual(client.say(f"invite k{i} k{i + 1}"), "Success!")
        k0 = login_many(server.port, {"k0": "pw0"})["k0"]     # same token, same app server
        (old,) = server.app_pids()               # 10 users: one app server, full
        os.kill(old, signal.SIGKILL)
        self.assertTrue(wait_for(lambda: old not in server.app_pids(), timeout=20))
        if not strict:
            # What a client does when its app server is gone: ask the login
            # server where to go (`locate`), until it names a new server (it
            # answers once that one is ready). Only then do the users type.
            def moved():
                c = Conn(server.port, timeout=60)
                try:
                    return c.request(f"locate {k0['token']}").get("app_server") not in (None, k0["app_server"])
                finally:
                    c.close()
            self.assertTrue(wait_for(moved, timeout=60, interval=0.2), "no new app server")
        # each user's next command goes through, on a new server, unnoticed
        for i in range(10):
            self.assertEqual(client.say(f"list-invite k{i}"), f"k{i - 1}" if i else "No invitations")
        self.assertEqual(client.say("accept-invite k1 k0"), "Success!")
        self.assertEqual(client.say("list-friend k0"), "k1")
        new = server.app_pids()
        self.assertEqual(len(new), 1)
        self.assertNotIn(old, new)

    def test_kill_9_of_an_app_server_with_10_users(self):
        self.failover(strict=False)

    def test_kill_9_of_an_app_server_next_command_at_once(self):
        """The users' next commands come the very moment the server dies:
        before the login server has noticed (locate still names the dead
        server), and while the new one registers."""
        for _ in range(5):
            self.failover(strict=True)


# ----------------------------------------------------------------------------------------
@unittest.skipUnless(os.path.exists(ACTIVEMQ), "no broker setup script")
class BrokerRestartTest(unittest.TestCase):
    @disturbs_broker
    def test_no_acknowledged_send_is_lost_across_a_broker_restart(self):
        server = with_accounts(LoginServer("--idle-timeout", "600"), {"ann": "pw", "ben": "pw"}).start()
        self.addCleanup(server.cleanup)
        ben = Client(server.port)                 # the recipient: a real client, listening
        self.addCleanup(ben.close)
        self.assertEqual(ben.say("login ben pw"), "Success!")
        ann = login_many(server.port, {"ann": "pw"})["ann"]
        c = Conn(ann["app_server"], timeout=60)
        self.assertEqual(c.request(f"invite {ann['token']} ben"), SUCCESS)
        self.assertEqual(ben.say("accept-invite ben ann"), "Success!")
        self.assertEqual(c.request(f"send {ann['token']} ben probe"), SUCCESS)
        self.assertTrue(wait_for(lambda: "<<<ann->ben: probe>>>" in ben.chat, timeout=20))

        acked, refused = [], []
        restarted = threading.Event()
        after = []
        stop = threading.Event()

        def stream():
            i = 0
            while not stop.is_set() and i < 5000:
                reply = c.request(f"send {ann['token']} ben m{i}")
                (acked if reply == SUCCESS else refused).append(i)
                if reply == SUCCESS and restarted.is_set():
                    after.append(i)
                i += 1
                time.sleep(0.01)   # not a wait: the stream's pace, sends keep coming through the restart

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        try:
            self.assertTrue(wait_for(lambda: len(acked) >= 30, timeout=30))
            own_broker().restart()
            restarted.set()
            # the app server reconnects by itself: sends succeed again
            self.assertTrue(wait_for(lambda: len(after) >= 30, timeout=60), "no send succeeded after the restart")
        finally:
            stop.set()
            t.join(60)
            c.close()
        self.assertFalse(t.is_alive())
        want = {f"<<<ann->ben: m{i}>>>" for i in acked}
        # ben's app server reconnects and subscribes again; the broker delivers
        # what it kept (and again what it had not had acknowledged)
        wait_for(lambda: want <= set(ben.chat), timeout=60, interval=0.2)
        missing = sorted(want - set(ben.chat), key=lambda s: int(s.split(": m")[1][:-3]))
        self.assertEqual(missing, [], f"{len(missing)} of {len(acked)} acknowledged sends lost "
                                      f"({len(refused)} refused while the broker was down)")
        # once each: a redelivered message is not printed again (a send refused
        # while the broker was down may still have been stored: once at most)
        twice = sorted(line for line, n in collections.Counter(ben.chat).items() if n > 1)
        self.assertEqual(twice, [], "printed more than once")


# ----------------------------------------------------------------------------------------
FUZZ_SEED = 20261122
FUZZ_COUNT = 10_000
WS = [b" ", b"\t", b"  ", b"\r", b"\x0b", b"\x0c", b"\xc2\xa0", b"\xe2\x80\x83"]
ODD = [b"\x00", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x9f\x98\x80", b"\xe2\x80\xae", b"<", b">",
       b"#", b"->", b"\\", b'"', b"{", b"}", b"%s", b"\x1b[2J", b"\n"]


def mutate(rng, base):
    """One malformed variant of `base` (bytes)."""
    data = bytearray(base)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(9)
        pos = rng.randint(0, len(data))
        if op == 0 and data:                                   # flip bytes
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1:                                          # insert odd bytes
            data[pos:pos] = rng.choice(ODD) * rng.randint(1, 3)
        elif op == 2 and data:                                 # delete a slice
            del data[pos:pos + rng.randint(1, 12)]
        elif op == 3:                                          # odd white space
            data[pos:pos] = rng.choice(WS)
        elif op == 4:                                          # truncate
            del data[pos:]
        elif op == 5:                                          # repeat a slice
            data[pos:pos] = data[pos:pos + rng.randint(1, 20)] * rng.randint(2, 50)
        elif op == 6:                                          # a huge word
            data[pos:pos] = b"x" * rng.choice((100, 4000, 8200, 9000, 20000))
        elif op == 7:                                          # random bytes
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        else:                                                  # shuffle the words
            words = bytes(data).split(b" ")
            rng.shuffle(words)
            data = bytearray(b" ".join(words))
    return bytes(data)


def slow_on_login_server(item):
    """Would the login server hash a password for this (register/login with
    exactly two arguments)? Those cost ~50 ms of scrypt each; the fuzzer
    leaves them out so 10,000 requests stay quick."""
    for line in item.split(b"\n"):
        try:
            words = line.decode("utf-8").split()
        except UnicodeDecodeError:
            continue
        if len(words) == 3 and words[0] in ("register", "login"):
            return True
    return False


def tcp_corpus(rng, token, count, login_server):
    bad = "A" * 22
    bases = ["register", "register onlyone", "register a b c", "login", "login x", "login a b c",
             f"logout {bad}", f"delete {bad}", f"logout {token} extra", f"delete {token} extra",
             f"invite {token} nobody", f"invite {token}", f"list-invite {token}", f"accept-invite {token} zz",
             f"list-friend {token}", f"post {token} hello there world", f"receive-post {token}",
             f"send {token} nobody hi there", f"create-group {token} grp", f"list-group {token}",
             f"list-joined {token}", f"join-group {token} grp", f"send-group {token} grp hello all",
             f"locate {token}", "list-friend", "exit", "logi", "reg", "unknown-command x y"]
    bases = [b.encode() for b in bases]
    items = []
    while len(items) < count:
        kind = rng.random()
        if kind < 0.25:
            item = bytes(rng.randrange(256) for _ in range(rng.randint(0, 120)))
        elif kind < 0.3:
            item = bytes(rng.randrange(256) for _ in range(rng.randint(8190, 9000)))
        else:
            item = mutate(rng, rng.choice(bases))
        if login_server and slow_on_login_server(item):
            continue
        items.append(item + b"\n")
    return items


def fuzz_tcp(address, items, conns=4):
    """Pipeline `items` over a few connections, each closed by a sentinel
    request; every reply must be a JSON object with status 0 or 1. Returns
    (replies, problems)."""
    chunks = [items[i::conns] for i in range(conns)]
    got, problems = [0] * conns, []

    def one(k):
        sentinel = f"sentinel-{k}"
        s = socket.create_connection(address, timeout=60)
        payload = b"".join(chunks[k]) + f"\n{sentinel}\n".encode()
        writer = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
        writer.start()
        buf = b""
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    problems.append(f"connection {k} closed before its sentinel")
                    return
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    got[k] += 1
                    try:
                        reply = json.loads(line)
                        assert reply["status"] in (0, 1)
                    except Exception:
                        problems.append(line[:200])
                        continue
                    if reply.get("message") == f"Unknown command {sentinel}":
                        return
        except OSError as e:
            problems.append(f"connection {k}: {e}")
        finally:
            writer.join(60)
            s.close()

    threads = [threading.Thread(target=one, args=(k,)) for k in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return sum(got), problems


class FuzzTest(unittest.TestCase):
    def test_10000_malformed_requests_to_each_server(self):
        server = with_accounts(LoginServer("--idle-timeout", "600"), {"fz1": "pw", "fz2": "pw"}).start()
        self.addCleanup(server.cleanup)
        logins = login_many(server.port, {"fz1": "pw", "fz2": "pw"})
        tok, app = logins["fz1"]["token"], logins["fz1"]["app_server"]
        rng = random.Random(FUZZ_SEED)
        for where, address, login_server in (("login server", ("127.0.0.1", server.port), True),
                                             ("app server", (app.rsplit(":", 1)[0], int(app.rsplit(":", 1)[1])), False)):
            with self.subTest(server=where):
                items = tcp_corpus(rng, tok, FUZZ_COUNT, login_server)
                replies, problems = fuzz_tcp(address, items)
                self.assertEqual(problems, [])
                self.assertGreater(replies, FUZZ_COUNT // 2)
                self.assertIsNone(server.proc.poll(), "the login server died")
        # both still up and answering a well-formed request
        self.assertEqual(len(server.app_pids()), 1)
        c = Conn(server.port, timeout=30)
        again = c.request("login fz2 pw")
        self.assertEqual((again["status"], again["token"]), (0, logins["fz2"]["token"]))
        self.assertEqual(c.request("list-friend"), {"status": 1, "message": "Not login yet"})
        c.close()
        a = Conn(app, timeout=30)
        self.assertEqual(a.request(f"list-friend {logins['fz2']['token']}"), {"status": 0, "friend": []})
        a.close()

    def test_10000_malformed_datagrams_to_the_hub(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        users = os.path.join(tmp.name, "users.txt")
        with open(users, "w") as f:
            f.write("fz fzpw\nfy fypw\nok1 pw1\nok2 pw2\n")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log = open(os.path.join(tmp.name, "hub.log"), "wb")
        self.addCleanup(log.close)
        hub = subprocess.Popen([PYTHON, os.path.join(ROOT, "udp_hub.py"), "127.0.0.1", str(port),
                                "--users", users], stdout=log, stderr=log, cwd=tmp.name)

        def stop_hub():
            if hub.poll() is None:
                hub.terminate()
                hub.wait(10)
        self.addCleanup(stop_hub)
        hub_addr = ("127.0.0.1", port)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.bind(("127.0.0.1", 0))
        me = s.getsockname()[1]

        def exchange(text, want, timeout=10.0):
            """Send `text` (again every second) until a datagram matching `want` arrives."""
            until = time.monotonic() + timeout
            next_send = 0
            while time.monotonic() < until:
                if time.monotonic() >= next_send:
                    s.sendto(text.encode(), hub_addr)
                    next_send = time.monotonic() + 1.0
                s.settimeout(0.2)
                try:
                    got = s.recv(65535).decode("utf-8", "replace")
                except socket.timeout:
                    continue
                m = re.fullmatch(want, got)
                if m:
                    return m
            self.fail(f"no answer matching {want!r} to {text!r}")

        tok = exchange(f"fz->server#login<fzpw><127.0.0.1><{me}>", r"server->fz#Success<(.{6})>")[1]
        tok2 = exchange(f"fy->server#login<fypw><127.0.0.1><{me}>", r"server->fy#Success<(.{6})>")[1]
        bases = [f"fz->server#login<fzpw><127.0.0.1><{me}>", f"fz->server#login<nope><127.0.0.1><{me}>",
                 f"fz->server#login<fzpw><10.0.0.1><{me}>", f"fz->fy#<{tok}><0123456789>hello",
                 f"fz->nobody#<{tok}><0123456789>hello", "fz->fy#<ZZZZZZ><0123456789>hello",
                 f"fy->server#<{tok2}><0123456789>Success: hello", "fz->server#logoff<ZZZZZZ>",
                 "server->fz#Success<abcdef>", f"fz->fy#<{tok}><012345678>short id", "->#", "a->b#c"]
        bases = [b.encode() for b in bases]
        rng = random.Random(FUZZ_SEED + 1)
        sent = 0
        batch = 0
        while sent < FUZZ_COUNT:
            for _ in range(100):
                r = rng.random()
                if r < 0.25:
                    data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
                elif r < 0.28:
                    data = bytes(rng.randrange(256) for _ in range(rng.randint(2000, 4000)))
                else:
                    data = mutate(rng, rng.choice(bases))
                s.sendto(data[:60000], hub_addr)
                sent += 1
            # a marker the hub always answers: it has read the batch and is alive
            batch += 1
            exchange(f"sync{batch}->server#logoff<ZZZZZZ>", rf"server->sync{batch}#Error: token error!")
        self.assertIsNone(hub.poll(), "the hub died")
        # a well-formed exchange between two fresh sessions still works
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for x in (a, b):
            self.addCleanup(x.close)
            x.bind(("127.0.0.1", 0))
            x.settimeout(10)
        a.sendto(f"ok1->server#login<pw1><127.0.0.1><{a.getsockname()[1]}>".encode(), hub_addr)
        ta = re.fullmatch(r"server->ok1#Success<(.{6})>", a.recv(65535).decode())[1]
        b.sendto(f"ok2->server#login<pw2><127.0.0.1><{b.getsockname()[1]}>".encode(), hub_addr)
        tb = re.fullmatch(r"server->ok2#Success<(.{6})>", b.recv(65535).decode())[1]
        a.sendto(f"ok1->ok2#<{ta}><5550001234>still alive".encode(), hub_addr)
        self.assertEqual(a.recv(65535).decode(), f"server->ok1#<{ta}><5550001234>Success: still alive")
        self.assertEqual(b.recv(65535).decode(), f"ok1->ok2#<{tb}><5550001234>still alive")
        b.sendto(f"ok2->server#<{tb}><5550001234>Success: still alive".encode(), hub_addr)


if __name__ == "__main__":
    unittest.main()
