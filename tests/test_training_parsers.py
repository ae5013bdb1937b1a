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


# ---------------------------------------------------------------- ASED (Amharic, FLAC, 65 speakers)

ASED_FILES = (
    "01Neutral/n1-01-01-01-09.flac",  # speaker 09, female code
    "01Neutral/n1-01-02-01-09.flac",
    "04Sad/s4-01-02-02-09.flac",  # speaker 09 under the male code: one of five slips in the names
    "04Sad/S4-04-02-01-29.flac",  # the one upper-case name
    "05Angry/a5-01-01-01-01.flac",
    "05Angry/a5-01-01-01-03.flac",
)


def _ased_tree(tmp_path: Path) -> Path:
    """A few real ASED clips, copied into a tree of their own (skips without ../shared/data)."""
    root = tmp_path / "ased"
    for rel in ASED_FILES:
        src = shared_data(f"ased/{rel}")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(src.read_bytes())
    return root


def test_ased_real_files_labels_speaker_numbers_and_majority_sex(tmp_path: Path) -> None:
    root = _ased_tree(tmp_path)
    (root / "05Angry" / "h5-01-01-01-01.flac").write_bytes(b"")  # emotion letter and folder digit disagree
    (root / "05Angry" / "h3-01-01-01-01.flac").write_bytes(b"")  # a happy clip in the angry folder
    (root / "05Angry" / "a5-01-01-03-01.flac").write_bytes(b"")  # gender code 03 does not exist
    c = load_sources([f"ased={root}"])
    got = sorted((u.path.name, u.label, u.speaker, u.sex, u.corpus) for u in c.items)
    assert got == [
        ("S4-04-02-01-29.flac", "sad", "ased:29", "F", "ased"),
        ("a5-01-01-01-01.flac", "angry", "ased:01", "F", "ased"),
        ("a5-01-01-01-03.flac", "angry", "ased:03", "F", "ased"),
        ("n1-01-01-01-09.flac", "neutral", "ased:09", "F", "ased"),
        ("n1-01-02-01-09.flac", "neutral", "ased:09", "F", "ased"),
        # grouped by number and given the sex most of the speaker's clips carry, not this file's slip
        ("s4-01-02-02-09.flac", "sad", "ased:09", "F", "ased"),
    ]
    assert sorted(Path(p).name for p, _ in c.rejected) == [
        "a5-01-01-03-01.flac",
        "h3-01-01-01-01.flac",
        "h5-01-01-01-01.flac",
    ]


def test_ased_flac_reads_as_the_16k_mono_samples(tmp_path: Path) -> None:
    from training.speech_data import read_wav

    path = _ased_tree(tmp_path) / ASED_FILES[0]
    audio = read_wav(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 48_000  # 3.00 s at 16 kHz, as `soxi` reports the file
    assert 0.01 < float(np.abs(audio).max()) <= 1.0
    # the same samples sox decodes from the FLAC (16-bit PCM scaled to [-1, 1))
    wav = tmp_path / "n1.wav"
    import subprocess

    if subprocess.run(["sox", str(path), str(wav)], capture_output=True).returncode == 0:
        sr, ref = wavfile.read(wav)
        assert sr == SR and np.array_equal(audio, ref.astype(np.float32) / 32768.0)


def test_unreadable_flac_is_a_dataset_error(tmp_path: Path) -> None:
    from training.speech_data import read_wav

    bad = tmp_path / "n1-01-01-01-01.flac"
    bad.write_bytes(b"fLaC but not really")
    with pytest.raises(DatasetError, match="unreadable FLAC"):
        read_wav(bad)


def test_ravdess_folds_do_not_move_when_ased_is_merged() -> None:
    ravdess = [f"ravdess:{a:02d}" for a in range(1, 21) for _ in range(2)]
    ased = [f"ased:{s:02d}" for s in range(1, 66)]
    alone = [{ravdess[i] for i in f} for f in grouped_folds(ravdess, 5)]
    merged_speakers = ased + ravdess
    merged = grouped_folds(merged_speakers, 5)
    assert [{merged_speakers[i] for i in f if i >= len(ased)} for f in merged] == alone
    # every fold holds 13 of ASED's 65 speakers, and no speaker is in two folds
    assert [len({merged_speakers[i] for i in f if i < len(ased)}) for f in merged] == [13] * 5
    assert sorted(np.concatenate(merged).tolist()) == list(range(len(merged_speakers)))
    # corpora too small to fill k folds alone are dealt out together: no empty fold
    small = ["tess:OAF", "tess:YAF", "savee:DC", "savee:JE", "savee:JK"]
    assert all(len(f) == 1 for f in grouped_folds(small, 5))


# ---------------------------------------------------------------- augmentation and weights for many corpora


def _band_energy(audio: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(len(audio), 1 / SR)
    return float(spec[(f >= lo) & (f < hi)].sum())


def test_channel_variant_keeps_length_and_level_but_changes_the_microphone_and_room() -> None:
    from training.speech_data import augment_audio, channel_filter, room_response

    rng = np.random.default_rng(7)
    white = (rng.standard_normal(SR * 2) * 0.1).astype(np.float32)
    for _ in range(20):
        out = augment_audio(white, "channel", rng)
        # same length (the clip's voice-gate scores still line up) and the same level (only the channel differs)
        assert out.shape == white.shape and out.dtype == np.float32
        assert np.isclose(np.sqrt(np.mean(out**2)), np.sqrt(np.mean(white**2)), rtol=0.02)
        assert not np.allclose(out, white, atol=1e-3)
    # a room: the direct sound first, then a tail that has fallen by about 60 dB at its end
    h = room_response(np.random.default_rng(1))
    assert h[0] == 1.0 and 0.15 * SR <= len(h) <= 0.8 * SR
    tail = h[int(0.002 * SR) :]
    assert np.mean(tail[-200:] ** 2) < 1e-4 * np.mean(tail[:200] ** 2)
    # whatever was drawn, across many draws band limits show: less energy above 7 kHz or below 80 Hz on average
    hi = [_band_energy(channel_filter(white, np.random.default_rng(s)), 7000, 8000) for s in range(30)]
    lo = [_band_energy(channel_filter(white, np.random.default_rng(s)), 0, 80) for s in range(30)]
    assert np.median(hi) < _band_energy(white, 7000, 8000) and min(lo) < 0.5 * _band_energy(white, 0, 80)


def test_balanced_corpora_weigh_the_same_in_the_loss_and_so_do_the_classes_within_each() -> None:
    from training.speech import window_weights

    # RAVDESS-like: 8 classes, neutral half as frequent; URDU-like: 4 of them, fewer clips, another mix
    y = np.array([0] * 80 + [1, 2, 3, 4, 5, 6, 7] * 160 + [0] * 40 + [2] * 160 + [3] * 100 + [4] * 100)
    corpora = np.array(["ravdess"] * (80 + 7 * 160) + ["urdu"] * 400)
    plain = window_weights(y, corpora, 8, balance_corpora=False)
    assert np.isclose(plain.mean(), 1.0)
    assert np.allclose([plain[y == k].sum() for k in range(8)], plain.sum() / 8)  # every class the same
    w = window_weights(y, corpora, 8, balance_corpora=True)
    assert np.isclose(w.mean(), 1.0)
    assert np.isclose(w[corpora == "ravdess"].sum(), w[corpora == "urdu"].sum())
    for corpus, classes in (("ravdess", range(8)), ("urdu", (0, 2, 3, 4))):
        totals = [w[(corpora == corpus) & (y == k)].sum() for k in classes]
        assert np.allclose(totals, totals[0]), (corpus, totals)  # within a corpus, every class the same
    # the version stage 2b ran (corpus weights times the plain class weights) fails both: the corpora got 55/45 %
    c = np.where(corpora == "ravdess", len(y) / (2 * np.sum(corpora == "ravdess")), len(y) / (2 * 400))
    old = plain * c
    assert not np.isclose(old[corpora == "ravdess"].sum(), old[corpora == "urdu"].sum(), rtol=0.05)


# ---------------------------------------------------------------- UAR and scoring on a subset of labels


def test_uar_is_mean_per_class_recall_not_accuracy() -> None:
    from training.common import classification_report, group_scores, scores, uar

    # 90 neutral clips all right, 10 sad clips all called neutral: accuracy 0.9, but half the classes never found
    truth = np.array([0] * 90 + [1] * 10)
    always_neutral = np.zeros(100, int)
    assert scores(truth, always_neutral) == {"accuracy": 0.9, "uar": 0.5, "clips": 100}
    # 6 of 8 of class 0 and both of class 1: accuracy 8/10, UAR (6/8 + 2/2) / 2
    t = np.array([0] * 8 + [1] * 2)
    p = np.array([0] * 6 + [2] * 2 + [1] * 2)
    assert np.isclose(uar(t, p), 0.875) and np.isclose(np.mean(t == p), 0.8)
    # class 2 never occurs in the truth: it is not a class of this set (a corpus scored on its own labels)
    assert classification_report(t, p, ["a", "b", "c"])["uar"] == 0.875
    # within groups (corpora, sexes): each group's own figures
    g = np.array(["ased"] * 8 + ["ravdess"] * 2)
    assert group_scores(t, p, g) == {
        "ased": {"accuracy": 0.75, "uar": 0.75, "clips": 8},
        "ravdess": {"accuracy": 1.0, "uar": 1.0, "clips": 2},
    }
    assert uar(np.array([], int), np.array([], int)) == 0.0


def test_held_out_corpus_is_scored_on_its_own_labels_with_calm_as_neutral() -> None:
    from training.speech import predict_among

    ased = sorted(SPEECH_LABELS.index(x) for x in ("neutral", "happy", "sad", "angry", "fear"))
    probs = np.zeros((3, len(SPEECH_LABELS)))
    probs[0, [SPEECH_LABELS.index("calm"), SPEECH_LABELS.index("neutral"), SPEECH_LABELS.index("sad")]] = [
        0.4,
        0.2,
        0.35,
    ]  # calm + neutral = 0.6 > sad: neutral, as the daemon maps calm
    probs[1, [SPEECH_LABELS.index("surprise"), SPEECH_LABELS.index("fear")]] = [0.7, 0.3]  # ASED has no surprise
    probs[2, SPEECH_LABELS.index("angry")] = 1.0
    got = [SPEECH_LABELS[i] for i in predict_among(probs, ased)]
    assert got == ["neutral", "fear", "angry"]
    # all 8 present (RAVDESS): the plain argmax
    assert [SPEECH_LABELS[i] for i in predict_among(probs, list(range(8)))] == ["calm", "surprise", "angry"]


# ---------------------------------------------------------------- FER+ votes joined to FER2013 by row

FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
FERPLUS_CSV = "ferplus/fer2013new_train_publictest.csv"
FER_SAMPLE = "fer2013_csv_sample/fer2013_first_200_rows.csv"


def test_ferplus_soft_targets_and_majority_on_hand_made_rows(tmp_path: Path) -> None:
    from training.face_data import load_ferplus

    p = tmp_path / "fer2013new.csv"
    p.write_text(
        "\n".join(
            [
                FERPLUS_HEADER,
                "Training,fer0000000.png,4,0,0,1,3,2,0,0,0,0",  # FER+'s first row
                "Training,fer0000001.png,6,0,0,0,0,0,0,3,1,0",  # contempt and unknown votes dropped, rest renormalised
                "Training,,0,0,0,0,0,0,0,0,0,10",  # not a face
                "Training,fer0000003.png,4,0,0,0,0,0,0,0,4,2",  # as many 'unknown' as neutral: no label
                "PublicTest,fer0000004.png,5,5,0,0,0,0,0,0,0,0",  # a tie: a soft target, no majority
                "PublicTest,fer0000005.png,1,0,0,0,0,0,0,9,0,0",  # contempt: no class of ours
                "PublicTest,fer0000006.png,0,2,0,0,0,0,7,0,0,0",  # 9 votes (one row of FER+ has 9)
            ]
        )
        + "\n"
    )
    fp = load_ferplus(p)
    soft, maj = fp.soft(), fp.majority()
    i = {c: CANONICAL.index(c) for c in CANONICAL}
    want0 = np.zeros(7)
    want0[[i["neutral"], i["sad"], i["angry"], i["disgust"]]] = [0.4, 0.1, 0.3, 0.2]
    np.testing.assert_allclose(soft[0], want0)
    np.testing.assert_allclose(soft[1], np.eye(7)[i["neutral"]])
    assert np.isnan(soft[2]).all() and np.isnan(soft[3]).all() and np.isnan(soft[5]).all()
    np.testing.assert_allclose(soft[4][[i["neutral"], i["happy"]]], [0.5, 0.5])
    np.testing.assert_allclose(soft[6][[i["happy"], i["fear"]]], [2 / 9, 7 / 9])
    assert np.allclose(np.nansum(soft, 1)[[0, 1, 4, 6]], 1.0)
    assert maj.tolist() == [i["neutral"], i["neutral"], -1, -1, -1, -1, i["fear"]]
    assert fp.usage == ("Training",) * 4 + ("PublicTest",) * 3


def test_real_ferplus_csv_counts_match_the_data_readme() -> None:
    from training.face_data import load_ferplus

    fp = load_ferplus(shared_data(FERPLUS_CSV))
    assert fp.votes.shape == (32_298, 10) and fp.usage.count("Training") == 28_709
    assert set(fp.votes.sum(1).tolist()) == {9, 10}
    # README: 30,336 rows keep one of FER+'s 8 emotions; 186 of them are contempt, which FER2013 lacks
    assert int(np.sum(fp.majority() >= 0)) == 30_336 - 186


def test_ferplus_joins_fer2013_csv_rows_by_position_and_refuses_a_shift(tmp_path: Path) -> None:
    from training.face_data import join_ferplus, load_ferplus

    fp = load_ferplus(shared_data(FERPLUS_CSV))
    fs = load_fer_csv(shared_data(FER_SAMPLE))  # the original rows: row i of it is row i of FER+
    j = join_ferplus(fp, fs.sources, np.asarray(fs.labels), None, "sample")
    assert j.rows.tolist() == list(range(200)) and j.coverage == 1.0
    assert 0.55 < j.agreement < 0.7  # FER+ relabels about 40 % of FER2013's faces, but far above chance
    # one row off: the votes of the neighbouring face; agreement drops to chance and the join is refused
    shifted = [f"{s.rpartition(':')[0]}:{int(s.rpartition(':')[2]) + 1}" for s in fs.sources]
    with pytest.raises(DatasetError, match=r"agrees with the FER2013 label on 1\d\.\d%.*not aligned"):
        join_ferplus(fp, shifted, np.asarray(fs.labels), None, "shifted")


def test_ferplus_rows_of_the_kaggle_tree_by_pixels_and_the_alignment_check(tmp_path: Path) -> None:
    """The tree's `Training_<n>` numbers are random ids, not rows: the rows come from matching pixels against the
    original CSV (only its first 200 rows are here), and the join checks itself."""
    from training.face_data import build_rows, join_ferplus, load_ferplus, load_rows_file, write_rows_file

    sample, fp = shared_data(FER_SAMPLE), load_ferplus(shared_data(FERPLUS_CSV))
    tree = shared_data("fer2013/train/angry/Training_10118481.png").parents[1]
    mapping, unmatched = build_rows(sample, [tree])
    assert unmatched == 0 and sorted(mapping.values()) == list(range(200))
    assert mapping["angry/Training_1426440.png"] == 0 and mapping["sad/Training_18868898.png"] == 3
    numbers = sorted(mapping, key=mapping.get)
    ids = [int(k.split("_")[1].split(".")[0]) for k in numbers]
    assert ids != sorted(ids) and max(ids) > 10 * len(ids)  # no order and no row number in the names
    write_rows_file(tmp_path / "rows.csv", mapping)
    rows = load_rows_file(tmp_path / "rows.csv")
    assert rows == mapping
    sources = [str(tree / k) for k in mapping]
    labels = np.array([CANONICAL.index(k.split("/")[0]) for k in mapping])
    j = join_ferplus(fp, sources, labels, rows, "train")
    assert j.coverage == 1.0 and j.agreement > 0.55
    shifted = {k: r + 1 for k, r in rows.items()}
    with pytest.raises(DatasetError, match="not aligned"):
        join_ferplus(fp, sources, labels, shifted, "train")
    # the whole tree with rows for 200 images only: refused, naming what to do
    more = sources + [str(tree / "happy" / f"Training_{n}.png") for n in range(1000)]
    with pytest.raises(DatasetError, match=r"only 200 of 1200 images have a FER\+ row.*--ferplus-rows"):
        join_ferplus(fp, more, np.concatenate([labels, np.full(1000, 3)]), rows, "train")
