"""Transformer CTC encoder (flax.linen) of arXiv 2310.00098, "Model".

log-mel [B, T, 80] → Conv1D (kernel 7, stride 3) + GLU → CAPE positional embedding →
N pre-LN transformer blocks → LayerNorm → Dense(vocab) logits [B, ⌈T/3⌉, V].

Padding is explicit everywhere: ``paddings`` [B, T] (1.0 = padded frame) are subsampled
with the convolution, padded positions are zeroed after the front end, and attention
never looks at padded keys. Blocks are separate modules (``block_00`` ...), so every
parameter tensor is its own leaf, which is what per-layer clipping works on.

**Padding invariance.** The output at real frames of real utterances does not depend on how
much padding (rows or frames) the batch carries, in training mode too: dropout and CAPE's
local shifts draw per utterance and frame (:mod:`fl_dp_asr.models.layers`). So a local step
may cut padding away (:class:`fl_dp_asr.data.PaddingBuckets`) without changing any number
beyond float rounding, and every executor computes the same update.

References:
    Likhomanenko et al., "CAPE: Encoding Relative Positions with Continuous Augmented
    Positional Embeddings", arXiv 2106.03143.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from fl_dp_asr.models.config import ModelConfig
from fl_dp_asr.models.layers import FrameDropout, attention_with_frame_dropout, gelu, row_uniform


def cape_positions(
    paddings: jax.Array,
    frame_seconds: float,
    key: jax.Array | None,
    max_global_shift: float,
    max_local_shift: float,
    max_global_scaling: float,
) -> jax.Array:
    """CAPE positions in seconds, float32 [B, T].

    Positions ``n · frame_seconds`` are centred on the mean of each utterance's valid
    frames. With a ``key`` (training) they become ``λ · (x + Δ + ε_n)``: global shift
    Δ ~ U(−max_global_shift, max_global_shift) seconds per utterance, local shift
    ε_n ~ U(−s/2, s/2) · frame_seconds with s = ``max_local_shift`` per frame, and
    global scale log λ ~ U(−log max_global_scaling, log max_global_scaling) per utterance.
    ``key=None`` (evaluation) gives the centred positions only. Padding-invariant: a real
    frame's position does not depend on the padded B or T (:func:`row_uniform`).
    """
    batch, frames = paddings.shape
    valid = 1.0 - paddings
    index = jnp.arange(frames, dtype=jnp.float32)[None, :]
    centre = jnp.sum(index * valid, axis=1, keepdims=True) / jnp.maximum(
        jnp.sum(valid, axis=1, keepdims=True), 1.0)
    positions = (index - centre) * frame_seconds
    if key is None:
        return positions
    shift_key, local_key, scale_key = jax.random.split(key, 3)
    shift = jax.random.uniform(shift_key, (batch, 1), minval=-max_global_shift,
                               maxval=max_global_shift)
    half_local = 0.5 * max_local_shift * frame_seconds
    local = row_uniform(local_key, (batch, frames), -half_local, half_local)
    log_scale = math.log(max_global_scaling)
    scale = jnp.exp(jax.random.uniform(scale_key, (batch, 1), minval=-log_scale,
                                       maxval=log_scale))
    return (positions + shift + local) * scale


def sinusoidal_embedding(positions: jax.Array, dim: int, freq_scale: float) -> jax.Array:
    """[B, T, dim] = [sin(x·ω_k), cos(x·ω_k)], ω_k = freq_scale · 10000^(−2k/dim)."""
    freqs = freq_scale * jnp.exp(jnp.arange(0, dim, 2, dtype=jnp.float32)
                                 * (-math.log(1e4) / dim))
    phase = positions[..., None] * freqs
    return jnp.concatenate([jnp.sin(phase), jnp.cos(phase)], axis=-1)


def strided_conv1d_as_matmul(lhs, rhs, window_strides, padding, lhs_dilation=None,
                             rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                             precision=None, **unused):
    """``lax.conv_general_dilated`` of a 1-D NWC×WIO convolution, as patches @ kernel.

    Same parameters and numbers (to float rounding) as the convolution. Why: XLA:CPU runs the
    kernel gradient of this strided convolution at ~0.3 GFLOP/s; it was 45 % of a client's
    local step, and under ``vmap`` (per-client kernels) it becomes an even slower grouped
    convolution. As a matmul the client step is 2x faster on CPU (README, "Performance").
    """
    del lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, unused
    (stride,) = window_strides
    ((low, high),) = padding
    width, in_features, out_features = rhs.shape
    x = jnp.pad(lhs, ((0, 0), (low, high), (0, 0)))
    frames = (x.shape[1] - width) // stride + 1
    patches = jnp.concatenate(
        [x[:, k:k + stride * (frames - 1) + 1:stride] for k in range(width)], axis=-1)
    return jnp.einsum("btk,ko->bto", patches, rhs.reshape(width * in_features, out_features),
                      precision=precision)


class ConvFrontEnd(nn.Module):
    """Conv1D(kernel, stride) + GLU: [B, T, F] → [B, ⌈T/stride⌉, model_dim]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, features: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        # Fixed padding (not 'SAME', whose split depends on T mod stride): output frame t
        # is centred on input frame stride·t whatever the padded length, T' = ⌈T/stride⌉.
        left = (cfg.conv_kernel - 1) // 2
        x = nn.Conv(cfg.conv_channels, kernel_size=(cfg.conv_kernel,),
                    strides=(cfg.conv_stride,), padding=[(left, cfg.conv_kernel - 1 - left)],
                    dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    conv_general_dilated=strided_conv1d_as_matmul, name="conv")(features)
        x = nn.glu(x, axis=-1)
        if cfg.conv_channels // 2 != cfg.model_dim:
            x = nn.Dense(cfg.model_dim, use_bias=cfg.use_bias, dtype=cfg.dtype,
                         param_dtype=cfg.param_dtype, name="projection")(x)
        # Output frame t covers input frame stride·t; it is valid iff that frame is.
        out_paddings = paddings[:, ::cfg.conv_stride]
        return x * (1.0 - out_paddings)[..., None].astype(x.dtype), out_paddings


class TransformerBlock(nn.Module):
    """Pre-LN block: x + Drop(MHA(LN(x))), then x + Drop(MLP(LN(x)))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, attention_mask: jax.Array, train: bool) -> jax.Array:
        cfg = self.config
        dense = dict(use_bias=cfg.use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        h = nn.LayerNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="attention_norm")(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=cfg.num_heads, qkv_features=cfg.model_dim,
            dropout_rate=cfg.attention_dropout_rate, force_fp32_for_softmax=True,
            attention_fn=attention_with_frame_dropout,
            name="attention", **dense)(h, h, mask=attention_mask, deterministic=not train)
        x = x + FrameDropout(cfg.dropout_rate)(h, deterministic=not train)
        h = nn.LayerNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="mlp_norm")(x)
        h = nn.Dense(cfg.mlp_dim, name="mlp_in", **dense)(h)
        h = gelu(h) if cfg.activation == "gelu" else nn.relu(h)
        h = FrameDropout(cfg.dropout_rate)(h, deterministic=not train)
        h = nn.Dense(cfg.model_dim, name="mlp_out", **dense)(h)
        return x + FrameDropout(cfg.dropout_rate)(h, deterministic=not train)


class Encoder(nn.Module):
    """The CTC acoustic model: normalized log-mel → per-frame logits.

    Call with ``train=True`` under ``rngs={"dropout": k1, "cape": k2}`` (dropout,
    layer-drop, CAPE augmentation); ``train=False`` needs no RNG and is deterministic.
    Returns ``(logits, paddings)``: float32 [B, T', vocab] and float32 [B, T'],
    T' = ⌈T / conv_stride⌉.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, features: jax.Array, paddings: jax.Array,
                 train: bool = False) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        x, paddings = ConvFrontEnd(cfg, name="front_end")(features.astype(cfg.dtype), paddings)
        positions = cape_positions(
            paddings, cfg.frame_seconds, self.make_rng("cape") if train else None,
            cfg.cape_max_global_shift, cfg.cape_max_local_shift, cfg.cape_max_global_scaling)
        x = x + sinusoidal_embedding(positions, cfg.model_dim, cfg.cape_freq_scale).astype(x.dtype)
        x = FrameDropout(cfg.dropout_rate)(x, deterministic=not train)
        attention_mask = (paddings < 0.5)[:, None, None, :]           # [B, 1, 1, T'] keys
        block_cls = nn.remat(TransformerBlock, static_argnums=(3,)) if cfg.remat else TransformerBlock
        for i in range(cfg.num_blocks):
            y = block_cls(cfg, name=f"block_{i:02d}")(x, attention_mask, train)
            if train and cfg.layer_drop_rate > 0.0:
                keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - cfg.layer_drop_rate)
                y = jnp.where(keep, y, x)
            x = y
        x = nn.LayerNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="final_norm")(x)
        logits = nn.Dense(cfg.vocab_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                          name="output")(x)
        return logits.astype(jnp.float32), paddings
