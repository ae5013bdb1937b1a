"""Home Assistant MQTT discovery: the device, its entities, and the topics that remove them again.

One retained device-based discovery message, `<prefix>/device/emotion_edge_<device_id>/config` (Home Assistant
2024.11 and later), rather than one topic per entity: the device and all its entities arrive, change and go in one
message, so a renamed or removed device cannot leave half its entities behind, and `forget` (or
`mqtt.homeassistant.discovery: false`) clears one topic. The per-entity topics that earlier versions used are
cleared when the broker still keeps them, so that an upgraded device does not show twice.

What Home Assistant sees:

* `sensor` Emotion (enum): the retained `state` (`no_one` when the room is empty, `paused` while analysis is off,
  `uncertain` below `fusion.min_confidence`), with `since`, `seq` and `people` as attributes
* `sensor` Confidence (%), `sensor` People in view (from `state`)
* `event` Window: fires once per window (the `events` topic) with the emotion as `event_type`, confidence, seq
  and face count as attributes
* `switch` Analysis, Camera, Microphone (`…/<name>/set` ON/OFF, retained `…/<name>/state`), unless
  `mqtt.commands: false`
* diagnostics (`entity_category: diagnostic`): camera and microphone connectivity (from `status`), drops and last
  event age (from `stats`), inference ms per model (disabled by default: it changes with every stats message)
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .config import Config
from .control import NAMES as SWITCHES
from .labels import CANONICAL, NO_ONE, PAUSED, UNCERTAIN

ONLINE, OFFLINE = "online", "offline"
ORIGIN = {"name": "emotion-edge", "sw": __version__}
# Every value the Emotion sensor can take, in one list for the enum sensor and the docs.
STATE_VALUES = [*CANONICAL, UNCERTAIN, NO_ONE, PAUSED]
EVENT_TYPES = [*CANONICAL, UNCERTAIN]
INFERENCE_STAGES = {
    "face_detect": "Face detection",
    "face_track": "Face tracking",  # the frames between two detections (face.detect_every above 1)
    "face_emotion": "Face emotion",
    "speech_emotion": "Speech emotion",
}
# Earlier versions announced these one topic per entity; cleared at start and by `forget`.
LEGACY_KEYS = ("emotion", "confidence")


def node_id(config: Config) -> str:
    return f"emotion_edge_{config.device_id}"


def device_topic(config: Config) -> str:
    return f"{config.mqtt.homeassistant.prefix}/device/{node_id(config)}/config"


def legacy_topics(config: Config) -> list[str]:
    prefix = config.mqtt.homeassistant.prefix
    return [f"{prefix}/sensor/{node_id(config)}/{key}/config" for key in LEGACY_KEYS]


def legacy_filter(config: Config) -> str:
    return f"{config.mqtt.homeassistant.prefix}/sensor/{node_id(config)}/+/config"


def base_topic(config: Config) -> str:
    return f"{config.mqtt.topic_prefix.rstrip('/')}/{config.device_id}"


def discovery_payload(config: Config, configuration_url: str | None = None) -> dict[str, Any]:
    """The device-based discovery message; `configuration_url` is the device page, when one is served."""
    base, uid = base_topic(config), node_id(config)
    device: dict[str, Any] = {
        "identifiers": [f"emotion-edge-{config.device_id}"],  # unchanged since 0.1: Home Assistant keeps the device
        "name": f"emotion-edge {config.device_id}",
        "manufacturer": "emotion-edge",
        "model": "emotion-edge (camera + microphone emotion recognition)",
        "sw_version": __version__,
        "serial_number": config.device_id,
    }
    if configuration_url:
        device["configuration_url"] = configuration_url
    state, events, status, stats = f"{base}/state", f"{base}/events", f"{base}/status", f"{base}/stats"
    cmps: dict[str, dict[str, Any]] = {
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
            "state_topic": events,
            "event_types": EVENT_TYPES,
            "value_template": "{{ {'event_type': value_json.emotion, 'confidence': value_json.confidence,"
            " 'seq': value_json.seq, 'face_count': value_json.face_count} | tojson }}",
            "icon": "mdi:timeline-clock-outline",
        },
    }
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
    cmps["drops"] = {
        "p": "sensor",
        "name": "Drops",
        "entity_category": "diagnostic",
        "state_topic": stats,
        "value_template": "{{ value_json.drops.values() | sum }}",
        "json_attributes_topic": stats,
        "json_attributes_template": "{{ value_json.drops | tojson }}",
        "state_class": "total_increasing",  # counters start again at 0 after a restart
        "icon": "mdi:delete-alert-outline",
    }
    cmps["last_event_age"] = {
        "p": "sensor",
        "name": "Last event age",
        "entity_category": "diagnostic",
        "enabled_by_default": False,
        "state_topic": stats,
        "value_template": "{{ value_json.last_event_age_s }}",
        "device_class": "duration",
        "unit_of_measurement": "s",
        "suggested_display_precision": 0,
    }
    for stage, name in INFERENCE_STAGES.items():
        cmps[f"{stage}_ms"] = {
            "p": "sensor",
            "name": f"{name} inference",
            "entity_category": "diagnostic",
            "enabled_by_default": False,  # a new value with every stats message: recorder noise for most people
            "state_topic": stats,
            "value_template": f"{{{{ value_json.inference_ms.get('{stage}') }}}}",
            "device_class": "duration",
            "unit_of_measurement": "ms",
            "state_class": "measurement",
            "suggested_display_precision": 1,
        }
    if config.mqtt.commands:
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
    for key, cmp in cmps.items():
        cmp["unique_id"] = f"{uid}_{key}"  # emotion and confidence keep the unique ids of 0.1's sensors
        cmp["object_id"] = f"{uid}_{key}"
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
