"""Every limit of the UDP hub in one table: flag, default, meaning. udp_hub.py
takes them all (`--help`); docs/limits.md ("UDP hub") says what a client sees
when it hits each one.

"Address" in a limit is the source IP (an IPv6 /64): a sender picks its
ports freely, so per-port limits would bind nobody. The defaults let a
classroom behind one NAT address log in at once and bite on floods beyond.
"""
import argparse
from dataclasses import dataclass, field, fields, make_dataclass


@dataclass(frozen=True)
class Limit:
    name: str          # attribute of HubLimits, flag --name-with-dashes
    default: object
    kind: type         # int or float
    metavar: str
    help: str
    zero_ok: bool = False


LIMITS = (
    # -- password checks (scrypt, off the loop) --------------------------------------
    Limit("check_threads", 2, int, "N", "password checks running at once (worker threads); "
          "one id never has more than one running"),
    Limit("check_queue", 64, int, "N", "password checks waiting, in all"),
    Limit("checks_per_address", 4, int, "N", "password checks running or waiting per source address"),
    Limit("logins_per_minute", 600, int, "N",
          "login datagrams per source address per minute (a burst of N, then N/60 a second)"),
    # -- tokens ----------------------------------------------------------------------------
    Limit("token_errors_per_minute", 30, int, "N",
          "wrong tokens per session (from its own address) per minute before every token "
          "for it from there is answered `token error!` unchecked"),
    Limit("address_token_errors_per_minute", 600, int, "N",
          "wrong tokens per source address per minute, the same way"),
    # -- replays and reflection ---------------------------------------------------------------
    Limit("replay_memory", 1024, int, "N",
          "MSGIDs remembered per session: a replayed one is answered again, never forwarded again"),
    Limit("reflect_allowance", 64, int, "BYTES",
          "bytes an IP may be sent beyond the datagrams they answer, while the address has not "
          "shown that it receives (0: never more out than in)", zero_ok=True),
    Limit("address_table", 65536, int, "N",
          "source addresses the rate limits and the reflection ledger remember (least recent forgotten)"),
)

HubLimits = make_dataclass("HubLimits", [(limit.name, limit.kind, field(default=limit.default))
                                         for limit in LIMITS], frozen=True)
HubLimits.__doc__ = "The limits in force, one attribute per row of LIMITS."


def _flag(limit):
    return "--" + limit.name.replace("_", "-")


def add_arguments(parser):
    """One flag per limit, in a group of its own."""
    group = parser.add_argument_group(
        "limits", "A source address is a source IP (an IPv6 /64). docs/limits.md, "
                  "\"UDP hub\", says what a client sees at each limit.")
    for limit in LIMITS:
        group.add_argument(_flag(limit), dest=limit.name, type=_number(limit), default=limit.default,
                           metavar=limit.metavar, help=f"{limit.help} (default {limit.default:g})")


def from_args(args):
    return HubLimits(**{f.name: getattr(args, f.name) for f in fields(HubLimits)})


def _number(limit):
    def parse(text):
        try:
            value = limit.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0 or (value == 0 and not limit.zero_ok):
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value
    parse.__name__ = limit.kind.__name__
    return parse
