"""The one canonical label set, and how other corpora's labels map onto it.

Every model's metadata lists its own labels; the daemon maps them onto
CANONICAL through `to_canonical` so that fusion compares like with like.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where the matrix is built: `history export` and `forget` need the labels only
    import numpy as np

# FER2013's order; the face model's outputs use it, and fusion's tie-break follows it.
CANONICAL: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# Speech corpora also have `calm`; the speech model keeps it as its own class
# (RAVDESS has 8 classes) and the daemon maps it to neutral unless configured otherwise.
SPEECH_LABELS: tuple[str, ...] = ("neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise")

# A window whose fused confidence is below `fusion.min_confidence`. Not "unknown": that is Home Assistant's own
# word for "no data", and "not confident" must read differently from it (event schema 2 renamed it).
UNCERTAIN = "uncertain"
# The `state` after `fusion.absent_after_s` without a face or voiced speech: the room is empty (or quiet and unseen).
NO_ONE = "no_one"
# The `state` while analysis (or every enabled modality) is switched off.
PAUSED = "paused"

# One emoji per label, for the device page and the events' `emoji` field (the page and subscribers show the same one).
EMOJI: dict[str, str] = {
    "angry": "\U0001f620",  # angry face
    "disgust": "\U0001f922",  # nauseated face
    "fear": "\U0001f628",  # fearful face
    "happy": "\U0001f604",  # grinning face with smiling eyes
    "sad": "\U0001f622",  # crying face
    "surprise": "\U0001f62e",  # face with open mouth
    "neutral": "\U0001f610",  # neutral face
    UNCERTAIN: "\u2754",  # white question mark
    NO_ONE: "\U0001f464",  # bust in silhouette (the page shows the same)
    PAUSED: "\u23f8",  # pause button
}


def emoji_of(label: str | None) -> str:
    """The canonical emoji of a label ('' for None, the question mark for anything not canonical)."""
    if label is None:
        return ""
    return EMOJI.get(label, EMOJI[UNCERTAIN])


# Spellings found in corpora and exports, folded onto our names.
ALIASES: dict[str, str] = {
    "anger": "angry",
    "ang": "angry",
    "disgusted": "disgust",
    "dis": "disgust",
    "fearful": "fear",
    "fea": "fear",
    "scared": "fear",
    "happiness": "happy",
    "hap": "happy",
    "joy": "happy",
    "sadness": "sad",
    "sa": "sad",
    "surprised": "surprise",
    "sur": "surprise",
    "neu": "neutral",
    "contempt": "disgust",
    "boredom": "neutral",
}


def normalise(label: str) -> str:
    """Fold a corpus spelling ('Fearful', 'sadness') onto our spelling; unknown names pass through lower-cased."""
    key = label.strip().lower()
    return ALIASES.get(key, key)


def to_canonical(label: str, calm_as: str = "neutral") -> str:
    """Map a model label onto CANONICAL (`calm` becomes `calm_as`)."""
    name = normalise(label)
    if name == "calm":
        return calm_as
    if name not in CANONICAL:
        raise ValueError(f"label {label!r} has no canonical emotion; known: {', '.join(CANONICAL)}")
    return name


def canonical_matrix(model_labels: tuple[str, ...] | list[str], calm_as: str = "neutral") -> np.ndarray:
    """Matrix M (len(model_labels) × len(CANONICAL)) so that `probs @ M` gives canonical probabilities."""
    import numpy as np

    m = np.zeros((len(model_labels), len(CANONICAL)), dtype=np.float32)
    for i, label in enumerate(model_labels):
        m[i, CANONICAL.index(to_canonical(label, calm_as))] = 1.0
    return m
