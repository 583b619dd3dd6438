"""Adaptive clipping inside the round step: tracking, sensitivity, noise, once per round."""

import functools
import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fl_dp_asr.dp import DPConfig
from fl_dp_asr.fl import client, executors, server
from fl_dp_asr.fl import round as round_lib
from tests import processes

SIZES = {"a": 4, "b": 100}


def linear_loss(params, batch, key):
    """⟨θ, v⟩: one SGD step of lr 1 makes the client's delta exactly v (batch["v"])."""
    del key
    loss = sum(jnp.sum(params[k] * batch[k][0]) for k in SIZES)
    return loss, {"num_utterances": jnp.sum(batch["mask"])}


def known_delta_cohort(deltas: dict[str, np.ndarray]) -> dict:
    """A cohort whose client i sends the delta ``{k: deltas[k][i]}`` (one local step)."""
    num = len(next(iter(deltas.values())))
    batches = {k: v[:, None, None].astype(np.float32) for k, v in deltas.items()}
    batches["mask"] = np.ones((num, 1, 1), np.float32)
    return {
        "batches": batches,
        "step_mask": np.ones((num, 1), np.float32),
        "client_mask": np.ones(num, np.float32),
    }


def random_deltas(num, layer_norms: dict[str, np.ndarray], rng) -> dict[str, np.ndarray]:
    """Random directions with the given per-client norms, per layer."""
    out = {}
    for k, norms in layer_norms.items():
        direction = rng.normal(size=(num, SIZES[k]))
        out[k] = direction / np.linalg.norm(direction, axis=1, keepdims=True) * norms[:, None]
    return out


def make_step(dp, cohort_size, executor="vectorized"):
    update = client.make_client_update(linear_loss, optax.sgd(1.0))
    opt = server.make_server_optimizer("sgd", 1.0)
    step = round_lib.make_round_step(
        update, opt, dp, cohort_size, executors.make(executor, chunk_size=4)
    )
    return step, opt


def zero_params(extra=0):
    params = {k: jnp.zeros(n) for k, n in SIZES.items()}
    if extra:
        params["unused"] = jnp.zeros(extra)
    return params


LOGNORMAL = {"a": (math.log(0.3), 0.5), "b": (math.log(2.0), 0.4)}


def lognormal_norms(num, rng):
    return {k: np.exp(rng.normal(mu, s, num)) for k, (mu, s) in LOGNORMAL.items()}


@pytest.mark.parametrize("clipping", ["per_layer", "global"])
def test_noise_free_bounds_reach_the_quantile_within_50_rounds(clipping):
    gamma, cohort = 0.7, 64
    dp = DPConfig(
        clipping,
        1.0,
        noise_multiplier=0.0,
        target_unclipped_quantile=gamma,
        clipped_count_stddev=0.0,
    )
    step, opt = make_step(dp, cohort)
    state = round_lib.init_server_state(zero_params(), opt, dp)
    rng = np.random.default_rng(0)
    for t in range(50):
        block = known_delta_cohort(random_deltas(cohort, lognormal_norms(cohort, rng), rng))
        state, metrics = step(state, block, jax.random.key(t))
    bounds = {k: float(v) for k, v in state.clip_bounds.items()}
    if clipping == "per_layer":
        for k, (mu, s) in LOGNORMAL.items():
            quantile = math.exp(mu + s * 0.5244005)  # Φ⁻¹(0.7)
            assert bounds[k] == pytest.approx(quantile, rel=0.10), k
    else:
        sample = lognormal_norms(200_000, np.random.default_rng(1))
        total = np.sqrt(sum(v**2 for v in sample.values()))
        assert bounds["global"] == pytest.approx(np.quantile(total, gamma), rel=0.10)
    assert float(metrics["clip_norm"]) == pytest.approx(
        math.sqrt(sum(float(v) ** 2 for v in metrics["layer_clip_norms"].values())), rel=1e-6
    )


def sum_with_bounds(dp, bounds, deltas, **state_kw):
    step, opt = make_step(dp, len(next(iter(deltas.values()))))
    state = round_lib.init_server_state(zero_params(**state_kw), opt, dp)
    state = state._replace(clip_bounds={k: jnp.float32(v) for k, v in bounds.items()})
    state, metrics = step(state, known_delta_cohort(deltas), jax.random.key(0))
    return {
        k: -np.asarray(v) * len(next(iter(deltas.values()))) for k, v in state.params.items()
    }, metrics


@pytest.mark.parametrize(
    "clipping, bounds", [("per_layer", {"a": 0.3, "b": 0.5}), ("global", {"global": 0.4})]
)
def test_one_user_moves_the_noiseless_sum_by_at_most_the_current_bounds(clipping, bounds):
    dp = DPConfig(
        clipping, 1.0, noise_multiplier=0.0, target_unclipped_quantile=0.5, clipped_count_stddev=0.0
    )
    rng = np.random.default_rng(0)
    deltas = random_deltas(6, lognormal_norms(6, rng), rng)
    base, _ = sum_with_bounds(dp, bounds, deltas)
    huge = {k: v.copy() for k, v in deltas.items()}
    huge["a"][2] *= 1e4
    huge["b"][2] *= -1e4
    other, metrics = sum_with_bounds(dp, bounds, huge)
    moved = {k: float(np.linalg.norm(base[k] - other[k])) for k in base}
    assert float(metrics["clip_norm"]) == pytest.approx(
        math.sqrt(sum(b * b for b in bounds.values())), rel=1e-6
    )
    if clipping == "per_layer":
        for k, bound in bounds.items():
            assert 0 < moved[k] <= 2 * bound * (1 + 1e-5)  # replace one user: 2 C_h
    total = math.sqrt(sum(m * m for m in moved.values()))
    assert 0 < total <= 2 * float(metrics["clip_norm"]) * (1 + 1e-5)


NOISE_PARAMS = 120_000
NOISE_DP = DPConfig(
    "global",
    1.0,
    noise_multiplier=2.0,
    target_unclipped_quantile=0.5,
    clipped_count_stddev=3.0,
    clip_norm_lr=0.2,
)


@functools.cache
def noise_step(executor):
    return make_step(NOISE_DP, 8, executor)


def noise_round(executor="vectorized", key=3):
    """All clients send zero: the update is the delta noise alone, and every bit is 1."""
    cohort = 8
    step, opt = noise_step(executor)
    state = round_lib.init_server_state(zero_params(NOISE_PARAMS), opt, NOISE_DP)
    state = state._replace(clip_bounds={"global": jnp.float32(0.5)})
    zeros = {k: np.zeros((cohort, n)) for k, n in SIZES.items()}
    new, _ = step(state, known_delta_cohort(zeros), jax.random.key(key))
    # b̄ = (n − n/2 + ξ)/S + ½ = 1 + ξ/S (n = S, all unclipped); C' = C·exp(−η(b̄ − γ)).
    xi = cohort * (0.5 - math.log(float(new.clip_bounds["global"]) / 0.5) / 0.2 - 1.0)
    return -np.asarray(new.params["unused"]), xi


def test_delta_noise_is_z_delta_times_the_current_bound_and_counts_get_sigma_b():
    z, z_b = 2.0, 2 * 3.0  # global: z_b = 2σ_b
    z_delta = (z**-2 - z_b**-2) ** -0.5
    noise_on_mean, _ = noise_round()
    assert np.std(noise_on_mean) * 8 == pytest.approx(z_delta * 0.5, rel=0.02)
    xis = [noise_round(key=k)[1] for k in range(200)]
    assert np.std(xis) == pytest.approx(3.0, rel=0.12)
    assert abs(np.mean(xis)) < 4 * 3.0 / math.sqrt(200)


def test_both_noises_are_added_once_with_eight_devices():
    script = textwrap.dedent("""
        import json, numpy as np
        import jax
        from tests.fl.test_adaptive_round import noise_round
        assert jax.device_count() == 8
        noise, xi = noise_round("sharded")
        print(json.dumps({"std": float(np.std(noise)), "head": noise[:5].tolist(), "xi": xi}))
    """)
    eight = processes.run_json(script)
    one, xi = noise_round()
    assert eight["std"] == pytest.approx(float(np.std(one)), rel=1e-5)
    np.testing.assert_allclose(eight["head"], one[:5], rtol=1e-5)
    assert eight["xi"] == pytest.approx(xi, rel=1e-4, abs=1e-4)


def test_count_noise_that_leaves_no_budget_for_the_deltas_is_a_clear_error():
    dp = DPConfig(
        "per_layer",
        1.0,
        noise_multiplier=1.0,
        target_unclipped_quantile=0.5,
        clipped_count_stddev=1.0,
    )  # H = 2: z_b = 2·1/√2 = 1.41 > 1: ok
    assert dp.noise_multipliers(8, 2)[1] > 1.0
    for clipping in ("per_layer", "global"):  # z_b = 2·0.5 = 1 ≤ z, whatever H
        too_little = DPConfig(
            clipping,
            1.0,
            noise_multiplier=1.0,
            target_unclipped_quantile=0.5,
            clipped_count_stddev=0.5,
        )
        with pytest.raises(ValueError, match="must exceed the overall noise multiplier"):
            make_step(too_little, 8)  # when the step is made


def test_count_noise_too_small_for_the_states_layers_fails_before_tracing():
    """z_b = 2σ_b/√H: 1.2 > z = 1 with one bound, 0.85 with the state's H = 2."""
    dp = DPConfig(
        "per_layer",
        1.0,
        noise_multiplier=1.0,
        target_unclipped_quantile=0.5,
        clipped_count_stddev=0.6,
    )
    step, opt = make_step(dp, 8)
    state = round_lib.init_server_state(zero_params(), opt, dp)
    with pytest.raises(ValueError, match=r"z_b = 0\.8485 must exceed"):
        step(state, {}, jax.random.key(0))  # raised before the block is read


@pytest.mark.parametrize(
    "adaptive_state, adaptive_step, message",
    [
        (False, True, "initialized without adaptive clip bounds.*init_server_state"),
        (True, False, "carries adaptive clip bounds"),
    ],
)
def test_a_state_whose_bounds_do_not_fit_the_step_is_a_clear_error(
    adaptive_state, adaptive_step, message
):
    adaptive_dp = DPConfig("per_layer", 1.0, target_unclipped_quantile=0.5)
    fixed_dp = DPConfig("per_layer", 1.0)
    step, opt = make_step(adaptive_dp if adaptive_step else fixed_dp, 8)
    state = round_lib.init_server_state(
        zero_params(), opt, adaptive_dp if adaptive_state else fixed_dp
    )
    with pytest.raises(ValueError, match=message):
        step(state, {}, jax.random.key(0))
    with pytest.raises(ValueError, match=message):
        step.lower(state, {}, jax.random.key(0))


def test_a_state_with_the_bounds_of_other_layers_is_a_clear_error():
    by_module = DPConfig("per_layer", 1.0, target_unclipped_quantile=0.5, layers="module")
    step, opt = make_step(by_module, 8)
    params = {"block": {"a": jnp.zeros(4), "b": jnp.zeros(100)}}
    state = round_lib.init_server_state(
        params, opt, DPConfig("per_layer", 1.0, target_unclipped_quantile=0.5)
    )
    with pytest.raises(ValueError, match=r"dp\.layers='module'"):
        step(state, {}, jax.random.key(0))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(target_unclipped_quantile=1.5), "target_unclipped_quantile"),
        (dict(target_unclipped_quantile=float("nan")), "target_unclipped_quantile"),
        (dict(target_unclipped_quantile=0.5, clipping="rescale_per_layer"), "adaptive clipping"),
        (dict(clip_norm_lr=-0.1), "clip_norm_lr"),
        (dict(clipped_count_stddev=float("inf")), "clipped_count_stddev"),
        (dict(layers="blocks"), "dp.layers"),
    ],
)
def test_bad_adaptive_settings_name_the_field(changes, message):
    settings = dict(clipping="per_layer", clip_norm=1.0) | changes
    with pytest.raises(ValueError, match=message):
        DPConfig(**settings)


def test_default_count_stddev_is_a_twentieth_of_the_cohort():
    dp = DPConfig("global", 1.0, target_unclipped_quantile=0.5)
    assert dp.count_stddev(64) == pytest.approx(3.2)
    assert DPConfig("global", 1.0).count_stddev(64) == 0.0
