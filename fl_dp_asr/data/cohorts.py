"""Cohort blocks by round: sample → pack → pad, in one place.

:class:`CohortStream` maps a round index to its packed cohort block (docs/CONTRACTS.md): the
sampler draws the round's users, :func:`~fl_dp_asr.data.federated.pack_cohort` reads and
packs their local batches, and the block gets ``sampler.num_slots(client_multiple)`` client
slots (the sampled users first, then padding clients with ``client_mask = 0``), so every
round of a run has the same client axis and the round step compiles once per length bucket.
The sampled users are packed largest first (``pack_cohort(largest_first=True)``): the
``vectorized`` executor trains neighbouring slots together, and each local step of a chunk
runs on the smallest cut of its batch that holds every client's real data
(:class:`~fl_dp_asr.data.PaddingBuckets`), so similar neighbours waste less compute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from fl_dp_asr.data.federated import FederatedDataset, LengthBuckets, Tokenize, pack_cohort
from fl_dp_asr.data.layouts import SAMPLE_RATE

CohortBlock = dict[str, Any]


class Sampler(Protocol):
    """What a stream needs of a cohort sampler (e.g. :mod:`fl_dp_asr.fl.samplers`)."""

    def sample(self, round_index: int) -> np.ndarray:
        """Sorted indices into the population (``FederatedDataset.users``) of a round."""

    def num_slots(self, multiple: int = 1) -> int:
        """Client slots that hold any cohort, a multiple of ``multiple``."""


@dataclasses.dataclass(frozen=True)
class CohortStream:
    """The cohort block of every round of a federated run.

    Attributes:
        dataset: the population (users = clients).
        sampler: draws each round's users.
        tokenize: transcript → int32 token ids.
        buckets: padded lengths (the smallest bucket holding the cohort's longest item).
        local_steps: local steps per client.
        batch_size: utterances per local batch.
        seed: experiment seed (fixes each client's local data with the round and user id).
        client_multiple: the executor's ``client_multiple``; the block's client slots are
            ``sampler.num_slots(client_multiple)``.
        max_batch_seconds: also cap a local batch's audio (seconds); ``None``: no cap.
        max_local_epochs: passes over a client's data at most; ``None``: cycle until
            ``local_steps``.
        process_slots: pack only these client slots, in this order (this process's part of a
            multi-process cohort); ``None``: all slots.
    """

    dataset: FederatedDataset
    sampler: Sampler
    tokenize: Tokenize
    buckets: LengthBuckets
    local_steps: int
    batch_size: int
    seed: int
    client_multiple: int = 1
    max_batch_seconds: float | None = None
    max_local_epochs: int | None = None
    process_slots: Sequence[int] | None = None

    @property
    def num_slots(self) -> int:
        """Client slots of every block (real and padding clients)."""
        return self.sampler.num_slots(self.client_multiple)

    def block(self, round_index: int) -> CohortBlock:
        """The cohort block of round ``round_index`` (numpy; leading axis = client slots)."""
        users = [self.dataset.users[i] for i in self.sampler.sample(round_index)]
        return pack_cohort(
            self.dataset,
            users,
            tokenize=self.tokenize,
            local_steps=self.local_steps,
            batch_size=self.batch_size,
            buckets=self.buckets,
            seed=self.seed,
            round_index=round_index,
            num_clients=self.num_slots,
            max_batch_seconds=self.max_batch_seconds,
            max_local_epochs=self.max_local_epochs,
            keep=self.process_slots,
            largest_first=True,
        )

    def blocks(self, start: int, stop: int) -> Iterator[tuple[int, CohortBlock]]:
        """``(round, block)`` for rounds ``start .. stop - 1``."""
        for round_index in range(start, stop):
            yield round_index, self.block(round_index)


def cohort_summary(block: Mapping[str, Any]) -> dict[str, float]:
    """Host-side counts of a packed cohort block.

    Returns:
        ``clients`` (real), ``steps`` (real local steps), ``utterances``, ``audio_seconds``,
        ``mean_steps`` (real steps per real client) and the fractions of computed local
        steps and utterance rows that are real (``real_step_fraction``,
        ``real_utterance_fraction``: padding costs compute).
    """
    batches = block["batches"]
    clients = float(np.sum(block["client_mask"]))
    steps = float(np.sum(block["step_mask"]))
    return {
        "clients": clients,
        "steps": steps,
        "utterances": float(np.sum(batches["mask"])),
        "audio_seconds": float(np.sum(batches["audio_lengths"]) / SAMPLE_RATE),
        "mean_steps": steps / max(clients, 1.0),
        "real_step_fraction": float(np.mean(block["step_mask"])),
        "real_utterance_fraction": float(np.mean(batches["mask"])),
    }
