"""experiments.compare_mechanisms calibrates every setting to the same ε."""

import pytest

from experiments import compare_mechanisms as compare
from fl_dp_asr.dp import accounting
from fl_dp_asr.dp.correlated import CorrelatedNoise

ROUNDS, TARGET, DELTA = 4, 50.0, 1e-6


@pytest.mark.parametrize("mechanism, sampling", compare.SETTINGS)
def test_each_setting_spends_the_target_epsilon(mechanism, sampling):
    z = compare.noise_multiplier(mechanism, sampling, TARGET, ROUNDS, DELTA)
    if sampling == "poisson":
        epsilon = accounting.epsilon(z, compare.COHORT, compare.POPULATION, ROUNDS, DELTA).epsilon
    else:
        kind, extra = ("blt", {}) if mechanism == "blt" else ("banded_toeplitz", {"bands": 1})
        epsilon = CorrelatedNoise(kind, ROUNDS, ROUNDS, **extra).epsilon(z, DELTA).epsilon
    assert 0.9 * TARGET <= float(epsilon) <= TARGET * (1 + 1e-6)


def test_the_table_has_a_row_per_run():
    summary = {"noise_multiplier": 0.5, "epsilon_rdp": 12.0, "final_wer": 0.9, "final_cer": 0.3}
    text = compare.table([("blt", "cyclic", 0, summary)])
    assert text.splitlines()[-1] == "| blt / cyclic | 0 | 0.5 | 12 | 90.0 % | 30.0 % |"
