"""Cutting the padding off a local step's batch: a few static shapes chosen at run time.

A cohort block pads every local batch to one shape ``[B, max_samples]`` (docs/CONTRACTS.md):
its local batch size B and the length bucket of the cohort's longest utterance. Most
batches are far smaller — a Poisson cohort nearly always holds an 8 s utterance while the
median is 2.9 s, and clients with 1–3 utterances fill 1–3 of the B rows — so a local step
on the padded batch computes mostly padding (4.9× the real audio on the demo's cohorts).

:class:`PaddingBuckets` gives each step a grid of smaller static shapes, rows × length,
made by halving: rows B, ⌈B/2⌉, ⌈B/4⌉ …; audio ``max_samples``, ½, ¼ … (rounded up to
0.1 s). Labels keep their padded length: the CTC loss costs ~2 ms per local step whatever
it is, and cutting labels alongside the audio would send fast speech to longer cuts. The
client update
(:class:`fl_dp_asr.fl.client.ClientUpdate`) runs each step on the smallest cell holding its
real utterances, selected by ``lax.switch``, so one compiled program serves every round and
no padding beyond the cell is computed. Cutting is exact only for a loss that does not
depend on padding; the ASR model's does not (:mod:`fl_dp_asr.models.encoder`), and
``tests/fl/test_asr_buckets.py`` checks that every executor gives the numbers of the uncut
batches.

Rows after the last real utterance and samples beyond the longest real one are cut (real
utterances fill the first rows of a batch in every packer here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from fl_dp_asr.data.layouts import SAMPLE_RATE

Batch = Mapping[str, Any]
AUDIO_QUANTUM = SAMPLE_RATE // 10  # cut audio lengths are multiples of 0.1 s


@dataclasses.dataclass(frozen=True)
class PaddingBuckets:
    """The cuts of a padded ASR batch (implements :class:`fl_dp_asr.fl.client.BatchBuckets`).

    Attributes:
        row_levels: row sizes B, ⌈B/2⌉, … (``row_levels`` of them, duplicates dropped).
        length_levels: audio lengths ``max_samples``, ½, … (``length_levels`` of them,
            rounded up to 0.1 s, duplicates dropped).

    The grid has at most ``row_levels × length_levels`` cells; each is one compiled copy of
    the local step (compile time grows with it, run time does not).
    """

    row_levels: int = 3
    length_levels: int = 2

    def __post_init__(self):
        if self.row_levels < 1 or self.length_levels < 1:
            raise ValueError(
                f"PaddingBuckets(row_levels={self.row_levels}, length_levels="
                f"{self.length_levels}): both must be >= 1"
            )

    def sizes(self, batch: Batch) -> tuple[list[int], list[int]]:
        """Static sizes of a batch's cuts, increasing and distinct: rows and audio samples;
        the last ones are the batch's own."""
        rows, samples = batch["audio"].shape
        row_sizes = {-(-rows // 2**k) for k in range(self.row_levels)}
        sample_sizes = {
            min(samples, -(-samples // 2**k // AUDIO_QUANTUM) * AUDIO_QUANTUM)
            for k in range(self.length_levels)
        }
        return sorted(row_sizes), sorted(sample_sizes)

    def grid(self, batch: Batch) -> tuple[int, int]:
        """(row levels, length levels) of a batch of this shape."""
        row_sizes, sample_sizes = self.sizes(batch)
        return len(row_sizes), len(sample_sizes)

    def levels(self, batch: Batch) -> jax.Array:
        """int32 [2]: the smallest (row, length) level holding every real utterance."""
        row_sizes, sample_sizes = self.sizes(batch)
        real = batch["mask"] > 0
        rows = jnp.max(jnp.where(real, jnp.arange(1, real.shape[0] + 1), 0))
        samples = jnp.max(jnp.where(real, batch["audio_lengths"], 0))
        return jnp.stack(
            [jnp.sum(jnp.asarray(row_sizes) < rows), jnp.sum(jnp.asarray(sample_sizes) < samples)]
        ).astype(jnp.int32)

    def cut(self, batch: Batch, levels: Sequence[int]) -> dict[str, Any]:
        """The batch's first rows and audio samples of the cell ``levels``."""
        row_sizes, sample_sizes = self.sizes(batch)
        cut = {name: value[: row_sizes[levels[0]]] for name, value in batch.items()}
        cut["audio"] = cut["audio"][:, : sample_sizes[levels[1]]]
        return cut
