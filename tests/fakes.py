"""Fakes for pure tests: a reactor run by hand with a virtual clock, and a
stomp.py connection that records what is written to it."""
import collections
import heapq
import inspect
import itertools
import logging
import unittest

import stomp

from stomp.utils import Frame

from lib.loop.reactor import Timer
from lib.messaging import broker

QUEUE, TOPIC = "/queue/np.u.q", "/topic/np.g.t"


class ManualReactor:
    """What BrokerLink asks of lib/loop/reactor.py, run by hand: a virtual
    clock, `call_soon` and `call_soon_threadsafe` queues, timers fired by
    `advance`, and off-loop jobs kept until `run_job`."""

    def __init__(self):
        self.now = 0.0
        self._timers = []
        self._seq = itertools.count()
        self.soon = collections.deque()
        self.from_threads = []     # what stomp.py's threads posted, as (callback name, args)
        self.jobs = []             # [fn, args, done]: run_in_thread work not yet done

    def call_later(self, delay, callback, *args):
        timer = Timer(self.now + max(0.0, delay), next(self._seq), callback, args)
        heapq.heappush(self._timers, timer)
        return timer

    def call_soon(self, callback, *args):
        self.soon.append((callback, args))

    def call_soon_threadsafe(self, callback, *args):
        self.from_threads.append((callback.__name__, args))
        self.soon.append((callback, args))

    def run_in_thread(self, fn, *args, done=None, pool="default"):
        self.jobs.append([fn, args, done])

    # -- driving -----------------------------------------------------------------
    def run_soon(self):
        while self.soon:
            callback, args = self.soon.popleft()
            callback(*args)

    def advance(self, seconds):
        """Move the clock, firing due timers in order (and what they queue)."""
        until = self.now + seconds
        self.run_soon()
        while self._timers and self._timers[0].when <= until + 1e-9:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self.now = max(self.now, timer.when)
                timer.callback(*timer.args)
                self.run_soon()
        self.now = until

    def jobs_of(self, fn):
        return [job for job in self.jobs if job[0] is fn]

    def run_job(self, fn):
        """Finish the oldest pending job of `fn` (it must be the only one:
        the link keeps one write job at a time); its `done` runs on the loop."""
        [job] = self.jobs_of(fn)
        self.jobs.remove(job)
        fn, args, done = job
        try:
            result, error = fn(*args), None
        except Exception as e:  # what the worker thread hands back
            result, error = None, e
        if done is not None:
            self.call_soon(done, result, error)
        self.run_soon()

    def timers(self):
        return sorted(t.when - self.now for t in self._timers if not t.cancelled)


class FakeTransport:
    socket = None   # _open sets TCP_NODELAY on it: AttributeError, which it ignores

    def __init__(self):
        self.closed = 0

    def disconnect_socket(self):
        self.closed += 1


class FakeConnection:
    """Stands in for stomp.Connection12. `refuse` makes connect() raise;
    `fail_writes` makes every later frame write raise (a dead socket)."""

    _REAL = stomp.Connection12

    def __init__(self, host, port, refuse=None):
        self.host, self.port, self.refuse = host, port, refuse
        self.listeners = {}
        self.frames = []           # (method, args, kwargs) written, in order
        self.bad_calls = []        # calls stomp.Connection12 would not accept
        self.fail_writes = None
        self.is_up = False
        self.disconnects = 0
        self.transport = FakeTransport()

    @property
    def listener(self):
        return self.listeners["np"]

    def _check(self, method, args, kwargs):
        try:
            inspect.signature(getattr(self._REAL, method)).bind(self, *args, **kwargs)
        except TypeError as e:
            self.bad_calls.append((method, args, kwargs, str(e)))

    def set_listener(self, name, listener):
        self._check("set_listener", (name, listener), {})
        self.listeners[name] = listener

    def connect(self, *args, **kwargs):
        self._check("connect", args, kwargs)
        if kwargs.get("wait"):
            self.bad_calls.append(("connect", args, kwargs, "wait=True blocks a worker without bound"))
        if self.refuse:
            raise self.refuse
        self.is_up = True

    def is_connected(self):
        return self.is_up

    def disconnect(self, *args, **kwargs):
        self._check("disconnect", args, kwargs)
        self.disconnects += 1
        self.is_up = False

    def _write(self, method, args, kwargs):
        self._check(method, args, kwargs)
        if self.fail_writes:
            raise self.fail_writes
        self.frames.append((method, args, kwargs))

    def send(self, *args, **kwargs):
        self._write("send", args, kwargs)

    def subscribe(self, *args, **kwargs):
        self._write("subscribe", args, kwargs)

    def unsubscribe(self, *args, **kwargs):
        self._write("unsubscribe", args, kwargs)


class LinkTestCase(unittest.TestCase):
    def setUp(self):
        log = logging.getLogger("broker")   # the link reports every loss; quiet here
        self.addCleanup(log.setLevel, log.level)
        log.setLevel(logging.CRITICAL)
        self.reactor = ManualReactor()
        self.conns = []
        self.refuse = None          # set: the next connections refuse
        self.states, self.messages = [], []
        self.link = broker.BrokerLink(
            self.reactor, "127.0.0.1", 61613, on_message=self._on_message,
            on_state=self.states.append, name="t", connection_factory=self._factory)

    def tearDown(self):
        for conn in self.conns:
            self.assertEqual(conn.bad_calls, [])

    def _factory(self, host, port):
        conn = FakeConnection(host, port, refuse=self.refuse)
        self.conns.append(conn)
        return conn

    def _on_message(self, destination, body, headers):
        self.messages.append((destination, body, headers.get("subscription")))

    # -- the broker's side ----------------------------------------------------
    @property
    def conn(self):
        return self.conns[-1]

    def frame(self, conn, event, cmd, headers=None, body=""):
        """The receiver thread of `conn` calls its listener; the loop then runs."""
        listener = conn.listener
        if event in ("on_disconnected", "on_heartbeat_timeout"):
            getattr(listener, event)()
        else:
            getattr(listener, event)(Frame(cmd, headers or {}, body))
        self.reactor.run_soon()

    def connected(self, conn=None):
        self.frame(conn or self.conn, "on_connected", "CONNECTED")

    def receipt(self, rid, conn=None):
        self.frame(conn or self.conn, "on_receipt", "RECEIPT", {"receipt-id": rid})

    def up(self):
        """start(), the worker's connect, and CONNECTED."""
        self.link.start()
        self.reactor.run_job(broker._open)
        self.connected()
        self.assertTrue(self.link.connected)

    def reconnect(self, delay):
        """After a loss: nothing before `delay`, then a new connection that comes up."""
        before = len(self.conns)
        self.reactor.advance(delay - 0.01)
        self.assertEqual(len(self.conns), before, "reconnected before the backoff")
        self.reactor.advance(0.01)
        self.assertEqual(len(self.conns), before + 1, "no reconnect after %g s" % delay)
        self.reactor.run_job(broker._open)
        self.connected()

    def flush(self):
        """Let the worker write whatever the link queued (one job at a time)."""
        while self.reactor.jobs_of(broker._write):
            self.reactor.run_job(broker._write)

    # -- the application's side ------------------------------------------------
    def publish(self, body, destination=QUEUE, persistent=True, timeout=5.0):
        """Publish; returns the list its done() calls land in."""
        results = []
        self.link.publish(destination, body, persistent,
                          lambda ok, err: results.append((ok, err)), timeout=timeout)
        return results

    def subscribe(self, destination):
        results = []
        self.link.subscribe(destination, lambda ok, err: results.append((ok, err)))
        return results

    def sent(self, conn=None):
        """(method, destination or id, receipt) of each frame written on `conn`."""
        out = []
        for method, args, kwargs in (conn or self.conn).frames:
            out.append((method, args[0], kwargs.get("headers", {}).get("receipt")))
        return out

    def rid_of(self, body, conn=None):
        for method, args, kwargs in (conn or self.conn).frames:
            if method == "send" and args[1] == body:
                return kwargs["headers"]["receipt"]
        raise AssertionError("%r was not written" % body)
