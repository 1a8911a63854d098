"""Pure tests of the broker link (lib/messaging/broker.py): a fake stomp.py
connection and a manual reactor with a virtual clock; no sockets, threads or
sleeps.

The fake connection records every frame the link writes, in order, and
checks each call against stomp.Connection12's own signature. The manual
reactor keeps `run_in_thread` jobs (connect, writes, close) until a test runs
them, so a test decides when the "worker" finishes, and what the "receiver
thread" delivers (through the link's stomp listener) and when.
"""
import unittest

import stomp

from lib.messaging import broker
from lib.social.commands import Context
from tests.fakes import QUEUE, TOPIC, LinkTestCase


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
