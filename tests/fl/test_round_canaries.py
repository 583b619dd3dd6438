"""Canary clients in the round step: without a sampled canary nothing changes, bit for bit,
whatever the server optimizer, round after round, under the trainers' XLA flags; a sampled
canary enters the sum once, clipped to the bound (globally or per layer), before
the noise; the cosine metric sees it."""

import functools
import textwrap

import jax
import numpy as np
import pytest

from fl_dp_asr.dp import DPConfig, transforms
from fl_dp_asr.dp.canaries import OVERSHOOT, Canaries
from fl_dp_asr.fl import audit, client, server
from fl_dp_asr.fl import round as round_lib
from tests import processes
from tests.fl import toy_task
from tests.fl.test_round import fresh_params

CANARIES = Canaries(inserted=3, heldout=2, seed=7)
COHORT, CLIP = 4, 0.5


OPTIMIZERS = {
    "sgd": server.make_server_optimizer("sgd", 1.0),
    "adam": server.make_server_optimizer("adam", 0.01),
    "lamb": server.make_server_optimizer("lamb", 0.01),
}
OPT = OPTIMIZERS["sgd"]


@functools.lru_cache
def round_step(dp, canaries, optimizer="sgd"):
    """One compiled step per setting (the noise std is its argument)."""
    update = client.make_client_update(toy_task.loss_fn, client.local_sgd(0.1, 1.0))
    return round_lib.make_round_step(update, OPTIMIZERS[optimizer], dp, COHORT, canaries=canaries)


def one_round(dp, canaries=None, mask=None, noise=True):
    """One round with a server SGD of lr 1: returns (state, metrics, noisy sum)."""
    step = round_step(dp, canaries)
    if not noise:
        step = step._replace(noise_stddev=np.float32(0.0))
    params = fresh_params(200)
    before = jax.tree.map(np.asarray, params)
    block = toy_task.make_cohort(COHORT)
    if mask is not None:
        block[round_lib.CANARY_MASK] = np.asarray(mask, np.float32)
    state, metrics = step(round_lib.init_server_state(params, OPT), block, jax.random.key(3))
    noisy_sum = jax.tree.map(lambda b, a: (b - np.asarray(a)) * COHORT, before, state.params)
    return state, metrics, noisy_sum


# rescale_per_layer clips a canary as per_layer does (every layer over its bound).
DPS = {
    "global": DPConfig("global", CLIP, noise_multiplier=1.0),
    "per_layer": DPConfig("per_layer", CLIP, "by_dim", noise_multiplier=1.0),
}


def rounds_with_and_without_the_audit(optimizer, rounds=3):
    """``rounds`` rounds (other clients each round) of the server ``optimizer`` without
    canaries, then with canaries none of which is sampled: ``[(states, last metrics)] * 2``,
    the server state after every round (numpy copies)."""
    dp = DPS["per_layer"]
    runs = []
    for canaries in (None, CANARIES):
        step = round_step(dp, canaries, optimizer)
        state = round_lib.init_server_state(fresh_params(200), OPTIMIZERS[optimizer])
        states = []
        for r in range(rounds):
            block = toy_task.make_cohort(COHORT, seed=r)
            if canaries is not None:
                block[round_lib.CANARY_MASK] = np.zeros(canaries.inserted, np.float32)
            state, metrics = step(state, block, jax.random.fold_in(jax.random.key(3), r))
            states.append(jax.tree.map(np.array, state))
        runs.append((states, metrics))
    return runs


def test_rounds_without_sampled_canaries_are_bit_identical_to_rounds_without_the_audit():
    (plain_states, plain_metrics), (states, metrics) = rounds_with_and_without_the_audit("sgd")
    for plain, audited in zip(plain_states, states):
        jax.tree.map(np.testing.assert_array_equal, plain, audited)
    for name in ("loss", "clip_fraction", "clients", "noisy_sum_norm", "update_norm"):
        assert metrics[name] == plain_metrics[name], name
    assert metrics["canary_cosines"].shape == (CANARIES.total,)
    assert "canary_cosines" not in plain_metrics


def test_without_sampled_canaries_adam_and_lamb_are_bit_identical_under_default_flags():
    """Adam and LAMB (the trainer's default), three rounds, in a process with XLA's default
    flags, those of the trainers: the test session compiles without LLVM's optimizations,
    under which a server update fused differently with the audit differed in no bit."""
    script = textwrap.dedent("""
        import json
        import jax, numpy as np
        from tests.fl.test_round_canaries import rounds_with_and_without_the_audit
        differences = {}
        for optimizer in ("adam", "lamb"):
            (plain, _), (audited, _) = rounds_with_and_without_the_audit(optimizer)
            differences[optimizer] = [
                max(float(np.max(np.abs(p - a))) for p, a in
                    zip(jax.tree.leaves(one), jax.tree.leaves(other)))
                for one, other in zip(plain, audited)]
        print(json.dumps(differences))
    """)
    differences = processes.run_json(script, devices=1, xla_flags="")
    assert differences == {"adam": [0.0] * 3, "lamb": [0.0] * 3}


@pytest.mark.parametrize("clipping", sorted(DPS))
def test_a_sampled_canary_enters_the_sum_once_clipped_to_the_bound(clipping):
    """Noise off: the sum with canary 1 sampled minus the sum without is canary 1's update
    after the clipping — globally C, per layer C_h, along its direction."""
    dp = DPS[clipping]
    _, _, without = one_round(dp, CANARIES, mask=[0, 0, 0], noise=False)
    _, metrics, total = one_round(dp, CANARIES, mask=[0, 1, 0], noise=False)
    added = jax.tree.map(np.subtract, total, without)
    sent = jax.tree.map(np.asarray, CANARIES.update(1, added, dp))
    jax.tree.map(
        lambda a, s: np.testing.assert_allclose(a, s / OVERSHOOT, rtol=1e-3, atol=1e-6), added, sent
    )
    bounds = {"global": CLIP} if clipping == "global" else dp.initial_clip_bounds(added)
    norms = (
        {"global": transforms.l2_norm(jax.tree.leaves(added))}
        if clipping == "global"
        else transforms.layer_norms(added)
    )
    for name, bound in bounds.items():
        np.testing.assert_allclose(float(norms[name]), bound, rtol=1e-4)
    cosines = np.asarray(metrics["canary_cosines"])
    assert cosines[1] > 0.5 and np.all(np.abs(np.delete(cosines, 1)) < 0.3)


def test_two_sampled_canaries_add_up_before_the_noise():
    dp = DPS["per_layer"]
    _, _, none = one_round(dp, CANARIES, mask=[0, 0, 0])
    _, _, both = one_round(dp, CANARIES, mask=[1, 0, 1])
    _, _, first = one_round(dp, CANARIES, mask=[1, 0, 0])
    _, _, last = one_round(dp, CANARIES, mask=[0, 0, 1])
    jax.tree.map(
        lambda b, f, e, n: np.testing.assert_allclose(b - n, (f - n) + (e - n), atol=2e-6),
        both,
        first,
        last,
        none,
    )


@pytest.mark.parametrize(
    "dp, message",
    [
        (DPConfig("none"), "needs clipping"),
        (DPConfig("global", CLIP, target_unclipped_quantile=0.5), "fixed clip bounds"),
    ],
)
def test_canaries_without_a_fixed_bound_are_refused(dp, message):
    with pytest.raises(ValueError, match=message):
        one_round(dp, CANARIES, mask=[0, 0, 0])


@pytest.mark.parametrize(
    "canaries, mask, message",
    [
        (CANARIES, None, "needs the cohort block entry 'canary_mask'"),
        (CANARIES, [1, 0], r"float32 \[3\]"),
        (None, [1, 0, 0], "made without canaries"),
    ],
)
def test_a_block_whose_mask_does_not_fit_the_step_is_refused(canaries, mask, message):
    with pytest.raises(ValueError, match=message):
        one_round(DPS["global"], canaries, mask=mask)


def test_canaries_are_users_of_the_run_sampler():
    """K users + k canaries in one Poisson sampler: every draw splits into the users (ids < K)
    and the canaries' mask, nothing lost."""
    cohorts = audit.canary_sampler("poisson", 20, Canaries(5, 2), cohort_size=10, seed=1)
    assert cohorts.sampler.population == 25 and cohorts.num_canaries == 5
    drawn = 0
    for r in range(30):
        users, mask = cohorts.sample(r), cohorts.canary_mask(r)
        assert np.all(users < 20)
        ids = cohorts.sampler.sample(r)
        np.testing.assert_array_equal(np.flatnonzero(mask) + 20, ids[ids >= 20])
        drawn += mask.sum()
    assert 0.3 < drawn / (30 * 5) < 0.5  # q = 10 / 25


def test_a_round_is_drawn_once_for_its_users_and_its_canary_mask():
    cohorts = audit.canary_sampler("poisson", 20, Canaries(5, 2), cohort_size=10, seed=1)
    expected = {r: cohorts.sampler.sample(r) for r in range(3)}
    draws = []

    def counting(r):
        draws.append(r)
        return expected[r]

    object.__setattr__(cohorts.sampler, "sample", counting)  # the cache wraps it from now on
    cohorts.__post_init__()
    for r in range(3):
        cohorts.sample(r)
        cohorts.canary_mask(r)
    assert draws == [0, 1, 2]


def test_the_all_iterates_trail_keeps_the_maximum_and_survives_json():
    trail = audit.AuditTrail.start(CANARIES)
    trail.add(np.array([0.1, -0.2, 0.3, 0.0, 0.05], np.float32))
    trail.add(np.array([0.2, -0.3, 0.1, 0.0, 0.01], np.float32))
    np.testing.assert_array_equal(
        trail.max_cosines, np.float32([0.2, -0.2, 0.3, 0.0, 0.05]).astype(np.float64)
    )
    meta = trail.to_meta(CANARIES)
    back = audit.AuditTrail.from_meta(meta, CANARIES, "ckpt")
    np.testing.assert_array_equal(back.max_cosines, trail.max_cosines)
    with pytest.raises(ValueError, match=r"audit\.seed"):
        audit.AuditTrail.from_meta(meta, Canaries(3, 2, seed=8), "ckpt")
    with pytest.raises(ValueError, match="canaries None"):
        audit.AuditTrail.from_meta(None, CANARIES, "ckpt")
