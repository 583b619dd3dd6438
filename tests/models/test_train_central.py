"""experiments/train_central.py end to end on the tiny synthetic corpus: trains, evaluates,
checkpoints, and resumes bit-exactly."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np

from experiments import train_central
from experiments.configs import central
from fl_dp_asr.train.checkpoint import Checkpointer, load_model_checkpoint


def _config(corpus, tfds_dir):
    config = central.get_config("demo")
    config.data.manual_dir = str(corpus)
    config.data.data_dir = str(tfds_dir)
    config.data.min_seconds = 0.0
    config.model.num_blocks = 1
    config.model.model_dim = 32
    config.model.mlp_dim = 64
    config.model.conv_channels = 64
    config.train.batch_size = 2
    config.train.num_steps = 4
    config.train.log_every = 2
    config.eval.every = 2
    config.checkpoint.every = 2
    config.optimizer.warmup_steps = 1
    return config


def test_trains_checkpoints_and_resumes_exactly(tiny_corpus, tfds_dir, tmp_path):
    config = _config(tiny_corpus, tfds_dir)
    summary = train_central.train(config, str(tmp_path / "a"))
    assert summary["step"] == 4 and summary["dev_cer"] >= 0.0
    model_config, _, step = load_model_checkpoint(tmp_path / "a" / "checkpoints")
    assert step == 4 and model_config.num_blocks == 1

    # A run interrupted after step 2 continues to the same parameters and optimizer state.
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "2", tmp_path / "b" / "checkpoints" / "2")
    train_central.train(config, str(tmp_path / "b"))
    finals = [
        Checkpointer(tmp_path / run / "checkpoints", read_only=True).restore(4)[0]
        for run in ("a", "b")
    ]
    for x, y in zip(*(jax.tree.leaves(f) for f in finals)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_command_line_mistake_is_one_line_with_status_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train_central",
            "--config",
            "experiments/configs/central.py:demo",
            "--workdir",
            str(tmp_path / "run"),
            "--config.train.num_stepz=3",
        ],
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "train_central: error: --config.train.num_stepz=3: experiments/configs/central.py "
        'has no field train.num_stepz. Did you mean "num_steps" instead of "num_stepz"?\n'
    )
    assert not (tmp_path / "run").exists()


def test_a_missing_corpus_directory_stops_with_the_layout_error_and_creates_nothing(tmp_path):
    """The demo generates the synthetic corpus only in config.data.synthetic_dir."""
    nowhere = tmp_path / "nonexistent"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train_central",
            "--config",
            "experiments/configs/central.py:demo",
            "--workdir",
            str(tmp_path / "run"),
            f"--config.data.manual_dir={nowhere}",
            f"--config.data.data_dir={tmp_path / 'tfds'}",
        ],
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    error = result.stderr.splitlines()[-1]
    assert (
        error.startswith(
            f"train_central: error: config.data.manual_dir='{nowhere}' is not a directory"
        )
        and "Traceback" not in result.stderr
    )
    assert not nowhere.exists() and not (tmp_path / "run").exists()
