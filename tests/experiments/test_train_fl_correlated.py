"""The federated trainer with DP-FTRL (config.dp.mechanism): cyclic participation, the
correlated noise's state checkpointed, resume bit-identical, ε of the mechanism."""

import jax
import numpy as np
import pytest

from experiments import fl_setup, train_fl
from tests.experiments.test_train_fl import assert_check_config_refuses, final_state, small_config


def ftrl_config(corpus, tfds_dir, rounds):
    """1 user of the 3 per round, each user every 3rd round; a 3-band Toeplitz strategy for
    3 rounds (so runs of 1 and 2 rounds share it)."""
    c = small_config(corpus, tfds_dir, rounds)
    c.fl.sampling = "cyclic"
    c.fl.min_separation = 3
    c.fl.cohort_size = 1
    c.dp.mechanism = "banded_toeplitz"
    c.dp.strategy_rounds = 3
    return c


def test_correlated_noise_run_resumes_bit_for_bit_and_reports_its_epsilon(
    tiny_corpus, tfds_dir, tmp_path
):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    round_steps = {}  # one compiled round step for the three runs (same settings)
    summary = train_fl.train(ftrl_config(tiny_corpus, tfds_dir, 2), str(whole), round_steps)
    train_fl.train(ftrl_config(tiny_corpus, tfds_dir, 1), str(parts), round_steps)
    train_fl.train(ftrl_config(tiny_corpus, tfds_dir, 2), str(parts), round_steps)
    assert len(round_steps) == 1
    (step_a, state_a), (step_b, state_b) = final_state(whole), final_state(parts)
    assert step_a == step_b == 2
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
    noise_state = jax.tree.leaves(state_a["noise_state"])
    assert noise_state and all(x.shape[0] == 2 for x in noise_state)  # bands − 1 outputs
    assert any(np.any(x != 0) for x in noise_state)
    assert summary["mechanism"] == "banded_toeplitz" and summary["sampling"] == "cyclic"
    mechanism = fl_setup.correlated_noise(ftrl_config(tiny_corpus, tfds_dir, 2))
    expected = mechanism.epsilon(0.5, 1e-5, rounds=2).epsilon
    assert summary["epsilon_rdp"] == pytest.approx(expected, rel=1e-9)


def test_a_run_resumed_with_another_strategy_is_refused(tiny_corpus, tfds_dir, tmp_path):
    """Resuming with a strategy other than the checkpoint's (here its horizon, fl.rounds
    with dp.strategy_rounds unset) would add another mechanism's noise to its state."""
    config = ftrl_config(tiny_corpus, tfds_dir, 1)
    config.dp.strategy_rounds = None  # the horizon follows fl.rounds: 1, then 2
    config.fl.min_separation = 1
    config.dp.bands = 1
    train_fl.train(config, str(tmp_path))
    config.fl.rounds = 2
    with pytest.raises(ValueError, match="correlated-noise strategy"):
        train_fl.train(config, str(tmp_path))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"fl.sampling": "poisson"}, "fl.sampling=cyclic"),
        ({"dp.mechanism": "tree"}, "choose one of"),
        ({"dp.target_cohort": 100}, "target_cohort"),
        ({"dp.strategy_rounds": 1}, "strategy_rounds=1 is shorter than fl.rounds=2"),
        ({"dp.mechanism": "gaussian", "fl.sampling": "fixed"}, "min_separation=3 is a setting"),
    ],
)
def test_config_mistakes_of_correlated_noise_are_named(tiny_corpus, tfds_dir, change, message):
    assert_check_config_refuses(ftrl_config(tiny_corpus, tfds_dir, 2), change, message)
