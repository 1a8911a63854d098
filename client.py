#!/usr/bin/env python3
"""np-social client: `./client [--udp] [options] HOST PORT` (`./client --help`).

One parser for both modes (options in any order), logging (quiet unless
-v), the line editor when stdin and stdout are a terminal, then the TCP
client (lib/clients/tcp.py) or the UDP hub client (lib/clients/udp.py).
"""
import argparse
import logging
import sys

from lib import flags
from lib.clients import tcp, terminal, udp
from lib.social.protocol import COMMANDS

EXIT_INTERRUPTED = 130


def _exits():
    """One table of both modes' exit statuses (the same text once)."""
    rows = {flags.USAGE: ["usage: bad arguments, e.g. a port outside 1-65535"]}
    for code in sorted({*tcp.EXITS, *udp.EXITS}):
        texts = rows.setdefault(code, [])
        tcp_text, udp_text = tcp.EXITS.get(code), udp.EXITS.get(code)
        if tcp_text == udp_text:
            texts.append(tcp_text)
            continue
        texts += [f"TCP: {tcp_text}"] if tcp_text else []
        texts += [f"--udp: {udp_text}"] if udp_text else []
    rows[EXIT_INTERRUPTED] = ["TCP: interrupted (Ctrl-C); --udp ends on Ctrl-C or SIGTERM as at\n"
                              "the end of input, with one of the statuses above"]
    return "\n".join(f"  {code:<4} " + "\n       ".join(text.replace("\n", "\n         ") for text in texts)
                     for code, texts in sorted(rows.items()))


def _epilog():
    commands = "\n".join(f"  {c.usage.removeprefix('Usage: ')}" for c in COMMANDS.values())
    forms = "\n".join(f"  {form:<27} {what}" for form, what in udp.FORMS)
    return f"""modes:
  ./client HOST PORT          the TCP social service: HOST PORT is the login server (./server)
  ./client --udp HOST PORT    the UDP hub (./udp_hub.py)
  Commands are read from stdin, one a line: ./client HOST PORT < testcase > output.
  When stdin and stdout are a terminal: a prompt, line editing, history (Up),
  Tab completion, `help` and `help COMMAND`, and messages printed above the
  line being typed; Ctrl-D or `exit` ends the session.

commands (TCP):
{commands}
  exit
  Accounts of the TCP service live in the server's data directory (./server
  --data): `register` one first. The repository's users.txt holds the UDP hub's.

lines (--udp):
{forms}

exit status:
{_exits()}"""


def parser():
    """-> (the parser, {udp?: the actions of that mode's own options})."""
    ap = flags.ArgumentParser(
        prog="client", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="np-social client: the TCP social service, or with --udp the UDP hub.",
        epilog=_epilog())
    ap.add_argument("host", help="the login server's address (with --udp: the hub's), e.g. 127.0.0.1")
    ap.add_argument("port", type=flags.port(any_ok=False), help="its port, 1-65535")
    ap.add_argument("--udp", action="store_true", help="talk to the UDP hub instead of the TCP service")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="log what the client does on stderr (otherwise only errors)")
    term = ap.add_argument_group("at a terminal")
    term.add_argument("--history-file", metavar="PATH", default=None,
                      help=f"lines typed, kept between sessions; lines with a password are not "
                           f"(default {terminal.TCP.history_file}, with --udp "
                           f"{terminal.UDP.history_file}; '' for none)")
    term.add_argument("--history-size", type=flags.number(int, zero_ok=True),
                      default=terminal.HISTORY_SIZE, metavar="N",
                      help=f"lines of history kept, in the session and in the file "
                           f"(default {terminal.HISTORY_SIZE})")
    modes = {False: tcp.add_options(ap.add_argument_group("TCP client")),
             True: udp.add_options(ap.add_argument_group("UDP hub client (--udp)"))}
    return ap, modes


def parse(argv):
    """argv -> args; an option of the other mode is a usage error (exit 2)."""
    ap, modes = parser()
    defaults = {}
    for actions in modes.values():
        for action in actions:    # absent unless given: then we can tell
            defaults[action.dest], action.default = action.default, argparse.SUPPRESS
    args = ap.parse_args(argv)
    wrong = [a.option_strings[-1] for a in modes[not args.udp] if hasattr(args, a.dest)]
    if wrong:
        ap.error(f"{', '.join(wrong)}: an option of the {'TCP' if args.udp else 'UDP (--udp)'} client")
    for dest, value in defaults.items():
        if not hasattr(args, dest):
            setattr(args, dest, value)
    return args


def main(argv):
    args = parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.ERROR, stream=sys.stderr,
                        format="%(asctime)s client %(levelname)s %(message)s")
    profile, mode = (terminal.UDP, udp) if args.udp else (terminal.TCP, tcp)
    editor = None
    if terminal.available():
        editor = terminal.factory(profile, args.history_file, args.history_size)
    return mode.run(args, editor)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
