"""The fairness policies (lib/social/fairness.py) on virtual time: token
buckets, the password checks' scheduler, idle sessions."""
import random
import unittest

from lib.social.fairness import FairScheduler, IdleSessions, TokenBuckets


class TokenBucketsTest(unittest.TestCase):
    def test_capacity_then_a_continuous_refill(self):
        b = TokenBuckets(6, period=60.0)          # 6 a minute: one every 10 s
        self.assertEqual([b.take("a", 0.0) for _ in range(7)], [True] * 6 + [False])
        self.assertFalse(b.take("a", 9.9))
        self.assertTrue(b.take("a", 10.0))
        self.assertFalse(b.take("a", 10.0))
        self.assertTrue(b.take("a", 25.0))          # 1.5 tokens came: one spent, half kept
        self.assertTrue(b.take("a", 30.0))
        self.assertFalse(b.take("a", 30.0))

    def test_refused_attempts_do_not_delay_the_refill(self):
        b = TokenBuckets(6, period=60.0)
        for _ in range(6):
            b.take("a", 0.0)
        for t in range(0, 100):                     # hammering every 0.1 s
            b.take("a", t / 10)
        self.assertTrue(b.take("a", 10.0))

    def test_keys_are_independent_and_a_bucket_never_holds_more_than_its_capacity(self):
        b = TokenBuckets(2, period=60.0)
        self.assertTrue(b.take("a", 0.0) and b.take("a", 0.0))
        self.assertFalse(b.take("a", 0.0))
        self.assertTrue(b.take("b", 0.0))
        self.assertEqual([b.take("a", 10_000.0) for _ in range(3)], [True, True, False])

    def test_full_buckets_are_forgotten(self):
        b = TokenBuckets(2, period=60.0)
        for i in range(1000):
            b.take(f"10.0.{i // 256}.{i % 256}", i * 0.01)
        self.assertEqual(len(b.buckets), 1000)
        b.take("x", 70.0)                            # a period after most of them
        self.assertLess(len(b.buckets), 1000 - 900)
        b.take("y", 200.0)
        self.assertEqual(set(b.buckets), {"y"})


class SchedulerTest(unittest.TestCase):
    def test_runs_at_most_slots_and_starts_the_next_when_one_finishes(self):
        s = FairScheduler(slots=2, max_waiting=10, per_key=10)
        self.assertEqual(s.submit("a", 1), ([("a", 1)], []))
        self.assertEqual(s.submit("a", 2), ([("a", 2)], []))
        self.assertEqual(s.submit("a", 3), ([], []))
        self.assertEqual((s.running, s.waiting), (2, 1))
        self.assertEqual(s.finished("a"), [("a", 3)])
        self.assertEqual(s.finished("a"), [])
        self.assertEqual(s.finished("a"), [])
        self.assertEqual((s.running, s.waiting, dict(s.held), s.queues), (0, 0, {}, {}))

    def test_round_robin_between_keys(self):
        s = FairScheduler(slots=1, max_waiting=100, per_key=100)
        running = []
        for i in range(50):
            running += s.submit("flood", f"f{i}")[0]
        for key, job in (("alice", "a1"), ("bob", "b1"), ("alice", "a2")):
            running += s.submit(key, job)[0]
        self.assertEqual(drain(s, running)[:7], ["f0", "f1", "a1", "b1", "f2", "a2", "f3"])

    def test_one_job_waits_for_at_most_one_job_of_each_other_key(self):
        rng = random.Random(7)
        s = FairScheduler(slots=2, max_waiting=256, per_key=64)
        running = []
        for i in range(200):                        # three flooding addresses
            key = f"flood{i % 3}"
            started, _ = s.submit(key, (key, i))
            running += started
        started, refused = s.submit("alice", ("alice", 0))
        self.assertEqual(refused, [])
        running += started
        ahead = 0
        while not any(job == ("alice", 0) for _, job in running):
            key, _ = running.pop(rng.randrange(len(running)))
            running += s.finished(key)
            ahead += 1
        self.assertLessEqual(ahead, 2 + 3)            # the two running, then one per other key

    def test_per_key_cap_counts_running_and_waiting(self):
        s = FairScheduler(slots=2, max_waiting=100, per_key=3)
        for i in range(3):
            self.assertEqual(s.submit("a", i)[1], [])
        self.assertEqual(s.submit("a", 3), ([], [3]))           # two running, one waiting
        self.assertEqual(s.submit("b", "b0")[1], [])
        self.assertEqual(s.finished("a"), [("a", 2)])
        self.assertEqual(s.submit("a", 4), ([], []))            # room again
        self.assertEqual(s.submit("a", 5), ([], [5]))

    def test_a_full_queue_refuses_the_newest_of_the_longest_line_first(self):
        s = FairScheduler(slots=1, max_waiting=4, per_key=10)
        running = []
        for i in range(5):
            running += s.submit("flood", i)[0]                   # 0 runs, 1..4 wait
        self.assertEqual(s.waiting, 4)
        self.assertEqual(s.submit("alice", "a"), ([], [4]))     # room made for alice
        self.assertEqual(s.submit("bob", "b"), ([], [3]))
        self.assertEqual(s.submit("flood", 5), ([], [5]))       # not for the flood itself
        self.assertEqual(s.submit("carol", "c"), ([], [2]))     # flood 2 waiting vs none
        self.assertEqual(s.submit("dave", "d"), ([], ["d"]))    # one each: even, dave waits outside
        self.assertEqual(drain(s, running), [0, 1, "a", "b", "c"])

    def test_bounds_hold_under_random_load(self):
        rng = random.Random(11)
        s = FairScheduler(slots=2, max_waiting=20, per_key=5)
        running, held = [], {}
        for _ in range(5000):
            if running and rng.random() < 0.4:
                key, _ = running.pop(rng.randrange(len(running)))
                held[key] -= 1
                running += s.finished(key)
            else:
                key = rng.choice("abcdefg")
                started, refused = s.submit(key, key)
                running += started
                held[key] = held.get(key, 0) + 1
                for job in refused:                      # this one, or another key's newest
                    held[job] -= 1
            self.assertLessEqual(len(running), 2)
            self.assertEqual(s.running, len(running))
            self.assertLessEqual(s.waiting, 20)
            self.assertLessEqual(max(held.values()), 5)
            self.assertEqual(s.waiting, sum(len(q) for q in s.queues.values()))
            if s.waiting:
                self.assertEqual(s.running, 2)                   # never idle while jobs wait


def drain(s, running):
    """Finish the jobs in the order they started until none is left: their order."""
    order = []
    while running:
        key, job = running.pop(0)
        order.append(job)
        running += s.finished(key)
    return order


class IdleSessionsTest(unittest.TestCase):
    def test_expired_after_the_limit_since_the_last_touch(self):
        idle = IdleSessions(100.0)
        idle.touch("a", 0.0)
        idle.touch("b", 10.0)
        idle.touch("a", 50.0)
        self.assertEqual(idle.expired(109.9), [])
        self.assertEqual(idle.expired(110.0), ["b"])
        idle.forget("a")
        self.assertEqual(idle.expired(1000.0), [])
