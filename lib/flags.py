"""Tables of limits as command-line flags, shared by every main: a `Limit`
row gives a flag (`--name-with-dashes`), its default and help; `values()`
makes the frozen class of the values in force. Numbers must be > 0 (or
>= 0 where a row says `zero_ok`). Also the argparse types of ports and
addresses, so every main reports a bad one as a one-line usage error."""
import argparse
from dataclasses import dataclass, field, fields, make_dataclass

from lib.loop import address


@dataclass(frozen=True)
class Limit:
    name: str          # attribute of the values class
    default: object
    kind: type         # int or float
    metavar: str
    help: str
    zero_ok: bool = False


def values(class_name, limits, doc):
    """The frozen class of the values in force: one attribute per row."""
    cls = make_dataclass(class_name, [(limit.name, limit.kind, field(default=limit.default))
                                      for limit in limits], frozen=True)
    cls.__doc__ = doc
    return cls


def flag(limit):
    return "--" + limit.name.replace("_", "-")


def number(kind, zero_ok=False):
    """An argparse type: a `kind` number, > 0 (>= 0 with `zero_ok`), with a one-line error."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if zero_ok else '> 0'}: {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


USAGE = 2   # exit status of a usage error (argparse's)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a usage error on ONE line, `PROG: error: WHY (see --help)`,
    exit status 2: a script reads one line; the usage is in --help."""

    def error(self, message):
        self.exit(USAGE, f"{self.prog}: error: {message} (see --help)\n")


def port(any_ok=True):
    """An argparse type: a port, 1-65535 (or 0 for any free port with `any_ok`),
    so 70000 or -1 is a usage error (exit 2) rather than bind()'s traceback."""
    def parse(text):
        try:
            return address.parse_port(text, any_ok, what="")
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = "port"
    return parse


def address_text(default_port=None):
    """An argparse type: a `HOST:PORT` (or `HOST` with `default_port`) checked
    by lib/loop/address.py; the text itself is kept, as the mains pass it on."""
    def parse(text):
        try:
            address.parse_address(text, default_port)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text.strip()
    parse.__name__ = "address"
    return parse


def add_arguments(parser, limits, title, description=None, only=None):
    """One flag per row (or per row named in `only`), in a group of their own."""
    group = parser.add_argument_group(title, description)
    for limit in limits:
        if only is None or limit.name in only:
            shown = f"{limit.default:g}" if limit.kind is float else str(limit.default)
            group.add_argument(flag(limit), dest=limit.name, type=number(limit.kind, limit.zero_ok),
                               default=limit.default, metavar=limit.metavar,
                               help=f"{limit.help} (default {shown})")


def from_args(cls, args):
    """The values the parsed `args` hold (rows a main did not take keep their defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})
