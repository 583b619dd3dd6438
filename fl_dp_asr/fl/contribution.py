"""One client's contribution to a round: local training, then clip and mask.

A :class:`Contribution` turns ``(what the server broadcasts, one client's block, key)``
into what the round sums over clients: the clipped delta Δ̃ (zero for padding clients and
for clients whose update is NaN/inf, which keeps the sensitivity of the sum at C) and the
client's :class:`RoundSums` (counts, norms and, with adaptive clipping, unclipped bits). Executors
(:mod:`fl_dp_asr.fl.executors`) decide how clients are run; the contribution decides what
one client adds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fl_dp_asr.dp import policy, transforms
from fl_dp_asr.fl.client import ClientMetrics, ClientUpdate

PyTree = Any
ClientBlock = dict[str, Any]


class Broadcast(NamedTuple):
    """What the server sends every client of a round.

    Attributes:
        params: the server parameters θ.
        clip_bounds: the current adaptive clip bounds ``{name: C_{h,t}}`` (float32
            scalars); ``{}`` with fixed clipping.
    """

    params: PyTree
    clip_bounds: dict[str, jax.Array]


class RoundSums(NamedTuple):
    """Per-round sums over clients, accumulated chunk by chunk (float32 scalars).

    One client's own values are 0/1 counts and its norms; summed over the cohort they give
    the round's metrics (divided by the number of kept clients).

    Attributes:
        clients: real clients (``client_mask > 0``).
        dropped: real clients whose delta or loss was NaN/inf (they contribute zero).
        clipped: kept clients whose delta the clipping changed.
        loss: mean local training loss, summed over kept clients.
        steps: real local steps, summed over kept clients.
        delta_norm: ‖Δ‖ before clipping, summed over kept clients.
        layer_norms: ``{layer name: ‖Δ_h‖}`` before clipping, summed over kept clients.
        unclipped: ``{bound name: Σ_i b_{i,h}}``, the adaptive-clipping bits
            b_{i,h} = 1[‖Δ_{i,h}‖ ≤ C_{h,t}] summed over kept clients (``{}``: fixed).
    """

    clients: jax.Array
    dropped: jax.Array
    clipped: jax.Array
    loss: jax.Array
    steps: jax.Array
    delta_norm: jax.Array
    layer_norms: dict[str, jax.Array]
    unclipped: dict[str, jax.Array]


Finish = Callable[
    [ClientBlock, PyTree, ClientMetrics, dict[str, jax.Array]], tuple[PyTree, RoundSums]
]


class Contribution(NamedTuple):
    """What one client adds to the round's sums: local training, then ``finish``.

    Attributes:
        client_update: the local training (:class:`fl_dp_asr.fl.client.ClientUpdate`).
        finish: ``finish(client_block, delta, metrics, clip_bounds) -> (clipped delta,
            RoundSums)``, the part after local training: clip, then zero the padding and
            non-finite clients.
    """

    client_update: ClientUpdate
    finish: Finish

    def run(
        self, broadcast: Broadcast, client_block: ClientBlock, key: jax.Array
    ) -> tuple[PyTree, RoundSums]:
        """One client: float32 ``(clipped delta, RoundSums)`` (delta shaped like params)."""
        delta, metrics = self.client_update.run(broadcast.params, client_block, key)
        return self.finish(client_block, delta, metrics, broadcast.clip_bounds)

    def run_chunk(
        self, broadcast: Broadcast, clients: ClientBlock, keys: jax.Array
    ) -> tuple[PyTree, RoundSums]:
        """A chunk of clients (leading axis ``[chunk]`` on every input and output leaf)."""
        deltas, metrics = self.client_update.run_chunk(broadcast.params, clients, keys)
        return jax.vmap(self.finish, in_axes=(0, 0, 0, None))(
            clients, deltas, metrics, broadcast.clip_bounds
        )


def make_contribution(client_update: ClientUpdate, clip: policy.ClientClip) -> Contribution:
    """The contribution of a client: ``client_update``, then ``clip`` and the masks.

    Args:
        client_update: local training.
        clip: ``clip(delta, clip_bounds) -> (clipped, ClipStats, unclipped bits)``,
            e.g. ``DPConfig.client_clip()``.

    Returns:
        A :class:`Contribution`. A client counts as *kept* when it is real
        (``client_mask > 0``) and its delta and loss are finite; any other client adds an
        exactly zero delta and zero sums (``dropped`` counts the real, non-finite ones).
    """

    def finish(client, delta, metrics, clip_bounds):
        clipped, stats, bits = clip(delta, clip_bounds)
        finite = transforms.tree_is_finite(delta) & jnp.isfinite(metrics.loss)
        real = client["client_mask"] > 0
        kept = real & finite
        clipped = optax.tree_utils.tree_where(
            kept, clipped, optax.tree_utils.tree_zeros_like(clipped)
        )

        def masked(x):
            return jnp.where(kept, x, 0.0)

        sums = RoundSums(
            clients=real.astype(jnp.float32),
            dropped=(real & ~finite).astype(jnp.float32),
            clipped=kept.astype(jnp.float32) * stats.clipped,
            loss=masked(metrics.loss),
            steps=masked(metrics.steps),
            delta_norm=masked(metrics.delta_norm),
            layer_norms={k: masked(v) for k, v in stats.layer_norms.items()},
            unclipped={k: masked(v) for k, v in bits.items()},
        )
        return jax.tree.map(lambda x: x.astype(jnp.float32), clipped), sums

    return Contribution(client_update, finish)
