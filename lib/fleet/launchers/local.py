"""Application servers as local processes (the embedded default launcher).

Each app server is `python appserver.py` started with the login server's
internal address; its one-time join secret travels in the environment, not
in argv (argv is world-readable in /proc). Deaths are noticed at once through
a pidfd registered with the reactor, so no polling and no SIGCHLD handler.
The child also asks the kernel to SIGTERM it if we die (--die-with-parent),
so a `kill -9` of the login server leaves nothing running.
"""
import logging
import os
import signal
import subprocess
import sys

from lib import ROOT
from lib.loop.process import watch_exit

log = logging.getLogger("launcher.local")


class LocalLauncher:
    name = "local"

    def __init__(self, reactor, login_address, bind_host, broker=None, extra_args=(), env=None):
        self.reactor = reactor
        self.login_address = login_address       # (host, port) of the internal listener
        self.bind_host = bind_host
        self.broker = broker
        self.extra_args = list(extra_args)
        self.env = dict(env or {})                # e.g. the broker credentials: secrets stay out of argv
        self.procs = {}                           # server id -> Popen
        self._watches = {}                        # server id -> stop watching
        self.on_exit = None                       # callback(server_id, reason), set by the wiring

    def launch(self, server_id, secret):
        host, port = self.login_address
        cmd = [sys.executable, os.path.join(ROOT, "appserver.py"),
               "--login", f"{host}:{port}", "--host", self.bind_host, "--port", "0",
               "--id", server_id, "--die-with-parent"]
        if self.broker:
            cmd += ["--broker", self.broker]
        cmd += self.extra_args
        env = dict(os.environ, **self.env, NP_JOIN_SECRET=secret)
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, close_fds=True)
        self.procs[server_id] = proc
        self._watches[server_id] = watch_exit(self.reactor, proc.pid, lambda: self._exited(server_id))
        log.info("%s: pid %d", server_id, proc.pid)

    def _exited(self, server_id):
        proc = self.procs.pop(server_id, None)
        self._watches.pop(server_id, None)
        if proc is None:
            return
        code = proc.wait()
        if self.on_exit:
            self.on_exit(server_id, f"process {proc.pid} exited with {code}")

    def terminate(self, server_id):
        proc = self.procs.get(server_id)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    def close(self, timeout=3.0):
        """Stop every child and wait for them (login server shutdown)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stop in self._watches.values():
            stop()
        self.procs.clear()
        self._watches.clear()
