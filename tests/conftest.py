"""Shared test fixtures: a real Mosquitto on a free port, an MQTT subscriber, configs, and the CLI as users run it."""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edge_daemon.devbroker import LocalBroker

ROOT = Path(__file__).resolve().parents[1]
# The shipped models; EMOTION_EDGE_TEST_MODELS points the suite at a candidate folder before it ships.
MODELS = Path(os.environ.get("EMOTION_EDGE_TEST_MODELS", ROOT / "models_tflite"))
CLIP_VIDEO = ROOT / "tests" / "fixtures" / "av" / "clip.mp4"
CLIP_AUDIO = ROOT / "tests" / "fixtures" / "av" / "clip.wav"
# The project's data sets (FER2013 sample, ...): ../shared/data beside the clone on development and CI machines, absent
# from a user's clone. Tests that need them skip there, saying so; CI (CI=true, set by .ci/run) must run them all.
SHARED_DATA = ROOT.parent / "shared" / "data"
SHARED_SKIP = "needs ../shared/data beside the clone"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def skip_or_fail(why: str, allow_module_level: bool = False) -> None:
    """Skip where something the test needs is not installed; in CI, which installs everything (scripts/test.sh),
    fail instead, so that CI cannot pass by running less."""
    if in_ci():
        pytest.fail(f"{why}; CI must run every test", pytrace=False)
    pytest.skip(why, allow_module_level=allow_module_level)


def shared_data(relative: str) -> Path:
    """A file of ../shared/data: skips the test where it is missing, fails it in CI (which has the data)."""
    path = SHARED_DATA / relative
    if not path.is_file():
        why = f"{SHARED_SKIP} ({relative} not found at {path})"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{why}; CI must run every test, so the data must be there", pytrace=False)
        pytest.skip(why)
    return path


# ---------------------------------------------------------------------------- unit and integration tests
# `pytest -m "not integration"` is the unit run a developer repeats while working (about a minute); `-m integration`
# the rest. A test is integration when it starts a broker, a subprocess, a daemon, a browser or a real-time replay;
# it is marked here, from what it asks for and what its body calls, so that a new test is sorted without anyone
# remembering to mark it.
INTEGRATION_FIXTURES = {
    "broker", "subscribe",  # a real Mosquitto
    "tls_broker", "watcher",  # test_tls.py: a Mosquitto with TLS, a daemon's log
    "live", "guarded",  # test_web.py: a daemon serving its page
    "replayed",  # test_history.py: the CLI's replay
    "browser",  # test_web_browser.py: Chromium
    "pg",  # test_collector.py: a PostgreSQL server
}  # fmt: skip
# Modules whose every test runs the daemon, the broker or the CLI, some through helpers that the body scan below
# would not see.
INTEGRATION_MODULES = {
    "test_faults", "test_homeassistant", "test_lifecycle", "test_mqtt_session", "test_replay_e2e", "test_run_live",
    "test_systemd", "test_tls", "test_web_browser",
}  # fmt: skip
# Calls in a test's own body that start a process, a daemon or a broker (conftest's helpers and the stdlib's).
STARTS_SOMETHING = re.compile(
    r"\b(run_cli|start_daemon|cli|replay|Daemon|LocalBroker|Popen|subprocess\.(run|check_output|call)|"
    r"run_python|mosquitto|nats_or_skip|LocalPostgres|MqttSession)\("
)

# Tests without any of the above that still take more than about 4 s on a 2-core machine (measured with
# `--durations=15`): training runs, real-time audio, network time-outs waited out. Marked slow, so integration too.
SLOW_MODULES = {"test_training_pipeline"}  # trains models; TensorFlow alone takes about 10 s to import
SLOW_TESTS = {
    "test_speech_stream": {"test_the_microphone_worker_carries_one_normaliser_across_its_windows"},
    "test_capture": {"test_a_sound_card_clock_that_runs_fast_does_not_drift_speech_ahead_of_stream_time"},
    "test_reliability": {
        "test_a_port_that_closes_or_stays_silent_is_logged_once_with_its_cause",
        "test_check_names_the_cause_of_a_silent_connection_failure",
    },
    "test_fuzz": {"test_any_yamlish_text_as_config_loads_or_raises_user_error"},
}  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        name = module.__name__.rsplit(".", 1)[-1] if module is not None else ""
        function = getattr(item, "function", None)
        if name in SLOW_MODULES or (function is not None and function.__name__ in SLOW_TESTS.get(name, ())):
            item.add_marker(pytest.mark.slow)
        if _is_integration(item, name, module, function):
            item.add_marker(pytest.mark.integration)


def _is_integration(item: pytest.Item, name: str, module: Any, function: Any) -> bool:
    if item.get_closest_marker("integration") or item.get_closest_marker("slow"):
        return True
    if name in INTEGRATION_MODULES or INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    return function is not None and _starts_something(function, module, depth=3)


def _starts_something(function: Any, module: Any, depth: int) -> bool:
    """The test's body, or a helper of its module (or conftest's) that it calls, starts a process or a broker."""
    try:
        if STARTS_SOMETHING.search(inspect.getsource(function)):
            return True
    except (OSError, TypeError):
        return False
    if depth == 0:
        return False
    for called in function.__code__.co_names:
        helper = getattr(module, called, None)
        if inspect.isfunction(helper) and helper is not function and helper.__module__.startswith("tests."):
            if _starts_something(helper, sys.modules[helper.__module__], depth - 1):
                return True
    return False


# The fixture's segments (see tests/fixtures/av/ATTRIBUTION.md): media seconds -> the emotion shown and spoken.
SEGMENTS = [(0.0, 6.0, "happy"), (6.0, 12.0, "angry"), (12.0, 18.0, "surprise")]


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[LocalBroker]:
    """A real Mosquitto on a free port; `@pytest.mark.parametrize("broker", [True], indirect=True)` makes it persistent."""
    b = LocalBroker(persistence=getattr(request, "param", False))
    b.start()
    assert b.kind == "mosquitto", "the tests need a real Mosquitto: scripts/bootstrap.sh installs it"
    yield b
    b.stop()


class Subscriber:
    """Collects every message under a topic filter, in arrival order."""

    def __init__(self, port: int, topic: str, persistent: bool = False) -> None:
        """`persistent`: a durable session (the broker queues QoS 1 messages for us while we are away)."""
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-sub-{time.monotonic_ns()}", clean_session=not persistent
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: (
            c.subscribe(topic, qos=1),
            self._ready.set(),
            self.connected.set(),
        )
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._ready.wait(5), "subscriber could not connect"
        time.sleep(0.2)  # let the SUBACK arrive before the test publishes

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def payloads(self, suffix: str) -> list[str]:
        with self._lock:
            return [m.payload.decode() for m in self.messages if m.topic.endswith(suffix)]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads("/events")]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscribe(broker: LocalBroker) -> Iterator[Callable[[str], Subscriber]]:
    subs: list[Subscriber] = []

    def make(topic: str = "emotion-edge/#", persistent: bool = False) -> Subscriber:
        s = Subscriber(broker.port, topic, persistent)
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.close()


def write_config(path: Path, **sections: Any) -> Path:
    """A config file that uses the shipped models; keyword arguments override whole sections or top-level keys."""
    data: dict[str, Any] = {"models": {"dir": str(MODELS)}, "state_dir": str(path.parent / "state")}
    # The device page listens on a fixed port by default; tests that want it ask for it on a free port.
    data["web"] = {"enabled": False}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`emotion-edge ARGS` in a fresh process, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edge_daemon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd or ROOT,
    )


def start_daemon(cfg: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`emotion-edge --config CFG run` in the background, as systemd would start it."""
    return subprocess.Popen(
        [sys.executable, "-m", "edge_daemon", "--config", str(cfg), "run"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def stop_daemon(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, as systemd stops it: exit code 0, no traceback. Returns what it logged."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    return stderr


def assert_clean_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit code 2, no traceback, and one error line that mentions every needle."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
