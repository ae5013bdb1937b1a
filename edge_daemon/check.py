"""`emotion-edge check`: everything the daemon needs, probed without starting it; one line per problem."""

from __future__ import annotations

import os

from .config import Config, mqtt_password, node_name
from .errors import UserError
from .mqtt import probe_broker
from .outbox import FILENAME as OUTBOX_FILENAME
from .outbox import MARK_FILENAME
from .storage import state_dir_problem
from .web.tls import web_tls_context


def run_checks(config: Config) -> list[str]:
    problems: list[str] = []
    try:
        from .models import load_models

        load_models(config)
    except UserError as exc:
        problems.append(f"models: {exc}")
    if config.camera.enabled:
        from .capture.camera import open_capture

        cap = open_capture(config.camera.source, config.camera)
        if cap is None:
            problems.append(
                f"camera: cannot open {config.camera.source!r} (camera.source); `emotion-edge devices` lists cameras"
            )
        else:
            ok, _ = cap.read()
            cap.release()
            if not ok:
                problems.append(f"camera: {config.camera.source!r} opens but delivers no frames")
    if config.microphone.enabled:
        problems.extend(_check_microphone(config))
    problems.extend(_check_broker(config))
    problems.extend(startup_problems(config))
    return problems


def startup_problems(config: Config) -> list[str]:
    """What `run` refuses before it starts (it raises the first as a UserError): `check` reports the same lines, so
    that it never says ok for a config that `run` then refuses."""
    problems = []
    if config.web.enabled:
        try:
            web_tls_context(config)
        except UserError as exc:
            problems.append(str(exc))
    problems.extend(_check_state_dir(config))
    return problems


def refuse_startup_problems(config: Config) -> None:
    problems = startup_problems(config)
    if problems:
        raise UserError(problems[0])


def _check_state_dir(config: Config) -> list[str]:
    """Whether the outbox could be kept there. Nothing is left behind: `check` may run as another user (root) than
    the service, and a file it created would then belong to the wrong owner."""
    path = config.path(config.state_dir)
    problem = state_dir_problem(path)
    if problem:
        return [problem]
    names = [f"{OUTBOX_FILENAME}{suffix}" for suffix in ("", "-wal", "-shm")] + [MARK_FILENAME]
    for name in names:  # e.g. left behind by a `sudo emotion-edge replay`, then owned by root
        f = path / name
        if f.exists() and not os.access(f, os.R_OK | os.W_OK):
            return [f"state_dir: {f} is not writable for this user (the outbox; chown it to the service's user)"]
    return []


def _check_broker(config: Config) -> list[str]:
    problems = []
    try:
        password = mqtt_password(config)
    except UserError as exc:  # e.g. longer than MQTT allows: the probe below would fail the same way
        return [f"mqtt: {exc}"]
    if config.mqtt.username and password is None:
        problems.append(
            f"mqtt: mqtt.username is set but no password: set ${config.mqtt.password_env} or the systemd credential "
            "mqtt_password"
        )
    nodes = config.mqtt.nodes()
    answers: list[str | None] = []
    try:
        for host, port in nodes:
            answers.append(probe_broker(config, host, port))
    except UserError as exc:  # the config's own files (mqtt.tls.*): `run` says the same, and nothing was probed
        return [str(exc), *problems]
    if len(nodes) == 1:
        if answers[0]:
            host, port = nodes[0]
            problems.insert(0, f"mqtt: broker {node_name(host, port)} (mqtt.host, mqtt.port) {answers[0]}")
        return problems
    # A clustered broker: the device uses any node that answers, so a node down is worth a warning, not a failure.
    usable = [node_name(*n) for n, a in zip(nodes, answers, strict=True) if a is None]
    lines = []
    for i, (node, answer) in enumerate(zip(nodes, answers, strict=True)):
        if answer:
            lines.append(f"mqtt: broker node {node_name(*node)} (mqtt.hosts[{i}]) {answer}")
    if usable:
        lines = [f"warning: {line}; the device uses the nodes that answer: {', '.join(usable)}" for line in lines]
    return lines + problems


def _check_microphone(config: Config) -> list[str]:
    try:
        from .capture.microphone import open_input, pyaudio_instance

        pa = pyaudio_instance()
        try:
            open_input(pa, config.microphone.device, 1600).close()
        finally:
            pa.terminate()
    except (OSError, LookupError, ImportError) as exc:
        which = config.microphone.device if config.microphone.device is not None else "default input"
        return [f"microphone: cannot open {which!r} at 16 kHz mono (microphone.device): {exc}"]
    return []


NEAR_M = 1.5  # a device on a shelf must see at least the length of a sofa away


def reach_warnings(config: Config) -> list[str]:
    """A warning (not a failure: a kiosk may want only the person at arm's length) when the configured resolution
    and detector cannot find a face beyond NEAR_M with a typical webcam."""
    from .models import load_detector
    from .vision.detector import TYPICAL_HFOV_DEG, reach_m, smallest_face_px

    if not config.camera.enabled:
        return []
    try:
        detector = load_detector(config)
    except UserError:
        return []  # run_checks reports it
    w, h = config.camera.width, config.camera.height
    px = smallest_face_px(detector, w, h)
    far = reach_m(px, w)
    if far >= NEAR_M:
        return []
    return [
        f"warning: faces: at {w}x{h} (camera.width, camera.height) the detector finds faces from about {px:.0f} px "
        f"wide, about {far:.1f} m from a {TYPICAL_HFOV_DEG:.0f}-degree webcam; to see farther use "
        "models.face_detector: face_detection_full_range_sparse.json with face.tiles: 2, or a higher resolution"
    ]
