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

Two schemes: :class:`FixedSizeSampler` (S of K users without replacement; replace-one-user
neighbours) and :class:`PoissonSampler` (every user independently with probability
q = S/K; add-or-remove-one-user neighbours).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import dp_accounting
import numpy as np

from fl_dp_asr.dp import accounting

SAMPLERS = accounting.SAMPLING_SCHEMES


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
    name: ClassVar[str]   # the scheme's name in dp.accounting ("fixed" or "poisson")

    def __post_init__(self):
        if not 1 <= self.cohort_size <= self.population:
            raise ValueError(f"cohort_size={self.cohort_size} must be in [1, population="
                             f"{self.population}] (the number of training users).")

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
        return accounting.make_dp_event(noise_multiplier, self.cohort_size, self.population,
                                        rounds, self.name)

    def accountant(self, noise_multiplier: float, delta: float) -> accounting.RunAccountant:
        """The ε accountant of a run that samples with this sampler."""
        return accounting.RunAccountant(self.name, self.cohort_size, self.population,
                                        noise_multiplier, delta)


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
        users = _round_rng(self.seed, round_index).choice(self.population, self.cohort_size,
                                                          replace=False)
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
                f"max_size={self.max_size}; raise num_stddev.")
        return np.sort(rng.choice(self.population, count, replace=False))


def make_sampler(name: str, population: int, cohort_size: int, seed: int = 0
                 ) -> CohortSampler:
    """The sampler named ``name`` (a config string): ``"fixed"`` or ``"poisson"``."""
    if name == "fixed":
        return FixedSizeSampler(population, cohort_size, seed)
    if name == "poisson":
        return PoissonSampler(population, cohort_size, seed)
    raise ValueError(f"sampling={name!r}: choose one of {SAMPLERS}.")
