"""A real disk error in a real login server: the write that failed is never
acknowledged, the server stops with a message naming the file and the
error, and every write that was acknowledged is there after a restart.

The error is injected with RLIMIT_FSIZE, so the kernel refuses the journal
write with EFBIG (Python ignores SIGXFSZ), as a full disk refuses with ENOSPC.
"""
import os
import resource
import subprocess
import unittest

from lib.social.store import Store
from tests import support

LIMIT = 256 * 1024      # bytes any file of the server may grow to
POST = "p" * 8000       # ~8 KB of journal per post: the limit is hit after ~30


class LimitedServer(support.LoginServer):
    def start(self):
        self.log = open(self.log_path, "ab")
        cmd = [support.PYTHON, os.path.join(support.ROOT, "server.py"), "127.0.0.1",
               str(self.port), "--data", self.data, "--broker", self.broker,
               "--max-post-length", str(len(POST) + 10)]    # the posts below are over the default quota
        limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))  # noqa: E731
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, cwd=support.ROOT,
                                     preexec_fn=limit)
        support.wait_port(self.port)
        return self


class WriteFailureLiveTest(unittest.TestCase):
    def test_a_refused_write_stops_the_server_and_is_never_acknowledged(self):
        server = LimitedServer(data=None)
        # The log lives beside, not in, the data directory checked below.
        server.log_path = server.data + ".log"
        self.addCleanup(lambda: os.path.exists(server.log_path) and os.unlink(server.log_path))
        self.addCleanup(server.cleanup)
        server.start()
        c = support.Conn(server.port)
        self.assertEqual(c.request("register alice pw")["status"], 0)
        reply = c.request("login alice pw")
        token = reply["token"]
        app = support.Conn(reply["app_server"])
        acknowledged, last = [], None
        for i in range(200):                    # bounded: the limit is hit after ~30
            message = f"{i} {POST}"
            try:
                last = app.request(f"post {token} {message}")
            except (ConnectionError, OSError) as e:
                last = e
                break
            if last.get("status") != 0:
                break
            acknowledged.append(message)
        self.assertTrue(acknowledged, "no post was accepted before the limit")
        self.assertLess(len(acknowledged), 200, "the injected error never happened")
        self.assertFalse(isinstance(last, dict) and last.get("status") == 0)

        self.assertEqual(server.proc.wait(timeout=20), 3)
        log = server.read_log()
        self.assertIn("cannot write " + os.path.join(server.data, "journal.log"), log)
        self.assertIn("File too large", log)
        self.assertTrue(support.wait_for(lambda: not support.children(server.proc.pid), 10))

        # Without the limit, everything acknowledged is there; nothing else is.
        store = Store(server.data).open()
        try:
            self.assertEqual(store.state.users["alice"].posts, acknowledged)
        finally:
            store.close()
        c.close()
        app.close()


if __name__ == "__main__":
    unittest.main()
