r"""Federated fine-tuning with user-level DP: seed model → jitted FL rounds → WER, ε.

        python -m experiments.train_fl --config experiments/configs/fl_dp.py:demo \
                --workdir runs/demo/fl_dp [--config.fl.cohort_size=64 ...]

The work directory always resumes from its newest complete checkpoint; otherwise the
run starts from ``config.init_checkpoint`` (the central seed model), otherwise from
scratch. SIGINT/SIGTERM save a checkpoint and exit cleanly. Metrics go to
``<workdir>/metrics.jsonl`` and TensorBoard (``<workdir>/tensorboard``).

With ``config.audit.canaries = k`` (> 0) k canary clients take part as users and the run
ends with two empirical ε next to the accountant's (``fl_dp_asr.fl.audit``; README,
"Empirical privacy: canary clients").
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import optax
import tqdm
from absl import logging as absl_logging

from fl_dp_asr.data import CohortStream, PaddingBuckets, prefetch
from fl_dp_asr.data.layouts import SAMPLE_RATE
from fl_dp_asr.dp import DPConfig, accounting, adaptive, correlated
from fl_dp_asr.dp.canaries import Canaries, detectable_epsilon
from fl_dp_asr.fl import audit, client, distributed, executors, round as round_lib, samplers
from fl_dp_asr.models import asr
from fl_dp_asr.models.config import ModelConfig
from fl_dp_asr.text.tokenizer import CharTokenizer
from fl_dp_asr.train import utils
from fl_dp_asr.train.checkpoint import Checkpointer
from fl_dp_asr.train.metrics import MetricWriter

PyTree = Any
Log = Callable[[str], None]


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
        raise ValueError(f"config.distributed.num_processes={cfg.num_processes} needs "
                         f"config.fl.executor='sharded' (or 'auto'), not "
                         f"{config.fl.executor!r}.")
    timeouts = {"heartbeat_timeout_seconds": cfg.heartbeat_timeout_s}
    if cfg.num_processes == 0:
        distributed.initialize(**timeouts)  # detected: Cloud TPU, SLURM, Open MPI, ...
    elif not cfg.coordinator_address:
        raise ValueError("config.distributed.coordinator_address ('host:port' of process 0) "
                         f"is required with num_processes={cfg.num_processes}.")
    else:
        distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id,
                               **timeouts)
    run = config.to_dict()
    del run["distributed"]["process_id"]   # the one key that differs between the processes
    distributed.check_same_run({"config": run,
                                "code": distributed.code_version("fl_dp_asr", "experiments")})
    return True


# ------------------------------------------------------------------ the run's pieces


class Run(NamedTuple):
    """What a run fixes before its first round."""
    model_config: ModelConfig
    seed_params: PyTree
    seed_source: str
    sampler: samplers.CohortSampler
    noise_multiplier: float                  # z (std on the sum / C)
    sigma_dp: float                          # σ_DP = z / S (std on the mean / C)
    accountant: accounting.RunAccountant | None  # None without noise (ε = ∞)
    server_optimizer: optax.GradientTransformation
    round_step: round_lib.RoundStep
    stream: CohortStream
    mesh: jax.sharding.Mesh | None           # the global client mesh of a multi-process run
    dp: DPConfig
    privacy: dict[int, dict[str, float]]     # privacy_metrics by rounds (PLD can take minutes)
    canaries: Canaries | None = None         # config.audit (None: no canary clients)
    canary_cohorts: audit.CanaryCohorts | None = None  # the sampler split into users, canaries


MECHANISMS = ("gaussian",) + correlated.KINDS
# "auto": sharded over every device when there are several, else vectorized.
EXECUTORS = ("auto",) + executors.EXECUTORS


def dp_config(config: ml_collections.ConfigDict) -> DPConfig:
    """The :class:`DPConfig` of the ``dp`` section (its fields are keys of the section; the
    correlated noise from ``dp.mechanism``, :func:`correlated_noise`)."""
    dp = config.dp
    fields = {f.name: dp[f.name] for f in dataclasses.fields(DPConfig)
              if f.name != "correlated_noise"}
    return DPConfig(**fields, correlated_noise=correlated_noise(config))


def correlated_noise(config: ml_collections.ConfigDict) -> correlated.CorrelatedNoise | None:
    """``dp.mechanism`` as a value: None for ``"gaussian"``, else the BLT / banded-Toeplitz
    strategy for ``dp.strategy_rounds`` rounds (None: ``fl.rounds``) and the cyclic
    sampler's ``fl.min_separation`` (``dp.bands``, ``dp.max_buffers``); its parameters are
    optimized when first needed (deterministic: a resumed run gets the same strategy)."""
    mechanism = config.dp.mechanism
    if mechanism not in MECHANISMS:
        raise ValueError(f"config.dp.mechanism={mechanism!r}: choose one of {MECHANISMS}.")
    if mechanism == "gaussian":
        return None
    if config.fl.sampling != "cyclic" or config.fl.min_separation is None:
        raise ValueError(
            f"config.dp.mechanism={mechanism!r} (correlated noise) needs min-separation "
            "participation: set --config.fl.sampling=cyclic and --config.fl.min_separation=b "
            "(rounds between two participations of a user).")
    extra = ({"bands": config.dp.bands} if mechanism == "banded_toeplitz"
             else {"max_buffers": config.dp.max_buffers})
    rounds = config.fl.rounds if config.dp.strategy_rounds is None else config.dp.strategy_rounds
    if not rounds >= config.fl.rounds:
        raise ValueError(f"config.dp.strategy_rounds={rounds} is shorter than fl.rounds="
                         f"{config.fl.rounds}: the strategy must cover every round of the run.")
    try:
        return correlated.CorrelatedNoise(mechanism, rounds, config.fl.min_separation, **extra)
    except ValueError as error:
        raise ValueError(f"config.dp.mechanism={mechanism!r}: {error}") from None


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError for the config mistakes found without data, so that they stop the
    run before its (slow) data preparation: the ``dp`` section (:class:`DPConfig`), the cohort
    sampler's name and size (≥ 1; the population bound waits for the training split,
    :func:`make_sampler`) and the executor's name."""
    dp_config(config)
    names = samplers.SAMPLERS + samplers.MIN_SEPARATION_SAMPLERS
    if config.fl.sampling not in names:
        raise ValueError(f"config.fl.sampling={config.fl.sampling!r}: choose one of {names}.")
    if config.fl.min_separation is not None and config.fl.sampling != "cyclic":
        raise ValueError(f"config.fl.min_separation={config.fl.min_separation} is a setting of "
                         f"fl.sampling='cyclic'; fl.sampling={config.fl.sampling!r} draws "
                         "users in consecutive rounds.")
    if config.fl.sampling == "cyclic" and config.dp.target_cohort is not None:
        raise ValueError("config.dp.target_cohort: the population extrapolation assumes "
                         "Poisson sampling's amplification, which fl.sampling='cyclic' does "
                         "not claim; set --config.dp.target_cohort=None.")
    if not config.fl.cohort_size >= 1:
        raise ValueError(f"config.fl.cohort_size={config.fl.cohort_size} must be >= 1.")
    if config.fl.executor not in EXECUTORS:
        raise ValueError(f"config.fl.executor={config.fl.executor!r}: choose one of "
                         f"{EXECUTORS}.")
    if make_canaries(config) is not None and config.distributed.num_processes != 1:
        raise ValueError("config.audit.canaries needs a single-process run "
                         "(config.distributed.num_processes=1).")


def make_canaries(config: ml_collections.ConfigDict) -> Canaries | None:
    """The canary clients of ``config.audit`` (None for ``canaries=0``); held-out ones:
    ``audit.heldout`` (None: as many as inserted).

    Raises:
        ValueError: naming ``config.audit.canaries``: fewer than 2, or a ``dp`` section
            without fixed clipping.
    """
    k = config.audit.canaries
    if k == 0:
        return None
    heldout = k if config.audit.heldout is None else config.audit.heldout
    try:
        canaries = Canaries(k, heldout, config.audit.seed)
        Canaries.check(dp_config(config))
    except ValueError as error:
        raise ValueError(f"config.audit.canaries={k}: {error}") from None
    return canaries


def make_sampler(config: ml_collections.ConfigDict, num_users: int) -> samplers.CohortSampler:
    """The cohort sampler of ``config.fl`` over ``num_users`` training users and the canary
    clients of ``config.audit`` (users of the sampler too: ids after the training users).

    Raises:
        ValueError: naming the config field, e.g. a cohort larger than the population.
    """
    canaries = make_canaries(config)
    population = num_users + (0 if canaries is None else canaries.inserted)
    try:
        return samplers.make_sampler(config.fl.sampling, population, config.fl.cohort_size,
                                     config.seed, config.fl.min_separation)
    except ValueError as error:  # "cohort_size=… must be …": name the config field
        with_canaries = ("" if canaries is None else f" With config.audit.canaries="
                         f"{canaries.inserted} the population is {num_users} training users "
                         f"+ {canaries.inserted} canary clients.")
        raise ValueError(f"config.fl.{error}{with_canaries}") from None


def make_accountant(config: ml_collections.ConfigDict, sampler: samplers.CohortSampler,
                    dp: DPConfig, noise_multiplier: float):
    """ε during training (None without noise): the sampler's own analysis; with the cyclic
    sampler that of the correlated mechanism, or of independent Gaussian noise without
    amplification (a one-band strategy) for ``dp.mechanism="gaussian"``."""
    if noise_multiplier <= 0:
        return None
    if sampler.name != "cyclic":
        return sampler.accountant(noise_multiplier, config.dp.delta)
    return sampler.accountant(noise_multiplier, config.dp.delta, dp.correlated_noise,
                              rounds=config.fl.rounds)


def check_count_noise(dp: DPConfig, expected_cohort_size: float, num_bounds: int) -> None:
    """Adaptive clipping: raises ValueError, naming the command-line flags, when the
    clipped-count noise z_b = 2σ_b/√H leaves the deltas nothing of the overall z (z_b ≤ z)."""
    try:
        dp.noise_multipliers(expected_cohort_size, num_bounds)
    except ValueError:
        z = dp.resolve_noise_multiplier(expected_cohort_size)
        stddev = dp.count_stddev(expected_cohort_size)
        z_b = adaptive.count_noise_multiplier(stddev, num_bounds)
        given = ("" if dp.clipped_count_stddev is not None
                 else f", its default S/20 for S = {expected_cohort_size:g}")
        group = (", group layers with --config.dp.layers=module"
                 if dp.clipping == "per_layer" and dp.layers == "leaf" else "")
        raise ValueError(
            f"adaptive clipping: the clipped-count noise multiplier z_b = 2σ_b/√H = {z_b:.4g} "
            f"(σ_b = {stddev:.4g}{given}; H = {num_bounds} bounds) must exceed the overall "
            f"noise multiplier z = {z:.4g}, or nothing is left for the deltas: raise "
            f"--config.dp.clipped_count_stddev{group}, or lower the noise "
            "(--config.dp.sigma_dp / --config.dp.noise_multiplier).") from None


def round_step_key(config: ml_collections.ConfigDict, model_config: ModelConfig, dp: DPConfig,
                   expected_cohort_size: float, canaries: Canaries | None) -> str:
    """Everything that shapes the compiled round step of ``config`` except the fixed-clipping
    noise std, which is an argument of it (adaptive clipping's noise is not: it stays in);
    ``canaries``: :func:`make_canaries` of ``config``."""
    fl = config.fl
    if not dp.adaptive:
        dp = dataclasses.replace(dp, sigma_dp=None, noise_multiplier=None)
    return json.dumps({
        "model": model_config.to_dict(), "server": config.server.to_dict(), "dp": repr(dp),
        "expected_cohort_size": expected_cohort_size, "canaries": repr(canaries),
        "fl": {k: fl[k] for k in ("local_learning_rate", "local_grad_clip_norm", "executor",
                                  "chunk_size", "cut_row_levels", "cut_length_levels",
                                  "shard_server_state")},
    }, sort_keys=True, default=str)


def executor_name(config: ml_collections.ConfigDict, num_devices: int) -> str:
    """``config.fl.executor`` with ``"auto"`` resolved for ``num_devices`` devices: ``sharded``
    over all of them when there are several, else ``vectorized``. An explicit executor that
    trains on one device of several is kept, with a warning naming the flag."""
    name = config.fl.executor
    if name == "auto":
        return "sharded" if num_devices > 1 else "vectorized"
    if name != "sharded" and num_devices > 1:
        absl_logging.warning(
            "config.fl.executor=%r trains on 1 of the %d devices: set "
            "--config.fl.executor=auto (or sharded) to use all of them.", name, num_devices)
    return name


class RoundStepParts(NamedTuple):
    """The trainer's round step and what it is made of."""
    round_step: round_lib.BoundRoundStep
    executor: executors.Executor
    server_optimizer: optax.GradientTransformation


def make_round_step(config: ml_collections.ConfigDict, model_config: ModelConfig,
                    dp: DPConfig, expected_cohort_size: float, canaries: Canaries | None,
                    devices: list | None = None) -> RoundStepParts:
    """The round step of ``config`` (``fl``: local training, executor, chunk; ``server``;
    ``dp``), exactly as :func:`train` runs it. Touches no device: ``devices`` (default: every
    device of every process) may be compile-only ones (``fl-dp-asr-plan``,
    :mod:`fl_dp_asr.aot`)."""
    server_optimizer = utils.server_optimizer_from_config(config.server)
    client_update = client.make_client_update(
        asr.make_loss_fn(model_config, train=True),
        client.local_sgd(config.fl.local_learning_rate, config.fl.local_grad_clip_norm),
        PaddingBuckets(config.fl.cut_row_levels, config.fl.cut_length_levels))
    name = executor_name(config, len(jax.devices()) if devices is None else len(devices))
    mesh = distributed.client_mesh(devices) if name == "sharded" else None
    executor = executors.make(name, chunk_size=config.fl.chunk_size, mesh=mesh)
    round_step = round_lib.make_round_step(client_update, server_optimizer, dp,
                                           expected_cohort_size, executor, asr.PARAM_LAYOUT,
                                           canaries, config.fl.shard_server_state)
    return RoundStepParts(round_step, executor, server_optimizer)


CPU_CHUNK = 16   # config.fl.chunk_size=None on a device without a memory limit (a CPU)


def automatic_chunk(config: ml_collections.ConfigDict, data: utils.Data, log: Log,
                    memory_limit: int | None = None) -> int:
    """``config.fl.chunk_size=None``: the largest power-of-two chunk whose round step fits
    each device, found by compiling it for the longest bucket of the data
    (``fl-dp-asr-plan``'s search, :func:`experiments.plan.largest_chunk`).

    ``memory_limit``: bytes per device (default: the device's ``bytes_limit``; a device
    that reports none, a CPU, gets :data:`CPU_CHUNK`).

    Raises:
        RuntimeError: not even one client per device fits, with the memory it needs.
    """
    from experiments import plan   # the planner builds round steps with this module
    from fl_dp_asr.aot import targets
    devices = jax.devices()
    stats = devices[0].memory_stats() or {}
    memory_limit = memory_limit or stats.get("bytes_limit")
    if not memory_limit:
        log(f"config.fl.chunk_size=None: {devices[0].device_kind} reports no memory limit; "
            f"chunk {CPU_CHUNK}.")
        return CPU_CHUNK
    kind = devices[0].device_kind
    chip = targets.Chip(kind, devices[0].platform, int(memory_limit), float("nan"),
                        float("nan"), "the device's memory_stats()")
    planner = plan.Planner(config, targets.Target(kind, chip, len(devices), ""), devices,
                           data.buckets.max_samples[-1] / SAMPLE_RATE, data.train.num_users,
                           data.buckets.max_label_len[-1])
    best, tried = plan.largest_chunk(planner, plan.clients_per_chip(planner), log)
    if best is None:
        raise RuntimeError(
            f"config.fl.chunk_size=None: the round step does not fit a {kind} even with one "
            f"client per device ({tried[0].peak_bytes / 2**30:.2f} GiB of "
            f"{memory_limit / 2**30:.2f} GiB): use more devices, --config.model.remat=True, "
            "smaller local batches (fl.local_batch_size) or --config.fl.shard_server_state.")
    log(f"config.fl.chunk_size=None: chunk {best.chunk} ({best.peak_bytes / 2**30:.2f} GiB of "
        f"{memory_limit / 2**30:.2f} GiB per {kind}).")
    return best.chunk


def build_run(config: ml_collections.ConfigDict, data: utils.Data, tokenizer: CharTokenizer,
              multi_process: bool, round_steps: dict[str, Any] | None = None) -> Run:
    """Seed model, sampler, DP settings and accountant, round step and cohort stream.

    ``round_steps``: jitted round steps of earlier runs in this process, by
    :func:`round_step_key`; a run that matches one reuses it with its own noise std (no
    retracing: ~40 s per run of the demo recipe on 2 CPU cores), else adds its own.
    """
    model_config, seed_params, seed_source = utils.load_seed_model(
        config.init_checkpoint, config.model, jax.random.key(config.seed))
    canaries = make_canaries(config)
    sampler = make_sampler(config, data.train.num_users)
    cohorts = None if canaries is None else audit.CanaryCohorts(sampler, data.train.num_users)
    dp = dp_config(config)
    noise_multiplier = dp.resolve_noise_multiplier(sampler.expected_size)
    check_count_noise(dp, sampler.expected_size, len(dp.initial_clip_bounds(seed_params)))
    accountant = make_accountant(config, sampler, dp, noise_multiplier)
    if config.fl.chunk_size is None:
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.fl.chunk_size = automatic_chunk(config, data, print)
    round_step, executor, server_optimizer = make_round_step(
        config, model_config, dp, sampler.expected_size, canaries)
    mesh = executor.mesh
    if round_steps is not None and not multi_process:
        key = round_step_key(config, model_config, dp, sampler.expected_size, canaries)
        round_step = round_step._replace(step=round_steps.setdefault(key, round_step.step))
    num_slots = sampler.num_slots(executor.client_multiple)
    stream = CohortStream(
        data.train, sampler if cohorts is None else cohorts, tokenizer.encode, data.buckets,
        local_steps=config.fl.local_steps,
        batch_size=config.fl.local_batch_size, seed=config.seed,
        client_multiple=executor.client_multiple, max_batch_seconds=config.fl.max_batch_seconds,
        max_local_epochs=config.fl.max_local_epochs,
        # every process packs only the client slots its devices train
        process_slots=distributed.process_client_indices(num_slots, mesh) if multi_process
        else None)
    return Run(model_config, seed_params, seed_source, sampler, noise_multiplier,
               accounting.noise_multiplier_to_sigma_dp(noise_multiplier, sampler.expected_size),
               accountant, server_optimizer, round_step, stream,
               mesh if multi_process else None, dp, {}, canaries, cohorts)


def rounds_within_budget(config: ml_collections.ConfigDict, run: Run, log: Log) -> int:
    """``fl.rounds``, or fewer when ``dp.max_epsilon`` would be exceeded; prints the plan."""
    num_rounds, budget = config.fl.rounds, config.dp.max_epsilon
    if run.accountant is None:
        if budget is not None:
            raise ValueError("config.dp.max_epsilon is set but the run adds no noise (ε = ∞).")
        return num_rounds
    log(f"Privacy of the full run: {run.accountant.guarantee(num_rounds, 'rdp')}")
    if run.dp.adaptive:
        num_bounds = len(run.dp.initial_clip_bounds(run.seed_params))
        z, z_delta, z_b = run.dp.noise_multipliers(run.sampler.expected_size, num_bounds)
        log(f"Adaptive clipping: the accountant's z = {z:.4g} is the composition of the delta "
            f"noise z_Δ = {z_delta:.4g} and the clipped-count noise z_b = {z_b:.4g} "
            f"(σ_b = {run.dp.count_stddev(run.sampler.expected_size):.4g}, {num_bounds} bounds).")
    if budget is None:
        return num_rounds
    allowed = run.accountant.max_rounds_within(budget, "rdp", num_rounds)
    if allowed < num_rounds:
        log(f"max_epsilon={budget} allows {allowed} of {num_rounds} rounds; training stops "
            f"after round {allowed}.")
    return allowed


def privacy_metrics(run: Run, rounds: int, dp: ml_collections.ConfigDict) -> dict[str, float]:
    """ε spent after ``rounds`` and the ε of the extrapolated population (RDP, optional PLD;
    cached per ``rounds`` in ``run.privacy``). ``{}`` without noise (ε = ∞) or rounds.

    PLD is opt-in per setting (``dp.pld`` for the run itself, ``dp.target_pld`` for the
    extrapolation): it is tighter but can take minutes for tiny noise multipliers, such as
    those of a simulation meant to be extrapolated.
    """
    if run.accountant is None or rounds == 0:
        return {}
    if rounds not in run.privacy:
        run.privacy[rounds] = _privacy_after(run, rounds, dp)
    return dict(run.privacy[rounds])


def _privacy_after(run: Run, rounds: int, dp: ml_collections.ConfigDict) -> dict[str, float]:
    out = {"epsilon_rdp": run.accountant.epsilon(rounds, "rdp")}
    if dp.pld and run.accountant.pld_feasible(rounds):   # else ε_PLD empty (README)
        out["epsilon_pld"] = run.accountant.epsilon(rounds, "pld")
    if dp.target_cohort is not None:
        extrapolated = _extrapolate(run, rounds, dp, ["rdp", "pld"] if dp.target_pld else ["rdp"])
        out["extrapolated_epsilon_rdp"] = extrapolated.epsilon_rdp
        if dp.target_pld:
            out["extrapolated_epsilon_pld"] = extrapolated.epsilon_pld
    return out


def _extrapolate(run: Run, rounds: int, dp: ml_collections.ConfigDict,
                 accountants: list[accounting.AccountantName]) -> accounting.Extrapolation:
    """The deployment of ``dp.target_cohort`` out of ``dp.target_population`` after
    ``rounds`` rounds at this run's σ_DP (:func:`fl_dp_asr.dp.accounting.extrapolate`)."""
    return accounting.extrapolate(run.sigma_dp, run.sampler.cohort_size, dp.target_cohort,
                                  dp.target_population, rounds, dp.delta, accountants)


def shown_epsilon(run: Run, rounds: int, dp: ml_collections.ConfigDict) -> float | None:
    """The ε the progress bar shows after ``rounds`` rounds (RDP): the run's, or the
    extrapolated deployment's when ``dp.target_cohort`` is set (what the run is about).
    None without noise (ε = ∞) or before round 1. Milliseconds: the accountant caches per
    round count; the extrapolation is taken from an evaluation's :func:`privacy_metrics`
    of the same round count when there is one, else computed (RDP only)."""
    if run.accountant is None or rounds == 0:
        return None
    if dp.target_cohort is None:
        return run.accountant.epsilon(rounds, "rdp")
    if rounds in run.privacy:
        return run.privacy[rounds]["extrapolated_epsilon_rdp"]
    return _extrapolate(run, rounds, dp, ["rdp"]).epsilon_rdp


# ------------------------------------------------------------------ progress and checkpoints


@dataclasses.dataclass
class Progress:
    """Where the run stands; saved in every checkpoint's meta (except ``last_eval`` and
    ``audit``)."""
    completed: int = 0                       # rounds applied
    best_wer: float = float("inf")
    seed_eval: dict[str, float] | None = None    # WER/CER/loss of the seed model
    # The latest evaluation of the trained model: {"round", "wer", "cer"} (None: none yet).
    trained_eval: dict[str, Any] | None = None
    last_eval: dict[str, Any] = dataclasses.field(default_factory=dict)  # for the bar
    audit_trail: audit.AuditTrail | None = None  # with canaries: the all-iterates statistic
    audit: dict[str, float] | None = None    # with canaries: both ε estimates, at the end


class CheckpointMismatchError(ValueError):
    """The work directory's checkpoint holds a server state of another shape than this run's."""


class OldLayoutError(CheckpointMismatchError):
    """A checkpoint whose server state holds the blocks unrolled (``block_NN``)."""


def restore_latest(checkpoints: Checkpointer, state: round_lib.ServerState
                   ) -> tuple[int, dict, dict] | None:
    """The newest checkpoint restored into the structure of ``state`` (None: none yet).

    Raises:
        OldLayoutError: the checkpoint was written before the round step held the blocks
            stacked (its server state names ``block_00``...): it cannot be resumed by this
            version (its model still loads: ``utils.load_model_checkpoint``).
        CheckpointMismatchError: any other server state that does not fit this run's (a
            work directory started with another model, server optimizer or DP config).
    """
    try:
        return checkpoints.restore_latest(state._asdict())
    except (ValueError, KeyError, TypeError) as error:
        step = checkpoints.latest_step()
        saved, _ = checkpoints.restore(step)
        if any(str(k).startswith("block_") for k in saved.get("params", {})):
            raise OldLayoutError(
                f"{checkpoints.directory} (round {step}) holds a server state with the blocks "
                "unrolled (block_00, ...), written before the round step held them stacked; "
                "this version cannot resume it. Start a new work directory, or use its model "
                "as the seed: --config.init_checkpoint=" + checkpoints.directory) from error
        raise CheckpointMismatchError(
            f"{checkpoints.directory} (round {step}) holds a server state that does not fit "
            "this run's: the work directory was started with another config (model, server "
            "optimizer, clipping or adaptive bounds, correlated noise). Resume it with the "
            f"config it was started with (saved in each checkpoint's meta, {step}/meta), or "
            f"start a new work directory. Restoring said: {error}") from error


def resume(checkpoints: Checkpointer, run: Run, log: Log
           ) -> tuple[round_lib.ServerState, Progress]:
    """The newest checkpoint of the work directory, else round 0 from the seed model."""
    state = round_lib.init_server_state(asr.stack_blocks(run.seed_params), run.server_optimizer,
                                        run.dp, asr.PARAM_LAYOUT)
    restored = restore_latest(checkpoints, state)
    if restored is None:
        log(f"Starting from the seed model: {run.seed_source}.")
        return state, Progress(audit_trail=None if run.canaries is None
                               else audit.AuditTrail.start(run.canaries))
    completed, state_dict, meta = restored
    if meta.get("correlated_noise") != strategy_fields(run.dp):
        raise ValueError(
            f"{checkpoints.directory} (round {completed}) was trained with the correlated-noise "
            f"strategy {meta.get('correlated_noise')}, but this config builds "
            f"{strategy_fields(run.dp)}: its noise state and ε belong to the first. Keep "
            "dp.mechanism, dp.bands, dp.max_buffers, fl.min_separation and the horizon "
            "dp.strategy_rounds (default fl.rounds: a run that may be extended needs "
            "dp.strategy_rounds set to its longest length from its first round), or start a "
            "new work directory.")
    log(f"Resumed from {checkpoints.directory} at round {completed}.")
    best = float("inf") if meta["best_wer"] is None else meta["best_wer"]
    trail = (None if run.canaries is None else audit.AuditTrail.from_meta(
        meta.get("audit"), run.canaries, f"{checkpoints.directory} (round {completed})"))
    return round_lib.ServerState(**state_dict), Progress(
        completed, best, meta["seed_eval"], meta.get("trained_eval"), dict(meta["seed_eval"]),
        trail)


def strategy_fields(dp: DPConfig) -> dict[str, Any] | None:
    """The correlated-noise strategy a run adds, optimized (None: independent Gaussian
    noise); kept in every checkpoint's meta so a resumed run can prove it adds the same."""
    return None if dp.correlated_noise is None else dp.correlated_noise.optimize().to_dict()


def save(checkpoints: Checkpointer, state: round_lib.ServerState, progress: Progress,
         run: Run, config: ml_collections.ConfigDict, wer: float | None = None) -> None:
    """Checkpoints the state after ``progress.completed`` rounds (once per round)."""
    if checkpoints.has_step(progress.completed):  # saved, or its async save is in flight
        return
    meta = {"round": progress.completed, "model_config": run.model_config.to_dict(),
            "config": config.to_dict(), "seed_eval": progress.seed_eval,
            "trained_eval": progress.trained_eval,
            "best_wer": progress.best_wer if np.isfinite(progress.best_wer) else None,
            "correlated_noise": strategy_fields(run.dp)}
    if run.canaries is not None:
        meta["audit"] = progress.audit_trail.to_meta(run.canaries)
    checkpoints.save(progress.completed, distributed.to_host(state._asdict()), meta, metric=wer)


def evaluate(state: round_lib.ServerState, run: Run, data: utils.Data,
             config: ml_collections.ConfigDict, round_index: int) -> dict[str, Any]:
    """WER/CER of the held-out users and ε after ``round_index`` rounds.

    Every process evaluates a local copy (the server state is replicated).
    """
    params = distributed.to_host(state.params) if run.mesh is not None else state.params
    result = asr.evaluate(params, run.model_config, data.eval_batches)
    result.pop("examples")
    return result | privacy_metrics(run, round_index, config.dp)


def apply_round(run: Run, state: round_lib.ServerState, block: dict[str, Any], key: jax.Array
                ) -> tuple[round_lib.ServerState, dict[str, Any]]:
    """One round on its cohort block: the new state and host metrics (with timing).

    The old state is donated: keep the returned one, also when :func:`check_metrics` then
    refuses the round (the round step returned the state before it).
    """
    started = time.perf_counter()
    if run.mesh is not None:
        block = distributed.global_cohort(block, run.mesh, run.stream.num_slots)
        key = distributed.replicate(key, run.mesh)
    state, metrics = run.round_step(state, block, key)
    metrics = distributed.to_host(metrics)
    seconds = time.perf_counter() - started
    return state, metrics | {"seconds_per_round": seconds,
                             "clients_per_second": float(metrics["clients"]) / seconds}


def audit_estimates(initial: PyTree, state: round_lib.ServerState, run: Run,
                    progress: Progress, config: ml_collections.ConfigDict, log: Log
                    ) -> dict[str, float]:
    """Both empirical ε of the canaries after ``progress.completed`` rounds
    (:func:`fl_dp_asr.fl.audit.estimates`), logged next to the accountant's ε.

    ``initial``: θ_0, the seed model in the round's layout (a host copy taken before the
    first round donates the state; a resumed run loads the same seed model).
    """
    final = audit.final_model_cosines(run.canaries, initial, state.params, run.dp,
                                      asr.PARAM_LAYOUT)
    out = audit.estimates(run.canaries, progress.audit_trail, final, config.dp.delta)
    accounted = privacy_metrics(run, progress.completed, config.dp).get("epsilon_rdp")
    views = "; ".join(
        f"{view.replace('_', ' ')} ε ≈ {out[f'epsilon_{view}']:.3g} (95 % CI "
        f"{out[f'epsilon_{view}_ci_low']:.3g} … {out[f'epsilon_{view}_ci_high']:.3g})"
        for view in audit.VIEWS)
    power = ""
    if accounted is not None:   # the audit's power: canaries.detectable_epsilon
        found = detectable_epsilon(run.canaries.inserted, run.canaries.heldout, accounted,
                                   config.dp.delta)
        power = f"; a leak is flagged (CI above it) half the time at ε ≈ {found:.3g}"
    log(f"Empirical privacy ({run.canaries.inserted} canaries, {run.canaries.heldout} held "
        f"out, δ = {config.dp.delta:g}): {views}; accounted ε = "
        f"{'∞' if accounted is None else f'{accounted:.3g}'} (RDP){power}. Estimates, not "
        "bounds.")
    return out


def bar_fields(metrics: dict[str, Any], progress: Progress, run: Run,
               dp: ml_collections.ConfigDict) -> dict[str, str]:
    """The progress bar's fields after a round: clients per second, the latest evaluation's
    WER and the ε spent so far (:func:`shown_epsilon`; left out without noise)."""
    fields = {"clients_s": f"{metrics['clients_per_second']:.1f}",
              "wer": f"{progress.last_eval.get('wer', float('nan')):.3f}"}
    epsilon = shown_epsilon(run, progress.completed, dp)
    if epsilon is not None:
        fields["eps"] = f"{epsilon:.3g}"
    return fields


def check_metrics(metrics: dict[str, Any], r: int) -> None:
    """Raises when round ``r`` was refused (:func:`fl_dp_asr.fl.round.check_round`) or its
    mean client loss is not finite."""
    round_lib.check_round(metrics, r)
    if not np.isfinite(metrics["loss"]):
        raise FloatingPointError(f"round {r}: the mean client loss is {metrics['loss']}; "
                                 "the round's update was applied only if finite.")


# ------------------------------------------------------------------ training


def train(config: ml_collections.ConfigDict, workdir: str,
          round_steps: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs (or resumes) federated DP fine-tuning; returns a summary dict.

    ``round_steps``: a cache of jitted round steps shared by the runs of one process
    (:func:`build_run`; ``experiments.replicate`` passes one).

    In a multi-process run every process calls it with the same config (but its own
    ``distributed.process_id``) and the same shared ``workdir``; process 0 writes the
    metrics and the summary, all processes take part in checkpointing.
    """
    check_config(config)   # before anything slow: the config mistakes found without data
    multi_process = join_processes(config)
    chief = jax.process_index() == 0
    log = utils.chief_print(chief)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    tokenizer = CharTokenizer(config.data.language)

    # ---- 1. data, 2. model, DP, round step, cohorts -----------------------------------------
    # The cohort size is checked against the population as soon as the training split is
    # there, before the held-out split and the seed model are prepared.
    data = utils.load_data(config.data, tokenizer, config.eval.batch_size,
                           check_train=lambda train: make_sampler(config, train.num_users))
    run = build_run(config, data, tokenizer, multi_process, round_steps)
    num_rounds = rounds_within_budget(config, run, log)

    # ---- 3. resume: newest checkpoint of this workdir, else the seed model ---------------
    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"),
                               max_to_keep=config.checkpoint.keep, best_metric="wer")
    state, progress = resume(checkpoints, run, log)
    if config.fl.shard_server_state:
        state = distributed.place(state, round_lib.server_state_shardings(
            state, run.round_step.mesh))
    elif multi_process:
        state = distributed.replicate(state, run.mesh)
    writer = MetricWriter(workdir, resume_step=progress.completed, enabled=chief)
    if progress.seed_eval is None:
        seed_eval = evaluate(state, run, data, config, 0)
        writer.write(0, {"eval": seed_eval})
        progress.seed_eval = {k: seed_eval[k] for k in ("wer", "cer", "loss")}
        progress.last_eval = dict(progress.seed_eval)

    # ---- 4. rounds -----------------------------------------------------------------------
    run_key = jax.random.key(config.seed)
    bar = tqdm.tqdm(total=num_rounds, initial=progress.completed, desc="FL rounds",
                    unit="round", disable=not (config.progress_bar and chief))
    cohorts = run.stream.blocks(progress.completed, num_rounds)
    if run.canary_cohorts is not None:
        cohorts = run.canary_cohorts.with_masks(cohorts)
        initial = jax.tree.map(np.array, asr.stack_blocks(run.seed_params))   # θ_0 (host)
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
                        progress.last_eval = evaluate(state, run, data, config,
                                                      progress.completed)
                        writer.write(progress.completed, {"eval": progress.last_eval})
                        wer = progress.last_eval["wer"]
                        progress.trained_eval = {"round": progress.completed, "wer": wer,
                                                 "cer": progress.last_eval["cer"]}
                        progress.best_wer = min(progress.best_wer, wer)
                    if utils.itstime(progress.completed, config.checkpoint.every, num_rounds):
                        save(checkpoints, state, progress, run, config, wer)
                    bar.update(1)
                    bar.set_postfix(bar_fields(metrics, progress, run, config.dp))
                    # All processes of a multi-process run stop (and save) at the same round.
                    if distributed.any_process(stop.received is not None):
                        raise StopRequested(stop.received or "a signal to another process")
            if run.canaries is not None and progress.completed > 0:
                progress.audit = audit_estimates(initial, state, run, progress, config, log)
                writer.write(progress.completed, {"audit": progress.audit})
        except StopRequested as stopped:
            save(checkpoints, state, progress, run, config)
            log(f"\n{stopped} received: saved round {progress.completed} to "
                f"{checkpoints.directory}; run the same command to resume.")
        except (round_lib.AllClientsDroppedError, round_lib.NonFiniteParamsError,
                FloatingPointError):
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
                "command to resume from it.") from error
        finally:
            bar.close()
            try:   # still under the stop handlers: a signal now cannot cut the save
                checkpoints.close()   # waits; raises a failed save (CheckpointSaveError)
            finally:
                writer.close()

    summary = run_summary(workdir, config, run, progress, data)
    if chief:
        utils.write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def run_summary(workdir: str, config: ml_collections.ConfigDict, run: Run, progress: Progress,
                data: utils.Data) -> dict[str, Any]:
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
        "workdir": workdir, "seed_model": run.seed_source, "rounds": progress.completed,
        "population": data.train.num_users, "cohort_size": run.sampler.cohort_size,
        "sampling": run.sampler.name, "mechanism": run.dp.mechanism,
        "noise_multiplier": run.noise_multiplier,
        "sigma_dp": run.sigma_dp, "delta": dp.delta, "clipping": dp.clipping,
        "allocation": str(dp.allocation), "seed_wer": seed.get("wer"),
        "seed_cer": seed.get("cer"), "final_wer": trained.get("wer"),
        "final_cer": trained.get("cer"), "final_eval_round": trained.get("round"),
        "epsilon_rdp": privacy.get("epsilon_rdp"), "epsilon_pld": privacy.get("epsilon_pld"),
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
    names = [f"epsilon_{v}{part}" for v in audit.VIEWS
             for part in ("", "_ci_low", "_ci_high", "_lower_bound")]
    found = progress.audit or {}
    return ({"audit_canaries": run.canaries.inserted, "audit_heldout": run.canaries.heldout}
            | {f"audit_{name}": found.get(name) for name in names})


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

    _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file",
                                              lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "work directory (checkpoints, metrics)")
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run_main(main, "train_fl")


if __name__ == "__main__":
    console_main()
