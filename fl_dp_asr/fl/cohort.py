"""Cohort sampling from a population, and padding of cohort blocks.

Sampling happens on the host with numpy, deterministically from ``(seed, round)``, so a
resumed run draws the same cohorts. The privacy accountant must match the sampler
(``fl_dp_asr.dp.accounting``): ``"fixed"`` ↔ sampling S of K users without
replacement, ``"poisson"`` ↔ every user independently with probability q.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class Cohort(NamedTuple):
    """A sampled cohort, padded to a static size.

    Attributes:
        user_indices: int64 ``[max_cohort]`` indices into the population (0 for padding).
        mask: float32 ``[max_cohort]``, 1.0 for a sampled user, 0.0 for padding.
    """
    user_indices: np.ndarray
    mask: np.ndarray

    @property
    def size(self) -> int:
        """Number of real (sampled) users."""
        return int(self.mask.sum())


def _round_rng(seed: int, round_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, round_index]))


def sample_fixed(population: int, cohort_size: int, seed: int, round_index: int) -> Cohort:
    """Samples ``cohort_size`` distinct users uniformly from ``range(population)``.

    Args:
        population: K, number of users (≥ cohort_size).
        cohort_size: S.
        seed: experiment seed.
        round_index: round number; the draw is a pure function of (seed, round).
    """
    if not 1 <= cohort_size <= population:
        raise ValueError(
            f"cohort_size={cohort_size} must be in [1, population={population}].")
    users = _round_rng(seed, round_index).choice(population, cohort_size, replace=False)
    return Cohort(np.sort(users), np.ones(cohort_size, np.float32))


def sample_poisson(population: int, sampling_rate: float, max_cohort: int, seed: int,
                   round_index: int) -> Cohort:
    """Poisson sampling: every user joins independently with probability q.

    The cohort is padded to the static ``max_cohort``. Truncating a larger draw would break
    the Poisson privacy analysis, so that case raises; choose ``max_cohort`` with
    :func:`poisson_max_cohort`.

    Args:
        population: K.
        sampling_rate: q in (0, 1].
        max_cohort: static padded size.
        seed: experiment seed.
        round_index: round number.
    """
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling_rate={sampling_rate} must be in (0, 1].")
    rng = _round_rng(seed, round_index)
    # Binomial count then a uniform subset of that size: the same law as K coin flips,
    # in O(count) memory for populations of millions.
    count = int(rng.binomial(population, sampling_rate))
    if count > max_cohort:
        raise RuntimeError(
            f"round {round_index}: Poisson sampling drew {count} users, more than "
            f"max_cohort={max_cohort}; raise max_cohort (see poisson_max_cohort).")
    users = np.zeros(max_cohort, np.int64)
    users[:count] = np.sort(rng.choice(population, count, replace=False))
    mask = (np.arange(max_cohort) < count).astype(np.float32)
    return Cohort(users, mask)


def poisson_max_cohort(population: int, sampling_rate: float, num_stddev: float = 6.0) -> int:
    """A static cohort size exceeded with negligible probability: mean + k·std."""
    mean = population * sampling_rate
    std = np.sqrt(population * sampling_rate * (1.0 - sampling_rate))
    return int(min(population, np.ceil(mean + num_stddev * std + 1)))


def pad_clients(cohort_block: dict[str, Any], multiple: int) -> dict[str, Any]:
    """Pads the client axis of a cohort block to a multiple of ``multiple``.

    Padding clients are zeros with ``client_mask = 0`` (and ``step_mask = 0``), so they
    contribute exactly nothing. Works on numpy and jax arrays, inside ``jit`` too.
    """
    num_clients = cohort_block["client_mask"].shape[0]
    extra = -num_clients % multiple
    if extra == 0:
        return cohort_block

    def pad(x):
        return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1))

    return jax.tree.map(pad, cohort_block)


def num_clients(cohort_block: dict[str, Any]) -> int:
    """Static number of client slots (real and padding) in a cohort block."""
    return cohort_block["client_mask"].shape[0]
