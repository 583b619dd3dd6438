"""The federated trainer, continued (a file of its own so that `make test`'s two workers
share the trainer's end-to-end runs): adaptive clipping bounds resume bit for bit, and so
does a run stopped by a failed checkpoint save."""

import errno
import os

import jax
import numpy as np
import pytest

from experiments import train_fl
from fl_dp_asr.train import checkpoint
from fl_dp_asr.train.metrics import read_jsonl
from tests.experiments.test_train_fl import adaptive_config, final_state, small_config


def test_adaptive_bounds_are_checkpointed_and_resume_bit_for_bit(tiny_corpus, tfds_dir, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_fl.train(adaptive_config(tiny_corpus, tfds_dir, 2), str(whole))
    train_fl.train(adaptive_config(tiny_corpus, tfds_dir, 1), str(parts))
    train_fl.train(adaptive_config(tiny_corpus, tfds_dir, 2), str(parts))
    (step_a, state_a), (step_b, state_b) = final_state(whole), final_state(parts)
    assert step_a == step_b == 2
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
    records = [
        r for r in read_jsonl(os.path.join(whole, "metrics.jsonl")) if "train/clip_norm" in r
    ]
    prefix = "train/layer_clip_norms/"
    modules = {"block_00", "block_01", "final_norm", "front_end", "output"}
    assert set(state_a["clip_bounds"]) == modules  # dp.layers="module": one per module
    assert {k[len(prefix) :] for k in records[-1] if k.startswith(prefix)} == modules
    assert len({r["train/clip_norm"] for r in records}) == 2  # the bounds moved


def test_a_failed_save_stops_the_run_and_the_resumed_run_equals_an_uninterrupted_one(
    tiny_corpus, tfds_dir, tmp_path, monkeypatch
):
    """The checkpoint directory turns read-only after round 1's save: round 2's save stops
    the run naming the directory; the same command then resumes from round 1."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_fl.train(small_config(tiny_corpus, tfds_dir, 2), str(whole))
    probes = []

    def read_only_after_one_save(directory):
        probes.append(directory)
        if len(probes) > 1:
            raise OSError(errno.EROFS, "Read-only file system", directory)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "check_writable", read_only_after_one_save)
        with pytest.raises(
            checkpoint.CheckpointSaveError,
            match=(
                f"saving checkpoint 2 to {parts / 'checkpoints'} failed .*Read-only file "
                r"system.* last complete checkpoint there \(1\) stays loadable"
            ),
        ):
            train_fl.train(small_config(tiny_corpus, tfds_dir, 2), str(parts))
    assert final_state(parts)[0] == 1
    summary = train_fl.train(small_config(tiny_corpus, tfds_dir, 2), str(parts))
    assert summary["rounds"] == 2
    (step_a, state_a), (step_b, state_b) = final_state(whole), final_state(parts)
    assert step_a == step_b == 2
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
