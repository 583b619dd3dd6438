"""Multi-process federated training (a file of its own: `make test`'s two workers balance
the trainer's end-to-end runs by file): 2 processes × 1 device train, stop and resume bit for
bit like 1 process × 2 devices."""

import jax
import numpy as np

from fl_dp_asr.train.metrics import read_jsonl
from tests import processes
from tests.experiments.test_train_fl import final_state


TRAIN_WORKER = """
import os, signal, sys
from experiments import train_fl
from fl_dp_asr.fl import round as round_lib
from tests.experiments.test_train_fl import small_config
corpus, tfds_dir, workdir, rounds, num_processes, rank, port, signalled = sys.argv[1:]
config = small_config(corpus, tfds_dir, int(rounds))
config.fl.executor, config.fl.cohort_size, config.fl.chunk_size = "sharded", 3, 1
config.checkpoint.every = 10
config.distributed.num_processes, config.distributed.process_id = int(num_processes), int(rank)
config.distributed.coordinator_address = f"localhost:{port}"
if rank == signalled:  # SIGTERM reaches this process only, during round 0
    check = round_lib.check_round
    def check_then_signal(metrics, round_index):
        check(metrics, round_index)
        if round_index == 0:
            os.kill(os.getpid(), signal.SIGTERM)
    round_lib.check_round = check_then_signal
print("SUMMARY rounds", train_fl.train(config, workdir)["rounds"])
"""


def test_two_process_training_equals_one_process_and_resumes(tiny_corpus, tfds_dir, tmp_path):
    """2 processes × 1 device (each packs its own clients) vs 1 process × 2 devices; a
    SIGTERM that reaches one process stops both after the same round, and they resume."""
    def launch(workdir, num_processes, devices, signalled=-1):
        port = str(processes.free_port())
        logs = tmp_path / f"logs-{workdir}-{signalled}"
        logs.mkdir()
        return processes.run_python(
            [["-c", TRAIN_WORKER, str(tiny_corpus), str(tfds_dir), str(tmp_path / workdir),
              "2", str(num_processes), str(rank), port, str(signalled)]
             for rank in range(num_processes)], logs, devices)

    launch("one", num_processes=1, devices=2)
    stopped = launch("two", num_processes=2, devices=1, signalled=1)
    assert all("SUMMARY rounds 1" in out for out in stopped)   # both saved round 1, exited
    resumed = launch("two", num_processes=2, devices=1)
    assert all("SUMMARY rounds 2" in out for out in resumed)
    step_one, state_one = final_state(tmp_path / "one")
    step_two, state_two = final_state(tmp_path / "two")
    assert step_one == step_two == 2
    jax.tree.map(np.testing.assert_array_equal, state_one, state_two)
    records = read_jsonl(tmp_path / "two" / "metrics.jsonl")   # written by process 0 only
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2]
    assert [r["train/clients"] for r in records if "train/loss" in r] == [3.0, 3.0]
