"""The queue that keeps events across broker outages, restarts and power cuts.

An event gets the next `seq` and is then either written to SQLite (WAL, every commit synced: a power cut keeps it)
or, while the broker is connected, *held* in memory and published at once. A held event that the broker has not
acknowledged within `hold_s` is written to the database too (in one transaction with the others that are due), so
with the broker up nothing is written per event at all: an SD card is not worn by a queue that is always empty.

`seq` is never reused, whatever happens to the process, the database or the power: before a seq is handed out it is
covered by a high-water mark reserved `RESERVE` ahead and synced to its own small file (`outbox.seq`). A clean close
writes the mark down to the last seq used, so a restart continues without a gap. The database also records (meta
`holding`) whether seqs may have been handed out beyond its own `last_seq` (held events, published before they
were written): only then does a start after a crash or power cut continue above the mark (a gap, never a repeat),
as it does when the database itself had to be replaced. A crash while the broker is away leaves no gap.

No storage error ends the process. A call that cannot read or write the database logs (once a minute) and degrades:
counts come from memory, held events stay in memory and still go to the broker, acknowledgements that cannot be
recorded are sent again later (at least once). Opening, checking and recovering the file is `storage.SqliteFile`'s:
only a corrupt file is moved aside (kept, named with the time) and a fresh one starts; one that cannot be opened
for another reason than permissions (an I/O error) is tried again every minute while events are counted as
unstorable; one deleted or replaced under the daemon is reopened. When state_dir runs short, `make_room` (the
history's `give_way`, wired by the daemon) is asked for space before an event is refused: the history gives way
first.

Age is counted on the monotonic clock, not the wall clock: a board without a real-time clock may queue events at a
stale time and have NTP step the clock by days once the network (and the broker) is back, exactly when the backlog
is about to drain. Events from an earlier boot are aged by the wall clock, from when this process opened the queue.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import storage
from .errors import UserError
from .throttle import Throttle

logger = logging.getLogger(__name__)

FILENAME = "outbox.sqlite3"
MARK_FILENAME = "outbox.seq"
# A stored wall time before this was taken by a clock that had not been set (1970, or an image's build date).
PLAUSIBLE_SINCE = 1735689600.0  # 2025-01-01 UTC
RESERVE = 1000  # seqs covered by one synced write of the high-water mark (one small write per ~33 min at 2 s windows)
HOLD_S = 1.0  # how long an event may wait in memory for the broker's acknowledgement before it is written down
REOPEN_S = 60.0  # how often an outbox that could not be opened is tried again
# The WAL is checkpointed every 100 pages (400 KiB) and truncated to at most 1 MiB afterwards: on a small state_dir
# it never grows until the disk is full (SQLite's default lets it reach 4 MiB and keeps it at its largest size).
WAL_PAGES = 100
WAL_LIMIT_BYTES = 512 << 10
HEADROOM_BYTES = storage.OUTBOX_RESERVE_BYTES  # stores stop while state_dir has less than this free
MAKE_ROOM_EXTRA = 64 << 10  # asked of the history beyond what one store lacks, so that it is not asked every event
SETTINGS = storage.Settings(
    # FULL: every commit is synced, so a written event survives a power cut. Commits are rare: held events are
    # written only when the broker has not acknowledged them in time (an outage), in batches.
    synchronous="FULL",
    wal_pages=WAL_PAGES,
    wal_limit_bytes=WAL_LIMIT_BYTES,
)


class _NearlyFull(sqlite3.OperationalError):
    pass


def boot_id() -> str:
    """This boot of the machine: monotonic times compare only within one."""
    if given := os.environ.get("EMOTION_EDGE_BOOT_ID"):  # the systemd unit passes %b: its sandbox hides /proc/sys
        return given.replace("-", "")
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    except OSError:
        return f"process-{os.getpid()}-{time.time()}"  # no boot id: age across restarts by the wall clock


class OutboxWriteError(Exception):
    """An event could not be stored (disk full, read-only or broken state directory)."""


@dataclass(frozen=True)
class Pending:
    seq: int
    payload: str


@dataclass
class _Held:
    payload: str
    created: float  # wall clock
    mono: float


class SeqMark:
    """The high-water mark of `seq`, synced to a file of two fixed slots written in turn, each with a generation
    and a CRC.

    Written in place (no new blocks: it works on a full disk), and a write torn by a power cut spoils at most the
    slot being written: the other one still holds the previous mark, and the valid slot of the later generation
    counts.
    """

    SLOT = 48

    def __init__(self, path: Path) -> None:
        self.path = path
        self._slot = 0  # the slot the next write goes to
        self._gen = 0

    def read(self) -> int | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        found = []
        for i in range(2):
            try:
                gen, value, crc = data[i * self.SLOT : (i + 1) * self.SLOT].decode("ascii").split()
                if zlib.crc32(f"{gen} {value}".encode()) == int(crc, 16):
                    found.append((int(gen), int(value), i))
            except (UnicodeDecodeError, ValueError):
                continue
        if not found:
            return None
        self._gen, value, slot = max(found)
        self._slot = 1 - slot
        return value

    def write(self, value: int) -> None:
        """Durably (fsync) before it returns; OSError if it cannot."""
        gen = self._gen + 1
        body = f"{gen} {value}"
        text = f"{body} {zlib.crc32(body.encode()):08x}".ljust(self.SLOT - 1).encode() + b"\n"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < 2 * self.SLOT:  # first write: both slots, so the file never grows again
                os.pwrite(fd, text * 2, 0)
            else:
                os.pwrite(fd, text, self._slot * self.SLOT)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._gen, self._slot = gen, 1 - self._slot


def _schema(db: sqlite3.Connection) -> None:
    """Create or migrate the outbox's tables (storage.SqliteFile calls it on every open)."""
    db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, created REAL, payload TEXT)")
    with db:  # one transaction: a migration cut short by a kill is rolled back, not left half done
        db.execute("BEGIN IMMEDIATE")  # and a second process waits instead of adding a column twice
        columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
        # Queues written before ages were monotonic lack these.
        if "boot" not in columns:
            db.execute("ALTER TABLE events ADD COLUMN boot TEXT NOT NULL DEFAULT ''")
        if "mono" not in columns:
            db.execute("ALTER TABLE events ADD COLUMN mono REAL NOT NULL DEFAULT 0")
        db.execute("CREATE INDEX IF NOT EXISTS events_mono ON events (mono)")
        fresh = not db.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone()
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)")
        db.execute("INSERT OR IGNORE INTO meta VALUES ('last_seq', 0), ('dropped', 0)")
        # A new database knows no seq (the mark does); one written before `holding` existed knew them all.
        db.execute("INSERT OR IGNORE INTO meta VALUES ('holding', ?)", (1 if fresh else 0,))


def _rebase_earlier_boots(db: sqlite3.Connection, boot: str) -> None:
    """Give events from an earlier boot a monotonic time of this boot that keeps their age by the wall clock; an age
    that the wall clock cannot tell (a clock that was not set, or one that went back) counts from now."""
    wall, mono = time.time(), time.monotonic()
    db.execute(
        "UPDATE events SET boot = ?, mono = ? - CASE WHEN created < ? OR created > ? THEN 0 ELSE ? - created END"
        " WHERE boot != ?",
        (boot, mono, PLAUSIBLE_SINCE, wall, wall, boot),
    )


def _read_mark(mark: SeqMark) -> tuple[int, OSError | None]:
    """Make state_dir and read the seq mark: (the mark or 0, the error that kept it from being read). What the user
    must fix (no rights, a file where the folder should be) is a UserError."""
    state_dir = mark.path.parent
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the directory cannot be made (a file, /proc, no rights)
        raise UserError(
            f"{state_dir / FILENAME}: cannot open the outbox ({exc.strerror or exc}); check state_dir and its "
            "permissions"
        ) from None
    try:
        return mark.read() or 0, None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR):
            raise UserError(
                f"{mark.path}: cannot read the outbox's seq mark ({exc.strerror}); check state_dir and its permissions"
            ) from None
        return 0, exc


def continue_seq(last: int, mark: int, stored_last: int, top: int, holding: bool) -> int:
    """The last seq handed out, once the database is (re)opened: `last` so far (the mark itself at the first open),
    the synced `mark`, the database's `last_seq` and highest stored seq. `holding`: seqs may have been handed out
    beyond what the database knows (held events), so it continues above the mark: a gap, never a repeat."""
    if holding:
        return max(last, stored_last, top, mark)
    return max(stored_last, top) if last == mark else max(last, top)


class OutboxTable:
    """The outbox's SQLite file: the events and their meta (`last_seq`, `dropped`, `holding`). SQL only: the Outbox
    holds the lock and decides what an error means (sqlite3.Error and OSError reach it)."""

    def __init__(self, path: Path, boot: str) -> None:
        self.file = storage.SqliteFile(path, SETTINGS, _schema, "outbox", "the events it queued")
        self.boot = boot
        self.count = 0  # events on disk

    @property
    def db(self) -> sqlite3.Connection:
        if self.file.db is None:
            raise sqlite3.ProgrammingError("the outbox is not open")
        return self.file.db

    def open(self) -> tuple[int, int, int, bool]:
        """Open (storage moves a corrupt file aside): (last_seq, highest seq stored, dropped, holding)."""
        self.file.open()
        db = self.db
        _rebase_earlier_boots(db, self.boot)
        top = db.execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0
        self.count = int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        return self._meta("last_seq"), top, self._meta("dropped"), bool(self._meta("holding"))

    def close(self) -> None:
        self.file.close()

    def set_holding(self) -> None:
        with self.db:
            self.db.execute("UPDATE meta SET value = 1 WHERE key='holding'")

    def insert(self, events: dict[int, _Held], exact: bool, keep: int, max_age_s: float) -> int:
        """Store the events in one synced transaction, then the bounds (at most `keep` events, none older than
        `max_age_s`); returns how many the bounds dropped. `exact`: the database now knows every seq handed out."""
        db = self.db
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT OR REPLACE INTO events (seq, created, payload, boot, mono) VALUES (?, ?, ?, ?, ?)",
                [(seq, h.created, h.payload, self.boot, h.mono) for seq, h in sorted(events.items())],
            )
            db.execute("UPDATE meta SET value = MAX(value, ?) WHERE key='last_seq'", (max(events),))
            if exact:
                db.execute("UPDATE meta SET value = 0 WHERE key='holding'")
            old = db.execute("DELETE FROM events WHERE mono < ?", (time.monotonic() - max_age_s,)).rowcount
            over = db.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq DESC LIMIT -1 OFFSET ?)",
                (max(0, keep),),
            ).rowcount
            if old or over:
                db.execute("UPDATE meta SET value = value + ? WHERE key='dropped'", (old + over,))
        self.count = int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        return old + over

    def after(self, after_seq: int, limit: int) -> list[tuple[int, str]]:
        return self.db.execute(
            "SELECT seq, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall()

    def some(self, seqs: list[int]) -> list[tuple[int, str]]:
        marks = ",".join("?" * len(seqs))
        return self.db.execute(f"SELECT seq, payload FROM events WHERE seq IN ({marks})", seqs).fetchall()

    def delete(self, seqs: list[int]) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            deleted = self.db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs]).rowcount
        self.count = max(0, self.count - max(deleted, 0))

    def record_last(self, last: int) -> None:
        """A clean close: the database knows every seq handed out."""
        with self.db:
            self.db.execute("UPDATE meta SET value = ? WHERE key='last_seq'", (last,))
            self.db.execute("UPDATE meta SET value = 0 WHERE key='holding'")

    def free(self) -> int | None:
        """Bytes a store may use: free space in state_dir, and the pages that deleted events left in the file
        (reused before it grows)."""
        free = storage.free_bytes(self.file.path.parent)
        if free is None:
            return None
        pages = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return free + pages * int(self.db.execute("PRAGMA page_size").fetchone()[0])

    def _meta(self, key: str) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])


class Drops:
    """Events the outbox's bounds dropped (oldest first): a total for stats, and a warning once a minute with how many
    since the last one, since an outbox at its bound drops on every append."""

    def __init__(self, max_events: int, max_age_s: float) -> None:
        self.max_events, self.max_age_s = max_events, max_age_s  # named in the warning: the settings to change
        self.total = 0
        self._unlogged = 0
        self._log = Throttle()

    def add(self, n: int) -> None:
        self.total += n
        self._unlogged += n
        if self._unlogged and self._log.ready():
            logger.warning(
                "outbox full: dropped %d oldest undelivered event(s) since the last such line (bounds: "
                "outbox.max_events %d, outbox.max_age_s %.0f); see stats.drops.outbox_dropped",
                self._unlogged, self.max_events, self.max_age_s,
            )  # fmt: skip
            self._unlogged = 0


class Outbox:
    """The queue's policy: seqs, held events, bounds, degrading on storage errors. Thread-safe: the fusion thread
    appends, the MQTT thread reads and acknowledges."""

    def __init__(
        self, state_dir: Path, max_events: int = 100_000, max_age_s: float = 7 * 86400, hold_s: float = HOLD_S
    ) -> None:
        self.path = Path(state_dir) / FILENAME
        self.max_events = max_events
        self.max_age_s = max_age_s
        self.hold_s = hold_s
        # Asked for (at least) this many bytes of state_dir when a store would leave less than the reserve; returns
        # what it freed. The daemon wires the history's `give_way` here.
        self.make_room: Callable[[int], int] | None = None
        self._lock = threading.RLock()
        self._held: dict[int, _Held] = {}
        self._table = OutboxTable(self.path, boot_id())
        self._holding = True  # the database may not know the last seq handed out (see the module doc)
        self._drops = Drops(max_events, max_age_s)
        self._error_log = Throttle()
        self._reopen = Throttle(REOPEN_S)
        self.storage_error = ""  # the last storage failure, for stats; empty while all is well
        self._mark = SeqMark(self.path.parent / MARK_FILENAME)
        mark, failed = _read_mark(self._mark)
        if failed is not None:
            self._storage_failed("read the seq mark", failed)
        self._mark_value = mark
        self._last = self._mark_value  # the last seq handed out
        self._reserved = self._mark_value  # every seq up to here may have been handed out
        self._open(first=True)

    @property
    def _db(self) -> sqlite3.Connection | None:
        return self._table.file.db

    # ------------------------------------------------------------------ opening

    def _open(self, first: bool = False) -> bool:
        """Open (or reopen) the database (storage moves a corrupt one aside). False if it cannot be opened now."""
        try:
            stored_last, top, dropped, holding = self._table.open()
        except (sqlite3.Error, OSError) as exc:
            self._table.close()
            if first and storage.is_permission_problem(exc, self.path):
                raise UserError(
                    f"{self.path}: cannot open the outbox ({exc}); check state_dir and its permissions"
                ) from None
            self._storage_failed("open the outbox", exc)
            return False
        with self._lock:
            self._drops.total = max(self._drops.total, dropped)  # the database's count, and any held since
            self._last = continue_seq(self._last, self._mark_value, stored_last, top, holding or bool(self._held))
            self._reserved = max(self._reserved, self._last)
            self._holding = holding
        if self._table.file.moved_aside is not None:
            logger.info("outbox: seq continues above %d", self._last)
        self.storage_error = ""
        return True

    def _usable(self) -> bool:
        """The database is open (reopened if its file was deleted or replaced), or could be opened again just now
        (tried once a minute)."""
        if self._db is not None:
            if not self._table.file.replaced():
                return True
            logger.warning(
                "outbox %s was deleted or replaced while open: the events it held (%d) are gone with it; a new "
                "outbox starts at that path, seq continues above %d",
                self.path, self._table.count, self._last,
            )  # fmt: skip
            self._table.close()
            return self._open()
        return self._reopen.ready() and self._open()

    # ------------------------------------------------------------------ the queue

    def append(self, event: dict[str, Any], hold: bool = False) -> int:
        """Give the event its `seq` and keep it; return the seq (OutboxWriteError if it cannot be kept).

        `hold`: the broker is connected and the event is about to be published: keep it in memory, and write it
        down only if it is not acknowledged within `hold_s`. Otherwise it is durable before this returns.
        """
        with self._lock:
            seq = self._last + 1
            if seq > self._reserved:
                try:
                    self._mark.write(seq + RESERVE - 1)
                except OSError as exc:  # without a durable mark a later start could hand this seq out again
                    self._storage_failed("write the seq mark", exc)
                    raise OutboxWriteError(f"{self._mark.path}: {exc.strerror or exc}") from None
                self._reserved = self._mark_value = seq + RESERVE - 1
            payload = json.dumps({**event, "seq": seq}, separators=(",", ":"))
            if hold and not self._holding:
                hold = self._start_holding()
            if hold:
                self._held[seq] = _Held(payload, time.time(), time.monotonic())
                self._bound_held()
            else:
                if not self._usable():
                    raise OutboxWriteError(f"{self.path}: {self.storage_error or 'not open'}")
                try:
                    self._write({seq: _Held(payload, time.time(), time.monotonic())}, exact=not self._held)
                except sqlite3.Error as exc:  # rolled back: the seq was not used and goes to the next event
                    self._storage_failed("store an event", exc)
                    raise OutboxWriteError(f"{self.path}: {exc}") from None
            self._last = seq
        event["seq"] = seq
        return seq

    def persist_due(self, now: float | None = None) -> None:
        """Write down the held events whose acknowledgement has not come within `hold_s` (one transaction)."""
        with self._lock:
            limit = (time.monotonic() if now is None else now) - self.hold_s
            due = {seq: h for seq, h in self._held.items() if h.mono <= limit}
            if due:
                self._persist(due)

    def _start_holding(self) -> bool:
        """Record (synced) that seqs may now be handed out beyond the database's last_seq; False if it cannot be,
        and then the event is written down before it is published, as while the broker is away."""
        if not self._usable():
            return False
        try:
            self._table.set_holding()
        except sqlite3.Error as exc:
            self._storage_failed("record that events are held", exc)
            return False
        self._holding = True
        return True

    def persist(self, seqs: Iterable[int]) -> None:
        """Write these held events down now (the broker refused them: they will wait)."""
        with self._lock:
            due = {s: self._held[s] for s in seqs if s in self._held}
            if due:
                self._persist(due)

    def pending(self, after_seq: int, limit: int) -> list[Pending]:
        """The oldest kept events with seq > after_seq, in order (stored and held)."""
        with self._lock:
            rows: list[tuple[int, str]] = []
            if self._table.count and self._usable():
                try:
                    rows = self._table.after(after_seq, limit)
                except sqlite3.Error as exc:
                    self._storage_failed("read the outbox", exc)
            held = sorted((s, h.payload) for s, h in self._held.items() if s > after_seq)[:limit]
        merged = sorted({**dict(rows), **dict(held)}.items())[:limit]
        return [Pending(seq, payload) for seq, payload in merged]

    def get(self, seqs: Iterable[int]) -> list[Pending]:
        """These events, where still kept, in seq order."""
        wanted = sorted(set(seqs))
        with self._lock:
            found = {s: self._held[s].payload for s in wanted if s in self._held}
            rest = [s for s in wanted if s not in found]
            if rest and self._table.count and self._usable():
                try:
                    found.update(self._table.some(rest))
                except sqlite3.Error as exc:
                    self._storage_failed("read the outbox", exc)
        return [Pending(s, found[s]) for s in sorted(found)]

    def ack(self, seq: int) -> bool:
        return self.ack_many([seq])

    def ack_many(self, seqs: Iterable[int]) -> bool:
        """The broker has these: forget them (one transaction). False if it could not be recorded (they stay, and
        go to the broker again after a restart: at least once)."""
        with self._lock:
            stored = [s for s in seqs if self._held.pop(s, None) is None]
            if not stored:
                return True
            if not self._usable():
                return False
            try:
                self._table.delete(stored)
                return True
            except sqlite3.Error as exc:
                self._storage_failed("record acknowledgements", exc)
                return False

    def depth(self) -> int:
        with self._lock:
            return self._table.count + len(self._held)

    @property
    def held(self) -> int:
        with self._lock:
            return len(self._held)

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._drops.total

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._last

    def close(self) -> None:
        """Write down what is held, and the mark down to the last seq (the next start continues without a gap)."""
        with self._lock:
            if self._held:
                if self._db is not None or self._open():
                    self._persist(dict(self._held))
                if self._held:
                    logger.error(
                        "%d event(s) not acknowledged by the broker could not be written to %s (%s) and are lost",
                        len(self._held), self.path, self.storage_error,
                    )  # fmt: skip
                    self._held.clear()
            clean = True
            if self._db is not None:
                try:
                    self._table.record_last(self._last)
                except sqlite3.Error as exc:
                    self._storage_failed("record the last seq", exc)
                    clean = False
                self._table.close()
            else:
                clean = False
            if clean and self._mark_value != self._last:
                try:
                    self._mark.write(self._last)
                    self._mark_value = self._reserved = self._last
                except OSError as exc:  # the mark stays ahead: the next start leaves a gap, never a repeat
                    self._storage_failed("write the seq mark", exc)

    # ------------------------------------------------------------------ internals (lock held)

    def _persist(self, due: dict[int, _Held]) -> None:
        if not self._usable():
            return  # they stay held (and deliverable from memory) until the database can be written
        try:
            self._write(due, exact=set(self._held) <= set(due) and max(due) == self._last)
        except sqlite3.Error as exc:
            self._storage_failed("write held events", exc)
            return
        for seq in due:
            self._held.pop(seq, None)

    def _write(self, events: dict[int, _Held], exact: bool) -> None:
        """`exact`: after this write the database knows every seq handed out (nothing else is held)."""
        try:
            self._insert(events, exact)
        except sqlite3.OperationalError as exc:
            if storage.error_code(exc) != sqlite3.SQLITE_FULL:
                raise
            # A full disk: a WAL that a checkpoint can reset may be what fills it. Once more after truncating it.
            self._table.file.checkpoint()
            self._insert(events, exact)
        self.storage_error = ""

    def _insert(self, events: dict[int, _Held], exact: bool) -> None:
        need = HEADROOM_BYTES + sum(len(h.payload) for h in events.values())
        free = self._table.free()
        if free is not None and free < need and self.make_room is not None:
            self.make_room(need - free + MAKE_ROOM_EXTRA)  # the history gives way first
            free = self._table.free()
        if free is not None and free < need:
            raise _NearlyFull(f"state_dir nearly full (less than {HEADROOM_BYTES >> 10} KiB free, kept for "
                              "acknowledgements)")  # fmt: skip
        dropped = self._table.insert(events, exact, self.max_events - len(self._held), self.max_age_s)
        if exact:
            self._holding = False
        self._drops.add(dropped)

    def _bound_held(self) -> None:
        """Held events that cannot be written down (a broken disk) are bounded like stored ones."""
        now = time.monotonic()
        stale = [s for s, h in self._held.items() if h.mono < now - self.max_age_s]
        over = sorted(self._held)[: max(0, len(self._held) + self._table.count - self.max_events)]
        gone = set(stale) | set(over)
        for s in gone:
            del self._held[s]
        self._drops.add(len(gone))

    def _storage_failed(self, what: str, exc: BaseException) -> None:
        """One line a minute. After an error that may have broken the connection (an I/O error, a damaged file, a
        connection closed under it) it is closed and reopened once a minute: the reopen checks the file, and only a
        corrupt one is moved aside. A lock or a full disk leaves the connection as it is."""
        why = storage.reason(exc)
        self.storage_error = f"cannot {what}: {why}"
        if self._error_log.ready():
            logger.error(
                "outbox %s: cannot %s (%s); events are kept in memory while the broker takes them, "
                "free space in state_dir or check its file system",
                self.path, what, why,
            )  # fmt: skip
        broken = storage.is_corrupt(exc) or storage.is_io_error(exc) or isinstance(exc, sqlite3.ProgrammingError)
        if self._db is not None and broken:
            self._table.close()
            self._reopen.ready()  # not at once: the next minute
