"""Pure tests of the UDP hub client's state machine (lib/clients/udp.py): every
edge of the client diagram has a test named after it; no sockets. Also: the
client shares only the codec and the action types with the hub."""
import ast
import itertools
import os
import unittest

from lib import ROOT
from lib.clients.udp import Client, ClientState, Print
from lib.hub.actions import CancelTimer, Send, SetTimer


class ClientTestCase(unittest.TestCase):
    def setUp(self):
        self.msgids = (f"{n:010d}" for n in itertools.count(1))
        self.client = Client("127.0.0.1", 40001, msgid_factory=lambda: next(self.msgids))

    def typed(self, line):
        return self.client.typed(line)

    def recv(self, text):
        return self.client.received(text.encode())

    def go_online(self):
        self.typed("alice->server#login<alice123>")
        self.recv("server->alice#Success<Ab3$x_>")

    def assertState(self, state):
        self.assertIs(self.client.state, state)


def sent(actions):
    return [a.text for a in actions if isinstance(a, Send)]


def printed(actions):
    return [a.line for a in actions if isinstance(a, Print)]


class ClientLoginTest(ClientTestCase):
    def test_offline_typed_login_goes_login_sent(self):
        actions = self.typed("alice->server#login<alice123>")
        self.assertEqual(sent(actions), ["alice->server#login<alice123><127.0.0.1><40001>"])
        self.assertIn(SetTimer(("retry",), 2.0), actions)
        self.assertState(ClientState.LOGIN_SENT)

    def test_login_sent_success_goes_online(self):
        self.typed("alice->server#login<alice123>")
        actions = self.recv("server->alice#Success<Ab3$x_>")
        self.assertEqual(printed(actions), ["server->alice#Success<Ab3$x_>"])
        self.assertIn(CancelTimer(("retry",)), actions)
        self.assertState(ClientState.ONLINE)
        self.assertEqual(self.client.token, "Ab3$x_")

    def test_login_sent_error_goes_offline(self):
        self.typed("alice->server#login<nope>")
        actions = self.recv("server->alice#Error: password does not match!")
        self.assertEqual(printed(actions), ["server->alice#Error: password does not match!"])
        self.assertState(ClientState.OFFLINE)

    def test_login_sent_no_response_resends_three_times_then_offline(self):
        self.typed("alice->server#login<alice123>")
        for _ in range(3):
            actions = self.client.timer(("retry",))
            self.assertEqual(sent(actions), ["alice->server#login<alice123><127.0.0.1><40001>"])
            self.assertState(ClientState.LOGIN_SENT)
        actions = self.client.timer(("retry",))
        self.assertEqual(printed(actions), ["Error: no response from server"])
        self.assertEqual(sent(actions), [])
        self.assertState(ClientState.OFFLINE)

    def test_login_sent_holds_on_other_events(self):
        self.typed("alice->server#login<alice123>")
        actions = self.recv("server->alice#<Ab3$x_><0000000001>Success: stray")
        self.assertEqual(printed(actions), ["server->alice#<Ab3$x_><0000000001>Success: stray"])
        self.assertState(ClientState.LOGIN_SENT)


class ClientMessageTest(ClientTestCase):
    def setUp(self):
        super().setUp()
        self.go_online()

    def test_online_typed_message_goes_message_sent(self):
        actions = self.typed("alice->bob#hello bob")
        self.assertEqual(sent(actions), ["alice->bob#<Ab3$x_><0000000001>hello bob"])
        self.assertState(ClientState.MESSAGE_SENT)

    def test_message_sent_reply_goes_online(self):
        for n, reply in enumerate(("Success: hello", "Error: destination offline!"), 1):
            self.typed("alice->bob#hello")
            actions = self.recv(f"server->alice#<Ab3$x_><{n:010d}>{reply}")
            self.assertEqual(printed(actions), [f"server->alice#<Ab3$x_><{n:010d}>{reply}"])
            self.assertIn(CancelTimer(("retry",)), actions)
            self.assertState(ClientState.ONLINE)

    def test_message_sent_please_log_in_again_goes_offline(self):
        self.typed("alice->bob#hello")
        self.recv("server->alice#<Ab3$x_><0000000001>Error: please log in again!")
        self.assertState(ClientState.OFFLINE)
        self.assertIsNone(self.client.token)

    def test_message_sent_token_error_goes_offline(self):
        self.typed("alice->bob#hello")
        self.recv("server->alice#<Ab3$x_><0000000001>Error: token error!")
        self.assertState(ClientState.OFFLINE)

    def test_reply_for_another_msgid_does_not_count(self):
        self.typed("alice->bob#hello")
        self.recv("server->alice#<Ab3$x_><9999999999>Success: old")
        self.assertState(ClientState.MESSAGE_SENT)

    def test_message_sent_no_response_falls_back_online(self):
        self.typed("alice->bob#hello")
        for _ in range(3):
            self.assertEqual(len(sent(self.client.timer(("retry",)))), 1)
        actions = self.client.timer(("retry",))
        self.assertEqual(printed(actions), ["Error: no response from server"])
        self.assertState(ClientState.ONLINE)
        self.assertEqual(self.client.token, "Ab3$x_")

    def test_lines_typed_while_waiting_are_queued(self):
        self.assertEqual(len(sent(self.typed("alice->bob#one"))), 1)
        self.assertEqual(self.typed("alice->bob#two"), [])
        self.assertEqual(self.typed("alice->server#logoff"), [])
        actions = self.recv("server->alice#<Ab3$x_><0000000001>Success: one")
        self.assertEqual(sent(actions), ["alice->bob#<Ab3$x_><0000000002>two"])
        actions = self.recv("server->alice#<Ab3$x_><0000000002>Success: two")
        self.assertEqual(sent(actions), ["alice->server#logoff<Ab3$x_>"])
        self.assertState(ClientState.LOGOUT_SENT)

    def test_forward_printed_once_receipt_for_every_copy(self):
        fwd = "bob->alice#<Ab3$x_><5555555555>hi alice"
        receipt = "alice->server#<Ab3$x_><5555555555>Success: hi alice"
        first = self.recv(fwd)
        self.assertEqual(printed(first), [fwd])
        self.assertEqual(sent(first), [receipt])
        again = self.recv(fwd)
        self.assertEqual(printed(again), [])
        self.assertEqual(sent(again), [receipt])
        self.assertState(ClientState.ONLINE)  # a forward moves no state

    def test_forward_while_message_sent_keeps_waiting(self):
        self.typed("alice->bob#hello")
        self.recv("bob->alice#<Ab3$x_><5555555555>crossing")
        self.assertState(ClientState.MESSAGE_SENT)

    def test_local_errors(self):
        self.assertEqual(printed(self.typed("alice->server#login<x>")), ["Error: already logged in as alice"])
        self.assertEqual(printed(self.typed("bob->carol#hi")), ["Error: logged in as alice, not bob"])
        self.assertTrue(printed(self.typed("nonsense"))[0].startswith("Error: "))
        self.assertEqual(self.typed("   "), [])
        self.assertEqual(printed(self.typed("alice->bob#" + "x" * 3000)), ["Error: message too long"])
        self.assertState(ClientState.ONLINE)


class ClientLogoffTest(ClientTestCase):
    def setUp(self):
        super().setUp()
        self.go_online()

    def test_online_typed_logoff_goes_logout_sent(self):
        actions = self.typed("alice->server#logoff")
        self.assertEqual(sent(actions), ["alice->server#logoff<Ab3$x_>"])
        self.assertState(ClientState.LOGOUT_SENT)

    def test_logout_sent_success_goes_offline(self):
        self.typed("alice->server#logoff")
        actions = self.recv("server->alice#Success<Ab3$x_>")
        self.assertEqual(printed(actions), ["server->alice#Success<Ab3$x_>"])
        self.assertState(ClientState.OFFLINE)
        self.assertIsNone(self.client.token)
        self.assertEqual(printed(self.typed("alice->bob#x")), ["Error: not logged in"])

    def test_logout_sent_token_error_goes_offline(self):
        self.typed("alice->server#logoff")
        self.recv("server->alice#Error: token error!")
        self.assertState(ClientState.OFFLINE)

    def test_logout_sent_no_response_goes_offline(self):
        self.typed("alice->server#logoff")
        for _ in range(3):
            self.client.timer(("retry",))
        self.assertEqual(printed(self.client.timer(("retry",))), ["Error: no response from server"])
        self.assertState(ClientState.OFFLINE)

    def test_can_log_in_again_after_logoff(self):
        self.typed("alice->server#logoff")
        self.recv("server->alice#Success<Ab3$x_>")
        self.assertEqual(len(sent(self.typed("alice->server#login<alice123>"))), 1)
        self.assertState(ClientState.LOGIN_SENT)


class ClientUnansweredTest(ClientTestCase):
    """No hub at the address: ICMP "port unreachable" fails the request at
    once; a request that is never answered makes the exit status non-zero."""

    def test_refused_in_login_sent_goes_offline_at_once(self):
        self.typed("alice->server#login<alice123>")
        self.typed("alice->bob#queued")
        actions = self.client.refused()
        self.assertEqual(printed(actions), ["Error: no server at that address (port unreachable)",
                                            "Error: not logged in"])
        self.assertIn(CancelTimer(("retry",)), actions)
        self.assertState(ClientState.OFFLINE)
        self.assertEqual(self.client.status, 4)

    def test_refused_in_message_sent_falls_back_online(self):
        self.go_online()
        self.typed("alice->bob#hello")
        self.client.refused()
        self.assertState(ClientState.ONLINE)
        self.assertEqual(self.client.token, "Ab3$x_")
        self.assertEqual(self.client.timer(("retry",)), [])   # nothing left to resend

    def test_refused_when_nothing_is_outstanding_is_shown(self):
        self.go_online()
        self.assertEqual(printed(self.client.refused()), ["Error: no server at that address (port unreachable)"])
        self.assertState(ClientState.ONLINE)

    def test_exit_status(self):
        self.go_online()
        self.assertEqual(self.client.status, 0)       # every request answered
        self.typed("alice->bob#hello")
        for _ in range(4):
            self.client.timer(("retry",))
        self.assertEqual(self.client.status, 3)       # one never was
        self.client.refused()                         # (idle: shown, the status stays)
        self.assertEqual(self.client.status, 3)


class ClientEndOfInputTest(ClientTestCase):
    def test_exits_when_idle(self):
        self.client.end_of_input()
        self.assertTrue(self.client.done)

    def test_finishes_outstanding_first(self):
        self.typed("alice->server#login<alice123>")
        self.typed("alice->bob#queued")
        self.client.end_of_input()
        self.assertFalse(self.client.done)
        self.recv("server->alice#Success<Ab3$x_>")
        self.assertFalse(self.client.done)
        self.recv("server->alice#<Ab3$x_><0000000001>Success: queued")
        self.assertTrue(self.client.done)

    def test_stay_keeps_receiving(self):
        client = Client("127.0.0.1", 40001, stay=True)
        client.end_of_input()
        self.assertFalse(client.done)



def _module_file(module):
    """lib.x.y -> its source file under ROOT, or None (not ours, or not a module)."""
    base = os.path.join(ROOT, *module.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def imported_modules(start):
    """Every module of this repository that importing `start` loads, read from
    the sources (ast), without importing anything."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]   # parent packages run too
        package = module if path.endswith("__init__.py") else ".".join(parts[:-1])
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                todo.append(base)
                todo += [f"{base}.{alias.name}" for alias in node.names]   # `from pkg import module`
    return seen


class ClientImportsTest(unittest.TestCase):
    """One codec per protocol: the client imports the hub's wire format and the
    shared action types, never the hub's server side."""

    def test_the_client_does_not_import_the_server(self):
        loaded = imported_modules("lib.clients.udp")
        self.assertIn("lib.hub.wire", loaded)
        self.assertIn("lib.hub.actions", loaded)
        self.assertNotIn("lib.hub.session", loaded)
        self.assertNotIn("lib.hub.server", loaded)

    def test_the_hub_does_not_import_the_client(self):
        for module in ("lib.hub.session", "lib.hub.server"):
            with self.subTest(module=module):
                self.assertFalse({m for m in imported_modules(module) if m.startswith("lib.clients")})


if __name__ == "__main__":
    unittest.main()
