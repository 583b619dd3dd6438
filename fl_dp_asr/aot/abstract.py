"""``jax.ShapeDtypeStruct`` twins (with shardings) of what a round step takes.

Lowering a round step with these places nothing on a device, so it compiles for devices that
are not attached (:mod:`fl_dp_asr.aot.targets`). Shardings follow the round step's: the
server state and the key replicated over the client mesh, the cohort block's client axis
split over it (:mod:`fl_dp_asr.fl.executors`, ``sharded``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fl_dp_asr.fl import distributed


def replicated(mesh: Mesh | None) -> NamedSharding | None:
    """Every device of ``mesh`` holds the whole value (None: no mesh, no sharding)."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec())


def split_over_clients(mesh: Mesh | None) -> NamedSharding | None:
    """The leading (client) axis split over the mesh's ``"clients"`` axis."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec(distributed.CLIENTS_AXIS))


def key(mesh: Mesh | None, impl: str | None = None) -> jax.ShapeDtypeStruct:
    """A PRNG key (``jax.random.key``'s dtype), replicated."""
    dtype = jax.eval_shape(lambda: jax.random.key(0, impl=impl)).dtype
    return jax.ShapeDtypeStruct((), dtype, sharding=replicated(mesh))


def cohort_block(
    num_slots: int,
    local_steps: int,
    batch_size: int,
    max_samples: int,
    max_label_len: int,
    mesh: Mesh | None,
) -> dict[str, Any]:
    """A cohort block of docs/CONTRACTS.md, ``[num_slots, local_steps, batch_size, ...]``
    (audio int16 of ``max_samples`` samples, labels of ``max_label_len`` tokens), its client
    axis split over ``mesh``."""
    shape = (num_slots, local_steps, batch_size)
    block = {
        "batches": {
            "audio": ((*shape, max_samples), np.int16),
            "audio_lengths": (shape, np.int32),
            "labels": ((*shape, max_label_len), np.int32),
            "label_lengths": (shape, np.int32),
            "mask": (shape, np.float32),
        },
        "step_mask": (shape[:2], np.float32),
        "client_mask": (shape[:1], np.float32),
    }
    sharding = split_over_clients(mesh)
    return jax.tree.map(
        lambda spec: jax.ShapeDtypeStruct(*spec, sharding=sharding),
        block,
        is_leaf=lambda x: isinstance(x, tuple),
    )
