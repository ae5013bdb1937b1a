#!/usr/bin/env bash
# Installs what emotion-edge needs on a fresh Debian / Raspberry Pi OS machine, then the virtual environment in .venv/.
# Usage: scripts/bootstrap.sh [EXTRAS]   e.g. "dev" (default), "dev,train", or "" for the runtime alone. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1-dev}"  # "${1-…}", not "${1:-…}": an explicit "" means the runtime alone

# System packages: PortAudio (pyaudio builds against it), a compiler and headers for that build, Mosquitto (the local
# broker for demo and tests), venv support.
pkgs=(gcc portaudio19-dev libportaudio2 mosquitto systemd)
# The tests make their noise and music with sox.
case ",$extras," in *,dev,*) pkgs+=(sox) ;; esac
# A Python built outside Debian (pyenv, conda) brings its own venv module and headers.
case "$(python3 -c 'import sys; print(sys.prefix)')" in /usr*) pkgs+=(python3-venv python3-dev) ;; esac
need=()
for pkg in "${pkgs[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: installing system packages: ${need[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Wait up to 10 minutes for another apt (unattended-upgrades on a fresh Pi, a second bootstrap) instead of failing.
  apt=(apt-get -o DPkg::Lock::Timeout=600)
  $sudo "${apt[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive $sudo "${apt[@]}" install -y -qq "${need[@]}" >/dev/null
  # Debian starts the system-wide broker on install; the demo and tests start their own on a free port.
fi

stamp=".venv/.installed-$extras-$(cat setup.py constraints.txt | sha256sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip wheel setuptools
  spec="."; [ -n "$extras" ] && spec=".[$extras]"
  # constraints.txt pins the runtime set (each pin's reason is written beside it): every install gets the same.
  .venv/bin/python -m pip install -q -c constraints.txt -e "$spec"
  touch "$stamp"
fi
