"""Delivery from the outbox: events handed to paho in `seq` order, acknowledged, refused and offered again.

The policy, in one place: at most INFLIGHT events unacknowledged, a token bucket of `outbox.drain_rate_per_s`; an
acknowledged event leaves the outbox; one the broker refuses (an MQTT 5 PUBACK reason code) stays there, written
down, and is offered again after `retry_refused_s`, one probe at a time while refusals go on; after a connection
ends with events in flight, they are offered again one at a time until one is acknowledged, so that an event the
broker closes the connection for (over its message size limit) is found and set aside for RETRY_DROPPED_S.

It knows the network only through `client.publish(...)` returning something with a `mid`, and `on_publish` (paho's
callback) for the answer: tests drive `step` with a stand-in for those two and a real outbox.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

from ..outbox import Outbox
from ..throttle import Throttle
from .signals import Signals

logger = logging.getLogger(__name__)

INFLIGHT = 50  # events handed to paho and not yet acknowledged, at most
RETRY_REFUSED_S = 60.0  # an event the broker refused (PUBACK reason code) is offered again after this long
RETRY_DROPPED_S = 600.0  # one the broker closed the connection for (over its message size limit?), after this long


class Delivery:
    """Drains the outbox onto `topic` from a thread of its own (`run`); `step` is one pass of it."""

    def __init__(
        self,
        outbox: Outbox,
        client: Any,
        topic: str,
        signals: Signals,
        drain_rate_per_s: float = 50.0,
        *,
        broker: str = "",
        client_id: str = "",
        tick: Callable[[float], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.client = client  # paho's client, or what stands in for it: publish(topic, payload, qos, retain).mid
        self.topic = topic
        self.signals = signals
        self.drain_rate_per_s = drain_rate_per_s
        self.broker, self.client_id = broker, client_id  # for the log line about refusals
        self.tick = tick  # called first in every pass, with the time (the session's postponed answers)
        self.published = 0
        # What operators need to see remotely (stats.mqtt) and in the log: refused publishes.
        self.refused = 0  # refusals by the broker (a PUBACK reason code, or a connection closed on an event)
        self.refused_waiting = 0  # events refused and waiting in the outbox to be offered again
        self.refusal = ""  # the last refusal's reason, empty once the broker takes events again
        self.retry_refused_s = RETRY_REFUSED_S
        self._size_refusal = ""
        self._acks: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()  # (mid, failure reason or "")
        self._refusal_log = Throttle()
        self._failures = Throttle()
        # The drain thread's own state (nobody else touches it).
        self._inflight: dict[int, int] = {}  # paho mid -> event seq
        self._handed = 0  # highest seq handed to paho since the connection began
        self._retry: dict[int, float] = {}  # seq refused by the broker -> when to offer it again (monotonic)
        # After a connection that ended with events in flight: hand over one at a time until one is acknowledged,
        # so that an event the broker closes the connection for (over its message size limit) is found.
        self._careful = False
        self._dropped_for: set[int] = set()  # refused seqs that the broker closed the connection for
        self._budget, self._last = 0.0, time.monotonic()

    def on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        """paho's network thread, with paho's message lock held: hand the answer to the drain thread."""
        # MQTT 5: a PUBACK with a failure reason code (not authorised, quota, payload) means the broker did NOT take it.
        self._acks.put((mid, str(reason_code) if getattr(reason_code, "is_failure", False) else ""))
        self.signals.wake.set()

    def run(self) -> None:
        self._budget, self._last = 0.0, time.monotonic()
        while not self.signals.stopping.is_set():
            self.signals.wake.wait(0.2)
            self.signals.wake.clear()
            try:
                self.step(time.monotonic())
            except Exception as exc:  # e.g. the outbox locked by another process: retry, never stop publishing
                if self._failures.ready():
                    logger.error("publishing from the outbox failed (%s); retrying", exc)
                self.signals.stopping.wait(1.0)

    def step(self, now: float) -> None:
        """One pass: what the connection's end and the broker's answers mean, then hand over what is due."""
        if self.tick is not None:
            self.tick(now)
        self._after_loss(now)
        self._take_answers(now)
        self.outbox.persist_due()
        self._offer(now)

    def stats(self) -> dict[str, Any]:
        """Refused events, for `stats.mqtt`."""
        return {
            "events_refused": self.refused,
            "events_refused_waiting": self.refused_waiting,
            "last_refusal": self.refusal or None,
        }

    def _after_loss(self, now: float) -> None:
        if self.signals.lost.is_set():
            self.signals.lost.clear()
            if self._inflight:
                if self._careful and len(self._inflight) == 1:
                    seq = next(iter(self._inflight.values()))
                    size = sum(len(p.payload) for p in self.outbox.get([seq]))
                    self._refuse(
                        [seq], f"the broker closed the connection ({self.signals.lost_reason}) each time it got this "
                        f"{size}-byte event: over its message size limit?", now + RETRY_DROPPED_S
                    )  # fmt: skip
                    self._dropped_for.add(seq)
                    self._size_refusal = self.refusal
                self._careful = True
            self._inflight.clear()
            self._handed = 0  # everything unacknowledged is offered again from the outbox

    def _take_answers(self, now: float) -> None:
        acked: list[int] = []
        refused: dict[str, list[int]] = {}
        while True:
            try:
                mid, failure = self._acks.get_nowait()
            except queue.Empty:
                break
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue
            if failure:
                refused.setdefault(failure, []).append(seq)
            else:
                acked.append(seq)
        for reason, seqs in refused.items():
            self._refuse(seqs, f"PUBACK reason: {reason}", now + self.retry_refused_s)
        if acked:
            self._careful = False
            self.outbox.ack_many(acked)
            self.published += len(acked)
            if self.refusal and not refused:
                # The broker takes events again (an ACL fixed): offer the ones it refused by PUBACK now.
                for s in self._retry:
                    if s not in self._dropped_for:
                        self._retry[s] = 0.0
                if not self._dropped_for or "size limit" not in self.refusal:
                    self._delivery_changed(self._size_refusal if self._dropped_for else "")
        for s in [s for s in self._dropped_for if s not in self._retry]:
            self._dropped_for.discard(s)
        if not self._retry and self.refusal:
            self._delivery_changed("")
        self.refused_waiting = len(self._retry)

    def _offer(self, now: float) -> None:
        # Token bucket: a long backlog drains at drain_rate_per_s, with a burst of one second's worth.
        self._budget = min(self.drain_rate_per_s, self._budget + (now - self._last) * self.drain_rate_per_s)
        self._last = now
        room = min(1 - len(self._inflight) if self._careful else INFLIGHT - len(self._inflight), int(self._budget))
        if not self.signals.connected.is_set() or room <= 0:
            return
        due = sorted(s for s, t in self._retry.items() if t <= now)
        if self.refusal:
            due = due[:1]  # while refusals go on, one probe at a time
        for item in self.outbox.get(due[:room]):
            del self._retry[item.seq]
            self._hand(item.seq, item.payload)
            self._budget -= 1
            room -= 1
        for s in due:
            if s in self._retry and not self.outbox.get([s]):
                del self._retry[s]  # dropped by the outbox bounds meanwhile
        if room <= 0:
            return
        for item in self.outbox.pending(self._handed, room + len(self._retry)):
            if item.seq in self._retry or item.seq in self._inflight.values():
                self._handed = item.seq  # offered again from `retry`, not in order
                continue
            if room <= 0:
                break
            self._handed = item.seq
            self._hand(item.seq, item.payload)
            self._budget -= 1
            room -= 1

    def _hand(self, seq: int, payload: str) -> None:
        info = self.client.publish(self.topic, payload, qos=1, retain=False)
        self._inflight[info.mid] = seq

    def _refuse(self, seqs: list[int], reason: str, when: float) -> None:
        """The broker did not take these: they stay in the outbox (written down), and are offered again later."""
        self.outbox.persist(seqs)
        for s in seqs:
            self._retry[s] = when
        self.refused += len(seqs)
        self.refused_waiting = len(self._retry)
        if self.refusal != reason:
            self._delivery_changed(reason)
        if self._refusal_log.ready():
            logger.error(
                "MQTT broker %s refused %d event(s) on %s (%s): is client %r allowed to publish there (the "
                "broker's ACL, message_size_limit)? They stay in the outbox and are offered again; %d waiting "
                "(stats.mqtt.events_refused)",
                self.broker, len(seqs), self.topic, reason, self.client_id, len(self._retry),
            )  # fmt: skip

    def _delivery_changed(self, refusal: str) -> None:
        self.refusal = refusal  # the daemon's main loop shows it in `status` (retained) while it lasts
