"""Pure tests of the broker link (lib/messaging/broker.py): a fake stomp.py
connection and a manual reactor with a virtual clock; no sockets, threads or
sleeps.

The fake connection records every frame the link writes, in order, and
checks each call against stomp.Connection12's own signature. The manual
reactor keeps `run_in_thread` jobs (connect, writes, close) until a test runs
them, so a test decides when the "worker" finishes, and what the "receiver
thread" delivers (through the link's stomp listener) and when.
"""
import inspect
import unittest

import stomp
import stomp.protocol

from lib.messaging import broker
from lib.messaging.credentials import Credentials
from lib.social.commands import Context
from tests.fakes import QUEUE, TOPIC, FakeConnection, LinkTestCase

USER, SECRET = "np-0123abcd", "Zx9-secret-token_not-for-logs"
REFUSED = "User name [%s] or password is invalid." % USER   # ActiveMQ's words


class AckingConnection(FakeConnection):
    """FakeConnection plus ACK frames (recorded in order with the others)
    and connect()'s arguments, checked against Protocol12.connect (the
    signature Connection12.connect(*args, **kwargs) hands them to)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.connect_calls = []

    def connect(self, *args, **kwargs):
        try:
            inspect.signature(stomp.protocol.Protocol12.connect).bind(self, *args, **kwargs)
        except TypeError as e:
            self.bad_calls.append(("connect", args, kwargs, str(e)))
        self.connect_calls.append(kwargs)
        super().connect(*args, **kwargs)

    def ack(self, *args, **kwargs):
        self._write("ack", args, kwargs)


class AckLinkTestCase(LinkTestCase):
    """LinkTestCase over AckingConnection; `seen` keeps the headers each
    on_message call got."""

    def setUp(self):
        super().setUp()
        self.seen = []

    def _factory(self, host, port):
        conn = AckingConnection(host, port, refuse=self.refuse)
        self.conns.append(conn)
        return conn

    def _on_message(self, destination, body, headers):
        super()._on_message(destination, body, headers)
        self.seen.append(headers)

    def relink(self, **kwargs):
        self.link = broker.BrokerLink(
            self.reactor, "127.0.0.1", 61613, on_message=self._on_message,
            on_state=self.states.append, name="t", connection_factory=self._factory, **kwargs)

    def subscribe(self, destination, **kwargs):
        results = []
        self.link.subscribe(destination, lambda ok, err: results.append((ok, err)), **kwargs)
        return results

    def sid_of(self, destination, conn=None):
        return next(a[1] for m, a, _ in (conn or self.conn).frames
                    if m == "subscribe" and a[0] == destination)

    def deliver(self, destination, message_id, ack_id, body="b", conn=None):
        """The broker sends a MESSAGE on `conn`; the headers on_message got, or None."""
        conn = conn or self.conn
        before = len(self.seen)
        headers = {"destination": destination, "subscription": self.sid_of(destination, conn),
                   "message-id": message_id}
        if ack_id is not None:
            headers["ack"] = ack_id
        self.frame(conn, "on_message", "MESSAGE", headers, body)
        return self.seen[-1] if len(self.seen) > before else None

    def acks(self, conn=None):
        return [a[0] for m, a, _ in (conn or self.conn).frames if m == "ack"]


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

    def test_an_expiry_becomes_the_expires_header_in_milliseconds(self):
        self.up()
        self.link.publish(QUEUE, "later", True, lambda ok, error: None, expires=1796040000.25)
        self.flush()
        self.assertEqual(self.conn.frames[0][2]["headers"]["expires"], "1796040000250")

    def test_publish_before_start_fails_once_without_writing(self):
        before_start = self.publish("early")
        self.assertEqual(before_start, [], "done() must not run inside publish()")
        self.reactor.run_soon()
        self.assertEqual(before_start, [(False, "broker not connected")])
        self.link.start()
        self.reactor.run_job(broker._open)
        self.connected()
        self.flush()
        self.assertEqual(self.conn.frames, [])
        self.reactor.advance(60)
        self.assertEqual(before_start, [(False, "broker not connected")])

    def test_publish_while_connecting_goes_out_once_connected(self):
        """A new app server's first send, or one during a broker restart:
        held until CONNECTED, then written and confirmed by its receipt."""
        self.link.start()
        self.reactor.run_job(broker._open)       # TCP up, no CONNECTED yet
        connecting = self.publish("connecting")
        self.reactor.run_soon()
        self.assertEqual((connecting, self.reactor.jobs_of(broker._write)), ([], []))
        self.connected()
        self.flush()
        [(method, args, kwargs)] = self.conn.frames
        self.assertEqual((method, args[1]), ("send", "connecting"))
        self.receipt(kwargs["headers"]["receipt"])
        self.assertEqual(connecting, [(True, None)])

    def test_publish_while_connecting_fails_at_its_timeout_never_sent(self):
        self.link.start()
        self.reactor.run_job(broker._open)
        connecting = self.publish("connecting")
        self.reactor.advance(4.9)
        self.assertEqual(connecting, [])
        self.reactor.advance(0.2)
        self.assertEqual(connecting, [(False, "broker not connected")])
        self.connected()
        self.flush()
        self.assertEqual(self.conn.frames, [], "a publish that failed must never go out")

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


class CredentialsTest(AckLinkTestCase):
    def test_credentials_are_the_connect_frames_login_and_passcode(self):
        self.relink(credentials=Credentials(USER, SECRET))
        self.up()
        self.frame(self.conn, "on_disconnected", None)
        self.reconnect(broker.BACKOFF_MIN)
        for conn in self.conns:                  # every attempt logs in
            self.assertEqual(conn.connect_calls, [{"username": USER, "passcode": SECRET, "wait": False}])

    def test_without_credentials_no_login_headers(self):
        self.up()
        self.assertEqual(self.conn.connect_calls, [{"wait": False}])

    def test_a_refused_login_is_logged_once_and_retried_with_the_backoff(self):
        self.relink(credentials=Credentials(USER, SECRET))
        with self.assertLogs("broker", "DEBUG") as logs:
            self.link.start()
            delays = []
            for attempt in range(7):
                if attempt:
                    delays.append(round(self.reactor.timers()[0], 6))
                    self.reconnect_attempt(delays[-1])
                self.reactor.run_job(broker._open)
                self.frame(self.conn, "on_error", "ERROR", {"message": REFUSED})
                self.frame(self.conn, "on_disconnected", None)   # ActiveMQ closes after it
            self.assertEqual(delays, [0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
            self.assertEqual((self.states, len(self.conns)), ([], 7))
            # The operator fixes the credentials: up; a later refusal is news again.
            self.reconnect(2.0)
            self.frame(self.conn, "on_disconnected", None)
            self.reconnect_attempt(broker.BACKOFF_MIN)
            self.reactor.run_job(broker._open)
            self.frame(self.conn, "on_error", "ERROR", {"message": REFUSED})
        self.assertEqual(self.states, [True, False])
        line = "broker refused our credentials (user %s): %s (link t; retrying every 2 s at most)" \
            % (USER, REFUSED)
        self.assertEqual([(r.levelname, r.getMessage()) for r in logs.records if r.levelname != "DEBUG"],
                         [("ERROR", line), ("INFO", "broker t: connected to 127.0.0.1:61613"),
                          ("WARNING", "broker t: broker connection lost; reconnecting"), ("ERROR", line)])
        self.assertFalse([r for r in logs.records if SECRET in r.getMessage()], "the password was logged")

    def test_what_a_refusal_says(self):
        cases = [(Credentials(USER, SECRET), REFUSED,
                  "broker refused our credentials (user %s): %s" % (USER, REFUSED)),
                 (None, "User name [null] or password is invalid.",
                  "broker refused our credentials (no user given): User name [null] or password is invalid."),
                 (Credentials(USER, SECRET), "Maximum connections exceeded",
                  "broker refused the connection: Maximum connections exceeded")]
        for credentials, text, line in cases:
            with self.subTest(text=text):
                self.relink(credentials=credentials)
                with self.assertLogs("broker", "ERROR") as logs:
                    self.link.start()
                    self.reactor.run_job(broker._open)
                    self.frame(self.conn, "on_error", "ERROR", {"message": text})
                self.assertEqual([r.getMessage().split(" (link")[0] for r in logs.records], [line])
                self.link.close()
                self.reactor.advance(60)
                self.reactor.jobs.clear()

    def reconnect_attempt(self, delay):
        """After a failure: nothing before `delay`, then a new connection attempt."""
        before = len(self.conns)
        self.reactor.advance(delay - 0.01)
        self.assertEqual(len(self.conns), before, "retried before %g s" % delay)
        self.reactor.advance(0.01)
        self.assertEqual(len(self.conns), before + 1, "no retry after %g s" % delay)


class AckTest(AckLinkTestCase):
    def test_client_individual_subscription_and_its_acks(self):
        self.up()
        done = self.subscribe(QUEUE, ack="client-individual", headers={"activemq.prefetchSize": "500"})
        self.flush()
        [(method, args, kwargs)] = self.conn.frames
        rid = kwargs["headers"]["receipt"]
        self.assertEqual((method, args[0], kwargs), ("subscribe", QUEUE, {
            "ack": "client-individual", "headers": {"activemq.prefetchSize": "500", "receipt": rid}}))
        self.receipt(rid)
        self.assertEqual(done, [(True, None)])
        first = self.deliver(QUEUE, "ID:m1", "a-1", body="one")
        second = self.deliver(QUEUE, "ID:m2", "a-2", body="two")
        self.assertEqual((first["message-id"], first["ack"]), ("ID:m1", "a-1"), "the broker's headers kept")
        self.link.ack(second)
        self.assertEqual(self.acks(), [], "written inside ack()")
        self.flush()
        self.assertEqual(self.conn.frames[-1], ("ack", ("a-2",), {}), "STOMP 1.2: ACK id = the ack header")
        self.link.ack(second)                    # twice: ActiveMQ would answer ERROR
        self.link.ack(first)
        self.flush()
        self.assertEqual(self.acks(), ["a-2", "a-1"])
        self.assertTrue(self.link.connected)
        self.assertEqual([b for _, b, _ in self.messages], ["one", "two"])

    def test_ack_of_an_auto_message_writes_nothing(self):
        self.up()
        self.subscribe(TOPIC)
        self.flush()
        headers = self.deliver(TOPIC, "ID:t1", None)
        self.link.ack(headers)
        self.flush()
        self.assertEqual([m for m, _, _ in self.conn.frames], ["subscribe"])

    def test_ack_after_unsubscribe_is_a_noop(self):
        """ActiveMQ takes back the unacked messages of an unsubscribed
        client-individual subscription; an ACK for one would be an ERROR."""
        self.up()
        self.subscribe(QUEUE, ack="client-individual")
        self.flush()
        headers = self.deliver(QUEUE, "ID:m1", "a-1")
        self.link.unsubscribe(QUEUE)
        self.link.ack(headers)
        self.subscribe(QUEUE, ack="client-individual")   # again: a new subscription
        self.link.ack(headers)
        self.flush()
        self.assertEqual([m for m, _, _ in self.conn.frames], ["subscribe", "unsubscribe", "subscribe"])

    def test_ack_needs_headers_from_this_link(self):
        self.up()
        self.subscribe(QUEUE, ack="client-individual")
        self.flush()
        headers = self.deliver(QUEUE, "ID:m1", "a-1")
        other = broker.BrokerLink(self.reactor, connection_factory=self._factory)
        forged = dict(headers, **{broker.DELIVERY: "x"})    # what a publisher's header could be
        for bad in ({"ack": "a-1", "message-id": "ID:m1"}, forged):
            with self.assertRaises(ValueError):
                self.link.ack(bad)
        with self.assertRaises(ValueError):
            other.ack(headers)
        self.flush()
        self.assertEqual(self.acks(), [])

    def test_subscribe_arguments_are_checked(self):
        self.up()
        self.subscribe(QUEUE, ack="client-individual", headers={"activemq.prefetchSize": "500"})
        for kwargs in ({"ack": "client"}, {"ack": "auto"}, {"ack": "client-individual"},
                       {"ack": "client-individual", "headers": {"activemq.prefetchSize": "1"}}):
            with self.subTest(kwargs=kwargs), self.assertRaises(ValueError):
                self.link.subscribe(QUEUE, **kwargs)
        for header in ("receipt", "id", "ack", "destination"):
            with self.subTest(header=header), self.assertRaises(ValueError):
                self.link.subscribe(TOPIC, headers={header: "x"})
        self.subscribe(QUEUE, ack="client-individual", headers={"activemq.prefetchSize": "500"})  # same: fine
        self.flush()
        self.assertEqual([(m, a[0]) for m, a, _ in self.conn.frames], [("subscribe", QUEUE)])


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
