"""The two ends of the internal link paired in memory (h11's ConnectionPair):
the login server's core and an application server's core exchange the real
link bytes, with the test playing the fleet, the worker pool, the broker and
the clients. Both sides were written against applink's wire format; this
checks that they agree, end to end, without a socket."""
import json
import logging
import unittest

from lib.social import app_core as app
from lib.social import applink, protocol
from lib.social import login_core as login
from lib.loop.timers import CancelTimer
from lib.social.delivery import Wait
from lib.social.protocol import decode_line
from tests.pure.test_login_core import MemoryStore
from tests.pure.test_social import FixedContext
from tests.pure.test_app_core import AppCore

SECRET = "join-secret"
LINK = "link-1"           # the login side's handle for the app server's link
SERVER = "app-1"          # the fleet's handle for that app server


def request(text):
    return decode_line(text.encode("utf-8"))


def headers(message_id):
    """A MESSAGE's headers, as the broker link gives them."""
    return {"message-id": message_id, "subscription": "1", "ack": "ack-" + message_id}


class LinkPair:
    """A LoginCore and an AppCore joined by one link; `pump()` carries lines
    both ways until neither has anything to say."""

    def __init__(self):
        self.store = MemoryStore()
        self.login = login.LoginCore(self.store, "H(dummy)", ctx=FixedContext(),
                                     key=b"k" * 32)
        self.app = AppCore(SERVER, SECRET, "127.0.0.1", 9001)
        self.to_login, self.to_app = [], []     # lines in flight
        self.broker = []                        # the broker's answers, in flight
        self.app_actions, self.login_actions = [], []
        self.confirm = True                     # does the (pretend) broker confirm subscriptions?

    # -- the two ends ------------------------------------------------------------
    def app_do(self, event):
        for action in self.app.handle(event):
            self.app_actions.append(action)
            if isinstance(action, app.SendLink):
                self.to_login.append(action.line.rstrip(b"\n"))
            elif isinstance(action, app.Subscribe) and self.confirm:
                self.broker.append(app.Subscribed(action.waiter, action.destination, True))

    def login_do(self, event):
        for action in self.login.handle(event):
            self.login_actions.append(action)
            if isinstance(action, login.SendLink):
                self.to_app.append(applink.encode(**action.msg).rstrip(b"\n"))
            elif isinstance(action, login.FleetRegister):
                # the fleet knows this one-time secret
                ok = action.secret == SECRET and action.address == ("127.0.0.1", 9001)
                self.login_do(login.FleetRegistered(action.link, SERVER if ok else None))

    def pump(self):
        while self.to_login or self.to_app or self.broker:
            while self.to_login:
                self.login_do(login.LinkLine(LINK, self.to_login.pop(0)))
            while self.to_app:
                self.app_do(app.LinkLine(self.to_app.pop(0)))
            while self.broker:
                self.app_do(self.broker.pop(0))

    # -- a whole exchange ----------------------------------------------------------
    def connect(self):
        self.app_do(app.Start(0.0))
        self.login_do(login.LinkOpened(LINK, ("127.0.0.1", 40000)))
        self.app_do(app.LinkConnected())
        self.pump()

    def account(self, name, password="pw", server=SERVER):
        """register + login through the login core -> the token."""
        [reply] = self.log_in(name, password, server)
        return reply.reply["token"]

    def log_in(self, name, password="pw", server=SERVER):
        """register + login through the login core (the test plays the hashes
        and the fleet, which picks `server`) -> the login replies so far."""
        front = "front-" + name
        [hash_] = self.login.handle(login.ClientRequest(front, request(f"register {name} {password}")))
        self.login.handle(login.Hashed(front, f"H({hash_.password})"))
        [verify] = self.login.handle(login.ClientRequest(front, request(f"login {name} {password}")))
        [assign] = self.login.handle(login.Verified(front, verify.stored == f"H({password})"))
        self.login_actions.clear()
        self.login_do(login.Assigned(front, "127.0.0.1:9001", server=server))
        self.pump()    # the app server subscribes for the user before the reply
        return [a for a in self.login_actions if isinstance(a, login.Reply)]

    def ask_login(self, text, conn="front"):
        """A client request at the login server -> its replies (links pumped)."""
        self.login_actions.clear()
        self.app_actions.clear()
        self.login_do(login.ClientRequest(conn, request(text)))
        self.pump()
        return [a for a in self.login_actions if isinstance(a, login.Reply)]

    def deliver(self, destination, body, message_id):
        """The broker hands the app server a MESSAGE -> the app core's actions."""
        self.app_actions.clear()
        self.app_do(app.BrokerMessage(destination, body, headers(message_id)))
        self.pump()
        return list(self.app_actions)

    def queue(self, name):
        return self.store.state.users[name].session.queue

    def ask_app(self, conn, text):
        """A client request at the app server -> what the client is told."""
        self.app_actions.clear()
        self.app_do(app.ClientRequest(conn, request(text)))
        self.pump()
        return [a for a in self.app_actions if isinstance(a, (app.Reply, app.Publish))]

    def ask_app_all(self, conn, text):
        """A client request at the app server -> every action of the app core."""
        self.ask_app(conn, text)
        return list(self.app_actions)


class LinkPairTest(unittest.TestCase):
    def setUp(self):
        for name in ("login", "app"):   # rejections are logged; expected here
            logger = logging.getLogger(name)
            self.addCleanup(logger.setLevel, logger.level)
            logger.setLevel(logging.CRITICAL)

    def test_hello_is_welcomed_and_requests_are_relayed_both_ways(self):
        pair = LinkPair()
        pair.connect()
        self.assertIs(pair.app.link.state, applink.State.READY)
        alice, bob = pair.account("alice"), pair.account("bob")
        self.assertEqual(pair.ask_app("c1", f"invite {alice} bob"),
                         [app.Reply("c1", {"status": 0, "message": "Success!"})])
        self.assertEqual(pair.ask_app("c2", f"accept-invite {bob} alice"),
                         [app.Reply("c2", {"status": 0, "message": "Success!"})])
        self.assertEqual(pair.ask_app("c1", f"list-friend {alice}"),
                         [app.Reply("c1", {"status": 0, "friend": ["bob"]})])
        self.assertIn(("accept", "alice", "bob"), pair.store.recorded)
        # commands are no heartbeats; the app server's pings are
        self.assertNotIn(login.FleetHeartbeat(SERVER), pair.login_actions)
        pair.app_do(app.TimerFired(app.TimerKey.HEARTBEAT))
        pair.pump()
        self.assertEqual(pair.login_actions[-1], login.FleetHeartbeat(SERVER))

    def test_send_publishes_at_the_app_server_with_the_login_servers_destination(self):
        pair = LinkPair()
        pair.connect()
        alice, bob = pair.account("alice"), pair.account("bob")
        pair.ask_app("c1", f"invite {alice} bob")
        pair.ask_app("c2", f"accept-invite {bob} alice")
        [publish] = pair.ask_app("c1", f"send {alice} bob hello there")
        self.assertEqual((publish.conn, publish.destination, publish.persistent),
                         ("c1", pair.store.state.users["bob"].session.queue, True))
        # the client hears Success! only once the broker confirms
        pair.app_actions.clear()
        pair.app_do(app.Published("c1", True, None))
        self.assertIn(app.Reply("c1", {"status": 0, "message": "Success!"}), pair.app_actions)

    def test_a_wrong_secret_is_rejected_and_the_app_server_stops(self):
        pair = LinkPair()
        pair.app = AppCore(SERVER, "stolen", "127.0.0.1", 9001)
        pair.connect()
        self.assertIs(pair.app.link.state, applink.State.REJECTED)
        self.assertIn(login.CloseLink(LINK, flush=True), pair.login_actions)
        self.assertEqual(pair.ask_app("c1", "list-group tok"),
                         [app.Reply("c1", {"status": 1, "message": "Service unavailable, try again"})])

    def test_register_relayed_through_an_app_server_is_refused_by_the_login_core(self):
        pair = LinkPair()
        pair.connect()
        self.assertEqual(pair.ask_app("c1", "register mallory pw"),
                         [app.Reply("c1", {"status": 1, "message": "Send register to the login server"})])
        self.assertNotIn("mallory", pair.store.state.users)


SUCCESS = {"status": 0, "message": "Success!"}


class ChatTest(LinkPairTest):
    """Subscriptions and pushes, from the login server's attach to the ack."""

    def friends(self, pair, a, ta, b, tb):
        """On connections closed afterwards (a token command binds its connection)."""
        pair.ask_app("f-" + a, f"invite {ta} {b}")
        pair.ask_app("f-" + b, f"accept-invite {tb} {a}")
        pair.app_do(app.ClientClosed("f-" + a))
        pair.app_do(app.ClientClosed("f-" + b))

    def relogin(self, pair, name, conn):
        """Another login of `name` (password cached) -> the token."""
        pair.ask_login(f"login {name} pw", conn=conn)
        pair.login_do(login.Assigned(conn, "127.0.0.1:9001", server=SERVER))
        pair.pump()
        [reply] = [a for a in pair.login_actions if isinstance(a, login.Reply)]
        return reply.reply["token"]

    def test_login_is_answered_once_the_app_server_has_subscribed(self):
        pair = LinkPair()
        pair.connect()
        [reply] = pair.log_in("alice")
        self.assertEqual(reply.reply["status"], 0)
        kinds = [(type(a), getattr(a, "msg", {}).get("op")) for a in pair.login_actions]
        self.assertLess(kinds.index((login.SendLink, "attach")), kinds.index((login.Reply, None)))
        [subscribe] = [a for a in pair.app_actions if isinstance(a, app.Subscribe)]
        self.assertEqual((subscribe.destination, subscribe.ack), (pair.queue("alice"), "client-individual"))
        [attached] = [applink.decode(a.line) for a in pair.app_actions if isinstance(a, app.SendLink)
                      and b'"attached"' in a.line]
        self.assertEqual(attached, {"op": "attached", "id": subscribe.waiter[1], "ok": True})

    def test_without_the_brokers_receipt_the_login_waits_for_the_timeout(self):
        pair = LinkPair()
        pair.connect()
        pair.confirm = False
        self.assertEqual(pair.log_in("alice"), [])             # the broker has not confirmed
        [timer] = [a for a in pair.app_actions
                   if isinstance(a, app.SetTimer) and type(a.key) is tuple]
        self.assertEqual(timer.key[0], Wait.ATTACH)
        pair.app_do(app.TimerFired(timer.key))
        pair.pump()
        [reply] = [a for a in pair.login_actions if isinstance(a, login.Reply)]
        self.assertEqual((reply.conn, reply.reply["status"]), ("front-alice", 0))   # it goes on

    def test_a_message_sent_is_pushed_to_the_listening_connection_then_acked(self):
        pair = LinkPair()
        pair.connect()
        alice, bob = pair.account("alice"), pair.account("bob")
        self.friends(pair, "alice", alice, "bob", bob)
        self.assertEqual(pair.ask_app("cb", f"listen {bob}"),
                         [app.Reply("cb", {"status": 0, "message": "Listening"})])
        [publish] = pair.ask_app("ca", f"send {alice} bob hi  there")
        self.assertEqual(publish.destination, pair.queue("bob"))
        pair.app_do(app.Published("ca", True))
        [push] = pair.deliver(publish.destination, publish.body, "ID:1")
        self.assertEqual((push.conn, push.line), ("cb", protocol.push_line(
            "ID:1", "bob", {"from": "alice", "message": "hi there"})))
        self.assertEqual(push.line, b'{"push": "message", "id": "ID:1", "to": "bob", '
                                    b'"from": "alice", "message": "hi there"}\n')
        self.assertEqual(pair.app.handle(app.Written("cb", push.token)), [app.Ack(headers("ID:1"))])

    def test_any_token_command_binds_and_a_second_login_keeps_delivering(self):
        pair = LinkPair()
        pair.connect()
        alice, bob = pair.account("alice"), pair.account("bob")
        self.friends(pair, "alice", alice, "bob", bob)
        [publish] = pair.ask_app("ca", f"send {alice} bob one")
        pair.app_do(app.Published("ca", True))
        self.assertEqual(pair.deliver(publish.destination, publish.body, "ID:1"), [])   # held
        [push] = [a for a in pair.ask_app_all("cb", f"list-friend {bob}") if isinstance(a, app.Push)]
        self.assertEqual(push.conn, "cb")
        # bob logs in again on the same client: same queue, still bound
        self.assertEqual(self.relogin(pair, "bob", "front-again"), bob)
        [publish] = pair.ask_app("ca", f"send {alice} bob two")
        [push] = pair.deliver(publish.destination, publish.body, "ID:2")
        self.assertEqual(push.conn, "cb")

    def test_a_connection_closed_before_its_reply_is_not_bound(self):
        pair = LinkPair()
        pair.connect()
        alice, bob = pair.account("alice"), pair.account("bob")
        self.friends(pair, "alice", alice, "bob", bob)
        pair.app_do(app.ClientRequest("cb", request(f"listen {bob}")))
        pair.app_do(app.ClientClosed("cb"))                    # gone before the login server answers
        pair.pump()
        [publish] = pair.ask_app("ca", f"send {alice} bob hi")
        # nothing is pushed to a connection that is closed: it waits for bob's next one
        self.assertEqual(pair.deliver(publish.destination, publish.body, "ID:1"), [])
        pushes = [a for a in pair.ask_app_all("cb2", f"listen {bob}") if isinstance(a, app.Push)]
        self.assertEqual([p.conn for p in pushes], ["cb2"])

    def test_group_replies_wait_for_the_topic_subscription(self):
        pair = LinkPair()
        pair.connect()
        alice, bob = pair.account("alice"), pair.account("bob")
        pair.confirm = False
        for conn, line in (("ca", f"create-group {alice} g1"), ("cb", f"join-group {bob} g1")):
            with self.subTest(line=line):
                self.assertEqual(pair.ask_app(conn, line), [])          # not before the receipt
                [subscribe] = [a for a in pair.app_actions if isinstance(a, app.Subscribe)]
                topic = pair.store.state.groups["g1"].topic
                self.assertEqual(subscribe, app.Subscribe(topic, "auto", {}, (Wait.JOIN, conn)))
                self.assertEqual(pair.app.handle(app.Subscribed(subscribe.waiter, topic, True)),
                                 [app.Reply(conn, SUCCESS), app.Resume(conn),
                                  CancelTimer(subscribe.waiter)])

    def test_send_group_reaches_the_members_here_online_when_it_was_sent(self):
        pair = LinkPair()
        pair.connect()
        tokens = {name: pair.account(name) for name in ("alice", "bob", "carol", "dave")}
        pair.ask_app("ca", f"create-group {tokens['alice']} g1")
        for name in ("bob", "carol", "dave"):
            pair.ask_app("c" + name[0], f"join-group {tokens[name]} g1")
        for name in ("alice", "bob", "carol"):
            pair.ask_app("c" + name[0], f"listen {tokens[name]}")
        # dave moves to another app server; carol logs out
        pair.ask_login(f"locate {tokens['dave']}")
        pair.login_do(login.Assigned("front", "127.0.0.1:9002", server="app-2"))
        pair.ask_login(f"logout {tokens['carol']}")
        [publish] = pair.ask_app("ca", f"send-group {tokens['alice']} g1 hello all")
        self.assertEqual(publish.destination, pair.store.state.groups["g1"].topic)
        pair.app_do(app.Published("ca", True))
        # carol is back (and listening) before the broker delivers: she was not online when it was sent
        carol = self.relogin(pair, "carol", "front-again")
        pair.ask_app("cc2", f"listen {carol}")
        pushes = pair.deliver(publish.destination, publish.body, "ID:7")
        self.assertEqual(sorted((p.conn, p.line) for p in pushes), [
            ("ca", protocol.push_line("ID:7", "alice", json.loads(publish.body))),
            ("cb", protocol.push_line("ID:7", "bob", json.loads(publish.body)))])
        self.assertEqual(json.loads(pushes[0].line)["group"], "g1")
        self.assertEqual(sorted(json.loads(publish.body)["recipients"]), ["alice", "bob", "dave"])
        self.assertEqual([a for p in pushes for a in pair.app.handle(app.Written(p.conn, p.token))], [])

    def test_logout_drops_what_the_app_server_holds_and_unsubscribes(self):
        pair = LinkPair()
        pair.connect()
        alice, bob = pair.account("alice"), pair.account("bob")
        self.friends(pair, "alice", alice, "bob", bob)
        [publish] = pair.ask_app("ca", f"send {alice} bob unread")
        pair.deliver(publish.destination, publish.body, "ID:1")      # held: bob is not listening
        self.assertEqual(pair.ask_login(f"logout {bob}")[0].reply, {"status": 0, "message": "Bye!"})
        self.assertIn(login.SendLink(LINK, {"op": "detach", "user": "bob", "drop": True}),
                      pair.login_actions)
        self.assertEqual([a for a in pair.app_actions if isinstance(a, (app.Ack, app.Unsubscribe))],
                         [app.Ack(headers("ID:1")), app.Unsubscribe(publish.destination)])

    def test_a_relocated_user_is_detached_from_the_old_server_without_acks(self):
        pair = LinkPair()
        pair.connect()
        alice, bob = pair.account("alice"), pair.account("bob")
        self.friends(pair, "alice", alice, "bob", bob)
        pair.ask_app("cb", f"listen {bob}")
        [publish] = pair.ask_app("ca", f"send {alice} bob in flight")
        [push] = pair.deliver(publish.destination, publish.body, "ID:1")
        self.assertEqual(pair.ask_login(f"locate {bob}"), [])
        pair.login_do(login.Assigned("front", "127.0.0.1:9002", server="app-2"))
        # no link to app-2 here: answered at once; the old server lets go
        self.assertEqual(pair.login_actions[-2:], [
            login.SendLink(LINK, {"op": "detach", "user": "bob", "drop": False}),
            login.Reply("front", {"status": 0, "app_server": "127.0.0.1:9002",
                                  "message": "Your application server is ready"})])
        pair.app_actions.clear()
        pair.pump()
        self.assertEqual(pair.app_actions, [app.Unsubscribe(publish.destination)])
        # the broker hands it to the new server: no ack here, even once written
        self.assertEqual(pair.app.handle(app.Written("cb", push.token)), [])


if __name__ == "__main__":
    unittest.main()
