r"""Depth 36 on one GPU: the clipping comparison of ``experiments.replicate`` in ONE device call.

    python -m experiments.device_study --prepare          # here: corpus + wheels, sizes, command
    python -m experiments.device_study --out $OUT          # on the lent GPU (≤ 8 min call)
    python -m experiments.device_study --dry-run --out /tmp/device_study   # toy size, any CPU

One call, in this order (a time budget, ``--budget-s``, 420 s by default, counted from the
start of the process):

1. **corpus**: the compact synthetic corpus (:data:`DEVICE_CORPUS`, both official layouts) in
   ``data/device_corpus``. The GPU machine has no espeak-ng: ``--prepare`` generates it here
   and the device call carries it (with the wheels in ``.whl``: 64 MiB in all, checked by
   ``--prepare``). Then the TFDS datasets are built from it (on the device's 16 cores).
2. **seed**: the central demo recipe with the preset's model (36 blocks of the ``small``
   width, bf16 compute), trained from scratch for ``seed_steps`` steps or ``seed_minutes``,
   whichever comes first (``experiments.replicate.seed_checkpoint``).
3. **cells**: the methods of :data:`DEVICE_METHODS` (no DP, global, per-layer by dim,
   per-layer uniform, the reference code's rescale) at two noise levels given as
   σ_DP·√D (D = the model's parameter count): 0.16, the paper's σ_DP = 1e-5 at its
   D = 255.8 M, and 108, where global clipping lost ≥ 5 CER points on the CPU study's
   4-block model (σ_DP = 0.1 at D = 1.16 M). Each cell is ``experiments.replicate.run_cell``
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
import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from benchmarks.common import markdown_table
from experiments import replicate
from experiments.configs import central, common, fl_dp
from fl_dp_asr.data import synthetic
from fl_dp_asr.data.errors import DataError
from fl_dp_asr.models import asr
from fl_dp_asr.text.tokenizer import CharTokenizer
from fl_dp_asr.train import utils

# σ_DP·√D, the noise norm on the cohort mean in units of C (D = parameters): the paper's
# σ_DP = 1e-5 at D = 255.8 M (0.16), and the CPU study's σ_DP = 0.1 at the tiny model's
# D = 1.16 M (108), where global clipping lost 5.8 CER points.
PAPER_LEVEL = replicate.PAPER_NOISE_PER_COORD[0]   # 0.16
HIGH_LEVEL = 108.0
DEVICE_METHODS = ("no DP", "global", "per-layer by dim", "per-layer uniform",
                  "rescale per-layer")
# The FL comparison's domain: few utterances per user (Common Voice-like), 200 users; the
# seed's: 500 LibriSpeech-part utterances. Sized so that corpus + wheels + tree ≤ 64 MiB
# (FLAC of the noisy LibriSpeech part costs ~59 KB per utterance, 32 kHz MP3 ~16 KB).
DEVICE_CORPUS = synthetic.CorpusConfig(
    librispeech=(synthetic.SplitSpec("train-clean-100", 25, 500),
                 synthetic.SplitSpec("dev-clean", 6, 40), synthetic.SplitSpec("test-clean", 1, 2)),
    common_voice=(synthetic.SplitSpec("train", 200, 600), synthetic.SplitSpec("dev", 20, 80),
                  synthetic.SplitSpec("test", 2, 8)),
    cv_sample_rate=32_000)
CORPUS_DIR = "data/device_corpus"    # git-ignored (/data/), carried to the device
WHEEL_DIR = ".whl"                   # git-ignored, carried to the device
CARRY_LIMIT_MIB = 64.0
# What the device image lacks (docs/performance.md, "Running the device check"), pinned as
# tested here; promise has no wheel on PyPI (built with ``pip wheel``).
WHEELS = ("dp-accounting==0.6.0", "jax-privacy==2.0.0", "jiwer==4.0.0", "rapidfuzz==3.14.6",
          "soundfile==0.14.0", "cffi==2.1.1", "pycparser==3.12", "tensorflow-datasets==4.9.10",
          "tensorflow-metadata==1.21.0", "toml==0.10.2", "immutabledict==4.3.1",
          "termcolor==3.3.0", "simple-parsing==0.1.9", "docstring-parser==0.18.0",
          "googleapis-common-protos==1.76.0", "array-record==0.8.6", "ml-collections==1.1.0")
SOURCE_WHEELS = ("promise==2.3",)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
DEVICE_TIMEOUT_S = 480


@dataclasses.dataclass(frozen=True)
class Preset:
    """What one call runs: the device's plan, or toy sizes (:data:`DRY_RUN`).

    Attributes:
        corpus: the synthetic corpus (both layouts).
        model_size, model: the named size and its overrides (``ModelConfig`` fields).
        seed_steps, seed_batch, seed_learning_rate: the seed's central training (Adam, the
            demo's warm-up and cosine decay); seed_minutes: its wall-clock cap (minutes).
        rounds, cohort, chunk, local_steps, local_batch: every cell's FL run (Poisson
            cohorts of expected size ``cohort``; ``chunk`` clients per vmap).
        levels: noise levels as σ_DP·√D (σ_DP = level / √D).
        methods: rows of ``experiments.replicate.METHODS``; seeds: runs per (method, level).
        first_cell_s: the time a worker's first cell is assumed to take (spawn, compile,
            rounds, evaluations), seconds, before one has been measured.
        workers: processes running cells (1: this one); each takes whole methods.
    """
    corpus: synthetic.CorpusConfig = DEVICE_CORPUS
    model_size: str = "small"
    model: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"num_blocks": 36, "dtype": "bfloat16"})
    seed_steps: int = 2000
    seed_batch: int = 32
    seed_learning_rate: float = 1e-3
    seed_minutes: float = 2.5
    rounds: int = 20
    cohort: int = 32
    chunk: int = 8
    local_steps: int = 3
    local_batch: int = 4
    levels: tuple[float, ...] = (PAPER_LEVEL, HIGH_LEVEL)
    methods: tuple[str, ...] = DEVICE_METHODS
    seeds: int = 2
    first_cell_s: float = 90.0
    workers: int = len(DEVICE_METHODS)

    @property
    def depth(self) -> int:
        return self.model["num_blocks"]


DEVICE = Preset()
# Toy size on a CPU (the test suite runs it): the tiny corpus and model, 2 seed steps, no DP
# and global clipping at both levels, 2 rounds. Its seed and cells are configured like those
# of tests/experiments/test_replicate.py's quick study (apart from δ and S'/K', which no
# compiled program holds), so that the test session's compilation cache serves both.
DRY_RUN = Preset(corpus=synthetic.tiny_config(), model_size="tiny",
                 model={"num_blocks": 4, "dtype": "float32"}, seed_steps=2, seed_batch=2,
                 seed_learning_rate=2e-3, seed_minutes=1.0, rounds=2, cohort=2, chunk=2,
                 local_steps=2, local_batch=2, methods=("no DP", "global"), seeds=1,
                 first_cell_s=5.0, workers=1)


# ------------------------------------------------------------------ recipes


def _data(section: ml_collections.ConfigDict, corpus: str, data_dir: str) -> None:
    """Points a ``data`` section at ``corpus`` (never generated there: ``--prepare`` does)."""
    section.manual_dir, section.data_dir, section.synthetic_dir = corpus, data_dir, None
    section.num_buckets = 1         # one padded shape: one compilation per program


def central_config(preset: Preset, corpus: str, data_dir: str) -> ml_collections.ConfigDict:
    """The central demo recipe with the preset's model, batch, learning rate and steps."""
    c = central.get_config("demo")
    _data(c.data, corpus, data_dir)
    c.data.min_seconds = 0.0
    c.model = common.model(preset.model_size)
    for name, value in preset.model.items():
        c.model[name] = value
    c.optimizer.learning_rate = preset.seed_learning_rate
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, max(1, preset.seed_steps // 10))
    c.train.batch_size = preset.seed_batch
    c.train.num_steps = preset.seed_steps
    c.train.max_minutes = preset.seed_minutes
    c.train.log_every = max(1, preset.seed_steps // 10)
    c.eval.every = c.checkpoint.every = preset.seed_steps
    return c


def fl_config(preset: Preset, corpus: str, data_dir: str) -> ml_collections.ConfigDict:
    """The FL demo recipe on the preset's corpus, cohort and local work, one compiled local
    step (no padding cuts), RDP ε of the paper's extrapolated cohort S' = 204,800 at the
    simulated q (δ = 1e-9, the paper's)."""
    c = fl_dp.get_config("demo")
    _data(c.data, corpus, data_dir)
    c.fl.cohort_size = preset.cohort
    c.fl.chunk_size = preset.chunk
    c.fl.local_steps = preset.local_steps
    c.fl.local_batch_size = preset.local_batch
    c.fl.cut_row_levels = c.fl.cut_length_levels = 1
    population = preset.corpus.common_voice[0].speakers
    c.dp.delta = 1e-9
    c.dp.target_cohort = 204_800
    c.dp.target_population = round(204_800 * population / preset.cohort)
    c.dp.target_pld = False         # PLD at small z' takes minutes; RDP is reported
    return c


def recipes(preset: Preset, corpus: str, data_dir: str) -> replicate.Recipes:
    return replicate.Recipes(functools.partial(central_config, preset, corpus, data_dir),
                             functools.partial(fl_config, preset, corpus, data_dir))


def study(preset: Preset, sigmas: Sequence[float]) -> replicate.Study:
    """The ``replicate.Study`` whose fields ``run_cell`` and ``seed_checkpoint`` read."""
    return replicate.Study(sigmas=(0.0, *sigmas), methods=preset.methods, seeds=preset.seeds,
                           rounds=preset.rounds, cohort=preset.cohort, depths=(preset.depth,),
                           seed_steps=preset.seed_steps)


def num_params(preset: Preset) -> int:
    """D: the preset model's parameter count (shapes only, nothing allocated)."""
    config = utils.model_config_from(central_config(preset, "", "").model)
    return asr.count_params(asr.abstract_params(config))


# ------------------------------------------------------------------ cells and workers


def plan_workers(preset: Preset, sigmas: Sequence[float], workers: int
                 ) -> list[list[replicate.Cell]]:
    """The cells of each worker, in order: whole methods (one compiled round step each)
    dealt round-robin; within a method seed by seed, every level per seed, so a run cut
    short has every (method, level) at seed 0 first."""
    plans: list[list[replicate.Cell]] = [[] for _ in range(min(workers, len(preset.methods)))]
    for index, method in enumerate(preset.methods):
        levels = [0.0] if method == "no DP" else list(sigmas)
        plans[index % len(plans)] += [
            replicate.Cell(method, sigma, seed, preset.cohort, preset.depth)
            for seed in range(preset.seeds) for sigma in levels]
    return plans


# A cell's outcome other than its result.json: {"reason": ...} in its cell directory.
SKIPPED, FAILED = "skipped.json", "failed.json"


def cell_status(workdir: str, cell: replicate.Cell, study_: replicate.Study
                ) -> tuple[str, dict[str, Any]]:
    """``("done", result)``, ``("failed" or "skipped", {"reason"})`` or ``("not run", {})``."""
    run_dir = replicate.cell_dir(workdir, cell, study_)
    for status, name in (("done", "result.json"), ("failed", FAILED), ("skipped", SKIPPED)):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return status, json.load(f)
    return "not run", {}


def next_cell_estimate(result: dict[str, Any]) -> float:
    """A later cell of the same program: this cell's seconds without the first round's
    compilation (first round minus the median round), seconds."""
    rounds = [r["train/seconds_per_round"] for r in replicate.read_metrics(result)
              if "train/seconds_per_round" in r]
    compile_s = rounds[0] - statistics.median(rounds) if rounds else 0.0
    return result["seconds"] - compile_s


def run_worker(cells: Sequence[replicate.Cell], study_: replicate.Study, workdir: str,
               recipes_: replicate.Recipes, deadline: float, first_cell_s: float,
               compile_cache: bool, on_cell: Callable[[], None] = lambda: None) -> None:
    """Runs ``cells`` in order; one whose estimate does not fit before ``deadline`` (a
    ``time.time()``) is skipped, one that raises is failed: its reason goes to
    ``skipped.json`` or ``failed.json`` in its cell directory, and the next cell follows
    (one call on a lent GPU returns every cell it could run)."""
    with _compilation_cache(workdir, compile_cache):
        estimate = first_cell_s
        for cell in cells:
            if cell_status(workdir, cell, study_)[0] == "done":
                continue
            left = deadline - time.time()
            if left < estimate:
                _note(workdir, cell, study_, SKIPPED,
                      f"budget: {max(left, 0):.0f} s left, the cell needs ~{estimate:.0f} s")
            else:
                try:
                    estimate = next_cell_estimate(replicate.run_cell(cell, study_, workdir,
                                                                     recipes_, None))
                except replicate.StudyStopped:
                    raise
                except Exception as error:     # noqa: BLE001 -- noted; the next cell runs
                    lines = str(error).strip().splitlines()
                    _note(workdir, cell, study_, FAILED,
                          f"{type(error).__name__}: {lines[0][:300] if lines else ''}")
                    print(f"== {cell.name} FAILED", file=sys.stderr, flush=True)
                    traceback.print_exc()
            on_cell()


def _compilation_cache(workdir: str, enabled: bool) -> contextlib.AbstractContextManager:
    """``replicate.compilation_cache(workdir)``, or nothing when not ``enabled``."""
    return replicate.compilation_cache(workdir) if enabled else contextlib.nullcontext()


def _note(workdir: str, cell: replicate.Cell, study_: replicate.Study, name: str,
          reason: str) -> None:
    run_dir = replicate.cell_dir(workdir, cell, study_)
    os.makedirs(run_dir, exist_ok=True)
    utils.write_json(os.path.join(run_dir, name), {"reason": reason})


def run_cells(plans: list[list[replicate.Cell]], study_: replicate.Study, workdir: str,
              recipes_: replicate.Recipes, deadline: float, first_cell_s: float,
              compile_cache: bool, on_cell: Callable[[], None]) -> None:
    """One plan in this process, or one spawned process per plan; ``on_cell`` after each
    cell (polled from here when the workers are other processes)."""
    if len(plans) == 1:
        run_worker(plans[0], study_, workdir, recipes_, deadline, first_cell_s, compile_cache,
                   on_cell)
        return
    context = multiprocessing.get_context("spawn")     # JAX does not survive a fork
    processes = [context.Process(target=run_worker, args=(
        plan, study_, workdir, recipes_, deadline, first_cell_s, compile_cache))
        for plan in plans]
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
        raise RuntimeError(f"{len(failed)} of {len(processes)} device-study workers failed "
                           f"(exit codes {failed}); their tracebacks are above.")


# ------------------------------------------------------------------ the report


@dataclasses.dataclass
class Report:
    """The study under way: what is planned, each stage's time, read back from ``workdir``
    (the cells' own files) and written to ``out`` whenever it changed."""
    preset: Preset
    command: str
    workdir: str
    out: pathlib.Path | None
    budget_s: float
    params: int
    sigmas: list[float]
    plans: list[list[replicate.Cell]]
    stages: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    _written: str = ""

    @property
    def study(self) -> replicate.Study:
        return study(self.preset, self.sigmas)

    def stage(self, name: str, seconds: float, note: str = "") -> None:
        self.stages[name] = {"seconds": round(seconds, 1), "note": note}
        self.write()

    def cells(self) -> list[dict[str, Any]]:
        """Every planned cell: its fields, status, and result or skip reason."""
        rows = []
        for worker, plan in enumerate(self.plans):
            for cell in plan:
                status, found = cell_status(self.workdir, cell, self.study)
                rows.append({**dataclasses.asdict(cell), "name": cell.name, "worker": worker,
                             "status": status, **({"result": found} if status == "done"
                                                  else found)})
        return rows

    def write(self) -> None:
        """Rewrites ``<out>/device_study.{md,json}`` if anything changed."""
        cells = self.cells()
        text = self.markdown(cells)
        if self.out is None or text == self._written:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        utils.write_text(str(self.out / "device_study.md"), text)
        utils.write_json(str(self.out / "device_study.json"), {
            "preset": dataclasses.asdict(self.preset), "command": self.command,
            "budget_s": self.budget_s, "num_params": self.params,
            "levels": [{"sigma_dp_sqrt_d": level, "sigma_dp": sigma}
                       for level, sigma in zip(self.preset.levels, self.sigmas)],
            "stages": self.stages, "cells": cells})
        self._written = text
        print(f"[device study] report: {sum(c['status'] == 'done' for c in cells)} of "
              f"{len(cells)} cells done", flush=True)

    def markdown(self, cells: list[dict[str, Any]]) -> str:
        results = [c["result"] for c in cells if c["status"] == "done"]
        p = self.preset
        model = utils.model_config_from(central_config(p, "", "").model)
        parts = [
            f"# Depth {p.depth} on one GPU: global vs per-layer clipping (device preset)", "",
            f"`{self.command}` on {_device()}. Model: {model.num_blocks} blocks × "
            f"{model.model_dim} (MLP {model.mlp_dim}, {model.dtype} compute), "
            f"D = {self.params / 1e6:.2f} M parameters. Seed: the central demo recipe on the "
            f"LibriSpeech part (≤ {p.seed_steps} steps of {p.seed_batch} utterances, "
            f"≤ {p.seed_minutes:g} min). Cells: the FL demo recipe for {p.rounds} rounds, "
            f"Poisson cohorts of expected size S = {p.cohort} of "
            f"{p.corpus.common_voice[0].speakers} Common Voice-part users, {p.local_steps} "
            f"local steps of {p.local_batch} utterances, LAMB server. Final CER/WER on the "
            f"held-out users, mean ± std over seeds (n = runs). Budget {self.budget_s:.0f} s.",
            "", "## Timeline", "",
            markdown_table(["stage", "seconds", "note"],
                           [[name, s["seconds"], s["note"]] for name, s in self.stages.items()]),
            "",
            "## Noise levels", "", self.levels_table(results), "",
            self.detectability(results), "",
            "## Methods × noise level", "", self.grid(results), "", _seed_line(results), "",
            "## Per-module signal/noise, seed 0", "",
            "Range over modules of signal ‖Σ clip(Δ)_h‖/S over noise ‖ξ_h‖/S (round "
            "means): min – max (max/min).", "", self.snr_grid(results), "",
            "## Cells", "", markdown_table(["cell", "worker", "status", "seconds", "note"], [
                [c["name"], c["worker"], c["status"],
                 round(c["result"]["seconds"], 1) if c["status"] == "done" else "",
                 c.get("reason", "")] for c in cells]), ""]
        return "\n".join(parts + self.signal_noise(results))

    def _runs(self, results: list[dict], method: str, sigma: float, **match) -> list[dict]:
        noise = {} if method == "no DP" else {"sigma_dp": sigma}
        return replicate.select(results, method=method, depth=self.preset.depth,
                                cohort=self.preset.cohort, server="lamb", **noise, **match)

    def levels_table(self, results: list[dict]) -> str:
        rows = []
        for level, sigma in zip(self.preset.levels, self.sigmas):
            eps = [r["extrapolated_epsilon_rdp"] for r in results
                   if r["sigma_dp"] == sigma and r.get("extrapolated_epsilon_rdp")]
            rows.append([f"{level:g}", f"{sigma:.4g}", f"{self.preset.cohort * sigma:.4g}",
                         f"{eps[0]:.3g}" if eps else "–"])
        return markdown_table(
            ["σ_DP·√D", "σ_DP", "z = S·σ_DP", "ε (S' = 204,800, RDP, δ = 1e-9)"], rows)

    def detectability(self, results: list[dict]) -> str:
        """Whether global clipping at the highest level loses ≥ 5 CER points to no DP."""
        level, sigma = self.preset.levels[-1], self.sigmas[-1]
        base = self._runs(results, "no DP", 0.0)
        top = self._runs(results, "global", sigma)
        if not (base and top):
            return (f"Detectability at σ_DP·√D = {level:g}: not measured (no DP or global "
                    "did not run).")
        gap = replicate.mean_cer(top) - replicate.mean_cer(base)
        verdict = "met" if gap >= 5 else "NOT met: raise the high level"
        return (f"Detectability: at σ_DP·√D = {level:g} (σ_DP = {sigma:.4g}) global clipping "
                f"loses {gap:.1f} CER points against no DP (condition ≥ 5: {verdict}).")

    def grid(self, results: list[dict]) -> str:
        """Rows = methods, columns = no noise (no DP's) and the levels: CER and WER."""
        headers = ["method", "σ_DP = 0", *(f"σ_DP·√D = {v:g}" for v in self.preset.levels)]
        rows = []
        for method in self.preset.methods:
            if method == "no DP":
                runs = [self._runs(results, method, 0.0)] + [None] * len(self.sigmas)
            else:
                runs = [None] + [self._runs(results, method, sigma) for sigma in self.sigmas]
            rows.append([method] + ["" if r is None else replicate.errors_cell(r, with_count=True)
                                    for r in runs])
        return markdown_table(headers, rows)

    def snr_grid(self, results: list[dict]) -> str:
        headers = ["method"] + [f"σ_DP·√D = {level:g}" for level in self.preset.levels]
        rows = []
        for method in self.preset.methods:
            if method == "no DP":
                continue
            row = [method]
            for sigma in self.sigmas:
                runs = self._runs(results, method, sigma, seed=0)
                row.append(replicate.snr_range(runs[0]) if runs else "–")
            rows.append(row)
        return markdown_table(headers, rows)

    def signal_noise(self, results: list[dict]) -> list[str]:
        """The per-module table of the key methods at the highest level (seed 0), folded."""
        runs = {m: self._runs(results, m, self.sigmas[-1], seed=0) for m in replicate.KEY_METHODS}
        if not all(runs.values()):
            return []
        table = replicate.signal_noise_table(
            {m: replicate.read_metrics(r[0]) for m, r in runs.items()})
        return [f"<details><summary>Per module at σ_DP·√D = {self.preset.levels[-1]:g}: "
                "‖Δ_h‖, signal, noise, S/N</summary>", "", table, "</details>", ""]


def _seed_line(results: list[dict]) -> str:
    if not results:
        return "The seed model on the held-out users: not evaluated yet (no cell finished)."
    return (f"The seed model on the held-out users (before FL): CER "
            f"{100 * results[0]['seed_cer']:.1f} %, WER {100 * results[0]['seed_wer']:.1f} %.")


def _device() -> str:
    import jax
    device = jax.devices()[0]
    return f"{jax.device_count()} × {device.device_kind} (jax {jax.__version__})"


# ------------------------------------------------------------------ the call


def run(preset: Preset, out: pathlib.Path | None, workdir: str, budget_s: float, *,
        corpus: str = CORPUS_DIR, data_dir: str | None = None, workers: int | None = None,
        compile_cache: bool = True, command: str = "python -m experiments.device_study"
        ) -> Report:
    """The whole study in this call (module docstring); returns its report.

    Raises:
        FileNotFoundError: the corpus is missing and cannot be generated here (no espeak-ng).
        RuntimeError: a worker process failed.
    """
    began = time.time()
    deadline = began + budget_s
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # workers share the GPU
    workdir = os.path.abspath(workdir)
    data_dir = data_dir or os.path.join(workdir, "tfds")
    params = num_params(preset)
    sigmas = [replicate.matched_sigma(level, params) for level in preset.levels]
    plans = plan_workers(preset, sigmas, workers or preset.workers)
    report = Report(preset, command, workdir, out, budget_s, params, sigmas, plans)
    recipes_ = recipes(preset, corpus, data_dir)
    with _compilation_cache(workdir, compile_cache):
        started = time.time()
        manifest = corpus_manifest(preset, corpus)
        report.stage("corpus", time.time() - started,
                     f"{corpus}: {_utterances(manifest)} utterances, {_size_mib(corpus):.1f} MiB")
        started = time.time()
        for config in (recipes_.central(), recipes_.fl()):
            utils.load_data(config.data, CharTokenizer(config.data.language),
                            config.eval.batch_size)
        report.stage("TFDS datasets", time.time() - started, f"built in {data_dir}")
        started = time.time()
        seed_dir = replicate.seed_checkpoint(workdir, preset.depth, report.study, recipes_, None)
        with open(os.path.join(os.path.dirname(seed_dir), "seed.json"), encoding="utf-8") as f:
            seed = json.load(f)
        report.stage("seed", time.time() - started,
                     f"{seed['step']} steps in {seed['seconds']:.0f} s, dev-clean CER "
                     f"{100 * seed['dev_cer']:.1f} %, WER {100 * seed['dev_wer']:.1f} %")
        started = time.time()
        run_cells(plans, report.study, workdir, recipes_, deadline, preset.first_cell_s,
                  compile_cache, report.write)
        report.stage("cells", time.time() - started, f"{len(plans)} worker(s)")
        report.stage("whole call", time.time() - began, f"budget {budget_s:.0f} s")
    return report


def corpus_manifest(preset: Preset, corpus: str) -> dict[str, Any]:
    """The corpus's manifest; generated here if missing (needs espeak-ng)."""
    try:
        return synthetic.generate_corpus(corpus, preset.corpus, progress=False)
    except DataError as error:
        raise FileNotFoundError(
            f"{corpus} holds no corpus with the preset's settings and it cannot be generated "
            f"here ({error}). Run `python -m experiments.device_study --prepare` where "
            f"espeak-ng is installed and carry {corpus}.") from error


def _utterances(manifest: dict[str, Any]) -> int:
    return sum(split["utterances"] for split in manifest["splits"].values())


def _size_mib(path: str) -> float:
    return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file()) / 2**20


# ------------------------------------------------------------------ preparing the carry


def device_command() -> str:
    """The device call's command (run from the repository root; carry :func:`carry`)."""
    return ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
            f"--upgrade --target /tmp/site {WHEEL_DIR}/*.whl && export PYTHONPATH=/tmp/site:$PWD "
            "PYTHONUNBUFFERED=1 || exit; set -o pipefail; python3 -m experiments.device_study "
            "--out $OUT --workdir /tmp/device_study 2>&1 | tee "
            "$OUT/device_study.log")


def carry() -> list[str]:
    return [WHEEL_DIR, CORPUS_DIR]


def download_wheels(wheel_dir: str) -> None:
    """The wheels the device image lacks, for its Python 3.12 on x86-64 (needs the network).

    Raises:
        subprocess.CalledProcessError: pip could not download or build one.
    """
    pip = [sys.executable, "-m", "pip"]
    platforms = [flag for name in PLATFORMS for flag in ("--platform", name)]
    subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms,
                    "-d", wheel_dir, *WHEELS], check=True)
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", wheel_dir, *SOURCE_WHEELS],
                   check=True)


def tree_mib() -> float:
    """What the device call sends besides the carried paths: the files git tracks or would
    track (untracked, not ignored), MiB."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    paths = [pathlib.Path(p) for p in listed.decode().split("\0") if p]
    return sum(p.stat().st_size for p in paths if p.is_file()) / 2**20


def prepare(corpus: str = CORPUS_DIR, wheel_dir: str = WHEEL_DIR) -> str:
    """Generates the corpus and downloads the wheels here; returns the sizes and the
    device call (markdown).

    Raises:
        ValueError: the carry and the tree exceed the device call's 64 MiB.
    """
    started = time.time()
    manifest = synthetic.generate_corpus(corpus, DEVICE_CORPUS)
    generated = time.time() - started
    download_wheels(wheel_dir)
    sizes = {"corpus": _size_mib(corpus), "wheels": _size_mib(wheel_dir), "tree": tree_mib()}
    total = sum(sizes.values())
    text = "\n".join([
        markdown_table(["what travels", "MiB"], [[k, f"{v:.1f}"] for k, v in sizes.items()]
               + [["total (limit 64)", f"{total:.1f}"]]), "",
        f"Corpus: {_utterances(manifest)} utterances ({manifest['generation_seconds']} s to "
        f"generate, {generated:.0f} s this call). Device call: `carry` {json.dumps(carry())}, "
        f"`timeout_s` {DEVICE_TIMEOUT_S}, command:", "", "```bash", device_command(), "```"])
    if total > CARRY_LIMIT_MIB:
        raise ValueError(f"the device call would send {total:.1f} MiB (> {CARRY_LIMIT_MIB:g}):"
                         f" {sizes}; shrink DEVICE_CORPUS.")
    return text


# ------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> Report | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true",
                        help="here, not on the device: generate the corpus, download the "
                             "wheels, check the 64 MiB carry, print the device command")
    parser.add_argument("--dry-run", action="store_true",
                        help="toy size on any machine (tiny corpus, 2 blocks, 2 rounds)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/device_study"),
                        help="the report (device_study.md) and results (device_study.json)")
    parser.add_argument("--workdir", default="runs/device_study",
                        help="seed, cells (cached), TFDS data, compilation cache")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="no cell starts when what is left of this many seconds (from "
                             "the start of the process) cannot hold it (default 420: one "
                             "8-minute device call with the install and a margin)")
    parser.add_argument("--corpus", default=None,
                        help=f"the corpus directory (default {CORPUS_DIR}; --dry-run: "
                             "<workdir>/corpus)")
    parser.add_argument("--workers", type=int, default=None,
                        help="cell processes (default: one per method on the device, 1 for "
                             "--dry-run)")
    args = parser.parse_args(argv)
    if args.prepare:
        print(prepare())
        return None
    preset = DRY_RUN if args.dry_run else DEVICE
    corpus = args.corpus or (os.path.join(args.workdir, "corpus") if args.dry_run
                             else CORPUS_DIR)
    command = "python -m experiments.device_study " + shlex.join(argv or sys.argv[1:])
    report = run(preset, args.out, args.workdir, args.budget_s, corpus=corpus,
                 workers=args.workers, command=command.strip())
    print((args.out / "device_study.md").read_text(encoding="utf-8"))
    return report


if __name__ == "__main__":
    main()
