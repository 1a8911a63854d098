"""The client at a terminal: a prompt, line editing and history inside the reactor.

Python's `readline` module has no callback interface, so GNU readline's own
(`rl_callback_handler_install` / `rl_callback_read_char`) is called through
ctypes on the library that module loaded: the editor and the history are
the same, and stdin is read only when the selector says it is readable.
Lines printed while a line is half typed (`write`) go above the input line,
which readline then redraws with the text and cursor as they were.

Used only when stdin and stdout are both terminals (`available()`); a
client reading a file or a pipe never loads any of this, so its output is
the same bytes as before. `help` is answered here (from the command table),
so a script sending `help` to the server still gets the server's answer.
"""
import collections
import ctypes
import logging
import os
import select
import signal
import sys
from dataclasses import dataclass
from typing import Callable

from lib.social.protocol import COMMANDS

log = logging.getLogger("client")

PROMPT = "np> "
HISTORY_SIZE = 1000            # lines of history kept, in the session and the file (--history-size)
CHARS_PER_TURN = 4096          # keys handled per loop turn: a paste cannot starve the sockets
LOCAL_COMMANDS = (("help [COMMAND]", "this list, or one command's usage"),
                  ("exit", "end the session (so does Ctrl-D)"))

# readline's functions the editor needs; rl_clear_visible_line (readline >= 7)
# is optional: without it the last screen row is cleared by hand.
_NEEDED = ("rl_callback_handler_install", "rl_callback_read_char", "rl_callback_handler_remove",
           "rl_forced_update_display")
_LINE_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_CLEAR_ROW = "\r\x1b[K"


# -- what the editor knows of each mode: pure ----------------------------------------------
def _usage(name):
    return COMMANDS[name].usage.removeprefix("Usage: ")


def tcp_help(words):
    """`help` -> every command's form; `help COMMAND` -> its usage line."""
    if words:
        name = words[0]
        if name in COMMANDS:
            return [COMMANDS[name].usage]
        local = [f"{form}: {what}" for form, what in LOCAL_COMMANDS if form.split()[0] == name]
        return local or [f"Unknown command {name} (type help for the list)"]
    width = max(len(form) for form, _ in LOCAL_COMMANDS)
    return (["commands (help COMMAND for one; Tab completes, Up recalls):"]
            + [f"  {_usage(name)}" for name in COMMANDS]
            + [f"  {form:<{width}}  {what}" for form, what in LOCAL_COMMANDS])


def tcp_secret(line):
    """A line that carries a password (its command's usage names one): kept
    out of the history file."""
    words = line.split()
    command = COMMANDS.get(words[0]) if words else None
    return command is not None and "<password>" in command.usage


def udp_help(words):
    from lib.clients import udp
    return ["forms (every datagram from the hub is printed):"] + [
        f"  {form:<27} {what}" for form, what in udp.FORMS] + [
        f"  {form:<27} {what}" for form, what in LOCAL_COMMANDS]


def udp_secret(line):
    return "#login<" in line


@dataclass(frozen=True)
class Profile:
    """What the editor knows of one client mode."""
    help: Callable                # words after `help` -> lines
    secret: Callable              # line -> True when it must not reach the history file
    words: tuple                  # what Tab completes (first word)
    history_file: str             # default file


TCP = Profile(tcp_help, tcp_secret, tuple(COMMANDS) + ("help", "exit"), "~/.np_social_history")
UDP = Profile(udp_help, udp_secret, ("help", "exit"), "~/.np_social_udp_history")


# -- the history file: pure (a path in, a path out) ----------------------------------------
def load_history(path, size):
    """The last `size` lines of the history file ([] if there is none)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()[-size:] if size > 0 else []
    except OSError:
        return []


def save_history(path, new_lines, size, secret):
    """Append this session's lines (minus secrets) to what the file holds now
    (another session may have written it meanwhile), keep the last `size`,
    replace the file atomically, mode 0600."""
    lines = load_history(path, size) + [line for line in new_lines if not secret(line)]
    lines = lines[-size:] if size > 0 else []
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    except OSError as e:
        log.debug("history not saved to %s: %s", path, e)
        try:
            os.unlink(tmp)
        except OSError:
            pass


# -- readline through ctypes ------------------------------------------------------------------
def _readline():
    """(readline module, its C library) or None where GNU readline is missing."""
    try:
        import readline
        lib = ctypes.CDLL(readline.__file__)
        for name in _NEEDED:
            getattr(lib, name)
    except (ImportError, OSError, AttributeError):
        return None
    return readline, lib


def available(fd_in=0, fd_out=1):
    """True when the editor is used: stdin and stdout are terminals, readline is there."""
    try:
        ttys = os.isatty(fd_in) and os.isatty(fd_out)
    except OSError:
        return False
    return ttys and _readline() is not None


class _AboveStream:
    """A file-like object for logging: each line goes above the input line."""

    def __init__(self, terminal):
        self.terminal, self.buf = terminal, ""

    def write(self, text):
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        if lines:
            self.terminal.write(lines)

    def flush(self):
        pass


class Terminal:
    """The editor on `fd` (stdin): `on_line(str)` per line typed (local
    commands such as `help` answered here), `on_eof()` at Ctrl-D. `write`
    prints lines above the line being typed. `close()` restores the terminal
    and saves the history."""

    def __init__(self, reactor, on_line, on_eof, profile=TCP, history_file=None,
                 history_size=HISTORY_SIZE, prompt=PROMPT, fd=0, out=None):
        self.reactor, self.on_line, self.on_eof = reactor, on_line, on_eof
        self.profile, self.prompt, self.fd = profile, prompt, fd
        self.out = out or sys.stdout
        self.history_file = os.path.expanduser(history_file if history_file is not None
                                               else profile.history_file)
        self.history_size = history_size
        self.readline, self.lib = _readline()
        self.libc = ctypes.CDLL(None)
        self.libc.free.argtypes = [ctypes.c_void_p]
        self.active = False       # the handler is installed: the prompt is on screen
        self.typed = collections.deque(maxlen=history_size)   # this session's, for the file
        self._pending = []        # what readline handed over during one read_char
        self._handler = _LINE_HANDLER(self._line_done)   # kept: readline holds a pointer
        self._local = {"help": profile.help}
        self._log_streams = []
        self.start()

    def start(self):
        rl = self.readline
        rl.clear_history()
        if hasattr(self.lib, "stifle_history"):
            self.lib.stifle_history(self.history_size)   # bounded in memory too
        for line in load_history(self.history_file, self.history_size):
            rl.add_history(line)
        rl.set_auto_history(False)
        rl.set_completer(self._complete)
        rl.parse_and_bind("tab: complete")
        self.lib.rl_callback_handler_install(self.prompt.encode("utf-8"), self._handler)
        self.active = True
        self.reactor.add_reader(self.fd, self._readable)
        self.reactor.add_signal_handler(signal.SIGWINCH, self._resized)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.stdout):
                self._log_streams.append((handler, handler.setStream(_AboveStream(self))))

    # -- input ---------------------------------------------------------------------------------
    def _line_done(self, ptr):
        """readline's line handler (C calls it inside rl_callback_read_char):
        only store the line. It goes into the history here, before readline
        resets its history position for the next line."""
        if not ptr:
            self._pending.append(None)
            return
        line = ctypes.string_at(ptr).decode("utf-8", "replace")
        self.libc.free(ptr)
        self._pending.append(line)
        if line.strip() and (not self.typed or self.typed[-1] != line):
            self.readline.add_history(line)
            self.typed.append(line)

    def _readable(self):
        for _ in range(CHARS_PER_TURN):
            self.lib.rl_callback_read_char()
            if self._pending or not select.select([self.fd], [], [], 0)[0]:
                break
        pending, self._pending = self._pending, []
        for line in pending:
            if line is None:
                self._end_of_input()
                return
            words = line.split()
            local = self._local.get(words[0]) if words else None
            if local is not None:
                self.write(local(words[1:]))
            else:
                self.on_line(line)

    def _end_of_input(self):
        self._remove()
        self._emit("\n")
        self.on_eof()

    def _complete(self, text, state):
        if self.readline.get_begidx() != 0:
            return None           # only the command word
        matches = [w + " " for w in self.profile.words if w.startswith(text)]
        return matches[state] if state < len(matches) else None

    def _resized(self):
        if self.active and hasattr(self.lib, "rl_resize_terminal"):
            self.lib.rl_resize_terminal()

    # -- output --------------------------------------------------------------------------------
    def write(self, lines):
        """Print `lines` above the input line, then redraw the prompt and the
        half-typed text (cursor where it was). Raises OSError (BrokenPipe,
        EIO: the terminal is gone) as a plain write would."""
        text = "".join(line + "\n" for line in lines)
        if not self.active:
            self._emit(text)
            return
        if hasattr(self.lib, "rl_clear_visible_line"):
            self.lib.rl_clear_visible_line()   # every row the prompt and the text take
            self.libc.fflush(None)             # readline writes through C stdio
            self._emit(text)
        else:
            self._emit(_CLEAR_ROW + text)
        self.lib.rl_forced_update_display()
        self.libc.fflush(None)

    def _emit(self, text):
        self.out.write(text)
        self.out.flush()

    # -- the end -------------------------------------------------------------------------------
    def _remove(self):
        if self.active:
            self.active = False
            self.lib.rl_callback_handler_remove()   # the terminal back to how it was
            self.reactor.remove_reader(self.fd)

    def close(self):
        """Clear the prompt line, give the terminal back, save the history."""
        if self.active:
            try:
                if hasattr(self.lib, "rl_clear_visible_line"):
                    self.lib.rl_clear_visible_line()
                    self.libc.fflush(None)
                else:
                    self._emit(_CLEAR_ROW)
            except OSError:
                pass
        self._remove()
        for handler, old in self._log_streams:
            handler.setStream(old)
        self._log_streams = []
        if self.history_file and self.typed:
            save_history(self.history_file, list(self.typed), self.history_size, self.profile.secret)
            self.typed.clear()


def factory(profile, history_file=None, history_size=HISTORY_SIZE):
    """-> make(reactor, on_line, on_eof) -> Terminal: what a driver is given
    when its stdin is a terminal. An empty `history_file` keeps no file."""
    def make(reactor, on_line, on_eof):
        return Terminal(reactor, on_line, on_eof, profile, history_file, history_size)
    return make
