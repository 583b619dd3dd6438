"""How much a trained model remembers of canary utterances: per-canary scores and summaries.

After Wang, Thakkar, Mathews, "Unintended Memorization in Large ASR Models, and How to
Mitigate It" (arXiv 2310.11739) and Carlini et al., "The Secret Sharer" (arXiv 1802.08232):
canary utterances (random texts, synthesized and sped up) are inserted r times into some
users' data, an equal number of the same kind never is ("held-out", r = 0), and after
training the model is scored on both. Memorization = the inserted canaries are transcribed
(much) better and have a (much) lower CTC loss than the held-out ones.

* :func:`score_utterances`: per utterance, one forward pass per padded batch; the CTC loss
  of its text and of M − 1 random candidate texts from the same logits; greedy and beam
  transcriptions, CER/WER, exact recovery and exposure;
* :func:`exposure`: Carlini et al.'s log2 M − log2 rank of the canary's loss among M;
* :func:`membership_auc`, :func:`roc_curve`: the loss-threshold membership attack (lower
  loss = "member"), from ``jax_privacy.auditing.CanaryScoreAuditor``;
* :func:`summarize`, :func:`format_line`, :func:`plot`: per repetition count r, inserted vs
  held-out, as flat JSON-ready floats, one log line and one figure.

Example (``params`` a trained tiny model, ``audio`` int16 arrays at 16 kHz)::

    rows = score_utterances(params, config, CharTokenizer(), audio, texts, candidates)
    rows = [row | {"repeats": r} for row, r in zip(rows, repeats)]
    summary = summarize(rows)
    print(format_line(summary))
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats
from jax_privacy import auditing

from fl_dp_asr.models.asr import predict_logits
from fl_dp_asr.models.config import ModelConfig
from fl_dp_asr.text.ctc import beam_search_batch, greedy_decode
from fl_dp_asr.text.metrics import ErrorCounts
from fl_dp_asr.text.tokenizer import BLANK_ID, CharTokenizer

PyTree = Any
SAMPLE_RATE = 16_000
AUDIO_QUANTUM = SAMPLE_RATE // 10  # a batch's audio is padded to a multiple of 0.1 s
LABEL_QUANTUM = 16  # label lengths are padded to a multiple of this (fewer compiled shapes)
PAIR_CHUNK = 64  # (utterance, text) pairs per CTC-loss call
# Per-canary score fields that summarize() averages when every row has them.
SCORE_FIELDS = (
    "cer",
    "wer",
    "beam_cer",
    "beam_wer",
    "exact",
    "beam_exact",
    "loss",
    "exposure",
    "exposure_fit",
    "infeasible",
)


# ---------------------------------------------------------------------------------------
# Scoring utterances
# ---------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="config")
def _forward(params, audio, audio_lengths, config):
    logits, paddings = predict_logits(params, audio, audio_lengths, config)
    ids, lengths = greedy_decode(logits, paddings)
    return logits, paddings, ids, lengths


@jax.jit
def _pair_nll(logits, paddings, rows, labels, label_lengths):
    """CTC negative log-likelihood (nats) of ``labels[p]`` given the logits of utterance
    ``rows[p]``: float32 [P] for logits [B, T, V], rows int32 [P], labels int32 [P, N]."""
    label_paddings = (jnp.arange(labels.shape[1])[None, :] >= label_lengths[:, None]).astype(
        jnp.float32
    )
    return optax.ctc_loss(logits[rows], paddings[rows], labels, label_paddings, blank_id=BLANK_ID)


def _round_up(n: int, quantum: int) -> int:
    return max(quantum, -(-n // quantum) * quantum)


def _as_int16(index: int, clip: np.ndarray) -> np.ndarray:
    clip = np.asarray(clip)
    if clip.ndim != 1 or clip.size == 0:
        raise ValueError(
            f"audio[{index}] has shape {clip.shape}: each utterance must be a non-empty 1-D "
            "array of 16 kHz samples (int16, or float in int16 units)"
        )
    if clip.dtype == np.int16:
        return clip
    return np.clip(np.rint(clip.astype(np.float64)), -32768, 32767).astype(np.int16)


def _pad_labels(labels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """int32 [P, N] zero-padded ids (N a multiple of LABEL_QUANTUM) and int32 [P] lengths."""
    lengths = np.asarray([len(x) for x in labels], np.int32)
    padded = np.zeros((len(labels), _round_up(int(lengths.max()), LABEL_QUANTUM)), np.int32)
    for i, ids in enumerate(labels):
        padded[i, : len(ids)] = ids
    return padded, lengths


def _single_spaced(text: str) -> str:
    # CTC emits word separators at both ends and in runs (as in models.asr.evaluate).
    return " ".join(text.split())


def _errors(reference: str, hypothesis: str) -> tuple[float, float]:
    counts = ErrorCounts()
    counts.add([reference], [hypothesis])
    return counts.cer, counts.wer


def _encode_all(tokenizer: CharTokenizer, texts: Sequence[str], what: str) -> list[np.ndarray]:
    encoded = [tokenizer.encode(t) for t in texts]
    for i, ids in enumerate(encoded):
        if ids.size == 0:
            raise ValueError(
                f"{what}[{i}] = {texts[i]!r} is empty after normalization: canary texts need "
                "characters of the model's vocabulary (a-z, space, apostrophe)"
            )
    return encoded


def score_utterances(
    params: PyTree,
    model_config: ModelConfig,
    tokenizer: CharTokenizer,
    audio: Sequence[np.ndarray],
    texts: Sequence[str],
    candidates: Sequence[Sequence[str]] = (),
    beam_width: int = 8,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Per-utterance memorization scores of ``params`` on ``audio`` with reference ``texts``.

    One jitted forward pass (evaluation mode) per batch of ``batch_size`` utterances,
    zero-padded to a multiple of 0.1 s, with zero-length padding rows (the model's output
    for an utterance does not depend on the padding: scored alone or in a batch, it gets
    the same scores). From the same logits: greedy decoding on device, the CTC loss of the
    text and of every candidate text (``optax.ctc_loss`` on the logits gathered per
    (utterance, text) pair, :data:`PAIR_CHUNK` pairs per call) and a prefix beam search
    (:func:`fl_dp_asr.text.ctc.beam_search_batch`, numpy).

    Args:
        params: model parameters.
        model_config: the model's configuration.
        tokenizer: normalizes the texts (references) and encodes them to labels.
        audio: U utterances, 1-D 16 kHz samples each (int16, or float in int16 units).
        texts: their U reference texts (normalized here).
        candidates: empty, or U sequences of M − 1 ≥ 1 random texts of the canary's format
            (same length and alphabet); then each row has ``exposure``.
        beam_width: prefixes kept by the beam search (>= 1).
        batch_size: utterances per forward pass (>= 1).

    Returns:
        U dicts (JSON-ready): ``text`` the normalized reference; ``greedy``, ``beam`` the
        single-spaced hypotheses; ``loss`` the project's per-utterance CTC loss
        (:func:`fl_dp_asr.models.asr.ctc_loss_fn` in evaluation mode: the negative
        log-likelihood in nats per utterance, divided by the label length when
        ``model_config.loss_normalization == "per_token"``); ``nll`` the negative
        log-likelihood in nats per utterance; ``infeasible`` 1.0 where the text needs more
        encoder frames than the audio gives (labels + repeated letter pairs > frames: CTC
        cannot emit it, and its loss is huge); ``cer``, ``wer`` (greedy) and ``beam_cer``,
        ``beam_wer`` as fractions; ``exact``, ``beam_exact`` 1.0 when the hypothesis equals
        the reference, else 0.0; with candidates, ``exposure`` (:func:`exposure` of ``nll``
        among the candidates' NLLs, bits).

    Raises:
        ValueError: mismatched lengths, an empty text or candidate list, bad audio,
            ``beam_width`` or ``batch_size`` < 1.
    """
    if len(audio) != len(texts):
        raise ValueError(f"{len(audio)} audio arrays but {len(texts)} texts: need one each")
    if candidates and len(candidates) != len(texts):
        raise ValueError(
            f"{len(candidates)} candidate lists for {len(texts)} utterances: pass one list of "
            "M - 1 random texts per utterance, or none (then no exposure)"
        )
    if beam_width < 1 or batch_size < 1:
        raise ValueError(f"beam_width={beam_width}, batch_size={batch_size}: both must be >= 1")
    references = [tokenizer.normalize(t) for t in texts]
    labels = _encode_all(tokenizer, texts, "texts")
    candidate_labels: list[list[np.ndarray]] = []
    for i, others in enumerate(candidates):
        if len(others) == 0:
            raise ValueError(f"candidates[{i}] is empty: exposure needs M - 1 >= 1 candidates")
        candidate_labels.append(_encode_all(tokenizer, list(others), f"candidates[{i}]"))

    groups = [
        [labels[i], *(candidate_labels[i] if candidate_labels else [])] for i in range(len(texts))
    ]
    rows: list[dict[str, Any]] = []
    for start in range(0, len(texts), batch_size):
        index = range(start, min(start + batch_size, len(texts)))
        batch_audio, audio_lengths = _pad_audio([_as_int16(i, audio[i]) for i in index], batch_size)
        logits, paddings, ids, lengths = _forward(params, batch_audio, audio_lengths, model_config)
        group_nll = _group_nll(logits, paddings, [groups[i] for i in index])
        ids, lengths, logits_np, paddings_np = (
            np.asarray(x)[: len(index)] for x in jax.device_get((ids, lengths, logits, paddings))
        )
        greedy = tokenizer.decode_batch(ids, lengths)
        beams = beam_search_batch(logits_np, paddings_np, beam_width)
        frames = (paddings_np < 0.5).sum(axis=1)
        for row, i in enumerate(index):
            rows.append(
                _row(
                    references[i],
                    labels[i],
                    _single_spaced(greedy[row]),
                    _single_spaced(tokenizer.decode(beams[row])),
                    group_nll[row],
                    int(frames[row]),
                    model_config,
                    with_exposure=bool(candidate_labels),
                )
            )
    return rows


def _pad_audio(clips: Sequence[np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """int16 [batch_size, S] (S a multiple of 0.1 s) and int32 [batch_size] lengths; rows
    after the clips are zero-length padding utterances."""
    audio = np.zeros((batch_size, _round_up(max(len(c) for c in clips), AUDIO_QUANTUM)), np.int16)
    lengths = np.zeros(batch_size, np.int32)
    for row, clip in enumerate(clips):
        audio[row, : len(clip)] = clip
        lengths[row] = len(clip)
    return audio, lengths


def _group_nll(logits, paddings, groups: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """float64 NLL (nats) of every label of ``groups[row]`` on utterance ``row`` of the
    batch, :data:`PAIR_CHUNK` (utterance, label) pairs per call of :func:`_pair_nll`."""
    pair_rows = [row for row, group in enumerate(groups) for _ in group]
    pair_labels = [label for group in groups for label in group]
    nll = np.concatenate(
        [
            _chunk_nll(
                logits, paddings, pair_rows[c : c + PAIR_CHUNK], pair_labels[c : c + PAIR_CHUNK]
            )
            for c in range(0, len(pair_rows), PAIR_CHUNK)
        ]
    )
    return np.split(nll, np.cumsum([len(group) for group in groups])[:-1])


def _chunk_nll(logits, paddings, rows: Sequence[int], labels: Sequence[np.ndarray]) -> np.ndarray:
    """NLLs of ``len(rows)`` pairs, padded to PAIR_CHUNK pairs (one compiled shape)."""
    count = len(rows)
    padded_rows = np.zeros(PAIR_CHUNK, np.int32)
    padded_rows[:count] = rows
    chunk_labels = list(labels) + [labels[0]] * (PAIR_CHUNK - count)
    label_ids, label_lengths = _pad_labels(chunk_labels)
    nll = _pair_nll(logits, paddings, padded_rows, label_ids, label_lengths)
    return np.asarray(jax.device_get(nll), np.float64)[:count]


def _row(
    reference: str,
    label: np.ndarray,
    greedy: str,
    beam: str,
    group_nll: np.ndarray,
    frames: int,
    config: ModelConfig,
    with_exposure: bool,
) -> dict[str, Any]:
    nll = float(group_nll[0])
    cer, wer = _errors(reference, greedy)
    beam_cer, beam_wer = _errors(reference, beam)
    repeats = int(np.sum(label[1:] == label[:-1]))
    row: dict[str, Any] = {
        "text": reference,
        "greedy": greedy,
        "beam": beam,
        "loss": nll / len(label) if config.loss_normalization == "per_token" else nll,
        "nll": nll,
        "infeasible": float(len(label) + repeats > frames),
        "cer": cer,
        "wer": wer,
        "beam_cer": beam_cer,
        "beam_wer": beam_wer,
        "exact": float(greedy == reference),
        "beam_exact": float(beam == reference),
    }
    if with_exposure:
        row["exposure"] = exposure(nll, group_nll[1:])
        row["exposure_fit"] = extrapolated_exposure(nll, group_nll[1:])
    return row


# ---------------------------------------------------------------------------------------
# Exposure and the membership attack
# ---------------------------------------------------------------------------------------


def exposure(canary_loss: float, candidate_losses: np.ndarray | Sequence[float]) -> float:
    """Exposure of a canary (Carlini et al. 2019, "The Secret Sharer", arXiv 1802.08232).

    exposure = log2 M − log2 rank over the canary and its M − 1 candidates,
    rank 1 = the lowest loss. Ties count half: rank = 1 + #(candidates with a lower loss)
    + ½ #(candidates with the same loss), so exposure lies in [0, log2 M]: log2 M when the
    canary's loss is the lowest, 0 when it is the highest, log2(M / (1 + (M−1)/2)) when all
    are equal (no preference).

    Args:
        canary_loss: the canary's loss (e.g. CTC NLL, nats).
        candidate_losses: the M − 1 >= 1 candidates' losses, same units.

    Returns:
        Exposure in bits.

    >>> exposure(0.5, [1.0, 2.0, 3.0])  # lowest of M = 4: log2 4 − log2 1
    2.0
    """
    losses = np.asarray(candidate_losses, np.float64).reshape(-1)
    if losses.size == 0:
        raise ValueError("exposure needs at least one candidate loss (M - 1 >= 1)")
    if math.isnan(canary_loss) or np.isnan(losses).any():
        raise ValueError(f"exposure of NaN losses (canary {canary_loss}, candidates {losses})")
    rank = 1.0 + np.sum(losses < canary_loss) + 0.5 * np.sum(losses == canary_loss)
    return float(math.log2(losses.size + 1) - math.log2(rank))


def extrapolated_exposure(
    canary_loss: float, candidate_losses: np.ndarray | Sequence[float]
) -> float:
    """Exposure extrapolated beyond the M candidates (Carlini et al. 2019, section 4.3):
    −log2 P(candidate loss ≤ canary loss) under a skew-normal fitted to the candidates'
    losses (``scipy.stats.skewnorm``).

    The rank exposure (:func:`exposure`) cannot exceed log2 M: once the model hears enough
    of a canary to rank its text first among M random texts of its format — the seed model
    already does for most spelled-letter canaries at M = 1000 — it saturates for inserted
    and held-out canaries alike. The fitted tail keeps telling them apart: it is the
    number of random texts (in bits) the canary's loss beats, had there been that many.

    Args:
        canary_loss: the canary's loss (nats).
        candidate_losses: the M − 1 >= 3 candidates' losses, same units.

    Returns:
        Bits (>= 0).

    >>> round(extrapolated_exposure(0.0, np.random.default_rng(0).normal(10, 1, 999)), 1)
    68.2
    """
    losses = np.asarray(candidate_losses, np.float64).reshape(-1)
    if losses.size < 3 or math.isnan(canary_loss) or np.isnan(losses).any():
        raise ValueError(
            f"the fitted exposure needs >= 3 finite candidate losses, got {losses.size} "
            f"(canary {canary_loss})"
        )
    shape, loc, scale = scipy.stats.skewnorm.fit(losses)
    log_p = scipy.stats.skewnorm.logcdf(canary_loss, shape, loc, scale)
    return float(max(-log_p / math.log(2.0), 0.0))


def _auditor(inserted_losses, heldout_losses) -> tuple[auditing.CanaryScoreAuditor, int]:
    inserted = np.asarray(inserted_losses, np.float64).reshape(-1)
    heldout = np.asarray(heldout_losses, np.float64).reshape(-1)
    if inserted.size == 0 or heldout.size == 0:
        raise ValueError(
            f"the membership attack needs inserted and held-out canaries, got {inserted.size} "
            f"inserted and {heldout.size} held-out losses"
        )
    if np.isnan(inserted).any() or np.isnan(heldout).any():
        raise ValueError("the membership attack got NaN losses")
    # The auditor calls "in" what scores *higher* than a threshold: the score is −loss.
    return auditing.CanaryScoreAuditor(-inserted, -heldout), heldout.size


def membership_auc(
    inserted_losses: np.ndarray | Sequence[float], heldout_losses: np.ndarray | Sequence[float]
) -> float:
    """AUC of the loss-threshold membership attack: a loss below the threshold = "member".

    ``jax_privacy.auditing.CanaryScoreAuditor(−inserted, −heldout).attack_auroc()``: the area
    under the ROC curve of an attacker that may also randomize between two thresholds
    (the upper convex hull of the empirical ROC). It is therefore at least 0.5 (the
    diagonal is always achievable) and at least the Mann-Whitney AUC: for inserted losses
    (1, 3) and held-out (2, 4) it is 0.875 (Mann-Whitney: 0.75). 1.0 = every inserted
    canary has a lower loss than every held-out one; 0.5 = no better than chance.

    >>> membership_auc([1.0, 2.0], [3.0, 4.0])
    1.0
    """
    auditor, _ = _auditor(inserted_losses, heldout_losses)
    return float(auditor.attack_auroc())


def roc_curve(
    inserted_losses: np.ndarray | Sequence[float], heldout_losses: np.ndarray | Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """ROC of the attack of :func:`membership_auc`: ``(fpr, tpr)``, float64 [m + 2] each.

    The best true-positive rate at every false-positive rate k/m (k = 0 … m, m held-out
    canaries; ``CanaryScoreAuditor.tpr_at_given_fpr``), preceded by (0, 0). From (0, 0)
    to (1, 1), non-decreasing in both; its trapezoid area equals :func:`membership_auc`.
    """
    auditor, heldout = _auditor(inserted_losses, heldout_losses)
    grid = np.arange(heldout + 1, dtype=np.float64) / heldout
    tpr = np.asarray(auditor.tpr_at_given_fpr(grid), np.float64)
    return np.concatenate([[0.0], grid]), np.concatenate([[0.0], tpr])


# ---------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------


def _means(rows: Sequence[Mapping[str, Any]], suffix: str) -> dict[str, float]:
    return {
        f"{field}_{suffix}": float(np.mean([float(row[field]) for row in rows]))
        for field in SCORE_FIELDS
        if all(field in row for row in rows)
    }


def _group(inserted: Sequence[Mapping], heldout: Sequence[Mapping], heldout_means) -> dict:
    stats = {"count": float(len(inserted))} | _means(inserted, "inserted") | heldout_means
    for field in ("cer", "beam_cer"):
        if f"{field}_inserted" in stats:
            stats[f"{field}_gap"] = 100.0 * (stats[f"{field}_heldout"] - stats[f"{field}_inserted"])
    stats["auc"] = membership_auc([r["loss"] for r in inserted], [r["loss"] for r in heldout])
    return stats


def summarize(per_canary: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Inserted vs held-out canaries, per repetition count r and over all inserted ones.

    Args:
        per_canary: one row per canary: ``repeats`` (r, 0 = held-out) and the fields of
            :func:`score_utterances` (at least ``loss`` and ``cer``).

    Returns:
        Flat float values (JSON-ready, for ``metrics.jsonl``), for every r present as
        ``r{r}/<name>`` and over every inserted canary as ``all/<name>``: ``count``
        (inserted canaries); ``<field>_inserted`` and ``<field>_heldout`` the mean per canary
        of each of ``cer``, ``wer``, ``beam_cer``, ``beam_wer`` (fractions), ``exact``,
        ``beam_exact`` (fraction exactly recovered), ``loss``, ``exposure`` (bits),
        ``infeasible`` (fraction the model cannot emit; their loss is huge) that every row
        has (all held-out canaries are the comparison for every r); ``cer_gap`` and
        ``beam_cer_gap``, held-out minus inserted CER in percentage points; ``auc``, the
        loss-threshold membership AUC of the inserted-at-r vs the held-out canaries
        (:func:`membership_auc`). Plus ``heldout_count``.

    Raises:
        ValueError: no held-out or no inserted canaries, a row without ``repeats``, ``loss``
            or ``cer``, or a negative ``repeats``.
    """
    for i, row in enumerate(per_canary):
        missing = {"repeats", "loss", "cer"} - set(row)
        if missing:
            raise ValueError(f"per_canary[{i}] lacks {sorted(missing)}: rows need them all")
        if int(row["repeats"]) < 0:
            raise ValueError(f"per_canary[{i}] has repeats={row['repeats']}: must be >= 0")
    heldout = [row for row in per_canary if int(row["repeats"]) == 0]
    inserted = [row for row in per_canary if int(row["repeats"]) > 0]
    if not heldout or not inserted:
        raise ValueError(
            f"summarize needs held-out (repeats == 0) and inserted (repeats > 0) canaries, got "
            f"{len(heldout)} held-out and {len(inserted)} inserted"
        )
    heldout_means = _means(heldout, "heldout")
    summary: dict[str, float] = {"heldout_count": float(len(heldout))}
    for repeats in sorted({int(row["repeats"]) for row in inserted}):
        group = [row for row in inserted if int(row["repeats"]) == repeats]
        summary |= {f"r{repeats}/{k}": v for k, v in _group(group, heldout, heldout_means).items()}
    summary |= {f"all/{k}": v for k, v in _group(inserted, heldout, heldout_means).items()}
    return summary


def repetition_counts(summary: Mapping[str, float]) -> list[int]:
    """The repetition counts r of a :func:`summarize` result, ascending."""
    return sorted(int(m.group(1)) for k in summary if (m := re.fullmatch(r"r(\d+)/count", k)))


def format_line(summary: Mapping[str, float]) -> str:
    """One log line of a :func:`summarize` result, highest r first, e.g.
    ``memorization: r=16 CER 12.0% vs 71.3% held-out, exact 50%, exposure 6.1 vs 1.0, AUC
    0.98; r=4 …``."""
    parts = []
    for repeats in reversed(repetition_counts(summary)):
        p = f"r{repeats}/"
        text = (
            f"r={repeats} CER {100 * summary[p + 'cer_inserted']:.1f}% vs "
            f"{100 * summary[p + 'cer_heldout']:.1f}% held-out"
        )
        if p + "exact_inserted" in summary:
            text += f", exact {100 * summary[p + 'exact_inserted']:.0f}%"
        if p + "exposure_inserted" in summary:
            text += (
                f", exposure {summary[p + 'exposure_inserted']:.1f} vs "
                f"{summary[p + 'exposure_heldout']:.1f}"
            )
        if p + "exposure_fit_inserted" in summary:
            text += (
                f" (fitted {summary[p + 'exposure_fit_inserted']:.1f} vs "
                f"{summary[p + 'exposure_fit_heldout']:.1f})"
            )
        parts.append(text + f", AUC {summary[p + 'auc']:.2f}")
    return "memorization: " + "; ".join(parts)


def plot(
    summaries: Mapping[str, Mapping[str, float]],
    per_canary: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
) -> None:
    """One PNG at ``path`` (written to a temporary file, then renamed into place).

    Left: mean greedy CER of the held-out canaries and of the inserted ones per r, one bar
    per run label (e.g. "no DP", "DP ε=2"), from ``summaries`` (:func:`summarize` results).
    Right: the ROC of the loss-threshold attack per run, all inserted canaries vs the
    held-out ones, from ``per_canary`` (rows as :func:`summarize` takes them), AUC in the
    legend.
    """
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    counts = sorted({r for summary in summaries.values() for r in repetition_counts(summary)})
    groups = ["held-out", *(f"r={r}" for r in counts)]
    width = 0.8 / max(len(summaries), 1)
    for k, (label, summary) in enumerate(summaries.items()):
        any_r = f"r{repetition_counts(summary)[0]}/" if repetition_counts(summary) else "all/"
        values = [summary.get(any_r + "cer_heldout", math.nan)] + [
            summary.get(f"r{r}/cer_inserted", math.nan) for r in counts
        ]
        positions = np.arange(len(groups)) + (k - (len(summaries) - 1) / 2) * width
        left.bar(positions, 100 * np.asarray(values), width, label=label)
    left.set_xticks(np.arange(len(groups)), groups)
    left.set(ylabel="canary CER (%, greedy)", title="CER: inserted r times vs held-out")
    left.grid(alpha=0.3, axis="y")
    left.set_ylim(0, 165)  # room for the legend above the bars
    left.legend(fontsize="small", ncol=2, loc="upper center")

    for label, rows in per_canary.items():
        inserted = [row["loss"] for row in rows if int(row["repeats"]) > 0]
        heldout = [row["loss"] for row in rows if int(row["repeats"]) == 0]
        fpr, tpr = roc_curve(inserted, heldout)
        right.plot(fpr, tpr, label=f"{label} (AUC {membership_auc(inserted, heldout):.2f})")
    right.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    right.set(
        xlabel="false-positive rate (held-out)",
        ylabel="true-positive rate (inserted)",
        title="loss-threshold membership attack",
    )
    right.grid(alpha=0.3)
    right.legend(fontsize="small", loc="lower right")

    figure.tight_layout()
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)
    os.replace(tmp, path)
