"""The whole fleet on one machine (scripts/fleet-sim.sh): simulated devices, a three-node NATS cluster with its MQTT
gateway, the collector, PostgreSQL; ends with one line of figures counted from the database.

Each simulated device is the daemon's own delivery path — an `Outbox` and an `MqttSession` — fed synthetic windows
(2 s cadence, every tenth device 0.5 s) instead of models. Devices run in a few worker processes, spread over the
cluster's nodes. `--faults` cuts five devices per worker off the network for a while, kills the broker node the
collector is connected to and brings it back (the collector moves to another node; the devices on the killed node keep
events in their outboxes), kills the collector with SIGKILL and restarts it, and crashes and restarts PostgreSQL.
`--jetstream` runs two collectors on one JetStream consumer instead of one MQTT session.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

logger = logging.getLogger("fleet-sim")
ROLE, ROLE_PASSWORD = "emotion_edge_collector", "fleet-sim"
PER_WORKER = 50
CUT_DEVICES = 5  # per worker, behind a link that --faults cuts for a while
ACK_WAIT_S = 15  # --jetstream: an event a killed collector had taken goes to another after this long


# ------------------------------------------------------------------ a worker process: some devices


def device_password(device_id: str) -> str:
    """Each device's broker password, derived from the run's secret (FLEET_SIM_SECRET, shared with the workers)."""
    return hmac.new(os.environ["FLEET_SIM_SECRET"].encode(), device_id.encode(), hashlib.sha256).hexdigest()[:24]


def run_devices(ids: list[str], port: int, seconds: float, state: Path, out: Path) -> None:
    from ..config import Config, HomeAssistantConfig, MqttConfig
    from ..events import iso_utc
    from ..mqtt import MqttSession
    from ..outbox import Outbox
    from .netcut import CuttableLink

    # The first CUT_DEVICES devices of each worker reach their node through a link the driver can cut (SIGUSR1 cuts,
    # SIGUSR2 restores): off the network for a while, as a site whose uplink fails.
    link = CuttableLink(port)
    signal.signal(signal.SIGUSR1, lambda *_: link.cut(True))
    signal.signal(signal.SIGUSR2, lambda *_: link.cut(False))
    sessions = []
    for n, device_id in enumerate(ids):
        port_of_device = link.port if n < CUT_DEVICES else port
        # Each device its own credentials; the cluster lets it publish only under its own topics.
        os.environ[f"FLEET_SIM_PW_{n}"] = device_password(device_id)
        mqtt_cfg = MqttConfig(host="127.0.0.1", port=port_of_device, homeassistant=HomeAssistantConfig(discovery=False),
                              commands=False, reconnect_max_s=5.0, stats_interval_s=30.0, username=device_id,
                              password_env=f"FLEET_SIM_PW_{n}")  # fmt: skip
        cfg = dataclasses.replace(Config(), device_id=device_id, mqtt=mqtt_cfg)
        box = Outbox(state / device_id)
        session = MqttSession(cfg, box, "127.0.0.1", port_of_device)
        session.start()
        cadence = 0.5 if int(device_id.rsplit("-", 1)[1]) % 10 == 0 else 2.0
        sessions.append((session, box, cadence, random.uniform(0, cadence)))
    start = time.monotonic()
    due = [start + offset for _, _, _, offset in sessions]
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        for i, (session, box, cadence, _) in enumerate(sessions):
            if now >= due[i]:
                due[i] += cadence
                end = datetime.now(timezone.utc)
                event = {"schema": 2, "event_id": str(uuid.uuid4()), "device_id": session.config.device_id,
                         "window_start": iso_utc(end - timedelta(seconds=cadence)), "window_end": iso_utc(end),
                         "emotion": random.choice(["happy", "neutral", "sad", "angry", "surprise"]),
                         "confidence": round(random.random(), 3), "face_count": 1}  # fmt: skip
                box.append(event, hold=session.connected.is_set())
                session.notify_event()
        time.sleep(max(0.0, min(due) - time.monotonic()))
    deadline = time.monotonic() + 240  # the outboxes drain (a node that was down, a collector that restarted)
    while any(box.depth() for _, box, _, _ in sessions) and time.monotonic() < deadline:
        time.sleep(0.5)
    numbered = {s.config.device_id: box.last_seq for s, box, _, _ in sessions}
    left = sum(box.depth() for _, box, _, _ in sessions)
    for session, box, _, _ in sessions:
        session.stop(0.5)
        box.close()
    out.write_text(json.dumps({"numbered": numbered, "undelivered": left}))


# ------------------------------------------------------------------ the driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fleet-sim")
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--faults", action="store_true")
    p.add_argument("--jetstream", action="store_true", help="two collectors sharing a JetStream consumer")
    p.add_argument("--worker", nargs=5, metavar=("IDS", "PORT", "SECONDS", "STATE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    if args.worker:
        # Devices' own logs (every reconnect of 200 devices) only when asked: FLEET_SIM_DEVICE_LOG=warning.
        logging.getLogger().setLevel(os.environ.get("FLEET_SIM_DEVICE_LOG", "error").upper())
        ids, port, seconds, state, out = args.worker
        run_devices(ids.split(","), int(port), float(seconds), Path(state), Path(out))
        return 0
    return simulate(args.devices, args.minutes * 60, args.faults, args.jetstream)


def simulate(devices: int, seconds: float, faults: bool, jetstream: bool = False) -> int:
    import tempfile

    import psycopg

    from .collector import init_db
    from .localpg import LocalPostgres
    from .natscluster import NatsCluster, authorization
    from .settings import CollectorConfig, CollectorMqttConfig, DatabaseConfig

    work = Path(tempfile.mkdtemp(prefix="emotion-edge-fleet-"))
    logger.info("work folder %s", work)
    pg = LocalPostgres().start()
    (work / "nats").mkdir()
    os.environ["FLEET_SIM_SECRET"] = secrets.token_hex(16)  # the workers inherit it
    ids = [f"dev-{i:04d}" for i in range(devices)]
    collector_pw = secrets.token_hex(12)
    consumer = "emotion-edge-collectors" if jetstream else None
    auth = authorization({d: device_password(d) for d in ids}, ("collector", collector_pw), consumer=consumer)
    nats = NatsCluster(3, folder=work / "nats", authorization=auth).start()
    procs: list[subprocess.Popen[bytes]] = []
    ok = False
    collector: subprocess.Popen[bytes] | None = None
    second: subprocess.Popen[bytes] | None = None  # --jetstream: the other collector on the consumer
    try:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
            conn.execute("CREATE DATABASE fleet")
        admin_dsn = pg.admin_dsn.replace("dbname=postgres", "dbname=fleet")
        cfg = CollectorConfig(
            mqtt=CollectorMqttConfig(client_id="collector-1"),
            database=DatabaseConfig(dsn=pg.dsn(ROLE, "fleet"), batch_wait_ms=50),
        )
        init_db(cfg, admin_dsn)
        # The collector knows every node and starts on node 3, where half the devices are: killing its node takes
        # the collector's connection and those devices' at once.
        hosts = ", ".join(f"127.0.0.1:{nats.mqtt_ports[i]}" for i in (2, 0, 1))
        servers = ", ".join(f"127.0.0.1:{nats.nodes[i].client_port}" for i in (2, 0, 1))
        for n in (1, 2):
            (work / f"collector-{n}.yaml").write_text(
                f"mqtt:\n  hosts: [{hosts}]\n  client_id: collector-{n}\n  username: collector\n"
                f'database:\n  dsn: "{pg.dsn(ROLE, "fleet")}"\n  batch_wait_ms: 50\n'
                + (
                    f"jetstream:\n  enabled: true\n  servers: [{servers}]\n  ack_wait_s: {ACK_WAIT_S}\n"
                    if jetstream
                    else ""
                )
            )
        # Which ports the collector's log names: MQTT's, or NATS' client ports.
        collector_ports = [n.client_port for n in nats.nodes] if jetstream else nats.mqtt_ports
        env = {
            **os.environ,
            "EMOTION_EDGE_COLLECTOR_DB_PASSWORD": ROLE_PASSWORD,
            "EMOTION_EDGE_COLLECTOR_MQTT_PASSWORD": collector_pw,
        }

        def start_collector(n: int = 1) -> subprocess.Popen[bytes]:
            log = open(work / f"collector-{n}.log" if n > 1 else work / "collector.log", "ab")  # noqa: SIM115
            cfg_path = work / f"collector-{n}.yaml"
            return subprocess.Popen([sys.executable, "-m", "edge_daemon", "collect", "--config", str(cfg_path)],
                                    stderr=log, env=env)  # fmt: skip

        collector = start_collector()
        deadline = time.monotonic() + 60
        while b"collector connected" not in _read(work / "collector.log") and time.monotonic() < deadline:
            time.sleep(0.2)
        if jetstream:
            second = start_collector(2)
        # Devices go to nodes 2 and 3, so that node 1 stays for the collector to move to.
        for w in range(0, devices, PER_WORKER):
            chunk = ids[w : w + PER_WORKER]
            port = nats.mqtt_ports[1 + (w // PER_WORKER) % 2]
            out = work / f"worker-{w}.json"
            procs.append(subprocess.Popen([sys.executable, "-m", "edge_daemon.fleet.sim", "--worker", ",".join(chunk),
                                           str(port), str(seconds), str(work / "state"), str(out)]))  # fmt: skip
        t0 = time.monotonic()
        if faults:
            killed = 0
            plan = [(0.15, "cut devices"), (0.2, "kill the collector's node"), (0.35, "start the node again"),
                    (0.4, "restore devices"),
                    (0.45, "kill collector"), (0.55, "start collector"), (0.65, "crash postgresql"),
                    (0.72, "start postgresql")]  # fmt: skip
            for at, what in plan:
                time.sleep(max(0.0, t0 + at * seconds - time.monotonic()))
                logger.info("fault: %s", what)
                if what in ("cut devices", "restore devices"):
                    for proc in procs:
                        proc.send_signal(signal.SIGUSR1 if what == "cut devices" else signal.SIGUSR2)
                elif what == "kill the collector's node":
                    killed = collector_node(work / "collector.log", collector_ports)
                    logger.info("fault: the collector is on node n%d: killing it", killed + 1)
                    nats.kill(killed)
                elif what == "start the node again":
                    nats.start_node(killed)
                elif what == "kill collector":
                    collector.send_signal(signal.SIGKILL)
                    collector.wait()
                elif what == "start collector":
                    collector = start_collector()
                elif what == "crash postgresql":
                    pg.stop("immediate")
                else:
                    pg.start()
        for proc in procs:
            proc.wait()
        numbered: dict[str, int] = {}
        for w in range(0, devices, PER_WORKER):
            numbered.update(json.loads((work / f"worker-{w}.json").read_text())["numbered"])
        events = sum(numbered.values())
        # The collector catches up with what the broker holds for it. With JetStream, what the killed collector had
        # taken and not acknowledged comes again only after ack_wait_s: wait longer than that for the count to move.
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < (ACK_WAIT_S + 5 if jetstream else 5):
            with psycopg.connect(admin_dsn) as conn:
                n = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            if n != last:
                last, stable_since = n, time.monotonic()
            if n >= events:
                break
            time.sleep(1)
        with psycopg.connect(admin_dsn) as conn:
            conn.execute("CREATE TEMP TABLE numbered (device_id text PRIMARY KEY, last_seq bigint)")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO numbered VALUES (%s, %s)", list(numbered.items()))
            stored, rows = conn.execute(
                "SELECT count(DISTINCT (e.device_id, e.seq)), count(*) FROM events e JOIN numbered n USING (device_id) "
                "WHERE e.seq BETWEEN 1 AND n.last_seq"
            ).fetchone()
            p50, p99, span = conn.execute(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY "
                "ms), extract(epoch FROM max(stored_at) - min(stored_at)) FROM (SELECT stored_at, extract(epoch FROM "
                "stored_at - window_end) * 1000 AS ms FROM events) t"
            ).fetchone()
        print(
            f"devices={devices} events={events} stored={stored} lost={events - stored} duplicated={rows - stored} "
            f"p50_ms={p50 or 0:.0f} p99_ms={p99 or 0:.0f} events_per_s={stored / max(float(span or 1), 1):.1f}",
            flush=True,
        )
        ok = events == stored and rows == stored
        return 0 if ok else 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in (collector, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
        nats.close()
        pg.close()
        if ok:  # the devices' outboxes and the brokers' stores go; the logs stay for a look
            shutil.rmtree(work / "state", ignore_errors=True)
            for node in nats.nodes:
                shutil.rmtree(nats.dir / node.name, ignore_errors=True)


def collector_node(log: Path, ports: list[int]) -> int:
    """Which node the collector is connected to now: its log's last "collector connected to HOST:PORT"."""
    found = re.findall(rb"collector connected to \S+:(\d+) ", _read(log))
    if not found or int(found[-1]) not in ports:
        raise RuntimeError(f"{log}: no line says which node the collector is connected to")
    return ports.index(int(found[-1]))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


if __name__ == "__main__":
    sys.exit(main())
