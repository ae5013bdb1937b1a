#!/usr/bin/env bash
# The whole fleet on this machine: N simulated devices (the daemon's outbox and MQTT delivery, synthetic windows),
# a three-node NATS cluster (JetStream + MQTT gateway), the collector and PostgreSQL, all on loopback ports.
# Usage: scripts/fleet-sim.sh --devices N --minutes M [--faults] [--jetstream]
# Ends with one line: devices=N events=E stored=S lost=L duplicated=D p50_ms=... p99_ms=... events_per_s=...
# Needs scripts/fleet-setup.sh once (PostgreSQL, psycopg, nats-server).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
export PATH="$(dirname "$py"):$PATH"   # nats-server from the fleet extra
exec "$py" -m edge_daemon.fleet.sim "$@"
