"""Times the `fer` package on 640×480 frames of a video, the way `emotion-edge bench` times ours; prints JSON.

Run through benchmarks/fer_peer.sh (its own virtual environment).
"""

import json
import resource
import statistics
import sys
import time

import cv2
from fer.fer import FER  # fer 25.x no longer re-exports it from the package

video, n = sys.argv[1], int(sys.argv[2])
rate_hz = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0  # face.rate_hz: the frames emotion-edge bench times
cap = cv2.VideoCapture(video)
step = max(1, round((cap.get(cv2.CAP_PROP_FPS) or rate_hz) / rate_hz))
frames, i = [], 0
while len(frames) < n:
    ok, img = cap.read()
    if not ok:
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # loop a short clip, as emotion-edge bench does
        i = 0
        continue
    i += 1
    if (i - 1) % step == 0:
        frames.append(cv2.resize(img, (640, 480)))

detector = FER(mtcnn=False)
detector.detect_emotions(frames[0])  # warm-up: first call builds the interpreter
times, with_face = [], 0
for f in frames:
    t0 = time.perf_counter()
    found = detector.detect_emotions(f)
    times.append(time.perf_counter() - t0)
    with_face += bool(found)
print(
    json.dumps(
        {
            "peer": "fer 25.10.3, FER(mtcnn=False): OpenCV Haar cascade + emotion_model_quantized.tflite via tf.lite",
            "frames": len(frames),
            "frames_with_face": with_face,
            "face_path_ms": round(statistics.median(times) * 1000, 3),
            "face_path_mean_ms": round(statistics.fmean(times) * 1000, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
        indent=2,
    )
)
