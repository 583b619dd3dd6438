r"""The paper's clipping comparison at CPU scale: methods × σ_DP × seeds, plus depth and cohort.

    python -m experiments.replicate [--quick] [--workdir runs/replicate] [--stages ...]
        [--methods "global,per-layer by dim"]

Every cell is one federated run of the demo recipe (``experiments/configs/fl_dp.py:demo``:
Poisson cohorts of an expected 16 of the 300 synthetic Common Voice-part users, LAMB server)
from the same seed model, changing only the clipping method, σ_DP (noise std on the cohort
mean / C), the seed of the run, and — for the two extra axes — the simulated cohort size and
the depth of the model. Cells are cached (``<workdir>/cells/<name>__T<rounds>/result.json``): an
interrupted study resumes where it stopped, and a larger study reuses a smaller one's cells.

Stages (``--stages``, in this order):

- ``probe``: no DP and global clipping at the highest σ_DP on one seed: whether global
  clipping loses ≥ 5 CER points (the condition that the experiment can detect a difference).
- ``curve``: no DP, and the key comparison at the highest σ_DP, for ``curve_rounds`` rounds,
  evaluated along the way: where training levels off at this scale, and whether the
  comparison at ``rounds`` still holds there.
- ``grid``: no DP and the key methods × ``sigmas`` × seed (3 seeds for global vs per-layer by
  dim at the highest σ_DP); the other methods × ``side_sigmas`` × seed.
- ``adam``: Adam instead of LAMB (no layer-wise normalization) for global and per-layer by
  dim at the highest σ_DP.
- ``cohort``: per-layer by dim at the highest σ_DP with simulated cohorts ``cohorts``.
- ``depth``: seed models of ``depths`` blocks at the tiny width (trained centrally once,
  cached), each fine-tuned with no DP, and global and per-layer by dim at ``depth_sigmas``.
- ``deep``: the paper's comparison (``deep_methods``) on seed models of ``deep_depths``
  blocks, at the noise per coordinate of the paper (σ_DP·√D = ``deep_noise``, D = the
  model's parameter count; σ_DP = 1e-5 at D = 255.8 M gives 0.16) and at the highest σ_DP.
  Run alone (``--stages deep``), it rewrites only its own section of the report.

Writes ``docs/replication.md`` (tables, plots in ``docs/replication/``, the per-layer
signal/noise analysis) and the README's ``replication:begin/end`` block.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import statistics
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections

from experiments import markers, plots, train_central, train_fl
from experiments.configs import central, fl_dp
from fl_dp_asr.dp.policy import DPConfig
from fl_dp_asr.models import asr
from fl_dp_asr.models.config import get_model_config
from fl_dp_asr.train import cli, utils

# method name → dp.* settings (σ_DP comes from the cell). The paper's rows.
METHODS: dict[str, dict[str, Any]] = {
    "no DP": dict(clipping="none", sigma_dp=None),
    "global": dict(clipping="global"),
    "per-layer uniform": dict(clipping="per_layer", allocation="uniform"),
    "per-layer by dim": dict(clipping="per_layer", allocation="by_dim"),
    "rescale per-layer": dict(clipping="rescale_per_layer", allocation="by_dim"),
    "adaptive global": dict(clipping="global", target_unclipped_quantile=0.5),
    "adaptive per-layer": dict(clipping="per_layer", allocation="by_dim", layers="module",
                               target_unclipped_quantile=0.5),
}
KEY_METHODS = ("global", "per-layer by dim")   # the paper's key comparison
ADAM_LEARNING_RATE = 1e-3   # the Adam rows' server learning rate (LAMB: the recipe's)
# Adaptive rows: the clipped-count noise multiplier z_b is at least this many times the
# run's z, so the deltas keep z_Δ = z/√(1 − 1/3²) ≤ 1.06·z (the fixed rows' noise, +6 %).
COUNT_NOISE_RATIO = 3.0
DEMO_DEPTH = get_model_config("tiny").num_blocks  # blocks of the demo's seed model
# The paper's noise levels σ_DP = 1e-5 and 3e-6 on its D = 255.8 M parameters. What sets a
# layer's S/N is the noise per coordinate relative to the clipping budget, σ_DP·√D: ≈ 0.16
# and 0.048 there. A model with fewer parameters needs σ_DP = that / √D to match it.
PAPER_PARAMS = 255.8e6
PAPER_SIGMAS = (1e-5, 3e-6)
PAPER_NOISE_PER_COORD = tuple(s * PAPER_PARAMS ** 0.5 for s in PAPER_SIGMAS)
BEGIN, END = "<!-- replication:begin -->", "<!-- replication:end -->"
# The hand-written analysis in docs/replication.md, kept when the study rewrites the file.
ANALYSIS_BEGIN, ANALYSIS_END = "<!-- analysis:begin -->", "<!-- analysis:end -->"
# The deep stage's section: ``--stages deep`` alone rewrites only this block of the report.
DEEP_BEGIN, DEEP_END = "<!-- deep:begin -->", "<!-- deep:end -->"
# The GPU preset's section (experiments.device_study), written by hand from its report.
DEVICE_BEGIN, DEVICE_END = "<!-- device:begin -->", "<!-- device:end -->"
# Blocks a regeneration keeps when its own text leaves them empty.
KEPT_BLOCKS = ((ANALYSIS_BEGIN, ANALYSIS_END), (DEEP_BEGIN, DEEP_END),
               (DEVICE_BEGIN, DEVICE_END))


@dataclasses.dataclass(frozen=True)
class Study:
    """What to run. ``sigmas`` include 0 (clipping, no noise); the last is the highest."""
    sigmas: tuple[float, ...] = (0.0, 1e-3, 1e-2, 1e-1)
    methods: tuple[str, ...] = tuple(METHODS)
    # σ_DP of the rows beyond no DP and the key comparison: the full sweep of every row does
    # not fit the 2 h budget on 2 cores. 1e-2 is the level where part of the signal survives
    # (module S/N 0.01–0.4; at 1e-1 every module is below 0.04).
    side_sigmas: tuple[float, ...] = (1e-2,)
    seeds: int = 2
    key_seeds: int = 3          # seeds of the key comparison at the highest σ_DP
    rounds: int = 20            # evaluated at the seed and after the last round
    curve_rounds: int = 60      # the runs that show where training levels off ...
    curve_every: int = 10       # ... evaluated every this many rounds
    # To fit 2 h on 2 cores (2026-12-01): the no-DP curve only (the key comparison at 60
    # rounds was measured on 2026-11-28, docs/replication.md), cohorts 16 and 32, depths 4
    # and 8 at the highest σ_DP only.
    curve_methods: tuple[str, ...] = ("no DP",)   # (noisy ones at the top σ_DP)
    cohort: int = 16
    cohorts: tuple[int, ...] = (16, 32)
    depths: tuple[int, ...] = (DEMO_DEPTH, 8)
    depth_sigmas: tuple[float, ...] = (1e-1,)   # σ_DP of the key methods along depth
    adam: tuple[str, ...] = KEY_METHODS
    # The paper's comparison at depth (issue 25): 16 blocks at the tiny width, at the paper's
    # σ_DP·√D, at the grid's highest σ_DP (global loses ≥ 5 CER points at 4 blocks, 4.3 at
    # 16) and at 3× it.
    deep_depths: tuple[int, ...] = (16,)
    deep_noise: tuple[float, ...] = PAPER_NOISE_PER_COORD[:1]   # σ_DP·√D levels
    deep_high: tuple[float, ...] = (1e-1, 3e-1)                  # σ_DP levels
    deep_methods: tuple[str, ...] = ("no DP", "global", "per-layer by dim", "per-layer uniform",
                                     "rescale per-layer")
    seed_steps: int | None = None   # central steps of extra-depth seeds (None: the demo's)

    @property
    def top(self) -> float:
        return self.sigmas[-1]


FULL = Study()
QUICK = Study(sigmas=(0.0, 3e-2), methods=("no DP", *KEY_METHODS), seeds=1, key_seeds=1,
              rounds=2, curve_rounds=4, curve_every=2, curve_methods=("no DP",), cohorts=(),
              depths=(), adam=(), deep_depths=(),
              seed_steps=20)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One federated run."""
    method: str
    sigma_dp: float
    seed: int = 0
    cohort: int = 16
    depth: int = DEMO_DEPTH
    server: str = "lamb"
    rounds: int | None = None   # None: the study's

    @property
    def name(self) -> str:
        method = self.method.replace(" ", "_")
        rounds = f"__T{self.rounds}" if self.rounds else ""
        return (f"{method}__s{self.sigma_dp:g}__seed{self.seed}__S{self.cohort}"
                f"__d{self.depth}__{self.server}{rounds}")


def probe_cells(study: Study) -> list[Cell]:
    return [Cell("no DP", 0.0, cohort=study.cohort),
            Cell("global", study.top, cohort=study.cohort)]


def curve_cells(study: Study) -> list[Cell]:
    return [Cell(method, 0.0 if method == "no DP" else study.top, cohort=study.cohort,
                 rounds=study.curve_rounds) for method in study.curve_methods]


def grid_cells(study: Study) -> list[Cell]:
    cells = [Cell("no DP", 0.0, seed, study.cohort) for seed in range(study.seeds)]
    for method in study.methods:
        if method == "no DP":
            continue
        for sigma in study.sigmas if method in KEY_METHODS else study.side_sigmas:
            key = method in KEY_METHODS and sigma == study.top
            seeds = study.key_seeds if key else study.seeds
            cells += [Cell(method, sigma, seed, study.cohort) for seed in range(seeds)]
    return cells


def adam_cells(study: Study) -> list[Cell]:
    return [Cell(m, study.top, seed, study.cohort, server="adam") for m in study.adam
            for seed in range(study.seeds)]


def cohort_cells(study: Study) -> list[Cell]:
    return [Cell("per-layer by dim", study.top, 0, cohort) for cohort in study.cohorts]


def depth_cells(study: Study) -> list[Cell]:
    no_dp = [Cell("no DP", 0.0, seed, study.cohort, depth)
             for depth in study.depths for seed in range(study.seeds)]
    return no_dp + [Cell(method, sigma, seed, study.cohort, depth)
                    for sigma in reversed(study.depth_sigmas) for depth in study.depths
                    for method in KEY_METHODS for seed in range(study.seeds)]


@functools.cache
def num_params(depth: int) -> int:
    """D, the parameter count of the study's model (the tiny width) with ``depth`` blocks."""
    return asr.count_params(asr.abstract_params(get_model_config("tiny", num_blocks=depth)))


def matched_sigma(noise_per_coordinate: float, params: float) -> float:
    """σ_DP that gives ``noise_per_coordinate`` = σ_DP·√D on ``params`` = D parameters,
    rounded to 2 significant digits (it names the cell)."""
    return float(f"{noise_per_coordinate / params ** 0.5:.2g}")


def deep_sigmas(study: Study, depth: int) -> tuple[float, ...]:
    """σ_DP levels of the deep stage at ``depth``: the paper-matched ones, then ``deep_high``."""
    return (*(matched_sigma(n, num_params(depth)) for n in study.deep_noise), *study.deep_high)


def deep_cells(study: Study) -> list[Cell]:
    """Seed by seed (a study stopped early has every row of seed 0), the highest σ_DP first."""
    cells = [Cell(method, 0.0 if method == "no DP" else sigma, seed, study.cohort, depth)
             for depth in study.deep_depths for seed in range(study.seeds)
             for sigma in reversed(deep_sigmas(study, depth)) for method in study.deep_methods]
    return list(dict.fromkeys(cells))     # no DP: once per depth and seed


STAGES = {"probe": probe_cells, "curve": curve_cells, "grid": grid_cells, "adam": adam_cells,
          "cohort": cohort_cells, "depth": depth_cells, "deep": deep_cells}


# ------------------------------------------------------------------ running cells


class Recipes(NamedTuple):
    """Factories of the base configs every cell changes (tests pass small-corpus ones)."""
    central: Callable[[], ml_collections.ConfigDict] = functools.partial(central.get_config,
                                                                        "demo")
    fl: Callable[[], ml_collections.ConfigDict] = functools.partial(fl_dp.get_config, "demo")


def seed_checkpoint(workdir: str, depth: int, study: Study, recipes: Recipes,
                    demo_seed: str | None) -> str:
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
    summary = train_central.train(config, run_dir)   # resumes if interrupted
    utils.write_json(done, {**summary, "seconds": time.perf_counter() - began})
    return os.path.join(run_dir, "checkpoints")


def wall_seconds(results: Sequence[dict], workdir: str, study: Study) -> float:
    """Wall time the cells took: the union of their [end − seconds, end] intervals (cells
    of parallel workers overlap; a study resumed over several calls adds up its calls).
    A cell's end is its ``ended`` time, else its result file's modification time."""
    intervals = []
    for result in results:
        cell = Cell(**{f.name: result[f.name] for f in dataclasses.fields(Cell)})
        ended = result.get("ended") or os.path.getmtime(_result_path(workdir, cell, study))
        intervals.append((ended - result["seconds"], ended))
    total, reach = 0.0, -float("inf")
    for start, end in sorted(intervals):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def seed_seconds(workdir: str, study: Study) -> float:
    """Wall time of the seed models this study trained itself (not the demo's), seconds."""
    total = 0.0
    for depth in {DEMO_DEPTH, *study.depths, *study.deep_depths}:
        done = os.path.join(workdir, "seeds", f"depth{depth}", "seed.json")
        if os.path.exists(done):
            with open(done, encoding="utf-8") as f:
                total += json.load(f).get("seconds", 0.0)
    return total


def cell_config(cell: Cell, study: Study, recipes: Recipes,
                seed: str) -> ml_collections.ConfigDict:
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
        config.dp.target_cohort = None    # no noise: no ε to extrapolate
    elif config.dp.target_cohort is not None:  # same S', same q = S/K as simulated
        config.dp.target_population = round(config.dp.target_population * base_cohort
                                            / cell.cohort)
    return config


def count_stddev_for_ratio(dp: DPConfig, cohort: float, num_bounds: int) -> float:
    """σ_b of an adaptive row: ``dp``'s own (default S/20), raised where needed so that the
    count's z_b = 2σ_b/√H is ≥ ``COUNT_NOISE_RATIO``·z.

    At σ_DP = z/S ≥ 1/(10√H) the default leaves nothing for the deltas (z_b ≤ z) at any S:
    the count noise, as a fraction of the cohort, then grows with σ_DP (the table's note).
    """
    z = dp.resolve_noise_multiplier(cohort)
    return max(dp.count_stddev(cohort), COUNT_NOISE_RATIO * z * num_bounds ** 0.5 / 2.0)


def adaptive_count_stddev(config: ml_collections.ConfigDict, seed: str) -> float:
    """:func:`count_stddev_for_ratio` for ``config`` (H: the seed model's clip bounds)."""
    dp = train_fl.dp_config(config)
    _, params, _ = utils.load_seed_model(seed, config.model, jax.random.key(0))
    return count_stddev_for_ratio(dp, config.fl.cohort_size, len(dp.initial_clip_bounds(params)))


def cell_dir(workdir: str, cell: Cell, study: Study) -> str:
    """Where a cell runs: its name and its number of rounds (a study with other rounds
    does not reuse it)."""
    return os.path.join(workdir, "cells",
                        cell.name if cell.rounds else f"{cell.name}__T{study.rounds}")


class StudyStopped(RuntimeError):
    """A cell's run stopped before its last round (a signal); it is not cached."""


# This process's jitted round steps: cells of one program (any σ_DP, seed) reuse one.
_ROUND_STEPS: dict[str, Any] = {}


def run_cell(cell: Cell, study: Study, workdir: str, recipes: Recipes,
             demo_seed: str | None) -> dict[str, Any]:
    """The cell's summary and wall time (cached in ``<cell_dir>/result.json``)."""
    run_dir = cell_dir(workdir, cell, study)
    done = _result_path(workdir, cell, study)
    if os.path.exists(done):
        with open(done, encoding="utf-8") as f:
            return json.load(f)
    seed = seed_checkpoint(workdir, cell.depth, study, recipes, demo_seed)
    print(f"== {cell.name}", flush=True)
    began = time.perf_counter()
    config = cell_config(cell, study, recipes, seed)
    summary = train_fl.train(config, run_dir, _ROUND_STEPS)
    if summary["rounds"] < config.fl.rounds:    # SIGINT/SIGTERM: saved, not finished
        raise StudyStopped(f"{cell.name} stopped after {summary['rounds']} of "
                           f"{config.fl.rounds} rounds; run the study again to resume it.")
    result = {**summary, **dataclasses.asdict(cell), "seconds": time.perf_counter() - began,
              "ended": time.time()}
    utils.write_json(done, result)
    return result


def run_study(study: Study, stages: Sequence[str], workdir: str, recipes: Recipes = Recipes(),
              demo_seed: str | None = None, cached_only: bool = False,
              workers: int = 1) -> list[dict[str, Any]]:
    """Every cell of ``stages`` once (cached cells are read back), in stage order;
    ``cached_only``: only the cells already run (a partial study's report); ``workers``:
    cells run by this many processes at once (:func:`run_in_parallel`)."""
    cells: list[Cell] = []
    for stage in stages:
        cells += [cell for cell in STAGES[stage](study) if cell not in cells]
    if cached_only:
        cells = [c for c in cells if os.path.exists(_result_path(workdir, c, study))]
    elif workers > 1:
        run_in_parallel(cells, study, workdir, recipes, demo_seed, workers)
    return [run_cell(cell, study, workdir, recipes, demo_seed) for cell in cells]


# ------------------------------------------------------------------ parallel cells


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


def _program(cell: Cell) -> tuple:
    """What decides a cell's compiled round step (σ_DP and the seed are arguments of it)."""
    return cell.method, cell.depth, cell.server, cell.cohort


def next_cell(pending: Sequence[Cell], done: Sequence[Cell], running: Sequence[Cell]
              ) -> Cell | None:
    """The first pending cell whose round step is not being compiled for the first time by
    a running cell (``None``: wait for one to finish)."""
    compiling = {_program(c) for c in running} - {_program(c) for c in done}
    return next((c for c in pending if _program(c) not in compiling), None)


def _result_path(workdir: str, cell: Cell, study: Study) -> str:
    return os.path.join(cell_dir(workdir, cell, study), "result.json")


def _work(cells: list[Cell], study: Study, workdir: str, recipes: Recipes,
          demo_seed: str | None, claims: str) -> None:
    """One worker: claims and runs cells until none is left. A cell whose round step is
    being compiled by another worker for the first time waits (the other cells go first),
    so that no two workers compile the same program."""
    with compilation_cache(workdir):
        _claim_and_run(cells, study, workdir, recipes, demo_seed, claims)


def _claim_and_run(cells: list[Cell], study: Study, workdir: str, recipes: Recipes,
                   demo_seed: str | None, claims: str) -> None:
    def claim_path(cell):
        return os.path.join(claims, os.path.basename(cell_dir(workdir, cell, study)))

    def claimed(cell):
        return os.path.exists(claim_path(cell))

    while True:
        done = [c for c in cells if os.path.exists(_result_path(workdir, c, study))]
        pending = [c for c in cells if c not in done and not claimed(c)]
        if not pending:
            return
        cell = next_cell(pending, done, [c for c in cells if claimed(c) and c not in done])
        if cell is None:
            time.sleep(2.0)
            continue
        try:     # the claim: a file only one process can create
            os.close(os.open(claim_path(cell), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        run_cell(cell, study, workdir, recipes, demo_seed)


def run_in_parallel(cells: list[Cell], study: Study, workdir: str, recipes: Recipes,
                    demo_seed: str | None, workers: int) -> None:
    """Runs the missing ``cells`` with ``workers`` processes (this one and ``workers − 1``
    spawned ones). The seed models are trained first, here, one at a time, and the cells'
    data is prepared here (``utils.prepare_data``: workers that each found the corpus
    missing would generate it at once into the same directory, e.g. on a machine where only
    the seed models' checkpoints were carried over).

    On 2 CPU cores one cell keeps ~1.5 cores busy in its rounds and one while it loads,
    compiles and evaluates; two workers fill the gaps. A cell's numbers do not depend on
    how many run beside it.

    Raises:
        RuntimeError: a worker process failed (its traceback is above); the cells it
            finished are cached.
    """
    for depth in sorted({cell.depth for cell in cells}):
        seed_checkpoint(workdir, depth, study, recipes, demo_seed)
    if not all(os.path.exists(_result_path(workdir, c, study)) for c in cells):
        utils.prepare_data(recipes.fl().data)
    claims = os.path.join(workdir, "claims")
    shutil.rmtree(claims, ignore_errors=True)    # this call owns the work dir's cells
    os.makedirs(claims)
    context = multiprocessing.get_context("spawn")   # JAX does not survive a fork
    others = [context.Process(target=_work, args=(cells, study, workdir, recipes, demo_seed,
                                                  claims)) for _ in range(workers - 1)]
    for process in others:
        process.start()
    try:
        _work(cells, study, workdir, recipes, demo_seed, claims)
    except BaseException:       # a signal or an error here: the other workers stop too
        for process in others:
            process.terminate()     # SIGTERM: each saves its cell's checkpoint and exits
        raise
    finally:
        for process in others:
            process.join()
    failed = [p.exitcode for p in others if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {workers} replication workers failed (exit codes "
                           f"{failed}); the finished cells are cached, run again to resume.")


# ------------------------------------------------------------------ tables


def _stats(values: Sequence[float]) -> str:
    points = [100 * v for v in values]
    if len(points) == 1:
        return f"{points[0]:.1f}"
    return f"{statistics.mean(points):.1f} ± {statistics.stdev(points):.1f}"


def errors_cell(runs: list[dict], with_count: bool = False) -> str:
    """A table cell: final CER and WER over ``runs`` ("–" when none ran)."""
    if not runs:
        return "–"
    count = f" (n={len(runs)})" if with_count else ""
    return (f"CER {_stats([r['final_cer'] for r in runs])} · WER "
            f"{_stats([r['final_wer'] for r in runs])}{count}")


def mean_cer(runs: list[dict]) -> float:
    """Final CER over ``runs``, mean, in points."""
    return 100 * statistics.mean(r["final_cer"] for r in runs)


def select(results: list[dict], **match) -> list[dict]:
    """The cell results whose fields equal ``match`` (e.g. ``method="global", depth=16``);
    the curve cells (``rounds`` set) only when asked for."""
    match.setdefault("rounds", None)   # the curve cells run longer: not part of the tables
    return [r for r in results if all(r[k] == v for k, v in match.items())]


def _grid_group(results: list[dict], study: Study, **match) -> list[dict]:
    """:func:`select` within the main grid: LAMB, the demo's depth, the study's cohort."""
    return select(results, **{"server": "lamb", "depth": DEMO_DEPTH, "cohort": study.cohort,
                              **match})


def grid_table(results: list[dict], study: Study) -> str:
    """Rows = methods, columns = σ_DP: held-out CER and WER, mean ± std over seeds."""
    lines = ["| method | " + " | ".join(_level(s, DEMO_DEPTH) for s in study.sigmas) + " |",
             "|---" * (len(study.sigmas) + 1) + "|"]
    for method in study.methods:
        cells = []
        for sigma in study.sigmas:
            runs = _grid_group(results, study, method=method,
                               **({} if method == "no DP" else {"sigma_dp": sigma}))
            if method == "no DP" and sigma != 0.0:
                cells.append("")
                continue
            cells.append(errors_cell(runs, with_count=True))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    eps = {s: r["extrapolated_epsilon_rdp"] for r in results for s in [r["sigma_dp"]]
           if r.get("extrapolated_epsilon_rdp") is not None}
    lines.append("| ε (extrapolated, RDP) | " + " | ".join(
        f"{eps[s]:.2f}" if s in eps else "∞ (no noise)" for s in study.sigmas) + " |")
    return "\n".join(lines) + "\n"


def axis_table(results: list[dict], axis: str, values: Sequence[Any], methods: Sequence[str],
               sigma: float, **fixed) -> str:
    """CER/WER of ``methods`` along ``axis`` (cohort or depth) at σ_DP = ``sigma``."""
    lines = ["| method | " + " | ".join(f"{axis} {v}" for v in values) + " |",
             "|---" * (len(values) + 1) + "|"]
    for method in methods:
        cells = []
        for value in values:
            match = {"server": "lamb", **fixed, axis: value}
            if method != "no DP":
                match["sigma_dp"] = sigma
            runs = select(results, method=method, **match)
            cells.append(errors_cell(runs))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ per-layer analysis

SIGNAL, NOISE, DELTA = ("train/layer_signal_norms/", "train/layer_noise_norms/",
                        "train/layer_delta_norms/")


def module_means(records: list[dict], prefix: str) -> dict[str, float]:
    """Per module (a leaf name without its last part, e.g. ``block_00/attention/query``):
    the norm over its leaves of the per-layer metric ``prefix``, averaged over rounds."""
    per_round: dict[str, list[float]] = {}
    for record in records:
        squares: dict[str, float] = {}
        for key, value in record.items():
            if key.startswith(prefix):
                module = key[len(prefix):].rsplit("/", 1)[0]
                squares[module] = squares.get(module, 0.0) + value ** 2
        for module, square in squares.items():
            per_round.setdefault(module, []).append(square ** 0.5)
    return {module: statistics.mean(values) for module, values in per_round.items()}


def _snr(signal: dict[str, float], noise: dict[str, float]) -> dict[str, float]:
    """Per module with noise: signal over noise (modules without noise are left out)."""
    return {module: signal.get(module, 0.0) / value for module, value in noise.items() if value}


def module_snr(records: list[dict]) -> dict[str, float]:
    """Per module: signal ‖Σclip(Δ)_h‖/S over noise ‖ξ_h‖/S (round means; noisy runs)."""
    return _snr(module_means(records, SIGNAL), module_means(records, NOISE))


def depth_table(results: list[dict], study: Study, sigma: float) -> str:
    """Per depth at σ_DP = ``sigma``: CER of no DP and the key methods (mean over seeds),
    per-layer − global, and how unequal the layers are under each: the range of the
    per-module S/N (seed 0). Under global clipping every coordinate gets the same noise,
    so its S/N range is the range of the modules' per-coordinate signal."""
    global_, per_layer = KEY_METHODS
    lines = [f"| blocks | seed model | no DP | {global_} | {per_layer} | {per_layer} − {global_} | "
             f"module S/N, {global_}: min – max (max/min) | module S/N, {per_layer} |",
             "|---" * 8 + "|"]

    def seed0(runs: list[dict]) -> dict:
        return next(r for r in runs if r["seed"] == 0)

    for depth in study.depths:
        fixed = dict(server="lamb", depth=depth, cohort=study.cohort)
        runs = {m: select(results, method=m, sigma_dp=sigma, **fixed) for m in KEY_METHODS}
        base = select(results, method="no DP", **fixed)
        if not (base and all(runs.values())):
            continue
        gap = mean_cer(runs[per_layer]) - mean_cer(runs[global_])
        lines.append(f"| {depth} | CER {100 * base[0]['seed_cer']:.1f} | {errors_cell(base)} | "
                     f"{errors_cell(runs[global_])} | {errors_cell(runs[per_layer])} | "
                     f"{gap:+.1f} | {snr_range(seed0(runs[global_]))} | "
                     f"{snr_range(seed0(runs[per_layer]))} |")
    return "\n".join(lines) + "\n"


def signal_noise_table(runs: dict[str, list[dict]]) -> str:
    """Per module and run: mean client delta ‖Δ_h‖, signal ‖Σclip(Δ)_h‖/S, noise ‖ξ_h‖/S,
    and signal/noise, averaged over the rounds."""
    columns = {name: (module_means(r, DELTA), module_means(r, SIGNAL), module_means(r, NOISE))
               for name, r in runs.items()}
    modules = sorted(next(iter(columns.values()))[0])
    head = "| module | " + " | ".join(f"{n}: ‖Δ‖ · signal · noise · S/N" for n in runs) + " |"
    lines = [head, "|---" * (len(runs) + 1) + "|"]
    for module in modules:
        cells = []
        for delta, signal, noise in columns.values():
            ratios = _snr(signal, noise)
            snr = f"{ratios[module]:#.2g}" if module in ratios else "∞"
            cells.append(f"{delta.get(module, 0.0):.2e} · {signal.get(module, 0.0):.2e} · "
                         f"{noise.get(module, 0.0):.2e} · **{snr}**")
        lines.append(f"| {module} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def noise_per_coordinate_table(study: Study) -> str:
    """σ_DP·√D of the study's σ_DP levels and the paper's, at each depth and the paper's D."""
    depths = sorted({DEMO_DEPTH, *study.depths, *study.deep_depths, 36})
    sizes = [(f"{d} blocks (D = {num_params(d) / 1e6:.2f} M)", num_params(d)) for d in depths]
    sizes.append((f"paper (D = {PAPER_PARAMS / 1e6:.1f} M)", PAPER_PARAMS))
    sigmas = sorted({*(s for s in study.sigmas if s > 0), *PAPER_SIGMAS,
                     *(s for d in study.deep_depths for s in deep_sigmas(study, d))})
    lines = ["| σ_DP | " + " | ".join(name for name, _ in sizes) + " |",
             "|---" * (len(sizes) + 1) + "|"]
    for sigma in sigmas:
        lines.append(f"| {sigma:g} | " + " | ".join(_digits(sigma * d ** 0.5) for _, d in sizes)
                     + " |")
    return "\n".join(lines) + "\n"


def _digits(value: float) -> str:
    """2 significant digits, without an exponent: 0.0032, 0.16, 30, 1600."""
    return f"{value:.2g}" if value < 100 else f"{float(f'{value:.2g}'):.0f}"


def _level(sigma: float, depth: int) -> str:
    return f"σ_DP = {sigma:g} (σ_DP·√D = {_digits(sigma * num_params(depth) ** 0.5)})"


def snr_range(run: dict) -> str:
    """min – max (max/min) of a noisy run's per-module S/N."""
    snr = module_snr(read_metrics(run)).values()
    return f"{min(snr):.2g} – {max(snr):.2g} ({_digits(max(snr) / min(snr))}×)"


def deep_section(results: list[dict], study: Study) -> str:
    """The ``deep`` stage's report (between :data:`DEEP_BEGIN` and :data:`DEEP_END`): per
    depth, the methods at each σ_DP level (CER/WER over seeds), the per-module S/N range of
    each noisy row and the whole per-module S/N table (seed 0)."""
    if not any(r["depth"] in study.deep_depths for r in results):
        return f"{DEEP_BEGIN}\n{DEEP_END}\n"
    parts = [DEEP_BEGIN, "## Depth at the paper's noise per coordinate", "",
             "What sets a layer's signal-to-noise ratio is the noise per coordinate relative "
             "to the clipping budget, σ_DP·√D (D = number of parameters), not σ_DP alone. "
             f"The paper's σ_DP = {PAPER_SIGMAS[0]:g} and {PAPER_SIGMAS[1]:g} on "
             f"{PAPER_PARAMS / 1e6:.1f} M parameters are σ_DP·√D = "
             f"{PAPER_NOISE_PER_COORD[0]:.2g} and {PAPER_NOISE_PER_COORD[1]:.2g}. "
             "σ_DP·√D of every level:", "", noise_per_coordinate_table(study)]
    for depth in study.deep_depths:
        fixed = dict(server="lamb", depth=depth, cohort=study.cohort)
        levels = deep_sigmas(study, depth)
        if not any(select(results, **fixed, method=m) for m in study.deep_methods):
            continue
        lines = ["| method | " + " | ".join(_level(s, depth) for s in levels) + " |",
                 "|---" * (len(levels) + 1) + "|"]
        for method in study.deep_methods:
            runs = [select(results, method=method, **fixed, **(
                {} if method == "no DP" else {"sigma_dp": sigma})) for sigma in levels]
            lines.append(f"| {method} | " + " | ".join(
                errors_cell(r, with_count=True) for r in runs) + " |")
        seed_model = next(r for r in results if r["depth"] == depth)
        parts += [f"### {depth} blocks (D = {num_params(depth) / 1e6:.2f} M)", "",
                  f"Seed model (trained centrally with the demo's recipe): held-out CER "
                  f"{100 * seed_model['seed_cer']:.1f} %, WER {100 * seed_model['seed_wer']:.1f} "
                  f"%; {study.rounds} rounds, mean ± std over seeds.", "",
                  "\n".join(lines), ""]
        noisy = {(m, s): select(results, method=m, sigma_dp=s, seed=0, **fixed)
                 for s in levels for m in study.deep_methods if m != "no DP"}
        noisy = {k: v[0] for k, v in noisy.items() if v}
        if noisy:
            parts += ["Per-module S/N (signal ‖Σ clip(Δ)_h‖/S over noise ‖ξ_h‖/S, averaged "
                      "over rounds, seed 0), min – max (max/min):", "",
                      "| method | " + " | ".join(_level(s, depth) for s in levels) + " |",
                      "|---" * (len(levels) + 1) + "|"]
            for method in dict.fromkeys(m for m, _ in noisy):
                parts.append(f"| {method} | " + " | ".join(
                    snr_range(noisy[method, s]) if (method, s) in noisy else "–"
                    for s in levels) + " |")
            parts += ["", "<details><summary>Per-module S/N, every module</summary>", "",
                      snr_table({f"{m}, σ_DP = {s:g}": read_metrics(r)
                                 for (m, s), r in noisy.items()}), "</details>", ""]
    return "\n".join(parts + [DEEP_END]) + "\n"


def snr_table(runs: dict[str, list[dict]]) -> str:
    """Per module (rows) and run (columns, named by the keys): S/N, averaged over rounds."""
    snrs = {name: module_snr(records) for name, records in runs.items()}
    modules = sorted({module for snr in snrs.values() for module in snr})
    lines = ["| module | " + " | ".join(snrs) + " |", "|---" * (len(snrs) + 1) + "|"]
    for module in modules:
        lines.append(f"| {module} | " + " | ".join(
            f"{snr[module]:#.2g}" if module in snr else "–" for snr in snrs.values()) + " |")
    return "\n".join(lines) + "\n"


def read_metrics(result: dict) -> list[dict]:
    return plots.read_jsonl(os.path.join(result["workdir"], "metrics.jsonl"))


def _label(result: dict) -> str:
    return result["method"] + (f", σ_DP = {result['sigma_dp']:g}" if result["sigma_dp"] else "")


def plot_curves(curves: list[dict], path: str) -> None:
    """Held-out CER vs round, one line per run (the longer ``curve`` runs)."""
    fig, ax = plots.plt.subplots(figsize=(6, 3.6))
    for result in curves:
        steps, values = plots._series(read_metrics(result), "eval/cer")
        ax.plot(steps, 100 * values, marker="o", label=_label(result))
    ax.set(xlabel="round", ylabel="CER on held-out users (%)", title="CER vs round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    plots.save(fig, path)


def plot_cer_vs_epsilon(results: list[dict], study: Study, path: str) -> None:
    """One line per method: mean final CER vs the extrapolated ε (log x), like the paper's
    WER-vs-ε figure; the no-DP level as a horizontal line."""
    fig, ax = plots.plt.subplots(figsize=(6.5, 4.2))
    for method in study.methods:
        points = []
        for sigma in study.sigmas[1:]:
            runs = _grid_group(results, study, method=method, sigma_dp=sigma)
            if runs and method != "no DP" and runs[0].get("extrapolated_epsilon_rdp"):
                points.append((runs[0]["extrapolated_epsilon_rdp"], mean_cer(runs)))
        if method == "no DP":
            runs = _grid_group(results, study, method=method)
            if runs:
                ax.axhline(mean_cer(runs), color="k", linestyle="--", label="no DP")
        elif points:
            ax.plot(*zip(*sorted(points)), marker="o", label=method)
    ax.set(xscale="log", xlabel="ε (RDP, extrapolated deployment)",
           ylabel="CER on held-out users (%)", title="CER vs ε per clipping method")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    plots.save(fig, path)


def detectability(results: list[dict], study: Study) -> str:
    """Whether global clipping at the highest σ_DP loses ≥ 5 CER points against no DP."""
    base = _grid_group(results, study, method="no DP")
    top = _grid_group(results, study, method="global", sigma_dp=study.top)
    if not (base and top):
        return "Detectability: not measured (run the `probe` stage)."
    gap = mean_cer(top) - mean_cer(base)
    verdict = "met" if gap >= 5 else "NOT met: raise the highest σ_DP"
    return (f"Detectability: at the highest σ_DP = {study.top:g} global clipping loses "
            f"{gap:.1f} CER points against no DP (condition ≥ 5: {verdict}).")


def report(results: list[dict], study: Study, out: str, seconds: float,
           seed_seconds: float = 0.0, recipes: Recipes = Recipes()) -> str:
    """The markdown of ``docs/replication.md``; writes its plots next to it.

    ``seconds``: the federated runs' wall time (:func:`wall_seconds`); ``seed_seconds``:
    the seed models the study trained itself; ``recipes``: the configs the cells change
    (for the header).
    """
    figures = os.path.join(os.path.dirname(out) or ".", "replication")
    os.makedirs(figures, exist_ok=True)
    plot_cer_vs_epsilon(results, study, os.path.join(figures, "cer_vs_epsilon.png"))
    first, fl = results[0], recipes.fl()
    parts = [
        "<!-- generated by python -m experiments.replicate -->",
        "# Replication: global vs per-layer clipping under DP noise, at CPU scale", "",
        f"{len(results)} federated runs, {seconds / 60:.0f} min of wall time, plus "
        f"{seed_seconds / 60:.0f} min of central training for the seed models of other depths "
        f"({(seconds + seed_seconds) / 3600:.2f} h in all, 2 CPU cores). "
        f"Each: the demo recipe for {study.rounds} rounds from the same seed model (held-out "
        f"WER {100 * first['seed_wer']:.1f} %, CER {100 * first['seed_cer']:.1f} %), "
        f"{fl.fl.sampling.capitalize()} cohorts of expected size S = {study.cohort} of "
        f"{first['population']} users, {fl.fl.local_steps} local SGD steps, "
        f"{fl.server.optimizer.upper()} server (lr {fl.server.learning_rate:g}), "
        f"C = {fl.dp.clip_norm:g}. Final CER and WER on the held-out users' utterances, "
        "mean ± std over seeds (n = runs). ε: the extrapolated deployment with the same σ_DP "
        f"and q (S' = {fl.dp.target_cohort:,}, δ = {fl.dp.delta:g}, RDP).", "",
        detectability(results, study), "",
        "## Analysis", "", ANALYSIS_BEGIN, ANALYSIS_END, "",
        "## Methods × σ_DP", "", grid_table(results, study),
        "![CER vs ε](replication/cer_vs_epsilon.png)", ""]
    curves = [r for r in results if r["rounds"] == study.curve_rounds]
    if curves:
        plot_curves(curves, os.path.join(figures, "curves.png"))
        parts += ["## How many rounds: the curves", ""]
        for curve in curves:
            evals = [(r["step"], r["eval/cer"]) for r in read_metrics(curve) if "eval/cer" in r]
            parts += [f"{_label(curve)}: held-out CER by round: " + ", ".join(
                f"{step}: {100 * cer:.1f} %" for step, cer in evals) + ".", ""]
        parts += ["![CER vs round](replication/curves.png)", ""]
    adam = [r for r in results if r["server"] == "adam"]
    if adam:
        parts += ["## Layer-wise normalization: LAMB vs Adam at σ_DP = "
                  f"{study.top:g}", "",
                  axis_table(results, "server", ["lamb", "adam"], study.adam, study.top,
                             depth=DEMO_DEPTH, cohort=study.cohort), ""]
    if any(r["cohort"] != study.cohort for r in results):
        parts += [f"## Simulated cohort size at σ_DP = {study.top:g} (per-layer by dim)", "",
                  axis_table(results, "cohort", study.cohorts, ["per-layer by dim"], study.top,
                             depth=DEMO_DEPTH, seed=0), ""]
    if any(r["depth"] != DEMO_DEPTH for r in results):
        parts += ["## Depth", "",
                  "Seed models of each depth at the tiny width, trained centrally with the "
                  "demo's recipe, then fine-tuned like every other cell. CER points; the S/N "
                  "columns are per module (signal ‖Σ clip(Δ)_h‖/S over noise ‖ξ_h‖/S, "
                  "averaged over rounds, seed 0).", ""]
        for sigma in study.depth_sigmas:
            parts += [f"At σ_DP = {sigma:g}:", "", depth_table(results, study, sigma), ""]
    parts += [deep_section(results, study)]
    noisy = [sigma for sigma in study.sigmas if sigma > 0]
    key_metrics = {}    # σ_DP → key method → the seed-0 run's metrics
    for sigma in sorted({noisy[0], study.top}) if noisy else []:
        key_runs = {m: _grid_group(results, study, method=m, sigma_dp=sigma, seed=0)
                    for m in KEY_METHODS}
        if all(key_runs.values()):
            key_metrics[sigma] = {m: read_metrics(runs[0]) for m, runs in key_runs.items()}
            parts += [f"## Per layer at σ_DP = {sigma:g}: signal vs noise", "",
                      "Per module, averaged over rounds: the mean client delta norm ‖Δ_h‖ "
                      "(before clipping), the signal ‖Σ clip(Δ)_h‖/S and the noise ‖ξ_h‖/S "
                      "on the cohort mean, and their ratio S/N.", "",
                      signal_noise_table(key_metrics[sigma]), ""]
    if study.top in key_metrics:
        for method, records in key_metrics[study.top].items():
            for prefix, what in ((DELTA, "delta_norms"), (plots.BOUND_PREFIX, "clip_bounds")):
                name = f"{what}_{method.replace(' ', '_')}.png"
                plots.plot_layer_norms(records, os.path.join(figures, name),
                                       f"{method}, σ_DP = {study.top:g}: {what}", prefix)
                if os.path.exists(os.path.join(figures, name)):
                    parts += [f"![{method}: {what}](replication/{name})", ""]
    return "\n".join(parts + ["", DEVICE_BEGIN, DEVICE_END, ""])


def write_markdown(text: str, out: str, readme: str | None) -> None:
    """``out`` (atomically) and, if given, the README block between the markers.

    Blocks that ``text`` leaves empty keep what ``out`` had (:data:`KEPT_BLOCKS`): the
    hand-written analysis, the deep stage's section (a study run without it does not erase
    it) and the GPU preset's."""
    old = ""
    if os.path.exists(out):
        with open(out, encoding="utf-8") as f:
            old = f.read()
    for begin, end in KEPT_BLOCKS:
        kept = markers.find_block(old, begin, end)
        if kept and f"{begin}\n{end}" in text:
            text = markers.replace_block(text, begin, end, kept)
    utils.write_text(out, text)
    if readme and os.path.exists(readme):
        with open(readme, encoding="utf-8") as f:
            content = f.read()
        if BEGIN in content:
            table = text.split("## Methods × σ_DP", 1)[-1].split("![", 1)[0].strip()
            utils.write_text(readme, markers.embed(content, BEGIN, END, f"{table}\n"))


def write_deep_section(results: list[dict], study: Study, out: str) -> str:
    """Rewrites only the deep stage's block of ``out`` (inserted before the methods × σ_DP
    tables if ``out`` has none); returns the block."""
    with open(out, encoding="utf-8") as f:
        content = f.read()
    block = deep_section(results, study).rstrip("\n")
    if DEEP_BEGIN in content:
        content = markers.replace_block(content, DEEP_BEGIN, DEEP_END, block)
    else:
        content = content.replace("## Methods × σ_DP", f"{block}\n\n## Methods × σ_DP", 1)
    utils.write_text(out, content)
    return block


def _positive_floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of σ_DP > 0")
    return values


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/replicate")
    parser.add_argument("--seed-checkpoint", default="runs/demo/central/checkpoints")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 σ, 3 rows, 2 rounds")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--methods", help=f"comma-separated subset of the rows: {list(METHODS)}")
    parser.add_argument("--deep-sigmas", type=_positive_floats,
                        help="comma-separated σ_DP levels of the deep stage beyond the paper's "
                        "σ_DP·√D (default: "
                        f"{','.join(f'{s:g}' for s in FULL.deep_high)}; 0.3 alone fits 2 h)")
    parser.add_argument("--cached-only", action="store_true",
                        help="report the cells already run, run nothing")
    parser.add_argument("--workers", type=int, default=2,
                        help="cells run at once (processes; 2 fills 2 CPU cores best)")
    parser.add_argument("--out", help="default: docs/replication.md (--quick: in --workdir)")
    args = parser.parse_args(argv)
    study = QUICK if args.quick else FULL
    if args.methods:
        methods = tuple(args.methods.split(","))
        if set(methods) - set(METHODS):
            parser.error(f"unknown methods {sorted(set(methods) - set(METHODS))}; choose from "
                         f"{list(METHODS)}")
        study = dataclasses.replace(study, methods=methods)
    if args.deep_sigmas:
        study = dataclasses.replace(study, deep_high=args.deep_sigmas)
    stages = args.stages.split(",")
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {list(STAGES)}")
    began = time.perf_counter()
    with compilation_cache(args.workdir):
        results = run_study(study, stages, args.workdir, demo_seed=args.seed_checkpoint,
                            cached_only=args.cached_only, workers=args.workers)
    seconds = wall_seconds(results, args.workdir, study)
    seeds = seed_seconds(args.workdir, study)
    print(f"study: {len(results)} cells, {seconds:.0f} s of wall time ({args.workers} "
          f"workers; {sum(r['seconds'] for r in results):.0f} s summed over cells), "
          f"{seeds:.0f} s of seed models ({time.perf_counter() - began:.0f} s this call)",
          flush=True)
    out = args.out or (os.path.join(args.workdir, "replication.md") if args.quick
                       else "docs/replication.md")
    if stages == ["deep"] and os.path.exists(out):   # only its own section
        print(write_deep_section(results, study, out))
        return
    text = report(results, study, out, seconds, seeds)
    write_markdown(text, out, None if args.quick else "README.md")
    print(text)


if __name__ == "__main__":
    main()
