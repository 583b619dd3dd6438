"""The cyclic (min-separation) sampler: the participation correlated-noise accounting needs."""

import dp_accounting
import numpy as np
import pytest

from fl_dp_asr.dp import accounting
from fl_dp_asr.dp.correlated import CorrelatedNoise
from fl_dp_asr.fl import samplers


@pytest.mark.parametrize("seed", range(6))
def test_no_user_ever_takes_part_twice_within_min_separation(seed):
    """Property over random settings and many rounds: participations ≥ b rounds apart,
    cohorts of exactly S distinct users, every user eligible."""
    rng = np.random.default_rng(seed)
    separation = int(rng.integers(1, 12))
    population = int(rng.integers(separation, 400))
    cohort = int(rng.integers(1, population // separation + 1))
    sampler = samplers.CyclicSampler(population, cohort, seed=seed, min_separation=separation)
    last_round = np.full(population, -(10**9))
    seen = np.zeros(population, bool)
    for t in range(300):
        users = sampler.sample(t)
        assert len(users) == cohort and np.all(np.diff(users) > 0)
        assert users.min() >= 0 and users.max() < population
        assert np.all(t - last_round[users] >= separation), (separation, t)
        last_round[users] = t
        seen[users] = True
    if cohort * 300 >= 20 * population:  # every group member drawn eventually
        assert seen.all()


def test_groups_partition_the_population_and_draws_are_reproducible():
    sampler = samplers.CyclicSampler(103, 5, seed=3, min_separation=4)
    groups = [sampler.group(g) for g in range(4)]
    assert sorted(np.concatenate(groups).tolist()) == list(range(103))
    assert sorted(len(g) for g in groups) == [25, 26, 26, 26]
    for t in (0, 1, 7):
        np.testing.assert_array_equal(sampler.sample(t), sampler.sample(t))
        assert set(sampler.sample(t)) <= set(groups[t % 4].tolist())
    again = samplers.CyclicSampler(103, 5, seed=3, min_separation=4)
    np.testing.assert_array_equal(again.sample(9), sampler.sample(9))
    assert not np.array_equal(
        samplers.CyclicSampler(103, 5, seed=4, min_separation=4).sample(9), sampler.sample(9)
    )
    assert sampler.num_slots(4) == 8 and sampler.expected_size == 5.0
    assert sampler.neighboring_relation == accounting.ZERO_OUT_ONE_USER


def test_settings_that_cannot_fill_every_group_are_refused():
    with pytest.raises(ValueError, match="population // min_separation"):
        samplers.CyclicSampler(100, 30, min_separation=4)
    with pytest.raises(ValueError, match="min_separation=0"):
        samplers.CyclicSampler(100, 3, min_separation=0)
    with pytest.raises(ValueError, match="needs min_separation"):
        samplers.make_sampler("cyclic", 100, 3)
    with pytest.raises(ValueError, match="setting of the 'cyclic' sampler"):
        samplers.make_sampler("poisson", 100, 3, min_separation=2)
    assert samplers.make_sampler("cyclic", 100, 3, min_separation=2).min_separation == 2


def test_the_cyclic_sampler_owns_the_correlated_accounting():
    sampler = samplers.CyclicSampler(1000, 20, seed=0, min_separation=4)
    mechanism = CorrelatedNoise("banded_toeplitz", 12, 4, coefs=(0.8, 0.45, 0.3, 0.2))
    acc = sampler.accountant(2.0, 1e-6, mechanism)
    assert acc.epsilon(12) == mechanism.epsilon(2.0, 1e-6).epsilon
    assert sampler.dp_event(2.0, 12, mechanism) == mechanism.dp_event(2.0)
    # Without a mechanism: independent Gaussian noise every round, k = ⌈12/4⌉ = 3 times.
    gaussian = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 3)
    rdp = dp_accounting.rdp.RdpAccountant()
    assert rdp.compose(sampler.dp_event(2.0, 12)).get_epsilon(1e-6) == pytest.approx(
        dp_accounting.rdp.RdpAccountant().compose(gaussian).get_epsilon(1e-6), rel=1e-6
    )
    with pytest.raises(ValueError, match="below the mechanism's"):
        samplers.CyclicSampler(1000, 20, min_separation=2).accountant(2.0, 1e-6, mechanism)


@pytest.mark.parametrize(
    "call",
    [
        lambda: accounting.epsilon(1.0, 10, 100, 5, 1e-6, sampling="cyclic"),
        lambda: accounting.make_dp_event(1.0, 10, 100, 5, sampling="cyclic"),
        lambda: accounting.calibrate_noise(2.0, 10, 100, 5, 1e-6, sampling="cyclic"),
        lambda: accounting.RunAccountant("cyclic", 10, 100, 1.0, 1e-6),
    ],
)
def test_amplification_accounting_refuses_min_separation_participation(call):
    with pytest.raises(ValueError, match="no amplification-by-sampling analysis"):
        call()
