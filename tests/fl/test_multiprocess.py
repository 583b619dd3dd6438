"""Two processes on localhost (JAX multi-process runtime, gloo CPU collectives) run the
same round as one process: each packs only its own clients, the global cohort is built
with ``jax.make_array_from_process_local_data``, the ``sharded`` round step sums over all
devices of both processes and adds the noise once."""

import json
import textwrap

import jax
import numpy as np
import pytest

from fl_dp_asr.dp import DPConfig
from fl_dp_asr.fl import client, distributed, executors, server
from fl_dp_asr.fl import round as round_lib
from tests import processes
from tests.fl import toy_task

NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 2
COHORT, CHUNK = 7, 2  # 7 real clients in 8 slots (4 devices × chunk 2)
NOISE_PARAMS = 20_000


def rounds(mesh=None, executor="vectorized"):
    """A training round and a noise-only round of the toy task; numpy results.

    With a ``mesh`` each process provides only its own client slots (multi-process).
    """
    params = jax.tree.map(np.asarray, toy_task.init_params(jax.random.key(0)))
    params["unused"] = np.zeros(NOISE_PARAMS, np.float32)  # zero gradient: pure noise
    opt = server.make_server_optimizer("sgd", 1.0)
    dp = DPConfig("global", 0.5, noise_multiplier=2.0)
    results = {}
    for name, local_lr in (("train", 0.1), ("noise", 0.0)):
        update = client.make_client_update(toy_task.loss_fn, client.local_sgd(local_lr, 1.0))
        step = round_lib.make_round_step(
            update, opt, dp, COHORT, executors.make(executor, chunk_size=CHUNK, mesh=mesh)
        )
        slots = 8
        block = toy_task.make_cohort(slots, real_clients=COHORT, seed=5)
        state = round_lib.init_server_state(jax.device_put(params), opt)  # fresh: donated
        key = jax.random.key(11)
        if mesh is not None:
            mine = distributed.process_client_indices(slots, mesh)
            local = jax.tree.map(lambda x: x[mine], block)  # only this process's clients
            block = distributed.global_cohort(local, mesh, slots)
            state, key = distributed.replicate((state, key), mesh)
        state, metrics = step(state, block, key)
        out = distributed.to_host({"params": state.params, "metrics": metrics})
        results[name] = jax.tree.map(lambda x: np.asarray(x).tolist(), out)
    return results


WORKER = textwrap.dedent("""
    import json, sys
    from fl_dp_asr.fl import distributed
    distributed.initialize(f"localhost:{sys.argv[2]}", int(sys.argv[3]), int(sys.argv[1]),
                           initialization_timeout=60)
    import jax
    from tests.fl.test_multiprocess import rounds
    mesh = distributed.client_mesh()
    info = {"process_count": jax.process_count(), "device_count": jax.device_count(),
            "slots": distributed.process_client_indices(8, mesh).tolist()}
    results = rounds(mesh, "sharded")
    distributed.check_same_run({"config": {"seed": 1}, "code": distributed.code_version()})
    try:   # process 1 started with another config
        distributed.check_same_run({"config": {"seed": 1, "rounds": 10 + int(sys.argv[1])}})
    except ValueError as error:
        info["refused"] = str(error)
    print("RESULT " + json.dumps({"info": info, "rounds": results}))
""")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    port = processes.free_port()
    stdouts = processes.run_python(
        [["-c", WORKER, str(rank), str(port), str(NUM_PROCESSES)] for rank in range(NUM_PROCESSES)],
        tmp_path_factory.mktemp("workers"),
        DEVICES_PER_PROCESS,
        timeout=240,
    )
    outputs = []
    for rank, out in enumerate(stdouts):
        lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
        assert lines, f"process {rank} printed no result"
        outputs.append(json.loads(lines[-1][len("RESULT ") :]))
    return outputs


@pytest.fixture(scope="module")
def one_process():
    return rounds()


def assert_trees_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def test_each_process_holds_its_own_clients(two_processes):
    infos = [out["info"] for out in two_processes]
    assert all(i["process_count"] == 2 and i["device_count"] == 4 for i in infos)
    slots = [i["slots"] for i in infos]
    assert sorted(slots[0] + slots[1]) == list(range(8)) and len(slots[0]) == 4


def test_a_process_started_with_another_config_is_refused_by_all(two_processes):
    """Same fingerprints pass; one key different on process 1: both processes raise."""
    for out in two_processes:
        assert out["info"]["refused"] == (
            "the processes of this run were started with different configs or code: "
            "config.rounds: 10 on process 0, 11 on process 1. Start every process with the "
            "same config and the same installed code."
        )


def test_two_process_round_equals_one_process_round(two_processes, one_process):
    for out in two_processes:  # both processes hold the same replicated result
        assert_trees_close(out["rounds"]["train"], one_process["train"], rtol=1e-5, atol=1e-6)
    assert two_processes[0]["rounds"]["train"]["metrics"]["clients"] == COHORT


def test_noise_is_added_once_across_processes(two_processes, one_process):
    """Same noise as one process (not √(processes × devices) times more)."""
    expected_std = 2.0 * 0.5 / COHORT  # z·C on the sum, divided by S by server SGD lr 1
    noise = [np.asarray(out["rounds"]["noise"]["params"]["unused"]) for out in two_processes]
    single = np.asarray(one_process["noise"]["params"]["unused"])
    assert np.std(single) == pytest.approx(expected_std, rel=0.05)
    for n in noise:
        np.testing.assert_allclose(n, single, rtol=1e-5, atol=1e-7)


def test_global_cohort_checks_the_local_part():
    mesh = distributed.client_mesh(jax.devices()[:1])
    block = toy_task.make_cohort(4)
    assert distributed.process_client_indices(4, mesh).tolist() == [0, 1, 2, 3]
    glob = distributed.global_cohort(block, mesh, 4)
    assert_trees_close(distributed.to_host(glob), block, rtol=0, atol=0)
    with pytest.raises(ValueError, match="must provide 4 client slots"):
        distributed.global_cohort(jax.tree.map(lambda x: x[:3], block), mesh, 4)
