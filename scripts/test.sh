#!/usr/bin/env bash
# Quick start, command 2: install everything (training extras too), then run the whole test suite, including the
# runtime-compatibility check of the shipped models under tflite-runtime 2.14 with numpy<2. Tests that need the
# project's data sets (../shared/data beside the clone) skip without them and say so; with CI=true they fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev,train
# The fleet collector's tests need a PostgreSQL server and the `fleet` extra (psycopg, the NATS server binary).
scripts/fleet-setup.sh

# A real browser for the device page tests (tests/test_web_browser.py), and an emoji font for its screenshot.
need=()
for pkg in chromium chromium-driver fonts-noto-color-emoji; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "test: installing system packages: ${need[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# tflite-runtime stopped at 2.14 and crashes with numpy 2, so it lives in its own small environment.
compat=.venv-compat
if [ ! -f "$compat/.installed" ]; then
  python3 -m venv "$compat"
  "$compat/bin/python" -m pip install -q --upgrade pip
  "$compat/bin/python" -m pip install -q "tflite-runtime==2.14.0" "numpy<2" "opencv-python-headless<4.11" \
    "python_speech_features==0.6" "scipy<1.14" pyyaml
  touch "$compat/.installed"
fi
export EMOTION_EDGE_COMPAT_PYTHON="$PWD/$compat/bin/python"
if [ ! -d ../shared/data ]; then
  echo "test: ../shared/data is not beside this clone: the few tests that need the project's data sets will skip" >&2
fi
exec .venv/bin/python -m pytest "$@"
