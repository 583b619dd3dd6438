"""Correlated noise (DP-FTRL): BLT and banded-Toeplitz matrix-factorization mechanisms.

Instead of fresh noise every round, round t adds the t-th row of **C⁻¹Z** to the sum of
the clipped deltas, Z an iid N(0, σ²) draw per round and C a lower-triangular Toeplitz
*strategy* matrix: the noise of round t partly cancels the noise of earlier rounds, so
the model (a prefix sum of the updates) carries less noise than with independent draws
at the same privacy. Everything about C comes from ``jax_privacy.matrix_factorization``;
this module is the glue that makes it a value, a pytree state machine and an ε:

* :class:`CorrelatedNoise` — the mechanism as a frozen value: ``kind`` (``"blt"`` or
    ``"banded_toeplitz"``), ``rounds`` n, ``min_separation`` b, and the strategy's
    parameters (optimized by jax_privacy when not given);
* :meth:`CorrelatedNoise.init_state` / :meth:`CorrelatedNoise.next_noise` — the noise
    recursion, once per round on the **sum** of clipped deltas, pure and jit-able, its
    state a pytree of float32 arrays (BLT: ``num_buffers`` buffers per parameter leaf;
    banded: the last ``bands − 1`` outputs per leaf);
* :meth:`CorrelatedNoise.epsilon` / :meth:`CorrelatedNoise.calibrate` — user-level ε of all
    n rounds under b-min-separation participation, with ``dp_accounting``.

Privacy. Let x ∈ R^{n×d} stack the rounds' sums of clipped deltas and σ = z·C_clip. The
released noisy sums are x + σC⁻¹Z = C⁻¹(Cx + σZ): a post-processing of the Gaussian
mechanism on Cx. If every user takes part at most k = ⌈n/b⌉ times, any two participations
at least b rounds apart ("b-min-separation", the participation :class:`CyclicSampler
<fl_dp_asr.fl.samplers.CyclicSampler>` guarantees), with each contribution of L2 norm
≤ C_clip, the L2 sensitivity of Cx is ``sens · C_clip`` with
``sens² = toeplitz.minsep_sensitivity_squared(C's Toeplitz coefficients, b, n)``
(jax_privacy; exact for the non-negative, non-increasing coefficients it checks; arXiv
2405.13763 Theorem 2, arXiv 2306.08153). The n rounds together are therefore **one**
Gaussian mechanism with noise multiplier ``z / sens`` — jax_privacy's convention
(``matrix_factorization/README.md``: "loss = sens(C)² · error(B)"; its
``experimental.execution_plan`` sets ``stddev = noise_multiplier · query_sensitivity ·
max_column_norm`` for the same reason), and ε(δ) is that of
``dp_accounting.GaussianDpEvent(z / sens)``. The deltas may depend on earlier released
models (adaptive streams): the Gaussian matrix mechanism with lower-triangular C stays
(ε, δ)-DP (arXiv 2202.08312, 2211.06530). No amplification by sampling is claimed: the
cohort draw inside a group is not part of the analysis.

Neighbouring datasets: **zero-out one user** (the user's deltas replaced by zeros, the
participation schedule unchanged; each round's contribution moves by ≤ C_clip), as in
DP-FTRL (arXiv 2103.00039) and jax_privacy's equal-split cyclic partition.

References:
    McMahan, Xu, Zhang. "A Hassle-free Algorithm for Private Learning in Practice: Don't
    Use Tree Aggregation, Use BLTs". arXiv 2408.08868.
    Dvijotham, McMahan, Pillutla, Steinke, Thakurta. "Efficient and Near-Optimal Noise
    Generation for Streaming Differential Privacy". arXiv 2404.16706.
    Choquette-Choo, Ganesh, McKenna, McMahan, Rush, Thakurta, Xu. "(Amplified) Banded
    Matrix Factorization: A unified approach to private training". arXiv 2306.08153.
    Kalinin, Lampert. "Banded Square Root Matrix Factorization for Differentially Private
    Model Training". arXiv 2405.13763.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
from dp_accounting import pld, rdp
from jax_privacy.matrix_factorization import buffered_toeplitz, sensitivity, toeplitz

from fl_dp_asr.dp import accounting, checks, transforms
from fl_dp_asr.dp.layout import SAME_LAYOUT, ParamLayout

KINDS: tuple[str, ...] = ("blt", "banded_toeplitz")
ERRORS: tuple[str, ...] = ("max", "mean")
MECHANISM_DESCRIPTIONS: dict[str, str] = {
    "blt": "BLT (buffered linear Toeplitz) correlated noise, DP-FTRL (arXiv 2408.08868)",
    "banded_toeplitz": "banded-Toeplitz correlated noise, DP-FTRL (arXiv 2306.08153)",
}
PyTree = Any


def _float32_tuple(name: str, values: Any) -> tuple[float, ...]:
    """``values`` as a tuple of Python floats rounded to float32 (the precision the noise
    recursion runs in, so the C that is accounted is the C whose inverse is applied)."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite numbers, got {values!r}")
    return tuple(float(v) for v in array.astype(np.float32))


@dataclasses.dataclass(frozen=True)
class CorrelatedNoise:
    """A correlated-noise (matrix-factorization) mechanism for n rounds with min-separation b.

    The strategy C is lower-triangular Toeplitz; the noise over rounds 1..n is σ·C⁻¹Z
    (covariance σ²·C⁻¹C⁻ᵀ over rounds, independent across coordinates), σ = z·C_clip. A
    BLT has C[0, 0] = 1 (round 1's noise is N(0, σ²)); jax_privacy's banded coefficients
    have norm 1 instead (sens² = k, round 1's noise std σ/coefs[0]). Its parameters are the
    float32 values the noise recursion uses; give them to rebuild a mechanism exactly (a
    resumed run must), or leave them out and :meth:`optimize` (or any method that needs them)
    asks jax_privacy for the strategy optimized for (n, b) — 5–40 s on 2 CPU cores, cached per
    value in the process.

    Attributes:
        kind: ``"blt"`` (buffered linear Toeplitz: memory ``num_buffers`` × params, with
            ``buffered_toeplitz.optimize``) or ``"banded_toeplitz"`` (C has ``bands``
            non-zero diagonals: memory ``bands − 1`` × params, with
            ``toeplitz.optimize_banded_toeplitz``).
        rounds: n ≥ 1, the rounds the strategy is optimized and accounted for.
        min_separation: b in [1, n]: a user takes part at most once every b rounds, so at
            most k = ⌈n/b⌉ times.
        bands: banded only: bands in [1, b] (default b; jax_privacy's banded optimization and
            sensitivity need bands ≤ b). 1 is independent noise every round.
        max_buffers: BLT only: most buffers the optimizer may use (jax_privacy's
            ``max_buffers``, ≤ 15).
        error: the error the strategy minimizes: ``"max"`` (worst round's squared error of
            the prefix sums, jax_privacy's BLT default) or ``"mean"``.
        buf_decay: BLT parameters θ (decreasing), or ``None`` to optimize.
        output_scale: BLT parameters ω, same length as ``buf_decay``.
        coefs: banded parameters: C's first ``bands`` Toeplitz coefficients
            (non-negative, non-increasing, C[0, 0] = coefs[0]), or ``None`` to optimize.

    >>> identity = CorrelatedNoise("banded_toeplitz", rounds=4, min_separation=2, bands=1)
    >>> identity.optimize().coefs, identity.max_participations
    ((1.0,), 2)
    """

    kind: str
    rounds: int
    min_separation: int
    bands: int | None = None
    max_buffers: int = 10
    error: str = "max"
    buf_decay: tuple[float, ...] | None = None
    output_scale: tuple[float, ...] | None = None
    coefs: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        rounds = checks.check_integer("rounds", self.rounds)
        separation = checks.check_integer("min_separation", self.min_separation)
        if separation > rounds:
            raise ValueError(
                f"min_separation ({separation}) must not exceed rounds "
                f"({rounds}): a user takes part at most once every b rounds"
            )
        if self.error not in ERRORS:
            raise ValueError(f"error must be one of {ERRORS}, got {self.error!r}")
        set_ = functools.partial(object.__setattr__, self)
        set_("rounds", rounds)
        set_("min_separation", separation)
        if self.kind == "blt":
            for name in ("bands", "coefs"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name} is a banded_toeplitz parameter; kind='blt' "
                        f"takes buf_decay and output_scale"
                    )
            buffers = checks.check_integer("max_buffers", self.max_buffers, minimum=0)
            if buffers > 15:
                raise ValueError(
                    f"max_buffers must be <= 15 (jax_privacy: more buffers are "
                    f"numerically unstable), got {buffers}"
                )
            if (self.buf_decay is None) != (self.output_scale is None):
                raise ValueError(
                    "give both buf_decay and output_scale, or neither (then the BLT is optimized)"
                )
            if self.buf_decay is not None:
                decay = _float32_tuple("buf_decay", self.buf_decay)
                scale = _float32_tuple("output_scale", self.output_scale)
                if len(decay) != len(scale):
                    raise ValueError(
                        f"buf_decay and output_scale must have the same length "
                        f"(one per buffer), got {len(decay)} and {len(scale)}"
                    )
                if any(not 0 <= d <= 1 for d in decay):
                    raise ValueError(f"buf_decay must be in [0, 1], got {decay}")
                order = np.argsort(decay, kind="stable")[::-1]  # jax_privacy's canonical order
                set_("buf_decay", tuple(decay[i] for i in order))
                set_("output_scale", tuple(scale[i] for i in order))
                self._check_strategy()
        else:
            if self.buf_decay is not None or self.output_scale is not None:
                raise ValueError(
                    "buf_decay and output_scale are BLT parameters; "
                    "kind='banded_toeplitz' takes bands and coefs"
                )
            bands = checks.check_integer("bands", separation if self.bands is None else self.bands)
            if bands > separation:
                raise ValueError(
                    f"bands ({bands}) must not exceed min_separation "
                    f"({separation}): jax_privacy's banded optimization and "
                    f"sensitivity assume participations at least `bands` "
                    f"rounds apart"
                )
            set_("bands", bands)
            if self.coefs is not None:
                coefs = _float32_tuple("coefs", self.coefs)
                if len(coefs) != bands:
                    raise ValueError(f"coefs must have bands={bands} entries, got {len(coefs)}")
                if coefs[0] <= 0:
                    raise ValueError(f"coefs[0] must be > 0 (C must be invertible), got {coefs[0]}")
                set_("coefs", coefs)
                self._check_strategy()

    # ----------------------------------------------------------------------------------
    # The strategy
    # ----------------------------------------------------------------------------------
    @property
    def optimized(self) -> bool:
        """Whether the strategy's parameters are set (given or from :meth:`optimize`)."""
        return (self.buf_decay if self.kind == "blt" else self.coefs) is not None

    @property
    def max_participations(self) -> int:
        """k = ⌈n/b⌉ (jax_privacy ``sensitivity.minsep_true_max_participations``)."""
        return sensitivity.minsep_true_max_participations(self.rounds, self.min_separation)

    @property
    def num_buffers(self) -> int:
        """Arrays of the size of the parameters the noise state keeps (BLT: buffers;
        banded: the last ``bands − 1`` outputs)."""
        value = self.optimize()
        if value.kind == "blt":
            assert value.buf_decay is not None  # set by optimize()
            return len(value.buf_decay)
        assert value.bands is not None  # checked at construction
        return value.bands - 1

    def optimize(self) -> CorrelatedNoise:
        """This mechanism with its strategy's parameters set (optimized by jax_privacy for
        (n, b) if they were not given; cached per value). Store :meth:`to_dict` of the
        result to rebuild the same mechanism later without optimizing. Called inside a
        trace (``jax.eval_shape`` of a server state, a jitted step), the optimization still
        runs eagerly: its parameters are numbers, not traced values."""
        if self.optimized:
            return self
        with jax.ensure_compile_time_eval():
            return _optimize(self)

    def strategy_coefs(self, rounds: int | None = None) -> np.ndarray:
        """C's first ``rounds`` (default n) Toeplitz coefficients, float64 from the float32
        parameters (jax_privacy ``BufferedToeplitz.toeplitz_coefs`` / ``pad_coefs_to_n``)."""
        length = self.rounds if rounds is None else checks.check_integer("rounds", rounds)
        if length <= self.rounds:  # prefixes of the n coefficients, computed once
            return _strategy_coefs(self.optimize(), self.rounds)[:length].copy()
        return _strategy_coefs(self.optimize(), length).copy()

    def strategy_matrix(self, rounds: int | None = None) -> np.ndarray:
        """C as a dense ``[rounds, rounds]`` float64 array (for tests and plots)."""
        with jax.enable_x64():
            return np.asarray(
                toeplitz.materialize_lower_triangular(jnp.asarray(self.strategy_coefs(rounds)))
            )

    def sensitivity(self, rounds: int | None = None) -> float:
        """L2 sensitivity of C·x in units of the clip norm, for the first ``rounds`` (default
        n) rounds, b-min-separation, k = ⌈rounds/b⌉ participations: √ of jax_privacy's
        ``toeplitz.minsep_sensitivity_squared`` (which checks the coefficients are
        non-negative and non-increasing, the case where it is exact)."""
        length = self.rounds if rounds is None else self._check_rounds(rounds)
        return _sensitivity(self.optimize(), length)

    def _check_strategy(self) -> None:
        try:
            _sensitivity(self, self.rounds)
        except ValueError as err:
            raise ValueError(
                f"this {self.kind} strategy has no min-separation sensitivity "
                f"bound in jax_privacy (its Toeplitz coefficients must be "
                f"non-negative and non-increasing): {err}"
            ) from None

    def _check_rounds(self, rounds: object) -> int:
        value = checks.check_integer("rounds", rounds)
        if value > self.rounds:
            raise ValueError(
                f"rounds ({value}) must not exceed the {self.rounds} rounds the "
                f"mechanism is built for: build a CorrelatedNoise with "
                f"rounds={value}"
            )
        return value

    # ----------------------------------------------------------------------------------
    # The noise state machine
    # ----------------------------------------------------------------------------------
    @functools.cached_property
    def _noising_matrix(self):
        """C⁻¹ as a jax_privacy ``StreamingMatrix`` over float32 (its ``init_multiply`` /
        ``multiply_next`` are lifted to pytrees by jax_privacy). Built eagerly even when
        first needed inside a trace: its coefficients are constants of the program."""
        value = self.optimize()
        with jax.ensure_compile_time_eval():
            if value.kind == "blt":
                blt = buffered_toeplitz.BufferedToeplitz.build(
                    value.buf_decay, value.output_scale, dtype=jnp.float32
                )
                return blt.inverse_as_streaming_matrix()
            return toeplitz.inverse_as_streaming_matrix(jnp.asarray(value.coefs, jnp.float32))

    def init_state(self, params_like: PyTree) -> PyTree:
        """The noise state before round 1: zeros, float32, for every leaf of ``params_like``
        (arrays or ``jax.ShapeDtypeStruct``s; only shapes are read). BLT: one
        ``[num_buffers, *leaf.shape]`` array per leaf; banded: ``[bands − 1, *leaf.shape]``.
        Pure and jit-able; the state is a pytree of arrays (checkpoint it with the model)."""
        target = jax.tree.map(lambda x: jnp.zeros_like(x, dtype=jnp.float32), params_like)
        return self._noising_matrix.init_multiply(target)

    def next_noise(
        self,
        state: PyTree,
        key: jax.Array,
        stddev: float | jax.Array,
        params_like: PyTree,
        layout: ParamLayout = SAME_LAYOUT,
    ) -> tuple[PyTree, PyTree]:
        """This round's correlated noise and the next state.

        Draws Z ~ N(0, 1) on every coordinate of ``params_like`` (float32, exactly the draw
        of :func:`fl_dp_asr.dp.transforms.gaussian_noise` with the same key), applies the
        next row of C⁻¹ (jax_privacy's ``multiply_next``) and scales by ``stddev``. Over
        rounds 1..n the noise of one coordinate is ``stddev · (C⁻¹Z)`` with covariance
        ``stddev² · C⁻¹C⁻ᵀ``.

        Hand-written part: jax_privacy's ``matrix_factorization_privatizer`` scales Z by a
        Python-float ``stddev`` *before* C⁻¹ and keeps its own key in the state. Here the
        round step passes the round's key (``fold_in(base_key, round)``, so a resumed run
        draws the same noise) and a traced ``stddev`` (σ is an argument of the compiled
        step), and the scaling comes *after* C⁻¹ (the same noise for a constant σ, C⁻¹
        being linear), so the state holds unit-variance noise whatever σ is. With a clip
        bound C_t that changes between rounds (adaptive clipping, σ_t = z·C_t, C_t computed
        from earlier released rounds) this is still the matrix mechanism, on the deltas in
        units of their bound: y_t = C_t·(x_t/C_t + z·(C⁻¹Z)_t); scaling before C⁻¹ would
        not be.

        Args:
            state: from :meth:`init_state` or the previous call.
            key: this round's ``jax.random`` key (identical on every device).
            stddev: σ = z·C_clip, the std of the iid draws before C⁻¹ (a float or a
                traced scalar).
            params_like: the tree the noise is added to (the sum of clipped deltas).
            layout: the layout of ``params_like`` (:mod:`fl_dp_asr.dp.layout`): Z is the
                canonical layout's draw whatever the layout (stacked blocks included).

        Returns:
            ``(noise, new_state)``: noise float32 with the structure of ``params_like``.
        """
        draws = transforms.standard_normal_like(key, params_like, layout)
        correlated, new_state = self._noising_matrix.multiply_next(draws, state)
        noise = jax.tree.map(lambda leaf: (stddev * leaf).astype(jnp.float32), correlated)
        return noise, new_state

    def state_bytes(self, params_like: PyTree) -> int:
        """Bytes of the noise state for ``params_like`` (``jax.eval_shape``: nothing is
        allocated)."""
        shapes = jax.eval_shape(self.init_state, params_like)
        return int(
            sum(
                math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
                for leaf in jax.tree.leaves(shapes)
            )
        )

    # ----------------------------------------------------------------------------------
    # Accounting
    # ----------------------------------------------------------------------------------
    def effective_noise_multiplier(
        self, noise_multiplier: float, rounds: int | None = None
    ) -> float:
        """z / sens: the multiplier of the one Gaussian mechanism the rounds amount to."""
        z = checks.check_positive("noise_multiplier", noise_multiplier)
        return z / self.sensitivity(rounds)

    def dp_event(self, noise_multiplier: float, rounds: int | None = None) -> dp_accounting.DpEvent:
        """``GaussianDpEvent(z / sens)`` of the first ``rounds`` (default n) rounds with
        noise multiplier z (σ = z·C_clip on the sum); see the module docstring."""
        return dp_accounting.GaussianDpEvent(
            self.effective_noise_multiplier(noise_multiplier, rounds)
        )

    def epsilon(
        self,
        noise_multiplier: float,
        delta: float,
        rounds: int | None = None,
        accountant: accounting.AccountantName = "rdp",
    ) -> CorrelatedGuarantee:
        """User-level ε after the first ``rounds`` (default n) rounds.

        Args:
            noise_multiplier: z > 0, σ / C_clip (σ: the std of the draws before C⁻¹).
            delta: δ in (0, 1).
            rounds: T in [1, n].
            accountant: ``"rdp"`` or ``"pld"`` (of one Gaussian mechanism: tighter).

        Raises:
            ValueError: a bad argument.
            accounting.PldRefusedError: PLD beyond ``accounting.MAX_PLD_CELLS``.
        """
        length = self.rounds if rounds is None else self._check_rounds(rounds)
        delta = checks.check_delta(delta)
        if accountant not in accounting.ACCOUNTANTS:
            raise ValueError(
                f"accountant must be one of {accounting.ACCOUNTANTS}, got {accountant!r}"
            )
        z = checks.check_positive("noise_multiplier", noise_multiplier)
        event = self.dp_event(z, length)
        order = None
        if accountant == "pld":
            cost = accounting.pld_cost(event.noise_multiplier, 1.0, 1)
            if not cost.feasible:
                raise accounting.PldRefusedError(
                    cost, event.noise_multiplier, 1.0, 1, "one Gaussian mechanism with z/sens: "
                )
            eps = pld.PLDAccountant().compose(event).get_epsilon(delta)
        else:
            eps, order = rdp.RdpAccountant().compose(event).get_epsilon_and_optimal_order(delta)
            order = float(order)
        return CorrelatedGuarantee(
            epsilon=float(eps),
            delta=delta,
            noise_multiplier=z,
            sensitivity=self.sensitivity(length),
            rounds=length,
            min_separation=self.min_separation,
            max_participations=sensitivity.minsep_true_max_participations(
                length, self.min_separation
            ),
            kind=self.kind,
            accountant=accountant,
            rdp_order=order,
        )

    def calibrate(
        self,
        target_epsilon: float,
        delta: float,
        rounds: int | None = None,
        accountant: accounting.AccountantName = "rdp",
        tolerance: float = 1e-3,
    ) -> float:
        """Smallest noise multiplier z with ε(z) ≤ ``target_epsilon``.

        ``dp_accounting.calibrate_dp_mechanism`` on the effective multiplier z/sens (Brent's
        method), times sens; z is within ``tolerance`` above the exact threshold.

        Args:
            target_epsilon: the ε budget, > 0.
            delta: δ in (0, 1).
            rounds: T in [1, n] (default n).
            accountant: ``"rdp"`` or ``"pld"`` (bracketed by the RDP answer, as
                ``accounting.calibrate_noise``: ε_PLD ≤ ε_RDP).
            tolerance: absolute tolerance on z.

        Returns:
            z (σ = z·C_clip scales the draws before C⁻¹).
        """
        target = checks.check_positive("target_epsilon", target_epsilon)
        delta = checks.check_delta(delta)
        tol = checks.check_positive("tolerance", tolerance)
        if accountant not in accounting.ACCOUNTANTS:
            raise ValueError(
                f"accountant must be one of {accounting.ACCOUNTANTS}, got {accountant!r}"
            )
        sens = self.sensitivity(rounds)
        make_accountant = pld.PLDAccountant if accountant == "pld" else rdp.RdpAccountant

        def epsilon_at(effective: float) -> float:
            return (
                make_accountant()
                .compose(dp_accounting.GaussianDpEvent(effective))
                .get_epsilon(delta)
            )

        too_loose = ValueError(
            f"target_epsilon={target} is met even with noise multiplier "
            f"{accounting.MIN_CALIBRATED_NOISE_MULTIPLIER}: no meaningful noise level to "
            f"calibrate to"
        )
        if accountant == "rdp":
            lowest = accounting.MIN_CALIBRATED_NOISE_MULTIPLIER / sens
            if epsilon_at(lowest) <= target:
                raise too_loose
            bracket = dp_accounting.LowerEndpointAndGuess(lowest, 1.0)
        else:  # z_PLD ≤ z_RDP; step down until ε_PLD exceeds the target (cost-checked)
            upper = self.calibrate(target, delta, rounds, "rdp", tol) / sens
            lower = upper
            while True:
                lower *= 0.75
                if lower * sens < accounting.MIN_CALIBRATED_NOISE_MULTIPLIER:
                    raise too_loose
                cost = accounting.pld_cost(lower, 1.0, 1)
                if not cost.feasible:
                    raise accounting.PldRefusedError(
                        cost, lower, 1.0, 1, f"calibrating to target ε={target:g}: "
                    )
                if epsilon_at(lower) > target:
                    break
            bracket = dp_accounting.ExplicitBracketInterval(lower, upper)
        try:
            effective = dp_accounting.calibrate_dp_mechanism(
                make_accountant,
                dp_accounting.GaussianDpEvent,
                target,
                delta,
                bracket,
                tol=tol / sens,
            )
        except dp_accounting.mechanism_calibration.NoBracketIntervalFoundError as err:
            raise ValueError(
                f"target_epsilon={target} needs a noise multiplier beyond the "
                f"search range: choose a larger target_epsilon"
            ) from err
        return float(effective * sens)

    def accountant(self, noise_multiplier: float, delta: float) -> CorrelatedAccountant:
        """ε during training, with the interface of ``accounting.RunAccountant``."""
        return CorrelatedAccountant(self, noise_multiplier, delta)

    # ----------------------------------------------------------------------------------
    # Serialization and the sampler
    # ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples become lists); :meth:`from_dict` inverts it exactly."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def independent(cls, rounds: int, min_separation: int) -> CorrelatedNoise:
        """Independent Gaussian noise every round (a one-band strategy, C = I) for ``rounds``
        rounds with min-separation participation, without amplification: sens = √k.
        ``min_separation`` beyond ``rounds`` changes nothing and is capped at ``rounds``."""
        return cls("banded_toeplitz", rounds, min(min_separation, rounds), bands=1)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> CorrelatedNoise:
        """The mechanism of :meth:`to_dict`."""
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
        }
        return cls(**kwargs)

    def check_sampler(self, sampler: Any) -> None:
        """Raises unless ``sampler`` guarantees this mechanism's participation: a
        min-separation sampler (``fl_dp_asr.fl.samplers.CyclicSampler``) with separation
        ≥ b. Poisson and fixed-size samplers draw users in consecutive rounds."""
        separation = getattr(sampler, "min_separation", None)
        if separation is None:
            raise ValueError(
                f"the {self.kind} mechanism's ε assumes b-min-separation participation "
                f"(each user at most once every {self.min_separation} rounds), which "
                f"{type(sampler).__name__} does not guarantee: use the 'cyclic' sampler "
                f"with min_separation={self.min_separation}"
            )
        if separation < self.min_separation:
            raise ValueError(
                f"the sampler's min_separation ({separation}) is below the "
                f"mechanism's ({self.min_separation}): its users may take "
                f"part more often than the sensitivity allows for"
            )


@functools.lru_cache(maxsize=32)
def _strategy_coefs(mechanism: CorrelatedNoise, rounds: int) -> np.ndarray:
    with jax.enable_x64():
        if mechanism.kind == "blt":
            blt = buffered_toeplitz.BufferedToeplitz.build(
                mechanism.buf_decay, mechanism.output_scale, dtype=jnp.float64
            )
            coefs = blt.toeplitz_coefs(rounds)
        else:
            coefs = toeplitz.pad_coefs_to_n(jnp.asarray(mechanism.coefs, jnp.float64), rounds)
        return np.asarray(coefs, dtype=np.float64)


@functools.lru_cache(maxsize=256)
def _sensitivity(mechanism: CorrelatedNoise, rounds: int) -> float:
    coefs = mechanism.strategy_coefs(rounds)
    with jax.enable_x64():
        squared = toeplitz.minsep_sensitivity_squared(
            jnp.asarray(coefs), min_sep=mechanism.min_separation, n=rounds
        )
    return float(np.sqrt(float(squared)))


@functools.lru_cache(maxsize=16)
def _optimize(mechanism: CorrelatedNoise) -> CorrelatedNoise:
    """jax_privacy's optimized strategy for (n, b), as float32 parameters."""
    n, b = mechanism.rounds, mechanism.min_separation
    if mechanism.kind == "blt":
        blt = buffered_toeplitz.optimize(
            n=n,
            min_sep=b,
            max_participations=None,
            error=mechanism.error,
            max_buffers=mechanism.max_buffers,
        )
        return dataclasses.replace(
            mechanism,
            buf_decay=_float32_tuple("buf_decay", blt.buf_decay),
            output_scale=_float32_tuple("output_scale", blt.output_scale),
        )
    reduction = jnp.max if mechanism.error == "max" else jnp.mean
    coefs = toeplitz.optimize_banded_toeplitz(n, mechanism.bands, reduction_fn=reduction)
    return dataclasses.replace(mechanism, coefs=_float32_tuple("coefs", coefs))


@dataclasses.dataclass(frozen=True)
class CorrelatedGuarantee:
    """User-level (ε, δ)-DP of T rounds of a correlated-noise mechanism.

    Attributes:
        epsilon: ε.
        delta: δ.
        noise_multiplier: z = σ / C_clip.
        sensitivity: sens of C under b-min-separation (clip norms).
        rounds: T.
        min_separation: b.
        max_participations: k = ⌈T/b⌉.
        kind: ``"blt"`` or ``"banded_toeplitz"``.
        accountant: ``"rdp"`` or ``"pld"``.
        rdp_order: the optimal Rényi order (RDP), else ``None``.
    """

    epsilon: float
    delta: float
    noise_multiplier: float
    sensitivity: float
    rounds: int
    min_separation: int
    max_participations: int
    kind: str
    accountant: str
    rdp_order: float | None = None

    @property
    def effective_noise_multiplier(self) -> float:
        """z / sens."""
        return self.noise_multiplier / self.sensitivity

    @property
    def neighboring_relation(self) -> str:
        """Which datasets the guarantee makes indistinguishable."""
        return accounting.ZERO_OUT_ONE_USER

    def __str__(self) -> str:
        order = f", order {self.rdp_order:g}" if self.rdp_order is not None else ""
        return (
            f"user-level ({self.epsilon:.4g}, {self.delta:.3g})-DP "
            f"[{self.neighboring_relation}] after T={self.rounds} rounds; {self.kind} "
            f"correlated noise, min separation b={self.min_separation} (≤ "
            f"{self.max_participations} participations), no sampling amplification, "
            f"z={self.noise_multiplier:.4g}, sens={self.sensitivity:.4g}, "
            f"z/sens={self.effective_noise_multiplier:.4g}; "
            f"{self.accountant.upper()} accountant{order}"
        )


class CorrelatedAccountant:
    """ε spent by a correlated-noise run (cached), with ``accounting.RunAccountant``'s
    interface (``guarantee``, ``epsilon``, ``pld_feasible``, ``max_rounds_within``).

    Args:
        mechanism: the :class:`CorrelatedNoise` of the run.
        noise_multiplier: z.
        delta: δ.
    """

    def __init__(self, mechanism: CorrelatedNoise, noise_multiplier: float, delta: float):
        self.mechanism = mechanism.optimize()
        self.noise_multiplier = checks.check_positive("noise_multiplier", noise_multiplier)
        self.delta = checks.check_delta(delta)
        self._cache: dict[tuple[int, str], CorrelatedGuarantee] = {}

    def __repr__(self) -> str:
        return (
            f"CorrelatedAccountant({self.mechanism.kind!r}, rounds="
            f"{self.mechanism.rounds}, min_separation={self.mechanism.min_separation}, "
            f"noise_multiplier={self.noise_multiplier}, delta={self.delta})"
        )

    def guarantee(
        self, rounds: int, accountant: accounting.AccountantName = "rdp"
    ) -> CorrelatedGuarantee:
        """The :class:`CorrelatedGuarantee` after ``rounds`` ≤ n rounds (cached)."""
        key = (checks.check_integer("rounds", rounds), accountant)
        if key not in self._cache:
            self._cache[key] = self.mechanism.epsilon(
                self.noise_multiplier, self.delta, key[0], accountant
            )
        return self._cache[key]

    def epsilon(self, rounds: int, accountant: accounting.AccountantName = "rdp") -> float:
        """ε after ``rounds`` rounds."""
        return self.guarantee(rounds, accountant).epsilon

    def pld_feasible(self, rounds: int) -> bool:
        """Whether PLD runs for ``rounds`` rounds (one Gaussian with z/sens)."""
        return accounting.pld_feasible(
            self.mechanism.effective_noise_multiplier(self.noise_multiplier, rounds), 1.0, 1
        )

    def max_rounds_within(
        self,
        max_epsilon: float,
        accountant: accounting.AccountantName = "rdp",
        max_rounds: int | None = None,
    ) -> int:
        """Largest T ≤ min(``max_rounds``, n) with ε(T) ≤ ``max_epsilon`` (0 if none):
        bisection (ε(T) does not decrease with T: the prefix sensitivity does not)."""
        budget = checks.check_positive("max_epsilon", max_epsilon)
        limit = (
            self.mechanism.rounds
            if max_rounds is None
            else min(checks.check_integer("max_rounds", max_rounds), self.mechanism.rounds)
        )
        if self.epsilon(limit, accountant) <= budget:
            return limit
        good, bad = 0, limit
        while bad - good > 1:
            middle = (good + bad) // 2
            if self.epsilon(middle, accountant) <= budget:
                good = middle
            else:
                bad = middle
        return good
