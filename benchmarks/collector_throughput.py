"""How fast one collector stores events into one PostgreSQL: a backlog queued by the broker, drained and timed.

    python benchmarks/collector_throughput.py [--events 20000] [--broker mosquitto|nats]

Events are published while the collector is stopped (the broker keeps them in the collector's persistent session),
then the collector starts and the time until the last row is committed is measured. Prints one line:
`broker=… events=… seconds=… events_per_s=…`. Needs scripts/fleet-setup.sh (PostgreSQL, psycopg, nats-server).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from edge_daemon.devbroker import LocalBroker
from edge_daemon.fleet.collector import Collector, init_db
from edge_daemon.fleet.localpg import LocalPostgres
from edge_daemon.fleet.natscluster import NatsCluster
from edge_daemon.fleet.settings import CollectorConfig, CollectorMqttConfig, DatabaseConfig

ROLE = "emotion_edge_collector"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--broker", choices=("mosquitto", "nats"), default="mosquitto")
    args = p.parse_args()
    with TemporaryDirectory() as tmp, LocalPostgres() as pg:
        if args.broker == "nats":
            broker: object = NatsCluster(1, folder=Path(tmp)).start()
            port = broker.mqtt_ports[0]  # type: ignore[attr-defined]
        else:
            conf = "max_queued_messages 0\nmax_inflight_messages 1000\n"
            broker = LocalBroker(extra_conf=conf).start()
            port = broker.port  # type: ignore[attr-defined]
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD 'bench'")
        import os

        os.environ["EMOTION_EDGE_COLLECTOR_DB_PASSWORD"] = "bench"
        cfg = CollectorConfig(
            mqtt=CollectorMqttConfig(host="127.0.0.1", port=port, client_id="bench-collector"),
            database=DatabaseConfig(dsn=pg.dsn(ROLE)),
        )
        init_db(cfg, pg.admin_dsn)
        # The session first (subscriptions), then stop: what follows is queued for it.
        stop = threading.Event()
        c = Collector(cfg)
        t = threading.Thread(target=c.run, args=(stop,))
        t.start()
        c.connected.wait(20)
        time.sleep(1)
        stop.set()
        t.join()
        v5 = args.broker == "mosquitto"
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub",
                          protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)  # fmt: skip
        pub.max_inflight_messages_set(1000)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        infos = []
        for n in range(args.events):
            dev = f"dev-{n % args.devices:04d}"
            event = {"schema": 2, "event_id": str(uuid.uuid4()), "device_id": dev, "seq": n // args.devices + 1,
                     "window_start": "2026-12-06T10:00:00.000Z", "window_end": "2026-12-06T10:00:02.000Z",
                     "emotion": "happy", "confidence": 0.8, "face_count": 1, "used": ["face"],
                     "modalities": {"face": {"label": "happy", "confidence": 0.8}}}  # fmt: skip
            infos.append(pub.publish(f"emotion-edge/{dev}/events", json.dumps(event), qos=1))
        for info in infos:
            info.wait_for_publish(60)
        pub.disconnect()
        pub.loop_stop()
        stop = threading.Event()
        c = Collector(cfg)
        t0 = time.monotonic()
        t = threading.Thread(target=c.run, args=(stop,))
        t.start()
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM events").fetchone()[0] < args.events:
                time.sleep(0.05)
                if time.monotonic() - t0 > 600:
                    break
            n = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        seconds = time.monotonic() - t0
        stop.set()
        t.join()
        broker.close() if args.broker == "nats" else broker.stop()  # type: ignore[attr-defined]
        print(f"broker={args.broker} events={n} seconds={seconds:.1f} events_per_s={n / seconds:.0f}")


if __name__ == "__main__":
    main()
