"""Local training of one client: ``lax.scan`` over its (padded) local steps.

A client receives the server parameters θ, runs ``local_steps`` optimizer steps on its
own batches with a fresh optimizer state, and returns its model delta

        Δ = θ_server − θ_local          (the sign convention of the whole package)

so that ``θ_server − mean(Δ)`` is FedAvg and Δ plays the role of a gradient for the
server optimizer. Padded steps (``step_mask = 0``) are skipped: they leave parameters and
optimizer state untouched.
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


class LocalState(NamedTuple):
    """A client's state during local training: parameters, optimizer state, loss sum."""
    params: PyTree
    opt_state: PyTree
    loss_sum: jax.Array


def make_client_update(loss_fn: LossFn,
                       local_optimizer: optax.GradientTransformation) -> ClientUpdate:
    """Builds ``client_update(params, client_block, key) -> (delta, ClientMetrics)``.

    Args:
        loss_fn: ``loss_fn(params, batch, key) -> (loss, aux)`` (docs/CONTRACTS.md).
        local_optimizer: optax optimizer used by every client, with a fresh state.

    Returns:
        A pure function. ``client_block`` holds ``batches`` (leaves
        ``[local_steps, batch, ...]``) and ``step_mask`` (float32 ``[local_steps]``).
        Its pieces are attributes, for executors that schedule the local steps
        themselves: ``init(params) -> LocalState``, ``step(state, batch, step_mask, key)
        -> LocalState`` and ``final(params, state, step_mask) -> (delta, ClientMetrics)``;
        ``step_keys(key, local_steps)`` gives the key of each local step.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def init(params):
        return LocalState(params, local_optimizer.init(params), jnp.zeros((), jnp.float32))

    def step(state, batch, step_mask, key):
        (loss, _), grads = grad_fn(state.params, batch, key)
        updates, new_opt_state = local_optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        real = step_mask > 0
        keep = lambda new, old: optax.tree_utils.tree_where(real, new, old)
        return LocalState(keep(new_params, state.params), keep(new_opt_state, state.opt_state),
                          state.loss_sum + loss * step_mask)

    def final(params, state, step_mask):
        delta = jax.tree.map(jnp.subtract, params, state.params)
        steps = jnp.sum(step_mask)
        metrics = ClientMetrics(
            loss=state.loss_sum / jnp.maximum(steps, 1.0),
            steps=steps,
            delta_norm=optax.tree_utils.tree_norm(delta),
        )
        return delta, metrics

    def step_keys(key, local_steps):
        return jax.random.split(key, local_steps)

    def maybe_step(state, batch, step_mask, key):
        # A padded step is skipped, not computed and masked (under vmap, cond becomes a
        # select and both branches run: the vectorized executor skips per chunk instead).
        return jax.lax.cond(step_mask > 0, step, lambda s, *_: s, state, batch, step_mask, key)

    def client_update(params, client_block, key):
        keys = step_keys(key, client_block["step_mask"].shape[0])
        state, _ = jax.lax.scan(lambda s, xs: (maybe_step(s, *xs), None), init(params),
                                (client_block["batches"], client_block["step_mask"], keys))
        return final(params, state, client_block["step_mask"])

    client_update.init, client_update.step, client_update.final = init, step, final
    client_update.step_keys = step_keys
    return client_update
