"""`emotion-edge demo --keep`: after the clip the device page stays up on 127.0.0.1, with the URL and a password
printed plainly, until Ctrl-C (exit 130). The real demo: a private broker, the real models, the bundled clip."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_keep_leaves_the_page_up_until_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_daemon", "--config", str(ROOT / "config.yaml"), "demo", "--fast", "--keep"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        m = re.match(r"device page: (http://127\.0\.0\.1:\d+/)  user: admin  password: (\S+)", line)
        assert m, line
        url, password = m.groups()
        done = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not done:  # the log says when the clip is over
            err = proc.stderr.readline()  # type: ignore[union-attr]
            done = "the device page stays up until Ctrl-C" in err
            assert proc.poll() is None, err
        assert done, "the clip never ended"
        time.sleep(1.0)
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        form = urllib.parse.urlencode({"password": password}).encode()
        with opener.open(url + "login", data=form, timeout=10) as r:  # the printed password opens the page
            assert r.status == 200 and "emotion-edge" in r.read().decode()
        with opener.open(url + "api/state", timeout=10) as r:  # and the clip's last state is still there
            assert r.status == 200 and b"surprise" in r.read()
        assert proc.poll() is None  # still up after the clip
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 130
