"""Who may see the device page: one password, sessions, and a limit on guessing.

The password comes from `$EMOTION_EDGE_WEB_PASSWORD` (the name is `web.password_env`), else from the
systemd credential `web_password` (`$CREDENTIALS_DIRECTORY/web_password`), else the daemon makes a
random one on its first start, keeps only its scrypt hash in `state_dir/web_password.json` and logs
the password once. Candidates are compared by their scrypt hashes with a constant-time compare.
Sessions live in memory (a restart logs everyone out) and expire after `web.session_hours`.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..throttle import Throttle

logger = logging.getLogger(__name__)

USER = "admin"
HASH_FILE = "web_password.json"
CREDENTIAL = "web_password"
# scrypt cost: 8 MiB and about 0.2 s per guess on a loaded 2-core x86 (more on a Pi): slow for a guesser, fine for
# a login (sessions and a right Basic header are not hashed again). p=2 at n=2^13 costs the CPU of n=2^14 with half
# the memory; the memory goes back to the system after each hash (see _give_back_memory).
SCRYPT = {"n": 2**13, "r": 8, "p": 2}
FAILURES_PER_MINUTE = 5  # per client address (see client_of); then 429 until the minute has passed
# No limit across all addresses: it would let anyone lock the owner out. Guessing is slowed instead by hashing one
# candidate at a time (which also caps the CPU the page can take from perception at one core).
MAX_SESSIONS = 200
BASIC_CACHE = 32  # scripts that send HTTP Basic on every request: a right header is not hashed again


def scrypt_hash(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    try:
        return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)
    finally:
        _give_back_memory()


def _load_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None


_TRIM = _load_trim()


def _give_back_memory() -> None:
    """scrypt's buffer is freed into a malloc arena of the request's thread, where glibc keeps it (measured: +16 MB of
    RSS for good after the first login); malloc_trim returns it to the system."""
    if _TRIM is not None:
        _TRIM(0)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:10.0.0.2, as a dual-stack socket names an IPv4 peer
    return mapped or ip


def client_of(peer: str, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """The address a request comes from: the peer's, unless the peer is one of the `trusted` reverse proxies; then
    the X-Forwarded-For entries are read from the right (each proxy appends the address it was sent the request from)
    and the first one that is not a trusted proxy is the client. Entries further left were written by the client
    itself and may be forged, so they are never used; an unreadable entry stops at the last trusted hop."""
    current = _address(peer)
    if current is None:
        return peer
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    while hops and any(current in net for net in trusted):
        nearer = _address(hops.pop())
        if nearer is None:
            break
        current = nearer
    return str(current)


@dataclass
class Session:
    token: str
    csrf: str
    expires: float  # monotonic


class Auth:
    def __init__(self, state_dir: Path, password_env: str, session_hours: float) -> None:
        self.state_dir = Path(state_dir)
        self.session_s = session_hours * 3600.0
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, deque[float]] = {}
        self._hash_lock = threading.Lock()
        self._basic_ok: dict[str, float] = {}  # sha256 of a right Authorization header -> monotonic expiry
        self._limited_log = Throttle()
        self.source, self._salt, self._params, self._hash, self._plain = self._password(password_env)

    # ------------------------------------------------------------------ the password

    def _password(self, env: str) -> tuple[str, bytes, dict[str, int], bytes | None, str | None]:
        value = os.environ.get(env)
        if value:
            return f"${env}", secrets.token_bytes(16), SCRYPT, None, value
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir:
            cred = Path(cred_dir) / CREDENTIAL
            try:
                text = cred.read_text(encoding="utf-8").strip()
            except OSError:
                text = ""
            if text:  # the installer leaves an empty one: that means "generate"
                return f"credential {CREDENTIAL}", secrets.token_bytes(16), SCRYPT, None, text
        return ("generated",) + self._generated()  # type: ignore[return-value]

    def _generated(self) -> tuple[bytes, dict[str, int], bytes, None]:
        path = self.state_dir / HASH_FILE
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            params = {k: int(saved[k]) for k in ("n", "r", "p")}
            return bytes.fromhex(saved["salt"]), params, bytes.fromhex(saved["hash"]), None
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("web: %s is unreadable (%s): making a new password", path, exc)
        password = secrets.token_urlsafe(12)
        salt = secrets.token_bytes(16)
        digest = scrypt_hash(password, salt, **SCRYPT)
        record = {"salt": salt.hex(), "hash": digest.hex(), **SCRYPT}
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".web_password-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
            kept = f"only its hash is kept, in {path}"
        except OSError as exc:
            kept = f"it could not be saved ({exc.strerror}), so it changes at the next start"
        # The one time the password is shown (Frigate does the same); it is never logged again.
        logger.warning(
            "web page password for user %s: %s (generated on first start; %s). To choose your own, set $%s or "
            "the systemd credential %s, or delete that file for a new one",
            USER, password, kept, "EMOTION_EDGE_WEB_PASSWORD", CREDENTIAL,
        )  # fmt: skip
        return salt, SCRYPT, digest, None

    def check_password(self, candidate: str) -> bool:
        if len(candidate) > 1024:  # scrypt of a megabyte costs more than it should
            return False
        with self._hash_lock:
            if self._hash is None:  # from the environment or a credential: hashed once, at the first login
                assert self._plain is not None
                self._hash = scrypt_hash(self._plain, self._salt, **self._params)
                self._plain = None
            return hmac.compare_digest(scrypt_hash(candidate, self._salt, **self._params), self._hash)

    # ------------------------------------------------------------------ guessing

    def limited(self, client: str) -> float:
        """Seconds until `client` may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            mine = self._prune(self._failures.get(client), now)
            wait = 0.0
            if mine is not None and len(mine) >= FAILURES_PER_MINUTE:
                wait = mine[0] + 60 - now
        if wait > 0 and self._limited_log.ready():
            logger.warning("web: too many failed logins; refusing logins from %s for %.0f s", client, wait)
        return max(0.0, wait)

    def failed(self, client: str, how: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._failures.setdefault(client, deque()).append(now)
            if len(self._failures) > 10_000:  # forget the quiet ones first; bounded however many addresses try
                for key in [k for k, v in self._failures.items() if not self._prune(v, now)]:
                    del self._failures[key]
        logger.warning("web: failed login (%s) from %s", how, client)  # never the password tried

    @staticmethod
    def _prune(d: deque[float] | None, now: float) -> deque[float] | None:
        while d and d[0] < now - 60:
            d.popleft()
        return d

    # ------------------------------------------------------------------ sessions

    def new_session(self) -> Session:
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(24), time.monotonic() + self.session_s)
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions.values(), key=lambda x: x.expires)
                del self._sessions[oldest.token]
            self._sessions[s.token] = s
        return s

    def session(self, token: str | None) -> Session | None:
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            s = self._sessions.get(token)
            if s is not None and s.expires <= now:
                del self._sessions[token]
                s = None
        return s

    def end_session(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)

    def basic(self, header: str | None) -> bool | None:
        """None: no Basic credentials; else whether they are right."""
        if not header or not header[:6].lower() == "basic ":
            return None
        key = hashlib.sha256(header.encode("utf-8", "replace")).hexdigest()
        now = time.monotonic()
        with self._lock:
            if self._basic_ok.get(key, 0.0) > now:
                return True
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        ok = self.check_password(password) and hmac.compare_digest(user.encode("utf-8"), USER.encode())
        if ok:
            with self._lock:
                if len(self._basic_ok) >= BASIC_CACHE:
                    self._basic_ok.clear()
                self._basic_ok[key] = now + min(self.session_s, 3600.0)
        return ok
