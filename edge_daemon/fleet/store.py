"""Writing what the collector receives to PostgreSQL: events once each, device status kept current.

One batch is one transaction. Events go in with `INSERT ... ON CONFLICT (device_id, event_id, window_start) DO
NOTHING` (a re-sent event carries its own window_start), so an event the broker delivers again (after a collector
crash, a reconnect, a device that re-sent it from its outbox) is stored once. Device status keeps only the latest value of each kind per device.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

logger = logging.getLogger(__name__)

KINDS = ("events", "availability", "state", "status", "stats")

INSERT_EVENT = """
INSERT INTO events (device_id, event_id, seq, window_start, window_end, emotion, confidence, face_count, payload)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (device_id, event_id, window_start) DO NOTHING
"""
INSERT_REJECTED = "INSERT INTO rejected (topic, reason, payload) VALUES (%s, %s, %s)"
# The status columns of each kind; `{col}` is one of availability, state, status, stats (never user input).
UPSERT_STATUS = """
INSERT INTO devices (device_id, {col}, {col}_at) VALUES (%s, %s, %s)
ON CONFLICT (device_id) DO UPDATE SET {col} = EXCLUDED.{col}, {col}_at = EXCLUDED.{col}_at
"""
UPSERT_PROGRESS = """
INSERT INTO devices (device_id, last_seq, last_event_at) VALUES (%s, %s, %s)
ON CONFLICT (device_id) DO UPDATE SET
    last_seq = GREATEST(devices.last_seq, EXCLUDED.last_seq),
    last_event_at = GREATEST(devices.last_event_at, EXCLUDED.last_event_at)
"""


@dataclass(frozen=True)
class Message:
    """One MQTT message as the collector received it; `mid`/`generation` say how to acknowledge it."""

    kind: str
    device_id: str
    topic: str
    payload: bytes
    received: float  # wall clock
    mid: int = 0
    qos: int = 0
    generation: int = 0
    handle: Any = field(default=None, compare=False)  # JetStream: the message to acknowledge


@dataclass
class Written:
    events: int = 0  # new rows
    duplicates: int = 0  # events already stored
    rejected: int = 0
    status: int = 0


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def event_row(msg: Message) -> tuple[Any, ...] | str:
    """The events row for a message on …/events, or why it is not an event we can store."""
    try:
        event = json.loads(msg.payload)
    except (ValueError, UnicodeDecodeError):
        return "not JSON"
    if not isinstance(event, dict):
        return "not a JSON object"
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 200:
        return "no event_id"
    start = _time(event.get("window_start"))
    if start is None:
        return "no window_start"
    # The topic names the device, not the payload: the broker's ACL lets a device publish only under its own topic.
    if event.get("device_id") not in (None, msg.device_id):
        return f"device_id {str(event.get('device_id'))[:80]!r} does not match the topic"
    seq = event.get("seq")
    confidence = event.get("confidence")
    faces = event.get("face_count")
    return (
        msg.device_id,
        event_id,
        seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        start,
        _time(event.get("window_end")),
        str(event.get("emotion"))[:64] if event.get("emotion") is not None else None,
        float(confidence) if isinstance(confidence, (int, float)) and not isinstance(confidence, bool) else None,
        faces if isinstance(faces, int) and not isinstance(faces, bool) else None,
        Jsonb(event),
    )


def _status_value(msg: Message) -> Any:
    if msg.kind == "availability":
        return msg.payload.decode("utf-8", "replace")[:64]
    try:
        return Jsonb(json.loads(msg.payload))
    except (ValueError, UnicodeDecodeError):
        return Jsonb({"unreadable": msg.payload.decode("utf-8", "replace")[:1000]})


SCHEMA_CHECK = """
SELECT to_regprocedure('emotion_edge_partition(timestamptz)') IS NOT NULL,
       EXISTS (SELECT 1 FROM pg_index i
               WHERE i.indrelid = to_regclass('events') AND i.indisunique
                 AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                      WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey))
                     = ARRAY['device_id', 'event_id', 'window_start'])
"""


def schema_problem(conn: psycopg.Connection) -> str | None:
    """What the database lacks that this collector writes with, or None. A database made by an older collector (before
    the month partitions) has no partition function and another unique key: every insert would fail and be retried
    for ever, so the collector refuses to start instead."""
    has_function, has_key = conn.execute(SCHEMA_CHECK).fetchone() or (False, False)
    conn.rollback()  # nothing to keep; the collector's own transactions start clean
    if has_function and has_key:
        return None
    return (
        "database: its schema is older than this collector (no month partitions or no unique key on (device_id, "
        "event_id, window_start)); run `emotion-edge collect --config FILE --init-db ADMIN_DSN` as the database's "
        "owner once, then start the collector again"
    )


def month_of(t: datetime) -> datetime:
    t = t.astimezone(timezone.utc)
    return datetime(t.year, t.month, 1, tzinfo=timezone.utc)


def ensure_partitions(conn: psycopg.Connection, times: Iterable[datetime], known: set[datetime]) -> None:
    """The month partitions of `events` that these times fall in (schema.py, emotion_edge_partition); `known` is
    what this connection has made sure of already. A month the function refuses (a device clock far off) is left
    without one: its events are then kept in `rejected`."""
    for month in sorted({month_of(t) for t in times} - known):
        try:
            with conn.transaction():
                conn.execute("SELECT emotion_edge_partition(%s)", (month,))
        except psycopg.errors.RaiseException as exc:
            logger.warning("%s", str(exc).strip().splitlines()[0])
        known.add(month)


def write_batch(conn: psycopg.Connection, batch: Iterable[Message], months: set[datetime] | None = None) -> Written:
    """Everything in `batch` in one transaction; raises psycopg.Error and leaves nothing half-written. `months`: the
    partitions known to exist (ensure_partitions); None skips the check."""
    out = Written()
    events: dict[tuple[str, str], tuple[Any, ...]] = {}
    rejected: list[tuple[str, str, str]] = []
    latest: dict[tuple[str, str], Message] = {}  # (device, kind) -> the last message of that kind in this batch
    progress: dict[str, tuple[int | None, datetime]] = {}
    for msg in batch:
        if msg.kind != "events":
            latest[(msg.device_id, msg.kind)] = msg
            continue
        row = event_row(msg)
        if isinstance(row, str):
            rejected.append((msg.topic, row, msg.payload.decode("utf-8", "replace")[:10000]))
            continue
        if (row[0], row[1]) in events:
            out.duplicates += 1
            continue
        events[(row[0], row[1])] = row
        seq, at = progress.get(msg.device_id, (None, row[3]))
        progress[msg.device_id] = (max(s for s in (seq, row[2], -1) if s is not None), max(at, row[3]))
    if months is not None and events:
        ensure_partitions(conn, (row[3] for row in events.values()), months)
    with conn.transaction(), conn.cursor() as cur:
        if events:
            cur.executemany(INSERT_EVENT, list(events.values()), returning=False)
            # executemany's rowcount is the total over all statements: the rows that were new.
            out.events = max(cur.rowcount, 0)
            out.duplicates += len(events) - out.events
        if rejected:
            cur.executemany(INSERT_REJECTED, rejected)
            out.rejected = len(rejected)
        for device, (seq, at) in progress.items():
            cur.execute(UPSERT_PROGRESS, (device, seq if seq is not None and seq >= 0 else None, at))
        for (device, kind), msg in latest.items():
            cur.execute(
                UPSERT_STATUS.format(col=kind),
                (device, _status_value(msg), datetime.fromtimestamp(msg.received, timezone.utc)),
            )
            out.status += 1
    return out


def write_each(conn: psycopg.Connection, batch: list[Message], months: set[datetime] | None = None) -> Written:
    """After a batch failed on its data (a payload PostgreSQL cannot hold, such as a NUL in JSON text): one message
    per transaction, and the ones that still fail go to `rejected`, so that one bad message never blocks the rest."""
    out = Written()
    for msg in batch:
        try:
            one = write_batch(conn, [msg], months)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            payload = msg.payload.decode("utf-8", "replace").replace("\x00", "")[:10000]
            with conn.transaction():
                conn.execute(INSERT_REJECTED, (msg.topic, reason, payload))
            out.rejected += 1
            continue
        out.events += one.events
        out.duplicates += one.duplicates
        out.rejected += one.rejected
        out.status += one.status
    return out


def purge(conn: psycopg.Connection, days: int) -> int:
    """Delete events older than `days` (through the owner's function: the collector's role cannot DELETE)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT emotion_edge_purge(%s)", (days,))
        row = cur.fetchone()
    return int(row[0]) if row else 0
