"""The on-disk queue that keeps events across broker outages and restarts.

SQLite in WAL mode in the state directory. An event is stored, with the next
`seq`, before anything tries to publish it, and removed only when the broker
has acknowledged it (QoS 1 PUBACK). `seq` comes from a counter in the same
database, so it continues after a restart and is never reused, even when the
queue was empty. When the size or age bound forces a drop, the oldest events
go first and the count is kept for `stats`.

Age is counted on the monotonic clock, not the wall clock: a board without a
real-time clock may queue events at a stale time and have NTP step the clock
by days once the network (and the broker) is back, exactly when the backlog
is about to drain. Events from an earlier boot are aged by the wall clock,
from when this process opened the queue.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .throttle import Throttle

logger = logging.getLogger(__name__)

FILENAME = "outbox.sqlite3"
# A stored wall time before this was taken by a clock that had not been set (1970, or an image's build date).
PLAUSIBLE_SINCE = 1735689600.0  # 2025-01-01 UTC


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
            with self._db:  # one transaction: a migration cut short by a kill is rolled back, not left half done
                self._db.execute("BEGIN IMMEDIATE")  # and a second process waits instead of adding a column twice
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
                # Queues written before ages were monotonic lack these.
                if "boot" not in columns:
                    self._db.execute("ALTER TABLE events ADD COLUMN boot TEXT NOT NULL DEFAULT ''")
                if "mono" not in columns:
                    self._db.execute("ALTER TABLE events ADD COLUMN mono REAL NOT NULL DEFAULT 0")
                self._db.execute("CREATE INDEX IF NOT EXISTS events_mono ON events (mono)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('last_seq', 0), ('dropped', 0)")
            self._boot = boot_id()
            self._rebase_earlier_boots()
        except (sqlite3.Error, OSError) as exc:  # OSError: the directory cannot be made (a file, /proc, no rights)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise UserError(
                f"{self.path}: cannot open the outbox ({reason}); check state_dir and its permissions"
            ) from None
        self._lock = threading.Lock()
        self.max_events = max_events
        self.max_age_s = max_age_s
        self._unlogged_drops = 0
        # An outbox at its bound drops on every append: say so once a minute, with the count.
        self._drop_log = Throttle()

    def append(self, event: dict[str, Any]) -> int:
        """Give the event its `seq`, store it durably, and return the seq (OutboxWriteError if it cannot)."""
        try:
            with self._lock, self._db:
                self._db.execute("BEGIN IMMEDIATE")
                seq = self._meta("last_seq") + 1
                self._db.execute("UPDATE meta SET value=? WHERE key='last_seq'", (seq,))
                self._db.execute(
                    "INSERT INTO events (seq, created, payload, boot, mono) VALUES (?, ?, ?, ?, ?)",
                    (seq, time.time(), json.dumps({**event, "seq": seq}, separators=(",", ":")), self._boot,
                     time.monotonic()),
                )  # fmt: skip
                self._enforce_bounds()
        except sqlite3.Error as exc:  # the transaction was rolled back: the seq was not used
            raise OutboxWriteError(f"{self.path}: {exc}") from None
        event["seq"] = seq
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

    def _rebase_earlier_boots(self) -> None:
        """Give events from an earlier boot a monotonic time of this boot that keeps their age by the wall clock;
        an age that the wall clock cannot tell (a clock that was not set, or one that went back) counts from now."""
        wall, mono = time.time(), time.monotonic()
        self._db.execute(
            "UPDATE events SET boot = ?, mono = ? - CASE WHEN created < ? OR created > ? THEN 0 ELSE ? - created END"
            " WHERE boot != ?",
            (self._boot, mono, PLAUSIBLE_SINCE, wall, wall, self._boot),
        )

    def _enforce_bounds(self) -> None:
        old = self._db.execute("DELETE FROM events WHERE mono < ?", (time.monotonic() - self.max_age_s,)).rowcount
        over = self._db.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq DESC LIMIT -1 OFFSET ?)",
            (self.max_events,),
        ).rowcount
        if old or over:
            self._db.execute("UPDATE meta SET value = value + ? WHERE key='dropped'", (old + over,))
            self._unlogged_drops += old + over
        if self._unlogged_drops and self._drop_log.ready():
            logger.warning(
                "outbox full: dropped %d oldest undelivered event(s) since the last such line (bounds: "
                "outbox.max_events %d, outbox.max_age_s %.0f); see stats.drops.outbox_dropped",
                self._unlogged_drops, self.max_events, self.max_age_s,
            )  # fmt: skip
            self._unlogged_drops = 0
