"""The device study's cells and workers: whole methods dealt to worker processes, each
running its cells in order while the time budget holds them; a cell's outcome (done,
skipped, failed) is a file in its cell directory."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from experiments.device.preset import Preset
from experiments.replication import cell_run, design, tables
from fl_dp_asr.train import utils


def plan_workers(preset: Preset, sigmas: Sequence[float], workers: int) -> list[list[design.Cell]]:
    """The cells of each worker, in order: whole methods (one compiled round step each)
    dealt round-robin; within a method seed by seed, every level per seed, so a run cut
    short has every (method, level) at seed 0 first."""
    plans: list[list[design.Cell]] = [[] for _ in range(min(workers, len(preset.methods)))]
    for index, method in enumerate(preset.methods):
        levels = [0.0] if method == "no DP" else list(sigmas)
        plans[index % len(plans)] += [
            design.Cell(method, sigma, seed, preset.cohort, preset.depth)
            for seed in range(preset.seeds)
            for sigma in levels
        ]
    return plans


# A cell's outcome other than its result.json: {"reason": ...} in its cell directory.
SKIPPED, FAILED = "skipped.json", "failed.json"


def cell_status(
    workdir: str, cell: design.Cell, study_: design.Study
) -> tuple[str, dict[str, Any]]:
    """``("done", result)``, ``("failed" or "skipped", {"reason"})`` or ``("not run", {})``."""
    run_dir = cell_run.cell_dir(workdir, cell, study_)
    for status, name in (("done", "result.json"), ("failed", FAILED), ("skipped", SKIPPED)):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return status, json.load(f)
    return "not run", {}


def next_cell_estimate(result: dict[str, Any]) -> float:
    """A later cell of the same program: this cell's seconds without the first round's
    compilation (first round minus the median round), seconds."""
    rounds = [
        r["train/seconds_per_round"]
        for r in tables.read_metrics(result)
        if "train/seconds_per_round" in r
    ]
    compile_s = rounds[0] - statistics.median(rounds) if rounds else 0.0
    return result["seconds"] - compile_s


def run_worker(
    cells: Sequence[design.Cell],
    study_: design.Study,
    workdir: str,
    recipes_: cell_run.Recipes,
    deadline: float,
    first_cell_s: float,
    compile_cache: bool,
    on_cell: Callable[[], None] = lambda: None,
) -> None:
    """Runs ``cells`` in order; one whose estimate does not fit before ``deadline`` (a
    ``time.time()``) is skipped, one that raises is failed: its reason goes to
    ``skipped.json`` or ``failed.json`` in its cell directory, and the next cell follows
    (one call on a lent GPU returns every cell it could run)."""
    with compilation_cache(workdir, compile_cache):
        estimate = first_cell_s
        for cell in cells:
            if cell_status(workdir, cell, study_)[0] == "done":
                continue
            left = deadline - time.time()
            if left < estimate:
                _note(
                    workdir,
                    cell,
                    study_,
                    SKIPPED,
                    f"budget: {max(left, 0):.0f} s left, the cell needs ~{estimate:.0f} s",
                )
            else:
                try:
                    estimate = next_cell_estimate(
                        cell_run.run_cell(cell, study_, workdir, recipes_, None)
                    )
                except cell_run.StudyStopped:
                    raise
                except Exception as error:  # noqa: BLE001 -- noted; the next cell runs
                    lines = str(error).strip().splitlines()
                    _note(
                        workdir,
                        cell,
                        study_,
                        FAILED,
                        f"{type(error).__name__}: {lines[0][:300] if lines else ''}",
                    )
                    print(f"== {cell.name} FAILED", file=sys.stderr, flush=True)
                    traceback.print_exc()
            on_cell()


def compilation_cache(workdir: str, enabled: bool) -> contextlib.AbstractContextManager:
    """``cell_run.compilation_cache(workdir)``, or nothing when not ``enabled``."""
    return cell_run.compilation_cache(workdir) if enabled else contextlib.nullcontext()


def _note(workdir: str, cell: design.Cell, study_: design.Study, name: str, reason: str) -> None:
    run_dir = cell_run.cell_dir(workdir, cell, study_)
    os.makedirs(run_dir, exist_ok=True)
    utils.write_json(os.path.join(run_dir, name), {"reason": reason})


def run_cells(
    plans: list[list[design.Cell]],
    study_: design.Study,
    workdir: str,
    recipes_: cell_run.Recipes,
    deadline: float,
    first_cell_s: float,
    compile_cache: bool,
    on_cell: Callable[[], None],
) -> None:
    """One plan in this process, or one spawned process per plan; ``on_cell`` after each
    cell (polled from here when the workers are other processes)."""
    if len(plans) == 1:
        run_worker(
            plans[0], study_, workdir, recipes_, deadline, first_cell_s, compile_cache, on_cell
        )
        return
    context = multiprocessing.get_context("spawn")  # JAX does not survive a fork
    processes = [
        context.Process(
            target=run_worker,
            args=(plan, study_, workdir, recipes_, deadline, first_cell_s, compile_cache),
        )
        for plan in plans
    ]
    for process in processes:
        process.start()
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(2.0)
            on_cell()
    finally:
        for process in processes:
            process.terminate()
            process.join()
    on_cell()
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(processes)} device-study workers failed "
            f"(exit codes {failed}); their tracebacks are above."
        )
