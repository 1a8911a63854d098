"""The TCP client machine's broker side and its end: subscriptions wait,
drain and survive a second login; chat lines; exit, end of input, linger."""
import unittest

from lib.clients.tcp_events import (
    ChatMessage, Connect, Connected, EndOfInput, Print, Send, StartBroker, Stop, Subscribe,
    Subscribed, Timer, Typed, Unsubscribe)
from lib.clients.tcp_machine import DONE, LINGERING, WAITING_REPLY, WAITING_SUBSCRIPTIONS
from lib.social.protocol import chat_body
from tests.pure.tcp_world import APP, DRAIN_S, LOGIN, SUBSCRIBE_S, World, login_reply


class Subscriptions(unittest.TestCase):
    def setUp(self):
        self.w = World()

    def test_login_subscribes_and_the_next_line_waits_for_the_broker(self):
        w = self.w
        w.type("login alice pw", "send-group alice g hi")
        w.feed(Connected(LOGIN))
        w.take()
        w.reply(LOGIN, login_reply())
        self.assertEqual(w.take(), [Print(("Success!",)), StartBroker("127.0.0.1:61613"),
                                    Subscribe("/queue/q1"), Subscribe("/topic/t1")])
        self.assertEqual(w.m.state, WAITING_SUBSCRIPTIONS)
        w.type("list-friend alice")                # typed meanwhile: waits as well
        w.feed(Subscribed(True))
        self.assertEqual(w.take(), [])
        w.feed(Subscribed(False, "refused"))       # a failure counts as an answer
        self.assertEqual((w.m.state, w.take()), (WAITING_REPLY, [Connect(APP)]))
        self.assertNotIn(Timer.SUBSCRIPTIONS, w.timers)

    def test_broker_silence_goes_on_after_two_seconds(self):
        w = self.w
        w.type("login alice pw", "register bob pw")
        w.feed(Connected(LOGIN))
        w.reply(LOGIN, login_reply())
        w.take()
        w.advance(SUBSCRIBE_S - 0.01)
        self.assertEqual(w.m.state, WAITING_SUBSCRIPTIONS)
        w.advance(0.01)
        self.assertEqual((w.m.state, w.take()), (WAITING_REPLY, [Send(LOGIN, "register bob pw")]))
        w.feed(Subscribed(True))                   # late: no harm
        w.feed(Subscribed(True))
        self.assertEqual(w.m.unconfirmed, 0)

    def test_broker_started_once(self):
        w = self.w
        w.login("alice")
        w.type("login bob pw")
        w.reply(LOGIN, login_reply("T2", queue="/queue/q2", broker="elsewhere:1"))
        self.assertNotIn(StartBroker, [type(a) for a in w.take()])

    def test_joined_group_subscribes(self):
        w = self.w
        w.login()
        w.type("join-group alice h")
        w.open_app()
        w.reply(APP, {"status": 0, "message": "Success!", "topics": {"h": "/topic/t2"}})
        self.assertEqual(w.take(Subscribe), [Subscribe("/topic/t2")])

    def test_logout_drops_subscriptions_after_the_drain(self):
        w = self.w
        w.login()
        w.type("logout alice")
        w.reply(LOGIN, {"status": 0, "message": "Bye!"})
        body = chat_body("bob", "late", to="alice", recipients=["alice"])
        w.advance(DRAIN_S - 0.01)
        w.feed(ChatMessage("/queue/q1", body))     # still in flight: still shown
        self.assertEqual(w.printed(), ["Bye!", "<<<bob->alice: late>>>"])
        self.assertEqual(w.take(Unsubscribe), [])
        w.advance(0.01)
        self.assertEqual(w.take(Unsubscribe), [Unsubscribe("/queue/q1"), Unsubscribe("/topic/t1")])
        w.feed(ChatMessage("/queue/q1", body))
        self.assertEqual(w.printed(), [])

    def test_login_again_within_the_drain_keeps_them(self):
        w = self.w
        w.login()
        w.type("logout alice")
        w.reply(LOGIN, {"status": 0, "message": "Bye!"})
        w.advance(DRAIN_S / 2)
        w.login()                                  # the same destinations again
        self.assertEqual(w.m.draining, set())
        w.advance(10)
        self.assertEqual(w.take(Unsubscribe), [])

    def test_logging_in_twice_keeps_the_subscriptions(self):
        """Issue 12: the second login dropped the first one's destinations
        (and re-added them), so 0.5 s later she was unsubscribed."""
        w = self.w
        w.login()
        w.login()
        self.assertEqual(w.take(Subscribe, Unsubscribe), [])
        w.advance(10)
        self.assertEqual(w.take(Unsubscribe), [])
        w.feed(ChatMessage("/queue/q1", chat_body("bob", "hi", to="alice", recipients=["alice"])))
        self.assertEqual(w.printed(), ["<<<bob->alice: hi>>>"])

    def test_a_new_login_token_drops_only_the_old_destinations(self):
        w = self.w
        w.login()
        w.login(token="T2", queue="/queue/q9")     # logged in again elsewhere meanwhile
        self.assertEqual(w.m.draining, {("alice", "/queue/q1")})
        w.advance(DRAIN_S)
        self.assertEqual(w.take(Unsubscribe), [Unsubscribe("/queue/q1")])

    def test_chat_printed_once_per_local_recipient(self):
        w = self.w
        w.login("alice")
        w.login("bob", token="T2", queue="/queue/q2")   # both in group g (/topic/t1)
        self.assertEqual(w.m.subs["/topic/t1"], {"alice", "bob"})
        group = chat_body("carol", "hello", group="g", recipients=["alice", "bob", "carol"])
        w.feed(ChatMessage("/topic/t1", group))
        w.feed(ChatMessage("/topic/t1", chat_body("carol", "x", group="g", recipients=["bob"])))
        w.feed(ChatMessage("/topic/zz", group))          # not ours
        w.feed(ChatMessage("/topic/t1", "not json"))
        self.assertEqual(w.printed(), ["<<<carol->GROUP<g>: hello>>>"] * 2 + ["<<<carol->GROUP<g>: x>>>"])


class Ending(unittest.TestCase):
    def test_end_of_input_without_subscriptions_stops_at_once(self):
        w = World()
        w.feed(EndOfInput())
        self.assertEqual((w.m.state, w.take()), (DONE, [Stop(0)]))
        self.assertEqual(w.feed(Typed("register a b")), [])   # DONE: nothing happens

    def test_exit_with_subscriptions_lingers_for_chat(self):
        w = World()
        w.login()
        w.type("exit", "register bob pw")         # nothing after exit counts
        self.assertEqual((w.m.state, w.take()), (LINGERING, []))
        w.feed(EndOfInput())
        w.type("register carol pw")
        w.advance(0.4)
        w.feed(ChatMessage("/queue/q1", chat_body("bob", "bye", to="alice", recipients=["alice"])))
        self.assertEqual(w.take(), [Print(("<<<bob->alice: bye>>>",))])
        w.advance(0.1)
        self.assertEqual((w.m.state, w.take()), (DONE, [Stop(0)]))

    def test_lines_queued_behind_exit_never_run(self):
        w = World()
        w.type("register bob pw", "exit", "register carol pw")
        w.take()
        w.feed(Connected(LOGIN))
        w.reply(LOGIN, {"status": 0, "message": "Success!"})
        self.assertEqual(w.sent(), [(LOGIN, "register bob pw")])
        self.assertEqual((w.m.state, w.take()), (DONE, [Print(("Success!",)), Stop(0)]))

    def test_end_of_input_waits_for_the_request_in_flight(self):
        w = World()
        w.type("register bob pw")
        w.feed(EndOfInput())
        self.assertEqual(w.m.state, WAITING_REPLY)
        w.feed(Connected(LOGIN))
        w.reply(LOGIN, {"status": 0, "message": "Success!"})
        self.assertEqual(w.take(), [Connect(LOGIN), Send(LOGIN, "register bob pw"),
                                    Print(("Success!",)), Stop(0)])

    def test_end_of_input_waits_for_subscriptions_then_lingers(self):
        w = World()
        w.type("login alice pw")
        w.feed(EndOfInput())
        w.feed(Connected(LOGIN))
        w.reply(LOGIN, login_reply())
        self.assertEqual(w.m.state, WAITING_SUBSCRIPTIONS)
        w.confirm_subscriptions()
        self.assertEqual(w.m.state, LINGERING)
        self.assertEqual(w.timers[Timer.LINGER], 0.5)

    def test_no_linger(self):
        w = World(linger=0)
        w.login()
        w.feed(EndOfInput())
        self.assertEqual(w.take(), [Stop(0)])


if __name__ == "__main__":
    unittest.main()
