"""`make demo` in a 2-step / 2-round smoke version on the tiny corpus."""

import os

from experiments import demo
from experiments.configs import demo_central
from tests.experiments.test_train_fl import small_config


def test_demo_smoke(tiny_corpus, tfds_dir, tmp_path):
    central = demo_central.get_config()
    central.data.manual_dir = str(tiny_corpus)
    central.data.data_dir = str(tfds_dir)
    central.data.num_buckets = 1
    central.data.min_seconds = 0.0
    central.train.num_steps = 2
    central.train.batch_size = 2
    central.train.log_every = 1
    central.optimizer.warmup_steps = 1
    central.eval.every = 2
    central.checkpoint.every = 2
    fl = small_config(tiny_corpus, tfds_dir, 2)
    fl.fl.sampling = "poisson"
    fl.dp.noise_multiplier = None
    fl.dp.sigma_dp = 0.5
    fl.eval.pld = True
    fl.privacy.target_cohort = 20
    fl.privacy.target_population = 30

    text = demo.run(str(tmp_path), central, fl)

    assert "seed model" in text and "(FL + DP)" in text
    assert "eps_PLD=n/a" not in text  # both accountants for the run and its extrapolation
    for name in ("wer_vs_round.png", "wer_vs_epsilon.png", "layer_norms_fl_dp.png"):
        assert os.path.getsize(tmp_path / "plots" / name) > 1000
    assert (tmp_path / "fl_dp" / "checkpoints").is_dir()
