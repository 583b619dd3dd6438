"""One client's contribution to a round: local training, then clip and mask.

A :class:`Contribution` turns ``(server params, one client's block, key)`` into what the
round sums over clients: the clipped delta Δ̃ (zero for padding clients and for clients
whose update is NaN/inf, which keeps the sensitivity of the sum at C) and the client's
:class:`RoundSums` (counts and norms for the round's metrics). Executors
(:mod:`fl_dp_asr.fl.executors`) decide how clients are run; the contribution decides what
one client adds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fl_dp_asr.dp import transforms
from fl_dp_asr.fl.client import ClientMetrics, ClientUpdate

PyTree = Any
ClientBlock = dict[str, Any]


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
    """
    clients: jax.Array
    dropped: jax.Array
    clipped: jax.Array
    loss: jax.Array
    steps: jax.Array
    delta_norm: jax.Array
    layer_norms: dict[str, jax.Array]


Finish = Callable[[ClientBlock, PyTree, ClientMetrics], tuple[PyTree, RoundSums]]


class Contribution(NamedTuple):
    """What one client adds to the round's sums: local training, then ``finish``.

    Attributes:
        client_update: the local training (:class:`fl_dp_asr.fl.client.ClientUpdate`).
        finish: ``finish(client_block, delta, metrics) -> (clipped delta, RoundSums)``, the
            part after local training: clip, then zero the padding and non-finite clients.
    """
    client_update: ClientUpdate
    finish: Finish

    def run(self, params: PyTree, client_block: ClientBlock, key: jax.Array
            ) -> tuple[PyTree, RoundSums]:
        """One client: float32 ``(clipped delta, RoundSums)`` (delta shaped like params)."""
        return self.finish(client_block, *self.client_update.run(params, client_block, key))

    def run_chunk(self, params: PyTree, clients: ClientBlock, keys: jax.Array
                  ) -> tuple[PyTree, RoundSums]:
        """A chunk of clients (leading axis ``[chunk]`` on every input and output leaf)."""
        deltas, metrics = self.client_update.run_chunk(params, clients, keys)
        return jax.vmap(self.finish)(clients, deltas, metrics)


def make_contribution(client_update: ClientUpdate,
                      clip: optax.GradientTransformation) -> Contribution:
    """The contribution of a client: ``client_update``, then ``clip`` and the masks.

    Args:
        client_update: local training.
        clip: a clipping transform of :mod:`fl_dp_asr.dp.transforms` (its state is the
            :class:`~fl_dp_asr.dp.transforms.ClipStats` of the delta it saw), e.g.
            ``DPConfig.clipping_transform()``.

    Returns:
        A :class:`Contribution`. A client counts as *kept* when it is real
        (``client_mask > 0``) and its delta and loss are finite; any other client adds an
        exactly zero delta and zero sums (``dropped`` counts the real, non-finite ones).
    """

    def finish(client, delta, metrics):
        clipped, stats = clip.update(delta, clip.init(delta))
        finite = transforms.tree_is_finite(delta) & jnp.isfinite(metrics.loss)
        real = client["client_mask"] > 0
        kept = real & finite
        clipped = optax.tree_utils.tree_where(
            kept, clipped, optax.tree_utils.tree_zeros_like(clipped))
        masked = lambda x: jnp.where(kept, x, 0.0)
        sums = RoundSums(
            clients=real.astype(jnp.float32),
            dropped=(real & ~finite).astype(jnp.float32),
            clipped=kept.astype(jnp.float32) * stats.clipped,
            loss=masked(metrics.loss),
            steps=masked(metrics.steps),
            delta_norm=masked(metrics.delta_norm),
            layer_norms={k: masked(v) for k, v in stats.layer_norms.items()},
        )
        return jax.tree.map(lambda x: x.astype(jnp.float32), clipped), sums

    return Contribution(client_update, finish)
