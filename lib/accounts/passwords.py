"""Password hashing: salted hashlib.scrypt, stored as `scrypt$N$r$p$salt$hash`.

Hashing takes ~50 ms of CPU by design; callers on a reactor run `hash_password`
and `verify` through `Reactor.run_in_thread` (hashlib.scrypt releases the GIL).
Hand-written plain-text lines in a users.txt keep working (compared in
constant time).
"""
import base64
import hashlib
import hmac
import os

PREFIX = "scrypt$"
DEFAULT_N, DEFAULT_R, DEFAULT_P = 2 ** 14, 8, 1


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def hash_password(password, n=DEFAULT_N, r=DEFAULT_R, p=DEFAULT_P):
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                            maxmem=256 * r * n + (1 << 20), dklen=32)
    return f"{PREFIX}{n}${r}${p}${_b64(salt)}${_b64(digest)}"


def is_hashed(stored):
    return stored.startswith(PREFIX)


def verify(stored, password):
    """True when `password` matches `stored` (a scrypt record or plain text)."""
    candidate = password.encode("utf-8")
    if not is_hashed(stored):
        return hmac.compare_digest(stored.encode("utf-8"), candidate)
    try:
        _, n, r, p, salt, digest = stored.split("$")
        n, r, p = int(n), int(r), int(p)
        salt, digest = base64.b64decode(salt), base64.b64decode(digest)
        if not (1 < n <= 2 ** 20 and 0 < r <= 32 and 0 < p <= 16):
            return False
        got = hashlib.scrypt(candidate, salt=salt, n=n, r=r, p=p,
                             maxmem=256 * r * n + (1 << 20), dklen=len(digest))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, digest)


def parse_accounts(text):
    """Parse the users.txt format: `ID PASSWORD` a line; blank lines and
    `#` comments ignored. Returns {id: stored password}; later lines win."""
    accounts = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 2:
            accounts[parts[0]] = parts[1]
    return accounts
