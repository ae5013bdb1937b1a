"""Run by the tflite-runtime 2.14 / numpy<2 interpreter (see test_models.py): top-1 of the shipped models on given inputs.

python compat_top1.py MODELS_DIR INPUTS.npz  ->  prints {"runtime": ..., "face": [...], "speech": [...]}
"""

import json
import sys
from pathlib import Path

import numpy as np

from edge_daemon.audio.emotion import SpeechEmotionModel
from edge_daemon.runtime import interpreter_class
from edge_daemon.vision.emotion import FaceEmotionModel

models, inputs = Path(sys.argv[1]), np.load(sys.argv[2])
face = FaceEmotionModel(models / "face_emotion.json")
speech = SpeechEmotionModel(models / "speech_emotion.json")
print(
    json.dumps(
        {
            "runtime": interpreter_class()[1],
            "numpy": np.__version__,
            "face": [int(np.argmax(face.classify(x))) for x in inputs["faces"]],
            "speech": [int(np.argmax(speech.classify_window(x))) for x in inputs["speech"]],
        }
    )
)
