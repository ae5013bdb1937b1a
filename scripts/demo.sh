#!/usr/bin/env bash
# Quick start, command 1: install everything, then replay the bundled clip through the real models to a private local
# broker and print the events as a subscriber receives them. No camera, microphone or broker needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev
exec .venv/bin/emotion-edge --config config.yaml demo "$@"
