"""Command semantics without sockets: every failure of every command, in
priority order (docs/protocol.md §3-§4), and the orders the course's answers need."""
import itertools
import unittest

from lib.social import commands, protocol
from lib.social.protocol import Request, Server


class FixedContext(commands.Context):
    def __init__(self, limits=None):
        super().__init__(limits)
        self.n = itertools.count(1)

    def new_token(self):
        return f"tok{next(self.n)}"

    def new_queue(self):
        return f"/queue/q{next(self.n)}"

    def new_topic(self):
        return f"/topic/t{next(self.n)}"


class World:
    """A State driven only through the pure functions, as the servers do."""

    def __init__(self, *users, online=(), limits=None):
        self.state, self.ctx, self.tok = commands.State(), FixedContext(limits), {}
        self.journal = []     # every mutation applied, as the store would journal them
        for user in users:
            self.register(user)
        for user in online:
            self.login(user)

    def apply(self, outcome):
        for mutation in outcome.mutations:
            commands.apply(self.state, mutation)
        self.journal.extend(outcome.mutations)
        return outcome

    def register(self, name, password="pw"):
        return self.apply(commands.finish_register(self.state, name, password)).reply

    def login(self, name):
        known = self.tok.get(name)
        reply = self.apply(commands.finish_login(self.state, name, True, self.ctx, known)).reply
        self.tok[name] = reply["token"]
        return reply

    def run(self, line, served_by=Server.APP):
        """`line` names users as {alice}; they become alice's token."""
        words = line.format_map(_Tokens(self.tok)).split()
        return self.apply(commands.handle(self.state, Request(words[0], tuple(words[1:])),
                                        self.ctx, served_by))

    def msg(self, line, served_by=Server.APP):
        return self.run(line, served_by).reply.get("message")


class _Tokens(dict):
    def __missing__(self, key):
        return "not-a-token"


class PriorityTest(unittest.TestCase):
    def setUp(self):
        self.w = World("alice", "bob", "carol", "dave", online=("alice", "bob", "carol"))

    def check(self, cases, served_by=Server.APP):
        for line, want in cases:
            with self.subTest(line=line):
                self.assertEqual(self.w.msg(line, served_by), want)

    def test_unknown_command_comes_first(self):
        self.check([("reg a a", "Unknown command reg"), ("exi", "Unknown command exi"),
                    ("logi {alice}", "Unknown command logi"), ("INVITE {alice} bob", "Unknown command INVITE")])

    def test_register(self):
        w = World("alice")
        for args in ((), ("a",), ("a", "b", "c"), ("alice", "x", "y")):
            self.assertEqual(commands.check_register(w.state, args)["message"],
                             "Usage: register <username> <password>")
        self.assertEqual(commands.check_register(w.state, ("alice", "x"))["message"], "alice is already used")
        self.assertIsNone(commands.check_register(w.state, ("zed", "x")))
        self.assertEqual(w.register("zed"), {"status": 0, "message": "Success!"})
        # a race lost while hashing
        self.assertEqual(commands.finish_register(w.state, "zed", "h").reply["message"], "zed is already used")

    def test_login(self):
        w = World("alice")
        for args in ((), ("a",), ("alice", "pw", "x")):
            self.assertEqual(commands.check_login(w.state, args)[0]["message"], "Usage: login <id> <password>")
        self.assertEqual(commands.check_login(w.state, ("nobody", "pw")), (None, None))
        self.assertEqual(commands.check_login(w.state, ("alice", "pw")), (None, "pw"))
        for name, matched in (("alice", False), ("nobody", True)):
            self.assertEqual(commands.finish_login(w.state, name, matched, w.ctx).reply,
                             {"status": 1, "message": "No such user or password error"})

    def test_token_then_usage_for_every_token_command(self):
        for name, command in protocol.COMMANDS.items():
            if not command.token:
                continue
            served = command.server
            with self.subTest(command=name):
                self.assertEqual(self.w.msg(name, served), "Not login yet")
                self.assertEqual(self.w.msg(f"{name} not-a-token", served), "Not login yet")
                self.assertEqual(self.w.msg(f"{name} not-a-token a b c d", served), "Not login yet")
                bad_arity = command.max_args + 1 if command.max_args is not None else command.min_args - 1
                line = f"{name} {{dave}} " + " ".join(["x"] * max(bad_arity, 0))
                self.assertEqual(self.w.msg(line.replace("{dave}", "{carol}"), served), command.usage)

    def test_wrong_server_after_usage(self):
        self.check([("invite {alice} bob", "Send invite to your application server"),
                    ("invite {alice}", "Usage: invite <user> <id>")], served_by=Server.LOGIN)
        self.check([("logout {alice}", "Send logout to the login server")])

    def test_invite(self):
        w = self.w
        self.check([("invite {alice} alice", "You cannot invite yourself"),
                    ("invite {alice} ghost", "ghost does not exist"),
                    ("invite {alice} bob", "Success!"),
                    ("invite {alice} bob", "Already invited"),
                    ("invite {bob} alice", "alice has invited you"),
                    ("invite {alice} dave", "Success!")])   # offline users can be invited
        w.run("accept-invite {bob} alice")
        self.check([("invite {alice} bob", "bob is already your friend"),
                    ("invite {bob} alice", "alice is already your friend")])
        # yourself beats everything; a missing user beats nothing else
        self.assertEqual(w.msg("invite {bob} bob"), "You cannot invite yourself")

    def test_list_invite_order_and_empty(self):
        self.assertEqual(self.w.run("list-invite {alice}").reply, {"status": 0, "invite": []})
        self.w.run("invite {carol} alice")
        self.w.run("invite {bob} alice")
        self.assertEqual(self.w.run("list-invite {alice}").reply, {"status": 0, "invite": ["carol", "bob"]})

    def test_accept_invite(self):
        self.check([("accept-invite {alice} bob", "bob did not invite you"),
                    ("accept-invite {alice} ghost", "ghost did not invite you")])
        self.w.run("invite {bob} alice")
        self.check([("accept-invite {alice} bob", "Success!"),
                    ("accept-invite {alice} bob", "bob did not invite you")])
        self.assertEqual(self.w.run("list-invite {alice}").reply["invite"], [])

    def test_list_friend_order_is_accepted_by_me_then_accepted_mine(self):
        # hw5-demo answer 3: user10 lists user9 (whose invite it accepted) before
        # user1 (who accepted user10's invite earlier in time).
        w = World("u1", "u9", "u10", online=("u1", "u9", "u10"))
        w.run("invite {u10} u1")
        w.run("invite {u9} u10")
        w.run("accept-invite {u1} u10")
        w.run("accept-invite {u10} u9")
        self.assertEqual(w.run("list-friend {u10}").reply, {"status": 0, "friend": ["u9", "u1"]})
        self.assertEqual(w.run("list-friend {u1}").reply["friend"], ["u10"])

    def test_post_and_receive_post(self):
        w = self.w
        self.assertEqual(w.msg("post {alice}"), "Usage: post <user> <message>")
        self.assertEqual(w.msg("post {alice} hello   big  world"), "Success!")
        self.assertEqual(w.run("receive-post {bob}").reply, {"status": 0, "post": []})
        w.run("invite {bob} alice")
        w.run("accept-invite {alice} bob")
        w.run("invite {carol} bob")
        w.run("accept-invite {bob} carol")
        w.run("post {carol} c1")
        w.run("post {alice} a2")
        w.run("post {dave} not a friend")
        self.assertEqual(w.run("receive-post {bob}").reply["post"], [
            {"id": "carol", "message": "c1"},
            {"id": "alice", "message": "hello big world"}, {"id": "alice", "message": "a2"}])

    def test_send(self):
        w = self.w
        w.run("invite {alice} bob")
        w.run("accept-invite {bob} alice")
        w.run("invite {alice} dave")
        self.check([("send {alice} bob", "Usage: send <user> <friend> <message>"),
                    ("send {alice} ghost hi", "No such user exist"),
                    ("send {alice} carol hi", "carol is not your friend"),
                    ("send {alice} bob hi there", "Success!")])
        out = w.run("send {alice} bob hi  there")
        self.assertIsInstance(out.effect, commands.Publish)
        self.assertEqual(out.effect.destination, w.state.users["bob"].session.queue)
        self.assertIs(out.effect.persistent, True)     # personal messages are persistent
        self.assertEqual(protocol.render_chat(out.effect.body), "<<<alice->bob: hi there>>>")
        w.run("logout {bob}", Server.LOGIN)
        self.assertEqual(w.msg("send {alice} bob hi"), "bob is not online")

    def test_groups(self):
        w = self.w
        self.check([("create-group {alice}", "Usage: create-group <user> <group>"),
                    ("create-group {alice} g1", "Success!"),
                    ("create-group {bob} g1", "g1 already exist"),
                    ("join-group {bob} nope", "nope does not exist"),
                    ("join-group {alice} g1", "Already a member of g1"),
                    ("join-group {bob} g1", "Success!"),
                    ("send-group {alice} g1", "Usage: send-group <user> <group> <message>"),
                    ("send-group {alice} nope hi", "No such group exist"),
                    ("send-group {carol} g1 hi", "You are not the member of g1"),
                    ("send-group {bob} g1 hi all", "Success!")])
        w.run("create-group {bob} g0")
        self.assertEqual(w.run("list-group {carol}").reply, {"status": 0, "group": ["g1", "g0"]})
        self.assertEqual(w.run("list-joined {bob}").reply, {"status": 0, "group": ["g1", "g0"]})
        self.assertEqual(w.run("list-joined {carol}").reply, {"status": 0, "group": []})
        out = w.run("send-group {bob} g1 hi all")
        self.assertIsInstance(out.effect, commands.Publish)
        self.assertEqual(out.effect.destination, w.state.groups["g1"].topic)
        self.assertIs(out.effect.persistent, False)    # topics are not durable anyway
        self.assertEqual(protocol.render_chat(out.effect.body), "<<<bob->GROUP<g1>: hi all>>>")
        # the destination goes to the app server (never to the client), never derived from the name
        self.assertEqual(w.run("join-group {carol} g0").effect,
                         commands.Join("carol", "g0", w.state.groups["g0"].topic))
        self.assertNotIn("g0", w.state.groups["g0"].topic)

    def test_logout_and_delete(self):
        w = self.w
        self.assertEqual(w.msg("logout {alice} x", Server.LOGIN), "Usage: logout <user>")
        self.assertEqual(w.msg("delete {alice} x", Server.LOGIN), "Usage: delete <user>")
        out = w.run("logout {alice}", Server.LOGIN)
        self.assertEqual(out.reply, {"status": 0, "message": "Bye!"})
        self.assertEqual(out.effect, commands.Release("alice", forget_password=False))
        self.assertEqual(w.msg("list-friend {alice}"), "Not login yet")
        # delete removes everything tied to the user
        w.run("invite {bob} carol")
        w.run("accept-invite {carol} bob")
        w.run("invite {carol} alice")
        w.run("invite {bob} dave")
        w.run("create-group {bob} g")
        w.run("post {bob} bye")
        out = w.run("delete {bob}", Server.LOGIN)
        self.assertEqual(out.reply, {"status": 0, "message": "Success!"})
        # the account is gone: its remembered password goes too
        self.assertEqual(out.effect, commands.Release("bob", forget_password=True))
        self.assertNotIn("bob", w.state.users)
        self.assertEqual(w.msg("list-friend {bob}"), "Not login yet")
        self.assertEqual(w.run("list-friend {carol}").reply["friend"], [])
        self.assertEqual(w.run("receive-post {carol}").reply["post"], [])
        self.assertEqual(w.state.users["dave"].invites, {})
        self.assertEqual(list(w.state.groups["g"].members), [])
        self.assertEqual(w.register("bob"), {"status": 0, "message": "Success!"})
        w.login("bob")
        self.assertEqual(w.run("list-joined {bob}").reply["group"], [])
        self.assertEqual(w.msg("invite {carol} bob"), "Success!")

    def test_login_again_returns_same_token_and_rotates_after_restart(self):
        w = World("alice")
        first = w.login("alice")
        again = w.login("alice")
        self.assertEqual(first["token"], again["token"])
        self.assertNotIn("queue", again)      # broker destinations are servers' business
        self.assertEqual(commands.subscriptions(w.state, "alice"), (w.state.users["alice"].session.queue, {}))
        self.assertEqual(commands.finish_login(w.state, "alice", True, w.ctx, first["token"]).effect,
                         commands.Assign("alice"))
        locate = w.run("locate {alice}", Server.LOGIN)
        self.assertEqual((locate.reply, locate.effect, locate.mutations),
                         ({"status": 0, "message": "Your application server is ready"},
                          commands.Assign("alice"), []))
        # after a restart the plaintext token is gone: a new one, same queue
        queue = w.state.users["alice"].session.queue
        rotated = w.apply(commands.finish_login(w.state, "alice", True, w.ctx, known_token=None)).reply
        self.assertNotEqual(rotated["token"], first["token"])
        self.assertEqual(w.state.users["alice"].session.queue, queue)
        self.assertIsNone(w.state.user_for_token(first["token"]))
        self.assertEqual(w.state.user_for_token(rotated["token"]), "alice")

    def test_list_replies_have_no_message_key(self):
        for line in ("list-invite {alice}", "list-friend {alice}", "receive-post {alice}",
                     "list-group {alice}", "list-joined {alice}"):
            self.assertNotIn("message", self.w.run(line).reply)
            self.assertNotIn("note", self.w.run(line).reply)     # never cut at the course's sizes


class NameRuleTest(unittest.TestCase):
    """register and create-group refuse what lib/accounts/names.py refuses, with a
    clear status-1 reply and no mutation; names that exist are only looked up."""
    REFUSED = {   # name -> reason shown after "Invalid username: " / "Invalid group name: "
        "#evil": "`#`, `<` and `>` are not allowed",
        "#": "`#`, `<` and `>` are not allowed",
        "a#b": "`#`, `<` and `>` are not allowed",
        "<x>": "`#`, `<` and `>` are not allowed",
        "\x1b[31mred": "control or invisible characters are not allowed",
        "a\u200bb": "control or invisible characters are not allowed",
        "a\u00adb": "control or invisible characters are not allowed",
        "\u0430lice": "mixes scripts (Latin and Cyrillic)",
        "x" * 65: "at most 64 characters",
        "zoe\u0308": "not in Unicode NFC form",
    }

    def test_register_refuses_with_the_reason_and_records_nothing(self):
        w = World("alice")
        before = dict(w.state.users)
        for name, reason in self.REFUSED.items():
            with self.subTest(name=name):
                self.assertEqual(commands.check_register(w.state, (name, "pw")),
                                 {"status": 1, "message": f"Invalid username: {reason}"})
        self.assertEqual(w.state.users, before)
        for name in ("zo\u00eb", "山田", "\u0430\u043b\u0438\u0441\u0430", "x" * 64):
            with self.subTest(name=name):
                self.assertIsNone(commands.check_register(w.state, (name, "pw")))

    def test_register_order_usage_then_name_then_already_used(self):
        w = World()
        commands.apply(w.state, ("register", "#evil", "pw"))   # made by the old code
        self.assertEqual(commands.check_register(w.state, ("#evil",))["message"],
                         "Usage: register <username> <password>")
        self.assertEqual(commands.check_register(w.state, ("#evil", "pw", "x"))["message"],
                         "Usage: register <username> <password>")
        self.assertEqual(commands.check_register(w.state, ("#evil", "pw"))["message"],
                         "Invalid username: `#`, `<` and `>` are not allowed")

    def test_create_group_refuses_with_the_reason_and_records_nothing(self):
        w = World("alice", online=("alice",))
        token = w.tok["alice"]
        for name, reason in self.REFUSED.items():
            with self.subTest(name=name):
                out = commands.handle(w.state, Request("create-group", (token, name)), w.ctx, Server.APP)
                self.assertEqual(out.reply, {"status": 1, "message": f"Invalid group name: {reason}"})
                self.assertEqual(out.mutations, [])
                self.assertIsNone(out.effect)
        self.assertEqual(w.state.groups, {})
        self.assertEqual(w.state.users["alice"].joined, {})
        self.assertEqual(w.msg("create-group {alice} 山田会"), "Success!")

    def test_create_group_order(self):
        w = World("alice", online=("alice",))
        commands.apply(w.state, ("create_group", "<g>", "alice", "/topic/old"))   # made by the old code
        for line, served, want in (
                ("create-group nobody #x", Server.APP, "Not login yet"),
                ("create-group {alice} #x y", Server.APP, "Usage: create-group <user> <group>"),
                ("create-group {alice} #x", Server.LOGIN, "Send create-group to your application server"),
                ("create-group {alice} <g>", Server.APP, "Invalid group name: `#`, `<` and `>` are not allowed")):
            with self.subTest(line=line):
                self.assertEqual(w.msg(line, served), want)

    def test_existing_names_the_rule_refuses_are_still_looked_up(self):
        w = World("alice", online=("alice",))
        commands.apply(w.state, ("register", "#evil", "pw"))
        commands.apply(w.state, ("create_group", "<g>", "#evil", "/topic/old"))
        self.assertEqual(commands.check_login(w.state, ("#evil", "pw")), (None, "pw"))
        w.login("#evil")
        self.assertEqual(w.msg("invite {alice} #evil"), "Success!")
        self.assertEqual(w.msg("accept-invite {#evil} alice"), "Success!")
        self.assertEqual(w.msg("join-group {alice} <g>"), "Success!")
        self.assertEqual(w.msg("send-group {#evil} <g> hi"), "Success!")
        self.assertEqual(w.msg("send {alice} #evil hi"), "Success!")
        self.assertEqual(w.run("list-friend {#evil}").reply["friend"], ["alice"])


class RenderTest(unittest.TestCase):
    def test_client_printing(self):
        r = protocol.render
        self.assertEqual(r({"status": 0, "message": "Success!"}), ["Success!"])
        self.assertEqual(r({"status": 0, "invite": []}), ["No invitations"])
        self.assertEqual(r({"status": 0, "friend": ["a", "b"]}), ["a", "b"])
        self.assertEqual(r({"status": 0, "friend": []}), ["No friends"])
        self.assertEqual(r({"status": 0, "post": []}), ["No posts"])
        self.assertEqual(r({"status": 0, "post": [{"id": "a", "message": "m n"}]}), ["a: m n"])
        self.assertEqual(r({"status": 0, "group": []}), ["No groups"])
        self.assertEqual(r({"status": 0, "token": "t", "message": "Success!", "app_server": "x"}), ["Success!"])

    def test_decode_line(self):
        self.assertIsNone(protocol.decode_line(b"   \t "))
        self.assertEqual(protocol.decode_line(b"post  t  a\tb ").words, ("t", "a", "b"))
        with self.assertRaises(ValueError):
            protocol.decode_line(b"\xff\xfe")
        with self.assertRaises(ValueError):
            protocol.decode_line(b"x" * 8193)

    def test_decode_line_normalises_to_nfc_and_leaves_ascii_alone(self):
        nfd = "register zoe\u0308 pw\u0301\n".encode("utf-8")
        self.assertEqual(protocol.decode_line(nfd), Request("register", ("zo\u00eb", "p\u1e83")))
        self.assertEqual(protocol.decode_line("post t 山田 a\u0308".encode()).words, ("t", "山田", "\u00e4"))
        printable_ascii = "".join(map(chr, range(0x21, 0x7f)))
        self.assertEqual(protocol.decode_line(f"{printable_ascii} x".encode()), Request(printable_ascii, ("x",)))
        # U+00A0 and U+3000 separate words, so no name over TCP can hold them
        self.assertEqual(protocol.decode_line("login a\u00a0b\u3000c".encode()).words, ("a", "b", "c"))

    def test_reply_json_format(self):
        self.assertEqual(protocol.encode(protocol.ok()), b'{"status": 0, "message": "Success!"}\n')


if __name__ == "__main__":
    unittest.main()
