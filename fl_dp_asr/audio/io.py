"""Reading audio files into the model's input format (16 kHz mono int16)."""

from __future__ import annotations

import math
import os

import numpy as np
import scipy.signal
import soundfile


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] → int16 (clipped)."""
    return np.clip(np.round(np.asarray(samples) * 32768.0), -32768, 32767).astype(np.int16)


def resample(samples: np.ndarray, source_rate: int, target_rate: int = 16000) -> np.ndarray:
    """Polyphase resampling of float [S] ``samples`` from ``source_rate`` to ``target_rate`` Hz."""
    if source_rate == target_rate:
        return np.asarray(samples)
    g = math.gcd(int(source_rate), int(target_rate))
    return scipy.signal.resample_poly(samples, target_rate // g, source_rate // g)


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Any file soundfile reads (wav, flac, mp3, ogg, ...) as int16 [S] mono at ``sample_rate``.

    Channels are averaged; other sample rates are resampled with a polyphase filter.

    Raises:
        FileNotFoundError: ``{path}: no such file`` (libsndfile would only say
            "System error.").
        ValueError: ``cannot read audio file {path}: {libsndfile's reason}``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        samples, rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        reason = getattr(error, "error_string", str(error))
        raise ValueError(f"cannot read audio file {path}: {reason}") from error
    return to_int16(resample(samples.mean(axis=1), rate, sample_rate))
