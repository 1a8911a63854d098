"""Every limit of the TCP service in one table: its flag, default and
meaning. `./server` and `appserver.py` take them all (`--help`), and
docs/limits.md says what a client sees when it hits each one.

The defaults let a classroom behind one NAT address through (250 sign-ups
and logins from one address within a minute) and bite on floods beyond.
"""
from lib import flags
from lib.flags import Limit

KIB, MIB = 1024, 1024 * 1024


LIMITS = (
    # -- bounded data ---------------------------------------------------------------
    Limit("max_post_length", 1000, int, "CHARS", "longest post, send or send-group message"),
    Limit("max_posts_per_user", 200, int, "N", "posts kept per user; the oldest go first"),
    Limit("max_groups", 10000, int, "N", "groups in all"),
    Limit("max_groups_per_user", 100, int, "N", "groups one user may belong to"),
    Limit("max_list_items", 1000, int, "N",
          "items in one list reply (receive-post, list-group, ...); the newest are kept"),
    # -- the fleet cannot be bought -----------------------------------------------------
    Limit("session_idle", 6 * 3600.0, float, "S",
          "log out a session unused for S seconds, releasing its app-server slot"),
    Limit("signups_per_minute", 300, int, "N", "registrations per source address per minute"),
    Limit("logins_per_minute", 300, int, "N", "logins per source address per minute"),
    # -- fair password checks -------------------------------------------------------------
    Limit("hash_queue", 256, int, "N", "password checks waiting, in all"),
    Limit("hash_per_address", 64, int, "N", "password checks in flight or waiting per source address"),
    # -- connections ------------------------------------------------------------------------
    Limit("max_conns_per_address", 512, int, "N", "client connections per source address"),
    Limit("first_request_timeout", 10.0, float, "S", "close a connection that sends no request in S seconds"),
    Limit("pipeline_lines", 16, int, "N", "requests taken from one connection per loop turn"),
    Limit("max_unsent", 256 * KIB, int, "BYTES",
          "stop reading a connection while this much of its output is unsent"),
    Limit("max_output", 16 * MIB, int, "BYTES",
          "close a client connection with this much output unsent (a peer that never reads)"),
    # -- chat delivery (app servers) --------------------------------------------------------------
    Limit("subscribe_timeout", 5.0, float, "S",
          "seconds the broker gets to confirm a user's subscriptions; login, create-group and "
          "join-group answer after at most that"),
    Limit("prefetch", 1000, int, "N",
          "personal messages the broker hands an app server per user before they are acked"),
    Limit("message_ttl", 86400.0, float, "S",
          "a personal message not delivered within S seconds is dropped by the broker "
          "(its recipient's client was gone that long; nothing stays in the broker for ever)"),
    Limit("max_held_group", 1000, int, "N",
          "group messages an app server holds per user whose client has not listened yet "
          "(the oldest are dropped)"),
    # -- the internal port ----------------------------------------------------------------------
    Limit("hello_line_max", 4 * KIB, int, "BYTES", "longest line before an app server's hello"),
    Limit("max_pending_links", 16, int, "N", "app-server links that have not said hello, at once"),
    Limit("link_json_depth", 16, int, "N", "deepest JSON nesting accepted on the internal link"),
)


Limits = flags.values("Limits", LIMITS, "The values in force, one attribute per row of LIMITS.")


# The limits an application server enforces itself (its client connections);
# the login server passes its values on when it launches one.
APP_SERVER = frozenset({"max_conns_per_address", "first_request_timeout", "pipeline_lines",
                        "max_unsent", "max_output", "subscribe_timeout", "prefetch",
                        "max_held_group", "message_ttl"})


def add_arguments(parser, only=None):
    """One flag per limit (or those named in `only`)."""
    flags.add_arguments(parser, LIMITS, "limits (docs/limits.md: what a client sees at each)", only=only)


def from_args(args):
    return flags.from_args(Limits, args)


def to_argv(limits, only=None):
    """The flags that pass `limits` on to a child process (an app server)."""
    return [arg for limit in LIMITS if only is None or limit.name in only
            for arg in (flags.flag(limit), repr(getattr(limits, limit.name)))]
