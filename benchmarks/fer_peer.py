"""Times the `fer` package on 640×480 frames of a video, the way `emotion-edge bench` times ours; prints JSON.

Run through benchmarks/fer_peer.sh (its own virtual environment).
"""

import json
import resource
import statistics
import sys
import time
from pathlib import Path

from fer.fer import FER  # fer 25.x no longer re-exports it from the package

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge_daemon.capture.sampling import sampled_frames  # noqa: E402  (standard library and OpenCV only)

video, n, rate_hz = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])  # rate_hz: emotion-edge bench's face.rate_hz
frames = list(sampled_frames(video, rate_hz, n, loop=True, size=(640, 480)))  # the frames emotion-edge bench times

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
