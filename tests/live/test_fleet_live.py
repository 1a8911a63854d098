"""The local fleet with real processes: packing, scale-out, idle scale-in,
limits, spares, dead app servers, and shutdown leaving nothing behind."""
import os
import signal
import subprocess
import threading
import time
import unittest

from tests.support import (PYTHON, ROOT, Conn, LoginServer, alive, holds_for, login, wait_for)


def register_all(port, users):
    c = Conn(port)
    for user in users:
        reply = c.request(f"register {user} pw-{user}")
        assert reply["status"] == 0, reply
    c.close()


class FleetTest(unittest.TestCase):
    def test_25_users_3_servers_then_0_after_idle(self):
        with LoginServer("--idle-timeout", "1") as server:
            users = [f"user{i}" for i in range(25)]
            register_all(server.port, users)
            c = Conn(server.port)
            replies = {u: c.request(f"login {u} pw-{u}") for u in users}
            self.assertTrue(all(r["status"] == 0 for r in replies.values()))
            self.assertEqual(len(server.app_pids()), 3)
            by_server = {}
            for u, r in replies.items():
                by_server.setdefault(r["app_server"], []).append(u)
            self.assertEqual(sorted(len(v) for v in by_server.values()), [5, 10, 10])
            # every app server really serves its users
            for u, r in replies.items():
                app = Conn(r["app_server"])
                self.assertEqual(app.request(f"list-friend {r['token']}"), {"status": 0, "friend": []})
                app.close()
            # logging in again: same token, same app server
            again = c.request("login user3 pw-user3")
            self.assertEqual((again["token"], again["app_server"]),
                             (replies["user3"]["token"], replies["user3"]["app_server"]))
            for u in users:
                self.assertEqual(c.request(f"logout {replies[u]['token']}")["message"], "Bye!")
            self.assertTrue(wait_for(lambda: not server.app_pids(), timeout=10),
                            "app servers still running after the idle timeout")
            # the fleet grows again on demand
            self.assertEqual(c.request("login user1 pw-user1")["status"], 0)
            self.assertEqual(len(server.app_pids()), 1)
            c.close()

    def test_fullest_server_with_room_gets_the_login(self):
        with LoginServer("--idle-timeout", "60") as server:
            users = [f"p{i}" for i in range(12)]
            register_all(server.port, users)
            c = Conn(server.port)
            r = {u: c.request(f"login {u} pw-{u}") for u in users}
            first, second = r["p0"]["app_server"], r["p10"]["app_server"]
            self.assertNotEqual(first, second)
            # free a slot on the first server; the next login fills it, not the emptier one
            c.request(f"logout {r['p3']['token']}")
            self.assertEqual(c.request("login p3 pw-p3")["app_server"], first)
            c.close()

    def test_max_app_servers_gives_a_clear_error(self):
        with LoginServer("--max-app-servers", "1", "--capacity", "2") as server:
            register_all(server.port, ["a", "b", "c"])
            self.assertEqual(login(server.port, "a", "pw-a")["status"], 0)
            self.assertEqual(login(server.port, "b", "pw-b")["status"], 0)
            third = login(server.port, "c", "pw-c")
            self.assertEqual(third, {"status": 1, "message":
                                     "No application server available: all 1 are full, try again later"})
            # a failed login leaves no session behind
            c = Conn(server.port)
            self.assertEqual(c.request("logout x"), {"status": 1, "message": "Not login yet"})
            c.close()
            self.assertEqual(len(server.app_pids()), 1)

    def test_spare_keeps_an_empty_server_warm(self):
        with LoginServer("--spare", "1", "--idle-timeout", "0.5") as server:
            self.assertTrue(wait_for(lambda: len(server.app_pids()) == 1, timeout=10))
            # A duration is the behaviour here: through three idle timeouts
            # (0.5 s each) the spare keeps running, all the time.
            self.assertTrue(holds_for(lambda: len(server.app_pids()) == 1, 1.5),
                            "the spare did not outlive the idle timeout")
            register_all(server.port, ["s1"])
            self.assertEqual(login(server.port, "s1", "pw-s1")["status"], 0)
            self.assertTrue(wait_for(lambda: len(server.app_pids()) == 2, timeout=10))

    def test_dead_app_server_users_move_without_an_error(self):
        with LoginServer("--idle-timeout", "60") as server:
            register_all(server.port, ["k1", "k2"])
            client = subprocess.Popen([PYTHON, os.path.join(ROOT, "client.py"), "127.0.0.1", str(server.port)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)

            def say(line):
                client.stdin.write(line.encode() + b"\n")
                client.stdin.flush()
                return client.stdout.readline().decode().rstrip("\n")

            self.assertEqual(say("login k1 pw-k1"), "Success!")
            self.assertEqual(say("login k2 pw-k2"), "Success!")
            self.assertEqual(say("invite k1 k2"), "Success!")
            (pid,) = server.app_pids()
            os.kill(pid, signal.SIGKILL)
            self.assertTrue(wait_for(lambda: server.app_pids() and pid not in server.app_pids(), timeout=10))
            self.assertEqual(say("list-invite k2"), "k1")
            self.assertEqual(say("accept-invite k2 k1"), "Success!")
            self.assertEqual(say("list-friend k1"), "k2")
            client.stdin.close()
            client.wait(10)
            client.stdout.close()

    def test_sigterm_and_sigint_stop_every_app_server(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            server = LoginServer("--spare", "2").start()
            try:
                self.assertTrue(wait_for(lambda: len(server.app_pids()) == 2, timeout=10))
                pids = server.app_pids()
                server.stop(sig)
                self.assertEqual(server.proc.returncode, 0)
                self.assertTrue(wait_for(lambda: not any(alive(p) for p in pids), timeout=5))
            finally:
                server.cleanup()

    def test_a_login_waiting_for_a_launch_blocks_nobody(self):
        with LoginServer() as server:
            register_all(server.port, ["w1"])
            waiting, other = Conn(server.port), Conn(server.port)
            login_reply, login_at = [], []

            def read_login():   # the login's reply, timed where it arrives
                try:
                    login_reply.append(waiting.read_reply())
                except Exception as e:   # checked in the main thread
                    login_reply.append(e)
                login_at.append(time.monotonic())

            reader = threading.Thread(target=read_login, daemon=True)
            reader.start()
            waiting.send_raw(b"login w1 pw-w1\n")       # needs a new app server
            # the loop has taken the login and started the app server it waits for
            self.assertTrue(wait_for(server.app_pids, timeout=10), "no app server launched")
            start = time.monotonic()
            self.assertEqual(other.request("list-group"), {"status": 1, "message": "Not login yet"})
            answered_other = time.monotonic()
            reader.join(30)
            self.assertEqual(len(login_at), 1, "no reply to the login")
            self.assertIsInstance(login_reply[0], dict, login_reply[0])
            self.assertEqual(login_reply[0]["status"], 0)
            answered_login = login_at[0]
            # the other client was answered while the login still waited for
            # its app server, and in a fraction of the time the launch took
            self.assertLess(answered_other, answered_login,
                            "the other client was answered only after the login")
            self.assertLess(answered_other - start, (answered_login - start) / 2,
                            f"other answered after {answered_other - start:.3f} s, "
                            f"login after {answered_login - start:.3f} s")
            waiting.close()
            other.close()

    def test_password_hashing_does_not_stall_the_loop(self):
        with LoginServer() as server:
            conns = [Conn(server.port) for _ in range(20)]
            for i, c in enumerate(conns):
                c.send_raw(f"register h{i} pw\n".encode())   # 20 x ~50 ms of scrypt
            probe = Conn(server.port)
            start = time.monotonic()
            self.assertEqual(probe.request("list-group"), {"status": 1, "message": "Not login yet"})
            probe_time = time.monotonic() - start
            for c in conns:
                self.assertEqual(c.read_reply()["status"], 0)
            all_time = time.monotonic() - start
            self.assertLess(probe_time, all_time / 2)
            for c in conns + [probe]:
                c.close()

    def test_kill_9_of_the_login_server_leaves_nothing_running(self):
        server = LoginServer("--spare", "2").start()
        try:
            self.assertTrue(wait_for(lambda: len(server.app_pids()) == 2, timeout=10))
            pids = server.kill9()
            self.assertTrue(wait_for(lambda: not any(alive(p) for p in pids), timeout=5))
        finally:
            server.cleanup()


if __name__ == "__main__":
    unittest.main()
