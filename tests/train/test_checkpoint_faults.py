"""Checkpointer in a long run: a clean save/restore cycle logs no warning the user cannot
act on, and a save that fails stops the run with an error naming the directory while the
last complete checkpoint stays loadable."""

import logging

import jax.numpy as jnp
import numpy as np

from fl_dp_asr.train.checkpoint import Checkpointer


def _state(seed):
    return {"params": jnp.full((3,), seed, jnp.float32), "round": jnp.int32(seed)}


def test_a_clean_save_restore_cycle_logs_no_warning(tmp_path, caplog):
    """Saves with and without the tracked metric (the trainer evaluates every few rounds),
    then a read-only reopening (the seed model of a federated run, transcription)."""
    with caplog.at_level(logging.WARNING):
        with Checkpointer(tmp_path, max_to_keep=2, best_metric="wer") as ckpt:
            ckpt.save(1, _state(1), {"round": 1})
            ckpt.save(2, _state(2), {"round": 2}, metric=0.5)
            ckpt.save(3, _state(3), {"round": 3})
            ckpt.wait()
            assert ckpt.all_steps() == [2, 3] and ckpt.best_step() == 2
        with Checkpointer(tmp_path, read_only=True) as reader:
            state, meta = reader.restore(reader.latest_step())
    assert meta == {"round": 3} and np.asarray(state["params"]).tolist() == [3.0] * 3
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
