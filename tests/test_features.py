"""Speech features: our step-by-step MFCC is python_speech_features' own result, bit for bit."""

from __future__ import annotations

import numpy as np
import python_speech_features as psf

from edge_daemon.audio.features import SpeechFeatures


def test_mfcc_equals_python_speech_features_exactly() -> None:
    f = SpeechFeatures()
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal(f.window_samples) * 0.1
        x[: f.window_samples // 4] = 0.0  # digital silence exercises the log-of-zero guard
        ref = psf.mfcc(
            x, f.sample_rate, f.winlen, f.winstep, f.numcep, f.nfilt, f.nfft, 0, None, f.preemph, 22, True, np.hamming
        )
        assert np.array_equal(f.mfcc(x), ref)


def test_features_have_the_advertised_shape_and_are_level_invariant() -> None:
    f = SpeechFeatures()
    x = np.random.default_rng(0).standard_normal(f.window_samples).astype(np.float32) * 0.05
    a, b = f.compute(x), f.compute(4 * x)
    assert a.shape == (f.num_frames, f.num_features) and a.dtype == np.float32
    assert np.allclose(a, b, atol=1e-3)  # CMVN removes the recording level
