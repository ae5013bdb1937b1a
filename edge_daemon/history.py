"""The local emotion history: every event's times, labels and scores, kept in `state_dir/history.sqlite3`.

Unlike the outbox, whose rows go once the broker has them, the history keeps events for
`history.max_days` (and under `history.max_mb`) for the device page, the HTTP API and
`emotion-edge history export`. It holds labels, scores and times only: never a frame or a sample.

Off the hot path: the fusion thread only puts the event on a bounded queue (`record`); one writer
thread stores them in batches. A history that cannot be written (full disk, read-only card, a
corrupt file) never stops the daemon: the events it cannot keep are counted (`stats.history`),
said once a minute, and writing resumes by itself (a corrupt file is moved aside and a new one
started).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import UserError
from .labels import emoji_of
from .throttle import Throttle

logger = logging.getLogger(__name__)

FILENAME = "history.sqlite3"
QUEUE_MAX = 2000  # events waiting for the writer; a writer stuck for over an hour of windows drops (and counts)
BATCH = 200
PURGE_EVERY_S = 3600.0
SIZE_CHECK_EVERY = 100  # inserts between two size checks
REOPEN_AFTER_S = 30.0  # an unusable database is tried again this often

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

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY,
  ts REAL NOT NULL,
  seq INTEGER, event_id TEXT UNIQUE, window_start TEXT, window_end TEXT, emotion TEXT, confidence REAL,
  face_label TEXT, face_confidence REAL, speech_label TEXT, speech_confidence REAL,
  media_start_s REAL, media_end_s REAL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
"""


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
    """Writer side (in the daemon) and reader side (page, API, CLI) of the history database."""

    def __init__(self, state_dir: Path, max_days: int = 30, max_mb: int = 100) -> None:
        self.path = Path(state_dir) / FILENAME
        self.max_age_s = max_days * 86400.0
        self.max_bytes = max_mb * 1024 * 1024
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_MAX)
        self._lock = threading.Lock()  # guards the counters below
        self.written = 0
        self.dropped = 0  # the queue was full
        self.write_failed = 0  # the database refused them
        self.purged_age = 0
        self.purged_size = 0
        self._fail_log = Throttle()
        self._db: sqlite3.Connection | None = None
        self._next_open = 0.0
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ writer (daemon)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="history", daemon=True)
        self._thread.start()

    def record(self, event: dict[str, Any]) -> None:
        """Called from the fusion thread: never blocks, never raises for a full or broken history."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def close(self, timeout_s: float = 2.0) -> None:
        """Store what is queued (up to `timeout_s`) and stop the writer."""
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=timeout_s)
            except queue.Full:
                pass
            self._thread.join(timeout_s)
            self._thread = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "written": self.written,
                "dropped": self.dropped,
                "write_failed": self.write_failed,
                "purged_age": self.purged_age,
                "purged_size": self.purged_size,
                "queued": self._queue.qsize(),
            }

    def _run(self) -> None:
        next_purge = 0.0
        inserts_since_check = 0
        while True:
            item = self._queue.get()
            batch = [item] if item is not None else []
            stop = item is None
            while not stop and len(batch) < BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                else:
                    batch.append(nxt)
            if batch:
                db = self._connection()
                if db is not None and self._write(db, batch):
                    inserts_since_check += len(batch)
                    now = time.monotonic()
                    if now >= next_purge:
                        next_purge = now + PURGE_EVERY_S
                        self._guard(db, self._purge_age)
                    if inserts_since_check >= SIZE_CHECK_EVERY:
                        inserts_since_check = 0
                        self._guard(db, self._enforce_size)
                else:
                    self._failed(len(batch), None)
            if stop:
                return

    def _connection(self) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        if time.monotonic() < self._next_open:
            return None
        try:
            self._db = self._open()
            logger.info("history: %s open", self.path)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # cannot open or write: try again later
                self._next_open = time.monotonic() + REOPEN_AFTER_S
                self._failed(0, exc)
                return None
            self._db = self._replace_corrupt(exc)
        except OSError as exc:
            self._next_open = time.monotonic() + REOPEN_AFTER_S
            self._failed(0, exc)
        return self._db

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # survives a kill and a power cut; readers never block the writer
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            db.execute("SELECT COUNT(*) FROM events WHERE id < 0").fetchone()  # reads a page: finds a corrupt file
        except BaseException:
            db.close()
            raise
        return db

    def _replace_corrupt(self, exc: Exception) -> sqlite3.Connection | None:
        """A file that is not a database (or a damaged one) is moved aside, so the history starts over instead of
        failing forever; what it held stays there for whoever wants to rescue it."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        logger.error("history: %s is damaged (%s); moved it to %s and started a new history", self.path, exc, aside)
        try:
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return self._open()
        except (OSError, sqlite3.Error) as again:
            self._next_open = time.monotonic() + REOPEN_AFTER_S
            self._failed(0, again)
            return None

    def _write(self, db: sqlite3.Connection, batch: list[dict[str, Any]]) -> bool:
        try:
            rows = [row_of(e) for e in batch]
        except (KeyError, TypeError, ValueError) as exc:  # not an event: a programming error elsewhere, say so
            logger.error("history: cannot store an event (%s)", exc)
            with self._lock:
                self.write_failed += len(batch)
            return True
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    f"INSERT OR IGNORE INTO events (ts, {', '.join(_STORED)}) VALUES ({', '.join('?' * 13)})", rows
                )
        except sqlite3.DatabaseError as exc:
            self._drop_connection(exc)
            self._failed(len(batch), exc)
            return True  # counted here
        with self._lock:
            self.written += len(batch)
        self._fail_log.reset()
        return True

    def _drop_connection(self, exc: Exception) -> None:
        """After a failed write, start from a fresh connection (and move a damaged file aside) on the next batch."""
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        if not isinstance(exc, sqlite3.OperationalError):
            self._db = self._replace_corrupt(exc)

    def _failed(self, n: int, exc: Exception | None) -> None:
        with self._lock:
            self.write_failed += n
            total = self.write_failed
        if self._fail_log.ready():
            logger.error(
                "history: cannot write %s (%s): %d event(s) not kept so far; free space in state_dir or fix its "
                "permissions (stats.history.write_failed)",
                self.path, exc or "unusable", total,
            )  # fmt: skip

    def _guard(self, db: sqlite3.Connection, fn: Any) -> None:
        try:
            fn(db)
        except sqlite3.DatabaseError as exc:
            self._drop_connection(exc)
            self._failed(0, exc)

    def _purge_age(self, db: sqlite3.Connection) -> None:
        n = db.execute("DELETE FROM events WHERE ts < ?", (time.time() - self.max_age_s,)).rowcount
        if n:
            with self._lock:
                self.purged_age += n
            logger.info("history: purged %d event(s) older than %.0f days", n, self.max_age_s / 86400)

    def _enforce_size(self, db: sqlite3.Connection) -> None:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        used = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        if used * page_size <= self.max_bytes:
            return
        total = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        n = max(1, total // 10)  # a tenth at a time: freed pages are reused, the file stays near the cap
        db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY ts LIMIT ?)", (n,))
        with self._lock:
            self.purged_size += n
        logger.warning("history: over history.max_mb (%d MB): deleted the oldest %d event(s)", self.max_bytes >> 20, n)


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
    """Queries on the history file; each call opens its own short-lived connection (safe from any thread)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / FILENAME

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
