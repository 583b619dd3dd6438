"""`make demo` in a 2-step / 2-round smoke version on the tiny corpus."""

import os

from experiments import demo
from experiments.configs import central
from tests.experiments.test_train_fl import small_config


def test_demo_smoke(tiny_corpus, tfds_dir, tmp_path):
    central_config = central.get_config("demo")
    central_config.data.manual_dir = str(tiny_corpus)
    central_config.data.data_dir = str(tfds_dir)
    central_config.data.num_buckets = 1
    central_config.data.min_seconds = 0.0
    central_config.train.num_steps = 2
    central_config.train.batch_size = 2
    central_config.train.log_every = 1
    central_config.optimizer.warmup_steps = 1
    central_config.eval.every = 2
    central_config.checkpoint.every = 2
    fl = small_config(tiny_corpus, tfds_dir, 2)
    fl.fl.sampling = "poisson"
    fl.dp.noise_multiplier = None
    fl.dp.sigma_dp = 0.5
    fl.dp.pld = True
    fl.dp.target_cohort = 20
    fl.dp.target_population = 30

    text = demo.run(str(tmp_path), central_config, fl)

    assert "seed model" in text and "(FL + DP)" in text
    assert "eps_PLD=n/a" not in text  # both accountants for the run and its extrapolation
    for name in ("wer_vs_round.png", "wer_vs_epsilon.png", "layer_norms_fl_dp.png"):
        assert os.path.getsize(tmp_path / "plots" / name) > 1000
    assert (tmp_path / "fl_dp" / "checkpoints").is_dir()
