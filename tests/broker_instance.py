"""The tests' own ActiveMQ: a child java process of the test runner.

The suite never touches the machine's broker (Debian's instance `main`, which
a running deployment may use). tests/run.py starts one TestBroker for a run
that includes live tests, before the test modules are imported, and exports
into os.environ, so every server the tests spawn uses it:

    NP_TEST_BROKER=127.0.0.1:PORT   (tests.support.BROKER)
    NP_BROKER_USER, NP_BROKER_PASSWORD   generated for this run

It runs java as /usr/bin/activemq does (the Debian package's jar and
libraries), with the configuration `scripts/activemq.sh render` writes for the
machine's broker (STOMP only, login required), in a temporary directory:
conf/, data/ (kahaDB, kept across restart()), tmp/, broker.log. It listens on
a free loopback port below the ephemeral range (so no outgoing connection
takes it between a stop and a start), dies with the runner (PR_SET_PDEATHSIG)
and is stopped, its directory removed, at the end of the run. Tests marked
@disturbs_broker stop and restart it through current().
"""
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from lib import ROOT
from lib.loop.process import die_with_parent
from lib.messaging import credentials
from lib.messaging.setup import stomp_connect

HOME = "/usr/share/activemq"
JAR = os.path.join(HOME, "bin", "activemq.jar")
SCRIPT = os.path.join(ROOT, "scripts", "activemq.sh")
HOST = "127.0.0.1"
HEAP = "512M"                 # as the machine's broker (scripts/activemq.sh options)
START_TIMEOUT = 60.0          # s until the broker takes a login
STOP_TIMEOUT = 15.0           # s of SIGTERM grace before SIGKILL
PREFIX = "np-test-broker-"    # + runner pid + random: stale ones are removed
# What /usr/bin/activemq passes to Java > 8 so the broker may reflect on the JDK.
JAVA_MODULE_FLAGS = [
    "--add-reads=java.xml=java.logging",
    "--add-opens", "java.base/java.security=ALL-UNNAMED",
    "--add-opens", "java.base/java.net=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "--add-opens", "java.naming/javax.naming.spi=ALL-UNNAMED",
    "--add-opens", "java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.www.protocol.http=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.www.protocol.https=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.www.protocol.jar=ALL-UNNAMED",
    "--add-exports=jdk.xml.dom/org.w3c.dom.html=ALL-UNNAMED",
    "--add-exports=jdk.naming.rmi/com.sun.jndi.url.rmi=ALL-UNNAMED",
]


class BrokerError(Exception):
    """The test broker could not be set up or started (one line, plus the log's tail)."""


def ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(rng=random):
    """A loopback port nobody listens on, below the ephemeral range."""
    top = min(ephemeral_low(), 65536) - 1
    for _ in range(200):
        port = rng.randint(20000, top)
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise BrokerError("no free port in 20000-%d" % top)


def remove_stale_dirs(tmp=None):
    """Directories of test brokers whose runner is gone (killed with -9)."""
    tmp = tmp or tempfile.gettempdir()
    for name in os.listdir(tmp):
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


class TestBroker:
    """One ActiveMQ process with its own port, credentials and data."""

    def __init__(self, port=None, creds=None, java=None):
        self.port = port or free_port()
        self.creds = creds or credentials.generate()
        self.java = java or shutil.which("java")
        self.base = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
        self.conf = os.path.join(self.base, "conf")
        self.log_path = os.path.join(self.base, "broker.log")
        self.proc = None
        self.rendered = False
        self.ready_seconds = None      # of the last start

    @property
    def address(self):
        return f"{HOST}:{self.port}"

    def env(self):
        """What the servers and tests of this run need to reach it."""
        return {"NP_TEST_BROKER": self.address, **credentials.env(self.creds)}

    def render(self):
        """The machine's configuration, for this port and user (no root needed)."""
        if not os.path.isfile(JAR):
            raise BrokerError(f"{JAR} is missing: install the activemq package "
                              "(sudo scripts/activemq.sh install)")
        if not self.java:
            raise BrokerError("no java on PATH (the activemq package depends on one)")
        env = dict(os.environ, NP_BROKER_BIND=HOST, NP_BROKER_PORT=str(self.port),
                   **credentials.env(self.creds))
        env.pop("NP_BROKER_INSTANCE", None)
        proc = subprocess.run([SCRIPT, "render", self.conf], env=env, capture_output=True,
                              text=True, timeout=30)
        if proc.returncode != 0:
            raise BrokerError(f"scripts/activemq.sh render failed: {proc.stderr.strip()}")
        for sub in ("data", "tmp"):
            os.makedirs(os.path.join(self.base, sub), exist_ok=True)
        self.rendered = True

    def command(self):
        return [self.java, "-Xms64M", f"-Xmx{HEAP}",
                "-Dorg.apache.activemq.UseDedicatedTaskRunner=true",
                f"-Djava.io.tmpdir={self.base}/tmp", "-Djava.awt.headless=true",
                f"-Djava.security.auth.login.config={self.conf}/login.config",
                *JAVA_MODULE_FLAGS,
                f"-Dactivemq.classpath={self.conf}", f"-Dactivemq.home={HOME}",
                f"-Dactivemq.base={self.base}", f"-Dactivemq.conf={self.conf}",
                f"-Dactivemq.data={self.base}/data",
                "-jar", JAR, "start", f"xbean:file:{self.conf}/activemq.xml"]

    def start(self, wait=True):
        """Start java (from the main thread: PR_SET_PDEATHSIG follows the
        thread that forked); with `wait`, return once it takes our login."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("start the test broker from the main thread")
        if self.running():
            raise RuntimeError(f"test broker already running (pid {self.proc.pid})")
        if not self.rendered:
            self.render()
        parent = os.getpid()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.base,
                start_new_session=True,    # the terminal's Ctrl-C is the runner's to handle
                preexec_fn=lambda: die_with_parent(signal.SIGTERM, parent) or os._exit(1))
        self._started = time.monotonic()
        if wait:
            self.wait_ready()
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def login(self, timeout=1.0):
        """The first line of the broker's answer to our CONNECT, or the error."""
        try:
            return stomp_connect(HOST, self.port, self.creds, timeout)[0]
        except OSError as e:
            return e.strerror or str(e)

    def wait_ready(self, timeout=START_TIMEOUT):
        until = time.monotonic() + timeout
        while True:
            if not self.running():
                raise BrokerError(f"test broker exited with {self.proc.returncode} during start-up"
                                  f"; {self.log_path}:\n{self.log_tail()}")
            answer = self.login()
            if answer == "CONNECTED":
                self.ready_seconds = time.monotonic() - self._started
                return self.ready_seconds
            if answer == "ERROR":
                raise BrokerError(f"test broker refused its own login; {self.log_path}:\n"
                                  f"{self.log_tail()}")
            if time.monotonic() > until:
                self.stop()
                raise BrokerError(f"test broker took no login within {timeout:g} s ({answer})"
                                  f"; {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM (the broker closes its store cleanly), SIGKILL after `timeout`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self):
        """Stop, then start on the same port with the same data (persistent
        messages survive, as on the machine's broker)."""
        self.stop()
        self.start()

    def close(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


_current = None


def current():
    """The broker tests/run.py started for this run, or None (a test module
    run some other way)."""
    return _current


def start_for_run():
    """Start this run's broker (not waiting for it) and export its address
    and credentials into os.environ; call before the test modules load."""
    global _current
    remove_stale_dirs()
    broker = TestBroker()
    os.environ.update(broker.env())
    try:
        broker.start(wait=False)
    except BaseException:
        broker.close()
        raise
    _current = broker
    return broker


def stop_for_run():
    global _current
    if _current is not None:
        _current.close()
        _current = None
