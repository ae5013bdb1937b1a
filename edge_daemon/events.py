"""The event schema: what a subscriber receives on `<prefix>/<device>/events`, one JSON object per window.

Only labels, scores and timings: never pixels or samples. `seq` is assigned
by the outbox when the event is stored, so it increases by one per event and
continues across restarts; `event_id` lets a subscriber drop the duplicates
that at-least-once delivery can bring.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .fusion import ModalitySummary, WindowResult
from .labels import emoji_of

# 2: the low-confidence label is `uncertain` (was `unknown`); `face_count` and `faces` (per-face boxes and labels).
SCHEMA = 2


def iso_utc(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Clock:
    """Maps stream seconds to wall-clock time; replay also reports media seconds.

    Live stream time is monotonic seconds since `started`. The wall time of stream second `t` is read from the
    wall clock when asked, less how long ago `t` was: a clock step (NTP after boot, on a board without a real-time
    clock) shows in the next event instead of skewing every event until a restart.
    """

    started: float  # time.monotonic() at stream second 0
    replay_origin: datetime | None = None  # replay: wall time of media second 0, fixed so runs are reproducible

    @property
    def replay(self) -> bool:
        return self.replay_origin is not None

    def wall(self, t: float) -> datetime:
        if self.replay_origin is not None:
            return self.replay_origin + timedelta(seconds=t)
        ago = time.monotonic() - self.started - t
        return datetime.now(timezone.utc) - timedelta(seconds=ago)


def _summary(s: ModalitySummary | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "label": s.label,
        "confidence": round(s.confidence, 4),
        "votes": s.votes,
        "probs": {k: round(v, 4) for k, v in s.probs.items()},
        "count": s.count,
    }


def build_event(
    result: WindowResult, *, device_id: str, clock: Clock, method: str, models: dict[str, str]
) -> dict[str, Any]:
    """The event for one closed window, without `seq` (the outbox adds it)."""
    start = clock.wall(result.start)  # read once: a live clock moves between two readings
    event: dict[str, Any] = {
        "schema": SCHEMA,
        "event_id": str(uuid.uuid4()),
        "device_id": device_id,
        "window_start": iso_utc(start),
        "window_end": iso_utc(start + timedelta(seconds=result.end - result.start)),
    }
    if clock.replay:
        event["media_start_s"] = round(result.start, 3)
        event["media_end_s"] = round(result.end, 3)
    event.update(
        {
            "emotion": result.emotion,
            "emoji": emoji_of(result.emotion),
            "confidence": round(result.confidence, 4),
            "method": method,
            "used": [m for m, s in result.modalities.items() if s is not None],
            "modalities": {m: _summary(s) for m, s in result.modalities.items()},
            "face_count": len(result.faces),
            "faces": [
                {"box": list(f.box), "label": f.label, "confidence": round(f.confidence, 4)} for f in result.faces
            ],
            "models": models,
        }
    )
    return event


def to_json(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), sort_keys=False)
