"""The federated round step: local training → clip → sum → noise once → server optimizer.

``make_round_step`` composes sampler-independent pieces into
``round_step(server_state, cohort_block, key) -> (server_state, metrics)``::

    pad the client axis (executor.client_multiple) → one key per client slot
    → executor.aggregate(contribution, params, block, keys)   # Σ clipped deltas, RoundSums
    → noise once, ÷ S, server optimizer                        # _server_update

The contribution of a client (:mod:`fl_dp_asr.fl.contribution`) is its local training
(:mod:`fl_dp_asr.fl.client`) followed by the clipping of ``DPConfig``; the executor
(:mod:`fl_dp_asr.fl.executors`) decides how clients are run. With a traceable executor
(``vectorized``, ``sharded``) the round step is one ``jax.jit`` function (server state
donated); ``sequential`` runs its host loop and a jitted server update. All give the same
numbers.

DP semantics (user-level, one user = one client; :mod:`fl_dp_asr.dp.policy`):

* client i sends Δ_i = θ − θ_i (see :mod:`fl_dp_asr.fl.client`), clipped to ‖Δ̃_i‖ ≤ C;
* the server forms Σ_i Δ̃_i over real clients (padding clients and clients whose update
    is NaN/inf contribute exactly zero, which keeps the sensitivity at C);
* it adds N(0, (z·C)²) **once** to the sum (after the cross-device sum, one key), divides
    by the *expected* cohort size S (fixed-size sampling: S; Poisson: q·K) and feeds the
    result to the server optimizer as a pseudo-gradient.

σ_DP (the paper's noise std on the mean, in units of C) and z relate by z = S·σ_DP
(:func:`fl_dp_asr.dp.accounting.sigma_dp_to_noise_multiplier`).

Adaptive clipping (``DPConfig.target_unclipped_quantile``, :mod:`fl_dp_asr.dp.adaptive`):
the bounds are part of the server state and broadcast with the parameters; every client
also reports its unclipped bits, summed with the deltas by the same executor; the server
adds N(0, (z_Δ·C_t)²) to the delta sum and N(0, σ_b²) to every bit count (both once, after
the cross-device sum, each from its own key) and moves the bounds inside the same jitted
step.

Canary clients (``canaries``, :mod:`fl_dp_asr.dp.canaries`): the cohort block's
``canary_mask`` (float32 ``[k]``, 1.0 for the canaries sampled this round) says which canary
updates, clipped as users' deltas are, join the sum before the noise; the metrics then hold
``canary_cosines`` ``[k + m]``, the cosine of the round's noisy sum (the same as of the
pseudo-gradient: a positive multiple) with every inserted and held-out canary. Without
canaries none of this is in the program.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from fl_dp_asr.dp import DPConfig, adaptive, checks, transforms
from fl_dp_asr.dp.canaries import Canaries
from fl_dp_asr.dp.layout import SAME_LAYOUT, ParamLayout
from fl_dp_asr.fl import distributed, executors
from fl_dp_asr.fl.client import ClientUpdate
from fl_dp_asr.fl.contribution import Broadcast, RoundSums, make_contribution

PyTree = Any
RoundStep = Callable[
    ["ServerState", dict[str, Any], jax.Array], tuple["ServerState", dict[str, Any]]
]  # e.g. a BoundRoundStep
_CLIENT_STREAM, _NOISE_STREAM, _COUNT_NOISE_STREAM = 0, 1, 2
CANARY_MASK = "canary_mask"  # cohort block entry: float32 [k], the canaries sampled


class AllClientsDroppedError(RuntimeError):
    """Every real client of a round sent a NaN/inf update; the round was not applied."""


class NonFiniteParamsError(FloatingPointError):
    """The server update would have made parameters NaN/inf; the round was not applied."""


class PastNoiseHorizonError(RuntimeError):
    """A round past the n rounds of the correlated-noise strategy (``dp.correlated_noise``):
    its noise is not the mechanism the accountant covers; the round was not applied."""


class ServerState(NamedTuple):
    """Server parameters (in the round's compute layout, :mod:`fl_dp_asr.dp.layout`),
    server optimizer state, the number of rounds applied, the adaptive clip bounds
    ``{name: C_{h,t}}`` (float32 scalars named as in the canonical layout; ``{}`` with
    fixed clipping) and the correlated noise's state (``CorrelatedNoise.init_state`` of
    the params; ``()`` with independent Gaussian noise)."""

    params: PyTree
    opt_state: PyTree
    round: jax.Array
    clip_bounds: dict[str, jax.Array] = {}
    noise_state: PyTree = ()


def init_server_state(
    params: PyTree,
    server_optimizer: optax.GradientTransformation,
    dp: DPConfig | None = None,
    layout: ParamLayout = SAME_LAYOUT,
) -> ServerState:
    """Round 0: the given parameters (in ``layout``'s compute layout, that of the round
    step), a fresh server optimizer state and, with adaptive clipping in ``dp``, its
    initial bounds; with correlated noise in ``dp``, its noise state."""
    bounds = (
        adaptive.initial_bounds(dp.initial_clip_bounds(params, layout))
        if dp is not None and dp.adaptive
        else {}
    )
    noise_state = (
        dp.correlated_noise.init_state(params) if dp is not None and _keeps_noise_state(dp) else ()
    )
    return ServerState(
        params, server_optimizer.init(params), jnp.zeros((), jnp.int32), bounds, noise_state
    )


def client_keys(key: jax.Array, num_slots: int) -> jax.Array:
    """One key per client slot, ``[num_slots]``: slot i gets ``fold_in(fold_in(key, 0), i)``,
    independent of the padding and of the executor."""
    base = jax.random.fold_in(key, _CLIENT_STREAM)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(num_slots))


# ------------------------------------------------------------------ server side


class ServerUpdate(NamedTuple):
    """The server's half of a round (static settings; see :func:`_server_update`).

    The fixed-clipping noise std is not among them: it is an argument of the compiled step
    (:func:`make_round_step`), so runs that differ only in σ_DP share one compilation.

    Attributes:
        server_optimizer: applied to the pseudo-gradient.
        expected_cohort_size: S, the sum is divided by it.
        fixed_bounds: fixed clipping: ``{name: C_h}`` (reported in the metrics).
        delta_noise_multiplier: adaptive clipping: z_Δ, the noise std is z_Δ · C_t.
        count_stddev: adaptive clipping: σ_b (0: noise-free counts).
        target_quantile, clip_norm_lr: adaptive clipping: γ and η.
    """

    server_optimizer: optax.GradientTransformation
    expected_cohort_size: float
    fixed_bounds: dict[str, float] = {}
    delta_noise_multiplier: float = 0.0
    count_stddev: float = 0.0
    target_quantile: float = 0.5
    clip_norm_lr: float = 0.0


def _server_update(
    dp: DPConfig,
    server_optimizer: optax.GradientTransformation,
    expected_cohort_size: float,
    layout: ParamLayout,
    canaries: Canaries | None,
    state: ServerState,
    total,
    sums: RoundSums,
    key,
    noise_stddev: jax.Array,
    canary_mask: jax.Array | None,
):
    """Noise once on the sum, divide by the expected cohort size, server optimizer, and
    (adaptive clipping) the new bounds from the noisy unclipped counts.

    ``noise_stddev``: fixed clipping's z·C (a float32 scalar, traced; 0: no noise — the draw
    is then multiplied by 0 and changes nothing); unused with adaptive clipping.
    ``canary_mask``: with ``canaries``, the sampled canaries' updates join the sum before
    the noise (:meth:`Canaries.insert`); None without.
    """
    if canaries is not None and canary_mask is not None:
        total = canaries.insert(total, canary_mask, dp, layout)
    # Traced params still have static shapes: the per-layer bounds come from them.
    config = server_update_config(dp, server_optimizer, expected_cohort_size, state.params, layout)
    clip_norm: jax.Array | None
    if state.clip_bounds:  # adaptive: this round's bounds, noise std z_Δ · C_t
        bounds = state.clip_bounds
        clip_norm = adaptive.total_bound(bounds)
        noise_stddev = config.delta_noise_multiplier * clip_norm
        noisy_round = config.delta_noise_multiplier > 0
    else:
        bounds = {k: jnp.float32(v) for k, v in config.fixed_bounds.items()}
        clip_norm = adaptive.total_bound(bounds) if bounds else None
        noisy_round = dp.clipping != "none"  # noise is refused without clipping
    noise_key = jax.random.fold_in(key, _NOISE_STREAM)
    noising = functools.partial(_add_noise, dp, layout, noisy_round)
    noisy, noise_state = noising(total, noise_key, noise_stddev, state.noise_state)
    pseudo_grad = jax.tree.map(
        lambda x, p: (x / config.expected_cohort_size).astype(p.dtype), noisy, state.params
    )
    updates, opt_state = config.server_optimizer.update(pseudo_grad, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    applied = ServerState(
        params,
        opt_state,
        state.round + 1,
        _next_bounds(config, state.clip_bounds, sums, key),
        noise_state,
    )
    all_dropped = (sums.clients > 0) & (sums.dropped == sums.clients)
    params_finite = transforms.tree_is_finite(params)
    rejected = all_dropped | ~params_finite
    horizon = {}
    if dp.correlated_noise is not None:  # DP-FTRL: rounds 1..n only
        horizon = {
            "noise_horizon": jnp.float32(dp.correlated_noise.rounds),
            "past_noise_horizon": state.round >= dp.correlated_noise.rounds,
        }
        rejected = rejected | horizon["past_noise_horizon"]
    new_state = optax.tree_utils.tree_where(rejected, state, applied)
    metrics = _metrics(
        sums, updates, noisy, total, config.expected_cohort_size, dp.layer_fn, layout
    )
    metrics["params_finite"] = params_finite.astype(jnp.float32)
    metrics |= {name: value.astype(jnp.float32) for name, value in horizon.items()}
    if canaries is not None:
        metrics["canary_cosines"] = _canary_cosines(
            canaries, dp, layout, noising, (total, noise_key, noise_stddev, state.noise_state)
        )
    if clip_norm is not None:
        metrics["clip_norm"] = clip_norm
        metrics["layer_clip_norms"] = bounds
    return new_state, metrics


def _add_noise(
    dp: DPConfig,
    layout: ParamLayout,
    noisy_round: bool,
    total: PyTree,
    noise_key: jax.Array,
    noise_stddev: jax.Array,
    noise_state: PyTree,
) -> tuple[PyTree, PyTree]:
    """``(noisy sum, next noise state)``: the round's noise added once to ``total`` (float32,
    compute layout) — independent N(0, noise_stddev²) per coordinate, or (DP-FTRL) this
    round's row of z·C·C⁻¹Z; ``total`` and the state unchanged when not ``noisy_round``."""
    if not noisy_round:
        return total, noise_state
    if dp.correlated_noise is None:
        return transforms.gaussian_noise(total, noise_stddev, noise_key, layout), noise_state
    mechanism = dp.correlated_noise
    if not _keeps_noise_state(dp):  # one band: C is diagonal, nothing to carry
        noise_state = mechanism.init_state(total)
    noise, noise_state = mechanism.next_noise(noise_state, noise_key, noise_stddev, total, layout)
    noisy = jax.tree.map(lambda x, n: (x + n).astype(x.dtype), total, noise)
    return noisy, noise_state if _keeps_noise_state(dp) else ()


def _canary_cosines(
    canaries: Canaries, dp: DPConfig, layout: ParamLayout, noising: Callable, noise_inputs: tuple
) -> jax.Array:
    """float32 ``[k + m]``: cos(the round's noisy sum, canary c) of every canary.

    The noisy sum is drawn again (the same key: the same values) from ``noise_inputs``
    passed through ``jax.lax.optimization_barrier``, not taken from the server update: XLA
    then cannot share or re-fuse anything of the update with the cosines, so the update
    compiles as in a round step without canaries and its numbers are bit-identical (the
    audit does not change the program the user trains; with Adam or LAMB sharing the sum
    made XLA fuse the noise out of the optimizer's kernels, 1–2 ulp apart by round 2).
    Costs one more noise draw per round, only with canaries.
    """
    noisy, _ = noising(*jax.lax.optimization_barrier(noise_inputs))
    return canaries.cosines(noisy, dp, layout)


def _keeps_noise_state(dp: DPConfig) -> bool:
    """Whether the round carries a correlated-noise state (zero-size states, of a one-band
    strategy, are not kept: orbax cannot save them)."""
    return dp.correlated_noise is not None and dp.correlated_noise.num_buffers > 0


def _next_bounds(
    config: ServerUpdate, bounds: dict[str, jax.Array], sums: RoundSums, key
) -> dict[str, jax.Array]:
    """The adaptive bounds of the next round ({} with fixed clipping)."""
    if not bounds:
        return bounds
    noise = adaptive.count_noise(
        jax.random.fold_in(key, _COUNT_NOISE_STREAM), bounds, config.count_stddev
    )
    return adaptive.update_bounds(
        bounds,
        sums.unclipped,
        sums.clients - sums.dropped,
        noise,
        expected_cohort_size=config.expected_cohort_size,
        target_quantile=config.target_quantile,
        learning_rate=config.clip_norm_lr,
    )


def server_update_config(
    dp: DPConfig,
    server_optimizer: optax.GradientTransformation,
    expected_cohort_size: float,
    params: PyTree,
    layout: ParamLayout = SAME_LAYOUT,
) -> ServerUpdate:
    """The server-side settings of a round from the DP policy (``params``: any pytree with
    the parameters' structure and shapes in ``layout``, for the per-layer bounds).

    Raises:
        ValueError: adaptive clipping whose clipped-count noise leaves no budget for the
            deltas (``DPConfig.noise_multipliers``).
    """
    common = dict(
        server_optimizer=server_optimizer, expected_cohort_size=float(expected_cohort_size)
    )
    if not dp.adaptive:
        return ServerUpdate(**common, fixed_bounds=dp.initial_clip_bounds(params, layout))
    num_bounds = len(dp.initial_clip_bounds(params, layout))
    _, z_delta, _ = dp.noise_multipliers(expected_cohort_size, num_bounds)
    return ServerUpdate(
        **common,
        delta_noise_multiplier=z_delta,
        count_stddev=dp.count_stddev(expected_cohort_size),
        target_quantile=float(dp.target_unclipped_quantile),
        clip_norm_lr=float(dp.clip_norm_lr),
    )


def _metrics(
    sums: RoundSums,
    updates,
    noisy,
    total,
    expected_cohort_size: float,
    layer_fn: Callable,
    layout: ParamLayout,
) -> dict[str, Any]:
    """Round metrics; per layer h the signal ‖Σ clip(Δ)_h‖/S and the noise ‖ξ_h‖/S on the
    mean (what per-layer clipping trades off: docs/replication.md)."""
    kept = jnp.maximum(sums.clients - sums.dropped, 1.0)
    noise = jax.tree.map(jnp.subtract, noisy, total)
    per_mean = 1.0 / expected_cohort_size
    return {
        "layer_signal_norms": {
            k: v * per_mean for k, v in transforms.layer_norms(total, layer_fn, layout).items()
        },
        "layer_noise_norms": {
            k: v * per_mean for k, v in transforms.layer_norms(noise, layer_fn, layout).items()
        },
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
    :class:`NonFiniteParamsError` when the update would make parameters NaN/inf,
    :class:`PastNoiseHorizonError` when the server state had already applied the n rounds
    of the correlated-noise strategy (metrics ``past_noise_horizon``, ``noise_horizon``).
    The round step keeps the previous server state in these cases, so the run can stop
    cleanly with nothing lost.
    """
    if float(metrics.get("past_noise_horizon", 0.0)):
        raise PastNoiseHorizonError(
            _past_horizon_message(f"round {round_index}", int(metrics["noise_horizon"]))
        )
    if float(metrics["params_finite"]) == 0.0:
        raise NonFiniteParamsError(
            f"round {round_index}: the server update made parameters NaN/inf; the round "
            "was not applied. Lower the server learning rate or the noise."
        )
    clients, dropped = float(metrics["clients"]), float(metrics["dropped_clients"])
    if clients > 0 and dropped == clients:
        raise AllClientsDroppedError(
            f"round {round_index}: all {int(clients)} clients sent NaN/inf updates; the round "
            "was not applied. Check the local learning rate and the client data."
        )


# ------------------------------------------------------------------ state sharding


def server_state_shardings(
    state: ServerState, mesh: jax.sharding.Mesh, shard: bool = True
) -> ServerState:
    """Where each leaf of the server state lives on ``mesh`` (a pytree of ``NamedSharding``
    like ``state``; its leaves may be arrays or ``jax.ShapeDtypeStruct`` values).

    ``shard``: every array leaf is split along its first dimension that the mesh's
    ``"clients"`` axis divides (ZeRO: each device keeps 1/n of the parameters, optimizer
    moments and correlated-noise buffers); scalars and leaves without such a dimension are
    replicated. ``shard=False``: everything replicated (the default state).
    """
    axis = distributed.CLIENTS_AXIS
    devices = mesh.shape[axis]

    def sharding(leaf) -> NamedSharding:
        shape = np.shape(leaf)
        divisible = [d for d, size in enumerate(shape) if size >= devices and size % devices == 0]
        split = divisible[0] if shard and divisible else None
        if split is None:
            return NamedSharding(mesh, PartitionSpec())
        return NamedSharding(mesh, PartitionSpec(*([None] * split), axis))

    return jax.tree.map(sharding, state)


# ------------------------------------------------------------------ the round step


def make_round_step(
    client_update: ClientUpdate,
    server_optimizer: optax.GradientTransformation,
    dp: DPConfig,
    expected_cohort_size: float,
    executor: executors.Executor | None = None,
    layout: ParamLayout = SAME_LAYOUT,
    canaries: Canaries | None = None,
    shard_server_state: bool = False,
) -> BoundRoundStep:
    """Builds the round step ``(server_state, cohort_block, key) -> (server_state, metrics)``.

    Args:
        client_update: from :func:`fl_dp_asr.fl.client.make_client_update`.
        server_optimizer: any optax optimizer applied to the pseudo-gradient
            (mean noisy clipped delta); see :mod:`fl_dp_asr.fl.server`.
        dp: clipping and noise settings.
        expected_cohort_size: S for fixed-size sampling, q·K for Poisson (the sampler's
            ``expected_size``); the sum is divided by it and σ_DP is converted with it.
        executor: how clients are run (:mod:`fl_dp_asr.fl.executors`); default
            ``executors.vectorized()`` (chunks of 16 clients).
        layout: the layout the round holds the parameters in (:mod:`fl_dp_asr.dp.layout`;
            e.g. the ASR model's stacked blocks, ``asr.PARAM_LAYOUT``): the server state's
            params, the clients' local training, deltas, noise and the server optimizer
            use it; per-layer clipping, bounds and metrics name canonical layers. Build
            the server optimizer with the same layout
            (:func:`fl_dp_asr.fl.server.make_server_optimizer`).
        canaries: canary clients for the empirical privacy estimate (module docstring);
            every ``cohort_block`` then carries ``canary_mask`` ``[canaries.inserted]``.
            None: no canaries, and the program of a run without them.
        shard_server_state: split the server state (parameters, optimizer moments,
            correlated-noise buffers) over the executor's mesh instead of replicating it
            (ZeRO-style, :func:`server_state_shardings`): the parameters are gathered for
            local training (one all-gather per round, outside the client loop) and every
            device updates its own part of the state. Same numbers as the replicated state;
            needs a mesh (the ``sharded`` executor). Place the state with
            :func:`server_state_shardings` (``jax.device_put``) before the first call.

    Raises:
        ValueError: at once, naming the argument: ``expected_cohort_size`` not finite and
            > 0, ``dp`` not a ``DPConfig``, ``executor`` not an ``Executor``, or adaptive
            clipping whose clipped-count noise leaves the deltas nothing (z_b ≤ z; per-layer
            clipping: even with one bound), canaries without fixed clipping. At a call: a
            server state that does not fit ``dp`` (:func:`check_server_state`), a cohort
            block whose ``canary_mask`` does not match ``canaries``.

    Returns:
        The round step, a :class:`BoundRoundStep` (σ_DP is an argument of its compiled
        program: steps that differ only in the noise share one compilation).
        ``cohort_block`` follows docs/CONTRACTS.md (leading client axis,
        padded here to a multiple of ``executor.client_multiple``); ``key`` should be
        ``fold_in(run_key, round)`` so resumed runs are exact. Metrics are float32 scalars
        (``layer_delta_norms`` a dict of them).
    """
    checks.check_positive("expected_cohort_size", expected_cohort_size)
    if not isinstance(dp, DPConfig):
        raise ValueError(f"dp must be a fl_dp_asr.dp.DPConfig, got {dp!r}.")
    executor = executors.vectorized() if executor is None else executor
    if not isinstance(executor, executors.Executor):
        raise ValueError(
            f"executor must be an fl_dp_asr.fl.executors.Executor (e.g. "
            f"executors.vectorized(16), executors.make('sharded')), got "
            f"{executor!r}."
        )
    if dp.adaptive:
        _check_count_noise(dp, expected_cohort_size)
    if canaries is not None:
        Canaries.check(dp)
    if shard_server_state and executor.mesh is None:
        raise ValueError(
            "shard_server_state=True splits the server state over the devices of "
            "the executor's mesh: use the sharded executor "
            "(executors.make('sharded'))."
        )
    contribution = make_contribution(client_update, dp.client_clip(layout))
    server_update = functools.partial(
        _server_update, dp, server_optimizer, float(expected_cohort_size), layout, canaries
    )
    noise_stddev = 0.0 if dp.adaptive else float(dp.noise_stddev(expected_cohort_size))

    def compose(update):
        def round_step(state: ServerState, cohort_block, key, noise_stddev):
            cohort_block, canary_mask = _split_canary_mask(cohort_block, canaries)
            cohort_block = executors.pad_clients(cohort_block, executor.client_multiple)
            keys = client_keys(key, executors.num_slots(cohort_block))
            broadcast = Broadcast(state.params, state.clip_bounds)
            total, sums = executor.aggregate(contribution, broadcast, cohort_block, keys)
            new_state, metrics = update(state, total, sums, key, noise_stddev, canary_mask)
            if shard_server_state and executor.mesh is not None:
                new_state = jax.lax.with_sharding_constraint(
                    new_state, server_state_shardings(new_state, executor.mesh)
                )
            return new_state, metrics

        return round_step

    check = functools.partial(
        check_server_state, dp=dp, expected_cohort_size=float(expected_cohort_size), layout=layout
    )
    if executor.traceable:
        return BoundRoundStep(
            jax.jit(compose(server_update), donate_argnums=(0,)), noise_stddev, check, executor.mesh
        )
    return BoundRoundStep(
        compose(jax.jit(server_update, donate_argnums=(0,))), noise_stddev, check, executor.mesh
    )


def _split_canary_mask(
    cohort_block: dict[str, Any], canaries: Canaries | None
) -> tuple[dict[str, Any], jax.Array | None]:
    """``(the clients' block, canary_mask or None)``: the mask is not a per-client entry
    (the executors must not pad or shard it)."""
    if canaries is None:
        if CANARY_MASK in cohort_block:
            raise ValueError(
                f"the cohort block carries {CANARY_MASK!r}, but the round step "
                "was made without canaries (make_round_step(..., canaries=))."
            )
        return cohort_block, None
    mask = cohort_block.get(CANARY_MASK)
    if mask is None or jnp.shape(mask) != (canaries.inserted,):
        raise ValueError(
            f"a round step with {canaries.inserted} canaries needs the cohort "
            f"block entry {CANARY_MASK!r}, float32 [{canaries.inserted}] (1.0: "
            f"sampled this round), got {None if mask is None else jnp.shape(mask)}."
        )
    return {k: v for k, v in cohort_block.items() if k != CANARY_MASK}, mask


def _check_count_noise(dp: DPConfig, expected_cohort_size: float) -> None:
    """Adaptive clipping: refuses, when the step is made, a clipped-count noise that leaves
    the deltas nothing (z_b ≤ z) whatever the number of bounds H. Global clipping has one
    bound, so this is the whole check; per-layer clipping's z_b = 2σ_b/√H shrinks with H,
    known only from the parameters: :func:`check_server_state` checks it at every call."""
    try:
        dp.noise_multipliers(expected_cohort_size, 1)
    except ValueError as error:
        if dp.clipping == "global":
            raise
        raise ValueError(
            f"{error} (Per-layer clipping: z_b is that of one bound here; H "
            "bounds give z_b = 2σ_b/√H, smaller still.)"
        ) from None


def check_server_state(
    state: ServerState, dp: DPConfig, expected_cohort_size: float, layout: ParamLayout = SAME_LAYOUT
) -> None:
    """Raises ValueError, before anything is traced, when ``state`` does not fit ``dp``.

    Adaptive clipping needs the bounds of :func:`init_server_state` called with ``dp``
    (one per layer of ``dp.layers``, or ``"global"``), and a clipped-count noise that leaves
    the deltas a share of z with that many bounds (z_b > z); fixed clipping needs a state
    without bounds (otherwise the step would add the adaptive noise z_Δ·C_t, which is 0).
    Only names and shapes are read: nothing moves between host and device — except with
    correlated noise, whose state must not have applied the strategy's n rounds already
    (:class:`PastNoiseHorizonError`; the round count is read: :func:`_check_horizon`).
    """
    bounds = state.clip_bounds
    make = (
        "make the state with fl_round.init_server_state(params, server_optimizer, dp), "
        "passing the round step's DPConfig"
    )
    if dp.adaptive and not bounds:
        raise ValueError(
            "the server state was initialized without adaptive clip bounds "
            "(ServerState.clip_bounds is {}), but the round step's DPConfig clips adaptively "
            f"(dp.target_unclipped_quantile={dp.target_unclipped_quantile}): {make}."
        )
    if not dp.adaptive and bounds:
        raise ValueError(
            f"the server state carries adaptive clip bounds ({len(bounds)}: "
            f"{sorted(bounds)[:3]}...), but the round step's DPConfig clips with fixed bounds "
            f"(dp.target_unclipped_quantile=None): {make}, or set "
            "dp.target_unclipped_quantile to go on adapting them."
        )
    if _keeps_noise_state(dp) != bool(jax.tree.leaves(state.noise_state)):
        raise ValueError(
            f"the server state {'lacks' if _keeps_noise_state(dp) else 'carries'} "
            f"a correlated-noise state, but the round step's dp.correlated_noise is "
            f"{dp.correlated_noise!r}: {make}."
        )
    if _keeps_noise_state(dp):
        _check_noise_state(state, dp, make)
    if dp.correlated_noise is not None:
        _check_horizon(state, dp.correlated_noise.rounds)
    if not dp.adaptive:
        return
    # The layer names alone (not dp.initial_clip_bounds, which also computes and validates
    # the allocation's bounds): this runs at every call.
    expected = (
        {adaptive.GLOBAL}
        if dp.clipping == "global"
        else set(transforms.layer_sizes(state.params, dp.layer_fn, layout))
    )
    if set(bounds) != expected:
        raise ValueError(
            f"the server state's clip bounds {sorted(bounds)[:3]}... ({len(bounds)}) are not "
            f"those of dp.clipping={dp.clipping!r}, dp.layers={dp.layers!r} "
            f"{sorted(expected)[:3]}... ({len(expected)}): {make}."
        )
    dp.noise_multipliers(expected_cohort_size, len(bounds))


def _check_horizon(state: ServerState, horizon: int) -> None:
    """Raises :class:`PastNoiseHorizonError` when ``state`` has applied ``horizon`` rounds
    (the correlated-noise strategy's n) already. Reads the round count, one int32 scalar,
    from the device (this process's copy, an explicit ``jax.device_get``: allowed under
    ``jax.transfer_guard("disallow")``; it waits for the step that made the state): only
    with correlated noise, and not for a state of shapes (``lower``) or under a trace, whose
    rounds the step's ``past_noise_horizon`` metric flags instead."""
    applied = state.round
    if isinstance(applied, jax.core.Tracer) or not hasattr(applied, "__array__"):
        return
    if isinstance(applied, jax.Array):
        applied = applied.addressable_data(0)
    rounds = int(jax.device_get(applied))
    if rounds >= horizon:
        raise PastNoiseHorizonError(
            _past_horizon_message(f"the server state has applied {rounds} rounds", horizon)
        )


def _past_horizon_message(where: str, horizon: int) -> str:
    """The error of a round past the strategy's ``horizon`` n rounds, found at ``where``."""
    return (
        f"{where}: the correlated-noise strategy (dp.correlated_noise) covers {horizon} "
        "rounds; the noise of a later round is not the mechanism the accountant covers, "
        "so the round was not applied. Build the strategy for all the rounds you run "
        f"(CorrelatedNoise(rounds=...), trainer: --config.dp.strategy_rounds) from round "
        "1, or stop here."
    )


def _check_noise_state(state: ServerState, dp: DPConfig, make: str) -> None:
    """Raises ValueError when the correlated-noise state is not the one ``dp``'s mechanism
    makes for these parameters (structure, shapes, dtypes; nothing is computed)."""
    expected = jax.eval_shape(dp.correlated_noise.init_state, state.params)
    got = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), state.noise_state
    )
    if jax.tree.structure(got) != jax.tree.structure(expected):  # type: ignore[operator]
        raise ValueError(
            f"the server state's correlated-noise state has {len(jax.tree.leaves(got))} "
            f"arrays, but dp.correlated_noise={dp.correlated_noise!r} keeps "
            f"{len(jax.tree.leaves(expected))} for these parameters (another mechanism, "
            f"number of buffers or model): {make}."
        )
    for (path, want), have in zip(
        jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(got)
    ):
        if (want.shape, want.dtype) != (have.shape, have.dtype):
            raise ValueError(
                f"the server state's correlated-noise state at "
                f"{jax.tree_util.keystr(path)} is {have.dtype}{list(have.shape)}, but "
                f"dp.correlated_noise={dp.correlated_noise!r} keeps {want.dtype}"
                f"{list(want.shape)} for these parameters: {make}."
            )


class BoundRoundStep(NamedTuple):
    """A round step with its noise std bound: ``step(state, cohort_block, key)``.

    ``step.lower(state, cohort_block, key)`` lowers the jitted step (traceable executors);
    the noise std is an argument of the compiled program, not a constant in it, so steps
    that differ only in σ_DP lower to the same program and share one compilation (also
    across processes, through JAX's persistent compilation cache). Both first run
    ``check(state)`` (:func:`check_server_state`): a state that does not fit the step's
    DP settings is a clear error, not a failure inside the trace.

    Making or lowering a round step touches no device: the noise std is a host number,
    placed on the devices (replicated over ``mesh``) at the first call and kept there, and
    :meth:`lower` takes ``jax.ShapeDtypeStruct`` values (with shardings) as well as arrays, so
    the step compiles for devices that are not attached (e.g. a TPU topology from
    ``jax.experimental.topologies``; :mod:`fl_dp_asr.aot`).

    Attributes:
        step: the jitted ``(state, cohort_block, key, noise_stddev) -> (state, metrics)``.
        noise_stddev: the std of the noise on the sum, z·C (a float32 number).
        check: ``check(state)`` before every call.
        mesh: the executor's client mesh (``None``: one device).
    """

    step: Callable
    noise_stddev: float
    check: Callable[[ServerState], None]
    mesh: jax.sharding.Mesh | None = None

    def __call__(self, state: ServerState, cohort_block, key):
        self.check(state)
        return self.step(
            state, cohort_block, key, _placed_scalar(float(self.noise_stddev), self.mesh)
        )

    def lower(self, state: ServerState, cohort_block, key):
        self.check(state)
        sharding = None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())
        noise = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding)
        return self.step.lower(state, cohort_block, key, noise)  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=64)
def _placed_scalar(value: float, mesh: jax.sharding.Mesh | None) -> jax.Array:
    """``value`` as a float32 scalar on the device (replicated over ``mesh`` if given), placed
    once per (value, mesh) so that later calls of the round step move nothing from the host."""
    scalar = np.float32(value)
    return jax.device_put(scalar) if mesh is None else distributed.replicate(scalar, mesh)
