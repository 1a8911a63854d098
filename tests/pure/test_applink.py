"""Pure tests of the internal link's app-server end (lib/social/applink.py):
every transition of its table, every illegal step, the exact wire bytes the
login server reads, request ids and the pending ones, and the codec. No
sockets: the login server's end is played in memory with the same codec."""
import json
import unittest

from lib.social import applink, protocol
from lib.social.applink import (AppLink, Input, LocalError, Publication, Rejected, RemoteError,
                                Reply, Shutdown, State, TRANSITIONS, Welcome, decode, encode)


def line(**msg):
    """A line from the login server as LineConnection hands it over (no newline)."""
    return encode(**msg).rstrip(b"\n")


class LoginEnd:
    """The login server's side of the wire, in memory (its codec is ours)."""

    def __init__(self):
        self.heard = []

    def hear(self, data):
        msg = decode(data)
        self.heard.append(msg)
        return msg

    def answer(self, msg, reply, publish=None):
        return line(op="reply", id=msg["id"], reply=reply, publish=publish)


def fresh():
    return AppLink("app-1", "s3cret", "127.0.0.1", 9001)


def link_in(state):
    """A link driven into `state` through its public steps (READY with
    request 1 pending, so a reply is possible)."""
    link = fresh()
    link.start(0.0)
    if state is State.CONNECTING:
        return link
    link.connected()
    if state is State.REJECTED:
        link.receive(line(op="rejected", reason="no"))
    elif state is State.CLOSED:
        link.lost()
    elif state is State.READY:
        link.receive(line(op="welcome"))
        link.request("list-friend T", "tag")
    return link


# Each input through the public API.
APPLY = {
    Input.START: lambda link: link.start(0.0),
    Input.CONNECT_FAILED: lambda link: link.connect_failed(1.0),
    Input.GIVE_UP: lambda link: link.connect_failed(applink.CONNECT_FOR + 1.0),
    Input.CONNECTED: lambda link: link.connected(),
    Input.PING: lambda link: link.ping(),
    Input.REQUEST: lambda link: link.request("list-friend T", "tag2"),
    Input.LOST: lambda link: link.lost(),
    Input.WELCOME: lambda link: link.receive(line(op="welcome")),
    Input.REJECTED: lambda link: link.receive(line(op="rejected", reason="no")),
    Input.REPLY: lambda link: link.receive(line(op="reply", id=1, reply={"status": 0}, publish=None)),
    Input.SHUTDOWN: lambda link: link.receive(line(op="shutdown")),
    Input.ATTACH: lambda link: link.receive(line(op="attach", id=3, user="u", queue="/queue/q",
                                                 topics={"g": "/topic/t"})),
    Input.DETACH: lambda link: link.receive(line(op="detach", user="u", drop=True)),
    Input.ATTACHED: lambda link: link.attached(3, True),
}
REMOTE = {Input.WELCOME, Input.REJECTED, Input.REPLY, Input.ATTACH, Input.DETACH, Input.SHUTDOWN}


class TransitionTableTest(unittest.TestCase):
    def test_every_listed_transition_leads_where_the_table_says(self):
        self.assertEqual(set(APPLY), set(Input))
        for (state, step), new in TRANSITIONS.items():
            with self.subTest(state=state.name, step=step.name):
                link = link_in(state)
                self.assertIs(link.state, state)
                APPLY[step](link)
                self.assertIs(link.state, new)

    def test_every_other_step_raises_and_changes_nothing(self):
        illegal = [(s, i) for s in State for i in Input if (s, i) not in TRANSITIONS]
        self.assertGreater(len(illegal), 30)
        for state, step in illegal:
            with self.subTest(state=state.name, step=step.name):
                link = link_in(state)
                pending = dict(link.pending)
                with self.assertRaises(RemoteError if step in REMOTE else LocalError):
                    APPLY[step](link)
                self.assertIs(link.state, state)
                self.assertEqual(link.pending, pending)

    def test_the_diagram(self):
        """The documented paths, start to end."""
        t = TRANSITIONS
        self.assertIs(t[State.CONNECTING, Input.CONNECTED], State.HELLO_SENT)
        self.assertIs(t[State.HELLO_SENT, Input.WELCOME], State.READY)
        self.assertIs(t[State.HELLO_SENT, Input.REJECTED], State.REJECTED)
        self.assertIs(t[State.REJECTED, Input.LOST], State.CLOSED)
        self.assertIs(t[State.READY, Input.SHUTDOWN], State.CLOSED)
        self.assertIs(t[State.CONNECTING, Input.GIVE_UP], State.CLOSED)
        self.assertFalse(any(s is State.CLOSED and new is not State.CLOSED
                             for (s, _), new in t.items()), "CLOSED is for good")

    def test_allows_follows_the_table(self):
        link = link_in(State.HELLO_SENT)
        self.assertTrue(link.allows(Input.PING))
        self.assertFalse(link.allows(Input.REQUEST))
        link.receive(line(op="rejected", reason="no"))
        self.assertFalse(link.allows(Input.PING))


class ConnectingTest(unittest.TestCase):
    def test_retries_until_the_deadline_then_gives_up(self):
        link = fresh()
        link.start(100.0)
        self.assertEqual(link.connect_failed(100.1), applink.CONNECT_RETRY)
        self.assertEqual(link.connect_failed(100.0 + applink.CONNECT_FOR - 0.01), applink.CONNECT_RETRY)
        self.assertIs(link.state, State.CONNECTING)
        self.assertIsNone(link.connect_failed(100.0 + applink.CONNECT_FOR))
        self.assertIs(link.state, State.CLOSED)

    def test_a_failure_before_start_is_a_local_error(self):
        with self.assertRaises(LocalError):
            fresh().connect_failed(0.0)


class WireTest(unittest.TestCase):
    """The bytes the login server reads: byte-compatible with its end."""

    def test_hello_ping_and_cmd_lines(self):
        link = fresh()
        link.start(0.0)
        self.assertEqual(link.connected(),
                         b'{"op":"hello","secret":"s3cret","id":"app-1","host":"127.0.0.1","port":9001}\n')
        self.assertEqual(link.ping(), b'{"op":"ping"}\n')
        link.receive(b'{"op":"welcome"}')
        self.assertEqual(link.request("post T h\u00e9 \"x\"", "c"),
                         '{"op":"cmd","id":1,"line":"post T h\u00e9 \\"x\\""}\n'.encode("utf-8"))

    def test_the_login_servers_lines_as_it_writes_them(self):
        link = link_in(State.HELLO_SENT)
        self.assertEqual(link.receive(b'{"op":"welcome"}'), Welcome())
        link.request("send T bob hi", "c")
        got = link.receive(b'{"op":"reply","id":1,"reply":{"status":0,"message":"Success!"},'
                           b'"publish":["/queue/np.u.1","{}",true]}')
        self.assertEqual(got, Reply(1, b'{"status": 0, "message": "Success!"}\n',
                                    Publication("/queue/np.u.1", "{}", True), "c", status=0))
        # as the login server writes it now: the header, a tab, the client's reply
        link.request("list-friend T", "d")
        got = link.receive(b'{"op":"reply","id":2,"publish":null,"status":0,"user":"al"}\t'
                           b'{"status": 0, "friend": ["b\\tc"]}')
        self.assertEqual(got, Reply(2, b'{"status": 0, "friend": ["b\\tc"]}\n', None, "d",
                                    user="al", status=0))


class RequestIdsTest(unittest.TestCase):
    def setUp(self):
        self.link = link_in(State.HELLO_SENT)
        self.link.receive(line(op="welcome"))

    def test_ids_count_up_and_replies_come_in_any_order(self):
        ids = [decode(self.link.request(f"list-friend T{n}", n))["id"] for n in range(3)]
        self.assertEqual(ids, [1, 2, 3])
        self.assertEqual(self.link.pending, {1: 0, 2: 1, 3: 2})
        got = self.link.receive(line(op="reply", id=2, reply={"status": 0}, publish=None))
        self.assertEqual((got.id, got.tag, got.publish), (2, 1, None))
        self.assertEqual(self.link.pending, {1: 0, 3: 2})

    def test_an_unknown_or_repeated_id_is_a_remote_error(self):
        self.link.request("list-friend T", "c")
        self.link.receive(line(op="reply", id=1, reply={"status": 0}, publish=None))
        for rid in (1, 7, "1", None, [1]):
            with self.subTest(rid=rid), self.assertRaises(RemoteError):
                self.link.receive(line(op="reply", id=rid, reply={"status": 0}, publish=None))
        self.assertIs(self.link.state, State.READY)

    def test_replies_the_app_cannot_use_carry_no_reply(self):
        """So the caller answers a failure instead of leaving the client waiting."""
        cases = [({"status": 0}, [1, 2], None), ({"status": 0}, ["d", "b"], None),
                 (None, None, None), ({}, None, None), ("text", None, None),
                 ({"status": "0"}, None, None),
                 ({"status": 0}, [], b'{"status": 0}\n')]
        for reply, publish, expected in cases:
            with self.subTest(reply=reply, publish=publish):
                self.link.request("send T b x", "c")
                rid = max(self.link.pending)
                got = self.link.receive(line(op="reply", id=rid, reply=reply, publish=publish))
                self.assertEqual((got.reply, got.publish, got.tag), (expected, None, "c"))
                self.assertEqual(self.link.pending, {})

    def test_lost_and_shutdown_hand_back_the_unanswered_tags_in_order(self):
        for tag in "abc":
            self.link.request("list-friend T", tag)
        self.link.receive(line(op="reply", id=2, reply={"status": 0}, publish=None))
        self.assertEqual(self.link.lost(), ("a", "c"))
        self.assertEqual(self.link.pending, {})
        self.assertEqual(self.link.lost(), ())          # the close notice after a shutdown

        other = link_in(State.READY)                    # request 1 pending, tag "tag"
        self.assertEqual(other.receive(line(op="shutdown")), Shutdown(("tag",)))
        self.assertEqual(other.pending, {})

    def test_rejected_carries_the_reason(self):
        link = link_in(State.HELLO_SENT)
        self.assertEqual(link.receive(line(op="rejected", reason="used secret")), Rejected("used secret"))


class CodecTest(unittest.TestCase):
    def test_round_trip(self):
        msg = {"op": "reply", "id": 3, "reply": {"status": 0, "post": [{"id": "\u00e5sa", "message": "\u4f60\u597d\n"}]},
               "publish": ["/topic/np.g.x", json.dumps({"m": "\u00e9"}), False]}
        data = encode(**msg)
        self.assertTrue(data.endswith(b"\n"))
        self.assertEqual(data.count(b"\n"), 1)            # newlines inside strings are escaped
        self.assertIn("\u00e5sa".encode("utf-8"), data)   # UTF-8, not \u escapes
        # the header (compact) with the reply's status; after one tab the
        # client's reply, encoded as the client gets it
        head, tab, reply = data.partition(b"\t")
        self.assertTrue(head.startswith(b'{"op":"reply","id":3,"publish":['))
        self.assertEqual(decode(head), {"op": "reply", "id": 3, "publish": msg["publish"], "status": 0})
        self.assertEqual(reply, protocol.encode(msg["reply"]))
        self.assertEqual(json.loads(reply), msg["reply"])
        other = {"op": "attach", "id": 1, "user": "u", "queue": "q", "topics": {}}
        self.assertEqual(decode(encode(**other)), other)

    def test_the_usual_reply_header_is_written_as_the_encoder_would(self):
        """The header written without the encoder (nothing to publish or join)
        reads back the same as any other; names with quotes and non-ASCII too."""
        for msg in ({"op": "reply", "id": 7, "reply": {"status": 0, "friend": []}, "publish": None},
                    {"op": "reply", "id": 8, "reply": {"status": 1, "message": "x"}, "publish": None,
                     "user": 'zo\u00eb"\\q'},
                    {"op": "reply", "id": 9, "reply": {"status": 0}, "publish": ["/q", "b", True],
                     "user": "a"},
                    {"op": "reply", "id": 10, "reply": {"status": 0}, "publish": None,
                     "join": ["g", "/t"], "user": "u"}):
            with self.subTest(msg=msg):
                head, tab, reply = encode(**dict(msg)).partition(b"\t")
                expected = {k: v for k, v in msg.items() if k != "reply"}
                expected["status"] = msg["reply"]["status"]
                self.assertEqual(json.loads(head), expected)
                self.assertEqual(reply, protocol.encode(msg["reply"]))

    def test_what_is_not_a_link_message(self):
        for raw in (b"", b"nonsense", b"[1,2]", b'"op"', b'{"id":1}', b'{"op":5}', b"\xff\xfe"):
            with self.subTest(raw=raw):
                with self.assertRaises(ValueError):
                    decode(raw)
                link = link_in(State.READY)
                with self.assertRaises(RemoteError):
                    link.receive(raw)
                self.assertIs(link.state, State.READY)

    def test_an_unknown_op_is_a_remote_error(self):
        link = link_in(State.READY)
        with self.assertRaises(RemoteError):
            link.receive(line(op="hello", secret="x"))
        self.assertIs(link.state, State.READY)

    def test_limits_the_login_side_uses(self):
        self.assertGreaterEqual(applink.MAX_LINE, 64 * 1024 * 1024)
        self.assertEqual(applink.HEARTBEAT, 1.0)


class PairTest(unittest.TestCase):
    """Both ends in memory (h11's ConnectionPair): a whole conversation."""

    def test_conversation(self):
        app, login = fresh(), LoginEnd()
        app.start(0.0)
        hello = login.hear(app.connected())
        self.assertEqual(hello, {"op": "hello", "secret": "s3cret", "id": "app-1",
                                 "host": "127.0.0.1", "port": 9001})
        self.assertEqual(login.hear(app.ping()), {"op": "ping"})
        self.assertEqual(app.receive(line(op="welcome")), Welcome())
        first = login.hear(app.request("invite T bob", "c1"))
        second = login.hear(app.request("send T bob hi", "c2"))
        self.assertEqual((first["op"], first["line"], second["line"]), ("cmd", "invite T bob", "send T bob hi"))
        got = app.receive(login.answer(second, {"status": 0, "message": "Success!"}, ["/queue/q", "b", True]))
        self.assertEqual((got.tag, got.publish), ("c2", Publication("/queue/q", "b", True)))
        got = app.receive(login.answer(first, {"status": 1, "message": "bob is not a user"}))
        self.assertEqual((got.tag, json.loads(got.reply)["message"], got.publish),
                         ("c1", "bob is not a user", None))
        self.assertEqual(app.pending, {})
        self.assertEqual(app.receive(line(op="shutdown")), Shutdown(()))
        self.assertIs(app.state, State.CLOSED)


if __name__ == "__main__":
    unittest.main()
