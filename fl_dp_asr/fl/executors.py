"""How the clients of a round are run: backends of the round step (FedJAX's for_each_client).

An :class:`Executor` sums a :class:`~fl_dp_asr.fl.contribution.Contribution` over the client
slots of a cohort block. All executors have one signature and give the same numbers (one
shared test suite, ``tests/fl/test_round.py``); the round step does not know which one runs:

    aggregate(contribution, broadcast, cohort_block, keys) -> (Σ clipped deltas, RoundSums)

* :func:`vectorized` (default): ``lax.scan`` over chunks of clients, ``vmap`` inside a
  chunk. Memory is O(chunk_size × params) whatever the cohort size.
* :func:`sharded`: the client axis split over the devices of a 1-D ``"clients"`` mesh with
  ``jax.shard_map``, :func:`vectorized` on each device, then one ``psum``.
* :func:`sequential`: a Python loop over a jitted one-client function, the reference
  scheme (the paper's reference code works this way) and our baseline.

The block's client axis must be a multiple of ``executor.client_multiple``; the round step
pads it with :func:`pad_clients` (padding clients contribute exactly zero).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from fl_dp_asr.fl import distributed
from fl_dp_asr.fl.contribution import Broadcast, Contribution, RoundSums

PyTree = Any
CohortBlock = dict[str, Any]
Aggregate = Callable[[Contribution, Broadcast, CohortBlock, jax.Array], tuple[PyTree, RoundSums]]
EXECUTORS = ("vectorized", "sequential", "sharded")


class Executor(NamedTuple):
    """A backend of the round step.

    Attributes:
        aggregate: ``(contribution, broadcast, cohort_block, keys) -> (total, RoundSums)``:
            the sum over all client slots of ``contribution.run(broadcast, client, key)``;
            ``broadcast`` (:class:`~fl_dp_asr.fl.contribution.Broadcast`: server params and
            clip bounds) is the same for every client, ``keys`` is ``[slots]``.
        client_multiple: the number of client slots must be a multiple of this.
        traceable: ``aggregate`` can run inside ``jax.jit`` (then the whole round step is
            one jitted function); ``False`` for a host loop.
        mesh: the client mesh the cohort is split over (``sharded``), else ``None``; the
            round step's own device values are replicated over it.
    """

    aggregate: Aggregate
    client_multiple: int
    traceable: bool
    mesh: jax.sharding.Mesh | None = None


# ------------------------------------------------------------------ cohort blocks


def num_slots(cohort_block: CohortBlock) -> int:
    """Static number of client slots (real and padding) of a cohort block."""
    return cohort_block["client_mask"].shape[0]


def pad_clients(cohort_block: CohortBlock, multiple: int) -> CohortBlock:
    """Pads the client axis of a cohort block to a multiple of ``multiple``.

    Padding clients are zeros with ``client_mask = 0`` (and ``step_mask = 0``), so they
    contribute exactly nothing. Works on numpy and jax arrays, inside ``jit`` too; a block
    that already has a multiple of ``multiple`` slots is returned as is.
    """
    extra = -num_slots(cohort_block) % multiple
    if extra == 0:
        return cohort_block
    return jax.tree.map(lambda x: jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1)), cohort_block)


def _zero_sums(
    contribution: Contribution, broadcast: Broadcast, cohort_block: CohortBlock, keys: jax.Array
) -> tuple[PyTree, RoundSums]:
    """Zero accumulators with the shapes/dtypes of one client's contribution."""
    one = jax.tree.map(lambda x: x[0], (cohort_block, keys))
    shapes = jax.eval_shape(contribution.run, broadcast, *one)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


# ------------------------------------------------------------------ vectorized


def _sum_in_chunks(
    contribution: Contribution,
    broadcast: Broadcast,
    cohort_block: CohortBlock,
    keys: jax.Array,
    chunk_size: int,
) -> tuple[PyTree, RoundSums]:
    """Σ over clients: ``lax.scan`` over chunks of ``chunk_size`` clients, ``vmap`` inside.

    Client deltas are summed chunk by chunk and never materialized together. Clients are
    taken in decreasing number of real local steps (each chunk gathers its own clients), so
    the clients of a chunk take about as many steps; the local steps that no client of a
    chunk takes are skipped (:meth:`ClientUpdate.run_chunk`), and so is a chunk made only
    of padding clients (``lax.cond``).
    """
    num = num_slots(cohort_block)
    if num % chunk_size:
        raise ValueError(f"{num} client slots are not a multiple of chunk_size={chunk_size}.")
    steps = jnp.sum(cohort_block["step_mask"] > 0, axis=1) * (cohort_block["client_mask"] > 0)
    order = jnp.argsort(-steps, stable=True).reshape(num // chunk_size, chunk_size)

    def add_chunk(acc, chunk):
        outputs = contribution.run_chunk(broadcast, *chunk)
        return jax.tree.map(lambda a, x: a + jnp.sum(x, axis=0), acc, outputs)

    def body(acc, chunk_order):
        chunk = jax.tree.map(lambda x: x[chunk_order], (cohort_block, keys))
        has_clients = jnp.any(chunk[0]["client_mask"] > 0)
        return jax.lax.cond(has_clients, add_chunk, lambda acc, _: acc, acc, chunk), None

    init = _zero_sums(contribution, broadcast, cohort_block, keys)
    total, _ = jax.lax.scan(body, init, order)
    return total


def _check_chunk_size(chunk_size: int) -> int:
    """``chunk_size`` as an int ≥ 1 (numpy integers pass; bools and floats do not)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise ValueError(
            f"chunk_size must be an integer (clients per vmap), got "
            f"{chunk_size!r} of type {type(chunk_size).__name__}."
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    return int(chunk_size)


def vectorized(chunk_size: int = 16) -> Executor:
    """Chunked ``vmap`` on one device (the default executor).

    Args:
        chunk_size: clients trained at once (the vmap width), an int ≥ 1; memory grows with
            it, not with the cohort size. Small chunks are fastest on CPU
            (docs/benchmarks.md).

    Raises:
        ValueError: ``chunk_size`` is not an integer (a float, a bool) or is < 1.
    """
    chunk_size = _check_chunk_size(chunk_size)
    return Executor(
        functools.partial(_sum_in_chunks, chunk_size=chunk_size), chunk_size, traceable=True
    )


def sharded(chunk_size: int = 16, mesh: jax.sharding.Mesh | None = None) -> Executor:
    """The client axis split over the devices of ``mesh``; :func:`vectorized` on each.

    Each device sums its own clients, one ``psum`` adds the device sums; the round step
    adds the noise after it, once, from one key (identical on every device).

    Args:
        chunk_size: clients trained at once per device, an int ≥ 1 (as in
            :func:`vectorized`).
        mesh: a 1-D mesh with axis ``"clients"`` (default: every device of every process,
            :func:`fl_dp_asr.fl.distributed.client_mesh`). The cohort needs a multiple of
            ``chunk_size × devices`` client slots.
    """
    chunk_size = _check_chunk_size(chunk_size)
    mesh = mesh or distributed.client_mesh()
    axis = distributed.CLIENTS_AXIS

    def per_device(contribution, broadcast, cohort_block, keys):
        local = _sum_in_chunks(contribution, broadcast, cohort_block, keys, chunk_size)
        return jax.lax.psum(local, axis)

    def aggregate(contribution, broadcast, cohort_block, keys):
        return jax.shard_map(
            functools.partial(per_device, contribution),
            mesh=mesh,
            in_specs=(PartitionSpec(), PartitionSpec(axis), PartitionSpec(axis)),
            out_specs=PartitionSpec(),
            # Local training carries the replicated broadcast into per-device scans; the only
            # cross-device value is the explicit psum above.
            check_vma=False,
        )(broadcast, cohort_block, keys)

    return Executor(aggregate, chunk_size * mesh.shape[axis], traceable=True, mesh=mesh)


# ------------------------------------------------------------------ sequential


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _add_client(contribution: Contribution, acc, broadcast, client, key):
    return jax.tree.map(jnp.add, acc, contribution.run(broadcast, client, key))


def _sum_one_by_one(
    contribution: Contribution, broadcast: Broadcast, cohort_block: CohortBlock, keys: jax.Array
) -> tuple[PyTree, RoundSums]:
    """Σ over clients, one jitted client at a time (summed on the device)."""
    acc = _zero_sums(contribution, broadcast, cohort_block, keys)
    host_block = jax.tree.map(np.asarray, cohort_block)
    for i in range(num_slots(cohort_block)):
        client = jax.tree.map(lambda x: x[i], host_block)
        acc = _add_client(contribution, acc, broadcast, client, keys[i])
    return acc


def sequential() -> Executor:
    """A Python loop over clients, each one jitted alone: the reference scheme."""
    return Executor(_sum_one_by_one, 1, traceable=False)


def make(name: str, *, chunk_size: int = 16, mesh: jax.sharding.Mesh | None = None) -> Executor:
    """The executor named ``name`` (a config string): one of :data:`EXECUTORS`.

    ``chunk_size`` applies to ``vectorized`` and ``sharded``, ``mesh`` to ``sharded``.
    """
    if name == "vectorized":
        return vectorized(chunk_size)
    if name == "sharded":
        return sharded(chunk_size, mesh)
    if name == "sequential":
        return sequential()
    raise ValueError(f"executor={name!r}: choose one of {EXECUTORS}.")
