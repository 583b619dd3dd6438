"""Transformer CTC encoder (flax.linen) of arXiv 2310.00098, "Model".

log-mel [B, T, 80] → Conv1D (kernel 7, stride 3) + GLU → CAPE positional embedding →
N pre-LN transformer blocks → LayerNorm → Dense(vocab) logits [B, ⌈T/3⌉, V].

Padding is explicit everywhere: ``paddings`` [B, T] (1.0 = padded frame) are subsampled
with the convolution, padded positions are zeroed after the front end, and attention
never looks at padded keys. Every block has its own parameter subtree (``block_00`` ...),
so every parameter tensor is its own leaf, which is what per-layer clipping works on; the
forward pass stacks them and scans one block body over depth, so the compiled program does
not grow with the number of blocks.

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

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core.scope import LazyRng

from fl_dp_asr.models.config import REMAT_POLICY_NAMES, ModelConfig
from fl_dp_asr.models.layers import (
    FrameDropout,
    attention_with_frame_dropout,
    frame_dropout,
    gelu,
    row_uniform,
)


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
        jnp.sum(valid, axis=1, keepdims=True), 1.0
    )
    positions = (index - centre) * frame_seconds
    if key is None:
        return positions
    shift_key, local_key, scale_key = jax.random.split(key, 3)
    shift = jax.random.uniform(
        shift_key, (batch, 1), minval=-max_global_shift, maxval=max_global_shift
    )
    half_local = 0.5 * max_local_shift * frame_seconds
    local = row_uniform(local_key, (batch, frames), -half_local, half_local)
    log_scale = math.log(max_global_scaling)
    scale = jnp.exp(jax.random.uniform(scale_key, (batch, 1), minval=-log_scale, maxval=log_scale))
    return (positions + shift + local) * scale


def sinusoidal_embedding(positions: jax.Array, dim: int, freq_scale: float) -> jax.Array:
    """[B, T, dim] = [sin(x·ω_k), cos(x·ω_k)], ω_k = freq_scale · 10000^(−2k/dim)."""
    freqs = freq_scale * jnp.exp(jnp.arange(0, dim, 2, dtype=jnp.float32) * (-math.log(1e4) / dim))
    phase = positions[..., None] * freqs
    return jnp.concatenate([jnp.sin(phase), jnp.cos(phase)], axis=-1)


def strided_conv1d_as_matmul(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **unused,
):
    """``lax.conv_general_dilated`` of a 1-D NWC×WIO convolution, as patches @ kernel.

    Same parameters and numbers (to float rounding) as the convolution. Why: XLA:CPU runs the
    kernel gradient of this strided convolution at ~0.3 GFLOP/s; it was 45 % of a client's
    local step, and under ``vmap`` (per-client kernels) it becomes an even slower grouped
    convolution. As a matmul the client step is 2x faster on CPU (docs/guides/performance.md).
    """
    del lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, unused
    (stride,) = window_strides
    ((low, high),) = padding
    width, in_features, out_features = rhs.shape
    x = jnp.pad(lhs, ((0, 0), (low, high), (0, 0)))
    frames = (x.shape[1] - width) // stride + 1
    patches = jnp.concatenate(
        [x[:, k : k + stride * (frames - 1) + 1 : stride] for k in range(width)], axis=-1
    )
    return jnp.einsum(
        "btk,ko->bto", patches, rhs.reshape(width * in_features, out_features), precision=precision
    )


class ConvFrontEnd(nn.Module):
    """Conv1D(kernel, stride) + GLU: [B, T, F] → [B, ⌈T/stride⌉, model_dim]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, features: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        # Fixed padding (not 'SAME', whose split depends on T mod stride): output frame t
        # is centred on input frame stride·t whatever the padded length, T' = ⌈T/stride⌉.
        left = (cfg.conv_kernel - 1) // 2
        x = nn.Conv(
            cfg.conv_channels,
            kernel_size=(cfg.conv_kernel,),
            strides=(cfg.conv_stride,),
            padding=[(left, cfg.conv_kernel - 1 - left)],
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            conv_general_dilated=strided_conv1d_as_matmul,
            name="conv",
        )(features)
        x = nn.glu(x, axis=-1)
        if cfg.conv_channels // 2 != cfg.model_dim:
            x = nn.Dense(
                cfg.model_dim,
                use_bias=cfg.use_bias,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                name="projection",
            )(x)
        # Output frame t covers input frame stride·t; it is valid iff that frame is.
        out_paddings = paddings[:, :: cfg.conv_stride]
        return x * (1.0 - out_paddings)[..., None].astype(x.dtype), out_paddings


class TransformerBlock(nn.Module):
    """Pre-LN block: x + Drop(MHA(LN(x))), then x + Drop(MLP(LN(x))).

    ``dropout_keys``: None (evaluation: no dropout) or uint32 keys [4], one per dropout site
    in the order of :data:`DROPOUT_SITES` (attention weights, attention output, MLP hidden,
    MLP output). Explicit keys, not ``make_rng``, because the block runs inside a
    ``lax.scan`` over depth (:func:`run_blocks`).
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, attention_mask: jax.Array, dropout_keys: jax.Array | None
    ) -> jax.Array:
        cfg = self.config
        train = dropout_keys is not None
        key = (lambda site: dropout_keys[site]) if dropout_keys is not None else (lambda site: None)
        dense: dict[str, Any] = dict(
            use_bias=cfg.use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype
        )
        h = nn.LayerNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="attention_norm")(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=cfg.num_heads,
            qkv_features=cfg.model_dim,
            dropout_rate=cfg.attention_dropout_rate,
            force_fp32_for_softmax=True,
            attention_fn=attention_with_frame_dropout,
            name="attention",
            **dense,
        )(h, h, mask=attention_mask, deterministic=not train, dropout_rng=key(0))
        x = x + frame_dropout(h, cfg.dropout_rate, key(1))
        h = nn.LayerNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="mlp_norm")(x)
        h = nn.Dense(cfg.mlp_dim, name="mlp_in", **dense)(h)
        h = gelu(h) if cfg.activation == "gelu" else nn.relu(h)
        h = frame_dropout(h, cfg.dropout_rate, key(2))
        h = nn.Dense(cfg.model_dim, name="mlp_out", **dense)(h)
        return x + frame_dropout(h, cfg.dropout_rate, key(3))


# The scope (below ``block_NN``) in which the unrolled flax model drew each dropout key of a
# block; the scanned blocks draw the same keys (:func:`block_keys`).
DROPOUT_SITES = ("attention", "FrameDropout_0", "FrameDropout_1", "FrameDropout_2")

REMAT_POLICIES = {
    # What the backward pass keeps of a block's forward (jax.checkpoint policies); the rest
    # is recomputed. "nothing": the whole block is recomputed (least memory).
    "nothing": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
assert tuple(REMAT_POLICIES) == REMAT_POLICY_NAMES, "config.REMAT_POLICY_NAMES is stale"


STACKED = "blocks"  # the subtree of the stacked layout (stack_blocks)


def block_name(index: int) -> str:
    """Parameter-tree name of block ``index``: ``block_00``, ``block_01``, ..."""
    return f"block_{index:02d}"


def _static_hash(parts: tuple[str | int, ...]) -> np.uint32:
    """The 32-bit hash flax folds into a key for a static rng path (flax.core.scope's
    ``_fold_in_static``), so that scanned blocks draw the keys the unrolled model drew."""
    digest = hashlib.sha1()
    for part in parts:
        if flax.config.flax_fix_rng_separator:
            digest.update(b"\0")
        digest.update(
            part.encode()
            if isinstance(part, str)
            else part.to_bytes((part.bit_length() + 7) // 8, "big")
        )
    return np.uint32(int.from_bytes(digest.digest()[:4], "big"))


def block_keys(dropout_rng: LazyRng, num_blocks: int) -> tuple[jax.Array, jax.Array]:
    """Every block's dropout keys [num_blocks, 4] and layer-drop keys [num_blocks].

    Equal to the keys of the unrolled flax model (one module per block, ``make_rng`` in
    each): key ``[i, j]`` is the ``"dropout"`` stream at scope ``block_i/DROPOUT_SITES[j]``,
    layer-drop key ``i`` the encoder's (i+1)-th ``make_rng("dropout")``. So scanning the
    blocks changes no number (tests/models/test_depth_scan.py holds values of the
    unrolled model).
    One vectorized ``fold_in`` for all of them.
    """
    prefix = dropout_rng.suffix
    hashes = np.array(
        [
            [_static_hash(prefix + (block_name(i), site, 1)) for site in DROPOUT_SITES]
            + [_static_hash(prefix + (i + 1,))]
            for i in range(num_blocks)
        ]
    )
    keys = jax.vmap(jax.vmap(jax.random.fold_in, (None, 0)), (None, 0))(dropout_rng.rng, hashes)
    return keys[:, : len(DROPOUT_SITES)], keys[:, len(DROPOUT_SITES)]


def stack_blocks(params: Mapping[str, Any]) -> dict:
    """The parameters with the blocks' subtrees (``block_00`` ...) stacked into one
    ``"blocks"`` subtree of [num_blocks, ...] leaves (the layout the scan runs on); the
    other modules are unchanged. Inverse: :func:`unstack_blocks`."""
    names = sorted((k for k in params if k.startswith("block_")), key=lambda k: int(k[6:]))
    rest = {k: v for k, v in params.items() if not k.startswith("block_")}
    if not names:
        return rest
    return {
        **rest,
        STACKED: jax.tree.map(lambda *leaves: jnp.stack(leaves), *[params[n] for n in names]),
    }


def unstack_blocks(params: dict) -> dict:
    """Inverse of :func:`stack_blocks`: one ``block_NN`` subtree per block again."""
    if STACKED not in params:
        return dict(params)
    stacked = params[STACKED]
    num_blocks = jax.tree.leaves(stacked)[0].shape[0]
    rest = {k: v for k, v in params.items() if k != STACKED}
    return {
        **rest,
        **{block_name(i): jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_blocks)},
    }


def run_blocks(
    config: ModelConfig,
    stacked: dict,
    x: jax.Array,
    attention_mask: jax.Array,
    dropout_rng: LazyRng | None,
) -> jax.Array:
    """The transformer blocks as ONE scanned block body: [B, T', D] → [B, T', D].

    ``lax.scan`` runs one block per iteration over the stacked parameters, so the program
    (and its compile time) does not grow with depth. With ``config.remat`` each block is
    rematerialized (``jax.checkpoint``, policy ``config.remat_policy``). Layer-drop skips a
    dropped block with ``lax.cond``: its compute is not done (under ``vmap`` over clients,
    where every client draws its own decision, the cond becomes a select and both sides run).

    Args:
        config: the model configuration.
        stacked: the :class:`TransformerBlock` parameters of every block, leaves
            [num_blocks, ...] (:func:`stack_blocks`).
        x: block input, ``config.dtype`` [B, T', model_dim].
        attention_mask: bool [B, 1, 1, T'], True at real key frames.
        dropout_rng: the encoder's ``"dropout"`` stream in training (dropout, layer-drop);
            None in evaluation.
    """
    leaves = jax.tree.leaves(stacked)
    if not leaves:
        return x
    num_blocks = leaves[0].shape[0]
    block = TransformerBlock(config, parent=None)
    train = dropout_rng is not None
    layer_drop = train and config.layer_drop_rate > 0.0
    if dropout_rng is not None:
        keys, drop_keys = block_keys(dropout_rng, num_blocks)
        keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - config.layer_drop_rate))(drop_keys)
    else:
        keys = keep = jnp.zeros((num_blocks,))  # unused placeholders to scan over

    def apply(x, params, keys):
        return block.apply({"params": params}, x, attention_mask, keys if train else None)

    if config.remat:
        apply = jax.checkpoint(apply, prevent_cse=False, policy=REMAT_POLICIES[config.remat_policy])

    def body(x, xs):
        params, keys, keep = xs
        if layer_drop:
            y = jax.lax.cond(keep, apply, lambda x, *_: x, x, params, keys)
        else:
            y = apply(x, params, keys)
        return y.astype(x.dtype), None

    x, _ = jax.lax.scan(body, x, (stacked, keys, keep))
    return x


class Encoder(nn.Module):
    """The CTC acoustic model: normalized log-mel → per-frame logits.

    Call with ``train=True`` under ``rngs={"dropout": k1, "cape": k2}`` (dropout,
    layer-drop, CAPE augmentation); ``train=False`` needs no RNG and is deterministic.
    Returns ``(logits, paddings)``: float32 [B, T', vocab] and float32 [B, T'],
    T' = ⌈T / conv_stride⌉.

    The parameter tree has one subtree per block (``block_00`` ...), so per-layer clipping,
    its metrics and checkpoints see every block's layers; the forward pass runs them as one
    scanned body (:func:`run_blocks`). ``apply`` also takes the stacked layout
    (:func:`stack_blocks`: one ``"blocks"`` subtree of [num_blocks, ...] leaves), which
    local training keeps so that its optimizer updates do not grow with depth either.
    Initialization creates each block as its own module (the same values as ever; its
    forward pass is dead code that XLA removes).
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self, features: jax.Array, paddings: jax.Array, train: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        x, paddings = ConvFrontEnd(cfg, name="front_end")(features.astype(cfg.dtype), paddings)
        positions = cape_positions(
            paddings,
            cfg.frame_seconds,
            self.make_rng("cape") if train else None,
            cfg.cape_max_global_shift,
            cfg.cape_max_local_shift,
            cfg.cape_max_global_scaling,
        )
        x = x + sinusoidal_embedding(positions, cfg.model_dim, cfg.cape_freq_scale).astype(x.dtype)
        x = FrameDropout(cfg.dropout_rate)(x, deterministic=not train)
        attention_mask = (paddings < 0.5)[:, None, None, :]  # [B, 1, 1, T'] keys
        if self.is_initializing():
            for i in range(cfg.num_blocks):
                x = TransformerBlock(cfg, name=block_name(i))(x, attention_mask, None)
        else:
            # The "dropout" stream as flax holds it (a key and a static path to fold in).
            assert self.scope is not None  # set by flax in apply()
            dropout_rng = self.scope.rngs["dropout"] if train else None
            params = self.variables["params"]
            stacked = (
                params[STACKED] if STACKED in params else stack_blocks(params).get(STACKED, {})
            )
            x = run_blocks(cfg, stacked, x, attention_mask, dropout_rng)
        x = nn.LayerNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="final_norm")(x)
        logits = nn.Dense(
            cfg.vocab_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="output"
        )(x)
        return logits.astype(jnp.float32), paddings
