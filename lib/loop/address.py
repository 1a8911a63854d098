"""The one parser and formatter of network addresses: `HOST:PORT`, `HOST`
(with a default port) and `[V6]:PORT`, for every flag and every message;
and of a port alone."""
import re

MAX_PORT = 65535
_INTEGER = re.compile(r"-?[0-9]+")


def parse_port(text, any_ok=True, what="port"):
    """A port number from `text`: 1-65535, or 0 ("any free port") when
    `any_ok`. ValueError with a one-line reason about `what` otherwise
    (never the OverflowError that bind() raises for 70000 or -1)."""
    allowed = f"1-{MAX_PORT}" + (" (or 0 for any free port)" if any_ok else "")
    text = str(text).strip()
    if not _INTEGER.fullmatch(text):   # int() would also take "1_0" and "+5"
        raise ValueError(f"{what} must be {allowed}, got {text!r}".lstrip())
    port = int(text)
    if not (0 if any_ok else 1) <= port <= MAX_PORT:
        raise ValueError(f"{what} must be {allowed}, got {text}".lstrip())
    return port


def parse_address(text, default_port=None):
    """-> (host, port); ValueError with a one-line reason if malformed."""
    text = (text or "").strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad address {text!r}: no closing ]")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if port is None:
        raise ValueError(f"bad address {text!r}: no port")
    try:
        port = int(port)
    except ValueError:
        raise ValueError(f"bad port in address {text!r}") from None
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad address {text!r}: the port must be 1-65535")
    return host, port


def format_address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
