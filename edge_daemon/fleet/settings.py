"""The collector's configuration (collector.yaml): its broker session, its database, batching and retention.

Read with the daemon's strict loader (unknown keys, wrong types and out-of-range values are one-line errors with the
file and line). Passwords never live here: the broker's comes from `mqtt.password_env` (or the systemd credential
`collector_mqtt_password`), the database's from `database.password_env` (or `collector_db_password`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import TlsConfig, host_problem, load_yaml_as, node_problem, render_default_yaml, split_node
from ..config import field_spec as _f
from ..errors import UserError


@dataclass(frozen=True)
class CollectorMqttConfig:
    """The collector's broker session."""

    host: str = _f("localhost", "broker host (when `hosts` is empty)", check=host_problem)
    port: int = _f(1883, "broker port (and the port of an entry in `hosts` that names none)", lo=1, hi=65535)
    hosts: tuple[str, ...] = _f(
        (),
        "the nodes of one clustered broker (NATS, EMQX, HiveMQ: sessions shared across nodes) as host:port, tried in "
        "order: when a node refuses or drops the collector it moves to the next one, with back-off; [] uses host and "
        "port",
        check=node_problem,
        example="[nats1.lan:1883, nats2.lan:1883]",
    )
    topic_prefix: str = _f(
        "emotion-edge", "the devices' mqtt.topic_prefix: collects <topic_prefix>/+/...", pattern=r"[A-Za-z0-9_/-]+"
    )
    client_id: str = _f(
        "emotion-edge-collector",
        "MQTT client id; the broker keeps this id's session (and its unacknowledged events) while it is away: give "
        "each collector its own",
        pattern=r"[A-Za-z0-9_.-]+",
    )
    shared_group: str | None = _f(
        None,
        "subscribe through $share/<group>/... so that collectors with this group share the load (MQTT 5 brokers, "
        "Mosquitto 2); null: this collector takes every event",
        pattern=r"[A-Za-z0-9_-]+",
    )
    protocol: str | int = _f(
        "auto",
        "MQTT version: auto tries 5 and falls back to 3.1.1 (NATS, RabbitMQ) when the broker refuses 5",
        choices=("auto", "5", "3.1.1"),
        check=lambda v: None if v in ("auto", "5", "3.1.1", 5) else f"must be one of auto, 5, 3.1.1, got {v!r}",
    )
    session_expiry_s: int = _f(
        7 * 86400,
        "MQTT 5: how long the broker keeps queueing events for this collector while it is away, seconds",
        lo=60,
        hi=4294967294,
    )
    receive_maximum: int = _f(
        1000,
        "events the broker may have in flight to the collector, unacknowledged (the broker's own limit may be lower: "
        "Mosquitto's max_inflight_messages)",
        lo=1,
        hi=65535,
    )
    username: str | None = _f(None, "user name; the password comes from password_env")
    password_env: str = _f(
        "EMOTION_EDGE_COLLECTOR_MQTT_PASSWORD", "environment variable with the broker password", pattern=r"[A-Z_0-9]+"
    )
    keepalive_s: int = _f(30, "MQTT keep-alive, seconds", lo=5, hi=3600)
    tls: TlsConfig = field(default_factory=TlsConfig, metadata={"doc": "TLS"})

    def nodes(self) -> list[tuple[str, int]]:
        """Where to connect, in order: `hosts`, or `host` and `port`."""
        return [split_node(h, self.port) for h in self.hosts] or [(self.host, self.port)]


@dataclass(frozen=True)
class DatabaseConfig:
    """PostgreSQL."""

    dsn: str = _f(
        "host=localhost dbname=emotion_edge user=emotion_edge_collector",
        "libpq connection string (key=value or postgresql://...); no password here",
    )
    password_env: str = _f(
        "EMOTION_EDGE_COLLECTOR_DB_PASSWORD", "environment variable with the database password", pattern=r"[A-Z_0-9]+"
    )
    batch_size: int = _f(500, "at most this many messages per transaction", lo=1, hi=100000)
    batch_wait_ms: int = _f(
        100, "a batch is written when it is full or its oldest message has waited this long", lo=0, hi=60000
    )
    retry_s: float = _f(2.0, "while the database is unreachable, try again this often, seconds", lo=0.1, hi=600)


@dataclass(frozen=True)
class RetentionConfig:
    """How long events are kept."""

    days: int = _f(365, "events whose window started more than this many days ago are deleted; 0 keeps all", lo=0,
                   hi=36500)  # fmt: skip
    interval_s: float = _f(3600.0, "the deletion runs this often, seconds", lo=10, hi=604800)


# NATS' MQTT gateway stores every QoS 1 message a device publishes in this stream of its own, under this subject
# prefix (NATS' MQTT implementation notes); the collector's JetStream mode reads it there.
GATEWAY_STREAM = "$MQTT_msgs"
GATEWAY_SUBJECT_PREFIX = "$MQTT.msgs."


@dataclass(frozen=True)
class JetStreamConfig:
    """NATS only: read events from a JetStream consumer that several collectors share."""

    enabled: bool = _f(
        False,
        "read events through NATS (a durable JetStream pull consumer) instead of an MQTT session: collectors with the "
        "same `consumer` share the events, each to one of them. Uses mqtt's username, password and tls",
    )
    servers: tuple[str, ...] = _f(
        (),
        "the NATS nodes' client ports as host:port (4222 when none is named), tried in turn; none: the hosts of "
        "`mqtt`, port 4222 (the MQTT gateway is a port of the same NATS server)",
        check=node_problem,
        example="[nats1.lan:4222, nats2.lan:4222]",
    )
    stream: str = _f(
        GATEWAY_STREAM,
        f"the stream that holds the devices' QoS 1 messages: NATS' MQTT gateway stores each one in {GATEWAY_STREAM} "
        "before it acknowledges the device's PUBLISH",
        pattern=r"[A-Za-z0-9_$-]+",
    )
    subject_prefix: str = _f(
        GATEWAY_SUBJECT_PREFIX, "what the stream puts before a device's subject (<topic_prefix>.<device>.events)",
        pattern=r"[A-Za-z0-9_$.-]*",
    )  # fmt: skip
    consumer: str = _f(
        "emotion-edge-collectors", "durable consumer name: the collectors that name it share its events",
        pattern=r"[A-Za-z0-9_-]+",
    )  # fmt: skip
    ack_wait_s: float = _f(
        60.0, "an event a collector took and did not acknowledge this long goes to another collector", lo=1, hi=3600
    )
    max_ack_pending: int = _f(
        1000, "events out to the collectors and not yet acknowledged, at most (back-pressure)", lo=1, hi=100000
    )


@dataclass(frozen=True)
class CollectorConfig:
    """emotion-edge collect."""

    mqtt: CollectorMqttConfig = field(default_factory=CollectorMqttConfig, metadata={"doc": "broker"})
    jetstream: JetStreamConfig = field(default_factory=JetStreamConfig, metadata={"doc": "NATS JetStream"})
    database: DatabaseConfig = field(default_factory=DatabaseConfig, metadata={"doc": "database"})
    retention: RetentionConfig = field(default_factory=RetentionConfig, metadata={"doc": "retention"})
    log_level: str = _f("info", "debug, info, warning or error", choices=("debug", "info", "warning", "error"))
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p


def load_collector_config(path: Path | str) -> CollectorConfig:
    path = Path(path)
    config = load_yaml_as(CollectorConfig, path)
    return replace(config, base_dir=path.resolve().parent)


def secret(env: str, credential: str) -> str | None:
    """A password from the environment or from systemd's $CREDENTIALS_DIRECTORY/<credential>."""
    if os.environ.get(env):
        return os.environ[env]
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if folder and (Path(folder) / credential).is_file():
        try:
            return (Path(folder) / credential).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{folder}/{credential}: unreadable ({exc})") from None
    return None


def render_collector_yaml() -> str:
    header = [
        "# emotion-edge collector configuration (emotion-edge collect --config collector.yaml). Every field with its",
        "# default; delete what you don't change. Passwords: $EMOTION_EDGE_COLLECTOR_MQTT_PASSWORD and",
        "# $EMOTION_EDGE_COLLECTOR_DB_PASSWORD, or systemd credentials collector_mqtt_password / collector_db_password.",
        "",
    ]
    return render_default_yaml(CollectorConfig, header)
