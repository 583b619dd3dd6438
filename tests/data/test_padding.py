"""PaddingBuckets: the cuts of a padded ASR batch, the level that holds its real data."""

import jax
import numpy as np
import pytest

from fl_dp_asr.data import PaddingBuckets


def batch(rows_real, samples, labels, rows=4, max_samples=64_000, max_labels=48):
    """A CONTRACTS.md batch whose real utterances sit in ``rows_real`` (others padding)."""
    out = {
        "audio": np.zeros((rows, max_samples), np.int16),
        "audio_lengths": np.zeros(rows, np.int32),
        "labels": np.zeros((rows, max_labels), np.int32),
        "label_lengths": np.zeros(rows, np.int32),
        "mask": np.zeros(rows, np.float32),
    }
    for row, n, m in zip(rows_real, samples, labels):
        out["audio"][row, :n] = 7
        out["audio_lengths"][row] = n
        out["labels"][row, :m] = 3
        out["label_lengths"][row] = m
        out["mask"][row] = 1.0
    return out


def test_sizes_halve_rows_and_lengths_down_to_the_batch_shape():
    b = batch([0], [100], [1], max_samples=63_000)
    assert PaddingBuckets(row_levels=3, length_levels=3).sizes(b) == (
        [1, 2, 4],
        [16_000, 32_000, 63_000],
    )  # rounded up to 0.1 s
    assert PaddingBuckets(3, 3).grid(b) == (3, 3)
    assert PaddingBuckets(1, 1).sizes(b) == ([4], [63_000])
    # Tiny shapes: duplicate sizes collapse, the last size is always the batch's own.
    small = batch([0], [10], [1], rows=2, max_samples=1_700)
    assert PaddingBuckets(3, 3).sizes(small) == ([1, 2], [1_600, 1_700])


@pytest.mark.parametrize(
    "rows_real, samples, labels, expected",
    [
        ([0], [16_000], [48], [0, 0]),  # one short utterance: the smallest cell
        ([0, 1], [16_001, 50], [10, 2], [1, 1]),  # one sample too long for 1 s: next length
        ([2], [100], [1], [2, 0]),  # a real row after padding rows is kept
        ([0, 1, 2, 3], [64_000] * 4, [48] * 4, [2, 2]),
    ],
)
def test_levels_are_the_smallest_cell_holding_every_real_utterance(
    rows_real, samples, labels, expected
):
    b = batch(rows_real, samples, labels)
    levels = jax.jit(PaddingBuckets(3, 3).levels)(b)
    assert levels.dtype == np.int32
    np.testing.assert_array_equal(levels, expected)


def test_cut_drops_only_padding():
    b = batch([0, 1], [30_000, 12_000], [20, 9])
    buckets = PaddingBuckets(3, 3)
    levels = tuple(int(v) for v in buckets.levels(b))
    cut = buckets.cut(b, levels)
    assert cut["audio"].shape == (2, 32_000) and cut["labels"].shape == (2, 48)
    assert {k: v.shape[0] for k, v in cut.items()} == dict.fromkeys(b, 2)
    for name in b:  # every real value survives; what was cut off is zero padding
        kept = b[name][:2]
        np.testing.assert_array_equal(
            cut[name], kept[:, : cut[name].shape[1]] if kept.ndim == 2 else kept
        )
    assert not b["audio"][:, 32_000:].any()
    assert not b["audio"][2:].any()


def test_invalid_levels_are_rejected():
    with pytest.raises(ValueError, match="row_levels=0"):
        PaddingBuckets(row_levels=0)
