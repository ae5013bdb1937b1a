#!/usr/bin/env bash
# Fetch MediaPipe's BlazeFace short-range model from the mediapipe 0.10.14 wheel on PyPI, verify it, and
# (re)write its metadata.
#
#   scripts/fetch_blazeface.sh            # into models_tflite/
#   PYTHON=/path/to/python scripts/fetch_blazeface.sh
#
# Writes models_tflite/face_detection_short_range.tflite (checked against a pinned sha256),
# models_tflite/LICENSE-mediapipe.txt (the wheel's own licence file, Apache-2.0) and
# models_tflite/face_detection_short_range.json (edge_daemon.modelmeta.write_meta + BlazeFaceSpec defaults).
#
# The wheel is downloaded for this machine's platform and Python; if pip finds none (mediapipe 0.10.14 has no
# wheel for e.g. Python 3.13), it retries for CPython 3.11 manylinux x86_64. The .tflite inside is the same file
# on every platform, and the sha256 check below is what guarantees it.
set -euo pipefail

MP_VERSION=0.10.14
MEMBER=mediapipe/modules/face_detection/face_detection_short_range.tflite
SHA256=bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8
SIZE=229714

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo/models_tflite"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "downloading mediapipe==$MP_VERSION (no dependencies) ..."
if ! "$PYTHON" -m pip download "mediapipe==$MP_VERSION" --no-deps --only-binary=:all: -d "$tmp" -q; then
    echo "no wheel for this platform/Python; trying CPython 3.11 manylinux x86_64" >&2
    "$PYTHON" -m pip download "mediapipe==$MP_VERSION" --no-deps --only-binary=:all: \
        --platform manylinux_2_17_x86_64 --python-version 3.11 -d "$tmp" -q
fi
wheel="$(ls "$tmp"/mediapipe-"$MP_VERSION"-*.whl)"
echo "extracting $MEMBER from $(basename "$wheel")"
unzip -q -j -o "$wheel" "$MEMBER" -d "$tmp/model"
unzip -q -j -o "$wheel" "mediapipe-$MP_VERSION.dist-info/LICENSE" -d "$tmp/licence"

model="$tmp/model/face_detection_short_range.tflite"
got_size="$(wc -c <"$model" | tr -d ' ')"
got_sha="$(sha256sum "$model" | cut -d' ' -f1)"
if [[ "$got_size" != "$SIZE" || "$got_sha" != "$SHA256" ]]; then
    echo "error: $MEMBER is $got_size bytes, sha256 $got_sha; expected $SIZE bytes, $SHA256" >&2
    exit 1
fi

mkdir -p "$dest"
install -m 0644 "$model" "$dest/face_detection_short_range.tflite"
install -m 0644 "$tmp/licence/LICENSE" "$dest/LICENSE-mediapipe.txt"

cd "$repo"
"$PYTHON" - <<'EOF'
from pathlib import Path

from edge_daemon.modelmeta import write_meta
from edge_daemon.vision.detector import BlazeFaceSpec

path = write_meta(
    Path("models_tflite/face_detection_short_range.tflite"),
    kind="face_detector",
    name="blazeface_short_range",
    version="0.10.14",
    preprocess=BlazeFaceSpec().to_meta(),
    licence="Apache-2.0 (LICENSE-mediapipe.txt)",
    source={
        "package": "mediapipe==0.10.14 (PyPI wheel)",
        "path": "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "graph": "mediapipe/modules/face_detection/face_detection_short_range.pbtxt",
        "fetch": "scripts/fetch_blazeface.sh",
    },
    outputs=["regressors [1, 896, 16]", "classificators [1, 896, 1]"],
)
print(f"wrote {path}")
EOF
echo "ok: $dest/face_detection_short_range.tflite sha256 $SHA256"
