"""Config: documented defaults, strict loading with file:line: key errors, secrets outside the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge_daemon.config import Config, load_config, mqtt_password, render_default_yaml
from edge_daemon.errors import UserError

from .conftest import ROOT, assert_clean_error, run_cli


def test_shipped_config_documents_every_field_with_its_default() -> None:
    assert (ROOT / "config.yaml").read_text() == render_default_yaml(), (
        "regenerate: python -c 'from edge_daemon.config import render_default_yaml as r; print(r(), end=\"\")' > config.yaml"
    )
    loaded = load_config(ROOT / "config.yaml")
    assert dataclasses.replace(loaded, base_dir=Path(".")) == Config()


def test_overrides_are_read(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(
        "device_id: kitchen\ncamera:\n  source: rtsp://cam/stream\n  fps: 10\nmqtt:\n  host: broker.lan\n  tls:\n    enabled: true\n"
    )
    c = load_config(p)
    assert (c.device_id, c.camera.source, c.camera.fps, c.mqtt.host, c.mqtt.tls.enabled) == (
        "kitchen",
        "rtsp://cam/stream",
        10.0,
        "broker.lan",
        True,
    )
    assert c.camera.width == 640  # untouched fields keep their defaults
    assert c.model_path("face_emotion") == tmp_path / "models_tflite" / "face_emotion.json"


@pytest.mark.parametrize(
    ("text", "line", "needles"),
    [
        ("camera:\n  fsp: 10\n", 2, ["camera.fsp", "unknown key", "fps"]),
        ("mqtt:\n  port: 'eighty'\n", 2, ["mqtt.port", "an integer"]),
        ("mqtt:\n  port: 70000\n", 2, ["mqtt.port", "between 1 and 65535"]),
        ("fusion:\n  method: median\n", 2, ["fusion.method", "vote, average"]),
        ("device_id: 'living room'\n", 1, ["device_id", "must match"]),
        ("camera:\n  enabled: yes please\n", 2, ["camera.enabled", "true or false"]),
        ("camera: 5\n", 1, ["camera", "mapping"]),
        ("mqtt:\n  password: hunter2\n", 2, ["mqtt.password", "unknown key"]),
        ("camera:\n  fps: [1, 2]\n", 2, ["camera.fps", "single value"]),
        ("fusion:\n  window_s: 1\n  window_s: 2\n", 3, ["fusion.window_s", "twice"]),
        ("mqtt:\n  host: broker..lan\n", 2, ["mqtt.host", "not a host name", "broker..lan"]),
        ("mqtt:\n  reconnect_max_s: 0.5\n", 2, ["mqtt.reconnect_max_s", "between 1 and 3600"]),
        ("mqtt:\n  hosts: [a.lan:1883, 'b.lan:99999']\n", 2, ["mqtt.hosts[1]", "'b.lan:99999'", "between 1 and 65535"]),
        ("mqtt:\n  hosts:\n    - a.lan\n    - a:b:c\n", 4, ["mqtt.hosts[1]", "not host or host:port"]),
        ("mqtt:\n  hosts: [broker..lan]\n", 2, ["mqtt.hosts[0]", "not a host name", "broker..lan"]),
        ("mqtt:\n  hosts: [a.lan, 1883]\n", 2, ["mqtt.hosts[1]", "single text value"]),
        ("mqtt:\n  hosts: a.lan:1883\n", 2, ["mqtt.hosts", "must be a list", "[broker1.lan:1883, broker2.lan:1883]"]),
    ],
)
def test_config_mistakes_name_file_line_and_key(tmp_path: Path, text: str, line: int, needles: list[str]) -> None:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as err:
        load_config(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}:{line}: "), msg
    for n in needles:
        assert n in msg


def test_mqtt_hosts_are_the_nodes_in_order_with_mqtt_port_where_an_entry_names_none(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_text("mqtt:\n  host: ignored.lan\n  port: 1999\n  hosts: [n1.lan, 'n2.lan:2883', '[fd00::3]:3883']\n")
    assert load_config(p).mqtt.nodes() == [("n1.lan", 1999), ("n2.lan", 2883), ("fd00::3", 3883)]
    p.write_text("mqtt:\n  port: 1999\n")  # no hosts: host (localhost when null) and port, as before
    assert load_config(p).mqtt.nodes() == [("localhost", 1999)]


def test_cli_reports_a_bad_mqtt_hosts_entry_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_text("mqtt:\n  hosts:\n    - n1.lan:1883\n    - n2.lan:port\n")
    assert_clean_error(run_cli("--config", str(p), "check"), f"{p}:4", "mqtt.hosts[1]", "not host or host:port")


@pytest.mark.parametrize("section", ["camera", "microphone", "mqtt"])
def test_a_back_off_that_starts_above_its_maximum_is_refused(tmp_path: Path, section: str) -> None:
    p = tmp_path / "config.yaml"
    p.write_text(f"{section}:\n  reconnect_min_s: 50\n  reconnect_max_s: 20\n")
    with pytest.raises(UserError, match=rf"{section}.reconnect_min_s must not exceed {section}.reconnect_max_s"):
        load_config(p)


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_text("camera:\n  fps: 5\n mqtt: [\n")
    with pytest.raises(UserError, match=rf"{p}:\d+: not valid YAML"):
        load_config(p)


def test_cli_reports_config_mistake_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_text("speech:\n  hop_s: -1\n")
    assert_clean_error(run_cli("--config", str(p), "check"), f"{p}:2", "speech.hop_s", "between 0.1 and 10")


def test_cli_reports_missing_config_file(tmp_path: Path) -> None:
    assert_clean_error(run_cli("--config", str(tmp_path / "nope.yaml"), "check"), "nope.yaml", "not found")


def test_password_comes_from_environment_or_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Config()
    monkeypatch.delenv("EMOTION_EDGE_MQTT_PASSWORD", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert mqtt_password(c) is None
    (tmp_path / "mqtt_password").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert mqtt_password(c) == "from-credential"
    monkeypatch.setenv("EMOTION_EDGE_MQTT_PASSWORD", "from-env")
    assert mqtt_password(c) == "from-env"
