"""`emotion-edge collect`: every device's events, availability, state, status and stats, into PostgreSQL.

Exactly-once storage from at-least-once delivery: a source (the MQTT session of `mqttsource`, or a JetStream pull
consumer shared by several collectors, `jetstream`) hands over messages that the broker keeps until they are
acknowledged; the collector acknowledges a message only after the transaction that stored it has committed, and the
events table is unique on (device_id, event_id): what is delivered twice is stored once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from ..errors import UserError
from ..throttle import Throttle
from . import store
from .settings import CollectorConfig, secret

logger = logging.getLogger(__name__)


class Collector:
    """One source of messages feeding one database writer (the calling thread, in `run`)."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self._inbox: queue.SimpleQueue[store.Message] = queue.SimpleQueue()
        if config.jetstream.enabled:
            from .jetstream import JetStreamSource

            self.source: Any = JetStreamSource(config, self._inbox)
        else:
            from .mqttsource import MqttSource

            self.source = MqttSource(config, self._inbox)
        self.connected: threading.Event = self.source.connected
        self.stored = 0  # new event rows, for the log and the tests
        self.duplicates = 0
        self._db_log = Throttle()

    # ------------------------------------------------------------------ database

    def _connect_db(self) -> psycopg.Connection:
        db = self.config.database
        return psycopg.connect(db.dsn, password=secret(db.password_env, "collector_db_password"), connect_timeout=5)

    def _purge_due(self, next_purge: float) -> bool:
        return bool(self.config.retention.days) and time.monotonic() >= next_purge

    def run(self, stop: threading.Event) -> int:
        """Until `stop` is set: receive, store in batches, acknowledge what is stored."""
        db = self.config.database
        self.source.start()
        conn: psycopg.Connection | None = None
        batch: list[store.Message] = []
        next_purge = time.monotonic() + 5.0
        next_months = time.monotonic()
        months: set[datetime] = set()
        try:
            while not stop.is_set():
                if not batch:
                    try:
                        batch.append(self._inbox.get(timeout=0.2))
                    except queue.Empty:
                        if not self._purge_due(next_purge) and time.monotonic() < next_months:
                            continue  # otherwise on to the database with an empty batch: retention runs when idle too
                deadline = time.monotonic() + db.batch_wait_ms / 1000
                while len(batch) < db.batch_size:
                    left = deadline - time.monotonic()
                    try:
                        batch.append(self._inbox.get(timeout=left) if left > 0 else self._inbox.get_nowait())
                    except queue.Empty:
                        break
                try:
                    if conn is None or conn.closed:
                        conn = self._connect_db()
                        months = set()  # partitions this connection has made sure of
                        problem = store.schema_problem(conn)
                        if problem:  # nothing acknowledged: the broker keeps every event for the upgraded collector
                            raise UserError(problem)
                    if time.monotonic() >= next_months:  # this month's and the next, ahead of their first event
                        this = store.month_of(datetime.now(timezone.utc))
                        store.ensure_partitions(conn, (this, store.month_of(this + timedelta(days=32))), set())
                        next_months = time.monotonic() + 3600
                    try:
                        written = store.write_batch(conn, batch, months)
                    except (psycopg.DataError, psycopg.IntegrityError):
                        written = store.write_each(conn, batch, months)
                    # Committed: the broker may forget them. Never acknowledged twice (a mid is reused by the broker
                    # once acknowledged), so the batch is emptied before anything else can fail.
                    self.source.ack(batch)
                    batch = []
                    if self._purge_due(next_purge):
                        next_purge = time.monotonic() + self.config.retention.interval_s
                        purged = store.purge(conn, self.config.retention.days)
                        months.clear()  # it may have dropped a month
                        if purged:
                            logger.info("retention: deleted %d event(s) older than %d days", purged,
                                        self.config.retention.days)  # fmt: skip
                except psycopg.Error as exc:
                    # The batch stays unacknowledged and is written again once the database answers (or an
                    # administrator has fixed the grants: the error says which).
                    if self._db_log.ready():
                        logger.error("database unavailable (%s); %d message(s) wait, retrying every %.1f s",
                                     str(exc).strip().splitlines()[0] if str(exc).strip() else exc, len(batch),
                                     db.retry_s)  # fmt: skip
                    if conn is not None:
                        conn.close()
                    conn = None
                    stop.wait(db.retry_s)
                    continue
                self._db_log.reset()
                self.stored += written.events
                self.duplicates += written.duplicates
                if written.rejected:
                    logger.warning("%d message(s) were not readable events; kept in the rejected table",
                                   written.rejected)  # fmt: skip
        finally:
            self.source.stop()  # unacknowledged messages stay with the broker
            if conn is not None:
                conn.close()
        return 0


def init_db(config: CollectorConfig, admin_dsn: str) -> None:
    """Create the tables and grant the collector's role (the user of database.dsn) what it needs."""
    from psycopg.conninfo import conninfo_to_dict

    from .schema import statements

    role = conninfo_to_dict(config.database.dsn).get("user")
    if not role:
        raise UserError("database.dsn: name the collector's role (user=...) so that --init-db can grant it")
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
            for sql in statements(str(role)):
                conn.execute(sql)
    except psycopg.Error as exc:
        raise UserError(f"--init-db: {str(exc).strip().splitlines()[0]}") from None
