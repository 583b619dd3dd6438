"""The server state split over the devices (ZeRO): the same numbers as the replicated state,
with every device holding its part (8 fake CPU devices, subprocess)."""

import textwrap

import jax
import numpy as np
import pytest

from fl_dp_asr.dp import DPConfig
from fl_dp_asr.fl import client, executors, server
from fl_dp_asr.fl import round as round_lib
from tests import processes
from tests.fl import toy_task

# Eight devices; LAMB (per-layer trust ratios: norms over split leaves) and BLT noise (its
# buffers are split too), per-layer clipping; three rounds of 8 clients.
SCRIPT = textwrap.dedent("""
    import json, jax, numpy as np
    from fl_dp_asr.dp import DPConfig
    from fl_dp_asr.fl import client, distributed, executors, round as round_lib, server
    from tests.fl import toy_task
    from tests.fl.test_round_correlated import MECHANISMS
    assert jax.device_count() == 8

    def run(shard):
        dp = DPConfig("per_layer", 1.0, noise_multiplier=0.5,
                      correlated_noise=MECHANISMS["blt"])
        opt = server.make_server_optimizer("lamb", 0.01)
        executor = executors.make("sharded", chunk_size=1)
        step = round_lib.make_round_step(
            client.make_client_update(toy_task.loss_fn, client.local_sgd(0.1, 1.0)), opt, dp,
            8, executor, shard_server_state=shard)
        state = round_lib.init_server_state(toy_task.init_params(jax.random.key(0)), opt, dp)
        state = distributed.place(state, round_lib.server_state_shardings(
            state, executor.mesh, shard))
        for r in range(3):
            state, _ = step(state, toy_task.make_cohort(8, seed=r),
                            jax.random.fold_in(jax.random.key(1), r))
        split = [x for x in jax.tree.leaves(state) if x.ndim and
                 x.addressable_shards[0].data.size * 8 == x.size]
        return [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state)], len(split)

    replicated, _ = run(False)
    sharded, split = run(True)
    print(json.dumps({"replicated": replicated, "sharded": sharded, "split": split}))
""")


def test_sharded_server_state_gives_the_replicated_numbers():
    result = processes.run_json(SCRIPT)
    assert result["split"] >= 10  # params, both LAMB moments and the BLT buffers
    assert len(result["sharded"]) == len(result["replicated"])
    for sharded, replicated in zip(result["sharded"], result["replicated"]):
        np.testing.assert_allclose(sharded, replicated, rtol=2e-6, atol=1e-7)


def test_shardings_split_the_first_divisible_dimension():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1] * 1), ("clients",))
    state = round_lib.ServerState(
        {"w": jax.ShapeDtypeStruct((3, 4), np.float32)}, (), jax.ShapeDtypeStruct((), np.int32)
    )
    shardings = round_lib.server_state_shardings(state, mesh)
    assert shardings.params["w"].spec == jax.sharding.PartitionSpec("clients")
    assert shardings.round.spec == jax.sharding.PartitionSpec()
    replicated = round_lib.server_state_shardings(state, mesh, shard=False)
    assert replicated.params["w"].spec == jax.sharding.PartitionSpec()


def test_sharding_the_state_needs_a_mesh():
    update = client.make_client_update(toy_task.loss_fn, client.local_sgd(0.1, 1.0))
    with pytest.raises(ValueError, match="sharded executor"):
        round_lib.make_round_step(
            update,
            server.make_server_optimizer("sgd", 1.0),
            DPConfig("global", 1.0, noise_multiplier=0.0),
            4,
            executors.vectorized(2),
            shard_server_state=True,
        )
