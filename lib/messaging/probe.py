"""Is the broker there? One TCP connect at a server's start, so a dead or
mistyped broker shows at once, in one line, rather than at the first `send`.
The server keeps serving meanwhile: only send and send-group need the broker,
and the broker link reconnects by itself once the broker is up.
"""
import logging
import socket

from lib.loop.address import format_address

TIMEOUT = 2.0           # seconds the connect may take (a remote broker on a slow network)
POOL = "broker-probe"   # its own worker: a silent address never holds a password check's thread

log = logging.getLogger("broker")


def why_unreachable(host, port, timeout=TIMEOUT):
    """None if a TCP connection to host:port opens within `timeout` seconds,
    else the reason in a few words ("Connection refused", "timed out", ...)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except socket.gaierror as e:
        return f"cannot resolve {host}: {e.strerror}"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as e:
        return e.strerror or str(e)


def reachable(host, port, timeout=TIMEOUT):
    return why_unreachable(host, port, timeout) is None


def warning(host, port, reason):
    """The one line an operator reads when the broker is not there."""
    return (f"broker {format_address(host, port)} is not reachable ({reason}); "
            "send and send-group will fail until it is")


def check_at_start(reactor, host, port, timeout=TIMEOUT, on_result=None):
    """Probe host:port off the loop; log `warning()` if it is unreachable.
    `on_result(reason or None)` then runs on the loop (tests, callers)."""
    reactor.add_pool(POOL, 1)

    def done(reason, error):
        reason = reason if error is None else str(error)
        if reason:
            log.warning("%s", warning(host, port, reason))
        else:
            log.info("broker %s is reachable", format_address(host, port))
        if on_result:
            on_result(reason)
    reactor.run_in_thread(why_unreachable, host, port, timeout, done=done, pool=POOL)
