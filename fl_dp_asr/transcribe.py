"""Transcribe audio files with a trained checkpoint.

    python -m fl_dp_asr.transcribe --checkpoint WORK_DIR [--step N] [--beam-width 8] a.wav b.flac c.mp3

Reads any format soundfile reads (wav, flac, mp3, ogg) at any sample rate, averages the
channels, resamples to 16 kHz, and prints ``<file>\\t<text>`` per file. The checkpoint
directory is a trainer's work directory (see :mod:`fl_dp_asr.train.checkpoint`); the
model is rebuilt from the config stored in the checkpoint. Files are decoded one by one
(lengths are padded to whole seconds to limit recompilation).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence

import numpy as np

from fl_dp_asr.audio.io import load_audio
from fl_dp_asr.models.asr import transcribe_batch
from fl_dp_asr.train.checkpoint import load_model_checkpoint

_PAD_TO_SAMPLES = 16000


def transcribe_files(checkpoint: str, paths: Sequence[str], step: int | None = None,
                     beam_width: int = 1) -> list[str]:
    """Decoded text of each audio file in ``paths`` with the checkpoint's model."""
    config, params, _ = load_model_checkpoint(checkpoint, step)
    texts = []
    for path in paths:
        audio = load_audio(path, config.features.sample_rate)
        padded = max(math.ceil(len(audio) / _PAD_TO_SAMPLES), 1) * _PAD_TO_SAMPLES
        batch = np.zeros((1, padded), np.int16)
        batch[0, :len(audio)] = audio
        texts.extend(transcribe_batch(params, batch, np.array([len(audio)], np.int32), config,
                                      beam_width=beam_width))
    return texts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fl_dp_asr.transcribe",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="trainer work directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--beam-width", type=int, default=1,
                        help="1 = greedy decoding, >1 = CTC prefix beam search")
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, mp3, ...)")
    args = parser.parse_args(argv)
    try:
        texts = transcribe_files(args.checkpoint, args.files, args.step, args.beam_width)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, text in zip(args.files, texts):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
