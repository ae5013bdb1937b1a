"""The device page in a real browser (Debian's chromium, headless, driven by Selenium) against `emotion-edge run`
with a video file as its camera and a real Mosquitto: login, live events, timeline, history, health, pause, and what
the page says to explain itself (this window and the settled state, units, axes, tooltips, friendly device errors,
model cards rendered safely)."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from edge_daemon.labels import CANONICAL, UNCERTAIN

from .conftest import CLIP_VIDEO, MODELS
from .webtools import PASSWORD, Daemon, free_port, wait_until, web_config

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HM, HMS = r"\d\d?:\d\d(?: [AP]M)?", r"\d\d?:\d\d:\d\d(?: [AP]M)?"  # clock times in the browser's locale (12 or 24 h)


def chromium(profile: Path) -> webdriver.Chrome:
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), "scripts/test.sh installs chromium, chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1500",
    ):  # fmt: skip
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see Content-Security-Policy violations
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    driver = chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


def short_clip(path: Path, seconds: float = 4.0) -> Path:
    """The first seconds of the fixture, as a file the test can take away from the 'camera'."""
    cap = cv2.VideoCapture(str(CLIP_VIDEO))
    fps = cap.get(cv2.CAP_PROP_FPS) or 15
    ok, frame = cap.read()
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
    for _ in range(int(seconds * fps)):
        if not ok:
            break
        out.write(frame)
        ok, frame = cap.read()
    out.release()
    cap.release()
    return path


def text(driver: webdriver.Chrome, id_: str) -> str:
    """An element's text as the page holds it (not `.text`: CSS capitalises), read in one step: the page redraws
    its panels as messages arrive, and an element found first and read later may be gone by then."""
    return driver.execute_script("const e = document.getElementById(arguments[0]); return e ? e.textContent : ''",
                                 id_).strip()  # fmt: skip


def windows(driver: webdriver.Chrome) -> int:
    return int(driver.execute_script("return document.querySelectorAll('#timeline rect.window').length"))


def test_the_page_needs_the_password_then_shows_events_timeline_history_and_health_live(
    tmp_path: Path, broker: Any, browser: webdriver.Chrome
) -> None:
    camera = short_clip(tmp_path / "camera.mp4")
    port = free_port()
    cfg = web_config(tmp_path, port, broker.port, camera={"source": str(camera)})
    d = Daemon(tmp_path, ["--config", str(cfg), "run"])
    base = f"http://127.0.0.1:{port}"
    try:
        d.wait_for_page(port)
        # Nobody sees anything without the password.
        browser.get(base + "/")
        assert browser.current_url == base + "/login"
        assert "happy" not in browser.page_source
        assert text(browser, "heading") == "Log in to livingroom"
        browser.find_element(By.ID, "password").send_keys("guess")
        browser.find_element(By.ID, "login").click()
        # A form post: click() may return before the answer's page has replaced this one (seen on a busy machine).
        wait_until(lambda: "Wrong password" in text(browser, "message"), 10, "the wrong-password page")
        assert browser.current_url.endswith("/login")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "login").click()
        wait_until(lambda: browser.current_url == base + "/", 10, "the page after login")
        wait_until(
            lambda: "No images or audio are recorded or shown" in text(browser, "privacy"), 10, "the privacy line"
        )
        wait_until(lambda: text(browser, "heading") == "emotion-edge livingroom", 10, "the device's name")
        assert browser.title == "livingroom · emotion-edge"

        # The emotion now, with its emoji, and the timeline growing as windows close (pushed, not polled).
        labels = {*CANONICAL, UNCERTAIN}
        wait_until(lambda: text(browser, "now-label") in labels, 60, "the current emotion on the page")
        assert text(browser, "now-emoji") not in ("", "⏳") and text(browser, "now-confidence").endswith("%")
        assert text(browser, "now-face") != "–" and text(browser, "live") == "live"
        seen = wait_until(lambda: windows(browser) >= 2 and windows(browser), 30, "two windows on the timeline")
        first_seq = int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-last-seq"))
        wait_until(lambda: windows(browser) > seen, 30, "a new window arriving on the timeline")
        assert int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-last-seq")) > first_seq

        # One "now", explained: this window beside the settled state, each named, with the people in view.
        wait_until(lambda: text(browser, "state-label") in {*labels, "no one"}, 30, "the settled state")
        assert text(browser, "now-window-len") == "(the last 2 s)"
        assert "windows in a row agree" in text(browser, "now-explain")
        assert text(browser, "after-n") == "2 now"  # the value in force, from /api/state's settings
        assert "fusion.state_after_windows" in _attr(browser, "now-settled", "title")
        assert "It can change with every window" in _attr(browser, "now-window", "title")
        assert text(browser, "now-state").startswith("since ")
        wait_until(lambda: text(browser, "people").isdigit(), 30, "the people in view")
        assert int(text(browser, "people")) >= 1  # the clip shows one face
        if text(browser, "now-label") != text(browser, "state-label"):
            assert "until enough windows in a row say the same" in text(browser, "now-why")

        # The day's history (this run's events are in the current hour) and the week's: counts as well as shares.
        browser.refresh()  # the chart is drawn from the history, which now holds several windows
        wait_until(lambda: _count(browser, "#history rect.hour"), 20, "the 24 h chart")
        note = text(browser, "history-note")
        totals = browser.execute_script(
            "return [...document.querySelectorAll('#history-totals span')].map((s) => s.textContent)"
        )
        assert totals and all(re.fullmatch(r"[a-z]+ \d+ \(\d+ %\)", t) for t in totals), totals
        all_windows = int(re.search(r"(\d+) windows in all", note).group(1))
        assert sum(int(t.split()[1]) for t in totals) == all_windows >= 2
        top, middle, zero = _labels(browser, "history-y")
        assert int(top) >= all_windows and int(middle) * 2 == int(top) and zero == "0"  # the busiest hour fits
        tip = _hover(browser, "#history rect.hour")
        assert re.search(HM + r"–" + HM + r" · \d+ windows.*\(\d+ %\)", tip), tip
        assert len(_labels(browser, "history-axis")) == 5 and _labels(browser, "history-axis")[-1] == "now"
        browser.find_element(By.ID, "h7d").click()
        wait_until(lambda: len(_labels(browser, "history-axis")) == 8, 20, "the 7 day chart")  # a tick a day
        assert _count(browser, "#history rect.hour") and "hour(s) with events" in text(browser, "history-note")
        browser.find_element(By.ID, "h24").click()

        # The timeline's axes: clock times under it, confidence beside it; hovering a window names time and value.
        wait_until(lambda: windows(browser) >= 2, 30, "the timeline after the reload")
        x = _labels(browser, "timeline-x")
        assert len(x) == 5 and x[-1] == "now" and all(re.fullmatch(HM, t) for t in x[:-1]), x
        assert _labels(browser, "timeline-y") == ["100 %", "50 %", "0 %"]
        tip = _hover(browser, "#timeline rect.window")
        assert re.fullmatch(f"{HMS}–{HMS} · [a-z]+ · confidence \\d+ %", tip), tip

        # Health: costs in their units, and a missing microphone said in words a person can act on.
        wait_until(lambda: "state-online" in _cell(browser, "src-camera"), 20, "the camera shown online")
        assert "state-offline" in _cell(browser, "src-microphone")  # no sound card on this machine
        mic = text(browser, "src-microphone")
        assert "No microphone found — check microphone.device; emotion-edge devices lists them" in mic, mic
        assert _count(browser, "#src-microphone .reason code") == 1  # the command, set as code
        assert "Errno" not in mic and "-9996" in browser.execute_script(
            "return document.querySelector('#src-microphone .reason').title"
        )
        assert "online" in text(browser, "broker-state")
        units = {"face_detect": "ms per frame", "face_track": "ms per frame", "face_emotion": "ms per face",
                 "voice_gate": "ms per audio second", "speech_emotion": "ms per audio second"}  # fmt: skip
        wait_until(lambda: "face_detect" in _stages(browser), 20, "the face detector's cost")
        for stage, line in _stages(browser).items():
            assert re.fullmatch(r"[a-z ]+ \d+\.\d " + units[stage], line), line

        # Model cards rendered from their Markdown: headings, tables, code; no Markdown marks left showing.
        assert "face" in text(browser, "models")
        assert _count(browser, "#models .model-card h3") >= 2 and _count(browser, "#models .model-card table td")
        assert "|---|" not in text(browser, "models") and "\n## " not in text(browser, "models")

        wait_until(lambda: windows(browser) >= 3, 30, "a few windows for the picture")
        browser.save_screenshot(str(tmp_path / "page.png"))  # to look at when this test fails

        # Pause and resume: the one shared switch, saved in state_dir; the big card says Paused, not the last
        # emotion.
        browser.find_element(By.ID, "pause").click()
        wait_until(lambda: text(browser, "analysis-state") == "paused", 10, "analysis shown paused")
        assert text(browser, "now-label") == "Paused" and text(browser, "now-emoji") == "⏸"
        assert text(browser, "now-confidence") == "" and text(browser, "now-face") == "–"
        wait_until(lambda: text(browser, "state-label") == "paused", 10, "the state shown paused")
        assert "paused" in text(browser, "people")
        assert json.loads((tmp_path / "state" / "controls.json").read_text())["analysis"] is False
        wait_until(lambda: not browser.find_element(By.ID, "pause").get_attribute("disabled"), 10, "the button back")
        browser.find_element(By.ID, "pause").click()
        wait_until(lambda: text(browser, "analysis-state") == "running", 10, "analysis shown running")
        assert text(browser, "now-label") != "Paused"
        assert json.loads((tmp_path / "state" / "controls.json").read_text())["analysis"] is True

        # Health follows the devices: the camera's file goes away (it is reopened when the clip ends, and is not
        # there), then the broker.
        camera.unlink()
        wait_until(lambda: "state-offline" in _cell(browser, "src-camera"), 30, "the camera shown offline")
        assert "The camera cannot be opened — check camera.source" in text(browser, "src-camera")
        broker.stop()
        wait_until(lambda: "offline" in text(browser, "broker-state"), 30, "the broker shown offline")

        # Reads on a phone: nothing wider than the screen.
        browser.set_window_size(390, 844)
        wait_until(lambda: browser.execute_script("return document.documentElement.scrollWidth <= innerWidth + 1"),
                   5, "the page to fit a phone's width")  # fmt: skip
    finally:
        log = d.stop()
    assert d.proc.returncode == 0 and "Traceback" not in log, log[-3000:]
    console = browser.get_log("browser")
    assert not [e for e in console if "Content Security Policy" in e["message"]], console


HOSTILE_CARD = """# Evil card
<script>window.__pwned = 1</script>
<img src=x onerror="window.__pwned = 2">

Some **bold**, `<b>code</b>`, [a link](https://example.org/x?a=1&b=2) and [another](javascript:window.__pwned=3).

- item one
  continued <iframe src="/api/events"></iframe>
- item two

| a | b |
|---|---|
| <svg onload="window.__pwned = 4"> | 2 |
"""


def test_model_cards_render_without_running_anything_and_the_default_device_is_named_once(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS, models)
    (models / "face_emotion.md").write_text(HOSTILE_CARD)
    port = free_port()
    cfg = web_config(tmp_path, port, device_id="emotion-edge", models={"dir": str(models)},
                     camera={"source": str(short_clip(tmp_path / "camera.mp4", 2.0))})  # fmt: skip
    d = Daemon(tmp_path, ["--config", str(cfg), "run"])
    base = f"http://127.0.0.1:{port}"
    try:
        d.wait_for_page(port)
        browser.get(base + "/login")
        # With the default device_id the product's name is said once, on the login page and on the page.
        assert text(browser, "heading") == "Log in to emotion-edge" and browser.title == "Log in · emotion-edge"
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "login").click()
        wait_until(lambda: browser.current_url == base + "/", 10, "the page after login")
        wait_until(lambda: _count(browser, "#models .model-card"), 20, "the model cards")
        assert text(browser, "heading") == "emotion-edge" and browser.title == "emotion-edge"

        card = "#models details:first-of-type .model-card"
        assert text(browser, "models").startswith("face emotion")
        # Nothing in the card ran or became an element; the markup is shown as the text it is.
        assert browser.execute_script("return window.__pwned") is None
        assert _count(browser, f"{card} script, {card} img, {card} iframe, {card} svg") == 0
        shown = browser.execute_script(f"return document.querySelector('{card}').textContent")
        assert "<script>window.__pwned = 1</script>" in shown and '<img src=x onerror="window.__pwned = 2">' in shown
        # The subset it does render: heading, bold, code, http(s) links only, lists with continuations, tables.
        assert browser.execute_script(f"return document.querySelector('{card} h3').textContent") == "Evil card"
        assert browser.execute_script(f"return document.querySelector('{card} strong').textContent") == "bold"
        assert browser.execute_script(f"return document.querySelector('{card} code').textContent") == "<b>code</b>"
        links = browser.execute_script(f"return [...document.querySelectorAll('{card} a')].map((a) => a.href)")
        assert links == ["https://example.org/x?a=1&b=2"]
        assert "[another](javascript:window.__pwned=3)" in shown
        items = browser.execute_script(f"return [...document.querySelectorAll('{card} li')].map((l) => l.textContent)")
        assert items == ['item one continued <iframe src="/api/events"></iframe>', "item two"]
        cells = browser.execute_script(f"return [...document.querySelectorAll('{card} td')].map((c) => c.textContent)")
        assert cells == ['<svg onload="window.__pwned = 4">', "2"]

        # PortAudio's and OpenCV's words turned into what to do (the raw text stays in the tooltip).
        friendly = "return friendlyReason(arguments[0], arguments[1])"
        said = "[Errno -9996] Invalid input device (no default output device)"
        assert browser.execute_script(friendly, "microphone", said).startswith(
            "No microphone found — check microphone.device"
        )
        assert "busy" in browser.execute_script(friendly, "microphone", "[Errno -9985] Device unavailable")
        assert browser.execute_script(friendly, "microphone", "something new") == "something new"
    finally:
        d.stop()
    console = browser.get_log("browser")
    assert not [e for e in console if "Content Security Policy" in e["message"]], console


def _cell(driver: webdriver.Chrome, row_id: str) -> str:
    return driver.execute_script("const e = document.getElementById(arguments[0]); return e ? e.innerHTML : ''", row_id)


def _count(driver: webdriver.Chrome, selector: str) -> int:
    return int(driver.execute_script("return document.querySelectorAll(arguments[0]).length", selector))


def _attr(driver: webdriver.Chrome, id_: str, name: str) -> str:
    return str(
        driver.execute_script("return document.getElementById(arguments[0]).getAttribute(arguments[1])", id_, name)
    )


def _labels(driver: webdriver.Chrome, id_: str) -> list[str]:
    """An axis' labels, in order."""
    return list(
        driver.execute_script(
            "return [...document.getElementById(arguments[0]).children].map((s) => s.textContent)", id_
        )
    )


def _stages(driver: webdriver.Chrome) -> dict[str, str]:
    """The health panel's cost lines by stage."""
    return dict(
        driver.execute_script(
            "return [...document.querySelectorAll('#inference [data-stage]')].map((e) => [e.dataset.stage, e.textContent])"
        )
    )


def _hover(driver: webdriver.Chrome, selector: str) -> str:
    """The chart tooltip for the last bar that matches: the pointer moved onto its middle, in one step (the charts
    redraw as windows arrive, so an element found first and hovered later may be gone)."""
    return str(
        driver.execute_script(
            """
        const bars = document.querySelectorAll(arguments[0]);
        const r = bars[bars.length - 1].getBoundingClientRect();
        const x = r.left + r.width / 2, y = r.top + r.height / 2;
        bars[bars.length - 1].dispatchEvent(new MouseEvent("mousemove", {bubbles: true, clientX: x, clientY: y}));
        const tip = document.getElementById("chart-tip");
        return tip.hidden ? "" : tip.textContent;""",
            selector,
        )
    )


def docs_screenshot(out: Path, seconds: float) -> None:
    """docs/device-page.png: the page after `seconds` of `emotion-edge run` with the bundled clip as its camera (a
    file camera starts over when it ends) and a real Mosquitto; no sound card, as on the machine that takes it."""
    import tempfile

    from PIL import Image

    from edge_daemon.devbroker import LocalBroker

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        broker = LocalBroker()
        broker.start()
        port = free_port()
        d = Daemon(tmp_path, ["--config", str(web_config(tmp_path, port, broker.port)), "run"])
        driver = chromium(tmp_path / "chromium-profile")
        try:
            d.wait_for_page(port)
            driver.get(f"http://127.0.0.1:{port}/login")
            driver.find_element(By.ID, "password").send_keys(PASSWORD)
            driver.find_element(By.ID, "login").click()
            wait_until(lambda: text(driver, "now-label") in {*CANONICAL, UNCERTAIN}, 60, "the first window")
            time.sleep(seconds)
            driver.refresh()  # the history chart as a visitor would first see it
            wait_until(lambda: _count(driver, "#history rect.hour") and windows(driver) >= 2, 20, "the charts")
            wait_until(lambda: text(driver, "state-label") not in ("", "–"), 20, "the settled state")
            time.sleep(3)
            # The whole page in one picture: a viewport as tall as the page (a window's size includes its frame).
            height = driver.execute_script("return document.documentElement.scrollHeight")
            metrics = {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False}
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            time.sleep(0.5)
            _hover(driver, "#timeline rect.window")  # one tooltip in the picture, to show there are some
            driver.save_screenshot(str(out))
            # 256 colours (octree keeps the emotions' colours apart): a third of the size for the docs
            Image.open(out).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)
        finally:
            driver.quit()
            d.stop()
            broker.stop()


if __name__ == "__main__":  # python -m tests.test_web_browser docs/device-page.png [seconds]
    docs_screenshot(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 90.0)
