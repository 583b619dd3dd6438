"""Checkpoints of the federated trainer hold the blocks stacked (asr.PARAM_LAYOUT): seed
models load in the model's own layout, and a server state written unrolled (before the
stacked round) is a clear error, not a failure inside orbax."""

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import fl_progress
from fl_dp_asr.fl import round as round_lib
from fl_dp_asr.models import get_model_config, stack_blocks
from fl_dp_asr.train.checkpoint import Checkpointer, load_model_checkpoint

UNROLLED = {
    "block_00": {"w": np.ones(2, np.float32)},
    "block_01": {"w": np.zeros(2, np.float32)},
    "head": {"w": np.ones(1, np.float32)},
}
META = {"model_config": get_model_config("tiny").to_dict()}


def write(directory, params):
    checkpoints = Checkpointer(directory)
    checkpoints.save(3, {"params": params, "opt_state": {}, "round": np.int32(3)}, META)
    checkpoints.wait()
    return checkpoints


def test_a_stacked_checkpoint_loads_in_the_models_own_layout(tmp_path):
    write(tmp_path, stack_blocks(UNROLLED)).close()
    _, params, step = load_model_checkpoint(str(tmp_path))
    assert step == 3 and sorted(params) == ["block_00", "block_01", "head"]
    np.testing.assert_array_equal(params["block_01"]["w"], UNROLLED["block_01"]["w"])


def test_resuming_an_unrolled_server_state_names_the_directory_and_the_way_out(tmp_path):
    checkpoints = write(tmp_path, UNROLLED)
    state = round_lib.ServerState(stack_blocks(UNROLLED), {}, jnp.zeros((), jnp.int32))
    with pytest.raises(fl_progress.OldLayoutError, match=r"unrolled.*init_checkpoint="):
        fl_progress.restore_latest(checkpoints, state)
    checkpoints.close()


def test_resuming_a_server_state_of_another_config_names_the_directory_and_the_way_out(tmp_path):
    params = stack_blocks(UNROLLED)
    checkpoints = write(tmp_path, params)
    state = round_lib.ServerState(
        {**params, "head": {"w": jnp.ones(3)}}, {}, jnp.zeros((), jnp.int32)
    )
    with pytest.raises(
        fl_progress.CheckpointMismatchError,
        match=f"{tmp_path} \\(round 3\\) .*another config.*new work directory",
    ):
        fl_progress.restore_latest(checkpoints, state)
    checkpoints.close()
