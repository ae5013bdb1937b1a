"""The fleet collector against a real Mosquitto and a real PostgreSQL: every event stored exactly once.

PostgreSQL comes from Debian's `postgresql` package (scripts/fleet-setup.sh installs it and psycopg); each test
module starts its own cluster on a free loopback port in a temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edge_daemon.devbroker import LocalBroker

from .conftest import ROOT, assert_clean_error, run_cli, skip_or_fail

try:
    import psycopg
except ImportError:
    skip_or_fail("the fleet extra is not installed: run scripts/fleet-setup.sh", allow_module_level=True)

from edge_daemon.fleet.collector import Collector  # noqa: E402
from edge_daemon.fleet.localpg import LocalPostgres, pg_bindir  # noqa: E402
from edge_daemon.fleet.settings import load_collector_config  # noqa: E402

if pg_bindir() is None:
    skip_or_fail("PostgreSQL is not installed: run scripts/fleet-setup.sh (apt-get install postgresql)",
                 allow_module_level=True)  # fmt: skip


def _need_nats_server() -> None:
    from edge_daemon.fleet.natscluster import nats_server

    try:
        nats_server()
    except Exception as exc:  # noqa: BLE001 - whatever stops the binary from being found or run
        skip_or_fail(f"nats-server is not installed ({exc}): run scripts/fleet-setup.sh")


ROLE, ROLE_PASSWORD = "emotion_edge_collector", "collector-test-pw"


@pytest.fixture(scope="module")
def pg() -> Iterator[LocalPostgres]:
    with LocalPostgres() as server:
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
        yield server


@pytest.fixture
def db(pg: LocalPostgres) -> Iterator[Any]:
    """A fresh database per test, set up by `collect --init-db` as an administrator would."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield name
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def collector_yaml(tmp_path: Path, pg: LocalPostgres, db: str, port: int, **mqtt_extra: Any) -> Path:
    data = {
        "mqtt": {"host": "127.0.0.1", "port": port, "client_id": f"collector-{db}", **mqtt_extra},
        "database": {"dsn": pg.dsn(ROLE, db), "batch_wait_ms": 200},
    }
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def setup(tmp_path: Path, pg: LocalPostgres, db: str, broker: LocalBroker, monkeypatch: pytest.MonkeyPatch) -> Path:
    cfg = collector_yaml(tmp_path, pg, db, broker.port)
    proc = run_cli(
        "collect", "--config", str(cfg), "--init-db", pg.admin_dsn.replace("dbname=postgres", f"dbname={db}")
    )
    assert proc.returncode == 0, proc.stderr
    monkeypatch.setenv("EMOTION_EDGE_COLLECTOR_DB_PASSWORD", ROLE_PASSWORD)
    return cfg


def admin(pg: LocalPostgres, db: str) -> Any:
    return psycopg.connect(pg.admin_dsn.replace("dbname=postgres", f"dbname={db}"), autocommit=True)


def count(pg: LocalPostgres, db: str, sql: str = "SELECT count(*) FROM events") -> Any:
    with admin(pg, db) as conn:
        return conn.execute(sql).fetchone()[0]


def wait_until(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


class Device:
    """A publisher that numbers its events as the daemon's outbox does (seq, event_id)."""

    def __init__(self, port: int, device_id: str, v5: bool = True, password: str | None = None) -> None:
        self.device_id = device_id
        self.seq = 0
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        # As the daemon does: a persistent session, so that what was in flight is sent again after a reconnect.
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{device_id}", protocol=protocol,
                                  clean_session=None if v5 else False)  # fmt: skip
        if password is not None:
            self.client.username_pw_set(device_id, password)
        self.client.max_inflight_messages_set(100)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def event(self, seq: int | None = None) -> dict[str, Any]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return {"schema": 2, "event_id": str(uuid.uuid4()), "device_id": self.device_id, "seq": seq,
                "window_start": "2026-12-06T10:00:00.000Z", "window_end": "2026-12-06T10:00:02.000Z",
                "emotion": "happy", "confidence": 0.8, "face_count": 1}  # fmt: skip

    def publish(self, event: dict[str, Any], kind: str = "events", retain: bool = False) -> Any:
        payload = json.dumps(event) if isinstance(event, dict) else event
        return self.client.publish(f"emotion-edge/{self.device_id}/{kind}", payload, qos=1, retain=retain)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_collector(cfg: Path, timeout: float = 10) -> tuple[Collector, threading.Event, threading.Thread]:
    collector = Collector(load_collector_config(cfg))
    stop = threading.Event()
    thread = threading.Thread(target=collector.run, args=(stop,), daemon=True)
    thread.start()
    assert collector.connected.wait(timeout), "the collector did not connect"
    time.sleep(0.3)  # its SUBACKs
    return collector, stop, thread


def test_an_event_delivered_again_is_stored_once(setup: Path, pg: LocalPostgres, db: str, broker: LocalBroker) -> None:
    collector, stop, thread = run_collector(setup)
    dev = Device(broker.port, "kitchen")
    try:
        first = dev.event()
        for _ in range(3):  # the outbox re-sends after a lost PUBACK: same event_id
            dev.publish(first).wait_for_publish(5)
        dev.publish(dev.event()).wait_for_publish(5)
        assert wait_until(lambda: count(pg, db) == 2)
        time.sleep(0.5)
        assert count(pg, db) == 2
        assert count(pg, db, "SELECT count(DISTINCT event_id) FROM events WHERE device_id = 'kitchen'") == 2
        assert count(pg, db, "SELECT last_seq FROM devices WHERE device_id = 'kitchen'") == 2
    finally:
        stop.set()
        thread.join(10)
        dev.close()


def test_device_status_is_kept_current(setup: Path, pg: LocalPostgres, db: str, broker: LocalBroker) -> None:
    dev = Device(broker.port, "hall")
    dev.publish("online", "availability", retain=True).wait_for_publish(5)  # retained before the collector starts
    collector, stop, thread = run_collector(setup)
    try:
        dev.publish({"emotion": "sad"}, "state", retain=True).wait_for_publish(5)
        dev.publish({"emotion": "happy"}, "state", retain=True).wait_for_publish(5)
        dev.publish({"uptime_s": 5}, "stats").wait_for_publish(5)
        row = "SELECT availability, state->>'emotion', stats->>'uptime_s' FROM devices WHERE device_id = 'hall'"

        def current() -> Any:
            with admin(pg, db) as conn:
                return conn.execute(row).fetchone()

        assert wait_until(lambda: current() == ("online", "happy", "5")), current()
        with admin(pg, db) as conn:
            assert conn.execute(row).fetchone() == ("online", "happy", "5")
    finally:
        stop.set()
        thread.join(10)
        dev.close()


def kill_mid_stream_and_restart(cfg: Path, port: int, pg: LocalPostgres, db: str, total: int, v5: bool) -> str:
    """Publish `total` events from 4 devices; SIGKILL the collector a third of the way, start it again at two thirds.
    Returns the collector's log."""
    log = cfg.parent / "collector.log"

    def start() -> subprocess.Popen[str]:
        with open(log, "a") as err:
            return subprocess.Popen([sys.executable, "-m", "edge_daemon", "collect", "--config", str(cfg)],
                                    cwd=ROOT, stderr=err, text=True)  # fmt: skip

    proc = start()
    devices = [Device(port, f"room{i}", v5) for i in range(4)]
    try:
        assert wait_until(lambda: "collector connected" in log.read_text(), 30), log.read_text()
        time.sleep(0.5)  # its subscriptions
        infos = []
        for n in range(total):
            infos.append(devices[n % 4].publish(devices[n % 4].event()))
            if n == total // 3:
                # Mid-stream: events are in flight to it and in its batch, some stored and not yet acknowledged.
                assert wait_until(lambda: count(pg, db) > 0, 20)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            if n == 2 * total // 3:
                proc = start()
            time.sleep(0.002)
        for info in infos:
            info.wait_for_publish(10)
        assert wait_until(lambda: count(pg, db) == total, 60), count(pg, db)
        time.sleep(1.0)  # anything that would be stored twice has had time to arrive
        assert count(pg, db) == total
        assert count(pg, db, "SELECT count(DISTINCT (device_id, seq)) FROM events") == total
        assert count(pg, db, "SELECT sum(last_seq) FROM devices") == total
        assert "session resumed" in log.read_text()  # the restart picked up what the killed one left
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        for d in devices:
            d.close()
    return log.read_text()


def test_a_collector_killed_mid_stream_loses_nothing_and_stores_nothing_twice(
    setup: Path, pg: LocalPostgres, db: str, broker: LocalBroker
) -> None:
    log = kill_mid_stream_and_restart(setup, broker.port, pg, db, 1200, v5=True)
    assert "MQTT 5," in log


def test_through_nats_a_killed_collector_falls_back_to_3_1_1_and_resumes_its_session(
    tmp_path: Path, setup: Path, pg: LocalPostgres, db: str
) -> None:
    from edge_daemon.fleet.natscluster import NatsCluster

    _need_nats_server()
    with NatsCluster(1) as nats:
        folder = tmp_path / "nats-collector"
        folder.mkdir()
        cfg = collector_yaml(folder, pg, db, nats.mqtt_ports[0])  # protocol auto: NATS refuses 5
        log = kill_mid_stream_and_restart(cfg, nats.mqtt_ports[0], pg, db, 400, v5=False)
    assert "MQTT 3.1.1, session resumed" in log


def test_on_a_nats_cluster_the_collector_moves_to_the_next_node_when_its_node_is_killed(
    tmp_path: Path, setup: Path, pg: LocalPostgres, db: str
) -> None:
    from edge_daemon.fleet.natscluster import NatsCluster

    _need_nats_server()
    with NatsCluster(3) as nats:
        ports = nats.mqtt_ports
        folder = tmp_path / "failover"
        folder.mkdir()
        cfg = collector_yaml(folder, pg, db, 1, hosts=[f"127.0.0.1:{p}" for p in ports])
        collector, stop, thread = run_collector(cfg, timeout=60)  # a new cluster elects its JetStream leaders first
        dev = Device(ports[2], "lounge", v5=False)
        total = 600
        try:
            used = collector.source.node
            infos = []
            for n in range(total):
                infos.append(dev.publish(dev.event()))
                if n == total // 3:
                    assert wait_until(lambda: count(pg, db) > 0, 20)
                    nats.kill(used)  # the node the collector is connected to, with events in flight to it
                time.sleep(0.005)
            for info in infos:
                info.wait_for_publish(60)
            assert wait_until(lambda: count(pg, db) == total, 90), count(pg, db)
            time.sleep(1.0)  # anything that would be stored twice has had time to arrive
            assert count(pg, db, "SELECT count(DISTINCT seq) FROM events") == count(pg, db) == total
            assert collector.connected.is_set() and collector.source.node != used
        finally:
            stop.set()
            thread.join(10)
            dev.close()


@pytest.mark.parametrize("protocol", ["auto", "5"])
def test_a_first_node_that_takes_tcp_and_closes_is_left_for_the_next(
    tmp_path: Path, setup: Path, pg: LocalPostgres, db: str, broker: LocalBroker, protocol: str
) -> None:
    """A node still starting (or not an MQTT port) takes the TCP connection and closes it before any answer: the
    collector, never connected yet, must not stay there trying one protocol after the other."""
    closer = socket.create_server(("127.0.0.1", 0))
    stop_closer = threading.Event()

    def close_each() -> None:
        closer.settimeout(0.2)
        while not stop_closer.is_set():
            try:
                conn, _ = closer.accept()
            except OSError:
                continue
            conn.close()

    threading.Thread(target=close_each, daemon=True).start()
    folder = tmp_path / "closer"
    folder.mkdir()
    hosts = [f"127.0.0.1:{closer.getsockname()[1]}", f"127.0.0.1:{broker.port}"]
    cfg = collector_yaml(folder, pg, db, 1, hosts=hosts, protocol=protocol)
    try:
        collector, stop, thread = run_collector(cfg, timeout=30)
        assert collector.source.node == 1
        stop.set()
        thread.join(10)
    finally:
        stop_closer.set()
        closer.close()


def test_a_database_from_before_the_month_partitions_stops_the_collector_with_what_to_run(
    setup: Path, pg: LocalPostgres, db: str, broker: LocalBroker
) -> None:
    """An upgraded collector on a database that --init-db has not upgraded would fail every insert and retry for
    ever; it says what to run and exits 2, acknowledging nothing (the broker keeps the events)."""
    with admin(pg, db) as conn:
        conn.execute("DROP FUNCTION emotion_edge_partition(timestamptz)")
    r = run_cli("collect", "--config", str(setup), timeout=60)
    assert r.returncode == 2, r.stderr[-1500:]
    assert "--init-db" in r.stderr and "older than this collector" in r.stderr and "Traceback" not in r.stderr


def test_events_wait_with_the_broker_while_the_database_is_down(
    setup: Path, pg: LocalPostgres, db: str, broker: LocalBroker
) -> None:
    collector, stop, thread = run_collector(setup)
    dev = Device(broker.port, "lab")
    try:
        dev.publish(dev.event()).wait_for_publish(5)
        assert wait_until(lambda: count(pg, db) == 1)
        pg.stop("immediate")  # a crash, not a clean shutdown
        for _ in range(50):
            dev.publish(dev.event()).wait_for_publish(5)
        time.sleep(1.0)
        pg.start()
        assert wait_until(lambda: count(pg, db) == 51, 30)
    finally:
        stop.set()
        thread.join(10)
        dev.close()


def test_the_collectors_role_may_only_insert_and_update(setup: Path, pg: LocalPostgres, db: str) -> None:
    dsn = pg.dsn(ROLE, db) + f" password={ROLE_PASSWORD}"
    with admin(pg, db) as conn:
        conn.execute("SELECT emotion_edge_partition(now() - interval '40 days')")  # what the collector would do
        new = conn.execute("SELECT now()").fetchone()[0]  # one event: the same window_start when sent again
        conn.execute("INSERT INTO events (device_id, event_id, window_start, payload) VALUES "
                     "('a', 'old', now() - interval '40 days', '{}'), ('a', 'new', %s, '{}')", (new,))  # fmt: skip
    denied = [
        "DELETE FROM events",
        "TRUNCATE events",
        "DROP TABLE events",
        "UPDATE events SET emotion = 'sad'",
        "SELECT payload FROM events",
        "CREATE TABLE mine (x int)",
        "DELETE FROM devices",
    ]
    for sql in denied:
        with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # What it may do: insert, skip what exists, keep devices current, and purge through the owner's function.
        conn.execute("INSERT INTO events (device_id, event_id, window_start, payload) VALUES ('a', 'new', %s, "
                     "'{}') ON CONFLICT (device_id, event_id, window_start) DO NOTHING", (new,))  # fmt: skip
        assert conn.execute("SELECT emotion_edge_purge(30)").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.RaiseException):
            conn.execute("SELECT emotion_edge_purge(0)")  # never everything at once
    assert count(pg, db) == 1


def test_a_shared_group_splits_events_between_collectors_and_stores_each_once(
    tmp_path: Path, setup: Path, pg: LocalPostgres, db: str, broker: LocalBroker
) -> None:
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        cfg = collector_yaml(folder, pg, db, broker.port, shared_group="collectors", client_id=f"{db}-{name}")
        runs.append(run_collector(cfg))
    dev = Device(broker.port, "shop")
    try:
        for _ in range(200):
            dev.publish(dev.event())
        assert wait_until(lambda: count(pg, db) == 200)
        assert all(c.stored > 0 for c, _, _ in runs), [c.stored for c, _, _ in runs]
        assert sum(c.stored for c, _, _ in runs) == 200
    finally:
        for _, stop, thread in runs:
            stop.set()
            thread.join(10)
        dev.close()


def test_with_per_device_credentials_a_device_cannot_write_another_devices_rows(
    tmp_path: Path, setup: Path, pg: LocalPostgres, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_daemon.fleet.natscluster import NatsCluster, authorization

    _need_nats_server()
    auth = authorization({"kitchen": "pw-kitchen", "hall": "pw-hall"}, ("collector", "pw-collector"))
    with NatsCluster(1, authorization=auth) as nats:
        port = nats.mqtt_ports[0]
        folder = tmp_path / "acl"
        folder.mkdir()
        cfg = collector_yaml(folder, pg, db, port, username="collector")
        monkeypatch.setenv("EMOTION_EDGE_COLLECTOR_MQTT_PASSWORD", "pw-collector")
        collector, stop, thread = run_collector(cfg)
        kitchen = Device(port, "kitchen", v5=False, password="pw-kitchen")
        try:
            kitchen.publish(kitchen.event()).wait_for_publish(5)
            forged = kitchen.event() | {"device_id": "hall"}
            # NATS drops it (and, MQTT 3.1.1, still acknowledges it: the refusal is invisible to the sender).
            kitchen.client.publish("emotion-edge/hall/events", json.dumps(forged), qos=1).wait_for_publish(5)
            assert wait_until(lambda: count(pg, db) >= 1)
            time.sleep(1.0)
            with admin(pg, db) as conn:
                assert conn.execute("SELECT device_id, count(*) FROM events GROUP BY 1").fetchall() == [("kitchen", 1)]
            answers: list[Any] = []
            intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="intruder", protocol=mqtt.MQTTv311)
            intruder.username_pw_set("hall", "guessed")
            intruder.on_connect = lambda c, u, f, rc, p: answers.append(rc)
            intruder.connect("127.0.0.1", port)
            intruder.loop_start()
            assert wait_until(lambda: bool(answers), 5)
            intruder.loop_stop()
            assert answers[0].is_failure, answers
        finally:
            stop.set()
            thread.join(10)
            kitchen.close()


def test_retention_deletes_old_events_while_no_events_arrive(
    tmp_path: Path, setup: Path, pg: LocalPostgres, db: str, broker: LocalBroker
) -> None:
    with admin(pg, db) as conn:
        for days in (40, 2):  # what the collector would do for events of those days
            conn.execute(f"SELECT emotion_edge_partition(now() - interval '{days} days')")
        conn.execute("INSERT INTO events (device_id, event_id, window_start, payload) VALUES "
                     "('a', 'old', now() - interval '40 days', '{}'), ('a', 'recent', now() - interval '2 days', '{}')")  # fmt: skip
    folder = tmp_path / "retention"
    folder.mkdir()
    cfg = collector_yaml(folder, pg, db, broker.port)
    data = yaml.safe_load(cfg.read_text()) | {"retention": {"days": 30, "interval_s": 10}}
    cfg.write_text(yaml.safe_dump(data))
    collector, stop, thread = run_collector(cfg)
    try:
        assert wait_until(lambda: count(pg, db) == 1, 20)
        assert count(pg, db, "SELECT event_id FROM events") == "recent"
    finally:
        stop.set()
        thread.join(10)


def test_a_bad_collector_config_is_one_line_with_exit_code_2(tmp_path: Path) -> None:
    cfg = tmp_path / "collector.yaml"
    cfg.write_text("database:\n  batch_size: 0\n")
    assert_clean_error(run_cli("collect", "--config", str(cfg)), "database.batch_size", "collector.yaml:2")


def test_jetstream_with_a_missing_certificate_file_is_one_line_with_exit_code_2(tmp_path: Path) -> None:
    """Read at start, not in the NATS thread's retry loop (which logged 'trying again' for ever)."""
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "mqtt": {"tls": {"enabled": True, "ca_file": "missing-ca.pem"}},
                "jetstream": {"enabled": True, "servers": ["127.0.0.1:1"]},
                "database": {"dsn": "host=127.0.0.1 port=1 dbname=x user=y"},
            }
        )
    )
    assert_clean_error(run_cli("collect", "--config", str(cfg), timeout=60), "mqtt.tls", "certificate")


def test_jetstream_without_servers_uses_the_mqtt_nodes_hosts_at_the_nats_client_port(tmp_path: Path) -> None:
    """The MQTT gateway is a port of the same NATS server: naming the nodes once must be enough (it was localhost)."""
    import queue

    from edge_daemon.fleet.jetstream import JetStreamSource

    cfg = tmp_path / "collector.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "mqtt": {"hosts": ["nats1.lan:1883", "[fd00::2]:1884"]},
                "jetstream": {"enabled": True},
                "database": {"dsn": "host=127.0.0.1 port=1 dbname=x user=y"},
            }
        )
    )
    source = JetStreamSource(load_collector_config(cfg), queue.SimpleQueue())
    assert source.servers == ["nats://nats1.lan:4222", "nats://[fd00::2]:4222"]
    named = yaml.safe_load(cfg.read_text())
    named["mqtt"] = {"host": "nats1.lan", "port": 1883}
    cfg.write_text(yaml.safe_dump(named))
    assert JetStreamSource(load_collector_config(cfg), queue.SimpleQueue()).servers == ["nats://nats1.lan:4222"]
    named["jetstream"]["servers"] = ["nats9.lan", "nats8.lan:5222"]
    cfg.write_text(yaml.safe_dump(named))
    source = JetStreamSource(load_collector_config(cfg), queue.SimpleQueue())
    assert source.servers == ["nats://nats9.lan:4222", "nats://nats8.lan:5222"]


def test_collector_example_yaml_lists_every_field_with_its_default() -> None:
    from edge_daemon.fleet.settings import render_collector_yaml

    assert (ROOT / "collector.example.yaml").read_text() == render_collector_yaml(), (
        "regenerate: python -c 'from edge_daemon.fleet.settings import render_collector_yaml as r; "
        'print(r(), end="")\' > collector.example.yaml'
    )
    assert load_collector_config(ROOT / "collector.example.yaml").database.batch_size == 500


def test_the_collector_unit_verifies_and_is_confined(tmp_path: Path) -> None:
    import re
    import shutil

    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (part of systemd)")
    text = (ROOT / "systemd" / "emotion-edge-collector.service").read_text()
    unit = tmp_path / "emotion-edge-collector.service"
    unit.write_text(text.replace("/opt/emotion-edge/.venv/bin/emotion-edge", str(Path(sys.executable).resolve())))
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    proc = subprocess.run([tool, "security", "--offline=true", str(unit)], capture_output=True, text=True, timeout=60)
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout).group(1))
    assert score <= 2.5, proc.stdout[-3000:]
    assert "LoadCredential=collector_db_password:" in text and "Restart=always" in text


def test_through_nats_collectors_share_a_jetstream_consumer_and_one_killed_loses_nothing(
    tmp_path: Path, setup: Path, pg: LocalPostgres, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_daemon.fleet.natscluster import NatsCluster, authorization

    _need_nats_server()
    # The collectors' NATS user may use only their consumer of JetStream's API (natscluster.authorization).
    auth = authorization({"atrium": "pw-atrium"}, ("collector", "pw-collector"), consumer="emotion-edge-collectors")
    monkeypatch.setenv("EMOTION_EDGE_COLLECTOR_MQTT_PASSWORD", "pw-collector")
    with NatsCluster(1, authorization=auth) as nats:
        js = {"enabled": True, "servers": [f"127.0.0.1:{nats.nodes[0].client_port}"], "ack_wait_s": 2}
        configs = []
        for name in ("a", "b"):
            folder = tmp_path / f"js-{name}"
            folder.mkdir()
            cfg = collector_yaml(folder, pg, db, nats.mqtt_ports[0], username="collector")
            cfg.write_text(yaml.safe_dump(yaml.safe_load(cfg.read_text()) | {"jetstream": js}))
            configs.append(cfg)
        log = configs[0].parent / "collector.log"
        with open(log, "w") as err:
            killed = subprocess.Popen([sys.executable, "-m", "edge_daemon", "collect", "--config", str(configs[0])],
                                      cwd=ROOT, stderr=err)  # fmt: skip
        dev: Device | None = None
        try:
            # Started before any device: the collector has the gateway make $MQTT_msgs, and makes the consumer.
            assert wait_until(lambda: "(NATS: JetStream" in log.read_text(), 30), log.read_text()
            other, stop, thread = run_collector(configs[1], timeout=30)
            dev = Device(nats.mqtt_ports[0], "atrium", v5=False, password="pw-atrium")
            total = 1000
            infos = []
            for n in range(total):
                infos.append(dev.publish(dev.event()))
                if n == total // 2:
                    killed.send_signal(signal.SIGKILL)  # with events fetched, some stored and not acknowledged
                    killed.wait(10)
                time.sleep(0.004)
            for info in infos:
                info.wait_for_publish(30)
            assert wait_until(lambda: count(pg, db) == total, 60), count(pg, db)
            time.sleep(3.0)  # past ack_wait_s: anything that would be stored twice has come again
            assert count(pg, db, "SELECT count(DISTINCT seq) FROM events") == count(pg, db) == total
            # Both took a share: the killed one stored what the other did not.
            assert 0 < other.stored < total, other.stored
            stop.set()
            thread.join(10)
        finally:
            if killed.poll() is None:
                killed.kill()
            if dev is not None:
                dev.close()


def test_a_jetstream_consumer_made_for_another_topic_prefix_keeps_its_events_and_reads_the_new_topics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The durable consumer outlives the collectors. One made under the old `topic_prefix` kept its filter, and a
    collector moved to a new prefix bound it and read nothing, without a word; replacing the filter instead would
    make `$MQTT_msgs` (interest retention) delete the events still waiting under the old prefix."""
    import queue

    import nats as nats_client

    from edge_daemon.fleet.jetstream import JetStreamSource
    from edge_daemon.fleet.natscluster import NatsCluster

    _need_nats_server()
    with NatsCluster(1) as cluster:
        port, mqtt_port = cluster.nodes[0].client_port, cluster.mqtt_ports[0]

        def source(prefix: str, ack_wait_s: float) -> tuple[JetStreamSource, queue.SimpleQueue]:
            cfg = tmp_path / f"{prefix.replace('/', '-')}.yaml"
            cfg.write_text(yaml.safe_dump({
                "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "topic_prefix": prefix},
                "jetstream": {"enabled": True, "servers": [f"127.0.0.1:{port}"], "ack_wait_s": ack_wait_s},
                "database": {"dsn": "host=127.0.0.1 port=1 dbname=x user=y"},
            }))  # fmt: skip
            inbox: queue.SimpleQueue = queue.SimpleQueue()
            src = JetStreamSource(load_collector_config(cfg), inbox)
            src.start()
            assert src.connected.wait(30)
            return src, inbox

        def publish(topic: str) -> None:
            dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-kitchen", protocol=mqtt.MQTTv311)
            dev.connect("127.0.0.1", mqtt_port)
            dev.loop_start()
            try:
                dev.publish(topic, b'{"seq": 1}', qos=1).wait_for_publish(10)
            finally:
                dev.disconnect()
                dev.loop_stop()

        async def filters() -> list[str]:
            nc = await nats_client.connect(f"nats://127.0.0.1:{port}")
            try:
                c = (await nc.jetstream().consumer_info("$MQTT_msgs", "emotion-edge-collectors")).config
                return c.filter_subjects or [c.filter_subject]
            finally:
                await nc.close()

        with caplog.at_level(logging.WARNING, logger="edge_daemon.fleet.jetstream"):
            for _ in range(2):  # made, then bound as it is: the same settings are no change
                old, _ = source("emotion-edge", 60.0)
                old.stop()
            assert "updated the durable consumer" not in caplog.text
            publish("emotion-edge/kitchen/events")  # waits in the stream: no collector is running
            new, inbox = source("home/emotion", 33.3)
            try:
                assert "now also reads $MQTT.msgs.home.emotion.*.events" in caplog.text
                assert "ack_wait 60 s -> 33.3 s" in caplog.text
                assert asyncio.run(filters()) == [
                    "$MQTT.msgs.emotion-edge.*.events",
                    "$MQTT.msgs.home.emotion.*.events",
                ]
                waiting = inbox.get(timeout=15)  # the event from before the move is not lost
                assert (waiting.device_id, waiting.topic) == ("kitchen", "emotion-edge/kitchen/events")
                publish("home/emotion/kitchen/events")
                got = inbox.get(timeout=15)
                assert (got.kind, got.device_id, got.topic) == ("events", "kitchen", "home/emotion/kitchen/events")
            finally:
                new.stop()
            caplog.clear()
            again, _ = source("home/emotion", 33.3)  # 33.3 s survives NATS' nanoseconds: no update on every start
            again.stop()
            assert "updated the durable consumer" not in caplog.text


def test_through_the_nats_mqtt_gateway_with_tls_a_device_and_the_collector_deliver(
    tmp_path: Path, setup: Path, pg: LocalPostgres, db: str
) -> None:
    """TLS on NATS' MQTT listener, certificates made here; the device is the daemon's own Outbox and MqttSession."""
    import dataclasses

    from edge_daemon.config import Config, HomeAssistantConfig, MqttConfig, TlsConfig
    from edge_daemon.fleet.natscluster import NatsCluster
    from edge_daemon.mqtt import MqttSession
    from edge_daemon.outbox import Outbox

    from .test_tls import make_ca, make_server_cert

    _need_nats_server()
    pki = tmp_path / "pki"
    ca, ca_key = make_ca(pki, "fleet-ca")
    crt, key = make_server_cert(pki, ca, ca_key)
    with NatsCluster(1, extra_mqtt=f"tls {{ cert_file: '{crt}', key_file: '{key}' }}") as nats:
        port = nats.mqtt_ports[0]
        plain: list[Any] = []  # the listener speaks TLS only: a plain-text client gets no CONNACK
        probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plain", protocol=mqtt.MQTTv311)
        probe.on_connect = lambda c, u, f, rc, p: plain.append(rc)
        probe.connect("127.0.0.1", port)
        probe.loop_start()
        folder = tmp_path / "tls-collector"
        folder.mkdir()
        cfg = collector_yaml(folder, pg, db, port, tls={"enabled": True, "ca_file": str(ca)})
        collector, stop, thread = run_collector(cfg, timeout=30)
        mqtt_cfg = MqttConfig(host="127.0.0.1", port=port, tls=TlsConfig(enabled=True, ca_file=str(ca)),
                              homeassistant=HomeAssistantConfig(discovery=False), commands=False)  # fmt: skip
        device = dataclasses.replace(Config(), device_id="vault", mqtt=mqtt_cfg)
        box = Outbox(tmp_path / "outbox")
        session = MqttSession(device, box, "127.0.0.1", port)
        session.start()
        try:
            assert session.connected.wait(30), "the device did not connect over TLS"
            for i in range(20):
                box.append({"schema": 2, "event_id": str(uuid.uuid4()), "device_id": "vault", "emotion": "happy",
                            "window_start": f"2026-12-06T10:00:{i:02d}.000Z", "confidence": 0.9}, hold=True)  # fmt: skip
                session.notify_event()
            assert wait_until(lambda: count(pg, db) == 20, 30), count(pg, db)
            assert wait_until(lambda: box.depth() == 0, 10)  # acknowledged through the gateway: the outbox is empty
            assert count(pg, db, "SELECT count(DISTINCT seq) FROM events WHERE device_id = 'vault'") == 20
            assert plain == []
        finally:
            session.stop(1.0)
            box.close()
            stop.set()
            thread.join(10)
            probe.loop_stop()


def test_events_go_into_month_partitions_and_retention_drops_whole_months(
    tmp_path: Path, setup: Path, pg: LocalPostgres, db: str, broker: LocalBroker
) -> None:
    from datetime import datetime, timedelta, timezone

    from edge_daemon.events import iso_utc

    collector, stop, thread = run_collector(setup)
    dev = Device(broker.port, "cellar")
    now = datetime.now(timezone.utc)
    old, recent, broken_clock = now - timedelta(days=70), now - timedelta(days=1), now + timedelta(days=400)
    months = "SELECT array_agg(c.relname::text ORDER BY c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = " \
             "i.inhrelid WHERE i.inhparent = 'events'::regclass"  # fmt: skip
    try:
        for t in (old, recent, broken_clock):
            dev.publish(dev.event() | {"window_start": iso_utc(t)}).wait_for_publish(5)
        assert wait_until(lambda: count(pg, db) == 2 and count(pg, db, "SELECT count(*) FROM rejected") == 1)
        # The month of each event got its partition (the collector made it); a clock a year ahead got none: that
        # event is kept in `rejected` with the reason, not lost.
        assert {f"events_{t:%Y_%m}" for t in (old, recent)} <= set(count(pg, db, months))
        assert f"events_{broken_clock:%Y_%m}" not in count(pg, db, months)
        assert "no partition" in count(pg, db, "SELECT reason FROM rejected")
    finally:
        stop.set()
        thread.join(10)
        dev.close()
    # Retention (the collector's role, through the owner's function) drops the old month whole.
    with psycopg.connect(pg.dsn(ROLE, db) + f" password={ROLE_PASSWORD}", autocommit=True) as conn:
        assert conn.execute("SELECT emotion_edge_purge(30)").fetchone()[0] == 1
    assert f"events_{old:%Y_%m}" not in count(pg, db, months)
    assert count(pg, db) == 1
