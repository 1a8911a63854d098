"""The broker side of a login server's start: its credentials and the local broker.

server.py calls prepare() once its arguments are checked and its data
directory is open (so a usage error never waits for an install):
1. credentials: NP_BROKER_USER / NP_BROKER_PASSWORD, else
   DATA/broker.credentials (created on first start);
2. without --broker, the local broker: `scripts/activemq.sh ensure` installs,
   configures (login required, STOMP only) and starts it, and adds the user
   (~10 ms when all is in place).
A failed set-up is one warning line: the server still serves every command
but send and send-group (lib/messaging/probe.py says whether the broker
answers at all). Bad credentials (a malformed or world-readable file, one of
the two variables missing) stop the start: CredentialsError, one line.
stomp_connect() is a STOMP login in a few lines, for checks that need one
(the tests' own broker waits for it).
"""
import logging
import os
import socket
import subprocess

from lib import ROOT
from lib.messaging import credentials as creds_mod
from lib.messaging.credentials import CredentialsError  # noqa: F401  (re-exported for server.py)

DEFAULT_BROKER = "127.0.0.1:61613"
SCRIPT = os.path.join(ROOT, "scripts", "activemq.sh")
ENSURE_TIMEOUT = 900.0     # s: a first install downloads and unpacks ~100 MB
PROBE_TIMEOUT = 3.0        # s: TCP connect + CONNECTED of stomp_connect()
CONSEQUENCE = "send and send-group will fail until the broker is ready"

log = logging.getLogger("broker")


def load_credentials(data_dir, environ):
    """-> (Credentials, where they came from: None for the environment, else
    the file's absolute path)."""
    creds = creds_mod.from_env(environ)
    if creds is not None:
        return creds, None
    path = os.path.abspath(os.path.join(data_dir, creds_mod.FILE_NAME))
    existed = os.path.lexists(path)
    creds = creds_mod.load_or_create(path)
    if not existed:
        log.info("created %s (broker user %s)", path, creds.user)
    return creds, path


def ensure(creds, source_file, environ, run=subprocess.run):
    """Run `scripts/activemq.sh ensure` with the credentials in its
    environment (its progress lines go to our stderr). None, or what failed."""
    child_env = dict(environ, **creds_mod.env(creds))
    if source_file:
        child_env["NP_BROKER_CREDENTIALS_FILE"] = source_file   # for its sudo hint
    try:
        proc = run([SCRIPT, "ensure"], env=child_env, stdin=subprocess.DEVNULL,
                   timeout=ENSURE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"scripts/activemq.sh ensure took over {ENSURE_TIMEOUT:g} s"
    except OSError as e:
        return f"cannot run {SCRIPT}: {e.strerror}"
    if proc.returncode != 0:
        return f"scripts/activemq.sh ensure failed (exit {proc.returncode}, reason above)"
    return None


def stomp_connect(host, port, creds, timeout=PROBE_TIMEOUT):
    """One STOMP 1.2 CONNECT (with the login when `creds`); the first line
    of the broker's answer ("CONNECTED", "ERROR", or "" when it closed) and
    the ERROR frame's message header. OSError when nothing answers."""
    frame = "CONNECT\naccept-version:1.2\nhost:localhost\n"
    if creds is not None:
        frame += f"login:{creds.user}\npasscode:{creds.password}\n"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(frame.encode("ascii") + b"\n\x00")
        data = b""
        while b"\x00" not in data and len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, _ = data.partition(b"\n\n")
        lines = head.decode("utf-8", "replace").lstrip("\n").split("\n")
        if lines[0] == "CONNECTED":
            try:
                sock.sendall(b"DISCONNECT\n\n\x00")
            except OSError:
                pass
        message = next((line[8:] for line in lines[1:] if line.startswith("message:")), "")
        return lines[0], message


def prepare(data_dir, local, environ=None, run=subprocess.run):
    """The server's broker credentials; with `local` (no --broker given) the
    machine's broker is set up for them first. Raises CredentialsError; a
    failed set-up is one warning line (the server still serves)."""
    environ = os.environ if environ is None else environ
    creds, source_file = load_credentials(data_dir, environ)
    problem = ensure(creds, source_file, environ, run) if local else None
    if problem:
        log.warning("%s; %s", problem, CONSEQUENCE)
    return creds
