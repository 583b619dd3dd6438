"""Config sections both trainers share: one ``data.*`` and one ``model.*`` schema.

``None`` means "off" (no filter, no override) throughout; such fields are typed
placeholders, so ``--config.data.max_seconds=20`` works on the command line.
"""

from typing import Any

import ml_collections
from ml_collections import config_dict

VARIANTS = ("paper", "demo")  # a config file's recipe, and its small CPU variant

# ModelConfig fields a config may override (None keeps the named size's value).
MODEL_OVERRIDES = {
    "num_blocks": int,
    "model_dim": int,
    "mlp_dim": int,
    "num_heads": int,
    "conv_channels": int,
    "dropout_rate": float,
    "attention_dropout_rate": float,
    "layer_drop_rate": float,
    "dtype": str,
    "remat": bool,
    "loss_normalization": str,
    "cape_max_global_shift": float,
    "spec_augment_enabled": bool,
}


def check_variant(variant: str, config_file: str) -> None:
    """Raises for a variant (the text after ``file.py:``) the config file does not have."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of {config_file}: choose one of {VARIANTS}")


def optional(kind: type, value: Any = None) -> config_dict.FieldReference:
    """A field that may be ``None`` ("off") and keeps its type for command-line overrides."""
    return config_dict.FieldReference(value, field_type=kind)


def data(
    name: str,
    *,
    manual_dir: str,
    data_dir: str,
    train_config: str,
    train_split: str,
    eval_config: str,
    eval_split: str,
    num_buckets: int,
    language: str = "en",
) -> ml_collections.ConfigDict:
    """The ``data`` section: a TFDS builder over a local corpus, a training and a held-out
    split (speakers must be disjoint), and the padded-length buckets."""
    c = ml_collections.ConfigDict()
    c.name = name  # fl_dp_asr.data.BUILDERS
    c.language = language  # tokenizer alphabet
    # The corpus, in its official layout: a named directory must exist ('': use only the
    # dataset already prepared in data_dir).
    c.manual_dir = manual_dir
    c.data_dir = data_dir  # where TFDS writes the prepared dataset
    # Where the synthetic corpus lives: generated there if missing, when manual_dir is it
    # (None: never generated; a manual_dir elsewhere is never generated into).
    c.synthetic_dir = optional(str)
    # Skip (count and list) corrupt audio and bad transcripts instead of stopping at the first
    # one; the prepared dataset remembers what it skipped (README "Data", "Errors").
    c.skip_bad_files = False
    c.corpus_seed = 0  # seed of the synthetic corpus
    c.train_config, c.train_split = train_config, train_split
    c.eval_config, c.eval_split = eval_config, eval_split
    c.min_seconds = optional(float)  # drop shorter training utterances
    c.max_seconds = optional(float)  # drop longer training utterances
    c.max_users = optional(int)  # keep the first N training users (sorted ids; None: all)
    c.num_buckets = num_buckets  # padded lengths per dimension (recompilations)
    return c


def model(size: str) -> ml_collections.ConfigDict:
    """The ``model`` section: a named size (fl_dp_asr.models.MODEL_SIZES) and overrides."""
    c = ml_collections.ConfigDict()
    c.size = size
    for name, kind in MODEL_OVERRIDES.items():  # e.g. --config.model.dtype=bfloat16
        c[name] = optional(kind)
    return c


def utterance_canaries() -> ml_collections.ConfigDict:
    """The ``audit.utterances`` section: the memorization audit's canary utterances (README
    "Memorization audit"; fields of ``fl_dp_asr.memorization.UtteranceCanarySpec`` plus the
    measurement's). Off while ``per_repeat`` is 0."""
    c = ml_collections.ConfigDict()
    c.per_repeat = 0  # n canaries inserted per repetition count (0: off)
    c.repeats = (1, 4, 16)  # r: copies of a canary in its user's data
    c.users = optional(int)  # k users holding them, dealt round robin (None: one per canary)
    c.heldout = optional(int)  # never-inserted canaries of the same kind (None: as many)
    c.kind = "letters"  # random letters, or "syllables" (consonant-vowel pseudo-words)
    c.words = 2  # words per canary text
    c.letters = 4  # characters per word
    # Tempo factor of the canary speech (pitch kept). The paper's 4x is too fast for this
    # char-level CTC model's 30 ms frames (fl_dp_asr/memorization/utterances.py).
    c.speedup = 2.0
    c.seed = 0  # fixes texts, voice, users and noise
    c.candidates = 1000  # M: exposure ranks a canary's loss among M texts of its format
    c.beam_width = 8  # prefix beam search of the beam CER/WER
    return c
