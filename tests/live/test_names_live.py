"""The name rule on a real login server (127.0.0.1): a refused name gets
status 1 and leaves the data files as they were; every name answered
`Success!` (non-ASCII, typed decomposed too) logs in after a clean restart
and after kill -9; accounts the old code made under names the rule now
refuses keep logging in."""
import os
import shutil
import tempfile
import unittest

from lib.accounts import passwords
from lib.social import store
from tests.support import Conn, LoginServer

OK = {"status": 0, "message": "Success!"}
DELIMS = "`#`, `<` and `>` are not allowed"
INVISIBLE = "control or invisible characters are not allowed"
REFUSED = {   # name as typed -> reason
    "#evil": DELIMS, "#": DELIMS, "a#b": DELIMS, "<x>": DELIMS,
    "\x1b[31mred": INVISIBLE, "a\u200bb": INVISIBLE, "a\u00adb": INVISIBLE, "a\u2800b": INVISIBLE,
    "\u0430lice": "mixes scripts (Latin and Cyrillic)",
    "x" * 65: "at most 64 characters",
}
DATA_FILES = ("users.txt", "journal.log", "snapshot.json")


class NameRuleLiveTest(unittest.TestCase):
    def setUp(self):
        self.server = LoginServer().start()
        self.addCleanup(self.server.cleanup)

    def data_files(self):
        found = {}
        for name in DATA_FILES:
            path = os.path.join(self.server.data, name)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    found[name] = f.read()
        return found

    def login_all(self, accounts):
        c = Conn(self.server.port)
        try:
            return {name: c.request(f"login {name} {pw}").get("status") for name, pw in accounts.items()}
        finally:
            c.close()

    def test_refused_names_get_status_1_and_write_nothing(self):
        c = Conn(self.server.port)
        self.addCleanup(c.close)
        self.assertEqual(c.request("register alice pw"), OK)
        reply = c.request("login alice pw")
        self.assertEqual(reply["status"], 0)
        app = Conn(reply["app_server"])
        self.addCleanup(app.close)
        before = self.data_files()
        self.assertIn(b"alice", before["users.txt"])
        for name, reason in REFUSED.items():
            with self.subTest(name=name):
                self.assertEqual(c.request(f"register {name} pw"),
                                 {"status": 1, "message": f"Invalid username: {reason}"})
                self.assertEqual(app.request(f"create-group {reply['token']} {name}"),
                                 {"status": 1, "message": f"Invalid group name: {reason}"})
        self.assertEqual(self.data_files(), before)
        self.assertEqual(app.request(f"list-group {reply['token']}"), {"status": 0, "group": []})
        self.server.stop()
        self.server.start()
        refused = {name: "pw" for name in REFUSED}
        self.assertEqual(self.login_all(refused), {name: 1 for name in REFUSED})
        self.assertEqual(self.login_all({"alice": "pw"}), {"alice": 0})

    def test_every_accepted_name_logs_in_after_a_restart_and_after_kill_9(self):
        typed = {"zoe\u0308": "pa\u0308ss",          # NFD as typed: stored as zoë / päss
                 "\u5c71\u7530": "pw1", "\u0430\u043b\u0438\u0441\u0430": "pw2",
                 "\u03b4\u03b7\u03bc\u03ae\u03c4\u03c1\u03b7\u03c2": "pw3", "bob": "pw4"}
        later = {"tar\u014d": "pw5", "\uae40\ubbfc\uc218": "pw6", "\u5c71\u7530taro": "pw7", "y" * 64: "pw8"}
        c = Conn(self.server.port)
        for name, pw in typed.items():
            self.assertEqual(c.request(f"register {name} {pw}"), OK, name)
        self.assertEqual(c.request("register zo\u00eb x")["message"], "zo\u00eb is already used")
        c.close()
        nfc = {"zo\u00eb": "p\u00e4ss"}   # the same account, typed composed
        self.server.stop()                  # SIGTERM: snapshot, clean exit
        self.server.start()
        self.assertEqual(self.login_all({**typed, **nfc}), dict.fromkeys({**typed, **nfc}, 0))
        c = Conn(self.server.port)
        for name, pw in later.items():
            self.assertEqual(c.request(f"register {name} {pw}"), OK, name)
        c.close()
        self.server.kill9()                 # only the journal and users.txt remain
        self.server.start()
        everyone = {**typed, **nfc, **later}
        self.assertEqual(self.login_all(everyone), dict.fromkeys(everyone, 0))


class LegacyNameLiveTest(unittest.TestCase):
    """`register #evil pw` answered `Success!` before the rule existed; the
    account must keep logging in, across restarts (needs lib/social/store.py to keep
    names that users.txt cannot hold)."""

    def legacy_data(self, users_txt):
        data = tempfile.mkdtemp(prefix="np-test-")
        self.addCleanup(shutil.rmtree, data, True)
        evil, bob = passwords.hash_password("pw"), passwords.hash_password("bobpw")
        with open(os.path.join(data, "journal.log"), "wb") as f:
            f.write(store._frame(1, ("register", "#evil", evil)))
            if users_txt:
                f.write(store._frame(2, ("register", "bob", bob)))
        if users_txt:   # what the old code appended on register
            with open(os.path.join(data, "users.txt"), "w", encoding="utf-8") as f:
                f.write(store.HEADER + f"#evil {evil}\nbob {bob}\n")
        return data

    def check_survives(self, data, accounts):
        server = LoginServer(data=data).start()
        self.addCleanup(server.cleanup)
        for how, restart in (("the first start", None), ("SIGTERM", server.stop), ("kill -9", server.kill9)):
            if restart:
                restart()
                server.start()
            with self.subTest(after=how):
                c = Conn(server.port)
                for name, pw in accounts.items():
                    self.assertEqual(c.request(f"login {name} {pw}")["status"], 0, f"{name} after {how}")
                c.close()

    def test_hash_name_from_the_old_journal_and_users_txt_logs_in(self):
        self.check_survives(self.legacy_data(users_txt=True), {"#evil": "pw", "bob": "bobpw"})

    def test_hash_name_from_the_old_journal_alone_logs_in(self):
        self.check_survives(self.legacy_data(users_txt=False), {"#evil": "pw"})


if __name__ == "__main__":
    unittest.main()
