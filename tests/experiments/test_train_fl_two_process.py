"""Multi-process federated training (a file of its own: `make test`'s two workers balance
the trainer's end-to-end runs by file): 2 processes × 1 device train, stop (a SIGTERM to
one) and resume, lose a process (SIGKILL) and resume, bit for bit like 1 process × 2
devices; a process started with another config is refused."""

import jax
import numpy as np

from fl_dp_asr.train.metrics import read_jsonl
from tests import processes
from tests.experiments.test_train_fl import final_state

TRAIN_WORKER = """
import os, signal, sys
from experiments import train_fl
from fl_dp_asr.fl import distributed, round as round_lib
from tests.experiments.test_train_fl import small_config
corpus, tfds_dir, workdir, rounds, num_processes, rank, port, fault = sys.argv[1:]
config = small_config(corpus, tfds_dir, int(rounds))
config.fl.executor, config.fl.cohort_size, config.fl.chunk_size = "sharded", 3, 1
config.checkpoint.every = 10
config.distributed.num_processes, config.distributed.process_id = int(num_processes), int(rank)
config.distributed.coordinator_address = f"localhost:{port}"
if rank == "1" and fault == "config":
    config.fl.local_steps = 3
if rank == "1" and fault.startswith("SIG"):  # reaches process 1 only, in round 2 of the run
    check = round_lib.check_round
    def check_then_signal(metrics, round_index):
        check(metrics, round_index)
        if round_index == int(rounds) - 2:
            os.kill(os.getpid(), getattr(signal, fault))
    round_lib.check_round = check_then_signal
try:
    print("SUMMARY rounds", train_fl.train(config, workdir)["rounds"])
except distributed.ProcessLostError as error:
    train_fl.exit_lost(error)          # what the command line does
except ValueError as error:
    print("REFUSED", error)
"""


def launch(
    tmp_path, tiny_corpus, tfds_dir, workdir, rounds, num_processes, fault="none", exit_codes=None
):
    port = str(processes.free_port())
    logs = tmp_path / f"logs-{workdir}-{rounds}-{fault}"
    logs.mkdir()
    outs = processes.run_python(
        [
            [
                "-c",
                TRAIN_WORKER,
                str(tiny_corpus),
                str(tfds_dir),
                str(tmp_path / workdir),
                str(rounds),
                str(num_processes),
                str(rank),
                port,
                fault,
            ]
            for rank in range(num_processes)
        ],
        logs,
        2 // num_processes,
        exit_codes=exit_codes,
    )
    return outs, [(logs / f"{rank}.err").read_text() for rank in range(num_processes)]


def test_two_process_training_equals_one_process_and_resumes(tiny_corpus, tfds_dir, tmp_path):
    """2 processes × 1 device (each packs its own clients) vs 1 process × 2 devices. A
    SIGTERM that reaches one process stops both after the same round (saved); a SIGKILL of
    process 1 makes process 0 stop at its next collective with ProcessLostError (exit 3,
    before JAX's heartbeat timeout would abort it); both times the run resumes."""

    def run(*args, **kwargs):
        return launch(tmp_path, tiny_corpus, tfds_dir, *args, **kwargs)

    run("one", 3, num_processes=1)
    stopped, _ = run("two", 2, num_processes=2, fault="SIGTERM")
    assert all("SUMMARY rounds 1" in out for out in stopped)  # both saved round 1, exited
    _, errors = run("two", 3, num_processes=2, fault="SIGKILL", exit_codes=[3, -9])
    assert (
        "ProcessLostError: After round 2, a collective across the 2 processes failed: "
        "a process died or lost its connection ("
    ) in errors[0]
    assert (
        f"The last checkpoint in {tmp_path / 'two' / 'checkpoints'} is round 1: restart "
        "every process with the same command to resume from it."
    ) in errors[0]
    resumed, _ = run("two", 3, num_processes=2)
    assert all("SUMMARY rounds 3" in out for out in resumed)
    step_one, state_one = final_state(tmp_path / "one")
    step_two, state_two = final_state(tmp_path / "two")
    assert step_one == step_two == 3
    jax.tree.map(np.testing.assert_array_equal, state_one, state_two)
    records = read_jsonl(tmp_path / "two" / "metrics.jsonl")  # written by process 0 only
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3]  # truncated
    assert all(r["train/clients"] == 3.0 for r in records if "train/loss" in r)


def test_a_process_started_with_another_config_is_refused(tiny_corpus, tfds_dir, tmp_path):
    outs, _ = launch(tmp_path, tiny_corpus, tfds_dir, "mixed", 1, num_processes=2, fault="config")
    for out in outs:  # refused at start, on every process
        assert (
            "REFUSED the processes of this run were started with different configs or "
            "code: config.fl.local_steps: 2 on process 0, 3 on process 1."
        ) in out
    assert not (tmp_path / "mixed" / "checkpoints").exists()
