"""The device page and HTTP API, served beside perception (never in it).

Why the standard library's `http.server` and no framework: the page needs a dozen routes, a cookie,
a form, JSON and one Server-Sent Events stream, and `http.server` does all of that; its import costs
about 1 MB of RSS against 10-20 MB for aiohttp or uvicorn+starlette, on a board whose whole budget is
150 MB, and it adds nothing to install or to keep up to date. Its one weakness for a device, a thread
per connection that waits for its own request, is replaced by `listener.py`: one thread reads every
request whole under a deadline (`web.request_timeout_s`) and only then hands it to a thread of its
own, so slow or idle clients cost a buffer each, never a thread, a slot for long, a frame or an event.
The daemon hands the server events through `on_event`/`on_state`, which only put a message on bounded
queues.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..config import Config
from ..control import NAMES as CONTROL_NAMES
from ..control import Controls
from ..history import HistoryReader
from ..labels import emoji_of
from ..throttle import Throttle
from ..tuning import Tuning
from .api import ApiRoutes, BadRequest
from .auth import USER, Auth, Session, client_of
from .feed import Feed
from .listener import Listener, Request
from .tls import web_tls_context

logger = logging.getLogger(__name__)

COOKIE = "emotion_edge_session"
HEALTH_EVERY_S = 2.0
HEALTH_PUSH_S = 10.0  # counters change all the time: pushed this often; a changed state at once
MAX_BODY = 16 * 1024  # the largest body the API takes is a login form or {"analysis": false}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json"}  # fmt: skip
PUBLIC_STATIC = {"style.css", "favicon.svg"}  # what the login page itself needs


def _static(name: str) -> bytes:
    return resources.files("edge_daemon.web").joinpath("static", name).read_bytes()


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Health:
    """Turns the daemon's snapshots into the health panel: each source's and the broker's state, and since when."""

    MAX_AGE_S = 1.0  # however many clients ask, the daemon is asked at most once a second

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot
        self._since: dict[str, tuple[str, str]] = {}  # name -> (state, since)
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self.last: dict[str, Any] = {}
        self._last_states: dict[str, str] = {}
        self._taken = -math.inf

    def read(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The current health (at most MAX_AGE_S old), and the states that matter for a push (sources, broker,
        switches). The snapshot counts the outbox, under the lock the fusion thread stores events with: a client
        asking in a loop must not turn into a loop on that lock."""
        with self._read_lock:
            if time.monotonic() - self._taken < self.MAX_AGE_S:
                return self.last, self._last_states
            snap, states = self._take()
            self._taken = time.monotonic()
            self._last_states = states
            return snap, states

    def _take(self) -> tuple[dict[str, Any], dict[str, str]]:
        snap = self._snapshot()
        states = {f"source:{n}": str(s["state"]) for n, s in snap["sources"].items()}
        states["broker"] = snap["broker"]["state"]
        states.update({f"control:{k}": str(v) for k, v in snap["controls"].items()})
        now = _now_iso()
        with self._lock:
            for name, state in states.items():
                old = self._since.get(name)
                if old is None or old[0] != state:
                    self._since[name] = (state, now if old is not None else snap["started"])
            for n, s in snap["sources"].items():
                s["since"] = self._since[f"source:{n}"][1]
            snap["broker"]["since"] = self._since["broker"][1]
            self.last = snap
        return snap, states


class WebServer:
    """`start()` listens in its own thread; `on_event`/`on_state` are called by the daemon and never block."""

    def __init__(
        self,
        config: Config,
        state_dir: Path,
        snapshot: Callable[[], dict[str, Any]],
        controls: Controls | None,
        history: HistoryReader | None,
        model_cards: dict[str, Path],
        host: str | None = None,
        port: int | None = None,
        tuning: Tuning | None = None,
    ) -> None:
        self.config = config
        web = config.web
        self.host, self.port = host or web.host, port if port is not None else web.port
        self.auth = Auth(state_dir, web.password_env, web.session_hours)
        self.feed = Feed()
        self.health = Health(snapshot)
        self.controls = controls
        self.tuning = tuning  # the fusion settings: shown always, set only where `controls` are (not in a replay)
        self.history = history
        self.model_cards = model_cards
        self.device_id = config.device_id
        self.trusted_proxies = tuple(ipaddress.ip_network(n) for n in web.trusted_proxies)
        # A proxy that does not pass the Host header on still serves a page whose Origin is web.public_url's
        self.public_netloc = urlsplit(web.public_url).netloc if web.public_url else None
        self.tls = web_tls_context(config)  # the same check as `emotion-edge check`
        self.scheme = "https" if self.tls else "http"
        self._stop = threading.Event()
        self.listener: Listener | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.state: dict[str, Any] | None = None
        self.last_event: dict[str, Any] | None = None
        self.bound = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for target, name in ((self._serve, "web"), (self._health_loop, "web-health")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        with self._lock:  # against a _serve that is binding just now
            self._stop.set()
            listener = self.listener
        self.feed.close()
        if listener is not None:
            listener.stop()
        for t in self._threads:
            t.join(timeout=2)

    def _serve(self) -> None:
        said = Throttle(600.0)
        while not self._stop.is_set():
            web = self.config.web
            try:
                listener = Listener(
                    (self.host, self.port),
                    self.tls,
                    web.max_connections,
                    web.request_timeout_s,
                    MAX_BODY,
                    self._serve_one,
                )
            except OSError as exc:
                if said.ready():
                    logger.error(
                        "web: cannot listen on %s:%d (%s); the device page is off until it can (trying every 30 s); "
                        "change web.port or free the port",
                        self.host, self.port, exc.strerror or exc,
                    )  # fmt: skip
                self._stop.wait(30)
                continue
            with self._lock:
                if self._stop.is_set():  # stop() came while binding
                    listener.stop()
                    return
                self.listener = listener
            self.port = listener.port
            self.bound.set()
            public = f"; given out as {web.public_url}" if web.public_url else ""
            logger.info("web: device page on %s://%s:%d/ (user %s%s)", self.scheme, self.host, self.port, USER, public)
            listener.run()
            return

    def _serve_one(self, sock: Any, client_address: tuple[Any, ...], request: Request) -> bool:
        """One whole request (the listener read it); True: keep the connection for the next one."""
        return not _Handler(request, sock, client_address, self).close_connection

    def _health_loop(self) -> None:
        last_push, pushed = 0.0, None
        while not self._stop.wait(HEALTH_EVERY_S):
            try:
                snap, states = self.health.read()
            except Exception:  # a snapshot that fails must not end the loop, nor the daemon
                logger.exception("web: health snapshot failed")
                continue
            now = time.monotonic()
            if states != pushed or now - last_push >= HEALTH_PUSH_S:
                last_push, pushed = now, states
                self.feed.publish("health", json.dumps(snap))

    # ------------------------------------------------------------------ from the daemon (fusion thread)

    def on_event(self, event: dict[str, Any]) -> None:
        self.last_event = event
        self.feed.publish("event", json.dumps(event, ensure_ascii=False))

    def on_state(self, state: dict[str, Any]) -> None:
        self.state = {**state, "emoji": emoji_of(state.get("emotion"))}
        self.feed.publish("state", json.dumps(self.state, ensure_ascii=False))

    def current_state(self) -> dict[str, Any]:
        ev = self.last_event
        last = None
        if ev is not None:
            mods = ev.get("modalities") or {}
            last = {
                "seq": ev.get("seq"),
                "window_start": ev["window_start"],
                "window_end": ev["window_end"],
                "emotion": ev["emotion"],
                "emoji": ev.get("emoji", emoji_of(ev["emotion"])),
                "confidence": ev["confidence"],
                "modalities": {
                    m: (None if s is None else {"label": s["label"], "confidence": s["confidence"]})
                    for m, s in mods.items()
                },
            }
        empty = {"emotion": None, "emoji": "", "confidence": None, "since": None, "seq": None}
        return {
            "state": self.state or empty,
            "last_event": last,
            "controls": self.controls.get() if self.controls else dict.fromkeys(CONTROL_NAMES, True),
            "settings": self.tuning.get() if self.tuning else None,
        }


class _Writer:
    """The handler's wfile: every write goes out whole (a socket's own send may write part of it)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def write(self, data: bytes) -> int:
        self.sent = True
        self._sock.sendall(data)
        return len(data)

    sent = False  # whether any byte of an answer went out: until then a failed handler can still answer 500

    def flush(self) -> None:
        pass


class _Handler(ApiRoutes, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "emotion-edge"

    def version_string(self) -> str:  # not the Python version: nothing a stranger needs to know
        return self.server_version

    server: WebServer

    def __init__(self, request: Request, sock: Any, client_address: tuple[Any, ...], web: WebServer) -> None:
        self._request = request
        super().__init__(sock, client_address, web)  # which handles the request

    # ------------------------------------------------------------------ plumbing

    @property
    def web(self) -> WebServer:
        return self.server

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self._request.raw)  # the whole request, read by the listener
        self.wfile = _Writer(self.request)  # type: ignore[assignment]

    def handle(self) -> None:
        self.close_connection = True
        try:
            self.handle_one_request()  # one request per call: the listener keeps the connection between them
        except OSError:
            raise  # the client went away (a reset, a timeout, a TLS error): nobody to answer
        except Exception:  # a bug of ours: the client gets a 500 rather than a closed connection, the log the trace
            logger.exception("web: error while serving %s %s", self.command, self.path)
            self.close_connection = True
            if not self.wfile.sent:  # type: ignore[attr-defined]
                self._headers_buffer = []  # a status line and headers begun but not sent must not go out before it
                self._send(500, {"error": "internal error; the device's log has the details"})

    def finish(self) -> None:
        pass

    def handle_expect_100(self) -> bool:
        return True  # the listener said "100 Continue" while it waited for the body

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        logger.debug("web: %s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("web: %s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed requests (the base class's own errors): plain JSON with our security headers.
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unreadable request line: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        self._send(code, {"error": message or HTTPStatus(code).phrase})

    def _headers(self, code: int, ctype: str, length: int | None, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on its own forms
        self.send_header("Referrer-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, code: int, body: Any, ctype: str = "application/json", extra: dict[str, str] | None = None) -> None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body, ensure_ascii=False).encode()
            ctype = "application/json"
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        self._headers(code, ctype, len(data), extra)
        if self.command != "HEAD":
            self.wfile.write(data)

    def _query(self) -> dict[str, str]:
        q = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        return {k: v[-1] for k, v in q.items()}

    def _route(self) -> str:
        return urlsplit(self.path).path

    def _client(self) -> str:
        """Who is asking, for login limits and logs: the peer, or the client a trusted reverse proxy names."""
        peer = self.client_address[0] if self.client_address else "?"
        if not self.web.trusted_proxies:
            return peer
        return client_of(peer, self.headers.get_all("X-Forwarded-For") or [], self.web.trusted_proxies)

    def _cookie(self) -> str | None:
        raw = self.headers.get("Cookie")
        if not raw:
            return None
        try:
            c = SimpleCookie(raw)
        except CookieError:
            return None
        return c[COOKIE].value if COOKIE in c else None

    def _body(self) -> bytes | None:
        """The body, which the listener read whole; None (answered) when it was refused unread."""
        if not self._request.body_read:
            self.close_connection = True
            self._send(413, {"error": f"request body too large (at most {MAX_BODY} bytes)"})
            return None
        return self.rfile.read()

    # ------------------------------------------------------------------ who is asking

    def _session(self) -> Session | None:
        return self.web.auth.session(self._cookie())

    def _authenticated(self) -> tuple[bool, Session | None]:
        """(ok, session); answers 401/429 itself when not ok."""
        s = self._session()
        if s is not None:
            return True, s
        auth = self.web.auth
        header = self.headers.get("Authorization")
        if header:
            wait = auth.limited(self._client())
            if wait:
                self._send(429, {"error": "too many failed logins; try again later"},
                           extra={"Retry-After": str(int(wait) + 1)})  # fmt: skip
                return False, None
            ok = auth.basic(header)
            if ok:
                return True, None
            auth.failed(self._client(), "HTTP Basic")
        extra = {} if self.headers.get("X-Requested-With") else {"WWW-Authenticate": 'Basic realm="emotion-edge"'}
        self._send(401, {"error": "authentication required: log in on the page, or use HTTP Basic (user admin)"},
                   extra=extra)  # fmt: skip
        return False, None

    def _same_origin(self) -> bool:
        """Cross-site request forgery: a browser names the page that sent a request; it must be this one (the Host it
        asked, or web.public_url). The host is compared, not the scheme: behind a reverse proxy that terminates TLS
        the page is https, the server not."""
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = self.headers.get("Origin")
        if origin is not None:
            try:
                netloc = urlsplit(origin).netloc
            except ValueError:
                return False
            return bool(netloc) and netloc in (self.headers.get("Host", ""), self.web.public_netloc)
        return True

    # ------------------------------------------------------------------ methods

    def do_HEAD(self) -> None:  # noqa: N802 - the base class's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        try:
            self._get()
        except BadRequest as exc:
            self._send(400, {"error": str(exc)})

    def _get(self) -> None:
        route = self._route()
        if route == "/api/health":
            return self._health()
        if route == "/login":
            return self._login_page(200, "")
        if route.startswith("/static/") and route[8:] in PUBLIC_STATIC:
            return self._static_file(route[8:])
        if route == "/favicon.ico":
            return self._static_file("favicon.svg")
        if route in ("/", "/index.html") and self._session() is None and not self.headers.get("Authorization"):
            return self._send(303, b"", "text/plain", extra={"Location": "/login"})
        ok, session = self._authenticated()
        if not ok:
            return None
        handler = {
            "/": lambda: self._static_file("index.html"),
            "/index.html": lambda: self._static_file("index.html"),
            "/api/session": lambda: self._session_info(session),
            "/api/state": lambda: self._send(200, self.web.current_state()),
            "/api/stats": self._stats,
            "/api/events": lambda: self._events(csv=False),
            "/api/events.csv": lambda: self._events(csv=True),
            "/api/history": self._hourly,
            "/api/models": self._models,
            "/api/openapi.json": lambda: self._static_file("openapi.json"),
            "/api/stream": self._stream,
        }.get(route)
        if handler is None and route.startswith("/static/"):
            name = route[8:]
            if name in ("app.js", "index.html"):
                return self._static_file(name)
        if handler is None:
            return self._send(404, {"error": f"no such page: {route}"})
        return handler()

    def do_POST(self) -> None:  # noqa: N802
        route = self._route()
        body = self._body()
        if body is None:
            return None
        if not self._same_origin():
            return self._send(403, {"error": "cross-site request refused"})
        if route == "/login":
            return self._login(body)
        if route == "/logout":
            self.web.auth.end_session(self._cookie())
            return self._send(
                303, b"", "text/plain", extra={"Location": "/login", "Set-Cookie": self._cookie_header("", 0)}
            )
        if route != "/api/controls":
            return self._send(404 if not route.startswith("/api/") else 405, {"error": f"cannot POST {route}"})
        ok, session = self._authenticated()
        if not ok:
            return None
        # A session cookie rides along on any request the browser makes; the token only this page can read proves
        # the request came from it. (HTTP Basic from a script has no ambient cookie to abuse.)
        if session is not None and self.headers.get("X-CSRF-Token") != session.csrf:
            return self._send(403, {"error": "missing or wrong X-CSRF-Token"})
        return self._set_controls(body)

    def do_PUT(self) -> None:  # noqa: N802
        self._send(405, {"error": "method not allowed"})

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT  # noqa: N815

    # ------------------------------------------------------------------ pages

    def _static_file(self, name: str) -> None:
        data = _static(name)
        ctype = STATIC_TYPES.get(Path(name).suffix, "application/octet-stream")
        self._send(200, data, ctype)

    def _login_page(self, code: int, message: str, extra: dict[str, str] | None = None) -> None:
        page = _static("login.html").decode().replace("{{message}}", message).replace("{{device}}", self.web.device_id)
        self._send(code, page, "text/html; charset=utf-8", extra)

    def _cookie_header(self, value: str, max_age: int) -> str:
        https = self.web.tls is not None or self.headers.get("X-Forwarded-Proto", "").lower() == "https"
        secure = "; Secure" if https else ""
        return f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"

    def _login(self, body: bytes) -> None:
        auth = self.web.auth
        wait = auth.limited(self._client())
        if wait:
            return self._login_page(429, f"Too many failed attempts. Try again in {int(wait) + 1} s.",
                                    {"Retry-After": str(int(wait) + 1)})  # fmt: skip
        form = parse_qs(body.decode("utf-8", "replace"))
        password = (form.get("password") or [""])[-1]
        if not password or not auth.check_password(password):
            auth.failed(self._client(), "login form")
            return self._login_page(401, "Wrong password.")
        s = auth.new_session()
        logger.info("web: login from %s", self._client())
        self._send(303, b"", "text/plain",
                   extra={"Location": "/", "Set-Cookie": self._cookie_header(s.token, int(auth.session_s))})  # fmt: skip

    def _session_info(self, session: Session | None) -> None:
        self._send(200, {"user": USER, "csrf": session.csrf if session else None, "device_id": self.web.device_id})
