"""User-level privacy accounting for DP federated learning, built on ``dp_accounting``.

The mechanism being accounted (one round of DP-FedAvg, as in arXiv 2310.00098):

1. a cohort of users is sampled from a population of ``K`` users;
2. each sampled user's model delta ``Δ_u`` is clipped to L2 norm ``‖Δ_u‖ ≤ C``;
3. the server adds Gaussian noise to the **sum** of the clipped deltas,
   ``Σ_u Δ_u + N(0, (z·C)² I)``, with ``z`` the *noise multiplier*;
4. this repeats for ``T`` rounds, with a fresh, independent cohort each round.

The unit of privacy is **one user** (all of that user's utterances), so every ε
computed here is *user-level* (ε, δ)-DP for the release of all ``T`` server updates
(every intermediate model, not only the last one).

Two cohort samplers are supported; the accountant must match the sampler used in
training (:mod:`fl_dp_asr.fl.cohort`):

- ``"poisson"``: each user joins a round independently with probability
  ``q = S / K`` (``S`` is then the *expected* cohort size). Accounted with
  ``PoissonSampledDpEvent`` under the **add-or-remove-one-user** neighbouring
  relation. Both the RDP and the PLD accountant apply; PLD is tighter.
- ``"fixed"``: exactly ``S`` distinct users drawn uniformly without replacement
  from the ``K`` users. Accounted with ``SampledWithoutReplacementDpEvent`` under
  the **replace-one-user** relation (``K`` is public), RDP only: ``dp_accounting``
  has no PLD analysis of this event. Replacing one user's delta by another's moves
  the sum by up to ``2C``, so the event is given the multiplier relative to that
  sensitivity, ``z / 2`` (``dp_accounting`` 0.6 feeds the event's multiplier
  unchanged to a formula normalised by the L2 sensitivity; see
  google/differential-privacy issue #378). A replace-one ε is not comparable with
  an add-or-remove ε: it is larger for the same noise.

The paper's noise parameter σ_DP is the noise std on the cohort **mean** in units
of ``C``; :func:`sigma_dp_to_noise_multiplier` is the one place that converts it
(``z = S · σ_DP``).

Cost (2-core CPU, T = 2000 rounds): one RDP ε takes 0.01–0.05 s, one PLD ε
0.05–3 s (slowest for small noise multipliers, whose privacy-loss distribution is
wide; refused beyond :data:`MAX_PLD_CELLS`, see :func:`pld_cost`); :func:`calibrate_noise`
evaluates the accountant 10–30 times.

References:
    Pelikan, Azam, Feldman, Silovsky, Talwar, Brinton, Likhomanenko. "Enabling
    Differentially Private Federated Learning for Speech Recognition: Benchmarks,
    Adaptive Optimizers and Gradient Clipping". arXiv 2310.00098.
    Mironov, Talwar, Zhang. "Rényi Differential Privacy of the Sampled Gaussian
    Mechanism". arXiv 1908.10530.
    Wang, Balle, Kasiviswanathan. "Subsampled Rényi Differential Privacy and
    Analytical Moments Accountant". arXiv 1808.00087.
    Doroshenko, Ghazi, Kamath, Kumar, Manurangsi. "Connect the Dots: Tighter
    Discrete Approximations of Privacy Loss Distributions". arXiv 2207.04380.
"""

import dataclasses
from collections.abc import Sequence
from typing import Literal

import dp_accounting
from dp_accounting import pld, rdp
from dp_accounting.pld import common as pld_common
from dp_accounting.pld import privacy_loss_distribution

from fl_dp_asr.dp import checks

Sampling = Literal["poisson", "fixed"]
AccountantName = Literal["rdp", "pld"]

SAMPLING_SCHEMES: tuple[str, ...] = ("poisson", "fixed")
ACCOUNTANTS: tuple[AccountantName, ...] = ("rdp", "pld")

ADD_OR_REMOVE_ONE_USER = "add-or-remove-one-user"
REPLACE_ONE_USER = "replace-one-user"
# Min-separation participation (correlated noise, fl_dp_asr.dp.correlated): one user's deltas
# replaced by zeros, the participation schedule unchanged.
ZERO_OUT_ONE_USER = "zero-out-one-user"
NEIGHBORING_RELATIONS: dict[str, str] = {  # the relation each sampling scheme is analysed in
    "poisson": ADD_OR_REMOVE_ONE_USER,
    "fixed": REPLACE_ONE_USER,
}
_SENSITIVITY_IN_CLIP_NORMS = {
    ADD_OR_REMOVE_ONE_USER: 1.0,
    REPLACE_ONE_USER: 2.0,
    ZERO_OUT_ONE_USER: 1.0,
}
SAMPLING_DESCRIPTIONS: dict[str, str] = {
    "poisson": "Poisson sampling: each user joins a round independently with "
    "probability q = S/K (S = expected cohort size)",
    "fixed": "fixed-size cohorts: S distinct users drawn uniformly without replacement from K",
}

# Lowest noise multiplier `calibrate_noise` considers (z -> 0 means no privacy at all).
MIN_CALIBRATED_NOISE_MULTIPLIER = 1e-3

# The PLD accountant's cost. It composes a discretised privacy-loss grid (dp_accounting's
# default spacing 1e-4) by FFT, then scans it in Python; one round's grid spans about
# 1/z² + 20/z in loss, and T rounds widen it (Chernoff-truncated). Measured on 2 CPU cores
# (peak RSS of a bare process; grid cells = the sum of the composed grids):
#   q=16/300 T=20:   z=0.3  1.6e6 cells 0.22 GB 2.1 s | z=0.2  3.1e6 0.29 GB  3.4 s
#                    z=0.15 5.1e6 cells 0.45 GB 5.8 s | z=0.1  1.1e7 0.71 GB 13 s
#                    z=0.07 2.0e7 cells 1.31 GB  23 s | z=0.05 3.8e7 2.50 GB 39 s
#   q=16/300 z=0.2:  T=200 6.3e6 cells 0.55 GB 5.1 s  | T=2000 2.0e7 1.47 GB 11 s
#   q=16/300 z=0.3 T=2000 8.3e6 0.63 GB 4.3 s; q=1 z=0.2 T=20 1.0e7 0.50 GB 3.4 s;
#   q=2.9e-4 z=0.2 T=2000 (the paper's smallest z') 2.7e6 0.26 GB 3.5 s.
# So about 0.15 GB + ≤ 70 bytes and ≤ 1.25 µs per cell; earlier, z=1.6e-3 was killed for
# memory and z=0.0332 grew to 15 GB in 14 min. `pld_cost` estimates the cells within ±15 %.
# PLD is refused above this many cells: ≤ 0.7 GB peak and ≤ 10 s here, with that error.
# At such z and T, ε is in the hundreds anyway.
MAX_PLD_CELLS = 6_000_000
PLD_BYTES_PER_CELL = 70
PLD_SECONDS_PER_CELL = 1.25e-6
_PLD_DISCRETIZATION = 1e-4  # dp_accounting's PLDAccountant default
_PLD_PROBE_COARSENING = 100  # the cost probe's grid is this much coarser (and cheaper)


@dataclasses.dataclass(frozen=True)
class PldCost:
    """Estimated cost of one PLD ε (:func:`pld_cost`).

    Attributes:
        cells: composed privacy-loss grid cells (a lower bound when z is too small to probe).
    """

    cells: float

    @property
    def gigabytes(self) -> float:
        """Memory above the interpreter's, GB (10⁹ bytes)."""
        return self.cells * PLD_BYTES_PER_CELL / 1e9

    @property
    def seconds(self) -> float:
        """Time on a 2-core CPU, seconds."""
        return self.cells * PLD_SECONDS_PER_CELL

    @property
    def feasible(self) -> bool:
        """Whether PLD is allowed to run (``cells ≤ MAX_PLD_CELLS``)."""
        return self.cells <= MAX_PLD_CELLS


class PldRefusedError(ValueError):
    """The PLD accountant would exceed :data:`MAX_PLD_CELLS`; says why and what to do.

    Attributes:
        cost: the estimate that was refused.
        noise_multiplier, sampling_rate, rounds: where it was estimated (z, q, T).
        context: what was asked, prefixed to the explanation.
    """

    def __init__(
        self,
        cost: PldCost,
        noise_multiplier: float,
        sampling_rate: float,
        rounds: int,
        context: str = "",
    ):
        self.cost, self.context = cost, context
        self.noise_multiplier, self.sampling_rate, self.rounds = (
            noise_multiplier,
            sampling_rate,
            rounds,
        )
        super().__init__(self.explain("accountant='rdp'"))

    def explain(self, alternative: str) -> str:
        """The message, recommending ``alternative`` (e.g. a command-line flag)."""
        return (
            f"{self.context}the PLD accountant is refused at z={self.noise_multiplier:.4g}, "
            f"q={self.sampling_rate:.4g}, T={self.rounds}: its privacy-loss grid would "
            f"have {self.cost.cells:.2g} cells (about {self.cost.gigabytes:.1f} GB and "
            f"{self.cost.seconds:.0f} s on 2 CPU cores), over the limit of "
            f"{MAX_PLD_CELLS:.2g} (about {MAX_PLD_CELLS * PLD_BYTES_PER_CELL / 1e9:.1f} GB, "
            f"{MAX_PLD_CELLS * PLD_SECONDS_PER_CELL:.0f} s); the grid grows like T/z². "
            f"Use {alternative} (a looser bound, in milliseconds) or more noise"
        )


def _single_round_cells(noise_multiplier: float) -> float:
    """Upper estimate of one round's PLD grid, any q: loss span 1/z² + 20/z (±10 σ tails)."""
    return (noise_multiplier**-2 + 20 / noise_multiplier) / _PLD_DISCRETIZATION


def pld_cost(noise_multiplier: float, sampling_rate: float, rounds: int) -> PldCost:
    """Estimated size of the PLD accountant's composed grid for T Poisson-sampled rounds.

    Builds one round's privacy-loss distribution on a 100× coarser grid and applies
    ``dp_accounting``'s own Chernoff truncation of the T-fold composition to it (≤ 0.4 s,
    a few MB); the sizes scale with the spacing (within ±15 %). Below z ≈ 0.015 it does
    not probe and returns a lower bound (already several times :data:`MAX_PLD_CELLS`).

    Args:
        noise_multiplier: z > 0 (noise std on the sum / C).
        sampling_rate: q = S/K in (0, 1].
        rounds: T ≥ 1.

    Returns:
        A :class:`PldCost`; ``cost.feasible`` says whether :func:`epsilon` will run PLD.
    """
    single = _single_round_cells(noise_multiplier)
    if single > 10 * MAX_PLD_CELLS:  # one round's true span is ≥ 0.45 of the estimate
        return PldCost(cells=0.45 * single)
    probe = privacy_loss_distribution.from_gaussian_mechanism(
        noise_multiplier,
        sampling_prob=sampling_rate,
        value_discretization_interval=_PLD_DISCRETIZATION * _PLD_PROBE_COARSENING,
    )
    # Private attributes, pinned by dp-accounting<0.7 and tests/dp/test_accounting.py.
    pmfs = {id(pmf): pmf.to_dense_pmf() for pmf in (probe._pmf_remove, probe._pmf_add)}
    cells = 0
    for pmf in pmfs.values():
        low, high = pld_common.compute_self_convolve_bounds(pmf._probs, rounds, 1e-15)
        cells += max(high - low + 1, pmf.size)
    return PldCost(cells=float(cells * _PLD_PROBE_COARSENING))


def pld_feasible(noise_multiplier: float, sampling_rate: float, rounds: int) -> bool:
    """Whether :func:`epsilon` runs the PLD accountant at (z, q, T) (within
    :data:`MAX_PLD_CELLS`; the cost grows with T, so z alone cannot tell)."""
    return pld_cost(noise_multiplier, sampling_rate, rounds).feasible


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------
def _check_cohort(
    cohort_size: object,
    population: object,
    cohort_name: str = "cohort_size",
    population_name: str = "population",
) -> tuple[int, int]:
    """Checks ``1 <= S <= K`` (so that q = S/K is in (0, 1]) and returns ``(S, K)``."""
    cohort = checks.check_integer(cohort_name, cohort_size)
    users = checks.check_integer(population_name, population)
    if cohort > users:
        raise ValueError(
            f"{cohort_name} ({cohort}) must not exceed {population_name} "
            f"({users}): the sampling rate q = {cohort_name}/{population_name} "
            f"must be in (0, 1]"
        )
    return cohort, users


# Min-separation participation (each user at most once every b rounds): the samplers of
# correlated noise (fl_dp_asr.fl.samplers.CyclicSampler).
MIN_SEPARATION_SAMPLING: tuple[str, ...] = ("cyclic",)


def _refuse_min_separation(sampling: object) -> None:
    """A clear error for min-separation participation, which these functions do not analyse."""
    if sampling in MIN_SEPARATION_SAMPLING:
        raise ValueError(
            f"sampling={sampling!r} (min-separation participation: each user at most once "
            f"every b rounds) has no amplification-by-sampling analysis here; its ε is that "
            f"of the correlated-noise mechanism: fl_dp_asr.dp.correlated.CorrelatedNoise."
            f"epsilon, or CyclicSampler.accountant(z, delta, mechanism)"
        )


def supports(sampling: str, accountant: str) -> bool:
    """Whether ``accountant`` can analyse ``sampling``: all but PLD with fixed-size cohorts
    (``dp_accounting`` has no PLD analysis of sampling without replacement)."""
    return not (accountant == "pld" and sampling == "fixed")


def _check_method(sampling: object, accountant: object) -> None:
    _refuse_min_separation(sampling)
    if sampling not in SAMPLING_SCHEMES:
        raise ValueError(f"sampling must be one of {SAMPLING_SCHEMES}, got {sampling!r}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not supports(sampling, accountant):
        raise ValueError(
            "accountant='pld' does not support sampling='fixed' (dp_accounting has no PLD "
            "analysis of fixed-size cohorts drawn without replacement); supported "
            "alternatives: accountant='rdp' with sampling='fixed', or sampling='poisson' "
            "with accountant='pld' or 'rdp'"
        )


# --------------------------------------------------------------------------------------
# Events and accountants
# --------------------------------------------------------------------------------------
def sensitivity(clip_norm: float, neighboring_relation: str) -> float:
    """L2 sensitivity of a sum of contributions clipped to ‖Δ̃_u‖ ≤ C, one per user.

    Adding or removing one user moves the sum by one contribution, at most C; replacing one
    user's contribution by another's moves it by at most 2C. The Gaussian mechanism's
    multiplier is the noise std over this sensitivity: z·C / C = z (Poisson sampling,
    add-or-remove) or z·C / 2C = z/2 (fixed-size sampling, replace-one).

    Args:
        clip_norm: C (any units; the result has the same).
        neighboring_relation: ``ADD_OR_REMOVE_ONE_USER`` or ``REPLACE_ONE_USER`` (the
            relation of each sampling scheme: :data:`NEIGHBORING_RELATIONS`).

    Returns:
        C or 2C.

    >>> sensitivity(0.01, REPLACE_ONE_USER)
    0.02
    """
    if neighboring_relation not in _SENSITIVITY_IN_CLIP_NORMS:
        raise ValueError(
            f"neighboring_relation must be one of "
            f"{sorted(_SENSITIVITY_IN_CLIP_NORMS)}, got {neighboring_relation!r}"
        )
    return _SENSITIVITY_IN_CLIP_NORMS[neighboring_relation] * clip_norm


def make_dp_event(
    noise_multiplier: float,
    cohort_size: int,
    population: int,
    rounds: int,
    sampling: Sampling = "poisson",
) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event of ``rounds`` rounds of sampled Gaussian aggregation.

    Args:
        noise_multiplier: z, the noise std on the **sum** of clipped deltas divided by
            the clip bound C (dimensionless).
        cohort_size: S, users per round (the expected number for Poisson sampling).
        population: K, users that can be sampled.
        rounds: T, number of rounds (server updates released).
        sampling: ``"poisson"`` or ``"fixed"`` (see the module docstring).

    Returns:
        ``SelfComposedDpEvent(PoissonSampledDpEvent(S/K, GaussianDpEvent(z)), T)``, or
        ``SelfComposedDpEvent(SampledWithoutReplacementDpEvent(K, S, GaussianDpEvent(z/2)), T)``
        (z/2: the replace-one sensitivity of the sum is 2C, :func:`sensitivity`).

    >>> make_dp_event(1.0, 10, 1000, 5)  # doctest: +NORMALIZE_WHITESPACE
    SelfComposedDpEvent(event=PoissonSampledDpEvent(sampling_probability=0.01,
        event=GaussianDpEvent(noise_multiplier=1.0)), count=5)
    """
    _refuse_min_separation(sampling)
    if sampling not in SAMPLING_SCHEMES:
        raise ValueError(f"sampling must be one of {SAMPLING_SCHEMES}, got {sampling!r}")
    # dp_accounting's Gaussian event takes the noise std over the L2 sensitivity of the sum.
    gaussian = dp_accounting.GaussianDpEvent(
        noise_multiplier / sensitivity(1.0, NEIGHBORING_RELATIONS[sampling])
    )
    if sampling == "poisson":
        round_event = dp_accounting.PoissonSampledDpEvent(cohort_size / population, gaussian)
    else:
        round_event = dp_accounting.SampledWithoutReplacementDpEvent(
            population, cohort_size, gaussian
        )
    return dp_accounting.SelfComposedDpEvent(round_event, rounds)


def _new_accountant(
    sampling: Sampling, accountant: AccountantName
) -> dp_accounting.PrivacyAccountant:
    if accountant == "pld":
        return pld.PLDAccountant()
    relation = (
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        if sampling == "poisson"
        else dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    return rdp.RdpAccountant(neighboring_relation=relation)


# --------------------------------------------------------------------------------------
# ε of a run, and the noise for a target ε
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PrivacyGuarantee:
    """User-level (ε, δ)-DP of ``rounds`` rounds, with the assumptions it rests on.

    Attributes:
        epsilon: ε (natural-log units); ``inf`` when the accountant finds no bound.
        delta: δ.
        noise_multiplier: z = noise std on the sum / C.
        cohort_size: S (the expected cohort size for Poisson sampling).
        population: K.
        rounds: T.
        sampling: ``"poisson"`` or ``"fixed"``.
        accountant: ``"rdp"`` or ``"pld"``.
        rdp_order: the Rényi order α that gave the RDP bound; ``None`` for PLD.
    """

    epsilon: float
    delta: float
    noise_multiplier: float
    cohort_size: int
    population: int
    rounds: int
    sampling: str
    accountant: str
    rdp_order: float | None = None

    @property
    def sampling_rate(self) -> float:
        """q = S / K."""
        return self.cohort_size / self.population

    @property
    def sigma_dp(self) -> float:
        """The paper's σ_DP, noise std on the cohort mean in units of C: z / S."""
        return noise_multiplier_to_sigma_dp(self.noise_multiplier, self.cohort_size)

    @property
    def neighboring_relation(self) -> str:
        """Which datasets the guarantee makes indistinguishable."""
        return NEIGHBORING_RELATIONS[self.sampling]

    def __str__(self) -> str:
        order = f", order {self.rdp_order:g}" if self.rdp_order is not None else ""
        return (
            f"user-level ({self.epsilon:.4g}, {self.delta:.3g})-DP "
            f"[{self.neighboring_relation}] after T={self.rounds} rounds; "
            f"{self.sampling} sampling, q=S/K={self.cohort_size}/{self.population}"
            f"={self.sampling_rate:.4g}, z={self.noise_multiplier:.4g} "
            f"(σ_DP={self.sigma_dp:.3g}); {self.accountant.upper()} accountant{order}"
        )


def epsilon(
    noise_multiplier: float,
    cohort_size: int,
    population: int,
    rounds: int,
    delta: float,
    sampling: Sampling = "poisson",
    accountant: AccountantName = "rdp",
) -> PrivacyGuarantee:
    """User-level ε of ``rounds`` rounds of DP-FedAvg with Gaussian noise.

    Each round releases ``Σ_{u ∈ cohort} clip(Δ_u, C) + N(0, (z·C)² I)`` for a cohort
    drawn by ``sampling`` with rate q = S/K, and the T releases compose. The RDP
    (moments) accountant bounds the Rényi divergence ρ(α) of one sampled-Gaussian
    round, composes it as T·ρ(α) and converts to ε ≈ min_α [T·ρ(α) + log(1/δ)/(α−1)]
    (with ``dp_accounting``'s tighter conversion). The PLD accountant composes the
    discretised privacy-loss distribution itself: tighter (ε_PLD ≤ ε_RDP), slower.

    Args:
        noise_multiplier: z > 0, noise std on the sum of clipped deltas / C.
        cohort_size: S ≥ 1 users per round (expected, for Poisson sampling).
        population: K ≥ S users. Integral floats (``6.95e6``) are accepted.
        rounds: T ≥ 1.
        delta: δ in (0, 1); the paper uses 1e-9.
        sampling: ``"poisson"`` (add-or-remove-one-user DP) or ``"fixed"`` (S users
            without replacement; replace-one-user DP).
        accountant: ``"rdp"`` or ``"pld"``; PLD supports only Poisson sampling.

    Returns:
        A :class:`PrivacyGuarantee`; its ``str()`` states every assumption.

    Raises:
        ValueError: an invalid argument, or ``accountant="pld"`` with ``sampling="fixed"``.
        PldRefusedError: ``accountant="pld"`` beyond :data:`MAX_PLD_CELLS` (:func:`pld_cost`).

    References:
        arXiv 2310.00098 (noise and accounting); arXiv 1908.10530 (sampled Gaussian RDP).

    >>> g = epsilon(noise_multiplier=1.0, cohort_size=10, population=1000, rounds=100,
    ...             delta=1e-5)
    >>> round(g.epsilon, 3), g.rdp_order
    (1.214, 8.8)
    >>> print(g)  # doctest: +NORMALIZE_WHITESPACE
    user-level (1.214, 1e-05)-DP [add-or-remove-one-user] after T=100 rounds; poisson
    sampling, q=S/K=10/1000=0.01, z=1 (σ_DP=0.1); RDP accountant, order 8.8
    """
    z = checks.check_positive("noise_multiplier", noise_multiplier)
    cohort, users = _check_cohort(cohort_size, population)
    num_rounds = checks.check_integer("rounds", rounds)
    delta = checks.check_delta(delta)
    _check_method(sampling, accountant)
    if accountant == "pld":
        cost = pld_cost(z, cohort / users, num_rounds)
        if not cost.feasible:
            raise PldRefusedError(cost, z, cohort / users, num_rounds)
    composed = _new_accountant(sampling, accountant).compose(
        make_dp_event(z, cohort, users, num_rounds, sampling)
    )
    order = None
    if accountant == "rdp":
        eps, order = composed.get_epsilon_and_optimal_order(delta)
        order = float(order)
    else:
        eps = composed.get_epsilon(delta)
    return PrivacyGuarantee(
        epsilon=float(eps),
        delta=delta,
        noise_multiplier=z,
        cohort_size=cohort,
        population=users,
        rounds=num_rounds,
        sampling=sampling,
        accountant=accountant,
        rdp_order=order,
    )


def calibrate_noise(
    target_epsilon: float,
    cohort_size: int,
    population: int,
    rounds: int,
    delta: float,
    sampling: Sampling = "poisson",
    accountant: AccountantName = "rdp",
    tolerance: float = 1e-3,
) -> float:
    """Smallest noise multiplier z whose ε after ``rounds`` rounds is ≤ the target.

    Uses ``dp_accounting.calibrate_dp_mechanism`` (Brent's method on ε(z) − target,
    which decreases in z). The returned z is within ``tolerance`` above the exact
    threshold and always satisfies ε(z) ≤ ``target_epsilon``. For PLD the search is
    bracketed by the RDP answer (ε_PLD ≤ ε_RDP, hence z_PLD ≤ z_RDP).

    Args:
        target_epsilon: the ε budget, > 0.
        cohort_size: S, as in :func:`epsilon`.
        population: K, as in :func:`epsilon`.
        rounds: T, as in :func:`epsilon`.
        delta: δ, as in :func:`epsilon`.
        sampling: as in :func:`epsilon`.
        accountant: as in :func:`epsilon`.
        tolerance: absolute tolerance on z.

    Returns:
        z (noise std on the sum / C); the paper's σ_DP is
        ``noise_multiplier_to_sigma_dp(z, cohort_size)``.

    Raises:
        ValueError: an invalid argument, a target so loose that
            z = ``MIN_CALIBRATED_NOISE_MULTIPLIER`` already meets it, or so tight that
            no z below about 1e9 does.
        PldRefusedError: ``accountant="pld"`` and the PLD answer lies where PLD would
            exceed :data:`MAX_PLD_CELLS` (the message gives the RDP answer).

    >>> z = calibrate_noise(2.0, cohort_size=10, population=1000, rounds=100, delta=1e-5)
    >>> round(z, 3)
    0.828
    >>> epsilon(z, 10, 1000, 100, 1e-5).epsilon <= 2.0
    True
    """
    target = checks.check_positive("target_epsilon", target_epsilon)
    cohort, users = _check_cohort(cohort_size, population)
    num_rounds = checks.check_integer("rounds", rounds)
    delta = checks.check_delta(delta)
    tol = checks.check_positive("tolerance", tolerance)
    _check_method(sampling, accountant)
    too_loose = ValueError(
        f"target_epsilon={target} is met even with noise multiplier "
        f"{MIN_CALIBRATED_NOISE_MULTIPLIER}: no meaningful noise level to calibrate to"
    )

    def make_event(z: float) -> dp_accounting.DpEvent:
        return make_dp_event(z, cohort, users, num_rounds, sampling)

    def make_accountant() -> dp_accounting.PrivacyAccountant:
        return _new_accountant(sampling, accountant)

    def epsilon_at(z: float) -> float:
        return make_accountant().compose(make_event(z)).get_epsilon(delta)

    if accountant == "rdp":
        if epsilon_at(MIN_CALIBRATED_NOISE_MULTIPLIER) <= target:
            raise too_loose
        bracket = dp_accounting.LowerEndpointAndGuess(MIN_CALIBRATED_NOISE_MULTIPLIER, 1.0)
    else:
        upper = calibrate_noise(target, cohort, users, num_rounds, delta, sampling, "rdp", tol)
        lower = upper
        while True:  # z_PLD is typically 80-95 % of z_RDP; the PLD cost grows as z shrinks
            candidate = lower * 0.75
            if candidate < MIN_CALIBRATED_NOISE_MULTIPLIER:
                raise too_loose
            cost = pld_cost(candidate, cohort / users, num_rounds)
            if not cost.feasible:
                raise PldRefusedError(
                    cost,
                    candidate,
                    cohort / users,
                    num_rounds,
                    f"calibrating to target ε={target:g}: the PLD answer is ≤ z={lower:.4g} "
                    f"(RDP's answer z={upper:.5g} also meets the target: ε_PLD ≤ ε_RDP); ",
                )
            lower = candidate
            if epsilon_at(lower) > target:
                break
        bracket = dp_accounting.ExplicitBracketInterval(lower, upper)
    try:
        z = dp_accounting.calibrate_dp_mechanism(
            make_accountant, make_event, target, delta, bracket, tol=tol
        )
    except dp_accounting.mechanism_calibration.NoBracketIntervalFoundError as err:
        raise ValueError(
            f"target_epsilon={target} needs a noise multiplier beyond the search "
            f"range (about 1e9): choose a larger target_epsilon"
        ) from err
    return float(z)


# --------------------------------------------------------------------------------------
# σ_DP ↔ z
# --------------------------------------------------------------------------------------
def sigma_dp_to_noise_multiplier(sigma_dp: float, cohort_size: float) -> float:
    """Noise multiplier z from the paper's σ_DP: z = S · σ_DP.

    σ_DP is the noise std on the cohort **mean** in units of the clip bound C (the
    server computes ``mean + N(0, (C·σ_DP)² I)``); z is the std on the **sum** in
    units of C. The mean is sum / S, so z·C / S = σ_DP·C. For Poisson sampling S is
    the *expected* cohort size q·K, the fixed divisor of the sum (it need not be an
    integer). This is the project's one place for the conversion: convert
    explicitly, never pass one where the other is expected.

    Args:
        sigma_dp: σ_DP ≥ 0 (dimensionless; 0 = no noise).
        cohort_size: S > 0 (expected cohort size for Poisson sampling).

    Returns:
        z = S · σ_DP.

    >>> round(sigma_dp_to_noise_multiplier(3e-6, 204800), 10)
    0.6144
    """
    sigma = checks.check_positive("sigma_dp", sigma_dp, allow_zero=True)
    return checks.check_positive("cohort_size", cohort_size) * sigma


def noise_multiplier_to_sigma_dp(noise_multiplier: float, cohort_size: float) -> float:
    """The paper's σ_DP from a noise multiplier: σ_DP = z / S.

    Inverse of :func:`sigma_dp_to_noise_multiplier` (same units and conventions).

    Args:
        noise_multiplier: z ≥ 0, noise std on the sum / C.
        cohort_size: S > 0 (expected cohort size for Poisson sampling).

    Returns:
        σ_DP = z / S, noise std on the mean / C.

    >>> noise_multiplier_to_sigma_dp(1.024, 1024)
    0.001
    """
    z = checks.check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    return z / checks.check_positive("cohort_size", cohort_size)


# --------------------------------------------------------------------------------------
# The paper's population extrapolation
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Extrapolation:
    """Privacy of a simulated run re-interpreted at a larger cohort and population.

    Attributes:
        sigma_dp: σ_DP of the simulated run (noise std on the mean / C), kept as is.
        simulated_cohort: S of the simulation (1024 in the paper).
        target_cohort: S', the cohort size the guarantee is claimed for.
        target_population: K'.
        rounds: T.
        delta: δ.
        noise_multiplier: z' = S' · σ_DP.
        sampling_rate: q' = S' / K'.
        epsilon_rdp: ε from the RDP accountant, or ``None`` if not computed.
        rdp_order: the optimal Rényi order, or ``None``.
        epsilon_pld: ε from the PLD accountant, or ``None`` if not computed (not asked
            for, or refused by :func:`pld_cost`: z' too small for T).
        sampling: always ``"poisson"`` (the paper's sampled-Gaussian analysis).
    """

    sigma_dp: float
    simulated_cohort: int
    target_cohort: int
    target_population: int
    rounds: int
    delta: float
    noise_multiplier: float
    sampling_rate: float
    epsilon_rdp: float | None
    rdp_order: float | None
    epsilon_pld: float | None
    sampling: str = "poisson"

    @property
    def simulated_noise_multiplier(self) -> float:
        """z actually used by the simulation, S · σ_DP."""
        return sigma_dp_to_noise_multiplier(self.sigma_dp, self.simulated_cohort)


def extrapolate(
    sigma_dp: float,
    simulated_cohort: int,
    target_cohort: int,
    target_population: int,
    rounds: int,
    delta: float,
    accountants: Sequence[AccountantName] = ACCOUNTANTS,
) -> Extrapolation:
    """The paper's extrapolation: keep σ_DP, claim the privacy of cohort S' out of K'.

    A run simulated with cohort S adds noise of std σ_DP·C to the cohort mean. A
    cohort of S' users with the same noise on its mean has z' = S'·σ_DP on its sum,
    so its mean update has the same noise (and, the paper argues, the same model
    quality: the signal is a mean either way), while its privacy is that of T rounds
    of the Poisson-sampled Gaussian with q' = S'/K' and multiplier z'. The simulation
    itself is *not* private at that level; the claim is about the deployment it models.

    Args:
        sigma_dp: σ_DP > 0 of the simulated run.
        simulated_cohort: S ≥ 1 (informational: gives the simulated z = S·σ_DP).
        target_cohort: S' ≥ 1.
        target_population: K' ≥ S'.
        rounds: T ≥ 1.
        delta: δ in (0, 1).
        accountants: which of ``"rdp"``, ``"pld"`` to run (PLD costs 0.05–3 s at T=2000).

    Returns:
        An :class:`Extrapolation` with z', q' and the requested ε values.

    References:
        arXiv 2310.00098, population extrapolation (σ_DP ∈ {1e-6, 3e-6, 1e-5, 2e-5},
        S' ∈ {51200, 102400, 204800}, δ = 1e-9).

    >>> e = extrapolate(3e-6, 1024, 204800, 69_500_000, 2000, 1e-9, accountants=["rdp"])
    >>> round(e.noise_multiplier, 4), round(e.sampling_rate, 6), round(e.epsilon_rdp, 2)
    (0.6144, 0.002947, 7.2)
    """
    sigma = checks.check_positive("sigma_dp", sigma_dp)
    simulated = checks.check_integer("simulated_cohort", simulated_cohort)
    cohort, users = _check_cohort(
        target_cohort, target_population, "target_cohort", "target_population"
    )
    num_rounds = checks.check_integer("rounds", rounds)
    delta = checks.check_delta(delta)
    if not accountants or any(a not in ACCOUNTANTS for a in accountants):
        raise ValueError(
            f"accountants must be a non-empty subset of {ACCOUNTANTS}, got {list(accountants)!r}"
        )
    z = sigma_dp_to_noise_multiplier(sigma, cohort)
    eps_rdp = order = eps_pld = None
    if "rdp" in accountants:
        result = epsilon(z, cohort, users, num_rounds, delta, "poisson", "rdp")
        eps_rdp, order = result.epsilon, result.rdp_order
    if "pld" in accountants and pld_feasible(z, cohort / users, num_rounds):  # else None
        eps_pld = epsilon(z, cohort, users, num_rounds, delta, "poisson", "pld").epsilon
    return Extrapolation(
        sigma_dp=sigma,
        simulated_cohort=simulated,
        target_cohort=cohort,
        target_population=users,
        rounds=num_rounds,
        delta=delta,
        noise_multiplier=z,
        sampling_rate=cohort / users,
        epsilon_rdp=eps_rdp,
        rdp_order=order,
        epsilon_pld=eps_pld,
    )


# --------------------------------------------------------------------------------------
# Accounting during training
# --------------------------------------------------------------------------------------
class RunAccountant:
    """ε spent by a training run (cached), and the number of rounds a budget allows.

    Built once per run from its fixed settings; ``epsilon(rounds)`` is then cheap to
    call every few rounds for logging: results are cached per ``(rounds, accountant)``.
    Cost of an uncached call at T ≈ 2000: RDP 0.01–0.05 s, PLD 0.05–3 s.

    Args:
        sampling: ``"poisson"`` or ``"fixed"``; must match the cohort sampler.
        cohort_size: S (expected cohort size for Poisson sampling).
        population: K.
        noise_multiplier: z (std on the sum / C); convert σ_DP with
            :func:`sigma_dp_to_noise_multiplier`.
        delta: δ.

    >>> acc = RunAccountant("poisson", cohort_size=10, population=1000,
    ...                     noise_multiplier=1.0, delta=1e-5)
    >>> round(acc.epsilon(100), 3)
    1.214
    >>> t = acc.max_rounds_within(2.0)
    >>> t, acc.epsilon(t) <= 2.0 < acc.epsilon(t + 1)
    (881, True)
    """

    def __init__(
        self,
        sampling: Sampling,
        cohort_size: int,
        population: int,
        noise_multiplier: float,
        delta: float,
    ):
        _refuse_min_separation(sampling)
        if sampling not in SAMPLING_SCHEMES:
            raise ValueError(f"sampling must be one of {SAMPLING_SCHEMES}, got {sampling!r}")
        self.sampling = sampling
        self.cohort_size, self.population = _check_cohort(cohort_size, population)
        self.noise_multiplier = checks.check_positive("noise_multiplier", noise_multiplier)
        self.delta = checks.check_delta(delta)
        self._cache: dict[tuple[int, str], PrivacyGuarantee] = {}

    def __repr__(self) -> str:
        return (
            f"RunAccountant(sampling={self.sampling!r}, cohort_size={self.cohort_size}, "
            f"population={self.population}, noise_multiplier={self.noise_multiplier}, "
            f"delta={self.delta})"
        )

    def guarantee(self, rounds: int, accountant: AccountantName = "rdp") -> PrivacyGuarantee:
        """The full :class:`PrivacyGuarantee` after ``rounds`` rounds (cached)."""
        key = (checks.check_integer("rounds", rounds), accountant)
        if key not in self._cache:
            self._cache[key] = epsilon(
                self.noise_multiplier,
                self.cohort_size,
                self.population,
                key[0],
                self.delta,
                self.sampling,
                accountant,
            )
        return self._cache[key]

    def epsilon(self, rounds: int, accountant: AccountantName = "rdp") -> float:
        """ε after ``rounds`` rounds (cached per ``(rounds, accountant)``)."""
        return self.guarantee(rounds, accountant).epsilon

    def pld_feasible(self, rounds: int) -> bool:
        """Whether the PLD accountant runs for ``rounds`` rounds of this run: its sampling
        supports PLD and :func:`pld_cost` at (z, q = S/K, T) is within :data:`MAX_PLD_CELLS`
        (else ``epsilon(rounds, "pld")`` raises :class:`PldRefusedError`)."""
        return supports(self.sampling, "pld") and pld_feasible(
            self.noise_multiplier,
            self.cohort_size / self.population,
            checks.check_integer("rounds", rounds),
        )

    def max_rounds_within(
        self, max_epsilon: float, accountant: AccountantName = "rdp", max_rounds: int = 10_000_000
    ) -> int:
        """Largest T ≤ ``max_rounds`` with ε(T) ≤ ``max_epsilon`` (0 if one round exceeds it).

        Exponential search for a bracket, then bisection, on the accountant's own
        ε(T) (non-decreasing in T): about 2·log2(T) evaluations, well under a second
        for RDP. For PLD the search starts from the RDP answer (ε_PLD ≤ ε_RDP), which
        leaves about log2(T) PLD evaluations: seconds to a minute for T in the
        thousands.

        Args:
            max_epsilon: the ε budget, > 0.
            accountant: ``"rdp"`` or ``"pld"``.
            max_rounds: upper end of the search.

        Returns:
            The number of rounds a run may train before exceeding the budget.
        """
        budget = checks.check_positive("max_epsilon", max_epsilon)
        limit = checks.check_integer("max_rounds", max_rounds)
        _check_method(self.sampling, accountant)

        def within(rounds: int) -> bool:
            return self.epsilon(rounds, accountant) <= budget

        good = self.max_rounds_within(budget, "rdp", limit) if accountant == "pld" else 0
        bad = min(max(1, 2 * good), limit)
        while bad > good and within(bad):  # exponential search: ε(good) ≤ budget
            good, bad = bad, min(2 * bad, limit)
        if good == limit:
            return limit
        while bad - good > 1:  # bisection: ε(good) ≤ budget < ε(bad)
            middle = (good + bad) // 2
            if within(middle):
                good = middle
            else:
                bad = middle
        return good
