"""Federated rounds across processes (hosts) with JAX's multi-process runtime.

Every process runs the same program (multi-controller SPMD). One round::

    distributed.initialize("10.0.0.1:1234", num_processes=4, process_id=rank)  # first JAX call
    mesh = distributed.client_mesh()                     # all devices of all processes
    executor = executors.sharded(chunk_size=k, mesh=mesh)
    step = round_lib.make_round_step(..., executor)
    slots = sampler.num_slots(executor.client_multiple)  # same sampler and seed everywhere
    stream = CohortStream(dataset, sampler, ..., client_multiple=executor.client_multiple,
                          process_slots=distributed.process_client_indices(slots, mesh))
    state = distributed.replicate(round_lib.init_server_state(params, opt), mesh)
    for r in range(rounds):
        local = stream.block(r)                          # only this process's clients
        block = distributed.global_cohort(local, mesh, slots)
        state, metrics = step(state, block, distributed.replicate(key_r, mesh))

Each process packs only its own clients; :func:`global_cohort` assembles the global
cohort array from the process-local parts (``jax.make_array_from_process_local_data``),
sharded over the ``"clients"`` axis. The round step sums the clipped deltas on each
device, sums them (``psum``) across all devices of all processes, and adds the noise **once**, from
one key, after the cross-device sum: every process computes the same noise, so the noisy
sum (hence the new server state) is identical, replicated, on every device.

On CPU the cross-process collectives use gloo (set before initialization, see
:func:`initialize`); on GPU NCCL and on TPU ICI/DCN need no setting.

Faults: :func:`check_same_run` refuses, at start, a process whose config or code differs
from its peers'; :func:`lost_process` tells a failed collective (a peer died: its
connections closed) from other errors, for the trainer's :class:`ProcessLostError`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import pathlib
import re
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

CLIENTS_AXIS = "clients"
PyTree = Any
T = TypeVar("T")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids=None,
    cpu_collectives: str = "gloo",
    **kwargs,
) -> None:
    """Joins this process to the JAX cluster; call it before any other JAX function.

    Args:
        coordinator_address: ``"host:port"`` of process 0 (it runs the coordinator there).
            ``None`` lets JAX detect the cluster (Cloud TPU pods, SLURM, Open MPI, ...).
        num_processes: total number of processes (``None``: detected).
        process_id: this process's rank in ``[0, num_processes)`` (``None``: detected).
        local_device_ids: restrict this process to some local devices (e.g. one GPU per
            process).
        cpu_collectives: cross-process collectives of CPU devices (``"gloo"`` or
            ``"mpi"``); ignored by GPU and TPU devices.
        **kwargs: passed to ``jax.distributed.initialize`` (e.g. ``initialization_timeout``).
    """
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id, local_device_ids=local_device_ids, **kwargs
    )


class ProcessLostError(RuntimeError):
    """A collective across the processes of a run failed: a process died (killed, crashed,
    preempted) or lost its connection. The others stop; restart all to resume."""


def lost_process(error: BaseException) -> bool:
    """Whether ``error`` is the failure of a cross-process collective of a multi-process run
    (XLA's runtime errors, which gloo's ``Connection reset by peer`` arrives as: a
    ``ValueError`` whose message starts with a status code such as ``UNKNOWN:``)."""
    if jax.process_count() == 1:
        return False
    return isinstance(error, jax.errors.JaxRuntimeError) or (
        isinstance(error, ValueError) and re.match(r"[A-Z_]+: ", str(error)) is not None
    )


def client_mesh(devices=None) -> jax.sharding.Mesh:
    """The 1-D ``"clients"`` mesh over every device of every process (Auto axis type)."""
    if devices is not None:
        return jax.sharding.Mesh(
            np.asarray(devices), (CLIENTS_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
        )
    return jax.make_mesh(
        (jax.device_count(),), (CLIENTS_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )


def _client_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(CLIENTS_AXIS))


def process_client_indices(num_slots: int, mesh: jax.sharding.Mesh) -> np.ndarray:
    """Global client slots whose data this process provides, increasing (int64).

    The slots held by this process's devices under the ``"clients"`` sharding; pack these
    clients, in this order, and pass them to :func:`global_cohort`.
    """
    sharding = _client_sharding(mesh)
    if num_slots % mesh.shape[CLIENTS_AXIS]:
        raise ValueError(
            f"{num_slots} client slots do not split over "
            f"{mesh.shape[CLIENTS_AXIS]} devices: use a multiple of the "
            "executor's client_multiple (sampler.num_slots)."
        )
    slots: set[int] = set()
    for index in sharding.addressable_devices_indices_map((num_slots,)).values():
        slots.update(range(num_slots)[index[0]])  # type: ignore[index]
    return np.asarray(sorted(slots), np.int64)


def global_cohort(local_block: PyTree, mesh: jax.sharding.Mesh, num_slots: int) -> PyTree:
    """The global cohort block, sharded over ``"clients"``, from this process's clients.

    Args:
        local_block: a cohort block (docs/CONTRACTS.md) holding exactly the clients of
            :func:`process_client_indices` ``(num_slots, mesh)``, in that order (numpy).
        mesh: the ``"clients"`` mesh.
        num_slots: global number of client slots.

    Returns:
        The same tree of global ``jax.Array``s with leading axis ``num_slots``.
    """
    expected = len(process_client_indices(num_slots, mesh))
    got = {np.shape(x)[0] for x in jax.tree.leaves(local_block)}
    if got != {expected}:
        raise ValueError(
            f"process {jax.process_index()} must provide {expected} client "
            f"slots (process_client_indices), got leading sizes {sorted(got)}."
        )
    sharding = _client_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            sharding, np.asarray(x), (num_slots,) + np.shape(x)[1:]
        ),
        local_block,
    )


def replicate(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
    """Puts ``tree`` (the same values on every process) on every device, replicated.

    Use it for the server state and the round key. PRNG key arrays are supported.
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    return place(tree, jax.tree.map(lambda _: sharding, tree))


def place(tree: PyTree, shardings: PyTree) -> PyTree:
    """Puts ``tree`` (the same values on every process) on the devices as ``shardings`` (a
    pytree of shardings like ``tree``, e.g. :func:`fl_dp_asr.fl.round.server_state_shardings`)
    says: each device gets its own part. PRNG key arrays are supported."""

    def put(x, sharding):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            data = put(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def to_host(tree: PyTree) -> PyTree:
    """numpy copies of a tree of global arrays.

    Replicated arrays (the server state, the metrics) are read from a local device; sharded
    ones are gathered from all processes, which then must all call this function.
    """
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def chief_first(fn: Callable[[], T]) -> T:
    """``fn()`` on process 0 first, then, after a barrier, on the other processes.

    For work whose first call writes what later calls read (preparing a TFDS dataset, an
    index cache) in a shared directory. With one process it is just ``fn()``.
    """
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    if jax.process_index() == 0:
        result = fn()
    multihost_utils.sync_global_devices("fl_dp_asr.distributed.chief_first")
    if jax.process_index() != 0:
        result = fn()
    return result


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any process (a collective: all call it).

    Lets all processes stop at the same round when a signal reached only some of them.
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def code_version(*packages: str) -> dict[str, str]:
    """What code this process runs: jax's and fl_dp_asr's versions and, per package name in
    ``packages``, a digest of its ``.py`` sources (an edited file changes it)."""
    version = {"jax": jax.__version__, "fl_dp_asr": importlib.metadata.version("fl_dp_asr")}
    for name in packages:
        root = pathlib.Path(str(importlib.import_module(name).__file__)).parent
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        version[f"{name} sources"] = digest.hexdigest()[:16]
    return version


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` for the nested dicts of ``tree``."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {
        key: value
        for name, sub in tree.items()
        for key, value in _flat(sub, f"{prefix}.{name}" if prefix else str(name)).items()
    }


def check_same_run(fingerprint: dict[str, Any]) -> None:
    """Refuses a process started with another run than its peers (a collective: every
    process calls it, after :func:`initialize`).

    Every process all-gathers every process's ``fingerprint`` (a JSON-serializable dict:
    the config, :func:`code_version`) and raises the same ValueError, naming the processes
    and the keys that differ from process 0's, when any differs. One process: nothing.
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    blob = np.frombuffer(json.dumps(fingerprint, sort_keys=True, default=repr).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(blob.size)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: blob.size] = blob
    rows = np.asarray(multihost_utils.process_allgather(padded))
    runs = [_flat(json.loads(bytes(row[:size]))) for row, size in zip(rows, sizes)]
    differences = []
    for rank, run in enumerate(runs[1:], start=1):
        keys = sorted(k for k in runs[0].keys() | run.keys() if runs[0].get(k) != run.get(k))
        differences += [
            f"{key}: {runs[0].get(key)!r} on process 0, {run.get(key)!r} on process {rank}"
            for key in keys[:5]
        ]
    if differences:
        raise ValueError(
            "the processes of this run were started with different configs or "
            "code: " + "; ".join(differences) + ". Start every process with the "
            "same config and the same installed code."
        )
