"""Audio front end: log-mel features and SpecAugment, in JAX."""

from fl_dp_asr.audio.augment import SpecAugmentConfig, spec_augment
from fl_dp_asr.audio.features import LogMelConfig, log_mel, mel_filterbank, num_frames

__all__ = [
    "LogMelConfig",
    "SpecAugmentConfig",
    "log_mel",
    "mel_filterbank",
    "num_frames",
    "spec_augment",
]
