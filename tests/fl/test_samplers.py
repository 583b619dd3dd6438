"""Cohort samplers: reproducible draws, static slots, and the privacy analysis they own."""

import doctest

import dp_accounting
import numpy as np
import pytest

from fl_dp_asr.dp import DPConfig, accounting
from fl_dp_asr.fl import samplers


def test_fixed_size_draws_are_reproducible_distinct_and_sorted():
    sampler = samplers.FixedSizeSampler(population=1000, cohort_size=32, seed=1)
    a, b, c = sampler.sample(4), sampler.sample(4), sampler.sample(5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(set(a.tolist())) == 32 and np.all(np.diff(a) > 0)
    assert sampler.expected_size == 32.0 and sampler.num_slots() == 32


def test_poisson_draws_have_the_expected_mean_and_fit_the_slots():
    sampler = samplers.PoissonSampler(population=1000, cohort_size=30, seed=2)
    sizes = [len(sampler.sample(r)) for r in range(400)]
    assert np.mean(sizes) == pytest.approx(30, rel=0.05)
    assert max(sizes) <= sampler.max_size < 1000
    users = sampler.sample(7)
    np.testing.assert_array_equal(users, sampler.sample(7))
    assert np.all(np.diff(users) > 0) and users.max() < 1000


def test_a_draw_beyond_the_slots_raises_instead_of_truncating():
    tight = samplers.PoissonSampler(population=1000, cohort_size=500, seed=0, num_stddev=-5.0)
    with pytest.raises(RuntimeError, match="more than max_size"):
        tight.sample(0)


@pytest.mark.parametrize("multiple", [1, 4, 6])
def test_num_slots_is_the_smallest_multiple_holding_every_cohort(multiple):
    sampler = samplers.PoissonSampler(population=300, cohort_size=16)
    slots = sampler.num_slots(multiple)
    assert slots % multiple == 0 and sampler.max_size <= slots < sampler.max_size + multiple


def test_bad_cohort_sizes_and_names_are_rejected():
    with pytest.raises(ValueError, match="cohort_size=11"):
        samplers.FixedSizeSampler(population=10, cohort_size=11)
    with pytest.raises(ValueError, match="sampling='uniform'"):
        samplers.make_sampler("uniform", 10, 2)


@pytest.mark.parametrize("name", samplers.SAMPLERS)
def test_the_accountant_is_the_one_of_the_sampler(name):
    sampler = samplers.make_sampler(name, population=500, cohort_size=20)
    z, rounds, delta = 1.3, 40, 1e-5
    expected = accounting.epsilon(z, 20, 500, rounds, delta, name).epsilon
    assert sampler.accountant(z, delta).epsilon(rounds) == expected
    relation = (
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        if name == "poisson"
        else dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    rdp = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    assert rdp.compose(sampler.dp_event(z, rounds)).get_epsilon(delta) == pytest.approx(expected)


@pytest.mark.parametrize("name", samplers.SAMPLERS)
def test_the_gaussian_event_is_noise_std_over_the_sensitivity(name):
    """z·C / sensitivity: z for Poisson (add/remove: C), z/2 for fixed size (replace: 2C)."""
    sampler = samplers.make_sampler(name, population=500, cohort_size=20)
    dp = DPConfig("global", clip_norm=0.5, noise_multiplier=1.6)
    event = sampler.dp_event(1.6, rounds=1).event
    gaussian = event.event
    stddev = dp.noise_stddev(sampler.expected_size)
    assert gaussian.noise_multiplier == pytest.approx(
        stddev / dp.sensitivity(sampler.neighboring_relation)
    )
    assert gaussian.noise_multiplier == (1.6 if name == "poisson" else 0.8)


def test_docstring_examples_run():
    failures, tried = doctest.testmod(samplers)
    assert tried >= 1 and failures == 0
