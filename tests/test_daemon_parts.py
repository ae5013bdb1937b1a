"""The daemon's parts, each alone (no broker, no thread started): the way an event goes out (sinks.py), the stop
signals (stopsignals.py), what an operator asks of a running daemon (actions.py), the stages and their replacement
(wiring.py) and the frame rate in stats (daemonstats.py). The whole daemon is test_lifecycle's and test_faults'.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from edge_daemon.config import load_config
from edge_daemon.control import Controls
from edge_daemon.daemonstats import FrameRate
from edge_daemon.devicestate import DeviceState
from edge_daemon.labels import STARTING
from edge_daemon.outbox import Outbox
from edge_daemon.pipeline import Timings
from edge_daemon.sinks import EventsFile, Fanout, event_sinks
from edge_daemon.stopsignals import StopSignals
from edge_daemon.tuning import Tuning

from .conftest import MODELS, write_config


def _event(i: int) -> dict[str, Any]:
    return {"emotion": "happy", "window_start": f"t{i}", "n": i}


# ---------------------------------------------------------------------------- sinks.py


def test_every_sink_gets_each_stored_event_in_order_with_its_seq(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    got: dict[str, list[int]] = {"a": [], "b": []}
    fanout = Fanout(
        outbox,
        [lambda e: got["a"].append(e["seq"]), lambda e: got["b"].append(e["seq"])],
        held=lambda: False,
        sent=True,
    )
    try:
        assert all(fanout.emit(_event(i)) for i in range(3))
        assert got == {"a": [1, 2, 3], "b": [1, 2, 3]}
        assert fanout.events == 3 and fanout.last_event_at is not None and fanout.store_failures == 0
        assert outbox.depth() == 3, "sent: the events wait in the outbox for the broker"
    finally:
        outbox.close()


def test_without_a_broker_only_the_seq_is_kept(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    try:
        fanout = Fanout(outbox, [], held=lambda: False, sent=False)
        fanout.emit(_event(1))
        fanout.emit(_event(2))
        assert outbox.depth() == 0 and outbox.last_seq == 2
    finally:
        outbox.close()


def test_an_event_the_outbox_cannot_store_reaches_no_sink_and_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path)
    seen: list[dict[str, Any]] = []
    fanout = Fanout(outbox, [seen.append], held=lambda: False, sent=True)
    try:
        with outbox._lock:
            outbox._db.execute("PRAGMA query_only = ON")  # as a file system remounted read-only refuses writes
        with caplog.at_level("ERROR", logger="edge_daemon.sinks"):
            assert not fanout.emit(_event(1)) and not fanout.emit(_event(2))
        assert seen == [] and fanout.events == 0 and fanout.store_failures == 2
        lines = [r.getMessage() for r in caplog.records if "cannot store events" in r.getMessage()]
        assert len(lines) == 1, "said once a minute, not once per event"
        with outbox._lock:
            outbox._db.execute("PRAGMA query_only = OFF")
        assert fanout.emit(_event(3)) and [e["seq"] for e in seen] == [1], "a failed store uses up no seq"
    finally:
        outbox.close()


def test_the_events_file_gets_one_json_line_per_event_in_sink_order() -> None:
    order: list[str] = []

    class Part:
        def __init__(self, name: str) -> None:
            self.name = name

        def record(self, event: dict[str, Any]) -> None:
            order.append(self.name)

        on_event = record

        def notify_event(self) -> None:
            order.append(self.name)

    out = io.StringIO()
    sinks = event_sinks(Part("history"), Part("page"), out, Part("mqtt"))
    for sink in sinks:
        sink({"seq": 7, "emotion": "sad"})
    assert order == ["history", "page", "mqtt"] and len(sinks) == 4
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [{"seq": 7, "emotion": "sad"}]
    assert event_sinks(None, None, None, None) == []
    EventsFile(out)({"seq": 8})
    assert out.getvalue().endswith('{"seq": 8}\n')


# ---------------------------------------------------------------------------- stopsignals.py


def test_the_first_stop_signal_decides_and_any_number_more_change_nothing(caplog: pytest.LogCaptureFixture) -> None:
    stop, reload = threading.Event(), threading.Event()
    signals = StopSignals(stop, reload)
    for signum in [signal.SIGHUP, signal.SIGTERM, *[signal.SIGINT] * 50]:
        signals.note(signum)
    assert not stop.is_set(), "a handler only records: the main loop acts"
    with caplog.at_level("INFO", logger="edge_daemon.stopsignals"):
        signals.take()
    assert reload.is_set() and stop.is_set() and signals.stopped.is_set()
    assert signals.stopped_by == signal.SIGTERM and signals.pending == []
    assert [r.getMessage() for r in caplog.records] == ["SIGTERM received: stopping"]


# ---------------------------------------------------------------------------- daemonstats.py


def test_the_frame_rate_is_counted_since_the_last_stats_message() -> None:
    rate = FrameRate(started=100.0)
    assert rate.add_to({"frames_analysed": 50}, now=110.0)["frames_analysed_per_s"] == 5.0
    assert rate.add_to({"frames_analysed": 50}, now=120.0)["frames_analysed_per_s"] == 0.0  # paused: none
    assert rate.add_to({"frames_analysed": 0}, now=121.0)["frames_analysed_per_s"] is None  # a counter reset


# ---------------------------------------------------------------------------- actions.py and wiring.py


def _parts(tmp_path: Path, models_dir: Path = MODELS, **sections: Any) -> Any:
    """The daemon's stages, fusion loop, state and actions as Daemon wires them, with nothing started."""
    from edge_daemon import wiring
    from edge_daemon.actions import Actions
    from edge_daemon.models import load_models

    cfg = load_config(write_config(tmp_path / "config.yaml", models={"dir": str(models_dir)}, **sections))
    state = DeviceState(cfg.fusion.state_after_windows)
    fusion = wiring.fusion_loop(cfg.fusion, state, lambda result: None)
    controls, tuning = Controls(None), Tuning(cfg.fusion, None)
    stop = threading.Event()
    stages = wiring.Stages(cfg, load_models(cfg), fusion.predictions, stop, Timings(), 0.0, controls)
    actions = Actions(cfg, stages, fusion, state, controls, tuning, None, 0.0, replay=False)
    return actions, stages, state


def test_switching_every_modality_off_pauses_and_a_changed_setting_is_in_force_after_poll(tmp_path: Path) -> None:
    actions, _, state = _parts(tmp_path, microphone={"enabled": False})
    published: list[str] = []
    state.subscribe(lambda s: published.append(s["emotion"]))
    state.start()
    actions.start()
    actions.poll()
    assert published == [STARTING], "all switches on: nothing changes"
    actions.controls.set("camera", False, source="test")  # the only enabled modality
    actions.tuning.set("method", "vote", source="test")
    actions.tuning.set("state_after_windows", 1, source="test")
    assert published == [STARTING] and actions.fusion.windower.rule.method != "vote", "only the main thread applies"
    actions.poll()
    assert published[-1] == "paused"
    assert actions.fusion.windower.rule.method == "vote" and state.after == 1


def test_a_model_reload_switches_the_stages_over_only_when_every_model_loads(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS, models)
    actions, stages, _ = _parts(tmp_path, models, microphone={"enabled": False})
    before, worker = stages.models, stages.face_worker
    (models / "face_emotion.tflite").write_bytes(b"not a model")
    assert not actions.reload_models() and stages.models is before, "a bad file leaves the running models"
    shutil.copy(MODELS / "face_emotion.tflite", models / "face_emotion.tflite")
    actions.reload.set()
    actions.poll()
    assert stages.models is not before and stages.face_worker is worker, "the same thread takes the new models"


def test_a_replaced_stage_loads_its_own_models_and_a_capture_source_keeps_its_device(tmp_path: Path) -> None:
    _, stages, _ = _parts(tmp_path)
    face, speech, camera = stages.face_worker, stages.speech_worker, stages.sources[0]
    fresh = stages.replacement(face)
    assert fresh is stages.face_worker and fresh is not face and face._retired
    assert stages.models.face is not None and stages.speech_worker is speech, "the other stage is left alone"
    fresh_camera = stages.replacement(camera)
    assert fresh_camera is not camera and fresh_camera.slot is camera.slot and fresh_camera.status is camera.status
