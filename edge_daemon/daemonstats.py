"""The daemon's counters (`stats`, published on an interval) and the device page's read-only snapshot.

Both only read: counters of the capture buffers, the workers, the fusion loop, the outbox, the broker session and
the history, and each source's status. Nothing here calls into a perception thread or changes anything.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import supervisor
from .capture import SAMPLE_RATE
from .capture.camera import CameraSource
from .capture.files import VideoFileSource
from .capture.microphone import MicrophoneSource
from .events import iso_utc
from .supervisor import workers_alive

if TYPE_CHECKING:
    from .daemon import Daemon


def collect(d: Daemon) -> dict[str, Any]:
    """The counters published on `stats` every mqtt.stats_interval_s, and shown on the page."""
    st = d.stages
    fw, sw = st.face_worker, st.speech_worker
    return {
        "uptime_s": round(time.monotonic() - d.started, 1),
        "frames_analysed": fw.frames_analysed if fw else 0,
        "frames_with_face": fw.faces_seen if fw else 0,
        "face_detections": fw.face_detections if fw else 0,  # the other analysed frames followed their faces
        # Captured audio only: the silence that keeps stream time while the microphone is away does not count.
        "audio_s": round((st.ring.total - sum(m.padded for m in _microphones(d))) / SAMPLE_RATE, 1),
        "speech_windows": sw.windows if sw else 0,
        "speech_windows_voiced": sw.voiced if sw else 0,
        "inference_ms": d.timings.medians(),
        "drops": {
            "frames_replaced": st.slot.dropped,
            "audio_samples_overwritten": st.ring.dropped,
            "audio_samples_trimmed": sum(m.trimmed for m in _microphones(d)),
            "late_predictions": d.fusion.windower.late,
            "outbox_dropped": d.outbox.dropped,
            "outbox_write_failed": d.fanout.store_failures,
        },
        "queue_depth": {"predictions": d.fusion.predictions.qsize(), "outbox": d.outbox.depth()},
        "events": d.fanout.events,
        "last_seq": d.outbox.last_seq,
        "events_published": d.session.published if d.session else 0,
        "restarts": {t.name: d.supervisor.restarts[t.name] for t in [*st.sources, *st.workers]},
        "sources": {s.name: s.status.snapshot() for s in st.sources},
        "paused_s": {s.name: s.status.snapshot()["paused_s"] for s in st.sources},
        "last_event_age_s": round(time.monotonic() - last, 1) if (last := d.fanout.last_event_at) is not None else None,
        "mqtt": d.session.stats() if d.session else None,
        "outbox": {"held": d.outbox.held, "storage_error": d.outbox.storage_error or None},
        "history": d.history.stats() if d.history else None,
        "last_error": d.errors.last(),
    }


def page_snapshot(d: Daemon) -> dict[str, Any]:
    """Read-only view for the device page (called from its threads): counters and states, nothing it could
    change, no call into a perception thread."""
    stats = collect(d)
    video = (CameraSource, VideoFileSource)
    return {
        "device_id": d.config.device_id,
        "started": iso_utc(d.clock.wall(0.0)),
        "replay": d.replay is not None,
        "perception_ok": not d.stop_event.is_set() and workers_alive(d.stages.workers, supervisor.STALL_S),
        "sources": {
            s.name: {**s.status.snapshot(), "kind": "camera" if isinstance(s, video) else "microphone"}
            for s in d.stages.sources
        },
        "broker": {"state": "off" if d.session is None else "online" if d.session.connected.is_set() else "offline"},
        "controls": d.controls.get(),
        "models": d.stages.models.versions(),
        "stats": stats,
    }


def _microphones(d: Daemon) -> list[MicrophoneSource]:
    return [s for s in d.stages.sources if isinstance(s, MicrophoneSource)]


class FrameRate:
    """Frames analysed per second since the last stats message: what the device manages now, pauses included."""

    def __init__(self, started: float) -> None:
        self._mark = (started, 0)  # (monotonic time, frames analysed) at the last stats message

    def add_to(self, stats: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        then, frames = self._mark
        done = stats["frames_analysed"] - frames
        stats["frames_analysed_per_s"] = round(done / (now - then), 2) if now > then and done >= 0 else None
        self._mark = (now, stats["frames_analysed"])
        return stats
