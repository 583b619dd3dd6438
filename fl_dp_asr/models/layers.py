"""Building blocks of the encoder whose numbers do not depend on padding, and a cheap GELU.

**Padding invariance.** A local step may run on its batch with padding rows and frames
cut off (:class:`fl_dp_asr.data.PaddingBuckets`), and every executor must compute the same
update whatever cut it chose. Deterministic layers are padding-invariant already (padded
frames are masked everywhere), but ``jax.random`` draws are not: the bits of element
``[b, t, d]`` of a ``[B, T, D]`` draw depend on T. Here every random array is drawn per row
(utterance, or attention query frame) from ``fold_in(key, row)``, and within a row element
``[t, ...]`` gets the bits of its row-major index — the same for every T. So cutting
padding off a batch cuts the same values off every mask: nothing else changes.

**Cheap bits.** Dropout needs millions of bits per local step; jax's threefry costs ~20
rounds of integer work per 64 bits, and was 12 % of a client step on CPU. Within a row,
:func:`row_bits` hashes the element index with murmur3's 32-bit finalizer (a bijection with
full avalanche), keyed by the row's threefry key — a counter-based generator like the
Philox of GPU dropout, about 5× cheaper than threefry here. It only drives dropout masks
and CAPE's local shifts (augmentation); DP noise is drawn with ``jax.random``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_GOLDEN = np.uint32(0x9E3779B9)


def _mix32(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finalizer (uint32 → uint32, a bijection)."""
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def row_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 random bits [R, T, ...] that are *prefix-stable* in R and T.

    Row r is keyed by ``fold_in(key, r)``; element ``[r, t, ...]`` hashes its index within
    the row (row-major), which does not depend on R or T given the trailing sizes. So the
    bits of a cut ``[:R', :T']`` of a draw equal the draw of shape ``(R', T', ...)``.
    """
    seeds = jax.vmap(lambda r: jax.random.key_data(jax.random.fold_in(key, r)))(
        jnp.arange(shape[0])
    )  # uint32 [R, 2]
    index = jnp.zeros(shape[1:], jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape) - 1)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape[1:], axis) * np.uint32(stride)
        stride *= shape[1 + axis]
    seeds = seeds.reshape((shape[0], 2) + (1,) * (len(shape) - 1))
    return _mix32(_mix32(index[None] * _GOLDEN + seeds[:, 0]) ^ seeds[:, 1])


def row_bernoulli(key: jax.Array, keep_prob: float, shape: tuple[int, ...]) -> jax.Array:
    """Bernoulli(keep_prob) bool array [R, T, ...], prefix-stable like :func:`row_bits`."""
    threshold = np.uint32(min(round(keep_prob * 2.0**32), 2**32 - 1))
    return row_bits(key, shape) < threshold


def row_uniform(key: jax.Array, shape: tuple[int, ...], minval: float, maxval: float) -> jax.Array:
    """U[minval, maxval) float32 array [R, T, ...], prefix-stable like :func:`row_bits`
    (23 random mantissa bits, as ``jax.random.uniform``)."""
    mantissa = (row_bits(key, shape) >> 9) | np.uint32(0x3F800000)
    unit = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0  # [0, 1)
    return minval + unit * (maxval - minval)


class FrameDropout(nn.Module):
    """Dropout of [B, T, ...] activations with a padding-invariant mask (:func:`row_bernoulli`).

    Same distribution as ``nn.Dropout`` (kept values scaled by 1 / (1 − rate)); draws from
    the ``"dropout"`` RNG stream.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        return frame_dropout(x, self.rate, self.make_rng("dropout"))


def frame_dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """:class:`FrameDropout` as a function of an explicit ``key`` (None: the identity)."""
    if key is None or rate == 0.0:
        return x
    keep_prob = 1.0 - rate
    keep = row_bernoulli(key, keep_prob, x.shape)
    return jnp.where(keep, x / keep_prob, 0.0).astype(x.dtype)


def attention_with_frame_dropout(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None = None,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    dtype: Any = None,
    precision: Any = None,
    force_fp32_for_softmax: bool = False,
) -> jax.Array:
    """``nn.dot_product_attention`` with a padding-invariant dropout of the weights.

    As flax's default (``broadcast_dropout``), one [Tq, Tk] mask is shared by every
    utterance and head; query frame q draws from ``fold_in(dropout_rng, q)``
    (:func:`row_bernoulli`). query/key/value: [B, T, heads, head_dim] → [B, Tq, heads,
    head_dim].
    """
    weights = nn.dot_product_attention_weights(
        query,
        key,
        mask=mask,
        deterministic=True,
        dtype=dtype,
        precision=precision,
        force_fp32_for_softmax=force_fp32_for_softmax,
    )
    if not deterministic and dropout_rate > 0.0:
        keep_prob = 1.0 - dropout_rate
        assert dropout_rng is not None, "dropout needs dropout_rng"
        keep = row_bernoulli(dropout_rng, keep_prob, weights.shape[-2:])
        weights = jnp.where(keep, weights / keep_prob, 0.0).astype(weights.dtype)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """``jax.nn.gelu(x, approximate=True)`` (flax's ``nn.gelu``), same values.

    Its gradient is computed in the forward pass from the same tanh and kept: the default
    backward recomputes tanh inside the transposing copy XLA:CPU inserts before the
    weight-gradient matmul, which ran unvectorized (10 % of a client step).
    """
    return _gelu_and_slope(x)[0]


def _gelu_and_slope(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    inner = _SQRT_2_OVER_PI * (x + _CUBIC * x**3)
    t = jnp.tanh(inner)
    cdf = 0.5 * (1.0 + t)
    slope = cdf + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * _CUBIC * x * x)
    return x * cdf, slope


def _gelu_bwd(slope: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (g * slope,)


gelu.defvjp(_gelu_and_slope, _gelu_bwd)
