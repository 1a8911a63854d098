"""Durable flat-file store of the login server (the whole durability story).

Files in the data directory (mode 0700):
  users.txt        accounts in the users.txt format (`ID PASSWORD`), the
                   authority on which accounts exist and their passwords;
                   appended on register, rewritten atomically on delete.
  journal.log      every mutation since the snapshot, one line each:
                   `<crc32 hex> <json [seq, kind, args...]>`.
  snapshot.json    the whole State at some seq (write temp, fsync, rename).
  lock             flock'd while a server owns the directory.

Writes are buffered during a reactor turn; `commit()` (an after-turn hook)
writes and fsyncs them once for the whole turn (group commit) before any
reply of that turn is flushed. Order: users.txt first, then the journal.

Recovery: load the snapshot, replay journal lines with a higher seq (a torn
or corrupt line ends the replay and the file is cut there: it was never
acknowledged), then reconcile with users.txt: accounts missing from it are
deleted (a delete whose journal line was lost), new or changed lines are
taken as registered (hand edits, or a register whose journal line was lost).
"""
import fcntl
import json
import logging
import os
import zlib

from . import social
from .passwords import parse_accounts

log = logging.getLogger("store")

HEADER = "# np-social accounts: ID PASSWORD (salted scrypt record, or plain text written by hand)\n"
SNAPSHOT_EVERY = 8 * 1024 * 1024   # journal bytes


class StoreLocked(RuntimeError):
    pass


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path, data, sync=True):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    if sync:
        _fsync_dir(os.path.dirname(path))


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
        return record if record[1] in social.MUTATIONS else None
    except (ValueError, IndexError, TypeError):
        return None


class Store:
    def __init__(self, data_dir, fsync=True, snapshot_every=SNAPSHOT_EVERY):
        self.dir = os.path.abspath(data_dir)
        self.fsync = fsync
        self.snapshot_every = snapshot_every
        self.state = social.State()
        self.seq = 0
        self.users_path = os.path.join(self.dir, "users.txt")
        self.journal_path = os.path.join(self.dir, "journal.log")
        self.snapshot_path = os.path.join(self.dir, "snapshot.json")
        self._journal_buf = bytearray()
        self._users_buf = bytearray()
        self._users_rewrite = False
        self._journal = self._users = self._lock = None
        self.journal_bytes = 0
        self.commits = 0

    # -- opening and recovery --------------------------------------------------
    def open(self):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._lock = open(os.path.join(self.dir, "lock"), "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StoreLocked(f"{self.dir} is in use by another np-social server")
        self._load_snapshot()
        replayed = self._replay_journal()
        reconciled = self._reconcile_accounts()
        self._journal = open(self.journal_path, "ab")
        self.journal_bytes = self._journal.tell()
        if reconciled:
            self.record(reconciled)
        self._users_rewrite = True  # rewrite users.txt clean (drops any torn tail)
        self.commit()
        log.info("store %s: %d accounts, %d groups, %d sessions (replayed %d, reconciled %d)",
                 self.dir, len(self.state.users), len(self.state.groups),
                 len(self.state.sessions), replayed, len(reconciled))
        return self

    def _load_snapshot(self):
        try:
            with open(self.snapshot_path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return
        self.seq = data["seq"]
        self.state = state_from_json(data)

    def _replay_journal(self):
        try:
            with open(self.journal_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return 0
        good_end = replayed = 0
        pos = 0
        while pos < len(raw):
            nl = raw.find(b"\n", pos)
            record = _unframe(raw[pos:nl]) if nl >= 0 else None
            if record is None:
                log.warning("journal: torn or corrupt record at byte %d; cutting %d bytes",
                            pos, len(raw) - pos)
                break
            pos = good_end = nl + 1
            seq, mutation = record[0], record[1:]
            if seq <= self.seq:
                continue
            social.apply(self.state, tuple(mutation))
            self.seq = seq
            replayed += 1
        if good_end < len(raw):
            with open(self.journal_path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        return replayed

    def _reconcile_accounts(self):
        try:
            with open(self.users_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = b""
        if raw and not raw.endswith(b"\n"):
            raw = raw[:raw.rfind(b"\n") + 1]   # a torn last line was never acknowledged
        on_disk = parse_accounts(raw.decode("utf-8", "replace"))
        mutations = [("delete", name) for name in self.state.users if name not in on_disk]
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
            social.apply(self.state, mutation)
            self.seq += 1
            self._journal_buf += _frame(self.seq, mutation)
            kind = mutation[0]
            if kind in ("delete", "password"):
                self._users_rewrite = True
            elif kind == "register":
                self._users_buf += f"{mutation[1]} {mutation[2]}\n".encode("utf-8")

    @property
    def dirty(self):
        return bool(self._journal_buf or self._users_buf or self._users_rewrite)

    def commit(self):
        """Write and fsync this turn's mutations: users.txt, then the journal."""
        if not self.dirty:
            return
        if self._users_rewrite:
            self._rewrite_users()
        elif self._users_buf:
            self._users.write(self._users_buf)
            self._users.flush()
            if self.fsync:
                os.fsync(self._users.fileno())
        self._users_buf.clear()
        self._users_rewrite = False
        if self._journal_buf:
            self._journal.write(self._journal_buf)
            self._journal.flush()
            if self.fsync:
                os.fdatasync(self._journal.fileno())
            self.journal_bytes += len(self._journal_buf)
            self._journal_buf.clear()
        self.commits += 1
        if self.journal_bytes > self.snapshot_every:
            self.snapshot()

    def _rewrite_users(self):
        lines = [HEADER] + [f"{u.name} {u.password}\n" for u in self.state.users.values()]
        if self._users:
            self._users.close()
        _atomic_write(self.users_path, "".join(lines).encode("utf-8"), self.fsync)
        self._users = open(self.users_path, "ab")

    def snapshot(self):
        """Write the whole State atomically, then start an empty journal."""
        if self.dirty:
            self.commit()
        data = state_to_json(self.state, self.seq)
        _atomic_write(self.snapshot_path, json.dumps(data, ensure_ascii=False).encode("utf-8"))
        self._journal.truncate(0)
        self._journal.seek(0)
        if self.fsync:
            os.fsync(self._journal.fileno())
        self.journal_bytes = 0
        log.info("snapshot at seq %d", self.seq)

    def close(self):
        if self._journal is None:
            return
        self.commit()
        self.snapshot()
        for f in (self._journal, self._users, self._lock):
            if f:
                f.close()
        self._journal = None


# -- snapshot format -------------------------------------------------------------
def state_to_json(state, seq):
    return {
        "seq": seq,
        "users": [{
            "name": u.name, "password": u.password, "invites": list(u.invites),
            "accepted_by_me": list(u.accepted_by_me), "accepted_mine": list(u.accepted_mine),
            "posts": u.posts, "joined": list(u.joined),
        } for u in state.users.values()],
        "groups": [{"name": g.name, "topic": g.topic, "members": list(g.members)}
                   for g in state.groups.values()],
        "sessions": [{"user": s.user, "digest": s.digest, "queue": s.queue}
                     for s in state.sessions.values()],
    }


def state_from_json(data):
    state = social.State()
    for d in data["users"]:
        user = state.users[d["name"]] = social.User(d["name"], d["password"])
        user.invites = dict.fromkeys(d["invites"])
        user.accepted_by_me = dict.fromkeys(d["accepted_by_me"])
        user.accepted_mine = dict.fromkeys(d["accepted_mine"])
        user.posts = list(d["posts"])
        user.joined = dict.fromkeys(d["joined"])
    for user in state.users.values():
        for inviter in user.invites:
            state.users[inviter].invited[user.name] = None
    for d in data["groups"]:
        state.groups[d["name"]] = social.Group(d["name"], d["topic"], dict.fromkeys(d["members"]))
    for d in data["sessions"]:
        session = social.Session(d["user"], d["digest"], d["queue"])
        state.sessions[session.digest] = session
        state.users[session.user].session = session
    return state
