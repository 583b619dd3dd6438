"""The replication study's design: the clipping methods, the noise levels, the seeds and
the axes (:class:`Study`), each federated run of it (:class:`Cell`) and its id, and the
stages that list the cells (``python -m experiments.replicate``'s docstring says what each
stage measures)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from fl_dp_asr.models import asr
from fl_dp_asr.models.config import get_model_config

# method name → dp.* settings (σ_DP comes from the cell). The paper's rows.
METHODS: dict[str, dict[str, Any]] = {
    "no DP": dict(clipping="none", sigma_dp=None),
    "global": dict(clipping="global"),
    "per-layer uniform": dict(clipping="per_layer", allocation="uniform"),
    "per-layer by dim": dict(clipping="per_layer", allocation="by_dim"),
    "rescale per-layer": dict(clipping="rescale_per_layer", allocation="by_dim"),
    "adaptive global": dict(clipping="global", target_unclipped_quantile=0.5),
    "adaptive per-layer": dict(
        clipping="per_layer", allocation="by_dim", layers="module", target_unclipped_quantile=0.5
    ),
}
KEY_METHODS = ("global", "per-layer by dim")  # the paper's key comparison
DEMO_DEPTH = get_model_config("tiny").num_blocks  # blocks of the demo's seed model
# The paper's noise levels σ_DP = 1e-5 and 3e-6 on its D = 255.8 M parameters. What sets a
# layer's S/N is the noise per coordinate relative to the clipping budget, σ_DP·√D: ≈ 0.16
# and 0.048 there. A model with fewer parameters needs σ_DP = that / √D to match it.
PAPER_PARAMS = 255.8e6
PAPER_SIGMAS = (1e-5, 3e-6)
PAPER_NOISE_PER_COORD = tuple(s * PAPER_PARAMS**0.5 for s in PAPER_SIGMAS)


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
    key_seeds: int = 3  # seeds of the key comparison at the highest σ_DP
    rounds: int = 20  # evaluated at the seed and after the last round
    curve_rounds: int = 60  # the runs that show where training levels off ...
    curve_every: int = 10  # ... evaluated every this many rounds
    # To fit 2 h on 2 cores (2026-12-01): the no-DP curve only (the key comparison at 60
    # rounds was measured on 2026-11-28, docs/replication.md), cohorts 16 and 32, depths 4
    # and 8 at the highest σ_DP only.
    curve_methods: tuple[str, ...] = ("no DP",)  # (noisy ones at the top σ_DP)
    cohort: int = 16
    cohorts: tuple[int, ...] = (16, 32)
    depths: tuple[int, ...] = (DEMO_DEPTH, 8)
    depth_sigmas: tuple[float, ...] = (1e-1,)  # σ_DP of the key methods along depth
    adam: tuple[str, ...] = KEY_METHODS
    # The paper's comparison at depth (issue 25): 16 blocks at the tiny width, at the paper's
    # σ_DP·√D, at the grid's highest σ_DP (global loses ≥ 5 CER points at 4 blocks, 4.3 at
    # 16) and at 3× it.
    deep_depths: tuple[int, ...] = (16,)
    deep_noise: tuple[float, ...] = PAPER_NOISE_PER_COORD[:1]  # σ_DP·√D levels
    deep_high: tuple[float, ...] = (1e-1, 3e-1)  # σ_DP levels
    deep_methods: tuple[str, ...] = (
        "no DP",
        "global",
        "per-layer by dim",
        "per-layer uniform",
        "rescale per-layer",
    )
    seed_steps: int | None = None  # central steps of extra-depth seeds (None: the demo's)

    @property
    def top(self) -> float:
        return self.sigmas[-1]


FULL = Study()
QUICK = Study(
    sigmas=(0.0, 3e-2),
    methods=("no DP", *KEY_METHODS),
    seeds=1,
    key_seeds=1,
    rounds=2,
    curve_rounds=4,
    curve_every=2,
    curve_methods=("no DP",),
    cohorts=(),
    depths=(),
    adam=(),
    deep_depths=(),
    seed_steps=20,
)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One federated run."""

    method: str
    sigma_dp: float
    seed: int = 0
    cohort: int = 16
    depth: int = DEMO_DEPTH
    server: str = "lamb"
    rounds: int | None = None  # None: the study's

    @property
    def name(self) -> str:
        method = self.method.replace(" ", "_")
        rounds = f"__T{self.rounds}" if self.rounds else ""
        return (
            f"{method}__s{self.sigma_dp:g}__seed{self.seed}__S{self.cohort}"
            f"__d{self.depth}__{self.server}{rounds}"
        )


def probe_cells(study: Study) -> list[Cell]:
    return [Cell("no DP", 0.0, cohort=study.cohort), Cell("global", study.top, cohort=study.cohort)]


def curve_cells(study: Study) -> list[Cell]:
    return [
        Cell(
            method,
            0.0 if method == "no DP" else study.top,
            cohort=study.cohort,
            rounds=study.curve_rounds,
        )
        for method in study.curve_methods
    ]


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
    return [
        Cell(m, study.top, seed, study.cohort, server="adam")
        for m in study.adam
        for seed in range(study.seeds)
    ]


def cohort_cells(study: Study) -> list[Cell]:
    return [Cell("per-layer by dim", study.top, 0, cohort) for cohort in study.cohorts]


def depth_cells(study: Study) -> list[Cell]:
    no_dp = [
        Cell("no DP", 0.0, seed, study.cohort, depth)
        for depth in study.depths
        for seed in range(study.seeds)
    ]
    return no_dp + [
        Cell(method, sigma, seed, study.cohort, depth)
        for sigma in reversed(study.depth_sigmas)
        for depth in study.depths
        for method in KEY_METHODS
        for seed in range(study.seeds)
    ]


@functools.cache
def num_params(depth: int) -> int:
    """D, the parameter count of the study's model (the tiny width) with ``depth`` blocks."""
    return asr.count_params(asr.abstract_params(get_model_config("tiny", num_blocks=depth)))


def matched_sigma(noise_per_coordinate: float, params: float) -> float:
    """σ_DP that gives ``noise_per_coordinate`` = σ_DP·√D on ``params`` = D parameters,
    rounded to 2 significant digits (it names the cell)."""
    return float(f"{noise_per_coordinate / params**0.5:.2g}")


def deep_sigmas(study: Study, depth: int) -> tuple[float, ...]:
    """σ_DP levels of the deep stage at ``depth``: the paper-matched ones, then ``deep_high``."""
    return (*(matched_sigma(n, num_params(depth)) for n in study.deep_noise), *study.deep_high)


def deep_cells(study: Study) -> list[Cell]:
    """Seed by seed (a study stopped early has every row of seed 0), the highest σ_DP first."""
    cells = [
        Cell(method, 0.0 if method == "no DP" else sigma, seed, study.cohort, depth)
        for depth in study.deep_depths
        for seed in range(study.seeds)
        for sigma in reversed(deep_sigmas(study, depth))
        for method in study.deep_methods
    ]
    return list(dict.fromkeys(cells))  # no DP: once per depth and seed


STAGES = {
    "probe": probe_cells,
    "curve": curve_cells,
    "grid": grid_cells,
    "adam": adam_cells,
    "cohort": cohort_cells,
    "depth": depth_cells,
    "deep": deep_cells,
}


def study_cells(study: Study, stages: Sequence[str]) -> list[Cell]:
    """Every cell of ``stages`` once, in stage order (a cell of two stages: at the first)."""
    cells: list[Cell] = []
    for stage in stages:
        cells += [cell for cell in STAGES[stage](study) if cell not in cells]
    return cells


def cell_id(cell: Cell, study: Study) -> str:
    """The cell's id (``--cell``) and its directory's name in ``<workdir>/cells``: its name
    and its number of rounds (a study with other rounds does not reuse it)."""
    return cell.name if cell.rounds else f"{cell.name}__T{study.rounds}"


def describe(cell: Cell, study: Study) -> str:
    """What the cell runs, in words (``--list-cells``)."""
    noise = "" if cell.method == "no DP" else f", σ_DP = {cell.sigma_dp:g}"
    return (
        f"{cell.method}{noise}, seed {cell.seed}, cohort {cell.cohort}, {cell.depth} "
        f"blocks, {cell.server.upper()} server, {cell.rounds or study.rounds} rounds"
    )


def find_cell(cells: Sequence[Cell], study: Study, wanted: str) -> Cell:
    """The cell of ``cells`` whose id is ``wanted``.

    Raises:
        ValueError: no such cell; the message lists the valid ids.
    """
    by_id = {cell_id(cell, study): cell for cell in cells}
    if wanted not in by_id:
        raise ValueError(
            f"unknown cell {wanted!r}; the {len(by_id)} cells of these stages "
            "(--list-cells) are:\n" + "\n".join(by_id)
        )
    return by_id[wanted]
