"""Durable flat-file store of the login server (the whole durability story;
docs/durability.md says which guarantee each write gets).

Files in the data directory (0700, files 0600, see lib/files.py):
  users.txt          accounts in the users.txt format (`ID PASSWORD`), the
                     authority on which accounts exist and their passwords;
                     appended on register, rewritten atomically on delete.
  journal.log        every mutation since the last rotation, one line each:
                     `<crc32 hex> <json [seq, kind, args...]>`.
  journal.SEQ.log    a rotated journal (records up to SEQ), kept until a
                     snapshot at SEQ or later is on disk.
  snapshot.json      the whole State at some seq (temp file, fsync, rename).
  lock               flock'd while a server owns the directory.

Writes are buffered during a reactor turn; `commit()` (a before-sleep hook)
writes and fsyncs them once for the whole turn (group commit) before any
reply of that turn leaves. Order: users.txt first, then the journal. If a
write or fsync fails, `commit()` raises StoreFailure and every later commit
does too: the server stops without sending the turn's replies (Redis with
appendfsync always does the same; after a failed fsync the page cache can
no longer be trusted, so retrying would risk acknowledging lost data).

Snapshots do not stall the loop: when the journal passes `snapshot_every`
bytes, it is rotated (a rename) and a forked child writes the State as it was
at that seq, while the server goes on appending to a new journal.log. Once
the child has renamed its snapshot into place, the rotated journals are
deleted. Without a `watch_child` (tests, tools) snapshots are written inline.

Recovery: load the snapshot, replay journal.SEQ.log files in order, then
journal.log, skipping records the snapshot holds (a torn or corrupt line
ends journal.log's replay and the file is cut there: it was never
acknowledged), then reconcile with users.txt: accounts missing from it are
deleted (a delete whose journal line was lost), new or changed lines are
taken as registered (hand edits, or a register whose journal line was lost).
Names users.txt cannot hold (legacy ones starting with `#`, which it reads
as comments) live in the snapshot and journal alone.
"""
import fcntl
import gc
import json
import logging
import os
import re
import signal
import time
import zlib

from lib.social import commands, files
from lib.social.snapshot import snapshot_chunks, state_from_json
from lib.accounts.passwords import parse_accounts
from lib.loop.process import die_with_parent

log = logging.getLogger("store")

HEADER = "# np-social accounts: ID PASSWORD (salted scrypt record, or plain text written by hand)\n"
SNAPSHOT_EVERY = 8 * 1024 * 1024   # journal bytes
SNAPSHOT_SYNC_EVERY = 4 * 1024 * 1024
_SEGMENT = re.compile(r"journal\.(\d+)\.log\Z")


class StoreError(Exception):
    """The store cannot be used; the message is one line for the operator."""


class StoreLocked(StoreError):
    pass


class StoreFailure(StoreError):
    """A write or fsync failed: nothing written since the last commit may be
    acknowledged, and the store takes no more writes."""

    def __init__(self, path, error):
        super().__init__(f"cannot write {path}: {error.strerror or error}")
        self.path, self.error = path, error


def users_txt_can_hold(name):
    """users.txt reads `#...` lines as comments and splits on white space."""
    return bool(name) and not name.startswith("#") and name.split() == [name]


def _frame(seq, mutation):
    body = json.dumps([seq, *mutation], ensure_ascii=False, separators=(",", ":"))
    return f"{zlib.crc32(body.encode('utf-8')):08x} {body}\n".encode("utf-8")


def _unframe(line):
    """A journal line -> [seq, kind, args...], or None if torn/corrupt."""
    try:
        text = line.decode("utf-8")
        crc, body = text.split(" ", 1)
        if int(crc, 16) != zlib.crc32(body.encode("utf-8")):
            return None
        record = json.loads(body)
        return record if record[1] in commands.MUTATIONS else None
    except (ValueError, IndexError, TypeError, RecursionError):
        return None


def _append(fd, path, data, sync):
    """Append and (maybe) sync; on failure cut the file back, then raise."""
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        files.write_all(fd, data)
        if sync:
            os.fdatasync(fd)
    except OSError as e:
        try:   # no half record at the end (Redis' flushAppendOnlyFile does this too)
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise StoreFailure(path, e) from None


class Store:
    def __init__(self, data_dir, fsync=True, snapshot_every=SNAPSHOT_EVERY, watch_child=None):
        """`watch_child(pid, on_exit)`: run `on_exit()` on the loop when child
        `pid` exits (lib/process.watch_exit); without it snapshots are inline."""
        self.dir = os.path.abspath(data_dir)
        self.fsync = fsync
        self.snapshot_every = snapshot_every
        self.watch_child = watch_child
        self.state = commands.State()
        self.seq = 0
        self.users_path = os.path.join(self.dir, "users.txt")
        self.journal_path = os.path.join(self.dir, "journal.log")
        self.snapshot_path = os.path.join(self.dir, "snapshot.json")
        self._journal_buf = bytearray()
        self._users_buf = bytearray()
        self._users_rewrite = False
        self._journal = self._users = self._lock = None   # file descriptors
        self._child = None           # pid of the snapshot writer
        self.failed = None           # the StoreFailure that stopped writes
        self.journal_bytes = 0
        self.commits = 0
        self.snapshots = 0

    # -- opening and recovery --------------------------------------------------
    def open(self):
        files.prepare_dir(self.dir)
        self._lock = files.open_private(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock)
            raise StoreLocked(f"{self.dir} is in use by another np-social server") from None
        try:
            self._recover()
        except BaseException:
            self._release()   # a failed open leaves nothing locked or open
            raise
        log.info("store %s: %d accounts, %d groups, %d sessions (replayed %d, reconciled %d)",
                 self.dir, len(self.state.users), len(self.state.groups),
                 len(self.state.sessions), self._replayed, self._reconciled)
        return self

    def _recover(self):
        files.remove_stale_temps(self.dir, ("users.txt", "snapshot.json", "journal.log"))
        self._load_snapshot()
        replayed = sum(self._replay(path, last=(path == self.journal_path))
                       for path in self._journal_files())
        reconciled = self._reconcile_accounts()
        self._journal = self._open_journal()
        self.journal_bytes = os.fstat(self._journal).st_size
        if reconciled:
            self.record(reconciled)
        self._users_rewrite = True  # rewrite users.txt clean (drops any torn tail)
        self._write_pending()
        self._replayed, self._reconciled = replayed, len(reconciled)

    def _open_journal(self):
        return files.open_private(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def _segments(self):
        """Rotated journals as [(last seq, path)], oldest first."""
        found = (_SEGMENT.match(name) for name in os.listdir(self.dir))
        return sorted((int(m[1]), os.path.join(self.dir, m[0])) for m in found if m)

    def _journal_files(self):
        return [path for _, path in self._segments()] + [self.journal_path]

    def _load_snapshot(self):
        raw = files.read_private(self.snapshot_path)
        if raw is None:
            return
        data = json.loads(raw)
        self.seq = data["seq"]
        self.state = state_from_json(data)

    def _replay(self, path, last):
        raw = files.read_private(path)
        if raw is None:
            return 0
        good_end = replayed = 0
        pos = 0
        while pos < len(raw):
            nl = raw.find(b"\n", pos)
            record = _unframe(raw[pos:nl]) if nl >= 0 else None
            if record is None:
                if not last:   # a rotated journal was complete when rotated
                    raise StoreError(f"{path} is corrupt at byte {pos}; refusing to start "
                                     f"(move it away to start without its writes)")
                log.warning("journal: torn or corrupt record at byte %d; cutting %d bytes",
                            pos, len(raw) - pos)
                break
            pos = good_end = nl + 1
            seq, mutation = record[0], record[1:]
            if seq <= self.seq:
                continue
            commands.apply(self.state, tuple(mutation))
            self.seq = seq
            replayed += 1
        if good_end < len(raw):
            fd = files.open_private(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, good_end)
                os.fsync(fd)
            finally:
                os.close(fd)
        return replayed

    def _reconcile_accounts(self):
        raw = files.read_private(self.users_path) or b""
        if raw and not raw.endswith(b"\n"):
            raw = raw[:raw.rfind(b"\n") + 1]   # a torn last line was never acknowledged
        on_disk = parse_accounts(raw.decode("utf-8", "replace"))
        mutations = [("delete", name) for name in self.state.users
                     if name not in on_disk and users_txt_can_hold(name)]
        for name, password in on_disk.items():
            user = self.state.users.get(name)
            if user is None:
                mutations.append(("register", name, password))
            elif user.password != password:
                mutations.append(("password", name, password))
        return mutations

    # -- writing -------------------------------------------------------------------
    def record(self, mutations):
        """Apply mutations to the State now and queue them for the turn's commit."""
        for mutation in mutations:
            commands.apply(self.state, mutation)
            self.seq += 1
            self._journal_buf += _frame(self.seq, mutation)
            kind = mutation[0]
            if kind in ("delete", "password"):
                self._users_rewrite = True
            elif kind == "register" and users_txt_can_hold(mutation[1]):
                self._users_buf += f"{mutation[1]} {mutation[2]}\n".encode("utf-8")

    @property
    def dirty(self):
        return bool(self._journal_buf or self._users_buf or self._users_rewrite)

    def commit(self):
        """Write and fsync this turn's mutations: users.txt, then the journal.
        Raises StoreFailure (now and ever after) if the disk refuses."""
        if not (self._journal_buf or self._users_buf or self._users_rewrite or self.failed):
            return      # most turns: nothing to write (checked inline: it runs every turn)
        self._write_pending()
        if self.journal_bytes > self.snapshot_every and self._child is None:
            self._start_snapshot()

    def _write_pending(self):
        if self.failed:
            raise self.failed
        if not self.dirty:
            return
        try:
            if self._users_rewrite:
                self._rewrite_users()
            elif self._users_buf:
                _append(self._users, self.users_path, self._users_buf, self.fsync)
            self._users_buf.clear()
            self._users_rewrite = False
            if self._journal_buf:
                _append(self._journal, self.journal_path, self._journal_buf, self.fsync)
                self.journal_bytes += len(self._journal_buf)
                self._journal_buf.clear()
        except StoreFailure as e:
            self.failed = e
            raise
        self.commits += 1

    def _rewrite_users(self):
        lines = [HEADER] + [f"{u.name} {u.password}\n" for u in self.state.users.values()
                            if users_txt_can_hold(u.name)]
        if self._users is not None:
            os.close(self._users)
            self._users = None
        try:
            files.atomic_write(self.users_path, "".join(lines).encode("utf-8"), self.fsync)
            self._users = files.open_private(self.users_path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise StoreFailure(self.users_path, e) from None

    # -- snapshots -----------------------------------------------------------------
    def snapshot(self):
        """Write the whole State now, in this process (shutdown, tests)."""
        self._write_pending()
        self._rotate()
        self._write_snapshot(self.seq)
        self._snapshot_done(self.seq)

    def _start_snapshot(self):
        if self.watch_child is None:
            self.snapshot()
            return
        started = time.monotonic()
        seq = self._rotate()
        # The child serialises the State as of `seq` from its copy-on-write
        # view of memory. Freezing the GC keeps the parent's collector from
        # writing to every object's header (and so copying every page).
        gc.freeze()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as e:
            gc.unfreeze()
            log.error("snapshot: cannot fork (%s); the journal keeps every write", e.strerror)
            return
        if pid == 0:
            self._snapshot_child(seq, parent)
        self._child = pid
        self._snapshot_started = started
        log.debug("snapshot at seq %d: the loop paused %.1f ms to rotate the journal and fork",
                  seq, (time.monotonic() - started) * 1000)
        self.watch_child(pid, lambda: self._snapshot_child_exited(pid, seq))

    def _snapshot_child(self, seq, parent):
        """In the forked child: write the snapshot, then _exit (never returns)."""
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            # Keep no client socket open on the server's behalf, and die with it.
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            os.nice(10)   # the server's requests come first on a busy machine
            if die_with_parent(signal.SIGKILL, parent):
                self._write_snapshot(seq)
                code = 0
        except BaseException as e:  # noqa: B036 - the child must always _exit
            try:
                os.write(2, f"store: snapshot at seq {seq} failed: {e!r}\n".encode())
            except OSError:
                pass
        finally:
            os._exit(code)

    def _snapshot_child_exited(self, pid, seq):
        if self._child != pid:   # already reaped by close()
            return
        _, status = os.waitpid(pid, 0)
        self._child = None
        gc.unfreeze()
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            self._snapshot_done(seq, time.monotonic() - self._snapshot_started)
        else:
            log.error("snapshot at seq %d failed (child exit %d); the journal keeps every "
                      "write, next try after %d more bytes", seq, code, self.snapshot_every)

    def _rotate(self):
        """Close journal.log as journal.SEQ.log and start an empty one."""
        seq = self.seq
        try:
            os.rename(self.journal_path, os.path.join(self.dir, f"journal.{seq}.log"))
            files.fsync_dir(self.dir)
            new = self._open_journal()
        except OSError as e:
            self.failed = StoreFailure(self.journal_path, e)
            raise self.failed from None
        os.close(self._journal)
        self._journal = new
        self.journal_bytes = 0
        return seq

    def _write_snapshot(self, seq):
        # Synced every few MiB (Redis: rdb-save-incremental-fsync): one big
        # fsync at the end would flood the disk, and the server's own journal
        # fdatasync, which every reply waits for, would queue behind it.
        files.atomic_write(self.snapshot_path, snapshot_chunks(self.state, seq), self.fsync,
                           sync_every=SNAPSHOT_SYNC_EVERY)

    def _snapshot_done(self, seq, took=None):
        """The snapshot at `seq` is on disk: drop the journals it covers."""
        for last, path in self._segments():
            if last <= seq:
                os.unlink(path)
        files.fsync_dir(self.dir)
        self.snapshots += 1
        log.info("snapshot at seq %d%s", seq, f" (written by a child in {took:.1f} s)" if took else "")

    def close(self):
        if self._journal is None:
            return
        if self._child is not None:   # a snapshot under way: let it finish
            os.waitpid(self._child, 0)
            self._child = None
            gc.unfreeze()
        if not self.failed:
            try:
                self.snapshot()
            except (OSError, StoreError) as e:
                log.error("closing store: %s", e)
        self._release()

    def _release(self):
        for fd in (self._journal, self._users, self._lock):
            if fd is not None:
                os.close(fd)
        self._journal = self._users = self._lock = None
