"""The store's recovery rules, on real files (no server)."""
import errno
import json
import os
import shutil
import stat
import tempfile
import time
import unittest
from unittest import mock

from lib.social import snapshot
from lib.social import store as store_module
from lib.social.files import UnsafePath
from lib.loop.process import watch_exit
from lib.loop.reactor import Reactor
from lib.social.store import Store, StoreError, StoreFailure


class StoreTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.dir)

    def crash(self, store):
        """Drop the store without close(): what kill -9 leaves behind."""
        for fd in (store._journal, store._users, store._lock):
            os.close(fd)

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


class WriteFailureTest(unittest.TestCase):
    """A write or fsync that fails must never be acknowledged (docs/durability.md)."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)

    def test_failed_fsync_raises_names_the_file_and_stops_all_writes(self):
        s = Store(self.dir).open()
        s.record([("register", "a", "x")])
        s.commit()
        s.record([("post", "a", "lost")])
        with mock.patch("os.fdatasync", side_effect=OSError(errno.EIO, "Input/output error")):
            with self.assertRaises(StoreFailure) as caught:
                s.commit()
        self.assertIn(os.path.join(self.dir, "journal.log"), str(caught.exception))
        self.assertIn("Input/output error", str(caught.exception))
        s.record([("post", "a", "later")])
        with self.assertRaises(StoreFailure):   # never retried: the page cache is suspect
            s.commit()
        s.close()                                 # no snapshot of unsaved state
        s2 = Store(self.dir).open()
        self.assertEqual(s2.state.users["a"].posts, [])
        s2.close()

    def test_short_write_then_no_space_cuts_the_journal_back(self):
        s = Store(self.dir).open()
        s.record([("register", "a", "x")])
        s.commit()
        size = os.path.getsize(os.path.join(self.dir, "journal.log"))
        real_write, calls = os.write, []

        def half_then_enospc(fd, data):
            calls.append(len(data))
            if len(calls) == 1:
                return real_write(fd, bytes(data[:len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")

        s.record([("post", "a", "p" * 1000)])
        with mock.patch("os.write", half_then_enospc), self.assertRaises(StoreFailure) as caught:
            s.commit()
        self.assertIn("No space left on device", str(caught.exception))
        self.assertEqual(os.path.getsize(os.path.join(self.dir, "journal.log")), size)

    def test_failed_users_txt_append_is_a_failure_too(self):
        s = Store(self.dir).open()
        with mock.patch("lib.social.files.write_all", side_effect=OSError(errno.EDQUOT, "Disk quota exceeded")):
            s.record([("register", "a", "x")])
            with self.assertRaises(StoreFailure) as caught:
                s.commit()
        self.assertIn("users.txt", str(caught.exception))


class SnapshotTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)

    def forked_store(self, reactor, every=2000):
        return Store(self.dir, snapshot_every=every,
                     watch_child=lambda pid, on_exit: watch_exit(reactor, pid, on_exit)).open()

    def turn_until(self, reactor, predicate, timeout=20):
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            reactor.run_once(max_wait=0.05)
        self.assertTrue(predicate())

    def segments(self):
        return sorted(n for n in os.listdir(self.dir) if n.startswith("journal.") and n != "journal.log")

    def test_snapshot_is_written_by_a_child_while_writes_go_on(self):
        r = Reactor()
        s = self.forked_store(r)
        s.record([("register", f"u{i}", "p" * 40) for i in range(60)])
        s.commit()                       # > 2000 bytes: rotate and fork
        self.assertIsNotNone(s._child)
        self.assertNotEqual(s._child, os.getpid())
        snap_seq = s.seq
        s.record([("post", "u1", "during the snapshot")])
        s.commit()                       # the parent keeps writing meanwhile
        self.turn_until(r, lambda: s.snapshots == 1)
        with open(os.path.join(self.dir, "snapshot.json")) as f:
            self.assertEqual(json.load(f)["seq"], snap_seq)
        self.assertEqual(self.segments(), [])           # covered by the snapshot: deleted
        self.crash(s)
        s2 = Store(self.dir).open()
        self.assertEqual(len(s2.state.users), 60)
        self.assertEqual(s2.state.users["u1"].posts, ["during the snapshot"])
        s2.close()

    def test_streamed_snapshot_is_the_same_document(self):
        s = Store(self.dir).open()
        s.record([("register", f"u{i}", 'p"é') for i in range(50)] +
                 [("post", "u1", "ü" * 3000), ("invite", "u1", "u2"), ("accept", "u1", "u2"),
                  ("create_group", "g", "u3", "/topic/t"), ("login", "u4", "digest", "/queue/q")])
        whole = json.dumps(snapshot.state_to_json(s.state, s.seq), ensure_ascii=False)
        for size in (1, 100, 1 << 20):
            streamed = b"".join(snapshot.snapshot_chunks(s.state, s.seq, size=size))
            self.assertEqual(streamed.decode("utf-8"), whole)
        s.close()

    def test_a_failed_snapshot_keeps_every_write_in_the_rotated_journals(self):
        r = Reactor()
        s = self.forked_store(r)
        os.mkdir(os.path.join(self.dir, "snapshot.json"))   # rename onto a directory fails
        s.record([("register", f"u{i}", "p" * 40) for i in range(60)])
        s.commit()
        child = s._child
        self.turn_until(r, lambda: s._child is None)
        self.assertIsNotNone(child)
        self.assertEqual(s.snapshots, 0)
        self.assertEqual(len(self.segments()), 1)
        s.record([("post", "u2", "after")])
        s.commit()
        self.crash(s)
        os.rmdir(os.path.join(self.dir, "snapshot.json"))
        s2 = Store(self.dir).open()
        self.assertEqual((len(s2.state.users), s2.state.users["u2"].posts), (60, ["after"]))
        s2.close()

    def test_a_corrupt_rotated_journal_refuses_to_start(self):
        s = Store(self.dir, snapshot_every=10 ** 9).open()
        s.record([("register", "a", "x")])
        s.commit()
        s._rotate()
        self.crash(s)
        (segment,) = self.segments()
        with open(os.path.join(self.dir, segment), "r+b") as f:
            f.write(b"garbage")
        with self.assertRaises(StoreError) as caught:
            Store(self.dir).open()
        self.assertIn("corrupt", str(caught.exception))

    def test_writes_in_rotated_journals_replay_in_order(self):
        s = Store(self.dir, snapshot_every=10 ** 9).open()
        s.record([("register", "a", "x")])
        s.commit()
        s._rotate()
        s.record([("post", "a", "one")])
        s.commit()
        s._rotate()
        s.record([("post", "a", "two")])
        s.commit()
        self.crash(s)
        s2 = Store(self.dir).open()
        self.assertEqual(s2.state.users["a"].posts, ["one", "two"])
        s2.close()

    crash = StoreTest.crash


class FilesTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)

    def mode(self, name=""):
        return stat.S_IMODE(os.stat(os.path.join(self.dir, name)).st_mode)

    def test_files_are_0600_and_the_directory_0700(self):
        os.chmod(self.dir, 0o755)                # readable by others: tightened
        s = Store(self.dir, snapshot_every=100).open()
        s.record([("register", f"u{i}", "p") for i in range(10)] + [("delete", "u3")])
        s.commit()
        s.close()
        names = sorted(os.listdir(self.dir))
        self.assertEqual(names, ["journal.log", "lock", "snapshot.json", "users.txt"])
        self.assertEqual({n: self.mode(n) for n in names}, dict.fromkeys(names, 0o600))
        self.assertEqual(self.mode(), 0o700)

    def test_a_directory_others_can_write_is_refused(self):
        for mode in (0o777, 0o775, 0o1777):
            os.chmod(self.dir, mode)
            with self.assertRaises(UnsafePath) as caught:
                Store(self.dir).open()
            self.assertIn("writable by other users", str(caught.exception))
        self.assertEqual(os.listdir(self.dir), [])

    @unittest.skipUnless(os.geteuid() == 0, "needs root to give the directory away")
    def test_a_directory_owned_by_another_user_is_refused(self):
        os.chown(self.dir, 65534, 65534)
        with self.assertRaises(UnsafePath) as caught:
            Store(self.dir).open()
        self.assertIn("owned by uid 65534", str(caught.exception))

    def test_planted_symlinks_are_never_followed(self):
        victim = os.path.join(tempfile.mkdtemp(), "victim")
        self.addCleanup(shutil.rmtree, os.path.dirname(victim))
        with open(victim, "w") as f:
            f.write("precious\n")
        for name in ("journal.log", "users.txt", "lock", "snapshot.json"):
            for old in os.listdir(self.dir):
                os.unlink(os.path.join(self.dir, old))
            path = os.path.join(self.dir, name)
            os.symlink(victim, path)
            with self.assertRaises(UnsafePath) as caught:
                Store(self.dir).open()
            self.assertIn("symbolic link", str(caught.exception))
            os.unlink(path)
        # A temp name planted for the old fixed `users.txt.tmp` is simply unused.
        os.symlink(victim, os.path.join(self.dir, "users.txt.tmp"))
        s = Store(self.dir).open()
        s.record([("register", "a", "x"), ("delete", "a")])
        s.commit()
        s.close()
        with open(victim) as f:
            self.assertEqual(f.read(), "precious\n")

    def test_temp_files_left_by_a_crash_are_removed(self):
        for name in ("users.txt.abc123.tmp", "snapshot.json.x.tmp"):
            open(os.path.join(self.dir, name), "w").close()
        os.chmod(self.dir, 0o700)
        Store(self.dir).open().close()
        self.assertFalse([n for n in os.listdir(self.dir) if n.endswith(".tmp")])


class LegacyNamesTest(unittest.TestCase):
    """Names users.txt cannot hold (from before the name rule) still load."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)

    def test_a_hash_name_survives_restarts_and_crashes(self):
        s = Store(self.dir).open()
        s.record([("register", "#evil", "pw"), ("register", "#", "pw2"), ("register", "ok", "x"),
                  ("post", "#evil", "still here")])
        s.commit()
        StoreTest.crash(self, s)                  # kill -9
        s2 = Store(self.dir).open()
        self.assertEqual(sorted(s2.state.users), ["#", "#evil", "ok"])
        s2.close()                                # clean stop (snapshot)
        s3 = Store(self.dir).open()
        self.assertEqual(s3.state.users["#evil"].posts, ["still here"])
        self.assertEqual(s3.state.users["#"].password, "pw2")
        s3.close()

    def test_users_txt_stays_the_authority_for_names_it_can_hold(self):
        self.assertTrue(store_module.users_txt_can_hold("alice"))
        self.assertFalse(store_module.users_txt_can_hold("#evil"))
        self.assertFalse(store_module.users_txt_can_hold(""))


if __name__ == "__main__":
    unittest.main()
