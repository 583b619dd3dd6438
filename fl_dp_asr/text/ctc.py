"""CTC decoding: greedy (JAX, batched, jit-safe) and prefix beam search (numpy).

Both read per-frame scores ``[B, T, V]`` (logits or log-probabilities) with frame paddings
``[B, T]`` (1.0 = padding) and the blank id 0 of :mod:`fl_dp_asr.text.tokenizer`.
"""

from __future__ import annotations

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np

from fl_dp_asr.text.tokenizer import BLANK_ID


def greedy_decode(
    logits: jax.Array, paddings: jax.Array, blank_id: int = BLANK_ID
) -> tuple[jax.Array, jax.Array]:
    """Best-path CTC decoding: frame-wise argmax, merge repeats, remove blanks.

    Args:
        logits: float [B, T, V] scores per frame.
        paddings: float [B, T], 1.0 for padded frames (ignored).
        blank_id: id of the CTC blank.

    Returns:
        ``(ids, lengths)``: int32 [B, T] decoded tokens left-aligned and zero padded, and
        int32 [B] their counts. Fixed shapes, so it runs inside ``jit``.

    >>> lp = jnp.log(jnp.array([[[.1, .9], [.1, .9], [.9, .1], [.1, .9]]]))
    >>> ids, n = greedy_decode(lp, jnp.zeros((1, 4)))
    >>> ids[0, :n[0]].tolist()
    [1, 1]
    """
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    valid = paddings < 0.5
    best = jnp.where(valid, best, blank_id)
    previous = jnp.pad(best, ((0, 0), (1, 0)), constant_values=blank_id)[:, :-1]
    keep = (best != blank_id) & (best != previous)
    lengths = jnp.sum(keep, axis=1, dtype=jnp.int32)
    num_frames = best.shape[1]
    target = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, num_frames)  # out of range: dropped
    rows = jnp.broadcast_to(jnp.arange(best.shape[0])[:, None], best.shape)
    ids = jnp.zeros_like(best).at[rows, target].set(best, mode="drop")
    return ids, lengths


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search(
    logits: np.ndarray,
    num_frames: int | None = None,
    beam_width: int = 8,
    blank_id: int = BLANK_ID,
    token_prune_logprob: float = -12.0,
) -> list[tuple[tuple[int, ...], float]]:
    """CTC prefix beam search without a language model, for one utterance.

    Keeps, per prefix, the probability of its alignments ending in a blank and ending in
    its last token, so alignments of the same labelling are merged (unlike best path).

    Args:
        logits: float [T, V] scores (log-softmax is applied here).
        num_frames: valid frames (default all T).
        beam_width: prefixes kept after every frame (>= 1).
        blank_id: id of the CTC blank.
        token_prune_logprob: tokens with a frame log-probability below this are skipped
            (a speed-up; ``-inf`` disables it).

    Returns:
        Up to ``beam_width`` ``(token ids, log-probability)`` pairs, best first.

    >>> lp = np.log(np.array([[.4, .6], [.4, .6], [.9, .1]]))  # P("") = .144 < P("1") = .856
    >>> prefix_beam_search(lp, beam_width=4)[0][0]
    (1,)
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    log_probs = _log_softmax(np.asarray(logits, dtype=np.float64))
    if num_frames is not None:
        log_probs = log_probs[:num_frames]
    neg_inf = -math.inf
    # prefix -> (log P(prefix, ends in blank), log P(prefix, ends in its last token))
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, neg_inf)}
    for frame in log_probs:
        candidates = [
            v for v in range(frame.shape[0]) if v != blank_id and frame[v] >= token_prune_logprob
        ]
        next_beams: dict[tuple[int, ...], list[float]] = collections.defaultdict(
            lambda: [neg_inf, neg_inf]
        )
        for prefix, (p_blank, p_token) in beams.items():
            p_total = _logaddexp(p_blank, p_token)
            entry = next_beams[prefix]
            entry[0] = _logaddexp(entry[0], p_total + frame[blank_id])
            if prefix:
                entry[1] = _logaddexp(entry[1], p_token + frame[prefix[-1]])
            for v in candidates:
                extended = next_beams[prefix + (v,)]
                if prefix and v == prefix[-1]:  # a repeat needs a blank in between
                    extended[1] = _logaddexp(extended[1], p_blank + frame[v])
                else:
                    extended[1] = _logaddexp(extended[1], p_total + frame[v])
        ranked = sorted(next_beams.items(), key=lambda kv: -_logaddexp(*kv[1]))
        beams = {prefix: (pb, pt) for prefix, (pb, pt) in ranked[:beam_width]}
    results = [(prefix, _logaddexp(pb, pt)) for prefix, (pb, pt) in beams.items()]
    return sorted(results, key=lambda r: -r[1])


def beam_search_batch(
    logits: np.ndarray, paddings: np.ndarray, beam_width: int = 8, blank_id: int = BLANK_ID
) -> list[tuple[int, ...]]:
    """Best labelling of each utterance of float [B, T, V] ``logits`` by prefix beam search."""
    logits, paddings = np.asarray(logits), np.asarray(paddings)
    num_frames = (paddings < 0.5).sum(axis=1)
    return [
        prefix_beam_search(x, int(n), beam_width, blank_id)[0][0]
        for x, n in zip(logits, num_frames)
    ]
