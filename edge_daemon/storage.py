"""The one way every SQLite file in state_dir (the outbox, the history) is opened, checked and recovered.

What is a corruption and what is not is decided here, once:

- **Corrupt** (`file is not a database`, `database disk image is malformed`, a failed `PRAGMA quick_check`): the
  file is moved aside, kept with its `-wal`/`-shm` and named with the UTC time (`NAME.corrupt-20261206T181500Z`),
  and a fresh file starts. Nothing else ever moves a file.
- **A failed write** (a lock held by another process, a full disk, a read-only file system, an I/O error, a
  connection that was closed): the caller keeps what it wanted to write and tries again later, or counts it. The
  file is left where it is, whatever it held.

A file deleted or replaced under the running daemon (`rm`, a restore from a backup) is noticed by comparing the
path's device and inode with those of the file opened, and reopened at the path. A file that exists with 0 bytes
opens as an empty database: that is said, with what it may have held, instead of passing for a new file.

The space in state_dir is shared: the outbox keeps `OUTBOX_RESERVE_BYTES` for itself (acknowledgements and
checkpoints need room too, and a queue that filled the disk to the last block could never shrink again), and the
history stays above `history_floor()`, leaving the outbox room to keep a broker outage's events.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

# Stores into the outbox stop while state_dir has less than this free.
OUTBOX_RESERVE_BYTES = 256 << 10
# Besides its reserve, the history leaves the outbox this share of the file system (at most OUTBOX_ROOM_MAX): on a
# 2 MB state_dir about half a megabyte, hours of an outage at 2 s windows, before the history has to give way.
OUTBOX_ROOM_SHARE = 4
OUTBOX_ROOM_MAX = 64 << 20


@dataclass(frozen=True)
class Settings:
    """How one kind of file is opened."""

    synchronous: str  # FULL: every commit synced (the outbox); NORMAL: synced at checkpoints (the history)
    wal_pages: int  # checkpoint after this many WAL pages
    wal_limit_bytes: int  # the WAL is truncated to at most this after a checkpoint
    busy_timeout_s: float = 5.0  # how long a write waits for another process's lock before it fails (and is retried)
    page_size: int | None = None  # for a new file only
    incremental_vacuum: bool = False  # a new file can give freed pages back to the file system


# ---------------------------------------------------------------------------------------------- what an error is


def error_code(exc: BaseException) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def is_corrupt(exc: BaseException) -> bool:
    """The file itself is damaged: the only reason to move it aside."""
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(exc, sqlite3.ProgrammingError):
        return False  # ProgrammingError: "Cannot operate on a closed database" says nothing about the file
    text = str(exc)
    return (
        error_code(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
        or "malformed" in text
        or "not a database" in text
        or "quick_check" in text
    )


def is_io_error(exc: BaseException) -> bool:
    return error_code(exc) in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN)


def is_permission_problem(exc: BaseException, path: Path) -> bool:
    """A mistake the user fixes (ownership, a read-only state_dir), as opposed to a broken file or disk."""
    if error_code(exc) in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
        return True
    if error_code(exc) == sqlite3.SQLITE_CANTOPEN:
        d = path.parent
        return not (d.is_dir() and os.access(d, os.W_OK | os.X_OK)) or (
            path.exists() and not os.access(path, os.R_OK | os.W_OK)
        )
    return False


def reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


# ---------------------------------------------------------------------------------------------- space


def free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged writer may still use in `directory`'s file system; None if it cannot be told."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def history_floor(directory: Path) -> int:
    """The free space the history leaves in state_dir: the outbox's reserve and room for an outage's backlog."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return OUTBOX_RESERVE_BYTES
    return OUTBOX_RESERVE_BYTES + min(OUTBOX_ROOM_MAX, st.f_blocks * st.f_frsize // OUTBOX_ROOM_SHARE)


# ---------------------------------------------------------------------------------------------- one file


class SqliteFile:
    """One SQLite file: `open()` gives a checked connection (moving a corrupt file aside first), `db` is the open
    connection or None, `replaced()` tells whether the path still names the file that was opened."""

    def __init__(
        self, path: Path, settings: Settings, setup: Callable[[sqlite3.Connection], None], what: str, holds: str
    ) -> None:
        self.path = Path(path)
        self.settings = settings
        self._setup = setup  # creates or migrates the schema (in its own transaction)
        self.what = what  # "outbox", "history": for log lines
        self.holds = holds  # what is lost with the file, for log lines ("the events it queued")
        self.db: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self.moved_aside: Path | None = None  # set by the last open() that had to move a corrupt file aside

    def open(self) -> sqlite3.Connection:
        """Open and check the file. A corrupt one is moved aside (logged, with its size) and a fresh one opened.

        Raises sqlite3.Error or OSError for anything else (locked, full, read-only, an I/O error): the caller tries
        again later; the file is left as it is."""
        self.close()
        self.moved_aside = None
        self._say_if_empty()
        try:
            self.db = self._connect()
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            size = _size(self.path)
            self.moved_aside = self.move_aside()
            logger.error(
                "%s %s was unreadable (%s): moved aside to %s (%d bytes, with %s); a fresh %s starts",
                self.what, self.path, exc, self.moved_aside.name, size, self.holds, self.what,
            )  # fmt: skip
            self.db = self._connect()
        return self.db

    def close(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except sqlite3.Error:
                pass
        self.db = None
        self._identity = None

    def replaced(self) -> bool:
        """The path no longer names the file that is open (deleted, or replaced by another file)."""
        if self.db is None or self._identity is None:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # cannot tell (an I/O error): the next write will say
        return (st.st_dev, st.st_ino) != self._identity

    def reopen_if_replaced(self) -> bool:
        """Reopen at the path if the open file was deleted or replaced; True if it was (and is now reopened).
        Raises like open()."""
        if not self.replaced():
            return False
        logger.warning(
            "%s %s was deleted or replaced while open: what was written to the old file since is not in the new "
            "one; reopening the file now at that path",
            self.what, self.path,
        )  # fmt: skip
        self.open()
        return True

    def move_aside(self) -> Path:
        """Rename the file (and its -wal and -shm) to NAME.corrupt-TIME[-n]; the path is free afterwards."""
        self.close()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(f"{aside}{suffix}")
        return aside

    def checkpoint(self) -> None:
        """Copy the WAL into the file and truncate it (space back to the file system)."""
        if self.db is not None:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # ------------------------------------------------------------------ internals

    def _say_if_empty(self) -> None:
        try:
            empty = self.path.stat().st_size == 0 and not _size(Path(f"{self.path}-wal"))
        except OSError:
            return
        if empty:
            logger.warning(
                "%s %s is an empty file (0 bytes): %s, if it held any, are lost (a cut power or a full disk can "
                "leave this); it is used as a fresh %s",
                self.what, self.path, self.holds, self.what,
            )  # fmt: skip

    def _connect(self) -> sqlite3.Connection:
        s = self.settings
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=s.busy_timeout_s)
        try:
            new = db.execute("PRAGMA page_count").fetchone()[0] == 0
            if new:  # only a file without a page yet takes these
                if s.page_size:
                    db.execute(f"PRAGMA page_size={int(s.page_size)}")
                if s.incremental_vacuum:
                    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            elif db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("database disk image is malformed (quick_check)")
            db.execute("PRAGMA journal_mode=WAL")  # survives a kill and a power cut; readers never block the writer
            db.execute(f"PRAGMA synchronous={s.synchronous}")
            db.execute(f"PRAGMA wal_autocheckpoint={int(s.wal_pages)}")
            db.execute(f"PRAGMA journal_size_limit={int(s.wal_limit_bytes)}")
            self._setup(db)
            st = os.stat(self.path)
        except BaseException:
            db.close()
            raise
        self._identity = (st.st_dev, st.st_ino)
        return db


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---- small JSON files in state_dir (the switches, the tuned settings) -------------------------------------------------


def read_json_object(path: Path) -> dict:
    """A JSON object saved by `write_json_atomically`; OSError or ValueError when it cannot be read as one."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(saved, dict):
        raise ValueError("not a JSON object")
    return saved


def write_json_atomically(path: Path, data: dict) -> None:
    """Replace `path` with `data` so that a power cut leaves the old file or the new one, never half of either;
    OSError on failure, with no temporary file left behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------- state_dir itself
# Probed by both `check` and `run` (check.py), so that `check` never says ok for a state_dir that `run` refuses.

# A disk that fails or is full is a fault the daemon rides out (events flow from memory and the outbox retries),
# never a reason to refuse to start: systemd would restart it in a loop and no event would get out at all.
_FAILING_DISK = (errno.EIO, errno.ENOSPC, errno.EDQUOT)


def state_dir_problem(path: Path) -> str | None:
    """Why the daemon could not keep its files in `path`, or None. A directory is made and removed again in the
    nearest existing folder, because only trying tells: as root, `os.access` says yes for /proc and /sys, where
    nothing can be created. Nothing is left behind, so `check` run as root leaves no file the service cannot own."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"state_dir: {existing} is not a directory (state_dir)"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"state_dir: {existing} is not writable for this user (state_dir; the service's user needs it)"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".emotion-edge-probe-", dir=existing))
    except OSError as exc:
        if exc.errno in _FAILING_DISK:  # not a wrong setting: the daemon runs on, its outbox in memory (reliability.md)
            return None
        return (
            f"state_dir: cannot create files in {existing} ({exc.strerror or exc}); "
            "set state_dir to a folder on a writable disk"
        )
    return None
