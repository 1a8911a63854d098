"""Pure tests of the broker link's recovery (lib/messaging/broker.py):
reconnect with backoff and resubscribe, frames written in order by one write
job at a time, subscriptions and their receipts. Fakes: tests/fakes.py."""
import unittest

from stomp.utils import Frame

from lib.messaging import broker
from tests.fakes import QUEUE, TOPIC, LinkTestCase
from tests.pure.test_broker_link import AckLinkTestCase


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


class AckRecoveryTest(AckLinkTestCase):
    def test_subscriptions_come_back_with_their_ack_mode_and_headers(self):
        self.up()
        self.subscribe(QUEUE, ack="client-individual", headers={"activemq.prefetchSize": "500"})
        self.subscribe(TOPIC)
        self.flush()
        old = self.conn
        self.frame(old, "on_heartbeat_timeout", None)
        self.reconnect(broker.BACKOFF_MIN)
        self.flush()

        def subscriptions(conn):
            return [(args, kwargs["ack"], {k: v for k, v in kwargs["headers"].items() if k != "receipt"})
                    for m, args, kwargs in conn.frames if m == "subscribe"]
        self.assertEqual(subscriptions(self.conn), subscriptions(old))
        self.assertEqual(subscriptions(self.conn), [
            ((QUEUE, self.sid_of(QUEUE)), "client-individual", {"activemq.prefetchSize": "500"}),
            ((TOPIC, self.sid_of(TOPIC)), "auto", {})])
        self.assertNotEqual(self.sent(old), self.sent(), "a receipt id used twice")

    def test_acks_of_a_dead_connection_are_noops_and_its_messages_come_again(self):
        self.up()
        self.subscribe(QUEUE, ack="client-individual")
        self.subscribe(TOPIC)
        self.flush()
        old = self.conn
        first = self.deliver(QUEUE, "ID:m1", "a-1", body="one")
        self.frame(old, "on_disconnected", None)
        self.link.ack(first)                     # while down
        # Posted by the dead connection's receiver before it stopped: an
        # unacked message is the broker's again (it comes back), a topic
        # message (ack=auto) is ours.
        self.assertIsNone(self.deliver(QUEUE, "ID:m2", "a-2", body="late", conn=old))
        self.assertIsNotNone(self.deliver(TOPIC, "ID:t1", None, body="topic", conn=old))
        # Bounded: what the dead connection delivered is forgotten, acked or not.
        self.assertEqual(self.link._unacked, {})
        self.reconnect(broker.BACKOFF_MIN)
        self.link.ack(first)                     # on the new connection
        self.flush()
        self.assertEqual((self.acks(old), self.acks()), ([], []))
        # STOMP 1.2 ack ids belong to their connection: the new one may use
        # "a-1" for another message, which the stale ack must not ack.
        other = self.deliver(QUEUE, "ID:m9", "a-1", body="other")
        again = self.deliver(QUEUE, "ID:m1", "a-2", body="one")   # the redelivery
        self.link.ack(first)
        self.link.ack(again)
        self.flush()
        self.assertEqual(self.acks(), ["a-2"])
        self.link.ack(other)
        self.flush()
        self.assertEqual(self.acks(), ["a-2", "a-1"])
        self.assertEqual([b for _, b, _ in self.messages], ["one", "topic", "other", "one"])
        self.assertEqual(self.states, [True, False, True])
        self.assertTrue(self.link.connected)

    def test_acks_queued_when_the_connection_dies_are_not_written_later(self):
        self.up()
        self.subscribe(QUEUE, ack="client-individual")
        self.flush()
        headers = self.deliver(QUEUE, "ID:m1", "a-1")
        self.conn.fail_writes = BrokenPipeError("Broken pipe")
        self.publish("fails")
        self.link.ack(headers)                   # behind the failing write
        self.flush()
        self.reconnect(broker.BACKOFF_MIN)
        self.flush()
        self.assertEqual([m for m, _, _ in self.conn.frames], ["subscribe"])


class WriteOrderTest(AckLinkTestCase):
    def test_acks_go_out_in_order_with_the_other_frames(self):
        self.up()
        self.subscribe(QUEUE, ack="client-individual")
        self.flush()
        first, second = self.deliver(QUEUE, "ID:m1", "a-1"), self.deliver(QUEUE, "ID:m2", "a-2")
        self.publish("one")                      # its write job is in flight
        self.link.ack(second)
        self.publish("two")
        self.link.ack(first)
        self.subscribe(TOPIC)
        self.assertEqual(len(self.reactor.jobs_of(broker._write)), 1, "a second writer while one runs")
        self.flush()
        self.assertEqual([(m, a[1] if m == "send" else a[0]) for m, a, _ in self.conn.frames[1:]],
                         [("send", "one"), ("ack", "a-2"), ("send", "two"), ("ack", "a-1"),
                          ("subscribe", TOPIC)])

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

if __name__ == "__main__":
    unittest.main()
