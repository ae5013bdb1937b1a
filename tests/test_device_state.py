"""The device's state has one owner (edge_daemon/devicestate.py), and the switches one object (edge_daemon/control.py):
fast unit tests, no broker, no subprocess.

The fusion loop reports windows and absence, the daemon reports the pause switch, start and stop; what the owner
hands its listeners is what MQTT, Home Assistant and the page all show.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_daemon.control import Controls
from edge_daemon.devicestate import DeviceState
from edge_daemon.fusion import FaceResult, FusionRule, Prediction, Windower
from edge_daemon.labels import CANONICAL, NO_ONE, PAUSED, STARTING, STOPPED
from edge_daemon.pipeline import FusionLoop


def _face(t: float, label: str = "happy", n: int = 1) -> Prediction:
    probs = np.zeros(len(CANONICAL), dtype=np.float32)
    probs[CANONICAL.index(label)] = 1.0
    faces = tuple(FaceResult((10 * i, 0, 50, 50), label, 1.0) for i in range(n))
    return Prediction("face", t, probs, faces)


def loop_with_states(after: int = 2, absent_after_s: float = 10) -> tuple[FusionLoop, list[dict[str, Any]]]:
    """A fusion loop of 2 s windows and the states its owner publishes, in order."""
    published: list[dict[str, Any]] = []
    state = DeviceState(after)
    state.subscribe(published.append)
    return FusionLoop(Windower(2.0, FusionRule()), state, lambda r: None, absent_after_s=absent_after_s), published


def emotions(published: list[dict[str, Any]]) -> list[str]:
    return [s["emotion"] for s in published]


def test_starting_is_the_first_state_and_the_first_window_replaces_it() -> None:
    loop, published = loop_with_states()
    loop.state.start()
    assert emotions(published) == [STARTING] and published[0]["confidence"] is None and published[0]["people"] == 0
    loop.predictions.put(_face(0.5))
    loop.pump(2.0, wait_s=0)
    assert emotions(published) == [STARTING, "happy"], "one window ends `starting`: nothing earlier is current"
    assert published[-1]["people"] == 1 and published[-1]["confidence"] > 0.9


def test_a_window_that_closes_after_the_pause_does_not_overwrite_paused() -> None:
    loop, published = loop_with_states()
    loop.state.start()
    for t in (0.5, 2.5):
        loop.predictions.put(_face(t))
    loop.pump(4.0, wait_s=0)
    assert emotions(published)[-1] == "happy"
    loop.predictions.put(_face(4.5, "sad"))  # the window 4-6 s is still open when analysis goes off
    loop.set_paused(True, 5.0)
    assert emotions(published)[-1] == PAUSED
    closed = loop.pump(8.0, wait_s=0)  # the live lag closes it about 2 s later
    assert closed == 1, "the open window is still an event"
    loop.pump(60.0, wait_s=0)  # and the absence timer does not call a paused room empty
    assert emotions(published) == [STARTING, "happy", PAUSED]
    assert loop.state.current is not None and loop.state.current["emotion"] == PAUSED


def test_after_resume_the_next_window_decides_at_once() -> None:
    loop, published = loop_with_states()
    loop.state.start()
    loop.set_paused(True, 1.0)
    loop.set_paused(True, 2.0)  # another switch off while paused: said once
    loop.set_paused(False, 10.0)
    assert emotions(published) == [STARTING, PAUSED], "`paused` stays until a window or absence decides"
    loop.predictions.put(_face(10.5, "sad"))
    loop.pump(12.0, wait_s=0)
    assert emotions(published) == [STARTING, PAUSED, "sad"]


def test_the_state_becomes_no_one_after_absent_after_s_and_returns_at_the_next_real_window() -> None:
    loop, published = loop_with_states()
    for t in (0.5, 2.5):
        loop.predictions.put(_face(t))
    loop.pump(4.0, wait_s=0)
    assert emotions(published) == ["happy"]
    loop.pump(13.9, wait_s=0)  # 9.9 s after the last window with anyone in it
    assert emotions(published) == ["happy"]
    loop.pump(14.0, wait_s=0)
    assert emotions(published) == ["happy", NO_ONE] and loop.state.since == 4.0  # since the last window with anyone
    loop.pump(30.0, wait_s=0)
    assert emotions(published) == ["happy", NO_ONE], "said once, not at every pump"
    loop.predictions.put(_face(30.5, "sad"))
    loop.pump(32.0, wait_s=0)
    assert emotions(published) == ["happy", NO_ONE, "sad"], "one real window ends the empty room"


def test_people_coming_and_going_within_one_emotion_update_the_state() -> None:
    loop, published = loop_with_states(after=1)
    loop.predictions.put(_face(0.5, n=1))
    loop.predictions.put(_face(2.5, n=2))
    loop.pump(4.0, wait_s=0)
    assert [(s["emotion"], s["people"]) for s in published] == [("happy", 1), ("happy", 2)]


def test_stopped_is_the_last_word() -> None:
    loop, published = loop_with_states()
    loop.state.start()
    loop.predictions.put(_face(0.5))
    loop.state.stop(1.0)  # shutdown: the windows still open are flushed after it
    loop.flush()
    loop.set_paused(True, 2.0)
    loop.pump(60.0, wait_s=0)
    assert emotions(published) == [STARTING, STOPPED]


def test_a_slow_save_of_the_switches_does_not_hold_up_the_capture_threads(tmp_path: Path, monkeypatch: Any) -> None:
    controls = Controls(tmp_path)
    real_fsync = os.fsync

    def slow_card_fsync(fd: int) -> None:  # fault injection: an SD card that takes a second to sync
        time.sleep(1.0)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_card_fsync)
    switching = threading.Thread(target=controls.set, args=("camera", False), kwargs={"source": "test"})
    switching.start()
    time.sleep(0.2)  # the save is under way
    t0 = time.monotonic()
    controls.active("microphone")  # what each capture thread asks per frame
    waited = time.monotonic() - t0
    switching.join()
    assert waited < 0.1, f"a frame waited {waited:.2f} s for controls.json to be synced"
    assert json.loads((tmp_path / "controls.json").read_text())["camera"] is False
    assert Controls(tmp_path).get() == {"analysis": True, "camera": False, "microphone": True}, "saved for a restart"
