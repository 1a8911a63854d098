"""Bounded data without sockets (issue 11, item 1): every quota's exact
message and its place after the command's other checks, nothing written
over a quota, the per-user post trim replaying alike under other limits,
and list replies cut to `max_list_items` with a note."""
import json
import random
import shutil
import tempfile
import unittest

from lib.social import commands, quotas, snapshot
from lib.social.limits import Limits
from lib.social.protocol import Server
from lib.social.store import Store
from tests.pure.test_social import World


def tight(**changes):
    return Limits(**{"max_post_length": 10, "max_posts_per_user": 3, "max_groups": 4,
                     "max_groups_per_user": 2, "max_list_items": 3, **changes})


class QuotaWorld(World):
    def refused(self, line, want):
        """`line` is answered status 1 `want`, with no mutation and no effect."""
        before = json.dumps(snapshot.state_to_json(self.state, 0), sort_keys=True)
        out = self.run(line)
        assert out.reply == {"status": 1, "message": want}, (line, out.reply)
        assert (out.mutations, out.effect) == ([], None), (line, out)
        assert json.dumps(snapshot.state_to_json(self.state, 0), sort_keys=True) == before, line


class MessageLengthTest(unittest.TestCase):
    def setUp(self):
        self.w = QuotaWorld("alice", "bob", "carol", "dave", online=("alice", "bob", "carol"),
                            limits=tight())
        self.w.login("dave")
        for line in ("invite {alice} bob", "accept-invite {bob} alice", "invite {alice} dave",
                     "accept-invite {dave} alice", "create-group {alice} g"):
            self.w.run(line)
        self.w.run("logout {dave}", Server.LOGIN)       # dave: a friend, offline

    def test_post(self):
        w = self.w
        self.assertEqual(w.msg("post {alice}"), "Usage: post <user> <message>")   # usage first
        self.assertEqual(w.msg("post nobody " + "x" * 11), "Not login yet")
        w.refused("post {alice} " + "x" * 11, "Post too long: at most 10 characters")
        w.refused("post {alice} aaaa  bbbbbb", "Post too long: at most 10 characters")  # words joined by one space
        self.assertEqual(w.msg("post {alice} aaaa     bbbbb"), "Success!")            # 10: allowed
        self.assertEqual(w.msg("post {alice} " + "\u00fc" * 10), "Success!")          # characters, not bytes
        self.assertEqual(w.msg("post {alice} " + "\U0001f600" * 10), "Success!")
        w.refused("post {alice} " + "\u00fc" * 11, "Post too long: at most 10 characters")
        self.assertEqual([p["message"] for p in w.run("receive-post {bob}").reply["post"]],
                         ["aaaa bbbbb", "\u00fc" * 10, "\U0001f600" * 10])

    def test_send_checks_the_length_after_its_own_checks(self):
        w, long = self.w, "y" * 11
        self.assertEqual(w.msg("send {alice} bob"), "Usage: send <user> <friend> <message>")
        for line, want in ((f"send {{alice}} ghost {long}", "No such user exist"),
                           (f"send {{alice}} carol {long}", "carol is not your friend"),
                           (f"send {{alice}} dave {long}", "dave is not online")):
            with self.subTest(line=line):
                w.refused(line, want)
        w.refused(f"send {{alice}} bob {long}", "Message too long: at most 10 characters")
        w.refused("send {alice} bob 12345 12345", "Message too long: at most 10 characters")
        out = w.run("send {alice} bob 1234 1234")
        self.assertEqual((out.reply["message"], type(out.effect)), ("Success!", commands.Publish))

    def test_send_group_checks_the_length_after_its_own_checks(self):
        w, long = self.w, "z" * 11
        self.assertEqual(w.msg("send-group {alice} g"), "Usage: send-group <user> <group> <message>")
        w.refused(f"send-group {{alice}} nope {long}", "No such group exist")
        w.refused(f"send-group {{carol}} g {long}", "You are not the member of g")
        w.refused(f"send-group {{alice}} g {long}", "Message too long: at most 10 characters")
        out = w.run("send-group {alice} g " + "z" * 10)
        self.assertEqual((out.reply["message"], type(out.effect)), ("Success!", commands.Publish))


class GroupQuotaTest(unittest.TestCase):
    def test_groups_in_all(self):
        w = QuotaWorld("alice", "bob", "carol", online=("alice", "bob", "carol"), limits=tight())
        for line in ("create-group {alice} g1", "create-group {alice} g2",
                     "create-group {bob} g3", "create-group {carol} g4"):
            self.assertEqual(w.msg(line), "Success!")
        w.refused("create-group {bob} g5", "Too many groups: at most 4")
        # usage, the name rule and `already exist` come first
        self.assertEqual(w.msg("create-group {bob} g5 x"), "Usage: create-group <user> <group>")
        w.refused("create-group {bob} " + "n" * 65, "Invalid group name: at most 64 characters")
        w.refused("create-group {bob} #g5", "Invalid group name: `#`, `<` and `>` are not allowed")
        w.refused("create-group {bob} g1", "g1 already exist")
        # in all beats per user; joining is not creating
        w.refused("create-group {alice} g5", "Too many groups: at most 4")
        self.assertEqual(w.msg("join-group {bob} g1"), "Success!")
        self.assertEqual(w.run("list-joined {bob}").reply, {"status": 0, "group": ["g3", "g1"]})

    def test_groups_per_user_create_and_join(self):
        w = QuotaWorld("alice", "bob", online=("alice", "bob"), limits=tight(max_groups=100))
        self.assertEqual(w.msg("create-group {alice} a1"), "Success!")
        self.assertEqual(w.msg("create-group {bob} b1"), "Success!")
        self.assertEqual(w.msg("join-group {alice} b1"), "Success!")
        w.refused("create-group {alice} a2", "You are in too many groups: at most 2")
        self.assertEqual(w.msg("create-group {bob} b2"), "Success!")
        w.refused("join-group {alice} b2", "You are in too many groups: at most 2")
        # `does not exist` and `Already a member` come first
        self.assertEqual(w.msg("join-group {alice}"), "Usage: join-group <user> <group>")
        w.refused("join-group {alice} nope", "nope does not exist")
        w.refused("join-group {alice} a1", "Already a member of a1")
        self.assertNotIn("alice", w.state.groups["b2"].members)
        self.assertEqual(list(w.state.users["alice"].joined), ["a1", "b1"])

    def test_the_defaults(self):
        w = QuotaWorld("alice", online=("alice",))
        limits = Limits()
        self.assertEqual((limits.max_post_length, limits.max_groups_per_user), (1000, 100))
        self.assertEqual(w.msg("post {alice} " + "p" * 1000), "Success!")
        w.refused("post {alice} " + "p" * 1001, "Post too long: at most 1000 characters")
        for i in range(100):
            w.run(f"create-group {{alice}} g{i}")
        w.refused("create-group {alice} g100", "You are in too many groups: at most 100")


class PostTrimTest(unittest.TestCase):
    """Each user keeps their newest `max_posts_per_user` posts; the limit in
    force when a post is made is journaled with it, so a replay under other
    limits (or none) rebuilds the same posts."""

    def world(self):
        w = World("alice", "bob", online=("alice", "bob"), limits=tight(max_posts_per_user=3))
        w.run("invite {alice} bob")
        w.run("accept-invite {bob} alice")
        for i in range(5):
            self.assertEqual(w.msg(f"post {{alice}} p{i}"), "Success!")
        return w

    def test_the_oldest_go(self):
        w = self.world()
        self.assertEqual([p["message"] for p in w.run("receive-post {bob}").reply["post"]],
                         ["p2", "p3", "p4"])
        self.assertEqual(w.state.users["alice"].posts, ["p2", "p3", "p4"])
        self.assertIn(("post", "alice", "p4", 3), w.journal)

    def test_a_limit_changed_later_applies_from_the_next_post(self):
        w = self.world()
        w.ctx.limits = tight(max_posts_per_user=10)        # restarted with a higher limit
        w.run("post {alice} p5")
        self.assertEqual(w.state.users["alice"].posts, ["p2", "p3", "p4", "p5"])
        w.ctx.limits = tight(max_posts_per_user=2)         # and with a lower one
        w.run("post {alice} p6")
        self.assertEqual(w.state.users["alice"].posts, ["p5", "p6"])
        self.check_replay(w)

    def test_replay_under_other_limits_rebuilds_the_same_state(self):
        self.check_replay(self.world())

    def check_replay(self, w):
        want = snapshot.state_to_json(w.state, 0)
        for limits in (Limits(), tight(max_posts_per_user=1), tight(max_posts_per_user=1000)):
            with self.subTest(limits=limits.max_posts_per_user):
                fresh = commands.State()
                for mutation in w.journal:
                    commands.apply(fresh, mutation)
                self.assertEqual(snapshot.state_to_json(fresh, 0), want)
        # and through the journal's JSON, on real files
        data = tempfile.mkdtemp(prefix="np-quota-")
        self.addCleanup(shutil.rmtree, data, True)
        store = Store(data, fsync=False).open()
        store.record(w.journal)
        store.commit()
        store.close()
        again = Store(data, fsync=False).open()
        self.addCleanup(again.close)
        self.assertEqual(snapshot.state_to_json(again.state, 0), want)

    def test_a_post_journaled_before_the_limit_is_kept(self):
        state = commands.State()
        commands.apply(state, ("register", "a", "pw"))
        for i in range(5):
            commands.apply(state, ("post", "a", f"old{i}"))     # the old record: no limit in it
        self.assertEqual(len(state.users["a"].posts), 5)
        commands.apply(state, ("post", "a", "new", 2))
        self.assertEqual(state.users["a"].posts, ["old4", "new"])


class ListCapTest(unittest.TestCase):
    def test_lists_keep_the_last_items_and_say_so(self):
        w = World("alice", "bob", "c1", "c2", "c3", "c4", online=("alice", "bob", "c1", "c2", "c3", "c4"),
                  limits=tight(max_groups=100, max_groups_per_user=100))
        self.assertEqual(w.run("list-group {alice}").reply, {"status": 0, "group": []})
        for g in ("g1", "g2", "g3"):
            w.run(f"create-group {{alice}} {g}")
        self.assertEqual(w.run("list-group {bob}").reply, {"status": 0, "group": ["g1", "g2", "g3"]})
        w.run("create-group {bob} g4")
        w.run("create-group {bob} g5")
        self.assertEqual(w.run("list-group {bob}").reply,
                         {"status": 0, "group": ["g3", "g4", "g5"],
                          "note": "(only the last 3 of 5 groups shown)"})
        for g in ("g1", "g2", "g4", "g5"):
            w.run(f"join-group {{c1}} {g}")
        self.assertEqual(w.run("list-joined {c1}").reply,
                         {"status": 0, "group": ["g2", "g4", "g5"],
                          "note": "(only the last 3 of 4 groups shown)"})
        for c in ("c1", "c2", "c3", "c4"):
            w.run(f"invite {{{c}}} alice")
        self.assertEqual(w.run("list-invite {alice}").reply,
                         {"status": 0, "invite": ["c2", "c3", "c4"],
                          "note": "(only the last 3 of 4 invitations shown)"})
        for c in ("c1", "c2", "c3", "c4"):
            w.run(f"accept-invite {{alice}} {c}")
        self.assertEqual(w.run("list-friend {alice}").reply,
                         {"status": 0, "friend": ["c2", "c3", "c4"],
                          "note": "(only the last 3 of 4 friends shown)"})
        self.assertEqual(w.run("list-friend {c1}").reply, {"status": 0, "friend": ["alice"]})

    def test_receive_post_keeps_each_friends_newest_in_fair_shares(self):
        w = World("me", "f1", "f2", "f3", online=("me", "f1", "f2", "f3"),
                  limits=tight(max_list_items=7, max_posts_per_user=100, max_post_length=100))
        for f in ("f1", "f2", "f3"):
            w.run(f"invite {{me}} {f}")
            w.run(f"accept-invite {{{f}}} me")
        w.run("post {f1} a0")
        for i in range(10):
            w.run(f"post {{f2}} b{i}")
            w.run(f"post {{f3}} c{i}")
        reply = w.run("receive-post {me}").reply
        self.assertEqual([(p["id"], p["message"]) for p in reply["post"]],
                         [("f1", "a0"), ("f2", "b7"), ("f2", "b8"), ("f2", "b9"),
                          ("f3", "c7"), ("f3", "c8"), ("f3", "c9")])
        self.assertEqual(reply["note"], "(only 7 of 21 posts shown: the newest of each friend)")
        w.ctx.limits = tight(max_list_items=21)
        self.assertNotIn("note", w.run("receive-post {me}").reply)
        self.assertEqual(len(w.run("receive-post {me}").reply["post"]), 21)
        w.ctx.limits = tight(max_list_items=2)     # fewer slots than friends: the first friends
        self.assertEqual([p["message"] for p in w.run("receive-post {me}").reply["post"]], ["a0", "b9"])

    def test_fair_shares(self):
        cases = {((5, 5, 5), 7): [3, 2, 2], ((1, 10, 10), 7): [1, 3, 3], ((0, 9, 2), 6): [0, 4, 2],
                 ((200,) * 6, 1000): [167, 167, 167, 167, 166, 166], ((3, 1), 1): [1, 0]}
        for (counts, n), want in cases.items():
            self.assertEqual(quotas.fair_shares(list(counts), n), want, (counts, n))
        rnd = random.Random(11)
        for _ in range(300):
            counts = [rnd.randrange(0, 30) for _ in range(rnd.randrange(1, 12))]
            if sum(counts) < 2:
                continue
            n = rnd.randrange(1, sum(counts))
            shares = quotas.fair_shares(counts, n)
            self.assertEqual(sum(shares), n)
            self.assertTrue(all(0 <= s <= c for s, c in zip(shares, counts)))
            cut = [s for s, c in zip(shares, counts) if s < c]   # every friend cut gets the most
            self.assertLessEqual(max(shares) - min(cut), 1, (counts, n, shares))

    def test_the_worst_reply_the_defaults_allow_is_bounded(self):
        friends = [f"f{i}" for i in range(8)]
        w = World("me", *friends, online=("me", *friends))
        for f in friends:
            w.run(f"invite {{me}} {f}")
            w.run(f"accept-invite {{{f}}} me")
            for i in range(201):
                w.run(f"post {{{f}}} " + "\x01" * 1000)
        reply = w.run("receive-post {me}").reply
        self.assertEqual(len(reply["post"]), 1000)
        self.assertEqual(reply["note"], "(only 1000 of 1600 posts shown: the newest of each friend)")
        self.assertLess(len(json.dumps(reply)), 6_100_000)   # \u0001: 6 bytes a character


if __name__ == "__main__":
    unittest.main()
