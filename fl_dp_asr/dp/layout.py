"""Parameter layouts: the model's own pytree vs the one a round computes on.

A deep model scanned over its blocks (``lax.scan``/``nn.scan``) holds each kind of block
leaf once, stacked along a new leading axis: ``{"blocks": {"mlp_in": {"kernel": [n, d, f]}}}``
instead of ``{"block_00": {...}, ..., "block_35": {...}}``. Computing on the stacked layout
keeps a compiled round step the same size at every depth (one op per stacked leaf, not
one per block's leaf; docs/performance.md), but per-layer DP (clipping, adaptive bounds,
metrics) and layer-wise normalization must still see every block's layer on its own.

A :class:`ParamLayout` says how to go between the two. Functions that take one
(:mod:`fl_dp_asr.dp.transforms`, the round step) accept trees in the *compute* layout and
name and treat layers as in the *canonical* (model) layout: a stacked leaf of shape
``[n, ...]`` holds n layers, one per index of its leading axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any


class ParamLayout(NamedTuple):
    """``to_compute(canonical) -> compute`` and ``from_compute(compute) -> canonical``.

    Exact inverses that only move leaves and stack/unstack them along new leading axes
    (e.g. :func:`fl_dp_asr.models.stack_blocks` / :func:`~fl_dp_asr.models.unstack_blocks`);
    they must work on any pytree of the canonical (resp. compute) structure, whatever its
    leaves' trailing shapes (scalars included).
    """

    to_compute: Callable[[PyTree], PyTree]
    from_compute: Callable[[PyTree], PyTree]


def _same(tree: PyTree) -> PyTree:
    return tree


SAME_LAYOUT = ParamLayout(_same, _same)  # the compute layout is the model's own


def canonical_shapes(tree: PyTree, layout: ParamLayout) -> PyTree:
    """``jax.ShapeDtypeStruct`` s of ``tree`` (compute layout) in the canonical layout."""
    if layout is SAME_LAYOUT:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)
    return jax.eval_shape(layout.from_compute, tree)


def stack_ndims(tree: PyTree, layout: ParamLayout) -> PyTree:
    """For every leaf of ``tree`` (compute layout) the number of its leading axes that
    index layers (0 for a leaf that is one canonical leaf, 1 for a stacked leaf)."""
    if layout is SAME_LAYOUT:
        return jax.tree.map(lambda _: 0, tree)
    scalars = jax.tree.map(
        lambda _: jax.ShapeDtypeStruct((), jnp.float32), canonical_shapes(tree, layout)
    )
    return jax.tree.map(lambda s: len(s.shape), jax.eval_shape(layout.to_compute, scalars))


def per_layer(
    tree: PyTree, layout: ParamLayout, fn: Callable[[jax.Array, int], jax.Array]
) -> PyTree:
    """``fn(leaf, stack_ndim)`` on every leaf of ``tree`` (compute layout), returning one
    value per canonical leaf (shape ``leaf.shape[:stack_ndim]``), as a canonical tree."""
    values = jax.tree.map(fn, tree, stack_ndims(tree, layout))
    return layout.from_compute(values)


def broadcast_per_layer(tree: PyTree, layout: ParamLayout, canonical_values: PyTree) -> PyTree:
    """The canonical tree of one scalar per canonical leaf in the compute layout, each
    value shaped to broadcast against its (stacked) leaf of ``tree``."""
    values = layout.to_compute(canonical_values)
    return jax.tree.map(
        lambda x, v: jnp.reshape(v, jnp.shape(v) + (1,) * (jnp.ndim(x) - jnp.ndim(v))), tree, values
    )


def layerwise(
    transform: optax.GradientTransformation, layout: ParamLayout
) -> optax.GradientTransformation:
    """``transform`` applied to every canonical leaf on its own, in the compute layout.

    For stateless transforms that treat each leaf independently but not coordinate-wise,
    such as ``optax.scale_by_trust_ratio`` (LAMB's layer-wise normalization ‖θ_h‖/‖u_h‖):
    on a stacked leaf it is vmapped over the stacked layers, so every block's layer gets
    its own trust ratio, exactly as on the canonical layout.

    Raises:
        ValueError: at ``init``, when ``transform`` keeps a state (it could not be split per
            layer).
    """

    def init_fn(params):
        state = transform.init(params)
        if jax.tree.leaves(state):
            raise ValueError(
                "layerwise() takes a stateless transform (e.g. "
                f"optax.scale_by_trust_ratio()); this one keeps {state!r}."
            )
        return state

    def update_fn(updates, state, params=None):
        def one_leaf(stack_ndim, update, *param):
            def fn(u, *p):
                return transform.update(u, state, *p)[0]

            for _ in range(stack_ndim):
                fn = jax.vmap(fn)
            return fn(update, *param)

        trees = (updates,) if params is None else (updates, params)
        return jax.tree.map(one_leaf, stack_ndims(updates, layout), *trees), state

    return optax.GradientTransformation(init_fn, update_fn)
