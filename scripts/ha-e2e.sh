#!/usr/bin/env bash
# The daemon against a real Home Assistant Core (not part of scripts/test.sh: the first run installs Home Assistant,
# about 20 minutes and 820 MB on 2 cores). Usage: scripts/ha-e2e.sh [--keep DIR]
#   HA_ENV     where Home Assistant's own environment lives (default: ../ha-env, beside this checkout)
#   HA_PYTHON  a Python that Home Assistant 2025.4 installs on (3.13; default: python3.13 on PATH, or pyenv's 3.13.0)
# Home Assistant 2025.4.4 is the newest release Python 3.13 can install; a plain `pip install` of it backtracks
# without end, so it is installed with the constraints file from its own wheel, and the frontend separately
# (without it Home Assistant starts in recovery mode).
set -euo pipefail
cd "$(dirname "$0")/.."
HA_VERSION=2025.4.4
FRONTEND_VERSION=20250411.0
HA_ENV="${HA_ENV:-../ha-env}"
scripts/bootstrap.sh dev >/dev/null
if [ ! -x "$HA_ENV/venv/bin/hass" ] || ! "$HA_ENV/venv/bin/python" -c "import hass_frontend" 2>/dev/null; then
  py="${HA_PYTHON:-$(command -v python3.13 || echo "$HOME/.pyenv/versions/3.13.0/bin/python3.13")}"
  [ -x "$py" ] || { echo "ha-e2e: error: no Python 3.13 (set HA_PYTHON)" >&2; exit 2; }
  echo "ha-e2e: installing Home Assistant $HA_VERSION into $HA_ENV (about 20 minutes)" >&2
  mkdir -p "$HA_ENV"
  [ -x "$HA_ENV/venv/bin/python" ] || "$py" -m venv "$HA_ENV/venv"
  "$HA_ENV/venv/bin/pip" install -q --upgrade pip wheel
  "$HA_ENV/venv/bin/pip" download -q --no-deps "homeassistant==$HA_VERSION" -d "$HA_ENV/DL"
  (cd "$HA_ENV/DL" && unzip -o -q homeassistant-"$HA_VERSION"-*.whl homeassistant/package_constraints.txt)
  "$HA_ENV/venv/bin/pip" install -q "homeassistant==$HA_VERSION" paho-mqtt==2.1.0 \
    -c "$HA_ENV/DL/homeassistant/package_constraints.txt"
  "$HA_ENV/venv/bin/pip" install -q "home-assistant-frontend==$FRONTEND_VERSION"
fi
exec .venv/bin/python scripts/ha_e2e.py --hass "$HA_ENV/venv/bin/hass" "$@"
