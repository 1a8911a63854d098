"""The store's recovery rules, on real files (no server)."""
import os
import shutil
import tempfile
import unittest

from lib.store import Store


class StoreTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.dir)

    def crash(self, store):
        """Drop the store without close(): what kill -9 leaves behind."""
        store._lock.close()

    def test_replay_rebuilds_state_after_a_crash(self):
        s = Store(self.dir).open()
        s.record([("register", "a", "x"), ("register", "b", "y"), ("invite", "a", "b"),
                  ("accept", "a", "b"), ("post", "a", "hi"), ("create_group", "g", "b", "/topic/t")])
        s.commit()
        self.crash(s)
        s2 = Store(self.dir).open()
        b = s2.state.users["b"]
        self.assertEqual((b.friends(), list(b.joined), s2.state.users["a"].posts), (["a"], ["g"], ["hi"]))
        s2.close()

    def test_uncommitted_writes_are_not_on_disk(self):
        s = Store(self.dir).open()
        s.record([("register", "a", "x")])
        self.crash(s)                        # never committed: never acknowledged
        self.assertNotIn("a", Store(self.dir).open().state.users)

    def test_snapshot_then_journal(self):
        s = Store(self.dir, snapshot_every=200).open()
        for i in range(20):
            s.record([("register", f"u{i}", "p")])
            s.commit()
        self.assertTrue(os.path.exists(os.path.join(self.dir, "snapshot.json")))
        self.assertLess(os.path.getsize(os.path.join(self.dir, "journal.log")), 400)
        s.record([("post", "u1", "after snapshot")])
        s.commit()
        self.crash(s)
        s2 = Store(self.dir).open()
        self.assertEqual(len(s2.state.users), 20)
        self.assertEqual(s2.state.users["u1"].posts, ["after snapshot"])

    def test_users_txt_is_the_authority_on_accounts(self):
        s = Store(self.dir).open()
        s.record([("register", "a", "x"), ("register", "b", "y"), ("invite", "a", "b")])
        s.close()
        path = os.path.join(self.dir, "users.txt")
        with open(path) as f:
            lines = f.read().splitlines()
        with open(path, "w") as f:       # by hand: drop b, add c, change a's password
            f.write("\n".join(l for l in lines if not l.startswith("b ")).replace("a x", "a z") + "\nc w\n")
        s2 = Store(self.dir).open()
        self.assertEqual(sorted(s2.state.users), ["a", "c"])
        self.assertEqual(s2.state.users["a"].password, "z")
        self.assertEqual(s2.state.users["a"].invited, {})   # b's traces are gone


if __name__ == "__main__":
    unittest.main()
