"""A federated run's progress (``experiments.train_fl``): its checkpoints (save, resume,
the checks of a restored one), one round applied and checked, the evaluation, and the
canary audit's estimates."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments.fl_setup import Log, PyTree, Run, privacy_metrics, shown_epsilon
from fl_dp_asr.dp import DPConfig
from fl_dp_asr.dp.canaries import detectable_epsilon
from fl_dp_asr.fl import audit, distributed
from fl_dp_asr.fl import round as round_lib
from fl_dp_asr.models import asr
from fl_dp_asr.train import utils
from fl_dp_asr.train.checkpoint import Checkpointer


@dataclasses.dataclass
class Progress:
    """Where the run stands; saved in every checkpoint's meta (except ``last_eval`` and
    ``audit``)."""

    completed: int = 0  # rounds applied
    best_wer: float = float("inf")
    seed_eval: dict[str, float] | None = None  # WER/CER/loss of the seed model
    # The latest evaluation of the trained model: {"round", "wer", "cer"} (None: none yet).
    trained_eval: dict[str, Any] | None = None
    last_eval: dict[str, Any] = dataclasses.field(default_factory=dict)  # for the bar
    audit_trail: audit.AuditTrail | None = None  # with canaries: the all-iterates statistic
    audit: dict[str, float] | None = None  # with canaries: both ε estimates, at the end


class CheckpointMismatchError(ValueError):
    """The work directory's checkpoint holds a server state of another shape than this run's."""


class OldLayoutError(CheckpointMismatchError):
    """A checkpoint whose server state holds the blocks unrolled (``block_NN``)."""


def restore_latest(
    checkpoints: Checkpointer, state: round_lib.ServerState
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
                "as the seed: --config.init_checkpoint=" + checkpoints.directory
            ) from error
        raise CheckpointMismatchError(
            f"{checkpoints.directory} (round {step}) holds a server state that does not fit "
            "this run's: the work directory was started with another config (model, server "
            "optimizer, clipping or adaptive bounds, correlated noise). Resume it with the "
            f"config it was started with (saved in each checkpoint's meta, {step}/meta), or "
            f"start a new work directory. Restoring said: {error}"
        ) from error


def resume(checkpoints: Checkpointer, run: Run, log: Log) -> tuple[round_lib.ServerState, Progress]:
    """The newest checkpoint of the work directory, else round 0 from the seed model."""
    state = round_lib.init_server_state(
        asr.stack_blocks(run.seed_params), run.server_optimizer, run.dp, asr.PARAM_LAYOUT
    )
    restored = restore_latest(checkpoints, state)
    if restored is None:
        log(f"Starting from the seed model: {run.seed_source}.")
        return state, Progress(
            audit_trail=None if run.canaries is None else audit.AuditTrail.start(run.canaries)
        )
    completed, state_dict, meta = restored
    if meta.get("correlated_noise") != strategy_fields(run.dp):
        raise ValueError(
            f"{checkpoints.directory} (round {completed}) was trained with the correlated-noise "
            f"strategy {meta.get('correlated_noise')}, but this config builds "
            f"{strategy_fields(run.dp)}: its noise state and ε belong to the first. Keep "
            "dp.mechanism, dp.bands, dp.max_buffers, fl.min_separation and the horizon "
            "dp.strategy_rounds (default fl.rounds: a run that may be extended needs "
            "dp.strategy_rounds set to its longest length from its first round), or start a "
            "new work directory."
        )
    log(f"Resumed from {checkpoints.directory} at round {completed}.")
    best = float("inf") if meta["best_wer"] is None else meta["best_wer"]
    trail = (
        None
        if run.canaries is None
        else audit.AuditTrail.from_meta(
            meta.get("audit"), run.canaries, f"{checkpoints.directory} (round {completed})"
        )
    )
    return round_lib.ServerState(**state_dict), Progress(
        completed, best, meta["seed_eval"], meta.get("trained_eval"), dict(meta["seed_eval"]), trail
    )


def strategy_fields(dp: DPConfig) -> dict[str, Any] | None:
    """The correlated-noise strategy a run adds, optimized (None: independent Gaussian
    noise); kept in every checkpoint's meta so a resumed run can prove it adds the same."""
    return None if dp.correlated_noise is None else dp.correlated_noise.optimize().to_dict()


def save(
    checkpoints: Checkpointer,
    state: round_lib.ServerState,
    progress: Progress,
    run: Run,
    config: ml_collections.ConfigDict,
    wer: float | None = None,
) -> None:
    """Checkpoints the state after ``progress.completed`` rounds (once per round)."""
    if checkpoints.has_step(progress.completed):  # saved, or its async save is in flight
        return
    meta = {
        "round": progress.completed,
        "model_config": run.model_config.to_dict(),
        "config": config.to_dict(),
        "seed_eval": progress.seed_eval,
        "trained_eval": progress.trained_eval,
        "best_wer": progress.best_wer if np.isfinite(progress.best_wer) else None,
        "correlated_noise": strategy_fields(run.dp),
    }
    if run.canaries is not None:
        meta["audit"] = progress.audit_trail.to_meta(run.canaries)
    checkpoints.save(progress.completed, distributed.to_host(state._asdict()), meta, metric=wer)


def evaluate(
    state: round_lib.ServerState,
    run: Run,
    data: utils.Data,
    config: ml_collections.ConfigDict,
    round_index: int,
) -> dict[str, Any]:
    """WER/CER of the held-out users and ε after ``round_index`` rounds.

    Every process evaluates a local copy (the server state is replicated).
    """
    params = distributed.to_host(state.params) if run.mesh is not None else state.params
    result = asr.evaluate(params, run.model_config, data.eval_batches)
    result.pop("examples")
    return result | privacy_metrics(run, round_index, config.dp)


def apply_round(
    run: Run, state: round_lib.ServerState, block: dict[str, Any], key: jax.Array
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
    return state, metrics | {
        "seconds_per_round": seconds,
        "clients_per_second": float(metrics["clients"]) / seconds,
    }


def audit_estimates(
    initial: PyTree,
    state: round_lib.ServerState,
    run: Run,
    progress: Progress,
    config: ml_collections.ConfigDict,
    log: Log,
) -> dict[str, float]:
    """Both empirical ε of the canaries after ``progress.completed`` rounds
    (:func:`fl_dp_asr.fl.audit.estimates`), logged next to the accountant's ε.

    ``initial``: θ_0, the seed model in the round's layout (a host copy taken before the
    first round donates the state; a resumed run loads the same seed model).
    """
    final = audit.final_model_cosines(run.canaries, initial, state.params, run.dp, asr.PARAM_LAYOUT)
    out = audit.estimates(run.canaries, progress.audit_trail, final, config.dp.delta)
    accounted = privacy_metrics(run, progress.completed, config.dp).get("epsilon_rdp")
    views = "; ".join(
        f"{view.replace('_', ' ')} ε ≈ {out[f'epsilon_{view}']:.3g} (95 % CI "
        f"{out[f'epsilon_{view}_ci_low']:.3g} … {out[f'epsilon_{view}_ci_high']:.3g})"
        for view in audit.VIEWS
    )
    power = ""
    if accounted is not None:  # the audit's power: canaries.detectable_epsilon
        found = detectable_epsilon(
            run.canaries.inserted, run.canaries.heldout, accounted, config.dp.delta
        )
        power = f"; a leak is flagged (CI above it) half the time at ε ≈ {found:.3g}"
    log(
        f"Empirical privacy ({run.canaries.inserted} canaries, {run.canaries.heldout} held "
        f"out, δ = {config.dp.delta:g}): {views}; accounted ε = "
        f"{'∞' if accounted is None else f'{accounted:.3g}'} (RDP){power}. Estimates, not "
        "bounds."
    )
    return out


def bar_fields(
    metrics: dict[str, Any], progress: Progress, run: Run, dp: ml_collections.ConfigDict
) -> dict[str, str]:
    """The progress bar's fields after a round: clients per second, the latest evaluation's
    WER and the ε spent so far (:func:`shown_epsilon`; left out without noise)."""
    fields = {
        "clients_s": f"{metrics['clients_per_second']:.1f}",
        "wer": f"{progress.last_eval.get('wer', float('nan')):.3f}",
    }
    epsilon = shown_epsilon(run, progress.completed, dp)
    if epsilon is not None:
        fields["eps"] = f"{epsilon:.3g}"
    return fields


def check_metrics(metrics: dict[str, Any], r: int) -> None:
    """Raises when round ``r`` was refused (:func:`fl_dp_asr.fl.round.check_round`) or its
    mean client loss is not finite."""
    round_lib.check_round(metrics, r)
    if not np.isfinite(metrics["loss"]):
        raise FloatingPointError(
            f"round {r}: the mean client loss is {metrics['loss']}; "
            "the round's update was applied only if finite."
        )
