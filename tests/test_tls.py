"""Secure transport with a real Mosquitto: TLS with a private CA, a user name and a password that never leaks.

Each test makes a throwaway CA and a server certificate for 127.0.0.1/localhost (openssl CLI), a Mosquitto
password file (mosquitto_passwd), and a broker with one TLS listener that refuses anonymous clients.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_daemon.devbroker import free_port, stop_process, wait_for_port

from .conftest import CLIP_AUDIO, CLIP_VIDEO, ROOT, write_config

USER = "edge"
WATCHER = "watcher"  # the test's own subscriber
DEVICE = "tlsdev"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


# --------------------------------------------------------------------------- certificates


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (P-256): (certificate, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    crt, key = folder / f"{name}.crt", folder / f"{name}.key"
    openssl(
        folder, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", crt.name, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return crt, key


def make_server_cert(folder: Path, ca_crt: Path, ca_key: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost (in the SAN, where clients look), signed by the CA."""
    crt, key, csr, ext = folder / "server.crt", folder / "server.key", folder / "server.csr", folder / "server.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    openssl(
        folder, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", csr.name, "-subj", "/CN=localhost",
    )  # fmt: skip
    openssl(
        folder, "x509", "-req", "-in", csr.name, "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", crt.name, "-days", "2", "-extfile", ext.name,
    )  # fmt: skip
    return crt, key


@dataclass
class Pki:
    ca: Path  # the CA that signed the broker's certificate
    other_ca: Path  # a CA that did not
    server_crt: Path
    server_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_crt, ca_key = make_ca(folder / "ca", "test-ca")
    other_crt, _ = make_ca(folder / "other", "other-ca")
    server_crt, server_key = make_server_cert(folder / "ca", ca_crt, ca_key)
    return Pki(ca_crt, other_crt, server_crt, server_key)


# --------------------------------------------------------------------------- broker


class TlsBroker:
    """Mosquitto with a single TLS listener on a free loopback port; no anonymous clients."""

    def __init__(self, folder: Path, pki: Pki, users: dict[str, str]) -> None:
        self.folder = folder
        self.port = free_port()
        self.log = folder / "broker.log"
        passwd = folder / "passwd"
        for i, (name, password) in enumerate(users.items()):
            subprocess.run(
                [MOSQUITTO_PASSWD, "-b", *(["-c"] if i == 0 else []), str(passwd), name, password],
                check=True,
                capture_output=True,
                timeout=30,
            )
        conf = folder / "mosquitto.conf"
        conf.write_text(
            # Started as root, Mosquitto would switch to the `mosquitto` user, which cannot read pytest's 0700
            # folders; `user` is ignored when not started as root.
            f"user {'root' if os.geteuid() == 0 else 'nobody'}\n"
            "per_listener_settings false\n"
            "persistence false\n"
            "allow_anonymous false\n"
            f"password_file {passwd}\n"
            "log_type all\n"
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {pki.ca}\n"
            f"certfile {pki.server_crt}\n"
            f"keyfile {pki.server_key}\n"
        )
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=self._log_file, stderr=subprocess.STDOUT)
        if not wait_for_port(self.port):
            self.stop()
            raise RuntimeError(f"mosquitto did not start with TLS:\n{self.log.read_text()}")

    def connection_attempts(self) -> int:
        return self.log.read_text(errors="replace").count("New connection from")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log_file.close()


@dataclass
class Secrets:
    device_password: str
    watcher_password: str


@pytest.fixture
def secret() -> Secrets:
    # Distinctive, so that a leak into any output is unmistakable.
    return Secrets(f"pw-{secrets.token_hex(12)}", f"watch-{secrets.token_hex(8)}")


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki, secret: Secrets) -> Iterator[TlsBroker]:
    folder = tmp_path / "broker"
    folder.mkdir()
    b = TlsBroker(folder, pki, {USER: secret.device_password, WATCHER: secret.watcher_password})
    yield b
    b.stop()


class TlsSubscriber:
    """Collects every message under a topic filter over TLS, as an authenticated user."""

    def __init__(self, port: int, ca: Path, username: str, password: str, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tls-sub-{time.monotonic_ns()}")
        self.client.username_pw_set(username, password)
        self.client.tls_set(ca_certs=str(ca))
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1), ready.set())
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10), "the TLS subscriber could not connect"
        time.sleep(0.2)  # SUBACK before anything is published

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def payloads(self, suffix: str) -> list[str]:
        with self._lock:
            return [p.decode() for t, p in self.messages if t.endswith(suffix)]

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return bool(predicate())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watcher(tls_broker: TlsBroker, pki: Pki, secret: Secrets) -> Iterator[TlsSubscriber]:
    s = TlsSubscriber(tls_broker.port, pki.ca, WATCHER, secret.watcher_password, f"emotion-edge/{DEVICE}/#")
    yield s
    s.close()


# --------------------------------------------------------------------------- the daemon


def tls_config(tmp_path: Path, port: int, ca: Path) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        device_id=DEVICE,
        camera={"source": str(CLIP_VIDEO), "reconnect_min_s": 0.2},
        microphone={"enabled": False},
        mqtt={
            "host": "127.0.0.1",
            "port": port,
            "username": USER,
            "reconnect_min_s": 1,
            "reconnect_max_s": 2,
            "tls": {"enabled": True, "ca_file": str(ca)},
        },
    )


def daemon_env(password: str | None = None, credentials_dir: Path | None = None) -> dict[str, str]:
    """The environment without any password but the one given (by variable or as a systemd credential)."""
    env = {k: v for k, v in os.environ.items() if k not in ("EMOTION_EDGE_MQTT_PASSWORD", "CREDENTIALS_DIRECTORY")}
    if password is not None:
        env["EMOTION_EDGE_MQTT_PASSWORD"] = password
    if credentials_dir is not None:
        env["CREDENTIALS_DIRECTORY"] = str(credentials_dir)
    return env


def cli(cfg: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_daemon", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def replay_audio(cfg: Path, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return cli(
        cfg, "replay", "--audio", str(CLIP_AUDIO), "--events-out", "-", "--state-dir", str(tmp_path / "state"),
        "--drain-timeout", "20", env=env,
    )  # fmt: skip


def run_refused(cfg: Path, tmp_path: Path, env: dict[str, str], broker: TlsBroker) -> tuple[int, str, str, int]:
    """`emotion-edge run` against a broker that will not have it: still alive after 8 s, then SIGTERM.

    Returns (exit code, stdout, stderr, connection attempts the broker saw while the daemon lived).
    """
    out, err = tmp_path / "daemon.out", tmp_path / "daemon.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_daemon", "--config", str(cfg), "run"], cwd=ROOT, stdout=o, stderr=e, env=env
        )
        try:
            time.sleep(8)
            alive = proc.poll() is None
            attempts = broker.connection_attempts()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stdout, stderr = out.read_text(), err.read_text()
    assert alive, f"the daemon exited (code {proc.returncode}) instead of retrying:\n{stderr}"
    return proc.returncode, stdout, stderr, attempts


def broker_problem_lines(stderr: str) -> list[str]:
    """Warnings and errors about the MQTT connection while the daemon ran (before SIGTERM; the shutdown may
    rightly warn that events stay in the outbox)."""
    running = stderr.split("SIGTERM received")[0]
    return [
        line
        for line in running.splitlines()
        if (" ERROR " in line or " WARNING " in line) and ("mqtt" in line.lower() or "broker" in line.lower())
    ]


# --------------------------------------------------------------------------- tests


def test_events_arrive_over_tls_with_the_password_from_the_environment(
    tmp_path: Path, tls_broker: TlsBroker, watcher: TlsSubscriber, pki: Pki, secret: Secrets
) -> None:
    cfg = tls_config(tmp_path, tls_broker.port, pki.ca)
    proc = replay_audio(cfg, tmp_path, daemon_env(password=secret.device_password))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    produced = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert produced, proc.stderr
    assert watcher.wait_for(lambda: len(watcher.payloads("/events")) >= len(produced), timeout=20), proc.stderr
    assert watcher.wait_for(lambda: watcher.payloads("/availability")[-1:] == ["stopped"], timeout=5)
    assert secret.device_password not in proc.stdout + proc.stderr


def test_events_arrive_over_tls_with_the_password_from_the_systemd_credential(
    tmp_path: Path, tls_broker: TlsBroker, watcher: TlsSubscriber, pki: Pki, secret: Secrets
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt_password").write_text(secret.device_password + "\n")  # as an editor leaves it
    cfg = tls_config(tmp_path, tls_broker.port, pki.ca)
    proc = replay_audio(cfg, tmp_path, daemon_env(credentials_dir=creds))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    produced = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert produced, proc.stderr
    assert watcher.wait_for(lambda: len(watcher.payloads("/events")) >= len(produced), timeout=20), proc.stderr
    assert secret.device_password not in proc.stdout + proc.stderr


def test_a_wrong_password_is_logged_once_and_retried_with_backoff_until_sigterm(
    tmp_path: Path, tls_broker: TlsBroker, watcher: TlsSubscriber, pki: Pki, secret: Secrets
) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    cfg = tls_config(tmp_path, tls_broker.port, pki.ca)
    code, stdout, stderr, attempts = run_refused(cfg, tmp_path, daemon_env(password=wrong), tls_broker)
    assert code == 0 and "Traceback" not in stderr, stderr
    assert 2 <= attempts <= 8, f"retried with back-off (1-2 s over 8 s), saw {attempts} attempts"
    problems = broker_problem_lines(stderr)
    assert len(problems) == 1, f"one line about the refusal, not one per retry:\n{stderr}"
    assert f"127.0.0.1:{tls_broker.port}" in problems[0] and "authori" in problems[0].lower(), problems[0]
    assert watcher.payloads("/events") == [], "a refused client published"
    assert wrong not in stdout + stderr and secret.device_password not in stdout + stderr


def test_an_untrusted_broker_certificate_is_logged_once_and_retried_with_backoff_until_sigterm(
    tmp_path: Path, tls_broker: TlsBroker, watcher: TlsSubscriber, pki: Pki, secret: Secrets
) -> None:
    cfg = tls_config(tmp_path, tls_broker.port, pki.other_ca)  # trusts a CA that did not sign the broker
    env = daemon_env(password=secret.device_password)
    code, stdout, stderr, attempts = run_refused(cfg, tmp_path, env, tls_broker)
    assert code == 0 and "Traceback" not in stderr, stderr
    assert 2 <= attempts <= 8, f"retried with back-off (1-2 s over 8 s), saw {attempts} attempts"
    problems = broker_problem_lines(stderr)
    assert len(problems) == 1, f"one clear line about the untrusted certificate, not one per retry:\n{stderr}"
    assert f"127.0.0.1:{tls_broker.port}" in problems[0] and "certificate" in problems[0].lower(), problems[0]
    assert watcher.payloads("/events") == [], "the daemon published to a broker it must not trust"
    assert secret.device_password not in stdout + stderr


def test_the_password_never_appears_in_daemon_output_even_at_debug_level(
    tmp_path: Path, tls_broker: TlsBroker, watcher: TlsSubscriber, pki: Pki, secret: Secrets
) -> None:
    cfg = tls_config(tmp_path, tls_broker.port, pki.ca)
    proc = cli(
        cfg, "--log-level", "debug", "replay", "--audio", str(CLIP_AUDIO), "--events-out", "-",
        "--state-dir", str(tmp_path / "state"), env=daemon_env(password=secret.device_password),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert watcher.wait_for(lambda: len(watcher.payloads("/events")) >= 1, timeout=20)
    assert secret.device_password not in proc.stdout + proc.stderr


def test_check_never_prints_the_password(tmp_path: Path, tls_broker: TlsBroker, pki: Pki, secret: Secrets) -> None:
    cfg = tls_config(tmp_path, tls_broker.port, pki.ca)
    # The wrong password contains the right one, so printing either would show up.
    for env in (daemon_env(password=secret.device_password), daemon_env(password=f"wrong-{secret.device_password}")):
        proc = cli(cfg, "--log-level", "debug", "check", env=env)
        assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr
        assert secret.device_password not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_check_logs_in_to_the_broker_as_the_daemon_would(
    tmp_path: Path, tls_broker: TlsBroker, pki: Pki, secret: Secrets
) -> None:
    """A broker that is reachable but would refuse the daemon is a problem `check` must name."""
    good = tls_config(tmp_path, tls_broker.port, pki.ca)
    (tmp_path / "other").mkdir()
    untrusted = tls_config(tmp_path / "other", tls_broker.port, pki.other_ca)
    cases = [
        (good, secret.device_password, None),
        (good, f"wrong-{secret.device_password}", "not authori"),
        (untrusted, secret.device_password, "certificate"),
    ]
    for cfg, password, needle in cases:
        proc = cli(cfg, "check", env=daemon_env(password=password))
        assert "Traceback" not in proc.stderr, proc.stderr
        mqtt_lines = [line for line in proc.stdout.splitlines() if line.startswith("mqtt:")]
        if needle is None:
            assert mqtt_lines == [], proc.stdout
        else:
            assert proc.returncode == 2 and len(mqtt_lines) == 1, proc.stdout
            assert f"127.0.0.1:{tls_broker.port}" in mqtt_lines[0] and needle in mqtt_lines[0].lower(), mqtt_lines
