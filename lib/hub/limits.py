"""Every limit of the UDP hub in one table: flag, default, meaning. udp_hub.py
takes them all (`--help`); docs/limits.md ("UDP hub") says what a client sees
when it hits each one.

"Address" in a limit is the source IP (an IPv6 /64): a sender picks its
ports freely, so per-port limits would bind nobody. The defaults let a
classroom behind one NAT address log in at once and bite on floods beyond.
"""
from lib import flags
from lib.flags import Limit


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

HubLimits = flags.values("HubLimits", LIMITS, "The limits in force, one attribute per row of LIMITS.")


def add_arguments(parser):
    """One flag per limit, in a group of its own."""
    flags.add_arguments(parser, LIMITS, "limits", "A source address is a source IP (an IPv6 /64). "
                        "docs/limits.md, \"UDP hub\", says what a client sees at each limit.")


def from_args(args):
    return flags.from_args(HubLimits, args)
