"""Adaptive clipping: bounds that track a quantile of the client-delta norms, under DP.

Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive
Clipping", NeurIPS 2021 (arXiv 1905.03871), geometric update; here also **per layer**.

Global (one bound C_t):

* client i reports the bit b_i = 1[‖Δ_i‖ ≤ C_t] (its delta is clipped to C_t as usual);
* the server releases the noisy unclipped fraction
  b̄ = (Σ_i (b_i − ½) + N(0, σ_b²)) / S + ½, S the *expected* cohort size;
* and updates C_{t+1} = C_t · exp(−η (b̄ − γ)): γ the target unclipped quantile, η the
  learning rate. The delta sum gets N(0, (z_Δ · C_t)²) with the *current* bound.

Per layer (bounds C_{h,t}, h = 1..H): the same for every layer with its own bit
b_{i,h} = 1[‖Δ_{i,h}‖ ≤ C_{h,t}]; the delta is clipped per layer, so the sum's sensitivity
is C_t = √(Σ_h C_{h,t}²) and the delta noise is N(0, (z_Δ · C_t)²). One client's centred
bit vector (b_{i,h} − ½)_h has L2 norm √H / 2, so the count query's noise multiplier is
z_b = σ_b / (√H / 2) = 2σ_b / √H (global: H = 1, z_b = 2σ_b). Group layers
(``layer_fn``) to keep H small.

Privacy: both Gaussian queries are released on the same sampled cohort, so each round is
one Gaussian mechanism with z = (z_Δ⁻² + z_b⁻²)^(−½) (dp-accounting gives the same ε for
the composed event: ../shared/API-NOTES.md). The user states the overall z (or σ_DP) and
σ_b; the round adds delta noise with z_Δ = (z⁻² − z_b⁻²)^(−½), which needs z_b > z. The
accountant always uses the overall z.

Everything here is pure and jit-safe; bounds are ``{layer name: float32 scalar}`` dicts
(one entry ``"global"`` for global clipping) that live in the server state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from fl_dp_asr.dp import transforms

GLOBAL = "global"  # the one key of a global bound
Bounds = dict[str, jax.Array]


def count_noise_multiplier(clipped_count_stddev: float, num_bounds: int) -> float:
    """z_b = 2σ_b / √H: the count query's noise in units of its L2 sensitivity √H / 2.

    Args:
        clipped_count_stddev: σ_b, std of the noise on each summed bit count (≥ 0).
        num_bounds: H, the number of adapted bounds (1 for global clipping).
    """
    _check_finite_nonnegative("clipped_count_stddev", clipped_count_stddev)
    if num_bounds < 1:
        raise ValueError(f"num_bounds must be >= 1, got {num_bounds}.")
    return 2.0 * clipped_count_stddev / math.sqrt(num_bounds)


def delta_noise_multiplier(noise_multiplier: float, count_multiplier: float) -> float:
    """z_Δ = (z⁻² − z_b⁻²)^(−½): the delta sum's share of the overall multiplier z.

    ``z = 0`` gives ``z_Δ = 0``: no privacy, whatever the count noise (noise on the counts
    alone is allowed, to study how it disturbs the bounds). Raises ValueError when
    ``0 ≤ z_b ≤ z`` with ``z > 0``: no budget would be left for the delta (raise σ_b,
    group layers, or lower z).
    """
    _check_finite_nonnegative("noise_multiplier", noise_multiplier)
    _check_finite_nonnegative("count noise multiplier", count_multiplier)
    if noise_multiplier == 0.0:
        return 0.0
    if count_multiplier <= noise_multiplier:
        raise ValueError(
            f"the clipped-count noise multiplier z_b = {count_multiplier:.4g} must exceed the "
            f"overall noise multiplier z = {noise_multiplier:.4g} (z_Δ = (z⁻² − z_b⁻²)^-½): "
            "raise dp.clipped_count_stddev, group layers to lower H, or lower the noise."
        )
    return (noise_multiplier**-2 - count_multiplier**-2) ** -0.5


def overall_noise_multiplier(delta_multiplier: float, count_multiplier: float) -> float:
    """z = (z_Δ⁻² + z_b⁻²)^(−½), the one Gaussian mechanism the accountant sees."""
    if delta_multiplier == 0.0 or count_multiplier == 0.0:
        return 0.0
    return (delta_multiplier**-2 + count_multiplier**-2) ** -0.5


def initial_bounds(bounds: Mapping[str, float]) -> Bounds:
    """float32 device scalars from ``{name: C_h}`` (e.g. ``transforms.layer_bounds``)."""
    for name, value in bounds.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"initial clip bound of {name!r} must be finite and > 0, got {value}.")
    return {name: jnp.asarray(value, jnp.float32) for name, value in bounds.items()}


def total_bound(bounds: Mapping[str, jax.Array]) -> jax.Array:
    """C_t = √(Σ_h C_h²): the L2 sensitivity of a sum of per-layer clipped deltas."""
    return transforms.l2_norm(list(bounds.values()))


def unclipped_bits(
    norms: Mapping[str, jax.Array], bounds: Mapping[str, jax.Array]
) -> dict[str, jax.Array]:
    """b_h = 1[‖Δ_h‖ ≤ C_h] as float32, for the names in ``bounds``.

    ``norms`` holds the norm of every bound's name (for global clipping pass
    ``{GLOBAL: ‖Δ‖}``).
    """
    return {name: (norms[name] <= bound).astype(jnp.float32) for name, bound in bounds.items()}


def clip(
    delta: Any,
    bounds: Mapping[str, jax.Array],
    layer_fn: transforms.LayerFn = transforms.leaf_layer_name,
    layout: transforms.ParamLayout = transforms.SAME_LAYOUT,
) -> tuple[Any, transforms.ClipStats, dict[str, jax.Array]]:
    """Clips one client's delta to the current bounds: ``(Δ̃, ClipStats, bits)``.

    ``bounds = {"global": C_t}``: global clipping to C_t; otherwise per-layer clipping to
    ``{layer name: C_{h,t}}`` (names from ``layer_fn`` on the canonical layout of
    ``layout``, :mod:`fl_dp_asr.dp.layout`). ``bits`` are the unclipped
    indicators b_h = 1[‖Δ_h‖ ≤ C_{h,t}] (float32), one per bound.
    """
    if set(bounds) == {GLOBAL}:
        clipped, stats = transforms.clip_global(delta, bounds[GLOBAL], layer_fn, layout)
        return clipped, stats, unclipped_bits({GLOBAL: stats.global_norm}, bounds)
    clipped, stats = transforms.clip_layers(delta, bounds, layer_fn, layout)
    return clipped, stats, unclipped_bits(stats.layer_norms, bounds)


def update_bounds(
    bounds: Mapping[str, jax.Array],
    unclipped_sums: Mapping[str, jax.Array],
    clients: jax.Array,
    count_noise: Mapping[str, jax.Array],
    *,
    expected_cohort_size: float,
    target_quantile: float,
    learning_rate: float,
) -> Bounds:
    """C_{h,t+1} = C_{h,t} · exp(−η (b̄_h − γ)), b̄_h = (Σ_i (b_{i,h} − ½) + ξ_h) / S + ½.

    Args:
        bounds: C_{h,t}.
        unclipped_sums: Σ_i b_{i,h} over the round's contributing clients.
        clients: the number of contributing clients n (so Σ_i (b_i − ½) = Σ_i b_i − n/2;
            padding and dropped clients contribute nothing to either).
        count_noise: ξ_h ~ N(0, σ_b²), drawn once per round (zeros when noise-free).
        expected_cohort_size: S (the noisy fraction divides by S, not by the random n).
        target_quantile: γ ∈ [0, 1], the fraction of clients meant to be unclipped.
        learning_rate: η ≥ 0.
    """
    new = {}
    for name, bound in bounds.items():
        centred = unclipped_sums[name] - 0.5 * clients + count_noise[name]
        fraction = centred / expected_cohort_size + 0.5
        new[name] = bound * jnp.exp(-learning_rate * (fraction - target_quantile))
    return new


def count_noise(key: jax.Array, bounds: Mapping[str, Any], stddev: float) -> dict[str, jax.Array]:
    """ξ_h ~ N(0, σ_b²) for every bound, one key (identical wherever it is drawn)."""
    names = sorted(bounds)
    draws = stddev * jax.random.normal(key, (len(names),), jnp.float32)
    return {name: draws[i] for i, name in enumerate(names)}


def _check_finite_nonnegative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
