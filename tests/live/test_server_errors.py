"""Live tests: every exit status and one-line start-up error of the three
servers (server.py, appserver.py, udp_hub.py), as real processes, as a
script sees them: the exit status, exactly one line on stderr, no traceback.
The table is in README.md ("Exit codes") and each main's --help.

(A write the disk refuses while running, exit status 3 of server.py:
tests/live/test_write_failure.py.)
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import unittest

from tests.support import BROKER, PYTHON, ROOT, Conn, LoginServer, accepts, free_port, wait_for

SERVER = [PYTHON, os.path.join(ROOT, "server.py")]
APPSERVER = [PYTHON, os.path.join(ROOT, "appserver.py")]
HUB = [PYTHON, os.path.join(ROOT, "udp_hub.py")]
# Nothing in the hub, the login server or the app server needs more to fail at start.
TIMEOUT = 30


class ErrorsTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="np-errors-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def run_main(self, cmd, env=None):
        """-> (exit status, stderr) of a main expected to stop at once."""
        proc = subprocess.run(cmd, cwd=self.tmp, capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, **(env or {})})
        return proc.returncode, proc.stderr

    def assertOneLineError(self, cmd, status, pattern, env=None):
        code, err = self.run_main(cmd, env)
        self.assertNotIn("Traceback", err)
        self.assertEqual(code, status, err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.endswith("\n"), err)
        self.assertRegex(err, pattern)
        return err

    def start(self, cmd, started, env=None):
        """A main that keeps running: -> (process, a function giving its stderr so far)
        once `started` (a pattern its stderr shows, or a function) is true."""
        log_path = os.path.join(self.tmp, f"log-{len(os.listdir(self.tmp))}")
        log = open(log_path, "w")
        self.addCleanup(log.close)
        proc = subprocess.Popen(cmd, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=log,
                                env={**os.environ, **(env or {})})
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))

        def text():
            with open(log_path) as f:
                return f.read()
        ready = started if callable(started) else lambda: re.search(started, text())
        self.assertTrue(wait_for(lambda: ready() or proc.poll() is not None, 20), text())
        self.assertIsNone(proc.poll(), text())
        return proc, text

    def assertCleanStop(self, proc, text):
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(TIMEOUT), 0, text())
        self.assertNotIn("Traceback", text())


def bad_port_cases(prog, cmd_for_port):
    """(command, expected line) for 70000, -1 and abc."""
    return [(cmd_for_port(port), rf"^{re.escape(prog)}: error: argument [-a-z]+: must be 1-65535 "
             rf"\(or 0 for any free port\), got {re.escape(shown)} \(see --help\)\n$")
            for port, shown in (("70000", "70000"), ("-1", "-1"), ("abc", "'abc'"))]


class LoginServerErrorsTest(ErrorsTestCase):
    def server(self, *args, data=None):
        return SERVER + list(args) + ["--data", data or os.path.join(self.tmp, "data"),
                                      "--broker", BROKER]

    def test_bad_ports_are_usage_errors(self):
        cases = bad_port_cases("server", lambda port: self.server("127.0.0.1", port))
        cases += bad_port_cases("server", lambda port: self.server("127.0.0.1", "0", "--internal-port", port))
        for cmd, pattern in cases:
            with self.subTest(cmd=cmd[2:]):
                self.assertOneLineError(cmd, 2, pattern)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "data")))   # checked before anything

    def test_a_broker_that_is_no_address_is_a_usage_error(self):
        for broker, why in (("nonsense", "no port"), ("mq:x", "bad port"), ("mq:70000", "1-65535")):
            with self.subTest(broker=broker):
                self.assertOneLineError(SERVER + ["127.0.0.1", "0", "--data", self.tmp, "--broker", broker],
                                        2, rf"^server: error: argument --broker: .*{why}")

    def test_data_directory_that_cannot_be_used(self):
        a_file = os.path.join(self.tmp, "a-file")
        open(a_file, "w").close()
        for data, why in (("/proc/np-nope", r"/proc/np-nope: No such file or directory"),
                          # sysfs: nobody, root included, may create a directory there
                          ("/sys/np-nope", r"/sys/np-nope: Operation not permitted"),
                          (a_file, rf"data directory {re.escape(a_file)} is not a directory")):
            with self.subTest(data=data):
                self.assertOneLineError(self.server("127.0.0.1", "0", data=data), 3, rf"^server: .*{why}\n$")

    @unittest.skipIf(os.geteuid() == 0, "root writes into any directory")
    def test_data_directory_in_an_unwritable_place(self):
        parent = os.path.join(self.tmp, "read-only")
        os.mkdir(parent, 0o555)
        self.addCleanup(os.chmod, parent, 0o755)
        self.assertOneLineError(self.server("127.0.0.1", "0", data=os.path.join(parent, "data")), 3,
                                r"^server: .*Permission denied\n$")

    def test_data_directory_of_another_server_and_port_in_use(self):
        with LoginServer() as other:
            self.assertOneLineError(self.server("127.0.0.1", "0", data=other.data), 1,
                                    r"^server: .* is in use by another np-social server\n$")
            self.assertOneLineError(self.server("127.0.0.1", str(other.port)), 1,
                                    rf"^server: cannot listen on 127\.0\.0\.1:{other.port}: "
                                    r"Address already in use\n$")
            self.assertOneLineError(self.server("127.0.0.2.5", "0"), 1,
                                    r"^server: cannot listen on 127\.0\.0\.2\.5:0: ")

    def test_dead_broker_one_line_and_the_server_keeps_serving(self):
        dead = free_port()      # nothing listens there
        port = free_port()
        proc, text = self.start(SERVER + ["127.0.0.1", str(port), "--data", "data",   # relative
                                          "--broker", f"127.0.0.1:{dead}"], r"login server on")
        self.assertTrue(wait_for(lambda: "is not reachable" in text(), 10), text())
        lines = [line for line in text().splitlines() if "not reachable" in line]
        self.assertEqual(len(lines), 1, text())
        self.assertIn(f"broker 127.0.0.1:{dead} is not reachable (Connection refused); "
                      "send and send-group will fail until it is", lines[0])
        # The start-up line says where the data, and the TCP accounts, live.
        data = os.path.join(os.path.realpath(self.tmp), "data")
        self.assertRegex(text(), rf"data in {re.escape(data)} \(TCP accounts: "
                                 rf"{re.escape(os.path.join(data, 'users.txt'))}\)")
        c = Conn(port)
        self.addCleanup(c.close)
        self.assertEqual(c.request("register alice alice123")["status"], 0)
        self.assertCleanStop(proc, text)

    def test_a_live_broker_gets_no_warning(self):
        proc, text = self.start(self.server("127.0.0.1", "0"), r"login server on")
        self.assertTrue(wait_for(lambda: "is reachable" in text() or "not reachable" in text(), 10))
        self.assertNotIn("not reachable", text())
        self.assertCleanStop(proc, text)


class AppServerErrorsTest(ErrorsTestCase):
    ENV = {"NP_JOIN_SECRET": "s3cret"}

    def test_bad_arguments_are_usage_errors(self):
        cases = bad_port_cases("appserver.py", lambda port: APPSERVER + ["--login", "127.0.0.1:1",
                                                                          "--port", port])
        cases += [(APPSERVER + ["--login", "nonsense"], r"^appserver\.py: error: argument --login: "),
                  (APPSERVER + ["--login", "127.0.0.1:1", "--broker", "nonsense"],
                   r"^appserver\.py: error: argument --broker: ")]
        for cmd, pattern in cases:
            with self.subTest(cmd=cmd[2:]):
                self.assertOneLineError(cmd, 2, pattern, env=self.ENV)

    def test_no_join_secret_is_a_usage_error(self):
        env = dict(os.environ)
        env.pop("NP_JOIN_SECRET", None)
        proc = subprocess.run(APPSERVER + ["--login", "127.0.0.1:1"], cwd=self.tmp, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual((proc.returncode, proc.stderr), (2, "appserver.py: NP_JOIN_SECRET is not set\n"))

    def test_port_in_use_and_a_clean_stop(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            self.assertOneLineError(APPSERVER + ["--login", "127.0.0.1:1", "--host", "127.0.0.1",
                                                 "--port", str(port)], 1,
                                    rf"^appserver\.py: cannot listen on 127\.0\.0\.1:{port}: "
                                    r"Address already in use\n$", env=self.ENV)
        # Listening, still trying to reach a login server that is not there: SIGTERM is a clean stop.
        port = free_port()
        proc, text = self.start(APPSERVER + ["--login", f"127.0.0.1:{free_port()}", "--host",
                                             "127.0.0.1", "--port", str(port)],
                                lambda: accepts(port), env=self.ENV)
        self.assertCleanStop(proc, text)


class HubErrorsTest(ErrorsTestCase):
    def test_bad_ports_are_usage_errors(self):
        for cmd, pattern in bad_port_cases("udp_hub.py", lambda port: HUB + ["127.0.0.1", port]):
            with self.subTest(cmd=cmd[2:]):
                self.assertOneLineError(cmd, 2, pattern)

    def test_accounts_file_that_cannot_be_read(self):
        missing = os.path.join(self.tmp, "missing.txt")
        # /proc/self/mem: opens, but reading at offset 0 fails (EIO) for any user, root too.
        for path, why in ((missing, "No such file or directory"), (self.tmp, "Is a directory"),
                          ("/proc/self/mem", "Input/output error")):
            with self.subTest(path=path):
                self.assertOneLineError(HUB + ["127.0.0.1", "0", "--users", path], 3,
                                        rf"^udp_hub\.py: cannot read the accounts file "
                                        rf"{re.escape(path)}: {why}\n$")

    def test_port_in_use(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            self.assertOneLineError(HUB + ["127.0.0.1", str(port)], 1,
                                    rf"cannot bind 127\.0\.0\.1:{port}: Address already in use\n$")

    def test_start_up_line_names_the_accounts_file_and_sigterm_is_clean(self):
        users = os.path.join(self.tmp, "hub-users.txt")
        with open(users, "w") as f:
            f.write("alice alice123\nbob bob123\n")
        proc, text = self.start(HUB + ["127.0.0.1", "0", "--users", "hub-users.txt"], r"listening on")
        self.assertRegex(text(), rf"listening on 127\.0\.0\.1:\d+ .*2 UDP hub accounts from "
                                 rf"{re.escape(os.path.realpath(users))} \(TCP accounts are the login "
                                 r"server's, in its DATA/users\.txt\)")
        self.assertCleanStop(proc, text)


if __name__ == "__main__":
    unittest.main()
