"""The JSON API's endpoints: health, stats, state's history, models, the switches and the live stream.

They are mixed into the request handler (`server._Handler`), which gives them `web` (the server), `_send`,
`_headers` and `_query`; the handler keeps the HTTP plumbing, the ways in (sessions, Basic, CSRF) and the pages.
Every value a client sends is checked here and refused with a 400 that names it: no input reaches an exception
that is not one.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..control import NAMES as CONTROL_NAMES
from ..history import HistoryUnavailable, csv_lines, parse_time
from ..tuning import SETTINGS

if TYPE_CHECKING:
    from .server import WebServer

KEEPALIVE_S = 15.0  # a comment line on idle streams, so proxies and phones keep them open
MAX_JSON_DEPTH = 8  # the one JSON body is a flat object; a deeper one only costs recursion (16,000 deep crashed it)
MAX_EVENTS = 10_000
MAX_HOURS = 24 * 31


class BadRequest(ValueError):
    """A query or body value the API cannot take: answered with a 400 that names it."""


class ApiRoutes:
    """The endpoints under /api/ (the routing table is the handler's)."""

    # given by the handler (see the module's docstring)
    web: WebServer
    command: str
    close_connection: bool
    wfile: Any
    _send: Any
    _headers: Any
    _query: Any

    def _health(self) -> None:
        try:
            snap = self.web.health.last or self.web.health.read()[0]
        except Exception:  # noqa: BLE001 - health must answer, whatever went wrong
            return self._send(503, {"status": "error"})
        if snap.get("perception_ok"):
            return self._send(200, {"status": "ok"})
        return self._send(503, {"status": "stalled"})

    def _stats(self) -> None:
        snap, _ = self.web.health.read()
        listener = self.web.listener
        snap = {**snap, "web": {"stream_clients": self.web.feed.clients, "streams_cut_off": self.web.feed.cut_off,
                                "connections_refused": listener.refused if listener else 0,
                                "connections_timed_out": listener.timed_out if listener else 0,
                                "connections_evicted": listener.evicted if listener else 0}}  # fmt: skip
        self._send(200, snap)

    def _whole(self, name: str, default: int, lo: int, hi: int) -> int:
        text = self._query().get(name) or str(default)
        # ASCII digits only: str.isdigit() also takes "²", which int() then refuses
        if not (text.isascii() and text.isdigit() and len(text) <= 9 and lo <= int(text) <= hi):
            raise BadRequest(f"{name}: a whole number from {lo} to {hi}, got {text[:40]!r}")
        return int(text)

    def _time(self, name: str) -> float | None:
        text = self._query().get(name)
        try:
            return parse_time(text[:100], name) if text else None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    def _events(self, csv: bool) -> None:
        r = self._time("since"), self._time("until"), self._whole("limit", 1000, 1, MAX_EVENTS)
        try:
            rows = self.web.history.events(*r) if self.web.history else []
        except HistoryUnavailable as exc:
            return self._send(503, {"error": f"the history cannot be read now ({exc})"})
        if csv:
            return self._send(200, "".join(csv_lines(rows)), "text/csv; charset=utf-8",
                              {"Content-Disposition": 'attachment; filename="emotion-history.csv"'})  # fmt: skip
        return self._send(200, rows)

    def _hourly(self) -> None:
        hours = self._whole("hours", 24, 1, MAX_HOURS)
        now = time.time()
        start = (int(now // 3600) - hours + 1) * 3600  # whole hours, the current one last
        h = self.web.history
        try:
            hours_data = h.hourly(start, now + 3600) if h else []
        except HistoryUnavailable as exc:
            return self._send(503, {"error": f"the history cannot be read now ({exc})"})
        self._send(200, {
            "enabled": h is not None,
            "since": datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%dT%H:00Z"),
            "hours": hours_data,
        })  # fmt: skip

    def _models(self) -> None:
        snap = self.web.health.last or self.web.health.read()[0]
        out = {}
        for name, version in snap.get("models", {}).items():
            card_path = self.web.model_cards.get(name)
            try:
                card = card_path.read_text(encoding="utf-8") if card_path else ""
            except OSError:
                card = ""
            out[name] = {"version": version, "card": card}
        self._send(200, out)

    def _set_controls(self, body: bytes) -> None:
        try:
            if _json_depth(body) > MAX_JSON_DEPTH:
                raise ValueError(f"JSON nested more than {MAX_JSON_DEPTH} deep; expected an object such as "
                                 '{"analysis": false}')  # fmt: skip
            wanted = json.loads(body or b"null")
            if not isinstance(wanted, dict) or not wanted:
                raise ValueError('expected a JSON object such as {"analysis": false}')
            switches: dict[str, bool] = {}
            settings: dict[str, Any] = {}
            for k, v in wanted.items():
                if k in SETTINGS and self.web.tuning is not None:
                    settings[k] = self.web.tuning.check(k, v, source="web")  # all checked before any is applied
                elif k not in CONTROL_NAMES or not isinstance(v, bool):
                    raise ValueError(
                        f"{k!r}: one of {', '.join(CONTROL_NAMES)}, with true or false, or a setting "
                        f"({', '.join(SETTINGS)})"
                    )
                else:
                    switches[k] = v
        except ValueError as exc:  # JSONDecodeError and SettingError are ones
            return self._send(400, {"error": str(exc)})
        if self.web.controls is None:
            return self._send(409, {"error": "this run has no switches"})
        for k, v in switches.items():
            self.web.controls.set(k, v, source="web")
        if self.web.tuning is not None:
            for k, v in settings.items():
                self.web.tuning.set(k, v, source="web")
        return self._send(200, {"controls": self.web.controls.get(),
                                "settings": self.web.tuning.get() if self.web.tuning else None})  # fmt: skip

    def _stream(self) -> None:
        feed = self.web.feed
        client = feed.subscribe()
        self.close_connection = True
        try:
            self._headers(200, "text/event-stream; charset=utf-8", None, {"X-Accel-Buffering": "no"})
            if self.command == "HEAD":
                return
            self.wfile.write(b"retry: 2000\n\n")
            self.wfile.flush()
            while not client.overrun:
                try:
                    msg = client.queue.get(timeout=KEEPALIVE_S)
                except Exception:  # queue.Empty: nothing to say, keep the line open
                    msg = b": keepalive\n\n"
                if msg is None:
                    return
                self.wfile.write(msg)
                self.wfile.flush()
        except (OSError, ValueError):  # the client left, or stopped reading for listener.SOCKET_TIMEOUT_S
            return
        finally:
            feed.unsubscribe(client)


def _json_depth(data: bytes) -> int:
    """How deep brackets nest in a JSON text (strings skipped), counted without recursion; stops past the limit."""
    depth = deepest = 0
    in_string = escaped = False
    for b in data:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:  # quote
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    break
        elif b in (0x5D, 0x7D):
            depth -= 1
    return deepest
