"""The federated trainer, continued (a file of its own so that `make test`'s two workers
share the trainer's end-to-end runs): adaptive clipping bounds resume bit for bit."""

import os

import jax
import numpy as np

from experiments import train_fl
from fl_dp_asr.train.metrics import read_jsonl
from tests.experiments.test_train_fl import adaptive_config, final_state


def test_adaptive_bounds_are_checkpointed_and_resume_bit_for_bit(tiny_corpus, tfds_dir,
                                                                 tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_fl.train(adaptive_config(tiny_corpus, tfds_dir, 2), str(whole))
    train_fl.train(adaptive_config(tiny_corpus, tfds_dir, 1), str(parts))
    train_fl.train(adaptive_config(tiny_corpus, tfds_dir, 2), str(parts))
    (step_a, state_a), (step_b, state_b) = final_state(whole), final_state(parts)
    assert step_a == step_b == 2
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
    records = [r for r in read_jsonl(os.path.join(whole, "metrics.jsonl"))
               if "train/clip_norm" in r]
    prefix = "train/layer_clip_norms/"
    modules = {"block_00", "block_01", "final_norm", "front_end", "output"}
    assert set(state_a["clip_bounds"]) == modules        # dp.layers="module": one per module
    assert {k[len(prefix):] for k in records[-1] if k.startswith(prefix)} == modules
    assert len({r["train/clip_norm"] for r in records}) == 2     # the bounds moved
