"""Reading audio files into the model's input format (16 kHz mono int16).

:func:`load_audio` is the project's one audio decoder: the dataset builders
(:func:`fl_dp_asr.data.layouts.read_audio_16k`) and ``python -m fl_dp_asr.cli.transcribe`` both
read through it, with the same checks (missing file, directory, unreadable, truncated, empty).
"""

from __future__ import annotations

import math
import os

import numpy as np
import scipy.signal
import soundfile

#: A decoded stream may fall short of the length its header declares by this fraction before
#: the file counts as truncated: libmpg123's own tolerance ("stream size off by more than 1%").
TRUNCATION_TOLERANCE = 0.01
NO_SUCH_FILE = "no such file"
IS_A_DIRECTORY = "is a directory, not an audio file"


class AudioFileError(ValueError):
    """An audio file that cannot be decoded: missing, a directory, unreadable, truncated, empty.

    Attributes:
        path: the file.
        reason: why, without the path (``no such file``, ``is a directory, not an audio
            file``, libsndfile's message, ``truncated: ...``, ``no audio samples``).
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = os.fspath(path), reason
        if reason in (NO_SUCH_FILE, IS_A_DIRECTORY):
            super().__init__(f"{self.path}: {reason}")
        else:
            super().__init__(f"{self.path}: unreadable or corrupt audio ({reason})")


def resample(audio: np.ndarray, source_rate: int, target_rate: int = 16000) -> np.ndarray:
    """int16 or float ``[samples]`` at ``source_rate`` Hz → int16 at ``target_rate`` Hz.

    Polyphase filter (``scipy.signal.resample_poly``); int16 input at the target rate comes
    back unchanged (bit-exact). Float input is in int16 units (not [-1, 1]).
    """
    if source_rate == target_rate and audio.dtype == np.int16:
        return audio
    resampled = np.asarray(audio, np.float32)
    if source_rate != target_rate:
        divisor = math.gcd(int(source_rate), int(target_rate))
        resampled = scipy.signal.resample_poly(
            resampled, target_rate // divisor, source_rate // divisor
        )
    return np.clip(np.rint(resampled), -32768, 32767).astype(np.int16)


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Any file soundfile reads (wav, flac, mp3, ogg, ...) as int16 [S] mono at ``sample_rate``.

    Channels are averaged; other sample rates are resampled (:func:`resample`).

    Raises:
        AudioFileError: the file is missing (``{path}: no such file``; libsndfile would
            only say "System error."), a directory, unreadable (libsndfile's reason),
            truncated (fewer samples decode than its header declares, by more than
            :data:`TRUNCATION_TOLERANCE`: a cut MP3, which libmpg123 decodes without an
            error) or holds no samples.
    """
    if os.path.isdir(path):
        raise AudioFileError(path, IS_A_DIRECTORY)
    if not os.path.isfile(path):
        raise AudioFileError(path, NO_SUCH_FILE)
    try:
        with soundfile.SoundFile(os.fspath(path)) as stream:
            audio = stream.read(dtype="int16", always_2d=True)
            declared, source_rate = stream.frames, stream.samplerate
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as error:
        reason = getattr(error, "error_string", None) or f"{type(error).__name__}: {error}"
        raise AudioFileError(path, reason) from error
    if len(audio) < declared * (1 - TRUNCATION_TOLERANCE):
        raise AudioFileError(
            path,
            f"truncated: {len(audio) / source_rate:.2f} s decode of the "
            f"{declared / source_rate:.2f} s its header declares",
        )
    if len(audio) == 0:
        raise AudioFileError(path, "no audio samples")
    mono = audio[:, 0] if audio.shape[1] == 1 else audio.astype(np.float32).mean(axis=1)
    return resample(mono, source_rate, sample_rate)
