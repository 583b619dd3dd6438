r"""Federated fine-tuning with user-level DP: seed model → jitted FL rounds → WER, ε.

        python -m experiments.train_fl --config experiments/configs/fl_dp.py:demo \
                --workdir runs/demo/fl_dp [--config.fl.cohort_size=64 ...]

The work directory always resumes from its newest complete checkpoint; otherwise the
run starts from ``config.init_checkpoint`` (the central seed model), otherwise from
scratch. SIGINT/SIGTERM save a checkpoint and exit cleanly. Metrics go to
``<workdir>/metrics.jsonl`` and TensorBoard (``<workdir>/tensorboard``).

With ``config.audit.canaries = k`` (> 0) k canary clients take part as users and the run
ends with two empirical ε next to the accountant's (``fl_dp_asr.fl.audit``; README,
"Empirical privacy: canary clients"). With ``config.audit.utterances.per_repeat = n`` (> 0)
sped-up canary utterances are inserted into chosen users' data and the model's memorization
of them is measured at every evaluation (``experiments.canary_utterances``; README,
"Memorization audit").
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging as absl_logging

from experiments import canary_utterances
from experiments.fl_progress import (
    Progress,
    apply_round,
    audit_estimates,
    bar_fields,
    check_metrics,
    evaluate,
    resume,
    save,
)
from experiments.fl_setup import (
    Run,
    build_run,
    check_config,
    make_sampler,
    privacy_metrics,
    rounds_within_budget,
)
from fl_dp_asr.data import prefetch
from fl_dp_asr.fl import audit, distributed
from fl_dp_asr.fl import round as round_lib
from fl_dp_asr.models import asr
from fl_dp_asr.text.tokenizer import CharTokenizer
from fl_dp_asr.train import utils
from fl_dp_asr.train.checkpoint import Checkpointer
from fl_dp_asr.train.metrics import MetricWriter


class StopRequested(Exception):
    """Raised inside the loop when SIGINT/SIGTERM arrived (after saving)."""


def join_processes(config: ml_collections.ConfigDict) -> bool:
    """Joins the JAX multi-process runtime when configured; True in a multi-process run.

    Must run before any other JAX call. Multi-process runs need the ``sharded`` executor
    (one global mesh over the devices of all processes). A process started with another
    config or code than process 0 is refused, on every process
    (:func:`distributed.check_same_run`).
    """
    cfg = config.distributed
    if cfg.num_processes == 1:
        return False
    if config.fl.executor not in ("sharded", "auto"):
        raise ValueError(
            f"config.distributed.num_processes={cfg.num_processes} needs "
            f"config.fl.executor='sharded' (or 'auto'), not "
            f"{config.fl.executor!r}."
        )
    timeouts = {"heartbeat_timeout_seconds": cfg.heartbeat_timeout_s}
    if cfg.num_processes == 0:
        distributed.initialize(**timeouts)  # detected: Cloud TPU, SLURM, Open MPI, ...
    elif not cfg.coordinator_address:
        raise ValueError(
            "config.distributed.coordinator_address ('host:port' of process 0) "
            f"is required with num_processes={cfg.num_processes}."
        )
    else:
        distributed.initialize(
            cfg.coordinator_address, cfg.num_processes, cfg.process_id, **timeouts
        )
    run = config.to_dict()
    del run["distributed"]["process_id"]  # the one key that differs between the processes
    distributed.check_same_run(
        {"config": run, "code": distributed.code_version("fl_dp_asr", "experiments")}
    )
    return True


# ------------------------------------------------------------------ training


def train(
    config: ml_collections.ConfigDict, workdir: str, round_steps: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Runs (or resumes) federated DP fine-tuning; returns a summary dict.

    ``round_steps``: a cache of jitted round steps shared by the runs of one process
    (:func:`build_run`; ``experiments.replicate`` passes one).

    In a multi-process run every process calls it with the same config (but its own
    ``distributed.process_id``) and the same shared ``workdir``; process 0 writes the
    metrics and the summary, all processes take part in checkpointing.
    """
    check_config(config)  # before anything slow: the config mistakes found without data
    multi_process = join_processes(config)
    chief = jax.process_index() == 0
    log = utils.chief_print(chief)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    tokenizer = CharTokenizer(config.data.language)

    # ---- 1. data, 2. model, DP, round step, cohorts -----------------------------------------
    # The cohort size is checked against the population as soon as the training split is
    # there, before the held-out split and the seed model are prepared.
    data = utils.load_data(
        config.data,
        tokenizer,
        config.eval.batch_size,
        check_train=lambda train: make_sampler(config, train.num_users),
    )
    data, utterance_audit = canary_utterances.insert(
        config, data, tokenizer, workdir if chief else None, log
    )
    run = build_run(config, data, tokenizer, multi_process, round_steps)
    canary_utterances.check_model(utterance_audit, run.model_config)
    num_rounds = rounds_within_budget(config, run, log)

    # ---- 3. resume: newest checkpoint of this workdir, else the seed model ---------------
    checkpoints = Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=config.checkpoint.keep, best_metric="wer"
    )
    state, progress = resume(checkpoints, run, log)
    if config.fl.shard_server_state:
        state = distributed.place(
            state, round_lib.server_state_shardings(state, run.round_step.mesh)
        )
    elif multi_process:
        state = distributed.replicate(state, run.mesh)
    writer = MetricWriter(workdir, resume_step=progress.completed, enabled=chief)

    def memorization() -> dict[str, float]:
        """The canary utterances measured on the current model (chief only; {}: no audit)."""
        if utterance_audit is None or not chief:
            return {}
        params = distributed.to_host(state.params) if run.mesh is not None else state.params
        return canary_utterances.record(
            utterance_audit, params, run.model_config, workdir, progress.completed, writer, log
        )

    if progress.seed_eval is None:
        seed_eval = evaluate(state, run, data, config, 0)
        writer.write(0, {"eval": seed_eval})
        memorization()
        progress.seed_eval = {k: seed_eval[k] for k in ("wer", "cer", "loss")}
        progress.last_eval = dict(progress.seed_eval)

    # ---- 4. rounds -----------------------------------------------------------------------
    run_key = jax.random.key(config.seed)
    bar = tqdm.tqdm(
        total=num_rounds,
        initial=progress.completed,
        desc="FL rounds",
        unit="round",
        disable=not (config.progress_bar and chief),
    )
    cohorts = run.stream.blocks(progress.completed, num_rounds)
    memorized: dict[str, float] = {}  # the canary utterances after the last evaluated round
    if run.canary_cohorts is not None:
        cohorts = run.canary_cohorts.with_masks(cohorts)
        initial = jax.tree.map(np.array, asr.stack_blocks(run.seed_params))  # θ_0 (host)
    # The stop handlers stay installed until the last checkpoint is written: a signal that
    # lands during a save (or the wait for it) cannot cut it.
    with utils.StopSignals() as stop:
        try:
            with prefetch.Prefetcher(cohorts, 2) as blocks:
                for r, block in blocks:
                    key = jax.random.fold_in(run_key, r)
                    state, metrics = apply_round(run, state, block, key)
                    check_metrics(metrics, r)
                    if run.canaries is not None:
                        progress.audit_trail.add(metrics.pop("canary_cosines"))
                    progress.completed = r + 1
                    writer.write(progress.completed, {"train": metrics})
                    wer = None
                    if utils.itstime(progress.completed, config.eval.every, num_rounds):
                        progress.last_eval = evaluate(state, run, data, config, progress.completed)
                        writer.write(progress.completed, {"eval": progress.last_eval})
                        wer = progress.last_eval["wer"]
                        progress.trained_eval = {
                            "round": progress.completed,
                            "wer": wer,
                            "cer": progress.last_eval["cer"],
                        }
                        progress.best_wer = min(progress.best_wer, wer)
                        memorized = memorization()
                    if utils.itstime(progress.completed, config.checkpoint.every, num_rounds):
                        save(checkpoints, state, progress, run, config, wer)
                    bar.update(1)
                    bar.set_postfix(bar_fields(metrics, progress, run, config.dp))
                    # All processes of a multi-process run stop (and save) at the same round.
                    if distributed.any_process(stop.received is not None):
                        raise StopRequested(stop.received or "a signal to another process")
            if not memorized:  # no round was run (the last one is always evaluated)
                memorized = memorization()
            if run.canaries is not None and progress.completed > 0:
                progress.audit = audit_estimates(initial, state, run, progress, config, log)
                writer.write(progress.completed, {"audit": progress.audit})
        except StopRequested as stopped:
            save(checkpoints, state, progress, run, config)
            log(
                f"\n{stopped} received: saved round {progress.completed} to "
                f"{checkpoints.directory}; run the same command to resume."
            )
        except (
            round_lib.AllClientsDroppedError,
            round_lib.NonFiniteParamsError,
            FloatingPointError,
        ):
            # The round step kept the state, or applied the round before its metrics were
            # found non-finite: save under the rounds the state holds, so that a resumed run
            # does not release a round twice (or break the correlated noise's separation).
            progress.completed = int(state.round)
            save(checkpoints, state, progress, run, config)
            raise
        except (jax.errors.JaxRuntimeError, ValueError) as error:
            if not distributed.lost_process(error):
                raise
            # Saving would need the lost process: the last checkpoint is the resume point.
            raise distributed.ProcessLostError(
                f"After round {progress.completed}, a collective across the "
                f"{jax.process_count()} processes failed: a process died or lost its "
                f"connection ({error}). The last checkpoint in {checkpoints.directory} is "
                f"round {checkpoints.latest_step()}: restart every process with the same "
                "command to resume from it."
            ) from error
        finally:
            bar.close()
            try:  # still under the stop handlers: a signal now cannot cut the save
                try:
                    checkpoints.wait()  # raises a failed save (CheckpointSaveError)
                finally:
                    checkpoints.close()  # releases orbax's threads (raises nothing twice)
            finally:
                writer.close()

    summary = run_summary(workdir, config, run, progress, data)
    summary |= canary_utterances.summary_fields(memorized)
    if chief:
        utils.write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def run_summary(
    workdir: str, config: ml_collections.ConfigDict, run: Run, progress: Progress, data: utils.Data
) -> dict[str, Any]:
    """The run's settings and its seed → final WER/CER and ε (``summary.json``).

    ε (``epsilon_*``, ``extrapolated_epsilon_*``) is that of the ``rounds`` released, also
    when a signal stopped the run between evaluations (None: no noise, or no round).
    ``final_wer``/``final_cer`` are the latest evaluation of the *trained* model, after
    round ``final_eval_round`` (= ``rounds`` unless the run was stopped between
    evaluations); all three are None when no round was evaluated (the seed model's are
    ``seed_wer``/``seed_cer``).
    """
    seed, trained, dp = progress.seed_eval or {}, progress.trained_eval or {}, config.dp
    privacy = privacy_metrics(run, progress.completed, dp)
    return {
        "workdir": workdir,
        "seed_model": run.seed_source,
        "rounds": progress.completed,
        "population": data.train.num_users,
        "cohort_size": run.sampler.cohort_size,
        "sampling": run.sampler.name,
        "mechanism": run.dp.mechanism,
        "noise_multiplier": run.noise_multiplier,
        "sigma_dp": run.sigma_dp,
        "delta": dp.delta,
        "clipping": dp.clipping,
        "allocation": str(dp.allocation),
        "seed_wer": seed.get("wer"),
        "seed_cer": seed.get("cer"),
        "final_wer": trained.get("wer"),
        "final_cer": trained.get("cer"),
        "final_eval_round": trained.get("round"),
        "epsilon_rdp": privacy.get("epsilon_rdp"),
        "epsilon_pld": privacy.get("epsilon_pld"),
        "extrapolated_cohort": dp.target_cohort,
        "extrapolated_population": dp.target_population if dp.target_cohort else None,
        "extrapolated_epsilon_rdp": privacy.get("extrapolated_epsilon_rdp"),
        "extrapolated_epsilon_pld": privacy.get("extrapolated_epsilon_pld"),
    } | audit_summary(run, progress)


def audit_summary(run: Run, progress: Progress) -> dict[str, Any]:
    """The canaries and both empirical ε for ``summary.json`` (``audit_*``; {} without
    canaries, None before the last round)."""
    if run.canaries is None:
        return {}
    names = [
        f"epsilon_{v}{part}"
        for v in audit.VIEWS
        for part in ("", "_ci_low", "_ci_high", "_lower_bound")
    ]
    found = progress.audit or {}
    return {"audit_canaries": run.canaries.inserted, "audit_heldout": run.canaries.heldout} | {
        f"audit_{name}": found.get(name) for name in names
    }


def exit_lost(error: distributed.ProcessLostError) -> None:
    """Prints ``error`` and ends the process at once (status 3): JAX's shutdown barrier at
    exit would wait for the lost process until ``distributed.heartbeat_timeout_s``, then
    abort."""
    sys.stdout.flush()
    print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
    os._exit(3)


def main(argv: list[str]) -> None:
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and TFDS log INFO lines otherwise
    try:
        summary = train(_CONFIG.value, _WORKDIR.value)
    except distributed.ProcessLostError as error:
        exit_lost(error)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2))


def console_main() -> None:
    """The console script ``fl-dp-asr-train-fl``: ``python -m experiments.train_fl``."""
    global _CONFIG, _WORKDIR  # pylint: disable=global-statement
    from absl import flags  # pylint: disable=import-outside-toplevel
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

    from fl_dp_asr.train import cli  # pylint: disable=import-outside-toplevel

    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "experiment config file", lock_config=True
    )
    _WORKDIR = flags.DEFINE_string("workdir", None, "work directory (checkpoints, metrics)")
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run_main(main, "train_fl")


if __name__ == "__main__":
    console_main()
