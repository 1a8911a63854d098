"""Pure tests of the client at a terminal (lib/clients/terminal.py) and of
./client's one parser (client.py): help from the command table, what the
history file keeps, how typed lines are dispatched and how output goes above
the input line (readline replaced by a recording fake), options in any order."""
import contextlib
import ctypes
import io
import os
import tempfile
import unittest
from unittest import mock

import client
from lib.clients import terminal, udp
from lib.clients.terminal import load_history, save_history, tcp_help, tcp_secret, udp_help, udp_secret
from lib.social.protocol import COMMANDS


class HelpTest(unittest.TestCase):
    def test_help_lists_every_command_of_the_table_and_the_local_ones(self):
        lines = tcp_help([])
        for command in COMMANDS.values():
            self.assertIn("  " + command.usage.removeprefix("Usage: "), lines)
        self.assertTrue(any(line.split()[:1] == ["exit"] for line in lines))
        self.assertTrue(any(line.split()[:1] == ["help"] for line in lines))

    def test_help_command_is_its_usage_line(self):
        for name, command in COMMANDS.items():
            self.assertEqual(tcp_help([name]), [command.usage])
        self.assertEqual(tcp_help(["exit"]), ["exit: end the session (so does Ctrl-D)"])
        self.assertEqual(tcp_help(["nope"]), ["Unknown command nope (type help for the list)"])

    def test_udp_help_lists_the_forms_the_usage_hint_names(self):
        lines = "\n".join(udp_help([]))
        for form, _ in udp.FORMS:
            self.assertIn(form, lines)
            self.assertIn(form, udp.USAGE_HINT)
        self.assertEqual(udp.USAGE_HINT, "Error: type A->server#login<PASSWORD>, A->B#TEXT or A->server#logoff")


class SecretTest(unittest.TestCase):
    def test_lines_with_a_password_are_secret(self):
        self.assertTrue(tcp_secret("login alice alice123"))
        self.assertTrue(tcp_secret("  register bob pw"))
        for line in ("send alice bob my password is x", "logout alice", "", "   ", "loginx a b"):
            self.assertFalse(tcp_secret(line), line)
        self.assertTrue(udp_secret("alice->server#login<alice123>"))
        self.assertFalse(udp_secret("alice->bob#hi"))


class HistoryFileTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.path = os.path.join(tmp.name, "history")

    def test_no_file_is_no_history(self):
        self.assertEqual(load_history(self.path, 10), [])

    def test_saved_lines_leave_secrets_out_are_0600_and_bounded(self):
        save_history(self.path, ["login a pw", "list-friend a", "post a hi"], 10, tcp_secret)
        self.assertEqual(load_history(self.path, 10), ["list-friend a", "post a hi"])
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        save_history(self.path, [f"post a {i}" for i in range(20)], 5, tcp_secret)
        self.assertEqual(load_history(self.path, 100), [f"post a {i}" for i in range(15, 20)])
        self.assertEqual(load_history(self.path, 2), ["post a 18", "post a 19"])

    def test_another_session_s_lines_are_kept(self):
        save_history(self.path, ["first"], 10, tcp_secret)
        save_history(self.path, ["second"], 10, tcp_secret)
        self.assertEqual(load_history(self.path, 10), ["first", "second"])

    def test_size_0_keeps_nothing(self):
        save_history(self.path, ["a", "b"], 0, tcp_secret)
        self.assertEqual(load_history(self.path, 10), [])


# -- the editor, on a recording fake of readline -------------------------------------------
class FakeLib:
    """readline's C functions as the editor calls them; `keys` lines are what
    rl_callback_read_char completes, one per call (None: Ctrl-D)."""

    def __init__(self, log):
        self.log, self.keys, self.handler = log, [], None
        self.libc = ctypes.CDLL(None)
        self.libc.strdup.restype = ctypes.c_void_p

    def rl_callback_handler_install(self, prompt, handler):
        self.log.append(("install", prompt))
        self.handler = handler

    def rl_callback_read_char(self):
        line = self.keys.pop(0)
        self.handler(None if line is None else self.libc.strdup(line.encode()))

    def stifle_history(self, size):
        self.log.append(("stifle", size))

    def rl_callback_handler_remove(self):
        self.log.append(("remove",))

    def rl_clear_visible_line(self):
        self.log.append(("clear",))

    def rl_forced_update_display(self):
        self.log.append(("redraw",))


class FakeReadline:
    def __init__(self, log):
        self.log, self.history = log, []

    def add_history(self, line):
        self.history.append(line)

    def clear_history(self):
        self.history = []

    def set_auto_history(self, on):
        pass

    def set_completer(self, fn):
        self.completer = fn

    def parse_and_bind(self, text):
        pass

    def get_begidx(self):
        return 0


class FakeReactor:
    def __init__(self):
        self.readers = {}

    def add_reader(self, fd, callback):
        self.readers[fd] = callback

    def remove_reader(self, fd):
        self.readers.pop(fd, None)

    def add_signal_handler(self, signum, callback):
        pass


class Out(io.StringIO):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def write(self, text):
        self.log.append(("text", text))
        return super().write(text)


class EditorTest(unittest.TestCase):
    def setUp(self):
        self.log = []
        self.lib, self.readline = FakeLib(self.log), FakeReadline(self.log)
        patcher = mock.patch.object(terminal, "_readline", lambda: (self.readline, self.lib))
        patcher.start()
        self.addCleanup(patcher.stop)
        r, w = os.pipe()          # stdin: select() finds nothing more to read
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.history = os.path.join(tmp.name, "history")
        self.lines, self.eof = [], []
        self.reactor = FakeReactor()
        self.fd = r
        self.term = self.editor()

    def editor(self, **options):
        return terminal.Terminal(self.reactor, self.lines.append, lambda: self.eof.append(True),
                                 history_file=self.history, fd=self.fd, out=Out(self.log), **options)

    def type(self, *lines):
        for line in lines:
            self.lib.keys.append(line)
            self.reactor.readers[self.fd]()

    def test_the_prompt_is_installed_and_typed_lines_go_to_the_client(self):
        self.assertEqual(self.log, [("stifle", terminal.HISTORY_SIZE), ("install", b"np> ")])
        self.type("list-friend alice", "")
        self.assertEqual(self.lines, ["list-friend alice", ""])

    def test_help_is_answered_at_the_terminal(self):
        self.type("help send")
        self.assertEqual(self.lines, [])
        self.assertIn(("text", "Usage: send <user> <friend> <message>\n"), self.log)

    def test_output_goes_above_the_line_being_typed(self):
        del self.log[:]
        self.term.write(["<<<bob->alice: hi>>>", "second"])
        self.assertEqual(self.log, [("clear",), ("text", "<<<bob->alice: hi>>>\nsecond\n"), ("redraw",)])

    def test_history_skips_blanks_and_repeats_and_the_file_skips_passwords(self):
        self.type("login alice pw", "list-friend alice", "list-friend alice", "  ", "post alice hi")
        self.assertEqual(self.readline.history, ["login alice pw", "list-friend alice", "post alice hi"])
        self.term.close()
        self.assertEqual(load_history(self.history, 10), ["list-friend alice", "post alice hi"])

    def test_history_size_bounds_the_session_and_the_file(self):
        self.term.close()
        del self.log[:]
        self.term = self.editor(history_size=2)
        self.assertEqual(self.log[0], ("stifle", 2))
        self.type("post a 1", "post a 2", "post a 3")
        self.assertEqual(list(self.term.typed), ["post a 2", "post a 3"])   # memory bounded too
        self.term.close()
        self.assertEqual(load_history(self.history, 10), ["post a 2", "post a 3"])

    def test_ctrl_d_is_the_end_of_input_and_gives_the_terminal_back(self):
        self.type(None)
        self.assertEqual(self.eof, [True])
        self.assertIn(("remove",), self.log)
        self.assertNotIn(self.fd, self.reactor.readers)
        del self.log[:]
        self.term.write(["late"])  # after the editor: a plain line
        self.assertEqual(self.log, [("text", "late\n")])

    def test_close_clears_the_prompt_and_restores_the_terminal(self):
        del self.log[:]
        self.term.close()
        self.assertEqual(self.log, [("clear",), ("remove",)])

    def test_tab_completes_command_names(self):
        complete = self.readline.completer
        self.assertEqual([complete("list-", i) for i in range(4)],
                         ["list-invite ", "list-friend ", "list-group ", "list-joined "])
        self.assertIsNone(complete("list-", 4))


# -- client.py's parser -------------------------------------------------------------------------
class ParserTest(unittest.TestCase):
    def parse_error(self, argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as done:
            client.parse(argv)
        self.assertEqual(done.exception.code, 2)
        self.assertEqual(len(err.getvalue().splitlines()), 1, err.getvalue())
        return err.getvalue()

    def test_options_in_any_order(self):
        for argv in (["-v", "--udp", "h", "5"], ["h", "--udp", "5", "-v"], ["--udp", "h", "-v", "5"]):
            args = client.parse(argv)
            self.assertEqual((args.udp, args.verbose, args.host, args.port), (True, True, "h", 5), argv)

    def test_each_mode_gets_its_defaults(self):
        tcp_args = client.parse(["h", "5"])
        self.assertEqual((tcp_args.udp, tcp_args.linger), (False, 0.5))
        udp_args = client.parse(["h", "5", "--udp", "--retries", "0"])
        self.assertEqual((udp_args.stay, udp_args.timeout, udp_args.retries), (False, udp.TIMEOUT, 0))

    def test_an_option_of_the_other_mode_is_a_usage_error(self):
        self.assertIn("--linger", self.parse_error(["--udp", "h", "5", "--linger", "1"]))
        self.assertIn("--timeout", self.parse_error(["h", "5", "--timeout", "1"]))

    def test_ports_outside_1_to_65535_are_usage_errors(self):
        for port in ("70000", "-1", "0", "65536", "x"):
            self.assertIn("1-65535", self.parse_error(["h", port]))
        self.assertEqual(client.parse(["h", "65535"]).port, 65535)


if __name__ == "__main__":
    unittest.main()
