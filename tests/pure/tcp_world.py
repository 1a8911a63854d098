"""A virtual world for the TCP client machine (lib/clients/tcp_machine.py):
timers on a virtual clock, the actions collected, the servers played by
the test. Used by test_tcp_machine.py and test_tcp_push.py."""
import json

from lib.clients import tcp_machine as tm
from lib.clients.tcp_events import (
    CancelTimer, Connect, Connected, Print, ReplyLine, Send, SetTimer, TimerFired, Typed)
from lib.clients.tcp_machine import ClientMachine

LOGIN = ("127.0.0.1", 8888)
APP, APP2 = ("127.0.0.1", 9001), ("127.0.0.1", 9002)
CANNOT_REACH = "Error: cannot reach the server at {}:{}".format
TIMER_ACTIONS = (SetTimer, CancelTimer)
# The client's timings (seconds), written out so that a change shows here.
REPLY_S, LAUNCH_S, CONNECT_S, LISTEN_S = 30, 300, 5, 2
RELOCATE_S, RELOCATE_TRIES = 0.25, 40        # a locate naming the dead server: again, for 10 s


LISTENING = {"status": 0, "message": "Listening"}


def login_reply(token="T1", app="127.0.0.1:9001", **extra):
    """A login server's login reply (issue 12: no broker, queue, topics)."""
    reply = {"status": 0, "token": token, "message": "Success!"}
    if app:
        reply["app_server"] = app
    reply.update(extra)
    return reply


class World:
    """A machine with virtual time: SetTimer/CancelTimer keep a timer table,
    `advance` fires what falls due, in order. Other actions are collected."""

    def __init__(self, linger=0.5, **options):
        self.m = ClientMachine(LOGIN, linger=linger, **options)
        self.now = 0.0
        self.timers = {}          # key -> due time
        self.actions = []

    def feed(self, event):
        actions = self.m.feed(event)
        for a in actions:
            if isinstance(a, SetTimer):
                self.timers[a.key] = self.now + a.delay
            elif isinstance(a, CancelTimer):
                self.timers.pop(a.key, None)
        # the invariant behind the states: a line is on its way exactly in these
        assert (self.m.exchange is not None) == (self.m.state in tm.ON_THE_WIRE), self.m.state
        assert (self.m.request is not None) == (self.m.state in tm.SERVING), self.m.state
        self.actions += actions
        return actions

    def advance(self, seconds):
        end = self.now + seconds
        while True:
            due = [(when, i, key) for i, (key, when) in enumerate(self.timers.items()) if when <= end]
            if not due:
                break
            when, _, key = min(due, key=lambda d: d[:2])
            self.now = when
            del self.timers[key]
            self.feed(TimerFired(key))
        self.now = end

    def take(self, *kinds):
        """The actions so far (of `kinds`, default: all but timers); clears them all."""
        if kinds:
            got = [a for a in self.actions if isinstance(a, kinds)]
        else:
            got = [a for a in self.actions if not isinstance(a, TIMER_ACTIONS)]
        self.actions = []
        return got

    def printed(self):
        lines = [line for a in self.actions if isinstance(a, Print) for line in a.lines]
        self.actions = [a for a in self.actions if not isinstance(a, Print)]
        return lines

    def sent(self):
        got = [(a.address, a.line) for a in self.actions if isinstance(a, Send)]
        self.actions = [a for a in self.actions if not isinstance(a, Send)]
        return got

    # -- the other side --------------------------------------------------------------------
    def type(self, *lines):
        for line in lines:
            self.feed(Typed(line))

    def reply(self, address, obj):
        raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        return self.feed(ReplyLine(address, raw))

    def push(self, address=APP, **fields):
        """A push line from an app server: a personal message to alice by default."""
        obj = {"push": "message", "id": "m1", "to": "alice", "from": "bob", "message": "hi"}
        obj.update(fields)
        return self.reply(address, obj)

    def login(self, user="alice", app=APP, **reply):
        """A whole login on an open (or opened) login connection, and its
        listen answered by the app server `app` (None: no app server named)."""
        self.type(f"login {user} pw")
        if Connect(LOGIN) in self.actions:
            self.feed(Connected(LOGIN))
        self.reply(LOGIN, login_reply(app=app and "%s:%d" % app, **reply))
        if app is not None:
            assert self.m.state is tm.LISTENING, self.m.state
            self.open_app(app)
            self.reply(app, LISTENING)
        self.take()

    def open_app(self, address=APP):
        """Complete a Connect to `address`, if one is pending (other actions stay)."""
        if Connect(address) in self.actions:
            self.actions.remove(Connect(address))
            self.feed(Connected(address))
