"""The HTTP API of the device page against `emotion-edge run` (the clip as its camera, no sound card, a real
Mosquitto): every endpoint, the ways in and the ways refused, the password's sources, and hostile clients."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_daemon.devbroker import LocalBroker
from edge_daemon.web.auth import Auth
from edge_daemon.web.feed import PER_CLIENT, Feed

from .conftest import Subscriber, run_cli
from .webtools import (
    PASSWORD,
    Daemon,
    Trickler,
    admin,
    free_port,
    login,
    request,
    session_cookie,
    truncated_login,
    wait_until,
    web_config,
)

AUTHED_GETS = [
    "/",
    "/api/state",
    "/api/stats",
    "/api/events",
    "/api/events.csv",
    "/api/history",
    "/api/models",
    "/api/session",
    "/api/openapi.json",
    "/static/app.js",
]


class Live:
    def __init__(self, port: int, daemon: Daemon, state: Path, broker: LocalBroker) -> None:
        self.port, self.daemon, self.state, self.broker = port, daemon, state, broker


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("web")
    broker = LocalBroker()
    broker.start()
    port = free_port()
    cfg = web_config(tmp, port, broker.port)
    d = Daemon(tmp, ["--config", str(cfg), "run"])
    try:
        d.wait_for_page(port)
        wait_until(lambda: admin(port, "/api/events").json(), 60, "the first event in the history")
        yield Live(port, d, tmp / "state", broker)
    finally:
        log = d.stop()
        broker.stop()
    assert d.proc.returncode == 0 and "Traceback" not in log, log[-3000:]
    assert PASSWORD not in log, "the password reached the log"


# ---------------------------------------------------------------------------- ways in


def test_health_needs_no_login_and_says_ok_while_perception_runs(live: Live) -> None:
    r = request(live.port, "GET", "/api/health")
    assert r.status == 200 and r.json() == {"status": "ok"}


@pytest.mark.parametrize("path", AUTHED_GETS)
def test_every_other_endpoint_refuses_a_request_without_login(live: Live, path: str) -> None:
    r = request(live.port, "GET", path)
    if path == "/":
        assert r.status == 303 and r.headers["Location"] == "/login"  # a person is sent to the login form
    else:
        assert r.status == 401 and r.headers["WWW-Authenticate"] == 'Basic realm="emotion-edge"'
    assert b"happy" not in r.body and b"seq" not in r.body


@pytest.mark.parametrize("path", AUTHED_GETS)
def test_http_basic_with_the_password_opens_every_endpoint(live: Live, path: str) -> None:
    r = admin(live.port, path)
    assert r.status == 200, r.body[:300]


def test_wrong_basic_credentials_are_refused(live: Live) -> None:
    src = "127.0.0.3"  # a client address of its own: its failures must not lock out the other tests
    assert request(live.port, "GET", "/api/state", basic=("admin", "wrong"), source=src).status == 401
    assert request(live.port, "GET", "/api/state", basic=("root", PASSWORD), source=src).status == 401
    bad = {"Authorization": "Basic !!!notbase64"}
    assert request(live.port, "GET", "/api/state", headers=bad, source=src).status == 401


def test_the_login_form_sets_a_strict_http_only_session_cookie_that_logout_ends(live: Live) -> None:
    page = request(live.port, "GET", "/login")
    assert page.status == 200 and b'name="password"' in page.body
    r = login(live.port)
    assert r.status == 303 and r.headers["Location"] == "/"
    set_cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/" in set_cookie
    cookie = session_cookie(r)
    assert request(live.port, "GET", "/api/state", cookie=cookie).status == 200
    assert request(live.port, "GET", "/", cookie=cookie).status == 200
    out = request(live.port, "POST", "/logout", cookie=cookie)
    assert out.status == 303 and "Max-Age=0" in out.headers["Set-Cookie"]
    assert request(live.port, "GET", "/api/state", cookie=cookie).status == 401


def test_a_wrong_password_on_the_form_is_refused_and_sets_no_cookie(live: Live) -> None:
    r = login(live.port, "not it", source="127.0.0.4")
    assert r.status == 401 and "Set-Cookie" not in r.headers and b"Wrong password" in r.body
    assert request(live.port, "GET", "/api/state", cookie="emotion_edge_session=forged").status == 401


def test_failed_logins_are_rate_limited_per_address_and_logged_without_the_password(live: Live) -> None:
    src = "127.0.0.5"
    for i in range(5):
        assert login(live.port, f"guess-{i}-xyzzy", source=src).status == 401
    blocked = login(live.port, PASSWORD, source=src)  # even the right password, until the minute has passed
    assert blocked.status == 429 and int(blocked.headers["Retry-After"]) > 0
    assert request(live.port, "GET", "/api/state", basic=("admin", PASSWORD), source=src).status == 429
    assert login(live.port, source="127.0.0.6").status == 303  # another address is not locked out
    log = live.daemon.log
    assert "failed login (login form) from 127.0.0.5" in log
    assert "guess-" not in log and "xyzzy" not in log


def test_sessions_expire(tmp_path: Path) -> None:
    auth = Auth(tmp_path, "EMOTION_EDGE_TEST_UNSET_VARIABLE", session_hours=1)
    s = auth.new_session()
    assert auth.session(s.token) is s
    s.expires = time.monotonic() - 0.001  # an hour later
    assert auth.session(s.token) is None


# ---------------------------------------------------------------------------- headers and cross-site requests


@pytest.mark.parametrize("path", ["/login", "/api/health", "/api/state", "/nowhere", "/static/style.css"])
def test_every_response_carries_a_restrictive_content_security_policy(live: Live, path: str) -> None:
    r = admin(live.port, path)
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and r.headers["X-Content-Type-Options"] == "nosniff"


def test_the_pause_switch_needs_the_pages_csrf_token_and_refuses_other_sites(live: Live) -> None:
    cookie = session_cookie(login(live.port))
    csrf = request(live.port, "GET", "/api/session", cookie=cookie).json()["csrf"]
    body = json.dumps({"analysis": False})
    json_h = {"Content-Type": "application/json"}
    no_token = request(live.port, "POST", "/api/controls", cookie=cookie, body=body, headers=json_h)
    assert no_token.status == 403
    evil = {**json_h, "X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert request(live.port, "POST", "/api/controls", cookie=cookie, body=body, headers=evil).status == 403
    cross = {**json_h, "X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}
    assert request(live.port, "POST", "/api/controls", cookie=cookie, body=body, headers=cross).status == 403
    assert admin(live.port, "/api/state").json()["controls"]["analysis"] is True, "refused, yet applied"

    ok_h = {**json_h, "X-CSRF-Token": csrf, "Origin": f"http://127.0.0.1:{live.port}"}
    try:
        r = request(live.port, "POST", "/api/controls", cookie=cookie, body=body, headers=ok_h)
        assert r.status == 200 and r.json()["controls"]["analysis"] is False
        assert json.loads((live.state / "controls.json").read_text())["analysis"] is False  # the one shared switch
        assert admin(live.port, "/api/state").json()["controls"]["analysis"] is False
        # The daemon's log is another process's file: read until the line is there (it failed once in CI when read
        # the instant the answer came, not reproduced since).
        wait_until(lambda: "analysis switched off (from web)" in live.daemon.log, 10, "the switch in the log")
        wait_until(lambda: camera_state(live) == "paused", 30, "the camera released while switched off")
    finally:
        on = request(
            live.port, "POST", "/api/controls", cookie=cookie, body=json.dumps({"analysis": True}), headers=ok_h
        )
        assert on.status == 200 and on.json()["controls"]["analysis"] is True
    # switched on again, the camera comes back by itself (and the tests after this one see it online)
    wait_until(lambda: camera_state(live) == "online", 30, "the camera back online after the switch")


def camera_state(live: Live) -> str:
    sources = admin(live.port, "/api/stats").json()["sources"].values()
    return next(v["state"] for v in sources if v["kind"] == "camera")


def test_behind_a_tls_proxy_the_page_still_works_and_its_cookie_is_secure(live: Live) -> None:
    proxied = {"X-Forwarded-Proto": "https", "Origin": f"https://127.0.0.1:{live.port}"}
    r = request(live.port, "POST", "/login", body=f"password={PASSWORD.replace(' ', '+')}",
                headers={**proxied, "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status == 303 and "; Secure" in r.headers["Set-Cookie"]
    cookie = session_cookie(r)
    csrf = request(live.port, "GET", "/api/session", cookie=cookie).json()["csrf"]
    h = {**proxied, "X-CSRF-Token": csrf, "Content-Type": "application/json"}
    on = request(live.port, "POST", "/api/controls", cookie=cookie, headers=h, body='{"analysis": true}')
    assert on.status == 200  # the scheme differs from the server's own (http), the host is the same
    assert login(live.port).headers["Set-Cookie"].count("Secure") == 0  # plain HTTP, no proxy: not Secure


@pytest.mark.parametrize(
    "body", ["", "not json", "[]", "{}", '{"analysis": "off"}', '{"volume": true}', '{"analysis": 1}']
)
def test_the_pause_switch_refuses_what_is_not_a_known_switch_with_true_or_false(live: Live, body: str) -> None:
    r = admin(live.port, "/api/controls", method="POST", body=body, headers={"Content-Type": "application/json"})
    assert r.status == 400 and "error" in r.json()


# ---------------------------------------------------------------------------- what the API says


def test_state_shows_the_emotion_with_its_emoji_and_each_modality(live: Live) -> None:
    st = wait_until(lambda: admin(live.port, "/api/state").json()["last_event"], 30, "a window")
    assert st["emotion"] in ("happy", "angry", "surprise", "uncertain", "neutral", "sad", "fear", "disgust")
    assert st["emoji"] and st["modalities"]["speech"] is None  # no sound card here
    assert st["modalities"]["face"]["label"] and 0 <= st["modalities"]["face"]["confidence"] <= 1


def test_stats_report_health_sources_since_when_broker_and_models(live: Live) -> None:
    s = admin(live.port, "/api/stats").json()
    kinds = {v["kind"]: v for v in s["sources"].values()}
    assert kinds["camera"]["state"] == "online" and kinds["microphone"]["state"] == "offline"
    assert kinds["camera"]["since"].endswith("Z") and kinds["microphone"]["reason"]
    assert s["broker"]["state"] == "online"
    assert s["stats"]["inference_ms"]["face_detect"] > 0 and "drops" in s["stats"]
    assert s["stats"]["history"]["write_failed"] == 0
    # Written = committed by the history's own thread; reading the events asks it to commit what waits. Asked until
    # it shows (once in CI the first read saw 0, not reproduced since): at most a few seconds.
    wait_until(
        lambda: (
            admin(live.port, "/api/events").json()
            and admin(live.port, "/api/stats").json()["stats"]["history"]["written"] >= 1
        ),
        15,
        "events counted as written to the history",
    )
    assert set(s["models"]) == {"face_detector", "face_emotion", "speech_emotion"}
    cards = admin(live.port, "/api/models").json()
    assert all(m["version"] and "#" in m["card"] for m in cards.values())


def test_events_come_from_the_history_newest_last_and_filter_by_time(live: Live) -> None:
    wait_until(lambda: len(admin(live.port, "/api/events").json()) >= 3, 60, "three events")
    rows = admin(live.port, "/api/events").json()
    starts = [r["window_start"] for r in rows]
    assert starts == sorted(starts) and len(set(r["event_id"] for r in rows)) == len(rows)
    assert {"emotion", "emoji", "confidence", "face_label", "face_confidence", "speech_label"} <= set(rows[0])
    until = rows[-1]["window_end"]  # a fixed range: the daemon keeps adding events meanwhile
    assert admin(live.port, f"/api/events?limit=2&until={until}").json() == rows[-2:]  # the newest two, newest last
    mid = rows[1]["window_start"]
    after = admin(live.port, f"/api/events?since={mid}").json()
    assert after[0]["window_start"] == mid and all(r["window_start"] >= mid for r in after)
    before = admin(live.port, f"/api/events?until={mid}").json()
    assert all(r["window_start"] < mid for r in before) and before


@pytest.mark.parametrize(
    "query", ["since=yesterday", "until=2026-13-01", "limit=0", "limit=-1", "limit=abc", "limit=%C2%B2", "since=%00"]
)
def test_a_bad_query_is_a_400_that_names_the_parameter(live: Live, query: str) -> None:
    r = admin(live.port, f"/api/events?{query}")
    assert r.status == 400 and query.split("=")[0] in r.json()["error"]


@pytest.mark.parametrize(
    "hours",
    ["%C2%B2", "%EF%BC%91", "%D9%A3", "0", "745", "abc", "1.5", "-1", "9" * 30, "%F0%9F%98%80"],  # ², １, ٣, 😀
)
def test_a_bad_hours_value_is_a_400_that_names_it_and_no_traceback(live: Live, hours: str) -> None:
    r = admin(live.port, f"/api/history?hours={hours}")  # "²" passed str.isdigit() and crashed int()
    assert r.status == 400 and r.json()["error"].startswith("hours: a whole number from 1 to 744"), r.body
    assert "Traceback" not in live.daemon.log


@pytest.mark.parametrize(
    "body",
    ["[" * 16000, '{"analysis": ' * 1000 + "true" + "}" * 1000, "[" * 9 + "]" * 9, '{"analysis": [[[[[[[[[]]]]]]]]]}'],
)
def test_deeply_nested_json_is_a_400_and_no_traceback(live: Live, body: str) -> None:
    r = admin(live.port, "/api/controls", method="POST", body=body, headers={"Content-Type": "application/json"})
    assert r.status == 400 and "nested more than 8 deep" in r.json()["error"], r.body[:200]
    assert "Traceback" not in live.daemon.log
    assert admin(live.port, "/api/state").json()["controls"]["analysis"] is True


def test_events_csv_holds_the_same_rows_as_history_export(live: Live) -> None:
    rows = admin(live.port, "/api/events").json()
    until = rows[-1]["window_end"]  # a fixed range: the daemon keeps adding events meanwhile
    csv_api = admin(live.port, f"/api/events.csv?until={until}&limit=10000")
    assert csv_api.headers["Content-Type"].startswith("text/csv")
    exported = run_cli("history", "export", "--state-dir", str(live.state), "--until", until)
    assert exported.returncode == 0, exported.stderr
    assert csv_api.text == exported.stdout and exported.stdout.count("\n") >= 2


def test_hourly_history_counts_each_emotion_in_the_current_hour(live: Live) -> None:
    rows = admin(live.port, "/api/events?limit=10000").json()
    h = admin(live.port, "/api/history?hours=24").json()
    assert h["enabled"] is True and h["hours"], h
    total = sum(sum(x["counts"].values()) for x in h["hours"])
    assert total >= len([r for r in rows if r["window_start"] >= h["since"]])  # later ones may have landed too
    by_emotion: dict[str, int] = {}
    for r in rows:
        by_emotion[r["emotion"]] = by_emotion.get(r["emotion"], 0) + 1
    counted = {k: sum(x["counts"].get(k, 0) for x in h["hours"]) for k in by_emotion}
    assert all(counted[k] >= n for k, n in by_emotion.items()), (counted, by_emotion)
    assert admin(live.port, "/api/history?hours=168").json()["hours"]
    assert admin(live.port, "/api/history?hours=0").status == 400


def test_the_stream_sends_one_message_per_event_with_its_emoji(live: Live) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=20) as s:
        auth = admin_header()
        s.sendall(f"GET /api/stream HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        buf = b""
        deadline = time.monotonic() + 30
        while buf.count(b"event: event\n") < 2 and time.monotonic() < deadline:
            buf += s.recv(65536)
    head, _, stream = buf.partition(b"\r\n\r\n")
    assert b"200 OK" in head and b"text/event-stream" in head
    events = [json.loads(line[6:]) for line in stream.split(b"\n") if line.startswith(b"data: ") and b'"seq"' in line]
    events = [e for e in events if "event_id" in e]
    assert len(events) >= 2 and events[1]["seq"] == events[0]["seq"] + 1
    assert all(e["emoji"] and e["device_id"] == "livingroom" for e in events)


def admin_header() -> str:
    return "Authorization: Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode() + "\r\n"


def test_openapi_describes_every_api_route_the_server_answers(live: Live) -> None:
    spec = admin(live.port, "/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in ["/api/health", "/api/state", "/api/stats", "/api/events", "/api/events.csv", "/api/stream"]:
        assert path in spec["paths"], path
    for path, ops in spec["paths"].items():
        for method in ops:
            if path == "/api/stream":
                continue
            r = admin(live.port, path, method=method.upper(), body="{}" if method == "post" else None)
            assert r.status in (200, 400), (path, method, r.status)


# ---------------------------------------------------------------------------- hostile clients


def test_idle_connections_slowloris_and_stuck_streams_do_not_delay_events(live: Live) -> None:
    sub = Subscriber(live.broker.port, "emotion-edge/livingroom/events")
    socks: list[socket.socket] = []
    try:
        for _ in range(20):  # stream clients that never read a byte
            s = socket.create_connection(("127.0.0.1", live.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            s.sendall(f"GET /api/stream HTTP/1.1\r\nHost: x\r\n{admin_header()}\r\n".encode())
            socks.append(s)
        for _ in range(30):  # idle connections and a slowloris: half a request line, then nothing
            s = socket.create_connection(("127.0.0.1", live.port))
            s.sendall(b"GET /api/sta")
            socks.append(s)
        stop = threading.Event()

        def flood() -> None:  # one client that asks as fast as it can
            while not stop.is_set():
                try:
                    admin(live.port, "/api/stats", timeout=5)
                except OSError:
                    pass

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        arrivals: list[float] = []
        n0 = len(sub.events())
        deadline = time.monotonic() + 14
        while time.monotonic() < deadline:
            n = len(sub.events())
            arrivals += [time.monotonic()] * (n - n0)
            n0 = n
            time.sleep(0.05)
        stop.set()
        flooder.join(10)
        # A window closes every 2 s; under attack they must keep doing so.
        assert len(arrivals) >= 5, f"only {len(arrivals)} events in 14 s"
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        assert max(gaps) < 4.5, gaps
        assert request(live.port, "GET", "/api/health").status == 200  # and the page still answers newcomers
    finally:
        for s in socks:
            s.close()
        sub.close()


def test_a_slowloris_trickling_its_headers_is_cut_off_at_the_header_deadline(live: Live) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\n")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 25:
            try:
                s.sendall(b"X-a: b\r\n")  # a header line every second: each read succeeds, the request never ends
                s.settimeout(1.0)
                closed = s.recv(1024) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
            if closed:
                break
        elapsed = time.monotonic() - t0
    assert closed and 9 <= elapsed <= 16, elapsed  # the 10 s deadline, checked every 2 s
    assert admin(live.port, "/api/stats").json()["web"]["connections_timed_out"] >= 1


def test_connections_beyond_the_limit_are_refused_and_the_page_recovers(tmp_path: Path) -> None:
    port = free_port()
    cfg = web_config(tmp_path, port, web={"max_connections": 4}, history={"enabled": False})
    d = Daemon(tmp_path, ["--config", str(cfg), "run"])
    socks = []
    try:
        d.wait_for_page(port)
        for _ in range(4):  # live streams: connections being served, which nobody may take over
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(f"GET /api/stream HTTP/1.1\r\nHost: x\r\n{admin_header()}\r\n".encode())
            assert s.recv(1024).startswith(b"HTTP/1.1 200")
            socks.append(s)
        wait_until(lambda: request_refused(port), 10, "a connection over the limit to be refused")
        for s in socks:
            s.close()
        wait_until(lambda: request(port, "GET", "/login").status == 200, 15, "the page to answer again")
        # the streams' handlers notice their clients left at their next write: until then a slot may still be taken
        stats = wait_until(lambda: (r := admin(port, "/api/stats")).status == 200 and r.json(), 15, "the stats")
        assert stats["web"]["connections_refused"] >= 1
    finally:
        for s in socks:
            s.close()
        d.stop()
    assert d.proc.returncode == 0


def request_refused(port: int) -> bool:
    # /login answers 200 whenever a connection is served; /api/health could say 503 for a perception still starting
    try:
        return request(port, "GET", "/login", timeout=3).status == 503
    except (OSError, http.client.HTTPException):  # or closed before it could say so
        return True


def test_a_stream_client_that_never_reads_is_cut_off_without_blocking_the_publisher() -> None:
    feed = Feed()
    stuck, reader = feed.subscribe(), feed.subscribe()
    t0 = time.monotonic()
    for i in range(PER_CLIENT + 10):
        feed.publish("event", json.dumps({"seq": i}))
        reader.queue.get_nowait()  # this one keeps up
    assert time.monotonic() - t0 < 1.0
    assert stuck.overrun and feed.clients == 1 and feed.cut_off == 1


# ---------------------------------------------------------------------------- slow, truncated and proxied requests

DEADLINE_S = 2.0
PROXY = "127.0.0.2"  # the reverse proxy the `guarded` daemon trusts (and 10.0.0.0/8 behind it)
PUBLIC_URL = "https://emotion.example.org/"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A daemon with few connections, a short request deadline and a trusted reverse proxy (no camera: the tests
    here ask /login, which answers whenever a connection is served)."""
    tmp = tmp_path_factory.mktemp("guarded")
    port = free_port()
    web = {"max_connections": 4, "request_timeout_s": DEADLINE_S, "trusted_proxies": [PROXY, "10.0.0.0/8"],
           "public_url": PUBLIC_URL}  # fmt: skip
    cfg = web_config(tmp, port, camera={"enabled": False}, microphone={"enabled": False}, web=web)
    d = Daemon(tmp, ["--config", str(cfg), "run"])
    try:
        d.wait_for_page(port)
        yield Live(port, d, tmp / "state", None)  # type: ignore[arg-type]
    finally:
        log = d.stop()
    assert d.proc.returncode == 0 and "Traceback" not in log, log[-3000:]


def test_a_body_trickled_byte_by_byte_is_cut_off_at_the_request_deadline(guarded: Live) -> None:
    slow = [Trickler(guarded.port, every_s=0.5) for _ in range(3)]  # fewer than the slots: only the deadline ends them
    for t in slow:
        t.start()
    for t in slow:
        t.join(30)
    for t in slow:  # each read succeeded within 0.5 s: a socket timeout alone never fires
        assert t.closed_after is not None and DEADLINE_S - 0.1 <= t.closed_after <= DEADLINE_S + 1.5, t.closed_after
        assert t.reply.startswith(b"HTTP/1.1 408 "), t.reply[:100]
    assert admin(guarded.port, "/api/stats").json()["web"]["connections_timed_out"] >= 3


def test_more_slow_clients_than_connection_slots_do_not_keep_health_checks_out(guarded: Live) -> None:
    slow = [Trickler(guarded.port, every_s=0.5, source="127.0.0.8") for _ in range(8)]  # twice the slots
    for t in slow:
        t.start()
    try:
        time.sleep(0.3)
        answers = []
        for _ in range(15):  # over about the deadline, while the slow ones keep trickling and reconnecting
            answers.append(request(guarded.port, "GET", "/login", timeout=5).status)
            slow.append(Trickler(guarded.port, every_s=0.5, source="127.0.0.8"))
            slow[-1].start()
            time.sleep(0.1)
        assert answers == [200] * 15, answers  # was 503 for as long as the slow clients stayed
    finally:
        for t in slow:
            t.join(30)
    assert all(t.closed_after is not None and t.closed_after <= DEADLINE_S + 1.5 for t in slow)


def test_when_the_waiting_room_is_full_the_longest_waiting_make_room(guarded: Live) -> None:
    from edge_daemon.web.listener import MAX_WAITING

    idle = []
    try:
        for _ in range(MAX_WAITING + 20):  # connections that never send a byte
            idle.append(socket.create_connection(("127.0.0.1", guarded.port), timeout=5))
        assert request(guarded.port, "GET", "/login", timeout=5).status == 200
        evicted = admin(guarded.port, "/api/stats").json()["web"]["connections_evicted"]
        assert evicted >= 20, evicted
        idle[0].settimeout(1)
        assert idle[0].recv(10) == b""  # the oldest was closed
    finally:
        for s in idle:
            s.close()


def test_slow_and_truncated_login_bodies_are_not_failed_logins(guarded: Live) -> None:
    src = "127.0.0.9"
    slow = [Trickler(guarded.port, every_s=0.3, source=src) for _ in range(3)]
    for t in slow:
        t.start()
    for _ in range(6):  # more than the 5 failures a minute that lock an address out
        truncated_login(guarded.port, source=src)
    for t in slow:
        t.join(30)
    r = login(guarded.port, source=src)
    assert r.status == 303, (r.status, r.body[:200])  # the owner on that address is not locked out
    assert "failed login (login form) from 127.0.0.9" not in guarded.daemon.log


def test_behind_a_trusted_proxy_each_client_has_its_own_login_limit(guarded: Live) -> None:
    def via_proxy(forwarded_for: str, password: str) -> int:
        return request(guarded.port, "POST", "/login", source=PROXY, body=f"password={password.replace(' ', '+')}",
                       headers={"Content-Type": "application/x-www-form-urlencoded",
                                "X-Forwarded-For": forwarded_for}).status  # fmt: skip

    for i in range(5):
        assert via_proxy("203.0.113.7", f"guess-{i}") == 401
    assert via_proxy("203.0.113.7", PASSWORD) == 429  # the guesser is locked out
    assert via_proxy("203.0.113.8", PASSWORD) == 303  # the owner, through the same proxy, is not
    # What the client itself wrote in front of the proxy's entry is not believed; trusted hops are skipped.
    assert via_proxy("203.0.113.8, 203.0.113.7", PASSWORD) == 429
    assert via_proxy("203.0.113.7, 10.1.2.3", PASSWORD) == 429
    assert login(guarded.port, source="127.0.0.10").status == 303  # and direct clients keep their own counters
    assert "failed login (login form) from 203.0.113.7" in guarded.daemon.log


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(guarded: Live) -> None:
    src = "127.0.0.11"

    def forged(forwarded_for: str, password: str) -> int:
        return request(guarded.port, "POST", "/login", source=src, body=f"password={password.replace(' ', '+')}",
                       headers={"Content-Type": "application/x-www-form-urlencoded",
                                "X-Forwarded-For": forwarded_for}).status  # fmt: skip

    for i in range(5):
        assert forged(f"198.51.100.{i}", f"guess-{i}") == 401  # a new address each time, it hopes
    assert forged("198.51.100.99", PASSWORD) == 429  # no: the peer is the client, and it is locked out
    assert "failed login (login form) from 127.0.0.11" in guarded.daemon.log


def test_the_page_at_its_public_url_may_switch_even_when_the_proxy_rewrites_host(guarded: Live) -> None:
    cookie = session_cookie(login(guarded.port, source="127.0.0.12"))
    csrf = request(guarded.port, "GET", "/api/session", cookie=cookie).json()["csrf"]

    def switch(origin: str) -> int:  # as nginx sends it by default: Host is the upstream's own address
        h = {"Origin": origin, "X-CSRF-Token": csrf, "Content-Type": "application/json", "X-Forwarded-For": "192.0.2.1"}
        return request(guarded.port, "POST", "/api/controls", cookie=cookie, headers=h, body='{"analysis": true}',
                       source=PROXY).status  # fmt: skip

    assert switch("https://emotion.example.org") == 200
    assert switch("https://evil.example") == 403


@pytest.mark.parametrize(
    "value, needle",
    [
        ("[10.0.0.300]", "must be an IP address or network such as 10.0.0.0/8, got '10.0.0.300'"),
        ("[192.168.1.10/24]", "has host bits set; did you mean 192.168.1.0/24?"),
        ("127.0.0.1", "must be a list"),
        ("[[127.0.0.1]]", "each entry must be a single text value"),
    ],
)
def test_a_bad_trusted_proxy_is_one_line_naming_the_field(tmp_path: Path, value: str, needle: str) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"web:\n  trusted_proxies: {value}\n")
    r = run_cli("--config", str(cfg), "check", timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{cfg}:2: web.trusted_proxies" in r.stderr and needle in r.stderr, r.stderr


@pytest.mark.parametrize("content", [b"", b"not a certificate\n", b"\x00\x01binary"])
def test_web_tls_files_that_are_not_pem_are_one_user_error_naming_the_setting(tmp_path: Path, content: bytes) -> None:
    from edge_daemon.config import load_config
    from edge_daemon.errors import UserError
    from edge_daemon.web.tls import web_tls_context

    from .conftest import write_config

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(content)
    key.write_bytes(content)
    tls = {"cert_file": str(cert), "key_file": str(key)}
    config = load_config(write_config(tmp_path / "c.yaml", web={"enabled": True, "tls": tls}))
    with pytest.raises(UserError, match=rf"^web.tls: cannot load the certificate {cert} with key {key} \(.*PEM"):
        web_tls_context(config)
    assert web_tls_context(load_config(write_config(tmp_path / "plain.yaml", web={"enabled": True}))) is None


@pytest.mark.parametrize(
    "value", ["emotion.example.org", "ftp://emotion.example.org/", "https://example.org/emotion/", "https://:80/"]
)
def test_a_public_url_that_cannot_be_the_pages_address_is_refused(tmp_path: Path, value: str) -> None:
    from edge_daemon.config import load_config
    from edge_daemon.errors import UserError

    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"web:\n  public_url: {value}\n")
    with pytest.raises(UserError, match=r"config.yaml:2: web.public_url: must be"):
        load_config(cfg)


def test_the_public_url_is_the_address_home_assistant_is_given(tmp_path: Path) -> None:
    from edge_daemon.config import load_config
    from edge_daemon.daemon import Daemon as DaemonObject
    from edge_daemon.homeassistant import discovery_payload

    from .conftest import write_config

    proxied = load_config(write_config(tmp_path / "c.yaml", web={"enabled": True, "public_url": "https://emo.example"}))
    assert proxied.web.public_base_url() == "https://emo.example/"
    daemon = DaemonObject(proxied, broker=("127.0.0.1", 1))  # not started: nothing listens or connects
    try:
        assert discovery_payload(proxied, daemon.session.configuration_url)["device"]["configuration_url"] == (
            "https://emo.example/"
        )
    finally:
        daemon.outbox.close()
    plain = load_config(write_config(tmp_path / "p.yaml", web={"enabled": True, "host": "192.0.2.5", "port": 8080}))
    assert plain.web.public_base_url() == "http://192.0.2.5:8080/"  # unset: built from host and port, as before


# ---------------------------------------------------------------------------- where the password comes from


def _start(tmp_path: Path, env: dict[str, Any]) -> tuple[Daemon, int]:
    port = free_port()
    cfg = web_config(tmp_path, port, camera={"enabled": False}, microphone={"enabled": False})
    d = Daemon(tmp_path, ["--config", str(cfg), "run"], env=env)
    d.wait_for_page(port)
    return d, port


def test_without_a_password_one_is_generated_logged_once_and_only_its_hash_kept(tmp_path: Path) -> None:
    d, port = _start(tmp_path, {"EMOTION_EDGE_WEB_PASSWORD": None, "CREDENTIALS_DIRECTORY": None})
    try:
        line = wait_until(lambda: [x for x in d.log.splitlines() if "web page password for user admin: " in x], 20,
                          "the generated password in the log")[0]  # fmt: skip
        password = line.split("admin: ", 1)[1].split(" ", 1)[0]
        assert "EMOTION_EDGE_WEB_PASSWORD" in line and "web_password" in line  # how to change it
        saved = (tmp_path / "state" / "web_password.json").read_text()
        assert password not in saved and json.loads(saved)["hash"]
        assert oct((tmp_path / "state" / "web_password.json").stat().st_mode & 0o777) == "0o600"
        assert login(port, password).status == 303
    finally:
        first = d.stop()
    assert first.count(password) == 1
    d2, port2 = _start(tmp_path, {"EMOTION_EDGE_WEB_PASSWORD": None, "CREDENTIALS_DIRECTORY": None})
    try:
        assert login(port2, password).status == 303  # the same password after a restart
    finally:
        again = d2.stop()
    assert password not in again and "web page password" not in again


def test_the_systemd_credential_web_password_is_used(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "web_password").write_text("from-the-credential\n")
    d, port = _start(tmp_path, {"EMOTION_EDGE_WEB_PASSWORD": None, "CREDENTIALS_DIRECTORY": str(creds)})
    try:
        assert login(port, "from-the-credential").status == 303
        assert login(port, PASSWORD, source="127.0.0.7").status == 401
    finally:
        log = d.stop()
    assert "from-the-credential" not in log and not (tmp_path / "state" / "web_password.json").exists()


def test_a_port_in_use_leaves_the_page_off_with_one_clear_line_and_the_daemon_running(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = web_config(tmp_path, port, camera={"enabled": False}, microphone={"enabled": False})
        d = Daemon(tmp_path, ["--config", str(cfg), "run"])
        try:
            wait_until(lambda: "web: cannot listen on" in d.log, 30, "the line about the port")
            assert d.proc.poll() is None
        finally:
            log = d.stop()
    assert d.proc.returncode == 0 and log.count("web: cannot listen on") == 1 and "web.port" in log


def test_unreadable_tls_files_are_one_line_and_exit_code_2(tmp_path: Path) -> None:
    cfg = web_config(tmp_path, free_port(), web={"tls": {"cert_file": "missing.pem", "key_file": "missing.key"}})
    r = run_cli("--config", str(cfg), "run", timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "web.tls" in r.stderr and "missing.pem" in r.stderr


# ---------------------------------------------------------------------------- fuzzing from the OpenAPI description

SPEC = json.loads((Path(__file__).resolve().parents[1] / "edge_daemon/web/static/openapi.json").read_text())
OPERATIONS = [(p, m, op) for p, ops in SPEC["paths"].items() for m, op in ops.items() if p != "/api/stream"]


def _param_values(schema: dict[str, Any]) -> Any:
    from hypothesis import strategies as st

    junk = st.text(max_size=40)
    if schema.get("type") == "integer":
        lo, hi = schema.get("minimum", -(10**6)), schema.get("maximum", 10**6)
        return st.one_of(st.integers(lo, hi).map(str), st.integers(-(10**12), 10**12).map(str), junk)
    if schema.get("format") == "date-time":
        from datetime import datetime, timezone

        dates = st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=st.just(timezone.utc))
        return st.one_of(dates.map(lambda d: d.isoformat().replace("+00:00", "Z")), junk)
    return junk


def test_the_api_fuzzed_from_its_openapi_description_never_errors(live: Live) -> None:
    from urllib.parse import quote, urlencode

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @st.composite
    def requests(draw: Any) -> tuple[str, str, dict[str, str], bytes | None, set[int]]:
        path, method, op = draw(st.sampled_from(OPERATIONS))
        query = {}
        for p in op.get("parameters", []):
            if draw(st.booleans()):
                query[p["name"]] = draw(_param_values(p["schema"]))
        if draw(st.integers(0, 4)) == 0:
            query[draw(st.text(min_size=1, max_size=10))] = draw(st.text(max_size=20))
        url = path + ("?" + urlencode(query, quote_via=quote) if query else "")
        auth = draw(st.sampled_from(["basic", "basic", "basic", "none", "cookie-junk"]))
        headers: dict[str, str] = {}
        if auth == "basic":
            headers["Authorization"] = admin_header().split(": ", 1)[1].strip()
        elif auth == "cookie-junk":
            headers["Cookie"] = draw(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
        body = None
        if method == "post":
            body = draw(st.one_of(st.binary(max_size=200), st.dictionaries(
                st.sampled_from(["analysis", "camera", "microphone", "x"]),
                st.one_of(st.booleans(), st.integers(), st.text(max_size=5), st.none()), max_size=3,
            ).map(lambda d: json.dumps(d).encode())))  # fmt: skip
            headers["Content-Type"] = "application/json"
        allowed = {int(code) for code in op["responses"]} | {401, 429}
        return method.upper(), url, headers, body, allowed

    seen: set[int] = set()

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(requests())
    def check(req: tuple[str, str, dict[str, str], bytes | None, set[int]]) -> None:
        method, url, headers, body, allowed = req
        r = request(live.port, method, url, headers=headers, body=body)
        seen.add(r.status)
        assert r.status < 500 and r.status in allowed, (method, url, r.status, r.body[:200])
        if method == "POST" and r.status == 200:  # switched something: switch it back for the other tests
            request(live.port, "POST", "/api/controls", headers={**headers, "Content-Type": "application/json"},
                    body=json.dumps(dict.fromkeys(("analysis", "camera", "microphone"), True)).encode())  # fmt: skip

    check()
    assert {200, 400, 401} <= seen, seen
    assert request(live.port, "GET", "/api/health").json() == {"status": "ok"}  # nothing crashed


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        b"GET /api/state HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 200 + b"\r\n",
        b"POST /api/controls HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET /api/events?since=%ff%fe HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + b"A" * 5000 + b"\r\n\r\n",
        b"GET /static/../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_malformed_requests_get_a_4xx_and_the_server_goes_on(live: Live, raw: bytes) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as s:
        s.sendall(raw)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
    assert 400 <= status < 500, reply[:300]
    assert b"passwd" not in reply and b"root:" not in reply
    assert request(live.port, "GET", "/api/health").status == 200


def test_https_with_the_configured_certificate_serves_the_page_with_a_secure_cookie(tmp_path: Path) -> None:
    import ssl

    from .test_tls import make_ca, make_server_cert

    ca_crt, ca_key = make_ca(tmp_path / "pki", "web-ca")
    crt, key = make_server_cert(tmp_path / "pki", ca_crt, ca_key)
    port = free_port()
    cfg = web_config(tmp_path, port, camera={"enabled": False}, microphone={"enabled": False},
                     web={"tls": {"cert_file": str(crt), "key_file": str(key)}})  # fmt: skip
    d = Daemon(tmp_path, ["--config", str(cfg), "run"])
    ctx = ssl.create_default_context(cafile=str(ca_crt))
    try:

        def https(method: str, path: str, **kw: Any) -> http.client.HTTPResponse:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
            conn.request(method, path, **kw)
            r = conn.getresponse()
            r.read()
            conn.close()
            return r

        def up() -> bool:
            assert d.proc.poll() is None, d.log
            try:
                return https("GET", "/api/health").status == 200
            except OSError:
                return False

        wait_until(up, 60, "the page over HTTPS")
        r = https("POST", "/login", body=f"password={PASSWORD.replace(' ', '+')}",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert r.status == 303 and "; Secure" in r.headers["Set-Cookie"] and "HttpOnly" in r.headers["Set-Cookie"]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:  # plain HTTP on the TLS port
            plain.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                reply = plain.recv(4096)
            except ConnectionResetError:  # the handshake failed and the server hung up: as it should
                reply = b""
            assert b"200 OK" not in reply
        assert https("GET", "/api/health").status == 200  # and it goes on serving
    finally:
        d.stop()
    assert d.proc.returncode == 0 and "Traceback" not in d.log


def test_a_large_max_connections_raises_the_open_file_limit_it_needs() -> None:
    """256 waiting connections plus web.max_connections (up to 1000) would pass a service's default 1024 open
    files: the listener raises the soft limit instead of failing to accept (or to open the outbox) under load."""
    import subprocess
    import sys

    code = (
        "import resource\n"
        "from edge_daemon.web.listener import Listener, MAX_WAITING, OWN_DESCRIPTORS\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))\n"
        "Listener(('127.0.0.1', 0), None, 1000, 10.0, 1024, lambda *a: False)\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= MAX_WAITING + 1000 + OWN_DESCRIPTORS)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr[-1500:]


def test_a_failing_handler_answers_500_and_logs_the_trace(caplog: pytest.LogCaptureFixture) -> None:
    """A bug in a route (here: a page whose parts are missing) answers 500 in JSON and closes, rather than
    dropping the connection with no answer; the trace goes to the device's log, not to the client."""
    from edge_daemon.web.listener import Request
    from edge_daemon.web.server import _Handler

    class Broken:  # no device_id, no auth, nothing: every route that touches a part fails as a bug would
        pass

    ours, theirs = socket.socketpair()
    with ours, theirs:
        handler = _Handler(Request(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n"), ours, ("127.0.0.1", 1), Broken())
        ours.shutdown(socket.SHUT_WR)
        answer = b"".join(iter(lambda: theirs.recv(65536), b"")).decode()
    assert answer.startswith("HTTP/1.1 500 ") and handler.close_connection
    body = json.loads(answer.split("\r\n\r\n", 1)[1])
    assert "log" in body["error"] and "Traceback" not in answer and "AttributeError" not in answer
    assert any("error while serving GET /login" in r.getMessage() and r.exc_info for r in caplog.records)
