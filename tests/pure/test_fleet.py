"""The fleet policy (lib/fleet/pool.py) with a fake launcher and a fake clock:
no reactor, no process, no socket, no sleep. Virtual time stands in for the
idle timeout, the launch deadline and the heartbeat timeout."""
import logging
import unittest

from lib.fleet.pool import AppState, Fleet

FULL = "No application server available: all {} are full, try again later"
CLOSING = "The login server is shutting down"


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class FakeLauncher:
    """Records launch/terminate; `fail` makes the next launch raise."""

    def __init__(self):
        self.launched = []        # [(server id, secret)]
        self.terminated = []      # [server id]
        self.fail = None

    def launch(self, server_id, secret):
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        self.launched.append((server_id, secret))

    def terminate(self, server_id):
        self.terminated.append(server_id)

    def secret(self, server_id):
        return dict(self.launched)[server_id]


class FakeLink:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


class Answers:
    """Collects the callbacks of `fleet.assign`: user -> [(server id, message)]."""

    def __init__(self):
        self.got = {}

    def for_user(self, user):
        def callback(server, message):
            self.got.setdefault(user, []).append((server.id if server else None, message))
        return callback

    def of(self, user):
        return self.got.get(user, [])


class FleetTestCase(unittest.TestCase):
    def setUp(self):
        logger = logging.getLogger("fleet")       # expected warnings: keep the output readable
        self.addCleanup(setattr, logger, "disabled", logger.disabled)
        logger.disabled = True

    def make(self, **options):
        self.clock = FakeClock()
        self.launcher = FakeLauncher()
        self.answers = Answers()
        options.setdefault("capacity", 3)
        self.fleet = Fleet(None, self.launcher, clock=self.clock, **options)
        return self.fleet

    def login(self, *users):
        for user in users:
            self.fleet.assign(user, self.answers.for_user(user))

    def ready(self, server_id, port=None):
        """The app server `server_id` registers with its secret."""
        link = FakeLink()
        server = self.fleet.register(self.launcher.secret(server_id),
                                     ("127.0.0.1", port or 9000 + int(server_id.split("-")[1])), link)
        self.assertIsNotNone(server, f"{server_id} refused")
        return server

    def ids(self):
        return sorted(self.fleet.servers)

    def server_of(self, user):
        server = self.fleet.user_server.get(user)
        return server.id if server else None


class AssignmentTest(FleetTestCase):
    def test_a_login_waits_for_the_launch_and_is_answered_on_register(self):
        self.make()
        self.login("ann")
        self.assertEqual([sid for sid, _ in self.launcher.launched], ["app-1"])
        self.assertEqual(self.answers.of("ann"), [])          # waiting: a reserved slot
        self.assertEqual(self.fleet.servers["app-1"].state, AppState.LAUNCHING)
        self.login("bob")                                      # joins the same launch
        self.assertEqual(len(self.launcher.launched), 1)
        self.assertEqual(self.answers.of("bob"), [])
        server = self.ready("app-1")
        self.assertEqual(server.state, AppState.READY)
        self.assertEqual(server.address, ("127.0.0.1", 9001))
        self.assertEqual(self.answers.of("ann"), [("app-1", None)])
        self.assertEqual(self.answers.of("bob"), [("app-1", None)])
        self.assertEqual(server.users, {"ann", "bob"})
        self.assertEqual(server.waiting, [])

    def test_capacity_caps_each_server(self):
        self.make(capacity=2)
        self.login("a", "b", "c", "d", "e")
        self.assertEqual([sid for sid, _ in self.launcher.launched], ["app-1", "app-2", "app-3"])
        for sid in ("app-1", "app-2", "app-3"):
            self.ready(sid)
        loads = sorted(len(s.users) for s in self.fleet.servers.values())
        self.assertEqual(loads, [1, 2, 2])
        self.assertTrue(all(len(s.users) <= 2 for s in self.fleet.servers.values()))

    def test_the_fullest_server_with_room_gets_the_login(self):
        self.make(capacity=3)
        self.login("a1", "a2", "a3", "b1")
        self.ready("app-1")
        self.ready("app-2")
        self.assertEqual(self.server_of("b1"), "app-2")
        self.fleet.release("a3")                    # app-1: 2 users, app-2: 1 user
        self.login("x")
        self.assertEqual(self.server_of("x"), "app-1")
        self.assertEqual(self.answers.of("x"), [("app-1", None)])
        self.login("y")                             # app-1 is full now: the emptier one
        self.assertEqual(self.server_of("y"), "app-2")
        self.assertEqual(len(self.launcher.launched), 2)

    def test_among_equals_a_ready_server_beats_an_older_launching_one(self):
        self.make(capacity=1, idle_timeout=1e9)
        self.login("a", "b")             # app-1 for a, app-2 for b
        self.clock.advance(1)
        self.ready("app-2")
        self.fleet.release("b")
        self.fleet.release("a")          # both empty; app-1 older but still launching
        self.login("c")                  # the READY one answers at once
        self.assertEqual(self.answers.of("c"), [("app-2", None)])

    def test_a_second_login_of_the_same_user_gets_the_same_server(self):
        self.make()
        self.login("ann")
        self.ready("app-1")
        self.login("ann")
        self.assertEqual(self.answers.of("ann"), [("app-1", None), ("app-1", None)])
        self.assertEqual(len(self.launcher.launched), 1)
        self.assertEqual(self.fleet.servers["app-1"].users, {"ann"})

    def test_max_servers_gives_the_fleet_full_message(self):
        self.make(capacity=1, max_servers=2)
        self.login("a", "b", "c")
        self.assertEqual(self.answers.of("c"), [(None, FULL.format(2))])
        self.assertEqual(len(self.launcher.launched), 2)
        self.assertNotIn("c", self.fleet.user_server)
        self.fleet.release("a")          # a slot frees: the next login gets it
        self.login("c")
        self.ready("app-1")
        self.assertEqual(self.answers.of("c")[-1], ("app-1", None))

    def test_a_failed_launch_answers_the_login_with_the_reason(self):
        self.make()
        self.launcher.fail = RuntimeError("InvalidAMIID.NotFound")
        self.login("ann")
        self.assertEqual(self.answers.of("ann"),
                         [(None, "No application server available: launch failed (InvalidAMIID.NotFound)")])
        self.assertEqual(self.fleet.servers, {})
        self.assertEqual(self.fleet.by_secret, {})

    def test_a_release_while_waiting_frees_the_slot_and_answers_the_waiting_login(self):
        # ann's login waits for a launch when a logout of ann arrives from
        # another connection: the slot is free at once, and the login is told
        # why instead of hanging until its client gives up.
        self.make(capacity=1)
        self.login("ann")
        self.fleet.release("ann")
        self.assertEqual(self.answers.of("ann"),
                         [(None, "Logged out while waiting for an application server; log in again")])
        self.login("bob")                # ann's slot is free again: no second launch
        self.assertEqual(len(self.launcher.launched), 1)
        self.ready("app-1")
        self.assertEqual(self.answers.of("ann"),
                         [(None, "Logged out while waiting for an application server; log in again")])
        self.assertEqual(self.answers.of("bob"), [("app-1", None)])


class AdoptTest(FleetTestCase):
    """After the login server's restart, a restored session used on a server
    before any locate (lib/social/login_core.py asks: may it stay there?)."""

    def test_a_user_nowhere_stays_on_a_ready_server_with_room(self):
        self.make(capacity=2)
        self.login("ann")
        server = self.ready("app-1")
        self.assertTrue(self.fleet.adopt("old", server))
        self.assertEqual((self.server_of("old"), server.users), ("app-1", {"ann", "old"}))
        self.assertFalse(self.fleet.adopt("older", server))          # full
        self.assertIsNone(self.server_of("older"))
        self.fleet.release("old")                                     # counted like any other
        self.assertEqual(server.users, {"ann"})

    def test_a_user_placed_elsewhere_or_a_server_not_ready_says_no(self):
        self.make(capacity=1)
        self.login("ann", "bob")
        one = self.ready("app-1")
        self.assertTrue(self.fleet.adopt("ann", one))                 # there already
        self.assertFalse(self.fleet.adopt("bob", one))                # bob waits for app-2
        two = self.fleet.servers["app-2"]
        self.assertFalse(self.fleet.adopt("cat", two))                # still launching
        self.assertIsNone(self.server_of("cat"))


class SecretTest(FleetTestCase):
    def test_a_secret_works_once(self):
        self.make()
        self.login("ann")
        secret = self.launcher.secret("app-1")
        self.assertIsNotNone(self.fleet.register(secret, ("127.0.0.1", 9001)))
        self.assertIsNone(self.fleet.register(secret, ("127.0.0.1", 6666)))
        self.assertEqual(self.fleet.servers["app-1"].address, ("127.0.0.1", 9001))

    def test_unknown_and_dead_servers_secrets_are_refused(self):
        self.make(launch_deadline=10)
        self.login("ann")
        self.assertIsNone(self.fleet.register("not-a-secret", ("127.0.0.1", 1)))
        secret = self.launcher.secret("app-1")
        self.fleet.lost("app-1", "process exited")
        self.assertIsNone(self.fleet.register(secret, ("127.0.0.1", 9001)))

    def test_every_launch_gets_its_own_secret(self):
        self.make(capacity=1)
        self.login("a", "b", "c")
        secrets = [s for _, s in self.launcher.launched]
        self.assertEqual(len(set(secrets)), 3)
        self.assertTrue(all(len(s) >= 32 for s in secrets))


class ScaleTest(FleetTestCase):
    def test_idle_server_terminated_after_idle_timeout(self):
        self.make(idle_timeout=30, heartbeat_timeout=1e9)
        self.login("ann")
        self.ready("app-1")
        self.fleet.release("ann")
        self.clock.advance(29.9)
        self.fleet.tick()
        self.assertEqual(self.launcher.terminated, [])
        self.clock.advance(0.1)
        self.fleet.tick()
        self.assertEqual(self.launcher.terminated, ["app-1"])
        self.assertEqual(self.fleet.servers, {})

    def test_a_server_with_users_is_never_idle(self):
        self.make(idle_timeout=30, heartbeat_timeout=1e9)
        self.login("ann")
        self.ready("app-1")
        self.clock.advance(3600)
        self.fleet.tick()
        self.assertEqual(self.launcher.terminated, [])

    def test_idle_time_counts_from_the_last_user_leaving(self):
        self.make(idle_timeout=30, heartbeat_timeout=1e9)
        self.login("ann")
        self.ready("app-1")
        self.clock.advance(100)
        self.fleet.release("ann")
        self.clock.advance(20)
        self.fleet.tick()
        self.assertEqual(self.launcher.terminated, [])
        self.clock.advance(10)
        self.fleet.tick()
        self.assertEqual(self.launcher.terminated, ["app-1"])

    def test_spares_are_launched_and_kept(self):
        self.make(spare=1, idle_timeout=5, capacity=1, heartbeat_timeout=1e9)
        self.fleet.tick()
        self.assertEqual(self.ids(), ["app-1"])       # one warm server, nobody on it
        self.ready("app-1")
        self.clock.advance(60)
        self.fleet.tick()
        self.assertEqual(self.launcher.terminated, [])    # the spare outlives the idle timeout
        self.login("ann")                                 # takes the spare at once ...
        self.assertEqual(self.answers.of("ann"), [("app-1", None)])
        self.assertEqual(self.ids(), ["app-1", "app-2"])  # ... and a new spare is launched
        self.ready("app-2")
        self.fleet.release("ann")                         # two empty: one is too many
        self.clock.advance(5)
        self.fleet.tick()
        self.assertEqual(len(self.launcher.terminated), 1)
        self.assertEqual(len(self.fleet.servers), 1)

    def test_no_spare_beyond_max_servers(self):
        self.make(spare=3, max_servers=2)
        self.fleet.tick()
        self.assertEqual(self.ids(), ["app-1", "app-2"])


class HealthTest(FleetTestCase):
    def test_launch_deadline_loses_and_terminates_and_the_login_moves(self):
        self.make(launch_deadline=60)
        self.login("ann")
        self.clock.advance(60)
        self.fleet.tick()
        self.assertEqual(self.launcher.terminated, [])
        self.clock.advance(0.5)
        self.fleet.tick()
        self.assertEqual(self.launcher.terminated, ["app-1"])
        self.assertNotIn("app-1", self.fleet.servers)
        # ann still waits, now for a new launch, and is answered when it registers
        self.assertEqual(self.ids(), ["app-2"])
        self.assertEqual(self.answers.of("ann"), [])
        self.ready("app-2")
        self.assertEqual(self.answers.of("ann"), [("app-2", None)])

    def test_heartbeats_keep_a_server_alive_and_their_absence_kills_it(self):
        self.make(heartbeat_timeout=5, idle_timeout=1e9)
        self.login("ann")
        server = self.ready("app-1")
        for _ in range(10):
            self.clock.advance(4)
            self.fleet.heartbeat(server)
            self.fleet.tick()
        self.assertEqual(self.launcher.terminated, [])
        self.clock.advance(5.5)
        self.fleet.tick()
        self.assertEqual(self.launcher.terminated, ["app-1"])
        self.assertTrue(server.link is None and server.state is AppState.GONE)
        self.assertEqual(self.server_of("ann"), "app-2")   # reassigned to a new launch

    def test_a_dead_servers_users_are_reassigned_and_its_link_closed(self):
        self.make(capacity=3)
        self.login("a", "b", "c", "d")
        first = self.ready("app-1")
        self.ready("app-2")
        link = first.link
        self.fleet.lost("app-1", "process exited with -9")
        self.assertTrue(link.closed)
        self.assertEqual(first.state, AppState.GONE)
        self.assertNotIn("app-1", self.fleet.servers)
        # a, b, c move: d's server has room for two, the third needs a launch
        moved = {u: self.server_of(u) for u in "abc"}
        self.assertEqual(sorted(moved.values()), ["app-2", "app-2", "app-3"])
        self.assertEqual(self.server_of("d"), "app-2")
        self.assertEqual(self.fleet.servers["app-2"].users, {"d"} | {u for u in moved if moved[u] == "app-2"})
        self.assertEqual(self.launcher.terminated, [])      # the launcher reported it: no terminate
        self.ready("app-3")
        self.assertEqual(self.fleet.servers["app-3"].users, {u for u in moved if moved[u] == "app-3"})

    def test_logins_waiting_for_a_dead_launch_move_with_their_callback(self):
        self.make()
        self.login("ann", "bob")
        self.fleet.lost("app-1", "run_instances failed: Throttling")
        self.assertEqual(self.ids(), ["app-2"])
        self.assertEqual(self.answers.of("ann"), [])
        self.ready("app-2")
        self.assertEqual(self.answers.of("ann"), [("app-2", None)])
        self.assertEqual(self.answers.of("bob"), [("app-2", None)])

    def test_lost_is_idempotent(self):
        self.make()
        self.login("ann")
        self.ready("app-1")
        self.fleet.lost("app-1", "link closed")
        self.fleet.lost("app-1", "process exited")
        self.assertEqual(self.ids(), ["app-2"])


class ShutdownTest(FleetTestCase):
    def test_shutdown_terminates_every_server_and_refuses_new_logins(self):
        self.make(capacity=1, spare=1)
        self.login("a", "b")
        self.ready("app-1")
        self.fleet.shutdown()
        self.assertEqual(sorted(self.launcher.terminated), ["app-1", "app-2", "app-3"])
        self.assertEqual(self.fleet.servers, {})
        self.login("c")
        self.assertEqual(self.answers.of("c"), [(None, CLOSING)])
        launched = len(self.launcher.launched)
        self.fleet.tick()                        # no spare launched any more
        self.assertEqual(len(self.launcher.launched), launched)


if __name__ == "__main__":
    unittest.main()
