"""The paho client: how it is made (credentials, TLS, protocol) and the paho internals the session has to reach.

paho 2 is pinned below 3: the protocol switch, the resend queue and the back-off delay below have no public API,
and every use of a private attribute is here or in connection.py, marked `pinned paho<3`.
"""

from __future__ import annotations

import logging
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..config import Config, mqtt_password
from ..errors import UserError

logger = logging.getLogger(__name__)

# CONNACK "unacceptable protocol version": 0x01 from a 3.1.1 broker (paho maps it to 132 for MQTT 5 clients), 0x84.
UNSUPPORTED_PROTOCOL = (0x01, 0x84)


def client_id_of(config: Config) -> str:
    return config.mqtt.client_id or f"emotion-edge-{config.device_id}"


def make_client(config: Config, client_id: str) -> mqtt.Client:
    """A paho client with the configured credentials and TLS (UserError if the certificate files are unusable)."""
    c = config.mqtt
    # MQTT 5: a broker says in the PUBACK when it did not take a message (an ACL, a quota); 3.1.1 acknowledges it.
    # `auto` starts with 5; the connection switches to 3.1.1 while a broker refuses it (see try_other_protocol).
    protocol = mqtt.MQTTv311 if str(c.protocol) == "3.1.1" else mqtt.MQTTv5
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    if c.username:
        client.username_pw_set(c.username, mqtt_password(config))
    if c.tls.enabled:
        tls = c.tls
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(tls, name)
            if value and not config.path(value).is_file():
                raise UserError(f"mqtt.tls.{name}: {config.path(value)} not found")
        try:
            client.tls_set(
                ca_certs=str(config.path(tls.ca_file)) if tls.ca_file else None,
                certfile=str(config.path(tls.cert_file)) if tls.cert_file else None,
                keyfile=str(config.path(tls.key_file)) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise UserError(f"mqtt.tls: cannot use the certificate files ({exc})") from None
    return client


def is_v5(client: mqtt.Client) -> bool:
    """Whether the client speaks (or will next try) MQTT 5."""
    return client._protocol == mqtt.MQTTv5  # pinned paho<3


def try_other_protocol(config: Config, client: mqtt.Client) -> None:
    """mqtt.protocol auto, never connected yet: the next attempt uses the other MQTT version."""
    if config.mqtt.protocol != "auto":
        return
    client._protocol = mqtt.MQTTv311 if client._protocol == mqtt.MQTTv5 else mqtt.MQTTv5  # pinned paho<3
    client._clean_session = True  # what paho reads for 3.1.1 (it was created for MQTT 5, where it is None)
    logger.info("MQTT: trying protocol %s next", "3.1.1" if client._protocol == mqtt.MQTTv311 else "5")


def forget_queued(client: mqtt.Client) -> None:
    """On a new connection, take what the previous one left out of paho's resend queue: events are offered
    again from the outbox, and availability, retained topics and discovery are published afresh on every
    connect. A message the broker closes the connection for (over its message size limit) must not be re-sent
    by paho forever. Called from on_connect: paho walks that queue right after it returns, never during."""
    with client._out_message_mutex:  # no public API for this in paho 2 (pinned <3); an RLock
        client._out_messages.clear()
        client._inflight_messages = 0
