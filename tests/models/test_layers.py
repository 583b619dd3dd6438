"""Padding-invariant randomness and the GELU with a kept slope (fl_dp_asr.models.layers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fl_dp_asr.models.layers import gelu, row_bernoulli, row_bits, row_uniform


def test_row_bits_are_prefix_stable_in_rows_and_time():
    key = jax.random.key(7)
    full = np.asarray(row_bits(key, (5, 40, 6)))
    np.testing.assert_array_equal(np.asarray(row_bits(key, (3, 17, 6))), full[:3, :17])
    np.testing.assert_array_equal(
        np.asarray(row_bits(key, (2, 40))), np.asarray(row_bits(key, (4, 90)))[:2, :40]
    )
    assert not np.array_equal(full, np.asarray(row_bits(jax.random.key(8), (5, 40, 6))))


def test_row_bernoulli_keeps_the_asked_fraction_independently():
    keep = np.asarray(row_bernoulli(jax.random.key(0), 0.9, (8, 500, 64)))
    assert keep.dtype == bool
    assert keep.mean() == pytest.approx(0.9, abs=0.003)  # 256 k draws: σ ≈ 0.0006
    # Neighbours in time, in features and across rows are uncorrelated (|r| ≲ 3σ ≈ 0.006).
    flat = keep.astype(np.float64)
    for a, b in [
        (flat[:, 1:], flat[:, :-1]),
        (flat[..., 1:], flat[..., :-1]),
        (flat[1:], flat[:-1]),
    ]:
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01
    assert not np.asarray(row_bernoulli(jax.random.key(0), 0.0, (2, 3))).any()
    assert np.asarray(row_bernoulli(jax.random.key(0), 1.0, (2, 3))).all()


def test_row_uniform_covers_its_range_evenly():
    u = np.asarray(row_uniform(jax.random.key(1), (4, 50_000), -0.5, 1.5))
    assert u.dtype == np.float32 and u.min() >= -0.5 and u.max() < 1.5
    counts, _ = np.histogram(u, bins=10, range=(-0.5, 1.5))
    assert np.all(np.abs(counts / u.size - 0.1) < 0.005)


def test_gelu_matches_jax_values_and_gradient():
    x = jnp.linspace(-6.0, 6.0, 1001)
    np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=True), rtol=1e-6, atol=1e-7)
    mine = jax.grad(lambda v: jnp.sum(jnp.sin(v) * gelu(v)))(x)
    reference = jax.grad(lambda v: jnp.sum(jnp.sin(v) * jax.nn.gelu(v, approximate=True)))(x)
    np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)
