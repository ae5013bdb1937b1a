"""Fusion: weighted majority per window, deterministic ties, no outvoting by volume, unknown below confidence."""

from __future__ import annotations

import numpy as np
import pytest

from edge_daemon.fusion import FusionRule, Prediction, StateTracker, Windower
from edge_daemon.labels import CANONICAL, UNCERTAIN, canonical_matrix


def p(modality: str, t: float, **probs: float) -> Prediction:
    v = np.full(len(CANONICAL), 0.0)
    for k, x in probs.items():
        v[CANONICAL.index(k)] = x
    rest = 1.0 - v.sum()
    v[v == 0] = rest / max(1, int((v == 0).sum()))
    return Prediction(modality, t, v)


def test_many_face_frames_do_not_outvote_one_speech_window() -> None:
    preds = [p("face", 0.1 * i, happy=0.6) for i in range(10)] + [p("speech", 1.0, angry=0.9)]
    emotion, conf, scores, mods = FusionRule(method="vote").fuse(preds)
    assert FusionRule(method="average").fuse(preds)[0] == "angry"  # means per modality, then across: the same
    # Equal modality weights: 10 happy frames share weight 1, one angry speech window has weight 1 -> a tie on votes,
    # broken by the weighted mean probability (angry 0.9 vs happy 0.6).
    assert scores["happy"] == pytest.approx(scores["angry"]) == pytest.approx(0.5)
    assert emotion == "angry"
    assert mods["face"].count == 10 and mods["face"].votes == {"happy": 10}
    assert mods["speech"].label == "angry"


def test_weights_decide_between_disagreeing_modalities() -> None:
    preds = [p("face", 0.5, happy=0.7), p("speech", 1.0, sad=0.7)]
    assert FusionRule(face_weight=2.0).fuse(preds)[0] == "happy"
    assert FusionRule(speech_weight=2.0).fuse(preds)[0] == "sad"


def test_exact_tie_goes_to_canonical_order() -> None:
    preds = [p("face", 0.5, sad=0.5), p("speech", 1.0, happy=0.5)]
    assert FusionRule(min_confidence=0).fuse(preds)[0] == "happy"  # happy precedes sad in CANONICAL


def test_low_confidence_window_is_unknown_not_forced() -> None:
    emotion, conf, _, _ = FusionRule(min_confidence=0.5).fuse([p("face", 0.1, fear=0.3)])
    assert emotion == UNCERTAIN and conf == pytest.approx(0.3)


def test_single_modality_window_says_which_modality() -> None:
    _, _, _, mods = FusionRule().fuse([p("speech", 0.5, neutral=0.8)])
    assert mods["face"] is None and mods["speech"].label == "neutral"


def test_average_method_uses_probabilities() -> None:
    preds = [
        p("face", 0.1, happy=0.4, surprise=0.35),
        p("face", 0.2, surprise=0.8),
        p("face", 0.3, happy=0.4, surprise=0.35),
    ]
    assert FusionRule(method="vote", min_confidence=0).fuse(preds)[0] == "happy"  # two of three frames vote happy
    assert (
        FusionRule(method="average", min_confidence=0).fuse(preds)[0] == "surprise"
    )  # but surprise has more probability mass


def test_product_method_lets_one_modality_rule_out_a_label() -> None:
    # The face is sure it is angry and sees a little sadness; the voice is torn between sad and fear and all but rules
    # angry out. The mean of the two says angry (0.45 against 0.3); their product says sad, the label both allow.
    face = p("face", 0.5, angry=0.9, sad=0.1 - 1e-9)
    voice = p("speech", 1.0, sad=0.5, fear=0.5 - 1e-9)
    assert FusionRule(method="average", min_confidence=0).fuse([face, voice])[0] == "angry"
    emotion, conf, scores, _ = FusionRule(method="product", min_confidence=0).fuse([face, voice])
    assert emotion == "sad"
    # The pooled probabilities sum to 1: sad's is sqrt(0.1 * 0.5) over the sum of every label's geometric mean.
    assert sum(scores.values()) == pytest.approx(1.0)
    assert conf == pytest.approx(
        np.sqrt(0.05) / sum(np.sqrt(np.maximum(face.probs, 1e-4) * np.maximum(voice.probs, 1e-4)))
    )
    # One modality alone: its own probabilities (but for the floor under its zeros).
    assert FusionRule(method="product", min_confidence=0).fuse([voice])[1] == pytest.approx(0.5, abs=1e-3)
    # Weights are exponents: a face weighted 4 to 1 gets its angry back.
    assert FusionRule(method="product", face_weight=4.0, min_confidence=0).fuse([face, voice])[0] == "angry"


def test_windows_close_behind_the_watermark_in_order() -> None:
    w = Windower(2.0, FusionRule())
    for pred in [p("face", 0.5, happy=0.9), p("face", 2.5, sad=0.9), p("speech", 4.1, angry=0.9)]:
        w.add(pred)
    assert [r.emotion for r in w.close_until(3.9)] == ["happy"]  # window [2, 4) not over yet
    assert [(r.start, r.emotion) for r in w.close_until(4.0)] == [(2.0, "sad")]
    w.add(p("face", 1.0, fear=0.9))  # arrives after its window closed: counted, not silently merged
    assert w.late == 1
    assert [(r.start, r.emotion) for r in w.flush()] == [(4.0, "angry")]


def test_an_infinite_watermark_closes_everything_and_an_empty_input_closes_nothing() -> None:
    # Replay: once every input has ended (a worker's progress is infinite), all open windows close.
    w = Windower(2.0, FusionRule())
    assert w.close_until(float("inf")) == []  # e.g. a wav that holds no samples
    w.add(p("face", 5.0, happy=0.9))
    assert [(r.start, r.emotion) for r in w.close_until(float("inf"))] == [(4.0, "happy")]


def test_state_changes_after_consistent_windows() -> None:
    s = StateTracker(after=2)
    assert [s.update(e) for e in ["happy", "sad", "happy", "happy", "happy", "sad"]] == [
        False,
        False,
        False,
        True,
        False,
        False,
    ]
    assert s.current == "happy"


def test_calm_maps_to_configured_emotion() -> None:
    m = canonical_matrix(["neutral", "calm", "happy"], calm_as="neutral")
    probs = np.array([0.2, 0.5, 0.3]) @ m
    assert probs[CANONICAL.index("neutral")] == pytest.approx(0.7)
    m2 = canonical_matrix(["neutral", "calm", "happy"], calm_as="happy")
    assert (np.array([0.2, 0.5, 0.3]) @ m2)[CANONICAL.index("happy")] == pytest.approx(0.8)
