"""What an app server delivers (lib/social/delivery.py), without a broker or
sockets: the test plays the login server (attach, detach), the broker
(Subscribed, MESSAGE, the link going down) and the client connections
(bind, Written, closed)."""
import json
import logging
import unittest

from lib.loop.timers import CancelTimer, SetTimer
from lib.social import delivery as dl
from lib.social import protocol
from lib.social.delivery import (
    Ack, AttachDone, Delivery, JoinDone, Push, Subscribe, Unsubscribe, Wait)

QA, QB, QC = "/queue/qa", "/queue/qb", "/queue/qc"
T1, T2 = "/topic/t1", "/topic/t2"
PREFETCH = {"activemq.prefetchSize": dl.PREFETCH}


def personal(sender, text, to):
    return protocol.chat_body(sender, text, to=to, recipients=[to])


def group(sender, text, name, recipients):
    return protocol.chat_body(sender, text, group=name, recipients=recipients)


def headers(mid):
    """A MESSAGE's headers as the broker link gives them."""
    return {"message-id": mid, "subscription": "s", "ack": "a-" + mid}


def line(mid, to, body):
    return protocol.push_line(mid, to, json.loads(body))



class Quiet(Delivery):
    """Delivery without the KeepOpen of a connection's first binding (its own
    test below), so the tests compare the pushes alone."""

    def bind(self, conn, user):
        return [a for a in super().bind(conn, user) if not isinstance(a, dl.KeepOpen)]

class DeliveryTest(unittest.TestCase):
    def setUp(self):
        logger = logging.getLogger("app")   # unreadable messages, timeouts: logged, expected
        self.addCleanup(logger.setLevel, logger.level)
        logger.setLevel(logging.CRITICAL)
        self.d = Quiet()
        self.ids = iter(range(1, 1000))

    def attach(self, user, queue, topics=None):
        """attach, every subscription confirmed -> the AttachDone's actions."""
        rid = next(self.ids)
        actions = self.d.attach(rid, user, queue, topics or {})
        done = []
        for a in actions:
            if isinstance(a, Subscribe):
                done += self.d.subscribed(a.waiter, a.destination, True)
        self.assertEqual(done, [AttachDone(rid, True), CancelTimer((Wait.ATTACH, rid))])
        return actions

    def send(self, queue, mid, sender, text, to):
        """A personal MESSAGE from the broker -> (actions, its headers)."""
        h = headers(mid)
        return self.d.message(queue, personal(sender, text, to), h), h

    def push_of(self, actions, conn):
        [push] = [a for a in actions if isinstance(a, Push) and a.conn == conn]
        return push


class AttachTest(DeliveryTest):
    def test_the_queue_and_topics_are_subscribed_with_one_waiter(self):
        w = (Wait.ATTACH, 7)
        self.assertEqual(self.d.attach(7, "alice", QA, {"g1": T1, "g2": T2}), [
            Subscribe(QA, "client-individual", PREFETCH, w),
            Subscribe(T1, "auto", {}, w), Subscribe(T2, "auto", {}, w),
            SetTimer(w, dl.ATTACH_TIMEOUT)])
        self.assertEqual(self.d.subscribed(w, T2, True), [])
        self.assertEqual(self.d.subscribed(w, QA, True), [])
        # the last confirmation answers, and its timer is cancelled
        self.assertEqual(self.d.subscribed(w, T1, True), [AttachDone(7, True), CancelTimer(w)])
        self.assertEqual(self.d.subscribed(w, T1, True), [])       # answered once
        self.assertEqual(self.d.timer(w), [])

    def test_the_first_failure_answers_at_once(self):
        w = (Wait.ATTACH, 1)
        self.d.attach(1, "alice", QA, {"g1": T1})
        self.assertEqual(self.d.subscribed(w, T1, False), [AttachDone(1, False), CancelTimer(w)])
        self.assertEqual(self.d.subscribed(w, QA, True), [])
        self.assertEqual(self.d.timer(w), [])

    def test_a_broker_that_does_not_confirm_times_out(self):
        w = (Wait.ATTACH, 1)
        self.d.attach(1, "alice", QA, {"g1": T1})
        self.d.subscribed(w, QA, True)
        # the timer has fired: nothing to cancel
        self.assertEqual(self.d.timer(w), [AttachDone(1, False)])
        self.assertEqual(self.d.subscribed(w, T1, True), [])
        self.assertEqual(self.d.timer(w), [])

    def test_a_repeated_attach_of_the_same_session_changes_nothing(self):
        self.attach("alice", QA, {"g1": T1})
        self.d.bind("c1", "alice")
        first, h1 = self.send(QA, "m1", "bob", "one", "alice")
        again = self.attach("alice", QA, {"g1": T1})
        # subscribed again (the broker link makes that a no-op), nothing dropped or unbound
        self.assertEqual([type(a) for a in again], [Subscribe, Subscribe, SetTimer])
        actions, h2 = self.send(QA, "m2", "bob", "two", "alice")
        self.assertEqual(actions, [Push("c1", line("m2", "alice", personal("bob", "two", "alice")),
                                        actions[0].token)])
        self.assertEqual(self.d.written("c1", first[0].token), [Ack(h1)])   # the first is still owed
        # one member, however many attaches: the topic goes with it
        self.assertEqual(self.d.detach("alice", drop=False), [Unsubscribe(QA), Unsubscribe(T1)])

    def test_a_new_session_queue_replaces_the_old(self):
        self.attach("alice", QA, {"g1": T1})
        self.send(QA, "m1", "bob", "old", "alice")            # held: no connection yet
        rid = next(self.ids)
        actions = self.d.attach(rid, "alice", "/queue/qa2", {"g1": T1})
        # the old queue is left to the broker, unacked; then the new one
        self.assertEqual(actions[:2], [Unsubscribe(QA), Unsubscribe(T1)])
        self.assertEqual(actions[2:], [
            Subscribe("/queue/qa2", "client-individual", PREFETCH, (Wait.ATTACH, rid)),
            Subscribe(T1, "auto", {}, (Wait.ATTACH, rid)), SetTimer((Wait.ATTACH, rid), dl.ATTACH_TIMEOUT)])
        self.assertEqual(self.send(QA, "m2", "bob", "late", "alice")[0], [])   # not ours any more
        self.send("/queue/qa2", "m3", "bob", "new", "alice")
        [push] = self.d.bind("c1", "alice")                   # only the new queue's message
        self.assertEqual(push.line, line("m3", "alice", personal("bob", "new", "alice")))

    def test_one_topic_subscription_per_group_until_the_last_local_member_leaves(self):
        self.attach("alice", QA, {"g1": T1})
        subs = self.attach("bob", QB, {"g1": T1, "g2": T2})
        # subscribed again for bob's login: it is confirmed for his reply too
        self.assertEqual([a.destination for a in subs if isinstance(a, Subscribe)], [QB, T1, T2])
        self.assertEqual(sorted(self.d.members[T1]), ["alice", "bob"])
        self.assertEqual(self.d.detach("alice", drop=True), [Unsubscribe(QA)])
        self.assertEqual(self.d.detach("bob", drop=True),
                         [Unsubscribe(QB), Unsubscribe(T1), Unsubscribe(T2)])
        self.assertEqual(self.d.members, {})
        self.assertEqual(self.d.detach("bob", drop=True), [])   # not attached: nothing


class BindTest(DeliveryTest):
    def test_binding_pushes_what_was_held(self):
        self.attach("alice", QA, {"g1": T1})
        self.assertEqual(self.send(QA, "m1", "bob", "one", "alice")[0], [])
        g = group("bob", "all", "g1", ["alice", "bob"])
        self.assertEqual(self.d.message(T1, g, headers("m2")), [])
        self.assertEqual(self.send(QA, "m3", "bob", "three", "alice")[0], [])
        pushes = self.d.bind("c1", "alice")
        self.assertEqual([(p.conn, p.line) for p in pushes], [
            ("c1", line("m1", "alice", personal("bob", "one", "alice"))),
            ("c1", line("m2", "alice", g)),
            ("c1", line("m3", "alice", personal("bob", "three", "alice")))])
        self.assertEqual(self.d.bind("c1", "alice"), [])      # bound already
        self.assertEqual(list(self.d.users["alice"].held), [])

    def test_a_user_not_attached_here_is_not_bound(self):
        self.assertEqual(self.d.bind("c1", "alice"), [])
        self.assertEqual(self.d.bound, {})
        self.attach("alice", QA)
        self.assertEqual(self.send(QA, "m1", "bob", "hi", "alice")[0], [])   # held, not for c1


class PersonalTest(DeliveryTest):
    def setUp(self):
        super().setUp()
        self.attach("alice", QA)

    def test_pushed_to_every_connection_and_acked_once_written_to_all(self):
        self.d.bind("c1", "alice")
        self.d.bind("c2", "alice")
        actions, h = self.send(QA, "ID:1", "bob", "hi \"there\"", "alice")
        expected = (b'{"push": "message", "id": "ID:1", "to": "alice", "from": "bob", '
                    b'"message": "hi \\"there\\""}\n')
        self.assertEqual(sorted((p.conn, p.line) for p in actions),
                         [("c1", expected), ("c2", expected)])
        token = actions[0].token
        self.assertEqual(actions[1].token, token)
        self.assertEqual(self.d.written("c1", token), [])     # c2 has not got it yet
        self.assertEqual(self.d.written("c2", token), [Ack(h)])
        self.assertEqual(self.d.written("c2", token), [])     # acked once
        self.assertEqual(self.d.conn_closed("c1"), [])

    def test_a_connection_closed_before_the_write_passes_it_to_another(self):
        self.d.bind("c1", "alice")
        actions, h = self.send(QA, "m1", "bob", "hi", "alice")
        self.d.bind("c2", "alice")                            # after the push: it holds nothing for c2
        [again] = self.d.conn_closed("c1")
        self.assertEqual((again.conn, again.line), ("c2", actions[0].line))
        self.assertEqual(self.d.written("c1", again.token), [])   # the closed one never counts
        self.assertEqual(self.d.written("c2", again.token), [Ack(h)])

    def test_with_no_connection_left_it_is_held_again(self):
        self.d.bind("c1", "alice")
        actions, h = self.send(QA, "m1", "bob", "hi", "alice")
        self.assertEqual(self.d.conn_closed("c1"), [])
        self.assertEqual(list(self.d.users["alice"].held), [actions[0].token])
        [push] = self.d.bind("c3", "alice")
        self.assertEqual(push.line, actions[0].line)
        self.assertEqual(self.d.written("c3", push.token), [Ack(h)])

    def test_written_to_one_and_the_other_closed_is_acked(self):
        for first_written in (True, False):
            with self.subTest(first_written=first_written):
                self.d.bind("c1", "alice")
                self.d.bind("c2", "alice")
                actions, h = self.send(QA, "m1", "bob", "hi", "alice")
                token = actions[0].token
                if first_written:
                    self.assertEqual(self.d.written("c1", token), [])
                    self.assertEqual(self.d.conn_closed("c2"), [Ack(h)])
                else:
                    self.assertEqual(self.d.conn_closed("c2"), [])
                    self.assertEqual(self.d.written("c1", token), [Ack(h)])
                self.d.conn_closed("c1")
                self.d.conn_closed("c2")

    def test_the_broker_link_lost_forgets_unacked_and_held_personal_messages(self):
        self.attach("bob", QB, {"g1": T1})
        self.d.bind("c1", "alice")
        actions, _ = self.send(QA, "m1", "carol", "in flight", "alice")
        self.send(QB, "m2", "carol", "held", "bob")
        g = group("carol", "all", "g1", ["bob"])
        self.d.message(T1, g, headers("m3"))
        self.assertEqual(self.d.broker_state(False), [])
        # the broker redelivers them to the next connection: no ack on this one
        self.assertEqual(self.d.written("c1", actions[0].token), [])
        # a group message is not redelivered: it is kept
        [push] = self.d.bind("c2", "bob")
        self.assertEqual(push.line, line("m3", "bob", g))
        self.assertEqual(self.d.broker_state(True), [])
        # and the redelivery goes out as any message
        again, h = self.send(QA, "m1", "carol", "in flight", "alice")
        self.assertEqual(self.d.written("c1", again[0].token), [Ack(h)])

    def test_a_connection_closed_after_the_broker_went_down_does_not_redeliver(self):
        self.d.bind("c1", "alice")
        self.d.bind("c2", "alice")
        self.send(QA, "m1", "bob", "hi", "alice")
        self.d.broker_state(False)
        self.assertEqual(self.d.conn_closed("c1"), [])
        self.assertEqual(self.d.conn_closed("c2"), [])
        self.assertEqual(list(self.d.users["alice"].held), [])

    def test_an_unreadable_message_is_acked_and_dropped(self):
        self.d.bind("c1", "alice")
        for body in ("not json", "[1, 2]", '"text"', '{"from": "bob"}', '{"message": "m"}', "null"):
            with self.subTest(body=body):
                h = headers("bad")
                self.assertEqual(self.d.message(QA, body, h), [Ack(h)])
        no_id = {"subscription": "s", "ack": "a-1"}
        self.assertEqual(self.d.message(QA, personal("bob", "hi", "alice"), no_id), [Ack(no_id)])
        self.assertEqual(self.d.inflight.get("c1", {}), {})

    def test_a_message_for_a_destination_not_subscribed_is_left_alone(self):
        self.assertEqual(self.send("/queue/other", "m1", "bob", "hi", "x")[0], [])
        self.assertEqual(self.d.message("/topic/other", group("b", "m", "g", ["alice"]), headers("m2")), [])


class GroupTest(DeliveryTest):
    def setUp(self):
        super().setUp()
        for user, queue, conn in (("alice", QA, "ca"), ("bob", QB, "cb"), ("carol", QC, "cc")):
            self.attach(user, queue, {"g1": T1})
            self.d.bind(conn, user)

    def test_only_the_local_members_it_names_get_it(self):
        # carol was offline when it was sent; dave is served elsewhere
        g = group("bob", "hello", "g1", ["alice", "bob", "dave"])
        actions = self.d.message(T1, g, headers("ID:9"))
        self.assertEqual(sorted((p.conn, p.line) for p in actions),
                         [("ca", line("ID:9", "alice", g)), ("cb", line("ID:9", "bob", g))])
        self.assertEqual(json.loads(self.push_of(actions, "cb").line),
                         {"push": "message", "id": "ID:9", "to": "bob", "from": "bob",
                          "message": "hello", "group": "g1"})
        # written: nothing to ack (the topic's subscription acks by itself)
        for p in actions:
            self.assertEqual(self.d.written(p.conn, p.token), [])

    def test_a_connection_closed_before_the_write_passes_it_on_unacked(self):
        self.d.bind("ca2", "alice")
        g = group("bob", "hello", "g1", ["alice"])
        actions = self.d.message(T1, g, headers("m1"))
        self.d.bind("ca3", "alice")
        self.assertEqual(self.d.conn_closed("ca"), [])        # ca2 still has it on its way
        [again] = self.d.conn_closed("ca2")
        self.assertEqual((again.conn, again.line), ("ca3", actions[0].line))
        self.assertEqual(self.d.written("ca3", again.token), [])

    def test_an_unreadable_message_is_ignored(self):
        for body in ("not json", "[1]", '"x"', '{"recipients": ["alice"]}',
                     '{"from": "b", "recipients": ["alice"]}',
                     '{"from": "b", "message": "m", "recipients": 5}',
                     '{"from": "b", "message": "m", "recipients": [["alice"]]}'):
            with self.subTest(body=body):
                self.assertEqual(self.d.message(T1, body, headers("bad")), [])
        self.assertEqual(self.d.inflight, {})

    def test_held_group_messages_are_bounded(self):
        self.d.conn_closed("ca")
        personal_held = [self.send(QA, f"p{i}", "bob", f"p{i}", "alice")[1] for i in range(3)]
        self.d.max_held_group = 2      # --max-held-group 2
        for i in range(5):
            self.d.message(T1, group("bob", f"g{i}", "g1", ["alice"]), headers(f"g{i}"))
        pushes = self.d.bind("ca", "alice")
        # the oldest group messages go; personal ones stay (the broker keeps them anyway)
        self.assertEqual([json.loads(p.line)["id"] for p in pushes], ["p0", "p1", "p2", "g3", "g4"])
        acks = [a for p in pushes for a in self.d.written("ca", p.token)]
        self.assertEqual(acks, [Ack(h) for h in personal_held])


class DetachTest(DeliveryTest):
    def setUp(self):
        super().setUp()
        self.attach("alice", QA, {"g1": T1})

    def test_drop_acks_what_is_held_then_unsubscribes(self):
        _, h1 = self.send(QA, "m1", "bob", "one", "alice")
        self.d.message(T1, group("bob", "all", "g1", ["alice"]), headers("m2"))
        _, h3 = self.send(QA, "m3", "bob", "three", "alice")
        self.assertEqual(self.d.detach("alice", drop=True),
                         [Ack(h1), Ack(h3), Unsubscribe(QA), Unsubscribe(T1)])
        self.assertEqual(self.d.bind("c1", "alice"), [])      # gone with the user
        self.assertEqual(self.send(QA, "m4", "bob", "late", "alice")[0], [])

    def test_drop_acks_what_is_in_flight_once(self):
        self.d.bind("c1", "alice")
        self.d.bind("c2", "alice")
        actions, h = self.send(QA, "m1", "bob", "one", "alice")
        self.assertEqual(self.d.detach("alice", drop=True), [Ack(h), Unsubscribe(QA), Unsubscribe(T1)])
        self.assertEqual(self.d.written("c1", actions[0].token), [])
        self.assertEqual(self.d.conn_closed("c2"), [])
        self.assertEqual(self.d.conn_closed("c1"), [])

    def test_a_move_unsubscribes_without_acks(self):
        self.send(QA, "m1", "bob", "held", "alice")
        self.assertEqual(self.d.detach("alice", drop=False), [Unsubscribe(QA), Unsubscribe(T1)])
        self.attach("alice", QA, {"g1": T1})
        self.d.bind("c1", "alice")
        actions, h = self.send(QA, "m2", "bob", "in flight", "alice")
        self.assertEqual(self.d.detach("alice", drop=False), [Unsubscribe(QA), Unsubscribe(T1)])
        # the broker hands them to the user's new server; nothing is acked here
        self.assertEqual(self.d.written("c1", actions[0].token), [])
        self.assertEqual(self.d.conn_closed("c1"), [])

    def test_a_connection_bound_to_two_users_keeps_the_other(self):
        self.attach("bob", QB)
        self.d.bind("c1", "alice")
        self.d.bind("c1", "bob")
        self.d.detach("alice", drop=True)
        actions, h = self.send(QB, "m1", "alice", "hi", "bob")
        self.assertEqual([p.conn for p in actions], ["c1"])
        self.assertEqual(self.d.conn_closed("c1"), [])        # held again for bob, no error
        self.assertEqual(len(self.d.users["bob"].held), 1)


class JoinTest(DeliveryTest):
    def setUp(self):
        super().setUp()
        self.attach("alice", QA)

    def test_the_reply_waits_for_the_topic(self):
        w = (Wait.JOIN, "c1")
        self.assertEqual(self.d.join("c1", "alice", "g2", T2),
                         [Subscribe(T2, "auto", {}, w), SetTimer(w, dl.ATTACH_TIMEOUT)])
        self.assertEqual(self.d.subscribed(w, T2, True), [JoinDone("c1", True), CancelTimer(w)])
        g = group("bob", "hi", "g2", ["alice"])
        self.assertEqual(len(self.d.bind("c1", "alice") + self.d.message(T2, g, headers("m1"))), 1)
        self.assertEqual(self.d.detach("alice", drop=True), [Unsubscribe(QA), Unsubscribe(T2)])

    def test_a_failure_or_a_timeout_answers_not_ok(self):
        self.d.join("c1", "alice", "g2", T2)
        self.assertEqual(self.d.subscribed((Wait.JOIN, "c1"), T2, False),
                         [JoinDone("c1", False), CancelTimer((Wait.JOIN, "c1"))])
        self.d.join("c2", "alice", "g3", "/topic/t3")
        self.assertEqual(self.d.timer((Wait.JOIN, "c2")), [JoinDone("c2", False)])

    def test_a_joiner_not_attached_here_is_answered_at_once(self):
        self.assertEqual(self.d.join("c1", "bob", "g2", T2), [JoinDone("c1", True)])
        self.assertNotIn(T2, self.d.members)

    def test_a_connection_closed_while_joining_is_not_answered(self):
        self.d.join("c1", "alice", "g2", T2)
        self.d.conn_closed("c1")
        self.assertEqual(self.d.subscribed((Wait.JOIN, "c1"), T2, True), [])
        self.assertEqual(self.d.timer((Wait.JOIN, "c1")), [])
        self.assertIn(T2, self.d.members)                     # the membership stays



class KeepOpenTest(unittest.TestCase):
    def test_a_connection_gets_no_idle_limit_once_bound(self):
        d = Delivery()
        d.attach(1, "alice", QA, {})
        d.attach(2, "bob", "/queue/qb", {})
        self.assertEqual(d.bind("c1", "alice"), [dl.KeepOpen("c1")])
        self.assertEqual(d.bind("c1", "alice"), [])
        self.assertEqual(d.bind("c1", "bob"), [])            # once per connection
        self.assertEqual(d.bind("c2", "bob"), [dl.KeepOpen("c2")])
        self.assertEqual(d.bind("c3", "nobody"), [])         # not attached here: nothing

if __name__ == "__main__":
    unittest.main()
