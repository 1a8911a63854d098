"""Live tests: ./client's exit statuses and one-line errors, each with the
real process (both modes), against stand-in servers on 127.0.0.1
(tests/live/test_client_terminal.py) or a port nobody listens on."""
import signal
import socket
import subprocess
import time
import unittest

from lib.social.protocol import COMMANDS
from tests.live.test_client_terminal import CLIENT, Hub, StandIn
from tests.support import ROOT

HOST = "127.0.0.1"


def run(*args, stdin="", timeout=20):
    return subprocess.run(CLIENT + list(args), input=stdin, capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def free_tcp_port():
    with socket.socket() as probe:   # bound, never listening, then closed
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class HelpTest(unittest.TestCase):
    def test_help_lists_both_modes_every_option_the_commands_and_the_exit_statuses(self):
        result = run("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        text = result.stdout
        for option in ("--udp", "-v", "--linger", "--listen-timeout", "--remember-pushes",
                       "--stay", "--timeout", "--retries", "--history-file", "--history-size"):
            self.assertIn(option, text)
        self.assertIn("./client --udp HOST PORT", text)
        for command in COMMANDS.values():
            self.assertIn("  " + command.usage.removeprefix("Usage: ") + "\n", text)
        self.assertIn("A->server#login<PASSWORD>", text)
        status = text[text.index("exit status:"):]
        for code in ("0", "1", "2", "3", "4", "130"):
            self.assertRegex(status, rf"\n  {code} +\S")


class UsageErrorTest(unittest.TestCase):
    """Exit 2, one line on stderr, nothing on stdout, no traceback."""

    def assert_usage_error(self, *args):
        result = run(*args)
        self.assertEqual(result.returncode, 2, (args, result.stderr))
        self.assertEqual(result.stdout, "")
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertTrue(result.stderr.startswith("client: error: "), result.stderr)
        return result.stderr

    def test_a_port_outside_1_to_65535(self):
        for mode in ([], ["--udp"]):
            for port in ("70000", "-1", "0", "http"):
                with self.subTest(mode=mode, port=port):
                    self.assertIn("1-65535", self.assert_usage_error(*mode, HOST, port))

    def test_missing_arguments(self):
        self.assert_usage_error()
        self.assert_usage_error("--udp", HOST)

    def test_an_option_of_the_other_mode(self):
        self.assertIn("--linger", self.assert_usage_error("--udp", HOST, "5000", "--linger", "1"))
        self.assertIn("--stay", self.assert_usage_error(HOST, "5000", "--stay"))

    def test_an_unusable_hub_address(self):
        result = run("--udp", "", "5000", stdin="a->server#login<b>\n")
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertTrue(result.stderr.startswith("Error: cannot reach :5000: "), result.stderr)


class TcpExitTest(unittest.TestCase):
    def setUp(self):
        self.servers = StandIn()
        self.addCleanup(self.servers.close)

    def test_all_answered_is_0(self):
        result = run(HOST, str(self.servers.login_port), stdin="login alice pw\nlist-friend alice\n")
        self.assertEqual(result.stdout, "Success!\nSuccess!\n")
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_stdout_closed_is_1(self):
        proc = subprocess.Popen(CLIENT + [HOST, str(self.servers.login_port)], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()       # nobody reads what it prints
        _, err = proc.communicate(b"register a b\nregister c d\n", timeout=20)
        self.assertEqual(proc.returncode, 1, err)
        self.assertEqual(err, b"")

    def test_cannot_reach_the_server_is_3(self):
        port = free_tcp_port()
        result = run(HOST, str(port), stdin="register a b\n")
        self.assertEqual(result.stdout, f"Error: cannot reach the server at {HOST}:{port}\n")
        self.assertEqual(result.returncode, 3, result.stderr)

    def test_3_stays_when_the_server_comes_back(self):
        port = free_tcp_port()
        proc = subprocess.Popen(CLIENT + [HOST, str(port)], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdin.write(b"register a b\n")
        proc.stdin.flush()
        self.assertEqual(proc.stdout.readline(), f"Error: cannot reach the server at {HOST}:{port}\n".encode())
        self.addCleanup(StandIn(login_port=port).close)   # now a server answers there
        out, err = proc.communicate(b"register c d\n", timeout=20)
        self.assertEqual(out, b"Success!\n")
        self.assertEqual(proc.returncode, 3, err)

    def test_logs_are_quiet_unless_v(self):
        port = free_tcp_port()
        quiet = run(HOST, str(port), stdin="register a b\n")
        self.assertEqual(quiet.stderr, "")
        verbose = run("-v", HOST, str(port), stdin="register a b\n")
        self.assertIn("client DEBUG", verbose.stderr)
        self.assertEqual(verbose.stdout, quiet.stdout)

    def test_ctrl_c_is_130_without_a_traceback(self):
        proc = subprocess.Popen(CLIENT + [HOST, str(self.servers.login_port)], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdin.write(b"register a b\n")
        proc.stdin.flush()
        self.assertEqual(proc.stdout.readline(), b"Success!\n")   # running, waiting for input
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        self.assertEqual(proc.returncode, 130, err)
        self.assertNotIn(b"Traceback", err)


class UdpExitTest(unittest.TestCase):
    def test_all_answered_is_0_with_options_in_any_order(self):
        hub = Hub()
        self.addCleanup(hub.close)
        proc = subprocess.Popen(CLIENT + ["-v", HOST, "--udp", str(hub.port), "--timeout", "5"],
                                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        proc.stdin.write(b"alice->server#login<alice123>\n")
        proc.stdin.flush()
        hub.answer_login()
        out, err = proc.communicate(timeout=10)
        self.assertEqual(out, b"server->alice#Success<abcdef>\n")
        self.assertEqual(proc.returncode, 0, err)

    def test_a_hub_that_never_answers_is_3(self):
        hub = Hub()               # bound, so no "port unreachable", and silent
        self.addCleanup(hub.close)
        result = run("--timeout", "0.1", "--udp", "--retries", "1", HOST, str(hub.port),
                     stdin="alice->server#login<alice123>\n")
        self.assertEqual(result.stdout, "Error: no response from server\n")
        self.assertEqual(result.returncode, 3, result.stderr)

    def test_no_hub_on_the_port_is_4(self):
        t0 = time.monotonic()
        result = run("--udp", HOST, str(free_udp_port()), stdin="alice->server#login<alice123>\n")
        self.assertLess(time.monotonic() - t0, 5.0)
        self.assertEqual(result.stdout, "Error: no server at that address (port unreachable)\n")
        self.assertEqual(result.returncode, 4, result.stderr)

    def test_stdout_closed_is_1(self):
        hub = Hub()
        self.addCleanup(hub.close)
        proc = subprocess.Popen(CLIENT + ["--udp", HOST, str(hub.port)], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()
        proc.stdin.write(b"alice->server#login<alice123>\n")
        proc.stdin.flush()
        hub.answer_login()
        _, err = proc.communicate(timeout=10)
        self.assertEqual(proc.returncode, 1, err)


if __name__ == "__main__":
    unittest.main()
