"""Home Assistant MQTT discovery: the device, its entities and triggers, and the topics that remove them again.

One retained device-based discovery message, `<prefix>/device/emotion_edge_<device_id>/config` (Home Assistant
2024.11 and later), rather than one topic per entity: the device and all its entities arrive, change and go in one
message, so a renamed or removed device cannot leave half its entities behind, and `forget` (or
`mqtt.homeassistant.discovery: false`) clears one topic. The per-entity topics that earlier versions used are
cleared when the broker still keeps them, so that an upgraded device does not show twice.

What Home Assistant sees (docs/homeassistant.md has the entity ids):

* `sensor` Emotion (enum): the retained `state` (`no_one` when the room is empty, `paused` while analysis is off,
  `uncertain` below `fusion.min_confidence`), with `since`, `seq` and `people` as attributes
* `sensor` Confidence (%), `sensor` People in view (from `state`)
* `event` Window: fires once per window (the `events` topic) with the emotion as `event_type`, confidence, seq
  and face count as attributes
* device triggers "<state>" emotion, one per value of the Emotion sensor, from the non-retained `state_changed`
  topic: they fire once per change, never for a retained copy that a reconnect or a Home Assistant restart repeats
* `switch` Analysis, Camera, Microphone (`…/<name>/set` ON/OFF, retained `…/<name>/state`) and `button` Reload
  models, Purge history (`…/<name>/set` PRESS); with `mqtt.commands: false` each is sent with only its platform
  key, which is how device-based discovery removes a component
* `number` Minimum confidence, State after windows, Absent after and `select` Fusion method: the fusion settings
  of tuning.py (`…/<name>/set`, retained `…/<name>/state`), removed like the switches
* diagnostics (`entity_category: diagnostic`): camera and microphone connectivity (from `status`), drops, uptime,
  analysed frames per second, the last error, last event age and inference ms per model (from `stats`)

Entity ids: every entity carries `default_entity_id` ("sensor.emotion_edge_<device_id>_emotion"), which Home
Assistant reads since 2025.10 and alone since 2026.4, and `object_id` beside it for the releases before (2025.4 drops
keys it does not know, so the pair is safe on both).

A replay is a device of its own ("emotion-edge <device_id> replay", topics under `<base>/replay/`): the same
sensors and triggers, its input files in place of camera and microphone, and no switches or buttons, since it obeys
no commands.
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .config import Config
from .control import NAMES as SWITCHES
from .labels import CANONICAL, NO_ONE, PAUSED, STARTING, STOPPED, UNCERTAIN
from .tuning import SETTINGS

ONLINE, OFFLINE = "online", "offline"
ORIGIN = {"name": "emotion-edge", "sw": __version__}
# Every value the Emotion sensor can take, in one list for the enum sensor, the triggers and the docs.
STATE_VALUES = [*CANONICAL, UNCERTAIN, NO_ONE, PAUSED, STARTING, STOPPED]
EVENT_TYPES = [*CANONICAL, UNCERTAIN]
INFERENCE_STAGES = {
    "face_detect": "Face detection",
    "face_track": "Face tracking",  # the frames between two detections (face.detect_every above 1)
    "face_emotion": "Face emotion",
    "speech_emotion": "Speech emotion",
}
# Buttons: `…/<name>/set` with PRESS runs the action the daemon registered under that name.
BUTTONS = {"reload_models": ("Reload models", "mdi:reload"), "purge_history": ("Purge history", "mdi:delete-sweep")}
PRESS = "PRESS"
# The device trigger's `type`: the frontend shows an unknown type as `"<subtype>" <type>`, e.g. `"happy" emotion`.
TRIGGER_TYPE = "emotion"
REPLAY = "replay"  # a replay's topics live under <base>/replay/, its device is <node_id>_replay
# Earlier versions announced these one topic per entity; cleared at start and by `forget`.
LEGACY_KEYS = ("emotion", "confidence")


def node_id(config: Config, replay: bool = False) -> str:
    return f"emotion_edge_{config.device_id}" + (f"_{REPLAY}" if replay else "")


def device_topic(config: Config, replay: bool = False) -> str:
    return f"{config.mqtt.homeassistant.prefix}/device/{node_id(config, replay)}/config"


def legacy_topics(config: Config) -> list[str]:
    prefix = config.mqtt.homeassistant.prefix
    return [f"{prefix}/sensor/{node_id(config)}/{key}/config" for key in LEGACY_KEYS]


def legacy_filter(config: Config) -> str:
    return f"{config.mqtt.homeassistant.prefix}/sensor/{node_id(config)}/+/config"


def base_topic(config: Config, replay: bool = False) -> str:
    base = f"{config.mqtt.topic_prefix.rstrip('/')}/{config.device_id}"
    return f"{base}/{REPLAY}" if replay else base


def discovery_payload(
    config: Config, configuration_url: str | None = None, replay_sources: dict[str, str] | None = None
) -> dict[str, Any]:
    """The device-based discovery message; `configuration_url` is the device page, when one is served.

    `replay_sources` (status key -> what it reads, e.g. {"video-file": "video clip.mp4"}) makes it a replay's device.
    """
    replay = replay_sources is not None
    base, uid = base_topic(config, replay), node_id(config, replay)
    device: dict[str, Any] = {
        # unchanged since 0.1: Home Assistant keeps the device
        "identifiers": [f"emotion-edge-{config.device_id}" + (f"-{REPLAY}" if replay else "")],
        "name": f"emotion-edge {config.device_id}" + (f" {REPLAY}" if replay else ""),
        "manufacturer": "emotion-edge",
        "model": "emotion-edge replay (files through the daemon pipeline)"
        if replay
        else "emotion-edge (camera + microphone emotion recognition)",
        "sw_version": __version__,
        "serial_number": config.device_id,
    }
    if configuration_url:
        device["configuration_url"] = configuration_url
    status, stats = f"{base}/status", f"{base}/stats"
    cmps: dict[str, dict[str, Any]] = {**_state_components(base), **_triggers(f"{base}/state_changed")}
    if replay:
        for key, label in (replay_sources or {}).items():
            cmps[key.replace("-", "_")] = {
                "p": "sensor",
                "name": label[:1].upper() + label[1:],  # "Video clip.mp4": its files are its sources
                "entity_category": "diagnostic",
                "state_topic": status,
                "value_template": f"{{{{ value_json.get('{key}') }}}}",
                "icon": "mdi:file-video-outline" if key.startswith("video") else "mdi:file-music-outline",
            }
    else:
        for source in ("camera", "microphone"):
            cmps[f"{source}_connected"] = {
                "p": "binary_sensor",
                "name": f"{source.capitalize()} connection",
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "state_topic": status,
                "value_template": f"{{{{ 'ON' if value_json.get('{source}') == 'online' else 'OFF' }}}}",
                "json_attributes_topic": status,
            }
    cmps.update(_stats_components(stats))
    if not replay:
        cmps.update(_control_components(config, base))
    for key, cmp in cmps.items():
        if set(cmp) == {"p"}:
            continue  # a removal: anything more would announce it again
        cmp["unique_id"] = f"{uid}_{key}"  # emotion and confidence keep the unique ids of 0.1's sensors
        if cmp["p"] != "device_automation":  # a trigger is no entity: it has no entity id
            cmp["object_id"] = f"{uid}_{key}"  # Home Assistant before 2025.10
            cmp["default_entity_id"] = f"{cmp['p']}.{uid}_{key}"  # 2025.10 and later (object_id ignored from 2026.4)
        cmp["qos"] = 1  # not one of the options device discovery shares: per entity, so no window event is missed
    return {
        "device": device,
        "origin": ORIGIN,
        # Shared by every entity. Anything but `online` (the will `offline`, a clean `stopped`) is unavailable.
        "availability_topic": f"{base}/availability",
        "availability_template": f"{{{{ '{ONLINE}' if value == '{ONLINE}' else '{OFFLINE}' }}}}",
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "components": cmps,
    }


def _state_components(base: str) -> dict[str, dict[str, Any]]:
    state = f"{base}/state"
    return {
        "emotion": {
            "p": "sensor",
            "name": "Emotion",
            "device_class": "enum",
            "options": STATE_VALUES,
            "state_topic": state,
            "value_template": "{{ value_json.emotion }}",
            "json_attributes_topic": state,
            "json_attributes_template": "{{ {'since': value_json.since, 'seq': value_json.seq,"
            " 'people': value_json.people} | tojson }}",
            "icon": "mdi:emoticon-outline",
        },
        "confidence": {
            "p": "sensor",
            "name": "Confidence",
            "state_topic": state,
            # null in `no_one` and `paused`: Home Assistant shows unknown, not a stale number
            "value_template": "{{ (value_json.confidence * 100) | round(1) if value_json.confidence is number"
            " else None }}",
            "unit_of_measurement": "%",
            "state_class": "measurement",
            "suggested_display_precision": 0,
            "icon": "mdi:gauge",
        },
        "people": {
            "p": "sensor",
            "name": "People in view",
            "state_topic": state,
            "value_template": "{{ value_json.people }}",
            "state_class": "measurement",
            "icon": "mdi:account-group",
        },
        "window": {
            "p": "event",
            "name": "Window",
            "state_topic": f"{base}/events",
            "event_types": EVENT_TYPES,
            "value_template": "{{ {'event_type': value_json.emotion, 'confidence': value_json.confidence,"
            " 'seq': value_json.seq, 'face_count': value_json.face_count} | tojson }}",
            "icon": "mdi:timeline-clock-outline",
        },
    }


def _triggers(topic: str) -> dict[str, dict[str, Any]]:
    """One device trigger per state: "emotion became happy" in Home Assistant's trigger picker.

    `state_changed` is published once per change and never retained: a trigger on the retained `state` would fire
    again at every reconnect of the daemon, every restart of Home Assistant and every change of the people count.
    """
    return {
        f"became_{value}": {
            "p": "device_automation",
            "automation_type": "trigger",
            "type": TRIGGER_TYPE,
            "subtype": value,
            "topic": topic,
            "value_template": "{{ value_json.emotion }}",
            "payload": value,
        }
        for value in STATE_VALUES
    }


def _stats_components(stats: str) -> dict[str, dict[str, Any]]:
    diagnostic = {"entity_category": "diagnostic", "state_topic": stats}
    cmps: dict[str, dict[str, Any]] = {
        "drops": {
            "p": "sensor",
            "name": "Drops",
            **diagnostic,
            "value_template": "{{ value_json.drops.values() | sum }}",
            "json_attributes_topic": stats,
            "json_attributes_template": "{{ value_json.drops | tojson }}",
            "state_class": "total_increasing",  # counters start again at 0 after a restart
            "icon": "mdi:delete-alert-outline",
        },
        "uptime": {
            "p": "sensor",
            "name": "Uptime",
            **diagnostic,
            "value_template": "{{ value_json.uptime_s | round(0) }}",
            "device_class": "duration",
            "unit_of_measurement": "s",
            "suggested_display_precision": 0,
        },
        "frames_per_s": {
            "p": "sensor",
            "name": "Analysed frames per second",
            **diagnostic,
            # between two stats messages; absent in stats from before this sensor: unknown, not an error
            "value_template": "{{ value_json.get('frames_analysed_per_s') }}",
            "unit_of_measurement": "fps",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            "icon": "mdi:speedometer",
        },
        "last_error": {
            "p": "sensor",
            "name": "Last error",
            **diagnostic,
            # Home Assistant keeps at most 255 characters of a state; the whole line is the `message` attribute
            "value_template": "{{ ((value_json.get('last_error') or {}).get('message') or 'none')[:255] }}",
            "json_attributes_topic": stats,
            "json_attributes_template": "{{ (value_json.get('last_error') or {}) | tojson }}",
            "icon": "mdi:alert-circle-outline",
        },
        "last_event_age": {
            "p": "sensor",
            "name": "Last event age",
            **diagnostic,
            "enabled_by_default": False,
            "value_template": "{{ value_json.last_event_age_s }}",
            "device_class": "duration",
            "unit_of_measurement": "s",
            "suggested_display_precision": 0,
        },
    }
    for stage, name in INFERENCE_STAGES.items():
        cmps[f"{stage}_ms"] = {
            "p": "sensor",
            "name": f"{name} inference",
            **diagnostic,
            "enabled_by_default": False,  # a new value with every stats message: recorder noise for most people
            "value_template": f"{{{{ value_json.inference_ms.get('{stage}') }}}}",
            "device_class": "duration",
            "unit_of_measurement": "ms",
            "state_class": "measurement",
            "suggested_display_precision": 1,
        }
    return cmps


def _control_components(config: Config, base: str) -> dict[str, dict[str, Any]]:
    """Switches and buttons; each one the device will not obey is sent as `{"p": ...}` alone, which removes it."""
    cmps: dict[str, dict[str, Any]] = {}
    for name in SWITCHES:
        cmps[name] = {
            "p": "switch",
            "name": name.capitalize(),
            "command_topic": f"{base}/{name}/set",
            "state_topic": f"{base}/{name}/state",
            "payload_on": "ON",
            "payload_off": "OFF",
            "icon": {"analysis": "mdi:eye", "camera": "mdi:camera", "microphone": "mdi:microphone"}[name],
            **({} if name == "analysis" else {"entity_category": "config"}),
        }
    for name, (label, icon) in BUTTONS.items():
        cmps[name] = {
            "p": "button",
            "name": label,
            "command_topic": f"{base}/{name}/set",
            "payload_press": PRESS,
            "entity_category": "config",
            "icon": icon,
        }
    cmps.update(_setting_components(base))
    if not config.history.enabled:
        cmps["purge_history"] = {"p": "button"}  # no history to purge
    if not config.mqtt.commands:
        # Remote control off: every component that takes commands goes, switches and buttons alike (and whatever
        # takes commands later), rather than staying in Home Assistant live and ignored.
        cmps = {key: {"p": cmp["p"]} if "command_topic" in cmp else cmp for key, cmp in cmps.items()}
    return cmps


# name, icon, unit (and device class) of each fusion setting's entity; bounds and options come from tuning.SETTINGS
SETTING_ENTITIES = {
    "min_confidence": ("Minimum confidence", "mdi:gauge-low", {"step": 0.01}),
    "state_after_windows": ("State after windows", "mdi:timer-sand", {"unit_of_measurement": "windows"}),
    "absent_after_s": ("Absent after", "mdi:account-off-outline", {"device_class": "duration",
                                                                   "unit_of_measurement": "s"}),
    "method": ("Fusion method", "mdi:call-merge", {}),
}  # fmt: skip


def _setting_components(base: str) -> dict[str, dict[str, Any]]:
    """Home Assistant's number and select entities for the fusion settings (`…/<name>/set`, `…/<name>/state`)."""
    cmps: dict[str, dict[str, Any]] = {}
    for name, (label, icon, extra) in SETTING_ENTITIES.items():
        setting = SETTINGS[name]
        cmp: dict[str, Any] = {
            "p": "select" if setting.choices else "number",
            "name": label,
            "command_topic": f"{base}/{name}/set",
            "state_topic": f"{base}/{name}/state",
            "entity_category": "config",
            "icon": icon,
            **extra,
        }
        if setting.choices:
            cmp["options"] = list(setting.choices)
        else:
            # a box, not a slider: 1 to 86,400 s cannot be dragged to the value one wants
            cmp.update(min=setting.lo, max=setting.hi, mode="box")
            cmp.setdefault("step", 1)
        cmps[name] = cmp
    return cmps
