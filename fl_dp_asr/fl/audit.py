"""Canary clients in a federated run: who takes part, what accumulates, the two estimates.

The canaries (:class:`fl_dp_asr.dp.canaries.Canaries`) are k extra users of the run's own
sampler: a population of K users and k canary clients (ids K … K + k − 1), so Poisson,
fixed-size and cyclic sampling treat them as users (and the accountant counts them).
:class:`CanaryCohorts` splits each draw into the users (packed into the cohort block as
before) and the canaries' 0/1 mask, the block's ``canary_mask`` entry read by the round step
(:mod:`fl_dp_asr.fl.round`), which adds the sampled canaries' updates to the sum before the
noise and returns the cosine of the round's noisy sum with every canary.

Two estimates at the end of a run (Andrew et al., ICLR 2024, arXiv 2302.03098):

* **final model**: the statistic of canary c is cos(θ_0 − θ_T, c) (θ_0 − θ_T: the sum of the
    server's steps, along the clipped deltas Δ = θ_server − θ_client), the adversary sees only
    the final model;
* **all iterates**: the statistic is the maximum over rounds t of cos(noisy sum_t, c), the
    adversary sees every round's release (the paper's statistic for this threat model;
    :class:`AuditTrail` keeps the running maximum, checkpointed with the run).

Each becomes an ε at the run's δ with :func:`fl_dp_asr.dp.canaries.estimate_epsilon`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from fl_dp_asr.dp import DPConfig
from fl_dp_asr.dp.canaries import Canaries, estimate_epsilon
from fl_dp_asr.dp.layout import SAME_LAYOUT, ParamLayout
from fl_dp_asr.fl import samplers
from fl_dp_asr.fl.round import CANARY_MASK

PyTree = Any
VIEWS = ("final_model", "all_iterates")


@dataclasses.dataclass(frozen=True)
class CanaryCohorts:
    """A sampler over ``num_users`` users and the canary clients after them, seen as the
    users it draws (the ``Sampler`` of :class:`fl_dp_asr.data.CohortStream`) and the mask of
    the canaries it draws.

    Attributes:
        sampler: over K + k ids (``population = num_users + canaries``).
        num_users: K; ids K … K + k − 1 are the canaries 0 … k − 1.
    """

    sampler: samplers.CohortSampler
    num_users: int

    def __post_init__(self):
        # The users and the mask of a round come from one draw (O(K) for Poisson sampling
        # over K users): the last few rounds' draws are kept. lru_cache is thread-safe (the
        # stream may pack in a prefetch thread).
        object.__setattr__(self, "_draw", functools.lru_cache(maxsize=4)(self.sampler.sample))

    @property
    def num_canaries(self) -> int:
        return self.sampler.population - self.num_users

    def sample(self, round_index: int) -> np.ndarray:
        """The users of round ``round_index`` (sorted ids < K)."""
        ids = self._draw(round_index)  # type: ignore[attr-defined]
        return ids[ids < self.num_users]

    def num_slots(self, multiple: int = 1) -> int:
        """Client slots of a block: those of the sampler (canaries take none)."""
        return self.sampler.num_slots(multiple)

    def canary_mask(self, round_index: int) -> np.ndarray:
        """float32 ``[k]``: 1.0 for the canaries drawn in round ``round_index``."""
        ids = self._draw(round_index)  # type: ignore[attr-defined]
        mask = np.zeros(self.num_canaries, np.float32)
        mask[ids[ids >= self.num_users] - self.num_users] = 1.0
        return mask

    def with_masks(
        self, blocks: Iterator[tuple[int, dict[str, Any]]]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(round, block)`` pairs with the round's ``canary_mask`` added to each block."""
        for round_index, block in blocks:
            yield round_index, block | {CANARY_MASK: self.canary_mask(round_index)}


def canary_sampler(
    name: str,
    num_users: int,
    canaries: Canaries,
    cohort_size: int,
    seed: int = 0,
    min_separation: int | None = None,
) -> CanaryCohorts:
    """The run's sampler (:func:`fl_dp_asr.fl.samplers.make_sampler`) over K users and the
    inserted canaries."""
    sampler = samplers.make_sampler(
        name, num_users + canaries.inserted, cohort_size, seed, min_separation
    )
    return CanaryCohorts(sampler, num_users)


@dataclasses.dataclass
class AuditTrail:
    """The all-iterates statistic so far: per canary (inserted, then held out) the maximum
    over the rounds run of cos(noisy sum_t, canary), float64 ``[k + m]`` (−∞: no round yet).

    Andrew et al. (ICLR 2024), Sec. 4: with every iterate visible the adversary scores a
    canary by its largest cosine with any round's update.
    """

    max_cosines: np.ndarray

    @classmethod
    def start(cls, canaries: Canaries) -> AuditTrail:
        return cls(np.full(canaries.total, -np.inf))

    def add(self, cosines: np.ndarray) -> None:
        """One round's ``canary_cosines`` (``[k + m]``, from the round step's metrics)."""
        self.max_cosines = np.maximum(self.max_cosines, np.asarray(cosines, np.float64))

    def to_meta(self, canaries: Canaries) -> dict[str, Any]:
        """JSON for a checkpoint's meta (float64 → JSON → float64 is exact)."""
        return {
            "canaries": dataclasses.asdict(canaries),
            "max_cosines": [float(x) for x in self.max_cosines],
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None, canaries: Canaries, where: str) -> AuditTrail:
        """The trail saved by :meth:`to_meta`; raises ValueError (naming ``where``) when the
        checkpoint was written with other canaries (or none)."""
        saved = None if meta is None else meta["canaries"]
        if saved != dataclasses.asdict(canaries):
            raise ValueError(
                f"{where} was trained with the canaries {saved}, but this config "
                f"inserts {dataclasses.asdict(canaries)}: keep audit.canaries, "
                "audit.heldout and audit.seed of its first round, or start a new "
                "work directory."
            )
        return cls(np.asarray(meta["max_cosines"], np.float64))  # type: ignore[index]


def final_model_cosines(
    canaries: Canaries,
    initial: PyTree,
    final: PyTree,
    dp: DPConfig,
    layout: ParamLayout = SAME_LAYOUT,
) -> np.ndarray:
    """cos(θ_0 − θ_T, canary c) for every canary, ``[k + m]`` (params in ``layout``)."""

    def cosines(initial, final):
        moved = jax.tree.map(lambda a, b: (a - b).astype(np.float32), initial, final)
        return canaries.cosines(moved, dp, layout)

    return np.asarray(jax.jit(cosines)(initial, final))


def estimates(
    canaries: Canaries, trail: AuditTrail, final_cosines: np.ndarray, delta: float
) -> dict[str, float]:
    """Both views' ε at δ: ``epsilon_<view>``, ``..._ci_low``, ``..._ci_high`` (95 %),
    ``..._lower_bound`` (jax_privacy's), for ``view`` in :data:`VIEWS`."""
    out: dict[str, float] = {}
    k = canaries.inserted
    for view, scores in zip(VIEWS, (np.asarray(final_cosines), trail.max_cosines)):
        estimate = estimate_epsilon(scores[:k], scores[k:], delta)
        out |= {
            f"epsilon_{view}": estimate.epsilon,
            f"epsilon_{view}_ci_low": estimate.ci_low,
            f"epsilon_{view}_ci_high": estimate.ci_high,
            f"epsilon_{view}_lower_bound": estimate.lower_bound,
        }
    return out
