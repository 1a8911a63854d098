"""Helpers for the live tests: real processes, real sockets on 127.0.0.1.

Environment:
  NP_TEST_BROKER=HOST:PORT   the broker the servers use; NP_BROKER_USER and
                             NP_BROKER_PASSWORD its credentials. tests/run.py sets
                             all three to the run's own broker (tests/broker_instance.py),
                             which every server it spawns inherits; the machine's
                             broker is never used
  NP_COURSE_TESTS=DIR        the course's demo files (default ../shared/course/tests,
                             beside the repository); tests that need them skip
                             when the directory is absent
"""
import functools
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
COURSE = os.environ.get("NP_COURSE_TESTS") or \
    os.path.join(os.path.dirname(ROOT), "shared", "course", "tests")
BROKER = os.environ.get("NP_TEST_BROKER", "127.0.0.1:61613")


def own_broker():
    """The run's own broker (tests/broker_instance.TestBroker: stop(),
    start(), restart()), or None when tests/run.py did not start one."""
    from tests import broker_instance
    return broker_instance.current()


def disturbs_broker(test):
    """Marks a test that stops or restarts the broker: always the run's own
    (own_broker()), never the machine's. Skipped when there is none (a test
    module run without tests/run.py)."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        broker = own_broker()
        if broker is None or broker.address != BROKER:
            raise unittest.SkipTest("stops or restarts the broker: needs the run's own broker "
                                    "(run it through ./run-tests)")
        return test(*args, **kwargs)
    run.disturbs_broker = True
    return run


def needs_course_files(test):
    """Marks a test (or class) that reads the course's demo files from
    COURSE; skipped with the reason when they are absent (a fresh clone
    has nothing beside it)."""
    return unittest.skipUnless(os.path.isdir(COURSE), f"the course's demo files are not at {COURSE} "
                               "(they live beside the repository, in ../shared; "
                               "set NP_COURSE_TESTS=DIR to use another copy)")(test)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=10.0, interval=0.05):
    """Poll `predicate` until it is true or `timeout` passes; its last value.
    The way to wait for a condition: no fixed sleep in a test does that."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def holds_for(predicate, seconds, interval=0.05):
    """Is `predicate` true throughout the next `seconds` (checked every
    `interval`)? For behaviour that is a duration ("stays silent for N s",
    "the spare outlives the idle timeout"): False as soon as it is not."""
    until = time.monotonic() + seconds
    while True:
        if not predicate():
            return False
        if time.monotonic() >= until:
            return True
        time.sleep(min(interval, max(0.0, until - time.monotonic())))


def accepts(port, host="127.0.0.1"):
    """Does something accept TCP connections on host:port?"""
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_port(port, timeout=20.0, host="127.0.0.1"):
    if not wait_for(lambda: accepts(port, host), timeout):
        raise TimeoutError(f"nothing listens on {host}:{port}")


def children(pid):
    """PIDs of the live children of `pid` (from /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []
    return [p for p in pids if alive(p)]


def alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False


class LoginServer:
    """`server.py` as a real process with its own data dir and port."""

    def __init__(self, *extra, data=None, port=None, broker=BROKER):
        self.port = port or free_port()
        self.own_data = data is None
        self.data = data or tempfile.mkdtemp(prefix="np-test-")
        self.extra = list(extra)
        self.broker = broker
        self.proc = None
        self.log_path = os.path.join(self.data, "server.log")

    def start(self):
        self.log = open(self.log_path, "ab")
        cmd = [PYTHON, os.path.join(ROOT, "server.py"), "127.0.0.1", str(self.port),
               "--data", self.data, "--broker", self.broker] + self.extra
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, cwd=ROOT)
        wait_port(self.port)
        return self

    def app_pids(self):
        return children(self.proc.pid)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc:
            stop_process(self.proc, sig, timeout)
            self.log.close()

    def kill9(self):
        pids = self.app_pids()
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        return pids

    def cleanup(self):
        self.stop()
        if self.own_data:
            shutil.rmtree(self.data, ignore_errors=True)

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


class Conn:
    """A persistent protocol connection: one line out, one JSON reply in."""

    def __init__(self, port, host="127.0.0.1", timeout=30.0):
        if isinstance(port, str):
            host, _, port = port.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def send_raw(self, data):
        self.sock.sendall(data)

    def read_reply(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by server")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, line):
        self.send_raw(line.encode("utf-8") + b"\n")
        return self.read_reply()

    def close(self):
        self.sock.close()


def login(port, user, password):
    """Log in over a fresh connection; returns the reply."""
    c = Conn(port)
    try:
        return c.request(f"login {user} {password}")
    finally:
        c.close()


def login_many(port, users, threads=8, timeout=120):
    """Log every user in (password = users[name]) over `threads` parallel
    connections (the server checks passwords on its worker pool);
    {name: reply}. Raises if any login fails."""
    names = list(users)
    replies, errors = {}, []

    def work(chunk):
        try:
            c = Conn(port, timeout=timeout)
            for name in chunk:
                replies[name] = c.request(f"login {name} {users[name]}")
            c.close()
        except Exception as e:   # re-raised in the calling thread
            errors.append(e)

    ts = [threading.Thread(target=work, args=(names[i::threads],)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
    if errors:
        raise errors[0]
    bad = {n: r for n, r in replies.items() if r.get("status") != 0}
    if bad:
        raise RuntimeError(f"logins failed: {list(bad.items())[:3]}")
    return replies


def stop_process(proc, sig=signal.SIGTERM, timeout=10):
    """Signal `proc` (unless `sig` is None: it is exiting by itself) and wait;
    SIGKILL if it has not exited after `timeout` s."""
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_client(port, text, timeout=120, linger=None):
    """Run ./client as a real process with `text` on stdin; returns stdout."""
    cmd = [PYTHON, os.path.join(ROOT, "client.py"), "127.0.0.1", str(port)]
    if linger is not None:
        cmd += ["--linger", str(linger)]
    proc = subprocess.run(cmd, input=text.encode("utf-8"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"client exited {proc.returncode}: {proc.stderr.decode()}")
    return proc.stdout.decode("utf-8")


def without_chat(output):
    return "".join(line for line in output.splitlines(True) if not line.startswith("<<<"))


def broker_up():
    host, _, port = BROKER.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


class InteractiveClient:
    """A ./client process driven line by line; chat lines (<<<...>>>) kept
    apart, and `lines`: everything it printed, in order (what came after a
    reply)."""

    def __init__(self, port):
        self.proc = subprocess.Popen([PYTHON, os.path.join(ROOT, "client.py"), "127.0.0.1", str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd=ROOT)
        self.replies, self.chat, self.lines = queue.Queue(), [], []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            (self.chat.append if line.startswith("<<<") else self.replies.put)(line)

    def say(self, line, timeout=60):
        """Type a line; the next reply line (chat lines excluded)."""
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.replies.get(timeout=timeout)

    def close(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        stop_process(self.proc, sig=None, timeout=15)   # end of input makes it exit
        self.proc.stdout.close()
