"""What a federated run (``experiments.train_fl``) fixes before its first round
(:class:`Run`): the DP config and correlated noise of the config, the config checks found
without data, the sampler, the accountant, the canaries and the jitted round step; the rounds
the privacy budget allows and the privacy spent after a number of rounds."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import optax

from experiments import canary_utterances, fl_round_step
from fl_dp_asr.data import CohortStream
from fl_dp_asr.dp import DPConfig, accounting, adaptive, correlated
from fl_dp_asr.dp.canaries import Canaries
from fl_dp_asr.fl import audit, distributed, executors, samplers
from fl_dp_asr.fl import round as round_lib
from fl_dp_asr.models.config import ModelConfig
from fl_dp_asr.text.tokenizer import CharTokenizer
from fl_dp_asr.train import utils

PyTree = Any
Log = Callable[[str], None]


class Run(NamedTuple):
    """What a run fixes before its first round."""

    model_config: ModelConfig
    seed_params: PyTree
    seed_source: str
    sampler: samplers.CohortSampler
    noise_multiplier: float  # z (std on the sum / C)
    sigma_dp: float  # σ_DP = z / S (std on the mean / C)
    accountant: accounting.RunAccountant | None  # None without noise (ε = ∞)
    server_optimizer: optax.GradientTransformation
    round_step: round_lib.RoundStep
    stream: CohortStream
    mesh: jax.sharding.Mesh | None  # the global client mesh of a multi-process run
    dp: DPConfig
    privacy: dict[int, dict[str, float]]  # privacy_metrics by rounds (PLD can take minutes)
    canaries: Canaries | None = None  # config.audit (None: no canary clients)
    canary_cohorts: audit.CanaryCohorts | None = None  # the sampler split into users, canaries


MECHANISMS = ("gaussian",) + correlated.KINDS
# "auto": sharded over every device when there are several, else vectorized.
EXECUTORS = ("auto",) + executors.EXECUTORS


def dp_config(config: ml_collections.ConfigDict) -> DPConfig:
    """The :class:`DPConfig` of the ``dp`` section (its fields are keys of the section; the
    correlated noise from ``dp.mechanism``, :func:`correlated_noise`)."""
    dp = config.dp
    fields = {
        f.name: dp[f.name] for f in dataclasses.fields(DPConfig) if f.name != "correlated_noise"
    }
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
            "(rounds between two participations of a user)."
        )
    extra = (
        {"bands": config.dp.bands}
        if mechanism == "banded_toeplitz"
        else {"max_buffers": config.dp.max_buffers}
    )
    rounds = config.fl.rounds if config.dp.strategy_rounds is None else config.dp.strategy_rounds
    if not rounds >= config.fl.rounds:
        raise ValueError(
            f"config.dp.strategy_rounds={rounds} is shorter than fl.rounds="
            f"{config.fl.rounds}: the strategy must cover every round of the run."
        )
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
        raise ValueError(
            f"config.fl.min_separation={config.fl.min_separation} is a setting of "
            f"fl.sampling='cyclic'; fl.sampling={config.fl.sampling!r} draws "
            "users in consecutive rounds."
        )
    if config.fl.sampling == "cyclic" and config.dp.target_cohort is not None:
        raise ValueError(
            "config.dp.target_cohort: the population extrapolation assumes "
            "Poisson sampling's amplification, which fl.sampling='cyclic' does "
            "not claim; set --config.dp.target_cohort=None."
        )
    if not config.fl.cohort_size >= 1:
        raise ValueError(f"config.fl.cohort_size={config.fl.cohort_size} must be >= 1.")
    if config.fl.executor not in EXECUTORS:
        raise ValueError(f"config.fl.executor={config.fl.executor!r}: choose one of {EXECUTORS}.")
    canary_utterances.spec_of(config)  # the memorization audit's settings
    if make_canaries(config) is not None and config.distributed.num_processes != 1:
        raise ValueError(
            "config.audit.canaries needs a single-process run (config.distributed.num_processes=1)."
        )


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
        return samplers.make_sampler(
            config.fl.sampling,
            population,
            config.fl.cohort_size,
            config.seed,
            config.fl.min_separation,
        )
    except ValueError as error:  # "cohort_size=… must be …": name the config field
        with_canaries = (
            ""
            if canaries is None
            else f" With config.audit.canaries="
            f"{canaries.inserted} the population is {num_users} training users "
            f"+ {canaries.inserted} canary clients."
        )
        raise ValueError(f"config.fl.{error}{with_canaries}") from None


def make_accountant(
    config: ml_collections.ConfigDict,
    sampler: samplers.CohortSampler,
    dp: DPConfig,
    noise_multiplier: float,
):
    """ε during training (None without noise): the sampler's own analysis; with the cyclic
    sampler that of the correlated mechanism, or of independent Gaussian noise without
    amplification (a one-band strategy) for ``dp.mechanism="gaussian"``."""
    if noise_multiplier <= 0:
        return None
    if sampler.name != "cyclic":
        return sampler.accountant(noise_multiplier, config.dp.delta)
    return sampler.accountant(
        noise_multiplier, config.dp.delta, dp.correlated_noise, rounds=config.fl.rounds
    )


def check_count_noise(dp: DPConfig, expected_cohort_size: float, num_bounds: int) -> None:
    """Adaptive clipping: raises ValueError, naming the command-line flags, when the
    clipped-count noise z_b = 2σ_b/√H leaves the deltas nothing of the overall z (z_b ≤ z)."""
    try:
        dp.noise_multipliers(expected_cohort_size, num_bounds)
    except ValueError:
        z = dp.resolve_noise_multiplier(expected_cohort_size)
        stddev = dp.count_stddev(expected_cohort_size)
        z_b = adaptive.count_noise_multiplier(stddev, num_bounds)
        given = (
            ""
            if dp.clipped_count_stddev is not None
            else f", its default S/20 for S = {expected_cohort_size:g}"
        )
        group = (
            ", group layers with --config.dp.layers=module"
            if dp.clipping == "per_layer" and dp.layers == "leaf"
            else ""
        )
        raise ValueError(
            f"adaptive clipping: the clipped-count noise multiplier z_b = 2σ_b/√H = {z_b:.4g} "
            f"(σ_b = {stddev:.4g}{given}; H = {num_bounds} bounds) must exceed the overall "
            f"noise multiplier z = {z:.4g}, or nothing is left for the deltas: raise "
            f"--config.dp.clipped_count_stddev{group}, or lower the noise "
            "(--config.dp.sigma_dp / --config.dp.noise_multiplier)."
        ) from None


def round_step_key(
    config: ml_collections.ConfigDict,
    model_config: ModelConfig,
    dp: DPConfig,
    expected_cohort_size: float,
    canaries: Canaries | None,
) -> str:
    """Everything that shapes the compiled round step of ``config`` except the fixed-clipping
    noise std, which is an argument of it (adaptive clipping's noise is not: it stays in);
    ``canaries``: :func:`make_canaries` of ``config``."""
    fl = config.fl
    if not dp.adaptive:
        dp = dataclasses.replace(dp, sigma_dp=None, noise_multiplier=None)
    return json.dumps(
        {
            "model": model_config.to_dict(),
            "server": config.server.to_dict(),
            "dp": repr(dp),
            "expected_cohort_size": expected_cohort_size,
            "canaries": repr(canaries),
            "fl": {
                k: fl[k]
                for k in (
                    "local_learning_rate",
                    "local_grad_clip_norm",
                    "executor",
                    "chunk_size",
                    "cut_row_levels",
                    "cut_length_levels",
                    "shard_server_state",
                )
            },
        },
        sort_keys=True,
        default=str,
    )


def build_run(
    config: ml_collections.ConfigDict,
    data: utils.Data,
    tokenizer: CharTokenizer,
    multi_process: bool,
    round_steps: dict[str, Any] | None = None,
) -> Run:
    """Seed model, sampler, DP settings and accountant, round step and cohort stream.

    ``round_steps``: jitted round steps of earlier runs in this process, by
    :func:`round_step_key`; a run that matches one reuses it with its own noise std (no
    retracing: ~40 s per run of the demo recipe on 2 CPU cores), else adds its own.
    """
    model_config, seed_params, seed_source = utils.load_seed_model(
        config.init_checkpoint, config.model, jax.random.key(config.seed)
    )
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
            config.fl.chunk_size = fl_round_step.automatic_chunk(config, data, print)
    round_step, executor, server_optimizer = fl_round_step.make_round_step(
        config, model_config, dp, sampler.expected_size, canaries
    )
    mesh = executor.mesh
    if round_steps is not None and not multi_process:
        key = round_step_key(config, model_config, dp, sampler.expected_size, canaries)
        round_step = round_step._replace(step=round_steps.setdefault(key, round_step.step))
    num_slots = sampler.num_slots(executor.client_multiple)
    stream = CohortStream(
        data.train,
        sampler if cohorts is None else cohorts,
        tokenizer.encode,
        data.buckets,
        local_steps=config.fl.local_steps,
        batch_size=config.fl.local_batch_size,
        seed=config.seed,
        client_multiple=executor.client_multiple,
        max_batch_seconds=config.fl.max_batch_seconds,
        max_local_epochs=config.fl.max_local_epochs,
        # every process packs only the client slots its devices train
        process_slots=distributed.process_client_indices(num_slots, mesh)
        if multi_process
        else None,
    )
    return Run(
        model_config,
        seed_params,
        seed_source,
        sampler,
        noise_multiplier,
        accounting.noise_multiplier_to_sigma_dp(noise_multiplier, sampler.expected_size),
        accountant,
        server_optimizer,
        round_step,
        stream,
        mesh if multi_process else None,
        dp,
        {},
        canaries,
        cohorts,
    )


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
        log(
            f"Adaptive clipping: the accountant's z = {z:.4g} is the composition of the delta "
            f"noise z_Δ = {z_delta:.4g} and the clipped-count noise z_b = {z_b:.4g} "
            f"(σ_b = {run.dp.count_stddev(run.sampler.expected_size):.4g}, {num_bounds} bounds)."
        )
    if budget is None:
        return num_rounds
    allowed = run.accountant.max_rounds_within(budget, "rdp", num_rounds)
    if allowed < num_rounds:
        log(
            f"max_epsilon={budget} allows {allowed} of {num_rounds} rounds; training stops "
            f"after round {allowed}."
        )
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
    if dp.pld and run.accountant.pld_feasible(rounds):  # else ε_PLD empty (README)
        out["epsilon_pld"] = run.accountant.epsilon(rounds, "pld")
    if dp.target_cohort is not None:
        extrapolated = _extrapolate(run, rounds, dp, ["rdp", "pld"] if dp.target_pld else ["rdp"])
        out["extrapolated_epsilon_rdp"] = extrapolated.epsilon_rdp
        if dp.target_pld:
            out["extrapolated_epsilon_pld"] = extrapolated.epsilon_pld
    return out


def _extrapolate(
    run: Run,
    rounds: int,
    dp: ml_collections.ConfigDict,
    accountants: list[accounting.AccountantName],
) -> accounting.Extrapolation:
    """The deployment of ``dp.target_cohort`` out of ``dp.target_population`` after
    ``rounds`` rounds at this run's σ_DP (:func:`fl_dp_asr.dp.accounting.extrapolate`)."""
    return accounting.extrapolate(
        run.sigma_dp,
        run.sampler.cohort_size,
        dp.target_cohort,
        dp.target_population,
        rounds,
        dp.delta,
        accountants,
    )


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
