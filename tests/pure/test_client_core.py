"""The client's pure part: routing (PROTOCOL.md §2), tokens, subscriptions."""
import unittest

from lib.clients.tcp_routing import EXIT, LOGIN_SERVER, ClientCore


class ClientCoreTest(unittest.TestCase):
    def setUp(self):
        self.core = ClientCore()
        step = self.core.route("login alice pw")
        self.core.on_reply(step, {"status": 0, "token": "T1", "message": "Success!",
                                  "app_server": "127.0.0.1:9001", "queue": "/queue/q1",
                                  "topics": {"g": "/topic/t1"}})

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

    def test_subscriptions_follow_logins_and_groups(self):
        step = self.core.route("join-group alice h")
        lines, add, drop = self.core.on_reply(step, {"status": 0, "message": "Success!",
                                                     "topics": {"h": "/topic/t2"}})
        self.assertEqual((lines, add, drop), (["Success!"], [("alice", "/topic/t2")], []))
        step = self.core.route("logout alice")
        lines, add, drop = self.core.on_reply(step, {"status": 0, "message": "Bye!"})
        self.assertEqual(lines, ["Bye!"])
        self.assertEqual(sorted(drop), [("alice", "/queue/q1"), ("alice", "/topic/t1"), ("alice", "/topic/t2")])
        self.assertEqual(self.core.route("post alice x").wire, "post x")

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
