"""`emotion-edge demo`: the whole product in one command, with no camera, microphone or broker needed.

Brings up a private broker when the config names none, subscribes to the
replay's topics (`<topic_prefix>/<device_id>/replay/`, never the service's) and
prints what arrives, and replays the bundled clip through the real models and
the real daemon pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from . import homeassistant
from .config import Config
from .daemon import Daemon, ReplayInputs
from .devbroker import LocalBroker, free_port
from .mqtt import Topics, resolve_broker

logger = logging.getLogger(__name__)


def _show(msg: mqtt.MQTTMessage, topics: Topics) -> None:
    text = msg.payload.decode("utf-8", "replace")
    if msg.topic == topics.events:
        e = json.loads(text)
        parts = [f"{m} {s['label']} {s['confidence']:.2f} ({s['count']})" for m, s in e["modalities"].items() if s]
        print(
            f"event seq={e['seq']:<4} media {e['media_start_s']:5.1f}-{e['media_end_s']:5.1f}s  "
            f"{e['emotion']:<8} {e['confidence']:.2f}   [{'; '.join(parts)}]",
            flush=True,
        )
    elif msg.topic not in (topics.stats, topics.state_changed):  # `state` says the same
        print(f"{msg.topic.removeprefix(topics.base + '/')}: {text}", flush=True)


def _page_for_a_newcomer(config: Config) -> tuple[Config, str]:
    """`demo --keep`: the page on this machine only (127.0.0.1), on web.port or a free port when that one is taken
    (e.g. by the service), with a fresh password given to the page through its own environment variable."""
    port = config.web.port
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            port = free_port()
    password = secrets.token_urlsafe(9)
    os.environ[config.web.password_env] = password
    web = dataclasses.replace(config.web, enabled=True, host="127.0.0.1", port=port, public_url=None)
    return dataclasses.replace(config, web=web), password


def run_demo(config: Config, video: Path, audio: Path, realtime: bool = True, keep: bool = False) -> int:
    password = None
    if keep:
        config, password = _page_for_a_newcomer(config)
    broker = None
    host, port = resolve_broker(config)
    if config.mqtt.host is None and not config.mqtt.hosts:  # a configured cluster: the replay uses its first node
        broker = LocalBroker().start()
        host, port = "127.0.0.1", broker.port
        print(f"started a private {broker.kind} broker on {host}:{port}", file=sys.stderr)
    topics = Topics(homeassistant.base_topic(config, replay=True))  # a replay speaks under <base>/replay/
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"emotion-edge-demo-{config.device_id}")

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(f"{topics.base}/#", qos=1)

    sub.on_connect = on_connect
    sub.on_message = lambda c, u, m: _show(m, topics)
    try:
        sub.connect(host, port)
        sub.loop_start()
        print(f"replaying {video.name} + {audio.name}; subscribed to {topics.base}/#", file=sys.stderr)
        if password is not None:
            print(
                f"device page: http://127.0.0.1:{config.web.port}/  user: admin  password: {password}\n"
                "(it stays up after the clip, with its history, until Ctrl-C)",
                flush=True,
            )
        with tempfile.TemporaryDirectory(prefix="emotion-edge-demo-") as state:
            daemon = Daemon(
                config,
                replay=ReplayInputs(video, audio, realtime),
                state_dir=Path(state),
                broker=(host, port),
                keep_page=keep,
            )
            if keep:  # Ctrl-C is how a kept page ends: the handler only records it, as `run`'s does (cli.py)
                for signum in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(signum, lambda n, _frame: daemon.note_signal(n))
            daemon.run()
        print(f"done: {daemon.events} events published to {host}:{port}", file=sys.stderr)
        return 130 if daemon.stopped_by == signal.SIGINT else 0
    except OSError as exc:
        print(f"emotion-edge: error: cannot reach broker {host}:{port} ({exc.strerror or exc})", file=sys.stderr)
        return 2
    finally:
        sub.loop_stop()
        sub.disconnect()
        if broker:
            broker.stop()
