"""The login core's limits (lib/social/login_core.py): a token works only on
its user's app server, sign-ups and logins per source address, sessions that
expire, refused password checks. Virtual time: `now` in the events."""
import unittest

from lib.social import applink
from lib.social.limits import Limits
from lib.social.login_core import (
    TOO_MANY, WRONG_SERVER, Adopted, Assigned, CheckRefused, ClientRequest, FleetAdopt, FleetAssign,
    FleetRegistered, FleetRelease, Hash, Hashed, IllegalEvent, LinkLine, LinkOpened, Reply, Tick,
    SendLink, Verified, Verify)
from tests.pure.test_login_core import APP, SERVER, CoreTest, MemoryStore, request
from tests.pure.test_social import FixedContext

OTHER = "server-2"      # another app server's handle (its link: "M")
APP2 = "10.0.0.6:7002"
BUSY = {"status": 1, "message": TOO_MANY}
ELSEWHERE = {"status": 1, "message": WRONG_SERVER}


def detach(user, link="L"):
    """The login server tells the user's app server to stop subscribing for it."""
    return SendLink(link, {"op": "detach", "user": user, "drop": True})


class LimitsTest(CoreTest):
    LIMITS = {}

    def setUp(self):
        self.store, self.ctx = MemoryStore(), FixedContext(Limits(**self.LIMITS))
        self.core = self.new_core()
        self.adopted = []

    def at(self, now, conn, line, peer="10.1.1.1"):
        return self.core.handle(ClientRequest(conn, request(line), peer, now))

    def link(self, link, server):
        self.core.handle(LinkOpened(link))
        self.core.handle(LinkLine(link, b'{"op":"hello","secret":"s","host":"h","port":1}'))
        self.core.handle(FleetRegistered(link, server))

    def relay(self, link, line, room=None):
        """A client request relayed by the app server on `link` -> its reply;
        `room`: the fleet's answer if the core asks to adopt the user there."""
        data = applink.encode(op="cmd", id=1, line=line).rstrip(b"\n")
        last = self.core.handle(LinkLine(link, data))[-1]
        if isinstance(last, FleetAdopt):
            self.assertIsNotNone(room, f"{last} not expected")
            self.assertEqual((last.link, last.msg["line"]), (link, line))
            self.adopted.append((last.user, last.server))
            last = self.core.handle(Adopted(link, last.user, room, last.msg))[-1]
        else:
            self.assertIsNone(room, "no FleetAdopt")
        return last.msg["reply"]


class WrongServerTest(LimitsTest):
    def setUp(self):
        super().setUp()
        self.link("L", SERVER)
        self.link("M", OTHER)
        self.register("alice")
        self.register("bob")
        self.alice = self.login("alice", conn="a")["token"]
        self.bob = self.login("bob", conn="b", server=OTHER)["token"]

    def test_a_token_works_only_on_the_server_its_user_is_assigned_to(self):
        self.assertEqual(self.relay("L", f"invite {self.alice} bob"), {"status": 0, "message": "Success!"})
        recorded = list(self.store.recorded)
        self.assertEqual(self.relay("L", f"accept-invite {self.bob} alice"), ELSEWHERE)
        self.assertEqual(self.relay("L", f"list-friend {self.bob}"), ELSEWHERE)
        self.assertEqual(self.store.recorded, recorded)        # nothing done
        self.assertEqual(self.relay("M", f"accept-invite {self.bob} alice"), {"status": 0, "message": "Success!"})

    def test_the_earlier_checks_come_first(self):
        # docs/protocol.md §3: token, usage, which server, then this one
        for line, message in (("list-friend nosuchtoken", "Not login yet"),
                              (f"list-friend {self.bob} extra", "Usage: list-friend <user>"),
                              (f"logout {self.bob}", "Send logout to the login server"),
                              ("login bob pw", "Send login to the login server")):
            with self.subTest(line=line):
                self.assertEqual(self.relay("L", line), {"status": 1, "message": message})

    def test_the_fleet_moving_a_user_silently_is_healed_by_locate(self):
        # The fleet reassigned alice (her server died) without telling the core:
        # her new server refuses her until the client's locate, then the old one does.
        self.assertEqual(self.relay("M", f"list-friend {self.alice}"), ELSEWHERE)
        self.assertEqual(self.at(1.0, "a", f"locate {self.alice}"), [FleetAssign("a", "alice")])
        self.core.handle(Assigned("a", APP2, server=OTHER))
        self.assertEqual(self.relay("M", f"list-friend {self.alice}"), {"status": 0, "friend": []})
        self.assertEqual(self.relay("L", f"list-friend {self.alice}"), ELSEWHERE)

    def test_after_a_restart_a_session_stays_on_the_first_server_it_is_used_on(self):
        self.core = self.new_core()            # sessions restored, assignments gone
        self.link("L", SERVER)
        self.link("M", OTHER)
        self.assertEqual(self.relay("L", f"invite {self.alice} bob", room=True),
                         {"status": 0, "message": "Success!"})
        self.assertEqual(self.adopted, [("alice", SERVER)])
        self.assertEqual(self.relay("M", f"list-friend {self.alice}"), ELSEWHERE)
        self.assertEqual(self.relay("L", f"list-friend {self.alice}"), {"status": 0, "friend": []})
        # the fleet has no room for bob there (or put him elsewhere): refused, nothing done
        recorded = list(self.store.recorded)
        self.assertEqual(self.relay("L", f"accept-invite {self.bob} alice", room=False), ELSEWHERE)
        self.assertEqual(self.store.recorded, recorded)
        self.at(1.0, "b", f"locate {self.bob}")            # the client's next step
        self.core.handle(Assigned("b", APP2, server=OTHER))
        self.assertEqual(self.relay("M", f"accept-invite {self.bob} alice"), {"status": 0, "message": "Success!"})
        self.assertEqual(self.adopted, [("alice", SERVER), ("bob", SERVER)])

    def test_logout_forgets_the_assignment_and_a_failed_assignment_keeps_the_old(self):
        self.at(1.0, "a", f"locate {self.alice}")
        full = "No application server available: all 2 are full, try again later"
        self.core.handle(Assigned("a", None, full))
        self.assertEqual(self.relay("L", f"list-friend {self.alice}"), {"status": 0, "friend": []})
        self.at(2.0, "a", f"logout {self.alice}")
        self.assertNotIn("alice", self.core.assigned)


class RateLimitTest(LimitsTest):
    LIMITS = {"signups_per_minute": 3, "logins_per_minute": 2}

    def test_sign_ups_per_address_refill_continuously(self):
        for i in range(3):
            self.assertEqual(self.at(0.0, f"c{i}", f"register u{i} pw"), [Hash(f"c{i}", "pw")])
        self.assertEqual(self.at(0.0, "c3", "register u3 pw"), [Reply("c3", BUSY)])
        self.assertNotIn("u3", self.core.registering)
        # another address has its own bucket
        self.assertEqual(self.at(0.0, "d", "register u4 pw", peer="10.2.2.2"), [Hash("d", "pw")])
        # 3 a minute: one more every 20 s, never more than 3 saved up
        self.assertEqual(self.at(19.9, "c3", "register u3 pw"), [Reply("c3", BUSY)])
        self.assertEqual(self.at(20.0, "c3", "register u3 pw"), [Hash("c3", "pw")])
        for i in range(5, 8):
            self.assertEqual(self.at(1000.0, f"c{i}", f"register u{i} pw"), [Hash(f"c{i}", "pw")])
        self.assertEqual(self.at(1000.0, "c8", "register u8 pw"), [Reply("c8", BUSY)])

    def test_refusals_that_cost_nothing_are_not_counted(self):
        self.register("taken")
        for i in range(10):
            self.assertEqual(self.at(0.0, "c", "register taken pw"),
                             [Reply("c", {"status": 1, "message": "taken is already used"})])
            self.assertEqual(self.at(0.0, "c", "login x")[0].reply["message"], "Usage: login <id> <password>")
        self.assertEqual(self.at(0.0, "c", "register new pw"), [Hash("c", "pw")])

    def test_every_login_counts_cached_or_not(self):
        self.register("alice")
        self.assertEqual(self.at(0.0, "c", "login alice pw"), [Verify("c", "H(pw)", "pw")])
        self.core.handle(Verified("c", True))
        self.core.handle(Assigned("c", APP, server=SERVER))
        self.assertEqual(self.at(0.0, "c", "login alice pw"), [FleetAssign("c", "alice")])   # cached
        self.core.handle(Assigned("c", APP, server=SERVER))
        self.assertEqual(self.at(0.0, "c", "login alice pw"), [Reply("c", BUSY)])
        self.assertEqual(self.at(0.0, "c", "login nobody pw"), [Reply("c", BUSY)])
        self.assertEqual(self.at(30.0, "c", "login nobody pw"), [Verify("c", "scrypt$dummy", "pw")])


class ClassroomTest(LimitsTest):
    """The default limits let a classroom behind one NAT address through."""

    def test_250_sign_ups_then_250_logins_at_once_from_one_address(self):
        for i in range(250):
            self.assertEqual(self.at(0.0, f"c{i}", f"register u{i} pw"), [Hash(f"c{i}", "pw")])
            self.core.handle(Hashed(f"c{i}", "H(pw)"))
        for i in range(250):
            self.assertEqual(self.at(0.0, f"c{i}", f"login u{i} pw"), [Verify(f"c{i}", "H(pw)", "pw")])
        self.assertEqual(self.at(0.0, "x", "login u0 pw"), [Verify("x", "H(pw)", "pw")])


class SessionExpiryTest(LimitsTest):
    LIMITS = {"session_idle": 100.0}

    def setUp(self):
        super().setUp()
        self.link("L", SERVER)
        self.register("alice")
        self.register("bob")
        self.core.handle(Tick(0.0))
        self.alice = self.login("alice", conn="a")["token"]
        self.bob = self.login("bob", conn="b")["token"]

    def test_a_session_without_a_request_for_the_idle_limit_is_logged_out(self):
        self.assertEqual(self.core.handle(Tick(60.0)), [])
        self.relay("L", f"list-friend {self.alice}")            # alice is active at 60
        self.assertEqual(self.core.handle(Tick(99.9)), [])
        self.assertEqual(self.core.handle(Tick(100.0)), [FleetRelease("bob"), detach("bob")])
        self.assertEqual(self.store.recorded[-1], ("logout", "bob"))
        self.assertIsNone(self.store.state.user_for_token(self.bob))
        self.assertNotIn("bob", self.core.tokens)
        self.assertNotIn("bob", self.core.assigned)
        self.assertEqual(self.relay("L", f"list-friend {self.bob}"), {"status": 1, "message": "Not login yet"})
        self.assertEqual(self.core.handle(Tick(159.9)), [])
        self.assertEqual(self.core.handle(Tick(160.0)), [FleetRelease("alice"), detach("alice")])
        # the password is still known: logging in again needs no scrypt
        self.assertEqual(self.at(161.0, "a", "login alice pw"), [FleetAssign("a", "alice")])

    def test_requests_to_the_login_server_count_too(self):
        self.assertEqual(self.at(90.0, "a", f"list-friend {self.alice}")[0].reply["message"],
                         "Send list-friend to your application server")
        self.assertEqual(self.core.handle(Tick(150.0)), [FleetRelease("bob"), detach("bob")])
        self.assertEqual(self.core.handle(Tick(189.0)), [])
        self.assertEqual(self.core.handle(Tick(190.0)), [FleetRelease("alice"), detach("alice")])

    def test_ended_sessions_do_not_expire_again(self):
        self.at(10.0, "a", f"logout {self.alice}")
        self.at(10.0, "b", f"delete {self.bob}")
        recorded = len(self.store.recorded)
        self.assertEqual(self.core.handle(Tick(1000.0)), [])
        self.assertEqual(len(self.store.recorded), recorded)

    def test_after_a_restart_sessions_count_from_the_servers_start(self):
        self.core = self.new_core()           # same store: both sessions restored
        self.assertEqual(self.core.handle(Tick(5000.0)), [])
        self.assertEqual(self.core.handle(Tick(5099.0)), [])
        self.assertEqual(sorted(a.user for a in self.core.handle(Tick(5100.0))), ["alice", "bob"])
        self.assertEqual(self.store.recorded[-2:], [("logout", "alice"), ("logout", "bob")])


class CheckRefusedTest(LimitsTest):
    def test_a_refused_hash_frees_the_name(self):
        self.assertEqual(self.at(0.0, "c", "register bob pw"), [Hash("c", "pw")])
        self.assertEqual(self.core.handle(CheckRefused("c")), [Reply("c", BUSY)])
        self.assertEqual(self.at(0.0, "c", "register bob pw"), [Hash("c", "pw")])
        self.core.handle(Hashed("c", "H(pw)"))
        self.assertIn("bob", self.store.state.users)

    def test_a_refused_verification_logs_nobody_in_and_keeps_a_name_being_registered(self):
        self.at(0.0, "r", "register bob pw")
        self.assertEqual(self.at(0.0, "c", "login bob pw"), [Verify("c", "scrypt$dummy", "pw")])
        self.assertEqual(self.core.handle(CheckRefused("c")), [Reply("c", BUSY)])
        self.assertIn("bob", self.core.registering)     # still being hashed for `r`

    def test_only_while_a_check_is_pending(self):
        with self.assertRaises(IllegalEvent):
            self.core.handle(CheckRefused("c"))
        self.register("alice")
        self.at(0.0, "c", "login alice pw")
        self.core.handle(Verified("c", True))           # now waiting for the fleet
        with self.assertRaises(IllegalEvent):
            self.core.handle(CheckRefused("c"))


if __name__ == "__main__":
    unittest.main()
