"""Scheduling the replication study's cells: all of a study's cells in this process or
in worker processes that claim them one by one (:func:`run_in_parallel`); what they share
is prepared first (:func:`prepare`). A cluster's own scheduler runs cells instead with
``python -m experiments.replicate --cell ID``."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

from experiments.replication import cell_run
from experiments.replication.cell_run import Recipes
from experiments.replication.design import Cell, Study, cell_id, study_cells
from fl_dp_asr.train import utils


def run_study(
    study: Study,
    stages: Sequence[str],
    workdir: str,
    recipes: Recipes = Recipes(),
    demo_seed: str | None = None,
    cached_only: bool = False,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Every cell of ``stages`` once (cached cells are read back), in stage order;
    ``cached_only``: only the cells already run (a partial study's report); ``workers``:
    cells run by this many processes at once (:func:`run_in_parallel`)."""
    cells = study_cells(study, stages)
    if cached_only:
        cells = [c for c in cells if os.path.exists(cell_run.result_path(workdir, c, study))]
    elif workers > 1:
        run_in_parallel(cells, study, workdir, recipes, demo_seed, workers)
    return [cell_run.run_cell(cell, study, workdir, recipes, demo_seed) for cell in cells]


def _program(cell: Cell) -> tuple:
    """What decides a cell's compiled round step (σ_DP and the seed are arguments of it)."""
    return cell.method, cell.depth, cell.server, cell.cohort


def next_cell(
    pending: Sequence[Cell], done: Sequence[Cell], running: Sequence[Cell]
) -> Cell | None:
    """The first pending cell whose round step is not being compiled for the first time by
    a running cell (``None``: wait for one to finish)."""
    compiling = {_program(c) for c in running} - {_program(c) for c in done}
    return next((c for c in pending if _program(c) not in compiling), None)


def _work(
    cells: list[Cell],
    study: Study,
    workdir: str,
    recipes: Recipes,
    demo_seed: str | None,
    claims: str,
) -> None:
    """One worker: claims and runs cells until none is left. A cell whose round step is
    being compiled by another worker for the first time waits (the other cells go first),
    so that no two workers compile the same program."""
    with cell_run.compilation_cache(workdir):
        _claim_and_run(cells, study, workdir, recipes, demo_seed, claims)


def _claim_and_run(
    cells: list[Cell],
    study: Study,
    workdir: str,
    recipes: Recipes,
    demo_seed: str | None,
    claims: str,
) -> None:
    def claim_path(cell):
        return os.path.join(claims, cell_id(cell, study))

    def claimed(cell):
        return os.path.exists(claim_path(cell))

    while True:
        done = [c for c in cells if os.path.exists(cell_run.result_path(workdir, c, study))]
        pending = [c for c in cells if c not in done and not claimed(c)]
        if not pending:
            return
        cell = next_cell(pending, done, [c for c in cells if claimed(c) and c not in done])
        if cell is None:
            time.sleep(2.0)
            continue
        try:  # the claim: a file only one process can create
            os.close(os.open(claim_path(cell), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        cell_run.run_cell(cell, study, workdir, recipes, demo_seed)


def run_in_parallel(
    cells: list[Cell],
    study: Study,
    workdir: str,
    recipes: Recipes,
    demo_seed: str | None,
    workers: int,
) -> None:
    """Runs the missing ``cells`` with ``workers`` processes (this one and ``workers − 1``
    spawned ones), after :func:`prepare`.

    On 2 CPU cores one cell keeps ~1.5 cores busy in its rounds and one while it loads,
    compiles and evaluates; two workers fill the gaps. A cell's numbers do not depend on
    how many run beside it.

    Raises:
        RuntimeError: a worker process failed (its traceback is above); the cells it
            finished are cached.
    """
    prepare(cells, study, workdir, recipes, demo_seed)
    claims = os.path.join(workdir, "claims")
    shutil.rmtree(claims, ignore_errors=True)  # this call owns the work dir's cells
    os.makedirs(claims)
    context = multiprocessing.get_context("spawn")  # JAX does not survive a fork
    others = [
        context.Process(target=_work, args=(cells, study, workdir, recipes, demo_seed, claims))
        for _ in range(workers - 1)
    ]
    for process in others:
        process.start()
    try:
        _work(cells, study, workdir, recipes, demo_seed, claims)
    except BaseException:  # a signal or an error here: the other workers stop too
        for process in others:
            process.terminate()  # SIGTERM: each saves its cell's checkpoint and exits
        raise
    finally:
        for process in others:
            process.join()
    failed = [p.exitcode for p in others if p.exitcode != 0]
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {workers} replication workers failed (exit codes "
            f"{failed}); the finished cells are cached, run again to resume."
        )


def prepare(
    cells: Sequence[Cell], study: Study, workdir: str, recipes: Recipes, demo_seed: str | None
) -> None:
    """What the cells share, made once before they run side by side: the seed models of
    their depths (trained here, one at a time) and, unless every cell is done, their data
    (``utils.prepare_data``: workers that each found the corpus missing would generate it
    at once into the same directory, e.g. on a machine where only the seed models'
    checkpoints were carried over)."""
    for depth in sorted({cell.depth for cell in cells}):
        cell_run.seed_checkpoint(workdir, depth, study, recipes, demo_seed)
    if not all(os.path.exists(cell_run.result_path(workdir, c, study)) for c in cells):
        utils.prepare_data(recipes.fl().data)
