"""The fusion settings a person tunes from Home Assistant or the page (edge_daemon/tuning.py): applied while the
daemon runs, kept across restarts, refused with one clear line when out of range.

Unit tests first (no broker), then the real daemon against a real Mosquitto, with the bundled clip as its camera.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_daemon.config import FusionConfig
from edge_daemon.devicestate import DeviceState
from edge_daemon.fusion import FaceResult, FusionRule, Prediction, Windower
from edge_daemon.labels import CANONICAL, STARTING
from edge_daemon.pipeline import FusionLoop
from edge_daemon.tuning import SETTINGS, SettingError, Tuning

from .conftest import CLIP_VIDEO, Subscriber, start_daemon, stop_daemon, write_config

BASE = "emotion-edge/tune"
DEVICE_TOPIC = "homeassistant/device/emotion_edge_tune/config"


def _face(t: float, label: str) -> Prediction:
    probs = np.zeros(len(CANONICAL), dtype=np.float32)
    probs[CANONICAL.index(label)] = 1.0
    return Prediction("face", t, probs, (FaceResult((0, 0, 50, 50), label, 1.0),))


# ----------------------------------------------------------------------------------------------- unit


def test_fewer_windows_to_agree_set_while_running_let_the_next_window_decide() -> None:
    published: list[str] = []
    state = DeviceState(3)
    state.subscribe(lambda s: published.append(s["emotion"]))
    loop = FusionLoop(Windower(2.0, FusionRule()), state, lambda r: None)
    state.start()
    for i, label in enumerate(["happy", "sad", "sad"]):
        loop.predictions.put(_face(2 * i + 0.5, label))
    loop.pump(6.0, wait_s=0)
    assert published == [STARTING, "happy"], "two sad windows of three needed do not change it"
    state.after = 1  # what Actions.apply_tuning does when fusion.state_after_windows is set to 1
    loop.predictions.put(_face(6.5, "angry"))
    loop.pump(8.0, wait_s=0)
    assert published == [STARTING, "happy", "angry"], "one window decides now"


def test_a_value_set_overrides_the_config_file_and_survives_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = FusionConfig(state_after_windows=2)
    tuning = Tuning(config, tmp_path)
    assert tuning.get() == {
        "min_confidence": 0.3,
        "state_after_windows": 2,
        "absent_after_s": 10.0,
        "method": "product",
    }
    assert tuning.set("state_after_windows", 1, source="mqtt") and tuning.set("method", " Vote", source="web")
    caplog.set_level(logging.INFO, logger="edge_daemon.tuning")
    again = Tuning(config, tmp_path)  # the next start, same config file
    assert again.value("state_after_windows") == 1 and again.value("method") == "vote"
    assert "fusion.state_after_windows is 1" in caplog.text and "the config file says 2" in caplog.text
    assert Tuning(config, None).value("state_after_windows") == 2, "a replay keeps to its config file"


@pytest.mark.parametrize(
    ("name", "bad", "allowed"),
    [
        ("state_after_windows", 0, "a whole number from 1 to 100"),
        ("state_after_windows", 1.5, "a whole number from 1 to 100"),
        ("min_confidence", 1.2, "a number from 0 to 1"),
        ("min_confidence", True, "a number from 0 to 1"),
        ("absent_after_s", float("nan"), "a number from 1 to 86400"),
        ("state_after_windows", float("inf"), "a whole number from 1 to 100"),  # JSON's 1e999, MQTT's "inf"
        ("method", "median", "one of vote, average, product"),
    ],
)
def test_an_out_of_range_value_is_refused_with_one_line_naming_the_setting_and_the_range(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, bad: Any, allowed: str
) -> None:
    tuning = Tuning(FusionConfig(), tmp_path)
    before = tuning.get()
    for _ in range(3):  # a client repeating it: told once, not three times
        with pytest.raises(SettingError, match=f"fusion.{name}: {allowed}"):
            tuning.set(name, bad, source="mqtt")
    lines = [r.getMessage() for r in caplog.records if r.name == "edge_daemon.tuning"]
    assert len(lines) == 1 and f"fusion.{name}: {allowed}" in lines[0] and "from mqtt" in lines[0], lines
    assert tuning.get() == before and not (tmp_path / "settings.json").exists()


def test_a_saved_value_out_of_range_falls_back_to_the_config_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "settings.json").write_text('{"state_after_windows": 0, "min_confidence": 0.5, "window_s": 9}')
    tuning = Tuning(FusionConfig(), tmp_path)
    assert tuning.value("state_after_windows") == 2 and tuning.value("min_confidence") == 0.5
    assert "fusion.state_after_windows: a whole number from 1 to 100, got 0" in caplog.text
    assert "window_s: not a setting that can be tuned" in caplog.text
    (tmp_path / "settings.json").write_text("{not json")
    assert Tuning(FusionConfig(), tmp_path).get()["min_confidence"] == 0.3  # unreadable: the config's, no traceback


# ----------------------------------------------------------------------------------------------- the daemon


def tune_config(tmp_path: Path, port: int, **extra: Any) -> Path:
    sections: dict[str, Any] = {
        "camera": {"source": str(CLIP_VIDEO)},
        "microphone": {"enabled": False},
        # As good as never: the state keeps its first emotion until Home Assistant lowers this.
        "fusion": {"state_after_windows": 100},
        "mqtt": {"host": "127.0.0.1", "port": port},
    }
    for key, value in extra.items():
        sections[key] = {**sections.get(key, {}), **value}
    return write_config(tmp_path / "config.yaml", device_id="tune", **sections)


def emotions(sub: Subscriber) -> list[str]:
    return [json.loads(p)["emotion"] for p in sub.payloads(f"{BASE}/state")]


def test_home_assistant_lowers_state_after_windows_the_state_follows_and_it_survives_a_restart(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    from .webtools import PASSWORD, admin, free_port

    page = free_port()
    cfg = tune_config(tmp_path, broker.port, web={"enabled": True, "host": "127.0.0.1", "port": page})
    env = {"EMOTION_EDGE_WEB_PASSWORD": PASSWORD}
    sub: Subscriber = subscribe("#")
    proc = start_daemon(cfg, env=env)
    try:
        assert sub.wait_for(lambda: sub.payloads(DEVICE_TOPIC), timeout=30)
        cmps = json.loads(sub.payloads(DEVICE_TOPIC)[-1])["components"]
        assert {k: cmps[k]["p"] for k in ("min_confidence", "state_after_windows", "absent_after_s", "method")} == {
            "min_confidence": "number", "state_after_windows": "number", "absent_after_s": "number", "method": "select"
        }  # fmt: skip
        n = cmps["state_after_windows"]
        assert n["default_entity_id"] == "number.emotion_edge_tune_state_after_windows" == f"number.{n['object_id']}"
        assert (n["min"], n["max"], n["step"]) == (1, 100, 1)  # the config schema's bounds
        assert n["command_topic"] == f"{BASE}/state_after_windows/set"
        assert cmps["method"]["options"] == ["vote", "average", "product"]
        assert cmps["method"]["default_entity_id"] == "select.emotion_edge_tune_method"
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/state_after_windows/state")[-1:] == ["100"], timeout=10)
        # The first window decides at once after `starting`; then 100 windows would have to agree.
        assert sub.wait_for(lambda: emotions(sub)[-1:] not in ([], [STARTING]), timeout=30), emotions(sub)
        settled = len(emotions(sub))
        assert sub.wait_for(lambda: len(sub.events()) >= 4, timeout=30)
        assert len(set(e["emotion"] for e in sub.events())) >= 2, "the clip's windows differ"
        assert len(emotions(sub)) == settled, "nothing changes the state while 100 windows must agree"

        sub.client.publish(f"{BASE}/state_after_windows/set", "1", qos=1)
        sub.client.publish(f"{BASE}/method/set", "vote", qos=1)
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/state_after_windows/state")[-1:] == ["1"], timeout=10)
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/method/state")[-1:] == ["vote"], timeout=10)
        # One window decides now: the state follows the clip from happy to angry to surprise.
        assert sub.wait_for(lambda: len(set(emotions(sub)[settled:])) >= 2, timeout=40), emotions(sub)
        assert sub.wait_for(lambda: sub.events()[-1]["method"] == "vote", timeout=10), "events name the rule in force"

        refused_at = len(sub.payloads(f"{BASE}/state_after_windows/state"))
        sub.client.publish(f"{BASE}/state_after_windows/set", "0", qos=1)
        # The value in force, published again: Home Assistant shows 1, not the refused 0.
        assert sub.wait_for(lambda: len(sub.payloads(f"{BASE}/state_after_windows/state")) > refused_at, timeout=10)
        assert sub.payloads(f"{BASE}/state_after_windows/state")[-1] == "1"

        # The page's door onto the same settings.
        assert admin(page, "/api/state").json()["settings"]["state_after_windows"] == 1
        r = admin(page, "/api/controls", method="POST", body='{"absent_after_s": 30}')
        assert r.status == 200 and r.json()["settings"]["absent_after_s"] == 30.0, r.text
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/absent_after_s/state")[-1:] == ["30.0"], timeout=10)
        r = admin(page, "/api/controls", method="POST", body='{"absent_after_s": 0}')
        assert r.status == 400 and "fusion.absent_after_s: a number from 1 to 86400" in r.json()["error"], r.text
    finally:
        stderr = stop_daemon(proc)
    refusals = [line for line in stderr.splitlines() if "refused a setting from mqtt" in line]
    assert len(refusals) == 1 and "fusion.state_after_windows: a whole number from 1 to 100, got '0'" in refusals[0]
    assert "Traceback" not in stderr

    sub.messages.clear()
    proc = start_daemon(cfg, env=env)  # the same config file, which still says 100
    try:
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/state_after_windows/state")[-1:] == ["1"], timeout=30)
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/method/state")[-1:] == ["vote"], timeout=10)
        assert admin(page, "/api/state").json()["settings"]["absent_after_s"] == 30.0
    finally:
        stderr = stop_daemon(proc)
    assert "fusion.state_after_windows is 1" in stderr and "the config file says 100" in stderr


def test_commands_false_removes_the_setting_entities_and_ignores_their_commands(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    sub: Subscriber = subscribe("#")
    proc = start_daemon(tune_config(tmp_path, broker.port, mqtt={"commands": False}))
    try:
        assert sub.wait_for(lambda: sub.payloads(DEVICE_TOPIC), timeout=30)
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/availability")[-1:] == ["online"], timeout=10)
        sub.client.publish(f"{BASE}/state_after_windows/set", "1", qos=1)
        time.sleep(1.0)  # a daemon that obeyed would have echoed 1 by now
    finally:
        stderr = stop_daemon(proc)
    cmps = json.loads(sub.payloads(DEVICE_TOPIC)[-1])["components"]
    for name, platform in [("min_confidence", "number"), ("state_after_windows", "number"),
                           ("absent_after_s", "number"), ("method", "select")]:  # fmt: skip
        assert cmps[name] == {"p": platform}, cmps[name]  # how device-based discovery removes a component
    assert "1" not in sub.payloads(f"{BASE}/state_after_windows/state") and "set to 1" not in stderr
    assert not (tmp_path / "state" / "settings.json").exists()


@pytest.mark.parametrize("text", ["inf", "1e999", "-inf", "nan"])
def test_an_infinite_value_from_mqtt_is_refused_not_a_traceback(tmp_path: Path, text: str) -> None:
    with pytest.raises(SettingError, match="fusion.state_after_windows: a whole number from 1 to 100"):
        SETTINGS["state_after_windows"].parse(text)


def test_a_saved_infinite_value_falls_back_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text('{"state_after_windows": 1e999}')
    assert Tuning(FusionConfig(), tmp_path).get()["state_after_windows"] == FusionConfig().state_after_windows
