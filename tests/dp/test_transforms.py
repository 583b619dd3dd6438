"""Properties of the DP optax transforms, one per test."""

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fl_dp_asr.dp import adaptive, transforms

SHAPES = {"embed": (64, 8), "block": {"w": (8, 8), "b": (8,)}, "head": (8, 3)}


def random_deltas(num: int, seed: int = 0) -> dict:
    """``num`` random deltas whose layers span 1e-8 … 1e6 in scale, some exactly zero."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    out = []
    for shape in leaves:
        scale = 10.0 ** rng.uniform(-8, 6, size=(num,) + (1,) * len(shape))
        scale[rng.random(num) < 0.1] = 0.0
        out.append(jnp.asarray(rng.normal(size=(num,) + shape) * scale, jnp.float32))
    return jax.tree.unflatten(treedef, out)


def one(tree, i=0):
    return jax.tree.map(lambda x: x[i], tree)


def apply(tx, delta):
    return tx.update(delta, tx.init(delta))


@pytest.fixture(scope="module")
def deltas():
    return random_deltas(3000)


def test_global_clip_bounds_every_delta(deltas):
    clip = transforms.clip_by_global_norm(0.5)
    clipped, stats = jax.vmap(lambda d: apply(clip, d))(deltas)
    norms = jax.vmap(optax.tree_utils.tree_norm)(clipped)
    assert float(jnp.max(norms)) <= 0.5 * (1 + 1e-6)
    np.testing.assert_allclose(
        stats.global_norm, jax.vmap(optax.tree_utils.tree_norm)(deltas), rtol=1e-5
    )
    assert set(np.unique(stats.clipped)) == {0.0, 1.0}


@pytest.mark.parametrize("allocation", ["uniform", "by_dim"])
def test_per_layer_clip_bounds_every_layer(deltas, allocation):
    clip = transforms.clip_per_layer(2.0, allocation)
    bounds = transforms.layer_bounds(2.0, allocation, one(deltas))
    clipped, _ = jax.vmap(lambda d: apply(clip, d))(deltas)
    layer_norms = jax.vmap(transforms.layer_norms)(clipped)
    for name, bound in bounds.items():
        assert float(jnp.max(layer_norms[name])) <= bound * (1 + 1e-6), name
    assert float(jnp.max(jax.vmap(optax.tree_utils.tree_norm)(clipped))) <= 2.0 * (1 + 1e-6)


@pytest.mark.parametrize("allocation", ["uniform", "by_dim"])
def test_allocations_sum_of_squares_is_c_squared(allocation):
    bounds = transforms.layer_bounds(3.0, allocation, random_deltas(1))
    assert len(bounds) == 4
    assert math.isclose(sum(b * b for b in bounds.values()), 9.0, rel_tol=1e-12)


def test_by_dim_bounds_are_proportional_to_sqrt_size():
    bounds = transforms.layer_bounds(1.0, "by_dim", one(random_deltas(1)))
    sizes = transforms.layer_sizes(one(random_deltas(1)))
    ratio = {name: bounds[name] / math.sqrt(sizes[name]) for name in bounds}
    assert max(ratio.values()) == pytest.approx(min(ratio.values()))


@pytest.mark.parametrize(
    "make",
    [
        lambda: transforms.clip_by_global_norm(1.0),
        lambda: transforms.clip_per_layer(1.0, "uniform"),
        lambda: transforms.rescale_per_layer(1.0, "uniform"),
    ],
)
def test_delta_inside_the_bound_is_unchanged(make):
    delta = {"a": jnp.array([0.1, -0.2]), "b": jnp.array([[0.05, 0.0]])}  # every layer < 1/√2
    clipped, stats = apply(make(), delta)
    jax.tree.map(np.testing.assert_array_equal, clipped, delta)
    assert float(stats.clipped) == 0.0


def test_rescale_per_layer_sets_every_nonzero_layer_to_its_bound(deltas):
    tx = transforms.rescale_per_layer(1.0, "by_dim")
    bounds = transforms.layer_bounds(1.0, "by_dim", one(deltas))
    out, stats = jax.vmap(lambda d: apply(tx, d))(deltas)
    before = jax.vmap(transforms.layer_norms)(deltas)
    after = jax.vmap(transforms.layer_norms)(out)
    over = np.asarray(stats.clipped) > 0
    assert over.sum() > 100
    for name, bound in bounds.items():
        nonzero = over & (np.asarray(before[name]) > 0)
        np.testing.assert_allclose(np.asarray(after[name])[nonzero], bound, rtol=1e-4)
    assert float(jnp.max(jax.vmap(optax.tree_utils.tree_norm)(out))) <= 1.0 * (1 + 1e-5)


def test_grouped_layers_share_one_bound():
    def group(path):  # one layer per top-level key
        return jax.tree_util.keystr(path[:1])

    delta = {"block": {"w": jnp.full((2,), 3.0), "b": jnp.full((2,), 4.0)}, "head": jnp.zeros(3)}
    clip = transforms.clip_per_layer(math.sqrt(2.0), "uniform", layer_fn=group)
    clipped, stats = apply(clip, delta)
    assert set(stats.layer_norms) == {"['block']", "['head']"}
    assert float(stats.layer_norms["['block']"]) == pytest.approx(math.sqrt(50.0))
    block_norm = optax.tree_utils.tree_norm(clipped["block"])
    assert float(block_norm) == pytest.approx(1.0, rel=1e-6)
    # Within a group the direction is kept: w and b scaled by one factor.
    assert float(clipped["block"]["b"][0] / clipped["block"]["w"][0]) == pytest.approx(4 / 3)


def test_layers_are_named_by_slash_paths():
    sizes = transforms.layer_sizes(
        {"block_00": {"mlp": {"kernel": jnp.zeros((2, 3))}}, "head": [jnp.zeros(4)]}
    )
    assert sizes == {"block_00/mlp/kernel": 6, "head/0": 4}


def test_explicit_bounds_by_name_or_as_a_pytree_clip_each_layer_to_its_bound():
    delta = {"a": jnp.ones(2), "nested": {"b": jnp.ones(2)}}
    by_name = {"a": 0.6, "nested/b": 0.8}
    as_pytree = {"a": 0.6, "nested": {"b": 0.8}}
    for allocation in (by_name, as_pytree):
        clipped, _ = apply(transforms.clip_per_layer(1.0, allocation), delta)
        assert float(jnp.linalg.norm(clipped["a"])) == pytest.approx(0.6)
        assert float(jnp.linalg.norm(clipped["nested"]["b"])) == pytest.approx(0.8)

    def group(path):  # "nested" = one layer
        return jax.tree_util.keystr(path[:1], simple=True)

    with pytest.raises(ValueError, match="different bounds"):
        transforms.layer_bounds(
            1.0,
            {"a": 0.6, "nested": {"b": 0.8, "c": 0.0}},
            {"a": 0, "nested": {"b": 0, "c": 0}},
            group,
        )


def test_explicit_bounds_must_match_clip_norm_and_layers():
    delta = {"a": jnp.ones(2), "b": jnp.ones(2)}
    good = {"a": 0.6, "b": 0.8}
    with pytest.raises(ValueError, match="must agree"):
        apply(transforms.clip_per_layer(2.0, good), delta)
    with pytest.raises(ValueError, match="do not match"):
        apply(transforms.clip_per_layer(1.0, {"a": 1.0}), delta)
    with pytest.raises(ValueError, match="bound of layer 'b'"):
        apply(transforms.clip_per_layer(1.0, {"a": 1.0, "b": float("nan")}), delta)
    with pytest.raises(ValueError, match="'random' is not an allocation"):
        transforms.clip_per_layer(1.0, "random")  # when the transform is made
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="clip_norm"):
            transforms.clip_per_layer(bad)


def test_an_allocation_that_is_no_rule_is_rejected_when_the_transform_is_made():
    for make in (transforms.clip_per_layer, transforms.rescale_per_layer):
        with pytest.raises(ValueError, match=r"allocation='unifrom'.*did you mean 'uniform'"):
            make(1.0, "unifrom")


HUGE = {"huge": jnp.full((4,), 1e20, jnp.float32), "small": jnp.array([0.1, 0.0])}  # Σx² = ∞


def test_global_clipping_of_a_layer_whose_squares_overflow_ends_at_the_bound():
    clipped, stats = jax.jit(lambda d: apply(transforms.clip_by_global_norm(2.0), d))(HUGE)
    assert float(stats.global_norm) == pytest.approx(2e20, rel=1e-6)
    assert float(optax.tree_utils.tree_norm(clipped)) == pytest.approx(2.0, rel=1e-6)


def test_per_layer_clipping_of_a_layer_whose_squares_overflow_ends_at_its_bound():
    clip = transforms.clip_per_layer(2.0, {"huge": 1.2, "small": 1.6})
    clipped, stats = jax.jit(lambda d: apply(clip, d))(HUGE)
    assert float(stats.layer_norms["huge"]) == pytest.approx(2e20, rel=1e-6)
    assert float(jnp.linalg.norm(clipped["huge"])) == pytest.approx(1.2, rel=1e-6)
    np.testing.assert_array_equal(clipped["small"], HUGE["small"])


def test_rescaling_and_adaptive_clipping_of_a_layer_whose_squares_overflow():
    out, _ = apply(transforms.rescale_per_layer(1.0, {"huge": 0.6, "small": 0.8}), HUGE)
    assert float(jnp.linalg.norm(out["huge"])) == pytest.approx(0.6, rel=1e-6)
    bounds = {"huge": jnp.float32(0.6), "small": jnp.float32(0.8)}
    clipped, _, bits = adaptive.clip(HUGE, bounds)
    assert float(jnp.linalg.norm(clipped["huge"])) == pytest.approx(0.6, rel=1e-6)
    assert (float(bits["huge"]), float(bits["small"])) == (0.0, 1.0)
    assert float(
        adaptive.total_bound({"a": jnp.float32(3e20), "b": jnp.float32(4e20)})
    ) == pytest.approx(5e20, rel=1e-6)


def test_norms_of_nan_and_inf_layers_stay_nan_and_inf():
    norms = transforms.layer_norms(
        {"nan": jnp.array([np.nan, 1.0]), "inf": jnp.array([-np.inf, 1.0]), "zero": jnp.zeros(3)}
    )
    assert np.isnan(norms["nan"]) and norms["inf"] == np.inf and norms["zero"] == 0.0


def test_norms_equal_the_plain_formula_where_it_does_not_overflow(deltas):
    """The power-of-two scaling is exact: the norms of ordinary deltas do not change."""
    norms = jax.vmap(transforms.layer_norms)(deltas)
    for path, leaf in jax.tree_util.tree_leaves_with_path(deltas):
        plain = jnp.sqrt(jnp.sum(jnp.square(leaf), axis=tuple(range(1, leaf.ndim))))
        np.testing.assert_array_equal(norms[transforms.leaf_layer_name(path)], plain)


def test_stats_report_norms_before_clipping():
    delta = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0])}
    _, stats = apply(transforms.clip_per_layer(1.0), delta)
    assert float(stats.layer_norms["a"]) == 5.0
    assert float(stats.layer_norms["b"]) == 0.0
    assert float(stats.global_norm) == 5.0
    assert float(stats.clipped) == 1.0


def test_gaussian_noise_std_and_determinism():
    zeros = {"w": jnp.zeros((400, 500))}
    tx = transforms.add_gaussian_noise(0.3, jax.random.key(7))
    state = tx.init(zeros)
    first, state = tx.update(zeros, state)
    second, _ = tx.update(zeros, state)
    again, _ = tx.update(zeros, tx.init(zeros))
    assert float(jnp.std(first["w"])) == pytest.approx(0.3, rel=0.01)
    assert abs(float(jnp.mean(first["w"]))) < 0.3 * 5 / math.sqrt(2e5)
    np.testing.assert_array_equal(first["w"], again["w"])
    assert not np.array_equal(first["w"], second["w"])


@pytest.mark.parametrize("allocation", ["uniform", "by_dim"])
def test_per_layer_clipping_matches_optax_per_example_layer_norm_clip(deltas, allocation):
    """Where the semantics meet (one layer per leaf, uniform or by-dim bounds), the sum of
    our per-client clipped deltas and the number clipped per layer equal optax's."""
    clip = transforms.clip_per_layer(2.0, allocation)
    clipped, _ = jax.vmap(lambda d: apply(clip, d))(deltas)
    leaves = jax.tree.leaves(deltas)
    sums, num_clipped = optax.transforms.per_example_layer_norm_clip(
        leaves, 2.0, uniform=allocation == "uniform"
    )
    for ours, theirs in zip(jax.tree.leaves(clipped), sums):
        np.testing.assert_allclose(jnp.sum(ours, axis=0), theirs, rtol=2e-4, atol=1e-6)
    bounds = transforms.layer_bounds(2.0, allocation, one(deltas))
    layer_norms = jax.vmap(transforms.layer_norms)(deltas)
    names = list(transforms.layer_sizes(one(deltas)))
    ours_clipped = [int(jnp.sum(layer_norms[n] > bounds[n])) for n in names]
    assert ours_clipped == [int(n) for n in num_clipped]
    assert sum(ours_clipped) > 100  # the comparison covers clipped and unclipped layers


def test_clipping_is_vmap_and_jit_safe(deltas):
    clip = transforms.clip_per_layer(1.0, "by_dim")
    batched, _ = jax.jit(jax.vmap(lambda d: apply(clip, d)))(deltas)
    for i in (0, 17, 2999):
        single, _ = apply(clip, one(deltas, i))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-6), batched, single)


def test_transforms_in_a_plain_optax_loop():
    """Someone else's linear-regression loop, with our transforms in the chain."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(256, 5)), jnp.float32)
    true_w = jnp.arange(1.0, 6.0)
    y = x @ true_w
    params = {"w": jnp.zeros(5), "b": jnp.zeros(())}
    tx = optax.chain(
        transforms.clip_per_layer(10.0, "uniform"),
        transforms.add_gaussian_noise(1e-3, jax.random.key(0)),
        optax.sgd(0.1),
    )
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, grads

    clipped_steps = 0
    for _ in range(300):
        params, state, grads = step(params, state)
        clipped_steps += int(optax.tree_utils.tree_get(state, "clipped"))
    np.testing.assert_allclose(params["w"], true_w, atol=0.02)
    # The chain's state holds the statistics of the last gradient the clipping saw.
    assert float(optax.tree_utils.tree_get(state, "global_norm")) == pytest.approx(
        float(optax.tree_utils.tree_norm(grads)), rel=1e-5
    )
    assert 0 < clipped_steps < 300  # large early gradients were clipped, late ones not


def test_docstring_examples_run():
    failures, tried = doctest.testmod(transforms)
    assert tried >= 5 and failures == 0
