"""The collector's NATS source: events from a durable JetStream pull consumer that several collectors share.

NATS' MQTT gateway has no `$share` (shared subscriptions), but it keeps every QoS 1 message a device publishes in
its own JetStream stream, `$MQTT_msgs` (subject `$MQTT.msgs.<topic as subject>`), and acknowledges the device's
PUBLISH only once the stream has stored it. A durable pull consumer on that stream, filtered on
`$MQTT.msgs.<prefix>.*.events`, is a work queue: each collector that binds it fetches its own messages, JetStream
hands each message to one of them, and a message that is not acknowledged within `ack_wait_s` (its collector was
killed, or could not reach PostgreSQL) goes to another. The collector acknowledges a message only after the row is
committed, as with MQTT. `$MQTT_msgs` keeps a message while some consumer still has it to acknowledge (interest
retention), so the durable consumer, once created, holds every event until a collector has stored it.

Status (availability, state, status, stats) is taken from plain NATS subscriptions by every collector (last write
wins), as the MQTT session does for retained topics; retained values published before the collector started are
not read in this mode.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import ssl
import threading
import time
from typing import Any

import nats
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from ..config import node_name, split_node
from ..errors import UserError
from ..throttle import Throttle
from . import store
from .mqttsource import tls_context
from .settings import CollectorConfig, secret

logger = logging.getLogger(__name__)

STATUS_KINDS = tuple(k for k in store.KINDS if k != "events")
NATS_PORT = 4222  # NATS' client port, when a jetstream.servers entry names none
STREAM_NOT_FOUND = 10059  # JetStream's error code (a missing consumer is 10014)


def adjust(have: ConsumerConfig, wanted: ConsumerConfig) -> tuple[ConsumerConfig, list[str]]:
    """The consumer `have` as this collector needs it, and what that changes (nothing: an empty list).

    Its subjects are only ever added to: `$MQTT_msgs` keeps a message only while a consumer is interested in its
    subject, so taking the old prefix's subject away (after `mqtt.topic_prefix` changed, or from a collector that
    shares the consumer with another prefix) would delete the events still waiting there. An old prefix is removed
    by hand once it has drained (docs/fleet.md). Timings are compared in whole nanoseconds, as NATS keeps them (33.3 s
    comes back as 33.299999999)."""
    filters = list(have.filter_subjects or ([have.filter_subject] if have.filter_subject else []))
    changed = []
    update = ConsumerConfig(
        durable_name=wanted.durable_name, ack_policy=wanted.ack_policy, deliver_policy=have.deliver_policy,
        ack_wait=wanted.ack_wait, max_ack_pending=wanted.max_ack_pending, max_deliver=have.max_deliver,
        filter_subject=have.filter_subject, filter_subjects=have.filter_subjects,
    )  # fmt: skip
    if filters and wanted.filter_subject not in filters:  # no filter at all: it reads every subject already
        update.filter_subject, update.filter_subjects = None, [*filters, wanted.filter_subject]
        changed.append(f"now also reads {wanted.filter_subject} (kept: {', '.join(filters)})")
    if round((have.ack_wait or 0) * 1e9) != int(wanted.ack_wait * 1e9):  # nats-py sends int(seconds * 1e9)
        changed.append(f"ack_wait {have.ack_wait:g} s -> {wanted.ack_wait:g} s")
    if have.max_ack_pending != wanted.max_ack_pending:
        changed.append(f"max_ack_pending {have.max_ack_pending} -> {wanted.max_ack_pending}")
    return update, changed


class JetStreamSource:
    """Feeds `inbox` from the shared consumer (events) and from subscriptions (status); `ack(batch)` after COMMIT."""

    def __init__(self, config: CollectorConfig, inbox: queue.SimpleQueue[store.Message]) -> None:
        self.config = config
        self.js_config = config.jetstream
        self.subject_base = config.mqtt.topic_prefix.rstrip("/").replace("/", ".")
        self.filter = f"{self.js_config.subject_prefix}{self.subject_base}.*.events"
        self._inbox = inbox
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="jetstream", daemon=True)
        self._log = Throttle()
        self._closing = False
        self._nc: Any = None
        scheme = "tls" if config.mqtt.tls.enabled else "nats"
        # No servers named: the MQTT nodes' hosts, since NATS' MQTT gateway is a port of the same server.
        nodes = [split_node(s, NATS_PORT) for s in self.js_config.servers]
        nodes = nodes or [(host, NATS_PORT) for host, _ in config.mqtt.nodes()]
        self.servers = [f"{scheme}://{node_name(host, port)}" for host, port in nodes]
        # Read once, here, so that a missing credential or certificate file is one clear error at start (exit 2),
        # not a retry loop or a dead thread in the NATS thread later.
        c = config.mqtt
        self._password = secret(c.password_env, "collector_mqtt_password") if c.username else None
        try:
            self._tls = tls_context(config) if c.tls.enabled else None
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise UserError(f"mqtt.tls: cannot use the certificate files ({exc})") from None

    # ------------------------------------------------------------------ the collector's side

    def start(self) -> None:
        self._thread.start()

    def ack(self, batch: list[store.Message]) -> None:
        """After COMMIT. An acknowledgement lost on the way (a dropped connection) only means the event comes again
        after ack_wait_s, and the unique key stores it once."""
        msgs = [m.handle for m in batch if m.handle is not None]
        if msgs:
            asyncio.run_coroutine_threadsafe(self._ack_all(msgs), self._loop)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    # ------------------------------------------------------------------ the NATS thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    @staticmethod
    async def _ack_all(msgs: list[Any]) -> None:
        for m in msgs:
            try:
                await m.ack()
            except NatsError:
                return  # the connection is gone: the rest come again after ack_wait

    async def _main(self) -> None:
        c = self.config.mqtt
        nc = None
        delay = 1.0
        while not self._stop.is_set():
            try:
                nc = await nats.connect(
                    servers=self.servers, user=c.username, password=self._password, tls=self._tls,
                    connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=1, allow_reconnect=True,
                    error_cb=self._on_error, disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected,
                    name=f"emotion-edge-collector/{self.js_config.consumer}",
                )  # fmt: skip
                sub = await self._bind(nc)
                for kind in STATUS_KINDS:
                    await nc.subscribe(f"{self.subject_base}.*.{kind}", cb=self._on_status)
                self._nc = nc
                self._log_connected()
                self.connected.set()
                delay = 1.0
                await self._fetch_loop(sub)
            except (NatsError, OSError, asyncio.TimeoutError) as exc:
                self.connected.clear()
                if self._log.ready():
                    logger.warning("NATS %s: %s; trying again in %.0f s", ", ".join(self.servers),
                                   str(exc) or type(exc).__name__, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                if nc is not None and not nc.is_closed:
                    self._closing = True
                    await nc.close()  # unacknowledged messages go back to the consumer after ack_wait
                    self._closing = False
                nc = None

    async def _bind(self, nc: Any) -> Any:
        """The shared durable consumer: created by the first collector, bound by the others, and widened to this
        collector's topics when it does not read them yet (`adjust`)."""
        js = nc.jetstream()
        j = self.js_config
        wanted = ConsumerConfig(
            durable_name=j.consumer, filter_subject=self.filter, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, ack_wait=j.ack_wait_s, max_ack_pending=j.max_ack_pending, max_deliver=-1,
        )  # fmt: skip
        try:
            have = (await js.consumer_info(j.stream, j.consumer)).config
        except NotFoundError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                # The gateway makes $MQTT_msgs at the first MQTT connection to the cluster. The consumer must exist
                # before the devices' first events (the stream keeps a message only for the consumers it has), so a
                # collector started first connects once itself rather than wait for a device.
                await asyncio.get_running_loop().run_in_executor(None, self._wake_gateway)
            await js.add_consumer(j.stream, wanted)
            logger.info("created the durable consumer %s on %s (%s)", j.consumer, j.stream, self.filter)
        else:
            update, changed = adjust(have, wanted)
            if changed:  # the same durable name: NATS updates it in place
                await js.add_consumer(j.stream, update)
                logger.warning("updated the durable consumer %s: %s", j.consumer, "; ".join(changed))
        return await js.pull_subscribe_bind(durable=j.consumer, stream=j.stream)

    def _wake_gateway(self) -> None:
        """One MQTT connection (clean session, no subscription) to a node of `mqtt`, so that NATS' MQTT gateway
        creates its streams."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        c = self.config.mqtt
        answered = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{c.client_id}-setup", protocol=mqtt.MQTTv311)
        if c.username:
            client.username_pw_set(c.username, secret(c.password_env, "collector_mqtt_password"))
        if c.tls.enabled:
            client.tls_set_context(tls_context(self.config))
        client.on_connect = lambda *args: answered.set()
        for host, port in c.nodes():
            try:
                client.connect(host, port, keepalive=10)
            except OSError:
                continue
            client.loop_start()
            answered.wait(5)
            client.disconnect()
            client.loop_stop()
            if answered.is_set():
                logger.info("connected once to the MQTT gateway at %s:%d so that it makes %s", host, port,
                            self.js_config.stream)  # fmt: skip
                return

    async def _fetch_loop(self, sub: Any) -> None:
        batch = self.config.database.batch_size
        while not self._stop.is_set():
            if self._inbox.qsize() >= 2 * batch:  # the database is slow or away: no more in flight than it can take
                await asyncio.sleep(0.05)
                continue
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except asyncio.TimeoutError:
                continue
            now = time.time()
            for m in msgs:
                device = m.subject[len(self.js_config.subject_prefix) :].split(".")[-2]
                topic = m.subject[len(self.js_config.subject_prefix) :].replace(".", "/")
                self._inbox.put(store.Message("events", device, topic, m.data, now, handle=m))

    async def _on_status(self, m: Any) -> None:
        parts = m.subject.split(".")
        self._inbox.put(store.Message(parts[-1], parts[-2], m.subject.replace(".", "/"), m.data, time.time()))

    async def _on_error(self, exc: Exception) -> None:
        if self._log.ready():
            logger.warning("NATS: %s", str(exc) or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        self.connected.clear()
        if self._closing:
            return
        logger.warning("collector lost its NATS node; reconnecting to another (the consumer is the cluster's)")

    async def _on_reconnected(self) -> None:
        self.connected.set()
        self._log_connected()

    def _log_connected(self) -> None:
        url = self._nc.connected_url if self._nc is not None else None
        logger.info("collector connected to %s (NATS: JetStream %s, consumer %s)", url.netloc if url else "?",
                    self.js_config.stream, self.js_config.consumer)  # fmt: skip
