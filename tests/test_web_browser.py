"""The device page in a real browser (Debian's chromium, headless, driven by Selenium) against `emotion-edge run`
with a video file as its camera and a real Mosquitto: login, live events, timeline, history, health, pause."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from edge_daemon.labels import CANONICAL, UNCERTAIN

from .conftest import CLIP_VIDEO
from .webtools import PASSWORD, Daemon, free_port, wait_until, web_config

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), "scripts/test.sh installs chromium, chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1500",
    ):  # fmt: skip
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see Content-Security-Policy violations
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
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

        # The emotion now, with its emoji, and the timeline growing as windows close (pushed, not polled).
        labels = {*CANONICAL, UNCERTAIN}
        wait_until(lambda: text(browser, "now-label") in labels, 60, "the current emotion on the page")
        assert text(browser, "now-emoji") not in ("", "⏳") and text(browser, "now-confidence").endswith("%")
        assert text(browser, "now-face") != "–" and text(browser, "live") == "live"
        seen = wait_until(lambda: windows(browser) >= 2 and windows(browser), 30, "two windows on the timeline")
        first_seq = int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-last-seq"))
        wait_until(lambda: windows(browser) > seen, 30, "a new window arriving on the timeline")
        assert int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-last-seq")) > first_seq

        # The day's history (this run's events are in the current hour) and the week's.
        browser.refresh()  # the chart is drawn from the history, which now holds several windows
        wait_until(lambda: _count(browser, "#history rect.hour"), 20, "the 24 h chart")
        browser.find_element(By.ID, "h7d").click()
        wait_until(lambda: "hour(s) with events" in text(browser, "history-note"), 20, "the 7 day chart")
        assert _count(browser, "#history rect.hour")
        browser.find_element(By.ID, "h24").click()
        wait_until(lambda: "state-online" in _cell(browser, "src-camera"), 20, "the camera shown online")
        assert "state-offline" in _cell(browser, "src-microphone")  # no sound card on this machine
        assert "online" in text(browser, "broker-state") and "ms" in text(browser, "inference")
        assert "face" in text(browser, "models")
        wait_until(lambda: windows(browser) >= 3, 30, "a few windows for the picture")
        shot = os.environ.get("EMOTION_EDGE_SCREENSHOT")
        browser.save_screenshot(str(tmp_path / "page.png"))
        if shot:
            shutil.copy(tmp_path / "page.png", shot)

        # Pause and resume: the one shared switch, saved in state_dir.
        browser.find_element(By.ID, "pause").click()
        wait_until(lambda: text(browser, "analysis-state") == "paused", 10, "analysis shown paused")
        assert json.loads((tmp_path / "state" / "controls.json").read_text())["analysis"] is False
        wait_until(lambda: not browser.find_element(By.ID, "pause").get_attribute("disabled"), 10, "the button back")
        browser.find_element(By.ID, "pause").click()
        wait_until(lambda: text(browser, "analysis-state") == "running", 10, "analysis shown running")
        assert json.loads((tmp_path / "state" / "controls.json").read_text())["analysis"] is True

        # Health follows the devices: the camera's file goes away (it is reopened when the clip ends, and is not
        # there), then the broker.
        camera.unlink()
        wait_until(lambda: "state-offline" in _cell(browser, "src-camera"), 30, "the camera shown offline")
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


def _cell(driver: webdriver.Chrome, row_id: str) -> str:
    return driver.execute_script("const e = document.getElementById(arguments[0]); return e ? e.innerHTML : ''", row_id)


def _count(driver: webdriver.Chrome, selector: str) -> int:
    return int(driver.execute_script("return document.querySelectorAll(arguments[0]).length", selector))
