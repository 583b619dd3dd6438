"""DP transforms on a compute layout (blocks stacked along a leading axis) treat every
canonical leaf as its own layer: the numbers and names of the canonical layout."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fl_dp_asr.dp import adaptive, transforms
from fl_dp_asr.dp.layout import SAME_LAYOUT, layerwise
from fl_dp_asr.fl import server
from fl_dp_asr.models import PARAM_LAYOUT

LAYOUT = PARAM_LAYOUT


def canonical_tree(seed=0, blocks=3):
    """Blocks of different scales (so per-block norms differ) and one unstacked module."""
    rng = np.random.default_rng(seed)
    tree = {"front_end": {"kernel": rng.normal(size=(4, 3)).astype(np.float32)}}
    for i in range(blocks):
        tree[f"block_{i:02d}"] = {
            "mlp": {
                "kernel": (10.0**i * rng.normal(size=(3, 5))).astype(np.float32),
                "bias": rng.normal(size=(5,)).astype(np.float32),
            },
            "norm": {"scale": rng.normal(size=(3,)).astype(np.float32)},
        }
    return jax.tree.map(jnp.asarray, tree)


def assert_same(a, b, rtol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7), a, b)


@pytest.mark.parametrize("layer_fn", [transforms.leaf_layer_name, transforms.top_module_name])
def test_names_sizes_and_norms_are_those_of_the_canonical_layout(layer_fn):
    tree = canonical_tree()
    stacked = LAYOUT.to_compute(tree)
    assert "blocks" in stacked and "block_01" not in stacked
    assert transforms.layer_sizes(stacked, layer_fn, LAYOUT) == transforms.layer_sizes(
        tree, layer_fn
    )
    norms = transforms.layer_norms(stacked, layer_fn, LAYOUT)
    assert_same(norms, transforms.layer_norms(tree, layer_fn))
    assert len(set(np.round(np.asarray(list(norms.values())), 3))) == len(norms)  # per block


@pytest.mark.parametrize("allocation", ["uniform", "by_dim"])
def test_clipping_rules_give_the_canonical_deltas(allocation):
    tree = canonical_tree(1)
    stacked = LAYOUT.to_compute(tree)
    bounds = transforms.layer_bounds(2.0, allocation, stacked, layout=LAYOUT)
    assert bounds == transforms.layer_bounds(2.0, allocation, tree)
    rules = {
        "per_layer": (lambda d, lay: transforms.clip_layers(d, bounds, layout=lay)),
        "rescale": (lambda d, lay: transforms.rescale_layers(d, 2.0, bounds, layout=lay)),
        "global": (lambda d, lay: transforms.clip_global(d, 2.0, layout=lay)),
        "adaptive": (
            lambda d, lay: adaptive.clip(d, adaptive.initial_bounds(bounds), layout=lay)[:2]
        ),
    }
    for name, rule in rules.items():
        out, stats = jax.jit(rule, static_argnums=1)(stacked, LAYOUT)
        ref, ref_stats = rule(tree, SAME_LAYOUT)
        assert_same(LAYOUT.from_compute(out), ref)
        assert_same(stats, ref_stats)
        assert float(stats.clipped) == 1.0, name  # the blocks' scales force clipping


def test_clipped_stacked_layers_hold_their_bounds():
    stacked = LAYOUT.to_compute(canonical_tree(2))
    clip = transforms.clip_per_layer(1.0, "uniform", layout=LAYOUT)
    out, _ = clip.update(stacked, clip.init(stacked))
    norms = transforms.layer_norms(out, layout=LAYOUT)
    assert max(float(v) for v in norms.values()) <= 1.0 / np.sqrt(len(norms)) * (1 + 1e-6)
    assert transforms.l2_norm(jax.tree.leaves(out)) <= 1.0 + 1e-6


def test_noise_is_the_draw_of_the_canonical_layout():
    tree = canonical_tree()
    key = jax.random.key(7)
    draws = jax.jit(transforms.standard_normal_like, static_argnums=2)(
        key, LAYOUT.to_compute(tree), LAYOUT
    )
    reference = jax.jit(
        lambda k, t: optax.tree_utils.tree_random_like(k, t, jax.random.normal, jnp.float32)
    )(key, tree)
    jax.tree.map(np.testing.assert_array_equal, LAYOUT.from_compute(draws), reference)
    noisy = transforms.gaussian_noise(LAYOUT.to_compute(tree), 0.5, key, LAYOUT)
    assert_same(LAYOUT.from_compute(noisy), jax.tree.map(lambda x, n: x + 0.5 * n, tree, reference))


def test_lamb_takes_one_trust_ratio_per_block_layer():
    tree = canonical_tree(3)
    grads = jax.tree.map(lambda x: 0.3 * x - 0.1, canonical_tree(4))
    canonical_opt = server.make_server_optimizer("lamb", 0.01)
    stacked_opt = server.make_server_optimizer("lamb", 0.01, layout=LAYOUT)
    plain = optax.lamb(optax.constant_schedule(0.01), eps=1e-6)
    states = [canonical_opt.init(tree), stacked_opt.init(LAYOUT.to_compute(tree)), plain.init(tree)]
    for _ in range(3):
        u0, states[0] = canonical_opt.update(grads, states[0], tree)
        u1, states[1] = stacked_opt.update(
            LAYOUT.to_compute(grads), states[1], LAYOUT.to_compute(tree)
        )
        u2, states[2] = plain.update(grads, states[2], tree)
        assert_same(LAYOUT.from_compute(u1), u0)
        jax.tree.map(np.testing.assert_array_equal, u0, u2)  # optax.lamb's numbers
    # A trust ratio over the whole stack would not give the canonical update:
    whole = optax.lamb(optax.constant_schedule(0.01), eps=1e-6)
    u3, _ = whole.update(
        LAYOUT.to_compute(grads), whole.init(LAYOUT.to_compute(tree)), LAYOUT.to_compute(tree)
    )
    assert not np.allclose(
        LAYOUT.from_compute(u3)["block_00"]["mlp"]["kernel"],
        canonical_opt.update(grads, canonical_opt.init(tree), tree)[0]["block_00"]["mlp"]["kernel"],
    )


def test_layerwise_refuses_a_transform_with_state():
    with pytest.raises(ValueError, match="stateless"):
        layerwise(optax.adam(1e-3), LAYOUT).init(canonical_tree())


def test_correlated_noise_is_that_of_the_canonical_layout():
    from fl_dp_asr.dp.correlated import CorrelatedNoise

    mechanism = CorrelatedNoise(
        "blt", rounds=4, min_separation=2, buf_decay=(0.9,), output_scale=(0.3,)
    )
    tree = canonical_tree()
    stacked_state, state = mechanism.init_state(LAYOUT.to_compute(tree)), mechanism.init_state(tree)
    for t in range(3):
        key = jax.random.key(t)
        stacked_noise, stacked_state = mechanism.next_noise(
            stacked_state, key, 0.5, LAYOUT.to_compute(tree), LAYOUT
        )
        noise, state = mechanism.next_noise(state, key, 0.5, tree)
        assert_same(LAYOUT.from_compute(stacked_noise), noise)
