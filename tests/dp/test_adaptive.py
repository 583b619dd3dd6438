"""Adaptive clipping math: bound tracking, count noise, the split of the noise multiplier."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from fl_dp_asr.dp import accounting, adaptive

LAYERS = {
    "attention": (math.log(0.15), 0.5),
    "mlp": (math.log(0.3), 0.8),
    "output": (math.log(2.0), 0.3),
}  # per-layer log-normal norms: (mu, sigma) of log


def run_bounds(
    rounds, cohort, gamma, *, stddev=0.0, lr=0.2, seed=0, start=1.0, exact_fractions=False
):
    """Simulates the server's bound updates; returns the bounds after every round."""
    rng = np.random.default_rng(seed)
    bounds = adaptive.initial_bounds(dict.fromkeys(LAYERS, start))
    update = jax.jit(
        lambda b, sums, n, noise: adaptive.update_bounds(
            b, sums, n, noise, expected_cohort_size=cohort, target_quantile=gamma, learning_rate=lr
        )
    )
    history = []
    for t in range(rounds):
        if exact_fractions:  # the infinite-cohort limit: only the count noise is random
            sums = {
                name: cohort * scipy.stats.norm.cdf((math.log(float(bounds[name])) - mu) / s)
                for name, (mu, s) in LAYERS.items()
            }
        else:
            norms = {name: np.exp(rng.normal(mu, s, cohort)) for name, (mu, s) in LAYERS.items()}
            bits = jax.vmap(adaptive.unclipped_bits, in_axes=(0, None))(
                {k: jnp.asarray(v) for k, v in norms.items()}, bounds
            )
            sums = {k: jnp.sum(v) for k, v in bits.items()}
        noise = adaptive.count_noise(jax.random.key(t), bounds, stddev)
        bounds = update(bounds, sums, jnp.float32(cohort), noise)
        history.append({k: float(v) for k, v in bounds.items()})
    return history


@pytest.mark.parametrize("gamma", [0.5, 0.8])
def test_noise_free_bounds_reach_each_layers_quantile_within_50_rounds(gamma):
    final = run_bounds(50, cohort=200, gamma=gamma, start=0.5)[-1]
    for name, (mu, s) in LAYERS.items():
        quantile = math.exp(mu + s * scipy.stats.norm.ppf(gamma))
        assert final[name] == pytest.approx(quantile, rel=0.10), name


def test_count_noise_makes_the_tracking_error_the_predicted_random_walk():
    # Linearized around the quantile u* = log C*: e_{t+1} = (1 − ηp) e_t − η ξ_t / S with
    # p = dF/dlogC = φ(z_γ)/s, so Var(log C) = η² σ_b² / S² / (ηp (2 − ηp)).
    gamma, cohort, lr, stddev = 0.5, 50, 0.2, 10.0
    history = run_bounds(1500, cohort, gamma, stddev=stddev, lr=lr, exact_fractions=True, start=0.5)
    for name, (mu, s) in LAYERS.items():
        logs = np.log([h[name] for h in history[300:]])
        p = scipy.stats.norm.pdf(scipy.stats.norm.ppf(gamma)) / s
        predicted = math.sqrt(lr**2 * stddev**2 / cohort**2 / (lr * p * (2 - lr * p)))
        assert np.std(logs) == pytest.approx(predicted, rel=0.2), name
        assert np.mean(logs) == pytest.approx(mu, abs=2 * predicted), name


def test_bounds_move_geometrically_by_the_noisy_fraction():
    bounds = {"a": jnp.float32(2.0)}
    new = adaptive.update_bounds(
        bounds,
        {"a": jnp.float32(6.0)},
        jnp.float32(8.0),
        {"a": jnp.float32(1.0)},
        expected_cohort_size=10.0,
        target_quantile=0.5,
        learning_rate=0.2,
    )
    fraction = (6.0 - 4.0 + 1.0) / 10.0 + 0.5
    assert float(new["a"]) == pytest.approx(2.0 * math.exp(-0.2 * (fraction - 0.5)), rel=1e-6)


def test_count_noise_std_is_sigma_b_and_the_same_for_the_same_key():
    bounds = {f"layer{i}": 1.0 for i in range(1000)}
    draws = np.array(list(adaptive.count_noise(jax.random.key(3), bounds, 2.5).values()))
    assert np.std(draws) == pytest.approx(2.5, rel=0.1)
    again = adaptive.count_noise(jax.random.key(3), bounds, 2.5)
    assert list(again.values()) == list(
        adaptive.count_noise(jax.random.key(3), bounds, 2.5).values()
    )


def test_noise_multiplier_split_composes_back_to_the_overall_z():
    z_b = adaptive.count_noise_multiplier(clipped_count_stddev=4.0, num_bounds=4)
    assert z_b == pytest.approx(4.0)  # 2σ_b/√H
    z_delta = adaptive.delta_noise_multiplier(1.2, z_b)
    assert z_delta > 1.2
    assert adaptive.overall_noise_multiplier(z_delta, z_b) == pytest.approx(1.2)
    assert adaptive.count_noise_multiplier(0.8, 1) == pytest.approx(1.6)  # global: 2σ_b


def test_the_accountant_sees_the_overall_z():
    # Two Gaussian queries on the same Poisson sample = one with the overall z
    # (../shared/API-NOTES.md): ε of the run is epsilon() at z.
    import dp_accounting
    from dp_accounting import rdp

    z, z_b = 1.1, 3.0
    z_delta = adaptive.delta_noise_multiplier(z, z_b)
    q, rounds = 0.05, 100
    composed = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            q,
            dp_accounting.ComposedDpEvent(
                [dp_accounting.GaussianDpEvent(z_delta), dp_accounting.GaussianDpEvent(z_b)]
            ),
        ),
        rounds,
    )
    eps_composed = rdp.RdpAccountant().compose(composed).get_epsilon(1e-6)
    eps = accounting.epsilon(z, 50, 1000, rounds, 1e-6, sampling="poisson", accountant="rdp")
    assert eps.epsilon == pytest.approx(eps_composed, rel=1e-6)


@pytest.mark.parametrize(
    "z, z_b, message",
    [
        (1.0, 1.0, "must exceed"),
        (1.0, 0.5, "must exceed"),
        (1.0, 0.0, "must exceed"),
        (float("nan"), 2.0, "noise_multiplier"),
        (-1.0, 2.0, "noise_multiplier"),
        (1.0, float("inf"), "count noise multiplier"),
    ],
)
def test_impossible_splits_are_clear_errors(z, z_b, message):
    with pytest.raises(ValueError, match=message):
        adaptive.delta_noise_multiplier(z, z_b)


def test_noise_free_and_count_noise_only_settings_are_allowed():
    assert adaptive.delta_noise_multiplier(0.0, 0.0) == 0.0
    assert adaptive.delta_noise_multiplier(0.0, 2.0) == 0.0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_initial_bounds_must_be_positive_and_finite(bad):
    with pytest.raises(ValueError, match="'b'"):
        adaptive.initial_bounds({"a": 1.0, "b": bad})


def test_bits_and_total_bound():
    bounds = {"a": jnp.float32(1.0), "b": jnp.float32(2.0)}
    bits = adaptive.unclipped_bits({"a": jnp.float32(1.0), "b": jnp.float32(2.5)}, bounds)
    assert {k: float(v) for k, v in bits.items()} == {"a": 1.0, "b": 0.0}
    assert float(adaptive.total_bound(bounds)) == pytest.approx(math.sqrt(5.0))
