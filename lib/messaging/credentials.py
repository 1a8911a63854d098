"""A deployment's broker credentials: DATA/broker.credentials or the environment.

The file (mode 0600, created by the login server when missing) holds two
lines, `user=NAME` and `password=SECRET`. NP_BROKER_USER and
NP_BROKER_PASSWORD, when both are set, win over it; app servers get their
credentials only that way (argv is world-readable in /proc). The same
character sets are checked by scripts/activemq.sh: the values go unescaped
into the broker's users.properties and into a STOMP CONNECT frame.
"""
import dataclasses
import errno
import os
import re
import secrets
import stat
import tempfile

FILE_NAME = "broker.credentials"
USER_VAR, PASSWORD_VAR = "NP_BROKER_USER", "NP_BROKER_PASSWORD"
USER_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
PASSWORD_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")
MAX_FILE = 4096          # bytes: the file is two short lines


class CredentialsError(Exception):
    """Unusable credentials, file or environment (a one-line message)."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    user: str
    password: str = dataclasses.field(repr=False)   # never in a log line

    def __post_init__(self):
        if not USER_RE.fullmatch(self.user):
            raise CredentialsError("broker user name: 1-64 characters of A-Z a-z 0-9 _ . -")
        if not PASSWORD_RE.fullmatch(self.password):
            raise CredentialsError("broker password: 16-256 characters of A-Z a-z 0-9 . _ ~ + / = -")


def generate():
    """Fresh credentials: `np-` + 8 hex digits, a 32-character secret."""
    return Credentials("np-" + secrets.token_hex(4), secrets.token_urlsafe(24))


def from_env(environ):
    """Credentials from NP_BROKER_USER / NP_BROKER_PASSWORD, None when neither
    is set; CredentialsError when only one is, or a value is malformed."""
    user, password = environ.get(USER_VAR, ""), environ.get(PASSWORD_VAR, "")
    if not user and not password:
        return None
    if not (user and password):
        have, lack = (USER_VAR, PASSWORD_VAR) if user else (PASSWORD_VAR, USER_VAR)
        raise CredentialsError(f"{have} is set but {lack} is not")
    try:
        return Credentials(user, password)
    except CredentialsError as e:
        raise CredentialsError(f"{USER_VAR}/{PASSWORD_VAR}: {e}") from None


def env(creds):
    """The environment entries that hand `creds` to a child process."""
    return {USER_VAR: creds.user, PASSWORD_VAR: creds.password}


def format_file(creds):
    return f"user={creds.user}\npassword={creds.password}\n".encode("ascii")


def parse_file(data, path):
    """Credentials from the bytes of a credentials file."""
    fields = {}
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CredentialsError(f"{path}: not ASCII") from None
    for number, line in enumerate(text.splitlines(), 1):
        key, sep, value = line.partition("=")
        if not line.strip() or line.startswith("#"):
            continue
        if not sep or key not in ("user", "password") or key in fields:
            raise CredentialsError(f"{path} line {number}: expected one user=NAME and one "
                                   "password=SECRET line")
        fields[key] = value
    if set(fields) != {"user", "password"}:
        raise CredentialsError(f"{path}: needs a user=NAME line and a password=SECRET line")
    try:
        return Credentials(fields["user"], fields["password"])
    except CredentialsError as e:
        raise CredentialsError(f"{path}: {e}") from None


def read_file(path):
    """Credentials from `path`, None if it does not exist. Refuses a symlink,
    a non-regular file, and a file other users may read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CredentialsError(f"{path} is a symbolic link; refusing to follow it") from None
        raise CredentialsError(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CredentialsError(f"{path} is not a regular file")
        if st.st_mode & 0o077:
            raise CredentialsError(f"{path} is readable by other users (mode "
                                   f"{stat.S_IMODE(st.st_mode):o}); refusing to use it "
                                   f"(fix: chmod 600 {path})")
        if st.st_uid != os.geteuid():
            raise CredentialsError(f"{path} is owned by uid {st.st_uid}, not by this user "
                                   f"(uid {os.geteuid()}); refusing to use it")
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise CredentialsError(f"{path}: longer than {MAX_FILE} bytes; not a credentials file")
    return parse_file(data, path)


def write_new(path, creds):
    """Create `path` (0600) holding `creds`, atomically: a complete file
    appears or none. False if `path` already exists (nothing written)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".broker-credentials.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(format_file(creds))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)          # fails if it exists, never replaces
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def load_or_create(path):
    """The credentials in `path`, created with fresh ones when it is missing.
    Raises CredentialsError (one line)."""
    creds = read_file(path)
    if creds is not None:
        return creds
    try:
        write_new(path, generate())
    except OSError as e:
        raise CredentialsError(f"cannot create {path}: {e.strerror}") from None
    creds = read_file(path)       # ours, or a concurrent creator's
    if creds is None:
        raise CredentialsError(f"{path} vanished right after it was created")
    return creds
