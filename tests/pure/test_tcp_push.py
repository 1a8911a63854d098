"""The TCP client machine's chat side (issue 12): after a login it sends
`listen TOKEN` to the user's app server and waits for the reply (never
printed, bounded); push lines from app servers print once per (id, user)
logged in here, whenever they come, never taken for a reply; the end of
input lingers for pushes in flight. And no broker code in the client."""
import ast
import pathlib
import unittest

from lib.clients.tcp_events import (
    Close, Closed, Connect, ConnectFailed, Connected, ConnectTimeout, EndOfInput, Print, Send, Stop,
    Timer, Typed)
from lib.clients.tcp_machine import DONE, IDLE, LINGERING, LISTENING, RETRYING, WAITING_REPLY
from tests.pure.tcp_world import APP, APP2, LISTEN_S, LISTENING as LISTEN_OK, LOGIN, World, login_reply

ROOT = pathlib.Path(__file__).resolve().parents[2]


class Listen(unittest.TestCase):
    def setUp(self):
        self.w = World()

    def logged_in(self, *more_lines, reply=None):
        """`login alice pw` (then `more_lines`) answered: the machine is listening."""
        w = self.w
        w.type("login alice pw", *more_lines)
        w.feed(Connected(LOGIN))
        w.take()
        w.reply(LOGIN, reply or login_reply())

    def test_login_listens_on_its_app_server_before_the_next_line(self):
        w = self.w
        self.logged_in("send alice bob hi")
        self.assertEqual((w.m.state, w.take()), (LISTENING, [Print(("Success!",)), Connect(APP)]))
        self.assertEqual(w.timers[Timer.LISTEN], LISTEN_S)
        w.type("list-friend alice")                  # typed meanwhile: waits as well
        w.feed(Connected(APP))
        self.assertEqual(w.sent(), [(APP, "listen T1")])
        w.reply(APP, LISTEN_OK)
        self.assertEqual(w.printed(), [])            # the listen reply is never printed
        self.assertEqual((w.m.state, w.sent()), (WAITING_REPLY, [(APP, "send T1 bob hi")]))
        self.assertNotIn(Timer.LISTEN, w.timers)
        self.assertEqual(w.m.conns, {LOGIN: w.m.conns[LOGIN], APP: w.m.conns[APP]})   # kept open

    def test_a_login_resent_to_the_login_server_listens_too(self):
        w = self.w
        w.type("login alice pw")
        w.feed(Connected(LOGIN))
        w.feed(Closed(LOGIN))                        # an idle connection the server had closed
        w.feed(Connected(LOGIN))
        self.assertEqual(w.m.state, RETRYING)
        w.reply(LOGIN, login_reply())
        self.assertEqual((w.m.state, w.take()[-1]), (LISTENING, Connect(APP)))

    def test_a_refused_listen_is_not_printed_and_changes_nothing(self):
        w = self.w
        self.logged_in("list-friend alice")
        w.open_app()
        w.reply(APP, {"status": 1, "message": "Not your application server"})
        self.assertEqual(w.printed(), ["Success!"])
        self.assertEqual((w.m.state, w.sent()), (WAITING_REPLY, [(APP, "listen T1"), (APP, "list-friend T1")]))
        self.assertIn("alice", w.m.core.logins)

    def test_silence_goes_on_after_the_timeout_and_drops_the_connection(self):
        w = self.w
        self.logged_in("list-friend alice")
        w.open_app()
        w.take()
        w.advance(LISTEN_S - 0.01)
        self.assertEqual((w.m.state, w.take()), (LISTENING, []))
        w.advance(0.01)
        # its late reply must not be taken for list-friend's: a new connection
        self.assertEqual((w.m.state, w.take()), (WAITING_REPLY, [Close(APP), Connect(APP)]))
        w.feed(Connected(APP))
        self.assertEqual(w.sent(), [(APP, "list-friend T1")])
        self.assertEqual(w.printed(), [])

    def test_timeout_while_connecting_leaves_the_connect_alone(self):
        w = World(listen_timeout=0.5)
        self.w = w
        self.logged_in("register bob pw")
        w.take()
        w.advance(0.5)
        self.assertEqual((w.m.state, w.sent()), (WAITING_REPLY, [(LOGIN, "register bob pw")]))
        self.assertIn(ConnectTimeout(APP), w.timers)
        w.feed(Connected(APP))                       # late: opened, nothing sent on it
        self.assertEqual(w.take(), [])
        w.reply(LOGIN, {"status": 0, "message": "Success!"})
        self.assertEqual((w.m.state, w.printed()), (IDLE, ["Success!"]))

    def test_a_dead_app_server_is_given_up_quietly(self):
        for fail in (lambda w: w.feed(ConnectFailed(APP, "refused")),
                     lambda w: w.advance(5),          # the connect timeout (the listen's is longer here)
                     lambda w: (w.feed(Connected(APP)), w.feed(Closed(APP)))):
            w = self.w = World(listen_timeout=10)
            self.logged_in("register bob pw")
            w.take()
            fail(w)
            self.assertEqual(w.printed(), [])        # no Error line, no locate: the next request relocates
            self.assertEqual(w.sent()[-1:], [(LOGIN, "register bob pw")])
            self.assertEqual(w.m.state, WAITING_REPLY)
            self.assertFalse(w.m.unreachable)
            self.assertNotIn(Timer.LISTEN, w.timers)

    def test_no_listen_without_a_successful_login_or_an_app_server(self):
        w = self.w
        self.logged_in("register bob pw", reply={"status": 1, "message": "Wrong password"})
        self.assertEqual(w.sent(), [(LOGIN, "register bob pw")])
        w.reply(LOGIN, {"status": 0, "message": "Success!"})
        w.login("carol", app=None)                   # no app server named: nothing to listen to
        self.assertEqual(w.m.state, IDLE)
        self.assertNotIn(Connect(APP), w.actions)

    def test_a_second_login_listens_again_and_keeps_delivering(self):
        """Issue 12: a second login of a user in one client silenced her
        for good (the broker client's _resubscribe)."""
        w = self.w
        w.login()
        w.type("login alice pw")
        w.reply(LOGIN, login_reply("T2"))
        self.assertEqual((w.m.state, w.sent()), (LISTENING, [(LOGIN, "login alice pw"), (APP, "listen T2")]))
        w.reply(APP, LISTEN_OK)
        self.assertEqual(w.m.state, IDLE)
        w.push(id="m1")
        w.advance(3600)
        w.push(id="m2", message="still here")
        self.assertEqual(w.printed(), ["Success!", "<<<bob->alice: hi>>>", "<<<bob->alice: still here>>>"])
        w.type("list-friend alice")
        self.assertEqual(w.sent(), [(APP, "list-friend T2")])

    def test_a_login_elsewhere_listens_there(self):
        w = self.w
        w.login()
        w.login(app=APP2, token="T2")                # moved: the new server
        self.assertEqual(w.m.core.app_of("alice"), APP2)
        w.push(APP2)
        self.assertEqual(w.printed(), ["<<<bob->alice: hi>>>"])

    def test_old_servers_broker_fields_are_ignored(self):
        w = self.w
        self.logged_in(reply=login_reply(broker="127.0.0.1:61613", queue="/queue/q1",
                                         topics={"g": "/topic/t1"}))
        self.assertEqual(w.take(), [Print(("Success!",)), Connect(APP)])
        w.type("join-group alice h")
        w.feed(Connected(APP))
        w.reply(APP, LISTEN_OK)
        w.reply(APP, {"status": 0, "message": "Success!", "topics": {"h": "/topic/t2"}})
        self.assertEqual((w.m.state, w.take()), (IDLE, [Send(APP, "listen T1"), Send(APP, "join-group T1 h"),
                                                        Print(("Success!",))]))


class Pushes(unittest.TestCase):
    def setUp(self):
        self.w = World()
        self.w.login()

    def test_personal_and_group_lines(self):
        w = self.w
        w.push()
        w.push(id=7, **{"from": "carol"}, to="alice", group="g", message="hello all")
        w.push(id="m3", group=None, message="not a group")
        self.assertEqual(w.printed(), ["<<<bob->alice: hi>>>", "<<<carol->GROUP<g>: hello all>>>",
                                       "<<<bob->alice: not a group>>>"])
        self.assertEqual(w.m.state, IDLE)

    def test_each_id_and_user_printed_once(self):
        w = self.w
        w.login("bob", token="T2")
        for _ in range(3):                           # redelivered after a crash: dropped
            w.push(id="m1", to="alice", group="g")
            w.push(id="m1", to="bob", group="g")     # the same message for another user here
        w.push(APP2, id="m1", to="alice", group="g")  # from another server (she moved): still a repeat
        w.push(id="m2", to="alice")
        w.push(id=1, to="alice")
        w.push(id="1", to="alice")                   # another id
        self.assertEqual(w.printed(), ["<<<bob->GROUP<g>: hi>>>"] * 2 + ["<<<bob->alice: hi>>>"] * 3)

    def test_the_printed_pairs_are_bounded_oldest_first(self):
        w = World(remember_pushes=3)
        w.login()
        for n in range(4):
            w.push(id=n)
        self.assertEqual(len(w.printed()), 4)
        self.assertEqual(len(w.m.core.printed), 3)
        w.push(id=3)                                 # remembered
        w.push(id=1)
        self.assertEqual(w.printed(), [])
        w.push(id=0)                                 # the oldest, forgotten: printed again
        self.assertEqual(w.printed(), ["<<<bob->alice: hi>>>"])
        self.assertEqual(len(w.m.core.printed), 3)

    def test_only_for_users_logged_in_here(self):
        w = self.w
        w.push(id="a", to="carol")                   # never logged in here
        self.assertEqual(w.printed(), [])
        w.login("bob", token="T2")
        for command in ("logout", "delete"):
            w.type(f"{command} bob")
            w.reply(LOGIN, {"status": 0, "message": "Bye!"})
            w.push(id=command, to="bob")             # in flight when the reply came
            w.push(id=command, to="alice")
            self.assertEqual(w.printed(), ["Bye!", "<<<bob->alice: hi>>>"])
            w.login("bob", token="T2")

    def test_a_push_while_a_reply_is_awaited_is_not_the_reply(self):
        w = self.w
        w.type("list-friend alice", "list-invite alice")
        self.assertEqual(w.sent(), [(APP, "list-friend T1")])
        w.push()
        self.assertEqual((w.m.state, w.printed(), w.sent()), (WAITING_REPLY, ["<<<bob->alice: hi>>>"], []))
        self.assertIn(Timer.REPLY, w.timers)
        w.reply(APP, {"status": 0, "friend": ["bob"]})
        self.assertEqual((w.printed(), w.sent()), (["bob"], [(APP, "list-invite T1")]))

    def test_a_push_while_listening_is_not_the_listen_reply(self):
        w = self.w
        w.type("login alice pw")
        w.reply(LOGIN, login_reply("T2"))
        w.push(id="m9")
        self.assertEqual((w.m.state, w.printed()), (LISTENING, ["Success!", "<<<bob->alice: hi>>>"]))
        w.reply(APP, LISTEN_OK)
        self.assertEqual(w.m.state, IDLE)

    def test_a_push_on_any_connection_in_any_state(self):
        w = self.w
        w.type("register x pw")                       # awaited on the login server's connection
        w.push(LOGIN, id="m1")
        w.push(APP, id="m2")
        w.push(APP2, id="m3")                        # not connected: the driver would not say so
        self.assertEqual(w.printed(), ["<<<bob->alice: hi>>>"] * 3)
        self.assertEqual(w.m.state, WAITING_REPLY)

    def test_malformed_pushes_are_ignored(self):
        w = self.w
        w.type("list-friend alice")
        good = {"push": "message", "id": "m1", "to": "alice", "from": "bob", "message": "hi"}
        bad = [{"push": "receipt"}, {**good, "push": "other"}, {**good, "id": None}, {**good, "id": [1]},
               {**good, "id": True}, {**good, "id": {"a": 1}}, {**good, "to": None}, {**good, "to": ["alice"]},
               {**good, "from": None}, {**good, "message": 5}, {**good, "group": 3}]
        bad += [{k: v for k, v in good.items() if k != key} for key in ("id", "to", "from", "message")]
        for obj in bad:
            w.reply(APP, obj)
        self.assertEqual((w.m.state, w.printed()), (WAITING_REPLY, []))
        w.reply(APP, good)
        self.assertEqual(w.printed(), ["<<<bob->alice: hi>>>"])


class Ending(unittest.TestCase):
    def test_end_of_input_with_nobody_logged_in_stops_at_once(self):
        w = World()
        w.feed(EndOfInput())
        self.assertEqual((w.m.state, w.take()), (DONE, [Stop(0)]))
        self.assertEqual(w.feed(Typed("register a b")), [])   # DONE: nothing happens
        w = World()
        w.login()
        w.type("logout alice")
        w.take()
        w.reply(LOGIN, {"status": 0, "message": "Bye!"})
        w.feed(EndOfInput())
        self.assertEqual((w.m.state, w.take()), (DONE, [Print(("Bye!",)), Stop(0)]))

    def test_exit_with_a_user_logged_in_lingers_for_pushes(self):
        w = World()
        w.login()
        w.type("exit", "register bob pw")            # nothing after exit counts
        self.assertEqual((w.m.state, w.take()), (LINGERING, []))
        w.feed(EndOfInput())
        w.type("register carol pw")
        w.advance(0.4)
        w.push(message="bye")
        self.assertEqual(w.take(), [Print(("<<<bob->alice: bye>>>",))])
        w.advance(0.1)
        self.assertEqual((w.m.state, w.take()), (DONE, [Stop(0)]))
        w.push(id="late")
        self.assertEqual(w.take(), [])

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

    def test_end_of_input_waits_for_the_listen_then_lingers(self):
        w = World()
        w.type("login alice pw")
        w.feed(EndOfInput())
        w.feed(Connected(LOGIN))
        w.reply(LOGIN, login_reply())
        self.assertEqual(w.m.state, LISTENING)
        w.open_app()
        w.reply(APP, LISTEN_OK)
        self.assertEqual(w.m.state, LINGERING)
        self.assertEqual(w.timers[Timer.LINGER], 0.5)

    def test_no_linger(self):
        w = World(linger=0)
        w.login()
        w.feed(EndOfInput())
        self.assertEqual(w.take(), [Stop(0)])


class NoBrokerInTheClient(unittest.TestCase):
    """Issue 12: only servers touch the broker."""
    FORBIDDEN = ("lib.messaging", "stomp")

    def imports(self, path):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):   # in functions too
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                yield node.module
                yield from (f"{node.module}.{alias.name}" for alias in node.names)

    def test_no_module_of_the_client_imports_the_broker(self):
        paths = sorted((ROOT / "lib" / "clients").glob("*.py")) + [ROOT / "client.py"]
        self.assertIn(ROOT / "lib" / "clients" / "tcp.py", paths)
        for path in paths:
            for name in self.imports(path):
                with self.subTest(path=path.name, module=name):
                    self.assertFalse(any(name == f or name.startswith(f + ".") for f in self.FORBIDDEN))


if __name__ == "__main__":
    unittest.main()
