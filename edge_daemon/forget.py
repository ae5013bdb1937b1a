"""`emotion-edge forget`: clear every retained topic this device owns, so that Home Assistant removes the device.

A retained message stays on the broker until someone replaces it; a removed or renamed device would otherwise leave
ghost entities behind (its discovery config) and a last word on its own topics. `forget` finds what the broker keeps
under the device's topics and its discovery topics, and replaces each with an empty retained message (MQTT's way of
deleting one), plus the topics it knows by name in case the broker had lost some.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from . import homeassistant
from .config import Config, node_name
from .control import NAMES as SWITCHES
from .errors import UserError
from .mqtt import Topics, client_id_of, diagnose, make_client

logger = logging.getLogger(__name__)

QUIET_S = 0.5  # retained messages arrive right after the subscription; this long without one, they are all in


def owned_topics(config: Config) -> list[str]:
    """The retained topics the device writes, by name."""
    t = Topics.for_device(config.mqtt.topic_prefix, config.device_id)
    return [
        homeassistant.device_topic(config),
        *homeassistant.legacy_topics(config),
        t.availability,
        t.state,
        t.status,
        *(f"{t.base}/{name}/state" for name in SWITCHES),
    ]


def forget(config: Config, timeout_s: float = 10.0) -> tuple[str, list[str]]:
    """Clear the device's retained topics on the configured broker; returns the broker (the node of mqtt.hosts that
    took the connection) and the topics cleared."""
    t = Topics.for_device(config.mqtt.topic_prefix, config.device_id)
    ha = config.mqtt.homeassistant.prefix
    filters = [
        f"{t.base}/#",  # a replay's topics too (<base>/replay/)
        homeassistant.device_topic(config),
        homeassistant.device_topic(config, replay=True),
        f"{ha}/+/{homeassistant.node_id(config)}/+/config",
    ]
    client = make_client(config, f"{client_id_of(config)}-forget-{os.getpid()}")
    retained: dict[str, bytes] = {}
    connected: queue.SimpleQueue[Any] = queue.SimpleQueue()
    subscribed = threading.Event()
    last_message = [time.monotonic()]

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain and msg.payload:
            retained[msg.topic] = msg.payload
        last_message[0] = time.monotonic()

    client.on_connect = lambda c, userdata, flags, reason_code, properties: connected.put(reason_code)
    client.on_subscribe = lambda c, userdata, mid, reason_codes, properties: subscribed.set()
    client.on_message = on_message
    failures = []
    for host, port in config.mqtt.nodes():  # the nodes of a cluster share retained messages: any one will do
        try:
            client.connect(host, port, keepalive=10)
            break
        except (OSError, ValueError):
            failures.append(f"mqtt: broker {node_name(host, port)} {diagnose(config, host, port)}")
    else:
        raise UserError("; ".join(failures))
    client.loop_start()
    try:
        try:
            reason = connected.get(timeout=timeout_s)
        except queue.Empty:
            raise UserError(f"mqtt: broker {host}:{port} gave no MQTT answer within {timeout_s:.0f} s") from None
        if reason.is_failure:
            raise UserError(f"mqtt: broker {host}:{port} refused the connection: {reason}")
        client.subscribe([(f, 1) for f in filters])
        if not subscribed.wait(timeout_s):
            raise UserError(f"mqtt: broker {host}:{port} did not confirm the subscription within {timeout_s:.0f} s")
        last_message[0] = time.monotonic()
        while time.monotonic() - last_message[0] < QUIET_S:
            time.sleep(0.05)
        if retained.get(t.availability) == b"online":
            raise UserError(
                f"{t.availability} says online: the daemon for device {config.device_id!r} is running and would "
                "announce itself again; stop it first (sudo systemctl stop emotion-edge), then run forget"
            )
        # Discovery first: Home Assistant removes the device while its other topics still exist, no flicker.
        # Topics known by name are cleared even if this broker lost them (one may have come back from a backup), but
        # not 0.1's per-entity discovery topics unless they are there: clearing one removes the device's entity of
        # the same id before the device message is cleared, and Home Assistant warns about it.
        legacy = set(homeassistant.legacy_topics(config))
        topics = sorted(
            set(retained) | (set(owned_topics(config)) - legacy), key=lambda x: (not x.startswith(ha + "/"), x)
        )
        infos = [client.publish(topic, b"", qos=1, retain=True) for topic in topics]
        deadline = time.monotonic() + timeout_s
        for info in infos:
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise UserError(f"mqtt: broker {host}:{port} did not acknowledge the removals within {timeout_s:.0f} s")
        return node_name(host, port), [topic for topic in topics if topic in retained]
    finally:
        client.disconnect()
        client.loop_stop()
