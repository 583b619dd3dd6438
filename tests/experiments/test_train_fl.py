"""The federated trainer: resume is exact, crashes and bad configs are handled."""

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import fl_progress, fl_round_step, fl_setup, train_fl
from experiments.configs import fl_dp
from fl_dp_asr.data import builders
from fl_dp_asr.dp import accounting
from fl_dp_asr.fl import round as round_lib
from fl_dp_asr.fl import samplers
from fl_dp_asr.train import utils
from fl_dp_asr.train.checkpoint import Checkpointer
from fl_dp_asr.train.metrics import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small_config(corpus, tfds_dir, rounds):
    """The demo FL config shrunk to the tiny corpus (3 training users), from scratch."""
    c = fl_dp.get_config("demo")
    c.init_checkpoint = None
    c.model.num_blocks = 2  # the tiny model's width, half its depth: faster rounds
    c.progress_bar = False
    c.data.manual_dir = str(corpus)
    c.data.data_dir = str(tfds_dir)
    c.data.num_buckets = 1
    c.fl.rounds = rounds
    c.fl.sampling = "fixed"
    c.dp.sigma_dp = None
    c.dp.noise_multiplier = 0.5
    c.dp.delta = 1e-5
    c.dp.target_cohort = None
    c.fl.cohort_size = 2
    c.fl.chunk_size = 2
    c.fl.local_steps = 2
    c.fl.local_batch_size = 2
    # One compiled copy of the local step instead of the demo's 3 × 2 padding cuts: the
    # round step compiles several times faster. The cuts' numbers are tested on their own
    # (tests/fl/test_asr_buckets.py); the demo smoke test keeps them.
    c.fl.cut_row_levels, c.fl.cut_length_levels = 1, 1
    c.eval.every = 2
    c.dp.pld = False
    c.checkpoint.every = 1
    c.checkpoint.keep = 2
    return c


def final_state(workdir):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    step, state, _ = ckpt.restore_latest()
    ckpt.close()
    return step, jax.tree.map(np.asarray, state)


@pytest.fixture(scope="module")
def uninterrupted(tiny_corpus, tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    summary = train_fl.train(small_config(tiny_corpus, tfds_dir, 3), str(workdir))
    return workdir, summary


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(
    uninterrupted, tiny_corpus, tfds_dir, tmp_path
):
    workdir, summary = uninterrupted
    assert summary["rounds"] == 3 and summary["epsilon_rdp"] > 0
    train_fl.train(small_config(tiny_corpus, tfds_dir, 1), str(tmp_path))  # "stopped" after 1
    resumed = train_fl.train(small_config(tiny_corpus, tfds_dir, 3), str(tmp_path))
    assert resumed["rounds"] == 3
    step_a, state_a = final_state(workdir)
    step_b, state_b = final_state(tmp_path)
    assert step_a == step_b == 3
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
    steps = [
        r["step"] for r in read_jsonl(os.path.join(tmp_path, "metrics.jsonl")) if "train/loss" in r
    ]
    assert steps == [1, 2, 3]  # one consistent history in the metrics file


def test_runs_that_differ_only_in_noise_reuse_one_round_step(
    uninterrupted, tiny_corpus, tfds_dir, tmp_path
):
    """A shared cache: the second run reuses the first's jitted step with its own noise,
    and ends exactly where the same run with a step of its own ends."""
    round_steps = {}
    train_fl.train(small_config(tiny_corpus, tfds_dir, 1), str(tmp_path / "z0.5"), round_steps)
    config = small_config(tiny_corpus, tfds_dir, 3)
    config.dp.noise_multiplier = 2.0
    train_fl.train(config, str(tmp_path / "reused"), round_steps)
    assert len(round_steps) == 1
    train_fl.train(config, str(tmp_path / "own"))
    step, reused = final_state(tmp_path / "reused")
    assert step == 3
    jax.tree.map(np.testing.assert_array_equal, reused, final_state(tmp_path / "own")[1])
    # and the noise is the run's own: z = 2 moves the params elsewhere than z = 0.5
    other = final_state(uninterrupted[0])[1]
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(reused["params"]), jax.tree.leaves(other["params"]))
    )
    config.fl.local_learning_rate = 0.1  # another program: its own entry
    train_fl.train(config, str(tmp_path / "other"), round_steps)
    assert len(round_steps) == 2


def assert_check_config_refuses(config, change, message):
    """``fl_setup.check_config`` refuses ``config`` with ``change`` ({"section.key": value})
    applied, with a ValueError matching ``message``."""
    for key, value in change.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(ValueError, match=message):
        fl_setup.check_config(config)


def adaptive_config(tiny_corpus, tfds_dir, rounds):
    """Per-layer adaptive clipping, one bound per module, noisy deltas and counts."""
    c = small_config(tiny_corpus, tfds_dir, rounds)
    c.dp.layers = "module"
    c.dp.target_unclipped_quantile = 0.5
    c.dp.clipped_count_stddev = 2.0
    return c


def test_incomplete_checkpoint_is_ignored_on_resume(uninterrupted, tiny_corpus, tfds_dir, tmp_path):
    train_fl.train(small_config(tiny_corpus, tfds_dir, 2), str(tmp_path))
    crashed = os.path.join(tmp_path, "checkpoints", "3")  # a save cut off by a crash
    os.makedirs(os.path.join(crashed, "state"))
    with open(os.path.join(crashed, "state", "half-written"), "w") as f:
        f.write("garbage")
    summary = train_fl.train(small_config(tiny_corpus, tfds_dir, 3), str(tmp_path))
    assert summary["rounds"] == 3
    jax.tree.map(
        np.testing.assert_array_equal, final_state(uninterrupted[0])[1], final_state(tmp_path)[1]
    )


def test_sigterm_saves_and_stops_cleanly(tiny_corpus, tfds_dir, tmp_path, monkeypatch):
    check = round_lib.check_round

    def check_then_signal(metrics, round_index):
        check(metrics, round_index)
        if round_index == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(round_lib, "check_round", check_then_signal)
    config = small_config(tiny_corpus, tfds_dir, 3)
    config.checkpoint.every = 10
    summary = train_fl.train(config, str(tmp_path))
    assert summary["rounds"] == 1
    assert final_state(tmp_path)[0] == 1
    # Stopped before the first evaluation (eval.every = 2): the round released still costs
    # privacy, and the seed model's WER is not reported as the trained model's.
    released = accounting.epsilon(0.5, 2, 3, 1, config.dp.delta, "fixed").epsilon
    written = json.loads((tmp_path / "summary.json").read_text())
    for reported in (summary, written):
        assert reported["epsilon_rdp"] == pytest.approx(released)
        assert reported["final_wer"] is reported["final_cer"] is None
        assert reported["final_eval_round"] is None and reported["seed_wer"] is not None


@pytest.mark.parametrize(
    "signal_name, rounds, saved_round",
    [
        ("SIGINT", 2, 1),  # a checkpoint round in the middle of the run
        ("SIGTERM", 2, 2),  # the last round, whose checkpoint is always written
    ],
)
def test_signal_during_an_async_checkpoint_save_saves_and_exits_cleanly(
    tiny_corpus, tfds_dir, tmp_path, monkeypatch, capsys, signal_name, rounds, saved_round
):
    """The signal lands while round ``saved_round``'s checkpoint is still being written (its
    commit is held until the trainer waits for it), and a SIGINT lands during that wait."""
    committed = threading.Event()
    committed.set()
    hold_commit = ocp.AsyncOptions(post_finalization_callback=lambda: committed.wait(120))
    monkeypatch.setattr(
        ocp,
        "CheckpointManagerOptions",
        functools.partial(ocp.CheckpointManagerOptions, async_options=hold_commit),
    )
    save, wait = Checkpointer.save, Checkpointer.wait

    def save_then_signal(self, step, *args, **kwargs):
        if step == saved_round:
            committed.clear()
        save(self, step, *args, **kwargs)
        if step == saved_round:
            assert self.has_step(step) and step not in self.all_steps()  # in flight
            os.kill(os.getpid(), getattr(signal, signal_name))

    def signal_then_wait(self):
        committed.set()
        os.kill(os.getpid(), signal.SIGINT)
        wait(self)

    monkeypatch.setattr(Checkpointer, "save", save_then_signal)
    monkeypatch.setattr(Checkpointer, "wait", signal_then_wait)
    config = small_config(tiny_corpus, tfds_dir, rounds)
    try:
        summary = train_fl.train(config, str(tmp_path))
    except KeyboardInterrupt:
        pytest.fail("SIGINT while waiting for the last checkpoint escaped the trainer")
    monkeypatch.undo()
    assert summary["rounds"] == saved_round
    assert f"{signal_name} received: saved round {saved_round}" in capsys.readouterr().out
    assert final_state(tmp_path)[0] == saved_round


def test_a_refused_round_saves_the_state_before_it_and_raises(tiny_corpus, tfds_dir, tmp_path):
    config = small_config(tiny_corpus, tfds_dir, 3)
    config.server.learning_rate = float("nan")  # the first update makes params NaN
    with pytest.raises(round_lib.NonFiniteParamsError, match="round 0"):
        train_fl.train(config, str(tmp_path))
    step, state = final_state(tmp_path)
    assert step == 0 and int(state["round"]) == 0
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_privacy_budget_stops_training_before_it_is_exceeded(tiny_corpus, tfds_dir, tmp_path):
    config = small_config(tiny_corpus, tfds_dir, 50)
    config.dp.noise_multiplier = 8.0
    config.dp.max_epsilon = 2.0
    summary = train_fl.train(config, str(tmp_path))
    assert 1 <= summary["rounds"] < 50
    assert summary["epsilon_rdp"] <= 2.0
    over = accounting.epsilon(8.0, 2, 3, summary["rounds"] + 1, config.dp.delta, "fixed")
    assert over.epsilon > 2.0


@pytest.mark.parametrize(
    "noise_multiplier, rounds, pld_runs", [(1.0, 20, True), (0.2, 2000, False)]
)
def test_privacy_metrics_leave_pld_empty_where_it_would_be_refused(
    noise_multiplier, rounds, pld_runs
):
    # z = 0.2, q = 16/300, T = 2000: PLD would take 1.5 GB (PldRefusedError; a z-only check
    # lets it through), so the run's ε_PLD is left empty (README) instead of failing the run.
    sampler = samplers.make_sampler("poisson", 300, 16)
    run = types.SimpleNamespace(
        accountant=sampler.accountant(noise_multiplier, 1e-6),
        privacy={},
        sigma_dp=noise_multiplier / 16,
    )
    dp = fl_dp.get_config("demo").dp
    dp.pld, dp.target_cohort = True, None
    metrics = fl_setup.privacy_metrics(run, rounds, dp)
    assert metrics["epsilon_rdp"] > 0
    assert ("epsilon_pld" in metrics) == pld_runs
    if pld_runs:
        assert 0 < metrics["epsilon_pld"] <= metrics["epsilon_rdp"]


def test_the_progress_bar_shows_the_epsilon_spent_after_every_round(
    tiny_corpus, tfds_dir, tmp_path, monkeypatch
):
    """Round 1 is not evaluated (eval.every = 2), its ε is shown all the same."""
    shown = []
    monkeypatch.setattr(
        train_fl.tqdm.tqdm,
        "set_postfix",
        lambda self, fields=None, **more: shown.append(dict(fields or {}, **more)),
    )
    config = small_config(tiny_corpus, tfds_dir, 2)
    config.progress_bar = True
    summary = train_fl.train(config, str(tmp_path))
    sampler = fl_setup.make_sampler(config, summary["population"])
    spent = [sampler.accountant(0.5, 1e-5).epsilon(r) for r in (1, 2)]
    assert spent[1] == summary["epsilon_rdp"]
    assert [fields["eps"] for fields in shown] == [f"{eps:.3g}" for eps in spent]


def test_the_bar_shows_the_extrapolated_epsilon_or_none_without_noise():
    sampler = samplers.make_sampler("fixed", 300, 16)
    run = types.SimpleNamespace(
        accountant=sampler.accountant(1.0, 1e-6), privacy={}, sigma_dp=1.0 / 16, sampler=sampler
    )
    dp = fl_dp.get_config("demo").dp
    dp.target_cohort, dp.target_population, dp.delta = 1024, 100_000, 1e-6
    extrapolated = accounting.extrapolate(1.0 / 16, 16, 1024, 100_000, 3, 1e-6, ["rdp"])
    progress = fl_progress.Progress(3, last_eval={"wer": 0.5})
    fields = fl_progress.bar_fields({"clients_per_second": 2.0}, progress, run, dp)
    assert fields == {"clients_s": "2.0", "wer": "0.500", "eps": f"{extrapolated.epsilon_rdp:.3g}"}
    no_noise = types.SimpleNamespace(**{**vars(run), "accountant": None})
    assert "eps" not in fl_progress.bar_fields({"clients_per_second": 2.0}, progress, no_noise, dp)


def run_train_fl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train_fl",
            "--config",
            "experiments/configs/fl_dp.py:demo",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_unknown_config_key_is_one_line_and_creates_nothing(tmp_path):
    result = run_train_fl("--workdir", str(tmp_path / "run"), "--config.fl.cohort_sise=4")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "train_fl: error: --config.fl.cohort_sise=4: experiments/configs/fl_dp.py has no "
        'field fl.cohort_sise. Did you mean "cohort_size" instead of "cohort_sise"?\n'
    )
    assert not (tmp_path / "run").exists()


def test_config_error_found_after_loading_data_leaves_no_work_dir(tiny_corpus, tfds_dir, tmp_path):
    result = run_train_fl(
        "--workdir",
        str(tmp_path / "run"),
        "--config.init_checkpoint=",
        f"--config.data.manual_dir={tiny_corpus}",
        f"--config.data.data_dir={tfds_dir}",
        "--config.fl.cohort_size=10",
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "train_fl: error: config.fl.cohort_size=10 must be in [1, population=3] (the number of "
        "training users)."
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("fl.cohort_size", 0, "config.fl.cohort_size=0 must be >= 1"),
        ("fl.sampling", "posson", "config.fl.sampling='posson'"),
        ("fl.executor", "threads", "config.fl.executor='threads'"),
        ("dp.allocation", "bydim", "dp.allocation='bydim'.*did you mean 'by_dim'"),
    ],
)
def test_config_mistakes_that_need_no_data_stop_before_the_data_is_prepared(
    tiny_corpus, tfds_dir, tmp_path, monkeypatch, field, value, message
):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was prepared before the config was checked")

    monkeypatch.setattr(utils, "load_data", no_data)
    config = small_config(tiny_corpus, tfds_dir, 1)
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        train_fl.train(config, str(tmp_path))


@pytest.mark.parametrize("canaries, population", [(0, 3), (3, 6)])
def test_a_cohort_larger_than_the_population_stops_once_the_training_users_are_known(
    tiny_corpus, tfds_dir, tmp_path, monkeypatch, canaries, population
):
    """Checked right after the training split, before the held-out split and the seed model,
    against the run's population: the users and the canary clients."""
    loaded, load_federated = [], builders.load_federated

    def record(name, config, split, **kwargs):
        loaded.append(split)
        return load_federated(name, config, split, **kwargs)

    def no_seed_model(*args):
        raise AssertionError("the seed model was loaded before the cohort size was checked")

    monkeypatch.setattr(builders, "load_federated", record)
    monkeypatch.setattr(utils, "load_seed_model", no_seed_model)
    config = small_config(tiny_corpus, tfds_dir, 1)
    config.fl.cohort_size = 10
    config.audit.canaries = canaries
    with pytest.raises(
        ValueError, match=rf"cohort_size=10 must be in \[1, population={population}\]"
    ) as error:
        train_fl.train(config, str(tmp_path))
    assert ("3 training users + 3 canary clients" in str(error.value)) == (canaries > 0)
    assert loaded == ["train"]


def test_too_little_clipped_count_noise_names_the_command_line_flag(
    tiny_corpus, tfds_dir, tmp_path
):
    config = adaptive_config(tiny_corpus, tfds_dir, 1)
    config.dp.clipped_count_stddev = 0.1  # z_b = 2·0.1/√5 = 0.089 < z = 0.5
    with pytest.raises(
        ValueError,
        match=r"z_b = 2σ_b/√H = 0.0894.*H = 5 bounds.* raise "
        r"--config.dp.clipped_count_stddev",
    ):
        train_fl.train(config, str(tmp_path))


def test_noise_without_clipping_is_rejected(tiny_corpus, tfds_dir, tmp_path):
    config = small_config(tiny_corpus, tfds_dir, 1)
    config.dp.clipping = "none"
    with pytest.raises(ValueError, match="noise without clipping"):
        train_fl.train(config, str(tmp_path))


def test_bad_multi_process_settings_are_clear_errors():
    config = fl_dp.get_config("demo")
    config.distributed.num_processes = 2
    config.fl.executor = "vectorized"
    with pytest.raises(ValueError, match="executor='sharded'"):
        train_fl.join_processes(config)
    for executor in ("sharded", "auto"):
        config.fl.executor = executor
        with pytest.raises(ValueError, match="coordinator_address"):
            train_fl.join_processes(config)
    config.distributed.num_processes = 1
    assert train_fl.join_processes(config) is False  # one process: nothing to join


def test_auto_executor_uses_every_device_and_explicit_ones_say_when_they_do_not(caplog):
    config = fl_dp.get_config("demo")
    assert config.fl.executor == "auto"
    assert fl_round_step.executor_name(config, 1) == "vectorized"
    assert fl_round_step.executor_name(config, 8) == "sharded"
    config.fl.executor = "vectorized"
    with caplog.at_level("WARNING"):
        assert fl_round_step.executor_name(config, 8) == "vectorized"
    assert "trains on 1 of the 8 devices" in caplog.text
    assert "--config.fl.executor=auto" in caplog.text


def test_automatic_chunk_on_a_device_without_memory_limit_is_the_cpu_default():
    config = fl_dp.get_config("paper")
    assert config.fl.chunk_size is None
    messages = []
    assert fl_round_step.automatic_chunk(config, None, messages.append) == fl_round_step.CPU_CHUNK
    assert "reports no memory limit" in messages[0]


def test_automatic_chunk_refuses_a_device_too_small_for_one_client():
    """The search compiles the trainer's round step for the data's longest bucket and
    compares its memory with the device's."""
    import types

    from fl_dp_asr.data import LengthBuckets
    from tests.aot.test_plan import tiny_config

    config = tiny_config()
    config.fl.update(cohort_size=4, chunk_size=None)
    data = types.SimpleNamespace(
        buckets=LengthBuckets((16_000,), (16,)), train=types.SimpleNamespace(num_users=8)
    )
    with pytest.raises(RuntimeError, match="even with one client per device"):
        fl_round_step.automatic_chunk(config, data, lambda message: None, memory_limit=1024)


def test_automatic_chunk_prefers_the_least_compiled_work_over_the_largest_chunk():
    from experiments import planner
    from fl_dp_asr.aot import hlo, targets

    def compiled(chunk, gib, flops, slots):
        cost = hlo.HloCost(flops, 0.0, (), (), ())
        return planner.Compiled(chunk, None, cost, 0.0, 0, slots, required_bytes=gib * 2**30)

    chip = targets.Chip("chip", "tpu", 16 * 2**30, 1.0, 1.0, "test")
    one, two, four = compiled(1, 8, 1.000, 5), compiled(2, 12, 1.005, 6), compiled(4, 15, 1.6, 8)
    too_big = compiled(8, 20, 0.5, 8)
    # chunk 4 pads 5 clients per chip to 8: chunk 2 is as cheap as chunk 1 and larger.
    assert fl_round_step.least_work(four, [one, two, four, too_big], chip) is two
    assert fl_round_step.least_work(four, [compiled(4, 15, 0.0, 8)], chip).chunk == 4
