"""The CTC model as functions of (params, batch): init, loss, prediction, evaluation.

Batches follow docs/CONTRACTS.md: ``audio`` int16 [B, S] (16 kHz, zero padded),
``audio_lengths`` int32 [B], ``labels`` int32 [B, N] (blank = 0, zero padded),
``label_lengths`` int32 [B], ``mask`` float32 [B] (1.0 = real utterance). Log-mel features
are computed on device inside the loss, so only int16 audio travels. Example::

    config = get_model_config("tiny")
    params = init_params(config, jax.random.key(0))
    loss_fn = make_loss_fn(config, train=True)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fl_dp_asr.audio.augment import spec_augment
from fl_dp_asr.audio.features import log_mel
from fl_dp_asr.dp.layout import ParamLayout
from fl_dp_asr.models.config import ModelConfig
from fl_dp_asr.models.encoder import Encoder, stack_blocks, unstack_blocks
from fl_dp_asr.text.ctc import beam_search_batch, greedy_decode
from fl_dp_asr.text.metrics import ErrorCounts
from fl_dp_asr.text.tokenizer import BLANK_ID, CharTokenizer

PyTree = Any
Batch = Mapping[str, jax.Array]
LossFn = Callable[[PyTree, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]

# Federated rounds hold the blocks stacked (one op per kind of block leaf, whatever the
# depth; fl_dp_asr.dp.layout); checkpoints of the model, metrics and bounds name block_NN.
PARAM_LAYOUT = ParamLayout(stack_blocks, unstack_blocks)


def build_model(config: ModelConfig) -> Encoder:
    """The flax module of ``config``."""
    return Encoder(config)


def init_params(
    config: ModelConfig, key: jax.Array, sharding: jax.sharding.Sharding | None = None
) -> PyTree:
    """Freshly initialized parameters (a nested dict of ``param_dtype`` arrays).

    One jitted function creates them on the device (the paper model's 255.8 M in seconds,
    nothing on the host); with ``sharding`` (e.g. ``NamedSharding(mesh, P())``, replicated
    over a client mesh) every array is created with it.
    """
    return _init_fn(config, sharding)(key)


@functools.cache
def _init_fn(config: ModelConfig, sharding: jax.sharding.Sharding | None):
    def init(key):
        features = jnp.zeros((1, 4 * config.conv_stride, config.features.num_mel_bins), jnp.float32)
        paddings = jnp.zeros(features.shape[:2], jnp.float32)
        return build_model(config).init({"params": key}, features, paddings, train=False)["params"]

    return jax.jit(init, out_shardings=sharding)


def abstract_params(config: ModelConfig) -> PyTree:
    """Shapes and dtypes of the parameters (``jax.ShapeDtypeStruct``), nothing allocated."""
    return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))


def count_params(params: PyTree) -> int:
    """Number of scalars in ``params`` (arrays or ``ShapeDtypeStruct`` values)."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def compute_features(
    audio: jax.Array, audio_lengths: jax.Array, config: ModelConfig
) -> tuple[jax.Array, jax.Array]:
    """Normalized log-mel ``(features [B, T, F], paddings [B, T])`` of int16 [B, S] audio."""
    return log_mel(audio, audio_lengths, **dataclasses.asdict(config.features))


def ctc_loss_fn(
    params: PyTree, batch: Batch, key: jax.Array | None, train: bool, *, config: ModelConfig
) -> dict[str, jax.Array]:
    """Per-utterance CTC losses and what metrics need, for one batch.

    Args:
        params: model parameters.
        batch: a batch in the docs/CONTRACTS.md format.
        key: PRNG key for SpecAugment, CAPE augmentation, dropout and layer-drop; unused
            (may be None) when ``train`` is False.
        train: training mode (augmentation and dropout on).
        config: the model configuration.

    Returns:
        A dict of arrays: ``loss`` float32 [B] per-utterance CTC negative log-likelihood
        (divided by the label length if ``config.loss_normalization == "per_token"``), 0 for
        padding utterances; ``nll`` [B] the unnormalized one; ``mask`` [B];
        ``label_lengths`` [B]; ``infeasible`` [B] 1.0 where the label needs more frames
        than the encoder output has (CTC then returns a huge finite loss); ``logits``
        [B, T', V] and ``logit_paddings`` [B, T'].
    """
    features, paddings = compute_features(batch["audio"], batch["audio_lengths"], config)
    rngs = None
    if train:
        assert key is not None, "train=True needs a key"
        augment_key, dropout_key, cape_key = jax.random.split(key, 3)
        features = spec_augment(
            features, paddings, augment_key, **dataclasses.asdict(config.spec_augment)
        )
        rngs = {"dropout": dropout_key, "cape": cape_key}
    logits, logit_paddings = cast(
        tuple[jax.Array, jax.Array],
        build_model(config).apply({"params": params}, features, paddings, train=train, rngs=rngs),
    )

    labels = batch["labels"].astype(jnp.int32)
    label_lengths = batch["label_lengths"].astype(jnp.int32)
    label_valid = jnp.arange(labels.shape[1])[None, :] < label_lengths[:, None]
    label_paddings = 1.0 - label_valid.astype(jnp.float32)
    nll = optax.ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=BLANK_ID)

    mask = batch["mask"].astype(jnp.float32)
    lengths = label_lengths.astype(jnp.float32)
    repeats = jnp.sum((labels[:, 1:] == labels[:, :-1]) & label_valid[:, 1:], axis=1)
    frames = jnp.sum(1.0 - logit_paddings, axis=1)
    infeasible = (lengths + repeats > frames).astype(jnp.float32) * mask
    real = mask > 0.0
    nll = jnp.where(real, nll, 0.0)
    loss = nll / jnp.maximum(lengths, 1.0) if config.loss_normalization == "per_token" else nll
    return {
        "loss": loss,
        "nll": nll,
        "mask": mask,
        "label_lengths": lengths * mask,
        "infeasible": infeasible,
        "logits": logits,
        "logit_paddings": logit_paddings,
    }


def make_loss_fn(config: ModelConfig, train: bool = True) -> LossFn:
    """``loss_fn(params, batch, key) -> (loss, aux)`` of docs/CONTRACTS.md.

    ``loss`` is the float32 mean of the per-utterance loss over real utterances (0 if the
    batch has none). ``aux`` holds float32 scalars: ``num_utterances``, ``num_tokens``
    (label characters), ``loss_sum`` (sum of per-utterance losses), ``nll_sum`` (sum of
    CTC negative log-likelihoods; ``nll_sum / num_tokens`` is the loss per character),
    ``num_infeasible`` (utterances whose label cannot fit the frames). Pure and
    jit/vmap/grad-safe; ``key`` drives SpecAugment, CAPE augmentation, dropout and
    layer-drop (ignored when ``train`` is False).
    """

    def loss_fn(params: PyTree, batch: Batch, key: jax.Array) -> tuple[jax.Array, dict]:
        out = ctc_loss_fn(params, batch, key, train, config=config)
        num_utterances = jnp.sum(out["mask"])
        loss_sum = jnp.sum(out["loss"] * out["mask"])
        aux = {
            "num_utterances": num_utterances,
            "num_tokens": jnp.sum(out["label_lengths"]),
            "loss_sum": loss_sum,
            "nll_sum": jnp.sum(out["nll"] * out["mask"]),
            "num_infeasible": jnp.sum(out["infeasible"]),
        }
        return loss_sum / jnp.maximum(num_utterances, 1.0), aux

    return loss_fn


@functools.partial(jax.jit, static_argnames="config")
def predict_logits(
    params: PyTree, audio: jax.Array, audio_lengths: jax.Array, config: ModelConfig
) -> tuple[jax.Array, jax.Array]:
    """Evaluation-mode logits: int16 [B, S] audio → (float32 [B, T', V], paddings [B, T'])."""
    features, paddings = compute_features(audio, audio_lengths, config)
    return cast(
        tuple[jax.Array, jax.Array],
        build_model(config).apply({"params": params}, features, paddings, train=False),
    )


@functools.partial(jax.jit, static_argnames="config")
def _greedy_ids(params, audio, audio_lengths, config):
    logits, paddings = predict_logits(params, audio, audio_lengths, config)
    return greedy_decode(logits, paddings)


def transcribe_batch(
    params: PyTree,
    audio: np.ndarray,
    audio_lengths: np.ndarray,
    config: ModelConfig,
    beam_width: int = 1,
) -> list[str]:
    """Decoded text of each utterance of int16 [B, S] ``audio``.

    ``beam_width == 1`` is greedy decoding on device; larger widths run the numpy
    prefix beam search on the logits.
    """
    tokenizer = CharTokenizer()
    if beam_width <= 1:
        ids, lengths = jax.device_get(_greedy_ids(params, audio, audio_lengths, config))
        return tokenizer.decode_batch(ids, lengths)
    logits, paddings = jax.device_get(predict_logits(params, audio, audio_lengths, config))
    return [tokenizer.decode(ids) for ids in beam_search_batch(logits, paddings, beam_width)]


@functools.partial(jax.jit, static_argnames="config")
def _eval_step(params, batch, config):
    out = ctc_loss_fn(params, batch, None, False, config=config)
    ids, lengths = greedy_decode(out["logits"], out["logit_paddings"])
    return {
        "loss_sum": jnp.sum(out["loss"] * out["mask"]),
        "nll_sum": jnp.sum(out["nll"] * out["mask"]),
        "num_tokens": jnp.sum(out["label_lengths"]),
        "ids": ids,
        "lengths": lengths,
    }


def evaluate(
    params: PyTree, config: ModelConfig, batches: Iterable[Batch], max_examples: int = 0
) -> dict[str, Any]:
    """Greedy-decoding WER/CER and loss of ``params`` over ``batches`` (real utterances only).

    References are the batches' ``labels`` decoded to text (already normalized); hypotheses
    are single-spaced the same way. Returns
    ``wer``, ``cer`` (corpus level, weighted by reference length, equal to jiwer), ``loss``
    (mean per-utterance loss), ``loss_per_token``, ``num_utterances``, the raw error counts,
    and ``examples``: up to ``max_examples`` ``(reference, hypothesis)`` pairs.
    """
    tokenizer = CharTokenizer()
    counts = ErrorCounts()
    loss_sum = nll_sum = num_tokens = 0.0
    examples: list[tuple[str, str]] = []
    for batch in batches:
        out = jax.device_get(_eval_step(params, batch, config))
        real = np.asarray(batch["mask"]) > 0
        # CTC emits word separators at both ends and in runs: single-space the hypotheses
        # like the references, so CER does not count spurious spaces.
        hyps = [
            " ".join(h.split())
            for h, r in zip(tokenizer.decode_batch(out["ids"], out["lengths"]), real)
            if r
        ]
        refs = [
            t
            for t, r in zip(tokenizer.decode_batch(batch["labels"], batch["label_lengths"]), real)
            if r
        ]
        counts.add(refs, hyps)
        loss_sum += float(out["loss_sum"])
        nll_sum += float(out["nll_sum"])
        num_tokens += float(out["num_tokens"])
        examples.extend(list(zip(refs, hyps))[: max(0, max_examples - len(examples))])
    return {
        "wer": counts.wer,
        "cer": counts.cer,
        "loss": loss_sum / max(counts.utterances, 1),
        "loss_per_token": nll_sum / max(num_tokens, 1.0),
        "num_utterances": counts.utterances,
        "word_errors": counts.word_errors,
        "reference_words": counts.reference_words,
        "char_errors": counts.char_errors,
        "reference_chars": counts.reference_chars,
        "examples": examples,
    }
