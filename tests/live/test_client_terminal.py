"""Live tests: ./client at a terminal. The real client process runs on a
pseudo-terminal; stand-in servers (a login server and an app server that
answer every line, push chat on demand; a UDP hub socket) are sockets in
this test on 127.0.0.1, so no broker and no ./server are needed.

A small screen model (`Screen`) renders what the client wrote to the
terminal, so the assertions are about what a person would see."""
import fcntl
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import unittest

from lib.social.protocol import COMMANDS
from tests.support import ROOT, wait_for

PY = sys.executable
CLIENT = [PY, os.path.join(ROOT, "client.py")]
COLUMNS = 160
TOKEN = "tok-alice"
PUSH = {"push": "message", "id": "1", "to": "alice", "from": "bob", "group": "club",
        "message": "interrupting you"}


# -- stand-in servers ------------------------------------------------------------------------
class StandIn:
    """A login server and an app server that answer every request line:
    `login` with a token and the app server's address, `listen` with
    Listening, anything else with Success!. `push(obj)` writes a push line
    to the app-server connections that said `listen`."""

    def __init__(self, login_port=0):
        self.lines = []           # (role, line) received, in order
        self.listening = []       # app-server connections bound by `listen`
        self.lock = threading.Lock()
        self.socks = []
        self.login_port = self._listen("login", login_port)
        self.app_port = self._listen("app")

    def _listen(self, role, port=0):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(8)
        self.socks.append(sock)
        threading.Thread(target=self._accept, args=(sock, role), daemon=True).start()
        return sock.getsockname()[1]

    def _accept(self, sock, role):
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            self.socks.append(conn)
            threading.Thread(target=self._serve, args=(conn, role), daemon=True).start()

    def _serve(self, conn, role):
        try:
            self._answer(conn, role)
        except OSError:           # the client went away
            pass

    def _answer(self, conn, role):
        for raw in conn.makefile("rb"):
            line = raw.decode().rstrip("\n")
            with self.lock:
                self.lines.append((role, line))
            word = line.split()[0] if line.split() else ""
            if word == "login":
                reply = {"status": 0, "token": TOKEN, "message": "Success!",
                         "app_server": f"127.0.0.1:{self.app_port}"}
            elif word == "listen":
                reply = {"status": 0, "message": "Listening"}
                self.listening.append(conn)
            else:
                reply = {"status": 0, "message": "Success!"}
            conn.sendall((json.dumps(reply) + "\n").encode())

    def received(self, role=None):
        with self.lock:
            return [line for r, line in self.lines if role in (None, r)]

    def push(self, obj):
        for conn in self.listening:
            conn.sendall((json.dumps(obj) + "\n").encode())

    def close(self):
        for sock in self.socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class Hub:
    """A UDP socket standing in for udp_hub.py: answers a login with a token."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.client = None

    def answer_login(self):
        data, self.client = self.sock.recvfrom(65535)
        user = data.decode().split("->")[0]
        self.send(f"server->{user}#Success<abcdef>")
        return data.decode()

    def send(self, text):
        self.sock.sendto(text.encode(), self.client)

    def close(self):
        self.sock.close()


# -- a terminal ------------------------------------------------------------------------------
class Screen:
    """Just enough of a terminal for readline's output: text, CR, LF, BS,
    BEL, and the CSI sequences K (erase to the end of the line), C/D/G
    (cursor right/left/to a column), A/B (up/down), P/@ (delete/insert
    characters) and private modes (ignored). Anything else fails the test:
    the model must not hide what the client wrote."""

    def __init__(self, columns=COLUMNS):
        self.columns = columns
        self.rows = [[]]
        self.row = self.col = 0

    def feed(self, text):
        i = 0
        while i < len(text):
            c = text[i]
            if c == "\x1b":
                m = re.match(r"\x1b\[(\??)([0-9;]*)([A-Za-z@])", text[i:])
                if not m:
                    if text[i:i + 2] in ("\x1b=", "\x1b>"):   # keypad modes
                        i += 2
                        continue
                    raise AssertionError(f"escape sequence the screen model lacks: {text[i:i + 10]!r}")
                self._csi(m[1], m[2], m[3])
                i += len(m[0])
                continue
            if c == "\r":
                self.col = 0
            elif c == "\n":
                self.row += 1
                while len(self.rows) <= self.row:
                    self.rows.append([])
            elif c == "\b":
                self.col = max(0, self.col - 1)
            elif c == "\x07":
                pass
            else:
                line = self.rows[self.row]
                line.extend(" " * (self.col - len(line)))
                if self.col < len(line):
                    line[self.col] = c
                else:
                    line.append(c)
                self.col += 1
            i += 1

    def _csi(self, private, params, final):
        n = int(params.split(";")[0] or 1) if params else 1
        line = self.rows[self.row]
        if private:
            if final not in "hl":
                raise AssertionError(f"private CSI {params}{final}")
        elif final == "K":
            del line[self.col:]
        elif final == "C":
            self.col += n
        elif final == "D":
            self.col = max(0, self.col - n)
        elif final == "G":
            self.col = n - 1
        elif final == "A":
            self.row = max(0, self.row - n)
        elif final == "B":
            self.row += n
            while len(self.rows) <= self.row:
                self.rows.append([])
        elif final == "P":
            del line[self.col:self.col + n]
        elif final == "@":
            line[self.col:self.col] = [" "] * n
        else:
            raise AssertionError(f"CSI {params}{final} the screen model lacks")

    def lines(self):
        return ["".join(row).rstrip() for row in self.rows]


class PtyClient:
    """./client on a pseudo-terminal (its controlling terminal, COLUMNS wide):
    `type()` keys, `screen()` what the terminal shows, `output` every byte."""

    def __init__(self, args, home):
        self.master, slave = os.openpty()
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
        env = dict(os.environ, TERM="xterm", HOME=home, INPUTRC=os.devnull, LC_ALL="C.UTF-8")
        self.proc = subprocess.Popen(CLIENT + args, stdin=slave, stdout=slave, stderr=slave,
                                     cwd=ROOT, env=env, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        self.slave = slave
        self.output = b""
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:       # EIO: every slave descriptor closed
                return
            if not data:
                return
            with self.lock:
                self.output += data

    def type(self, keys):
        os.write(self.master, keys.encode())

    def screen(self):
        with self.lock:
            data = self.output
        screen = Screen()
        screen.feed(data.decode("utf-8", "replace"))
        return screen.lines()

    def shows(self, predicate, timeout=10):
        """Wait until predicate(screen lines) holds; the lines."""
        if not wait_for(lambda: predicate(self.screen()), timeout):
            self.fail_with_screen()
        return self.screen()

    def fail_with_screen(self):
        raise AssertionError("the terminal shows:\n" + "\n".join(self.screen())
                             + f"\nbytes: {self.output[-600:]!r}")

    def wait(self, timeout=10):
        return self.proc.wait(timeout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.slave)
        os.close(self.master)


class TerminalTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def client(self, *args):
        client = PtyClient(list(args), self.tmp.name)
        self.addCleanup(client.close)
        return client

    def standin(self):
        servers = StandIn()
        self.addCleanup(servers.close)
        return servers


def last(lines):
    return next((line for line in reversed(lines) if line), "")


class TcpTerminalTest(TerminalTestCase):
    def test_a_prompt_and_help_from_the_command_table(self):
        servers = self.standin()
        client = self.client("127.0.0.1", str(servers.login_port))
        client.shows(lambda lines: last(lines) == "np>")
        client.type("help\r")
        lines = client.shows(lambda lines: any("exit" in line for line in lines)
                             and last(lines) == "np>")
        for command in COMMANDS.values():
            self.assertIn("  " + command.usage.removeprefix("Usage: "), lines)
        client.type("help send\r")
        client.shows(lambda lines: "Usage: send <user> <friend> <message>" in lines)
        self.assertEqual(servers.received(), [])   # answered at the terminal, not by a server

    def test_the_up_arrow_recalls_history_and_the_file_keeps_no_password(self):
        servers = self.standin()
        client = self.client("127.0.0.1", str(servers.login_port))
        client.type("login alice secret123\r")
        client.shows(lambda lines: "Success!" in lines and last(lines) == "np>")
        wait_for(lambda: f"listen {TOKEN}" in servers.received("app"))
        client.type("list-friend alice\r")
        wait_for(lambda: servers.received("app").count(f"list-friend {TOKEN}") == 1)
        client.type("\x1b[A")     # Up: the last line back, editable
        client.shows(lambda lines: last(lines) == "np> list-friend alice")
        client.type("\r")
        self.assertTrue(wait_for(lambda: servers.received("app").count(f"list-friend {TOKEN}") == 2),
                        servers.received())
        self.assertNotIn("^[[A", "\n".join(client.screen()))
        client.type("\x04")       # Ctrl-D: the end of input
        self.assertEqual(client.wait(), 0)
        with open(os.path.join(self.tmp.name, ".np_social_history")) as f:
            self.assertEqual(f.read(), "list-friend alice\n")   # the login line (a password) left out
        self.assertEqual(os.stat(os.path.join(self.tmp.name, ".np_social_history")).st_mode & 0o777, 0o600)

        again = self.client("127.0.0.1", str(servers.login_port))   # the next session has it
        again.shows(lambda lines: last(lines) == "np>")
        again.type("\x1b[A")
        again.shows(lambda lines: last(lines) == "np> list-friend alice")

    def test_a_message_arriving_while_a_line_is_half_typed_goes_above_it(self):
        servers = self.standin()
        client = self.client("127.0.0.1", str(servers.login_port))
        client.type("login alice secret123\r")
        self.assertTrue(wait_for(lambda: servers.listening), servers.received())
        client.shows(lambda lines: last(lines) == "np>")
        client.type("send-group alice club typing in prog")
        client.shows(lambda lines: last(lines) == "np> send-group alice club typing in prog")
        servers.push(PUSH)
        lines = client.shows(lambda lines: "<<<bob->GROUP<club>: interrupting you>>>" in lines)
        self.assertEqual(last(lines), "np> send-group alice club typing in prog")   # redrawn below
        client.type(" more\r")    # the line kept its text and its cursor
        self.assertTrue(wait_for(lambda: f"send-group {TOKEN} club typing in prog more"
                                 in servers.received("app")), servers.received())

    def test_ctrl_c_exits_130_and_gives_the_terminal_back(self):
        servers = self.standin()
        before = termios.tcgetattr(self.client_fd_probe())
        client = self.client("127.0.0.1", str(servers.login_port))
        client.shows(lambda lines: last(lines) == "np>")
        client.type("half a li")
        client.shows(lambda lines: last(lines) == "np> half a li")
        client.type("\x03")
        self.assertEqual(client.wait(), 130)
        after = termios.tcgetattr(client.slave)
        self.assertEqual(after[3] & (termios.ICANON | termios.ECHO), before[3] & (termios.ICANON | termios.ECHO))

    def client_fd_probe(self):
        """A fresh pseudo-terminal's modes: what the client must leave behind."""
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        return slave


class UdpTerminalTest(TerminalTestCase):
    def test_a_datagram_arriving_while_a_line_is_half_typed_goes_above_it_escaped(self):
        hub = Hub()
        self.addCleanup(hub.close)
        client = self.client("--udp", "127.0.0.1", str(hub.port))
        client.shows(lambda lines: last(lines) == "np>")
        client.type("alice->server#login<alice123>\r")
        self.assertTrue(hub.answer_login().startswith("alice->server#login<alice123><127.0.0.1><"))
        client.shows(lambda lines: "server->alice#Success<abcdef>" in lines)
        client.type("alice->bob#half")
        client.shows(lambda lines: last(lines) == "np> alice->bob#half")
        hub.send("bob->alice#<abcdef><0000000001>hi \x1b[2J there")
        lines = client.shows(lambda lines: any(line.startswith("bob->alice#") for line in lines))
        self.assertIn(r"bob->alice#<abcdef><0000000001>hi \x1b[2J there", lines)
        self.assertEqual(last(lines), "np> alice->bob#half")
        client.type("\x15help\r")   # Ctrl-U: the half line away
        client.shows(lambda lines: any(line.strip().startswith("A->B#TEXT") for line in lines))


class UdpEscapingTest(unittest.TestCase):
    """Without a terminal too: what the hub forwards cannot drive the terminal."""

    def test_control_characters_from_the_hub_are_printed_escaped(self):
        hub = Hub()
        self.addCleanup(hub.close)
        proc = subprocess.Popen(CLIENT + ["--udp", "127.0.0.1", str(hub.port)], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdin.write(b"alice->server#login<alice123>\n")
        proc.stdin.flush()
        hub.answer_login()
        hub.send("bob->alice#<abcdef><0000000001>\x1b]0;owned\x07\x1b[2Jgone\u202e")
        receipt, _ = hub.sock.recvfrom(65535)     # sent after the line was printed
        self.assertTrue(receipt.startswith(b"alice->server#"), receipt)
        out, err = proc.communicate(timeout=10)   # closes stdin: the end of input
        self.assertEqual(out.decode(), "server->alice#Success<abcdef>\n"
                                       "bob->alice#<abcdef><0000000001>\\x1b]0;owned\\x07\\x1b[2Jgone\\u202e\n")
        self.assertEqual(proc.returncode, 0, err)


if __name__ == "__main__":
    unittest.main()
