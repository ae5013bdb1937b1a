#!/usr/bin/env bash
# Side by side with the peer: the `fer` package (Haar cascade + its mini-Xception via tf.lite) on the same frames that
# `emotion-edge bench` times, in its own virtual environment (.venv-fer/) so it never touches ours.
# Usage: benchmarks/fer_peer.sh [VIDEO] [FRAMES] [RATE_HZ]   (defaults: the bundled clip, 200 frames sampled at 5 a
# second, the default face.rate_hz; benchmarks/face_path_ratio.sh passes the config's)
#
# fer's own requirements pull facenet-pytorch and, through it, a multi-GB CUDA torch; fer imports them only for
# FER(mtcnn=True). We run FER(mtcnn=False), its default, so we install fer without them.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-fer
if [ ! -f "$venv/.installed" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q --no-deps "fer==25.10.3"
  # fer imports pkg_resources, which setuptools 81 removed; fer uses Haar cascades, which OpenCV 5 removed.
  "$venv/bin/python" -m pip install -q tensorflow-cpu "opencv-contrib-python-headless<5" pandas matplotlib requests \
    "moviepy>=1.0.3,<2" ffmpeg-python Pillow tqdm "setuptools<81"
  touch "$venv/.installed"
fi
exec "$venv/bin/python" benchmarks/fer_peer.py "${1:-tests/fixtures/av/clip.mp4}" "${2:-200}" "${3:-5}"
