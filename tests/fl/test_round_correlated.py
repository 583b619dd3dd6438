"""DP-FTRL in the round step: the noise the server adds over rounds 1..n is z·C·(C⁻¹Z) of
the strategy (empirical covariance over many coordinates), added once per round after the
cross-device sum, its state in the server state, checkpointed and resumed bit-identically; a
round past the strategy's n rounds is refused."""

import functools
import textwrap

import jax
import numpy as np
import pytest

from fl_dp_asr.dp import DPConfig
from fl_dp_asr.dp.correlated import CorrelatedNoise
from fl_dp_asr.fl import client, executors, server
from fl_dp_asr.fl import round as round_lib
from fl_dp_asr.train.checkpoint import Checkpointer
from tests import processes
from tests.fl import toy_task
from tests.fl.test_round import fresh_params

ROUNDS, COORDS, CLIP, Z, COHORT = 6, 20_000, 0.5, 2.0, 4
MECHANISMS = {
    "blt": CorrelatedNoise(
        "blt", rounds=ROUNDS, min_separation=2, buf_decay=(0.9, 0.5), output_scale=(0.2, 0.1)
    ),
    "banded_toeplitz": CorrelatedNoise(
        "banded_toeplitz", rounds=ROUNDS, min_separation=3, coefs=(1.0, 0.5, 0.25)
    ),
}


OPT = server.make_server_optimizer("sgd", 1.0)


@functools.lru_cache
def correlated_step(mechanism, executor="vectorized"):
    """A round step whose clients send zero (local lr 0) with server SGD lr 1, and its
    DPConfig (one compilation per setting)."""
    dp = DPConfig("global", CLIP, noise_multiplier=Z, correlated_noise=mechanism)
    update = client.make_client_update(toy_task.loss_fn, client.local_sgd(0.0, 1.0))
    return round_lib.make_round_step(
        update, OPT, dp, COHORT, executors.make(executor, chunk_size=2)
    ), dp


def noise_rounds(mechanism, executor="vectorized", rounds=ROUNDS, state=None, start=0):
    """Rounds of :func:`correlated_step`: the noise of round t on the sum is
    S·(θ_{t−1} − θ_t). Returns ``([rounds, COORDS] noise, final state)``."""
    step, dp = correlated_step(mechanism, executor)
    if state is None:
        state = round_lib.init_server_state(fresh_params(COORDS), OPT, dp)
    block, noise = toy_task.make_cohort(COHORT), []
    for t in range(start, start + rounds):
        before = np.asarray(state.params["unused"])
        state, _ = step(state, block, jax.random.fold_in(jax.random.key(5), t))
        noise.append((before - np.asarray(state.params["unused"])) * COHORT)
    return np.stack(noise), state


@pytest.mark.parametrize("kind", sorted(MECHANISMS))
def test_the_noise_over_rounds_has_the_covariance_of_the_strategy(kind):
    mechanism = MECHANISMS[kind]
    noise, _ = noise_rounds(mechanism)
    c_inv = np.linalg.inv(mechanism.strategy_matrix())
    expected = (Z * CLIP) ** 2 * c_inv @ c_inv.T
    empirical = noise @ noise.T / COORDS
    # Std of an entry of the sample covariance of Gaussians: √((Σ_ii Σ_jj + Σ_ij²) / N).
    diag = np.diag(expected)
    stderr = np.sqrt((np.outer(diag, diag) + expected**2) / COORDS)
    np.testing.assert_array_less(np.abs(empirical - expected), 5 * stderr)
    assert np.abs(expected[1:, :-1]).max() > 10 * stderr.max()  # correlations are tested
    assert not np.allclose(empirical, np.diag(np.diag(empirical)), atol=5 * stderr.max())


def test_resumed_from_a_checkpoint_the_noise_is_bit_identical(tmp_path):
    mechanism = MECHANISMS["blt"]
    straight, _ = noise_rounds(mechanism, rounds=4)
    first, state = noise_rounds(mechanism, rounds=2)
    checkpoints = Checkpointer(tmp_path)
    checkpoints.save(2, state._asdict(), {})
    checkpoints.wait()
    restored = round_lib.ServerState(**checkpoints.restore(2, state._asdict())[0])
    checkpoints.close()
    second, _ = noise_rounds(mechanism, rounds=2, state=restored, start=2)
    np.testing.assert_array_equal(np.concatenate([first, second]), straight)


def test_correlated_noise_is_added_once_with_eight_devices():
    """Eight fake CPU devices (subprocess), sharded executor: the noise of every round is the
    one-device noise, not √8 times more."""
    script = textwrap.dedent("""
        import json, jax
        from tests.fl.test_round_correlated import MECHANISMS, noise_rounds
        assert jax.device_count() == 8
        noise, _ = noise_rounds(MECHANISMS["banded_toeplitz"], "sharded", rounds=3)
        print(json.dumps(noise[:, :5].tolist()))
    """)
    eight = np.array(processes.run_json(script))
    one, _ = noise_rounds(MECHANISMS["banded_toeplitz"], "sharded", rounds=3)
    np.testing.assert_allclose(eight, one[:, :5], rtol=1e-5, atol=1e-6)


def test_a_state_without_the_noise_state_is_refused():
    dp = DPConfig("global", CLIP, noise_multiplier=Z, correlated_noise=MECHANISMS["blt"])
    update = client.make_client_update(toy_task.loss_fn, client.local_sgd(0.0, 1.0))
    opt = server.make_server_optimizer("sgd", 1.0)
    step = round_lib.make_round_step(update, opt, dp, COHORT)
    with pytest.raises(ValueError, match="lacks a correlated-noise state"):
        step(
            round_lib.init_server_state(fresh_params(), opt),
            toy_task.make_cohort(COHORT),
            jax.random.key(0),
        )


def test_a_noise_state_of_other_shapes_is_refused():
    """A noise state made for other parameters is named before anything is traced."""
    dp = DPConfig("global", CLIP, noise_multiplier=Z, correlated_noise=MECHANISMS["blt"])
    update = client.make_client_update(toy_task.loss_fn, client.local_sgd(0.0, 1.0))
    opt = server.make_server_optimizer("sgd", 1.0)
    step = round_lib.make_round_step(update, opt, dp, COHORT)
    state = round_lib.init_server_state(fresh_params(10), opt, dp)
    other = round_lib.init_server_state(fresh_params(COORDS), opt, dp).noise_state
    with pytest.raises(
        ValueError,
        match=r"noise state at .*unused.* is float32\[2, 20000\], "
        r"but .* keeps float32\[2, 10\]",
    ):
        step(state._replace(noise_state=other), toy_task.make_cohort(COHORT), jax.random.key(0))


def test_correlated_noise_with_adaptive_clipping_is_refused():
    with pytest.raises(ValueError, match="adaptive clipping"):
        DPConfig(
            "global",
            CLIP,
            noise_multiplier=Z,
            target_unclipped_quantile=0.5,
            correlated_noise=MECHANISMS["blt"],
        )


def test_every_executor_adds_the_same_correlated_noise():
    vectorized, _ = noise_rounds(MECHANISMS["blt"], "vectorized", rounds=2)
    sequential, _ = noise_rounds(MECHANISMS["blt"], "sequential", rounds=2)
    np.testing.assert_allclose(sequential, vectorized, rtol=1e-5, atol=1e-6)


def test_a_round_past_the_strategys_rounds_is_refused():
    """Round n + 1 would add noise the accountant never covered: the step refuses a state
    that has applied the n rounds (an explicit read of its round count, allowed under a
    transfer guard); its program (run under a trace, where the host cannot read the round
    count) keeps the state and flags the round, which check_round raises."""
    mechanism = MECHANISMS["banded_toeplitz"]
    _, state = noise_rounds(mechanism)  # rounds 1..n are applied
    step, _ = correlated_step(mechanism)
    block, key = jax.device_put(toy_task.make_cohort(COHORT)), jax.random.key(0)
    with (
        pytest.raises(
            round_lib.PastNoiseHorizonError,
            match=f"has applied {ROUNDS} rounds: .* covers {ROUNDS} rounds",
        ),
        jax.transfer_guard("disallow"),
    ):
        step(state, block, key)
    assert int(state.round) == ROUNDS
    kept, metrics = jax.jit(lambda *args: step(*args))(state, block, key)
    jax.tree.map(np.testing.assert_array_equal, kept, state)
    assert float(metrics["past_noise_horizon"]) == 1.0
    with pytest.raises(
        round_lib.PastNoiseHorizonError,
        match=f"round {ROUNDS}: .* covers {ROUNDS} rounds.* not applied",
    ):
        round_lib.check_round(metrics, ROUNDS)
