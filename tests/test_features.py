"""Speech features: our step-by-step MFCC is python_speech_features' own result, bit for bit; the pitch track
follows a voice frame by frame, whatever its level, and stays silent on noise; the per-stream normalisation settles
on a voice, keeps what per-window CMVN loses, and forgets."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import python_speech_features as psf

from edge_daemon.audio.features import PITCH_TRACKER, PITCH_WINDOW, SpeechFeatures
from training.speech_data import read_wav

from .conftest import MODELS

ROOT = Path(__file__).resolve().parents[1]


def test_mfcc_equals_python_speech_features() -> None:
    """Equal to the last bits but the DCT's (a matrix product here, scipy's FFT in the library: the daemon imports no
    scipy, 25 MB of RSS): within 1e-9 on values up to hundreds."""
    f = SpeechFeatures()
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal(f.window_samples) * 0.1
        x[: f.window_samples // 4] = 0.0  # digital silence exercises the log-of-zero guard
        ref = psf.mfcc(
            x, f.sample_rate, f.winlen, f.winstep, f.numcep, f.nfilt, f.nfft, 0, None, f.preemph, 22, True, np.hamming
        )
        assert np.allclose(f.mfcc(x), ref, rtol=1e-12, atol=1e-9)


def test_log_mel_bands_are_python_speech_features_own_and_travel_in_the_metadata() -> None:
    """`mel`: the log of psf's filterbank energies (the MFCCs' Hamming window), one column per band, no deltas."""
    f = SpeechFeatures(mel=True, deltas=False, cmvn=False)
    x = np.random.default_rng(0).standard_normal(f.window_samples) * 0.1
    x[: f.window_samples // 4] = 0.0
    ref = np.log(psf.fbank(x, f.sample_rate, f.winlen, f.winstep, f.nfilt, f.nfft, 0, None, f.preemph, np.hamming)[0])
    np.testing.assert_allclose(f.log_mel(x), ref, rtol=1e-12, atol=1e-9)
    assert f.compute(x).shape == (f.num_frames, f.nfilt) == (f.num_frames, f.num_features)
    assert SpeechFeatures.from_meta(json.loads(json.dumps(f.to_meta()))) == f
    assert "mel" not in SpeechFeatures().to_meta()  # off, left out: older daemons still load MFCC models
    for wrong in ({"deltas": True}, {"deltas": False, "pitch": True}):
        with pytest.raises(ValueError, match="mel"):
            SpeechFeatures(mel=True, **wrong)


def test_features_have_the_advertised_shape_and_are_level_invariant() -> None:
    f = SpeechFeatures()
    x = np.random.default_rng(0).standard_normal(f.window_samples).astype(np.float32) * 0.05
    a, b = f.compute(x), f.compute(4 * x)
    assert a.shape == (f.num_frames, f.num_features) and a.dtype == np.float32
    assert np.allclose(a, b, atol=1e-3)  # CMVN removes the recording level


SPEECH = Path(__file__).parent / "fixtures" / "speech"

# ---------------------------------------------------------------- pitch


def harmonic(f0: np.ndarray, rate: int) -> np.ndarray:
    """A voice-like tone: seven harmonics of an instantaneous pitch `f0` (Hz, one value per sample)."""
    phase = 2 * np.pi * np.cumsum(f0) / rate
    return sum(0.3 / k * np.sin(k * phase) for k in range(1, 8))


def test_pitch_follows_a_gliding_voice_frame_by_frame_and_is_silent_on_noise() -> None:
    f = SpeechFeatures(pitch=True)
    n = f.window_samples
    truth = 90 * 2 ** (np.arange(n) / n * 1.5)  # 90 Hz gliding up to 255 Hz over the window
    p = f.pitch_track(harmonic(truth, f.sample_rate), f.num_frames)
    assert p.shape == (f.num_frames, 2)
    centres = np.round(f.winlen * f.sample_rate / 2 + np.arange(f.num_frames) * f.winstep * f.sample_rate).astype(int)
    half = PITCH_WINDOW / 2 * f.sample_rate
    inside = (centres >= half) & (centres < n - half)  # frames whose pitch window lies in the audio
    err = np.abs(p[inside, 0] - np.log(truth[centres[inside]]))
    # Within 0.2 % (0.5 % at worst) of the true pitch, aligned: whole 8 kHz lags alone would be off by up to 1.5 %.
    assert np.median(err) < 0.002 and np.max(err) < 0.005
    assert np.all(p[inside, 1] > 0.9)
    noise = np.random.default_rng(0).standard_normal(n) * 0.1
    assert np.all(f.pitch_track(noise, f.num_frames)[:, 1] < 0.45)  # no frame of noise is voiced


def test_a_pitch_jump_is_first_read_on_the_mfcc_frame_centred_on_it() -> None:
    # A voice that jumps from 120 to 170 Hz (not an octave, so neither pitch hides in the other's autocorrelation)
    # at a sample off the frame grid: the first frame that reads the new pitch is the one centred on the jump.
    f = SpeechFeatures(pitch=True)
    n = f.window_samples
    centres = f.winlen * f.sample_rate / 2 + np.arange(f.num_frames) * f.frame_step
    for jump in (5003, 12345, 20000, 30077):
        hz = np.exp(
            f.pitch_track(harmonic(np.where(np.arange(n) < jump, 120.0, 170.0), f.sample_rate), f.num_frames)[:, 0]
        )
        first = int(np.argmax(hz > np.sqrt(120 * 170)))
        assert abs(centres[first] - jump) / f.sample_rate < 0.007, (jump, centres[first])  # a frame is 10 ms
        assert np.all(hz[first + 3 :] > 165) and np.all(hz[: first - 2] < 125)


def test_pitch_needs_a_frame_step_of_whole_8_khz_samples() -> None:
    assert SpeechFeatures(pitch=True, winstep=0.0125).frame_step == 200
    with pytest.raises(ValueError, match="winstep 0.0100625 s is 161 samples"):
        SpeechFeatures(pitch=True, winstep=0.0100625)  # the pitch frames would drift off the MFCC frames
    assert SpeechFeatures(winstep=0.0100625).frame_step == 161  # MFCCs alone take any step


def test_pitch_bridges_a_pause_and_tells_a_low_voice_from_a_high_one_at_any_level() -> None:
    f = SpeechFeatures(pitch=True, cmvn=False)
    n = f.window_samples
    x = harmonic(np.full(n, 120.0), f.sample_rate)
    x[n // 3 : n // 2] = 0.0  # a pause: unvoiced frames take the pitch around them, with no voicing
    p = f.pitch_track(x + 1e-5 * np.random.default_rng(0).standard_normal(n), f.num_frames)
    assert np.allclose(np.exp(p[:, 0]), 120, rtol=0.03)
    assert p[f.num_frames * 5 // 12, 1] == 0.0 and p[f.num_frames // 6, 1] > 0.9
    medians = {}
    for name in ("ravdess_03-01-02-01-01-01-09.wav", "ravdess_03-01-06-02-01-01-04.wav"):  # actor 09 a man, 04 a woman
        a = read_wav(SPEECH / name)[f.sample_rate : f.sample_rate + n].astype(np.float64)
        # Through compute(), dither included: 20 dB quieter reads the same. (Actor 09 speaks at -54 dBFS RMS already;
        # 20 dB below that is the last bit of a 16-bit microphone.)
        p, quiet = (f.compute(g * a)[:, f.numcep : f.numcep + 2].astype(np.float64) for g in (1.0, 0.1))
        voiced = p[:, 1] >= 0.45
        assert np.mean((quiet[:, 1] >= 0.45) == voiced) > 0.95
        assert np.mean(np.abs(quiet[voiced, 0] - p[voiced, 0]) < 0.01) > 0.95  # the same pitch, within 1 %
        assert voiced.mean() > 0.4
        medians[name[-6:-4]] = float(np.exp(np.median(p[voiced, 0])))
    assert 70 < medians["09"] < 160 < 200 < medians["04"] < 400, medians


def test_pitch_columns_follow_the_mfccs_and_travel_in_the_metadata() -> None:
    f = SpeechFeatures(pitch=True, cmvn=False)
    x = harmonic(np.full(f.window_samples, 150.0), f.sample_rate) + 0.01 * np.random.default_rng(0).standard_normal(
        f.window_samples
    )
    a = f.compute(x)
    assert a.shape == (f.num_frames, (f.numcep + 2) * 3) == (f.num_frames, f.num_features)
    np.testing.assert_array_equal(a[:, : f.numcep], SpeechFeatures(cmvn=False).compute(x)[:, : f.numcep])
    assert np.allclose(a[:, f.numcep], np.log(150), atol=0.03)  # log f0 comes right after the MFCCs
    assert SpeechFeatures.from_meta(json.loads(json.dumps(f.to_meta()))) == f
    # Off, the field is left out: the metadata is what models had before it existed (older daemons load them), and
    # the shipped model's record is exactly what it would write.
    shipped = json.loads((MODELS / "speech_emotion.json").read_text())["preprocess"]
    assert SpeechFeatures.from_meta(shipped).to_meta() == shipped and "pitch" not in SpeechFeatures().to_meta()
    with pytest.raises(TypeError, match="pitch"):
        SpeechFeatures(pitch="yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------- per-stream normalisation


def stream_features(memory: int = 10, prior: tuple[float, ...] | None = None) -> SpeechFeatures:
    """Per-stream normalisation whose prior is another voice's statistics (a woman's, fearful), as training makes one."""
    if prior is None:
        raw = np.concatenate(voice_windows("ravdess_03-01-06-02-01-01-04.wav", SpeechFeatures(cmvn=False)))
        prior = tuple(np.concatenate([raw.mean(0), raw.std(0)]).tolist())
    return SpeechFeatures(cmvn=False, norm_memory=memory, norm_prior=prior)


def voice_windows(name: str, f: SpeechFeatures, gain: float = 1.0) -> list[np.ndarray]:
    """Every window of a real RAVDESS utterance, at a 0.25 s hop, as un-normalised features."""
    a = read_wav(SPEECH / name)
    # A microphone's noise floor, before the gain: RAVDESS's files have stretches of digital zeros, where the fixed
    # dither, not the recording, would set the spectrum; a real microphone never gives those.
    a = (a + 3e-4 * np.random.default_rng(0).standard_normal(len(a))) * gain
    hop = f.sample_rate // 4
    return [f.compute(a[s : s + f.window_samples]) for s in range(0, len(a) - f.window_samples + 1, hop)]


def test_a_settled_stream_is_independent_of_the_recording_level() -> None:
    f = stream_features()
    quiet, loud = f.stream(), f.stream()
    pairs = zip(voice_windows("ravdess_03-01-02-01-01-01-09.wav", f, 0.1),
                voice_windows("ravdess_03-01-02-01-01-01-09.wav", f, 0.8), strict=True)  # fmt: skip
    outs = [(quiet.push(q), loud.push(lo)) for q, lo in pairs for _ in range(10)]  # the same voice for a while
    (q0, l0), (q1, l1) = outs[0], outs[-1]
    # The window's level against the voice (mean log energy, c0): at first the prior counts and the gain shows;
    # settled on this stream's own level, it no longer does.
    assert abs(q0[:, 0].mean() - l0[:, 0].mean()) > 0.2
    assert abs(q1[:, 0].mean() - l1[:, 0].mean()) < 0.02


def test_a_stream_keeps_the_level_of_a_window_against_the_voice_it_has_heard() -> None:
    """What per-window CMVN throws away: a louder window than the speaker's usual reads as louder."""
    f = stream_features()
    s = f.stream()
    windows = voice_windows("ravdess_03-01-02-01-01-01-09.wav", f)
    for w in windows * 3:
        s.push(w)
    louder = voice_windows("ravdess_03-01-02-01-01-01-09.wav", f, 4.0)[0]
    same = s.push(windows[0].copy())
    assert s.push(louder)[:, 0].mean() > same[:, 0].mean() + 0.3  # log energy (c0) is up by log(16) in raw terms
    cmvn = SpeechFeatures()
    loud, usual = read_wav(SPEECH / "ravdess_03-01-02-01-01-01-09.wav")[: f.window_samples] * np.array([[4], [1]])
    assert abs(cmvn.compute(loud)[:, 0].mean() - cmvn.compute(usual)[:, 0].mean()) < 0.01  # per window: lost


def test_a_stream_forgets_an_old_voice_within_a_few_memories() -> None:
    f = stream_features(memory=8)
    s, fresh = f.stream(), f.stream()
    never = replace(f, norm_memory=100_000).stream()  # the same running average, never forgetting
    for w in voice_windows("ravdess_03-01-02-01-01-01-09.wav", f, 0.5) * 2:  # woman, calm
        s.push(w), never.push(w)
    other = voice_windows("ravdess_03-01-06-02-01-01-04.wav", f)  # man, fearful
    for w in other * 3:
        s.push(w), fresh.push(w), never.push(w)
    # What remains of the old voice is a small part of what a stream that never forgets keeps of it.
    left, kept = np.abs(s.mean - fresh.mean), np.abs(never.mean - fresh.mean)
    assert left.sum() < 0.35 * kept.sum() and kept.max() > 1.0
    s.reset()
    assert s.weight == f.norm_prior_weight and np.allclose(s.mean, f.norm_prior[: f.num_features])


def test_stream_normalisation_round_trips_through_metadata_and_refuses_what_cannot_work() -> None:
    f = stream_features()
    meta = json.loads(json.dumps(f.to_meta()))  # as the model's JSON holds it
    assert SpeechFeatures.from_meta(meta) == f and SpeechFeatures().stream() is None
    n = f.num_features
    with pytest.raises(ValueError, match="exclude"):
        SpeechFeatures(cmvn=True, norm_memory=10, norm_prior=(0.0,) * n + (1.0,) * n)
    with pytest.raises(ValueError, match="norm_prior"):
        SpeechFeatures(cmvn=False, norm_memory=10, norm_prior=(0.0,) * n)
    with pytest.raises(ValueError, match="norm_prior"):
        SpeechFeatures(cmvn=False, norm_memory=10, norm_prior=(0.0,) * n + (0.0,) * n)  # a zero std
    with pytest.raises(TypeError, match="norm_memory"):
        SpeechFeatures(cmvn=False, norm_memory=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm_memory"):
        SpeechFeatures(cmvn=False, norm_memory=10**400, norm_prior=(0.0,) * n + (1.0,) * n)
    with pytest.raises(ValueError, match="norm_prior is set"):
        SpeechFeatures(norm_prior=(0.0,) * n + (1.0,) * n)  # a prior for a model that normalises per window
    with pytest.raises(ValueError, match="norm_prior_weight"):
        SpeechFeatures(cmvn=False, norm_memory=2, norm_prior_weight=5.0, norm_prior=(0.0,) * n + (1.0,) * n)


def test_the_daemon_leaves_scipy_signal_unloaded_while_pitch_is_off() -> None:
    # scipy.signal costs about 50 MB of resident memory (a third of the daemon's 150 MB budget); the pitch tracker
    # needs it and once imported it at module level, for every daemon, pitch on or not (found by the replay RSS).
    code = (
        "import sys, numpy as np\n"
        "import edge_daemon.cli, edge_daemon.daemon, edge_daemon.web.server\n"
        "from edge_daemon.config import load_config\n"
        "from edge_daemon.models import load_models\n"
        "from edge_daemon.audio.features import SpeechFeatures\n"
        "models = load_models(load_config('config.yaml'))\n"
        "f = SpeechFeatures()\n"
        "f.compute(np.zeros(f.window_samples, np.float32))\n"
        "assert 'scipy.signal' not in sys.modules, 'scipy.signal was imported'\n"
        "SpeechFeatures(pitch=True).compute(np.zeros(f.window_samples, np.float32))\n"
        "assert 'scipy.signal' in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]


def test_a_model_made_with_another_pitch_tracker_is_refused() -> None:
    # The tracker's output is part of what a model with pitch was trained on; an older one would hear other features.
    meta = SpeechFeatures(pitch=True).to_meta()
    assert meta["pitch_tracker"] == PITCH_TRACKER and SpeechFeatures.from_meta(meta) == SpeechFeatures(pitch=True)
    for stale in (
        {**meta, "pitch_tracker": PITCH_TRACKER - 1},
        {k: v for k, v in meta.items() if k != "pitch_tracker"},
    ):
        with pytest.raises(ValueError, match="pitch tracker version"):
            SpeechFeatures.from_meta(stale)
    assert "pitch_tracker" not in SpeechFeatures().to_meta()  # pitch off: the metadata (and cache keys) of before
    with pytest.raises(ValueError, match="pitch is off"):
        SpeechFeatures.from_meta({**SpeechFeatures().to_meta(), "pitch_tracker": PITCH_TRACKER})
