"""Pure tests of the UDP hub's wire format (lib/hub/wire.py): every datagram
of docs/udp-hub.md round trips, tokens and MSGIDs, framing by the name
rule, NFC. No sockets."""
import unittest

from lib.accounts import names
from lib.hub import wire
from lib.hub.wire import Login, LoginFailed, Logoff, LogoffFailed, Malformed, Message, Receipt, Reply, TokenAck


class CodecTest(unittest.TestCase):
    def test_token_format(self):
        allowed = set(wire.TOKEN_ALPHABET)
        self.assertEqual(allowed - set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
                         set("!$%&*+-=?@^_~"))
        for _ in range(500):
            token = wire.new_token()
            self.assertEqual(len(token), 6)
            self.assertTrue(set(token) <= allowed, token)
            self.assertTrue(wire.is_token(token))
            self.assertFalse(set(token) & set("<>#\t\n "))
        self.assertGreater(len({wire.new_token() for _ in range(200)}), 195)

    def test_msgid_format(self):
        for _ in range(200):
            msgid = wire.new_msgid()
            self.assertRegex(msgid, r"\A\d{10}\Z")
            self.assertTrue(wire.is_msgid(msgid))
        self.assertFalse(wire.is_msgid("12345"))
        self.assertFalse(wire.is_msgid("١٢٣٤٥٦٧٨٩٠"))  # non-ASCII digits

    def test_every_datagram_round_trips(self):
        cases = {
            "alice->server#login<alice123><127.0.0.1><40001>": Login("alice", "alice123", "127.0.0.1", 40001),
            "server->alice#Success<Ab3$x_>": TokenAck("alice", "Ab3$x_"),
            "server->alice#Error: password does not match!": LoginFailed("alice"),
            "alice->bob#<Ab3$x_><0123456789>hi there # <3": Message("alice", "bob", "Ab3$x_", "0123456789", "hi there # <3"),
            "server->alice#<Ab3$x_><0123456789>Success: hi": Reply("alice", "Ab3$x_", "0123456789", "Success: hi"),
            "server->alice#<Ab3$x_><0123456789>Error: token error!": Reply("alice", "Ab3$x_", "0123456789", wire.ERR_TOKEN),
            "server->alice#<Ab3$x_><0123456789>Error: destination offline!": Reply("alice", "Ab3$x_", "0123456789", wire.ERR_OFFLINE),
            "server->alice#<Ab3$x_><0123456789>Error: please log in again!": Reply("alice", "Ab3$x_", "0123456789", wire.ERR_LOGIN_AGAIN),
            "bob->server#<Zz9~^@><0123456789>Success: hi": Receipt("bob", "Zz9~^@", "0123456789", "hi"),
            "alice->server#logoff<Ab3$x_>": Logoff("alice", "Ab3$x_"),
            "server->alice#Error: token error!": LogoffFailed("alice"),
        }
        for text, dgram in cases.items():
            with self.subTest(text=text):
                self.assertEqual(wire.parse(text), dgram)
                self.assertEqual(dgram.text(), text)
                self.assertEqual(wire.parse(text.encode() + b"\n"), dgram)  # trailing newline tolerated

    def test_password_may_contain_angle_brackets(self):
        self.assertEqual(wire.parse("a->server#login<p<w>d><10.0.0.1><9>"), Login("a", "p<w>d", "10.0.0.1", 9))

    def test_malformed(self):
        for bad in [b"", b"hello", b"alice->server#", b"alice->server#login<pw>",
                    b"alice->server#login<pw><127.0.0.1><port>", b"alice->bob#no token",
                    b"alice->bob#<tok123><12345>short msgid", b"alice->server#logoff",
                    b"server->server#Success<abcdef>", b"\xff\xfe->server#login<x><1><2>",
                    b"al ice->bob#<abcdef><0123456789>x", b"alice->server#<abcdef><0123456789>not a receipt"]:
            with self.subTest(bad=bad):
                with self.assertRaises(Malformed):
                    wire.parse(bad)


class WireNameRuleTest(unittest.TestCase):
    """Ids frame by lib/accounts/names.py's delimiters and length, and compare in NFC."""

    def test_id_framing_follows_the_name_rule(self):
        longest = "x" * names.MAX_LEN
        self.assertEqual(wire.parse(f"{longest}->server#logoff<abcdef>"), Logoff(longest, "abcdef"))
        self.assertEqual(wire.parse(f"a->{longest}#<abcdef><0123456789>t").dst, longest)
        for bad in [f"{longest}x->server#logoff<abcdef>", f"a->{longest}x#<abcdef><0123456789>t"] + \
                   [f"a{d}b->server#logoff<abcdef>" for d in names.DELIMITERS] + \
                   [f"alice->b{d}c#<abcdef><0123456789>t" for d in names.DELIMITERS]:
            with self.subTest(bad=bad):
                with self.assertRaises(Malformed):
                    wire.parse(bad)

    def test_datagrams_and_typed_lines_are_read_in_nfc(self):
        nfd, nfc = "zoe\u0308", "zo\u00eb"
        self.assertEqual(wire.parse(f"{nfd}->server#login<pa\u0308ss><127.0.0.1><1>".encode()),
                         Login(nfc, "p\u00e4ss", "127.0.0.1", 1))
        self.assertEqual(wire.parse(f"a->{nfd}#<abcdef><0123456789>e\u0301"),
                         Message("a", nfc, "abcdef", "0123456789", "\u00e9"))
        self.assertEqual(wire.split_head(f"{nfd}->server#logoff"), (nfc, "server", "logoff"))


if __name__ == "__main__":
    unittest.main()
