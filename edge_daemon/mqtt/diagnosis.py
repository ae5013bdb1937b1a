"""Why a broker cannot be used, in words an operator can act on: for the daemon's log and for `check`."""

from __future__ import annotations

import dataclasses
import os
import queue
import socket
import ssl
from typing import Any

from ..config import Config
from .client import UNSUPPORTED_PROTOCOL, client_id_of, make_client


def resolve_broker(config: Config) -> tuple[str, int]:
    """The broker, or the first node of mqtt.hosts (all of them: config.mqtt.nodes())."""
    return config.mqtt.nodes()[0]


def diagnose(config: Config, host: str, port: int) -> str:
    """Why a connection attempt failed, in words an operator can act on."""
    try:
        with socket.create_connection((host, port), timeout=3) as sock:
            if not config.mqtt.tls.enabled:
                return "accepted the connection but did not complete the MQTT handshake"
            tls = config.mqtt.tls
            ctx = ssl.create_default_context(cafile=str(config.path(tls.ca_file)) if tls.ca_file else None)
            if tls.cert_file:
                ctx.load_cert_chain(config.path(tls.cert_file), config.path(tls.key_file) if tls.key_file else None)
            with ctx.wrap_socket(sock, server_hostname=host):
                return "completed TLS on a probe but refused MQTT"
    except ssl.SSLCertVerificationError as exc:
        return (
            f"presented a TLS certificate we do not trust ({exc.verify_message}); check mqtt.tls.ca_file and mqtt.host"
        )
    except ssl.SSLError as exc:
        return f"failed the TLS handshake ({exc.reason or exc}); check mqtt.tls and that the port speaks TLS"
    except OSError as exc:
        return f"is unreachable ({exc.strerror or exc}); is the broker running and mqtt.host/mqtt.port right?"


def probe_broker(config: Config, host: str, port: int, timeout_s: float = 5.0) -> str | None:
    """What keeps the daemon from using the broker, or None: a real MQTT connect with its TLS and credentials."""
    # Never the daemon's own client id: the broker would disconnect a running daemon in favour of the probe.
    client = make_client(config, f"{client_id_of(config)}-check-{os.getpid()}")
    answers: queue.SimpleQueue[Any] = queue.SimpleQueue()
    client.on_connect = lambda c, userdata, flags, reason_code, properties: answers.put(("connack", reason_code))
    client.on_disconnect = lambda c, userdata, flags, reason_code, properties: answers.put(("closed", reason_code))
    try:
        client.connect(host, port, keepalive=10)
    except (OSError, ValueError):  # TLS failures are OSErrors too
        return diagnose(config, host, port)
    client.loop_start()
    try:
        kind, reason = answers.get(timeout=timeout_s)
    except queue.Empty:
        return f"accepted the connection but sent no MQTT answer within {timeout_s:.0f} s; is this port an MQTT broker?"
    finally:
        client.disconnect()
        client.loop_stop()
    if kind == "closed":
        return closed_without_answer(config)
    if reason.is_failure and getattr(reason, "value", None) in UNSUPPORTED_PROTOCOL and config.mqtt.protocol == "auto":
        # What the daemon does next: try MQTT 3.1.1 (NATS, RabbitMQ).
        v311 = dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, protocol="3.1.1"))
        return probe_broker(v311, host, port, timeout_s)
    return f"refused the connection: {reason}" if reason.is_failure else None


def closed_without_answer(config: Config) -> str:
    """The port took the TCP connection and closed it before any CONNACK."""
    if config.mqtt.tls.enabled:
        return "closed the connection during the MQTT handshake; check mqtt.tls and the broker's log"
    return (
        "closed the connection without answering MQTT; is it a TLS port (set mqtt.tls.enabled) or not an MQTT "
        "broker? The broker's log says why"
    )
