"""Pure tests of the application server's core (lib/social/app_core.py):
events in, actions out; no sockets, threads, clock or reactor. The login
server is played in memory with the link's codec."""
import unittest

import json

from lib.social import app_core as core
from lib.social.app_core import (ClientClosed, ClientRequest,
                                 CloseLink, Connect, ConnectFailed, Exit, LinkConnected, LinkLine,
                                 LinkLost, Pause, Publish, Published, Reply, Resume, SendLink,
                                 SetTimer, Start, TimerFired, TimerKey)
from lib.social.applink import CONNECT_FOR, CONNECT_RETRY, HEARTBEAT, State, decode, encode
from lib.social.protocol import decode_line, fail

OK = {"status": 0, "message": "Success!"}
# The exact texts clients see (PROTOCOL.md), spelled out so a changed string fails.
DOWN = {"status": 1, "message": "Service unavailable, try again"}
NO_BROKER = {"status": 1, "message": "Message service unavailable, try again later"}


class AppCore(core.AppCore):
    """The core, with the replies it passes on as encoded lines decoded, so
    the tests compare dicts, and the hot path's merged actions (Relay,
    Answer) spelled out as the pairs they stand for."""

    def handle(self, event):
        return [d for a in super().handle(event) for d in decoded(a)]


def decoded(action):
    if isinstance(action, core.Relay):
        return [Pause(action.conn), SendLink(action.line)]
    if isinstance(action, core.Answer):
        return decoded(Reply(action.conn, action.reply)) + [Resume(action.conn)]
    if isinstance(action, Reply) and type(action.reply) is bytes:
        return [Reply(action.conn, json.loads(action.reply))]
    return [action]


def req(text):
    return decode_line(text.encode("utf-8"))


def link_line(**msg):
    return LinkLine(encode(**msg).rstrip(b"\n"))


def cmds(actions):
    """The cmd messages among the actions, decoded."""
    return [decode(a.line) for a in actions if isinstance(a, SendLink) and decode(a.line)["op"] == "cmd"]


class CoreTestCase(unittest.TestCase):
    def make(self, broker=True, welcome=True):
        self.core = AppCore("app-1", "s3cret", "127.0.0.1", 9001, broker=broker)
        self.assertEqual(self.core.handle(Start(0.0)), [Connect()])
        self.core.handle(LinkConnected())
        if welcome:
            self.assertEqual(self.core.handle(link_line(op="welcome")), [])
        return self.core

    def ask(self, conn, text):
        """A request on a fresh connection that is relayed -> its link id."""
        actions = self.core.handle(ClientRequest(conn, req(text)))
        self.assertEqual(actions[0], Pause(conn))
        (cmd,) = cmds(actions)
        self.assertEqual(cmd["line"], text)
        return cmd["id"]

    def answer(self, rid, reply, publish=None):
        return self.core.handle(link_line(op="reply", id=rid, reply=reply, publish=publish))


class ConnectingTest(CoreTestCase):
    def test_connected_sends_hello_then_ping_and_arms_the_heartbeat(self):
        c = AppCore("app-1", "s3cret", "10.0.0.5", 9001)
        c.handle(Start(0.0))
        actions = c.handle(LinkConnected())
        self.assertEqual([decode(a.line) for a in actions[:2]],
                         [{"op": "hello", "secret": "s3cret", "id": "app-1", "host": "10.0.0.5", "port": 9001},
                          {"op": "ping"}])
        self.assertEqual(actions[2:], [SetTimer(TimerKey.HEARTBEAT, HEARTBEAT)])
        self.assertIs(c.state, State.HELLO_SENT)

    def test_failed_connects_retry_on_a_timer_then_give_up(self):
        c = AppCore("app-1", "s3cret", "127.0.0.1", 9001)
        c.handle(Start(50.0))
        self.assertEqual(c.handle(ConnectFailed(50.01, "refused")), [SetTimer(TimerKey.CONNECT, CONNECT_RETRY)])
        self.assertEqual(c.handle(TimerFired(TimerKey.CONNECT)), [Connect()])
        held = c.handle(ClientRequest("a", req("list-friend T")))
        self.assertEqual(held, [Pause("a")])                   # held while connecting
        with self.assertLogs("app", "ERROR") as logs:
            self.assertEqual(c.handle(ConnectFailed(50.0 + CONNECT_FOR, "refused")),
                             [Reply("a", DOWN), Resume("a"), Exit(1)])
        self.assertIn("cannot reach the login server: refused", logs.output[0])
        self.assertIs(c.state, State.CLOSED)

    def test_heartbeat_runs_while_connected_and_ends_with_the_link(self):
        c = self.make()
        actions = c.handle(TimerFired(TimerKey.HEARTBEAT))
        self.assertEqual([decode(actions[0].line), actions[1]], [{"op": "ping"}, SetTimer(TimerKey.HEARTBEAT, HEARTBEAT)])
        with self.assertLogs("app", "WARNING"):
            c.handle(LinkLost())
        self.assertEqual(c.handle(TimerFired(TimerKey.HEARTBEAT)), [])

    def test_no_heartbeat_after_a_rejection(self):
        c = self.make(welcome=False)
        with self.assertLogs("app", "ERROR") as logs:
            c.handle(link_line(op="rejected", reason="used secret"))
        self.assertIn("rejected us: used secret", logs.output[0])
        self.assertEqual(c.handle(TimerFired(TimerKey.HEARTBEAT)), [])


class EarlyRequestsTest(CoreTestCase):
    def test_held_until_the_welcome_then_relayed_in_order(self):
        c = AppCore("app-1", "s3cret", "127.0.0.1", 9001)
        c.handle(Start(0.0))
        self.assertEqual(c.handle(ClientRequest("a", req("post T1 one"))), [Pause("a")])
        c.handle(LinkConnected())
        self.assertEqual(c.handle(ClientRequest("b", req("post T2 two"))), [Pause("b")])
        self.assertEqual(c.handle(ClientRequest("gone", req("post T3 three"))), [Pause("gone")])
        c.handle(ClientClosed("gone"))                  # it must not run for a client that left
        actions = c.handle(link_line(op="welcome"))
        self.assertEqual([m["line"] for m in cmds(actions)], ["post T1 one", "post T2 two"])
        self.assertEqual(len(actions), 2)
        first, second = cmds(actions)
        self.assertEqual(c.handle(link_line(op="reply", id=second["id"], reply=OK, publish=None)),
                         [Reply("b", OK), Resume("b")])
        self.assertEqual(c.handle(link_line(op="reply", id=first["id"], reply=OK, publish=None)),
                         [Reply("a", OK), Resume("a")])


class LinkDownTest(CoreTestCase):
    def test_rejected_then_closed_answers_unavailable_at_once(self):
        c = self.make(welcome=False)
        c.handle(ClientRequest("early", req("list-friend T")))
        with self.assertLogs("app", "ERROR"):
            self.assertEqual(c.handle(link_line(op="rejected", reason="no")), [])
        self.assertEqual(c.handle(ClientRequest("a", req("list-friend T"))), [Pause("a"), Reply("a", DOWN), Resume("a")])
        with self.assertLogs("app", "WARNING"):
            self.assertEqual(c.handle(LinkLost()), [Reply("early", DOWN), Resume("early"), Exit(0)])
        self.assertEqual(c.handle(ClientRequest("b", req("list-friend T"))), [Pause("b"), Reply("b", DOWN), Resume("b")])

    def test_link_lost_answers_every_pending_and_early_request_and_exits(self):
        c = self.make()
        ids = [self.ask(conn, f"list-friend T{conn}") for conn in "abc"]
        self.answer(ids[1], OK)                              # b is done
        with self.assertLogs("app", "WARNING"):
            self.assertEqual(c.handle(LinkLost()),
                             [Reply("a", DOWN), Resume("a"), Reply("c", DOWN), Resume("c"), Exit(0)])
        self.assertEqual(c.handle(LinkLost()), [])           # a second notice changes nothing

    def test_lost_before_the_welcome_answers_the_held_ones(self):
        c = self.make(welcome=False)
        c.handle(ClientRequest("a", req("list-friend T")))
        with self.assertLogs("app", "WARNING"):
            self.assertEqual(c.handle(LinkLost()), [Reply("a", DOWN), Resume("a"), Exit(0)])

    def test_shutdown_answers_closes_and_exits_once(self):
        c = self.make()
        self.ask("a", "list-friend T")
        self.assertEqual(c.handle(link_line(op="shutdown")), [Reply("a", DOWN), Resume("a"), CloseLink(), Exit(0)])
        self.assertEqual(c.handle(LinkLost()), [])           # the close it asked for

    def test_a_bad_line_from_the_login_server_is_ignored(self):
        c = self.make()
        rid = self.ask("a", "list-friend T")
        for line in (LinkLine(b"garbage"), link_line(op="welcome"), link_line(op="reply", id=99, reply=OK)):
            with self.assertLogs("app", "ERROR") as logs:
                self.assertEqual(c.handle(line), [])
            self.assertIn("bad message from the login server", logs.output[0])
        self.assertIs(c.state, State.READY)
        self.assertEqual(self.answer(rid, OK), [Reply("a", OK), Resume("a")])

    def test_an_unusable_reply_is_answered_unavailable(self):
        self.make()
        rid = self.ask("a", "list-friend T")
        self.assertEqual(self.answer(rid, None), [Reply("a", DOWN), Resume("a")])


class PublishTest(CoreTestCase):
    DEST = ["/queue/np.u.1", '{"from":"ann"}', True]

    def test_publishes_only_on_a_successful_reply_then_answers_after_the_receipt(self):
        self.make()
        rid = self.ask("a", "send T ben hi")
        self.assertEqual(self.answer(rid, OK, self.DEST), [Publish("a", "/queue/np.u.1", '{"from":"ann"}', True)])
        self.assertEqual(self.core.handle(Published("a", True)), [Reply("a", OK), Resume("a")])
        self.assertEqual(self.core.handle(Published("a", True)), [])     # nothing left to answer

    def test_a_failed_reply_is_not_published(self):
        self.make()
        rid = self.ask("a", "send T ben hi")
        refused = fail("ben is not your friend")
        self.assertEqual(self.answer(rid, refused, self.DEST), [Reply("a", refused), Resume("a")])

    def test_a_failed_publish_answers_broker_down(self):
        self.make()
        rid = self.ask("a", "send-group T g hi")
        self.answer(rid, OK, ["/topic/np.g.1", "b", False])
        with self.assertLogs("app", "WARNING") as logs:
            self.assertEqual(self.core.handle(Published("a", False, "no receipt")), [Reply("a", NO_BROKER), Resume("a")])
        self.assertIn("no receipt", logs.output[0])

    def test_without_a_broker_nothing_is_published(self):
        self.make(broker=False)
        rid = self.ask("a", "send T ben hi")
        self.assertEqual(self.answer(rid, OK, self.DEST), [Reply("a", NO_BROKER), Resume("a")])

    def test_a_publish_in_flight_outlives_its_client(self):
        self.make()
        rid = self.ask("a", "send T ben hi")
        self.core.handle(ClientClosed("a"))
        self.assertEqual(len(self.answer(rid, OK, self.DEST)), 1)       # still published
        self.assertEqual(self.core.handle(Published("a", True)), [Reply("a", OK), Resume("a")])


class OrderTest(CoreTestCase):
    def test_replies_keep_their_order_per_connection(self):
        c = self.make()
        first = self.ask("a", "send T ben one")
        # Further requests wait behind the one in progress: nothing is relayed yet.
        self.assertEqual(c.handle(ClientRequest("a", req("list-friend T"))), [])
        self.assertEqual(c.handle(ClientRequest("a", req("list-invite T"))), [])
        other = self.ask("b", "list-friend U")                # another connection is not held up
        self.assertEqual(self.answer(other, OK), [Reply("b", OK), Resume("b")])
        self.assertEqual(self.answer(first, OK, PublishTest.DEST)[0].conn, "a")
        actions = c.handle(Published("a", True))
        self.assertEqual(actions[0], Reply("a", OK))
        (second,) = cmds(actions)
        self.assertEqual(second["line"], "list-friend T")
        self.assertNotIn(Resume("a"), actions)                # still busy: keep reading paused
        actions = self.answer(second["id"], {"status": 0, "friend": []})
        (third,) = cmds(actions)
        self.assertEqual(third["line"], "list-invite T")
        self.assertEqual(self.answer(third["id"], {"status": 0, "invite": []}),
                         [Reply("a", {"status": 0, "invite": []}), Resume("a")])

    def test_queued_requests_are_answered_when_the_link_is_lost(self):
        c = self.make()
        self.ask("a", "list-friend T")
        c.handle(ClientRequest("a", req("list-invite T")))
        with self.assertLogs("app", "WARNING"):
            self.assertEqual(c.handle(LinkLost()), [Reply("a", DOWN), Reply("a", DOWN), Resume("a"), Exit(0)])

    def test_a_closed_connections_queue_is_dropped(self):
        c = self.make()
        rid = self.ask("a", "list-friend T")
        c.handle(ClientRequest("a", req("post T x")))
        c.handle(ClientClosed("a"))
        self.assertEqual(self.answer(rid, OK), [Reply("a", OK), Resume("a")])   # no post relayed


class HotPathTest(unittest.TestCase):
    def test_a_relayed_request_is_one_action_each_way(self):
        """As the driver sees them: Relay (pause + link line), then Answer
        (the login server's encoded reply, passed on + resume)."""
        c = core.AppCore("app-1", "s3cret", "127.0.0.1", 9001)
        c.handle(Start(0.0))
        c.handle(LinkConnected())
        c.handle(link_line(op="welcome"))
        [relay] = c.client_request("a", req("list-friend T"))
        self.assertEqual((type(relay), relay.conn), (core.Relay, "a"))
        rid = decode(relay.line)["id"]
        [answer] = c.link_line(encode(op="reply", id=rid, reply={"status": 0, "friend": ["b"]},
                                      publish=None).rstrip(b"\n"))
        self.assertEqual(answer, core.Answer("a", b'{"status": 0, "friend": ["b"]}\n'))


class TablesTest(unittest.TestCase):
    def test_every_event_state_and_timer_has_a_handler(self):
        events = {core.Start, core.LinkConnected, core.ConnectFailed, core.LinkLine, core.LinkLost,
                  core.ClientRequest, core.ClientClosed, core.Published, core.TimerFired,
                  core.Subscribed, core.BrokerMessage, core.BrokerState, core.Written}
        self.assertEqual(set(core._ON_EVENT), events)
        self.assertEqual(set(core._DISPATCH), set(State))
        self.assertEqual(set(core._ON_TIMER), set(TimerKey))


if __name__ == "__main__":
    unittest.main()
