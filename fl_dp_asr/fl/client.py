"""Local training of one client: ``lax.scan`` over its (padded) local steps.

A client receives the server parameters θ, runs ``local_steps`` optimizer steps on its
own batches with a fresh optimizer state, and returns its model delta

        Δ = θ_server − θ_local          (the sign convention of the whole package)

so that ``θ_server − mean(Δ)`` is FedAvg and Δ plays the role of a gradient for the
server optimizer. Padded steps (``step_mask = 0``) leave parameters and optimizer state
untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any
Batch = dict[str, jax.Array]
LossFn = Callable[[PyTree, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
ClientUpdate = Callable[[PyTree, dict[str, Any], jax.Array], tuple[PyTree, dict[str, jax.Array]]]


class ClientMetrics(NamedTuple):
    """Per-client measurements (float32 scalars, per client when vmapped).

    Attributes:
        loss: mean training loss over the client's real local steps (0 with none).
        steps: number of real local steps taken.
        delta_norm: ‖Δ‖ before any clipping.
    """
    loss: jax.Array
    steps: jax.Array
    delta_norm: jax.Array


def local_sgd(learning_rate: float, grad_clip_norm: float | None = None
                            ) -> optax.GradientTransformation:
    """The paper's local optimizer: SGD, optionally with per-step gradient clipping.

    Args:
        learning_rate: SGD step size (0.2 in the paper).
        grad_clip_norm: clip every local gradient to this global L2 norm (1.0 in the
            paper); ``None`` disables it. This is optimization hygiene, not DP.
    """
    sgd = optax.sgd(learning_rate)
    if grad_clip_norm is None:
        return sgd
    return optax.chain(optax.clip_by_global_norm(grad_clip_norm), sgd)


def make_client_update(loss_fn: LossFn,
                                              local_optimizer: optax.GradientTransformation) -> ClientUpdate:
    """Builds ``client_update(params, client_block, key) -> (delta, ClientMetrics)``.

    Args:
        loss_fn: ``loss_fn(params, batch, key) -> (loss, aux)`` (docs/CONTRACTS.md).
        local_optimizer: optax optimizer used by every client, with a fresh state.

    Returns:
        A pure function. ``client_block`` holds ``batches`` (leaves
        ``[local_steps, batch, ...]``) and ``step_mask`` (float32 ``[local_steps]``).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def client_update(params, client_block, key):
        step_keys = jax.random.split(key, client_block["step_mask"].shape[0])

        def local_step(carry, inputs):
            local_params, opt_state = carry
            batch, step_mask, step_key = inputs
            (loss, _), grads = grad_fn(local_params, batch, step_key)
            updates, new_opt_state = local_optimizer.update(grads, opt_state, local_params)
            new_params = optax.apply_updates(local_params, updates)
            real = step_mask > 0
            keep = lambda new, old: optax.tree_utils.tree_where(real, new, old)
            carry = (keep(new_params, local_params), keep(new_opt_state, opt_state))
            return carry, loss * step_mask

        init = (params, local_optimizer.init(params))
        (local_params, _), losses = jax.lax.scan(
                local_step, init, (client_block["batches"], client_block["step_mask"], step_keys))
        delta = jax.tree.map(jnp.subtract, params, local_params)
        steps = jnp.sum(client_block["step_mask"])
        metrics = ClientMetrics(
                loss=jnp.sum(losses) / jnp.maximum(steps, 1.0),
                steps=steps,
                delta_norm=optax.tree_utils.tree_norm(delta),
        )
        return delta, metrics

    return client_update
