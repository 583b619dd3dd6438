"""Checkpointer in a long run: a clean save/restore cycle logs no warning the user cannot
act on, and a save that fails stops the run with an error naming the directory while the
last complete checkpoint stays loadable."""

import errno
import logging

import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from fl_dp_asr.train.checkpoint import Checkpointer, CheckpointSaveError


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


def test_a_save_into_a_lost_directory_fails_at_once_naming_it(tmp_path):
    """The directory goes away (a lost mount; as root a read-only mode cannot be tested):
    the save fails before orbax starts (its threads would wait minutes at exit), naming the
    directory and step; once it is back, its last checkpoint loads and the step is written."""
    work, away = tmp_path / "work", tmp_path / "away"
    ckpt = Checkpointer(work, best_metric="wer")
    ckpt.save(1, _state(1), {"round": 1})
    ckpt.wait()
    work.rename(away)
    work.write_text("not a directory")
    with pytest.raises(
        CheckpointSaveError,
        match=(
            f"saving checkpoint 2 to {work} failed .*Not a directory.* "
            "then run the same command to resume"
        ),
    ):
        ckpt.save(2, _state(2), {"round": 2})
    ckpt.close()  # reported once, then released
    work.unlink()
    away.rename(work)
    with Checkpointer(work) as reopened:  # the resumed run: round 1, then 2 again
        step, state, meta = reopened.restore_latest()
        assert step == 1 and meta == {"round": 1} and int(state["round"]) == 1
        reopened.save(2, _state(2), {"round": 2})
        reopened.wait()
        assert reopened.all_steps() == [1, 2]


def test_a_save_that_fails_in_the_background_is_raised_by_the_next_call(tmp_path, monkeypatch):
    """The disk fills during an asynchronous save: the next wait (or save) raises it,
    naming the directory; the last complete checkpoint stays loadable."""
    ckpt = Checkpointer(tmp_path, best_metric="wer")
    ckpt.save(1, _state(1), {"round": 1})
    ckpt.wait()

    def write_text(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    with monkeypatch.context() as patch:  # orbax's metadata and JSON writes
        patch.setattr(epath.Path, "write_text", write_text)
        ckpt.save(2, _state(2), {"round": 2})
        with pytest.raises(
            CheckpointSaveError,
            match=(
                f"saving checkpoint 2 to {tmp_path} failed .*No space left on device.* "
                r"last complete checkpoint there \(1\) stays loadable"
            ),
        ):
            ckpt.wait()
        ckpt.close()
    with Checkpointer(tmp_path, read_only=True) as reader:
        state, meta = reader.restore(1)
    assert meta == {"round": 1} and int(state["round"]) == 1
