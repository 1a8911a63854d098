"""Bounded data with real processes (issue 11, items 1 and 9).

The issue's attack, within the quotas in force (the defaults): six friends
of the readers post the most posts of the longest length each (made of
control characters, 6 JSON bytes a character), eleven users create the most
groups each with 64-character names, then five readers ask for
receive-post / list-group / list-joined over and over while legitimate
users go on with their own requests on the same application servers.
Every reply arrives (capped, with its note), no app server is replaced,
and the others are served. Attackers connect from 127.0.0.2, legitimate
users from 127.0.0.1. Also: quotas answer status 1 and write nothing, and
./client prints a hostile post harmlessly.
"""
import os
import socket
import threading
import time
import unittest

from tests.support import Conn, LoginServer, run_client

ATTACKER, LEGIT = "127.0.0.2", "127.0.0.1"
POSTERS = [f"a{i}" for i in range(6)]          # their posts fill the readers' receive-post
READERS = [f"a{i}" for i in range(6, 11)]      # friends of every poster; they hammer
ATTACKERS = POSTERS + READERS                  # every attacker also makes the most groups
USERS = [f"u{i}" for i in range(4)]            # legitimate; u0 is a friend of the posters too
MAX_POSTS, MAX_LENGTH, MAX_GROUPS_PER_USER, MAX_ITEMS = 200, 1000, 100, 1000   # the defaults
POST = ("\x1b[2J\x1b[H" + "\x01" * MAX_LENGTH)[:MAX_LENGTH]
ROUNDS, ATTACK_FOR = 4, 90.0                   # each reader's rounds; a ceiling on the attack
LEGIT_MIN, LEGIT_MAX = 20, 5000                # each legitimate user's requests: until the readers end
FAKE_PROMPT = "\x1b[2J\x1b[H\u2026re-enter password:"


def group_name(owner, i):
    """64 characters (the name rule's most): Han letters, the owner, a number."""
    return "\u7fa4" * 56 + f"{owner[1:]:>2}n{i:05d}".replace(" ", "0")


class From(Conn):
    """A Conn whose source address is `source` (attackers: 127.0.0.2)."""

    def __init__(self, address, source, timeout=60.0):
        host, _, port = address.rpartition(":") if isinstance(address, str) else ("127.0.0.1", "", address)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout, source_address=(source, 0))
        self.buf = b""


def in_parallel(work, items):
    """Run work(item) on a thread per item; the first exception is raised here."""
    errors = []

    def run(item):
        try:
            work(item)
        except BaseException as e:   # re-raised in the calling thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(item,), daemon=True) for item in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ATTACK_FOR * 2)
    if any(t.is_alive() for t in threads):
        raise AssertionError("a worker did not finish")
    if errors:
        raise errors[0]


class HostileDataTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = LoginServer()
        everyone = ATTACKERS + USERS + ["mallory", "victim"]
        with open(os.path.join(cls.server.data, "users.txt"), "w") as f:
            f.writelines(f"{name} pw\n" for name in everyone)   # plain passwords: no scrypt to wait for
        cls.server.start()
        try:
            cls.build()
        except BaseException:
            cls.server.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()

    @classmethod
    def build(cls):
        cls.tok, cls.app = {}, {}
        # attackers and legitimate users share both app servers (capacity 10, the fullest
        # first): a0-a4 u0 u1 a5 a6 a7 on one, a8-a10 u2 u3 on the other
        order = POSTERS[:5] + ["u0", "u1"] + POSTERS[5:] + READERS + ["u2", "u3"]
        for name in order:
            source = LEGIT if name in USERS else ATTACKER
            c = From(cls.server.port, source)
            reply = c.request(f"login {name} pw")
            c.close()
            assert reply["status"] == 0, (name, reply)
            cls.tok[name], cls.app[name] = reply["token"], reply["app_server"]
        cls.ask("u1", "invite", "u2")
        cls.ask("u2", "accept-invite", "u1")
        for poster in POSTERS:
            for friend in READERS + ["u0"]:
                cls.ask(poster, "invite", friend)
                cls.ask(friend, "accept-invite", poster)

        def fill(name):
            c = cls.conn(name)
            try:
                if name in POSTERS:
                    for _ in range(MAX_POSTS + 5):      # 5 more than kept: the oldest go
                        assert c.request(f"post {cls.tok[name]} {POST}")["status"] == 0
                for i in range(MAX_GROUPS_PER_USER):
                    reply = c.request(f"create-group {cls.tok[name]} {group_name(name, i)}")
                    assert reply["status"] == 0, reply
            finally:
                c.close()
        in_parallel(fill, ATTACKERS)
        cls.ask("u2", "post", "hello")

    @classmethod
    def conn(cls, name):
        return From(cls.app[name], LEGIT if name in USERS else ATTACKER)

    @classmethod
    def ask(cls, name, command, *args):
        c = cls.conn(name)
        try:
            reply = c.request(" ".join([command, cls.tok[name], *args]))
        finally:
            c.close()
        assert reply["status"] == 0, (name, command, reply)
        return reply

    def journal_size(self):
        return os.path.getsize(os.path.join(self.server.data, "journal.log"))

    def test_over_a_quota_status_1_and_nothing_written(self):
        a = self.conn("a0")
        self.addCleanup(a.close)
        t, too_long = self.tok["a0"], f"Post too long: at most {MAX_LENGTH} characters"
        mine, theirs = group_name("a0", 0), group_name("a1", 0)
        before = self.journal_size()
        for line, want in ((f"post {t} " + "x" * (MAX_LENGTH + 1), too_long),
                           (f"post {t} " + "\u00fc" * (MAX_LENGTH + 1), too_long),
                           (f"send-group {t} {mine} " + "m" * (MAX_LENGTH + 1),
                            f"Message too long: at most {MAX_LENGTH} characters"),
                           (f"create-group {t} one-more", "You are in too many groups: at most 100"),
                           (f"join-group {t} {theirs}", "You are in too many groups: at most 100"),
                           (f"create-group {t} " + "n" * 65, "Invalid group name: at most 64 characters"),
                           (f"create-group {t} {theirs}", f"{theirs} already exist")):
            with self.subTest(line=line[:40]):
                self.assertEqual(a.request(line), {"status": 1, "message": want})
        self.assertEqual(self.journal_size(), before)
        # the trim: each poster keeps its newest MAX_POSTS
        u0 = self.conn("u0")
        self.addCleanup(u0.close)
        posts = u0.request(f"receive-post {self.tok['u0']}")
        self.assertEqual(len(posts["post"]), MAX_ITEMS)
        self.assertEqual(posts["note"], f"(only {MAX_ITEMS} of {MAX_POSTS * len(POSTERS)} posts shown: "
                                        "the newest of each friend)")

    def test_every_reply_arrives_and_no_server_is_taken_away(self):
        pids = sorted(self.server.app_pids())
        self.assertGreaterEqual(len(pids), 2)
        shared = {self.app[n] for n in READERS} & {self.app[n] for n in USERS}
        self.assertEqual(len(shared), 2, "readers and legitimate users should share both app servers")
        total_groups = MAX_GROUPS_PER_USER * len(ATTACKERS)
        expected = {
            "receive-post": ("post", MAX_ITEMS, f"(only {MAX_ITEMS} of {MAX_POSTS * len(POSTERS)} posts "
                                                "shown: the newest of each friend)"),
            "list-group": ("group", MAX_ITEMS, f"(only the last {MAX_ITEMS} of {total_groups} groups shown)"),
            "list-joined": ("group", MAX_GROUPS_PER_USER, None),
        }
        deadline = time.monotonic() + ATTACK_FOR
        big, served, slowest = [], [], [0.0]
        during = []                   # legitimate replies received while some reader was still at it
        readers_left = [len(READERS)]
        lock = threading.Lock()

        def read(name):
            c = self.conn(name)
            try:
                for _ in range(ROUNDS):
                    for command, (key, count, note) in expected.items():
                        if time.monotonic() > deadline:
                            return
                        reply = c.request(f"{command} {self.tok[name]}")
                        self.assertEqual((reply["status"], len(reply[key]), reply.get("note")), (0, count, note),
                                         f"{name} {command}: {str(reply)[:200]}")
                        with lock:
                            big.append(command)
            finally:
                c.close()
                with lock:
                    readers_left[0] -= 1

        def use(name):
            c = self.conn(name)
            try:
                for i in range(LEGIT_MAX):
                    if i >= LEGIT_MIN and (not readers_left[0] or time.monotonic() > deadline):
                        return
                    line, want = ((f"list-friend {self.tok[name]}", None) if i % 3 else
                                  (f"post {self.tok[name]} still here {i}", "Success!"))
                    if name == "u0" and i % 10 == 9:
                        line, want = f"receive-post {self.tok[name]}", None   # a legitimate big reply too
                    start = time.monotonic()
                    reply = c.request(line)
                    with lock:
                        slowest[0] = max(slowest[0], time.monotonic() - start)
                        served.append(reply)
                        if readers_left[0]:
                            during.append(reply)
                    self.assertEqual(reply["status"], 0, f"{name}: {reply}")
                    if want:
                        self.assertEqual(reply["message"], want)
            finally:
                c.close()

        in_parallel(lambda job: job[0](job[1]), [(read, n) for n in READERS] + [(use, n) for n in USERS])
        self.assertGreaterEqual(len(big), len(READERS) * len(expected), "the readers hardly started")
        self.assertGreaterEqual(len(served), LEGIT_MIN * len(USERS))
        self.assertGreaterEqual(len(during), LEGIT_MIN, "the legitimate users were not served during the attack")
        self.assertLess(slowest[0], 30.0, "a legitimate request waited for the attack")
        self.assertEqual(sorted(self.server.app_pids()), pids, "an app server was replaced")
        self.assertIsNone(self.server.proc.poll(), "the login server died")
        for name in USERS:    # still served afterwards, where they were
            self.assertEqual(self.ask(name, "list-joined")["group"], [])

    def test_the_client_prints_a_hostile_post_harmlessly(self):
        out = run_client(self.server.port, "\n".join([
            "login mallory pw", "login victim pw", "invite mallory victim", "accept-invite victim mallory",
            f"post mallory {FAKE_PROMPT}", "receive-post victim", "list-friend victim", ""]))
        self.assertEqual(out, "Success!\n" * 5 +
                         "mallory: \\x1b[2J\\x1b[H\u2026re-enter password:\nmallory\n")
        self.assertNotIn("\x1b", out)


if __name__ == "__main__":
    unittest.main()
