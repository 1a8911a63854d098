"""Private files in a data directory.

The directory belongs to the user running the server and nobody else may
write to it (else they could plant a symlink where we are about to write);
it is kept at 0700, every file at 0600. Files are never opened through a
symlink, and whole-file replacements go through a uniquely named temp file
created with O_EXCL (mkstemp), then rename, then a directory fsync.
"""
import errno
import os
import stat
import tempfile

TEMP_SUFFIX = ".tmp"


class UnsafePath(Exception):
    """The data directory or a file in it is not safe to use (one-line message)."""


def prepare_dir(path):
    """Create `path` (0700), or check an existing one: a directory, owned by
    us, writable by nobody else; tightened to 0700. Raises UnsafePath."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as e:
        raise UnsafePath(f"cannot use data directory {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"data directory {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafePath(f"data directory {path} is owned by uid {st.st_uid}, not by this "
                         f"user (uid {os.geteuid()}); refusing to keep accounts there")
    if st.st_mode & 0o022:
        raise UnsafePath(f"data directory {path} is writable by other users "
                         f"(mode {stat.S_IMODE(st.st_mode):o}); refusing to use it "
                         f"(fix: chmod 700 {path})")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def open_private(path, flags):
    """os.open with mode 0600, never through a symlink, regular files only."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symbolic link; refusing to follow it") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafePath(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        os.fchmod(fd, 0o600)
    return fd


def read_private(path):
    """The bytes of `path`, or None if it does not exist."""
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def write_all(fd, data):
    """os.write until every byte is written (a short write is not an error)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, data, sync=True, sync_every=None):
    """Replace `path` with `data` (bytes, or an iterable of bytes chunks):
    readers see the old file or the new one. With `sync_every`, written data
    is flushed to disk every that many bytes, so no large burst builds up."""
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=name + ".", suffix=TEMP_SUFFIX)
    try:
        unsynced = 0
        for chunk in ([data] if isinstance(data, (bytes, bytearray)) else data):
            write_all(fd, chunk)
            unsynced += len(chunk)
            if sync and sync_every and unsynced >= sync_every:
                os.fdatasync(fd)
                unsynced = 0
        if sync:
            os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync:
        fsync_dir(directory)


def remove_stale_temps(directory, names):
    """Remove temp files that a crash left behind for any of `names`."""
    for entry in os.listdir(directory):
        if entry.endswith(TEMP_SUFFIX) and any(entry.startswith(n + ".") for n in names):
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass
