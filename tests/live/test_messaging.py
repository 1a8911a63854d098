"""send and send-group end to end through the real ActiveMQ broker, with
separate client processes, guessing subscribers, and broker restarts."""
import os
import subprocess
import time
import unittest
import uuid

import stomp

from tests.support import BROKER, ROOT, LoginServer, wait_for
from tests.support import InteractiveClient as Client

ACTIVEMQ = os.path.join(ROOT, "scripts", "activemq.sh")


def sorted_chat(client, count, timeout=10):
    wait_for(lambda: len(client.chat) >= count, timeout=timeout)
    time.sleep(0.3)   # nothing more may arrive
    return sorted(client.chat)


@unittest.skipUnless(os.path.exists(ACTIVEMQ), "no broker setup script")
class MessagingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        subprocess.run([ACTIVEMQ, "ensure"], check=True, stdout=subprocess.DEVNULL)

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
        self.assertEqual(sorted_chat(one, 4), sorted([
            "<<<bob->alice: hi alice>>>", "<<<carol->alice: same client>>>",
            "<<<bob->GROUP<club>: hello club>>>", "<<<bob->GROUP<club>: hello club>>>"]))
        self.assertEqual(sorted_chat(two, 3), sorted([
            "<<<alice->bob: hi bob>>>", "<<<dave->bob: from dave>>>",
            "<<<bob->GROUP<club>: hello club>>>"]))
        # after logout nothing more reaches bob's client for bob
        self.assertEqual(two.say("logout bob"), "Bye!")
        self.assertEqual(one.say("send alice bob later"), "bob is not online")
        self.assertEqual(one.say("send-group alice club after"), "Success!")
        time.sleep(1)
        self.assertEqual(len(two.chat), 3)

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
            self.assertEqual(sorted_chat(one, 2), [f"<<<alice->GROUP<club>: secret-{nonce}>>>",
                                                   f"<<<alice->bob: secret-{nonce}>>>"])
        finally:
            spy.disconnect()

    @__import__("tests.support", fromlist=["disturbs_broker"]).disturbs_broker
    def test_broker_restart_between_two_sends_and_persistence(self):
        one, two = self.client(), self.client()
        for u in ("ann", "ben"):
            one.say(f"register {u} pw")
        one.say("login ann pw")
        two.say("login ben pw")
        self.befriend(one, "ann", "ben")
        two.say("accept-invite ben ann")
        self.assertEqual(one.say("send ann ben before"), "Success!")
        self.assertEqual(sorted_chat(two, 1), ["<<<ann->ben: before>>>"])
        # broker down: a clear failure, nothing crashes
        subprocess.run([ACTIVEMQ, "stop"], check=True, stdout=subprocess.DEVNULL)
        try:
            self.assertEqual(one.say("send ann ben while down"), "Message service unavailable, try again later")
            self.assertEqual(one.say("list-friend ann"), "ben")   # the rest still works
        finally:
            subprocess.run([ACTIVEMQ, "start"], check=True, stdout=subprocess.DEVNULL)
        # app servers and clients reconnect by themselves
        deadline = time.monotonic() + 20
        while True:
            reply = one.say("send ann ben after")
            if reply == "Success!" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(reply, "Success!")
        self.assertIn("<<<ann->ben: after>>>", sorted_chat(two, 2))
        # a persistent message nobody has consumed survives a broker restart:
        # ben's client exits (ben stays logged in on the server), ann sends
        two.close()
        self.clients.remove(two)
        self.assertEqual(one.say("send ann ben kept"), "Success!")
        subprocess.run([ACTIVEMQ, "restart"], check=True, stdout=subprocess.DEVNULL)
        three = self.client()
        self.assertEqual(three.say("login ben pw"), "Success!")     # same session, same queue
        self.assertEqual(sorted_chat(three, 1, timeout=20), ["<<<ann->ben: kept>>>"])


if __name__ == "__main__":
    unittest.main()
