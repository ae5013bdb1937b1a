#!/usr/bin/env bash
# Fetch MediaPipe's BlazeFace models (full-range sparse, the default, and short-range) from the mediapipe 0.10.14
# wheel on PyPI, verify them, and (re)write their metadata.
#
#   scripts/fetch_blazeface.sh            # into models_tflite/
#   PYTHON=/path/to/python scripts/fetch_blazeface.sh
#
# Writes models_tflite/face_detection_{full_range_sparse,short_range}.tflite (checked against pinned sha256s),
# models_tflite/LICENSE-mediapipe.txt (the wheel's own licence file, Apache-2.0) and their .json metadata
# (edge_daemon.modelmeta.write_meta + the FULL_RANGE / SHORT_RANGE specs of edge_daemon/vision/detector.py).
#
# The wheel is downloaded for this machine's platform and Python; if pip finds none (mediapipe 0.10.14 has no
# wheel for e.g. Python 3.13), it retries for CPython 3.11 manylinux x86_64. The .tflite files inside are the same
# on every platform, and the sha256 checks below are what guarantee it.
set -euo pipefail

MP_VERSION=0.10.14
DIR=mediapipe/modules/face_detection
MODELS=(  # name sha256 bytes
    "face_detection_full_range_sparse 2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1 676746"
    "face_detection_short_range bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8 229714"
)

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
unzip -q -j -o "$wheel" "mediapipe-$MP_VERSION.dist-info/LICENSE" -d "$tmp/licence"
mkdir -p "$dest"
for entry in "${MODELS[@]}"; do
    read -r name sha size <<<"$entry"
    echo "extracting $DIR/$name.tflite from $(basename "$wheel")"
    unzip -q -j -o "$wheel" "$DIR/$name.tflite" -d "$tmp/model"
    model="$tmp/model/$name.tflite"
    got_size="$(wc -c <"$model" | tr -d ' ')"
    got_sha="$(sha256sum "$model" | cut -d' ' -f1)"
    if [[ "$got_size" != "$size" || "$got_sha" != "$sha" ]]; then
        echo "error: $DIR/$name.tflite is $got_size bytes, sha256 $got_sha; expected $size bytes, $sha" >&2
        exit 1
    fi
    install -m 0644 "$model" "$dest/$name.tflite"
done
install -m 0644 "$tmp/licence/LICENSE" "$dest/LICENSE-mediapipe.txt"

cd "$repo"
"$PYTHON" - <<'EOF'
from pathlib import Path

from edge_daemon.modelmeta import write_meta
from edge_daemon.vision.detector import FULL_RANGE, SHORT_RANGE

for name, spec, boxes in (
    ("face_detection_full_range_sparse", FULL_RANGE, 2304),
    ("face_detection_short_range", SHORT_RANGE, 896),
):
    path = write_meta(
        Path(f"models_tflite/{name}.tflite"),
        kind="face_detector",
        name="blazeface_" + name.removeprefix("face_detection_"),
        version="0.10.14",
        preprocess=spec.to_meta(),
        licence="Apache-2.0 (LICENSE-mediapipe.txt)",
        source={
            "package": "mediapipe==0.10.14 (PyPI wheel)",
            "path": f"mediapipe/modules/face_detection/{name}.tflite",
            "graph": f"mediapipe/modules/face_detection/{name.removesuffix('_sparse')}.pbtxt",
            "fetch": "scripts/fetch_blazeface.sh",
        },
        outputs=[f"regressors [1, {boxes}, 16]", f"classificators [1, {boxes}, 1]"],
    )
    print(f"wrote {path}")
EOF
echo "ok: ${#MODELS[@]} models in $dest, sha256 checked"
