"""Transcribe audio files with a trained checkpoint.

    python -m fl_dp_asr.cli.transcribe --checkpoint WORK_DIR [--step N] [--beam-width 8] \\
        a.wav b.flac c.mp3

Reads any format soundfile reads (wav, flac, mp3, ogg) at any sample rate, averages the
channels, resamples to 16 kHz, and prints ``<file>\\t<text>`` per file, the text normalized
like the reference transcripts (single spaces, none at the ends). ``--checkpoint`` is a
trainer's work directory or its ``checkpoints/`` directory (see
:mod:`fl_dp_asr.train.checkpoint`); the model is rebuilt from the config stored in the
checkpoint. Files are decoded one by one (lengths are padded to whole seconds to limit
recompilation). Audio is read by :func:`fl_dp_asr.audio.io.load_audio`, the decoder the
dataset builders use, with the same checks. A file that cannot be transcribed (missing, a
directory, unreadable, truncated, empty, shorter than one feature frame) is reported on
stderr as ``error: <file>: <reason>``; the other files are still transcribed, and the exit
status is 1. Bad flags (e.g. ``--beam-width 0``) exit with status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from fl_dp_asr.audio.io import load_audio
from fl_dp_asr.models.asr import transcribe_batch
from fl_dp_asr.models.config import ModelConfig
from fl_dp_asr.text import normalize
from fl_dp_asr.train.checkpoint import load_model_checkpoint

_PAD_TO_SAMPLES = 16000


def read_audio(path: str, config: ModelConfig) -> np.ndarray:
    """int16 [samples] at the model's sample rate.

    Raises:
        AudioFileError: missing, a directory, unreadable, truncated or empty
            (:func:`fl_dp_asr.audio.io.load_audio`).
        ValueError: shorter than one feature frame (``config.features.frame_length_ms``):
            ``too short to transcribe (N ms ...)``.
    """
    audio = load_audio(path, config.features.sample_rate)
    rate, frame_ms = config.features.sample_rate, config.features.frame_length_ms
    if len(audio) < math.ceil(rate * frame_ms / 1000):
        raise ValueError(
            f"{path}: too short to transcribe ({1000 * len(audio) / rate:.0f} ms; "
            f"the model needs at least one {frame_ms:g} ms frame)"
        )
    return audio


def transcribe_audio(
    audio: np.ndarray, config: ModelConfig, params: Any, beam_width: int = 1
) -> str:
    """Normalized text of one int16 [samples] waveform (padded to whole seconds)."""
    padded = max(math.ceil(len(audio) / _PAD_TO_SAMPLES), 1) * _PAD_TO_SAMPLES
    batch = np.zeros((1, padded), np.int16)
    batch[0, : len(audio)] = audio
    (text,) = transcribe_batch(
        params, batch, np.array([len(audio)], np.int32), config, beam_width=beam_width
    )
    return normalize(text).text  # CTC emits word separators at both ends and in runs


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 1 a file or checkpoint failed,
    2 bad flags)."""
    parser = argparse.ArgumentParser(
        prog="python -m fl_dp_asr.cli.transcribe", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--checkpoint", required=True, help="trainer work directory, or its checkpoints/ directory"
    )
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument(
        "--beam-width",
        type=positive_int,
        default=1,
        help="1 = greedy decoding, >1 = CTC prefix beam search",
    )
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, mp3, ...)")
    args = parser.parse_args(argv)
    try:
        config, params, _ = load_model_checkpoint(args.checkpoint, args.step)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    failed = 0
    for path in args.files:
        try:
            text = transcribe_audio(read_audio(path, config), config, params, args.beam_width)
        except ValueError as error:  # AudioFileError, too short
            print(f"error: {error}", file=sys.stderr, flush=True)
            failed += 1
            continue
        print(f"{path}\t{text}", flush=True)
    if failed:
        print(
            f"error: {failed} of {len(args.files)} files could not be transcribed", file=sys.stderr
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
