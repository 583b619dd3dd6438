r"""The paper's clipping comparison at CPU scale: methods × σ_DP × seeds, plus depth and cohort.

    python -m experiments.replicate [--quick] [--workdir runs/replicate] [--stages ...]
        [--methods "global,per-layer by dim"]     # every cell, then the report

Or cell by cell, with the scheduler of a cluster (a SLURM array, GNU parallel, Ray): the
same options select the study, and the work dir is shared::

    python -m experiments.replicate --list-cells      # one line per cell: ID<TAB>what it runs
    python -m experiments.replicate --prepare         # once: seed models and data
    python -m experiments.replicate --cell ID         # any number at once, in any order
    python -m experiments.replicate --report          # merges the done cells, lists the rest

Every cell is one federated run of the demo recipe (``experiments/configs/fl_dp.py:demo``:
Poisson cohorts of an expected 16 of the 300 synthetic Common Voice-part users, LAMB server)
from the same seed model, changing only the clipping method, σ_DP (noise std on the cohort
mean / C), the seed of the run, and — for the two extra axes — the simulated cohort size and
the depth of the model. Cells are cached (``<workdir>/cells/<cell id>/result.json``): an
interrupted study resumes where it stopped, and a larger study reuses a smaller one's cells.
The study's design is :mod:`experiments.replication.design`, one cell's run
:mod:`~experiments.replication.cell_run`, the worker processes
:mod:`~experiments.replication.schedule`, the report :mod:`~experiments.replication.report`.

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
import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

from experiments.replication import report as report_lib
from experiments.replication.cell_run import Recipes, compilation_cache, result_path, run_cell
from experiments.replication.design import (
    FULL,
    METHODS,
    QUICK,
    STAGES,
    Cell,
    Study,
    cell_id,
    describe,
    find_cell,
    study_cells,
)
from experiments.replication.schedule import prepare, run_study


def _positive_floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of σ_DP > 0")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/replicate")
    parser.add_argument("--seed-checkpoint", default="runs/demo/central/checkpoints")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 σ, 3 rows, 2 rounds")
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}"
    )
    parser.add_argument("--methods", help=f"comma-separated subset of the rows: {list(METHODS)}")
    parser.add_argument(
        "--deep-sigmas",
        type=_positive_floats,
        help="comma-separated σ_DP levels of the deep stage beyond the paper's "
        "σ_DP·√D (default: "
        f"{','.join(f'{s:g}' for s in FULL.deep_high)}; 0.3 alone fits 2 h)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--list-cells",
        action="store_true",
        help="print the study's cells, one per line: its id, a tab, what it runs; run nothing",
    )
    mode.add_argument(
        "--prepare",
        action="store_true",
        help="train the seed models and prepare the data the cells share, run "
        "no cell (before running cells side by side with --cell)",
    )
    mode.add_argument(
        "--cell",
        metavar="ID",
        help="run this one cell (an id of --list-cells) into the work dir: a done "
        "cell is read back, an interrupted one resumes",
    )
    mode.add_argument(
        "--report",
        "--cached-only",
        dest="report",
        action="store_true",
        help="merge the cells already done into the report, run nothing; say "
        "which cells are missing",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="cells run at once (processes; 2 fills 2 CPU cores best)",
    )
    parser.add_argument("--out", help="default: docs/replication.md (--quick: in --workdir)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    study = QUICK if args.quick else FULL
    if args.methods:
        methods = tuple(args.methods.split(","))
        if set(methods) - set(METHODS):
            parser.error(
                f"unknown methods {sorted(set(methods) - set(METHODS))}; choose from "
                f"{list(METHODS)}"
            )
        study = dataclasses.replace(study, methods=methods)
    if args.deep_sigmas:
        study = dataclasses.replace(study, deep_high=args.deep_sigmas)
    stages = args.stages.split(",")
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {list(STAGES)}")
    cells = study_cells(study, stages)
    if args.list_cells:
        print("\n".join(f"{cell_id(cell, study)}\t{describe(cell, study)}" for cell in cells))
        return
    if args.cell:
        try:
            cell = find_cell(cells, study, args.cell)
        except ValueError as error:
            parser.error(str(error))
    began = time.perf_counter()
    recipes = Recipes()
    with compilation_cache(args.workdir):
        if args.prepare:
            prepare(cells, study, args.workdir, recipes, args.seed_checkpoint)
            print(f"prepared the seed models and data of {len(cells)} cells in {args.workdir}")
            return
        if args.cell:
            result = run_cell(cell, study, args.workdir, recipes, args.seed_checkpoint)
            print(
                f"{args.cell}: done, held-out CER {100 * result['final_cer']:.1f} %, WER "
                f"{100 * result['final_wer']:.1f} % ({result['seconds']:.0f} s)"
            )
            return
        results = run_study(
            study,
            stages,
            args.workdir,
            recipes,
            args.seed_checkpoint,
            cached_only=args.report,
            workers=args.workers,
        )
    if args.report:
        _say_missing(cells, results, study, args.workdir)
    _write_report(results, study, stages, args, began)


def _say_missing(
    cells: Sequence[Cell], results: Sequence[dict[str, Any]], study: Study, workdir: str
) -> None:
    """Prints how many of ``cells`` are done and the ids of the others.

    Raises:
        SystemExit: none is done.
    """
    missing = [
        cell_id(c, study) for c in cells if not os.path.exists(result_path(workdir, c, study))
    ]
    if not results:
        raise SystemExit(
            f"no cell of these stages is done in {workdir}: run them with --cell "
            "ID (ids: --list-cells) or run the whole study"
        )
    print(
        f"report: {len(results)} of {len(cells)} cells done"
        + ("; missing (run them with --cell ID):\n" + "\n".join(missing) if missing else ""),
        flush=True,
    )


def _write_report(
    results: list[dict[str, Any]],
    study: Study,
    stages: Sequence[str],
    args: argparse.Namespace,
    began: float,
) -> None:
    """Writes the report of ``results`` (the deep stage alone: only its section) and prints it."""
    seconds = report_lib.wall_seconds(results, args.workdir, study)
    seeds = report_lib.seed_seconds(args.workdir, study)
    print(
        f"study: {len(results)} cells, {seconds:.0f} s of wall time ({args.workers} "
        f"workers; {sum(r['seconds'] for r in results):.0f} s summed over cells), "
        f"{seeds:.0f} s of seed models ({time.perf_counter() - began:.0f} s this call)",
        flush=True,
    )
    out = args.out or (
        os.path.join(args.workdir, "replication.md") if args.quick else "docs/replication.md"
    )
    if list(stages) == ["deep"] and os.path.exists(out):  # only its own section
        print(report_lib.write_deep_section(results, study, out))
        return
    text = report_lib.report(results, study, out, seconds, seeds)
    report_lib.write_markdown(text, out, None if args.quick else "README.md")
    print(text)


if __name__ == "__main__":
    main()
