"""One cell of the replication study: its FL config (the demo recipe with the cell's
method, σ_DP, seed, cohort, depth and server), the seed model it starts from, and its run
into ``<workdir>/cells/<cell id>`` (cached: a done cell is read back, an interrupted one
resumes from its checkpoint)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import ml_collections

from experiments import fl_setup, train_central, train_fl
from experiments.configs import central, fl_dp
from experiments.replication.design import DEMO_DEPTH, METHODS, Cell, Study, cell_id
from fl_dp_asr.dp.policy import DPConfig
from fl_dp_asr.train import cli, utils

ADAM_LEARNING_RATE = 1e-3  # the Adam rows' server learning rate (LAMB: the recipe's)
# Adaptive rows: the clipped-count noise multiplier z_b is at least this many times the
# run's z, so the deltas keep z_Δ = z/√(1 − 1/3²) ≤ 1.06·z (the fixed rows' noise, +6 %).
COUNT_NOISE_RATIO = 3.0


class Recipes(NamedTuple):
    """Factories of the base configs every cell changes (tests pass small-corpus ones)."""

    central: Callable[[], ml_collections.ConfigDict] = functools.partial(central.get_config, "demo")
    fl: Callable[[], ml_collections.ConfigDict] = functools.partial(fl_dp.get_config, "demo")


def seed_checkpoint(
    workdir: str, depth: int, study: Study, recipes: Recipes, demo_seed: str | None
) -> str:
    """The seed model of ``depth`` blocks: ``demo_seed`` (if it exists) for the demo's
    depth, else the central recipe with ``depth`` blocks, trained once into the work dir."""
    if depth == DEMO_DEPTH and demo_seed and os.path.isdir(demo_seed):
        return demo_seed
    run_dir = os.path.join(workdir, "seeds", f"depth{depth}")
    done = os.path.join(run_dir, "seed.json")
    if os.path.exists(done):
        return os.path.join(run_dir, "checkpoints")
    config = recipes.central()
    config.model.num_blocks = depth
    config.progress_bar = False
    if study.seed_steps:
        config.train.num_steps = study.seed_steps
        config.eval.every = config.checkpoint.every = study.seed_steps
    print(f"== seed model with {depth} blocks ({run_dir})", flush=True)
    began = time.perf_counter()
    summary = train_central.train(config, run_dir)  # resumes if interrupted
    utils.write_json(done, {**summary, "seconds": time.perf_counter() - began})
    return os.path.join(run_dir, "checkpoints")


def cell_config(cell: Cell, study: Study, recipes: Recipes, seed: str) -> ml_collections.ConfigDict:
    """The FL recipe with the cell's method, σ_DP, seed, cohort, seed model and server."""
    config = recipes.fl()
    base_cohort = config.fl.cohort_size
    config.init_checkpoint = seed
    config.progress_bar = False
    config.seed = cell.seed
    config.fl.rounds = cell.rounds or study.rounds
    config.fl.cohort_size = cell.cohort
    config.eval.every = study.curve_every if cell.rounds else config.fl.rounds
    config.checkpoint.every = config.fl.rounds
    config.server.optimizer = cell.server
    if cell.server == "adam":
        config.server.learning_rate = ADAM_LEARNING_RATE
    for key, value in METHODS[cell.method].items():
        config.dp[key] = value
    if cell.method != "no DP":
        config.dp.sigma_dp = cell.sigma_dp
    if config.dp.target_unclipped_quantile is not None and cell.sigma_dp > 0:
        config.dp.clipped_count_stddev = adaptive_count_stddev(config, seed)
    if not config.dp.sigma_dp:
        config.dp.target_cohort = None  # no noise: no ε to extrapolate
    elif config.dp.target_cohort is not None:  # same S', same q = S/K as simulated
        config.dp.target_population = round(config.dp.target_population * base_cohort / cell.cohort)
    return config


def count_stddev_for_ratio(dp: DPConfig, cohort: float, num_bounds: int) -> float:
    """σ_b of an adaptive row: ``dp``'s own (default S/20), raised where needed so that the
    count's z_b = 2σ_b/√H is ≥ ``COUNT_NOISE_RATIO``·z.

    At σ_DP = z/S ≥ 1/(10√H) the default leaves nothing for the deltas (z_b ≤ z) at any S:
    the count noise, as a fraction of the cohort, then grows with σ_DP (the table's note).
    """
    z = dp.resolve_noise_multiplier(cohort)
    return max(dp.count_stddev(cohort), COUNT_NOISE_RATIO * z * num_bounds**0.5 / 2.0)


def adaptive_count_stddev(config: ml_collections.ConfigDict, seed: str) -> float:
    """:func:`count_stddev_for_ratio` for ``config`` (H: the seed model's clip bounds)."""
    dp = fl_setup.dp_config(config)
    _, params, _ = utils.load_seed_model(seed, config.model, jax.random.key(0))
    return count_stddev_for_ratio(dp, config.fl.cohort_size, len(dp.initial_clip_bounds(params)))


def cell_dir(workdir: str, cell: Cell, study: Study) -> str:
    """Where a cell runs: ``<workdir>/cells/<cell id>`` (:func:`design.cell_id`)."""
    return os.path.join(workdir, "cells", cell_id(cell, study))


def result_path(workdir: str, cell: Cell, study: Study) -> str:
    """The cell's result (written when its last round is done: the cell is done)."""
    return os.path.join(cell_dir(workdir, cell, study), "result.json")


class StudyStopped(RuntimeError):
    """A cell's run stopped before its last round (a signal); it is not cached."""


# This process's jitted round steps: cells of one program (any σ_DP, seed) reuse one.
_ROUND_STEPS: dict[str, Any] = {}


def run_cell(
    cell: Cell, study: Study, workdir: str, recipes: Recipes, demo_seed: str | None
) -> dict[str, Any]:
    """The cell's summary and wall time (cached in ``<cell_dir>/result.json``)."""
    run_dir = cell_dir(workdir, cell, study)
    done = result_path(workdir, cell, study)
    if os.path.exists(done):
        with open(done, encoding="utf-8") as f:
            return json.load(f)
    seed = seed_checkpoint(workdir, cell.depth, study, recipes, demo_seed)
    print(f"== {cell.name}", flush=True)
    began = time.perf_counter()
    config = cell_config(cell, study, recipes, seed)
    summary = train_fl.train(config, run_dir, _ROUND_STEPS)
    if summary["rounds"] < config.fl.rounds:  # SIGINT/SIGTERM: saved, not finished
        raise StudyStopped(
            f"{cell.name} stopped after {summary['rounds']} of "
            f"{config.fl.rounds} rounds; run the study again to resume it."
        )
    result = {
        **summary,
        **dataclasses.asdict(cell),
        "seconds": time.perf_counter() - began,
        "ended": time.time(),
    }
    utils.write_json(done, result)
    return result


@contextlib.contextmanager
def compilation_cache(workdir: str) -> Iterator[None]:
    """JAX's persistent compilation cache in ``<workdir>/xla_cache`` while the context is
    open: cells that lower to the same round step (same method, depth, server and cohort;
    any σ_DP and seed) compile it once, across processes. On exit the process's own cache
    settings are back."""
    saved = cli.compilation_cache_settings()
    cli.set_compilation_cache(os.path.join(workdir, "xla_cache"))
    try:
        yield
    finally:
        cli.set_compilation_cache(*saved)
