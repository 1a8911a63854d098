"""The login server's core without sockets, threads or clocks: events in,
actions out (lib/social/login_core.py). Hashes are fake strings; the fleet,
the worker pool and the links are played by the test."""
import json
import unittest

from lib.social import applink, commands, protocol
from lib.social import login_core as lc
from lib.social.login_core import (
    Assigned, ClientRequest, CloseLink, FleetAssign, FleetHeartbeat, FleetLost, FleetRegister,
    FleetRegistered, FleetRelease, Hash, Hashed, HelloTimedOut, IllegalEvent, LinkClosed,
    LinkLine, LinkOpened, Reply, SendLink, StartHelloTimer, StopHelloTimer, Verified, Verify)
from tests.pure.test_social import FixedContext

DUMMY = "scrypt$dummy"
BROKER = "mq:61613"
APP = "10.0.0.5:7001"
SERVER = "server-1"     # the fleet's handle of the app server at APP (its link: "L")
NO_USER = {"status": 1, "message": "No such user or password error"}


class MemoryStore:
    """The store's interface (`state`, `record`) without files."""

    def __init__(self):
        self.state, self.recorded = commands.State(), []

    def record(self, mutations):
        for mutation in mutations:
            commands.apply(self.state, mutation)
            self.recorded.append(mutation)


def request(line):
    return protocol.decode_line(line.encode("utf-8"))


class CoreTest(unittest.TestCase):
    def setUp(self):
        self.store, self.ctx = MemoryStore(), FixedContext()
        self.core = self.new_core()

    def new_core(self):
        """A login server process; a second one on the same store is a restart."""
        return lc.LoginCore(self.store, DUMMY, ctx=self.ctx, key=b"k" * 32)

    def ask(self, conn, line):
        return self.core.handle(ClientRequest(conn, request(line)))

    def register(self, name, password="pw", conn="reg"):
        self.assertEqual(self.ask(conn, f"register {name} {password}"), [Hash(conn, password)])
        return self.core.handle(Hashed(conn, f"H({password})"))

    def login(self, name, password="pw", conn="c", server=SERVER):
        """Through verification (or the cache) and the fleet (to `server`): the reply."""
        actions = self.ask(conn, f"login {name} {password}")
        if actions and isinstance(actions[0], Verify):
            actions = self.core.handle(Verified(conn, actions[0].stored == f"H({password})"))
        self.assertEqual(actions, [FleetAssign(conn, name)])
        actions = self.core.handle(Assigned(conn, APP, server=server))
        attach = [a for a in actions if isinstance(a, SendLink) and a.msg["op"] == "attach"]
        if attach:   # the server has a link: the reply waits for its `attached`
            self.assertEqual([a for a in actions if isinstance(a, Reply)], [])
            line = applink.encode(op="attached", id=attach[0].msg["id"], ok=True)
            actions = self.core.handle(LinkLine(attach[0].link, line.rstrip(b"\n")))
        [reply] = [a for a in actions if isinstance(a, Reply)]
        return reply.reply


class RegisterTest(CoreTest):
    def test_refusals_come_at_once_without_hashing(self):
        self.register("alice")
        for line, message in (("register alice", "Usage: register <username> <password>"),
                              ("register a b c", "Usage: register <username> <password>"),
                              ("register #x pw", "Invalid username: `#`, `<` and `>` are not allowed"),
                              ("register alice other", "alice is already used")):
            with self.subTest(line=line):
                self.assertEqual(self.ask("c", line), [Reply("c", {"status": 1, "message": message})])

    def test_success_is_recorded_before_the_reply(self):
        self.assertEqual(self.ask("c", "register bob s3cret"), [Hash("c", "s3cret")])
        self.assertEqual(self.store.recorded, [])
        self.assertEqual(self.core.handle(Hashed("c", "H(s3cret)")),
                         [Reply("c", {"status": 0, "message": "Success!"})])
        self.assertEqual(self.store.recorded, [("register", "bob", "H(s3cret)")])

    def test_two_registrations_of_one_name_racing_through_the_hash(self):
        self.assertEqual(self.ask("c1", "register bob one"), [Hash("c1", "one")])
        # the name is not in the state yet, but it is taken
        self.assertEqual(self.ask("c2", "register bob two"),
                         [Reply("c2", {"status": 1, "message": "bob is already used"})])
        self.assertEqual(self.ask("c3", "register eve x"), [Hash("c3", "x")])   # other names go on
        self.assertEqual(self.core.handle(Hashed("c1", "H(one)"))[0].reply["status"], 0)
        self.assertEqual(self.ask("c2", "register bob two"),
                         [Reply("c2", {"status": 1, "message": "bob is already used"})])
        self.assertEqual(self.store.recorded, [("register", "bob", "H(one)")])

    def test_a_failed_hash_frees_the_name_and_records_nothing(self):
        self.ask("c1", "register bob one")
        with self.assertLogs("login", "ERROR"):
            self.assertEqual(self.core.handle(Hashed("c1", None, MemoryError("no memory"))),
                             [Reply("c1", {"status": 1, "message": "Internal error, try again"})])
        self.assertEqual(self.store.recorded, [])
        self.assertEqual(self.ask("c2", "register bob two"), [Hash("c2", "two")])


class LoginTest(CoreTest):
    def setUp(self):
        super().setUp()
        self.register("alice")

    def test_success_waits_for_the_server_then_replies_with_everything(self):
        self.assertEqual(self.ask("c", "login alice pw"), [Verify("c", "H(pw)", "pw")])
        self.assertEqual(self.core.handle(Verified("c", True)), [FleetAssign("c", "alice")])
        self.assertIsNone(self.store.state.users["alice"].session)   # decided once assigned
        [reply] = self.core.handle(Assigned("c", APP))
        token = self.core.tokens["alice"]
        self.assertEqual(reply, Reply("c", {
            "status": 0, "token": token, "app_server": APP, "message": "Success!"}))
        self.assertEqual(self.store.state.user_for_token(token), "alice")
        self.assertEqual(self.store.recorded[-1],
                         ("login", "alice", commands.token_digest(token), "/queue/q2"))

    def test_usage(self):
        self.assertEqual(self.ask("c", "login alice"),
                         [Reply("c", {"status": 1, "message": "Usage: login <id> <password>"})])

    def test_no_such_user_costs_a_verification_of_the_dummy(self):
        self.assertEqual(self.ask("c", "login nobody pw"), [Verify("c", DUMMY, "pw")])
        # even if the dummy matched, nobody logs in as a user that does not exist
        self.assertEqual(self.core.handle(Verified("c", True)), [Reply("c", NO_USER)])
        self.assertNotIn("nobody", self.core.verified)

    def test_wrong_password(self):
        self.assertEqual(self.ask("c", "login alice bad"), [Verify("c", "H(pw)", "bad")])
        self.assertEqual(self.core.handle(Verified("c", False)), [Reply("c", NO_USER)])
        self.assertEqual(self.core.handle(ClientRequest("c", request("login alice bad"))),
                         [Verify("c", "H(pw)", "bad")])   # a failure is not remembered
        self.assertEqual(self.core.handle(Verified("c", False, OSError("pool"))), [Reply("c", NO_USER)])

    def test_a_repeated_login_skips_the_hash_and_keeps_the_token(self):
        first = self.login("alice", conn="c1")
        self.assertEqual(self.ask("c2", "login alice pw"), [FleetAssign("c2", "alice")])
        [again] = self.core.handle(Assigned("c2", APP))
        self.assertEqual(again.reply, first)
        # another password is verified again, and does not match
        self.assertEqual(self.ask("c3", "login alice other"), [Verify("c3", "H(pw)", "other")])

    def test_a_changed_record_is_verified_again(self):
        self.login("alice")
        self.store.record([("password", "alice", "H(new)")])
        self.assertEqual(self.ask("c", "login alice pw"), [Verify("c", "H(new)", "pw")])

    def test_after_a_restart_the_token_rotates_and_the_queue_stays(self):
        first = self.login("alice")
        self.core = self.new_core()
        self.assertEqual(self.ask("c", "login alice pw"), [Verify("c", "H(pw)", "pw")])   # cache gone
        self.core.handle(Verified("c", True))
        [rotated] = self.core.handle(Assigned("c", APP))
        self.assertNotEqual(rotated.reply["token"], first["token"])
        self.assertEqual(self.store.state.users["alice"].session.queue, "/queue/q2")   # kept
        self.assertIsNone(self.store.state.user_for_token(first["token"]))
        self.assertEqual(self.login("alice", conn="c2"), rotated.reply)   # then it is kept

    def test_no_server_available(self):
        self.ask("c", "login alice pw")
        self.core.handle(Verified("c", True))
        full = "No application server available: all 1 are full, try again later"
        self.assertEqual(self.core.handle(Assigned("c", None, full)),
                         [Reply("c", {"status": 1, "message": full})])
        self.assertIsNone(self.store.state.users["alice"].session)

    def test_deleted_while_waiting_for_a_server_gives_the_slot_back(self):
        token = self.login("alice", conn="c1")["token"]
        self.ask("c2", "login alice pw")                     # cached: straight to the fleet
        self.ask("c1", f"delete {token}")
        self.assertEqual(self.core.handle(Assigned("c2", APP)),
                         [FleetRelease("alice"), Reply("c2", NO_USER)])


class SessionTest(CoreTest):
    def setUp(self):
        super().setUp()
        self.register("alice")
        self.token = self.login("alice")["token"]

    def test_logout_releases_the_slot_and_forgets_the_token_not_the_password(self):
        self.assertEqual(self.ask("c", f"logout {self.token}"),
                         [FleetRelease("alice"), Reply("c", {"status": 0, "message": "Bye!"})])
        self.assertNotIn("alice", self.core.tokens)
        self.assertEqual(self.store.recorded[-1], ("logout", "alice"))
        self.assertEqual(self.ask("c", "login alice pw"), [FleetAssign("c", "alice")])

    def test_delete_releases_the_slot_and_forgets_the_password(self):
        self.assertEqual(self.ask("c", f"delete {self.token}"),
                         [FleetRelease("alice"), Reply("c", {"status": 0, "message": "Success!"})])
        self.assertEqual(self.store.recorded[-1], ("delete", "alice"))
        self.assertNotIn("alice", self.core.tokens)
        # the same name and the same record again: verified, not taken from memory
        self.register("alice")
        self.assertEqual(self.ask("c", "login alice pw"), [Verify("c", "H(pw)", "pw")])

    def test_locate(self):
        self.assertEqual(self.ask("c", f"locate {self.token}"), [FleetAssign("c", "alice")])
        self.assertEqual(self.core.handle(Assigned("c", "10.0.0.6:7002")), [Reply("c", {
            "status": 0, "app_server": "10.0.0.6:7002",
            "message": "Your application server is ready"})])
        self.ask("c", f"locate {self.token}")
        self.assertEqual(self.core.handle(Assigned("c", None, "The login server is shutting down")),
                         [Reply("c", {"status": 1, "message": "The login server is shutting down"})])
        self.assertEqual(self.ask("c", "locate nobody"),
                         [Reply("c", {"status": 1, "message": "Not login yet"})])

    def test_other_commands_are_answered_at_once(self):
        for line, message in ((f"invite {self.token} bob", "Send invite to your application server"),
                              ("exit", "Unknown command exit"), (f"logout {self.token} x", "Usage: logout <user>")):
            with self.subTest(line=line):
                self.assertEqual(self.ask("c", line), [Reply("c", {"status": 1, "message": message})])


class LinkTest(CoreTest):
    HELLO = b'{"op":"hello","secret":"s3","id":"app-1","host":"0.0.0.0","port":7001}'

    def welcome(self, link="L"):
        self.assertEqual(self.core.handle(LinkOpened(link, ("127.0.0.1", 5000))),
                         [StartHelloTimer(link, lc.HELLO_TIMEOUT)])
        self.assertEqual(self.core.handle(LinkLine(link, self.HELLO)),
                         [StopHelloTimer(link), FleetRegister(link, "s3", ("0.0.0.0", 7001))])
        self.assertEqual(self.core.handle(FleetRegistered(link, "server-1")),
                         [SendLink(link, {"op": "welcome"})])

    def cmd(self, line, rid=7, link="L"):
        data = applink.encode(op="cmd", id=rid, line=line)
        actions = self.core.handle(LinkLine(link, data.rstrip(b"\n")))
        [send] = actions      # a command is no heartbeat: pings are
        self.assertEqual((send.link, send.msg["op"], send.msg["id"]), (link, "reply", rid))
        return send

    def test_hello_accepted(self):
        self.welcome()

    def test_hello_with_an_unknown_secret_is_rejected(self):
        self.core.handle(LinkOpened("L", ("127.0.0.1", 5000)))
        self.core.handle(LinkLine("L", self.HELLO))
        rejected = [SendLink("L", {"op": "rejected", "reason": "unknown or used join secret"}),
                    CloseLink("L", flush=True)]
        with self.assertLogs("login", "WARNING") as logs:
            self.assertEqual(self.core.handle(FleetRegistered("L", None)), rejected)
        self.assertIn("rejected app-server link from ('127.0.0.1', 5000)", logs.output[0])
        self.assertEqual(applink.encode(**rejected[0].msg),
                         b'{"op":"rejected","reason":"unknown or used join secret"}\n')
        self.assertEqual(self.core.handle(LinkLine("L", b'{"op":"ping"}')), [])   # closing: ignored
        self.assertEqual(self.core.handle(LinkClosed("L")), [])   # it never was a server

    def test_anything_but_a_complete_hello_is_rejected_without_asking_the_fleet(self):
        for data in (b'{"op":"ping"}', b'{"op":"hello","secret":"s3","host":"h"}',
                     b'{"op":"hello","secret":7,"host":"h","port":1}',
                     b'{"op":"hello","secret":"s3","host":"h","port":"x"}'):
            with self.subTest(data=data):
                self.core.handle(LinkOpened("L"))
                with self.assertLogs("login", "WARNING"):
                    actions = self.core.handle(LinkLine("L", data))
                self.assertEqual(actions[0], StopHelloTimer("L"))
                self.assertEqual([type(a) for a in actions[1:]], [SendLink, CloseLink])
                self.assertEqual(actions[1].msg["op"], "rejected")
                self.core.handle(LinkClosed("L"))

    def test_garbage_closes_the_link_at_once(self):
        self.core.handle(LinkOpened("L"))
        self.assertEqual(self.core.handle(LinkLine("L", b"not json")),
                         [StopHelloTimer("L"), CloseLink("L")])
        self.welcome("M")
        self.assertEqual(self.core.handle(LinkLine("M", b'["op"]')), [CloseLink("M")])
        self.assertEqual(self.core.handle(LinkClosed("M")), [])   # not ours to report lost: the close is

    def test_a_link_silent_after_connecting_is_closed(self):
        self.core.handle(LinkOpened("L"))
        self.assertEqual(self.core.handle(HelloTimedOut("L")), [CloseLink("L")])
        self.assertEqual(self.core.handle(LinkClosed("L")), [])

    def test_a_link_closed_before_its_hello_stops_its_timer(self):
        self.core.handle(LinkOpened("L"))
        self.assertEqual(self.core.handle(LinkClosed("L")), [StopHelloTimer("L")])

    def test_closed_link_is_a_lost_server(self):
        self.welcome()
        self.assertEqual(self.core.handle(LinkClosed("L")), [FleetLost("server-1", "link closed")])

    def test_ping_is_a_heartbeat(self):
        self.welcome()
        self.assertEqual(self.core.handle(LinkLine("L", b'{"op":"ping"}')), [FleetHeartbeat("server-1")])
        self.assertEqual(self.core.handle(LinkLine("L", b'{"op":"future"}')), [])

    def test_commands_are_relayed_with_what_to_publish(self):
        self.register("alice")
        self.register("bob")
        ta, tb = self.login("alice", conn="a")["token"], self.login("bob", conn="b")["token"]
        self.welcome()
        self.assertEqual(self.cmd(f"invite {ta} bob").msg["reply"], {"status": 0, "message": "Success!"})
        self.assertEqual(self.store.recorded[-1], ("invite", "alice", "bob"))
        self.cmd(f"accept-invite {tb} alice")
        send = self.cmd(f"send {ta} bob hi  there", rid=9)
        queue = self.store.state.users["bob"].session.queue
        body = protocol.chat_body("alice", "hi there", to="bob", recipients=["bob"])
        self.assertEqual(send.msg, {"op": "reply", "id": 9, "reply": {"status": 0, "message": "Success!"},
                                    "publish": [queue, body, True], "user": "alice"})
        # the wire stays byte for byte what the app servers read
        self.assertEqual(applink.encode(**send.msg),
                         b'{"op":"reply","id":9,"publish":'
                         + json.dumps([queue, body, True], ensure_ascii=False,
                                      separators=(",", ":")).encode()
                         + b',"user":"alice","status":0}\t{"status": 0, "message": "Success!"}\n')
        self.assertIsNone(self.cmd(f"list-friend {ta}").msg["publish"])

    def test_link_line_called_directly_is_the_event(self):
        """The driver's hot path (no LinkLine made) decides as handle() does,
        in every link state."""
        self.core.handle(LinkOpened("H"))
        with self.assertLogs("login", "WARNING"):
            self.assertEqual(self.core.link_line("H", b'{"op":"nonsense"}'),
                             [StopHelloTimer("H"), SendLink("H", {"op": "rejected",
                              "reason": "unknown or used join secret"}), CloseLink("H", flush=True)])
        self.welcome()
        self.assertEqual(self.core.link_line("L", b'{"op":"ping"}'), [FleetHeartbeat("server-1")])
        self.assertEqual(self.core.link_line("L", b"not json"), [CloseLink("L")])
        self.assertEqual(self.core.link_line("L", b'{"op":"ping"}'), [])   # closing: ignored
        with self.assertRaises(IllegalEvent):
            self.core.link_line("nobody", b'{"op":"ping"}')

    def test_relay_refusals(self):
        self.welcome()
        for line, message in (("register a b", "Send register to the login server"),
                              ("login a b", "Send login to the login server"),
                              ("   ", "Bad request"), ("x" * 9000, "Bad request"),
                              ("logout nobody", "Not login yet")):
            with self.subTest(line=line[:20]):
                self.assertEqual(self.cmd(line).msg["reply"], {"status": 1, "message": message})
        missing = self.core.handle(LinkLine("L", b'{"op":"cmd","id":3}'))
        self.assertEqual(missing[0].msg["reply"], {"status": 1, "message": "Bad request"})


class AttachedTest(CoreTest):
    """A login (or a locate) is answered once its app server has subscribed
    for the user (`attached`), however that ends."""
    HELLO, welcome, cmd = LinkTest.HELLO, LinkTest.welcome, LinkTest.cmd

    def setUp(self):
        super().setUp()
        self.register("alice")
        self.welcome()

    def second_link(self, link="M", server="server-2"):
        self.core.handle(LinkOpened(link, ("127.0.0.1", 5001)))
        self.core.handle(LinkLine(link, self.HELLO))
        self.core.handle(FleetRegistered(link, server))

    def start_login(self, conn="c", server=SERVER):
        """login alice, assigned to `server` -> the actions (the attach, no reply)."""
        actions = self.ask(conn, "login alice pw")
        if isinstance(actions[0], Verify):
            actions = self.core.handle(Verified(conn, True))
        self.assertEqual(actions, [FleetAssign(conn, "alice")])
        actions = self.core.handle(Assigned(conn, APP, server=server))
        self.assertEqual([a for a in actions if isinstance(a, Reply)], [])
        return actions

    def attached(self, rid, ok=True, link="L"):
        line = json.dumps({"op": "attached", "id": rid, "ok": ok}).encode()
        return self.core.handle(LinkLine(link, line))

    def test_the_attach_names_the_queue_and_the_groups_and_the_reply_waits(self):
        token = self.login("alice")["token"]
        self.cmd(f"create-group {token} g1")
        [attach] = self.start_login("c2")
        state = self.store.state
        self.assertEqual(attach, SendLink("L", {
            "op": "attach", "id": attach.msg["id"], "user": "alice",
            "queue": state.users["alice"].session.queue, "topics": {"g1": state.groups["g1"].topic}}))
        self.assertEqual(self.attached(attach.msg["id"]), [Reply("c2", {
            "status": 0, "token": token, "app_server": APP, "message": "Success!"})])
        self.assertEqual(self.attached(attach.msg["id"]), [])   # answered once

    def test_not_ok_still_answers(self):
        [attach] = self.start_login()
        with self.assertLogs("login", "WARNING") as logs:
            [reply] = self.attached(attach.msg["id"], ok=False)
        self.assertIn("could not confirm the subscriptions of alice", logs.output[0])
        self.assertEqual((reply.conn, reply.reply["status"], reply.reply["message"]),
                         ("c", 0, "Success!"))

    def test_a_link_closed_while_a_login_waits_answers_it(self):
        self.second_link()
        self.start_login("c1")
        self.start_login("c2", server="server-2")   # waits on the other link
        actions = self.core.handle(LinkClosed("L"))
        self.assertEqual([(type(a), getattr(a, "conn", None)) for a in actions],
                         [(Reply, "c1"), (FleetLost, None)])
        self.assertEqual(actions[0].reply["status"], 0)
        self.assertEqual(self.core.waiting["c2"].phase, lc.Phase.ATTACHING)

    def test_unknown_or_malformed_ids_and_other_links_answers_are_ignored(self):
        self.second_link()
        [attach] = self.start_login()
        rid = attach.msg["id"]
        for bad in (rid + 1, str(rid), [rid], {"id": rid}, None, True, float(rid)):
            with self.subTest(id=bad):
                self.assertEqual(self.attached(bad), [])
        # an app server answers only for its own attaches
        self.assertEqual(self.attached(rid, link="M"), [])
        [reply] = self.attached(rid)
        self.assertEqual(reply.conn, "c")

    def test_a_move_detaches_the_old_server_and_waits_for_the_new(self):
        self.second_link()
        token = self.login("alice")["token"]
        self.assertEqual(self.ask("c", f"locate {token}"), [FleetAssign("c", "alice")])
        detach, attach = self.core.handle(Assigned("c", "10.0.0.6:7002", server="server-2"))
        self.assertEqual(detach, SendLink("L", {"op": "detach", "user": "alice", "drop": False}))
        self.assertEqual((attach.link, attach.msg["op"]), ("M", "attach"))
        [reply] = self.attached(attach.msg["id"], link="M")
        self.assertEqual(reply, Reply("c", {"status": 0, "app_server": "10.0.0.6:7002",
                                            "message": "Your application server is ready"}))

    def test_logout_and_delete_detach_and_drop(self):
        for line in ("logout", "delete"):
            with self.subTest(line=line):
                token = self.login("alice")["token"]
                actions = self.ask("c", f"{line} {token}")
                self.assertEqual(actions[:2], [
                    FleetRelease("alice"),
                    SendLink("L", {"op": "detach", "user": "alice", "drop": True})])
                self.assertEqual(type(actions[2]), Reply)
        self.register("alice")             # deleted: a new account


class IllegalEventTest(CoreTest):
    def assertIllegal(self, event):
        with self.assertRaises(IllegalEvent):
            self.core.handle(event)

    def test_client_events_out_of_turn(self):
        self.assertIllegal(Hashed("c", "H(x)"))             # nothing was being hashed
        self.assertIllegal(Verified("c", True))
        self.assertIllegal(Assigned("c", APP))
        self.ask("c", "register bob pw")
        self.assertIllegal(ClientRequest("c", request("login bob pw")))   # one request at a time
        self.assertIllegal(Verified("c", True))             # hashing, not verifying
        self.core.handle(Hashed("c", "H(pw)"))
        self.assertIllegal(Hashed("c", "H(pw)"))            # answered once

    def test_link_events_out_of_turn(self):
        self.assertIllegal(LinkLine("L", b'{"op":"ping"}'))    # never opened
        self.assertIllegal(LinkClosed("L"))
        self.core.handle(LinkOpened("L"))
        self.assertIllegal(LinkOpened("L"))
        self.assertIllegal(FleetRegistered("L", "server-1"))   # no hello yet
        self.core.handle(LinkLine("L", LinkTest.HELLO))
        self.assertIllegal(HelloTimedOut("L"))                 # its timer was stopped
        self.core.handle(FleetRegistered("L", "server-1"))
        self.core.handle(LinkClosed("L"))
        self.assertIllegal(LinkClosed("L"))


if __name__ == "__main__":
    unittest.main()
