"""`emotion-edge check`: everything the daemon needs, probed without starting it; one line per problem."""

from __future__ import annotations

import socket

from .config import Config, mqtt_password
from .errors import UserError
from .mqtt import resolve_broker


def run_checks(config: Config) -> list[str]:
    problems: list[str] = []
    try:
        from .daemon import load_models

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
    host, port = resolve_broker(config)
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        problems.append(f"mqtt: cannot reach broker {host}:{port} (mqtt.host, mqtt.port): {exc.strerror or exc}")
    if config.mqtt.username and mqtt_password(config) is None:
        problems.append(
            f"mqtt: mqtt.username is set but no password: set ${config.mqtt.password_env} or the systemd credential mqtt_password"
        )
    return problems


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
