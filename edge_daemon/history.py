"""The local emotion history: every event's times, labels and scores, kept in `state_dir/history.sqlite3`.

Unlike the outbox, whose rows go once the broker has them, the history keeps events for
`history.max_days` (and under `history.max_mb`) for the device page, the HTTP API and
`emotion-edge history export`. It holds labels, scores and times only: never a frame or a sample.

Off the hot path, and easy on an SD card: the fusion thread only adds the event to a bounded list
in memory (`record`); one writer thread commits what has gathered in one transaction every
`FLUSH_EVERY_S` (and at a clean stop), so a day at 2 s windows is 480 small commits, not 43,200.
A power cut costs the history at most the events of one interval (each commit is synced; the
outbox, synced per store, loses nothing by it). New files use 1 KiB pages and a single index that
only grows at its end (the window's time), so a commit touches a handful of pages: see
docs/storage.md for the bytes a day, measured.

The history gives way to the outbox (see `storage`): it leaves `storage.history_floor()` free in
state_dir (reusing the pages of its oldest events when it is short), and `give_way` deletes its
oldest events and hands their space back to the file system when the outbox is short of room.

A history that cannot be written (locked by another process, a full or read-only disk, an I/O
error) never stops the daemon and never loses what it already holds: the events wait in memory and
the commit is tried again; what the bound on memory cannot keep is counted
(`stats.history.dropped`, `write_failed`) and said once a minute. Only a file that SQLite reports
damaged is moved aside (by `storage`); a file deleted or replaced under the daemon is reopened.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import storage
from .errors import UserError
from .labels import emoji_of
from .throttle import Throttle

logger = logging.getLogger(__name__)

FILENAME = "history.sqlite3"
QUEUE_MAX = 2000  # events waiting in memory for a commit (over an hour of 2 s windows); more are counted as dropped
FLUSH_EVERY_S = 180.0  # one commit per interval: what a power cut can cost the history (measured: docs/storage.md)
REOPEN_AFTER_S = 30.0  # a commit that failed (locked, full, read-only, cannot open) is tried again this soon
PURGE_EVERY_S = 3600.0
READ_COMMIT_EVERY_S = 10.0  # a read by the page commits what waits (so that `history export` agrees), this seldom
BUSY_TIMEOUT_S = 5.0  # how long a commit waits for another process's lock (`history purge`) before it is retried
EVENT_BYTES = 400  # about what one stored event takes (row, index, WAL frame): for the space check before a commit
SCHEMA_VERSION = 2  # 2: 1 KiB pages, incremental vacuum, no unique index on the random event_id
SETTINGS = storage.Settings(
    # FULL: each commit is synced (one fsync a minute), so a power cut costs only what was not committed yet.
    synchronous="FULL",
    wal_pages=256,
    wal_limit_bytes=256 << 10,
    busy_timeout_s=BUSY_TIMEOUT_S,
    page_size=1024,  # a commit of a few dozen events dirties a few KiB, not a few 4 KiB pages
    incremental_vacuum=True,  # so that `give_way` can hand space back to the file system (the outbox)
)

# One row per event: what `history export`, /api/events and /api/events.csv give, in this order.
COLUMNS = (
    "seq",
    "event_id",
    "window_start",
    "window_end",
    "emotion",
    "emoji",
    "confidence",
    "face_label",
    "face_confidence",
    "speech_label",
    "speech_confidence",
    "media_start_s",
    "media_end_s",
)
_STORED = tuple(c for c in COLUMNS if c != "emoji")  # the emoji follows from the emotion

SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY,
  ts REAL NOT NULL,
  seq INTEGER, event_id TEXT, window_start TEXT, window_end TEXT, emotion TEXT, confidence REAL,
  face_label TEXT, face_confidence REAL, speech_label TEXT, speech_confidence REAL,
  media_start_s REAL, media_end_s REAL
)"""
# ts (the window's start) only grows: its index is appended to, and a commit touches its last page or two. event_id
# (random) has no index: each insert would rewrite a random page of it.
SCHEMA = SCHEMA_TABLE + ";\nCREATE INDEX IF NOT EXISTS events_ts ON events (ts);\n"


def parse_time(text: str, what: str = "time") -> float:
    """An ISO 8601 date or time ('2026-11-23', '2026-11-23T12:00', '…Z', '…+01:00') as epoch seconds; naive = UTC."""
    try:
        ts = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"{what}: not an ISO 8601 date or time (e.g. 2026-11-23 or 2026-11-23T12:00Z), got {text!r}"
        ) from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    try:
        return ts.timestamp()
    except (OverflowError, ValueError, OSError):
        raise ValueError(f"{what}: out of range, got {text!r}") from None


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def row_of(event: dict[str, Any]) -> tuple[Any, ...]:
    """The stored columns of one event (ts first)."""
    mods = event.get("modalities") or {}
    face, speech = mods.get("face") or {}, mods.get("speech") or {}
    return (
        _epoch(event["window_start"]),
        event.get("seq"),
        event.get("event_id"),
        event["window_start"],
        event["window_end"],
        event["emotion"],
        event["confidence"],
        face.get("label"),
        face.get("confidence"),
        speech.get("label"),
        speech.get("confidence"),
        event.get("media_start_s"),
        event.get("media_end_s"),
    )


def _as_dict(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    d = dict(zip(_STORED, row, strict=True))
    out = {c: d.get(c) for c in COLUMNS}
    out["emoji"] = emoji_of(d["emotion"])
    return out


class History:
    """Writer side (in the daemon) of the history database; `HistoryReader` is the reader side."""

    def __init__(self, state_dir: Path, max_days: int = 30, max_mb: int = 100) -> None:
        self.path = Path(state_dir) / FILENAME
        self.max_age_s = max_days * 86400.0
        self.max_bytes = max_mb * 1024 * 1024
        self._lock = threading.Lock()  # guards the pending list and the counters below
        self._pending: list[dict[str, Any]] = []
        self.written = 0
        self.dropped = 0  # memory was full (the writer could not commit for a long time)
        self.write_failed = 0  # could not be stored and are not kept (not an event, or a stop with no way to write)
        self.purged_age = 0
        self.purged_size = 0
        self.gave_way = 0  # deleted to leave state_dir's space to the outbox
        self.commits = 0
        self._file = storage.SqliteFile(self.path, SETTINGS, self._schema, "history", "the events it held")
        self._db_lock = threading.Lock()  # the writer thread and `give_way` (the outbox's thread) share the file
        self._fail_log = Throttle()
        self._room_log = Throttle()
        self._wake = threading.Condition()
        self._asked = self._done = 0  # flushes asked for and done
        self._stopping = False
        self._next_purge = 0.0
        self._next_read_commit = 0.0
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the daemon's side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="history", daemon=True)
        self._thread.start()

    def record(self, event: dict[str, Any]) -> None:
        """Called from the fusion thread: never blocks, never raises for a full or broken history."""
        with self._lock:
            if len(self._pending) >= QUEUE_MAX:
                self.dropped += 1
                return
            self._pending.append(event)
            first = len(self._pending) == 1
        if first:  # the writer sleeps while nothing waits; it commits at once if the last commit is long ago
            with self._wake:
                self._wake.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Commit what is waiting now rather than at the end of the interval; True once the writer has tried."""
        with self._wake:
            self._asked += 1
            asked = self._asked
            self._wake.notify_all()
            return self._wake.wait_for(lambda: self._done >= asked or self._thread is None, timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        """Commit what is waiting (up to `timeout_s`) and stop the writer."""
        if self._thread is not None:
            with self._wake:
                self._stopping = True
                self._wake.notify_all()
            self._thread.join(timeout_s)
            self._thread = None
        with self._db_lock:
            with self._lock:
                lost, self._pending = len(self._pending), []
                self.write_failed += lost
            if lost:
                logger.error("history: %d event(s) could not be written to %s and are lost", lost, self.path)
            self._file.close()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "written": self.written,
                "dropped": self.dropped,
                "write_failed": self.write_failed,
                "purged_age": self.purged_age,
                "purged_size": self.purged_size,
                "gave_way": self.gave_way,
                "commits": self.commits,
                "queued": len(self._pending),
            }

    def commit_for_reader(self) -> None:
        """The page is about to read: commit what waits, so that it shows it and a `history export` after it shows
        the same; at most every READ_COMMIT_EVERY_S (an API polled all the time must not bring back a commit per
        event)."""
        with self._lock:
            if not self._pending or time.monotonic() < self._next_read_commit:
                return
            self._next_read_commit = time.monotonic() + READ_COMMIT_EVERY_S
        self.flush(timeout_s=2.0)

    def give_way(self, nbytes: int) -> int:
        """The outbox needs `nbytes` more of state_dir: delete the oldest events (at least that much, at least 100)
        and hand their pages back to the file system. Returns the bytes freed. Called from the outbox's thread."""
        if not self._db_lock.acquire(timeout=2.0):  # the writer waits on another process's lock: do not wait too
            return 0
        try:
            db, before = self._file.db, storage.free_bytes(self.path.parent)
            if db is None or before is None:
                return 0
            count, used = _count_and_used(db)
            if not count:
                return 0
            n = min(count, max(100, math.ceil(2 * nbytes * count / max(used, 1))))
            db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY ts LIMIT ?)", (n,))
            db.executescript("PRAGMA incremental_vacuum;")  # to the end: execute() would free a single page
            self._file.checkpoint()
        except sqlite3.Error as exc:
            self._failed(exc)
            return 0
        finally:
            self._db_lock.release()
        with self._lock:
            self.gave_way += n
        if self._room_log.ready():
            logger.warning(
                "history: state_dir is short of space and the outbox needs it: deleted the oldest %d event(s) of the "
                "history (stats.history.gave_way)",
                n,
            )
        return max(0, (storage.free_bytes(self.path.parent) or before) - before)

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        next_flush = 0.0  # an event after a quiet interval (the first one) is committed at once, the rest wait
        while True:
            with self._wake:
                while not (self._stopping or self._asked > self._done):
                    with self._lock:
                        waiting = bool(self._pending)
                    now = time.monotonic()
                    if waiting and now >= next_flush:
                        break
                    self._wake.wait(next_flush - now if waiting else None)  # `record` wakes it
                asked, stopping = self._asked, self._stopping
            ok = self._flush_now()
            next_flush = time.monotonic() + (FLUSH_EVERY_S if ok else min(FLUSH_EVERY_S, REOPEN_AFTER_S))
            with self._wake:
                self._done = asked
                self._wake.notify_all()
            if stopping:
                return

    def _flush_now(self) -> bool:
        """One commit of everything waiting, then the bounds. False if it failed (the events wait for the next)."""
        with self._db_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch and self._file.db is None:
                return True  # nothing to store: no file is made for it
            try:
                db = self._connection()
                if batch:
                    self._commit(db, batch)
                    batch = []
                self._maintain(db)
                return True
            except (sqlite3.Error, OSError) as exc:
                if batch:
                    self._put_back(batch)
                self._failed(exc)
                if storage.is_corrupt(exc) or storage.is_io_error(exc) or isinstance(exc, sqlite3.ProgrammingError):
                    self._file.close()  # reopened (and checked) on the next try; only a corrupt file is moved aside
                return False

    def _connection(self) -> sqlite3.Connection:
        if self._file.db is None:
            self._file.open()
            logger.info("history: %s open", self.path)
        else:
            self._file.reopen_if_replaced()
        assert self._file.db is not None
        return self._file.db

    def _commit(self, db: sqlite3.Connection, batch: list[dict[str, Any]]) -> None:
        rows = []
        for e in batch:
            try:
                rows.append(row_of(e))
            except (KeyError, TypeError, ValueError) as exc:  # not an event: a programming error elsewhere, say so
                logger.error("history: cannot store an event (%s)", exc)
                with self._lock:
                    self.write_failed += 1
        if not rows:
            return
        with db:
            db.execute("BEGIN IMMEDIATE")
            self._make_room(db, len(rows))
            db.executemany(
                f"INSERT OR IGNORE INTO events (ts, {', '.join(_STORED)}) VALUES ({', '.join('?' * 13)})", rows
            )
        with self._lock:
            self.written += len(rows)
            self.commits += 1
        self._fail_log.reset()

    def _make_room(self, db: sqlite3.Connection, n: int) -> None:
        """Stay above the free space kept for the outbox (storage.history_floor): when state_dir is short, the pages
        of as many old events are reused and the file does not grow. Raises NoRoom when there is nothing to give."""
        free = storage.free_bytes(self.path.parent)
        if free is None:
            return
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        need = n * EVENT_BYTES - db.execute("PRAGMA freelist_count").fetchone()[0] * page_size
        try:  # the WAL may still grow to its checkpoint size: that room is taken too
            wal = Path(f"{self.path}-wal").stat().st_size
        except OSError:
            wal = 0
        need += max(0, SETTINGS.wal_pages * (page_size + 24) - wal)
        floor = storage.history_floor(self.path.parent)
        if need <= 0 or free - need >= floor:
            return
        count, _ = _count_and_used(db)
        if count < 2 * n:
            raise NoRoom(f"state_dir has less than {floor >> 10} KiB free, which the history leaves to the outbox")
        gone = db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY ts LIMIT ?)", (2 * n,))
        with self._lock:
            self.purged_size += gone.rowcount

    def _put_back(self, batch: list[dict[str, Any]]) -> None:
        with self._lock:
            self._pending = batch + self._pending
            over = len(self._pending) - QUEUE_MAX
            if over > 0:
                del self._pending[:over]  # the oldest go: the newest are what the page shows
                self.dropped += over

    def _maintain(self, db: sqlite3.Connection) -> None:
        now = time.monotonic()
        if now >= self._next_purge:
            self._next_purge = now + PURGE_EVERY_S
            self._purge_age(db)
        self._enforce_size(db)

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            waiting, lost = len(self._pending), self.write_failed + self.dropped
        if self._fail_log.ready():
            logger.error(
                "history: cannot write %s (%s): %d event(s) wait in memory for the next try, %d not kept so far; "
                "free space in state_dir or fix its permissions (stats.history.write_failed)",
                self.path, storage.reason(exc), waiting, lost,
            )  # fmt: skip

    def _schema(self, db: sqlite3.Connection) -> None:
        new = not db.execute("SELECT 1 FROM sqlite_master WHERE name='events'").fetchone()
        db.executescript(SCHEMA)
        if new:  # storage.SqliteFile gave it the pages of SETTINGS
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            _migrate(db, self.path)

    def _purge_age(self, db: sqlite3.Connection) -> None:
        n = db.execute("DELETE FROM events WHERE ts < ?", (time.time() - self.max_age_s,)).rowcount
        if n:
            with self._lock:
                self.purged_age += n
            logger.info("history: purged %d event(s) older than %.0f days", n, self.max_age_s / 86400)

    def _enforce_size(self, db: sqlite3.Connection) -> None:
        total, used = _count_and_used(db)
        if used <= self.max_bytes:
            return
        n = max(1, total // 10)  # a tenth at a time: freed pages are reused, the file stays near the cap
        db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY ts LIMIT ?)", (n,))
        with self._lock:
            self.purged_size += n
        logger.warning("history: over history.max_mb (%d MB): deleted the oldest %d event(s)", self.max_bytes >> 20, n)


class NoRoom(sqlite3.OperationalError):
    """state_dir is short of space and the history has nothing left to give: its events wait (not a corruption)."""


def _count_and_used(db: sqlite3.Connection) -> tuple[int, int]:
    """(events, bytes of the file in use)."""
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    used = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
    return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0]), used * page_size


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring a history written by an earlier version to SCHEMA_VERSION: drop the unique index on the random event_id
    (each insert rewrote a random page of it), then 1 KiB pages and incremental vacuum (a VACUUM). This writes the
    file about three times, once: only when state_dir has that room; until then the file keeps its format."""
    size = path.stat().st_size
    free = storage.free_bytes(path.parent)
    if free is not None and free < 3 * size + storage.history_floor(path.parent):
        logger.info("history: %s keeps its earlier format until state_dir has room to convert it", path)
        return
    cols = ", ".join(("id", "ts", *_STORED))
    with db:
        db.execute("BEGIN IMMEDIATE")
        if db.execute("SELECT 1 FROM sqlite_master WHERE name='sqlite_autoindex_events_1'").fetchone():
            db.execute(SCHEMA_TABLE.replace("CREATE TABLE IF NOT EXISTS events", "CREATE TABLE events_v2"))
            db.execute(f"INSERT INTO events_v2 ({cols}) SELECT {cols} FROM events")
            db.execute("DROP TABLE events")
            db.execute("ALTER TABLE events_v2 RENAME TO events")
            db.execute("CREATE INDEX events_ts ON events (ts)")
    try:  # the page size changes only outside WAL; a reader holding the file open makes this wait for a later start
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("PRAGMA page_size=1024")
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("VACUUM")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.OperationalError as exc:
        logger.info("history: %s not converted yet (%s); tried again at the next start", path, exc)
    else:
        logger.info("history: %s converted to the format that writes less (schema %d)", path, SCHEMA_VERSION)
    finally:
        db.execute("PRAGMA journal_mode=WAL")


# ---------------------------------------------------------------------- reading (page, API, CLI)


class HistoryUnavailable(Exception):
    """The history cannot be read now (damaged, locked for too long, or unreadable)."""


def _reading(empty: Any) -> Any:
    """A query on a history the writer has only just created (no table yet) gives `empty`; other failures raise
    HistoryUnavailable, for the page to answer 503 and the CLI to say in one line."""

    def decorate(fn: Any) -> Any:
        def wrapper(self: HistoryReader, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return type(empty)(empty)
                raise HistoryUnavailable(f"{self.path}: {exc}") from None
            except sqlite3.DatabaseError as exc:
                raise HistoryUnavailable(f"{self.path}: {exc}") from None

        return wrapper

    return decorate


class HistoryReader:
    """Queries on the history file; each call opens its own short-lived connection (safe from any thread). With the
    daemon's `writer` (the page), a query first has it commit what waits: the page is not minutes behind, and a
    `history export` after it shows the same events."""

    def __init__(self, state_dir: Path, writer: History | None = None) -> None:
        self.path = Path(state_dir) / FILENAME
        self._writer = writer

    def _commit_waiting(self) -> None:
        if self._writer is not None:
            self._writer.commit_for_reader()

    def exists(self) -> bool:
        return self.path.is_file()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)

    @_reading([])
    def events(self, since: float | None = None, until: float | None = None, limit: int | None = None) -> list[dict]:
        """Events whose window starts in [since, until), oldest first; with `limit`, the newest `limit` of them."""
        return list(self.iter_events(since, until, limit))

    def iter_events(
        self, since: float | None = None, until: float | None = None, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        self._commit_waiting()
        if not self.exists():
            return
        where, args = self._range(since, until)
        cols = ", ".join(_STORED)
        if limit is None:
            sql, args2 = f"SELECT {cols} FROM events{where} ORDER BY ts, id", args
        else:
            sql = f"SELECT {cols} FROM (SELECT * FROM events{where} ORDER BY ts DESC, id DESC LIMIT ?) ORDER BY ts, id"
            args2 = [*args, limit]
        db = self._connect()
        try:
            for row in db.execute(sql, args2):
                yield _as_dict(row)
        finally:
            db.close()

    @_reading([])
    def hourly(self, since: float, until: float) -> list[dict[str, Any]]:
        """Counts per emotion for each UTC hour in [since, until): [{"hour": ISO, "counts": {emotion: n}}]."""
        self._commit_waiting()
        if not self.exists():
            return []
        db = self._connect()
        try:
            rows = db.execute(
                "SELECT CAST(ts / 3600 AS INTEGER) AS h, emotion, COUNT(*) FROM events WHERE ts >= ? AND ts < ?"
                " GROUP BY h, emotion ORDER BY h",
                (since, until),
            ).fetchall()
        finally:
            db.close()
        hours: dict[int, dict[str, int]] = {}
        for h, emotion, n in rows:
            hours.setdefault(h, {})[emotion] = n
        return [
            {"hour": datetime.fromtimestamp(h * 3600, timezone.utc).strftime("%Y-%m-%dT%H:00Z"), "counts": c}
            for h, c in hours.items()
        ]

    @_reading(0)
    def count(self) -> int:
        self._commit_waiting()
        if not self.exists():
            return 0
        db = self._connect()
        try:
            return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        finally:
            db.close()

    def purge(self, before: float | None) -> int:
        """Delete events whose window started before `before` (all of them for None); returns how many."""
        if not self.exists():
            return 0
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        try:
            where, args = self._range(None, before)
            n = db.execute(f"DELETE FROM events{where}", args).rowcount
            db.executescript("PRAGMA incremental_vacuum;")  # the space back to state_dir (files of schema 2)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return int(n)
        finally:
            db.close()

    @staticmethod
    def _range(since: float | None, until: float | None) -> tuple[str, list[float]]:
        conds, args = [], []
        if since is not None:
            conds.append("ts >= ?")
            args.append(since)
        if until is not None:
            conds.append("ts < ?")
            args.append(until)
        return (" WHERE " + " AND ".join(conds) if conds else ""), args


def csv_lines(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The header, then one CSV line per row (empty cells for a modality that saw nothing)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    yield buf.getvalue()
    for row in rows:
        buf.seek(0)
        buf.truncate()
        writer.writerow(["" if row[c] is None else row[c] for c in COLUMNS])
        yield buf.getvalue()


def jsonl_lines(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row, ensure_ascii=False) + "\n"


def open_for_cli(state_dir: Path) -> HistoryReader:
    """The history of a state_dir for the CLI: a clear error when there is none."""
    reader = HistoryReader(state_dir)
    if not reader.exists():
        raise UserError(
            f"{reader.path}: no history here (history.enabled is false, or the daemon has not stored an event in "
            "this state_dir yet); pass --state-dir or --config for another one"
        )
    try:
        reader.count()
    except HistoryUnavailable as exc:
        raise UserError(f"cannot read the history ({exc})") from None
    return reader
