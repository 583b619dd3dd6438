"""Correlated noise (fl_dp_asr.dp.correlated): the noise has the strategy's covariance, the
state machine is a deterministic, jit-able pytree function, ε matches a direct computation."""

import doctest
import itertools
import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_privacy.experimental import accounting as jp_accounting
from jax_privacy.matrix_factorization import buffered_toeplitz, toeplitz

from fl_dp_asr.dp import accounting, correlated, transforms
from fl_dp_asr.dp.correlated import CorrelatedNoise

# A BLT with three buffers (jax_privacy's rational approximation of 1/√(1−x), float32);
# explicit parameters keep these tests clear of the optimizer (5-40 s per strategy).
BLT_DECAY = (0.999999, 0.99805146, 0.87751161)
BLT_SCALE = (0.00926664, 0.05078283, 0.33202371)
BANDED_COEFS = (0.8, 0.45, 0.3, 0.2)
ROUNDS, SEPARATION = 12, 4


def blt(rounds=ROUNDS, separation=SEPARATION):
    return CorrelatedNoise("blt", rounds, separation, buf_decay=BLT_DECAY, output_scale=BLT_SCALE)


def banded(rounds=ROUNDS, separation=SEPARATION):
    return CorrelatedNoise("banded_toeplitz", rounds, separation, coefs=BANDED_COEFS)


def expected_strategy(mechanism) -> np.ndarray:
    """C written out from the parameters by hand (not through jax_privacy)."""
    n = mechanism.rounds
    if mechanism.kind == "blt":
        decay = np.asarray(mechanism.buf_decay, np.float64)
        scale = np.asarray(mechanism.output_scale, np.float64)
        coefs = [1.0] + [float(np.sum(scale * decay ** (i - 1))) for i in range(1, n)]
    else:
        coefs = list(mechanism.coefs) + [0.0] * (n - len(mechanism.coefs))
    return np.array([[coefs[i - j] if i >= j else 0.0 for j in range(n)] for i in range(n)])


PARAMS = {
    "encoder": {"kernel": jnp.zeros((50, 40)), "bias": jnp.zeros(40)},
    "blocks": [jnp.zeros((3, 8, 10), jnp.bfloat16), jnp.zeros((7,))],
}


def run_rounds(mechanism, params, stddev, key, rounds=None):
    """The noise of rounds 1..T as ``[T, coordinates]`` (leaves flattened), jitted scan."""
    rounds = mechanism.rounds if rounds is None else rounds

    @jax.jit
    def simulate(key):
        def step(state, t):
            noise, state = mechanism.next_noise(state, jax.random.fold_in(key, t), stddev, params)
            return state, jnp.concatenate([x.ravel() for x in jax.tree.leaves(noise)])

        return jax.lax.scan(step, mechanism.init_state(params), jnp.arange(rounds))[1]

    return np.asarray(simulate(key), np.float64)


def covariance_z_scores(samples: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """(empirical − expected) / standard error for every entry of the round covariance.

    ``samples`` is [rounds, d] with d iid zero-mean columns; Var(x_i x_j) = Σ_ii Σ_jj + Σ_ij².
    """
    d = samples.shape[1]
    empirical = samples @ samples.T / d
    variance = np.outer(np.diag(covariance), np.diag(covariance)) + covariance**2
    return (empirical - covariance) / np.sqrt(variance / d)


@pytest.mark.parametrize("make", [blt, banded], ids=["blt", "banded_toeplitz"])
def test_noise_over_the_rounds_has_the_covariance_of_the_strategy(make):
    mechanism, stddev = make(), 1.7
    params = {"a": jnp.zeros((200, 100)), "b": [jnp.zeros((60, 50)), jnp.zeros(2000)]}
    samples = run_rounds(mechanism, params, stddev, jax.random.key(3))
    c_inv = np.linalg.inv(expected_strategy(mechanism))
    np.testing.assert_allclose(
        mechanism.strategy_matrix(), expected_strategy(mechanism), rtol=1e-6, atol=1e-9
    )
    scores = covariance_z_scores(samples, stddev**2 * c_inv @ c_inv.T)
    assert np.abs(scores).max() < 5.0, np.abs(scores).max()
    # The test has power: independent noise of the same per-round variance is rejected.
    independent = np.diag(np.diag(stddev**2 * c_inv @ c_inv.T))
    assert np.abs(covariance_z_scores(samples, independent)).max() > 20.0


def test_identity_strategy_draws_exactly_the_gaussian_mechanism_noise():
    """A BLT without buffers is C = I: the first round's draw is the plain Gaussian's."""
    identity = CorrelatedNoise("blt", 4, 2, buf_decay=(), output_scale=())
    key = jax.random.key(5)
    noise, state = identity.next_noise(identity.init_state(PARAMS), key, 0.3, PARAMS)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), PARAMS)
    reference = transforms.gaussian_noise(zeros, 0.3, key)
    jax.tree.map(np.testing.assert_array_equal, noise, reference)
    assert identity.state_bytes(PARAMS) == 0 and jax.tree.leaves(state)[0].shape[0] == 0


@pytest.mark.parametrize("make", [blt, banded], ids=["blt", "banded_toeplitz"])
def test_state_is_a_float32_pytree_per_leaf_and_its_bytes_are_counted(make):
    mechanism = make()
    state = mechanism.init_state(PARAMS)
    buffers = mechanism.num_buffers
    assert buffers == (3 if mechanism.kind == "blt" else len(BANDED_COEFS) - 1)
    leaves = jax.tree.leaves(state)
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    shapes = sorted(leaf.shape for leaf in leaves)
    assert shapes == sorted((buffers, *p.shape) for p in jax.tree.leaves(PARAMS))
    size = sum(math.prod(p.shape) for p in jax.tree.leaves(PARAMS))
    assert mechanism.state_bytes(PARAMS) == 4 * buffers * size
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), PARAMS)
    assert mechanism.state_bytes(abstract) == mechanism.state_bytes(PARAMS)


@pytest.mark.parametrize("make", [blt, banded], ids=["blt", "banded_toeplitz"])
def test_noise_is_deterministic_given_the_keys_jit_able_and_resumable(make):
    mechanism = make()
    state = mechanism.init_state(PARAMS)
    keys = [jax.random.key(i) for i in range(4)]
    eager, states = [], [state]
    for key in keys:
        noise, state = mechanism.next_noise(state, key, 0.5, PARAMS)
        eager.append(noise)
        states.append(state)
    step = jax.jit(mechanism.next_noise)
    state = mechanism.init_state(PARAMS)
    for t, key in enumerate(keys):
        noise, state = step(state, key, jnp.float32(0.5), PARAMS)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), noise, eager[t]
        )
        assert noise["encoder"]["kernel"].dtype == jnp.float32
    # Resume from a host copy of the state after round 2 (what a checkpoint holds).
    restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), states[2])
    again, _ = step(restored, keys[2], jnp.float32(0.5), PARAMS)
    first, _ = step(states[2], keys[2], jnp.float32(0.5), PARAMS)
    jax.tree.map(np.testing.assert_array_equal, again, first)
    different, _ = step(states[2], jax.random.key(99), jnp.float32(0.5), PARAMS)
    assert not np.allclose(different["encoder"]["kernel"], first["encoder"]["kernel"])


def test_zero_stddev_adds_nothing_and_keeps_a_unit_variance_state():
    mechanism = blt()
    noise, state = mechanism.next_noise(
        mechanism.init_state(PARAMS), jax.random.key(0), 0.0, PARAMS
    )
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(noise))
    assert np.std(np.asarray(state["encoder"]["kernel"][0])) == pytest.approx(1.0, abs=0.1)


# --------------------------------------------------------------------------------------
# Accounting
# --------------------------------------------------------------------------------------
def direct_epsilon(
    coefs: np.ndarray, rounds: int, separation: int, z: float, delta: float, accountant
) -> float:
    """ε from jax_privacy's min-separation sensitivity and dp_accounting, written out."""
    with jax.enable_x64():
        squared = float(
            toeplitz.minsep_sensitivity_squared(
                jnp.asarray(coefs, jnp.float64), min_sep=separation, n=rounds
            )
        )
    event = dp_accounting.GaussianDpEvent(z / math.sqrt(squared))
    return accountant.compose(event).get_epsilon(delta)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_matches_jax_privacy_sensitivity_and_dp_accounting(accountant):
    mechanism, z, delta = blt(), 3.0, 1e-6
    with jax.enable_x64():
        coefs = np.asarray(
            buffered_toeplitz.BufferedToeplitz.build(  # float32 values
                mechanism.buf_decay, mechanism.output_scale, dtype=jnp.float64
            ).toeplitz_coefs(ROUNDS)
        )
    new = (
        dp_accounting.rdp.RdpAccountant if accountant == "rdp" else dp_accounting.pld.PLDAccountant
    )
    guarantee = mechanism.epsilon(z, delta, accountant=accountant)
    assert guarantee.epsilon == pytest.approx(
        direct_epsilon(coefs, ROUNDS, SEPARATION, z, delta, new()), rel=1e-9
    )
    assert guarantee.max_participations == 3 and guarantee.rounds == ROUNDS
    assert "zero-out-one-user" in str(guarantee)
    assert "no sampling amplification" in str(guarantee)
    # Fewer rounds released: the prefix's sensitivity, never more ε.
    prefix = mechanism.epsilon(z, delta, rounds=5, accountant=accountant)
    assert prefix.epsilon == pytest.approx(
        direct_epsilon(coefs[:5], 5, SEPARATION, z, delta, new()), rel=1e-9
    )
    assert prefix.epsilon < guarantee.epsilon


def test_banded_epsilon_is_jax_privacy_bandmf_event_without_amplification():
    """Norm-1 banded coefficients, n a multiple of b: sens² = k, so the mechanism is k
    Gaussians with multiplier z: jax_privacy's amplified_bandmf_event at sampling rate 1."""
    coefs = np.asarray(BANDED_COEFS) / np.linalg.norm(BANDED_COEFS)
    mechanism = CorrelatedNoise("banded_toeplitz", ROUNDS, SEPARATION, coefs=coefs)
    assert mechanism.sensitivity() == pytest.approx(math.sqrt(ROUNDS / SEPARATION), rel=1e-6)
    event = jp_accounting.amplified_bandmf_event(
        2.0, ROUNDS, num_bands=SEPARATION, sampling_prob=1.0
    )
    expected = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1e-6)
    assert mechanism.epsilon(2.0, 1e-6).epsilon == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_calibrate_inverts_epsilon(accountant):
    mechanism = banded()
    z = mechanism.calibrate(4.0, 1e-6, accountant=accountant, tolerance=1e-4)
    assert mechanism.epsilon(z, 1e-6, accountant=accountant).epsilon <= 4.0
    assert mechanism.epsilon(z - 2e-3, 1e-6, accountant=accountant).epsilon > 4.0
    with pytest.raises(ValueError, match="target_epsilon"):
        mechanism.calibrate(1e9, 1e-6)


def test_run_accountant_of_a_correlated_run():
    acc = blt().accountant(2.0, 1e-6)
    eps = [acc.epsilon(t) for t in range(1, ROUNDS + 1)]
    assert all(a <= b for a, b in itertools.pairwise(eps))
    budget = (eps[5] + eps[6]) / 2
    assert acc.max_rounds_within(budget) == 6
    assert acc.max_rounds_within(1e9) == ROUNDS and acc.pld_feasible(ROUNDS)
    with pytest.raises(ValueError, match="must not exceed the 12 rounds"):
        acc.epsilon(ROUNDS + 1)


def test_independent_noise_with_min_separation_is_sqrt_k_sensitivity():
    """bands=1 is the Gaussian mechanism every round without amplification."""
    mechanism = CorrelatedNoise("banded_toeplitz", 10, 3, bands=1).optimize()
    assert mechanism.coefs == (1.0,) and mechanism.num_buffers == 0
    assert mechanism.sensitivity() == pytest.approx(2.0)  # k = ⌈10/3⌉ = 4
    gaussian = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.5), 4)
    assert mechanism.epsilon(1.5, 1e-5).epsilon == pytest.approx(
        dp_accounting.rdp.RdpAccountant().compose(gaussian).get_epsilon(1e-5), rel=1e-6
    )


def test_the_zero_out_relation_has_clip_norm_sensitivity():
    assert accounting.sensitivity(0.5, accounting.ZERO_OUT_ONE_USER) == 0.5


# --------------------------------------------------------------------------------------
# The value
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(kind="tree", rounds=4, min_separation=2), "kind"),
        (dict(kind="blt", rounds=0, min_separation=1), "rounds"),
        (dict(kind="blt", rounds=4, min_separation=5), "min_separation"),
        (dict(kind="blt", rounds=4, min_separation=2, bands=2), "bands"),
        (dict(kind="blt", rounds=4, min_separation=2, buf_decay=(0.5,)), "output_scale"),
        (
            dict(kind="blt", rounds=4, min_separation=2, buf_decay=(1.5,), output_scale=(0.1,)),
            "buf_decay",
        ),
        (
            dict(kind="blt", rounds=4, min_separation=2, buf_decay=(0.5,), output_scale=(-0.3,)),
            "non-increasing",
        ),
        (dict(kind="blt", rounds=4, min_separation=2, max_buffers=16), "max_buffers"),
        (dict(kind="banded_toeplitz", rounds=8, min_separation=2, bands=3), "bands"),
        (dict(kind="banded_toeplitz", rounds=8, min_separation=2, coefs=(1.0,)), "coefs"),
        (
            dict(kind="banded_toeplitz", rounds=8, min_separation=2, coefs=(0.5, 0.9)),
            "non-increasing",
        ),
        (dict(kind="banded_toeplitz", rounds=8, min_separation=2, error="median"), "error"),
    ],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CorrelatedNoise(**kwargs)


def test_value_round_trips_through_json_fields_and_is_hashable():
    mechanism = blt()
    again = CorrelatedNoise.from_dict(mechanism.to_dict())
    assert again == mechanism and hash(again) == hash(mechanism)
    assert mechanism.buf_decay == tuple(float(np.float32(v)) for v in BLT_DECAY)


@pytest.mark.parametrize(
    "mechanism",
    [
        CorrelatedNoise("banded_toeplitz", 12, 4),  # ~4 s
        pytest.param(
            CorrelatedNoise("blt", 12, 4, max_buffers=1),  # ~10 s (0, then 1 buffer)
            marks=pytest.mark.slow,
        ),
    ],
    ids=["banded_toeplitz", "blt"],
)
def test_optimized_strategies_are_valid_and_have_the_claimed_covariance(mechanism):
    strategy = mechanism.optimize()
    assert strategy.optimized and not mechanism.optimized
    assert strategy.sensitivity() >= math.sqrt(strategy.max_participations) - 1e-6
    if strategy.kind == "blt":
        assert strategy.strategy_coefs()[0] == 1.0
    else:
        assert np.linalg.norm(strategy.coefs) == pytest.approx(1.0, rel=1e-5)
    samples = run_rounds(strategy, {"w": jnp.zeros((100, 300))}, 1.0, jax.random.key(1))
    c_inv = np.linalg.inv(expected_strategy(strategy))
    assert np.abs(covariance_z_scores(samples, c_inv @ c_inv.T)).max() < 5.0


def test_the_mechanism_refuses_samplers_without_min_separation():
    from fl_dp_asr.fl import samplers

    mechanism = blt()
    with pytest.raises(ValueError, match="does not guarantee: use the 'cyclic' sampler"):
        mechanism.check_sampler(samplers.PoissonSampler(100, 10))
    with pytest.raises(ValueError, match="below the mechanism's"):
        mechanism.check_sampler(samplers.CyclicSampler(100, 10, min_separation=2))
    mechanism.check_sampler(samplers.CyclicSampler(100, 10, min_separation=SEPARATION))


def test_docstring_examples_run():
    failures, tried = doctest.testmod(correlated)
    assert tried >= 1 and failures == 0


def test_state_and_mechanism_checkpoint_with_orbax_and_resume_bit_identically(tmp_path):
    from fl_dp_asr.train.checkpoint import Checkpointer

    mechanism = blt()
    step = jax.jit(mechanism.next_noise)
    keys = [jax.random.fold_in(jax.random.key(7), t) for t in range(4)]
    state = mechanism.init_state(PARAMS)
    for key in keys[:2]:
        _, state = step(state, key, jnp.float32(0.4), PARAMS)
    ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
    ckpt.save(2, {"noise_state": state}, {"mechanism": mechanism.to_dict()})
    ckpt.close()
    uninterrupted = []
    for key in keys[2:]:
        noise, state = step(state, key, jnp.float32(0.4), PARAMS)
        uninterrupted.append(noise)

    reader = Checkpointer(tmp_path / "ckpt", read_only=True)
    restored, meta = reader.restore(
        2, {"noise_state": jax.eval_shape(mechanism.init_state, PARAMS)}
    )
    reader.close()
    resumed = CorrelatedNoise.from_dict(meta["mechanism"])
    assert resumed == mechanism
    state = restored["noise_state"]
    step = jax.jit(resumed.next_noise)
    for key, expected in zip(keys[2:], uninterrupted):
        noise, state = step(state, key, jnp.float32(0.4), PARAMS)
        jax.tree.map(np.testing.assert_array_equal, noise, expected)


def test_a_strategy_optimized_inside_a_trace_runs_eagerly():
    """fl-dp-asr-plan shapes the server state with jax.eval_shape before anything optimized
    the strategy: its optimization must not see traced values."""
    import jax

    from fl_dp_asr.dp import DPConfig
    from fl_dp_asr.fl import round as round_lib
    from fl_dp_asr.fl import server

    mechanism = CorrelatedNoise("banded_toeplitz", rounds=20, min_separation=3, bands=3)
    dp = DPConfig("global", 1.0, noise_multiplier=1.0, correlated_noise=mechanism)
    state = jax.eval_shape(
        lambda p: round_lib.init_server_state(p, server.make_server_optimizer("sgd", 1.0), dp),
        {"w": jax.ShapeDtypeStruct((4,), "float32")},
    )
    assert [x.shape for x in jax.tree.leaves(state.noise_state)] == [(2, 4)]
