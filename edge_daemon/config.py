"""The whole configuration: every field, its default, its bounds, and strict loading.

Each subsystem gets a frozen dataclass; a field's `metadata` carries its
description and its allowed range, and `config.yaml` documents the same fields
with the same defaults (a test keeps the two equal). Loading rejects unknown
keys, wrong types and out-of-range values with one line that names the file,
the line, the key path and what is allowed.

Secrets never live here: the MQTT password comes from the environment variable
named by `mqtt.password_env` or from `$CREDENTIALS_DIRECTORY/mqtt_password`
(systemd's LoadCredential).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import socket
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlsplit

import yaml

from .errors import UserError


def _f(
    default: Any,
    doc: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple = (),
    pattern: str = "",
    check: Callable[[Any], str | None] | None = None,
    example: str = "[127.0.0.1, 10.0.0.0/8]",
) -> Any:
    """A config field; `check` returns what is wrong with a value (of a list: with one entry), or None. `example`: a
    list field's value, for the error that asks for a list."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "choices": choices, "pattern": pattern, "check": check, "example": example}
    return field(default=default, metadata=meta)


field_spec = _f  # the public name, for the other schemas read by load_yaml_as (the collector's)


# Every text value goes into a path, an MQTT string (at most 65,535 bytes) or a topic: this is far below both.
MAX_TEXT_BYTES = 4096


def _text_problem(value: str) -> str | None:
    """What makes a free-text value unusable anywhere: control characters (a NUL ends a path in C, MQTT forbids
    them in client ids and topics), a lone surrogate (not encodable as UTF-8), or a length no broker accepts."""
    for i, ch in enumerate(value):
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return f"must not contain control characters (U+{code:04X} at position {i + 1})"
        if 0xD800 <= code <= 0xDFFF:
            return f"must be valid text (a lone surrogate U+{code:04X} at position {i + 1})"
    size = len(value.encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        return f"is {size} bytes long; at most {MAX_TEXT_BYTES}"
    return None


def host_problem(host: str) -> str | None:
    try:
        host.encode("idna")  # what the socket layer does with it; an empty or over-long label fails here
    except UnicodeError:
        return f"is not a host name or address (empty or over-long part), got {host!r}"
    return None


def split_node(text: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port` or `[v6 address]:port`: one node of a clustered broker (the device's mqtt.hosts, the
    collector's mqtt.hosts and jetstream.servers)."""
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text.strip())
    if not m:
        raise ValueError(f"{text!r} is not host or host:port ([address]:port for IPv6)")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    number = int(port) if port else default_port
    if not 1 <= number <= 65535:
        raise ValueError(f"{text!r}: the port must be between 1 and 65535")
    return host, number


def node_problem(text: str) -> str | None:
    try:
        host, _ = split_node(text, 1883)
    except ValueError as exc:
        return str(exc)
    return host_problem(host)


def node_name(host: str, port: int) -> str:
    """host:port as an operator writes it ([address]:port for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class CameraConfig:
    """The camera thread."""

    enabled: bool = _f(True, "capture frames at all")
    source: int | str = _f(0, "device index (0), device path (/dev/video0), video file, or stream URL (rtsp://…)")
    width: int = _f(640, "requested frame width, pixels", lo=32, hi=4096)
    height: int = _f(480, "requested frame height, pixels", lo=32, hi=4096)
    fps: float = _f(15.0, "requested capture rate, frames per second", lo=0.5, hi=120)
    reconnect_min_s: float = _f(1.0, "first back-off after a failure, seconds", lo=0.05, hi=600)
    reconnect_max_s: float = _f(30.0, "longest back-off, seconds", lo=0.05, hi=3600)


@dataclass(frozen=True)
class MicrophoneConfig:
    """The microphone thread (16 kHz mono int16, the rate the speech model was trained at)."""

    enabled: bool = _f(True, "capture audio at all")
    device: int | str | None = _f(None, "input device index, or part of its name; null = the default input")
    chunk_ms: int = _f(100, "audio read size, milliseconds", lo=10, hi=1000)
    buffer_s: float = _f(
        10.0, "ring buffer length, seconds (oldest audio is overwritten if processing stalls)", lo=2, hi=120
    )
    reconnect_min_s: float = _f(1.0, "first back-off after a failure, seconds", lo=0.05, hi=600)
    reconnect_max_s: float = _f(30.0, "longest back-off, seconds", lo=0.05, hi=3600)


@dataclass(frozen=True)
class FaceConfig:
    """The face path: detection, then the emotion model on every face found (up to max_faces)."""

    rate_hz: float = _f(5.0, "frames analysed per second (the rest are skipped)", lo=0.1, hi=60)
    detector: str = _f("blazeface", "face detector backend", choices=("blazeface", "haar"))
    # 20: below what the default detector finds (half the faces at 32 px at 640x480 with 2 tiles): it drops specks.
    min_face_px: int = _f(20, "ignore faces whose box is smaller than this, pixels", lo=8, hi=4096)
    # 5: a family on a sofa; each face costs one emotion invoke (about 0.4 ms here), so this bounds the frame's cost.
    max_faces: int = _f(5, "classify at most this many faces per frame, largest first; each votes", lo=1, hi=20)
    detection_threshold: float = _f(0.5, "minimum detector score", lo=0.05, hi=0.99)
    # 2: at 640x480 two overlapping 480-px squares let BlazeFace full-range find faces from about 40 px (about 1.7 m
    # away) instead of 53 px (1.3 m) for twice the cost of one pass; benchmarks/face_distance.py measures each choice.
    tiles: int = _f(
        2,
        "BlazeFace passes per detection: 1 = the whole frame; 2 = two overlapping squares as tall as the frame, "
        "seeing farther at twice the cost (more add overlap, not reach)",
        lo=1,
        hi=8,
    )
    # 5: at the default rate_hz of 5 the detector looks for new faces at least once a second (the count is of analysed
    # frames, so a lower rate_hz stretches it). benchmarks/tracking_check.py measured what it changes (README,
    # "Performance").
    detect_every: int = _f(
        5, "run the detector on every Nth analysed frame and follow its faces in between; 1 = every frame", lo=1, hi=30
    )


@dataclass(frozen=True)
class SpeechConfig:
    """The speech path: voice-activity gate, then the emotion model on sliding windows."""

    hop_s: float = _f(1.0, "classify a window every this many seconds of audio", lo=0.1, hi=10)
    vad_threshold: float = _f(0.15, "Silero VAD score above which a 32 ms chunk is speech", lo=0.05, hi=0.95)
    vad_min_speech_fraction: float = _f(0.08, "fraction of a window's chunks that must be speech", lo=0.0, hi=1.0)
    vad_floor_db: float = _f(
        -70.0,
        "chunks whose peak is below this, dBFS, count as silence whatever the VAD says",
        lo=-96,
        hi=-20,
    )


@dataclass(frozen=True)
class ModelsConfig:
    """Model metadata files; each names its .tflite beside it."""

    dir: str = _f("models_tflite", "folder of the models, relative to this config file unless absolute")
    face_detector: str = _f(
        "face_detection_full_range_sparse.json",
        "BlazeFace metadata (used when face.detector is blazeface): full_range_sparse sees across a room, "
        "short_range only faces within about 1 m",
    )
    face_emotion: str = _f("face_emotion.json", "face emotion model metadata")
    speech_emotion: str = _f("speech_emotion.json", "speech emotion model metadata")
    num_threads: int = _f(1, "interpreter threads per model", lo=1, hi=8)


@dataclass(frozen=True)
class FusionConfig:
    """How each time window's predictions become one event."""

    window_s: float = _f(2.0, "window length, seconds", lo=0.5, hi=60)
    # Defaults chosen by `python -m training.fusion_eval` on audio-visual clips of held-out voices (README, "How a
    # window is decided"): the product beat averaging by 2.5 points and voting by more there; min_confidence 0.3 is
    # the most cautious threshold that leaves at most 10 % of windows `uncertain`.
    method: str = _f(
        "product",
        "vote: weighted majority of per-prediction labels; average: weighted mean of probabilities; "
        "product: weighted geometric mean of probabilities",
        choices=("vote", "average", "product"),
    )
    face_weight: float = _f(
        1.0, "total weight of the face modality in a window, however many frames it saw", lo=0, hi=10
    )
    speech_weight: float = _f(
        1.0, "total weight of the speech modality in a window, however many windows it saw", lo=0, hi=10
    )
    min_confidence: float = _f(0.3, "below this fused confidence the window's emotion is 'uncertain'", lo=0, hi=1)
    calm_as: str = _f("neutral", "canonical emotion that speech's 'calm' maps to", choices=("neutral", "happy", "sad"))
    state_after_windows: int = _f(2, "publish a new state after this many consecutive windows agree", lo=1, hi=100)
    absent_after_s: float = _f(
        10.0, "this long without a face or voiced speech, the state becomes no_one (the room is empty)", lo=1, hi=86400
    )


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the broker."""

    enabled: bool = _f(False, "connect with TLS")
    ca_file: str | None = _f(None, "CA certificate file; null = the system's trust store")
    cert_file: str | None = _f(None, "client certificate, for brokers that require one")
    key_file: str | None = _f(None, "client key, for brokers that require one")


@dataclass(frozen=True)
class HomeAssistantConfig:
    """Home Assistant MQTT discovery."""

    discovery: bool = _f(
        True, "announce the device to Home Assistant; false also removes an earlier announcement at the next start"
    )
    prefix: str = _f("homeassistant", "Home Assistant's discovery prefix", pattern=r"[A-Za-z0-9_/-]+")


@dataclass(frozen=True)
class MqttConfig:
    """The broker session and topics."""

    host: str | None = _f(
        None, "broker host; null: `run` uses localhost, `demo` starts a private local broker", check=host_problem
    )
    port: int = _f(1883, "broker port (and the port of an entry in `hosts` that names none)", lo=1, hi=65535)
    hosts: tuple[str, ...] = _f(
        (),
        "the nodes of one clustered broker (NATS, EMQX, HiveMQ) as host:port: when the node in use cannot be reached, "
        "refuses the device or drops it, the device moves to the next one, with back-off; [] uses host and port",
        check=node_problem,
        example="[broker1.lan:1883, broker2.lan:1883]",
    )
    topic_prefix: str = _f("emotion-edge", "topics live under <topic_prefix>/<device_id>/", pattern=r"[A-Za-z0-9_/-]+")
    client_id: str | None = _f(None, "MQTT client id; null = emotion-edge-<device_id>")
    username: str | None = _f(
        None, "user name; the password comes from password_env or $CREDENTIALS_DIRECTORY/mqtt_password"
    )
    password_env: str = _f(
        "EMOTION_EDGE_MQTT_PASSWORD", "environment variable that holds the password", pattern=r"[A-Za-z_][A-Za-z0-9_]*"
    )
    keepalive_s: int = _f(30, "MQTT keep-alive, seconds", lo=5, hi=3600)
    stats_interval_s: float = _f(30.0, "publish stats this often, seconds", lo=1, hi=86400)
    # paho-mqtt counts back-off in whole seconds: below 1 it would not back off at all.
    reconnect_min_s: float = _f(1.0, "first back-off after a lost connection, seconds", lo=1, hi=600)
    reconnect_max_s: float = _f(
        10.0,
        "longest back-off, seconds (each wait is drawn between half and all of it: a fleet spreads out)",
        lo=1,
        hi=3600,
    )
    # `5` unquoted is an integer in YAML: accepted as well as "5".
    protocol: str | int = _f(
        "auto",
        "MQTT version: auto tries 5 and falls back to 3.1.1 when the broker refuses 5 (3.1.1 cannot report a "
        "refused event)",
        choices=("auto", "5", "3.1.1"),
        check=lambda v: None if v in ("auto", "5", "3.1.1", 5) else f"must be one of auto, 5, 3.1.1, got {v!r}",
    )
    tls: TlsConfig = field(default_factory=TlsConfig, metadata={"doc": "TLS"})
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig, metadata={"doc": "Home Assistant"})
    commands: bool = _f(
        True, "obey <topic_prefix>/<device_id>/{analysis,camera,microphone}/set (ON/OFF); false: remote control off"
    )

    def nodes(self) -> list[tuple[str, int]]:
        """Where to connect, in order: `hosts`, or `host` (localhost when null) and `port`."""
        return [split_node(h, self.port) for h in self.hosts] or [(self.host or "localhost", self.port)]


@dataclass(frozen=True)
class OutboxConfig:
    """The on-disk event queue in state_dir that survives broker outages and restarts."""

    max_events: int = _f(
        100_000,
        "keep at most this many undelivered events; the oldest are dropped first (and counted)",
        lo=10,
        hi=10_000_000,
    )
    max_age_s: float = _f(
        604_800.0, "drop undelivered events older than this, seconds (default a week)", lo=60, hi=31_536_000
    )
    drain_rate_per_s: float = _f(
        50.0, "after an outage, send the backlog at most this fast, events per second", lo=1, hi=10_000
    )


@dataclass(frozen=True)
class HistoryConfig:
    """The local history in state_dir/history.sqlite3: each event's labels, scores, times (never frames or audio)."""

    enabled: bool = _f(True, "keep a local history of events (false: keep nothing)")
    max_days: int = _f(30, "delete events older than this many days", lo=1, hi=3650)
    max_mb: int = _f(100, "keep the history under this many megabytes; the oldest events go first", lo=1, hi=100_000)


def _network_problem(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            net = ipaddress.ip_network(value, strict=False)
            return f"{value!r} has host bits set; did you mean {net}?"
        return f"must be an IP address or network such as 10.0.0.0/8, got {value!r}"
    return None


def _public_url_problem(value: str) -> str | None:
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
    except ValueError as exc:
        return f"is not a URL ({exc}), got {value!r}"
    if url.scheme not in ("http", "https") or not url.hostname:
        return (
            f"must be an http:// or https:// address with a host, such as https://emotion.example.org/, got {value!r}"
        )
    if url.path not in ("", "/") or url.query or url.fragment or url.username or url.password:
        # The page's own links are absolute (/login, /api/...): it must be the root of its host, not a sub-path.
        return (
            f"must be the root of a host (no path, query or user), such as https://emotion.example.org/, got {value!r}"
        )
    return None


@dataclass(frozen=True)
class WebTlsConfig:
    """HTTPS for the device page (or leave it off and put a reverse proxy in front)."""

    cert_file: str | None = _f(None, "certificate (PEM) for HTTPS; null = plain HTTP")
    key_file: str | None = _f(None, "its private key (PEM)")


@dataclass(frozen=True)
class WebConfig:
    """The device page and HTTP API, served by `run` and `replay --realtime`."""

    enabled: bool = _f(True, "serve the device page and the HTTP API")
    host: str = _f("0.0.0.0", "address to listen on (127.0.0.1: this machine only)", check=host_problem)
    port: int = _f(8765, "port to listen on", lo=1, hi=65535)
    password_env: str = _f(
        "EMOTION_EDGE_WEB_PASSWORD",
        "environment variable that holds the page's password (else $CREDENTIALS_DIRECTORY/web_password, else a "
        "generated one, logged once)",
        pattern=r"[A-Za-z_][A-Za-z0-9_]*",
    )
    session_hours: float = _f(12.0, "a login lasts this long, hours", lo=0.01, hi=720)
    max_connections: int = _f(
        64,
        "at most this many requests answered at once, live streams included; more get 503 (perception never "
        "waits). Connections still sending their request wait apart, at most 256, the oldest closed first",
        lo=4,
        hi=1000,
    )
    request_timeout_s: float = _f(
        10.0, "a request's line, headers and body must all arrive within this long, or the connection is closed",
        lo=1, hi=120,
    )  # fmt: skip
    trusted_proxies: tuple[str, ...] = _f(
        (),
        "reverse proxies (addresses or networks, e.g. [127.0.0.1, 10.0.0.0/8]) whose X-Forwarded-For names the "
        "client; from anyone else that header is ignored",
        check=_network_problem,
    )
    public_url: str | None = _f(
        None,
        "the page's address as people reach it (e.g. https://emotion.example.org/ behind a reverse proxy); given "
        "out as Home Assistant's link to the device. null: built from host, port and tls",
        check=_public_url_problem,
    )
    tls: WebTlsConfig = field(default_factory=WebTlsConfig, metadata={"doc": "HTTPS"})

    def public_base_url(self) -> str:
        """The address the device gives out for its page: `public_url` when set, else one built from host and port
        as another machine on the network would reach it."""
        if self.public_url:
            return self.public_url if self.public_url.endswith("/") else self.public_url + "/"
        host = socket.getfqdn() if self.host in ("0.0.0.0", "::", "") else self.host
        scheme = "https" if self.tls.cert_file else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}/"


@dataclass(frozen=True)
class Config:
    """Everything the daemon can be told."""

    device_id: str = _f("emotion-edge", "this device's name in topics", pattern=r"[A-Za-z0-9_-]+")
    state_dir: str = _f(
        ".state",
        "where the event sequence and outbox live (systemd: /var/lib/emotion-edge), relative to this file unless absolute",
    )
    log_level: str = _f("info", "log verbosity", choices=("debug", "info", "warning", "error"))
    camera: CameraConfig = field(default_factory=CameraConfig, metadata={"doc": "camera"})
    microphone: MicrophoneConfig = field(default_factory=MicrophoneConfig, metadata={"doc": "microphone"})
    face: FaceConfig = field(default_factory=FaceConfig, metadata={"doc": "face path"})
    speech: SpeechConfig = field(default_factory=SpeechConfig, metadata={"doc": "speech path"})
    models: ModelsConfig = field(default_factory=ModelsConfig, metadata={"doc": "models"})
    fusion: FusionConfig = field(default_factory=FusionConfig, metadata={"doc": "fusion"})
    mqtt: MqttConfig = field(default_factory=MqttConfig, metadata={"doc": "MQTT"})
    outbox: OutboxConfig = field(default_factory=OutboxConfig, metadata={"doc": "outbox"})
    history: HistoryConfig = field(default_factory=HistoryConfig, metadata={"doc": "history"})
    web: WebConfig = field(default_factory=WebConfig, metadata={"doc": "web page"})
    # Where the file was read from: relative paths in it resolve against this folder.
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def model_path(self, name: str) -> Path:
        folder = self.path(self.models.dir)
        if not folder.is_dir() and not Path(self.models.dir).is_absolute():
            # A non-editable install carries the shipped models in <prefix>/share/emotion-edge/ (see setup.py).
            installed = Path(sys.prefix) / "share" / "emotion-edge" / self.models.dir
            folder = installed if installed.is_dir() else folder
        return folder / getattr(self.models, name)


# --------------------------------------------------------------------------- loading

_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS_CACHE:
        _HINTS_CACHE[cls] = typing.get_type_hints(cls)
    return _HINTS_CACHE[cls]


def _public_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, node: yaml.Node | None, key: str, what: str) -> UserError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return UserError(f"{self.path}{line}: {key}: {what}")

    def section(self, cls: type, node: yaml.Node | None, prefix: str) -> Any:
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
            return cls()
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, prefix or "(top level)", "must be a mapping of keys to values")
        fields = {f.name: f for f in _public_fields(cls)}
        values: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail(key_node, prefix or "(top level)", "keys must be plain names, not lists or mappings")
            key = key_node.value
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in fields:
                allowed = ", ".join(fields)
                raise self.fail(key_node, path, f"unknown key; allowed here: {allowed}")
            if key in values:
                raise self.fail(key_node, path, "appears twice")
            values[key] = self.value(fields[key], _hints(cls)[key], value_node, path)
        return cls(**values)

    def value(self, f: dataclasses.Field, hint: Any, node: yaml.Node, path: str) -> Any:
        if dataclasses.is_dataclass(hint):
            return self.section(hint, node, path)
        if typing.get_origin(hint) is tuple:  # a list of strings, e.g. web.trusted_proxies
            if not isinstance(node, yaml.SequenceNode):
                raise self.fail(node, path, f"must be a list, e.g. {f.metadata['example']} (or [] for none)")
            return tuple(self.list_item(f, item, f"{path}[{i}]") for i, item in enumerate(node.value))
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, path, f"must be a single value ({_describe(hint, f)})")
        try:
            raw = yaml.SafeLoader("").construct_object(node)  # the value as safe_load reads it, `key:` alone is null
        except (yaml.YAMLError, ValueError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
            raise self.fail(node, path, f"unreadable value ({exc})") from None
        allowed = _types_of(hint)
        got = _coerce(raw, allowed)
        if got is _BAD:
            raise self.fail(node, path, f"must be {_describe(hint, f)}, got {raw!r}")
        m = f.metadata
        if isinstance(got, (int, float)) and not isinstance(got, bool):
            if (m["lo"] is not None and got < m["lo"]) or (m["hi"] is not None and got > m["hi"]):
                raise self.fail(node, path, f"must be {_describe(hint, f)}, got {raw!r}")
        if isinstance(got, str):
            if problem := _text_problem(got):
                raise self.fail(node, path, problem)
            if m["choices"] and got not in m["choices"]:
                raise self.fail(node, path, f"must be one of {', '.join(m['choices'])}, got {raw!r}")
            if m["pattern"] and not re.fullmatch(m["pattern"], got):
                raise self.fail(node, path, f"must match {m['pattern']}, got {raw!r}")
            if not got:
                raise self.fail(node, path, "must not be empty")
        if got is not None and m["check"] and (problem := m["check"](got)):
            raise self.fail(node, path, problem)
        return got

    def list_item(self, f: dataclasses.Field, node: yaml.Node, path: str) -> str:
        try:
            raw = yaml.SafeLoader("").construct_object(node) if isinstance(node, yaml.ScalarNode) else None
        except (yaml.YAMLError, ValueError, OverflowError):
            raw = None
        if not isinstance(raw, str) or not raw:
            raise self.fail(node, path, "each entry must be a single text value")
        if (problem := _text_problem(raw)) or (f.metadata["check"] and (problem := f.metadata["check"](raw))):
            raise self.fail(node, path, problem)
        return raw


_BAD = object()


def _types_of(hint: Any) -> tuple[type, ...]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return tuple(type(None) if a is type(None) else a for a in typing.get_args(hint))
    return (hint,)


def _coerce(raw: Any, allowed: tuple[type, ...]) -> Any:
    for t in allowed:
        if t is type(None) and raw is None:
            return None
        if t is bool and isinstance(raw, bool):
            return raw
        if t is int and isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if t is float and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            try:
                value = float(raw)
            except OverflowError:
                return _BAD
            return value if math.isfinite(value) else _BAD  # NaN would slip past every bound
        if t is str and isinstance(raw, str):
            return raw
    return _BAD


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _describe(hint: Any, f: dataclasses.Field) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    text = " or ".join(names[t] for t in _types_of(hint))
    m = f.metadata
    if m.get("lo") is not None and m.get("hi") is not None:
        text += f" between {_num(m['lo'])} and {_num(m['hi'])}"
    return text


def load_config(path: Path | str | None) -> Config:
    """Read a YAML config strictly; None gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    config = load_yaml_as(Config, path)
    return _finish(config, path)


def load_yaml_as(cls: type, path: Path) -> Any:
    """Any schema of frozen dataclasses (the daemon's, the collector's) read strictly from a YAML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"{path}: config file not found; pass --config PATH or copy config.yaml from the repository"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: config file unreadable ({exc})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        config = _Reader(path).section(cls, node, "")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{path}{line}: not valid YAML ({problem})") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a config file") from None
    return config


def _finish(config: Config, path: Path) -> Config:
    config = dataclasses.replace(config, base_dir=path.resolve().parent)
    tls = config.web.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        raise UserError(f"{path}: web.tls: set both cert_file and key_file for HTTPS, or neither")
    for section in ("camera", "microphone", "mqtt"):
        part = getattr(config, section)
        if part.reconnect_min_s > part.reconnect_max_s:
            raise UserError(f"{path}: {section}.reconnect_min_s must not exceed {section}.reconnect_max_s")
    return config


def iter_fields(cls: type = Config, prefix: str = "") -> typing.Iterator[tuple[str, Any, dataclasses.Field]]:
    """Every leaf field as (key path, default, Field) — for docs and the config.yaml consistency test."""
    for f in _public_fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        hint = _hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            yield from iter_fields(hint, path)
        else:
            yield path, f.default, f


def mqtt_password(config: Config) -> str | None:
    """The broker password from the environment or a systemd credential; None when neither is set."""
    value = os.environ.get(config.mqtt.password_env)
    if value:
        return _checked_password(value, f"${config.mqtt.password_env}")
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / "mqtt_password"
        if cred.is_file():
            try:
                text = cred.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"{cred}: the MQTT password credential is unreadable ({exc})") from None
            return _checked_password(text, str(cred)) or None  # the installer leaves an empty one
    return None


def _checked_password(value: str, source: str) -> str:
    """MQTT carries a password of at most 65,535 bytes; paho's network thread dies on a longer one."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise UserError(f"{source}: the MQTT password is not valid text (a lone surrogate)") from None
    if size > 65535:
        raise UserError(f"{source}: the MQTT password is {size} bytes long; MQTT allows at most 65535")
    return value


def render_default_yaml(cls: type = Config, header: list[str] | None = None) -> str:
    """config.yaml as shipped (or another schema's file): every field, its default and its description."""
    lines = header or [
        "# emotion-edge configuration. Every field is listed with its default; delete what you don't change.",
        "# Unknown keys, wrong types and out-of-range values are errors (file:line: key: what is allowed).",
        "# The MQTT password is never written here: set $EMOTION_EDGE_MQTT_PASSWORD (or mqtt.password_env),",
        "# or give systemd a credential named mqtt_password (LoadCredential=mqtt_password:/path).",
        "",
    ]

    def scalar(v: Any) -> str:
        v = list(v) if isinstance(v, tuple) else v
        return "null" if v is None else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").strip()

    def walk(cls: type, indent: str) -> None:
        for f in _public_fields(cls):
            hint = _hints(cls)[f.name]
            if dataclasses.is_dataclass(hint):
                lines.append(f"{indent}{f.name}:  # {hint.__doc__.strip()}")
                walk(hint, indent + "  ")
                continue
            m = f.metadata
            allowed = f" [{', '.join(m['choices'])}]" if m["choices"] else ""
            if m["lo"] is not None:
                allowed = f" [{_num(m['lo'])}..{_num(m['hi'])}]"
            lines.append(f"{indent}{f.name}: {scalar(f.default)}  # {m['doc']}{allowed}")

    walk(cls, "")
    return "\n".join(lines) + "\n"
