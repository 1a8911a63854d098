"""Pure tests of the servers' argument checks (issue 13, "errors a script can
trust"): ports and addresses are checked by argparse types (lib/flags.py on
lib/loop/address.py), a usage error is ONE line and exit status 2; the data
directory's and the accounts file's errors are one line too. The same
behaviour with real processes: tests/live/test_server_errors.py."""
import contextlib
import io
import os
import tempfile
import unittest
from unittest import mock

import appserver
import server
import udp_hub
from lib import flags
from lib.loop.address import parse_port
from lib.messaging import probe
from lib.social.files import UnsafePath


def usage_error(parse, argv):
    """-> (exit status, stderr) of `parse(argv)`, which must exit."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parse(argv)
        except SystemExit as e:
            return e.code, err.getvalue()
    raise AssertionError(f"{argv} was accepted")


class ParsePortTest(unittest.TestCase):
    def test_the_range(self):
        for text, port in (("0", 0), ("1", 1), ("8888", 8888), (" 65535 ", 65535)):
            self.assertEqual(parse_port(text), port)

    def test_out_of_range_and_not_numbers_say_why(self):
        for bad, shown in (("70000", "got 70000"), ("65536", "got 65536"), ("-1", "got -1"),
                           ("abc", "got 'abc'"), ("", "got ''"), ("1_0", "got '1_0'"),
                           ("8.5", "got '8.5'")):
            with self.subTest(bad=bad), self.assertRaises(ValueError) as caught:
                parse_port(bad)
            self.assertEqual(str(caught.exception),
                             f"port must be 1-65535 (or 0 for any free port), {shown}")

    def test_zero_only_where_any_port_is_meant(self):
        with self.assertRaisesRegex(ValueError, r"^port must be 1-65535, got 0$"):
            parse_port("0", any_ok=False)


class MainArgumentsTest(unittest.TestCase):
    """Each main's parser: a bad port or address is exit 2 with one line."""
    PORT = "argument {}: must be 1-65535 (or 0 for any free port), got {}"
    CASES = (
        ("server", server.parse_args, ["127.0.0.1", "70000"], PORT.format("port", "70000")),
        ("server", server.parse_args, ["127.0.0.1", "-1"], PORT.format("port", "-1")),
        ("server", server.parse_args, ["127.0.0.1", "abc"], PORT.format("port", "'abc'")),
        ("server", server.parse_args, ["127.0.0.1", "0", "--internal-port", "65536"],
         PORT.format("--internal-port", "65536")),
        ("server", server.parse_args, ["127.0.0.1", "0", "--broker", "nonsense"],
         "argument --broker: bad address 'nonsense': no port"),
        ("server", server.parse_args, ["127.0.0.1", "0", "--broker", "mq:x"],
         "argument --broker: bad port in address 'mq:x'"),
        ("server", server.parse_args, ["127.0.0.1", "0", "--capacity", "0"],
         "--capacity, --max-app-servers and --snapshot-every must be >= 1"),
        ("appserver.py", appserver.parse_args, ["--login", "127.0.0.1:1", "--port", "70000"],
         PORT.format("--port", "70000")),
        ("appserver.py", appserver.parse_args, ["--login", "nonsense"],
         "argument --login: bad address 'nonsense': no port"),
        ("appserver.py", appserver.parse_args, ["--login", "127.0.0.1:1", "--broker", "nonsense"],
         "argument --broker: bad address 'nonsense': no port"),
        ("udp_hub.py", udp_hub.main, ["127.0.0.1", "70000"], PORT.format("port", "70000")),
        ("udp_hub.py", udp_hub.main, ["127.0.0.1", "-1"], PORT.format("port", "-1")),
        ("udp_hub.py", udp_hub.main, ["127.0.0.1", "0", "--expiry", "0"], "--expiry must be positive"),
    )

    def test_one_line_and_exit_2(self):
        for prog, parse, argv, why in self.CASES:
            with self.subTest(argv=argv):
                code, err = usage_error(parse, argv)
                self.assertEqual(code, 2)
                self.assertEqual(err.count("\n"), 1, err)
                self.assertTrue(err.startswith(f"{prog}: error: {why}"), err)
                self.assertTrue(err.endswith(" (see --help)\n"), err)

    def test_good_arguments_pass(self):
        args = server.parse_args(["127.0.0.1", "0", "--broker", "[::1]:61613", "--internal-port", "9"])
        self.assertEqual((args.port, args.broker, args.internal_port), (0, "[::1]:61613", 9))
        args = appserver.parse_args(["--login", "127.0.0.1:5", "--port", "65535", "--broker", "mq:1"])
        self.assertEqual((args.login, args.port, args.broker), ("127.0.0.1:5", 65535, "mq:1"))

    def test_help_states_accounts_and_exit_codes(self):
        for parse, words in ((server.parse_args, ("DIR/users.txt", "UDP hub", "exit status:",
                                                  "\n  3  the data directory")),
                             (udp_hub.main, ("repository's users.txt holds the UDP hub's",
                                             "DATA/users.txt", "exit status:", "\n  3  the accounts")),
                             (appserver.parse_args, ("exit status:", "\n  2  usage"))):
            out = io.StringIO()
            with contextlib.redirect_stdout(out), self.assertRaises(SystemExit) as caught:
                parse(["--help"])
            self.assertEqual(caught.exception.code, 0)
            for word in words:
                self.assertIn(word, out.getvalue())


class StartUpErrorsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def test_hub_accounts_file_that_cannot_be_read(self):
        missing = os.path.join(self.tmp.name, "nope.txt")
        for path, why in ((missing, "No such file or directory"), (self.tmp.name, "Is a directory")):
            err = io.StringIO()
            refused = AssertionError("the hub went on to bind with no accounts file")
            with contextlib.redirect_stderr(err), mock.patch.object(udp_hub, "HubServer", side_effect=refused):
                code = udp_hub.main(["127.0.0.1", "0", "--users", path])   # before any bind
            self.assertEqual(code, udp_hub.EXIT_ACCOUNTS)
            self.assertEqual(err.getvalue(), f"udp_hub.py: cannot read the accounts file {path}: {why}\n")
        good = os.path.join(self.tmp.name, "users.txt")
        with open(good, "w") as f:
            f.write("alice alice123\n")
        self.assertIsNone(udp_hub.read_check(good))

    def test_data_directory_errors_are_one_line(self):
        a_file = os.path.join(self.tmp.name, "file")
        open(a_file, "w").close()
        self.assertEqual(server.data_error(a_file, UnsafePath(f"cannot use data directory {a_file}: "
                                                               "File exists")),
                         f"data directory {a_file} is not a directory")
        lock = os.path.join(self.tmp.name, "lock")
        self.assertEqual(server.data_error(self.tmp.name, PermissionError(13, "Permission denied", lock)),
                         f"data directory {self.tmp.name}: {lock}: Permission denied")
        self.assertEqual(server.data_error(self.tmp.name, UnsafePath("why")), "why")

    def test_exit_codes_are_distinct(self):
        self.assertEqual((server.EXIT_FAILED, flags.USAGE, server.EXIT_STORE_FAILED), (1, 2, 3))
        self.assertEqual((udp_hub.EXIT_FAILED, udp_hub.EXIT_ACCOUNTS), (1, 3))

    def test_broker_warning_line(self):
        self.assertEqual(probe.warning("::1", 61613, "Connection refused"),
                         "broker [::1]:61613 is not reachable (Connection refused); "
                         "send and send-group will fail until it is")


if __name__ == "__main__":
    unittest.main()
