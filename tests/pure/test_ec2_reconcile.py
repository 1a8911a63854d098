"""The EC2 launcher's book of instances and its reconcile step
(lib/fleet/launchers/ec2/reconcile.py), and its shutdown retries
(shutdown.py), without AWS, threads or sleeps: describe_instances answers are
built by hand and time is a number."""
import datetime
import logging
import unittest

from botocore.exceptions import ClientError

from lib.fleet.launchers.ec2 import errors, shutdown
from lib.fleet.launchers.ec2.reconcile import NOT_FOUND_GRACE, ORPHAN_SKEW, Seen, State, Table

CLUSTER, SESSION, OTHER_SESSION = "np-test", "sess-ours", "sess-crashed"
START_WALL = 1_700_000_000.0          # time.time() when "this process" started
T0 = 500.0                            # the launcher's monotonic clock at start


def wall(offset):
    """An AWS LaunchTime `offset` seconds after this process started."""
    return datetime.datetime.fromtimestamp(START_WALL + offset, datetime.timezone.utc)


def seen(iid, state="running", sid="app-1", session=SESSION, cluster=CLUSTER, launched=0.0, reason=""):
    tags = {"np-social:cluster": cluster, "np-social:role": "appserver",
            "np-social:server-id": sid, "np-social:launcher": session}
    return Seen(iid, state, reason, wall(launched), tags)


class TableTestCase(unittest.TestCase):
    def setUp(self):
        self.table = Table(CLUSTER, SESSION, started_wall=START_WALL)

    def running(self, sid, iid, at=T0):
        self.table.launch(sid, at)
        rec = self.table.launched(sid, iid, at)
        self.assertIs(rec.state, State.RUNNING)
        return rec

    def reconcile(self, found, started, now=None, landed=()):
        return self.table.reconcile(found, started, started if now is None else now, landed)

    def terminated_ids(self, plan):
        return [(rec.instance_id, why) for rec, why in plan.terminate]


class TransitionTest(TableTestCase):
    def test_launch_then_launched_is_running(self):
        rec = self.table.launch("app-1", T0)
        self.assertIs(rec.state, State.LAUNCHING)
        self.assertEqual(self.table.instances, {})
        rec = self.table.launched("app-1", "i-1", T0 + 2)
        self.assertEqual((rec.state, rec.instance_id, rec.launched), (State.RUNNING, "i-1", T0 + 2))
        self.assertIs(self.table.servers["app-1"], rec)
        self.assertIs(self.table.instances["i-1"], rec)

    def test_a_server_id_launches_once_at_a_time(self):
        self.table.launch("app-1", T0)
        with self.assertRaises(ValueError):
            self.table.launch("app-1", T0)

    def test_cancelled_during_launch_goes_to_terminating_when_it_lands(self):
        self.table.launch("app-1", T0)
        self.assertIsNone(self.table.cancel("app-1", T0 + 1))    # nothing to terminate yet
        rec = self.table.launched("app-1", "i-1", T0 + 3)
        self.assertIs(rec.state, State.TERMINATING)
        self.assertNotIn("app-1", self.table.servers)             # no longer serves the fleet
        self.assertEqual(self.table.ids_to_terminate(), {"i-1"})

    def test_failed_launch_is_gone(self):
        rec = self.table.launch("app-1", T0)
        self.table.launch_failed("app-1")
        self.assertIs(rec.state, State.GONE)
        self.assertEqual(self.table.servers, {})
        self.table.launch("app-1", T0 + 1)                       # the id may be tried again

    def test_terminate_running_then_acknowledged(self):
        self.running("app-1", "i-1")
        rec = self.table.cancel("app-1", T0 + 5)
        self.assertEqual((rec.state, rec.since), (State.TERMINATING, T0 + 5))
        self.assertNotIn("app-1", self.table.servers)
        self.assertEqual(self.table.ids_to_terminate(), {"i-1"})
        self.table.terminate_done("i-1", T0 + 6)
        self.assertIs(rec.state, State.TERMINATED)
        self.assertEqual(self.table.ids_to_terminate(), set())
        self.assertIsNone(self.table.cancel("app-1", T0 + 7))    # twice: nothing more to do

    def test_forget_drops_what_aws_does_not_know(self):
        rec = self.running("app-1", "i-1")
        self.table.forget("i-1")                 # a RUNNING record is not forgotten that way
        self.assertIs(rec.state, State.RUNNING)
        self.table.cancel("app-1", T0)
        self.table.forget("i-1")
        self.assertIs(rec.state, State.GONE)
        self.assertEqual(self.table.instances, {})

    def test_ids_to_terminate_are_running_and_terminating(self):
        self.running("app-1", "i-1")
        self.running("app-2", "i-2")
        self.table.cancel("app-2", T0)
        self.running("app-3", "i-3")
        self.table.cancel("app-3", T0)
        self.table.terminate_done("i-3", T0)
        self.table.launch("app-4", T0)
        self.assertEqual(self.table.ids_to_terminate(), {"i-1", "i-2"})
        self.table.clear()
        self.assertEqual((self.table.servers, self.table.instances), ({}, {}))

    def test_seen_from_a_describe_answer(self):
        item = Seen.from_aws({"InstanceId": "i-9", "State": {"Name": "stopped", "Code": 80},
                              "StateReason": {"Message": "Client.UserInitiatedShutdown"},
                              "LaunchTime": wall(-5), "Tags": [{"Key": "np-social:server-id", "Value": "app-3"}]})
        self.assertEqual(item, Seen("i-9", "stopped", "Client.UserInitiatedShutdown", wall(-5),
                                    {"np-social:server-id": "app-3"}))
        bare = Seen.from_aws({"InstanceId": "i-8", "State": {"Name": "pending"}})
        self.assertEqual((bare.reason, bare.launch_time, bare.tags), ("", None, {}))


class OursGoneTest(TableTestCase):
    def test_running_instances_are_left_alone(self):
        self.running("app-1", "i-1")
        self.running("app-2", "i-2")
        plan = self.reconcile([seen("i-1", "pending"), seen("i-2", "running", "app-2")], T0 + 100)
        self.assertEqual((plan.exits, plan.terminate, plan.foreign), ([], [], []))
        self.assertEqual(set(self.table.servers), {"app-1", "app-2"})

    def test_terminated_instance_is_an_exit_reported_once(self):
        rec = self.running("app-1", "i-1")
        answer = [seen("i-1", "terminated", reason="Client.InstanceInitiatedShutdown")]
        plan = self.reconcile(answer, T0 + 10)
        self.assertEqual(plan.exits, [("app-1", "instance i-1 is terminated (Client.InstanceInitiatedShutdown)")])
        self.assertEqual(plan.terminate, [])
        self.assertIs(rec.state, State.GONE)
        self.assertEqual((self.table.servers, self.table.instances), ({}, {}))
        self.assertEqual(self.reconcile(answer, T0 + 20).exits, [])

    def test_shutting_down_instance_is_an_exit(self):
        self.running("app-1", "i-1")
        plan = self.reconcile([seen("i-1", "shutting-down")], T0 + 10)
        self.assertEqual(plan.exits, [("app-1", "instance i-1 is shutting-down")])
        self.assertEqual(plan.terminate, [])

    def test_stopped_instance_is_an_exit_and_terminated(self):
        for state in ("stopping", "stopped"):
            with self.subTest(state=state):
                self.setUp()
                rec = self.running("app-1", "i-1")
                plan = self.reconcile([seen("i-1", state)], T0 + 10)
                self.assertEqual(plan.exits, [("app-1", f"instance i-1 is {state}")])
                self.assertEqual(self.terminated_ids(plan), [("i-1", state)])
                self.assertIs(rec.state, State.TERMINATING)
                # the next answer still shows it: neither a second exit nor a second terminate
                plan = self.reconcile([seen("i-1", "stopped")], T0 + 15)
                self.assertEqual((plan.exits, plan.terminate), ([], []))

    def test_missing_long_after_its_launch_is_an_exit(self):
        self.running("app-1", "i-1", at=T0)
        plan = self.reconcile([], T0 + NOT_FOUND_GRACE + 1)
        self.assertEqual(plan.exits, [("app-1", "instance i-1 no longer exists")])
        self.assertEqual(self.reconcile([], T0 + NOT_FOUND_GRACE + 2).exits, [])

    def test_missing_right_after_its_launch_is_not_an_exit(self):
        # describe lags behind run_instances, and an instance launched after
        # the describe started cannot be in its answer
        self.running("app-1", "i-1", at=T0 + 30)
        for started in (T0, T0 + 29, T0 + 30 + NOT_FOUND_GRACE - 1):
            with self.subTest(started=started):
                plan = self.reconcile([], started, now=T0 + 100)
                self.assertEqual(plan.exits, [])
                self.assertIs(self.table.servers["app-1"].state, State.RUNNING)

    def test_launching_servers_are_never_an_exit(self):
        self.table.launch("app-1", T0)
        plan = self.reconcile([], T0 + 1000)
        self.assertEqual(plan.exits, [])
        self.assertIs(self.table.servers["app-1"].state, State.LAUNCHING)


class OtherClustersTest(TableTestCase):
    def test_another_clusters_instances_are_never_touched(self):
        answer = [seen("i-7", "running", session=OTHER_SESSION, cluster="np-other", launched=-3600),
                  seen("i-8", "stopped", session=SESSION, cluster="np-other", launched=-3600),
                  seen("i-9", "running", session=OTHER_SESSION, cluster="np-other", launched=+3600)]
        plan = self.reconcile(answer, T0)
        self.assertEqual((plan.exits, plan.terminate, plan.foreign), ([], [], []))
        self.assertEqual(self.table.instances, {})

    def test_another_clusters_answer_is_no_news_of_ours(self):
        self.running("app-1", "i-1", at=T0 + 50)
        plan = self.reconcile([seen("i-1", "terminated", cluster="np-other")], T0 + 60)
        self.assertEqual(plan.exits, [])


class StrayTest(TableTestCase):
    def test_an_untracked_instance_of_this_process_is_a_stray(self):
        plan = self.reconcile([seen("i-5", "running", sid="app-5")], T0 + 10)
        self.assertEqual(self.terminated_ids(plan), [("i-5", "stray")])
        rec = self.table.instances["i-5"]
        self.assertEqual((rec.state, rec.server_id, rec.launched), (State.TERMINATING, "app-5", None))

    def test_a_second_instance_for_a_running_server_is_a_stray(self):
        self.running("app-1", "i-1")
        plan = self.reconcile([seen("i-1"), seen("i-2", sid="app-1")], T0 + 10)
        self.assertEqual(self.terminated_ids(plan), [("i-2", "stray")])
        self.assertEqual(plan.exits, [])

    def test_not_a_stray_while_its_run_instances_is_under_way(self):
        self.table.launch("app-1", T0)
        plan = self.reconcile([seen("i-1", "pending", sid="app-1")], T0 + 1)
        self.assertEqual(plan.terminate, [])

    def test_not_a_stray_when_it_landed_in_a_worker_but_not_yet_on_the_loop(self):
        plan = self.reconcile([seen("i-1", "pending", sid="app-1")], T0 + 1, landed={"i-1"})
        self.assertEqual(plan.terminate, [])

    def test_launched_after_the_describe_started_is_not_a_stray(self):
        started = T0 + 10
        self.table.launch("app-1", T0)
        self.table.launched("app-1", "i-1", started + 1)      # run_instances returned meanwhile
        plan = self.reconcile([seen("i-1", "pending", sid="app-1")], started, now=started + 2)
        self.assertEqual((plan.terminate, plan.exits), ([], []))

    def test_instances_already_ended_are_ignored(self):
        answer = [seen("i-5", "terminated", sid="app-5"), seen("i-6", "shutting-down", sid="app-6"),
                  seen("i-7", "terminated", session=OTHER_SESSION, launched=-3600)]
        plan = self.reconcile(answer, T0 + 10)
        self.assertEqual(plan.terminate, [])
        self.assertEqual(self.table.instances, {})


class OrphanTest(TableTestCase):
    def test_instances_of_an_earlier_process_are_orphans(self):
        answer = [seen("i-1", "running", session=OTHER_SESSION, launched=-3600),
                  seen("i-2", "stopped", sid="app-2", session=OTHER_SESSION, launched=-60),
                  seen("i-3", "pending", sid="app-3", session=OTHER_SESSION, launched=ORPHAN_SKEW - 1)]
        plan = self.reconcile(answer, T0)
        self.assertEqual(self.terminated_ids(plan), [("i-1", "orphan"), ("i-2", "orphan"), ("i-3", "orphan")])
        self.assertEqual(plan.exits, [])

    def test_without_a_launch_time_or_a_time_zone(self):
        naive = wall(-10).replace(tzinfo=None)
        answer = [Seen("i-1", "running", "", None, seen("x", session=OTHER_SESSION).tags),
                  Seen("i-2", "running", "", naive, seen("x", session=OTHER_SESSION).tags)]
        plan = self.reconcile(answer, T0)
        self.assertEqual(self.terminated_ids(plan), [("i-1", "orphan"), ("i-2", "orphan")])

    def test_launched_by_another_live_login_server_is_foreign_left_alone_reported_once(self):
        item = seen("i-1", "running", session=OTHER_SESSION, launched=ORPHAN_SKEW + 1)
        plan = self.reconcile([item], T0)
        self.assertEqual((plan.terminate, plan.foreign), ([], [item]))
        plan = self.reconcile([item], T0 + 5)
        self.assertEqual((plan.terminate, plan.foreign), ([], []))
        self.assertEqual(self.table.instances, {})

    def test_an_orphan_is_asked_once_per_grace_period(self):
        item = seen("i-1", "running", session=OTHER_SESSION, launched=-3600)
        self.assertEqual(len(self.reconcile([item], T0).terminate), 1)
        self.assertEqual(self.reconcile([item], T0 + 1).terminate, [])


class AskedBeforeTest(TableTestCase):
    def asked(self, at=T0):
        self.running("app-1", "i-1", at=at)
        return self.table.cancel("app-1", at)

    def test_still_listed_active_shortly_after_the_request_is_not_asked_again(self):
        self.asked()
        for state in ("running", "stopping"):
            plan = self.reconcile([seen("i-1", state)], T0 + NOT_FOUND_GRACE - 1)
            self.assertEqual((plan.terminate, plan.exits), ([], []))

    def test_still_active_a_grace_period_later_is_asked_again(self):
        rec = self.asked()
        self.table.terminate_done("i-1", T0 + 1)          # acknowledged, yet it did not stop
        plan = self.reconcile([seen("i-1", "running")], T0 + 1 + NOT_FOUND_GRACE)
        self.assertEqual(self.terminated_ids(plan), [("i-1", "still running")])
        self.assertEqual((rec.state, rec.since), (State.TERMINATING, T0 + 1 + NOT_FOUND_GRACE))
        self.assertEqual(self.reconcile([seen("i-1", "running")], T0 + 2 + NOT_FOUND_GRACE).terminate, [])

    def test_forgotten_once_aws_says_it_ends(self):
        for state in ("shutting-down", "terminated"):
            with self.subTest(state=state):
                self.setUp()
                rec = self.asked()
                plan = self.reconcile([seen("i-1", state)], T0 + 1)
                self.assertEqual((plan.terminate, plan.exits), ([], []))
                self.assertIs(rec.state, State.GONE)
                self.assertEqual(self.table.instances, {})

    def test_forgotten_when_no_longer_listed_a_grace_period_later(self):
        rec = self.asked()
        self.reconcile([], T0 + NOT_FOUND_GRACE)           # may just not be listed yet
        self.assertIs(rec.state, State.TERMINATING)
        self.reconcile([], T0 + NOT_FOUND_GRACE + 1)
        self.assertIs(rec.state, State.GONE)
        self.assertEqual(self.table.instances, {})

    def test_a_terminating_instance_is_no_stray(self):
        self.asked()
        plan = self.reconcile([seen("i-1", "running")], T0 + 1)
        self.assertEqual(plan.terminate, [])


# -- close(): terminate everything with retries, in a worker, until a deadline --------
def client_error(code):
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": 400}},
                       "TerminateInstances")


class FakeTerminate:
    """terminate_instances with scripted errors; time advances only by sleeping."""

    def __init__(self, failures=(), unknown=()):
        self.failures, self.unknown = list(failures), set(unknown)
        self.calls, self.slept, self.now = [], [], 0.0

    def __call__(self, ids):
        self.calls.append(list(ids))
        if self.failures:
            raise self.failures.pop(0)
        if self.unknown & set(ids):
            raise client_error("InvalidInstanceID.NotFound")
        return {}

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds

    def clock(self):
        return self.now


class TerminateAllTest(unittest.TestCase):
    def setUp(self):
        logger = logging.getLogger("launcher.ec2")
        self.addCleanup(setattr, logger, "disabled", logger.disabled)
        logger.disabled = True

    def run_it(self, fake, ids, deadline=30.0):
        return shutdown.terminate_all(fake, ids, deadline, CLUSTER, sleep=fake.sleep, clock=fake.clock)

    def test_one_call_for_every_id(self):
        fake = FakeTerminate()
        self.assertEqual(self.run_it(fake, {"i-2", "i-1"}), ["i-1", "i-2"])
        self.assertEqual((fake.calls, fake.slept), ([["i-1", "i-2"]], []))

    def test_throttling_is_retried_with_growing_pauses(self):
        fake = FakeTerminate(failures=[client_error("Throttling"), client_error("RequestLimitExceeded")])
        self.assertEqual(self.run_it(fake, {"i-1"}), ["i-1"])
        self.assertEqual(len(fake.calls), 3)
        self.assertEqual(len(fake.slept), 2)
        self.assertTrue(errors.BACKOFF_BASE * 0.5 <= fake.slept[0] <= errors.BACKOFF_BASE)
        self.assertTrue(errors.BACKOFF_BASE <= fake.slept[1] <= 2 * errors.BACKOFF_BASE)

    def test_an_unknown_id_does_not_keep_the_others_alive(self):
        fake = FakeTerminate(unknown={"i-2"})
        self.run_it(fake, {"i-1", "i-2", "i-3"})
        self.assertEqual(fake.calls, [["i-1", "i-2", "i-3"], ["i-1"], ["i-2"], ["i-3"]])

    def test_a_permanent_error_gives_up_at_once(self):
        fake = FakeTerminate(failures=[client_error("UnauthorizedOperation")])
        self.assertEqual(self.run_it(fake, {"i-1"}), [])
        self.assertEqual((len(fake.calls), fake.slept), (1, []))

    def test_bounded_by_the_deadline(self):
        fake = FakeTerminate(failures=[client_error("Throttling")] * 1000)
        self.assertEqual(self.run_it(fake, {"i-1"}, deadline=10.0), [])
        self.assertLessEqual(fake.now, 10.0)
        self.assertLess(len(fake.calls), 20)

    def test_batches_of_500(self):
        fake = FakeTerminate()
        ids = {f"i-{n:04d}" for n in range(1100)}
        self.run_it(fake, ids)
        self.assertEqual([len(c) for c in fake.calls], [500, 500, 100])


if __name__ == "__main__":
    unittest.main()
