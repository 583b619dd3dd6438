"""Local training of one client: ``lax.scan`` over its (padded) local steps.

A client receives the server parameters θ, runs ``local_steps`` optimizer steps on its
own batches with a fresh optimizer state, and returns its model delta

        Δ = θ_server − θ_local          (the sign convention of the whole package)

so that ``θ_server − mean(Δ)`` is FedAvg and Δ plays the role of a gradient for the
server optimizer. Padded steps (``step_mask = 0``) are skipped: they leave parameters and
optimizer state untouched.

With :class:`BatchBuckets` (e.g. :class:`fl_dp_asr.data.PaddingBuckets`), a local step does
not compute on the whole padded batch of the cohort block: it is cut to the smallest of a
few static shapes that holds its real data (for a chunk of clients, that holds every
client's real data), chosen at run time by ``lax.switch``. The loss must not depend on the
padding it cuts (the ASR model's does not: :mod:`fl_dp_asr.models.encoder`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

PyTree = Any
Batch = dict[str, jax.Array]
LossFn = Callable[[PyTree, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


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


def local_sgd(
    learning_rate: float, grad_clip_norm: float | None = None
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


def local_step_keys(key: jax.Array, local_steps: int) -> jax.Array:
    """The PRNG key of each local step of one client, ``[local_steps]``."""
    return jax.random.split(key, local_steps)


class BatchBuckets(Protocol):
    """Smaller static shapes a local step's batch can be cut to without changing its loss.

    A batch of static shape has a grid of cuts, ``grid(batch)`` levels along each of a few
    dimensions (e.g. rows × length); the last level of every dimension is the batch as is.
    A step runs on the cut at ``levels(batch)``, the smallest that holds all real data;
    for a chunk of clients, at the per-dimension maximum over the chunk.
    """

    def grid(self, batch: Batch) -> tuple[int, ...]:
        """Static number of levels along each dimension, for a batch of this shape."""

    def levels(self, batch: Batch) -> jax.Array:
        """int32 ``[len(grid)]``: per dimension, the smallest level holding the real data."""

    def cut(self, batch: Batch, levels: Sequence[int]) -> Batch:
        """The batch cut to the static shape of ``levels`` (a tuple of Python ints)."""


class NoBuckets:
    """The batch as it is: no dimension to cut (the default of :func:`make_client_update`)."""

    def grid(self, batch: Batch) -> tuple[int, ...]:
        del batch
        return ()

    def levels(self, batch: Batch) -> jax.Array:
        del batch
        return jnp.zeros((0,), jnp.int32)

    def cut(self, batch: Batch, levels: Sequence[int]) -> Batch:
        del levels
        return batch


StepFn = Callable[[LocalState, Batch, jax.Array, jax.Array], LocalState]


def _step_shape(batches: Batch, leading_axes: int) -> Batch:
    """Shapes (``jax.ShapeDtypeStruct``) of one local step's batch of one client."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[leading_axes:], x.dtype), batches)


def _cut_step(
    step: StepFn,
    cut: Callable[[Batch, tuple[int, ...]], Batch],
    grid: tuple[int, ...],
    state: LocalState,
    batch: Batch,
    levels: jax.Array,
    real: jax.Array,
    step_mask: jax.Array,
    key: jax.Array,
) -> LocalState:
    """``step`` on ``cut(batch, levels)``, or the unchanged state when ``real`` is False.

    One ``lax.switch`` over a skip branch and one branch per cell of ``grid``, so only the
    chosen shape is computed. It must stay outside any ``vmap`` (there a switch becomes a
    select that computes every branch): for a chunk, ``step`` and ``cut`` are the vmapped
    ones and ``levels`` (int32 [len(grid)]) and ``real`` are the chunk's.
    """

    def branch(cell):
        return lambda state, batch, mask, key: step(state, cut(batch, cell), mask, key)

    branches = [lambda state, *_: state]
    branches += [branch(cell) for cell in itertools.product(*map(range, grid))]
    cell = jnp.ravel_multi_index(tuple(levels), grid, mode="clip") if grid else 0
    return jax.lax.switch(jnp.where(real, 1 + cell, 0), branches, state, batch, step_mask, key)


class ClientUpdate(NamedTuple):
    """One client's local training as three pure functions (FedJAX's client_init/step/final).

    Executors schedule these pieces themselves (:mod:`fl_dp_asr.fl.executors`); the two
    call helpers below run them for one client (:meth:`run`) or for a chunk of clients
    (:meth:`run_chunk`), with the same numbers.

    Attributes:
        init: ``init(params) -> LocalState``, a fresh optimizer state at the server params.
        step: ``step(state, batch, step_mask, key) -> LocalState``, one local step on one
            batch (leaves ``[batch, ...]``); ``step_mask`` (float32 scalar) 0 leaves the
            state unchanged.
        final: ``final(params, state, step_mask) -> (delta, ClientMetrics)`` with
            Δ = θ_server − θ_local and ``step_mask`` float32 ``[local_steps]``.
        buckets: the cuts a step's batch may run on (:class:`BatchBuckets`); default: none.
    """

    init: Callable[[PyTree], LocalState]
    step: StepFn
    final: Callable[[PyTree, LocalState, jax.Array], tuple[PyTree, ClientMetrics]]
    buckets: BatchBuckets = NoBuckets()

    def run(
        self, params: PyTree, client_block: dict[str, Any], key: jax.Array
    ) -> tuple[PyTree, ClientMetrics]:
        """One client: ``lax.scan`` over its local steps; padded steps are skipped.

        Each real step runs on the smallest cut of its batch (``buckets``) that holds its
        real data.

        Args:
            params: server parameters θ.
            client_block: ``batches`` (leaves ``[local_steps, batch, ...]``) and
                ``step_mask`` (float32 ``[local_steps]``); other entries are ignored.
            key: this client's key; step s uses ``local_step_keys(key, local_steps)[s]``.

        Returns:
            ``(delta, ClientMetrics)``, Δ shaped like ``params``.
        """
        step_mask = client_block["step_mask"]
        keys = local_step_keys(key, step_mask.shape[0])
        grid = self.buckets.grid(_step_shape(client_block["batches"], 1))

        def maybe_step(state, xs):
            # A padded step is skipped, not computed and masked (under vmap, a switch becomes
            # a select and every branch runs: run_chunk chooses per chunk instead).
            batch, mask, step_key = xs
            state = _cut_step(
                self.step,
                self.buckets.cut,
                grid,
                state,
                batch,
                self.buckets.levels(batch),
                mask > 0,
                mask,
                step_key,
            )
            return state, None

        state, _ = jax.lax.scan(
            maybe_step, self.init(params), (client_block["batches"], step_mask, keys)
        )
        return self.final(params, state, step_mask)

    def run_chunk(
        self, params: PyTree, clients: dict[str, Any], keys: jax.Array
    ) -> tuple[PyTree, ClientMetrics]:
        """A chunk of clients at once: ``vmap`` over clients inside a ``lax.scan`` over steps.

        Local step s runs (vmapped over the chunk) only if some client of the chunk has a
        real step s (``step_mask[:, s]``), on the smallest cut (``buckets``) that holds the
        real data of every such client; otherwise the whole step is skipped (the
        ``lax.switch`` is outside the ``vmap``). Same numbers as ``vmap(run)``: a padded
        step changes nothing, and the loss does not depend on the padding cut away.

        Args:
            params: server parameters θ (shared by the chunk).
            clients: ``batches`` (leaves ``[chunk, local_steps, batch, ...]``) and
                ``step_mask`` (float32 ``[chunk, local_steps]``).
            keys: ``[chunk]`` client keys.

        Returns:
            ``(deltas, ClientMetrics)`` with a leading ``[chunk]`` axis.
        """
        chunk, num_steps = clients["step_mask"].shape
        step_keys = jax.vmap(lambda k: local_step_keys(k, num_steps))(keys)
        state = jax.vmap(self.init, in_axes=None, axis_size=chunk)(params)
        grid = self.buckets.grid(_step_shape(clients["batches"], 2))
        cut = jax.vmap(self.buckets.cut, in_axes=(0, None))

        def local_step(state, s):
            batch = jax.tree.map(lambda x: x[:, s], clients["batches"])
            mask, key = clients["step_mask"][:, s], step_keys[:, s]
            real = mask > 0
            levels = jnp.max(
                jnp.where(real[:, None], jax.vmap(self.buckets.levels)(batch), 0), axis=0
            )
            state = _cut_step(
                jax.vmap(self.step), cut, grid, state, batch, levels, jnp.any(real), mask, key
            )
            return state, None

        state, _ = jax.lax.scan(local_step, state, jnp.arange(num_steps))
        return jax.vmap(self.final, in_axes=(None, 0, 0))(params, state, clients["step_mask"])


def make_client_update(
    loss_fn: LossFn,
    local_optimizer: optax.GradientTransformation,
    buckets: BatchBuckets | None = None,
) -> ClientUpdate:
    """The :class:`ClientUpdate` of local training with ``local_optimizer`` on ``loss_fn``.

    Args:
        loss_fn: ``loss_fn(params, batch, key) -> (loss, aux)`` (docs/CONTRACTS.md).
        local_optimizer: optax optimizer used by every client, with a fresh state.
        buckets: cut each local step's batch to the smallest of these shapes that holds
            its real data (e.g. :class:`fl_dp_asr.data.PaddingBuckets` for ASR batches);
            ``loss_fn`` must not depend on the padding cut away. None: full batches.

    Returns:
        A :class:`ClientUpdate`; ``client_update.run(params, client_block, key)`` gives
        ``(delta, ClientMetrics)`` of one client.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def init(params):
        return LocalState(params, local_optimizer.init(params), jnp.zeros((), jnp.float32))

    def step(state, batch, step_mask, key):
        (loss, _), grads = grad_fn(state.params, batch, key)
        updates, new_opt_state = local_optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        real = step_mask > 0

        def keep(new, old):
            return optax.tree_utils.tree_where(real, new, old)

        return LocalState(
            keep(new_params, state.params),
            keep(new_opt_state, state.opt_state),
            state.loss_sum + loss * step_mask,
        )

    def final(params, state, step_mask):
        delta = jax.tree.map(jnp.subtract, params, state.params)
        steps = jnp.sum(step_mask)
        metrics = ClientMetrics(
            loss=state.loss_sum / jnp.maximum(steps, 1.0),
            steps=steps,
            delta_norm=optax.tree_utils.tree_norm(delta),
        )
        return delta, metrics

    return ClientUpdate(init, step, final, buckets or NoBuckets())
