"""Canary clients: a one-run empirical estimate of the privacy of the mechanism as run.

Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot Empirical Privacy Estimation
for Federated Learning", ICLR 2024 (arXiv 2302.03098):

* canary c is a fixed random direction; the canary *client* c, when sampled, sends the
    update :meth:`Canaries.update` (every layer h at ``OVERSHOOT``·C_h; global clipping:
    the whole at ``OVERSHOOT``·C), which the run's own clipping brings to exactly C_h
    (resp. C) — the issue's "unit direction scaled to the clip norm". Sending more than the
    bound (a departure from the issue's wording) makes the canaries pass through the
    clipping code as users' deltas do: a run whose clipping is broken lets ``OVERSHOOT``
    times the bound through, and the estimate shows it;
* ``inserted`` canaries take part as users (the trainer samples them with the users);
    ``heldout`` more directions of the same stream never do;
* the attack statistic is the cosine of a released vector with each canary
    (:meth:`Canaries.cosines`); :func:`estimate_epsilon` fits a Gaussian to the inserted and
    to the held-out cosines, μ = (mean_in − mean_out) / std, and returns the ε at δ of the
    Gaussian mechanism (μ-GDP) that separates them that well.

Directions are drawn from a key folded from ``(seed, c)`` on the fly
(:func:`fl_dp_asr.dp.transforms.standard_normal_like`), so k full model vectors are never
stored. Only fixed clipping (global, per layer, or rescaled per layer) is supported:
adaptive bounds move the canaries' norm every round, and without clipping there is no
bound to scale them to.

What the number is and is not: an *estimate* of the ε an adversary of this kind (it knows
the canary directions and sees the final model, or every noisy aggregate) achieves
against this run, from one run — not a lower bound with a guarantee and not a proof of
privacy. It is useful to catch a mechanism that leaks more than its accountant says
(ε_empirical above ε_accounted) and to see how far the worst case is from this run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
from jax_privacy import auditing
from scipy import stats

from fl_dp_asr.dp import transforms
from fl_dp_asr.dp.layout import SAME_LAYOUT, ParamLayout
from fl_dp_asr.dp.policy import DPConfig

PyTree = Any
OVERSHOOT = 10.0   # a canary client sends OVERSHOOT × the bound; the clipping brings it to C
# Canary c draws from fold_in(fold_in(key(seed), _STREAM), c): never a round's key
# fold_in(key(seed), r) of a trainer whose seed is the canaries' (rounds < 2³⁰).
_STREAM = 1 << 30


@dataclasses.dataclass(frozen=True)
class Canaries:
    """``inserted`` + ``heldout`` canary directions of one run, fixed by ``seed``.

    Canary c (0 ≤ c < ``inserted``) takes part in the run; canaries ``inserted`` …
    ``inserted + heldout − 1`` never do (the null distribution of the statistic).

    Attributes:
        inserted: k ≥ 2, canary clients that take part as users.
        heldout: m ≥ 2, directions never inserted (two, at least, for a std).
        seed: fixes the directions (canary c draws from a key folded from ``seed`` and c).
    """
    inserted: int
    heldout: int
    seed: int = 0

    def __post_init__(self):
        for name in ("inserted", "heldout"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 2:
                raise ValueError(f"canaries: {name}={value!r} must be an integer >= 2 (the "
                                 "estimate fits a Gaussian to each group).")

    @property
    def total(self) -> int:
        """k + m, the length of :meth:`cosines`."""
        return self.inserted + self.heldout

    @staticmethod
    def check(dp: DPConfig) -> None:
        """Raises ValueError when ``dp`` gives a canary no fixed bound to be scaled to."""
        dp.check_fixed_bounds("canary clients (audit.canaries; their update is scaled to "
                              "the clip bounds)", "it moves the bounds every round")

    def update(self, index: jax.Array, like: PyTree, dp: DPConfig,
               layout: ParamLayout = SAME_LAYOUT) -> PyTree:
        """What canary client ``index`` sends, float32 shaped like ``like`` (compute layout
        ``layout``): a standard-normal draw with every canonical layer h (``dp.layers``)
        scaled to ``OVERSHOOT``·C_h, or (global clipping) the whole to ``OVERSHOOT``·C."""
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), _STREAM), index)
        draw = transforms.standard_normal_like(key, like, layout)
        if dp.clipping == "global":
            scale = OVERSHOOT * dp.clip_bound / transforms.l2_norm(jax.tree.leaves(draw))
            return jax.tree.map(lambda x: x * scale, draw)
        # rescale_layers with C = 0 sets every layer to exactly its (overshot) bound.
        overshot = {name: OVERSHOOT * bound
                    for name, bound in dp.initial_clip_bounds(like, layout).items()}
        return transforms.rescale_layers(draw, 0.0, overshot, dp.layer_fn, layout)[0]

    def insert(self, total: PyTree, mask: jax.Array, dp: DPConfig,
               layout: ParamLayout = SAME_LAYOUT) -> PyTree:
        """``total`` + Σ_c mask_c · clip(update_c): the sampled canaries' clipped updates
        added to a round's sum of clipped deltas (``dp.client_clip``, the users' clipping).

        Args:
            total: the round's float32 sum of clipped deltas (compute layout).
            mask: float32 ``[inserted]``, 1.0 for the canaries sampled this round, else 0.0
                (adds nothing: a canary that was not sampled is not even drawn, which at a
                sampling rate q saves a fraction 1 − q of the draws).
        """
        clip = dp.client_clip(layout)

        def with_canary(acc, index):
            clipped, _, _ = clip(self.update(index, acc, dp, layout), {})
            return jax.tree.map(lambda a, x: a + mask[index] * x, acc, clipped)

        def add(acc, index):
            return jax.lax.cond(mask[index] > 0, with_canary, lambda acc, _: acc, acc,
                                index), None

        return jax.lax.scan(add, total, jnp.arange(self.inserted))[0]

    def cosines(self, tree: PyTree, dp: DPConfig, layout: ParamLayout = SAME_LAYOUT
                ) -> jax.Array:
        """float32 ``[inserted + heldout]``: cos(``tree``, canary c) for every canary (0 for
        a zero ``tree``). The cosine is that of the clipped canary too (the clipping scales
        every layer of an update by the same 1/``OVERSHOOT``)."""
        leaves = jax.tree.leaves(tree)
        norm = transforms.l2_norm(leaves)

        def one(index):
            canary = jax.tree.leaves(self.update(index, tree, dp, layout))
            dot = sum(jnp.vdot(x, c) for x, c in zip(leaves, canary))
            return dot / (jnp.where(norm > 0, norm, 1.0) * transforms.l2_norm(canary))

        return jax.lax.map(one, jnp.arange(self.total))


class Estimate(NamedTuple):
    """ε of one view of the run, from the canaries' statistic (see :func:`estimate_epsilon`).

    Attributes:
        epsilon: the Gaussian fit's ε at δ (∞: the two groups do not overlap at all).
        ci_low, ci_high: its ``confidence`` interval (from that of μ).
        mu: μ = (mean_in − mean_out) / std, the fitted GDP parameter.
        lower_bound: jax_privacy's ``CanaryScoreAuditor.epsilon_clopper_pearson``: the
            best threshold's ε with Clopper–Pearson intervals at the same confidence, no
            Gaussian assumption (at most about log k: 0 unless the groups separate well).
            Its ``epsilon_from_gdp`` is not used: it gives ε ≈ 7 for 100 + 100 scores drawn
            from one distribution (it takes |μ| over thresholds, upper bounds included).
    """
    epsilon: float
    ci_low: float
    ci_high: float
    mu: float
    lower_bound: float


def gdp_epsilon(mu: float, delta: float) -> float:
    """ε at δ of μ-GDP: the Gaussian mechanism of sensitivity 1 and noise std 1/μ (exact,
    ``dp_accounting.get_epsilon_gaussian``); 0 for μ ≤ 0, ∞ for μ = ∞."""
    if mu <= 0:
        return 0.0
    return float(dp_accounting.get_epsilon_gaussian(1.0 / mu, delta))


def estimate_epsilon(inserted: Sequence[float] | np.ndarray,
                     heldout: Sequence[float] | np.ndarray, delta: float,
                     confidence: float = 0.95) -> Estimate:
    """The ε at δ of the Gaussian mechanism that separates the inserted canaries' statistic
    from the held-out ones' as well as this run does.

    μ = (mean_in − mean_out) / s with s the pooled std √((s_in² + s_out²)/2) (Andrew et al.
    fit a Gaussian to each group; with equal variances, as the Gaussian mechanism gives in
    high dimension, the pair is μ-GDP). The interval is the normal approximation of the
    standardized mean difference, SE(μ) = √(1/n_in + 1/n_out + μ²/(2(n_in + n_out)))
    (Hedges & Olkin, 1985), mapped through the increasing ε(μ).

    Args:
        inserted: the statistic of every inserted canary, ``[k]``.
        heldout: that of every held-out canary, ``[m]``.
        delta: the run's δ.
        confidence: of the interval and of the jax_privacy lower bound.
    """
    ins, out = np.asarray(inserted, np.float64), np.asarray(heldout, np.float64)
    if min(ins.size, out.size) < 2:
        raise ValueError(f"estimate_epsilon needs two scores of each group at least, got "
                         f"{ins.size} inserted and {out.size} held out.")
    gap = ins.mean() - out.mean()
    std = math.sqrt((ins.var(ddof=1) + out.var(ddof=1)) / 2)
    lower = float(auditing.CanaryScoreAuditor(ins, out).epsilon_clopper_pearson(
        1 - confidence, delta))
    if std == 0:   # each group's scores all equal: perfectly separated, or not at all
        eps = math.inf if gap > 0 else 0.0
        return Estimate(eps, eps, eps, eps, lower)
    mu = gap / std
    stderr = math.sqrt(1 / ins.size + 1 / out.size + mu * mu / (2 * (ins.size + out.size)))
    half = float(stats.norm.ppf(0.5 + confidence / 2)) * stderr
    return Estimate(gdp_epsilon(mu, delta), gdp_epsilon(mu - half, delta),
                    gdp_epsilon(mu + half, delta), mu, lower)
