"""Client-level differential privacy as optax ``GradientTransformation`` values.

Everything here acts on **one client's model delta** Δ (a pytree shaped like the
parameters) and is pure, ``jit``- and ``vmap``-safe, so it composes with
``optax.chain`` in any training loop. The federated round step vmaps a clipping
transform over the clients of a cohort and adds noise once to the sum with
:func:`gaussian_noise` (the pure function behind :func:`add_gaussian_noise`; the round
derives its noise key from the round key instead of keeping one in a state).

Vocabulary (arXiv 2310.00098, "Clipping"):

* ``clip(v, C) = v · C / max(C, ‖v‖)``, ‖·‖ the L2 norm.
* A *layer* is one parameter leaf by default, named by its key path with slashes
    (``"block_00/mlp/kernel"``, the name metrics, TensorBoard and plots use);
    ``layer_fn(path) -> name`` groups leaves (e.g. one layer per transformer block).
    H = number of layers, d_h their sizes, D = Σ d_h.
* A delta may be held in a compute layout (:mod:`fl_dp_asr.dp.layout`, e.g. a scanned
    model's blocks stacked along a leading axis): functions that take a ``layout`` still
    name and treat every canonical leaf as its own layer.
* Per-layer clipping (the paper's definition) clips every layer h to its own bound C_h
    with Σ_h C_h² = C², so ‖Δ̃‖ ≤ C. Allocations: ``"uniform"`` C_h = C/√H,
    ``"by_dim"`` C_h = C·√(d_h/D), or explicit bounds (a mapping by layer name, or a
    pytree shaped like Δ with one bound per leaf, like jax_privacy's ``clip_pytree``).

References:
    Pelikan et al., "Enabling Differentially Private Federated Learning for Speech
    Recognition: Benchmarks, Adaptive Optimizers and Gradient Clipping", arXiv 2310.00098.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fl_dp_asr.dp import checks
from fl_dp_asr.dp import layout as layout_lib
from fl_dp_asr.dp.layout import SAME_LAYOUT, ParamLayout

PyTree = Any
LayerFn = Callable[[tuple], str]
Allocation = str | Mapping[str, float] | PyTree
ALLOCATIONS = ("uniform", "by_dim")  # the allocation rules named by a string


class ClipStats(NamedTuple):
    """What a clipping transform saw, for metrics (per client when vmapped).

    Attributes:
        layer_norms: ``{layer name: ‖Δ_h‖}`` before clipping, float32 scalars.
        global_norm: ‖Δ‖ before clipping.
        clipped: float32 1.0 if the transform changed the delta, else 0.0.
    """

    layer_norms: dict[str, jax.Array]
    global_norm: jax.Array
    clipped: jax.Array


class NoiseState(NamedTuple):
    """State of :func:`add_gaussian_noise`: the PRNG key of the next draw."""

    key: jax.Array


# --------------------------------------------------------------------------- layers


def leaf_layer_name(path: tuple) -> str:
    """Default layer naming: one layer per parameter leaf, ``"block_00/mlp/kernel"``."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def top_module_name(path: tuple) -> str:
    """Coarse layers: one per top-level module (``"block_00"``, ``"front_end"``, ...)."""
    return jax.tree_util.keystr(path[:1], simple=True, separator="/")


def layer_sizes(
    tree: PyTree, layer_fn: LayerFn = leaf_layer_name, layout: ParamLayout = SAME_LAYOUT
) -> dict[str, int]:
    """Number of coordinates per layer, ``{name: d_h}`` (static Python ints)."""
    sizes: dict[str, int] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(
        layout_lib.canonical_shapes(tree, layout)
    ):
        name = layer_fn(path)
        sizes[name] = sizes.get(name, 0) + math.prod(jnp.shape(leaf))
    return sizes


def l2_norm(arrays: Sequence[jax.Array]) -> jax.Array:
    """√(Σ x²) over every coordinate of ``arrays`` (float32), without overflow.

    The squares are summed after scaling by 2^-e, 2^e the largest power of two ≤ max|x|
    (read off the float's exponent bits), and the root is scaled back. Powers of two scale
    exactly, so the result equals the plain formula's wherever that one neither overflows
    nor underflows; a finite layer of values ~1e20 (whose plain sum of squares is ∞ in
    float32) gets its finite norm. A NaN coordinate gives NaN, ±∞ gives ∞ (as the plain
    formula does). Costs one max-abs pass more than the plain formula. (``frexp``/``ldexp``
    would do the same but expand into enough ops to multiply XLA:CPU's compile time of a
    deep model's round step: the exponent is masked out of the bits instead.)

    >>> round(float(l2_norm([jnp.array([3e20, 4e20])])) / 1e20, 4)
    5.0
    """
    arrays = [jnp.asarray(x, jnp.float32) for x in arrays]
    max_abs = functools.reduce(
        jnp.maximum, [jnp.max(jnp.abs(x), initial=0.0) for x in arrays], jnp.float32(0.0)
    )
    # Biased exponent E of max|x|, kept in 1…253 so that 2^(E-127) and 2^(127-E) are normal.
    exponent_bits = jnp.clip(
        jax.lax.bitcast_convert_type(max_abs, jnp.uint32) & np.uint32(0x7F800000),
        np.uint32(1 << 23),
        np.uint32(253 << 23),
    )
    up = jax.lax.bitcast_convert_type(exponent_bits, jnp.float32)  # 2^e
    down = jax.lax.bitcast_convert_type(np.uint32(254 << 23) - exponent_bits, jnp.float32)
    return up * jnp.sqrt(sum(jnp.sum(jnp.square(x * down)) for x in arrays))


def _slice_norms(x: jax.Array, stack_ndim: int) -> jax.Array:
    """:func:`l2_norm` of every slice ``x[i, ...]`` over the ``stack_ndim`` leading axes."""
    if stack_ndim == 0:
        return l2_norm([x])
    return jax.vmap(lambda s: _slice_norms(s, stack_ndim - 1))(x)


def layer_norms(
    tree: PyTree, layer_fn: LayerFn = leaf_layer_name, layout: ParamLayout = SAME_LAYOUT
) -> dict[str, jax.Array]:
    """L2 norm of every layer, ``{name: ‖Δ_h‖}`` (float32 scalars; :func:`l2_norm`: finite
    for every finite layer, however large). A layer of several leaves gets the norm of its
    leaves' norms."""
    norms = layout_lib.per_layer(tree, layout, _slice_norms)
    leaves: dict[str, list[jax.Array]] = {}
    for path, norm in jax.tree_util.tree_leaves_with_path(norms):
        leaves.setdefault(layer_fn(path), []).append(norm)
    return {name: layer[0] if len(layer) == 1 else l2_norm(layer) for name, layer in leaves.items()}


def check_allocation(name: str, allocation: Allocation) -> None:
    """Raises ValueError, naming the setting ``name``, for a string that is not one of
    :data:`ALLOCATIONS` (mappings and pytrees of bounds are checked against the layers when
    the bounds are made, :func:`layer_bounds`)."""
    if isinstance(allocation, str) and allocation not in ALLOCATIONS:
        close = difflib.get_close_matches(allocation, ALLOCATIONS, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"{name}={allocation!r} is not an allocation{hint}: use one of "
            f"{ALLOCATIONS}, a mapping {{layer name: bound}} or a pytree of "
            "per-leaf bounds."
        )


def _bounds_by_layer(allocation: PyTree, tree: PyTree, layer_fn: LayerFn) -> dict[str, float]:
    """``{layer name: C_h}`` (checked ≥ 0) from a mapping by name or a pytree of per-leaf
    bounds (``tree`` in the canonical layout)."""

    def checked(name, bound):
        return checks.check_positive(f"the bound of layer {name!r}", float(bound), allow_zero=True)

    if jax.tree.structure(allocation) != jax.tree.structure(tree):  # type: ignore[operator]
        return {name: checked(name, bound) for name, bound in allocation.items()}
    bounds: dict[str, float] = {}
    for path, bound in jax.tree_util.tree_leaves_with_path(allocation):
        name = layer_fn(path)
        value = checked(name, bound)
        if bounds.setdefault(name, value) != value:
            raise ValueError(
                f"the leaves of layer {name!r} carry different bounds "
                f"({bounds[name]} and {value}): give one per layer."
            )
    return bounds


def layer_bounds(
    clip_norm: float,
    allocation: Allocation,
    tree: PyTree,
    layer_fn: LayerFn = leaf_layer_name,
    layout: ParamLayout = SAME_LAYOUT,
) -> dict[str, float]:
    """Per-layer bounds C_h with Σ C_h² = C², from an allocation rule.

    Args:
        clip_norm: the total bound C (L2, in parameter units).
        allocation: ``"uniform"`` (C/√H), ``"by_dim"`` (C·√(d_h/D)), or explicit bounds
            C_h ≥ 0 whose squares sum to C² (relative tolerance 1e-4): a mapping
            ``{layer name: C_h}``, or a pytree with the structure of ``tree`` holding one
            bound per leaf (leaves of one layer, under a grouping ``layer_fn``, must carry
            the same bound).
        tree: a pytree with the parameters' structure (shapes only are used).
        layer_fn: maps a leaf's key path to its layer name.
        layout: the layout of ``tree`` (:mod:`fl_dp_asr.dp.layout`); names, sizes and a
            pytree ``allocation`` are those of the canonical layout.

    Returns:
        ``{layer name: C_h}`` as Python floats.

    Example:
        >>> import jax.numpy as jnp
        >>> from fl_dp_asr.dp import transforms
        >>> delta = {"a": jnp.zeros(3), "b": jnp.zeros(1)}
        >>> transforms.layer_bounds(1.0, {"a": 0.6, "b": 0.8}, delta)
        {'a': 0.6, 'b': 0.8}
    """
    check_allocation("allocation", allocation)
    tree = layout_lib.canonical_shapes(tree, layout)
    sizes = layer_sizes(tree, layer_fn)
    if isinstance(allocation, str):
        if allocation == "uniform":
            return {name: clip_norm / math.sqrt(len(sizes)) for name in sizes}
        total = sum(sizes.values())  # "by_dim"
        return {name: clip_norm * math.sqrt(d / total) for name, d in sizes.items()}
    bounds = _bounds_by_layer(allocation, tree, layer_fn)
    if set(bounds) != set(sizes):
        raise ValueError(
            f"allocation names {sorted(set(bounds) ^ set(sizes))} do not match the layers "
            f"{sorted(sizes)}."
        )
    squared = sum(b * b for b in bounds.values())
    if not math.isclose(squared, clip_norm**2, rel_tol=1e-4):
        raise ValueError(
            f"explicit per-layer bounds give sqrt(sum C_h^2) = {math.sqrt(squared):.6g}, "
            f"but clip_norm = {clip_norm:.6g}: they must agree."
        )
    return bounds


def _scale_layers(
    tree: PyTree, scales: Mapping[str, jax.Array], layer_fn: LayerFn, layout: ParamLayout
) -> PyTree:
    per_leaf = jax.tree_util.tree_map_with_path(
        lambda path, _: jnp.asarray(scales[layer_fn(path)], jnp.float32),
        layout_lib.canonical_shapes(tree, layout),
    )
    factors = layout_lib.broadcast_per_layer(tree, layout, per_leaf)
    return jax.tree.map(lambda leaf, f: (leaf * f).astype(leaf.dtype), tree, factors)


def _global_norm(norms: Mapping[str, jax.Array]) -> jax.Array:
    return l2_norm(list(norms.values()))


def _clip_factor(norm: jax.Array, bound: float | jax.Array) -> jax.Array:
    """C / max(C, ‖v‖): 1 inside the bound; safe at ‖v‖ = 0 and at C = ∞ (no clipping)."""
    return jnp.where(norm > bound, bound / jnp.where(norm > bound, norm, 1.0), 1.0)


# ------------------------------------------------------------- pure clipping rules


def clip_global(
    delta: PyTree,
    clip_norm: float | jax.Array,
    layer_fn: LayerFn = leaf_layer_name,
    layout: ParamLayout = SAME_LAYOUT,
) -> tuple[PyTree, ClipStats]:
    """Δ · C / max(C, ‖Δ‖), with the statistics of :class:`ClipStats`."""
    norms = layer_norms(delta, layer_fn, layout)
    norm = _global_norm(norms)
    factor = _clip_factor(norm, clip_norm)
    clipped = jax.tree.map(lambda x: (x * factor).astype(x.dtype), delta)
    return clipped, ClipStats(norms, norm, (norm > clip_norm).astype(jnp.float32))


def clip_layers(
    delta: PyTree,
    bounds: Mapping[str, float | jax.Array],
    layer_fn: LayerFn = leaf_layer_name,
    layout: ParamLayout = SAME_LAYOUT,
) -> tuple[PyTree, ClipStats]:
    """Every layer h clipped independently: Δ_h · C_h / max(C_h, ‖Δ_h‖)."""
    norms = layer_norms(delta, layer_fn, layout)
    factors = {name: _clip_factor(norms[name], bounds[name]) for name in norms}
    any_clipped = jnp.any(jnp.stack([norms[n] > bounds[n] for n in norms]))
    return (
        _scale_layers(delta, factors, layer_fn, layout),
        ClipStats(norms, _global_norm(norms), any_clipped.astype(jnp.float32)),
    )


def rescale_layers(
    delta: PyTree,
    clip_norm: float,
    bounds: Mapping[str, float],
    layer_fn: LayerFn = leaf_layer_name,
    layout: ParamLayout = SAME_LAYOUT,
) -> tuple[PyTree, ClipStats]:
    """Reference-code variant: if ‖Δ‖ ≥ C, every layer becomes exactly C_h long.

    Layers that are exactly zero stay zero. Below the bound Δ is returned unchanged.
    """
    norms = layer_norms(delta, layer_fn, layout)
    norm = _global_norm(norms)
    over = norm >= clip_norm
    factors = {
        name: jnp.where(over, bounds[name] / jnp.where(norms[name] > 0, norms[name], 1.0), 1.0)
        for name in norms
    }
    return (
        _scale_layers(delta, factors, layer_fn, layout),
        ClipStats(norms, norm, over.astype(jnp.float32)),
    )


def standard_normal_like(key: jax.Array, tree: PyTree, layout: ParamLayout = SAME_LAYOUT) -> PyTree:
    """N(0, 1) float32 draws shaped like ``tree`` (compute layout ``layout``).

    The numbers of ``optax.tree_utils.tree_random_like(key, canonical, jax.random.normal)``
    on the canonical layout (canonical leaf i draws from ``split(key, leaves)[i]``), in any
    layout: a stacked leaf draws its layers with one vmapped call over their keys. (One
    draw per layer compiles slowly: ~70 s for the 648 leaves of a 36-block model on
    XLA:CPU, ~1 s stacked; docs/performance.md.)
    """
    canonical = layout_lib.canonical_shapes(tree, layout)
    leaves, treedef = jax.tree.flatten(canonical)
    keys = jax.random.split(key, len(leaves))
    key_tree = layout.to_compute(jax.tree.unflatten(treedef, list(keys)))

    def draw(leaf, leaf_keys):
        def sample(k):
            return jax.random.normal(k, jnp.shape(leaf)[jnp.ndim(leaf_keys) :], jnp.float32)

        for _ in range(jnp.ndim(leaf_keys)):
            sample = jax.vmap(sample)
        return sample(leaf_keys)

    return jax.tree.map(draw, tree, key_tree)


def gaussian_noise(
    tree: PyTree, stddev: float | jax.Array, key: jax.Array, layout: ParamLayout = SAME_LAYOUT
) -> PyTree:
    """``tree + N(0, stddev²)`` independently on every coordinate (float32 draws,
    :func:`standard_normal_like`)."""
    noise = standard_normal_like(key, tree, layout)
    return jax.tree.map(lambda x, n: (x + stddev * n).astype(x.dtype), tree, noise)


def tree_is_finite(tree: PyTree) -> jax.Array:
    """Scalar bool: every coordinate of every leaf is finite (no NaN/inf)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# ------------------------------------------------------------------ transforms


def _stats_state(tree: PyTree, layer_fn: LayerFn, layout: ParamLayout) -> ClipStats:
    names = layer_sizes(tree, layer_fn, layout)
    zero = jnp.zeros((), jnp.float32)
    return ClipStats(dict.fromkeys(names, zero), zero, zero)


def _clipping_transform(
    rule: Callable[[PyTree], tuple[PyTree, ClipStats]], layer_fn: LayerFn, layout: ParamLayout
) -> optax.GradientTransformation:

    def init_fn(params):
        return _stats_state(params, layer_fn, layout)

    def update_fn(updates, state, params=None):
        del state, params
        return rule(updates)

    return optax.GradientTransformation(init_fn, update_fn)


def clip_by_global_norm(
    clip_norm: float, layout: ParamLayout = SAME_LAYOUT
) -> optax.GradientTransformation:
    """Clips one client's delta to global L2 norm C: Δ̃ = Δ · C / max(C, ‖Δ‖).

    The state is the :class:`ClipStats` of the last update (norm before clipping and
    whether it clipped), read it with ``optax.tree_utils.tree_get(state, "clipped")``.

    .. warning:: The input must be **one client's** delta, not a batch: vmap the
          transform over clients.

    Args:
        clip_norm: the bound C > 0 (``inf``: no clipping, the statistics only).
        layout: the layout of the deltas (:mod:`fl_dp_asr.dp.layout`; the statistics
            name the canonical leaves).

    Returns:
        An ``optax.GradientTransformation``.

    References:
        McMahan et al., "Learning Differentially Private Recurrent Language Models",
        arXiv 1710.06963; Pelikan et al., arXiv 2310.00098.

    Example:
        >>> import jax.numpy as jnp
        >>> from fl_dp_asr.dp import transforms
        >>> clip = transforms.clip_by_global_norm(1.0)
        >>> delta = {"w": jnp.array([3.0, 4.0])}
        >>> clipped, stats = clip.update(delta, clip.init(delta))
        >>> clipped["w"].tolist(), float(stats.global_norm)
        ([0.6000000238418579, 0.800000011920929], 5.0)
    """
    checks.check_positive("clip_norm", clip_norm, allow_inf=True)
    return _clipping_transform(
        lambda d: clip_global(d, clip_norm, leaf_layer_name, layout), leaf_layer_name, layout
    )


def clip_per_layer(
    clip_norm: float,
    allocation: Allocation = "uniform",
    layer_fn: LayerFn = leaf_layer_name,
    layout: ParamLayout = SAME_LAYOUT,
) -> optax.GradientTransformation:
    """Per-layer clipping (paper definition): Δ̃_h = Δ_h · C_h / max(C_h, ‖Δ_h‖).

    Each layer is clipped independently to C_h with Σ_h C_h² = C², hence ‖Δ̃‖ ≤ C and the
    user-level sensitivity of a sum of clipped deltas is C.

    .. warning:: The input must be **one client's** delta. The bounds are computed from
          the structure seen by ``init``/``update`` (static), so the pytree structure must
          not change between calls.

    Args:
        clip_norm: the total bound C > 0.
        allocation: ``"uniform"`` (C_h = C/√H), ``"by_dim"`` (C_h = C·√(d_h/D)), or
            explicit bounds with Σ C_h² = C²: a mapping ``{layer name: C_h}`` or a pytree
            shaped like the delta with one bound per leaf (see :func:`layer_bounds`).
        layer_fn: maps a leaf's key path to its layer name (default: one layer per leaf,
            :func:`leaf_layer_name`); leaves with one name form one layer.
        layout: the layout of the deltas (:mod:`fl_dp_asr.dp.layout`): layers are named
            and clipped as in the canonical layout (a stacked leaf holds one layer per
            index of its leading axis).

    Returns:
        An ``optax.GradientTransformation`` whose state is the last :class:`ClipStats`.

    References:
        Pelikan et al., arXiv 2310.00098, section "Per-layer clipping".

    Example:
        >>> import jax.numpy as jnp
        >>> from fl_dp_asr.dp import transforms
        >>> clip = transforms.clip_per_layer(1.0, "uniform")   # C_h = 1/√2
        >>> delta = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.1, 0.0])}
        >>> clipped, _ = clip.update(delta, clip.init(delta))
        >>> round(float(jnp.linalg.norm(clipped["a"])), 4), clipped["b"].tolist()
        (0.7071, [0.10000000149011612, 0.0])
    """
    checks.check_positive("clip_norm", clip_norm, allow_inf=True)
    check_allocation("allocation", allocation)

    def rule(delta):
        bounds = layer_bounds(clip_norm, allocation, delta, layer_fn, layout)
        return clip_layers(delta, bounds, layer_fn, layout)

    return _clipping_transform(rule, layer_fn, layout)


def rescale_per_layer(
    clip_norm: float,
    allocation: Allocation = "uniform",
    layer_fn: LayerFn = leaf_layer_name,
    layout: ParamLayout = SAME_LAYOUT,
) -> optax.GradientTransformation:
    """The paper's *reference code* variant of per-layer clipping.

    If ‖Δ‖ ≥ C, **every** layer is rescaled to exactly C_h (Σ C_h² = C², so ‖Δ̃‖ = C,
    small layers are scaled *up*); otherwise Δ is unchanged. Both this and
    :func:`clip_per_layer` bound ‖Δ̃‖ ≤ C, but they are different estimators; the
    paper's text describes :func:`clip_per_layer`.

    Args:
        clip_norm: the total bound C > 0.
        allocation: as in :func:`clip_per_layer`.
        layer_fn: as in :func:`clip_per_layer`.
        layout: as in :func:`clip_per_layer`.

    Returns:
        An ``optax.GradientTransformation`` whose state is the last :class:`ClipStats`.

    Example:
        >>> import jax.numpy as jnp
        >>> from fl_dp_asr.dp import transforms
        >>> t = transforms.rescale_per_layer(1.0, "uniform")
        >>> delta = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.1, 0.0])}
        >>> out, _ = t.update(delta, t.init(delta))
        >>> round(float(jnp.linalg.norm(out["b"])), 4)
        0.7071
    """
    checks.check_positive("clip_norm", clip_norm, allow_inf=True)
    check_allocation("allocation", allocation)

    def rule(delta):
        bounds = layer_bounds(clip_norm, allocation, delta, layer_fn, layout)
        return rescale_layers(delta, clip_norm, bounds, layer_fn, layout)

    return _clipping_transform(rule, layer_fn, layout)


def add_gaussian_noise(stddev: float, key: jax.Array) -> optax.GradientTransformation:
    """Adds N(0, stddev²) independently to every coordinate.

    For user-level DP-FedAvg apply it **once to the sum** of clipped client deltas with
    ``stddev = z · C`` (z = noise multiplier, C = clip bound). The state holds the PRNG
    key; each update splits it, so the noise is deterministic given ``key``.

    .. warning:: Noise must be added after clipping and after summing over clients.

    Args:
        stddev: standard deviation per coordinate (parameter units), ≥ 0.
        key: a ``jax.random`` key.

    Returns:
        An ``optax.GradientTransformation`` with :class:`NoiseState`.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from fl_dp_asr.dp import transforms
        >>> noise = transforms.add_gaussian_noise(0.5, jax.random.key(0))
        >>> tx = optax.chain(transforms.clip_by_global_norm(1.0), noise)
        >>> g = {"w": jnp.zeros(100_000)}
        >>> out, _ = tx.update(g, tx.init(g))
        >>> round(float(jnp.std(out["w"])), 2)
        0.5
    """
    checks.check_positive("stddev", stddev, allow_zero=True)

    def init_fn(params):
        del params
        return NoiseState(key)

    def update_fn(updates, state, params=None):
        del params
        next_key, draw_key = jax.random.split(state.key)
        return gaussian_noise(updates, stddev, draw_key), NoiseState(next_key)

    return optax.GradientTransformation(init_fn, update_fn)
