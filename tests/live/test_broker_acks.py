"""BrokerLink's ack=client-individual subscriptions against the real ActiveMQ
(lib/messaging/broker.py): what the broker keeps until it is acked, and what
it delivers again.

The broker is tests/support.py's BROKER, logged in with NP_BROKER_USER /
NP_BROKER_PASSWORD when both are set (no login headers otherwise). Each link
runs on its own reactor thread (tests/live/test_broker.py's Loop); the
logic with a fake connection is in tests/pure/test_broker_link.py and
test_broker_recovery.py. Nothing here stops or restarts the broker.
"""
import os
import threading
import unittest

from lib.messaging import broker, credentials
from lib.social.commands import Context
from tests.live.test_broker import Loop
from tests.support import BROKER, accepts, holds_for, wait_for

HOST, PORT = broker.parse_address(BROKER)
NAMES = Context()   # random destinations, as the servers make them
ACKED = "client-individual"


class Link:
    """A BrokerLink on its own reactor thread, recording (destination, body,
    headers) of each message and each on_state."""

    def __init__(self, name, login):
        self.loop = Loop()
        self.messages, self.states = [], []
        self.link = broker.BrokerLink(
            self.loop.reactor, HOST, PORT, name=name, credentials=login,
            on_message=lambda d, b, h: self.messages.append((d, b, h)), on_state=self.states.append)
        self.loop.call(self.link.start)

    def subscribe(self, destination, **kwargs):
        results, got = [], threading.Event()
        self.loop.call(lambda: self.link.subscribe(
            destination, lambda ok, err: (results.append((ok, err)), got.set()), **kwargs))
        if not got.wait(10):
            raise AssertionError("subscription to %s not confirmed" % destination)
        return results[0]

    def publish(self, destination, body, persistent=True):
        results, got = [], threading.Event()
        self.loop.call(lambda: self.link.publish(
            destination, body, persistent, lambda ok, err: (results.append((ok, err)), got.set())))
        if not got.wait(10):
            raise AssertionError("publish got no done() within 10 s")
        return results[0]

    def ack(self, headers):
        self.loop.call(self.link.ack, headers)

    def fence(self):
        """ACK has no receipt, but the broker handles one connection's frames
        in order: the receipt of a later publish says the acks have landed."""
        return self.publish(NAMES.new_topic(), "fence", persistent=False)

    def bodies(self):
        return [b for _, b, _ in self.messages]

    def close(self):
        """Close the link (DISCONNECT) and stop its loop; again: nothing.
        The socket is closed here, before returning: the link closes it on
        its worker pool, which stopping the loop may cancel, and in this
        process (unlike an app server that exits) an open socket would keep
        the broker treating it as a consumer (it would hold the unacked
        message, and get new ones)."""
        if self.loop.thread.is_alive():
            conn = self.loop.call(lambda: self.link._conn)
            self.loop.call(self.link.close)
            self.loop.stop()
            if conn is not None:
                broker._shut(conn, graceful=True)


class AckTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not accepts(PORT, HOST):   # the test runner starts it
            raise AssertionError("no broker at %s:%d" % (HOST, PORT))
        cls.login = credentials.from_env(os.environ)   # None: no login headers

    def setUp(self):
        self.queue = NAMES.new_queue()
        self.pub = self.link("pub")

    def link(self, name):
        link = Link(name, self.login)
        self.addCleanup(link.close)
        self.assertTrue(wait_for(lambda: link.link.connected, 10), "%s never connected" % name)
        return link

    def receive(self, link, count=1):
        self.assertTrue(wait_for(lambda: len(link.messages) >= count, 5),
                        "%d message(s) expected, got %r" % (count, link.bodies()))
        return link.messages[count - 1][2]

    def test_unacked_message_comes_again_to_the_next_subscriber(self):
        first = self.link("first")
        self.assertEqual(first.subscribe(self.queue, ack=ACKED), (True, None))
        self.assertEqual(self.pub.publish(self.queue, "keep me"), (True, None))
        headers = self.receive(first)
        self.assertEqual(headers.get("persistent"), "true")
        self.assertTrue(headers.get("message-id") and headers.get("ack"), headers)
        first.close()                            # never acked
        second = self.link("second")
        self.assertEqual(second.subscribe(self.queue, ack=ACKED), (True, None))
        again = self.receive(second)
        self.assertEqual((second.bodies(), again["message-id"]), (["keep me"], headers["message-id"]))

    def test_acked_message_is_not_delivered_again(self):
        first = self.link("first")
        self.assertEqual(first.subscribe(self.queue, ack=ACKED), (True, None))
        self.assertEqual(self.pub.publish(self.queue, "done with"), (True, None))
        first.ack(self.receive(first))
        self.assertEqual(first.fence(), (True, None))
        first.close()
        second = self.link("second")
        self.assertEqual(second.subscribe(self.queue, ack=ACKED), (True, None))
        # Marker: queued after "done with", so had that come back it would be first.
        self.assertEqual(self.pub.publish(self.queue, "marker"), (True, None))
        self.receive(second)
        self.assertEqual(second.bodies(), ["marker"])

    def test_after_a_reconnect_the_unacked_message_comes_again_on_the_same_link(self):
        """The app server's case: its connection drops with a message unacked.
        The link resubscribes, the broker delivers the message again, a late
        ack of the old delivery writes nothing (ActiveMQ would answer an ERROR
        and cost the connection again), and the new one is acked."""
        link = self.link("app")
        self.assertEqual(link.subscribe(self.queue, ack=ACKED), (True, None))
        self.assertEqual(self.pub.publish(self.queue, "in flight"), (True, None))
        old = self.receive(link)
        link.loop.call(lambda: link.link._on_lost(link.link._gen, "simulated loss"))
        self.assertTrue(wait_for(lambda: link.states == [True, False, True], 10), link.states)
        again = self.receive(link, 2)
        self.assertEqual(again["message-id"], old["message-id"])
        link.ack(old)
        link.ack(again)
        self.assertEqual(link.fence(), (True, None))
        self.assertEqual(link.states, [True, False, True], "an ack cost the connection")
        link.close()
        later = self.link("later")
        self.assertEqual(later.subscribe(self.queue, ack=ACKED), (True, None))
        self.assertEqual(self.pub.publish(self.queue, "marker"), (True, None))
        self.receive(later)
        self.assertEqual(later.bodies(), ["marker"])

    def test_subscribe_headers_reach_the_broker(self):
        """activemq.prefetchSize=1: the broker sends the next message only
        once the one before is acked."""
        link = self.link("slow")
        self.assertEqual(link.subscribe(self.queue, ack=ACKED, headers={"activemq.prefetchSize": "1"}),
                         (True, None))
        for body in ("one", "two"):
            self.assertEqual(self.pub.publish(self.queue, body), (True, None))
        first = self.receive(link)
        self.assertTrue(holds_for(lambda: link.bodies() == ["one"], 0.5),
                        "prefetch 1 ignored: %r" % link.bodies())
        link.ack(first)
        self.receive(link, 2)
        self.assertEqual(link.bodies(), ["one", "two"])

    def test_a_refused_login_is_one_log_line_while_the_link_retries(self):
        if self.login is None:
            self.skipTest("this broker takes anonymous logins")
        wrong = credentials.Credentials(self.login.user, "not-" + self.login.password)
        with self.assertLogs("broker", "INFO") as logs:
            link = Link("wrong", wrong)
            self.addCleanup(link.close)
            # Retries after 0.2, 0.4, 0.8 and 1.6 s: five refusals in 3.5 s.
            self.assertTrue(holds_for(lambda: not link.link.connected, 3.5))
        attempts = link.loop.call(lambda: link.link._gen) // 2   # _gen: +1 at connect, +1 at loss
        self.assertGreaterEqual(attempts, 4, "the link stopped retrying")
        self.assertEqual(link.states, [])
        self.assertEqual([r.getMessage() for r in logs.records], [
            "broker refused our credentials (user %s): User name [%s] or password is invalid. "
            "(link wrong; retrying every 2 s at most)" % (wrong.user, wrong.user)])
        self.assertFalse([r for r in logs.records if wrong.password in r.getMessage()])


if __name__ == "__main__":
    unittest.main()
