"""`emotion-edge collect`: every device's events, availability, state, status and stats, into PostgreSQL.

Exactly-once storage from at-least-once delivery:

* the broker keeps a persistent session for the collector's client id (MQTT 5 session expiry, or 3.1.1
  clean_session false) and subscribes QoS 1, so what arrives while the collector is away waits for it;
* paho is told not to acknowledge by itself (`manual_ack`): a QoS 1 message is acknowledged only after the
  transaction that stored it has committed. A collector killed at any moment leaves unacknowledged messages with
  the broker, which delivers them again to the next connection of this client id;
* the events table is unique on (device_id, event_id): what is delivered twice is stored once.

A PUBACK belongs to the connection that received the message: one received on an earlier connection is not
acknowledged on the new one (the broker re-sends it there, and that copy is acknowledged).
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..errors import UserError
from ..throttle import Throttle
from . import store
from .settings import CollectorConfig, secret

logger = logging.getLogger(__name__)

UNSUPPORTED_PROTOCOL = (0x01, 0x84)  # CONNACK: unacceptable protocol version (3.1.1 code, MQTT 5 code)


class Collector:
    """One broker session feeding one database writer (the calling thread, in `run`)."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.prefix = config.mqtt.topic_prefix.rstrip("/")
        self._depth = self.prefix.count("/") + 1  # topic levels before the device id
        self._inbox: queue.SimpleQueue[store.Message] = queue.SimpleQueue()
        self._generation = 0  # one per connection: acknowledgements go to the connection that received the message
        self._lock = threading.Lock()
        self._ever_connected = False
        self._refused = False
        self._stopping = False
        self.connected = threading.Event()
        self.stored = 0  # new event rows, for the log and the tests
        self.duplicates = 0
        self._db_log = Throttle()
        self._client = self._make_client()

    # ------------------------------------------------------------------ broker

    def _make_client(self) -> mqtt.Client:
        c = self.config.mqtt
        v311 = str(c.protocol) == "3.1.1"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=c.client_id,
            protocol=mqtt.MQTTv311 if v311 else mqtt.MQTTv5,
            clean_session=False if v311 else None,
            manual_ack=True,
        )
        if c.username:
            client.username_pw_set(c.username, secret(c.password_env, "collector_mqtt_password"))
        if c.tls.enabled:
            t = c.tls
            try:
                client.tls_set(
                    ca_certs=str(self.config.path(t.ca_file)) if t.ca_file else None,
                    certfile=str(self.config.path(t.cert_file)) if t.cert_file else None,
                    keyfile=str(self.config.path(t.key_file)) if t.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise UserError(f"mqtt.tls: cannot use the certificate files ({exc})") from None
        client.reconnect_delay_set(1, 10)
        # paho's own limit of messages in flight counts only what we publish; the broker's is receive_maximum.
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def topic_filters(self) -> list[tuple[str, bool]]:
        """(filter, shared): events and stats may be shared among collectors; retained topics are not (a shared
        subscription gets no retained messages), every collector keeps the status tables current."""
        group = self.config.mqtt.shared_group
        out = []
        for kind in store.KINDS:
            f = f"{self.prefix}/+/{kind}"
            shared = group is not None and kind in ("events", "stats")
            out.append((f"$share/{group}/{f}" if shared else f, shared))
        return out

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if reason_code.is_failure:
            self._refused = True  # paho reports the end of this attempt to on_disconnect as well
            if not self._ever_connected and getattr(reason_code, "value", None) in UNSUPPORTED_PROTOCOL:
                if str(self.config.mqtt.protocol) == "auto" and client._protocol == mqtt.MQTTv5:
                    logger.info("broker %s:%d refuses MQTT 5; trying 3.1.1", self.config.mqtt.host,
                                self.config.mqtt.port)  # fmt: skip
                    self._other_protocol()
                    return
            logger.error("broker %s:%d refused the collector: %s", self.config.mqtt.host, self.config.mqtt.port,
                         reason_code)  # fmt: skip
            return
        with self._lock:
            self._generation += 1
        self._ever_connected = True
        v5 = client._protocol == mqtt.MQTTv5  # pinned paho<3
        logger.info(
            "collector connected to %s:%d (MQTT %s, session %s)", self.config.mqtt.host, self.config.mqtt.port,
            "5" if v5 else "3.1.1", "resumed" if flags.session_present else "new",
        )  # fmt: skip
        for f, _shared in self.topic_filters():
            client.subscribe(f, options=SubscribeOptions(qos=1) if v5 else None, qos=0 if v5 else 1)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        self.connected.clear()
        if self._refused:
            self._refused = False
        elif not self._ever_connected:
            self._other_protocol()  # a 3.1.1-only broker may simply close an MQTT 5 CONNECT
        elif not self._stopping:
            logger.warning("collector lost the broker (%s); reconnecting, the broker keeps the session", reason_code)

    def _other_protocol(self) -> None:
        if str(self.config.mqtt.protocol) != "auto":
            return
        client = self._client
        client._protocol = mqtt.MQTTv311 if client._protocol == mqtt.MQTTv5 else mqtt.MQTTv5  # pinned paho<3
        client._clean_session = False  # what 3.1.1 reads: keep the session
        logger.info("collector: trying MQTT %s next", "3.1.1" if client._protocol == mqtt.MQTTv311 else "5")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != self._depth + 2 or parts[-1] not in store.KINDS:
            if msg.qos:
                client.ack(msg.mid, msg.qos)  # not ours (a command echo under the prefix): nothing to store
            return
        with self._lock:
            generation = self._generation
        self._inbox.put(
            store.Message(parts[-1], parts[self._depth], msg.topic, msg.payload, time.time(), msg.mid, msg.qos,
                          generation)
        )  # fmt: skip

    # ------------------------------------------------------------------ database

    def _connect_db(self) -> psycopg.Connection:
        db = self.config.database
        return psycopg.connect(db.dsn, password=secret(db.password_env, "collector_db_password"), connect_timeout=5)

    def _ack(self, batch: list[store.Message]) -> None:
        with self._lock:
            current = self._generation
        for m in batch:
            if m.qos and m.generation == current:
                self._client.ack(m.mid, m.qos)

    def _purge_due(self, next_purge: float) -> bool:
        return bool(self.config.retention.days) and time.monotonic() >= next_purge

    def run(self, stop: threading.Event) -> int:
        """Until `stop` is set: receive, store in batches, acknowledge what is stored."""
        c, db = self.config.mqtt, self.config.database
        props = None
        if str(c.protocol) != "3.1.1":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = c.session_expiry_s
            props.ReceiveMaximum = c.receive_maximum
        start = {"clean_start": False} if self._client._protocol == mqtt.MQTTv5 else {}
        self._client.connect_async(c.host, c.port, keepalive=c.keepalive_s, properties=props, **start)
        self._client.loop_start()
        conn: psycopg.Connection | None = None
        batch: list[store.Message] = []
        next_purge = time.monotonic() + 5.0
        try:
            while not stop.is_set():
                if not batch:
                    try:
                        batch.append(self._inbox.get(timeout=0.2))
                    except queue.Empty:
                        if not self._purge_due(next_purge):
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
                    try:
                        written = store.write_batch(conn, batch)
                    except (psycopg.DataError, psycopg.IntegrityError):
                        written = store.write_each(conn, batch)
                    # Committed: the broker may forget them. Never acknowledged twice (a mid is reused by the broker
                    # once acknowledged), so the batch is emptied before anything else can fail.
                    self._ack(batch)
                    batch = []
                    if self._purge_due(next_purge):
                        next_purge = time.monotonic() + self.config.retention.interval_s
                        purged = store.purge(conn, self.config.retention.days)
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
            self._stopping = True
            self._client.disconnect()  # unacknowledged messages stay with the broker's session
            self._client.loop_stop()
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
