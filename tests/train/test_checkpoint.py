"""Checkpointer: bit-exact round trip, incomplete checkpoints ignored, last K + best kept."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fl_dp_asr.train.checkpoint import COMMIT_MARKER, Checkpointer


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "dense": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)},
            "norm": jnp.asarray(rng.normal(size=5), jnp.bfloat16),
        },
        "opt_state": {"count": jnp.int32(seed), "mu": jnp.asarray(rng.normal(size=(3, 4)))},
        "rng": jax.random.key_data(jax.random.key(seed)),
    }


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _assert_bit_exact(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_round_trip_is_bit_exact(tmp_path):
    state, meta = _state(1), {"model_config": {"num_blocks": 2}, "rounds": [1, 2]}
    with Checkpointer(tmp_path / "work") as ckpt:
        assert os.path.isabs(ckpt.directory)
        assert ckpt.restore_latest(_abstract(state)) is None
        ckpt.save(7, state, meta)
        assert ckpt.has_step(7) and not ckpt.has_step(8)  # in flight or committed
        ckpt.wait()
        step, restored, restored_meta = ckpt.restore_latest(_abstract(state))
        assert step == 7 and restored_meta == meta
        _assert_bit_exact(restored, state)
        with pytest.raises(ValueError, match="already exists"):
            ckpt.save(7, state, meta)
    with Checkpointer(tmp_path / "work") as reopened:  # a new process resuming
        restored, _ = reopened.restore(7)  # no target: the saved tree as is
        _assert_bit_exact(restored, state)
        with pytest.raises(FileNotFoundError, match="no complete checkpoint for step 8"):
            reopened.restore(8)


def test_incomplete_checkpoints_are_ignored(tmp_path):
    work = tmp_path / "work"
    with Checkpointer(work) as ckpt:
        ckpt.save(1, _state(1), {"step": 1})
        ckpt.save(2, _state(2), {"step": 2})
    # A crash while saving step 3 (marker never written) and an orbax tmp dir for step 4.
    shutil.copytree(work / "2", work / "3")
    os.remove(work / "3" / COMMIT_MARKER)
    shutil.copytree(work / "2", work / "4.orbax-checkpoint-tmp-1700000000")
    with Checkpointer(work, read_only=True) as reader:  # readers touch nothing on disk
        assert reader.all_steps() == [1, 2] and reader.latest_step() == 2
    assert (work / "3").exists()
    with Checkpointer(work) as ckpt:
        step, state, meta = ckpt.restore_latest(_abstract(_state()))
        assert step == 2 and meta == {"step": 2}
        _assert_bit_exact(state, _state(2))
        assert sorted(os.listdir(work)) == ["1", "2"]  # the leftovers were removed
        ckpt.save(3, _state(3), {"step": 3})  # so the step can be written again
        ckpt.wait()
        assert ckpt.latest_step() == 3


def test_keeps_last_k_plus_best(tmp_path):
    wers = {1: 0.50, 2: 0.20, 3: 0.40, 4: 0.60, 5: 0.45, 6: None}
    with Checkpointer(tmp_path / "min", max_to_keep=2, best_metric="dev_wer") as ckpt:
        for step, wer in wers.items():
            ckpt.save(step, _state(step), {"step": step}, metric=wer)
        ckpt.wait()
        assert ckpt.all_steps() == [2, 5, 6] and ckpt.best_step() == 2
        _assert_bit_exact(ckpt.restore(2, _abstract(_state()))[0], _state(2))
    with Checkpointer(tmp_path / "max", max_to_keep=1, best_metric="acc", best_mode="max") as ckpt:
        for step, acc in [(1, 0.1), (2, 0.9), (3, 0.5), (4, 0.3)]:
            ckpt.save(step, _state(step), {}, metric=acc)
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4]
    with Checkpointer(tmp_path / "recent", max_to_keep=2) as ckpt:
        for step in range(1, 5):
            ckpt.save(step, _state(step), {})
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4]
        with pytest.raises(ValueError, match="no best_metric"):
            ckpt.save(5, _state(5), {}, metric=1.0)
