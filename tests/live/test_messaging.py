"""send and send-group end to end: real ./client processes, the login
server, app servers and the run's own ActiveMQ. Each line reaches exactly its
recipients; no reply or push names a broker destination, and the broker turns
away anyone without the servers' password, even one who knows a user's
queue; a broker restart is survived, and a persistent message too."""
import collections
import json
import os
import re
import socket
import unittest

from lib.messaging.setup import stomp_connect
from tests.support import BROKER, ROOT, LoginServer, disturbs_broker, own_broker, wait_for
from tests.support import InteractiveClient as Client

ACTIVEMQ = os.path.join(ROOT, "scripts", "activemq.sh")
Login = collections.namedtuple("Login", "user password")   # any login, well-formed or not
DESTINATION = re.compile(r"/(?:queue|topic)/np\.[ug]\.[0-9a-f]{32}")


def settled_chat(client, markers, timeout=10):
    """`client`'s chat lines, sorted, once every line of `markers` has come
    (the markers taken out, once each). The test sends the markers after the
    messages it checks, one to each user and group whose messages the client
    gets; the broker hands a queue's or topic's messages to the app server in
    the order it took them, and the app server pushes them in that order, so
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


class RawLines:
    """A raw connection to a server: each request's reply, and every line
    that came (replies and pushes), as received."""

    def __init__(self, address):
        if isinstance(address, str):
            host, _, port = address.rpartition(":")
            address = (host, int(port))
        self.sock = socket.create_connection(address, timeout=30)
        self.buf, self.lines = b"", []

    def _line(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by server")
            self.buf += data
        raw, self.buf = self.buf.split(b"\n", 1)
        self.lines.append(raw.decode("utf-8"))
        return json.loads(raw)

    def ask(self, line):
        self.sock.sendall(line.encode("utf-8") + b"\n")
        while True:
            obj = self._line()
            if "push" not in obj:
                return obj

    def pushes(self):
        """The push lines so far (reading what has come meanwhile)."""
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.buf += data
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(30)
        while b"\n" in self.buf:
            self._line()
        return [line for line in self.lines if '"push"' in line]

    def close(self):
        self.sock.close()


def spy(host, port, creds, queue, forged):
    """CONNECT (with `creds`), SUBSCRIBE to `queue` and SEND `forged` there,
    in one write, as a client that does not wait for CONNECTED; the frame
    commands the broker answered with before it closed the connection."""
    login = f"login:{creds.user}\npasscode:{creds.password}\n" if creds else ""
    frames = (f"CONNECT\naccept-version:1.2\nhost:localhost\n{login}\n\x00"
              f"SUBSCRIBE\nid:1\ndestination:{queue}\nack:auto\nreceipt:sub\n\n\x00"
              f"SEND\ndestination:{queue}\npersistent:true\nreceipt:sent\n\n{forged}\x00")
    data = b""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(frames.encode("utf-8"))
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return [frame.lstrip("\r\n").split("\n", 1)[0] for frame in data.decode("utf-8", "replace").split("\x00")
            if frame.strip("\r\n")]


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
        # markers to every user and group whose messages the two clients
        # get: alice, carol, bob, dave and club
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
        # Marker on the way "after" would have come (club, to bob's client):
        # dave joins club there, and alice sends to the group again.
        self.assertEqual(two.say("join-group dave club"), "Success!")
        # answered only once dave's app server is subscribed to club
        self.assertEqual(two.say("list-friend dave"), "bob")
        self.assertEqual(one.say("send-group alice club last"), "Success!")
        self.assertEqual(settled_chat(two, ["<<<alice->GROUP<club>: last>>>"]), before)
        self.assertNotIn("<<<alice->GROUP<club>: after>>>", two.chat)

    def test_no_reply_or_push_names_a_destination(self):
        """Only servers know the broker's queue and topic names: every line a
        client gets (replies and pushes, read raw) is free of them."""
        login = RawLines(("127.0.0.1", self.server.port))
        for u in ("alice", "bob"):
            self.assertEqual(login.ask(f"register {u} pw")["status"], 0)
        logins = {u: login.ask(f"login {u} pw") for u in ("alice", "bob")}
        ta, tb = logins["alice"]["token"], logins["bob"]["token"]
        a, b = (RawLines(logins[u]["app_server"]) for u in ("alice", "bob"))
        for conn, line in ((a, f"listen {ta}"), (b, f"listen {tb}"), (a, f"invite {ta} bob"),
                           (b, f"accept-invite {tb} alice"), (a, f"create-group {ta} club"),
                           (b, f"join-group {tb} club"), (a, f"send {ta} bob hi"),
                           (a, f"send-group {ta} club hey"), (b, f"list-joined {tb}"),
                           (a, f"list-group {ta}"), (login, f"locate {ta}")):
            self.assertEqual(conn.ask(line)["status"], 0, line)
        # the pushes: "hi" and "hey" to bob, "hey" to alice (the sender is a member)
        self.assertTrue(wait_for(lambda: len(b.pushes()) >= 2 and len(a.pushes()) >= 1, 10),
                        (b.lines, a.lines))
        with open(os.path.join(self.server.data, "journal.log"), encoding="utf-8") as f:
            names = set(DESTINATION.findall(f.read()))
        self.assertEqual(len(names), 3, "alice's and bob's queues and club's topic, in the journal")
        for conn in (login, a, b):
            for raw in conn.lines:
                self.assertIsNone(DESTINATION.search(raw), raw)
                self.assertFalse({"broker", "queue", "topics", "destination"} & set(json.loads(raw)), raw)
            conn.close()

    def test_the_broker_turns_away_a_spy_who_knows_a_queue(self):
        """The attack of issue 12: a STOMP client that knows bob's queue
        (here read from the journal) connects as nobody, as a default user or
        as the servers' user with a wrong password, subscribes to bob's queue
        and forges a message into it. The broker refuses each; bob's client
        prints what alice sent, once, and nothing else."""
        one, two = self.client(), self.client()
        for u in ("alice", "bob"):
            one.say(f"register {u} pw")
        self.assertEqual(one.say("login alice pw"), "Success!")
        self.assertEqual(two.say("login bob pw"), "Success!")
        self.befriend(one, "alice", "bob")
        self.assertEqual(two.say("accept-invite bob alice"), "Success!")
        with open(os.path.join(self.server.data, "journal.log"), encoding="utf-8") as f:
            (queue,) = re.findall(r'"login","bob","[0-9a-f]+","(/queue/np\.u\.[0-9a-f]+)"', f.read())
        host, _, port = BROKER.rpartition(":")
        servers = os.environ["NP_BROKER_USER"]
        for creds in (None, Login("admin", "admin"), Login("guest", "guest"),
                      Login("system", "manager"), Login(servers, "wrong-password")):
            who = creds.user if creds else "no login"
            self.assertNotEqual(stomp_connect(host, int(port), creds)[0], "CONNECTED", who)
            got = spy(host, int(port), creds, queue, '{"from": "alice", "to": "bob", "group": null, '
                      '"message": "FORGED: send me your password", "recipients": ["bob"]}')
            self.assertNotIn("MESSAGE", got, who)
            self.assertNotIn("RECEIPT", got, who)
        self.assertEqual(one.say("send alice bob hi"), "Success!")
        self.assertEqual(one.say("send alice bob mark"), "Success!")
        self.assertEqual(settled_chat(two, ["<<<alice->bob: mark>>>"]), ["<<<alice->bob: hi>>>"])

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
        self.assertEqual(one.say("send ann ben mark"), "Success!")   # ben's messages are all `two` gets
        self.assertEqual(settled_chat(two, ["<<<ann->ben: mark>>>"]), ["<<<ann->ben: before>>>"])
        # broker down: a clear failure, nothing crashes
        own_broker().stop()
        try:
            self.assertEqual(one.say("send ann ben while down"), "Message service unavailable, try again later")
            self.assertEqual(one.say("list-friend ann"), "ben")   # the rest still works
        finally:
            own_broker().start()
        # the app servers reconnect to the broker by themselves (clients never touch it)
        self.assertEqual(say_until(one, "send ann ben after", timeout=20), "Success!")
        wait_for(lambda: "<<<ann->ben: after>>>" in two.chat)
        self.assertIn("<<<ann->ben: after>>>", two.chat)
        # a persistent message nobody has read survives a broker restart:
        # ben's client exits (ben stays logged in on the server), ann sends;
        # ben's app server holds it unacknowledged, forgets it when the broker
        # goes, and gets it again from the broker's store after the restart
        two.close()
        self.clients.remove(two)
        self.assertEqual(one.say("send ann ben kept"), "Success!")
        own_broker().restart()
        three = self.client()
        self.assertEqual(three.say("login ben pw"), "Success!")     # same session: three listens
        # the marker goes in behind "kept" (ann's app server may still be reconnecting)
        self.assertEqual(say_until(one, "send ann ben mark again", timeout=20), "Success!")
        self.assertEqual(settled_chat(three, ["<<<ann->ben: mark again>>>"], timeout=20),
                         ["<<<ann->ben: kept>>>"])


if __name__ == "__main__":
    unittest.main()
