"""The one place that imports a TFLite runtime.

Order: `ai_edge_litert` (LiteRT, maintained, works with numpy 2), then
`tflite_runtime` (frozen at 2.14, needs numpy<2, still what many Pi images
have), then `tensorflow.lite` (a workstation with TensorFlow installed).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

logger = logging.getLogger(__name__)


def _import_interpreter() -> tuple[Any, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter, "tensorflow"
    except ImportError:
        pass
    raise UserError("no TFLite runtime is installed: pip install ai-edge-litert (or tflite-runtime with numpy<2)")


_INTERPRETER: Any = None
RUNTIME_NAME = ""


def interpreter_class() -> tuple[Any, str]:
    global _INTERPRETER, RUNTIME_NAME
    if _INTERPRETER is None:
        limit_malloc()  # the first model loads before the daemon starts its threads
        _INTERPRETER, RUNTIME_NAME = _import_interpreter()
    return _INTERPRETER, RUNTIME_NAME


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt parameters (malloc.h)
# Blocks up to 1 MB (a 640x480 BGR frame is 0.9 MB, an MFCC window's frames 0.6 MB) reuse the heap: at glibc's own
# starting value of 128 KB each of them was a fresh mapping to fault in, 0.8 ms more per speech window here. Larger
# ones (a wav being converted, the audio ring, XNNPACK's buffers) are mapped and given back whole.
MMAP_THRESHOLD = 1024 * 1024


def limit_malloc() -> None:
    """glibc malloc settings for a process that runs models on a stream (the daemon, replay, bench, classify).

    glibc raises its mmap threshold to the size of each large block freed (up to 32 MB) and its trim threshold to
    twice that: once a replay's wav (2.3 MB as float64) or any large buffer is freed, later blocks up to that size
    come from the heap, and that much free space at the heap's top is kept instead of given back. A threshold set
    once stops both (the trim threshold stays at 128 KB). And one malloc arena for all threads instead of one per
    thread that allocates under contention (capture, perception, history, the page). Measured together: a fast
    replay of the bundled clip peaks about 6 MB lower (docs/performance.md). A no-op off glibc; $MALLOC_ARENA_MAX
    or $MALLOC_MMAP_THRESHOLD_, if set, win.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    if not os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    if not os.environ.get("MALLOC_ARENA_MAX"):
        mallopt(M_ARENA_MAX, 1)


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int
    name: str


class TFLiteModel:
    """A loaded model: float in, float out, quantisation handled from the model's own parameters."""

    def __init__(self, path: Path, num_threads: int = 1, batch: int = 1) -> None:
        if batch < 1:
            raise ValueError(f"batch {batch}: at least 1")  # a programming error, not a user's
        cls, _ = interpreter_class()
        try:
            # From bytes, not model_path: a path is memory-mapped, and copying a new model over the file (cp
            # truncates it in place) would then kill the running daemon with SIGBUS. Our models are < 3 MB.
            self._bytes = Path(path).read_bytes()
            self._interp = cls(model_content=self._bytes, num_threads=num_threads)
            self._interp.allocate_tensors()
        except OSError as exc:
            raise UserError(f"{path}: cannot read the model file ({exc.strerror})") from None
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"{path}: not a loadable TFLite model ({exc}); copy the file again from training") from exc
        if batch != 1:  # training's teacher scores a whole batch per invoke; the daemon runs one input at a time
            try:
                for d in self._interp.get_input_details():
                    self._interp.resize_tensor_input(d["index"], [batch, *d["shape"][1:]])
                self._interp.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                raise UserError(f"{path}: this model cannot take a batch of {batch} ({exc})") from exc
        self.path = path
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        self.inputs = [_spec(d) for d in self._in]
        self.outputs = [_spec(d) for d in self._out]

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Invoke on float inputs (batch dimension included); returns float outputs."""
        for detail, spec, x in zip(self._in, self.inputs, inputs, strict=True):
            self._interp.set_tensor(detail["index"], _quantize(x, spec))
        self._interp.invoke()
        return [
            _dequantize(self._interp.get_tensor(d["index"]), s) for d, s in zip(self._out, self.outputs, strict=True)
        ]


def _spec(detail: dict[str, Any]) -> TensorSpec:
    scale, zero = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        shape=tuple(int(v) for v in detail["shape"]),
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale),
        zero_point=int(zero),
        name=str(detail.get("name", "")),
    )


def _quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.dtype == "float32":
        return x.astype(np.float32, copy=False)
    info = np.iinfo(spec.dtype)
    q = np.round(x / spec.scale + spec.zero_point)
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def _dequantize(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.dtype == "float32":
        return y
    return (y.astype(np.float32) - spec.zero_point) * spec.scale
