"""Fusion: predictions from both modalities are grouped into fixed time windows and reduced to one emotion.

The rule, per window:

* Each modality has a total weight (`face_weight`, `speech_weight`), split
  evenly over the predictions it made in the window, so a camera analysing
  five frames a second cannot outvote one speech window by volume.
* `vote`: each prediction votes for its top label with its share of the
  weight; the label with the largest weighted vote wins. Ties go to the label
  with the larger weighted mean probability, then to the earlier label in
  `labels.CANONICAL` (angry, disgust, fear, happy, sad, surprise, neutral).
* `average`: the weighted mean of the modalities' mean probabilities; the
  top label wins (same tie-break order).
* `product`: the weighted geometric mean of the modalities' mean
  probabilities, renormalised (a logarithmic opinion pool); the top label
  wins. Independent evidence multiplies, so a label one modality all but rules
  out rarely wins, however sure the other is.
* `confidence` is the winner's weighted mean probability (`vote`, `average`)
  or its pooled probability (`product`, which is sharper, so the same
  `min_confidence` means a different share of `uncertain` windows); below
  `min_confidence` the window's emotion is `uncertain`.

A window with predictions from one modality still yields a result that says
which modality it used; a window with none yields nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .config import FusionConfig
from .labels import CANONICAL, UNCERTAIN

_DEFAULT = FusionConfig()  # one source of truth for the rule's defaults: the config's

MODALITIES = ("face", "speech")


@dataclass(frozen=True)
class FaceResult:
    """One face in one frame: where it is and what the face model made of it."""

    box: tuple[int, int, int, int]  # x, y, w, h in the frame's pixels
    label: str
    confidence: float


@dataclass(frozen=True)
class Prediction:
    """One model output, already mapped onto CANONICAL."""

    modality: str  # "face" or "speech"
    t: float  # stream time, seconds (media time in replay)
    probs: (
        np.ndarray
    )  # shape (len(CANONICAL),), sums to 1; face: every face's, weighted by detector score (pipeline.room_vote)
    faces: tuple[FaceResult, ...] = ()  # face: every classified face of the frame, largest first

    @property
    def label(self) -> str:
        return CANONICAL[int(np.argmax(self.probs))]


@dataclass(frozen=True)
class ModalitySummary:
    label: str
    confidence: float  # mean probability of `label` over the window's predictions
    votes: dict[str, int]
    probs: dict[str, float]  # mean probabilities
    count: int


@dataclass(frozen=True)
class WindowResult:
    index: int
    start: float  # stream seconds
    end: float
    emotion: str
    confidence: float
    scores: dict[str, float]  # the fused score per label that decided the winner
    modalities: dict[str, ModalitySummary | None]
    faces: tuple[FaceResult, ...] = ()  # the faces of the window's frame that showed the most (the latest such)


def faces_of(preds: list[Prediction]) -> tuple[FaceResult, ...]:
    """The faces of a window: the most common face count among its frames (ties: the smaller), from the latest frame
    with that count. One spurious detection (the clip's mission patch, score 0.55) must not make two people, even
    when tracking follows it until the next detection (half a window at `face.detect_every` 5); a person who turns
    away for a frame must not make none (frames without a face make no prediction)."""
    frames = sorted((p for p in preds if p.modality == "face"), key=lambda p: p.t)
    if not frames:
        return ()
    counts = Counter(len(p.faces) for p in frames)
    typical = max(counts, key=lambda n: (counts[n], -n))
    return next(p.faces for p in reversed(frames) if len(p.faces) == typical)


# `product` reads probabilities below this as this: an int8 model's zero (below 1/256) becomes a strong objection
# instead of an absolute veto that no weight could overturn.
PRODUCT_FLOOR = 1e-4


@dataclass(frozen=True)
class FusionRule:
    method: str = _DEFAULT.method
    face_weight: float = _DEFAULT.face_weight
    speech_weight: float = _DEFAULT.speech_weight
    min_confidence: float = _DEFAULT.min_confidence

    def weight(self, modality: str) -> float:
        return self.face_weight if modality == "face" else self.speech_weight

    def fuse(self, preds: list[Prediction]) -> tuple[str, float, dict[str, float], dict[str, ModalitySummary | None]]:
        summaries: dict[str, ModalitySummary | None] = {}
        means: dict[str, np.ndarray] = {}
        shares: dict[str, np.ndarray] = {}
        for m in MODALITIES:
            mine = [p for p in preds if p.modality == m]
            if not mine:
                summaries[m] = None
                continue
            stack = np.stack([p.probs for p in mine])
            mean = stack.mean(axis=0)
            top = np.argmax(stack, axis=1)
            share = np.bincount(top, minlength=len(CANONICAL)) / len(mine)
            means[m], shares[m] = mean, share
            label = _pick(share, mean)
            summaries[m] = ModalitySummary(
                label=CANONICAL[label],
                confidence=float(mean[label]),
                votes={CANONICAL[i]: int(c) for i, c in enumerate(np.bincount(top, minlength=len(CANONICAL))) if c},
                probs={name: float(mean[i]) for i, name in enumerate(CANONICAL)},
                count=len(mine),
            )
        total = sum(self.weight(m) for m in means)
        if total <= 0:  # every present modality weighted 0: nothing may decide
            return UNCERTAIN, 0.0, {}, summaries
        mean_prob = sum(self.weight(m) * means[m] for m in means) / total
        if self.method == "product":
            log_pool = sum(self.weight(m) * np.log(np.maximum(means[m], PRODUCT_FLOOR)) for m in means) / total
            pooled = np.exp(log_pool - log_pool.max())
            mean_prob = score = pooled / pooled.sum()
        elif self.method == "average":
            score = mean_prob
        else:
            score = sum(self.weight(m) * shares[m] for m in means) / total
        best = _pick(score, mean_prob)
        confidence = float(mean_prob[best])
        emotion = CANONICAL[best] if confidence >= self.min_confidence else UNCERTAIN
        return emotion, confidence, {CANONICAL[i]: float(s) for i, s in enumerate(score)}, summaries


def _pick(primary: np.ndarray, secondary: np.ndarray) -> int:
    """Index of the largest `primary`; ties by `secondary`, then by CANONICAL order (lowest index)."""
    eps = 1e-9
    candidates = np.flatnonzero(primary >= primary.max() - eps)
    if len(candidates) > 1:
        sub = secondary[candidates]
        candidates = candidates[sub >= sub.max() - eps]
    return int(candidates[0])


@dataclass
class Windower:
    """Collects predictions into windows [k*w, (k+1)*w) of stream time and closes them behind a watermark."""

    window_s: float
    rule: FusionRule
    _open: dict[int, list[Prediction]] = field(default_factory=dict)
    _next: int = 0  # the earliest window not yet closed
    late: int = 0  # predictions that arrived after their window closed (counted, not silently lost)

    def add(self, pred: Prediction) -> None:
        k = int(math.floor(pred.t / self.window_s))
        if k < self._next:
            self.late += 1
            return
        self._open.setdefault(k, []).append(pred)

    def close_until(self, watermark: float) -> list[WindowResult]:
        """Close every window that ends at or before `watermark`; returns results for the non-empty ones, in order."""
        if watermark == math.inf:  # every input has ended
            return self.flush()
        results = []
        last = int(math.floor(watermark / self.window_s))  # windows < last have ended
        for k in sorted(k for k in self._open if k < last):
            preds = self._open.pop(k)
            emotion, confidence, scores, summaries = self.rule.fuse(preds)
            start, end = k * self.window_s, (k + 1) * self.window_s
            results.append(WindowResult(k, start, end, emotion, confidence, scores, summaries, faces_of(preds)))
        self._next = max(self._next, last)
        return results

    def flush(self) -> list[WindowResult]:
        """Close everything (end of input or shutdown)."""
        if not self._open:
            return []
        return self.close_until((max(self._open) + 1) * self.window_s)


@dataclass
class StateTracker:
    """The current emotion: changes after `after` consecutive windows agree on a new one."""

    after: int
    current: str | None = None
    since: float = 0.0  # stream time when the windows that set `current` began
    _candidate: str | None = None
    _run: int = 0
    _run_start: float = 0.0
    _forced: bool = False

    def force(self, value: str, t: float) -> bool:
        """Set the state without waiting for windows (the room emptied, analysis paused); True if it changed."""
        self._candidate, self._run = None, 0
        self._forced = True  # the next real window takes over at once: someone is there again
        if value == self.current:
            return False
        self.current, self.since = value, t
        return True

    def update(self, emotion: str, t: float = 0.0) -> bool:
        """Feed one window's emotion and start time; True when the state changed."""
        if emotion == self._candidate:
            self._run += 1
        else:
            self._candidate, self._run, self._run_start = emotion, 1, t
        if self._forced:
            self._forced = False
            self.current, self.since = emotion, t
            return True
        if self._run >= self.after and emotion != self.current:
            self.current, self.since = emotion, self._run_start
            return True
        return False
