"""The ASR round on stacked blocks (asr.PARAM_LAYOUT) gives the numbers of the same round on
the model's own, unrolled layout (a file of its own: two compiles, balanced by file across
`make test`'s workers)."""

import jax
import numpy as np

from fl_dp_asr.dp import DPConfig
from fl_dp_asr.dp.layout import SAME_LAYOUT
from fl_dp_asr.fl import client, executors, server
from fl_dp_asr.fl import round as round_lib
from fl_dp_asr.models import PARAM_LAYOUT, init_params, make_loss_fn
from tests.fl.test_asr_buckets import ragged_cohort
from tests.models import test_model


def round_in_layout(layout):
    """One noisy round (per-layer clipping by dimension, LAMB) of a 2-block model with the
    server state in ``layout``; params back in the model's layout, and the metrics."""
    config = test_model.CONFIG.replace(num_blocks=2)
    update = client.make_client_update(
        make_loss_fn(config, train=True), client.local_sgd(0.05, 1.0)
    )
    opt = server.make_server_optimizer("lamb", 0.01, layout=layout)
    dp = DPConfig("per_layer", 0.05, "by_dim", noise_multiplier=0.5)
    step = round_lib.make_round_step(update, opt, dp, 4, executors.vectorized(2), layout)
    params = layout.to_compute(init_params(config, jax.random.key(0)))
    state, metrics = step(
        round_lib.init_server_state(params, opt, layout=layout), ragged_cohort(), jax.random.key(1)
    )
    return jax.tree.map(np.asarray, (layout.from_compute(state.params), metrics))


def test_round_on_stacked_blocks_gives_the_numbers_of_the_unrolled_layout():
    """The round step on the stacked layout (asr.PARAM_LAYOUT: local training, per-layer
    clipping, noise, LAMB's trust ratio and the metrics all on [blocks, ...] leaves) gives
    the parameters and per-layer metrics of the same round on the model's own layout."""
    stacked, unrolled = round_in_layout(PARAM_LAYOUT), round_in_layout(SAME_LAYOUT)
    assert jax.tree.structure(stacked) == jax.tree.structure(unrolled)
    assert "block_01/mlp_in/kernel" in stacked[1]["layer_noise_norms"]
    assert float(stacked[1]["clip_fraction"]) > 0  # the clipping acted
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7), stacked, unrolled
    )
