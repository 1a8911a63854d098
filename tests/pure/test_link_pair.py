"""The two ends of the internal link paired in memory (h11's ConnectionPair):
the login server's core and an application server's core exchange the real
link bytes, with the test playing the fleet, the worker pool, the broker and
the clients. Both sides were written against applink's wire format; this
checks that they agree, end to end, without a socket."""
import logging
import unittest

from lib.social import app_core as app
from lib.social import applink
from lib.social import login_core as login
from lib.social.protocol import decode_line
from tests.pure.test_login_core import MemoryStore
from tests.pure.test_social import FixedContext

SECRET = "join-secret"
LINK = "link-1"           # the login side's handle for the app server's link
SERVER = "app-1"          # the fleet's handle for that app server


def request(text):
    return decode_line(text.encode("utf-8"))


class LinkPair:
    """A LoginCore and an AppCore joined by one link; `pump()` carries lines
    both ways until neither has anything to say."""

    def __init__(self):
        self.store = MemoryStore()
        self.login = login.LoginCore(self.store, "H(dummy)", broker="mq:61613", ctx=FixedContext(),
                                     key=b"k" * 32)
        self.app = app.AppCore(SERVER, SECRET, "127.0.0.1", 9001)
        self.to_login, self.to_app = [], []     # lines in flight
        self.app_actions, self.login_actions = [], []

    # -- the two ends ------------------------------------------------------------
    def app_do(self, event):
        for action in self.app.handle(event):
            self.app_actions.append(action)
            if isinstance(action, app.SendLink):
                self.to_login.append(action.line.rstrip(b"\n"))

    def login_do(self, event):
        for action in self.login.handle(event):
            self.login_actions.append(action)
            if isinstance(action, login.SendLink):
                self.to_app.append(applink.encode(**action.msg).rstrip(b"\n"))
            elif isinstance(action, login.FleetRegister):
                # the fleet knows this one-time secret
                ok = action.secret == SECRET and action.address == ("127.0.0.1", 9001)
                self.login_do(login.FleetRegistered(action.link, SERVER if ok else None))

    def pump(self):
        while self.to_login or self.to_app:
            while self.to_login:
                self.login_do(login.LinkLine(LINK, self.to_login.pop(0)))
            while self.to_app:
                self.app_do(app.LinkLine(self.to_app.pop(0)))

    # -- a whole exchange ----------------------------------------------------------
    def connect(self):
        self.app_do(app.Start(0.0))
        self.login_do(login.LinkOpened(LINK, ("127.0.0.1", 40000)))
        self.app_do(app.LinkConnected())
        self.pump()

    def account(self, name, password="pw"):
        """register + login through the login core (the test plays the hashes)."""
        [hash_] = self.login.handle(login.ClientRequest("front", request(f"register {name} {password}")))
        self.login.handle(login.Hashed("front", f"H({hash_.password})"))
        [verify] = self.login.handle(login.ClientRequest("front", request(f"login {name} {password}")))
        [assign] = self.login.handle(login.Verified("front", verify.stored == f"H({password})"))
        [reply] = self.login.handle(login.Assigned("front", "127.0.0.1:9001", server=SERVER))
        return reply.reply["token"]

    def ask_app(self, conn, text):
        """A client request at the app server -> what the client is told."""
        self.app_actions.clear()
        self.app_do(app.ClientRequest(conn, request(text)))
        self.pump()
        return [a for a in self.app_actions if isinstance(a, (app.Reply, app.Publish))]


class LinkPairTest(unittest.TestCase):
    def setUp(self):
        for name in ("login", "app"):   # rejections are logged; expected here
            logger = logging.getLogger(name)
            self.addCleanup(logger.setLevel, logger.level)
            logger.setLevel(logging.CRITICAL)

    def test_hello_is_welcomed_and_requests_are_relayed_both_ways(self):
        pair = LinkPair()
        pair.connect()
        self.assertIs(pair.app.link.state, applink.State.READY)
        alice, bob = pair.account("alice"), pair.account("bob")
        self.assertEqual(pair.ask_app("c1", f"invite {alice} bob"),
                         [app.Reply("c1", {"status": 0, "message": "Success!"})])
        self.assertEqual(pair.ask_app("c2", f"accept-invite {bob} alice"),
                         [app.Reply("c2", {"status": 0, "message": "Success!"})])
        self.assertEqual(pair.ask_app("c1", f"list-friend {alice}"),
                         [app.Reply("c1", {"status": 0, "friend": ["bob"]})])
        self.assertIn(("accept", "alice", "bob"), pair.store.recorded)
        # every line the app server sent was a heartbeat to the login side
        self.assertIn(login.FleetHeartbeat(SERVER), pair.login_actions)

    def test_send_publishes_at_the_app_server_with_the_login_servers_destination(self):
        pair = LinkPair()
        pair.connect()
        alice, bob = pair.account("alice"), pair.account("bob")
        pair.ask_app("c1", f"invite {alice} bob")
        pair.ask_app("c2", f"accept-invite {bob} alice")
        [publish] = pair.ask_app("c1", f"send {alice} bob hello there")
        self.assertEqual((publish.conn, publish.destination, publish.persistent),
                         ("c1", pair.store.state.users["bob"].session.queue, True))
        # the client hears Success! only once the broker confirms
        pair.app_actions.clear()
        pair.app_do(app.Published("c1", True, None))
        self.assertIn(app.Reply("c1", {"status": 0, "message": "Success!"}), pair.app_actions)

    def test_a_wrong_secret_is_rejected_and_the_app_server_stops(self):
        pair = LinkPair()
        pair.app = app.AppCore(SERVER, "stolen", "127.0.0.1", 9001)
        pair.connect()
        self.assertIs(pair.app.link.state, applink.State.REJECTED)
        self.assertIn(login.CloseLink(LINK, flush=True), pair.login_actions)
        self.assertEqual(pair.ask_app("c1", "list-group tok"),
                         [app.Reply("c1", {"status": 1, "message": "Service unavailable, try again"})])

    def test_register_relayed_through_an_app_server_is_refused_by_the_login_core(self):
        pair = LinkPair()
        pair.connect()
        self.assertEqual(pair.ask_app("c1", "register mallory pw"),
                         [app.Reply("c1", {"status": 1, "message": "Send register to the login server"})])
        self.assertNotIn("mallory", pair.store.state.users)


if __name__ == "__main__":
    unittest.main()
