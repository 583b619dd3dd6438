"""The round step: one shared suite for the three executors, DP properties, memory."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fl_dp_asr.dp import DPConfig
from fl_dp_asr.fl import client, executors, server
from fl_dp_asr.fl import round as round_lib
from tests import processes
from tests.fl import toy_task

EXECUTORS = ["vectorized", "sequential", "sharded"]


def fresh_params(extra_zeros: int = 0):
    params = toy_task.init_params(jax.random.key(0))
    if extra_zeros:
        params["unused"] = jnp.zeros(extra_zeros)  # gets zero gradient: isolates the noise
    return params


def run_round(
    cohort_block,
    *,
    executor="vectorized",
    dp=None,
    local_lr=0.1,
    cohort_size=None,
    chunk_size=4,
    params=None,
    key=1,
):
    """One round with a server SGD of lr 1, so new params = params − noisy_sum / S."""
    params = fresh_params() if params is None else params
    dp = dp or DPConfig("per_layer", 1.0, "uniform")
    client_update = client.make_client_update(toy_task.loss_fn, client.local_sgd(local_lr, 1.0))
    opt = server.make_server_optimizer("sgd", 1.0)
    cohort_size = cohort_size or int(np.sum(cohort_block["client_mask"]))
    step = round_lib.make_round_step(
        client_update, opt, dp, cohort_size, executors.make(executor, chunk_size=chunk_size)
    )
    before = jax.tree.map(np.asarray, params)
    state, metrics = step(
        round_lib.init_server_state(params, opt), cohort_block, jax.random.key(key)
    )
    noisy_sum = jax.tree.map(lambda b, a: (b - np.asarray(a)) * cohort_size, before, state.params)
    return state, metrics, noisy_sum


def assert_trees_close(a, b, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5), a, b)


@pytest.fixture(scope="module")
def reference():
    """The reference scheme: one client at a time (``sequential``)."""
    return run_round(toy_task.make_cohort(10, real_clients=9), executor="sequential")


@pytest.mark.parametrize("executor", EXECUTORS)
def test_executors_agree(executor, reference):
    _, ref_metrics, ref_sum = reference
    _, metrics, total = run_round(toy_task.make_cohort(10, real_clients=9), executor=executor)
    assert_trees_close(total, ref_sum)
    assert_trees_close(metrics, ref_metrics)
    assert float(metrics["clients"]) == 9


@pytest.mark.parametrize("executor", EXECUTORS)
def test_executors_agree_with_ragged_local_steps(executor):
    """Clients with 1-3 real steps: sorted into chunks, all-padding steps skipped."""
    block = toy_task.make_cohort(10, local_steps=3, steps_per_client=[3, 1, 2, 3, 1, 1, 2, 3, 1, 2])
    _, ref_metrics, ref_sum = run_round(block, executor="sequential")
    _, metrics, total = run_round(block, executor=executor, chunk_size=2)
    assert_trees_close(total, ref_sum)
    assert_trees_close(metrics, ref_metrics)


@pytest.mark.parametrize("executor", ["vectorized", "sequential"])
def test_padding_clients_change_nothing(executor, reference):
    block = toy_task.make_cohort(10, real_clients=9)
    garbage = toy_task.make_cohort(10, seed=99)
    padded = jax.tree.map(lambda a, g: np.concatenate([a, g[:5]]), block, garbage)
    padded["client_mask"][10:] = 0.0  # five padding clients full of data
    _, metrics, total = run_round(padded, executor=executor, cohort_size=9)
    assert_trees_close(total, reference[2])
    assert float(metrics["clients"]) == 9


def test_padded_local_steps_change_nothing():
    steps = [3, 1, 2, 3]
    masked = toy_task.make_cohort(4, local_steps=3, steps_per_client=steps)
    garbage = toy_task.make_cohort(4, local_steps=3, seed=5)["batches"]
    for name in masked["batches"]:  # fill the padded steps with other data
        pad = masked["step_mask"] == 0
        masked["batches"][name][pad] = garbage[name][pad]
    _, m1, s1 = run_round(masked)
    # The same clients with the padded steps simply cut off (each client alone).
    for i, n in enumerate(steps):
        single = {
            "batches": jax.tree.map(lambda x: x[i : i + 1, :n], masked["batches"]),
            "step_mask": masked["step_mask"][i : i + 1, :n],
            "client_mask": masked["client_mask"][i : i + 1],
        }
        _, _, s_single = run_round(single, cohort_size=4, chunk_size=1)
        s1 = jax.tree.map(lambda a, b: a - b, s1, s_single)
    assert_trees_close(s1, jax.tree.map(np.zeros_like, s1), atol=1e-5)
    assert float(m1["local_steps"]) == pytest.approx(np.mean(steps))


def test_client_delta_sign_is_server_minus_local():
    block = toy_task.make_cohort(1, local_steps=1)
    params = fresh_params()
    update = client.make_client_update(toy_task.loss_fn, optax.sgd(0.5))
    one = jax.tree.map(lambda x: x[0], block)
    delta, metrics = update.run(params, one, jax.random.key(0))
    first_batch = jax.tree.map(lambda x: x[0], one["batches"])
    grads = jax.grad(lambda p: toy_task.loss_fn(p, first_batch, None)[0])(params)
    assert_trees_close(delta, jax.tree.map(lambda g: 0.5 * g, grads))
    assert float(metrics.steps) == 1.0


NOISE_PARAMS = 120_000


def noise_round(executor="vectorized"):
    """All clients send zero (local lr 0): the update is the noise alone."""
    dp = DPConfig("global", 0.5, noise_multiplier=2.0)
    block = toy_task.make_cohort(8)
    _, _, noisy_sum = run_round(
        block, executor=executor, dp=dp, local_lr=0.0, params=fresh_params(NOISE_PARAMS), key=3
    )
    return np.asarray(noisy_sum["unused"]) / 8  # the noise on the mean


def test_noise_std_is_z_c_over_s():
    mean_noise = noise_round()
    expected = 2.0 * 0.5 / 8
    assert np.std(mean_noise) == pytest.approx(expected, rel=0.02)
    assert abs(np.mean(mean_noise)) < 5 * expected / np.sqrt(NOISE_PARAMS)


def test_steps_that_differ_only_in_noise_share_one_program():
    """σ_DP is an argument of the compiled step, not a constant: a sweep over σ_DP (and its
    σ_DP = 0 point) lowers to one program, so it compiles once (persistent cache)."""
    opt = server.make_server_optimizer("lamb", 1e-3)
    update = client.make_client_update(toy_task.loss_fn, client.local_sgd(0.1))
    block, key = toy_task.make_cohort(4), jax.random.key(0)

    def program(dp):
        step = round_lib.make_round_step(update, opt, dp, 4, executors.vectorized(chunk_size=4))
        return step.lower(round_lib.init_server_state(fresh_params(), opt), block, key).as_text()

    noisy = program(DPConfig("global", 0.5, sigma_dp=0.1))
    assert program(DPConfig("global", 0.5, sigma_dp=1e-3)) == noisy
    assert program(DPConfig("global", 0.5, sigma_dp=0.0)) == noisy
    assert program(DPConfig("global", 0.25, sigma_dp=0.1)) != noisy  # C is still static


def test_zero_noise_changes_nothing():
    """σ_DP = 0 draws the noise and multiplies it by 0: the sum is exactly the clean one."""
    _, metrics, _ = run_round(toy_task.make_cohort(4), dp=DPConfig("global", 0.5, sigma_dp=0.0))
    # ‖noisy_h − clean_h‖ = 0 for every layer: equal coordinate by coordinate
    assert all(float(v) == 0.0 for v in metrics["layer_noise_norms"].values())
    assert float(metrics["noisy_sum_norm"]) == pytest.approx(float(metrics["sum_norm"]), rel=1e-6)
    assert float(metrics["sum_norm"]) > 0


def test_layer_signal_and_noise_norms_are_those_of_the_mean():
    """The per-layer metrics are ‖Σ clip(Δ)_h‖/S and ‖ξ_h‖/S (docs/replication.md)."""
    dp = DPConfig("global", 0.5, noise_multiplier=2.0)
    block = toy_task.make_cohort(8)
    _, noiseless, clean_sum = run_round(
        block, dp=DPConfig("global", 0.5), params=fresh_params(1000)
    )
    _, metrics, noisy_sum = run_round(block, dp=dp, params=fresh_params(1000))
    for name in noiseless["layer_signal_norms"]:
        clean, noisy = clean_sum, noisy_sum
        for key in name.split("/"):
            clean, noisy = clean[key], noisy[key]
        signal = np.linalg.norm(clean) / 8
        noise = np.linalg.norm(np.asarray(noisy) - clean) / 8
        assert float(metrics["layer_signal_norms"][name]) == pytest.approx(signal, rel=1e-4)
        assert float(metrics["layer_noise_norms"][name]) == pytest.approx(noise, rel=1e-3, abs=1e-6)
        assert float(noiseless["layer_noise_norms"][name]) == 0.0
    expected = 2.0 * 0.5 / 8 * np.sqrt(1000)  # ‖ξ‖/S of the 1000 zero-gradient coordinates
    assert float(metrics["layer_noise_norms"]["unused"]) == pytest.approx(expected, rel=0.1)


def test_noise_is_added_once_with_eight_devices():
    """Eight fake CPU devices (subprocess): same noise, not √8 times more."""
    script = textwrap.dedent("""
        import json, numpy as np
        from tests.fl.test_round import noise_round
        import jax
        assert jax.device_count() == 8
        noise = noise_round("sharded")
        print(json.dumps({"std": float(np.std(noise)), "head": noise[:5].tolist()}))
    """)
    eight = processes.run_json(script)
    one = noise_round()
    assert eight["std"] == pytest.approx(float(np.std(one)), rel=1e-5)
    np.testing.assert_allclose(eight["head"], one[:5], rtol=1e-5)


@pytest.mark.parametrize("clipping", ["global", "per_layer", "rescale_per_layer"])
def test_one_user_changes_the_noiseless_sum_by_at_most_c(clipping):
    dp = DPConfig(clipping, 0.05, "by_dim")
    block = toy_task.make_cohort(6)
    _, _, base = run_round(block, dp=dp, cohort_size=6)
    removed = jax.tree.map(np.copy, block)
    removed["client_mask"][2] = 0.0
    _, _, without = run_round(removed, dp=dp, cohort_size=6)
    changed = jax.tree.map(np.copy, block)
    changed["batches"]["x"][2] *= 1e3
    changed["batches"]["y"][2] = -changed["batches"]["y"][2] * 1e4
    _, _, other = run_round(changed, dp=dp, cohort_size=6)

    def dist(a, b):
        return float(optax.tree_utils.tree_norm(optax.tree_utils.tree_sub(a, b)))

    assert 0 < dist(base, without) <= 0.05 * (1 + 1e-4)  # add/remove one user: C
    assert 0 < dist(base, other) <= 2 * 0.05 * (1 + 1e-4)  # replace one user: 2C


@pytest.mark.parametrize("executor", ["vectorized", "sequential"])
def test_nan_client_is_dropped_and_counted(executor):
    block = toy_task.make_cohort(6)
    _, _, clean = run_round(
        jax.tree.map(np.copy, block) | {"client_mask": np.array([1, 1, 1, 0, 1, 1], np.float32)},
        executor=executor,
        cohort_size=6,
    )
    block["batches"]["x"][3, 0, 0, 0] = np.nan
    _, metrics, total = run_round(block, executor=executor, cohort_size=6)
    assert float(metrics["dropped_clients"]) == 1.0
    assert_trees_close(total, clean)
    round_lib.check_round(metrics, 0)


def test_round_with_all_clients_dropped_keeps_state_and_raises():
    block = toy_task.make_cohort(4)
    block["batches"]["y"][:] = np.inf
    params = fresh_params()
    before = jax.tree.map(np.asarray, params)
    state, metrics, _ = run_round(block, params=params)
    assert int(state.round) == 0
    assert_trees_close(state.params, before, atol=0)
    with pytest.raises(round_lib.AllClientsDroppedError, match="round 7: all 4 clients"):
        round_lib.check_round(metrics, 7)


def test_no_clipping_is_plain_fedavg():
    block = toy_task.make_cohort(4)
    _, metrics, total = run_round(block, dp=DPConfig("none"))
    _, _, clipped_at_infinity = run_round(block, dp=DPConfig("global", 1e30))
    assert float(metrics["clip_fraction"]) == 0.0
    assert_trees_close(total, clipped_at_infinity)
    assert np.isfinite(float(metrics["sum_norm"])) and float(metrics["sum_norm"]) > 0


def test_update_that_makes_params_nan_is_not_applied():
    opt = optax.sgd(float("nan"))
    step = round_lib.make_round_step(
        client.make_client_update(toy_task.loss_fn, client.local_sgd(0.1)),
        opt,
        DPConfig("global", 1.0),
        4,
        executors.vectorized(chunk_size=4),
    )
    params = fresh_params()
    before = jax.tree.map(np.asarray, params)
    state, metrics = step(
        round_lib.init_server_state(params, opt), toy_task.make_cohort(4), jax.random.key(0)
    )
    assert int(state.round) == 0
    assert_trees_close(state.params, before, atol=0)
    with pytest.raises(round_lib.NonFiniteParamsError, match="round 3"):
        round_lib.check_round(metrics, 3)


def test_compiled_temp_memory_is_flat_in_cohort_size():
    def temp_bytes(num_clients):
        params = fresh_params(20_000)
        opt = server.make_server_optimizer("lamb", 1e-3)
        step = round_lib.make_round_step(
            client.make_client_update(toy_task.loss_fn, client.local_sgd(0.1)),
            opt,
            DPConfig("per_layer", 1.0, noise_multiplier=1.0),
            num_clients,
            executors.vectorized(chunk_size=8),
        )
        block = toy_task.make_cohort(num_clients)
        compiled = step.lower(
            round_lib.init_server_state(params, opt), block, jax.random.key(0)
        ).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(32), temp_bytes(256)
    assert large <= 1.2 * small, (small, large)


def test_unknown_executor_is_rejected():
    with pytest.raises(ValueError, match="executor='threads'"):
        executors.make("threads")
    with pytest.raises(ValueError, match="chunk_size"):
        executors.vectorized(chunk_size=0)


@pytest.mark.parametrize("make", [executors.vectorized, executors.sharded])
@pytest.mark.parametrize("chunk_size", [2.5, 2.0, True, "4"])
def test_a_chunk_size_that_is_not_an_integer_is_rejected_when_made(make, chunk_size):
    with pytest.raises(ValueError, match=f"chunk_size must be an integer.*{chunk_size!r}"):
        make(chunk_size)


def test_numpy_integer_chunk_sizes_are_accepted():
    executor = executors.vectorized(np.int64(4))
    assert executor.client_multiple == 4 and type(executor.client_multiple) is int


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(expected_cohort_size=float("nan")), "expected_cohort_size must be finite"),
        (dict(expected_cohort_size=0), "expected_cohort_size must be finite and > 0"),
        (dict(dp="per_layer"), "dp must be a fl_dp_asr.dp.DPConfig"),
        (dict(executor="vectorized"), "executor must be an fl_dp_asr.fl.executors.Executor"),
    ],
)
def test_make_round_step_rejects_bad_arguments_naming_them(changes, message):
    args = (
        dict(
            client_update=client.make_client_update(toy_task.loss_fn, client.local_sgd(0.1)),
            server_optimizer=server.make_server_optimizer("sgd", 1.0),
            dp=DPConfig("per_layer", 1.0),
            expected_cohort_size=4,
        )
        | changes
    )
    with pytest.raises(ValueError, match=message):
        round_lib.make_round_step(**args)


@pytest.mark.parametrize("name", ["sgd", "adam", "lamb"])
def test_server_optimizers_train_the_toy_task(name):
    lr = {"sgd": 1.0, "adam": 0.02, "lamb": 0.02}[name]
    opt = server.make_server_optimizer(name, lr, decay_begin=5, decay_every=5)
    step = round_lib.make_round_step(
        client.make_client_update(toy_task.loss_fn, client.local_sgd(0.05)),
        opt,
        DPConfig("per_layer", 1.0, "by_dim"),
        8,
        executors.vectorized(chunk_size=8),
    )
    state = round_lib.init_server_state(fresh_params(), opt)
    losses = []
    for r in range(15):
        state, metrics = step(state, toy_task.make_cohort(8, seed=r % 3), jax.random.key(r))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.9 * losses[0]
    assert int(state.round) == 15


@pytest.mark.parametrize(
    "executor, adaptive", [("vectorized", False), ("sharded", False), ("vectorized", True)]
)
def test_round_step_donates_state_and_makes_no_host_transfers(executor, adaptive):
    """With state, cohort and key already on the device, a round moves nothing between host
    and device (``jax.transfer_guard``), and the old server state's buffers are reused.
    Adaptive: the step's state check (per-layer bounds, z_b > z) reads only names too."""
    opt = server.make_server_optimizer("lamb", 1e-3)
    dp = DPConfig(
        "per_layer",
        1.0,
        noise_multiplier=1.0,
        **(dict(target_unclipped_quantile=0.5, clipped_count_stddev=3.0) if adaptive else {}),
    )
    step = round_lib.make_round_step(
        client.make_client_update(toy_task.loss_fn, client.local_sgd(0.1)),
        opt,
        dp,
        6,
        executors.make(executor, chunk_size=2),
    )
    state = round_lib.init_server_state(fresh_params(), opt, dp)
    block = jax.device_put(
        toy_task.make_cohort(6, local_steps=3, steps_per_client=[3, 1, 2, 3, 1, 2])
    )
    key = jax.random.key(3)
    step(jax.tree.map(jnp.copy, state), block, key)  # compile outside the guard
    with jax.transfer_guard("disallow"):
        new_state, metrics = step(state, block, key)
        jax.block_until_ready((new_state, metrics))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new_state))
