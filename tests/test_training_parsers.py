"""Dataset parsers and split protocol of training/: tiny generated trees, real naming conventions."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.io import wavfile

from edge_daemon.labels import CANONICAL, SPEECH_LABELS
from edge_daemon.vision.preprocess import FacePreprocess
from training.common import DatasetError
from training.face_data import load_fer_csv, load_folder_tree, load_many, prepare_all
from training.speech_data import grouped_folds, load_corpus, load_sources, make_split

from .conftest import shared_data

SR = 16_000


def _wav(path: Path, seconds: float = 0.3, freq: float = 220.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    wavfile.write(path, SR, (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16))
    return path


def test_ravdess_labels_speakers_sex_and_rejects(tmp_path: Path) -> None:
    _wav(tmp_path / "Actor_01" / "03-01-06-01-02-01-01.wav")  # fearful, actor 1 (male)
    _wav(tmp_path / "Actor_12" / "03-01-02-02-01-02-12.wav")  # calm, actor 12 (female)
    _wav(tmp_path / "Actor_12" / "03-01-08-01-01-01-12.wav")  # surprised
    _wav(tmp_path / "Actor_12" / "03-02-03-01-01-01-12.wav")  # song channel: not speech
    _wav(tmp_path / "Actor_12" / "recording.wav")  # unparsable
    c = load_corpus("ravdess", tmp_path)
    got = sorted((u.path.name, u.label, u.speaker, u.sex) for u in c.items)
    assert got == [
        ("03-01-02-02-01-02-12.wav", "calm", "ravdess:12", "F"),
        ("03-01-06-01-02-01-01.wav", "fear", "ravdess:01", "M"),
        ("03-01-08-01-01-01-12.wav", "surprise", "ravdess:12", "F"),
    ]
    assert {Path(p).name for p, _ in c.rejected} == {"03-02-03-01-01-01-12.wav", "recording.wav"}
    assert "2 files rejected" in c.summary()
    assert all(u.label in SPEECH_LABELS for u in c.items)


def test_other_speech_corpora_and_merge(tmp_path: Path) -> None:
    _wav(tmp_path / "crema" / "1001_DFA_ANG_XX.wav")
    _wav(tmp_path / "crema" / "1002_IEO_SAD_HI.wav")
    (tmp_path / "crema" / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,C,N\n")
    _wav(tmp_path / "tess" / "OAF_back_angry.wav")
    _wav(tmp_path / "tess" / "YAF_dog_ps.wav")
    _wav(tmp_path / "tess" / "YAF_dog_grumpy.wav")  # unknown emotion
    _wav(tmp_path / "savee" / "DC_sa01.wav")
    _wav(tmp_path / "savee" / "JE" / "su12.wav")  # speaker from folder
    _wav(tmp_path / "savee" / "a01.wav")  # no speaker anywhere
    _wav(tmp_path / "emodb" / "03a01Fa.wav")
    _wav(tmp_path / "emodb" / "08b02La.wav")  # boredom -> neutral (labels.normalise)
    corpus = load_sources(
        [
            f"cremad={tmp_path / 'crema'}",
            f"tess={tmp_path / 'tess'}",
            f"savee={tmp_path / 'savee'}",
            f"emodb={tmp_path / 'emodb'}",
        ]
    )
    got = {u.path.name: (u.label, u.speaker, u.sex) for u in corpus.items}
    assert got == {
        "1001_DFA_ANG_XX.wav": ("angry", "cremad:1001", "M"),
        "1002_IEO_SAD_HI.wav": ("sad", "cremad:1002", "?"),
        "OAF_back_angry.wav": ("angry", "tess:OAF", "F"),
        "YAF_dog_ps.wav": ("surprise", "tess:YAF", "F"),
        "DC_sa01.wav": ("sad", "savee:DC", "M"),
        "su12.wav": ("surprise", "savee:JE", "M"),
        "03a01Fa.wav": ("happy", "emodb:03", "M"),
        "08b02La.wav": ("neutral", "emodb:08", "F"),
    }
    assert sorted(Path(p).name for p, _ in corpus.rejected) == ["YAF_dog_grumpy.wav", "a01.wav"]


def test_random_split_refused_and_folds_are_speaker_disjoint() -> None:
    speakers = [f"ravdess:{a:02d}" for a in range(1, 21) for _ in range(3)]
    with pytest.raises(DatasetError, match="refused"):
        make_split("random", speakers)
    folds = make_split("speaker", speakers, 5)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(speakers)))
    held = [{speakers[i] for i in f} for f in folds]
    assert all(len(h) == 4 for h in held)
    assert all(not (a & b) for i, a in enumerate(held) for b in held[i + 1 :])
    # each fold mixes sexes: two odd (male) and two even (female) actors
    assert all(sum(int(s.split(":")[1]) % 2 for s in h) == 2 for h in held)
    with pytest.raises(DatasetError):
        grouped_folds(speakers[:6], 5)


def test_bad_paths_raise_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        load_corpus("ravdess", tmp_path / "missing")
    with pytest.raises(DatasetError):
        load_corpus("wavs", tmp_path)
    with pytest.raises(DatasetError):
        load_many([tmp_path / "nope"])


def _fer_csv(path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["emotion,pixels,Usage"]
    for code, usage in [(0, "Training"), (3, "Training"), (6, "PublicTest"), (9, "Training")]:
        rows.append(f"{code},{' '.join(map(str, rng.integers(0, 256, 48 * 48)))},{usage}")
    rows.append("2,1 2 3,Training")  # wrong pixel count
    path.write_text("\n".join(rows) + "\n")


def test_fer_csv(tmp_path: Path) -> None:
    _fer_csv(tmp_path / "fer.csv")
    train = load_fer_csv(tmp_path / "fer.csv", ("Training",))
    assert [CANONICAL[i] for i in train.labels] == ["angry", "happy"]
    assert train.images[0].shape == (48, 48) and train.images[0].dtype == np.uint8
    assert len(train.rejected) == 2  # emotion 9 and the short row, reported not dropped
    assert [CANONICAL[i] for i in load_fer_csv(tmp_path / "fer.csv", ("PublicTest",)).labels] == ["neutral"]


def test_real_fer_csv_sample_matches_label_order() -> None:
    sample = shared_data("fer2013_csv_sample/fer2013_first_200_rows.csv")
    fs = load_fer_csv(sample)
    assert len(fs.labels) == 200 and not fs.rejected
    assert fs.images[0].shape == (48, 48)


def test_folder_tree_aliases_unknowns_and_daemon_parity(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for folder in ("Anger", "happiness", "Surprised", "confused"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "a.png"), rng.integers(0, 256, (60, 50, 3), dtype=np.uint8))
    (tmp_path / "happiness" / "notes.txt").write_text("x")
    fs = load_folder_tree(tmp_path)
    assert sorted(CANONICAL[i] for i in fs.labels) == ["angry", "happy", "surprise"]
    assert sorted(why for _, why in fs.rejected) == ["not an image file", "unknown class folder 'confused'"]
    # training inputs are exactly what the daemon computes for the same crop
    pre = FacePreprocess()
    x, _ = prepare_all(fs, pre)
    for xi, src in zip(x, fs.sources, strict=True):
        np.testing.assert_array_equal(xi, pre.prepare(cv2.imread(src)))
    assert x.shape[1:] == (48, 48, 1)
