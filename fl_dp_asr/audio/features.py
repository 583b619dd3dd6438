"""Log-mel filterbank features in JAX, padding-aware, computed on device from int16 audio.

Pipeline for a batch of zero-padded waveforms ``[B, S]`` with valid lengths ``[B]``:

1. int16 → float in [-1, 1) (divide by 32768); float input is used as is.
2. Pre-emphasis ``y[n] = x[n] − 0.97·x[n−1]`` (``y[0] = x[0]``) on the whole waveform.
3. Frames of 25 ms (400 samples) every 10 ms (160 samples), no centre padding: frame ``t``
   covers samples ``[160·t, 160·t + 400)`` and is valid iff it lies inside the valid
   samples, so an utterance of ``L`` samples has ``max(0, 1 + (L − 400) // 160)`` frames.
4. Periodic Hann window, ``|FFT|²`` with 512 points (257 bins).
5. 80 triangular filters on the HTK mel scale (2595·log10(1 + f/700)) between 20 Hz and
   8 kHz, applied to the power spectrum.
6. ``log(max(mel, 1e-6))``.
7. Per-utterance normalization: every mel bin gets zero mean and unit variance over the
   utterance's valid frames only; padded frames are set to 0.

Everything is static-shape, so it jits and vmaps (the loss computes it inside the
federated round step).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
    """Options of :func:`log_mel` (kept in the model config and checkpoint metadata)."""

    sample_rate: int = 16000
    frame_length_ms: float = 25.0
    frame_step_ms: float = 10.0
    fft_size: int = 512
    num_mel_bins: int = 80
    lower_edge_hz: float = 20.0
    upper_edge_hz: float = 8000.0
    preemphasis: float = 0.97
    log_floor: float = 1e-6
    normalize: bool = True
    variance_epsilon: float = 1e-6


def _hz_to_mel(hz: np.ndarray | np.float64) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    num_mel_bins: int, fft_size: int, sample_rate: int, lower_edge_hz: float, upper_edge_hz: float
) -> np.ndarray:
    """Triangular HTK-mel filters, float32 [fft_size // 2 + 1, num_mel_bins] (peak 1)."""
    if not 0.0 <= lower_edge_hz < upper_edge_hz <= sample_rate / 2:
        raise ValueError(
            f"need 0 <= lower_edge_hz ({lower_edge_hz}) < upper_edge_hz "
            f"({upper_edge_hz}) <= sample_rate / 2 ({sample_rate / 2})"
        )
    bin_hz = np.arange(fft_size // 2 + 1) * sample_rate / fft_size
    edges_hz = _mel_to_hz(
        np.linspace(
            _hz_to_mel(np.float64(lower_edge_hz)),
            _hz_to_mel(np.float64(upper_edge_hz)),
            num_mel_bins + 2,
        )
    )
    left, center, right = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
    rising = (bin_hz[:, None] - left) / (center - left)
    falling = (right - bin_hz[:, None]) / (right - center)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def num_frames(num_samples, frame_length: int = 400, frame_step: int = 160):
    """Frames of ``num_samples`` samples (works on ints, numpy and JAX arrays)."""
    if isinstance(num_samples, int):
        return max(0, 1 + (num_samples - frame_length) // frame_step)
    xp = jnp if isinstance(num_samples, jax.Array) else np
    return xp.maximum(0, 1 + (num_samples - frame_length) // frame_step)


def log_mel(
    waveform: jax.Array,
    lengths: jax.Array,
    *,
    sample_rate: int = 16000,
    frame_length_ms: float = 25.0,
    frame_step_ms: float = 10.0,
    fft_size: int = 512,
    num_mel_bins: int = 80,
    lower_edge_hz: float = 20.0,
    upper_edge_hz: float = 8000.0,
    preemphasis: float = 0.97,
    log_floor: float = 1e-6,
    normalize: bool = True,
    variance_epsilon: float = 1e-6,
) -> tuple[jax.Array, jax.Array]:
    """Normalized log-mel features of zero-padded waveforms (see the module docstring).

    Args:
        waveform: int16 (or float, already in [-1, 1]) [B, S] audio at ``sample_rate`` Hz.
        lengths: int [B] valid samples per utterance.
        sample_rate ... variance_epsilon: see :class:`LogMelConfig`; ``log_mel(w, n,
            **dataclasses.asdict(config))`` applies a config.

    Returns:
        ``(features, paddings)``: float32 [B, T, num_mel_bins] and float32 [B, T] with
        1.0 at padded frames, T = ``num_frames(S)``. Padded frames are 0.

    >>> import numpy as np
    >>> w = (np.random.default_rng(0).normal(size=(2, 16000)) * 3000).astype(np.int16)
    >>> f, p = log_mel(w, np.array([16000, 8000]))
    >>> f.shape, p.sum(axis=1).tolist()
    ((2, 98, 80), [0.0, 50.0])
    """
    frame_length = round(sample_rate * frame_length_ms / 1000)
    frame_step = round(sample_rate * frame_step_ms / 1000)
    if fft_size < frame_length:
        raise ValueError(f"fft_size {fft_size} < frame length {frame_length} samples")
    waveform = jnp.asarray(waveform)
    if waveform.shape[1] < frame_length:
        raise ValueError(
            f"padded waveforms of {waveform.shape[1]} samples are shorter than "
            f"one {frame_length}-sample frame"
        )
    if jnp.issubdtype(waveform.dtype, jnp.integer):
        x = waveform.astype(jnp.float32) / 32768.0
    else:
        x = waveform.astype(jnp.float32)
    if preemphasis:
        x = jnp.concatenate([x[:, :1], x[:, 1:] - preemphasis * x[:, :-1]], axis=1)

    total_frames = num_frames(waveform.shape[1], frame_length, frame_step)
    starts = np.arange(total_frames)[:, None] * frame_step
    frames = x[:, starts + np.arange(frame_length)[None, :]]  # [B, T, frame_length]
    window = np.hanning(frame_length + 1)[:-1].astype(np.float32)  # periodic Hann
    spectrum = jnp.fft.rfft(frames * window, n=fft_size, axis=-1)
    power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
    filters = mel_filterbank(num_mel_bins, fft_size, sample_rate, lower_edge_hz, upper_edge_hz)
    mel = jnp.einsum("btf,fm->btm", power, filters, precision=jax.lax.Precision.HIGHEST)
    features = jnp.log(jnp.maximum(mel, log_floor))

    valid_frames = num_frames(jnp.asarray(lengths, jnp.int32), frame_length, frame_step)
    valid = (jnp.arange(total_frames)[None, :] < valid_frames[:, None]).astype(jnp.float32)
    if normalize:
        count = jnp.maximum(valid.sum(axis=1), 1.0)[:, None, None]
        mean = jnp.sum(features * valid[..., None], axis=1, keepdims=True) / count
        centred = (features - mean) * valid[..., None]
        variance = jnp.sum(centred**2, axis=1, keepdims=True) / count
        features = centred * jax.lax.rsqrt(variance + variance_epsilon)
    features = features * valid[..., None]
    return features, 1.0 - valid
