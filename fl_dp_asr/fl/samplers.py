"""Cohort samplers: who trains in a round, and the privacy analysis that goes with it.

A sampler is a frozen value (jax_privacy's ``batch_selection``) that owns everything that
follows from the sampling scheme, so the cohorts drawn and the ε reported cannot disagree:

* ``sample(round) -> users``: sorted indices into the population, a pure function of
    ``(seed, round)`` (numpy, on the host), so a resumed run draws the same cohorts;
* ``expected_size``: S, the divisor of the round's sum (Poisson: q·K);
* ``num_slots(multiple)``: the static number of client slots of a cohort block, the
    largest cohort rounded up to a multiple of the executor's ``client_multiple``;
* ``dp_event(z, rounds)`` and ``accountant(z, delta)``: the matching privacy analysis
    (:mod:`fl_dp_asr.dp.accounting`).

Two schemes for the Gaussian mechanism with amplification by sampling:
:class:`FixedSizeSampler` (S of K users without replacement; replace-one-user neighbours)
and :class:`PoissonSampler` (every user independently with probability q = S/K;
add-or-remove-one-user neighbours). One for correlated noise (DP-FTRL,
:mod:`fl_dp_asr.dp.correlated`): :class:`CyclicSampler` (b fixed groups, round t draws from
group t mod b, so a user takes part at most once every b rounds; zero-out-one-user
neighbours, no amplification claimed).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import ClassVar, cast

import dp_accounting
import numpy as np

from fl_dp_asr.dp import accounting

SAMPLERS = accounting.SAMPLING_SCHEMES  # samplers of the Gaussian mechanism
MIN_SEPARATION_SAMPLERS = accounting.MIN_SEPARATION_SAMPLING  # samplers of correlated noise


def _round_rng(seed: int, round_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, round_index]))


@dataclasses.dataclass(frozen=True)
class CohortSampler(abc.ABC):
    """What both samplers share. Use :class:`FixedSizeSampler` or :class:`PoissonSampler`.

    Attributes:
        population: K, number of users that can be sampled.
        cohort_size: S, users per round (Poisson: the expected number).
        seed: experiment seed; with the round index it fixes the draw.
    """

    population: int
    cohort_size: int
    seed: int = 0
    name: ClassVar[str]  # the scheme's name in dp.accounting ("fixed" or "poisson")

    def __post_init__(self):
        if not 1 <= self.cohort_size <= self.population:
            raise ValueError(
                f"cohort_size={self.cohort_size} must be in [1, population="
                f"{self.population}] (the number of training users)."
            )

    @property
    def expected_size(self) -> float:
        """S, the expected number of users per round (the round divides its sum by it)."""
        return float(self.cohort_size)

    @property
    @abc.abstractmethod
    def max_size(self) -> int:
        """The most users a round can hold."""

    @abc.abstractmethod
    def sample(self, round_index: int) -> np.ndarray:
        """Sorted, distinct int64 user indices in ``[0, population)`` of round ``round_index``."""

    def num_slots(self, multiple: int = 1) -> int:
        """Client slots of a cohort block: :attr:`max_size` rounded up to ``multiple``.

        Slots past the sampled users are padding clients (``client_mask = 0``).
        """
        return -(-self.max_size // multiple) * multiple

    @property
    def neighboring_relation(self) -> str:
        """The neighbouring datasets the privacy analysis of this sampler compares."""
        return accounting.NEIGHBORING_RELATIONS[self.name]

    def dp_event(self, noise_multiplier: float, rounds: int) -> dp_accounting.DpEvent:
        """The ``dp_accounting`` event of ``rounds`` rounds with noise multiplier z."""
        return accounting.make_dp_event(
            noise_multiplier,
            self.cohort_size,
            self.population,
            rounds,
            cast(accounting.Sampling, self.name),
        )

    def accountant(self, noise_multiplier: float, delta: float) -> accounting.RunAccountant:
        """The ε accountant of a run that samples with this sampler."""
        return accounting.RunAccountant(
            cast(accounting.Sampling, self.name),
            self.cohort_size,
            self.population,
            noise_multiplier,
            delta,
        )


@dataclasses.dataclass(frozen=True)
class FixedSizeSampler(CohortSampler):
    """``cohort_size`` distinct users drawn uniformly without replacement every round.

    >>> FixedSizeSampler(population=10, cohort_size=3, seed=0).sample(0).tolist()
    [5, 6, 9]
    """

    name: ClassVar[str] = "fixed"

    @property
    def max_size(self) -> int:
        return self.cohort_size

    def sample(self, round_index: int) -> np.ndarray:
        users = _round_rng(self.seed, round_index).choice(
            self.population, self.cohort_size, replace=False
        )
        return np.sort(users)


@dataclasses.dataclass(frozen=True)
class PoissonSampler(CohortSampler):
    """Every user joins a round independently with probability q = cohort_size / population.

    Blocks have room for :attr:`max_size` = mean + ``num_stddev`` standard deviations of
    the binomial count; a larger draw raises (truncating it would break the Poisson
    analysis).

    Attributes:
        num_stddev: head room of :attr:`max_size`, in binomial standard deviations.
    """

    name: ClassVar[str] = "poisson"
    num_stddev: float = 6.0

    @property
    def sampling_rate(self) -> float:
        """q = S / K."""
        return self.cohort_size / self.population

    @property
    def max_size(self) -> int:
        rate = self.sampling_rate
        mean = self.population * rate
        std = np.sqrt(self.population * rate * (1.0 - rate))
        return int(min(self.population, np.ceil(mean + self.num_stddev * std + 1)))

    def sample(self, round_index: int) -> np.ndarray:
        rng = _round_rng(self.seed, round_index)
        # Binomial count then a uniform subset of that size: the same law as K coin flips,
        # in O(count) memory for populations of millions.
        count = int(rng.binomial(self.population, self.sampling_rate))
        if count > self.max_size:
            raise RuntimeError(
                f"round {round_index}: Poisson sampling drew {count} users, more than "
                f"max_size={self.max_size}; raise num_stddev."
            )
        return np.sort(rng.choice(self.population, count, replace=False))


@dataclasses.dataclass(frozen=True)
class CyclicSampler(CohortSampler):
    """Min-separation participation: b fixed groups, round t draws from group t mod b.

    The population is split once into ``min_separation`` = b groups (a permutation seeded by
    ``seed``, group g = every b-th user of it, sizes ⌊K/b⌋ or ⌈K/b⌉); round t draws
    ``cohort_size`` users uniformly without replacement from group t mod b (seeded by
    ``(seed, t)``). A user belongs to one group, so two of their rounds are a multiple of b
    apart: never closer than b, at most ⌈n/b⌉ rounds out of n — the participation the
    correlated-noise accounting assumes (:mod:`fl_dp_asr.dp.correlated`, jax_privacy's
    ``CyclicPoissonSampling`` partition without its amplification). The draw inside a group
    is not part of the privacy analysis (no amplification by sampling is claimed), so
    ε depends on z, n and b only; the neighbouring relation is zero-out-one-user.

    Attributes:
        min_separation: b ≥ 1, rounds between two participations of a user; every group must
            hold a cohort: ``cohort_size ≤ population // min_separation``.

    >>> sampler = CyclicSampler(population=12, cohort_size=2, seed=0, min_separation=3)
    >>> [sampler.sample(t).tolist() for t in range(4)]
    [[9, 10], [3, 8], [1, 7], [4, 10]]
    """

    name: ClassVar[str] = "cyclic"
    min_separation: int = 1

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.min_separation, int) or self.min_separation < 1:
            raise ValueError(f"min_separation={self.min_separation!r} must be an integer >= 1.")
        if self.cohort_size > self.population // self.min_separation:
            raise ValueError(
                f"cohort_size={self.cohort_size} must not exceed population // min_separation"
                f" = {self.population} // {self.min_separation} = "
                f"{self.population // self.min_separation}: each of the {self.min_separation}"
                f" groups must hold a cohort. Lower min_separation or the cohort size."
            )

    @property
    def max_size(self) -> int:
        return self.cohort_size

    @property
    def neighboring_relation(self) -> str:
        return accounting.ZERO_OUT_ONE_USER

    @functools.cached_property
    def _groups(self) -> tuple[np.ndarray, ...]:
        order = np.random.default_rng(np.random.SeedSequence([self.seed])).permutation(
            self.population
        )
        return tuple(np.sort(order[g :: self.min_separation]) for g in range(self.min_separation))

    def group(self, index: int) -> np.ndarray:
        """Sorted users of group ``index`` mod ``min_separation``, fixed by ``seed`` (the
        split is computed once per sampler)."""
        return self._groups[index % self.min_separation].copy()

    def sample(self, round_index: int) -> np.ndarray:
        members = self._groups[round_index % self.min_separation]
        chosen = _round_rng(self.seed, round_index).choice(
            len(members), self.cohort_size, replace=False
        )
        return np.sort(members[chosen])

    def dp_event(
        self, noise_multiplier: float, rounds: int, mechanism=None
    ) -> dp_accounting.DpEvent:
        """The event of ``rounds`` rounds of ``mechanism`` (a
        :class:`~fl_dp_asr.dp.correlated.CorrelatedNoise` with ``min_separation`` ≤ this
        sampler's; ``None``: independent Gaussian noise every round, ``bands=1``)."""
        return self._mechanism(mechanism, rounds).dp_event(noise_multiplier, rounds)

    def accountant(
        self, noise_multiplier: float, delta: float, mechanism=None, rounds: int | None = None
    ):
        """ε during training (``correlated.CorrelatedAccountant``: RunAccountant's interface)
        of ``mechanism`` (``None``: independent Gaussian noise for ``rounds`` rounds, see
        :meth:`dp_event`)."""
        return self._mechanism(mechanism, rounds).accountant(noise_multiplier, delta)

    def _mechanism(self, mechanism, rounds: int | None):
        from fl_dp_asr.dp import correlated  # pylint: disable=import-outside-toplevel

        if mechanism is None:
            if rounds is None:
                raise ValueError(
                    "CyclicSampler.accountant needs the mechanism (a "
                    "CorrelatedNoise, whose rounds bound the run) or rounds"
                )
            mechanism = correlated.CorrelatedNoise.independent(rounds, self.min_separation)
        mechanism.check_sampler(self)
        return mechanism


def make_sampler(
    name: str, population: int, cohort_size: int, seed: int = 0, min_separation: int | None = None
) -> CohortSampler:
    """The sampler named ``name`` (a config string): ``"fixed"``, ``"poisson"`` or
    ``"cyclic"`` (which needs ``min_separation``)."""
    if name == "cyclic":
        if min_separation is None:
            raise ValueError(
                "sampling='cyclic' needs min_separation (b: rounds between two "
                "participations of a user)."
            )
        return CyclicSampler(population, cohort_size, seed, min_separation=min_separation)
    if min_separation is not None:
        raise ValueError(
            f"min_separation={min_separation} is a setting of the 'cyclic' "
            f"sampler; sampling={name!r} draws users in consecutive rounds."
        )
    if name == "fixed":
        return FixedSizeSampler(population, cohort_size, seed)
    if name == "poisson":
        return PoissonSampler(population, cohort_size, seed)
    raise ValueError(f"sampling={name!r}: choose one of {SAMPLERS + MIN_SEPARATION_SAMPLERS}.")
