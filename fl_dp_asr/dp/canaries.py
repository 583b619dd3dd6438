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
    (:meth:`Canaries.cosines`); :func:`estimate_epsilon` fits Gaussians of one pooled spread
    to the inserted and the held-out cosines, μ = (mean_in − mean_out) / std, and returns
    the ε at δ of the Gaussian mechanism (μ-GDP) that separates them that well (where and
    why this differs from the paper: its docstring).

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
from scipy import optimize, stats

from fl_dp_asr.dp import transforms
from fl_dp_asr.dp.layout import SAME_LAYOUT, ParamLayout
from fl_dp_asr.dp.policy import DPConfig

PyTree = Any
OVERSHOOT = 10.0  # a canary client sends OVERSHOOT × the bound; the clipping brings it to C
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
                raise ValueError(
                    f"canaries: {name}={value!r} must be an integer >= 2 (the "
                    "estimate fits a Gaussian to each group)."
                )

    @property
    def total(self) -> int:
        """k + m, the length of :meth:`cosines`."""
        return self.inserted + self.heldout

    @staticmethod
    def check(dp: DPConfig) -> None:
        """Raises ValueError when ``dp`` gives a canary no fixed bound to be scaled to."""
        dp.check_fixed_bounds(
            "canary clients (audit.canaries; their update is scaled to the clip bounds)",
            "it moves the bounds every round",
        )

    def update(
        self, index: jax.Array, like: PyTree, dp: DPConfig, layout: ParamLayout = SAME_LAYOUT
    ) -> PyTree:
        """What canary client ``index`` sends, float32 shaped like ``like`` (compute layout
        ``layout``): a standard-normal draw with every canonical layer h (``dp.layers``)
        scaled to ``OVERSHOOT``·C_h, or (global clipping) the whole to ``OVERSHOOT``·C."""
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), _STREAM), index)
        draw = transforms.standard_normal_like(key, like, layout)
        if dp.clipping == "global":
            scale = OVERSHOOT * dp.clip_bound / transforms.l2_norm(jax.tree.leaves(draw))
            return jax.tree.map(lambda x: x * scale, draw)
        # rescale_layers with C = 0 sets every layer to exactly its (overshot) bound.
        overshot = {
            name: OVERSHOOT * bound for name, bound in dp.initial_clip_bounds(like, layout).items()
        }
        return transforms.rescale_layers(draw, 0.0, overshot, dp.layer_fn, layout)[0]

    def insert(
        self, total: PyTree, mask: jax.Array, dp: DPConfig, layout: ParamLayout = SAME_LAYOUT
    ) -> PyTree:
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
            return jax.lax.cond(mask[index] > 0, with_canary, lambda acc, _: acc, acc, index), None

        return jax.lax.scan(add, total, jnp.arange(self.inserted))[0]

    def cosines(self, tree: PyTree, dp: DPConfig, layout: ParamLayout = SAME_LAYOUT) -> jax.Array:
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
            from one distribution (it takes ``|μ|`` over thresholds, upper bounds included).
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
    if math.isinf(mu):
        return math.inf
    return float(dp_accounting.get_epsilon_gaussian(1.0 / mu, delta))


def gdp_mu(epsilon: float, delta: float) -> float:
    """μ of the Gaussian mechanism that is (``epsilon``, δ)-DP, the inverse of
    :func:`gdp_epsilon` (``dp_accounting.get_sigma_gaussian``)."""
    return 1.0 / float(dp_accounting.get_sigma_gaussian(epsilon, delta))


class GaussianFit(NamedTuple):
    """μ = (mean_in − mean_out) / s, s² = (s_in² + s_out²)/2, and its interval.

    Attributes:
        mu: the standardized mean difference of the two groups' scores (0 when both groups'
            scores are constant and equal; ±∞ when constant and different).
        low, high: its ``confidence`` interval (normal approximation, see :func:`pooled_fit`).
    """

    mu: float
    low: float
    high: float


def pooled_fit(
    inserted: Sequence[float] | np.ndarray,
    heldout: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
) -> GaussianFit:
    """The standardized mean difference of the inserted and held-out scores with its
    interval.

    The standard error is the delta method's for (x̄_in − x̄_out)/s with each group's own
    variance, skewness and kurtosis (the moments of the sample): the two groups' spreads
    need not be equal, nor their scores Gaussian. The all-iterates statistic (a maximum
    over rounds, Gumbel-like for held-out canaries) has spreads that differ by up to 24×;
    the equal-variance normal-theory error (Hedges & Olkin, 1985) made its interval too
    narrow (91 % coverage of a nominal 95 %, tests/dp/test_canary_estimator.py).

    Per group g of n_g scores (variance v_g, third and fourth central moments m3_g, m4_g):
    Var(μ̂) ≈ Σ_g [v_g / s² + μ² (m4_g − v_g²) / (16 s⁴) ∓ μ m3_g / (2 s³)] / n_g
    (− for the inserted group, + for the held-out one).
    """
    ins, out = np.asarray(inserted, np.float64), np.asarray(heldout, np.float64)
    if min(ins.size, out.size) < 2:
        raise ValueError(
            f"the canary estimate needs two scores of each group at least, got "
            f"{ins.size} inserted and {out.size} held out."
        )
    gap = ins.mean() - out.mean()
    var = (ins.var(ddof=1) + out.var(ddof=1)) / 2
    if var == 0:  # each group's scores all equal: perfectly separated, or not at all
        mu = math.copysign(math.inf, gap) if gap else 0.0
        return GaussianFit(mu, mu, mu)
    mu = gap / math.sqrt(var)
    variance = 0.0
    for scores, sign in ((ins, -1.0), (out, 1.0)):
        centered = scores - scores.mean()
        v, m3, m4 = (np.mean(centered**p) for p in (2, 3, 4))
        variance += (
            v / var + mu * mu * (m4 - v * v) / (16 * var * var) + sign * mu * m3 / (2 * var**1.5)
        ) / scores.size
    half = float(stats.norm.ppf(0.5 + confidence / 2)) * math.sqrt(max(variance, 0.0))
    return GaussianFit(mu, mu - half, mu + half)


def estimate_epsilon(
    inserted: Sequence[float] | np.ndarray,
    heldout: Sequence[float] | np.ndarray,
    delta: float,
    confidence: float = 0.95,
) -> Estimate:
    """The ε at δ of the Gaussian mechanism that separates the inserted canaries' statistic
    from the held-out ones' as well as this run does.

    μ from :func:`pooled_fit` (one pooled spread), mapped through the increasing ε(μ) of μ-GDP,
    and so is its interval. Andrew et al. (Algorithm 1 and their code, google-research
    ``one_shot_epe``) fit each group its own Gaussian and take the ε of that pair
    (final model: the held-out group replaced by the cosine's null N(0, 1/d)). We differ on
    two counts, both checked on mechanisms whose ε is known
    (tests/dp/test_canary_estimator.py):

    * one pooled spread: two Gaussians of different spreads have a likelihood ratio
      quadratic in the score, so their ε at a small δ comes from the fits' far tails. Fitted
      to the all-iterates maximum (not Gaussian), it exceeds the ε of the mechanism itself
      (e.g. 3.2 against 2.0); fitted to equal-spread Gaussian scores, the spreads' sampling
      noise alone adds 0.5–2 to ε at δ = 1e-5. The pooled fit is the paper's own limit for
      the Gaussian mechanism in high dimension (both groups' cosines have variance 1/d);
    * held-out canaries as the null of both views, not N(0, 1/d): the per-layer canaries
      are not isotropic, and the same null then serves the maximum over rounds too.

    Args:
        inserted: the statistic of every inserted canary, ``[k]``.
        heldout: that of every held-out canary, ``[m]``.
        delta: the run's δ.
        confidence: of the interval and of the jax_privacy lower bound.
    """
    ins, out = np.asarray(inserted, np.float64), np.asarray(heldout, np.float64)
    mu, low, high = pooled_fit(ins, out, confidence)
    lower = float(
        auditing.CanaryScoreAuditor(ins, out).epsilon_clopper_pearson(1 - confidence, delta)
    )
    return Estimate(
        gdp_epsilon(mu, delta), gdp_epsilon(low, delta), gdp_epsilon(high, delta), mu, lower
    )


def detectable_epsilon(
    inserted: int,
    heldout: int,
    epsilon_accounted: float,
    delta: float,
    confidence: float = 0.95,
    power: float = 0.5,
) -> float:
    """The smallest ε (at δ) of a run's statistic that the audit flags with probability
    ``power``: its interval's low end (:func:`estimate_epsilon`) above
    ``epsilon_accounted``.

    From the estimator's variance, with Gaussian scores of equal spread: μ̂ is about
    N(μ, se(μ)²), se(μ)² = (1 + μ²/8)(1/k + 1/m) (:func:`pooled_fit`'s for Gaussian
    scores), and the audit flags when μ̂ − z_c·se > μ_acc; so μ solves
    μ − μ_acc = (z_c + z_power)·se(μ), z_c the two-sided ``confidence`` quantile.

    Args:
        inserted, heldout: k and m canaries.
        epsilon_accounted: the accountant's ε at ``delta`` (its μ is μ_acc).

    Returns:
        That ε, or ∞ when k and m are too few for ``power`` at any ε.
    """
    z = float(stats.norm.ppf(0.5 + confidence / 2) + stats.norm.ppf(power))
    if z * math.sqrt((1 / inserted + 1 / heldout) / 8) >= 1:
        return math.inf  # se(μ) grows as fast as μ: too few canaries for this power
    mu_acc = gdp_mu(epsilon_accounted, delta) if epsilon_accounted > 0 else 0.0

    def excess(mu):
        stderr = math.sqrt((1 + mu * mu / 8) * (1 / inserted + 1 / heldout))
        return mu - mu_acc - z * stderr

    high = mu_acc + 1.0
    while excess(high) < 0:
        high *= 2
    return gdp_epsilon(optimize.brentq(excess, mu_acc, high), delta)
