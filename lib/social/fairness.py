"""Policies that keep one client from crowding out the others: pure, no
clock, no I/O (time comes in as `now`, in seconds, never decreasing).

- `TokenBuckets`: a rate limit per key (source address): sign-ups and
  logins (the login core);
- `FairScheduler`: password checks (scrypt) by source address: bounded,
  round-robin between addresses (the login server's driver);
- `IdleSessions`: who has made no request for too long (the login core).

The limits themselves are flags (lib/social/limits.py); what a client sees
when it hits one is `TOO_MANY` (lib/social/login_events.py).
"""
import collections


class TokenBuckets:
    """One bucket per key: `capacity` tokens, refilled continuously at
    `capacity` per `period` seconds; `take` spends one if there is one."""

    def __init__(self, capacity, period=60.0):
        self.capacity, self.period = capacity, period
        self.rate = capacity / period
        self.buckets = collections.OrderedDict()   # key -> (tokens, when); least recent first

    def take(self, key, now):
        """True and one token less, or False (empty: refuse)."""
        tokens, when = self.buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + max(0.0, now - when) * self.rate)
        allowed = tokens >= 1
        self.buckets[key] = (tokens - 1 if allowed else tokens, now)
        # A bucket untouched for a period is full again, the same as none:
        # memory stays bounded by the addresses seen in the last period.
        while now - next(iter(self.buckets.values()))[1] >= self.period:
            self.buckets.popitem(last=False)
        return allowed


class FairScheduler:
    """Jobs by key (source address): at most `slots` run at once (the worker
    pool's threads), the rest wait here. A key holds at most `per_key` jobs
    running or waiting; at most `max_waiting` wait in all. Waiting jobs start
    round-robin between keys, so a key with one job waits for at most one
    job of each other key, however many those have queued.

    When the queue is full, the newest job of the key with the most waiting
    is refused in favour of a key with fewer (a flood from a few addresses
    cannot lock out another); otherwise the newcomer is refused."""

    def __init__(self, slots, max_waiting, per_key):
        self.slots, self.max_waiting, self.per_key = slots, max_waiting, per_key
        self.running = 0
        self.waiting = 0
        self.queues = {}          # key -> deque of waiting jobs; dict order is the round
        self.held = collections.Counter()   # key -> its jobs running or waiting

    def submit(self, key, job):
        """-> (started, refused): [(key, job)] to run now, [job] to refuse now."""
        if self.held[key] >= self.per_key:
            return [], [job]
        refused = []
        if self.waiting >= self.max_waiting:
            victim = self._longest()
            if victim is None or len(self.queues[victim]) <= len(self.queues.get(key, ())) + 1:
                return [], [job]
            refused.append(self._drop_newest(victim))
        self.queues.setdefault(key, collections.deque()).append(job)
        self.held[key] += 1
        self.waiting += 1
        return self._fill(), refused

    def finished(self, key):
        """A running job of `key` is done: -> the jobs to start now."""
        self.running -= 1
        self._release(key)
        return self._fill()

    def _fill(self):
        started = []
        while self.running < self.slots and self.queues:
            key = next(iter(self.queues))
            queue = self.queues.pop(key)
            started.append((key, queue.popleft()))
            if queue:
                self.queues[key] = queue      # to the back of the round
            self.waiting -= 1
            self.running += 1
        return started

    def _longest(self):
        return max(self.queues, key=lambda k: len(self.queues[k]), default=None)

    def _drop_newest(self, key):
        queue = self.queues[key]
        job = queue.pop()
        if not queue:
            del self.queues[key]
        self.waiting -= 1
        self._release(key)
        return job

    def _release(self, key):
        self.held[key] -= 1
        if self.held[key] <= 0:
            del self.held[key]


class IdleSessions:
    """The time of each user's last request; who has been idle `limit` s."""

    def __init__(self, limit):
        self.limit = limit
        self.last = collections.OrderedDict()   # user -> when; oldest first (times never decrease)

    def touch(self, user, now):
        self.last[user] = now
        self.last.move_to_end(user)

    def forget(self, user):
        self.last.pop(user, None)

    def expired(self, now):
        """The users idle for `limit` s or more, forgotten here."""
        gone = []
        while self.last and now - next(iter(self.last.values())) >= self.limit:
            gone.append(self.last.popitem(last=False)[0])
        return gone
