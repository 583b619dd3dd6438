"""The federated round step: local training → clip → sum → noise once → server optimizer.

``make_round_step`` returns ``round_step(server_state, cohort_block, key) ->
(server_state, metrics)``. For the ``vectorized`` and ``sharded`` executors it is one
``jax.jit`` function (server state donated); ``sequential`` is the reference scheme
(a Python loop over clients) kept as a baseline. All three give the same numbers.

DP semantics (user-level, one user = one client):

* client i sends Δ_i = θ − θ_i (see :mod:`fl_dp_asr.fl.client`), clipped to ‖Δ̃_i‖ ≤ C;
* the server forms Σ_i Δ̃_i over real clients (padding clients and clients whose update
    is NaN/inf contribute exactly zero, which keeps the sensitivity at C);
* it adds N(0, (z·C)²) **once** to the sum (after the cross-device sum, one key), divides
    by the *expected* cohort size S (fixed-size sampling: S; Poisson: q·K) and feeds the
    result to the server optimizer as a pseudo-gradient.

σ_DP (the paper's noise std on the mean, in units of C) and z relate by z = S·σ_DP
(:func:`fl_dp_asr.dp.accounting.sigma_dp_to_noise_multiplier`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from fl_dp_asr.dp import accounting, transforms
from fl_dp_asr.fl import cohort as cohort_lib
from fl_dp_asr.fl.client import ClientUpdate

PyTree = Any
CLIPPINGS = ("none", "global", "per_layer", "rescale_per_layer")
EXECUTORS = ("vectorized", "sequential", "sharded")
_CLIENT_STREAM, _NOISE_STREAM = 0, 1


class AllClientsDroppedError(RuntimeError):
    """Every real client of a round sent a NaN/inf update; the round was not applied."""


class NonFiniteParamsError(FloatingPointError):
    """The server update would have made parameters NaN/inf; the round was not applied."""


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """User-level DP settings of a round.

    Attributes:
        clipping: ``"none"``, ``"global"``, ``"per_layer"`` (paper definition) or
            ``"rescale_per_layer"`` (the reference code's variant).
        clip_norm: C, the L2 bound of one client's delta.
        allocation: per-layer bound allocation, ``"uniform"``, ``"by_dim"`` or a mapping.
        noise_multiplier: z, noise std on the **sum** in units of C.
        sigma_dp: σ_DP, noise std on the **mean** in units of C (the paper's knob).
            Give at most one of ``noise_multiplier`` and ``sigma_dp``.
    """
    clipping: str = "per_layer"
    clip_norm: float | None = None
    allocation: transforms.Allocation = "uniform"
    noise_multiplier: float | None = None
    sigma_dp: float | None = None

    def __post_init__(self):
        if self.clipping not in CLIPPINGS:
            raise ValueError(f"dp.clipping={self.clipping!r}: choose one of {CLIPPINGS}.")
        if self.clipping != "none" and not (self.clip_norm and self.clip_norm > 0):
            raise ValueError(f"dp.clipping={self.clipping!r} needs dp.clip_norm > 0, "
                             f"got {self.clip_norm}.")
        if self.noise_multiplier is not None and self.sigma_dp is not None:
            raise ValueError("give dp.noise_multiplier (z, std on the sum / C) or dp.sigma_dp "
                             "(std on the mean / C), not both.")
        noisy = bool(self.noise_multiplier) or bool(self.sigma_dp)
        if noisy and self.clipping == "none":
            raise ValueError("noise without clipping gives no privacy: set dp.clipping and "
                             "dp.clip_norm, or remove the noise.")
        for name in ("noise_multiplier", "sigma_dp"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"dp.{name} must be >= 0, got {value}.")

    def resolve_noise_multiplier(self, expected_cohort_size: float) -> float:
        """z for this run: given directly, or z = S·σ_DP for the expected cohort size S."""
        if self.sigma_dp is not None:
            return accounting.sigma_dp_to_noise_multiplier(self.sigma_dp, expected_cohort_size)
        return float(self.noise_multiplier or 0.0)

    def clipping_transform(self) -> optax.GradientTransformation:
        """The per-client clipping transform (identity with statistics for ``"none"``)."""
        if self.clipping == "global":
            return transforms.clip_by_global_norm(self.clip_norm)
        if self.clipping == "per_layer":
            return transforms.clip_per_layer(self.clip_norm, self.allocation)
        if self.clipping == "rescale_per_layer":
            return transforms.rescale_per_layer(self.clip_norm, self.allocation)
        return transforms.clip_by_global_norm(float("inf"))


class ServerState(NamedTuple):
    """Server parameters, server optimizer state and the number of rounds applied."""
    params: PyTree
    opt_state: PyTree
    round: jax.Array


def init_server_state(params: PyTree, server_optimizer: optax.GradientTransformation
                      ) -> ServerState:
    return ServerState(params, server_optimizer.init(params), jnp.zeros((), jnp.int32))


class RoundSums(NamedTuple):
    """Per-round sums over clients, accumulated chunk by chunk (float32 scalars)."""
    clients: jax.Array
    dropped: jax.Array
    clipped: jax.Array
    loss: jax.Array
    steps: jax.Array
    delta_norm: jax.Array
    layer_norms: dict[str, jax.Array]


# ------------------------------------------------------------------ per client


def _make_client_contribution(client_update: ClientUpdate, dp: DPConfig):
    """``(params, client, key) -> (masked clipped delta, RoundSums of this client)``.

    Its ``finish(client, delta, metrics)`` attribute is the part after local training.
    """
    clip = dp.clipping_transform()

    def finish(client, delta, metrics):
        clipped, stats = clip.update(delta, clip.init(delta))
        finite = transforms.tree_is_finite(delta) & jnp.isfinite(metrics.loss)
        real = client["client_mask"] > 0
        weight = (real & finite).astype(jnp.float32)
        clipped = optax.tree_utils.tree_where(
            real & finite, clipped, optax.tree_utils.tree_zeros_like(clipped))
        masked = lambda x: jnp.where(real & finite, x, 0.0)
        sums = RoundSums(
            clients=real.astype(jnp.float32),
            dropped=(real & ~finite).astype(jnp.float32),
            clipped=weight * stats.clipped,
            loss=masked(metrics.loss),
            steps=masked(metrics.steps),
            delta_norm=masked(metrics.delta_norm),
            layer_norms={k: masked(v) for k, v in stats.layer_norms.items()},
        )
        return jax.tree.map(lambda x: x.astype(jnp.float32), clipped), sums

    def contribution(params, client, key):
        return finish(client, *client_update(params, client, key))

    contribution.finish = finish
    return contribution


def _client_keys(key: jax.Array, num_clients: int) -> jax.Array:
    """One key per client slot, independent of padding and executor."""
    base = jax.random.fold_in(key, _CLIENT_STREAM)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(num_clients))


def _zero_sums(contribution, params, cohort_block, keys):
    """Zero accumulators with the shapes/dtypes of one client's output."""
    one = jax.tree.map(lambda x: x[0], (cohort_block, keys))
    shapes = jax.eval_shape(contribution, params, *one)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _train_chunk(client_update: ClientUpdate, params, clients, keys):
    """``vmap(client_update)`` over a chunk, skipping the local steps no client of it takes.

    Local step s runs (vmapped over the chunk) only if ``step_mask[:, s]`` has a real step;
    otherwise the whole step is skipped (``lax.cond`` outside the ``vmap``). Same numbers
    as ``vmap(client_update)``: a padded step changes nothing anyway.
    """
    chunk, num_steps = clients["step_mask"].shape
    step_keys = jax.vmap(lambda k: client_update.step_keys(k, num_steps))(keys)
    state = jax.vmap(client_update.init, in_axes=None, axis_size=chunk)(params)
    batched_step = jax.vmap(client_update.step)

    def local_step(state, s):
        batch = jax.tree.map(lambda x: x[:, s], clients["batches"])
        mask, key = clients["step_mask"][:, s], step_keys[:, s]
        state = jax.lax.cond(jnp.any(mask > 0), batched_step, lambda st, *_: st,
                             state, batch, mask, key)
        return state, None

    state, _ = jax.lax.scan(local_step, state, jnp.arange(num_steps))
    return jax.vmap(client_update.final, in_axes=(None, 0, 0))(params, state,
                                                               clients["step_mask"])


def _aggregate_vectorized(contribution, client_update, params, cohort_block, keys, chunk_size):
    """Σ over clients of ``contribution``: ``lax.scan`` over chunks, ``vmap`` inside.

    Memory is O(chunk_size × params) whatever the cohort size: client deltas are summed
    chunk by chunk and never materialized together. Clients are taken in decreasing number
    of real local steps (each chunk gathers its own clients), so the clients of a chunk
    take about as many steps; the local steps that no client of a chunk takes are skipped,
    and so is a chunk made only of padding clients (``lax.cond``).
    """
    num = cohort_lib.num_clients(cohort_block)
    if num % chunk_size:
        raise ValueError(f"{num} client slots are not a multiple of chunk_size={chunk_size}.")
    steps = jnp.sum(cohort_block["step_mask"] > 0, axis=1) * (cohort_block["client_mask"] > 0)
    order = jnp.argsort(-steps, stable=True).reshape(num // chunk_size, chunk_size)
    if hasattr(client_update, "step"):
        def train_chunk(clients, chunk_keys):
            deltas, metrics = _train_chunk(client_update, params, clients, chunk_keys)
            return jax.vmap(contribution.finish)(clients, deltas, metrics)
    else:  # an opaque client update: plain vmap
        train_chunk = functools.partial(jax.vmap(contribution, in_axes=(None, 0, 0)), params)

    def add_chunk(acc, chunk):
        outputs = train_chunk(*chunk)
        return jax.tree.map(lambda a, x: a + jnp.sum(x, axis=0), acc, outputs)

    def body(acc, chunk_order):
        chunk = jax.tree.map(lambda x: x[chunk_order], (cohort_block, keys))
        has_clients = jnp.any(chunk[0]["client_mask"] > 0)
        return jax.lax.cond(has_clients, add_chunk, lambda acc, _: acc, acc, chunk), None

    init = _zero_sums(contribution, params, cohort_block, keys)
    total, _ = jax.lax.scan(body, init, order)
    return total


# ------------------------------------------------------------------ server side


def _server_update(state: ServerState, total, sums: RoundSums, key, *, server_optimizer,
                   noise_stddev: float, expected_cohort_size: float):
    """Noise once on the sum, divide by the expected cohort size, server optimizer."""
    noisy = (transforms.gaussian_noise(total, noise_stddev, jax.random.fold_in(key, _NOISE_STREAM))
             if noise_stddev > 0 else total)
    pseudo_grad = jax.tree.map(lambda x, p: (x / expected_cohort_size).astype(p.dtype),
                               noisy, state.params)
    updates, opt_state = server_optimizer.update(pseudo_grad, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    applied = ServerState(params, opt_state, state.round + 1)
    all_dropped = (sums.clients > 0) & (sums.dropped == sums.clients)
    params_finite = transforms.tree_is_finite(params)
    rejected = all_dropped | ~params_finite
    new_state = optax.tree_utils.tree_where(rejected, state, applied)
    metrics = _metrics(sums, updates, noisy, total)
    metrics["params_finite"] = params_finite.astype(jnp.float32)
    return new_state, metrics


def _metrics(sums: RoundSums, updates, noisy, total) -> dict[str, Any]:
    kept = jnp.maximum(sums.clients - sums.dropped, 1.0)
    return {
        "clients": sums.clients,
        "dropped_clients": sums.dropped,
        "clip_fraction": sums.clipped / kept,
        "loss": sums.loss / kept,
        "local_steps": sums.steps / kept,
        "delta_norm": sums.delta_norm / kept,
        "layer_delta_norms": {k: v / kept for k, v in sums.layer_norms.items()},
        "sum_norm": optax.tree_utils.tree_norm(total),
        "noisy_sum_norm": optax.tree_utils.tree_norm(noisy),
        "update_norm": optax.tree_utils.tree_norm(updates),
    }


def check_round(metrics: dict[str, Any], round_index: int) -> None:
    """Raises when the round step refused to apply a round.

    :class:`AllClientsDroppedError` when every real client was dropped,
    :class:`NonFiniteParamsError` when the update would make parameters NaN/inf. The
    round step keeps the previous server state in both cases, so the run can stop
    cleanly with nothing lost.
    """
    if float(metrics["params_finite"]) == 0.0:
        raise NonFiniteParamsError(
            f"round {round_index}: the server update made parameters NaN/inf; the round "
            "was not applied. Lower the server learning rate or the noise.")
    clients, dropped = float(metrics["clients"]), float(metrics["dropped_clients"])
    if clients > 0 and dropped == clients:
        raise AllClientsDroppedError(
            f"round {round_index}: all {int(clients)} clients sent NaN/inf updates; the round "
            "was not applied. Check the local learning rate and the client data.")


# ------------------------------------------------------------------ executors


def make_round_step(
        client_update: ClientUpdate,
        server_optimizer: optax.GradientTransformation,
        dp: DPConfig,
        expected_cohort_size: float,
        *,
        executor: str = "vectorized",
        chunk_size: int = 16,
        mesh: jax.sharding.Mesh | None = None,
) -> Callable[[ServerState, dict[str, Any], jax.Array], tuple[ServerState, dict[str, Any]]]:
    """Builds the round step ``(server_state, cohort_block, key) -> (server_state, metrics)``.

    Args:
        client_update: from :func:`fl_dp_asr.fl.client.make_client_update`.
        server_optimizer: any optax optimizer applied to the pseudo-gradient
            (mean noisy clipped delta); see :mod:`fl_dp_asr.fl.server`.
        dp: clipping and noise settings.
        expected_cohort_size: S for fixed-size sampling, q·K for Poisson; the sum is
            divided by it and σ_DP is converted with it.
        executor: ``"vectorized"`` (chunked vmap, default), ``"sequential"`` (Python loop
            over clients, the reference scheme) or ``"sharded"`` (client axis split over the
            devices of ``mesh`` with ``jax.shard_map``, chunked vmap on each device).
        chunk_size: clients trained at once per device (vectorized/sharded). The cohort is
            padded with masked clients to a multiple of it (× devices).
        mesh: 1-D mesh with axis ``"clients"`` for ``"sharded"``; default all devices.

    Returns:
        The round step. ``cohort_block`` follows docs/CONTRACTS.md (leading client axis);
        ``key`` should be ``fold_in(run_key, round)`` so resumed runs are exact. Metrics are
        float32 scalars (``layer_delta_norms`` a dict of them).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor={executor!r}: choose one of {EXECUTORS}.")
    if not expected_cohort_size > 0:
        raise ValueError(f"expected_cohort_size must be > 0, got {expected_cohort_size}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    noise_multiplier = dp.resolve_noise_multiplier(expected_cohort_size)
    server_update = functools.partial(
        _server_update, server_optimizer=server_optimizer,
        noise_stddev=noise_multiplier * (dp.clip_norm or 0.0),
        expected_cohort_size=float(expected_cohort_size))
    contribution = _make_client_contribution(client_update, dp)

    if executor == "sequential":
        return _sequential_round_step(contribution, server_update)

    if executor == "sharded":
        mesh = mesh or jax.make_mesh((jax.device_count(),), ("clients",),
                                     axis_types=(jax.sharding.AxisType.Auto,))
        multiple = chunk_size * mesh.shape["clients"]

        def aggregate(params, cohort_block, keys):
            def per_device(params, cohort_block, keys):
                local = _aggregate_vectorized(contribution, client_update, params, cohort_block,
                                              keys, chunk_size)
                return jax.lax.psum(local, "clients")

            return jax.shard_map(
                per_device, mesh=mesh,
                in_specs=(PartitionSpec(), PartitionSpec("clients"), PartitionSpec("clients")),
                out_specs=PartitionSpec(),
                # Local training carries replicated params into per-device scans; the
                # only cross-device value is the explicit psum above.
                check_vma=False)(params, cohort_block, keys)
    else:
        multiple = chunk_size

        def aggregate(params, cohort_block, keys):
            return _aggregate_vectorized(contribution, client_update, params, cohort_block, keys,
                                         chunk_size)

    def round_step(state: ServerState, cohort_block, key):
        cohort_block = cohort_lib.pad_clients(cohort_block, multiple)
        keys = _client_keys(key, cohort_lib.num_clients(cohort_block))
        total, sums = aggregate(state.params, cohort_block, keys)
        return server_update(state, total, sums, key)

    return jax.jit(round_step, donate_argnums=(0,))


def _sequential_round_step(contribution, server_update):
    """The reference scheme: one jitted client at a time, summed on the device."""

    @functools.partial(jax.jit, donate_argnums=(0,))
    def add_client(acc, params, client, key):
        return jax.tree.map(jnp.add, acc, contribution(params, client, key))

    jitted_server_update = jax.jit(server_update, donate_argnums=(0,))

    def round_step(state: ServerState, cohort_block, key):
        num = cohort_lib.num_clients(cohort_block)
        keys = _client_keys(key, num)
        acc = _zero_sums(contribution, state.params, cohort_block, keys)
        host_block = jax.tree.map(np.asarray, cohort_block)
        for i in range(num):
            client = jax.tree.map(lambda x: x[i], host_block)
            acc = add_client(acc, state.params, client, keys[i])
        return jitted_server_update(state, *acc, key)

    return round_step
