"""SpecAugment: bounds of the masks, identity when disabled, jit/vmap safety."""

import jax
import jax.numpy as jnp
import numpy as np

from fl_dp_asr.audio import spec_augment


def _runs(mask_row):
    """Lengths of the runs of True in a 1-D boolean array."""
    padded = np.concatenate([[False], mask_row, [False]]).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return edges[1::2] - edges[::2]


def test_disabled_is_identity():
    features = jax.random.normal(jax.random.key(0), (2, 50, 80))
    paddings = jnp.zeros((2, 50))
    key = jax.random.key(1)
    assert spec_augment(features, paddings, key, enabled=False) is features
    assert spec_augment(features, paddings, key, num_freq_masks=0, num_time_masks=0) is features


def test_mask_widths_and_positions_respect_the_limits():
    batch, frames, bins = 64, 300, 80
    valid = np.random.default_rng(0).integers(20, frames + 1, size=batch)
    paddings = jnp.asarray(np.arange(frames)[None] >= valid[:, None], jnp.float32)
    features = jnp.ones((batch, frames, bins)) * (1.0 - paddings)[..., None]
    augment = jax.jit(spec_augment, static_argnames=("num_freq_masks", "num_time_masks"))
    freq_only = augment(features, paddings, jax.random.key(2), num_time_masks=0, num_freq_masks=1)
    time_only = augment(features, paddings, jax.random.key(3), num_freq_masks=0, num_time_masks=1)
    both = jax.jit(spec_augment)(features, paddings, jax.random.key(4))
    freq_only, time_only, both = (np.asarray(x) for x in (freq_only, time_only, both))
    widths = []
    for b in range(batch):
        masked_bins = freq_only[b, 0] == 0
        assert masked_bins.sum() <= 30 and len(_runs(masked_bins)) <= 1
        masked_frames = (time_only[b, :, 0] == 0)[: valid[b]]
        runs = _runs(masked_frames)
        assert len(runs) <= 1 and masked_frames.sum() <= min(50, int(0.1 * valid[b]))
        widths.extend(runs)
        assert (both[b, valid[b] :] == 0).all()  # padding stays padding
        # 10 time masks ≤ min(50, 10 %) each and 2 frequency masks ≤ 30 each.
        assert (both[b, : valid[b]] == 0).all(axis=1).sum() <= 10 * min(50, 0.1 * valid[b])
        assert (both[b, : valid[b]] == 0).all(axis=0).sum() <= 60
    assert max(widths) > 10  # masks are not trivially empty


def test_independent_per_utterance_and_vmappable():
    features = jnp.ones((3, 200, 80))
    paddings = jnp.zeros((3, 200))
    out = jax.jit(spec_augment)(features, paddings, jax.random.key(5))
    assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1]))
    clients = jax.jit(jax.vmap(spec_augment, in_axes=(0, 0, 0)))(
        features[None].repeat(2, 0),
        paddings[None].repeat(2, 0),
        jax.random.split(jax.random.key(6), 2),
    )
    assert clients.shape == (2, 3, 200, 80)
    assert not np.array_equal(np.asarray(clients[0]), np.asarray(clients[1]))
