"""SpecAugment (frequency and time masking) for padded feature batches, jit/vmap-safe.

Each utterance draws its own masks. A frequency mask zeroes ``w ~ U{0..max_freq_mask}``
consecutive mel bins starting anywhere it fits; a time mask zeroes
``w ~ U{0..min(max_time_mask, ⌊max_time_mask_ratio · valid frames⌋)}`` consecutive valid
frames. Masked values are 0, the mean of the per-utterance-normalized features. Paper
setting (80 bins): 2 frequency masks ≤ 30 bins, 10 time masks ≤ min(50, 10 % of length).

References:
    Park et al., "SpecAugment", arXiv 1904.08779.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SpecAugmentConfig:
    """Options of :func:`spec_augment`; ``enabled=False`` (or zero masks) is the identity."""

    enabled: bool = True
    num_freq_masks: int = 2
    max_freq_mask: int = 30
    num_time_masks: int = 10
    max_time_mask: int = 50
    max_time_mask_ratio: float = 0.1


def _band_mask(uniforms: jax.Array, size: int, max_width: jax.Array, limit: jax.Array) -> jax.Array:
    """[B, size] 1.0 inside any of the random bands drawn from ``uniforms`` [B, 2, masks].

    ``max_width`` and ``limit`` are float [B]; widths ~ U{0..max_width}, starts ~
    U{0..limit − width}.
    """
    width = jnp.floor(uniforms[:, 0] * (max_width[:, None] + 1.0))
    room = jnp.maximum(limit[:, None] - width + 1.0, 1.0)
    start = jnp.floor(uniforms[:, 1] * room)
    position = jnp.arange(size, dtype=jnp.float32)[None, None, :]
    inside = (position >= start[..., None]) & (position < (start + width)[..., None])
    return jnp.any(inside, axis=1).astype(jnp.float32)


def spec_augment(
    features: jax.Array,
    paddings: jax.Array,
    key: jax.Array,
    *,
    enabled: bool = True,
    num_freq_masks: int = 2,
    max_freq_mask: int = 30,
    num_time_masks: int = 10,
    max_time_mask: int = 50,
    max_time_mask_ratio: float = 0.1,
) -> jax.Array:
    """Applies random frequency and time masks per utterance.

    Args:
        features: float [B, T, F] (normalized log-mel).
        paddings: float [B, T], 1.0 at padded frames (masks stay inside valid frames).
        key: PRNG key.
        enabled ... max_time_mask_ratio: see :class:`SpecAugmentConfig`;
            ``spec_augment(f, p, k, **dataclasses.asdict(config))`` applies a config.

    Returns:
        float [B, T, F] features with masked entries set to 0.

    >>> f = jnp.ones((2, 100, 80)); p = jnp.zeros((2, 100))
    >>> out = spec_augment(f, p, jax.random.key(0))
    >>> off = spec_augment(f, p, jax.random.key(0), enabled=False)
    >>> bool((out == 0).any()), bool((off == f).all())
    (True, True)
    """
    if not enabled or (num_freq_masks == 0 and num_time_masks == 0):
        return features
    batch, num_frames, num_bins = features.shape
    # One draw for all masks: [B, 2 (width, start), masks]; first the frequency masks.
    uniforms = jax.random.uniform(key, (batch, 2, num_freq_masks + num_time_masks))
    keep = jnp.ones((batch, num_frames, num_bins), features.dtype)
    if num_freq_masks:
        all_bins = jnp.full((batch,), float(num_bins))
        freq_mask = _band_mask(
            uniforms[..., :num_freq_masks], num_bins, jnp.minimum(all_bins, max_freq_mask), all_bins
        )
        keep = keep * (1.0 - freq_mask[:, None, :]).astype(features.dtype)
    if num_time_masks:
        valid_frames = jnp.sum(1.0 - paddings, axis=1)
        max_width = jnp.minimum(float(max_time_mask), jnp.floor(max_time_mask_ratio * valid_frames))
        time_mask = _band_mask(uniforms[..., num_freq_masks:], num_frames, max_width, valid_frames)
        keep = keep * (1.0 - time_mask[:, :, None]).astype(features.dtype)
    return features * keep
