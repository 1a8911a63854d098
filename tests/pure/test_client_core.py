"""The client's pure part: routing (PROTOCOL.md §2), tokens, a login's listen, pushes."""
import unittest

from lib.clients.tcp_routing import EXIT, LOGIN_SERVER, ClientCore, Step


class ClientCoreTest(unittest.TestCase):
    def setUp(self):
        self.core = ClientCore()
        step = self.core.route("login alice pw")
        self.login = self.core.on_reply(step, {"status": 0, "token": "T1", "message": "Success!",
                                               "app_server": "127.0.0.1:9001"})

    def test_routing(self):
        r = self.core.route
        self.assertIs(r("exit"), EXIT)
        self.assertIsNone(r("   "))
        s = r("register bob pw")
        self.assertEqual((s.wire, s.target), ("register bob pw", LOGIN_SERVER))
        s = r("post alice  hello   world")
        self.assertEqual((s.wire, s.target), ("post T1 hello world", "alice"))
        s = r("post bob hello")          # no token: the user is dropped
        self.assertEqual((s.wire, s.target), ("post hello", LOGIN_SERVER))
        s = r("logout alice")
        self.assertEqual((s.wire, s.target), ("logout T1", LOGIN_SERVER))
        s = r("list-friend")             # one word: as it is
        self.assertEqual((s.wire, s.target), ("list-friend", LOGIN_SERVER))
        s = r("reg alice x")             # unknown commands go to the login server
        self.assertEqual((s.wire, s.target), ("reg T1 x", LOGIN_SERVER))
        self.assertEqual(self.core.app_of("alice"), ("127.0.0.1", 9001))

    def test_a_login_asks_for_a_listen_on_its_app_server(self):
        self.assertEqual((self.login.lines, self.login.listen),
                         (["Success!"], Step("listen", "listen T1", "alice", "alice", with_token=True)))
        self.assertEqual(self.core.route("listen alice").wire, "listen T1")      # typed: the same
        for reply in ({"status": 0, "token": "T2", "message": "Success!"},        # no app server
                      {"status": 0, "token": "T2", "message": "Success!", "app_server": "nonsense"},
                      {"status": 1, "message": "Wrong password"},
                      {"status": 0, "message": "Success!", "app_server": "127.0.0.1:9001"}):   # no token
            with self.subTest(reply=reply):
                self.assertIsNone(self.core.on_reply(self.core.route("login bob pw"), reply).listen)
        for line in ("list-friend alice", "logout alice"):
            self.assertIsNone(self.core.on_reply(self.core.route(line), {"status": 0, "message": "x"}).listen)

    def test_old_broker_fields_change_nothing(self):
        out = self.core.on_reply(self.core.route("join-group alice h"),
                                 {"status": 0, "message": "Success!", "topics": {"h": "/topic/t2"}})
        self.assertEqual((out.lines, out.listen), (["Success!"], None))
        out = self.core.on_reply(self.core.route("login bob pw"),
                                 {"status": 0, "token": "T2", "message": "Success!", "app_server": "h:1",
                                  "broker": "b:61613", "queue": "/queue/q", "topics": {"g": "/topic/t"}})
        self.assertEqual(out.listen.wire, "listen T2")

    def test_logout_forgets_the_token(self):
        step = self.core.route("logout alice")
        self.assertEqual(self.core.on_reply(step, {"status": 0, "message": "Bye!"}).lines, ["Bye!"])
        self.assertEqual(self.core.route("post alice x").wire, "post x")

    def test_pushes_print_once_per_id_and_logged_in_user(self):
        push = {"push": "message", "id": "m1", "to": "alice", "from": "bob", "message": "hi"}
        self.assertEqual(self.core.on_push(push), ["<<<bob->alice: hi>>>"])
        self.assertEqual(self.core.on_push(dict(push)), [])
        self.assertEqual(self.core.on_push({**push, "to": "bob"}), [])          # bob is not logged in here
        self.assertEqual(self.core.on_push({**push, "id": "m2", "group": "g"}), ["<<<bob->GROUP<g>: hi>>>"])
        self.assertEqual(self.core.printed, {("m1", "alice"), ("m2", "alice")})

    def test_failed_logout_keeps_the_token(self):
        step = self.core.route("logout alice extra")
        self.core.on_reply(step, {"status": 1, "message": "Usage: logout <user>"})
        self.assertIn("alice", self.core.logins)

    def test_token_the_server_forgot_is_dropped(self):
        step = self.core.route("list-friend alice")
        self.core.on_reply(step, {"status": 1, "message": "Not login yet"})
        self.assertNotIn("alice", self.core.logins)


if __name__ == "__main__":
    unittest.main()
