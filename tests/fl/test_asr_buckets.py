"""The ASR round with padding cut off (PaddingBuckets): every executor gives the numbers of
the uncut batches, in training mode (dropout, SpecAugment, CAPE on)."""

import jax
import numpy as np
import pytest

from fl_dp_asr.data import PaddingBuckets
from fl_dp_asr.dp import DPConfig
from fl_dp_asr.fl import client, executors, server
from fl_dp_asr.fl import round as round_lib
from fl_dp_asr.models import PARAM_LAYOUT, init_params, make_loss_fn, stack_blocks
from tests.models import test_model

CONFIG = test_model.CONFIG.replace(num_blocks=1)  # one block: three compiles stay short
ROWS, STEPS, MAX_SAMPLES, MAX_LABELS = 3, 2, 12_800, 24


def ragged_cohort(seed=0):
    """4 clients × 2 steps × 3 rows padded to 0.8 s: real rows 0–3 per step (prefix), real
    utterances of 0.1–0.8 s, so steps need different cuts."""
    rng = np.random.default_rng(seed)
    rows = np.array([[3, 1], [1, 0], [2, 2], [1, 1]])
    shape = rows.shape + (ROWS,)
    mask = (np.arange(ROWS) < rows[..., None]).astype(np.float32)
    audio_lengths = (rng.integers(1_600, MAX_SAMPLES + 1, shape) * mask).astype(np.int32)
    label_lengths = (rng.integers(2, MAX_LABELS + 1, shape) * mask).astype(np.int32)
    audio = rng.integers(-3000, 3000, shape + (MAX_SAMPLES,), dtype=np.int16)
    audio *= np.arange(MAX_SAMPLES) < audio_lengths[..., None]
    labels = rng.integers(1, 28, shape + (MAX_LABELS,), dtype=np.int32)
    labels *= np.arange(MAX_LABELS) < label_lengths[..., None]
    return {
        "batches": {
            "audio": audio,
            "audio_lengths": audio_lengths,
            "labels": labels,
            "label_lengths": label_lengths,
            "mask": mask,
        },
        "step_mask": (rows > 0).astype(np.float32),
        "client_mask": np.ones(4, np.float32),
    }


def new_params(executor, buckets, block):
    update = client.make_client_update(
        make_loss_fn(CONFIG, train=True), client.local_sgd(0.05, 1.0), buckets
    )
    opt = server.make_server_optimizer("sgd", 1.0)
    step = round_lib.make_round_step(
        update,
        opt,
        DPConfig("per_layer", 1.0, "uniform"),
        4,
        executors.make(executor, chunk_size=2),
        PARAM_LAYOUT,
    )
    params = stack_blocks(init_params(CONFIG, jax.random.key(0)))
    state, metrics = step(
        round_lib.init_server_state(params, opt, layout=PARAM_LAYOUT), block, jax.random.key(1)
    )
    return jax.tree.map(np.asarray, (state.params, metrics))


@pytest.fixture(scope="module")
def uncut():
    """The reference: one client at a time, every step on the whole padded batch."""
    return new_params("sequential", None, ragged_cohort())


@pytest.mark.parametrize("executor", ["sequential", "vectorized"])
def test_cut_padding_changes_no_number(executor, uncut):
    block = ragged_cohort()
    buckets = PaddingBuckets(row_levels=2, length_levels=2)
    one_step = jax.tree.map(lambda x: x[0, 0], block["batches"])
    assert buckets.grid(one_step) == (2, 2)
    levels = jax.vmap(jax.vmap(buckets.levels))(block["batches"])
    assert len({tuple(v) for v in np.asarray(levels).reshape(-1, 2)}) > 1  # several cuts run
    params, metrics = new_params(executor, buckets, block)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        (params, metrics),
        uncut,
    )
    assert float(metrics["clients"]) == 4.0 and float(metrics["local_steps"]) == 1.75
