"""The daemon against a real Home Assistant Core: run by scripts/ha-e2e.sh (which installs Home Assistant first).

Starts a Mosquitto and Home Assistant on free ports, onboards Home Assistant over its REST API, adds the MQTT
integration, replays the bundled clip through the daemon (a replay is a device of its own), then runs the service
with the clip as its camera, and checks what Home Assistant itself says: devices and entities with their attributes,
state following the events, the event entity firing, the device triggers, a button, the analysis switch pausing and
resuming from Home Assistant's side, availability after a clean stop and a kill, `mqtt.commands: false` removing the
switches and buttons, `forget` removing both devices, and no MQTT discovery errors in Home Assistant's log.

Usage: .venv/bin/python scripts/ha_e2e.py --hass HA_VENV/bin/hass [--keep DIR]
Prints one line per check (`ok` or `FAIL`) and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_daemon import __version__  # noqa: E402
from edge_daemon.devbroker import LocalBroker, free_port, wait_for_port  # noqa: E402
from edge_daemon.homeassistant import STATE_VALUES  # noqa: E402

CLIP_VIDEO = ROOT / "tests" / "fixtures" / "av" / "clip.mp4"
CLIP_AUDIO = ROOT / "tests" / "fixtures" / "av" / "clip.wav"
DEVICE = "hae2e"
BASE = f"emotion-edge/{DEVICE}"
E = f"emotion_edge_{DEVICE}"
R = f"{E}_replay"  # a replay is a device of its own, its topics under <base>/replay/
ENTITIES = {
    f"sensor.{E}_emotion",
    f"sensor.{E}_confidence",
    f"sensor.{E}_people",
    f"event.{E}_window",
    f"binary_sensor.{E}_camera_connected",
    f"binary_sensor.{E}_microphone_connected",
    f"sensor.{E}_drops",
    f"sensor.{E}_last_event_age",
    f"sensor.{E}_face_detect_ms",
    f"sensor.{E}_face_track_ms",
    f"sensor.{E}_face_emotion_ms",
    f"sensor.{E}_speech_emotion_ms",
    f"switch.{E}_analysis",
    f"switch.{E}_camera",
    f"switch.{E}_microphone",
    f"button.{E}_reload_models",
    f"button.{E}_purge_history",
    f"sensor.{E}_uptime",
    f"sensor.{E}_frames_per_s",
    f"sensor.{E}_last_error",
    f"number.{E}_min_confidence",
    f"number.{E}_state_after_windows",
    f"number.{E}_absent_after_s",
    f"select.{E}_method",
}
STATES = list(STATE_VALUES)  # one device trigger per state the device can report (edge_daemon/homeassistant.py)
DISABLED = {f"sensor.{E}_last_event_age", f"sensor.{E}_face_detect_ms", f"sensor.{E}_face_track_ms",
            f"sensor.{E}_face_emotion_ms", f"sensor.{E}_speech_emotion_ms"}  # fmt: skip

DIAGNOSTIC = DISABLED | {f"binary_sensor.{E}_camera_connected", f"binary_sensor.{E}_microphone_connected",
                         f"sensor.{E}_drops", f"sensor.{E}_uptime", f"sensor.{E}_frames_per_s",
                         f"sensor.{E}_last_error"}  # fmt: skip

failures: list[str] = []

WS_CALL = """
import asyncio, json, sys
import aiohttp
async def main(url, token, kind, extra):
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "auth", "access_token": token})
        assert (await ws.receive_json())["type"] == "auth_ok"
        await ws.send_json({"id": 1, "type": kind, **json.loads(extra)})
        print(json.dumps((await ws.receive_json())["result"]))
asyncio.run(main(*sys.argv[1:]))
"""


def ws_call(hass: str, ha: HA, kind: str, **extra: Any) -> Any:
    """One websocket command (the entity registry has no REST endpoint), with Home Assistant's own aiohttp."""
    python = str(Path(hass).with_name("python"))
    url = ha.url.replace("http://", "ws://") + "/api/websocket"
    out = subprocess.run([python, "-c", WS_CALL, url, ha.token, kind, json.dumps(extra)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    return json.loads(out.stdout) if out.returncode == 0 else []


def check(ok: bool, what: str, detail: Any = "") -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail != "" and not ok else ""), flush=True)
    if not ok:
        failures.append(what)
    return ok


def info(text: str) -> None:
    print(f"     {text}", flush=True)


def wait(predicate: Any, timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            pass
        time.sleep(step)
    try:
        return bool(predicate())
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return False


class HA:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.token = ""

    def request(self, method: str, path: str, body: Any = None, form: bool = False, raw: bool = False) -> Any:
        data = None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if body is not None and form:
            data = urllib.parse.urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
        if raw:
            return text
        try:
            return json.loads(text)
        except ValueError:
            return text

    def template(self, text: str) -> str:
        return self.request("POST", "/api/template", {"template": text}, raw=True).strip()

    def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in self.request("GET", "/api/states")}

    def state(self, entity_id: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", f"/api/states/{entity_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise


class Watch:
    """Every message under the device's topics, as a subscriber sees them."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ha-e2e-watch")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{BASE}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def last(self, suffix: str) -> bytes | None:
        with self.lock:
            for topic, payload in reversed(self.messages):
                if topic == f"{BASE}/{suffix}":
                    return payload
        return None

    def events(self, base: str = BASE) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p) for t, p in self.messages if t == f"{base}/events"]


def start_hass(hass: str, config_dir: Path, port: int) -> subprocess.Popen[bytes]:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text(
        yaml.safe_dump(
            {
                "http": {"server_host": "127.0.0.1", "server_port": port},
                "api": None,
                "websocket_api": None,
                "config": None,
                "onboarding": None,
                "logger": {"default": "warning", "logs": {"homeassistant.components.mqtt": "debug"}},
            }
        )
    )
    log = open(config_dir / "hass.stdout", "ab")
    # --skip-pip: everything is installed already, and this machine cannot reach PyPI from Home Assistant's side.
    return subprocess.Popen([hass, "-c", str(config_dir), "--skip-pip"], stdout=log, stderr=subprocess.STDOUT)


def onboard(ha: HA) -> None:
    client_id = ha.url + "/"
    user = ha.request(
        "POST",
        "/api/onboarding/users",
        {"client_id": client_id, "name": "e2e", "username": "e2e", "password": "e2e-password-1", "language": "en"},
    )
    tokens = ha.request(
        "POST", "/auth/token", {"grant_type": "authorization_code", "code": user["auth_code"], "client_id": client_id},
        form=True,
    )  # fmt: skip
    ha.token = tokens["access_token"]


def add_mqtt(ha: HA, port: int) -> dict[str, Any]:
    flow = ha.request("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
    for _ in range(4):
        if flow.get("type") == "create_entry":
            return flow
        if flow.get("type") == "menu":
            flow = ha.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {"next_step_id": "broker"})
            continue
        if flow.get("type") == "form":
            flow = ha.request(
                "POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {"broker": "127.0.0.1", "port": port}
            )
            continue
        break
    return flow


def daemon_config(tmp: Path, mqtt_port: int, commands: bool = True) -> Path:
    cfg = tmp / ("daemon.yaml" if commands else "daemon-no-commands.yaml")
    cfg.write_text(
        yaml.safe_dump(
            {
                "device_id": DEVICE,
                "state_dir": str(tmp / "state"),
                "models": {"dir": str(ROOT / "models_tflite")},
                "camera": {"source": str(CLIP_VIDEO), "reconnect_min_s": 0.2},
                "microphone": {"reconnect_min_s": 1, "reconnect_max_s": 2},
                "fusion": {"absent_after_s": 4},
                "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "stats_interval_s": 2, "commands": commands},
            }
        )
    )
    return cfg


def emotion_edge(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_daemon", *args]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hass", required=True, help="the hass executable of Home Assistant's own environment")
    ap.add_argument("--keep", help="keep Home Assistant's config folder and logs here")
    args = ap.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ha-e2e-"))
    tmp.mkdir(parents=True, exist_ok=True)
    version = subprocess.run([args.hass, "--version"], capture_output=True, text=True).stdout.strip()
    info(f"Home Assistant {version}, emotion-edge {__version__}, work folder {tmp}")
    broker = LocalBroker().start()
    ha_port = free_port()
    hass = start_hass(args.hass, tmp / "ha", ha_port)
    ha = HA(ha_port)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.monotonic()
        up = wait(lambda: wait_for_port(ha_port, 1) and ha.request("GET", "/api/onboarding") is not None, 600, 2)
        if not check(up, "Home Assistant answers on its HTTP port"):
            return 1
        info(f"Home Assistant up after {time.monotonic() - t0:.0f} s")
        onboard(ha)
        check(bool(ha.token), "onboarded over the REST API (user, token)")
        entry = add_mqtt(ha, broker.port)
        check(entry.get("type") == "create_entry", "MQTT integration added through a config flow", entry)
        watch = Watch(broker.port)
        cfg = daemon_config(tmp, broker.port)
        dlog = open(tmp / "daemon.log", "ab")

        # --- 1. the clip replayed in real time through the daemon: both modalities, events and state ---------
        replay = subprocess.Popen(
            emotion_edge("--config", str(cfg), "replay", "--video", str(CLIP_VIDEO), "--audio", str(CLIP_AUDIO),
                         "--realtime", "--state-dir", str(tmp / "replay-state")),
            cwd=ROOT, stdout=dlog, stderr=subprocess.STDOUT,
        )  # fmt: skip
        # The replay's own device: its `stopped` at the end makes its entities unavailable, never the service's.
        emotion, window, confidence = f"sensor.{R}_emotion", f"event.{R}_window", f"sensor.{R}_confidence"
        # While it runs: what Home Assistant shows, next to what the topics said a moment before.
        seen: list[tuple[str, str, Any, Any]] = []  # (HA emotion, state topic emotion, HA event seq, last event seq)
        fired: dict[int, str] = {}  # seq -> event_type, as the event entity showed them
        agreed_conf = 0
        while replay.poll() is None:
            time.sleep(0.5)
            topic_state = json.loads(watch.last("replay/state") or b"{}")
            events = watch.events(f"{BASE}/replay")
            try:
                s, ev, conf = ha.state(emotion), ha.state(window), ha.state(confidence)
            except (urllib.error.URLError, OSError):
                continue
            if s and ev and topic_state and events:
                seen.append((s["state"], topic_state["emotion"], ev["attributes"].get("seq"), events[-1]["seq"]))
                if ev["attributes"].get("seq") is not None:
                    fired[ev["attributes"]["seq"]] = ev["attributes"].get("event_type")
                if conf and conf["state"] not in ("unknown", "unavailable") and topic_state.get("confidence"):
                    agreed_conf += abs(float(conf["state"]) - 100 * topic_state["confidence"]) < 0.1
        check(replay.returncode == 0, "replay of the clip through the daemon", replay.returncode)
        events = watch.events(f"{BASE}/replay")
        check(len(events) >= 8, "replay published its events", len(events))
        check(not watch.events() and watch.last("availability") is None and ha.state(f"sensor.{E}_emotion") is None,
              "the replay said nothing on the service's topics and made no entity of the service's")  # fmt: skip
        if not check(ha.state(emotion) is not None, "Home Assistant created the emotion sensor"):
            return 1
        shown = [h for h, t, _, _ in seen if h == t]
        info(f"emotion shown by Home Assistant during the replay: {sorted(set(shown))}; events: "
             f"{[e['emotion'] for e in events]}")  # fmt: skip
        check(len(shown) >= 0.8 * len(seen) and {"happy", "angry"} <= set(shown),
              "emotion sensor follows the state topic (and the clip: happy, then angry, ...)", seen[-10:])  # fmt: skip
        check(agreed_conf >= 5, "confidence sensor shows the state's confidence in percent", agreed_conf)
        by_seq = {e["seq"]: e["emotion"] for e in events}
        live = [(h, t) for _, _, h, t in seen if h is not None]
        check(len(fired) >= 5 and live[-1][0] == live[-1][1], "event entity fired per window (its seq follows the events)",
              (sorted(fired), live[-3:]))  # fmt: skip
        check(all(by_seq.get(seq) == kind for seq, kind in fired.items()),
              "each firing's event_type is its window's emotion", {s: (k, by_seq.get(s)) for s, k in fired.items()})  # fmt: skip
        ev = ha.state(window) or {}
        check(set(ev.get("attributes", {}).get("event_types", [])) >= {"happy", "angry", "surprise", "uncertain"},
              "event entity lists the emotions as event types")  # fmt: skip
        options = (ha.state(emotion) or {}).get("attributes", {}).get("options", [])
        check({"uncertain", "no_one", "paused"} <= set(options) and "unknown" not in options,
              "enum options: uncertain, no_one, paused; no 'unknown'", options)  # fmt: skip
        check(wait(lambda: (ha.state(emotion) or {}).get("state") == "unavailable", 10),
              "unavailable after the replay's clean `stopped`")  # fmt: skip
        rid = ha.template(f"{{{{ device_id('{emotion}') }}}}")
        replayed = {e["entity_id"] for e in ws_call(args.hass, ha, "config/entity_registry/list")
                    if e.get("device_id") == rid}  # fmt: skip
        check(f"sensor.{R}_video_file" in replayed and not [e for e in replayed if e.startswith(("switch.", "button."))],
              "the replay's device shows its files as sources and has no switches or buttons", sorted(replayed))  # fmt: skip

        # --- 2. the service, the clip as its camera: its device, switches and buttons from Home Assistant's side --
        daemon = subprocess.Popen(
            emotion_edge("--config", str(cfg), "run"), cwd=ROOT, stdout=dlog, stderr=subprocess.STDOUT
        )
        emotion = f"sensor.{E}_emotion"
        check(wait(lambda: (ha.state(emotion) or {}).get("state") not in (None, "unavailable"), 60),
              "Home Assistant created the service's emotion sensor")  # fmt: skip
        did = ha.template(f"{{{{ device_id('{emotion}') }}}}")
        attrs = {k: ha.template(f"{{{{ device_attr('{did}', '{k}') }}}}") for k in
                 ("name", "manufacturer", "model", "sw_version", "serial_number")}  # fmt: skip
        info(f"device {did}: {attrs}")
        check(attrs["sw_version"] == __version__ and attrs["serial_number"] == DEVICE and attrs["model"] not in
              ("", "None"), "device has model, sw_version and serial_number", attrs)  # fmt: skip
        registry = {e["entity_id"]: e for e in ws_call(args.hass, ha, "config/entity_registry/list")
                    if e.get("device_id") == did}  # fmt: skip
        check(set(registry) == ENTITIES, "every entity registered on the one device", sorted(set(registry) ^ ENTITIES))
        disabled = {e for e, r in registry.items() if r.get("disabled_by")}
        check(disabled == DISABLED, "noisy diagnostics disabled by default", sorted(disabled))
        diagnostic = {e for e, r in registry.items() if r.get("entity_category") == "diagnostic"}
        check(diagnostic == DIAGNOSTIC, "diagnostic entities", sorted(diagnostic ^ DIAGNOSTIC))
        camera_class = ha.template(f"{{{{ state_attr('binary_sensor.{E}_camera_connected', 'device_class') }}}}")
        check(camera_class == "connectivity", "camera connectivity sensor", camera_class)
        triggers = ws_call(args.hass, ha, "device_automation/trigger/list", device_id=did)
        mine = sorted((t.get("type"), t.get("subtype")) for t in triggers if t.get("domain") == "mqtt")
        check(
            mine == sorted(("emotion", s) for s in STATES), "one device trigger per state in the trigger picker", mine
        )
        check(wait(lambda: (ha.state(f"sensor.{E}_uptime") or {}).get("state") not in (None, "unknown", "unavailable"), 30)
              and wait(lambda: float((ha.state(f"sensor.{E}_frames_per_s") or {}).get("state") or 0) > 0, 30),
              "uptime and analysed frames per second have values")  # fmt: skip
        check((ha.state(f"sensor.{E}_last_error") or {}).get("state") not in (None, "unknown", "unavailable"),
              "last error has a value (`none`, or the last error line)", ha.state(f"sensor.{E}_last_error"))  # fmt: skip
        ha.request("POST", "/api/services/button/press", {"entity_id": f"button.{E}_reload_models"})
        check(wait(lambda: "models reloaded:" in (tmp / "daemon.log").read_text(errors="replace"), 20),
              "the Reload models button reloads the models")  # fmt: skip
        analysis = f"switch.{E}_analysis"
        check(wait(lambda: (ha.state(analysis) or {}).get("state") == "on", 60), "analysis switch shows on")
        check(wait(lambda: (ha.state(f"binary_sensor.{E}_camera_connected") or {}).get("state") == "on", 60),
              "camera connectivity on while capturing")  # fmt: skip
        n = len(watch.events())
        check(wait(lambda: len(watch.events()) >= n + 2, 60), "the service publishes events")
        check(wait(lambda: (ha.state(f"sensor.{E}_people") or {}).get("state") == "1", 30), "people in view: 1",
              (ha.state(f"sensor.{E}_people") or {}).get("state"))  # fmt: skip
        check(wait(lambda: (ha.state(f"sensor.{E}_drops") or {}).get("state") not in (None, "unknown", "unavailable"), 30),
              "drops diagnostic has a value", (ha.state(f"sensor.{E}_drops") or {}).get("state"))  # fmt: skip
        ha.request("POST", "/api/services/switch/turn_off", {"entity_id": analysis})
        check(wait(lambda: watch.last("analysis/state") == b"OFF", 15), "switch.turn_off published OFF, state echoed")
        check(wait(lambda: json.loads(watch.last("status") or b"{}").get("camera") == "paused", 15),
              "camera paused (device released)")  # fmt: skip
        check(wait(lambda: (ha.state(analysis) or {}).get("state") == "off", 15), "Home Assistant shows the switch off")
        check(wait(lambda: (ha.state(emotion) or {}).get("state") == "paused", 15), "emotion reads paused",
              (ha.state(emotion) or {}).get("state"))  # fmt: skip
        check(wait(lambda: (ha.state(f"binary_sensor.{E}_camera_connected") or {}).get("state") == "off", 15),
              "camera connectivity off while paused")  # fmt: skip
        time.sleep(5)  # windows that began before the switch have closed by now
        n = len(watch.events())
        time.sleep(6)
        check(len(watch.events()) == n, "no events while analysis is off", len(watch.events()) - n)
        ha.request("POST", "/api/services/switch/turn_on", {"entity_id": analysis})
        check(wait(lambda: len(watch.events()) > n, 30), "switch.turn_on: events again")
        check(wait(lambda: (ha.state(emotion) or {}).get("state") not in ("paused", "no_one", None), 20),
              "emotion follows the events again", (ha.state(emotion) or {}).get("state"))  # fmt: skip
        # The room empties: the camera off from Home Assistant, and no microphone here.
        ha.request("POST", "/api/services/switch/turn_off", {"entity_id": f"switch.{E}_camera"})
        check(wait(lambda: (ha.state(emotion) or {}).get("state") == "no_one", 30), "empty room reads no_one",
              (ha.state(emotion) or {}).get("state"))  # fmt: skip
        ha.request("POST", "/api/services/switch/turn_on", {"entity_id": f"switch.{E}_camera"})
        check(wait(lambda: (ha.state(emotion) or {}).get("state") not in ("no_one", "paused"), 30),
              "someone back: the next window ends no_one", (ha.state(emotion) or {}).get("state"))  # fmt: skip

        # --- 3. availability ------------------------------------------------------------------------------
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        check(daemon.returncode == 0, "clean stop exits 0", daemon.returncode)
        check(
            wait(lambda: (ha.state(emotion) or {}).get("state") == "unavailable", 15), "unavailable after a clean stop"
        )
        daemon = subprocess.Popen(
            emotion_edge("--config", str(cfg), "run"), cwd=ROOT, stdout=dlog, stderr=subprocess.STDOUT
        )
        check(
            wait(lambda: (ha.state(emotion) or {}).get("state") != "unavailable", 60), "available again after a start"
        )
        check(wait(lambda: watch.last("availability") == b"online", 10), "availability online")
        daemon.kill()
        daemon.wait(10)
        check(
            wait(lambda: (ha.state(emotion) or {}).get("state") == "unavailable", 15), "unavailable after a kill (will)"
        )
        daemon = None

        # --- 3b. remote control off: the switches and buttons leave Home Assistant ----------------------------
        daemon = subprocess.Popen(emotion_edge("--config", str(daemon_config(tmp, broker.port, commands=False)), "run"),
                                  cwd=ROOT, stdout=dlog, stderr=subprocess.STDOUT)  # fmt: skip
        gone = {f"switch.{E}_analysis", f"switch.{E}_camera", f"switch.{E}_microphone", f"button.{E}_reload_models",
                f"button.{E}_purge_history"}  # fmt: skip

        def registered() -> set[str]:
            return {e["entity_id"] for e in ws_call(args.hass, ha, "config/entity_registry/list")}

        check(wait(lambda: not (gone & registered()), 30, step=2), "mqtt.commands: false removed the switches and buttons",
              sorted(gone & registered()))  # fmt: skip
        check(ha.state(emotion) is not None, "and kept the rest")
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        daemon = None

        # --- 4. forget --------------------------------------------------------------------------------------
        forget = subprocess.run(
            emotion_edge("--config", str(cfg), "forget"), cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        info(forget.stdout.strip().splitlines()[0] if forget.stdout.strip() else forget.stderr.strip())
        check(forget.returncode == 0, "forget exits 0", forget.stderr)
        check(
            wait(lambda: ha.template(f"{{{{ device_id('{emotion}') }}}}") in ("None", ""), 20),
            "forget removed the device",
        )
        check(
            wait(lambda: not (ENTITIES & set(ha.states())), 20), "and every entity", sorted(ENTITIES & set(ha.states()))
        )
        check(wait(lambda: ha.state(f"sensor.{R}_emotion") is None, 20), "and the replay's device")

        # --- 5. Home Assistant's log ----------------------------------------------------------------------
        log = (tmp / "ha" / "home-assistant.log").read_text(errors="replace")
        lines = log.splitlines()
        mqtt_lines = [line for line in lines if ("ERROR" in line or "WARNING" in line)
                      and ("mqtt" in line.lower() or "template" in line.lower())]  # fmt: skip
        # Removing the device, Home Assistant clears its discovery topic itself and then receives its own empty
        # message, which finds nothing left to remove: a warning of its own making after `forget`, not ours.
        echo = [line for line in mqtt_lines if "No device components to cleanup" in line]
        bad = [line for line in mqtt_lines if line not in echo]
        check(
            not [b for b in bad if "discovery" in b.lower()],
            "no MQTT discovery errors in Home Assistant's log",
            bad[:5],
        )
        check(not bad, "no other MQTT or template warnings in Home Assistant's log", bad[:5])
        info(f"Home Assistant log: {len(lines)} lines; {len(bad)} MQTT/template warnings or errors; "
             f"{len(echo)} 'No device components to cleanup' from its own clean-up echo after forget")  # fmt: skip
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        hass.send_signal(signal.SIGTERM)
        try:
            hass.wait(60)
        except subprocess.TimeoutExpired:
            hass.kill()
        broker.stop()
    print(
        f"{'PASS' if not failures else 'FAIL'}: {len(failures)} check(s) failed" + (f": {failures}" if failures else "")
    )
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())
