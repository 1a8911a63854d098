"""The TCP client machine (lib/clients/tcp_machine.py): requests, the
login server's retry, relocation to a new app server, the tables. Virtual
time, no socket. (Listen, pushes and the end: test_tcp_push.py.)"""
import unittest

from lib.clients import tcp_machine as tm
from lib.clients.tcp_events import (
    Close, Closed, Connect, ConnectFailed, Connected, ConnectTimeout, Print, Send, Timer, TimerFired)
from lib.clients.tcp_machine import (
    DONE, IDLE, LINGERING, RELOCATE_WAIT, RELOCATING, RETRYING, WAITING_REPLY, ClientMachine,
    IllegalEvent, IllegalTransition)
from tests.pure.tcp_world import (
    APP, APP2, CANNOT_REACH, CONNECT_S, LAUNCH_S, LOGIN, RELOCATE_S, RELOCATE_TRIES, REPLY_S, World)


class Requests(unittest.TestCase):
    def setUp(self):
        self.w = World()

    def test_first_request_connects_then_sends_then_prints(self):
        w = self.w
        w.type("register bob pw")
        self.assertEqual((w.m.state, w.take()), (WAITING_REPLY, [Connect(LOGIN)]))
        self.assertIn(ConnectTimeout(LOGIN), w.timers)
        w.feed(Connected(LOGIN))
        self.assertEqual(w.sent(), [(LOGIN, "register bob pw")])
        self.assertNotIn(ConnectTimeout(LOGIN), w.timers)
        self.assertEqual(w.timers[Timer.REPLY], REPLY_S)
        w.reply(LOGIN, {"status": 0, "message": "Success!"})
        self.assertEqual((w.m.state, w.printed()), (IDLE, ["Success!"]))
        self.assertNotIn(Timer.REPLY, w.timers)
        w.type("register carol pw")          # the connection stays open
        self.assertEqual(w.take(), [Send(LOGIN, "register carol pw")])

    def test_one_request_at_a_time_in_input_order(self):
        w = self.w
        w.type("register a pw", "", "register b pw", "list-friend c")
        w.feed(Connected(LOGIN))
        self.assertEqual(w.sent(), [(LOGIN, "register a pw")])
        w.reply(LOGIN, {"status": 0, "message": "Success!"})
        self.assertEqual(w.sent(), [(LOGIN, "register b pw")])   # the blank line is skipped
        w.reply(LOGIN, {"status": 1, "message": "b is already used"})
        self.assertEqual(w.sent(), [(LOGIN, "list-friend")])      # no token for c: c dropped
        w.reply(LOGIN, {"status": 1, "message": "Not login yet"})
        self.assertEqual(w.printed(), ["Success!", "b is already used", "Not login yet"])

    def test_app_commands_go_to_the_users_app_server_with_the_token(self):
        w = self.w
        w.login()                           # its listen opened the connection
        w.type("list-friend alice")
        self.assertEqual(w.take(), [Send(APP, "list-friend T1")])
        w.reply(APP, {"status": 0, "friend": []})
        self.assertEqual(w.printed(), ["No friends"])
        w.feed(Closed(APP))                 # say, closed as idle: the next request connects again
        w.type("list-friend alice")
        self.assertEqual(w.take(), [Connect(APP)])
        w.feed(Connected(APP))
        self.assertEqual(w.sent(), [(APP, "list-friend T1")])
        w.reply(APP, {"status": 0, "friend": []})
        self.assertEqual(w.printed(), ["No friends"])

    def test_login_and_locate_may_wait_for_a_launch(self):
        w = self.w
        w.type("login alice pw")
        w.feed(Connected(LOGIN))
        self.assertEqual(w.timers[Timer.REPLY], LAUNCH_S)

    def test_unreadable_reply(self):
        w = self.w
        w.type("register bob pw")
        w.feed(Connected(LOGIN))
        w.reply(LOGIN, b"\xff{")
        w.type("register bob pw")
        w.reply(LOGIN, b"[1, 2]")             # JSON, but not a reply
        self.assertEqual(w.printed(), [tm.UNREADABLE, tm.UNREADABLE])
        self.assertEqual(w.m.state, IDLE)

    def test_stray_lines_are_ignored(self):
        w = self.w
        w.login()
        w.feed(Closed(APP))
        w.reply(LOGIN, {"status": 0, "message": "late"})       # nothing asked
        w.type("list-friend alice")
        w.reply(APP, {"status": 0, "message": "not connected yet"})
        self.assertEqual((w.m.state, w.printed()), (WAITING_REPLY, []))
        w.feed(Connected(APP))
        w.reply(LOGIN, {"status": 0, "message": "wrong server"})
        self.assertEqual((w.m.state, w.printed()), (WAITING_REPLY, []))
        w.reply(APP, {"status": 0, "friend": []})
        self.assertEqual((w.m.state, w.printed()), (IDLE, ["No friends"]))


class LoginServerRetry(unittest.TestCase):
    """A request to the login server is sent once more if its connection
    fails (the server may have closed it as idle); a second failure is shown."""

    def setUp(self):
        self.w = World()
        self.w.type("register bob pw")
        self.w.feed(Connected(LOGIN))
        self.w.take()

    def test_closed_idle_connection_resend_once_silently(self):
        w = self.w
        w.feed(Closed(LOGIN))
        self.assertEqual((w.m.state, w.take()), (RETRYING, [Connect(LOGIN)]))
        self.assertNotIn(Timer.REPLY, w.timers)
        w.feed(Connected(LOGIN))
        self.assertEqual(w.sent(), [(LOGIN, "register bob pw")])
        w.reply(LOGIN, {"status": 0, "message": "Success!"})
        self.assertEqual((w.m.state, w.printed()), (IDLE, ["Success!"]))

    def test_second_failure_is_reported_and_the_next_line_runs(self):
        w = self.w
        w.type("register carol pw")
        w.feed(Closed(LOGIN))
        w.take()
        self.assertFalse(w.m.unreachable)       # the retry is silent
        w.feed(ConnectFailed(LOGIN, "refused"))
        self.assertEqual(w.printed(), [CANNOT_REACH(*LOGIN)])
        self.assertTrue(w.m.unreachable)        # the driver's exit status says so too
        self.assertEqual((w.m.state, w.take()), (WAITING_REPLY, [Connect(LOGIN)]))   # register carol

    def test_connect_failure_then_connect_timeout(self):
        w = World()
        w.type("register bob pw")
        w.take()
        w.feed(ConnectFailed(LOGIN, "refused"))
        self.assertEqual((w.m.state, w.take()), (RETRYING, [Connect(LOGIN)]))
        w.advance(CONNECT_S - 0.01)
        self.assertEqual(w.take(), [])
        w.advance(0.01)
        self.assertEqual(w.take(), [Close(LOGIN), Print((CANNOT_REACH(*LOGIN),))])
        self.assertEqual(w.m.state, IDLE)
        w.type("register carol pw")                 # a fresh connection for the next one
        self.assertEqual(w.take(), [Connect(LOGIN)])

    def test_reply_timeout(self):
        w = self.w
        w.advance(REPLY_S - 0.01)
        self.assertEqual(w.take(), [])
        w.advance(0.01)
        # today's behaviour: say so, drop the connection, and send once more
        self.assertEqual(w.take(), [Print((tm.NO_REPLY,)), Close(LOGIN), Connect(LOGIN)])
        self.assertEqual(w.m.state, RETRYING)
        w.feed(Connected(LOGIN))
        w.take()
        w.advance(REPLY_S)
        self.assertEqual(w.printed(), [tm.NO_REPLY, CANNOT_REACH(*LOGIN)])
        self.assertEqual(w.m.state, IDLE)

    def test_a_late_reply_after_a_timeout_is_not_taken(self):
        w = self.w
        w.advance(REPLY_S)
        w.take()
        w.reply(LOGIN, {"status": 0, "message": "too late"})   # not connected again yet
        self.assertEqual(w.printed(), [])


class Relocation(unittest.TestCase):
    """An app server that fails a request: ask the login server where the
    user's server is now, and send there once, silently."""

    def setUp(self):
        self.w = World()
        self.w.login()
        self.w.type("list-friend alice")
        self.w.open_app()
        self.w.take()

    def fail_app(self, event=None):
        self.w.feed(event or Closed(APP))
        self.assertEqual(self.w.m.state, RELOCATING)
        self.assertEqual(self.w.sent(), [(LOGIN, "locate T1")])

    def test_closed_app_server_moves_to_the_new_one_without_an_error(self):
        w = self.w
        self.fail_app()
        w.reply(LOGIN, {"status": 0, "message": "Success!", "app_server": "127.0.0.1:9002"})
        self.assertEqual((w.m.state, w.take()), (RETRYING, [Connect(APP2)]))
        w.feed(Connected(APP2))
        self.assertEqual(w.sent(), [(APP2, "list-friend T1")])
        w.reply(APP2, {"status": 0, "friend": ["bob"]})
        self.assertEqual((w.m.state, w.printed()), (IDLE, ["bob"]))
        w.type("list-invite alice")                     # and stays there
        self.assertEqual(w.sent(), [(APP2, "list-invite T1")])

    def test_refused_and_timed_out_connects_relocate_too(self):
        w = World()
        w.login()
        w.feed(Closed(APP))
        w.type("list-friend alice")
        self.assertEqual(w.take(), [Connect(APP)])
        w.feed(ConnectFailed(APP, "refused"))
        self.assertEqual((w.m.state, w.sent()), (RELOCATING, [(LOGIN, "locate T1")]))
        w = World()
        w.login()
        w.feed(Closed(APP))
        w.type("list-friend alice")
        w.take()
        w.advance(CONNECT_S)
        self.assertEqual(w.m.state, RELOCATING)
        self.assertEqual(w.take(), [Close(APP), Send(LOGIN, "locate T1")])

    def test_reply_timeout_relocates(self):
        w = self.w
        w.advance(REPLY_S)
        self.assertEqual(w.take(), [Print((tm.NO_REPLY,)), Close(APP), Send(LOGIN, "locate T1")])

    def test_locate_naming_the_dead_server_again_waits_and_asks_again(self):
        w = self.w
        self.fail_app()
        for _ in range(3):
            w.reply(LOGIN, {"status": 0, "message": "Success!", "app_server": "127.0.0.1:9001"})
            self.assertEqual((w.m.state, w.take()), (RELOCATE_WAIT, []))
            w.advance(RELOCATE_S - 0.01)
            self.assertEqual(w.take(), [])
            w.advance(0.01)
            self.assertEqual((w.m.state, w.sent()), (RELOCATING, [(LOGIN, "locate T1")]))
        w.reply(LOGIN, {"status": 0, "message": "Success!", "app_server": "127.0.0.1:9002"})
        self.assertEqual((w.m.state, w.take()), (RETRYING, [Connect(APP2)]))

    def test_relocation_gives_up_after_the_limit_then_tries_the_dead_server(self):
        w = self.w
        self.fail_app()
        locates = 1
        for _ in range(100):
            w.reply(LOGIN, {"status": 0, "message": "Success!", "app_server": "127.0.0.1:9001"})
            if w.m.state is RETRYING:
                break
            w.advance(RELOCATE_S)
            locates += len(w.sent())
        self.assertEqual(locates, 1 + RELOCATE_TRIES)
        self.assertEqual(w.take(), [Connect(APP)])     # the last word of the login server
        w.feed(ConnectFailed(APP, "refused"))
        self.assertEqual(w.printed(), [CANNOT_REACH(*APP)])
        self.assertEqual(w.m.state, IDLE)

    def test_a_failure_on_the_new_server_is_reported(self):
        w = self.w
        self.fail_app()
        w.reply(LOGIN, {"status": 0, "message": "Success!", "app_server": "127.0.0.1:9002"})
        self.assertFalse(w.m.unreachable)
        w.feed(ConnectFailed(APP2, "refused"))
        self.assertEqual((w.m.state, w.printed()), (IDLE, [CANNOT_REACH(*APP2)]))
        self.assertTrue(w.m.unreachable)

    def test_locate_failing_reports_the_login_server(self):
        w = self.w
        self.fail_app()
        w.feed(Closed(LOGIN))                    # a locate gets no second chance
        self.assertEqual((w.m.state, w.printed()), (IDLE, [CANNOT_REACH(*LOGIN)]))
        self.assertTrue(w.m.unreachable)

    def test_locate_says_not_login_the_user_is_forgotten(self):
        w = self.w
        self.fail_app()
        w.reply(LOGIN, {"status": 1, "message": "Not login yet"})
        self.assertEqual((w.m.state, w.printed()), (IDLE, ["Not login yet"]))
        self.assertNotIn("alice", w.m.core.logins)

    def test_unknown_app_server_locates_first_and_that_is_no_retry(self):
        w = World()
        w.login(app=None)
        w.type("list-friend alice")
        self.assertEqual((w.m.state, w.take()), (RELOCATING, [Send(LOGIN, "locate T1")]))
        w.reply(LOGIN, {"status": 0, "message": "Success!", "app_server": "127.0.0.1:9001"})
        self.assertEqual((w.m.state, w.take()), (WAITING_REPLY, [Connect(APP)]))
        w.feed(ConnectFailed(APP, "refused"))        # still a first failure: relocate
        self.assertEqual((w.m.state, w.sent()), (RELOCATING, [(LOGIN, "locate T1")]))

    def test_relocation_timer_in_another_state_is_a_bug(self):
        with self.assertRaises(IllegalEvent):
            self.w.feed(TimerFired(Timer.RELOCATE))


class WrongServer(unittest.TestCase):
    """An app server that answers `Not your application server` (the fleet
    moved the user without the login server knowing): locate, send again,
    print nothing; a second refusal is printed."""

    def setUp(self):
        self.w = World()
        self.w.login()
        self.w.type("list-friend alice")
        self.w.open_app()
        self.assertEqual(self.w.sent(), [(APP, "list-friend T1")])

    def refuse(self, address=APP):
        self.w.reply(address, {"status": 1, "message": "Not your application server"})

    def test_relocates_and_resends_silently(self):
        w = self.w
        self.refuse()
        self.assertEqual((w.m.state, w.sent(), w.printed()), (RELOCATING, [(LOGIN, "locate T1")], []))
        w.reply(LOGIN, {"status": 0, "message": "Your application server is ready",
                        "app_server": "127.0.0.1:9002"})
        self.assertEqual((w.m.state, w.take()), (RETRYING, [Connect(APP2)]))
        w.feed(Connected(APP2))
        self.assertEqual(w.sent(), [(APP2, "list-friend T1")])
        w.reply(APP2, {"status": 0, "friend": ["bob"]})
        self.assertEqual((w.m.state, w.printed()), (IDLE, ["bob"]))

    def test_locate_may_name_the_refusing_server_it_now_agrees_with(self):
        w = self.w
        self.refuse()
        w.sent()
        w.reply(LOGIN, {"status": 0, "message": "Your application server is ready",
                        "app_server": "127.0.0.1:9001"})
        self.assertEqual((w.m.state, w.sent()), (RETRYING, [(APP, "list-friend T1")]))   # no wait
        w.reply(APP, {"status": 0, "friend": []})
        self.assertEqual((w.m.state, w.printed()), (IDLE, ["No friends"]))

    def test_a_second_refusal_is_printed_not_chased(self):
        w = self.w
        self.refuse()
        w.reply(LOGIN, {"status": 0, "message": "Your application server is ready",
                        "app_server": "127.0.0.1:9001"})
        w.sent()
        self.refuse()
        self.assertEqual((w.m.state, w.printed(), w.sent()), (IDLE, ["Not your application server"], []))

    def test_from_the_login_server_it_is_just_a_reply(self):
        w = self.w
        w.reply(APP, {"status": 0, "friend": []})
        w.type("register bob pw")
        self.assertEqual(w.sent(), [(LOGIN, "register bob pw")])
        w.reply(LOGIN, {"status": 1, "message": "Not your application server"})
        self.assertEqual((w.m.state, w.printed()), (IDLE, ["No friends", "Not your application server"]))


class Table(unittest.TestCase):
    def test_illegal_transitions_raise(self):
        m = ClientMachine(LOGIN)
        m.state = LINGERING
        with self.assertRaises(IllegalTransition):
            m._goto(WAITING_REPLY)
        m.state = RETRYING
        with self.assertRaises(IllegalTransition):
            m._goto(RELOCATING)           # one retry only

    def test_events_a_state_cannot_get_raise(self):
        w = World()
        for event in (TimerFired(Timer.REPLY), TimerFired(Timer.LINGER), TimerFired(Timer.LISTEN),
                      Connected(APP), ConnectFailed(APP), TimerFired(ConnectTimeout(APP))):
            with self.assertRaises(IllegalEvent, msg=event):
                w.feed(event)
        self.assertEqual(w.m.state, IDLE)

    def test_every_state_is_reachable_and_done_is_final(self):
        reachable, todo = {IDLE}, [IDLE]
        while todo:
            for nxt in tm.TRANSITIONS[todo.pop()] - reachable:
                reachable.add(nxt)
                todo.append(nxt)
        self.assertEqual(reachable, set(tm.State))
        self.assertEqual(tm.TRANSITIONS[DONE], set())


if __name__ == "__main__":
    unittest.main()
