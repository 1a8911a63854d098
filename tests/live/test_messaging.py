"""send and send-group end to end through the real ActiveMQ broker, with
separate client processes, guessing subscribers, and broker restarts."""
import collections
import os
import unittest
import uuid

import stomp

from tests.support import BROKER, ROOT, LoginServer, disturbs_broker, own_broker, wait_for
from tests.support import InteractiveClient as Client

ACTIVEMQ = os.path.join(ROOT, "scripts", "activemq.sh")


def settled_chat(client, markers, timeout=10):
    """`client`'s chat lines, sorted, once every line of `markers` has come
    (the markers taken out, once each). The test sends the markers after the
    messages it checks, one to each destination the client listens on; the
    broker hands a destination's messages out in the order it took them, so
    once the markers are in, anything else sent there before them is too."""
    wanted = collections.Counter(markers)
    wait_for(lambda: not wanted - collections.Counter(list(client.chat)), timeout=timeout)
    chat = collections.Counter(list(client.chat))
    missing = wanted - chat
    if missing:
        raise AssertionError(f"markers never arrived: {sorted(missing.elements())}; chat: {client.chat}")
    return sorted((chat - wanted).elements())


def say_until(client, line, expected="Success!", timeout=20):
    """Type `line` again every 0.5 s until the reply is `expected` (at most
    `timeout` s); the last reply."""
    replies = []
    wait_for(lambda: replies.append(client.say(line)) or replies[-1] == expected, timeout, interval=0.5)
    return replies[-1]


@unittest.skipUnless(os.path.exists(ACTIVEMQ), "no broker setup script")
class MessagingTest(unittest.TestCase):
    def setUp(self):
        self.server = LoginServer().start()
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            c.close()
        self.server.cleanup()

    def client(self):
        c = Client(self.server.port)
        self.clients.append(c)
        return c

    def befriend(self, c, a, b):
        self.assertEqual(c.say(f"invite {a} {b}"), "Success!")

    def test_each_line_reaches_exactly_its_recipients(self):
        one, two = self.client(), self.client()
        for u in ("alice", "bob", "carol", "dave"):
            one.say(f"register {u} pw")
        for c, users in ((one, ("alice", "carol")), (two, ("bob", "dave"))):
            for u in users:
                self.assertEqual(c.say(f"login {u} pw"), "Success!")
        for a, b, ca, cb in (("alice", "bob", one, two), ("alice", "carol", one, one),
                             ("dave", "bob", two, two)):
            self.assertEqual(ca.say(f"invite {a} {b}"), "Success!")
            self.assertEqual(cb.say(f"accept-invite {b} {a}"), "Success!")
        self.assertEqual(one.say("create-group alice club"), "Success!")
        self.assertEqual(two.say("join-group bob club"), "Success!")
        self.assertEqual(one.say("join-group carol club"), "Success!")
        self.assertEqual(one.say("send alice bob hi bob"), "Success!")
        self.assertEqual(two.say("send bob alice hi  alice"), "Success!")
        self.assertEqual(one.say("send carol alice same client"), "Success!")
        self.assertEqual(two.say("send dave bob from dave"), "Success!")
        self.assertEqual(two.say("send-group bob club hello club"), "Success!")
        self.assertEqual(two.say("send-group dave club nope"), "You are not the member of club")
        # markers to every destination the two clients listen on: alice's,
        # carol's, bob's and dave's queues, and club's topic
        self.assertEqual(one.say("send carol alice mark"), "Success!")
        self.assertEqual(one.say("send alice carol mark"), "Success!")
        self.assertEqual(one.say("send alice bob mark"), "Success!")
        self.assertEqual(two.say("send bob dave mark"), "Success!")
        self.assertEqual(one.say("send-group alice club mark"), "Success!")
        self.assertEqual(settled_chat(one, [
            "<<<carol->alice: mark>>>", "<<<alice->carol: mark>>>",
            "<<<alice->GROUP<club>: mark>>>", "<<<alice->GROUP<club>: mark>>>"]), sorted([
            "<<<bob->alice: hi alice>>>", "<<<carol->alice: same client>>>",
            "<<<bob->GROUP<club>: hello club>>>", "<<<bob->GROUP<club>: hello club>>>"]))
        self.assertEqual(settled_chat(two, [
            "<<<alice->bob: mark>>>", "<<<bob->dave: mark>>>", "<<<alice->GROUP<club>: mark>>>"]), sorted([
            "<<<alice->bob: hi bob>>>", "<<<dave->bob: from dave>>>",
            "<<<bob->GROUP<club>: hello club>>>"]))
        # after logout nothing more reaches bob's client for bob
        self.assertEqual(two.say("logout bob"), "Bye!")
        before = sorted(two.chat)
        self.assertEqual(len(before), 6)   # the 3 messages and the 3 markers above
        self.assertEqual(one.say("send alice bob later"), "bob is not online")
        self.assertEqual(one.say("send-group alice club after"), "Success!")
        # Marker on the way "after" would have come (club's topic, to bob's
        # client): dave joins club there, and alice sends to the group again.
        self.assertEqual(two.say("join-group dave club"), "Success!")
        # answered only once the broker has confirmed dave's subscription
        self.assertEqual(two.say("list-friend dave"), "bob")
        self.assertEqual(one.say("send-group alice club last"), "Success!")
        self.assertEqual(settled_chat(two, ["<<<alice->GROUP<club>: last>>>"]), before)
        self.assertNotIn("<<<alice->GROUP<club>: after>>>", two.chat)

    def test_guessable_destinations_receive_nothing(self):
        got, receipts = [], set()

        class Spy(stomp.ConnectionListener):
            def on_message(self, frame):
                got.append((frame.headers.get("destination"), frame.body))

            def on_receipt(self, frame):
                receipts.add(frame.headers.get("receipt-id"))

        guesses = ("/queue/bob", "/topic/club", "/queue/alice", "/topic/bob",
                   "/queue/club", "/topic/alice")
        # The broker outlives the test and a queue keeps what nobody consumed:
        # only messages carrying this run's nonce count.
        nonce = uuid.uuid4().hex
        host, _, port = BROKER.rpartition(":")
        spy = stomp.Connection12([(host, int(port))])
        spy.set_listener("spy", Spy())
        spy.connect(wait=True)
        try:
            for i, dest in enumerate(guesses):
                spy.subscribe(dest, id=str(i), ack="auto", headers={"receipt": f"spy-sub-{i}"})
            # every subscription is in place at the broker before anything is sent
            wanted = {f"spy-sub-{i}" for i in range(len(guesses))}
            self.assertTrue(wait_for(lambda: wanted <= receipts), f"receipts: {receipts}")
            one = self.client()
            for u in ("alice", "bob"):
                one.say(f"register {u} pw")
                one.say(f"login {u} pw")
            self.befriend(one, "alice", "bob")
            one.say("accept-invite bob alice")
            one.say("create-group alice club")
            self.assertEqual(one.say(f"send alice bob secret-{nonce}"), "Success!")
            self.assertEqual(one.say(f"send-group alice club secret-{nonce}"), "Success!")
            # Success! came after the broker's receipt for each message, so a
            # canary sent now to each guess is delivered after anything the
            # spy could have received there: once all canaries are in, so is that.
            canary = f"canary-{nonce}"
            for dest in guesses:
                spy.send(dest, canary)
            leaked = lambda: [m for m in got if f"secret-{nonce}" in m[1]]   # noqa: E731
            canaries = lambda: sorted(d for d, b in got if b == canary)     # noqa: E731
            wait_for(lambda: leaked() or len(canaries()) == len(guesses))
            self.assertEqual(leaked(), [])
            self.assertEqual(canaries(), sorted(guesses), "the spy's own canaries did not all come back")
            # markers to the destinations `one` listens on: alice's and bob's queues, club's topic
            self.assertEqual(one.say("send bob alice mark"), "Success!")
            self.assertEqual(one.say("send alice bob mark"), "Success!")
            self.assertEqual(one.say("send-group alice club mark"), "Success!")
            self.assertEqual(settled_chat(one, ["<<<bob->alice: mark>>>", "<<<alice->bob: mark>>>",
                                                "<<<alice->GROUP<club>: mark>>>"]),
                             [f"<<<alice->GROUP<club>: secret-{nonce}>>>", f"<<<alice->bob: secret-{nonce}>>>"])
        finally:
            spy.disconnect()

    @disturbs_broker
    def test_broker_restart_between_two_sends_and_persistence(self):
        one, two = self.client(), self.client()
        for u in ("ann", "ben"):
            one.say(f"register {u} pw")
        one.say("login ann pw")
        two.say("login ben pw")
        self.befriend(one, "ann", "ben")
        two.say("accept-invite ben ann")
        self.assertEqual(one.say("send ann ben before"), "Success!")
        self.assertEqual(one.say("send ann ben mark"), "Success!")   # ben's queue is all `two` listens on
        self.assertEqual(settled_chat(two, ["<<<ann->ben: mark>>>"]), ["<<<ann->ben: before>>>"])
        # broker down: a clear failure, nothing crashes
        own_broker().stop()
        try:
            self.assertEqual(one.say("send ann ben while down"), "Message service unavailable, try again later")
            self.assertEqual(one.say("list-friend ann"), "ben")   # the rest still works
        finally:
            own_broker().start()
        # app servers and clients reconnect by themselves
        self.assertEqual(say_until(one, "send ann ben after", timeout=20), "Success!")
        wait_for(lambda: "<<<ann->ben: after>>>" in two.chat)
        self.assertIn("<<<ann->ben: after>>>", two.chat)
        # a persistent message nobody has consumed survives a broker restart:
        # ben's client exits (ben stays logged in on the server), ann sends
        two.close()
        self.clients.remove(two)
        self.assertEqual(one.say("send ann ben kept"), "Success!")
        own_broker().restart()
        three = self.client()
        self.assertEqual(three.say("login ben pw"), "Success!")     # same session, same queue
        # the marker goes in behind "kept" (ann's app server may still be reconnecting)
        self.assertEqual(say_until(one, "send ann ben mark again", timeout=20), "Success!")
        self.assertEqual(settled_chat(three, ["<<<ann->ben: mark again>>>"], timeout=20),
                         ["<<<ann->ben: kept>>>"])


if __name__ == "__main__":
    unittest.main()
