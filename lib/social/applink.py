"""The internal link between an application server and the login server:
one JSON object per line over TCP (the login server's internal port).

  app -> login  {"op": "hello", "secret": S, "id": ID, "host": H, "port": P}
  login -> app  {"op": "welcome"}  |  {"op": "rejected", "reason": R} (then closed)
  app -> login  {"op": "ping"}                       every HEARTBEAT seconds
  app -> login  {"op": "cmd", "id": N, "line": L}    one client request, verbatim
  login -> app  {"op": "reply", "id": N, "reply": {...}, "publish": [dest, body, persistent] | null}
  login -> app  {"op": "shutdown"}
"""
import json

HEARTBEAT = 1.0
MAX_LINE = 64 * 1024 * 1024   # replies such as receive-post can be large


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode   # made once


def encode(**msg):
    return (_ENCODE(msg) + "\n").encode("utf-8")


def decode(raw):
    """bytes -> dict with an "op"; ValueError if it is not one."""
    msg = json.loads(raw.decode("utf-8"))
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ValueError("not a link message")
    return msg
