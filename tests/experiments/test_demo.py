"""`make demo` in a 2-step / 2-round smoke version on the tiny corpus."""

import os

from experiments import demo
from experiments.configs import central, fl_dp
from tests.experiments.test_train_fl import small_config


def tiny_central_config(corpus, tfds_dir, steps=2):
    """The demo's central config on the tiny corpus, ``steps`` steps of 2 utterances."""
    config = central.get_config("demo")
    config.data.manual_dir = str(corpus)
    config.data.data_dir = str(tfds_dir)
    config.data.num_buckets = 1
    config.data.min_seconds = 0.0
    config.train.num_steps = steps
    config.train.batch_size = 2
    config.train.log_every = 1
    config.optimizer.warmup_steps = 1
    config.eval.every = config.checkpoint.every = steps
    return config


def test_demo_smoke(tiny_corpus, tfds_dir, tmp_path):
    central_config = tiny_central_config(tiny_corpus, tfds_dir)
    central_config.model.num_blocks = 2  # the FL stage fine-tunes this seed model
    fl = small_config(tiny_corpus, tfds_dir, 2)
    fl.fl.sampling = "poisson"
    fl.dp.noise_multiplier = None
    fl.dp.sigma_dp = 0.5
    fl.dp.pld = True
    fl.dp.target_cohort = 20
    fl.dp.target_population = 30
    demo_fl = fl_dp.get_config("demo").fl  # the demo's padding cuts, end to end
    fl.fl.cut_row_levels, fl.fl.cut_length_levels = (
        demo_fl.cut_row_levels,
        demo_fl.cut_length_levels,
    )

    text = demo.run(str(tmp_path), central_config, fl)

    assert "seed model" in text and "(FL + DP)" in text
    assert "eps_PLD=n/a" not in text  # both accountants for the run and its extrapolation
    for name in ("wer_vs_round.png", "wer_vs_epsilon.png", "layer_norms_fl_dp.png"):
        assert os.path.getsize(tmp_path / "plots" / name) > 1000
    assert (tmp_path / "fl_dp" / "checkpoints").is_dir()
