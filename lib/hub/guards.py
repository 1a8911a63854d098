"""The hub's defences, as pure policies the session machine (lib/hub/session.py)
consults in its guards: no socket, no clock (time comes in as `now`).

- `Buckets`: a rate limit per key (logins per address, wrong tokens per
  session and per address);
- `CheckQueue`: password checks, fair between source addresses, at most one
  running per id, bounded;
- `KnownPasswords`: verdicts without scrypt, for passwords already checked;
- `Ledger`: how many bytes may still go to addresses that have not shown
  they receive (no amplification);
- `address_key`: the "address" of every limit: the source IP (IPv6: its /64).

The numbers are flags (lib/hub/limits.py).
"""
import collections
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from lib.accounts import passwords


def address_key(ip):
    """The key of a source IP: itself, an IPv4-mapped IPv6 as IPv4, other IPv6 as its /64."""
    if ":" not in ip:   # IPv4: the common case, without parsing
        return ip
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return str(ipaddress.ip_network((addr, 64), strict=False).network_address)


class _Table(collections.OrderedDict):
    """A dict of at most `size` keys, least recently put first; `put`
    moves a key to the end and forgets the oldest beyond `size`."""

    def __init__(self, size):
        super().__init__()
        self.size = size

    def put(self, key, value):
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


class Buckets:
    """A token bucket per key: `capacity` tokens, refilled at `capacity` per
    `period` seconds. A key not seen for a period is full again, so keys
    older than that are forgotten; so are the least recent beyond `max_keys`."""

    def __init__(self, capacity, period=60.0, max_keys=65536):
        self.capacity, self.period = capacity, period
        self.rate = capacity / period
        self.buckets = _Table(max_keys)     # key -> (tokens, when)

    def level(self, key, now):
        tokens, when = self.buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + max(0.0, now - when) * self.rate)

    def available(self, key, now):
        """Is there a token (without spending it)?"""
        self._prune(now)
        return key not in self.buckets or self.level(key, now) >= 1   # (not seen lately: full)

    def take(self, key, now):
        """Spend a token if there is one: True, or False (empty: refuse)."""
        tokens = self.level(key, now)
        allowed = tokens >= 1
        self._store(key, tokens - 1 if allowed else tokens, now)
        return allowed

    def charge(self, key, now):
        """Spend a token, if any is left (an error already made)."""
        self._store(key, max(0.0, self.level(key, now) - 1), now)

    def _store(self, key, tokens, now):
        self.buckets.put(key, (tokens, now))
        self._prune(now)

    def _prune(self, now):
        """Forget the keys full again (untouched for a period): oldest first,
        so the table empties when the errors stop (a caller's fast path)."""
        while self.buckets and now - next(iter(self.buckets.values()))[1] >= self.period:
            self.buckets.popitem(last=False)


@dataclass(eq=False)
class Check:
    """One password check: login `sid` from source address `key` (address_key)."""
    ticket: int
    sid: str
    key: str
    reply_to: tuple
    password: str
    stored: str
    size: int = 0          # bytes of the login datagram (they pay for its answer)


class CheckQueue:
    """Password checks: at most `slots` run at once, and never two for one id;
    the rest wait. The next to start is from the address served least
    recently (one with nothing running or served yet first), so an address
    with one check waits for at most one of each other address, however many
    those have queued. An address holds at most
    `per_address` checks running or waiting; a newer check for the same id
    from the same address replaces its waiting one. At most `max_waiting`
    wait in all: when full, the address with the most waiting gives up its
    newest for an address with fewer, else the newcomer is refused."""

    def __init__(self, slots, max_waiting, per_address):
        self.slots, self.max_waiting, self.per_address = slots, max_waiting, per_address
        self.running = {}           # ticket -> Check
        self.running_ids = set()
        self.queues = {}            # address key -> list of waiting Checks
        self.held = collections.Counter()   # address key -> its checks running or waiting
        self.served = {}            # address key (while it holds checks) -> when last started
        self.waiting = 0
        self._turn = 0

    def submit(self, check):
        """-> (started, refused): the Checks to run now and those given up
        (the newcomer, a replaced or a displaced one)."""
        queue = self.queues.get(check.key, [])
        for i, old in enumerate(queue):
            if old.sid == check.sid:          # the same client again, maybe a corrected password
                queue[i] = check
                return self._fill(), [old]
        if self.held[check.key] >= self.per_address:
            return [], [check]
        refused = []
        if self.waiting >= self.max_waiting:
            victim = max(self.queues, key=lambda k: len(self.queues[k]), default=None)
            if victim is None or len(self.queues[victim]) <= len(queue) + 1:
                return [], [check]
            refused.append(self._drop_newest(victim))
        self.queues.setdefault(check.key, []).append(check)
        self.held[check.key] += 1
        self.waiting += 1
        return self._fill(), refused

    def duplicate(self, check):
        """Is the same login (id, address, password, answer address) already running or waiting?"""
        same = (check.sid, check.key, check.password, check.reply_to)
        return any((c.sid, c.key, c.password, c.reply_to) == same
                   for c in (*self.running.values(), *self.queues.get(check.key, ())))

    def finished(self, ticket):
        """Check `ticket` is done -> (its Check or None, the Checks to start now)."""
        check = self.running.pop(ticket, None)
        if check is None:
            return None, []
        self.running_ids.discard(check.sid)
        self._release(check.key)
        return check, self._fill()

    def _fill(self):
        started = []
        while len(self.running) < self.slots:
            check = self._next()
            if check is None:
                break
            self.running[check.ticket] = check
            self.running_ids.add(check.sid)
            started.append(check)
        return started

    def _next(self):
        """The first waiting check whose id has none running, from the address
        served least recently."""
        best = None
        for key, queue in self.queues.items():
            turn = self.served.get(key, -1)
            if best is not None and turn >= best[0]:
                continue
            for i, check in enumerate(queue):
                if check.sid not in self.running_ids:
                    best = (turn, key, i)
                    break
        if best is None:
            return None
        _, key, i = best
        queue = self.queues[key]
        check = queue.pop(i)
        if not queue:
            del self.queues[key]
        self.waiting -= 1
        self._turn += 1
        self.served[key] = self._turn
        return check

    def _drop_newest(self, key):
        queue = self.queues[key]
        check = queue.pop()
        if not queue:
            del self.queues[key]
        self.waiting -= 1
        self._release(key)
        return check

    def _release(self, key):
        self.held[key] -= 1
        if self.held[key] <= 0:
            del self.held[key]
            self.served.pop(key, None)


class KnownPasswords:
    """Per id, a keyed digest of the password that matched its stored record:
    a repeated login (or a wrong guess) is then decided without scrypt, as
    the TCP login server does. Forgets nothing but is bounded by the accounts."""

    def __init__(self):
        self.known = {}                     # id -> (stored record, digest)
        self.key = secrets.token_bytes(32)

    def verdict(self, sid, stored, password):
        """True/False when decided without scrypt (plain text, or a record
        whose matching password is known); None: it needs a check."""
        if not passwords.is_hashed(stored):
            return passwords.verify(stored, password)
        known = self.known.get(sid)
        if known is None or known[0] != stored:   # never matched, or users.txt changed
            return None
        return hmac.compare_digest(known[1], self._digest(password))

    def learn(self, sid, stored, password):
        self.known[sid] = (stored, self._digest(password))

    def _digest(self, password):
        return hmac.new(self.key, password.encode("utf-8"), hashlib.sha256).digest()


class Ledger:
    """Anti-amplification, per address key: a datagram answered (or
    forwarded) to an unproven destination credits its bytes, the answer
    debits its own; a send the credit does not cover is refused. A new key
    starts at `allowance`; at most `max_keys` are kept (least recent forgotten)."""

    def __init__(self, allowance, max_keys=65536):
        self.allowance = allowance
        self.credits = _Table(max_keys)
        self.received = self.sent = 0      # totals, for the stats and the tests

    def credit(self, key, size):
        self.received += size
        self.credits.put(key, self.credits.get(key, self.allowance) + size)

    def spend(self, key, size):
        """True (and debited) when `size` bytes to `key` are covered."""
        left = self.credits.get(key, self.allowance)
        if left < size:
            return False
        self.sent += size
        self.credits.put(key, left - size)
        return True
