"""Pure tests of the hub's defences (issue 14), one class per attack, no
sockets: each rule is a guard or transition of lib/hub/session.py's tables,
with its policy in lib/hub/guards.py and its number in lib/hub/limits.py.
The live counterparts are in tests/live/test_hub_attacks.py."""
import dataclasses
import itertools
import unittest

from lib.accounts import passwords
from lib.hub import session as hub
from lib.hub.actions import CancelTimer, Send, SetTimer
from lib.hub.guards import Buckets, Check, CheckQueue, Ledger, address_key
from lib.hub.limits import HubLimits
from lib.hub.session import SessionState, Verify

OWNER = ("127.0.0.1", 40001)
RX = ("127.0.0.1", 50000)          # the socket a seed-style client receives on
ATTACKER = ("127.0.0.2", 6666)
FAST = dict(n=2 ** 4)              # scrypt records that verify in microseconds
DAVE = passwords.hash_password("dave123", **FAST)
ERIN = passwords.hash_password("erin123", **FAST)
ACCOUNTS = {"alice": "alice123", "bob": "bob123", "mal": "mal123", "mal2": "mal2123",
            "dave": DAVE, "erin": ERIN}


def sends(actions):
    return [(a.text, a.addr) for a in actions if isinstance(a, Send)]


def verifies(actions):
    return [a for a in actions if isinstance(a, Verify)]


class AttackTestCase(unittest.TestCase):
    limits = {}

    def setUp(self):
        self.tokens = (f"tok{n:03d}" for n in itertools.count())
        self.hub = hub.Hub(ACCOUNTS, token_factory=lambda: next(self.tokens),
                           limits=dataclasses.replace(HubLimits(), **self.limits))
        self.now = 1000.0

    def send(self, text, addr, dt=0.0):
        self.now += dt
        return self.hub.datagram(text.encode(), addr, self.now)

    def login(self, who, addr, rx=None):
        rx = rx or addr
        self.send(f"{who}->server#login<{who}123><{rx[0]}><{rx[1]}>", addr)
        return self.hub.sessions[who].token

    def prove(self, who, addr):
        """`who` uses its token (so its address has shown that it receives)."""
        token = self.hub.sessions[who].token
        self.send(f"{who}->nobody#<{token}><9999999999>I receive", addr)
        self.assertTrue(self.hub.sessions[who].proven)

    def fire(self, key, dt=1.0):
        self.now += dt
        return self.hub.timer(key, self.now)

    def run_checks(self, actions):
        """Carry out the Verify actions, and those they start, in order;
        -> every Send that results."""
        out, todo = [], list(actions)
        while todo:
            action = todo.pop(0)
            if isinstance(action, Verify):
                todo += self.hub.verified(action.ticket, passwords.verify(action.stored, action.password),
                                          self.now)
            elif isinstance(action, Send):
                out.append((action.text, action.addr))
        return out


class LoginFloodTest(AttackTestCase):
    """At most one check per id, fair between addresses, bounded."""

    def test_one_password_check_in_flight_per_id(self):
        actions = []
        for i in range(2, 12):
            actions += self.send(f"dave->server#login<guess{i}><127.0.0.{i}><7000>", (f"127.0.0.{i}", 7000))
        self.assertEqual(len(verifies(actions)), 1)            # a second thread stays free
        self.assertIs(self.hub.state("dave"), SessionState.LOGIN_RECEIVED)
        [first] = verifies(actions)
        more = self.hub.verified(first.ticket, False, self.now)
        self.assertEqual(len(verifies(more)), 1)                # the next dave check, only then
        self.assertIs(self.hub.state("dave"), SessionState.LOGIN_RECEIVED)   # others still wait

    def test_owner_login_waits_for_at_most_a_few_checks_of_a_flood(self):
        flood = []
        for i in range(500):   # one address, known and unknown ids, wrong passwords
            who = ("dave", "erin", f"ghost{i}")[i % 3]
            flood += self.send(f"{who}->server#login<guess{i}><127.0.0.2><{7000 + i}>", ("127.0.0.2", 7000 + i))
        owner = self.send("dave->server#login<dave123><127.0.0.1><40001>", OWNER)
        self.assertLessEqual(self.hub.checks.held["127.0.0.2"], self.hub.limits.checks_per_address)
        # Run the checks one at a time, oldest first, until the owner has an answer.
        queue, done = verifies(flood + owner), 0
        while queue:
            check = queue.pop(0)
            got = self.hub.verified(check.ticket, passwords.verify(check.stored, check.password), self.now)
            done += 1
            if ("server->dave#Success<tok000>", OWNER) in sends(got):
                break
            queue += verifies(got)
        else:
            self.fail("the owner never got an answer")
        self.assertLessEqual(done, 3)
        self.assertIs(self.hub.state("dave"), SessionState.ONLINE)

    def test_checks_per_address_and_the_global_queue_are_bounded(self):
        self.hub = hub.Hub({f"u{i}": DAVE for i in range(100)},
                           limits=HubLimits(check_threads=1, check_queue=3, checks_per_address=3))
        actions = []
        for i in range(10):   # one address, ten ids: it holds 3 (1 running), the rest are refused
            actions += self.send(f"u{i}->server#login<x><127.0.0.2><7000>", ("127.0.0.2", 7000))
        self.assertEqual(len(verifies(actions)), 1)
        self.assertEqual(self.hub.checks.held["127.0.0.2"], 3)
        self.assertEqual(self.hub.stats["check refused"], 7)
        for i in range(3, 8):   # five more addresses, one check each: 3 wait in all
            self.send(f"u{10 + i}->server#login<x><127.0.0.{i}><7000>", (f"127.0.0.{i}", 7000))
        self.assertEqual(self.hub.checks.waiting, 3)
        # 127.0.0.4 displaced 127.0.0.2's newest waiting check; then every address
        # had one waiting, and the newcomers from .5 to .7 were refused.
        self.assertEqual(self.hub.stats["check displaced"], 1)
        self.assertEqual(self.hub.stats["check refused"], 10)
        self.assertIs(self.hub.state("u2"), SessionState.OFFLINE)  # the displaced one falls back
        self.assertIs(self.hub.state("u1"), SessionState.LOGIN_RECEIVED)

    def test_logins_per_address_are_rate_limited(self):
        self.hub = hub.Hub(ACCOUNTS, limits=HubLimits(logins_per_minute=5))
        answered = [bool(sends(self.send("zed->server#login<x><127.0.0.2><7000>", ATTACKER)))
                    for _ in range(8)]
        self.assertEqual(answered, [True] * 5 + [False] * 3)
        self.assertEqual(self.hub.stats["login rate"], 3)
        self.assertEqual(sends(self.send("alice->server#login<alice123><127.0.0.1><40001>", OWNER))[0][0][:22],
                         "server->alice#Success<")                # another address is not limited
        self.assertTrue(sends(self.send("zed->server#login<x><127.0.0.2><7000>", ATTACKER, dt=12.0)))

    def test_a_known_password_is_decided_without_scrypt(self):
        [check] = verifies(self.send("dave->server#login<dave123><127.0.0.1><40001>", OWNER))
        self.hub.verified(check.ticket, True, self.now)
        for password, answer in (("dave123", "Success<tok001>"), ("guess", "Error: password does not match!")):
            actions = self.send(f"dave->server#login<{password}><127.0.0.2><7000>", ATTACKER)
            self.assertEqual(verifies(actions), [])
            self.assertEqual(sends(actions)[0][0], f"server->dave#{answer}")
        self.hub.set_accounts(dict(ACCOUNTS, dave=passwords.hash_password("new", **FAST)))
        self.assertEqual(len(verifies(self.send("dave->server#login<dave123><127.0.0.2><7000>", ATTACKER))), 1)

    def test_the_same_login_resent_while_checked_is_absorbed(self):
        first = self.send("dave->server#login<dave123><127.0.0.1><40001>", OWNER)
        self.assertEqual(self.send("dave->server#login<dave123><127.0.0.1><40001>", OWNER), [])
        self.assertEqual(self.hub.stats["login busy"], 1)
        self.assertEqual(self.run_checks(first), [("server->dave#Success<tok000>", OWNER)])


class ReflectionTest(AttackTestCase):
    """No amplification towards an address that has not shown it receives."""

    def test_no_resends_to_an_unproven_address_then_resends_once_proven(self):
        self.login("alice", OWNER)
        self.login("bob", ("127.0.0.2", 40002), rx=("127.0.0.2", 6000))   # bob names a "victim" port
        actions = self.send("alice->bob#<tok000><0123456789>hello", OWNER)
        self.assertIn(("alice->bob#<tok001><0123456789>hello", ("127.0.0.2", 6000)), sends(actions))
        key = ("resend", "bob", "alice", "0123456789")
        for _ in range(2):
            actions = self.fire(key)
            self.assertEqual(sends(actions), [])
            self.assertIn(SetTimer(key, 1.0), actions)
        self.assertEqual(self.hub.stats["resend withheld"], 2)
        self.prove("bob", ("127.0.0.2", 40002))
        self.assertEqual(sends(self.fire(key)), [("alice->bob#<tok001><0123456789>hello", ("127.0.0.2", 6000))])

    def test_a_reflected_exchange_sends_the_victim_no_more_than_was_received(self):
        victim = ("127.0.0.2", 6000)
        received = sent = 0

        def send(text, addr):
            nonlocal received, sent
            received += len(text.encode())
            actions = self.send(text, addr)
            sent += sum(len(t.encode()) for t, a in sends(actions) if a == victim)
            return actions
        send(f"mal->server#login<mal123><127.0.0.2><{victim[1]}>", ("127.0.0.2", 5000))
        mal2 = ("127.0.0.3", 5000)
        send("mal2->server#login<mal2123><127.0.0.3><5000>", mal2)
        for i in range(10):
            send(f"mal2->mal#<tok001><555550000{i}>{'x' * 900}", mal2)
        for _ in range(6):   # every resend timer of every forward
            for i in range(10):
                sent += sum(len(t.encode()) for t, a in sends(self.fire(("resend", "mal", "mal2", f"555550000{i}"), 0))
                            if a == victim)
        self.assertLessEqual(sent, received)
        self.assertEqual(self.hub.stats["resend withheld"], 50)

    def test_bytes_to_unproven_addresses_never_exceed_bytes_received(self):
        # Tiny datagrams whose fixed answers are longer than they are, from a
        # forged source: with no allowance the hub answers only while covered.
        self.hub = hub.Hub(ACCOUNTS, limits=HubLimits(reflect_allowance=0))
        victim, received, sent = ("10.1.1.1", 53), 0, 0
        for text in ["x->y#<a><0000000001>"] * 20 + ["x->server#logoff<a>"] * 20 + ["x->server#login<><1><1>"] * 20:
            received += len(text)
            sent += sum(len(t.encode()) for t, a in sends(self.send(text, victim)))
        self.assertLessEqual(sent, received)
        self.assertGreater(sent, 0)
        self.assertGreater(self.hub.stats["reflection"], 0)
        self.assertLessEqual(self.hub.ledger.sent, self.hub.ledger.received)

    def test_the_allowance_answers_a_short_wrong_password_on_first_contact(self):
        text = "alice->server#login<bad><127.0.0.9><40001>"   # shorter than its answer
        self.assertEqual(len(sends(self.hub.datagram(text.encode(), ("127.0.0.9", 40001), self.now))), 1)
        strict = hub.Hub(ACCOUNTS, limits=HubLimits(reflect_allowance=0))
        self.assertEqual(strict.datagram(text.encode(), ("127.0.0.9", 40001), self.now), [])


class ReplayTest(AttackTestCase):
    """(sender, MSGID) is remembered for the session's life: same answer, no second forward."""

    def setUp(self):
        super().setUp()
        self.login("mal2", ("127.0.0.2", 5000))   # tok000
        self.login("bob", OWNER)                  # tok001

    def test_a_replay_after_the_receipt_is_answered_and_not_forwarded(self):
        pay = "mal2->bob#<tok000><5555500001>pay mal 10 coins"
        self.send(pay, ("127.0.0.2", 5000))
        self.send("bob->server#<tok001><5555500001>Success: pay mal 10 coins", OWNER)
        actions = self.send(pay, ("127.0.0.2", 5000))
        self.assertEqual(sends(actions), [("server->mal2#<tok000><5555500001>Success: pay mal 10 coins",
                                           ("127.0.0.2", 5000))])
        self.assertEqual(self.hub.stats["replayed"], 1)
        self.assertIs(self.hub.state("bob"), SessionState.ONLINE)

    def test_a_replay_of_an_offline_answer_gets_the_same_answer(self):
        self.send("mal2->alice#<tok000><5555500002>hi", ("127.0.0.2", 5000))
        self.login("alice", ("127.0.0.3", 5000))
        actions = self.send("mal2->alice#<tok000><5555500002>hi", ("127.0.0.2", 5000))
        self.assertEqual(sends(actions), [("server->mal2#<tok000><5555500002>Error: destination offline!",
                                           ("127.0.0.2", 5000))])

    def test_the_memory_is_bounded_and_starts_again_with_a_new_token(self):
        self.hub.limits = HubLimits(replay_memory=3)
        for i in range(1, 5):
            self.send(f"mal2->alice#<tok000><000000000{i}>x", ("127.0.0.2", 5000))
        self.assertEqual(list(self.hub.sessions["mal2"].answered), ["0000000002", "0000000003", "0000000004"])
        self.send("mal2->server#logoff<tok000>", ("127.0.0.2", 5000))
        self.assertEqual(len(self.hub.sessions["mal2"].answered), 0)


class CollidingIdsTest(AttackTestCase):
    """Pending forwards are keyed by (sender, MSGID)."""

    def setUp(self):
        super().setUp()
        self.login("mal", ("127.0.0.2", 5000))    # tok000
        self.login("mal2", ("127.0.0.2", 5001))   # tok001
        self.login("bob", OWNER)                  # tok002

    def test_two_senders_with_one_msgid_both_get_through_each_with_its_receipt(self):
        a = self.send("mal->bob#<tok000><7777700007>from mal", ("127.0.0.2", 5000))
        b = self.send("mal2->bob#<tok001><7777700007>from mal2", ("127.0.0.2", 5001))
        self.assertIn(("mal->bob#<tok002><7777700007>from mal", OWNER), sends(a))
        self.assertIn(("mal2->bob#<tok002><7777700007>from mal2", OWNER), sends(b))
        actions = self.send("bob->server#<tok002><7777700007>Success: from mal2", OWNER)
        self.assertEqual(actions, [CancelTimer(("resend", "bob", "mal2", "7777700007"))])
        self.assertIs(self.hub.state("bob"), SessionState.MESSAGE_FORWARD)
        actions = self.send("bob->server#<tok002><7777700007>Success: from mal", OWNER)
        self.assertEqual(actions, [CancelTimer(("resend", "bob", "mal", "7777700007"))])
        self.assertIs(self.hub.state("bob"), SessionState.ONLINE)

    def test_the_same_msgid_and_text_take_one_receipt_each(self):
        self.send("mal->bob#<tok000><7777700007>same", ("127.0.0.2", 5000))
        self.send("mal2->bob#<tok001><7777700007>same", ("127.0.0.2", 5001))
        receipt = "bob->server#<tok002><7777700007>Success: same"
        self.assertEqual(len(self.send(receipt, OWNER)), 1)
        self.assertEqual(len(self.send(receipt, OWNER)), 1)
        self.assertIs(self.hub.state("bob"), SessionState.ONLINE)

    def test_a_receipt_matching_neither_text_closes_nothing(self):
        self.send("mal->bob#<tok000><7777700007>one", ("127.0.0.2", 5000))
        self.send("mal2->bob#<tok001><7777700007>two", ("127.0.0.2", 5001))
        self.assertEqual(self.send("bob->server#<tok002><7777700007>Success: three", OWNER), [])
        self.assertEqual(self.hub.stats["receipt unmatched"], 1)
        self.assertEqual(len(self.hub.sessions["bob"].pending_keys()), 2)


class TokenGuessingTest(AttackTestCase):
    """Wrong tokens: limited per session (from its IP) and per address."""
    limits = dict(token_errors_per_minute=3, address_token_errors_per_minute=6)

    def setUp(self):
        super().setUp()
        self.login("mal", ("127.0.0.2", 5000))     # tok000, the victim shares the attacker's IP (NAT)
        self.login("alice", OWNER)                 # tok001

    def test_after_a_burst_even_the_right_token_is_answered_unchecked(self):
        guesser = ("127.0.0.2", 7000)
        for guess in ("aaaaaa", "bbbbbb", "cccccc"):
            self.assertEqual(sends(self.send(f"mal->alice#<{guess}><0000000001>x", guesser))[0][0],
                             f"server->mal#<{guess}><0000000001>Error: token error!")
        actions = self.send("mal->alice#<tok000><0000000002>right", guesser)
        self.assertEqual(sends(actions), [("server->mal#<tok000><0000000002>Error: token error!",
                                           ("127.0.0.2", 5000))])
        self.assertEqual(self.hub.stats["token limited"], 1)
        self.assertIs(self.hub.state("alice"), SessionState.ONLINE)   # nothing forwarded
        self.assertEqual(sends(self.send("mal->server#logoff<tok000>", guesser)),
                         [("server->mal#Error: token error!", ("127.0.0.2", 5000))])
        actions = self.send("mal->alice#<tok000><0000000003>later", guesser, dt=20.0)   # one refilled
        self.assertIn("Success: later", sends(actions)[0][0])

    def test_wrong_tokens_from_another_ip_do_not_lock_the_owner_out(self):
        for i in range(5):
            self.send(f"alice->mal#<zzzzz{i}><000000000{i}>x", ("127.0.0.2", 7000))
        actions = self.send("alice->mal#<tok001><0000000009>still me", OWNER)
        self.assertIn("Success: still me", sends(actions)[0][0])

    def test_an_address_with_too_many_wrong_tokens_is_answered_unchecked(self):
        self.login("mal2", ("127.0.0.2", 5001))     # tok002
        for i in range(6):
            self.send(f"alice->mal#<zzzzz{i}><000000000{i}>x", ("127.0.0.2", 7000))
        actions = self.send("mal2->mal#<tok002><0000000009>right", ("127.0.0.2", 5001))
        self.assertIn("Error: token error!", sends(actions)[0][0])
        self.assertEqual(self.hub.stats["token limited"], 1)


class AnswerAddressTest(AttackTestCase):
    """Answers about a session go to its remembered address from its IP; else to the source."""

    def setUp(self):
        super().setUp()
        self.login("alice", OWNER, rx=RX)          # tok000: sends from 40001, receives on 50000

    def test_token_error_goes_to_the_remembered_address(self):
        self.assertEqual(sends(self.send("alice->bob#<zzzzzz><0000000001>x", OWNER)),
                         [("server->alice#<zzzzzz><0000000001>Error: token error!", RX)])
        self.assertEqual(sends(self.send("alice->server#logoff<zzzzzz>", OWNER)),
                         [("server->alice#Error: token error!", RX)])

    def test_please_log_in_again_after_logoff_or_expiry_goes_to_the_remembered_address(self):
        self.send("alice->server#logoff<tok000>", OWNER)
        self.assertEqual(sends(self.send("alice->bob#<tok000><0000000001>x", OWNER)),
                         [("server->alice#<tok000><0000000001>Error: please log in again!", RX)])
        self.login("alice", OWNER, rx=RX)
        self.fire(("expire", "alice"), 300.0)
        self.assertEqual(sends(self.send("alice->bob#<tok001><0000000002>x", OWNER))[0][1], RX)

    def test_from_another_ip_or_never_logged_in_the_answer_goes_to_the_source(self):
        other = ("127.0.0.2", 7000)
        self.assertEqual(sends(self.send("alice->bob#<zzzzzz><0000000001>x", other))[0][1], other)
        self.assertEqual(sends(self.send("bob->alice#<zzzzzz><0000000001>x", OWNER))[0][1], OWNER)


class GuardPolicyTest(unittest.TestCase):
    """The policies on their own (lib/hub/guards.py)."""

    def test_buckets_refill_and_forget(self):
        buckets = Buckets(2, period=60.0, max_keys=2)
        self.assertEqual([buckets.take("a", 0.0) for _ in range(3)], [True, True, False])
        self.assertTrue(buckets.take("a", 30.0))
        for key in "bcd":
            buckets.take(key, 31.0)
        self.assertEqual(len(buckets.buckets), 2)   # bounded
        self.assertTrue(buckets.available("x", 200.0))
        self.assertEqual(len(buckets.buckets), 0)   # full again after a period: forgotten

    def test_check_queue_round_robin_between_addresses(self):
        queue = CheckQueue(slots=1, max_waiting=10, per_address=5)
        checks = [Check(n, f"id{n}", key, None, "", "") for n, key in enumerate("aaab")]
        started = [c for check in checks for c in queue.submit(check)[0]]
        self.assertEqual([c.ticket for c in started], [0])
        order = []
        for _ in range(3):
            check, more = queue.finished(started[-1].ticket)
            started += more
            order.append(more[0].key)
        self.assertEqual(order, ["b", "a", "a"])   # b's one check is not behind a's queue

    def test_ledger(self):
        ledger = Ledger(allowance=10)
        self.assertTrue(ledger.spend("x", 10))
        self.assertFalse(ledger.spend("x", 1))
        ledger.credit("x", 5)
        self.assertTrue(ledger.spend("x", 5))

    def test_address_key(self):
        self.assertEqual(address_key("10.0.0.1"), "10.0.0.1")
        self.assertEqual(address_key("::ffff:10.0.0.1"), "10.0.0.1")
        self.assertEqual(address_key("2001:db8::1"), address_key("2001:db8::ffff:2"))
        self.assertNotEqual(address_key("2001:db8::1"), address_key("2001:db8:0:1::1"))


if __name__ == "__main__":
    unittest.main()
