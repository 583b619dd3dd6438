r"""Federated fine-tuning with user-level DP: seed model → jitted FL rounds → WER, ε.

        python -m experiments.train_fl --config experiments/configs/demo_fl_dp.py \
                --workdir runs/demo_fl_dp [--config.fl.cohort_size=64 ...]

The work directory always resumes from its newest complete checkpoint; otherwise the
run starts from ``config.init_checkpoint`` (the central seed model), otherwise from
scratch. SIGINT/SIGTERM save a checkpoint and exit cleanly. Metrics go to
``<workdir>/metrics.jsonl`` and TensorBoard (``<workdir>/tensorboard``).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging as absl_logging

from fl_dp_asr.data import builders, federated, prefetch
from fl_dp_asr.dp import DPConfig, accounting
from fl_dp_asr.data import CohortStream
from fl_dp_asr.fl import client, distributed, executors, samplers
from fl_dp_asr.fl import round as round_lib, server
from fl_dp_asr.models import asr
from fl_dp_asr.models.config import ModelConfig, get_model_config
from fl_dp_asr.text.tokenizer import CharTokenizer
from fl_dp_asr.train.checkpoint import Checkpointer, load_model_checkpoint
from fl_dp_asr.train.metrics import MetricWriter


class StopRequested(Exception):
    """Raised inside the loop when SIGINT/SIGTERM arrived (after saving)."""


# ------------------------------------------------------------------ setup helpers


def load_seed_model(config: ml_collections.ConfigDict) -> tuple[ModelConfig, Any, str]:
    """Model config and parameters: the seed checkpoint's, or fresh ones."""
    if config.init_checkpoint:
        if not os.path.isdir(config.init_checkpoint):
            raise FileNotFoundError(
                f"config.init_checkpoint={config.init_checkpoint!r} is not a directory; train "
                "the seed model first (experiments/train_central.py) or set it to ''.")
        model_config, params, step = load_model_checkpoint(config.init_checkpoint)
        return model_config, params, f"{config.init_checkpoint} (step {step})"
    model_config = get_model_config(config.model.size)
    return model_config, asr.init_params(model_config, jax.random.key(config.seed)), "scratch"


def privacy_metrics(run_accountant, rounds: int, config, sigma_dp: float) -> dict[str, float]:
    """ε spent after ``rounds`` and the ε of the extrapolated population (RDP, optional PLD).

    PLD is opt-in per setting (``config.eval.pld`` for the run itself,
    ``config.privacy.target_pld`` for the extrapolation): it is tighter but can take minutes
    for tiny noise multipliers, such as those of a simulation meant to be extrapolated.
    """
    if run_accountant is None or rounds == 0:
        return {}
    out = {"epsilon_rdp": run_accountant.epsilon(rounds, "rdp")}
    if config.eval.pld and config.fl.sampling == "poisson":
        out["epsilon_pld"] = run_accountant.epsilon(rounds, "pld")
    target = config.privacy
    if target.target_cohort:
        extrapolated = accounting.extrapolate(
            sigma_dp, run_accountant.cohort_size, target.target_cohort,
            target.target_population, rounds, config.dp.delta,
            accountants=["rdp", "pld"] if target.target_pld else ["rdp"])
        out["extrapolated_epsilon_rdp"] = extrapolated.epsilon_rdp
        if target.target_pld:
            out["extrapolated_epsilon_pld"] = extrapolated.epsilon_pld
    return out


def join_processes(config: ml_collections.ConfigDict) -> bool:
    """Joins the JAX multi-process runtime when configured; True in a multi-process run.

    Must run before any other JAX call. Multi-process runs need the ``sharded`` executor
    (one global mesh over the devices of all processes).
    """
    cfg = config.distributed
    if cfg.num_processes == 1:
        return False
    if config.fl.executor != "sharded":
        raise ValueError(f"config.distributed.num_processes={cfg.num_processes} needs "
                         f"config.fl.executor='sharded', not {config.fl.executor!r}.")
    if cfg.num_processes == 0:
        distributed.initialize()  # detected: Cloud TPU, SLURM, Open MPI, ...
    elif not cfg.coordinator_address:
        raise ValueError("config.distributed.coordinator_address ('host:port' of process 0) "
                         f"is required with num_processes={cfg.num_processes}.")
    else:
        distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    return True


# ------------------------------------------------------------------ training


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) federated DP fine-tuning; returns a summary dict.

    In a multi-process run every process calls it with the same config (but its own
    ``distributed.process_id``) and the same shared ``workdir``; process 0 writes the
    metrics and the summary, all processes take part in checkpointing.
    """
    multi_process = join_processes(config)
    chief = jax.process_index() == 0

    def log(message: str) -> None:
        if chief:
            print(message, flush=True)

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    tokenizer = CharTokenizer(config.data.language)

    # ---- data: training users and held-out users -----------------------------------------
    def load(split: str) -> federated.FederatedDataset:  # process 0 prepares the TFDS data
        return distributed.chief_first(functools.partial(
            builders.load_federated, config.data.name, config.data.config, split,
            manual_dir=config.data.manual_dir, data_dir=config.data.data_dir))

    train_users, eval_users = load(config.data.train_split), load(config.data.eval_split)
    population = train_users.num_users
    buckets = federated.LengthBuckets.for_dataset(train_users, tokenizer.encode,
                                                  config.data.num_buckets)
    eval_buckets = federated.LengthBuckets.for_dataset(eval_users, tokenizer.encode,
                                                       config.data.num_buckets)
    eval_batches = list(federated.iterate_batches(
        eval_users, batch_size=config.eval.batch_size, tokenize=tokenizer.encode,
        buckets=eval_buckets))

    # ---- model, DP, round step ---------------------------------------------------------
    model_config, seed_params, seed_source = load_seed_model(config)
    sampler = samplers.make_sampler(config.fl.sampling, population, config.fl.cohort_size,
                                    config.seed)
    cohort_size = sampler.expected_size
    dp = DPConfig(
        clipping=config.dp.clipping, clip_norm=config.dp.clip_norm or None,
        allocation=config.dp.allocation,
        noise_multiplier=config.dp.noise_multiplier, sigma_dp=config.dp.sigma_dp)
    noise_multiplier = dp.resolve_noise_multiplier(cohort_size)
    sigma_dp = accounting.noise_multiplier_to_sigma_dp(noise_multiplier, cohort_size)
    run_accountant = (sampler.accountant(noise_multiplier, config.dp.delta)
                      if noise_multiplier > 0 else None)
    server_optimizer = server.make_server_optimizer(
        config.server.optimizer, config.server.learning_rate,
        decay_begin=config.server.decay_begin, decay_every=config.server.decay_every,
        decay_rate=config.server.decay_rate)
    client_update = client.make_client_update(
        asr.make_loss_fn(model_config, train=True),
        client.local_sgd(config.fl.local_learning_rate, config.fl.local_grad_clip_norm))
    mesh = distributed.client_mesh() if config.fl.executor == "sharded" else None
    executor = executors.make(config.fl.executor, chunk_size=config.fl.chunk_size, mesh=mesh)
    round_step = round_lib.make_round_step(client_update, server_optimizer, dp, cohort_size,
                                           executor)
    num_slots = sampler.num_slots(executor.client_multiple)
    stream = CohortStream(
        train_users, sampler, tokenizer.encode, buckets, local_steps=config.fl.local_steps,
        batch_size=config.fl.local_batch_size, seed=config.seed,
        client_multiple=executor.client_multiple,
        max_batch_seconds=config.fl.max_batch_seconds or None,
        max_local_epochs=config.fl.max_local_epochs or None,
        # every process packs only the client slots its devices train
        process_slots=(distributed.process_client_indices(num_slots, mesh) if multi_process
                       else None))

    # ---- rounds allowed by the privacy budget ------------------------------------------
    num_rounds = config.fl.rounds
    if run_accountant is not None:
        planned = run_accountant.guarantee(num_rounds, "rdp")
        log(f"Privacy of the full run: {planned}")
        if config.dp.max_epsilon:
            allowed = run_accountant.max_rounds_within(config.dp.max_epsilon, "rdp", num_rounds)
            if allowed < num_rounds:
                log(f"max_epsilon={config.dp.max_epsilon} allows {allowed} of {num_rounds} "
                    f"rounds; training stops after round {allowed}.")
            num_rounds = allowed
    elif config.dp.max_epsilon:
        raise ValueError("config.dp.max_epsilon is set but the run adds no noise (ε = ∞).")

    # ---- resume: newest checkpoint of this workdir, else the seed model ----------------
    state = round_lib.init_server_state(seed_params, server_optimizer)
    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"),
                               max_to_keep=config.checkpoint.keep, best_metric="wer")
    restored = checkpoints.restore_latest(state._asdict())
    start_round, best_wer, seed_eval = 0, float("inf"), None
    if restored is not None:
        start_round, state_dict, meta = restored
        state = round_lib.ServerState(**state_dict)
        seed_eval = meta["seed_eval"]
        best_wer = float("inf") if meta["best_wer"] is None else meta["best_wer"]
        log(f"Resumed from {checkpoints.directory} at round {start_round}.")
    else:
        log(f"Starting from the seed model: {seed_source}.")
    if multi_process:
        state = distributed.replicate(state, mesh)
    writer = MetricWriter(workdir, resume_step=start_round, enabled=chief)
    run_key = jax.random.key(config.seed)

    def run_meta(round_index: int, **extra) -> dict[str, Any]:
        return {"round": round_index, "model_config": model_config.to_dict(),
                "config": config.to_dict(), "seed_eval": seed_eval,
                "best_wer": best_wer if np.isfinite(best_wer) else None} | extra

    def save(round_index: int, wer: float | None = None):
        if round_index in checkpoints.all_steps():
            return
        checkpoints.save(round_index, distributed.to_host(state._asdict()),
                         run_meta(round_index), metric=wer)

    def evaluate(round_index: int) -> dict[str, Any]:
        # Every process evaluates a local copy (the server state is replicated).
        params = distributed.to_host(state.params) if multi_process else state.params
        result = asr.evaluate(params, model_config, eval_batches)
        result.pop("examples")
        result |= privacy_metrics(run_accountant, round_index, config, sigma_dp)
        writer.write(round_index, {"eval": result})
        return result

    # ---- the loop ----------------------------------------------------------------------
    stop = {"signal": None}

    def request_stop(signum, frame):
        del frame
        stop["signal"] = signal.Signals(signum).name

    previous_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    if start_round == 0:
        seed_eval = {k: v for k, v in evaluate(0).items() if k in ("wer", "cer", "loss")}
    last_eval = dict(seed_eval)
    completed = start_round
    # The bar shows the ε the run is about: the extrapolated deployment's when configured.
    shown_epsilon = ("extrapolated_epsilon_rdp" if config.privacy.target_cohort
                     else "epsilon_rdp")
    bar = tqdm.tqdm(total=num_rounds, initial=start_round, desc="FL rounds", unit="round",
                    disable=not (config.progress_bar and chief))
    try:
        with prefetch.Prefetcher(stream.blocks(start_round, num_rounds), buffer_size=2) as blocks:
            for r, block in blocks:
                started = time.perf_counter()
                key = jax.random.fold_in(run_key, r)
                if multi_process:
                    block = distributed.global_cohort(block, mesh, num_slots)
                    key = distributed.replicate(key, mesh)
                state, metrics = round_step(state, block, key)
                metrics = distributed.to_host(metrics)
                round_lib.check_round(metrics, r)
                if not np.isfinite(metrics["loss"]):
                    raise FloatingPointError(f"round {r}: the mean client loss is {metrics['loss']}; "
                                             "the round's update was applied only if finite.")
                completed = r + 1
                seconds = time.perf_counter() - started
                metrics |= {"seconds_per_round": seconds,
                            "clients_per_second": float(metrics["clients"]) / seconds}
                writer.write(completed, {"train": metrics})
                wer = None
                if completed % config.eval.every == 0 or completed == num_rounds:
                    last_eval = evaluate(completed)
                    wer = last_eval["wer"]
                    best_wer = min(best_wer, wer)
                if completed % config.checkpoint.every == 0 or completed == num_rounds:
                    save(completed, wer)
                bar.update(1)
                bar.set_postfix(clients_s=f"{metrics['clients_per_second']:.1f}",
                                wer=f"{last_eval.get('wer', float('nan')):.3f}",
                                eps=f"{last_eval.get(shown_epsilon, float('nan')):.3g}")
                # All processes of a multi-process run stop (and save) at the same round.
                if distributed.any_process(stop["signal"] is not None):
                    raise StopRequested(stop["signal"] or "a signal to another process")
    except StopRequested as stopped:
        save(completed)
        log(f"\n{stopped} received: saved round {completed} to {checkpoints.directory}; "
            "run the same command to resume.")
    except (round_lib.AllClientsDroppedError, round_lib.NonFiniteParamsError,
            FloatingPointError):
        save(completed)  # the state before the failing round: the round step kept it
        raise
    finally:
        bar.close()
        for s, handler in previous_handlers.items():
            signal.signal(s, handler)
        checkpoints.wait()
        checkpoints.close()
        writer.close()

    summary = {
        "workdir": workdir, "seed_model": seed_source, "rounds": completed,
        "population": population, "cohort_size": sampler.cohort_size,
        "sampling": sampler.name,
        "noise_multiplier": noise_multiplier, "sigma_dp": sigma_dp, "delta": config.dp.delta,
        "clipping": config.dp.clipping, "allocation": str(config.dp.allocation),
        "seed_wer": seed_eval["wer"] if seed_eval else None,
        "seed_cer": seed_eval["cer"] if seed_eval else None,
        "final_wer": last_eval.get("wer"), "final_cer": last_eval.get("cer"),
        "epsilon_rdp": last_eval.get("epsilon_rdp"), "epsilon_pld": last_eval.get("epsilon_pld"),
        "extrapolated_cohort": config.privacy.target_cohort or None,
        "extrapolated_population": (config.privacy.target_population
                                    if config.privacy.target_cohort else None),
        "extrapolated_epsilon_rdp": last_eval.get("extrapolated_epsilon_rdp"),
        "extrapolated_epsilon_pld": last_eval.get("extrapolated_epsilon_pld"),
    }
    if chief:
        path = os.path.join(workdir, "summary.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        os.replace(path + ".tmp", path)  # atomic: a reader never sees half a summary
    return summary


def main(argv: list[str]) -> None:
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and TFDS log INFO lines otherwise
    summary = train(_CONFIG.value, _WORKDIR.value)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file",
                                              lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "work directory (checkpoints, metrics)")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
