"""Pure tests of the UDP hub's sessions (lib/hub/session.py), and a hub and two
clients wired together in memory; no sockets.

Every edge of the server diagram (docs/udp-hub.md)
has a test named after it; the client diagram's are in test_hub_client.py,
the codec's tests in test_hub_wire.py.
"""
import itertools
import unittest

from lib.accounts import passwords
from lib.clients.udp import Client, ClientState, Print
from lib.hub import server as hub_server
from lib.hub import session as hub
from lib.hub import wire
from lib.hub.actions import CancelTimer, Send, SetTimer
from lib.hub.session import SessionState, Verify

A_ADDR = ("127.0.0.1", 40001)
B_ADDR = ("127.0.0.1", 40002)
C_ADDR = ("127.0.0.1", 40003)
ACCOUNTS = {"alice": "alice123", "bob": "bob123", "carol": "carol123"}


def sends(actions):
    return [(a.text, a.addr) for a in actions if isinstance(a, Send)]


class HubTestCase(unittest.TestCase):
    """Drives a Hub with predictable tokens and a fake clock."""

    def setUp(self):
        self.tokens = (f"tok{n:03d}" for n in itertools.count())
        self.hub = hub.Hub(ACCOUNTS, expiry=300, token_factory=lambda: next(self.tokens))
        self.now = 1000.0

    def send(self, text, addr, dt=0.0):
        self.now += dt
        return self.hub.datagram(text.encode(), addr, self.now)

    def login(self, who, addr, password=None):
        actions = self.send(f"{who}->server#login<{password or who + '123'}><{addr[0]}><{addr[1]}>", addr)
        return actions, self.hub.sessions[who].token if who in self.hub.sessions else None

    def fire(self, key, dt):
        self.now += dt
        return self.hub.timer(key, self.now)


class ServerLoginTest(HubTestCase):
    def test_offline_login_match_goes_online(self):
        actions, token = self.login("alice", A_ADDR)
        self.assertEqual(token, "tok000")
        self.assertEqual(sends(actions), [("server->alice#Success<tok000>", A_ADDR)])
        self.assertIn(SetTimer(("expire", "alice"), 300), actions)
        self.assertIs(self.hub.state("alice"), SessionState.ONLINE)

    def test_offline_login_mismatch_back_to_offline(self):
        actions = self.send("alice->server#login<wrong><127.0.0.1><40001>", A_ADDR)
        self.assertEqual(sends(actions), [("server->alice#Error: password does not match!", A_ADDR)])
        self.assertIs(self.hub.state("alice"), SessionState.OFFLINE)

    def test_unknown_id_gets_the_same_error(self):
        actions = self.send("mallory->server#login<x><127.0.0.1><40001>", A_ADDR)
        self.assertEqual(sends(actions), [("server->mallory#Error: password does not match!", A_ADDR)])
        self.assertNotIn("mallory", self.hub.sessions)

    def test_reply_goes_to_the_login_port(self):
        # The client may send from one socket and receive on another.
        actions = self.send("alice->server#login<alice123><127.0.0.1><50000>", A_ADDR)
        self.assertEqual(sends(actions), [("server->alice#Success<tok000>", ("127.0.0.1", 50000))])

    def test_login_from_behind_nat_is_answered_at_its_source(self):
        # The claimed IP:PORT is the client's own view; the hub answers where
        # the datagram came from, and remembers that address.
        nat = ("127.0.0.1", 51000)
        actions = self.send("alice->server#login<alice123><10.9.8.7><40001>", nat)
        self.assertEqual(sends(actions), [("server->alice#Success<tok000>", nat)])
        self.assertEqual(self.hub.sessions["alice"].addr, nat)
        self.assertEqual(self.hub.stats["login at source"], 1)
        self.login("bob", B_ADDR)
        actions = self.send("alice->bob#<tok000><0123456789>from behind nat", nat)
        self.assertEqual(sends(actions)[0], ("server->alice#<tok000><0123456789>Success: from behind nat", nat))

    def test_wrong_password_from_behind_nat_is_answered_at_its_source(self):
        nat = ("127.0.0.1", 51000)
        actions = self.send("alice->server#login<bad><10.9.8.7><40001>", nat)
        self.assertEqual(sends(actions), [("server->alice#Error: password does not match!", nat)])

    def test_scrypt_login_passes_through_login_received(self):
        self.hub.set_accounts({"dave": passwords.hash_password("pw", n=2 ** 4)})
        actions = self.send("dave->server#login<pw><127.0.0.1><40001>", A_ADDR)
        [verify] = actions
        self.assertIsInstance(verify, Verify)
        self.assertIs(self.hub.state("dave"), SessionState.LOGIN_RECEIVED)
        # A resent login while the check runs is absorbed.
        self.assertEqual(self.send("dave->server#login<pw><127.0.0.1><40001>", A_ADDR), [])
        ok = passwords.verify(verify.stored, verify.password)
        actions = self.hub.verified(verify.ticket, ok, self.now)
        self.assertEqual(sends(actions), [("server->dave#Success<tok000>", A_ADDR)])
        self.assertIs(self.hub.state("dave"), SessionState.ONLINE)

    def test_scrypt_login_mismatch_from_login_received(self):
        self.hub.set_accounts({"dave": passwords.hash_password("pw", n=2 ** 4)})
        [verify] = self.send("dave->server#login<nope><127.0.0.1><40001>", A_ADDR)
        actions = self.hub.verified(verify.ticket, passwords.verify(verify.stored, verify.password), self.now)
        self.assertEqual(sends(actions), [("server->dave#Error: password does not match!", A_ADDR)])
        self.assertIs(self.hub.state("dave"), SessionState.OFFLINE)
        self.assertEqual(self.hub.verified(verify.ticket, True, self.now), [])  # stale ticket

    def test_message_during_login_received_must_log_in(self):
        self.hub.set_accounts({"dave": passwords.hash_password("pw", n=2 ** 4)})
        self.send("dave->server#login<pw><127.0.0.1><40001>", A_ADDR)
        actions = self.send("dave->bob#<abcdef><0123456789>hi", A_ADDR)
        self.assertEqual(sends(actions), [("server->dave#<abcdef><0123456789>Error: please log in again!", A_ADDR)])

    def test_resent_login_keeps_the_token(self):
        self.login("alice", A_ADDR)
        actions, token = self.login("alice", A_ADDR)
        self.assertEqual(token, "tok000")
        self.assertEqual(sends(actions), [("server->alice#Success<tok000>", A_ADDR)])

    def test_login_from_a_new_client_gets_a_new_token(self):
        self.login("alice", A_ADDR)
        _, token = self.login("alice", C_ADDR)
        self.assertEqual(token, "tok001")
        self.assertEqual(self.hub.sessions["alice"].addr, C_ADDR)

    def test_wrong_password_does_not_knock_an_online_user_off(self):
        self.login("alice", A_ADDR)
        actions = self.send("alice->server#login<bad><127.0.0.1><40003>", C_ADDR)
        self.assertEqual(sends(actions), [("server->alice#Error: password does not match!", C_ADDR)])
        self.assertIs(self.hub.state("alice"), SessionState.ONLINE)
        self.assertEqual(self.hub.sessions["alice"].token, "tok000")

    def test_accounts_reload_applies_to_next_login(self):
        self.hub.set_accounts({"erin": "erin1"})
        _, token = self.login("erin", A_ADDR, password="erin1")
        self.assertEqual(token, "tok000")


class ServerMessageTest(HubTestCase):
    def setUp(self):
        super().setUp()
        self.login("alice", A_ADDR)   # tok000
        self.login("bob", B_ADDR)     # tok001

    def test_online_message_forwards_with_receivers_token(self):
        actions = self.send("alice->bob#<tok000><0123456789>hello", A_ADDR)
        self.assertEqual(sends(actions), [
            ("server->alice#<tok000><0123456789>Success: hello", A_ADDR),
            ("alice->bob#<tok001><0123456789>hello", B_ADDR),
        ])
        self.assertIn(SetTimer(("resend", "bob", "alice", "0123456789"), 1.0), actions)
        self.assertIs(self.hub.state("alice"), SessionState.ONLINE)       # sender stays
        self.assertIs(self.hub.state("bob"), SessionState.MESSAGE_FORWARD)

    def test_message_forward_receipt_back_to_online(self):
        self.send("alice->bob#<tok000><0123456789>hello", A_ADDR)
        actions = self.send("bob->server#<tok001><0123456789>Success: hello", B_ADDR)
        self.assertEqual(actions, [CancelTimer(("resend", "bob", "alice", "0123456789"))])
        self.assertIs(self.hub.state("bob"), SessionState.ONLINE)
        self.assertEqual(self.send("bob->server#<tok001><0123456789>Success: hello", B_ADDR), [])  # duplicate

    def test_message_forward_stays_until_every_receipt(self):
        self.login("carol", C_ADDR)  # tok002
        self.send("alice->bob#<tok000><1111111111>one", A_ADDR)
        actions = self.send("carol->bob#<tok002><2222222222>two", C_ADDR)  # forwarded in MESSAGE_FORWARD too
        self.assertIn(("carol->bob#<tok001><2222222222>two", B_ADDR), sends(actions))
        self.send("bob->server#<tok001><2222222222>Success: two", B_ADDR)
        self.assertIs(self.hub.state("bob"), SessionState.MESSAGE_FORWARD)
        self.send("bob->server#<tok001><1111111111>Success: one", B_ADDR)
        self.assertIs(self.hub.state("bob"), SessionState.ONLINE)

    def test_sender_in_message_forward_can_send(self):
        self.send("alice->bob#<tok000><1111111111>one", A_ADDR)
        actions = self.send("bob->alice#<tok001><2222222222>back", B_ADDR)
        self.assertEqual(sends(actions)[0], ("server->bob#<tok001><2222222222>Success: back", B_ADDR))
        self.assertIs(self.hub.state("alice"), SessionState.MESSAGE_FORWARD)

    def test_resend_of_a_message_in_flight_is_not_forwarded_twice(self):
        self.send("alice->bob#<tok000><0123456789>hello", A_ADDR)
        actions = self.send("alice->bob#<tok000><0123456789>hello", A_ADDR)
        self.assertEqual(sends(actions), [("server->alice#<tok000><0123456789>Success: hello", A_ADDR)])

    def test_token_error(self):
        actions = self.send("alice->bob#<tok001><0123456789>spoof", A_ADDR)
        self.assertEqual(sends(actions), [("server->alice#<tok001><0123456789>Error: token error!", A_ADDR)])
        self.assertIs(self.hub.state("bob"), SessionState.ONLINE)  # nothing forwarded

    def test_right_token_from_another_ip_is_a_token_error(self):
        actions = self.send("alice->bob#<tok000><0123456789>spoof", ("127.0.0.2", 40001))
        self.assertEqual(sends(actions), [("server->alice#<tok000><0123456789>Error: token error!",
                                           ("127.0.0.2", 40001))])

    def test_destination_offline(self):
        for dest in ("carol", "nobody"):
            actions = self.send(f"alice->{dest}#<tok000><0123456789>hi", A_ADDR)
            self.assertEqual(sends(actions), [("server->alice#<tok000><0123456789>Error: destination offline!", A_ADDR)])

    def test_message_from_offline_sender_must_log_in(self):
        actions = self.send("carol->bob#<abcdef><0123456789>hi", C_ADDR)
        self.assertEqual(sends(actions), [("server->carol#<abcdef><0123456789>Error: please log in again!", C_ADDR)])

    def test_forward_resent_every_second_five_times_then_dropped(self):
        self.send("bob->nobody#<tok001><9999999999>I receive", B_ADDR)   # bob has used his token
        self.send("alice->bob#<tok000><0123456789>hello", A_ADDR)
        key = ("resend", "bob", "alice", "0123456789")
        for _ in range(5):
            actions = self.fire(key, 1.0)
            self.assertEqual(sends(actions), [("alice->bob#<tok001><0123456789>hello", B_ADDR)])
            self.assertIn(SetTimer(key, 1.0), actions)
        self.assertIs(self.hub.state("bob"), SessionState.MESSAGE_FORWARD)
        self.assertEqual(self.fire(key, 1.0), [])  # gives up
        self.assertIs(self.hub.state("bob"), SessionState.ONLINE)
        self.assertEqual(self.hub.stats["undelivered"], 1)

    def test_resend_stops_after_receipt(self):
        self.send("alice->bob#<tok000><0123456789>hello", A_ADDR)
        self.send("bob->server#<tok001><0123456789>Success: hello", B_ADDR)
        self.assertEqual(self.fire(("resend", "bob", "alice", "0123456789"), 1.0), [])

    def test_receipt_with_wrong_token_is_ignored(self):
        self.send("alice->bob#<tok000><0123456789>hello", A_ADDR)
        self.assertEqual(self.send("bob->server#<tok000><0123456789>Success: hello", B_ADDR), [])
        self.assertIs(self.hub.state("bob"), SessionState.MESSAGE_FORWARD)
        self.assertEqual(self.hub.stats["spoofed"], 1)

    def test_receipt_from_offline_client_is_dropped(self):
        self.assertEqual(self.send("carol->server#<abcdef><0123456789>Success: x", C_ADDR), [])
        self.assertEqual(self.hub.stats["stale"], 1)


class ServerLogoffAndExpiryTest(HubTestCase):
    def setUp(self):
        super().setUp()
        self.login("alice", A_ADDR)   # tok000
        self.login("bob", B_ADDR)     # tok001

    def test_online_logoff_goes_offline(self):
        actions = self.send("alice->server#logoff<tok000>", A_ADDR)
        self.assertEqual(sends(actions), [("server->alice#Success<tok000>", A_ADDR)])
        self.assertIn(CancelTimer(("expire", "alice")), actions)
        self.assertIs(self.hub.state("alice"), SessionState.OFFLINE)
        actions = self.send("alice->bob#<tok000><0123456789>hi", A_ADDR)
        self.assertEqual(sends(actions), [("server->alice#<tok000><0123456789>Error: please log in again!", A_ADDR)])

    def test_message_forward_logoff_goes_offline_and_stops_resending(self):
        self.send("alice->bob#<tok000><0123456789>hello", A_ADDR)
        actions = self.send("bob->server#logoff<tok001>", B_ADDR)
        self.assertIn(CancelTimer(("resend", "bob", "alice", "0123456789")), actions)
        self.assertIs(self.hub.state("bob"), SessionState.OFFLINE)
        self.assertEqual(self.fire(("resend", "bob", "alice", "0123456789"), 1.0), [])

    def test_logoff_with_bad_token(self):
        actions = self.send("alice->server#logoff<tok001>", A_ADDR)
        self.assertEqual(sends(actions), [("server->alice#Error: token error!", A_ADDR)])
        self.assertIs(self.hub.state("alice"), SessionState.ONLINE)

    def test_logoff_when_offline(self):
        actions = self.send("carol->server#logoff<abcdef>", C_ADDR)
        self.assertEqual(sends(actions), [("server->carol#Error: token error!", C_ADDR)])

    def test_online_expires_silently(self):
        actions = self.fire(("expire", "alice"), 300.0)
        self.assertEqual(sends(actions), [])
        self.assertIs(self.hub.state("alice"), SessionState.OFFLINE)
        actions = self.send("alice->bob#<tok000><0123456789>hi", A_ADDR)
        self.assertEqual(sends(actions), [("server->alice#<tok000><0123456789>Error: please log in again!", A_ADDR)])

    def test_message_forward_expires(self):
        self.send("alice->bob#<tok000><0123456789>hello", A_ADDR)
        actions = self.fire(("expire", "bob"), 300.0)
        self.assertIs(self.hub.state("bob"), SessionState.OFFLINE)
        self.assertIn(CancelTimer(("resend", "bob", "alice", "0123456789")), actions)
        actions = self.send("alice->bob#<tok000><1111111111>again", A_ADDR)
        self.assertEqual(sends(actions), [("server->alice#<tok000><1111111111>Error: destination offline!", A_ADDR)])

    def test_activity_postpones_expiry(self):
        self.send("alice->bob#<tok000><0123456789>hello", A_ADDR, dt=200.0)
        actions = self.fire(("expire", "alice"), 100.0)
        self.assertEqual(actions, [SetTimer(("expire", "alice"), 200.0)])
        self.assertIs(self.hub.state("alice"), SessionState.ONLINE)
        self.fire(("expire", "alice"), 200.0)
        self.assertIs(self.hub.state("alice"), SessionState.OFFLINE)

    def test_spoofed_datagrams_do_not_postpone_expiry(self):
        self.send("alice->bob#<badbad><0123456789>x", A_ADDR, dt=200.0)
        self.fire(("expire", "alice"), 100.0)
        self.assertIs(self.hub.state("alice"), SessionState.OFFLINE)


class ServerDropTest(HubTestCase):
    def test_malformed_counted_and_dropped(self):
        for bad in (b"garbage", b"\xff\x00", b"server->alice#Success<abcdef>", b"a->server#login<x>"):
            self.assertEqual(self.hub.datagram(bad, A_ADDR, self.now), [])
        self.assertEqual(self.hub.stats["malformed"], 4)

    def test_oversized_dropped(self):
        big = "alice->server#login<" + "x" * 2100 + "><127.0.0.1><40001>"
        self.assertEqual(self.hub.datagram(big.encode(), A_ADDR, self.now), [])
        self.assertEqual(self.hub.stats["oversized"], 1)
        self.assertIs(self.hub.state("alice"), SessionState.OFFLINE)

    def test_exactly_max_size_is_accepted(self):
        head = "alice->server#login<"
        tail = "><127.0.0.1><40001>"
        text = head + "x" * (wire.MAX_DATAGRAM - len(head) - len(tail)) + tail
        self.assertEqual(len(text), wire.MAX_DATAGRAM)
        self.assertEqual(len(sends(self.hub.datagram(text.encode(), A_ADDR, self.now))), 1)

    def test_non_ascii_token_is_a_token_error_not_a_crash(self):
        self.login("alice", A_ADDR)
        actions = self.send("alice->bob#<ééé><0123456789>x", A_ADDR)
        self.assertEqual(sends(actions), [("server->alice#<ééé><0123456789>Error: token error!", A_ADDR)])


class FullExchangeTest(unittest.TestCase):
    """Two clients and a hub wired together in memory (a lossless network)."""

    def test_conversation(self):
        the_hub = hub.Hub(ACCOUNTS)
        clients = {A_ADDR: Client(*A_ADDR), B_ADDR: Client(*B_ADDR)}
        out = {A_ADDR: [], B_ADDR: []}

        def deliver(addr, actions):
            queue = [(addr, a) for a in actions]
            while queue:
                src, action = queue.pop(0)
                if isinstance(action, Print):
                    out[src].append(action.line)
                elif isinstance(action, Send) and action.addr is None:  # client -> hub
                    queue += [(None, a) for a in the_hub.datagram(action.text.encode(), src, 0.0)]
                elif isinstance(action, Send):  # hub -> client
                    queue += [(action.addr, a) for a in clients[action.addr].received(action.text.encode())]

        deliver(B_ADDR, clients[B_ADDR].typed("bob->server#login<bob123>"))
        for line in ("alice->server#login<alice123>", "alice->bob#hi bob", "alice->server#logoff"):
            deliver(A_ADDR, clients[A_ADDR].typed(line))
        alice = the_hub.sessions["alice"]
        self.assertEqual(len(out[A_ADDR]), 3, out[A_ADDR])
        self.assertRegex(out[A_ADDR][0], r"\Aserver->alice#Success<.{6}>\Z")
        self.assertEqual(out[A_ADDR][2], out[A_ADDR][0])  # logoff echoes the same token
        self.assertIsNone(alice.token)
        self.assertRegex(out[A_ADDR][1], r"\Aserver->alice#<.{6}><\d{10}>Success: hi bob\Z")
        self.assertRegex(out[B_ADDR][1], r"\Aalice->bob#<.{6}><\d{10}>hi bob\Z")
        self.assertIs(the_hub.state("bob"), SessionState.ONLINE)     # receipt arrived
        self.assertIs(the_hub.state("alice"), SessionState.OFFLINE)  # logged off


class NameRuleTest(HubTestCase):
    """Ids compare in NFC (framing: test_hub_wire.py), and accounts the rule
    refuses still load (and log in), with one warning."""

    def test_a_decomposed_login_finds_the_nfc_account(self):
        self.hub.set_accounts({"zo\u00eb": "p\u00e4ss"})   # as the TCP service stores them
        actions = self.send("zoe\u0308->server#login<pa\u0308ss><127.0.0.1><40001>", A_ADDR)
        self.assertEqual(sends(actions), [("server->zo\u00eb#Success<tok000>", A_ADDR)])
        client = Client(*A_ADDR)
        client.typed("zoe\u0308->server#login<pa\u0308ss>")
        client.received("server->zo\u00eb#Success<tok000>".encode())
        self.assertIs(client.state, ClientState.ONLINE)

    def test_accounts_the_rule_refuses_still_load_with_one_warning(self):
        text = ("# np-social accounts\nalice pw1\n\u0430lice pw2\n"
                "a\u200bb pw3\nzoe\u0308 pw4\n\u5c71\u7530 pw5\n")
        with self.assertLogs("udp_hub", "WARNING") as logs:
            accounts = hub_server.load_accounts(text, "users.txt")
        self.assertEqual(accounts, {"alice": "pw1", "\u0430lice": "pw2", "a\u200bb": "pw3",
                                    "zoe\u0308": "pw4", "\u5c71\u7530": "pw5"})
        self.assertEqual(len(logs.records), 1)
        message = logs.records[0].getMessage()
        for refused in ("\u0430lice", "a\u200bb", "zoe\u0308"):
            self.assertIn(repr(refused), message)
        self.assertNotIn("'alice'", message)
        self.assertIn("users.txt: 3 account id(s)", message)
        with self.assertNoLogs("udp_hub", "WARNING"):
            hub_server.load_accounts("alice pw1\n\u5c71\u7530 pw5\n", "users.txt")
        # the refused but framable ids log in as before
        self.hub.set_accounts(accounts)
        for sid, password in (("\u0430lice", "pw2"), ("a\u200bb", "pw3")):
            with self.subTest(sid=sid):
                _, token = self.login(sid, A_ADDR, password=password)
                self.assertIsNotNone(token)


if __name__ == "__main__":
    unittest.main()
