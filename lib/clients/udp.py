"""UDP hub client: its state machine and the reactor driver around it.

`Client` is bring-your-own-I/O: typed lines, received datagrams, timer
expiries, "port unreachable" and end of input go in; `Send` (to the
server), `Print`, `SetTimer`/`CancelTimer` actions come out. `main()` wires
it to stdin, one UDP socket and lib/loop/reactor.py. Run as
`./client --udp HOST PORT [--stay] [--timeout S] [--retries N]`; the exit
status says whether every request was answered (`--help`). At a terminal
the lines are typed in lib/clients/terminal.py's editor (client.py decides).
It shares the datagram codec (lib/hub/wire.py) and the action types
(lib/hub/actions.py) with the hub, and nothing of the hub's server side.
"""
import argparse
import collections
import enum
import logging
import signal
import socket
import sys
from dataclasses import dataclass

from lib.flags import ArgumentParser, number, port as port_number
from lib.hub import wire
from lib.hub.actions import CancelTimer, Send, SetTimer
from lib.hub.wire import SERVER
from lib.loop.reactor import Reactor
from lib.loop.timers import TimerTable, timer_handlers
from lib.loop.transports import LineReader
from lib.social.protocol import shown

log = logging.getLogger("udp_client")

TIMEOUT = 2.0        # seconds to wait for the server's answer
RETRIES = 3          # resends before giving up
SEEN_MAX = 4096      # forwarded MSGIDs remembered for duplicate suppression
ERR_NO_RESPONSE = "Error: no response from server"
ERR_REFUSED = "Error: no server at that address (port unreachable)"
# Exit statuses (also in `--help` and docs/udp-hub.md).
EXIT_OK, EXIT_OUTPUT, EXIT_ADDRESS, EXIT_NO_RESPONSE, EXIT_REFUSED = 0, 1, 2, 3, 4
# The typed forms (`help` at a terminal lists them; a wrong line names them).
FORMS = (("A->server#login<PASSWORD>", "log in as A"),
         ("A->B#TEXT", "send TEXT to B (logged in as A)"),
         ("A->server#logoff", "log A off"))
USAGE_HINT = f"Error: type {', '.join(form for form, _ in FORMS[:-1])} or {FORMS[-1][0]}"


@dataclass(frozen=True)
class Print:
    """Print `line` on stdout, on its own line."""
    line: str


class ClientState(enum.Enum):
    OFFLINE = "OFFLINE"
    LOGIN_SENT = "LOGIN_SENT"
    ONLINE = "ONLINE"
    MESSAGE_SENT = "MESSAGE_SENT"
    LOGOUT_SENT = "LOGOUT_SENT"


OFFLINE, LOGIN_SENT, ONLINE, MESSAGE_SENT, LOGOUT_SENT = ClientState
WAITING = (LOGIN_SENT, MESSAGE_SENT, LOGOUT_SENT)
# Where a request that got no answer falls back to.
FALLBACK = {LOGIN_SENT: OFFLINE, MESSAGE_SENT: ONLINE, LOGOUT_SENT: OFFLINE}
RETRY_KEY = ("retry",)


@dataclass
class Request:
    """The one request in flight."""
    text: str
    msgid: str = None
    sends: int = 1


def parse_typed(line):
    """A typed short form -> ("login", A, PASSWORD) | ("logoff", A) |
    ("message", A, B, TEXT) | None."""
    parts = wire.split_head(line)
    if parts is None:
        return None
    src, dst, body = parts
    if src == SERVER:
        return None
    if dst != SERVER:
        return ("message", src, dst, body)
    if body.startswith("login<") and body.endswith(">"):
        return ("login", src, body[len("login<"):-1])
    if body == "logoff":
        return ("logoff", src)
    return None


class Client:
    """The client diagram. `ip`/`port` are this client's receiving address,
    written into the login datagram."""

    def __init__(self, ip, port, timeout=TIMEOUT, retries=RETRIES, stay=False,
                 msgid_factory=wire.new_msgid):
        self.ip, self.port = ip, port
        self.timeout, self.retries, self.stay = timeout, retries, stay
        self.new_msgid = msgid_factory
        self.state = OFFLINE
        self.me = None          # the id of the login in progress or done
        self.token = None
        self.request = None     # Request in flight, in a WAITING state
        self.queue = collections.deque()   # lines typed while waiting
        self.seen = collections.OrderedDict()  # forwarded MSGIDs already shown
        self.eof = False
        self.status = EXIT_OK   # EXIT_NO_RESPONSE / EXIT_REFUSED once a request went unanswered

    @property
    def done(self):
        """True when the driver should exit: input over, nothing outstanding."""
        return self.eof and not self.stay and not self.queue and self.state not in WAITING

    # -- events ---------------------------------------------------------------------
    def typed(self, line):
        """A line from the user; queued while a request is outstanding."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return []
        if self.state in WAITING or self.queue:
            self.queue.append(line)
            return []
        return self._handle_line(line)

    def received(self, data):
        """A datagram from the server: printed verbatim (a forward once per
        MSGID), then it may move the diagram."""
        text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else data
        text = text[:-1] if text.endswith("\n") else text
        try:
            dgram = wire.parse(text)
        except wire.Malformed:
            return [Print(text)]
        if isinstance(dgram, wire.Message):
            return self._forwarded(dgram, text)
        handler = _ON_DATAGRAM.get((type(dgram), self.state))
        if handler is None or dgram.dst != self.me:
            return [Print(text)]  # stray or late: shown, no transition
        return [Print(text)] + handler(self, dgram)

    def timer(self, key):
        """The answer timer fired: resend, or give up after `retries` resends."""
        if self.request is None:
            return []
        if self.request.sends <= self.retries:
            self.request.sends += 1
            return [Send(self.request.text), SetTimer(RETRY_KEY, self.timeout)]
        return self._unanswered(ERR_NO_RESPONSE, EXIT_NO_RESPONSE)

    def refused(self):
        """The hub's port is unreachable (ICMP; ConnectionRefused on the
        socket): the request in flight fails now instead of after every resend."""
        if self.state not in WAITING:
            return [Print(ERR_REFUSED)]   # e.g. a receipt bounced: the hub is gone
        return [CancelTimer(RETRY_KEY)] + self._unanswered(ERR_REFUSED, EXIT_REFUSED)

    def end_of_input(self):
        """stdin is exhausted: finish the queue, then `done` turns true."""
        self.eof = True
        return []

    # -- typed lines, by (command, state) ------------------------------------------------
    def _handle_line(self, line):
        cmd = parse_typed(line)
        if cmd is None:
            return [Print(USAGE_HINT)]
        handler = _ON_TYPED.get((cmd[0], self.state))
        return handler(self, *cmd[1:])

    def _send_login(self, me, password):
        """OFFLINE + login -> LOGIN_SENT."""
        self.me = me
        return self._request(LOGIN_SENT, wire.Login(me, password, self.ip, self.port).text())

    def _send_message(self, src, dst, body):
        """ONLINE + message -> MESSAGE_SENT."""
        if src != self.me:
            return [Print(f"Error: logged in as {self.me}, not {src}")]
        msgid = self.new_msgid()
        return self._request(MESSAGE_SENT, wire.Message(src, dst, self.token, msgid, body).text(), msgid)

    def _send_logoff(self, src):
        """ONLINE + logoff -> LOGOUT_SENT."""
        if src != self.me:
            return [Print(f"Error: logged in as {self.me}, not {src}")]
        return self._request(LOGOUT_SENT, wire.Logoff(src, self.token).text())

    def _already_online(self, *_):
        return [Print(f"Error: already logged in as {self.me}")]

    def _not_online(self, *_):
        return [Print("Error: not logged in")]

    # -- datagrams, by (kind, state) -------------------------------------------------------
    def _logged_in(self, dgram):
        """LOGIN_SENT + Success<TOKEN> -> ONLINE."""
        self.token = dgram.token
        return self._answered(ONLINE)

    def _login_failed(self, dgram):
        """LOGIN_SENT + password error -> OFFLINE."""
        return self._answered(OFFLINE)

    def _replied(self, dgram):
        """MESSAGE_SENT + the server's answer -> ONLINE, or OFFLINE when the
        server no longer knows our token (expired or replaced)."""
        if dgram.msgid != self.request.msgid:
            return []  # answer to an older message
        if dgram.body in (wire.ERR_LOGIN_AGAIN, wire.ERR_TOKEN):
            return self._answered(OFFLINE)
        return self._answered(ONLINE)

    def _logged_off(self, dgram):
        """LOGOUT_SENT + Success<TOKEN> (or token error: the server has no
        session with our token either way) -> OFFLINE."""
        return self._answered(OFFLINE)

    def _forwarded(self, dgram, text):
        """A message from another client: show it once, receipt every copy."""
        actions = []
        key = (dgram.src, dgram.msgid)
        if key not in self.seen:
            actions.append(Print(text))
            self.seen[key] = None
            if len(self.seen) > SEEN_MAX:
                self.seen.popitem(last=False)
        receipt = wire.Receipt(dgram.dst, dgram.token, dgram.msgid, dgram.body)
        return actions + [Send(receipt.text())]

    # -- helpers ---------------------------------------------------------------------------
    def _request(self, state, text, msgid=None):
        if len(text.encode("utf-8")) > wire.MAX_DATAGRAM:
            return [Print("Error: message too long")]
        self.state = state
        self.request = Request(text, msgid)
        return [Send(text), SetTimer(RETRY_KEY, self.timeout)]

    def _answered(self, state):
        self.state = state
        self.request = None
        if state is OFFLINE:
            self.token = None
        return [CancelTimer(RETRY_KEY)] + self._drain()

    def _unanswered(self, error, status):
        """The request in flight gets no answer: fall back (LOGIN_SENT -> OFFLINE,
        MESSAGE_SENT -> ONLINE, LOGOUT_SENT -> OFFLINE) and go on with the queue."""
        self.request = None
        self.state = FALLBACK[self.state]
        if self.state is OFFLINE:
            self.token = None
        self.status = max(self.status, status)
        return [Print(error)] + self._drain()

    def _drain(self):
        """Back in OFFLINE/ONLINE: run queued lines until one is a request."""
        actions = []
        while self.queue and self.state not in WAITING:
            actions += self._handle_line(self.queue.popleft())
        return actions


_ON_TYPED = {
    ("login", OFFLINE): Client._send_login,
    ("login", ONLINE): Client._already_online,
    ("message", ONLINE): Client._send_message,
    ("message", OFFLINE): Client._not_online,
    ("logoff", ONLINE): Client._send_logoff,
    ("logoff", OFFLINE): Client._not_online,
}
_ON_DATAGRAM = {
    (wire.TokenAck, LOGIN_SENT): Client._logged_in,
    (wire.LoginFailed, LOGIN_SENT): Client._login_failed,
    (wire.Reply, MESSAGE_SENT): Client._replied,
    (wire.TokenAck, LOGOUT_SENT): Client._logged_off,
    (wire.LogoffFailed, LOGOUT_SENT): Client._logged_off,
}


# -- the reactor driver ------------------------------------------------------------------
class _Driver:
    """Moves bytes between stdin/stdout/the socket and a Client; fires its timers.
    `terminal` (terminal.factory()): the line editor, when stdin is a terminal."""

    def __init__(self, reactor, sock, client, terminal=None):
        self.reactor, self.sock, self.client = reactor, sock, client
        self.timers = TimerTable(reactor, self._fire)
        self.output_lost = False
        reactor.add_reader(sock, self._on_datagram)
        self.terminal = None
        if terminal is not None:
            self.terminal = terminal(reactor, self._typed, self._end_of_input)
        else:
            LineReader(reactor, 0, self._typed, self._end_of_input)

    def _typed(self, line):
        self._apply(self.client.typed(line))

    def _end_of_input(self):
        self._apply(self.client.end_of_input())

    def _on_datagram(self):
        for _ in range(64):
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:   # ICMP "port unreachable" for an earlier send
                self._apply(self.client.refused())
                continue
            except OSError as e:
                log.debug("recv failed: %s", e)  # other ICMP errors: the retry timer copes
                continue
            self._apply(self.client.received(data))

    def _fire(self, key):
        self._apply(self.client.timer(key))

    def _apply(self, actions):
        for action in actions:
            _DO[type(action)](self, action)
        if self.client.done:
            self.reactor.stop()

    @property
    def status(self):
        return EXIT_OUTPUT if self.output_lost else self.client.status

    def _send(self, action):
        try:
            self.sock.send(action.text.encode("utf-8"))
        except ConnectionRefusedError:   # reported late, for an earlier datagram
            self.reactor.call_soon(lambda: self._apply(self.client.refused()))
        except OSError as e:
            log.debug("send failed: %s", e)  # UDP: the retry timer covers it

    def _print(self, action):
        # What others sent is shown escaped: it cannot move the cursor or clear the screen.
        line = shown(action.line)
        try:
            if self.terminal is not None:
                self.terminal.write([line])
            else:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
        except (OSError, ValueError):     # BrokenPipe; EIO: the terminal is gone
            self.output_lost = True
            self.reactor.stop()


_DO = {Send: _Driver._send, Print: _Driver._print,
       **timer_handlers()}


# What each exit status means, for `--help` (here and in client.py's).
EXITS = {
    EXIT_OK: "every request was answered",
    EXIT_OUTPUT: "stdout was closed",
    EXIT_ADDRESS: "the hub's address cannot be used",
    EXIT_NO_RESPONSE: f"a request got no answer after every resend\n(printed: {ERR_NO_RESPONSE})",
    EXIT_REFUSED: f"the hub's port was unreachable: nothing listens there\n"
                  f"(printed at once: {ERR_REFUSED})",
}
EXIT_HELP = "\n".join(f"  {code}  " + text.replace("\n", "\n     ") for code, text in EXITS.items())


def add_options(group):
    """The UDP client's own options; client.py's parser holds them too (and
    refuses them without --udp). Returns their argparse actions."""
    return [
        group.add_argument("--stay", action="store_true",
                           help="keep receiving after the end of input (until Ctrl-C)"),
        group.add_argument("--timeout", type=number(float), default=TIMEOUT, metavar="S",
                           help=f"seconds to wait for an answer before resending (default {TIMEOUT:g})"),
        group.add_argument("--retries", type=number(int, zero_ok=True), default=RETRIES, metavar="N",
                           help=f"resends before giving up on a request (default {RETRIES})"),
    ]


def _parser():
    ap = ArgumentParser(
        prog="client --udp", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="UDP hub client. Type A->server#login<PASSWORD>, A->B#TEXT or\n"
                    "A->server#logoff; every datagram from the hub is printed.",
        epilog="exit status:\n" + EXIT_HELP)
    ap.add_argument("host", help="hub address, e.g. 127.0.0.1")
    ap.add_argument("port", type=port_number(any_ok=False), help="hub UDP port")
    add_options(ap)
    return ap


def main(argv: list[str]) -> int:
    """`client --udp HOST PORT [--stay] [--timeout S] [--retries N]`; argv is
    what follows `--udp`. Returns the exit status (EXIT_*). (`./client` parses
    its arguments in client.py and calls `run`.)"""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="udp_client %(levelname)s %(message)s")
    return run(args)


def run(args, terminal=None) -> int:
    """The client on parsed `args` (host, port, add_options' names);
    `terminal`: the line editor's factory, when stdin is a terminal."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        # connect() picks the local IP the hub will see (the login must carry
        # it) and makes the kernel drop datagrams from anyone but the hub.
        sock.connect(addr)
    except (OSError, OverflowError) as e:    # OverflowError: a port outside 0-65535
        print(f"Error: cannot reach {args.host}:{args.port}: {e}", file=sys.stderr)
        return EXIT_ADDRESS
    sock.setblocking(False)
    ip, port = sock.getsockname()[:2]
    reactor = Reactor()
    client = Client(ip, port, timeout=args.timeout, retries=args.retries, stay=args.stay)
    driver = _Driver(reactor, sock, client, terminal)
    for signum in (signal.SIGINT, signal.SIGTERM):
        reactor.add_signal_handler(signum, reactor.stop)
    try:
        reactor.run()
    finally:
        if driver.terminal is not None:
            driver.terminal.close()
        sock.close()
    return driver.status
