"""The on-disk queue that keeps events across broker outages and restarts.

SQLite in WAL mode in the state directory. An event is stored, with the next
`seq`, before anything tries to publish it, and removed only when the broker
has acknowledged it (QoS 1 PUBACK). `seq` comes from a counter in the same
database, so it continues after a restart and is never reused, even when the
queue was empty. When the size or age bound forces a drop, the oldest events
go first and the count is kept for `stats`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

logger = logging.getLogger(__name__)

FILENAME = "outbox.sqlite3"


@dataclass(frozen=True)
class Pending:
    seq: int
    payload: str


class Outbox:
    """Thread-safe: the fusion thread appends, the MQTT thread reads and acknowledges."""

    def __init__(self, state_dir: Path, max_events: int = 100_000, max_age_s: float = 7 * 86400) -> None:
        self.path = Path(state_dir) / FILENAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process kill; only a power cut can lose the last commits.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, created REAL, payload TEXT)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('last_seq', 0), ('dropped', 0)")
        except sqlite3.Error as exc:
            raise UserError(
                f"{self.path}: cannot open the outbox ({exc}); check state_dir and its permissions"
            ) from None
        self._lock = threading.Lock()
        self.max_events = max_events
        self.max_age_s = max_age_s

    def append(self, event: dict[str, Any]) -> int:
        """Give the event its `seq`, store it durably, and return the seq."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            seq = self._meta("last_seq") + 1
            event["seq"] = seq
            self._db.execute("UPDATE meta SET value=? WHERE key='last_seq'", (seq,))
            self._db.execute(
                "INSERT INTO events VALUES (?, ?, ?)", (seq, time.time(), json.dumps(event, separators=(",", ":")))
            )
            self._enforce_bounds()
        return seq

    def pending(self, after_seq: int, limit: int) -> list[Pending]:
        """The oldest stored events with seq > after_seq, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            ).fetchall()
        return [Pending(seq, payload) for seq, payload in rows]

    def ack(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM events WHERE seq = ?", (seq,))

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._meta("dropped")

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._meta("last_seq")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    def _enforce_bounds(self) -> None:
        cutoff = time.time() - self.max_age_s
        old = self._db.execute("DELETE FROM events WHERE created < ?", (cutoff,)).rowcount
        over = self._db.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq DESC LIMIT -1 OFFSET ?)",
            (self.max_events,),
        ).rowcount
        if old or over:
            self._db.execute("UPDATE meta SET value = value + ? WHERE key='dropped'", (old + over,))
            logger.warning(
                "outbox full: dropped %d oldest undelivered event(s) (%d by age, %d by size); see stats.outbox_dropped",
                old + over,
                old,
                over,
            )
