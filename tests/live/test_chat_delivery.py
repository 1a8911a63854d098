"""Chat delivered through the application servers (issue 12), end to end:
a real login server, app servers, ./client processes and the run's own broker.

- kill -9 of the recipient's app server in the middle of a stream of sends:
  every send answered Success! is printed exactly once by the recipient's
  client whose next command moves it to a new app server (the one that was
  behind, and had lines the dead server never wrote); its other client
  prints nothing twice;
- a broker restart in the middle of such a stream: every send answered
  Success! printed exactly once by each of the recipient's two clients;
- a second login of a user on the same client keeps personal and group
  messages coming;
- a logout while the client is behind on a burst of messages: nothing is
  printed for the user after Bye!, the client and the app server go on,
  and the broker keeps nothing of the old session;
- send-group to members on different app servers: printed once per online
  member and client, the sender included; nothing for an offline member.

A client "behind" is stopped (SIGSTOP, as Ctrl-Z does) while large lines are
pushed to it: the socket buffers fill (~4 MB on loopback), then the app
server's output queue, and what waits there is not written, so not
acknowledged to the broker. With a second client of the same user reading
on, some lines are then printed by one client and unacknowledged: a crash
or a broker restart makes the broker deliver them again, and only the
client's (id, user) check keeps them from being printed twice.

Two limits these tests step around: after a crash, the user's backlog goes
to the connections bound when it comes, i.e. to the first of the user's
clients to move; and the lines the dead server had written to a socket (and
acknowledged) are lost if the client writes on that connection before it
has read them (the dead end answers with a reset and drops what it still
held), so a client that is behind reads first here.
"""
import collections
import os
import re
import signal
import threading
import time
import unittest
import uuid

import stomp

from lib.social import protocol
from tests.support import (BROKER, Conn, LoginServer, alive, disturbs_broker, holds_for, login_many,
                           own_broker, wait_for)
from tests.support import InteractiveClient as Client

SUCCESS = {"status": 0, "message": "Success!"}
BIG = "\x01" * 7900       # a ~7.9 KB request whose push line is ~47 KB (JSON writes it \u0001)
MAX_LENGTH = "8000"       # --max-post-length that lets BIG through
FILL = 150                # BIG sends: ~7 MB of push lines, more than a stopped client's buffers take
AFTER = 20                # sends answered Success! after the fault, at least
STREAM_LIMIT = 5000       # a stream never sends more than this


# -- helpers ---------------------------------------------------------------------------------
def start_server(test, users, *extra):
    """A login server with hand-written accounts (plain passwords: no scrypt)."""
    server = LoginServer("--idle-timeout", "600", *extra)
    with open(os.path.join(server.data, "users.txt"), "w") as f:
        f.writelines(f"{name} {pw}\n" for name, pw in users.items())
    test.addCleanup(server.cleanup)
    return server.start()


def start_client(test, server):
    c = Client(server.port)
    test.addCleanup(c.close)
    test.addCleanup(resume, c)    # runs first: a stopped client cannot read its end of input
    return c


def stop(client):
    os.kill(client.proc.pid, signal.SIGSTOP)


def resume(client):
    try:
        os.kill(client.proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def app_address(server, pid):
    """"host:port" of the app server with this pid (the login server's log:
    "app-N: pid P", then "app-N ready at H:P after ...")."""
    log = server.read_log()
    name = re.search(rf"(app-\d+): pid {pid}\b", log)[1]
    return re.search(rf"{name} ready at (\S+) after", log)[1]


def session_queues(server, user):
    """The personal queues of `user`'s sessions, oldest first: the `login`
    records of the login server's journal (and snapshot, if one was written)."""
    found = []
    for name in ("snapshot.json", "journal.log"):
        try:
            with open(os.path.join(server.data, name), encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        found += re.findall(rf'"login",\s*"{re.escape(user)}",\s*"[0-9a-f]+",\s*"(/queue/np\.u\.[0-9a-f]+)"',
                            text)
    return list(dict.fromkeys(found))


def left_in_queue(queue, timeout=15):
    """The bodies the broker still keeps in `queue`, read (and so removed) by a
    STOMP consumer with the servers' credentials: everything in the queue
    comes before a marker this sends there itself."""
    host, _, port = BROKER.rpartition(":")
    got, receipts = [], set()
    marker = f"marker-{uuid.uuid4().hex}"

    class Listener(stomp.ConnectionListener):
        def on_message(self, frame):
            got.append(frame.body)

        def on_receipt(self, frame):
            receipts.add(frame.headers.get("receipt-id"))

    conn = stomp.Connection12([(host, int(port))])
    conn.set_listener("check", Listener())
    conn.connect(os.environ["NP_BROKER_USER"], os.environ["NP_BROKER_PASSWORD"], wait=True)
    try:
        conn.subscribe(queue, id="check", ack="auto", headers={"receipt": "sub"})
        if not wait_for(lambda: "sub" in receipts, timeout):
            raise AssertionError(f"the broker did not confirm the subscription to {queue}")
        conn.send(queue, marker)
        if not wait_for(lambda: marker in got, timeout):
            raise AssertionError(f"the marker sent to {queue} never came back")
        return [body for body in got if body != marker]
    finally:
        conn.disconnect()


def socket_queues(port):
    """Bytes still on their way on loopback TCP connections to or from `port`
    (/proc/net/tcp: written and not acknowledged, or received and not read)."""
    total = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for row in f:
            fields = row.split()
            local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
            if port in (local, remote):
                tx, rx = (int(q, 16) for q in fields[4].split(":"))
                total += tx + rx
    return total


class Stream:
    """`send` after `send`, from the sender's own connection to its app
    server, in a thread: the first `big` carry BIG. Records which were
    answered Success! (by tag: b0, b1, ... then m150, m151, ...)."""

    def __init__(self, address, token, to, big=0, pace=0.005):
        self.conn = Conn(address, timeout=60)
        self.token, self.to, self.big, self.pace = token, to, big, pace
        self.acked, self.refused, self.texts = [], [], {}
        self.answers = collections.Counter()     # every other reply's message
        self.errors = []
        self.mark = None                         # len(acked) at mark_fault()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        try:
            for i in range(STREAM_LIMIT):
                if self._stop.is_set():
                    return
                big = i < self.big
                tag = f"{'b' if big else 'm'}{i}"
                self.texts[tag] = f"{tag} {BIG}" if big else tag
                reply = ask(self.conn, f"send {self.token} {self.to} {self.texts[tag]}")
                if reply == SUCCESS:
                    self.acked.append(tag)
                else:
                    self.refused.append(tag)
                    self.answers[reply.get("message")] += 1
                if not big:
                    time.sleep(self.pace)   # not a wait: the stream's pace
        except Exception as e:   # reported by finish()
            self.errors.append(repr(e))

    def mark_fault(self):
        self.mark = len(self.acked)

    def acked_since_fault(self):
        return len(self.acked) - self.mark if self.mark is not None else 0

    def finish(self, test):
        self._stop.set()
        self.thread.join(60)
        self.conn.close()
        test.assertFalse(self.thread.is_alive(), "the stream did not stop")
        test.assertEqual(self.errors, [])

    def line(self, sender, tag):
        return protocol.render_push({"from": sender, "to": self.to, "message": self.texts[tag]})


def printed_once(test, client, stream, sender, required=None, allowed=(), who=""):
    """`client` printed each send of `required` (default: every send of
    `stream` answered Success!) exactly once, those of `allowed` (and the
    other acknowledged ones) at most once, and nothing else. Failures name
    the sends by tag, not by their 47 KB lines."""
    required = stream.acked if required is None else required
    allowed = set(allowed) | set(stream.acked)
    by_line = {stream.line(sender, tag): tag for tag in stream.texts}
    seen = collections.Counter(by_line.get(line, "?" + line[:60]) for line in client.chat)
    missing = [t for t in required if not seen[t]]
    twice = sorted(t for t, n in seen.items() if n > 1)
    strange = sorted(t for t in seen if t not in allowed)
    test.assertEqual((missing, twice, strange), ([], [], []),
                     f"{who}: ({len(missing)} of {len(required)} sends missing, "
                     f"{len(twice)} printed more than once, {len(strange)} that should not be)")


def ask(conn, line):
    """One request on a raw connection: its reply, skipping the push lines
    that come on it when the sender is a recipient too (send-group)."""
    conn.send_raw(line.encode("utf-8") + b"\n")
    while True:
        reply = conn.read_reply()
        if not protocol.is_push(reply):
            return reply


def wait_printed(client, line, timeout=30):
    return wait_for(lambda: line in client.chat, timeout)


# -- tests -------------------------------------------------------------------------------------
class ChatDeliveryTest(unittest.TestCase):
    def recipient_on_two_clients(self):
        """ben logged in on two clients (`x`, and `y`, which is stopped), ann
        on another app server (--capacity 1) with a raw connection, friends.
        -> (server, x, y, ann's reply to login, ben's app-server pid)"""
        server = start_server(self, {"ann": "pw", "ben": "pw"}, "--capacity", "1",
                              "--max-post-length", MAX_LENGTH)
        x, y = start_client(self, server), start_client(self, server)
        self.assertEqual(x.say("login ben pw"), "Success!")
        (ben_pid,) = server.app_pids()             # the only app server so far: ben's
        self.assertEqual(y.say("login ben pw"), "Success!")
        ann = login_many(server.port, {"ann": "pw"})["ann"]
        self.assertNotEqual(ann["app_server"], app_address(server, ben_pid))
        c = Conn(ann["app_server"])
        self.assertEqual(ask(c, f"invite {ann['token']} ben"), SUCCESS)
        c.close()
        self.assertEqual(x.say("accept-invite ben ann"), "Success!")
        stop(y)
        return server, x, y, ann, ben_pid

    def test_kill_9_of_the_recipients_app_server_in_a_stream(self):
        server, x, y, ann, ben_pid = self.recipient_on_two_clients()
        stream = Stream(ann["app_server"], ann["token"], "ben", big=FILL).start()
        try:
            self.assertTrue(wait_for(lambda: len(stream.acked) >= FILL + AFTER or stream.errors, 60),
                            f"only {len(stream.acked)} sends acknowledged")
            # x reads on: it has printed these before the kill
            before = list(stream.acked)
            lines = {stream.line("ann", tag) for tag in before}
            self.assertTrue(wait_for(lambda: lines <= set(x.chat), 30), "x is behind")
            os.kill(ben_pid, signal.SIGKILL)
            stream.mark_fault()
            # ben stays online: the sends go on succeeding, into ben's queue
            self.assertTrue(wait_for(lambda: stream.acked_since_fault() >= AFTER or stream.errors, 30))
        finally:
            stream.finish(self)
        self.assertEqual(stream.refused, [], stream.answers)
        self.assertTrue(wait_for(lambda: not alive(ben_pid), 10))
        # y, which was behind, moves ben first: the new app server gets what
        # the dead one had not written to y (unacknowledged), and everything
        # sent since. y reads what the dead server's socket still holds
        # first: a request written to that connection before would be
        # answered with a reset, and the kernel would drop what it held.
        resume(y)
        ben_port = int(app_address(server, ben_pid).rpartition(":")[2])
        self.assertTrue(wait_for(lambda: socket_queues(ben_port) == 0, 30), "y never read what it had")
        self.assertEqual(y.say("list-friend ben"), "ann")
        self.assertNotIn(ben_pid, server.app_pids())
        self.assertEqual(x.say("list-friend ben"), "ann")
        # a last send: behind everything in ben's queue, redeliveries included
        c = Conn(ann["app_server"])
        self.assertEqual(ask(c, "send %s ben end" % ann["token"]), SUCCESS)
        c.close()
        for client in (x, y):
            self.assertTrue(wait_printed(client, "<<<ann->ben: end>>>"), "nothing after the move")
            client.chat.remove("<<<ann->ben: end>>>")
        printed_once(self, y, stream, "ann", who="y (behind when the server died, moved first)")
        # x moved second: what the new server pushed before that went to y
        # only (a connection gets what comes while it is bound: docs/protocol.md
        # §7); x printed what it had before the kill once, and nothing twice
        printed_once(self, x, stream, "ann", required=before, who="x (moved second)")

    @disturbs_broker
    def test_broker_restart_in_a_stream(self):
        server, x, y, ann, _ = self.recipient_on_two_clients()
        stream = Stream(ann["app_server"], ann["token"], "ben", big=FILL).start()
        try:
            self.assertTrue(wait_for(lambda: len(stream.acked) >= FILL + AFTER or stream.errors, 60),
                            f"only {len(stream.acked)} sends acknowledged")
            own_broker().restart()
            stream.mark_fault()
            # the app servers reconnect and subscribe again by themselves
            self.assertTrue(wait_for(lambda: stream.acked_since_fault() >= AFTER or stream.errors, 60),
                            "no send succeeded after the restart")
        finally:
            stream.finish(self)
        resume(y)
        c = Conn(ann["app_server"])
        self.assertEqual(ask(c, f"send {ann['token']} ben end"), SUCCESS)
        c.close()
        # A send refused while the broker was down may still have been
        # stored (its receipt lost with the connection): printed at most once.
        for who, client in (("x", x), ("y (stopped during the restart)", y)):
            self.assertTrue(wait_printed(client, "<<<ann->ben: end>>>", 60), f"{who}: nothing after the restart")
            client.chat.remove("<<<ann->ben: end>>>")
            printed_once(self, client, stream, "ann", allowed=stream.refused, who=who)

    def test_a_second_login_on_the_same_client_keeps_delivering(self):
        server = start_server(self, {"ann": "pw", "ben": "pw"})
        x = start_client(self, server)
        self.assertEqual(x.say("login ben pw"), "Success!")
        ann = login_many(server.port, {"ann": "pw"})["ann"]
        c = Conn(ann["app_server"])
        self.assertEqual(ask(c, f"invite {ann['token']} ben"), SUCCESS)
        self.assertEqual(x.say("accept-invite ben ann"), "Success!")
        self.assertEqual(ask(c, f"create-group {ann['token']} club"), SUCCESS)
        self.assertEqual(x.say("join-group ben club"), "Success!")
        stream = Stream(ann["app_server"], ann["token"], "ben", pace=0.01).start()
        sent = []
        try:
            # ben logs in again, twice, while personal messages keep coming;
            # each round a group message too; and on for a while after (the
            # old bug silenced the user 0.5 s after the second login)
            started = time.monotonic()
            for k in range(20):
                if k in (0, 2):
                    self.assertEqual(x.say("login ben pw"), "Success!")
                self.assertEqual(ask(c, f"send-group {ann['token']} club g{k}"), SUCCESS)
                sent.append(f"<<<ann->GROUP<club>: g{k}>>>")
                self.assertTrue(wait_printed(x, sent[-1], 10), f"{sent[-1]} never printed")
                if k >= 4 and time.monotonic() - started > 2.0:
                    break
                time.sleep(0.2)   # not a wait: the rounds' pace
        finally:
            stream.finish(self)
        self.assertEqual(stream.refused, [], stream.answers)
        self.assertEqual(ask(c, f"send {ann['token']} ben end"), SUCCESS)
        c.close()
        self.assertTrue(wait_printed(x, "<<<ann->ben: end>>>"))
        x.chat.remove("<<<ann->ben: end>>>")
        self.assertEqual(sorted(line for line in x.chat if "GROUP" in line), sorted(sent))
        x.chat[:] = [line for line in x.chat if "GROUP" not in line]
        printed_once(self, x, stream, "ann", who="ben's client")

    def test_logout_with_messages_in_flight(self):
        server = start_server(self, {"ann": "pw", "ben": "pw"}, "--capacity", "1",
                              "--max-post-length", MAX_LENGTH)
        x = start_client(self, server)
        self.assertEqual(x.say("login ben pw"), "Success!")
        (ben_pid,) = server.app_pids()
        ben_app = app_address(server, ben_pid)
        ann = login_many(server.port, {"ann": "pw"})["ann"]
        c = Conn(ann["app_server"])
        self.assertEqual(ask(c, f"invite {ann['token']} ben"), SUCCESS)
        self.assertEqual(x.say("accept-invite ben ann"), "Success!")
        (old_queue,) = session_queues(server, "ben")
        # x falls behind: stopped while a burst is pushed to it
        stop(x)
        for i in range(FILL):
            self.assertEqual(ask(c, f"send {ann['token']} ben b{i} {BIG}"), SUCCESS)
        # typed while stopped: it logs out with the burst half read
        x.proc.stdin.write(b"logout ben\n")
        x.proc.stdin.flush()
        resume(x)
        self.assertEqual(x.replies.get(timeout=60), "Bye!")
        # what was on its way to x drains; none of it is printed now
        port = int(ben_app.rpartition(":")[2])
        self.assertTrue(wait_for(lambda: socket_queues(port) == 0, 30), "the pushes never drained")
        self.assertEqual(ask(c, f"send {ann['token']} ben late"),
                         {"status": 1, "message": "ben is not online"})
        bye = x.lines.index("Bye!")
        after = [line for line in x.lines[bye + 1:] if line.startswith("<<<")]
        self.assertEqual(len(after), 0, f"{len(after)} chat lines printed for ben after Bye!")
        before = x.chat[:]
        self.assertEqual(len(before), len(set(before)), "a line printed twice")
        # the broker keeps nothing of the old session
        self.assertEqual(len(left_in_queue(old_queue)), 0, "messages left in ben's old queue")
        # the client goes on: ben logs in again (a new session) on the same
        # app server, which goes on serving; chat comes again
        self.assertEqual(x.say("login ben pw"), "Success!")
        self.assertEqual(x.say("list-friend ben"), "ann")
        self.assertEqual(server.app_pids().count(ben_pid), 1)
        self.assertEqual(len(server.app_pids()), 2, "a new app server was started")
        self.assertEqual(ask(c, f"send {ann['token']} ben again"), SUCCESS)
        self.assertTrue(wait_printed(x, "<<<ann->ben: again>>>"))
        self.assertEqual(x.say("logout ben"), "Bye!")
        c.close()
        self.assertEqual(x.chat[len(before):], ["<<<ann->ben: again>>>"])
        self.assertEqual(len(session_queues(server, "ben")), 2)

    def test_send_group_to_members_on_different_app_servers(self):
        users = {name: "pw" for name in ("ann", "ben", "cat", "dan", "eve")}
        server = start_server(self, users, "--capacity", "1")
        x, y, w = (start_client(self, server) for _ in range(3))
        for client, name in ((x, "ann"), (y, "ben"), (y, "cat"), (w, "dan"), (w, "eve")):
            self.assertEqual(client.say(f"login {name} pw"), "Success!")
        self.assertEqual(len(server.app_pids()), 5, "one app server per user")
        self.assertEqual(x.say("create-group ann club"), "Success!")
        for client, name in ((y, "ben"), (y, "cat"), (w, "dan")):
            self.assertEqual(client.say(f"join-group {name} club"), "Success!")
        self.assertEqual(w.say("logout dan"), "Bye!")          # a member, offline
        self.assertEqual(x.say("send-group ann club hello"), "Success!")
        self.assertEqual(y.say("send-group cat club hi from cat"), "Success!")
        hello, hi = "<<<ann->GROUP<club>: hello>>>", "<<<cat->GROUP<club>: hi from cat>>>"
        # once per online member and client: ann's client once (the sender
        # included), ben's and cat's client twice (each of them once)
        for client, want in ((x, [hello, hi]), (y, [hello, hello, hi, hi])):
            self.assertTrue(wait_for(lambda: collections.Counter(client.chat) >= collections.Counter(want), 20),
                            client.chat)
        self.assertTrue(holds_for(lambda: not w.chat, 1.0), f"dan (offline) or eve (no member): {w.chat}")
        self.assertEqual(sorted(x.chat), sorted([hello, hi]))
        self.assertEqual(sorted(y.chat), sorted([hello, hello, hi, hi]))


if __name__ == "__main__":
    unittest.main()
