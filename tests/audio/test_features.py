"""Log-mel features against an independent float64 numpy/scipy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal

from fl_dp_asr.audio import LogMelConfig, log_mel, num_frames

# Measured max |JAX float32 − numpy float64| over the valid frames of the test below
# (normalized features, unit variance per bin); documented in README.md ("ASR model").
TOLERANCE = 1e-4  # measured: 1.3e-5


def _speech_like(rng, num_samples, sample_rate=16000):
    """Harmonic tone with a wandering pitch, syllable-rate envelope, noise, digital silence."""
    t = np.arange(num_samples) / sample_rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 15))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    x = 0.25 * voiced * envelope + 0.01 * rng.normal(size=num_samples)
    x[num_samples // 3 : num_samples // 3 + 2000] = 0.0  # exact silence hits the log floor
    return np.round(x * 32767 / np.abs(x).max() * 0.8).astype(np.int16)


def _reference_log_mel(samples: np.ndarray, config: LogMelConfig) -> np.ndarray:
    x = samples.astype(np.float64) / 32768.0
    x = np.concatenate([x[:1], x[1:] - config.preemphasis * x[:-1]])
    frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::160]
    spectrum = np.fft.rfft(frames * scipy.signal.get_window("hann", 400), n=512)
    power = spectrum.real**2 + spectrum.imag**2
    mel = lambda hz: 2595 * np.log10(1 + hz / 700)  # noqa: E731
    inverse = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = inverse(np.linspace(mel(20.0), mel(8000.0), 82))
    bins = np.fft.rfftfreq(512, 1 / 16000)
    filters = np.stack([np.interp(bins, edges[m : m + 3], [0.0, 1.0, 0.0]) for m in range(80)], 1)
    features = np.log(np.maximum(power @ filters, 1e-6))
    return (features - features.mean(0)) / np.sqrt(features.var(0) + 1e-6)


def test_log_mel_matches_numpy_reference_on_padded_batch():
    rng = np.random.default_rng(0)
    lengths = np.array([37_123, 16_000, 4_321, 399])  # 2.3 s, 1 s, 0.27 s, < 1 frame
    audio = np.zeros((4, 40_000), np.int16)
    for i, n in enumerate(lengths):
        audio[i, :n] = _speech_like(rng, n)
    audio[3, 399:] = 1234  # garbage after the valid samples must not matter
    features, paddings = jax.jit(log_mel)(audio, lengths)
    assert features.shape == (4, num_frames(40_000), 80) and features.dtype == jnp.float32
    frames = num_frames(lengths)
    np.testing.assert_array_equal(frames, [230, 98, 25, 0])
    np.testing.assert_array_equal(np.asarray(paddings), np.arange(248)[None] >= frames[:, None])
    max_error = 0.0
    for i in range(3):
        expected = _reference_log_mel(audio[i, : lengths[i]], LogMelConfig())
        assert expected.shape == (frames[i], 80)
        max_error = max(max_error, np.abs(np.asarray(features[i, : frames[i]]) - expected).max())
    print(f"log-mel max abs error vs numpy float64: {max_error:.2e}")
    assert max_error < TOLERANCE
    assert not np.asarray(features[:, :][np.asarray(paddings) > 0]).any()  # padding is zero


def test_float_input_equals_int16_input_and_padding_is_irrelevant():
    rng = np.random.default_rng(1)
    audio = _speech_like(rng, 12_000)[None]
    jitted = jax.jit(log_mel)
    as_int, _ = jitted(audio, np.array([12_000]))
    as_float, _ = jitted(audio.astype(np.float32) / 32768.0, np.array([12_000]))
    np.testing.assert_allclose(as_int, as_float, atol=1e-5)
    longer = np.concatenate([audio, np.zeros((1, 5_000), np.int16)], axis=1)
    padded, _ = jitted(longer, np.array([12_000]))
    np.testing.assert_allclose(padded[:, : as_int.shape[1]], as_int, atol=1e-5)
