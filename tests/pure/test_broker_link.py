"""Pure tests of the broker link (lib/messaging/broker.py): a fake stomp.py
connection and a manual reactor with a virtual clock; no sockets, threads or
sleeps.

The fake connection records every frame the link writes, in order, and
checks each call against stomp.Connection12's own signature. The manual
reactor keeps `run_in_thread` jobs (connect, writes, close) until a test runs
them, so a test decides when the "worker" finishes, and what the "receiver
thread" delivers (through the link's stomp listener) and when.
"""
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
from lib.social.commands import Context

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


class PublishTest(LinkTestCase):
    def test_publish_is_confirmed_by_its_receipt(self):
        self.up()
        results = self.publish("hello ünïcode")
        self.assertEqual(results, [])
        self.flush()
        [(method, args, kwargs)] = self.conn.frames
        self.assertEqual((method, args), ("send", (QUEUE, "hello ünïcode")))
        rid = kwargs["headers"]["receipt"]
        self.assertEqual(kwargs["headers"], {"receipt": rid, "persistent": "true"})
        self.assertEqual(results, [], "confirmed before the broker's receipt")
        self.receipt("t-p999")                   # someone else's receipt
        self.assertEqual(results, [])
        self.receipt(rid)
        self.assertEqual(results, [(True, None)])
        self.receipt(rid)                        # a duplicate receipt
        self.reactor.advance(60)                 # and the timeout, cancelled
        self.assertEqual(results, [(True, None)])
        self.assertTrue(self.link.connected)

    def test_non_persistent_publish_has_no_persistent_header(self):
        self.up()
        self.publish("fleeting", persistent=False)
        self.flush()
        self.assertNotIn("persistent", self.conn.frames[0][2]["headers"])

    def test_publish_while_down_fails_once_without_writing(self):
        before_start = self.publish("early")
        self.reactor.run_soon()
        self.assertEqual(before_start, [(False, "broker not connected")])
        self.link.start()
        self.reactor.run_job(broker._open)       # TCP up, no CONNECTED yet
        connecting = self.publish("connecting")
        self.assertEqual(connecting, [], "done() must not run inside publish()")
        self.reactor.run_soon()
        self.assertEqual(connecting, [(False, "broker not connected")])
        self.assertEqual(self.reactor.jobs_of(broker._write), [])
        self.connected()
        self.flush()
        self.assertEqual(self.conn.frames, [])
        self.reactor.advance(60)
        self.assertEqual((before_start, connecting), ([(False, "broker not connected")],) * 2)

    def test_write_failure_fails_the_publish_once_and_reconnects(self):
        self.up()
        self.conn.fail_writes = BrokenPipeError("Broken pipe")
        results = self.publish("lost")
        old = self.conn
        self.flush()
        self.assertEqual(results, [(False, "write failed: Broken pipe")])
        self.assertFalse(self.link.connected)
        self.assertEqual(self.states, [True, False])
        self.reactor.run_job(broker._shut)       # the dead socket is closed, no DISCONNECT
        self.assertEqual((old.transport.closed, old.disconnects), (1, 0))
        self.reconnect(broker.BACKOFF_MIN)
        self.receipt("t-p1", conn=old)           # a late receipt of the dead connection
        self.reactor.advance(60)
        self.assertEqual(results, [(False, "write failed: Broken pipe")])
        self.assertEqual(self.states, [True, False, True])

    def test_error_frame_for_a_publish_fails_only_that_publish(self):
        self.up()
        first, second = self.publish("refused"), self.publish("fine")
        self.flush()
        self.frame(self.conn, "on_error", "ERROR",
                   {"receipt-id": self.rid_of("refused"), "message": "quota exceeded "})
        self.assertEqual(first, [(False, "broker error: quota exceeded")])
        self.assertTrue(self.link.connected)
        self.assertEqual(self.states, [True])
        self.receipt(self.rid_of("fine"))
        self.receipt(self.rid_of("refused"))     # too late: it already failed
        self.reactor.advance(60)
        self.assertEqual((first, second), ([(False, "broker error: quota exceeded")], [(True, None)]))

    def test_error_frame_without_receipt_fails_everything_and_reconnects(self):
        self.up()
        results = self.publish("in flight")
        self.flush()
        self.frame(self.conn, "on_error", "ERROR", {}, body="Unknown STOMP action\n")
        self.reactor.advance(0)
        self.assertEqual(results, [(False, "broker error: Unknown STOMP action")])
        self.assertEqual(self.states, [True, False])
        self.reconnect(broker.BACKOFF_MIN)
        self.assertTrue(self.link.connected)
        self.reactor.advance(60)
        self.assertEqual(len(results), 1)

    def test_no_receipt_in_time(self):
        self.up()
        results = self.publish("slow", timeout=5.0)
        self.flush()
        self.reactor.advance(4.99)
        self.assertEqual(results, [])
        self.reactor.advance(0.01)
        self.assertEqual(results, [(False, "no receipt from broker within 5 s")])
        self.receipt(self.rid_of("slow"))        # the receipt, too late
        self.reactor.advance(60)
        self.assertEqual(results, [(False, "no receipt from broker within 5 s")])
        self.assertTrue(self.link.connected, "a late receipt is no reason to reconnect")

    def test_outstanding_publishes_fail_exactly_once_when_the_link_drops(self):
        for event, reason in (("on_disconnected", "broker connection lost"),
                              ("on_heartbeat_timeout", "broker heartbeat timeout")):
            with self.subTest(event=event):
                self.setUp()
                self.up()
                calls = [self.publish("x%d" % i) for i in range(20)]
                self.flush()
                old, rids = self.conn, [self.rid_of("x%d" % i) for i in range(20)]
                self.frame(old, event, None)
                self.reactor.run_soon()
                self.assertEqual(calls, [[(False, reason)]] * 20)
                for rid in rids:                 # receipts of the dead connection
                    self.receipt(rid, conn=old)
                self.frame(old, "on_disconnected", None)   # and its second farewell
                self.reconnect(broker.BACKOFF_MIN)
                self.reactor.advance(60)
                self.assertEqual(calls, [[(False, reason)]] * 20)
                self.assertEqual(self.states, [True, False, True], "one loss, one reconnect")
                self.assertEqual(len(self.conns), 2)
                after = self.publish("after")
                self.flush()
                self.receipt(self.rid_of("after"))
                self.assertEqual(after, [(True, None)])
                self.tearDown()

    def test_close_fails_what_is_outstanding_once_and_disconnects(self):
        self.up()
        results, sub = self.publish("pending"), self.subscribe(TOPIC)
        self.flush()
        self.link.close()
        self.assertEqual((results, sub), ([], []), "done() must not run inside close()")
        self.reactor.run_soon()
        self.assertEqual((results, sub), ([(False, "broker link closed")],) * 2)
        self.reactor.run_job(broker._shut)       # graceful: DISCONNECT first
        self.assertEqual((self.conn.disconnects, self.conn.transport.closed), (1, 1))
        late = self.publish("late")
        self.reactor.run_soon()
        self.assertEqual(late, [(False, "broker link closed")])
        self.reactor.advance(60)
        self.assertEqual(len(self.conns), 1, "a closed link must not reconnect")
        self.assertEqual(results, [(False, "broker link closed")])

    def test_a_link_closed_before_start_never_connects(self):
        self.link.close()
        self.link.start()
        self.reactor.advance(60)
        self.assertEqual((self.conns, self.reactor.jobs), ([], []))


class ReconnectTest(LinkTestCase):
    def test_connect_retries_with_backoff_until_the_broker_answers(self):
        self.refuse = ConnectionRefusedError(111, "Connection refused")
        self.link.start()
        self.reactor.run_job(broker._open)
        delays = []
        delay = broker.BACKOFF_MIN
        for _ in range(6):
            delays.append(delay)
            before = len(self.conns)
            self.reactor.advance(delay - 0.01)
            self.assertEqual(len(self.conns), before, "retried before %g s" % delay)
            self.reactor.advance(0.01)
            self.assertEqual(len(self.conns), before + 1, "no retry after %g s" % delay)
            self.reactor.run_job(broker._open)
            delay = min(broker.BACKOFF_MAX, delay * 2)
        self.assertEqual(delays, [0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
        self.assertEqual(self.states, [], "never up: nothing to report")
        self.refuse = None
        self.reconnect(2.0)
        self.assertEqual(self.states, [True])
        self.frame(self.conn, "on_disconnected", None)
        self.reconnect(broker.BACKOFF_MIN)       # the backoff starts over once up
        self.assertEqual(self.states, [True, False, True])

    def test_no_connected_frame_in_time(self):
        self.link.start()
        self.reactor.run_job(broker._open)       # TCP up; CONNECTED never comes
        first = self.conn
        self.reactor.advance(broker.CONNECTED_TIMEOUT - 0.01)
        self.assertEqual(len(self.conns), 1)
        self.reactor.advance(0.01)
        self.reactor.run_job(broker._shut)
        self.assertEqual(first.transport.closed, 1)
        self.connected(first)                    # too late: that connection is gone
        self.assertFalse(self.link.connected)
        self.reconnect(broker.BACKOFF_MIN)
        self.assertEqual(self.states, [True])

    def test_resubscribes_after_a_drop_before_any_publish(self):
        self.up()
        queue, topic = self.subscribe(QUEUE), self.subscribe(TOPIC)
        self.flush()
        old = self.conn
        ids = {args[0]: args[1] for method, args, _ in old.frames}
        old_receipts = {destination: rid for _, destination, rid in self.sent()}
        self.receipt(old_receipts[QUEUE])        # the topic's receipt is still on its way
        self.assertEqual((queue, topic), ([(True, None)], []))
        # After a drop, the application publishes as soon as the link is back.
        self.link.on_state = lambda up: (self.states.append(up), up and self.publish("first"))
        self.frame(old, "on_disconnected", None)
        again = self.subscribe(QUEUE)            # asked while down: waits for the new connection
        self.reactor.run_soon()
        self.assertEqual((again, topic), ([], []))
        self.reconnect(broker.BACKOFF_MIN)
        self.flush()
        self.assertEqual([(m, d) for m, d, _ in self.sent()],
                         [("subscribe", QUEUE), ("subscribe", TOPIC), ("send", QUEUE)])
        self.assertEqual({args[0]: args[1] for m, args, _ in self.conn.frames if m == "subscribe"}, ids,
                         "the same subscription ids")
        new_receipts = {destination: rid for m, destination, rid in self.sent() if m == "subscribe"}
        self.receipt(old_receipts[TOPIC], conn=old)   # the old connection's: confirms nothing
        self.receipt(old_receipts[TOPIC])
        self.assertEqual((again, topic), ([], []))
        self.receipt(new_receipts[QUEUE])
        self.receipt(new_receipts[TOPIC])
        self.assertEqual((again, topic), ([(True, None)], [(True, None)]))
        self.frame(self.conn, "on_message", "MESSAGE",
                   {"destination": TOPIC, "subscription": ids[TOPIC]}, body="back")
        self.assertEqual(self.messages, [(TOPIC, "back", ids[TOPIC])])

    def test_events_of_a_dead_connection_are_ignored(self):
        self.up()
        old = self.conn
        self.frame(old, "on_disconnected", None)
        self.frame(old, "on_heartbeat_timeout", None)
        self.frame(old, "on_error", "ERROR", {"message": "late"})
        self.connected(old)
        self.assertFalse(self.link.connected)
        self.assertEqual(self.states, [True, False])
        self.reconnect(broker.BACKOFF_MIN)
        self.frame(old, "on_disconnected", None)
        self.assertTrue(self.link.connected)
        self.reactor.advance(60)
        self.assertEqual((self.states, len(self.conns)), ([True, False, True], 2))

    def test_stomp_threads_only_post_to_the_reactor(self):
        """The listener runs on stomp.py's threads: it may only hand events
        to the loop (call_soon_threadsafe), tagged with the connection."""
        self.link.start()
        self.reactor.run_job(broker._open)
        listener = self.conn.listener
        self.reactor.from_threads.clear()
        listener.on_connected(Frame("CONNECTED"))
        listener.on_receipt(Frame("RECEIPT", {"receipt-id": "t-p1"}))
        listener.on_message(Frame("MESSAGE", {"destination": QUEUE}, "b"))
        listener.on_error(Frame("ERROR", {"message": "m"}))
        listener.on_heartbeat_timeout()
        listener.on_disconnected()
        self.assertFalse(self.link.connected, "a stomp thread ran link code directly")
        self.assertEqual([name for name, _ in self.reactor.from_threads],
                         ["_on_connected", "_on_receipt", "_on_message", "_on_error", "_on_lost", "_on_lost"])
        self.assertEqual({args[0] for _, args in self.reactor.from_threads}, {self.link._gen})


class WriteOrderTest(LinkTestCase):
    def test_frames_go_out_in_order_one_write_job_at_a_time(self):
        self.up()
        self.publish("one")
        self.assertEqual(len(self.reactor.jobs_of(broker._write)), 1)
        self.publish("two")
        self.subscribe(TOPIC)
        self.publish("three", destination=TOPIC)
        self.link.unsubscribe(TOPIC)
        self.publish("four")
        self.assertEqual(len(self.reactor.jobs_of(broker._write)), 1, "a second writer while one runs")
        self.reactor.run_job(broker._write)
        self.assertEqual([a[1] for m, a, _ in self.conn.frames], ["one"])
        self.assertEqual(len(self.reactor.jobs_of(broker._write)), 1, "the rest: one batch")
        self.reactor.run_job(broker._write)
        self.assertEqual(self.reactor.jobs_of(broker._write), [])
        sid = next(a[1] for m, a, _ in self.conn.frames if m == "subscribe")
        self.assertEqual([(m, a[0] if m != "send" else a[1]) for m, a, _ in self.conn.frames],
                         [("send", "one"), ("send", "two"), ("subscribe", TOPIC), ("send", "three"),
                          ("unsubscribe", sid), ("send", "four")])
        receipts = [kw["headers"]["receipt"] for m, a, kw in self.conn.frames if m != "unsubscribe"]
        self.assertEqual(len(set(receipts)), 5, "every frame has its own receipt id")

    def test_frames_queued_behind_a_failed_write_are_not_sent_later(self):
        self.up()
        self.conn.fail_writes = OSError("Connection reset by peer")
        first = self.publish("first")
        queued = self.publish("queued")          # waits behind the failing write job
        self.flush()
        self.reactor.run_soon()
        self.assertEqual((first, queued), ([(False, "write failed: Connection reset by peer")],) * 2)
        self.reconnect(broker.BACKOFF_MIN)
        self.publish("next")
        self.flush()
        self.assertEqual([a[1] for m, a, _ in self.conn.frames], ["next"],
                         "a failed publish must not be sent after all")


class SubscribeTest(LinkTestCase):
    def test_subscribe_is_confirmed_by_its_receipt(self):
        self.up()
        first, second = self.subscribe(QUEUE), self.subscribe(QUEUE)   # one SUBSCRIBE for both
        self.flush()
        [(method, args, kwargs)] = self.conn.frames
        self.assertEqual((method, args[0], kwargs["ack"]), ("subscribe", QUEUE, "auto"))
        self.assertEqual((first, second), ([], []), "confirmed before the broker's receipt")
        self.receipt(kwargs["headers"]["receipt"])
        self.assertEqual((first, second), ([(True, None)],) * 2)
        third = self.subscribe(QUEUE)            # already confirmed: at once, but not inside subscribe()
        self.assertEqual(third, [])
        self.reactor.run_soon()
        self.assertEqual(third, [(True, None)])
        self.flush()
        self.assertEqual(len(self.conn.frames), 1, "subscribing again writes nothing")

    def test_subscribe_while_down_waits_for_the_connection(self):
        waiting = self.subscribe(TOPIC)
        self.link.subscribe(QUEUE)               # no done(): fine too
        self.reactor.run_soon()
        self.assertEqual(waiting, [])
        self.up()
        self.flush()
        self.assertEqual([(m, d) for m, d, _ in self.sent()], [("subscribe", TOPIC), ("subscribe", QUEUE)])
        self.assertEqual(waiting, [])
        self.receipt(self.sent()[0][2])
        self.assertEqual(waiting, [(True, None)])

    def test_unsubscribe(self):
        self.up()
        waiting = self.subscribe(QUEUE)
        self.flush()
        sid, rid = self.conn.frames[0][1][1], self.sent()[0][2]
        self.link.unsubscribe(QUEUE)
        self.reactor.run_soon()
        self.assertEqual(waiting, [(False, "unsubscribed")])
        self.flush()
        self.assertEqual(self.sent()[-1], ("unsubscribe", sid, None))
        self.receipt(rid)                        # late: confirms nothing
        self.frame(self.conn, "on_message", "MESSAGE", {"destination": QUEUE, "subscription": sid}, "x")
        self.assertEqual((waiting, self.messages), ([(False, "unsubscribed")], []))
        self.link.unsubscribe(QUEUE)             # twice: nothing more to do
        self.flush()
        self.assertEqual(len(self.conn.frames), 2)

    def test_messages_reach_the_application_for_current_subscriptions_only(self):
        self.up()
        self.subscribe(QUEUE)
        self.flush()
        sid = self.conn.frames[0][1][1]
        for headers in ({"destination": QUEUE, "subscription": sid},
                        {"destination": QUEUE, "subscription": "t-s999"},
                        {"destination": TOPIC, "subscription": sid}):
            self.frame(self.conn, "on_message", "MESSAGE", headers, "body")
        self.assertEqual(self.messages, [(QUEUE, "body", sid)])


class NamesTest(unittest.TestCase):
    """Destinations come from the social service's Context (the broker has
    no name helpers of its own); moved here from tests/live/test_broker.py."""

    def test_names_and_addresses(self):
        names = Context()
        q1, q2, t1 = names.new_queue(), names.new_queue(), names.new_topic()
        self.assertRegex(q1, r"^/queue/np\.u\.[0-9a-f]{32}$")
        self.assertRegex(t1, r"^/topic/np\.g\.[0-9a-f]{32}$")
        self.assertNotEqual(q1, q2)
        self.assertEqual(broker.parse_address("10.0.0.5:61614"), ("10.0.0.5", 61614))
        self.assertEqual(broker.parse_address("broker.local"), ("broker.local", 61613))
        self.assertEqual(broker.parse_address("h", default_port=7), ("h", 7))
        self.assertEqual(broker.parse_address("[::1]:5"), ("::1", 5))
        for bad in ("", ":61613", "h:x", "h:0", "h:70000", "[::1"):
            with self.assertRaises(ValueError, msg=bad):
                broker.parse_address(bad)

    def test_the_default_connection_is_stomp_12_with_one_attempt(self):
        conn = broker.stomp_connection("broker.local", 61614)   # built, not opened
        self.assertIsInstance(conn, stomp.Connection12)
        self.assertEqual(conn.heartbeats, broker.HEARTBEATS)
        transport = vars(conn.transport)   # stomp.py 9's private fields (the version is pinned)
        self.assertEqual(transport["_Transport__host_and_ports"], [("broker.local", 61614)])
        self.assertEqual(transport["_Transport__reconnect_attempts_max"], 1)
        self.assertEqual(transport["_Transport__timeout"], broker.CONNECT_TIMEOUT)
        self.assertFalse(conn.is_connected())


if __name__ == "__main__":
    unittest.main()
