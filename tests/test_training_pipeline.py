"""End-to-end `--quick` runs of training/ on tiny generated corpora: the exports load in the daemon's own code."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from scipy.io import wavfile

from edge_daemon.audio import features as features_module
from edge_daemon.audio.emotion import SpeechEmotionModel
from edge_daemon.audio.emotion import clip_windows as daemon_clip_windows
from edge_daemon.audio.features import SAMPLE_RATE, SpeechFeatures
from edge_daemon.errors import UserError
from edge_daemon.labels import CANONICAL, SPEECH_LABELS
from edge_daemon.modelmeta import load_model
from edge_daemon.vision.emotion import FaceEmotionModel
from edge_daemon.vision.preprocess import FacePreprocess
from training.speech import build_eval_windows, cv_features, features_from_cv, speaker_streams
from training.speech_data import clip_windows, default_gate, load_corpus, read_wav

from .conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _face_tree(root: Path, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for i, name in enumerate(CANONICAL):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            img = rng.integers(0, 60, (48, 48), dtype=np.uint8) + np.uint8(25 * i)  # classes differ in brightness
            cv2.imwrite(str(root / name / f"{j}.png"), img)


def _ravdess_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for actor in (1, 2, 3, 4):
        for emo in (1, 3, 5, 8):
            t = np.arange(int(2.6 * SAMPLE_RATE)) / SAMPLE_RATE
            audio = 0.2 * np.sin(2 * np.pi * (100 + 60 * emo) * t) + 0.01 * rng.standard_normal(t.size)
            audio[: SAMPLE_RATE // 5] *= 0.001  # a quiet lead-in, as in real clips
            p = root / f"Actor_{actor:02d}" / f"03-01-{emo:02d}-01-01-01-{actor:02d}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            wavfile.write(p, SAMPLE_RATE, (audio * 32767).astype(np.int16))


def test_face_quick_run_exports_loadable_int8_model(tmp_path: Path) -> None:
    _face_tree(tmp_path / "train", 12)
    _face_tree(tmp_path / "val", 4)
    out = tmp_path / "models" / "face_emotion.tflite"
    r = _run(
        "training.face",
        "--train",
        str(tmp_path / "train"),
        "--val",
        str(tmp_path / "val"),
        "--quick",
        "--threads",
        "2",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(out),
        "--peer-json",
        "none.json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    meta, model = load_model(out.with_suffix(".json"), expect_kind="face_emotion")
    assert list(meta.labels) == list(CANONICAL)
    assert meta.preprocess == FacePreprocess().to_meta()
    assert meta.raw["input"]["shape"] == [1, 48, 48, 1] and meta.raw["input"]["dtype"] == "int8"
    assert meta.raw["output"]["dtype"] == "int8"
    assert {"command", "date", "seed", "split_protocol"} <= set(meta.raw["training"])
    assert 0 <= meta.raw["metrics"]["val_accuracy_int8"] <= 1
    x = FacePreprocess.from_meta(meta.preprocess).prepare(cv2.imread(str(tmp_path / "val" / "happy" / "0.png")))
    probs = model.run(x[None])[0][0]
    assert probs.shape == (7,) and abs(float(probs.sum()) - 1) < 0.05
    # the daemon's own wrapper gives what the export measured: mirror averaging if it shipped, then the temperature
    pre = FacePreprocess.from_meta(meta.preprocess)
    if pre.hflip_average and probs.max() < pre.hflip_below:
        probs = (probs + model.run(np.ascontiguousarray(x[None][:, :, ::-1]))[0][0]) / 2
    assert 0.05 <= meta.temperature <= 20 and "calibration" in meta.raw
    np.testing.assert_allclose(
        FaceEmotionModel(out.with_suffix(".json")).classify(cv2.imread(str(tmp_path / "val" / "happy" / "0.png"))),
        meta.calibrate(probs),
        atol=1e-6,
    )
    card = out.with_suffix(".md").read_text()
    assert "Art" in card and "5(1)(f)" in card and "research use" in card
    assert (tmp_path / "run" / "curves.png").is_file() and (tmp_path / "run" / "confusion_int8.png").is_file()


def test_speech_quick_run_cv_and_export(tmp_path: Path) -> None:
    _ravdess_tree(tmp_path / "rav")
    out = tmp_path / "models" / "speech_emotion.tflite"
    r = _run(
        "training.speech",
        "--data",
        f"ravdess={tmp_path / 'rav'}",
        "--quick",
        "--pitch",
        "--pool",
        "avgmax",
        "--folds",
        "2",
        "--threads",
        "2",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    cv = json.loads((tmp_path / "run" / "cv.json").read_text())
    assert len(cv["folds"]) == 2
    held = [set(f["held_out_speakers"]) for f in cv["folds"]]
    assert held[0] | held[1] == {"ravdess:01", "ravdess:02", "ravdess:03", "ravdess:04"} and not held[0] & held[1]
    assert set(cv["accuracy_by_sex_int8"]) == {"F", "M"}
    by_speaker = {k: v for f in cv["folds"] for k, v in f["clip_accuracy_by_speaker_int8"].items()}
    assert set(by_speaker) == set(cv["speaker_sex"]) == held[0] | held[1]  # every held-out actor, once
    assert cv["speaker_sex"] == {"ravdess:01": "M", "ravdess:02": "F", "ravdess:03": "M", "ravdess:04": "F"}
    meta, _ = load_model(out.with_suffix(".json"), expect_kind="speech_emotion")
    assert list(meta.labels) == list(SPEECH_LABELS)
    served = SpeechFeatures.from_meta(meta.preprocess)  # normalised per stream, from the training statistics
    assert served.norm_memory == 30 and not served.cmvn and len(served.norm_prior) == 2 * served.num_features
    assert served.pitch and served.num_features == (served.numcep + 2) * 3  # --pitch: the voice's pitch travels too
    assert replace(served, cmvn=True, norm_memory=0, norm_prior=(), pitch=False) == SpeechFeatures()  # the rest
    # the daemon's own wrapper loads it and classifies a whole clip
    sem = SpeechEmotionModel(out.with_suffix(".json"))
    wav = sorted((tmp_path / "rav").rglob("*.wav"))[0]
    probs = sem.classify_clip(read_wav(wav), default_gate())
    assert probs.shape == (len(SPEECH_LABELS),) and abs(float(probs.sum()) - 1) < 0.05
    card = out.with_suffix(".md").read_text()
    assert "NON-COMMERCIAL" in card and "Per actor: F " in card and ", M " in card
    # A CV stopped part-way resumes: finished folds of the same recipe are taken, not trained again, and give the
    # same figures; one changed recipe value trains every fold again.
    (tmp_path / "run" / "fold2.result.json").unlink()
    again = _run("training.speech", *r.args[3:], "--cv-only")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "fold1: taken from fold1.result.json" in again.stdout and "fold2: taken" not in again.stdout
    cv2_ = json.loads((tmp_path / "run" / "cv.json").read_text())
    assert cv2_["folds"][0] == cv["folds"][0] and len(cv2_["folds"]) == 2
    other = _run("training.speech", *r.args[3:], "--cv-only", "--seed", "7")
    assert other.returncode == 0 and "taken from" not in other.stdout


def test_speech_quick_run_with_mel_bands_exports_a_2d_net_the_daemon_runs(tmp_path: Path) -> None:
    _ravdess_tree(tmp_path / "rav")
    out = tmp_path / "models" / "speech_emotion.tflite"
    data = f"ravdess={tmp_path / 'rav'}"
    common = ["--data", data, "--quick", "--mel", "--folds", "2", "--threads", "2", "--run-dir", str(tmp_path / "run")]
    r = _run("training.speech", *common, "--skip-cv", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    meta, _ = load_model(out.with_suffix(".json"), expect_kind="speech_emotion")
    served = SpeechFeatures.from_meta(meta.preprocess)
    assert served.mel and not served.deltas and served.num_features == served.nfilt == 40
    assert served.norm_memory == 30 and len(served.norm_prior) == 2 * 40  # normalised per stream, like the MFCCs
    assert meta.raw["input"]["shape"] == [1, served.num_frames, 40]  # (frames, bands): reshaped inside the model
    wav = sorted((tmp_path / "rav").rglob("*.wav"))[0]
    probs = SpeechEmotionModel(out.with_suffix(".json")).classify_clip(read_wav(wav), default_gate())
    assert probs.shape == (len(SPEECH_LABELS),) and abs(float(probs.sum()) - 1) < 0.05
    card = out.with_suffix(".md").read_text()
    assert "(40 log mel bands, normalised per stream" in card and "A 2-D conv net over time and frequency" in card
    for wrong in (["--pitch"], ["--pool", "avgmax"], ["--numcep", "13"]):  # the MFCC net's options
        bad = _run("training.speech", *common, *wrong, "--skip-cv", "--out", str(out))
        assert bad.returncode == 2 and "--mel" in bad.stderr and "Traceback" not in bad.stderr, wrong


def test_training_and_daemon_compute_identical_speech_inputs(tmp_path: Path) -> None:
    _ravdess_tree(tmp_path / "rav")
    feats = SpeechFeatures()
    for u in load_corpus("ravdess", tmp_path / "rav").items[:3]:
        audio = read_wav(u.path)
        ours = [feats.compute(w) for w in clip_windows(audio, feats)]
        theirs = [feats.compute(w) for w in daemon_clip_windows(audio, feats, default_gate(), 1.0)]
        assert len(ours) == len(theirs) >= 1
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, b)


def test_bad_dataset_paths_give_one_line_and_exit_2(tmp_path: Path) -> None:
    r = _run(
        "training.face",
        "--train",
        str(tmp_path / "nope"),
        "--val",
        str(tmp_path / "nope"),
        "--run-dir",
        str(tmp_path / "run"),
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = _run("training.speech", "--data", f"ravdess={tmp_path / 'nope'}", "--run-dir", str(tmp_path / "r"), timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    _ravdess_tree(tmp_path / "rav")
    r = _run(
        "training.speech",
        "--data",
        f"ravdess={tmp_path / 'rav'}",
        "--split",
        "random",
        "--folds",
        "2",
        "--run-dir",
        str(tmp_path / "r"),
        timeout=60,
    )
    assert r.returncode == 2 and "refused" in r.stderr


def test_face_trained_in_bfloat16_exports_a_float32_graph_quantised_to_int8(tmp_path: Path) -> None:
    """--precision mixed_bfloat16 trains with bfloat16 arithmetic; the export rebuilds the net in float32, so the
    int8 calibration sees float32 ops (a bfloat16 graph fails in the converter) and the file holds no bfloat16."""
    _face_tree(tmp_path / "train", 6)
    _face_tree(tmp_path / "val", 2)
    run, out = tmp_path / "run", tmp_path / "face_emotion.tflite"
    args = ["--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--quick", "--epochs", "1"]
    r = _run("training.face", *args, "--precision", "mixed_bfloat16", "--run-dir", str(run), "--no-export")
    assert r.returncode == 0, r.stderr[-2000:]
    with zipfile.ZipFile(run / "best.keras") as z:
        assert "mixed_bfloat16" in z.read("config.json").decode()  # it did train in bfloat16
    # exported as a later command would, with the flags left at their defaults: the checkpoint says what it is
    r = _run("training.face", *args, "--export-only", "--run-dir", str(run), "--out", str(out), "--peer-json", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    meta, _ = load_model(out.with_suffix(".json"), expect_kind="face_emotion")
    assert meta.raw["training"]["precision"].startswith("mixed_bfloat16") and meta.raw["training"]["arch"] == "tiny"
    from ai_edge_litert.interpreter import Interpreter

    dtypes = {np.dtype(t["dtype"]).name for t in Interpreter(model_path=str(out)).get_tensor_details()}
    assert dtypes <= {"int8", "int32"}, dtypes  # full int8: no bfloat16 (nor float) tensor left
    assert meta.raw["input"]["dtype"] == "int8" and meta.raw["output"]["dtype"] == "int8"


def test_face_training_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    _face_tree(tmp_path / "train", 6)
    _face_tree(tmp_path / "val", 2)
    common = ["--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--quick", "--no-export"]
    run = tmp_path / "run"
    r = _run("training.face", *common, "--epochs", "1", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 1
    r = _run("training.face", *common, "--epochs", "2", "--resume", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stdout and "at epoch 1" in r.stdout
    hist = json.loads((run / "history.json").read_text())
    assert len(hist["loss"]) == 2 and (run / "last.keras").is_file() and (run / "best.keras").is_file()
    r = _run("training.face", *common, "--epochs", "2", "--run-dir", str(run))  # --resume forgotten
    assert r.returncode == 2 and "--resume" in r.stderr and "Traceback" not in r.stderr
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 2  # the run is untouched


def test_speaker_streams_hold_each_window_once_one_speaker_and_augmentation_each() -> None:
    speakers = ["a", "a", "a", "b", "b", "c"]  # clip -> speaker
    win_clip = np.array([0, 0, 1, 2, 2, 3, 4, 5, 0, 1, 3])
    win_aug = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    clips = np.array([0, 1, 2, 3, 4])  # speaker c is held out
    for p, n_streams in ((0.0, 4), (1.0, 8)):  # (a, aug 0), (a, 1), (b, 0), (b, 1); or each (clip, aug) alone
        streams = speaker_streams(win_clip, win_aug, clips, speakers, np.random.default_rng(0), p)
        flat = np.concatenate(streams)
        assert sorted(flat.tolist()) == [i for i in range(len(win_clip)) if win_clip[i] != 5]
        assert len(streams) == n_streams
        for s in streams:
            assert len({speakers[c] for c in win_clip[s]}) == 1 and len(set(win_aug[s].tolist())) == 1
            by_clip = [int(c) for c in win_clip[s]]
            assert by_clip == sorted(by_clip, key=by_clip.index)  # a clip's windows stay together ...
            for c in set(by_clip):
                mine = [int(i) for i in s if win_clip[i] == c]
                assert mine == sorted(mine)  # ... in their order


def test_stored_windows_from_an_older_pitch_tracker_are_never_reused(tmp_path: Path, monkeypatch) -> None:
    """The metadata of features with pitch names the tracker's version, and the window caches and cv.json are keyed
    on it: a change to pitch_track gives new windows instead of silently training on the old ones."""
    _ravdess_tree(tmp_path / "ravdess")
    corpus = load_corpus("ravdess", tmp_path / "ravdess")
    cache = tmp_path / "cache"
    feats = SpeechFeatures(pitch=True)
    first = build_eval_windows(corpus, feats, cache)
    assert len(list(cache.glob("eval_windows_*.npz"))) == 1
    build_eval_windows(corpus, feats, cache)
    assert len(list(cache.glob("eval_windows_*.npz"))) == 1  # same tracker: the cache is reused
    build_eval_windows(corpus, SpeechFeatures(), cache)
    assert len(list(cache.glob("eval_windows_*.npz"))) == 2  # pitch off: other windows

    args = SimpleNamespace(norm_memory=feats.norm_memory, pool="avg")
    record = cv_features(feats, args)
    assert features_from_cv(record, tmp_path / "cv.json") == feats
    monkeypatch.setattr(features_module, "PITCH_TRACKER", features_module.PITCH_TRACKER + 1)
    assert cv_features(feats, args) != record  # --skip-cv will not quote a cv.json of the older tracker
    with pytest.raises(UserError, match="pitch tracker version 2"):
        features_from_cv(record, tmp_path / "cv.json")  # nor will fusion_eval score its fold models
    again = build_eval_windows(corpus, feats, cache)
    assert len(list(cache.glob("eval_windows_*.npz"))) == 3
    np.testing.assert_array_equal(again.x, first.x)  # computed afresh (by the same code here), not read back


def _weights(path: Path) -> dict[str, np.ndarray]:
    import keras

    model = keras.models.load_model(path)
    return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}


def test_face_swa_averages_the_epochs_after_the_cycle_and_exports_the_average(tmp_path: Path) -> None:
    """--swa-epochs: epochs past the cosine cycle run at --swa-lr and their end-of-epoch weights are averaged; a resume
    goes on with the run's recorded plan (no SWA flags), and the export takes the average with default flags."""
    _face_tree(tmp_path / "train", 6)
    _face_tree(tmp_path / "val", 2)
    args = ["--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--quick"]
    run, out = tmp_path / "run", tmp_path / "face_emotion.tflite"
    swa = ["--epochs", "1", "--swa-epochs", "2", "--swa-lr", "0.0007"]
    r = _run("training.face", *args, *swa[:3], "1", *swa[4:], "--run-dir", str(run), "--no-export")
    assert r.returncode == 0, r.stderr[-2000:]
    w2 = _weights(run / "last.keras")
    with np.load(run / "swa_mean.npz") as z:
        assert int(z["n"]) == 1
        np.testing.assert_allclose(z["w0"], list(w2.values())[0])  # one epoch averaged: its weights
    r = _run("training.face", *args, *swa, "--run-dir", str(run), "--no-export", "--resume")  # averages one more
    assert r.returncode == 0, r.stderr[-2000:]
    w3 = _weights(run / "last.keras")
    hist = json.loads((run / "history.json").read_text())
    assert len(hist["loss"]) == 3 and hist["lr"][1:] == pytest.approx([7e-4, 7e-4])
    averaged = _weights(run / "swa.keras")
    for name, w in averaged.items():
        if "moving" not in name:  # batch-norm statistics are measured again for the average
            np.testing.assert_allclose(w, (w2[name] + w3[name]) / 2, rtol=1e-5, atol=1e-6)
    info = json.loads((run / "swa.json").read_text())
    assert info["cycle_epochs"] == 1 and info["swa_epochs"] == 2
    stamp = (run / "swa.keras").stat().st_mtime_ns
    r = _run("training.face", *args, "--run-dir", str(run), "--no-export", "--resume")  # nothing left to train
    assert r.returncode == 0 and "swa_plan goes on" in r.stdout, r.stderr[-2000:]
    assert (run / "swa.keras").stat().st_mtime_ns == stamp  # the finished average is not redone
    r = _run("training.face", *args, "--swa-epochs", "3", "--run-dir", str(run), "--no-export", "--resume")
    assert r.returncode == 2 and "swa_plan" in r.stderr and "cycle_epochs" in r.stderr  # --epochs left at 40
    r = _run("training.face", *args, "--export-only", "--run-dir", str(run), "--out", str(out), "--peer-json", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    meta, _ = load_model(out.with_suffix(".json"), expect_kind="face_emotion")
    assert "stochastic weight averaging" in meta.raw["training"]["weights"]
    assert meta.raw["metrics"]["swa_epochs"] == 2


def test_distillation_targets_mix_the_label_with_the_teachers_view_of_the_same_face() -> None:
    """The training transform gives the teacher the face exactly as the student gets it (augmented, erased)."""
    import keras
    import tensorflow as tf

    from training.face import make_augment, make_mix, mirror_mean

    inp = keras.Input((48, 48, 1))
    net = keras.Model(inp, keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(inp)))
    teacher = mirror_mean(lambda a: net(a, training=False))
    rng = np.random.default_rng(0)
    a = rng.random((5, 48, 48, 1)).astype(np.float32)
    b = np.eye(7, dtype=np.float32)[[0, 1, 2, 3, 4]]
    args = SimpleNamespace(degrade=0.5, erase=0.5)
    pre = FacePreprocess()
    seen, target = make_mix(tf, make_augment(pre, 0), pre, args, teacher, 0.3)(a, a[:, ::-1], b)
    seen = keras.ops.convert_to_numpy(seen)
    mirrored = seen[:, :, ::-1]  # left and right swapped, as the daemon's mirror pass sees a face
    p = 0.5 * (keras.ops.convert_to_numpy(net(seen)) + keras.ops.convert_to_numpy(net(mirrored)))
    want = 0.7 * b + 0.3 * p
    np.testing.assert_allclose(keras.ops.convert_to_numpy(target), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(target).sum(1), 1.0, rtol=1e-5)  # still a distribution
    _, plain = make_mix(tf, make_augment(pre, 0), pre, args, None, 0.0)(a, a[:, ::-1], b)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(plain), b)  # no teacher: the label


def test_the_shipped_model_as_teacher_scores_a_batch_as_the_daemon_scores_each_face() -> None:
    """A .tflite teacher runs whole batches (batch dimension resized) inside tf.data; its probabilities must be the
    ones the daemon's runtime gives each face alone, mirror averaged, for real FER2013 faces."""
    import tensorflow as tf

    from edge_daemon.runtime import TFLiteModel
    from training.face import load_teacher
    from training.face_data import load_fer_csv, prepare_all

    sample = shared_data("fer2013_csv_sample/fer2013_first_200_rows.csv")
    x, _ = prepare_all(load_fer_csv(sample), FacePreprocess())
    x = x[:24].astype(np.float32)
    shipped = ROOT / "models_tflite" / "face_emotion.tflite"
    teacher = load_teacher({"teacher": str(shipped), "share": 0.5, "mirror": True}, FacePreprocess())
    ds = tf.data.Dataset.from_tensor_slices(x).batch(16).map(teacher, num_parallel_calls=4)  # batches of 16 and 8
    got = np.concatenate([b.numpy() for b in ds])
    one = TFLiteModel(shipped)

    def alone(face: np.ndarray) -> np.ndarray:  # the daemon's one-face run, renormalised as the teacher's targets are
        p = one.run(face[None])[0][0]
        return p / p.sum()

    want = [0.5 * (alone(f) + alone(np.ascontiguousarray(f[:, ::-1]))) for f in x]
    np.testing.assert_allclose(got, np.stack(want), atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)  # targets mixed from it stay distributions
    assert len(set(got.argmax(1))) > 1  # real faces, not one answer for everything
    with pytest.raises(UserError, match="scale"):  # a teacher fed other inputs than it was made for is refused
        load_teacher({"teacher": str(shipped), "share": 0.5}, FacePreprocess(scale=2 / 255))


def test_face_distilled_from_a_teacher_records_it_through_resume_and_export(tmp_path: Path) -> None:
    _face_tree(tmp_path / "train", 6)
    _face_tree(tmp_path / "val", 2)
    args = ["--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--quick", "--no-export"]
    r = _run("training.face", *args, "--epochs", "1", "--run-dir", str(tmp_path / "teacher"))
    assert r.returncode == 0, r.stderr[-2000:]
    missing = _run("training.face", *args, "--teacher", str(tmp_path / "nope.keras"), "--run-dir", str(tmp_path / "s"))
    assert missing.returncode == 2 and "nope.keras" in missing.stderr and "Traceback" not in missing.stderr
    run, teacher = tmp_path / "student", tmp_path / "teacher" / "best.keras"
    r = _run(
        "training.face", *args, "--epochs", "1", "--teacher", str(teacher), "--distill", "0.4", "--run-dir", str(run)
    )
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run("training.face", *args, "--epochs", "2", "--resume", "--run-dir", str(run))  # no --teacher: the run's
    assert r.returncode == 0 and "distill goes on" in r.stdout, r.stderr[-2000:]
    r = _run("training.face", *args, "--resume", "--teacher", str(teacher), "--distill", "0.3", "--run-dir", str(run))
    assert r.returncode == 2 and "'share': 0.3" in r.stderr  # a plan changed half-way is refused
    out = tmp_path / "face_emotion.tflite"
    exp = [a for a in args if a != "--no-export"]
    r = _run("training.face", *exp, "--export-only", "--run-dir", str(run), "--out", str(out), "--peer-json", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    meta, _ = load_model(out.with_suffix(".json"), expect_kind="face_emotion")
    said = meta.raw["training"]["distillation"]
    assert "0.4" in said and "best.keras (sha256 " in said and str(tmp_path) not in said  # no machine path
    shipped = ROOT / "models_tflite" / "face_emotion.tflite"  # the shipped model teaches too, through tf.data
    r = _run("training.face", *args, "--epochs", "1", "--teacher", str(shipped), "--run-dir", str(tmp_path / "s2"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "s2" / "distill.json").read_text())["mirror"] is True


def _ased_tree(root: Path) -> None:
    """Four ASED speakers (FLAC, ASED's names), five classes with the same tones as `_ravdess_tree` per emotion."""
    import soundfile

    rng = np.random.default_rng(1)
    tone = {"n1": 1, "h3": 3, "a5": 5, "f2": 6, "s4": 4}  # the RAVDESS emotion code each ASED class maps onto
    folders = {"n1": "01Neutral", "f2": "02Fearful", "h3": "03Happy", "s4": "04Sad", "a5": "05Angry"}
    for spk, gender in ((1, "01"), (2, "02"), (3, "01"), (4, "02")):
        for code, emo in tone.items():
            t = np.arange(int(2.6 * SAMPLE_RATE)) / SAMPLE_RATE
            audio = 0.2 * np.sin(2 * np.pi * (100 + 60 * emo) * t) + 0.01 * rng.standard_normal(t.size)
            p = root / folders[code] / f"{code}-01-01-{gender}-{spk:02d}.flac"
            p.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(p, (audio * 32767).astype(np.int16), SAMPLE_RATE, subtype="PCM_16")


def test_speech_leave_one_corpus_out_records_uar_per_corpus_and_sex(tmp_path: Path) -> None:
    _ravdess_tree(tmp_path / "rav")
    _ased_tree(tmp_path / "ased")
    out = tmp_path / "models" / "speech_emotion.tflite"
    args = ["--data", f"ravdess={tmp_path / 'rav'}", "--data", f"ased={tmp_path / 'ased'}"]
    r = _run(
        "training.speech",
        *args,
        "--leave-corpus-out",
        "each",
        "--quick",
        "--threads",
        "2",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(out),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    loco = json.loads((tmp_path / "run" / "loco.json").read_text())
    assert [f["held_out_corpus"] for f in loco["folds"]] == ["ased", "ravdess"]
    # each held-out corpus on its own labels that the other corpus taught: the trees share neutral, happy, angry;
    # ASED's sad and fear, and this RAVDESS tree's surprise, have no teacher (not 8 classes, not their own 5 or 4)
    assert [f["scored_on"] for f in loco["folds"]] == [["neutral", "happy", "angry"]] * 2
    assert [f["clips_not_scored"] for f in loco["folds"]] == [8, 4]
    assert {h.split(":")[0] for h in loco["folds"][0]["held_out_speakers"]} == {"ased"}
    assert set(loco["pooled_by_corpus_int8"]) == {"ased", "ravdess"}
    assert loco["pooled_by_corpus_int8"]["ased"]["clips"] == 12 and set(loco["pooled_by_sex_int8"]) == {"F", "M"}
    for f in loco["folds"]:
        assert 0 <= f["clip_uar_int8"] <= 1 and set(f["by_corpus_int8"]) == {f["held_out_corpus"]}
    assert "leave-one-corpus-out" in loco["protocol"] and "calibration" not in loco
    assert "| held out: ased |" in r.stdout and "UAR" in r.stdout
    assert set(loco["pooled_by_corpus_sex_int8"]) == {"ased:F", "ased:M", "ravdess:F", "ravdess:M"}
    assert "| corpus:sex ravdess:F |" in r.stdout
    assert not out.exists()  # nothing ships from a leave-one-corpus-out run
    # its models are named for the held-out corpus: the CV's fold<k> files (fusion_eval reads them) stay the CV's
    assert {p.name for p in (tmp_path / "run").glob("*.tflite")} == {"loco-ased.tflite", "loco-ravdess.tflite"}
    # a corpus that is not loaded, or only one corpus: one line, exit code 2, before any featurising
    bad = _run("training.speech", *args[:2], "--leave-corpus-out", "ased", "--run-dir", str(tmp_path / "r2"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: --leave-corpus-out ased")
    assert "Traceback" not in bad.stderr


# ---------------------------------------------------------------- FER+ targets and small faces in the face trainer

FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
FERPLUS_COLUMN_OF = {  # CANONICAL class -> FER+ vote column (after Usage and Image name)
    "angry": 4,
    "disgust": 5,
    "fear": 6,
    "happy": 1,
    "sad": 3,
    "surprise": 2,
    "neutral": 0,
}


def _fer_csv_and_ferplus(root: Path, shift: int = 0) -> tuple[Path, Path]:
    """An original-format fer2013.csv (Training rows, then PublicTest; row i has class i % 7, brightness by class)
    and FER+ votes for it: 7 votes for the row's class, 3 for the next class; `shift` moves the votes by rows."""
    rng = np.random.default_rng(0)
    usages = ["Training"] * 84 + ["PublicTest"] * 28
    rows, votes = ["emotion,pixels,Usage"], [FERPLUS_HEADER]
    for i, usage in enumerate(usages):
        img = rng.integers(0, 60, 48 * 48) + 25 * (i % 7)
        rows.append(f"{i % 7},{' '.join(map(str, img))},{usage}")
    for i, usage in enumerate(usages):
        c = (i + shift) % 7
        v = [0] * 10
        v[FERPLUS_COLUMN_OF[CANONICAL[c]]] += 7
        v[FERPLUS_COLUMN_OF[CANONICAL[(c + 1) % 7]]] += 3
        votes.append(f"{usage},fer{i:07d}.png,{','.join(map(str, v))}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "fer2013.csv").write_text("\n".join(rows) + "\n")
    (root / "ferplus.csv").write_text("\n".join(votes) + "\n")
    return root / "fer2013.csv", root / "ferplus.csv"


def test_face_quick_run_on_ferplus_soft_targets_with_small_faces(tmp_path: Path) -> None:
    fer, ferplus = _fer_csv_and_ferplus(tmp_path / "data")
    out = tmp_path / "models" / "face_emotion.tflite"
    common = ["--train", str(fer), "--val", str(fer), "--quick", "--threads", "2", "--peer-json", "none.json"]
    r = _run(
        "training.face",
        *common,
        "--ferplus",
        str(ferplus),
        "--ferplus-mode",
        "soft",
        "--small-faces",
        "0.5",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (
        "FER+ joined to 84 of 84 images (100.0%)" in r.stdout and "agrees with the FER2013 label on 100.0%" in r.stdout
    )
    meta, _ = load_model(out.with_suffix(".json"), expect_kind="face_emotion")
    m = meta.raw["metrics"]
    assert m["val_ferplus_majority_images"] == 28 and 0 <= m["val_accuracy_ferplus_majority_int8"] <= 1
    assert set(m["per_class_ferplus_majority_int8"]) == set(CANONICAL)
    assert "soft targets" in meta.raw["training"]["targets"] and "84 of 84" in meta.raw["training"]["targets"]
    assert "50% of faces per epoch rendered at 16-48 px" in meta.raw["training"]["small_faces"]
    assert "FER+ labels" in meta.raw["data_licence"] and "MIT" in meta.raw["data_licence"]
    card = out.with_suffix(".md").read_text()
    assert "Val against FER+ majority labels (28 faces" in card and "MIT" in card
    recipe = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert recipe["ferplus_mode"] == "soft" and recipe["small_faces"] == 0.5
    # a resume that asks for other targets is refused (the run began on soft targets)
    again = _run(
        "training.face", *common, "--ferplus", str(ferplus), "--ferplus-mode", "majority", "--resume",
        "--run-dir", str(tmp_path / "run"), "--out", str(out),
    )  # fmt: skip
    assert again.returncode == 2 and "ferplus_mode" in again.stderr and "Traceback" not in again.stderr


def test_face_trainer_refuses_ferplus_votes_shifted_by_one_row(tmp_path: Path) -> None:
    fer, ferplus = _fer_csv_and_ferplus(tmp_path / "data", shift=1)
    r = _run(
        "training.face", "--train", str(fer), "--val", str(fer), "--quick", "--ferplus", str(ferplus),
        "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "m" / "face_emotion.tflite"),
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("error: --train: FER+ majority agrees with the FER2013 label on 0.0% of 84 images")
    assert "not aligned" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "last.keras").exists()  # refused before any training


def test_small_faces_render_real_faces_smaller_and_keep_the_input_range() -> None:
    from training.face import small_faces
    from training.face_data import load_fer_csv, prepare_all

    pre = FacePreprocess()
    x, _ = prepare_all(load_fer_csv(shared_data("fer2013_csv_sample/fer2013_first_200_rows.csv")), pre)
    x = x[:64]
    lo, hi = sorted((pre.offset, 255.0 * pre.scale + pre.offset))
    got = small_faces(x, 1.0, pre, np.random.default_rng(0))
    assert got.shape == x.shape and got.dtype == np.float32
    assert got.min() >= lo and got.max() <= hi
    assert all(not np.array_equal(a, b) for a, b in zip(got, x, strict=True))  # every face changed

    # fine detail is lost as in a face 16-48 px across: less high-frequency energy in most faces
    def detail(a: np.ndarray) -> float:
        return float(cv2.Laplacian(a[..., 0].astype(np.float64), cv2.CV_64F).var())

    assert np.mean([detail(a) < detail(b) for a, b in zip(got, x, strict=True)]) > 0.8
    assert np.array_equal(small_faces(x, 0.0, pre, np.random.default_rng(0)), x)  # P = 0: untouched
    half = small_faces(x, 0.5, pre, np.random.default_rng(1))
    changed = np.mean([not np.array_equal(a, b) for a, b in zip(half, x, strict=True)])
    assert 0.3 < changed < 0.7
