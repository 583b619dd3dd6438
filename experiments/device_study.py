r"""Depth 36 on one GPU: the clipping comparison of ``experiments.replicate`` in ONE device call.

    python -m experiments.device_study --prepare          # here: corpus + wheels, sizes, command
    python -m experiments.device_study --out $OUT          # on the lent GPU (≤ 8 min call)
    python -m experiments.device_study --dry-run --out /tmp/device_study   # toy size, any CPU

or cell by cell (several device calls, or a cluster's scheduler; ``--workdir`` shared; the
first ``--cell`` alone: it builds the TFDS data and trains the seed the others read)::

    python -m experiments.device_study --list-cells     # one line per cell: ID<TAB>what it runs
    python -m experiments.device_study --cell ID --out $OUT   # corpus, data, seed, that cell
    python -m experiments.device_study --report          # the report of the cells done

One call, in this order (a time budget, ``--budget-s``, 420 s by default, counted from the
start of the process):

1. **corpus**: the compact synthetic corpus (:data:`DEVICE_CORPUS`, both official layouts) in
   ``data/device_corpus``. The GPU machine has no espeak-ng: ``--prepare`` generates it here
   and the device call carries it (with the wheels in ``.whl``: 64 MiB in all, checked by
   ``--prepare``). Then the TFDS datasets are built from it (on the device's 16 cores).
2. **seed**: the central demo recipe with the preset's model (36 blocks of the ``small``
   width, bf16 compute), trained from scratch for ``seed_steps`` steps or ``seed_minutes``,
   whichever comes first (``experiments.replication.cell_run.seed_checkpoint``).
3. **cells**: the methods of :data:`DEVICE_METHODS` (no DP, global, per-layer by dim,
   per-layer uniform, the reference code's rescale) at two noise levels given as
   σ_DP·√D (D = the model's parameter count): 0.16, the paper's σ_DP = 1e-5 at its
   D = 255.8 M, and 108, where global clipping lost ≥ 5 CER points on the CPU study's
   4-block model (σ_DP = 0.1 at D = 1.16 M). Each cell is ``cell_run.run_cell``
   (the FL demo recipe from the seed, ``rounds`` rounds). The cells of one method share one
   compiled round step (σ_DP is its argument), so one worker process per method compiles
   its program once, and the methods compile side by side on the host's cores while the GPU
   runs the others' rounds. A worker starts a cell only when the budget left holds it (the
   estimate: ``first_cell_s`` before its first cell, then its last cell's time without the
   first round's compilation); a skipped cell is listed as such.

The report (``<out>/device_study.md``) and the results (``<out>/device_study.json``) are
rewritten after every stage and every finished cell, so a call killed at its limit still
returns what it measured. Cells and the seed are cached in ``--workdir`` as in
``experiments.replicate``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import sys
import time
from collections.abc import Sequence

from experiments.device import preset as presets
from experiments.device.carry import CORPUS_DIR, corpus_manifest, prepare, size_mib, utterances
from experiments.device.preset import DEVICE, DRY_RUN, Preset, num_params, recipes
from experiments.device.report import Report
from experiments.device.workers import compilation_cache, plan_workers, run_cells
from experiments.replication import cell_run, design
from fl_dp_asr.text.tokenizer import CharTokenizer
from fl_dp_asr.train import utils


def plan(
    preset: Preset, workers: int | None = None
) -> tuple[int, list[float], list[list[design.Cell]]]:
    """D (the model's parameter count), σ_DP of each level, and the cells of each worker
    (``workers``, default the preset's)."""
    params = num_params(preset)
    sigmas = [design.matched_sigma(level, params) for level in preset.levels]
    return params, sigmas, plan_workers(preset, sigmas, workers or preset.workers)


def run(
    preset: Preset,
    out: pathlib.Path | None,
    workdir: str,
    budget_s: float,
    *,
    corpus: str = CORPUS_DIR,
    data_dir: str | None = None,
    workers: int | None = None,
    compile_cache: bool = True,
    command: str = "python -m experiments.device_study",
    cell: str | None = None,
) -> Report:
    """The whole study in this call (module docstring), or only the planned cell whose id
    is ``cell``; returns its report (of every planned cell done in ``workdir``).

    Raises:
        ValueError: ``cell`` is not the id of a planned cell (the message lists them).
        FileNotFoundError: the corpus is missing and cannot be generated here (no espeak-ng).
        RuntimeError: a worker process failed.
    """
    began = time.time()
    deadline = began + budget_s
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # workers share the GPU
    workdir = os.path.abspath(workdir)
    data_dir = data_dir or os.path.join(workdir, "tfds")
    params, sigmas, plans = plan(preset, workers)
    report = Report(preset, command, workdir, out, budget_s, params, sigmas, plans)
    runs = plans
    if cell is not None:
        runs = [[design.find_cell([c for p in plans for c in p], report.study, cell)]]
    recipes_ = recipes(preset, corpus, data_dir)
    with compilation_cache(workdir, compile_cache):
        started = time.time()
        manifest = corpus_manifest(preset, corpus)
        report.stage(
            "corpus",
            time.time() - started,
            f"{corpus}: {utterances(manifest)} utterances, {size_mib(corpus):.1f} MiB",
        )
        started = time.time()
        for config in (recipes_.central(), recipes_.fl()):
            utils.load_data(
                config.data, CharTokenizer(config.data.language), config.eval.batch_size
            )
        report.stage("TFDS datasets", time.time() - started, f"built in {data_dir}")
        started = time.time()
        seed_dir = cell_run.seed_checkpoint(workdir, preset.depth, report.study, recipes_, None)
        with open(os.path.join(os.path.dirname(seed_dir), "seed.json"), encoding="utf-8") as f:
            seed = json.load(f)
        report.stage(
            "seed",
            time.time() - started,
            f"{seed['step']} steps in {seed['seconds']:.0f} s, dev-clean CER "
            f"{100 * seed['dev_cer']:.1f} %, WER {100 * seed['dev_wer']:.1f} %",
        )
        started = time.time()
        run_cells(
            runs,
            report.study,
            workdir,
            recipes_,
            deadline,
            preset.first_cell_s,
            compile_cache,
            report.write,
        )
        report.stage("cells", time.time() - started, f"{len(runs)} worker(s)")
        report.stage("whole call", time.time() - began, f"budget {budget_s:.0f} s")
    return report


def main(argv: Sequence[str] | None = None) -> Report | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="here, not on the device: generate the corpus, download the "
        "wheels, check the 64 MiB carry, print the device command",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="toy size on any machine (tiny corpus, 2 blocks, 2 rounds)",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("runs/device_study"),
        help="the report (device_study.md) and results (device_study.json)",
    )
    parser.add_argument(
        "--workdir",
        default="runs/device_study",
        help="seed, cells (cached), TFDS data, compilation cache",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="no cell starts when what is left of this many seconds (from "
        "the start of the process) cannot hold it (default 420: one "
        "8-minute device call with the install and a margin)",
    )
    parser.add_argument(
        "--corpus",
        default=None,
        help=f"the corpus directory (default {CORPUS_DIR}; --dry-run: <workdir>/corpus)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="cell processes (default: one per method on the device, 1 for --dry-run)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--list-cells",
        action="store_true",
        help="print the planned cells, one per line: its id, a tab, its worker "
        "and what it runs; run nothing",
    )
    mode.add_argument(
        "--cell",
        metavar="ID",
        help="run only this planned cell (after the corpus, data and seed "
        "stages; a done cell is read back); the report has every cell "
        "done in --workdir",
    )
    mode.add_argument(
        "--report",
        action="store_true",
        help="write the report of the cells done in --workdir, run nothing",
    )
    args = parser.parse_args(argv)
    if args.prepare:
        print(prepare())
        return None
    preset = DRY_RUN if args.dry_run else DEVICE
    planned = plan(preset, args.workers)
    study_ = presets.study(preset, planned[1])
    if args.list_cells:
        print(
            "\n".join(
                f"{design.cell_id(cell, study_)}\tworker {worker}: {design.describe(cell, study_)}"
                for worker, cells in enumerate(planned[2])
                for cell in cells
            )
        )
        return None
    if args.cell:
        try:
            design.find_cell([c for cells in planned[2] for c in cells], study_, args.cell)
        except ValueError as error:
            parser.error(str(error))
    command = ("python -m experiments.device_study " + shlex.join(argv or sys.argv[1:])).strip()
    if args.report:
        report = Report(
            preset, command, os.path.abspath(args.workdir), args.out, args.budget_s, *planned
        )
        report.write()
    else:
        corpus = args.corpus or (
            os.path.join(args.workdir, "corpus") if args.dry_run else CORPUS_DIR
        )
        report = run(
            preset,
            args.out,
            args.workdir,
            args.budget_s,
            corpus=corpus,
            workers=args.workers,
            command=command,
            cell=args.cell,
        )
    print((args.out / "device_study.md").read_text(encoding="utf-8"))
    return report


if __name__ == "__main__":
    main()
