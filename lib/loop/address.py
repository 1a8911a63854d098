"""The one parser and formatter of network addresses: `HOST:PORT`, `HOST`
(with a default port) and `[V6]:PORT`, for every flag and every message."""


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
