"""Nothing acknowledged is lost: kill -9 at any moment, torn journal tails,
restarts keep every account, friendship, invitation, post and group."""
import os
import subprocess
import threading
import unittest

from tests.support import PYTHON, ROOT, Conn, LoginServer, login


class DurabilityTest(unittest.TestCase):
    def test_kill_9_after_200_acknowledged_registrations(self):
        server = LoginServer().start()
        try:
            acked, errors = [], []

            def worker(k):
                try:
                    c = Conn(server.port)
                    for i in range(25):
                        name = f"d{k}_{i}"
                        if c.request(f"register {name} pw{i}") == {"status": 0, "message": "Success!"}:
                            acked.append((name, f"pw{i}"))
                    c.close()
                except Exception as e:   # report in the main thread
                    errors.append(e)

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(errors, [])
            self.assertEqual(len(acked), 200)
            server.kill9()
            server.start()
            c = Conn(server.port)
            for name, pw in acked:
                reply = c.request(f"login {name} {pw}")
                self.assertEqual(reply["status"], 0, name)
            c.close()
        finally:
            server.cleanup()

    def build_world(self, port):
        c = Conn(port)
        for u in ("ann", "ben", "cat"):
            c.request(f"register {u} pw")
        tok = {u: c.request(f"login {u} pw") for u in ("ann", "ben", "cat")}
        apps = {u: Conn(r["app_server"]) for u, r in tok.items()}
        t = {u: r["token"] for u, r in tok.items()}
        apps["ann"].request(f"invite {t['ann']} ben")
        apps["ben"].request(f"accept-invite {t['ben']} ann")
        apps["cat"].request(f"invite {t['cat']} ann")
        apps["ann"].request(f"post {t['ann']} hello world")
        apps["ben"].request(f"create-group {t['ben']} club")
        apps["cat"].request(f"join-group {t['cat']} club")
        for a in apps.values():
            a.close()
        c.close()
        return tok

    def check_world(self, port, before):
        """Everything `build_world` made is there; `before` is its login replies."""
        c = Conn(port)
        # Sessions survive the restart: every token issued before it is still
        # accepted by the token-checked commands, on both kinds of server.
        friends = {"ann": ["ben"], "ben": ["ann"], "cat": []}
        old_apps = {}
        for u, r in before.items():
            where = c.request(f"locate {r['token']}")
            self.assertEqual(where["status"], 0, (u, where))
            old_apps[u] = Conn(where["app_server"])
            self.assertEqual(old_apps[u].request(f"list-friend {r['token']}"),
                             {"status": 0, "friend": friends[u]}, u)
        t = {}
        for u in ("ann", "ben", "cat"):
            reply = c.request(f"login {u} pw")
            self.assertEqual(reply["status"], 0)
            # Only a digest of a token is stored, so a login after a restart
            # rotates the token (keeping the session's queue: a server's
            # business, checked in tests/pure/test_login_core.py) ...
            self.assertNotEqual(reply["token"], before[u]["token"], u)
            self.assertNotIn("queue", reply)
            t[u] = (reply["token"], Conn(reply["app_server"]))
        # ... and the old token stops working: one session per user.
        for u, r in before.items():
            self.assertEqual(old_apps[u].request(f"list-friend {r['token']}"),
                             {"status": 1, "message": "Not login yet"}, u)
            self.assertEqual(c.request(f"locate {r['token']}"),
                             {"status": 1, "message": "Not login yet"}, u)
            old_apps[u].close()
        self.assertEqual(t["ben"][1].request(f"list-friend {t['ben'][0]}")["friend"], ["ann"])
        self.assertEqual(t["ann"][1].request(f"list-invite {t['ann'][0]}")["invite"], ["cat"])
        self.assertEqual(t["ben"][1].request(f"receive-post {t['ben'][0]}")["post"],
                         [{"id": "ann", "message": "hello world"}])
        self.assertEqual(t["cat"][1].request(f"list-joined {t['cat'][0]}")["group"], ["club"])
        self.assertEqual(t["ann"][1].request(f"list-group {t['ann'][0]}")["group"], ["club"])
        for _, conn in t.values():
            conn.close()
        c.close()

    def test_restart_keeps_everything_clean_stop(self):
        server = LoginServer().start()
        try:
            before = self.build_world(server.port)
            server.stop()
            server.start()
            self.check_world(server.port, before)
        finally:
            server.cleanup()

    def test_restart_keeps_everything_kill_9_and_sessions_survive(self):
        server = LoginServer().start()
        try:
            before = self.build_world(server.port)
            server.kill9()
            server.start()
            # tokens issued before the crash still work (sessions are journaled)
            self.check_world(server.port, before)
        finally:
            server.cleanup()

    def test_torn_journal_tail_is_skipped(self):
        server = LoginServer().start()
        try:
            c = Conn(server.port)
            self.assertEqual(c.request("register tom pw")["status"], 0)
            c.close()
            server.kill9()
            with open(os.path.join(server.data, "journal.log"), "ab") as f:
                f.write(b'deadbeef [99,"register","ghost","x"')   # a write cut short
            with open(os.path.join(server.data, "users.txt"), "ab") as f:
                f.write(b"half")
            server.start()
            self.assertEqual(login(server.port, "tom", "pw")["status"], 0)
            self.assertEqual(login(server.port, "ghost", "x")["status"], 1)
            self.assertIn("torn or corrupt record", server.read_log())
            c = Conn(server.port)
            self.assertEqual(c.request("register ghost y")["status"], 0)
            c.close()
        finally:
            server.cleanup()

    def test_accounts_file_has_salted_hashes_and_hand_written_lines_work(self):
        server = LoginServer().start()
        try:
            c = Conn(server.port)
            c.request("register amy secret1")
            c.request("register bob secret1")
            c.close()
            server.stop()
            with open(os.path.join(server.data, "users.txt")) as f:
                text = f.read()
            self.assertNotIn("secret1", text)
            hashes = [line.split()[1] for line in text.splitlines() if line and not line.startswith("#")]
            self.assertEqual(len(hashes), 2)
            self.assertTrue(all(h.startswith("scrypt$") for h in hashes))
            self.assertNotEqual(hashes[0], hashes[1])   # salted
            with open(os.path.join(server.data, "users.txt"), "a") as f:
                f.write("carl plainpw\n")
            server.start()
            self.assertEqual(login(server.port, "carl", "plainpw")["status"], 0)
            self.assertEqual(login(server.port, "amy", "secret1")["status"], 0)
            self.assertEqual(login(server.port, "amy", "wrong")["message"], "No such user or password error")
        finally:
            server.cleanup()

    def test_second_server_on_the_same_data_dir_refuses(self):
        with LoginServer() as server:
            proc = subprocess.run([PYTHON, os.path.join(ROOT, "server.py"), "127.0.0.1", "0",
                                   "--data", server.data], capture_output=True, timeout=30)
            self.assertEqual(proc.returncode, 1)
            self.assertIn(b"is in use by another np-social server", proc.stderr)


if __name__ == "__main__":
    unittest.main()
