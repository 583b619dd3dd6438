"""The device check: everything a session with a lent accelerator measures, in one command.

    python -m benchmarks.device_check --out $OUT/device_check.md --profile   # on a GPU/TPU
    python -m benchmarks.device_check --only "local step,paper round"
    python -m benchmarks.device_check --dry-run    # tiny shapes on any machine (< 2 min)

Sections, in this order (each one's failure is reported and the next one runs; a section,
or a row of one — a local-step variant, an executor's round step, the profile, a bucket —
that would start after ``--budget-s`` seconds is skipped with a note, so one call stays
bounded by the budget plus the one compilation and run that was under way):

1. **tests**: the executor, sharded, memory and transfer tests of ``tests/fl/test_round.py``
   on the device (a subprocess).
2. **local step** of the paper model (255.8 M parameters, bf16 compute, fp32 parameters,
   ``remat`` per block, layer-drop off so every step does the same work): the time to
   create its parameters (one jitted function on the device), then one client's SGD step
   (CTC loss, gradient, per-step clip, update) on 15 × 8 s = 120 s of audio (the paper's
   ~120 s batches) and on 8 × 8 s utterances. Time, model TFLOP/s (6 · params · frames,
   :func:`fl_dp_asr.aot.targets.model_flops`) and MFU against the device's dense bf16 peak
   (its chip's in :data:`fl_dp_asr.aot.targets.CHIPS`), also with the remat recompute
   counted (8 · params · frames).
3. **paper round**: the round step of the paper model, cohort 16, every client 10 local
   steps of 8 × 8 s: the largest vectorized chunk that fits (16, 8, 4, 2, 1 in turn; an
   out-of-memory compile or run moves to the next), vectorized vs sequential, with the
   **round-level MFU** (model FLOPs of all clients' local steps ÷ round time ÷ peak).
   ``--profile``: a ``jax.profiler`` trace of the chosen vectorized round, summarized as
   the top ops by time.
4. **cohort rounds**: the round step of the tiny and small models, cohort 256,
   vectorized (chunk 16, 64) vs sequential clients/s, Common Voice-like clients
   (benchmarks.common.ClientShape).
5. **compile per bucket**: compile time of the round step per length bucket (tiny, small;
   benchmarks.compile's buckets). The paper model's compile times are the first-call
   columns of sections 2 and 3.

The blocks of the model run as one scanned body (fl_dp_asr.models.encoder.run_blocks), so
compile time no longer grows with depth: the whole check is planned to fit one call of
≤ 8 minutes on one H200 (start-up excluded; ``--budget-s 420`` by default). On 2026-11-28,
with the 36 blocks unrolled, the local step alone compiled in 96-112 s and the round step
in more than 220 s.

The report is printed and appended to docs/benchmarks.md (``--no-write``: not); with
``--out FILE`` it is also written there row by row, so a run killed midway keeps every
row it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import common
from fl_dp_asr.aot import targets

PAPER_OVERRIDES = dict(remat=True, layer_drop_rate=0.0)  # dtype bfloat16 is the paper's
# In the order they run: the paper model's measurements (the reason for a lent device)
# right after the quick tests, so a run cut short still has them.
SECTIONS = ("tests", "local step", "paper round", "cohort rounds", "compile per bucket")
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures: the full plan on a device, tiny shapes for ``--dry-run``."""

    step_size: str = "paper"
    # (utterances, s), the paper's ~120 s batch first (rows run until the budget is spent)
    step_batches: tuple[tuple[int, float], ...] = ((15, 8.0), (8, 8.0))
    # What remat keeps (ModelConfig.remat_policy): recompute the whole block, or keep matmuls.
    step_remat_policies: tuple[str, ...] = ("nothing", "dots")
    round_size: str = "paper"
    round_cohort: int = 16
    round_chunks: tuple[int, ...] = (16, 8, 4, 2, 1)
    # Every utterance 8 s (no padding): the round's model FLOPs are the frames computed.
    round_shape: common.ClientShape = common.ClientShape(
        min_utterances=80,
        max_utterances=80,
        min_seconds=8.0,
        max_seconds=8.0,
        batch_size=8,
        local_steps=10,
        max_seconds_padded=8.0,
        max_label_len=128,
    )
    cohort_sizes: tuple[str, ...] = ("tiny", "small")
    cohort: int = 256
    cohort_shape: common.ClientShape = common.ClientShape()
    cohort_chunks: tuple[int, ...] = (16, 64)
    compile_sizes: tuple[str, ...] = ("tiny", "small")  # the paper model's: sections 1-2
    repeats: int = 3
    run_tests: bool = True
    profile_rounds: int = 2
    # Padding cuts (row and length levels) of the tiny and small models' local steps: the
    # trainer's (3, 2), six compiled copies of the local step. The paper model: (1, 1), one
    # (its compile time, not its run time, limits it on a GPU today).
    padding_cuts: tuple[int, int] = (3, 2)

    def model_overrides(self, size: str) -> dict[str, Any]:
        """``get_model_config`` overrides of a model size in this plan."""
        return dict(PAPER_OVERRIDES) if size == "paper" else {}

    def task_args(self, size: str) -> dict[str, Any]:
        """``common.asr_task`` / ``make_asr_step`` arguments of a model size in this plan."""
        cuts = (1, 1) if size == "paper" else self.padding_cuts
        return {**self.model_overrides(size), "padding_cuts": cuts}


# The cohort section runs the paper-round section's programs (same model, cohort, chunk and
# shapes): with the persistent compilation cache it measures without compiling again, so the
# dry run (in ``make test``) compiles two round steps, not four, each with one local step
# (no padding cuts).
_DRY_ROUND_SHAPE = common.ClientShape(
    min_utterances=2,
    max_utterances=4,
    max_seconds=1.0,
    max_seconds_padded=1.0,
    local_steps=2,
    max_label_len=16,
)
DRY_RUN = Plan(
    step_size="tiny",
    step_batches=((2, 1.0),),
    round_size="tiny",
    round_cohort=4,
    round_chunks=(4, 2),
    round_shape=_DRY_ROUND_SHAPE,
    cohort_shape=_DRY_ROUND_SHAPE,
    cohort_sizes=("tiny",),
    cohort=4,
    cohort_chunks=(4,),
    compile_sizes=(),
    repeats=1,
    run_tests=False,
    profile_rounds=1,
    padding_cuts=(1, 1),
)


def peak_tflops(device_kind: str) -> float | None:
    """Dense bf16 peak (TFLOP/s) of a device kind (its chip in
    :data:`fl_dp_asr.aot.targets.CHIPS`), or None when unknown (e.g. a CPU)."""
    chip = targets.chip_of_device_kind(device_kind)
    return chip.peak_flops / 1e12 if chip else None


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception from XLA compile or run says the device ran out of memory."""
    return any(marker in str(error) for marker in OOM_MARKERS)


def largest_fitting(
    candidates: Sequence[int], attempt: Callable[[int], Any]
) -> tuple[int, Any, list[str]]:
    """Calls ``attempt(c)`` for each candidate, largest first, until one fits in memory.

    Returns ``(candidate, its result, notes on the ones that did not fit)``. An error
    that is not out-of-memory is raised at once; if none fits, a RuntimeError says so.
    """
    notes = []
    for candidate in sorted(candidates, reverse=True):
        try:
            return candidate, attempt(candidate), notes
        except Exception as error:  # XlaRuntimeError is not public; re-raised unless OOM
            if not is_out_of_memory(error):
                raise
            first_line = str(error).strip().splitlines()[0][:160]
            notes.append(f"{candidate}: out of memory ({first_line})")
            common.log(f"    {candidate} does not fit: {first_line}")
    raise RuntimeError(
        f"nothing fits in device memory; tried {sorted(candidates, reverse=True)}: "
        + "; ".join(notes)
    )


# ------------------------------------------------------------------ 1. local step


def local_step(
    size: str,
    utterances: int,
    seconds: float,
    repeats: int,
    task_args: dict[str, Any],
    **model_overrides,
) -> dict[str, float]:
    """Compile and time one client's local SGD step on ``utterances × seconds`` of audio
    (``task_args``: :meth:`Plan.task_args`; ``model_overrides`` on top of them)."""
    import jax
    import optax

    from fl_dp_asr.fl import client
    from fl_dp_asr.models import asr

    config, params, _, _ = common.asr_task(size, **{**task_args, **model_overrides})
    shape = dataclasses.replace(
        common.ClientShape(),
        batch_size=utterances,
        local_steps=1,
        min_utterances=utterances,
        max_utterances=utterances,
        min_seconds=seconds,
        max_seconds=seconds,
        max_seconds_padded=seconds,
        max_label_len=int(seconds * 16),
    )
    block = common.synthetic_cohort(1, shape, vocab_size=config.vocab_size)
    batch = jax.device_put(jax.tree.map(lambda x: x[0, 0], block["batches"]))
    grad_fn = jax.value_and_grad(asr.make_loss_fn(config, train=True), has_aux=True)
    sgd = client.local_sgd(0.2, 1.0)

    def step(params, opt_state, batch, key):
        (loss, _), grads = grad_fn(params, batch, key)
        updates, opt_state = sgd.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    key = jax.random.key(0)
    opt_state = sgd.init(params)
    start = time.perf_counter()
    compiled = jax.jit(step).lower(params, opt_state, batch, key).compile()
    compile_s = time.perf_counter() - start

    def run():
        return common.block_until_ready(compiled(params, opt_state, batch, key))

    run()
    seconds_per_step = common.median([common.time_call(run) for _ in range(max(repeats, 3))])
    return {"compile_s": compile_s, "step_s": seconds_per_step}


def init_seconds(size: str, model_overrides: dict[str, Any]) -> float:
    """Seconds to create a model's parameters on the device: one jitted function, first
    call (compile included), until the arrays are ready."""
    import jax

    from fl_dp_asr.models import asr
    from fl_dp_asr.models.config import get_model_config

    config = get_model_config(size, **model_overrides)
    jax.clear_caches()
    return common.time_call(
        lambda: common.block_until_ready(asr.init_params(config, jax.random.key(1)))
    )


def section_local_step(plan: Plan, rec: Recorder, peak: float | None) -> None:
    rec.note(
        f"{plan.step_size} model parameters created on the device (jitted init, first "
        f"call incl. compile): "
        f"{init_seconds(plan.step_size, plan.model_overrides(plan.step_size)):.1f} s"
    )
    add_row = rec.table(
        f"One client's local step, {plan.step_size} model "
        f"({'bf16 compute, remat, layer-drop off' if plan.step_size == 'paper' else 'float32'}). "
        "MFU = model FLOPs (6 · params · frames) per second ÷ peak; with remat the forward "
        "pass runs twice (8 · params · frames) unless the remat policy keeps the matmuls",
        [
            "batch",
            "remat keeps",
            "compile s",
            "ms / step",
            "model TFLOP / step",
            "model TFLOP/s",
            "MFU",
            "MFU with remat recompute",
        ],
    )
    config, params = common.asr_task(plan.step_size, **plan.task_args(plan.step_size))[:2]
    from fl_dp_asr.models import asr

    num_params = asr.count_params(params)
    policies = plan.step_remat_policies if config.remat else (config.remat_policy,)
    for utterances, seconds in plan.step_batches:
        for policy in policies:
            if rec.over_budget(f"local step {utterances} × {seconds:g} s, remat keeps {policy}"):
                return
            common.log(
                f"  local step: {plan.step_size}, {utterances} × {seconds:g} s, "
                f"remat keeps {policy}"
            )
            r = local_step(
                plan.step_size,
                utterances,
                seconds,
                plan.repeats,
                plan.task_args(plan.step_size),
                remat_policy=policy,
            )
            frames = utterances * seconds / config.frame_seconds
            flops = targets.model_flops(num_params, frames)
            tflops = flops / r["step_s"] / 1e12
            add_row(
                [
                    f"{utterances} × {seconds:g} s = {utterances * seconds:g} s",
                    policy if config.remat else "(no remat)",
                    r["compile_s"],
                    1e3 * r["step_s"],
                    flops / 1e12,
                    tflops,
                    _mfu(flops, r["step_s"], peak),
                    _mfu(targets.model_flops(num_params, frames, 8), r["step_s"], peak)
                    if config.remat
                    else "(no remat)",
                ]
            )


def _mfu(flops: float, seconds: float, peak: float | None) -> str:
    return f"{100 * flops / seconds / 1e12 / peak:.1f} %" if peak else "n/a"


# ------------------------------------------------------------------ 2./3. round steps


def time_round(step, params, opt, block, key, repeats: int) -> tuple[float, float]:
    """(first-call seconds incl. compile, median seconds per round)."""
    first = common.time_call(
        lambda: common.block_until_ready(step(common.fresh_state(params, opt), block, key))
    )

    def run():
        state = common.fresh_state(params, opt)
        common.block_until_ready(state)
        common.block_until_ready(step(state, block, key))

    return first, common.median([common.time_call(run) for _ in range(repeats)])


def compare_executors(
    size: str,
    task_args: dict[str, Any],
    cohort: int,
    chunks: Sequence[int],
    shape: common.ClientShape,
    repeats: int,
    add_row: Callable[[list[Any]], None],
    *,
    search: bool,
    extra: Callable[[float], list[Any]] = lambda per_round: [],
    over_budget: Callable[[str], bool] = lambda what: False,
) -> Callable[[], Any] | None:
    """Rows ``[executor, first call s, s/round, clients/s, *extra(s/round)]``: vectorized
    chunks, then sequential.

    ``task_args``: :meth:`Plan.task_args` of ``size``. ``search``: chunks are alternatives,
    largest first; only the largest that fits runs. Otherwise a chunk that does not fit
    gets an "out of memory" row. ``over_budget(what)`` is asked before each compilation
    (:meth:`Recorder.over_budget`): once it says so, the rest is skipped. Returns a call of
    one round of the (last) vectorized step that ran, for profiling (None if none ran).
    """
    import jax

    config = common.asr_task(size, **task_args)[0]
    block = jax.device_put(common.synthetic_cohort(cohort, shape, vocab_size=config.vocab_size))
    key = jax.random.key(0)
    ran: dict[str, Callable[[], Any]] = {}

    def row(name: str, first: float, per_round: float) -> None:
        add_row([name, first, per_round, cohort / per_round, *extra(per_round)])

    def vectorized(chunk):
        if over_budget(f"round {size}/{cohort}, vectorized chunk {chunk}"):
            raise _BudgetSpent
        common.log(f"  round: {size}/{cohort} vectorized chunk {chunk}")
        step, params, opt = common.make_asr_step(size, cohort, chunk_size=chunk, **task_args)
        result = time_round(step, params, opt, block, key, repeats)
        ran["round"] = lambda: step(common.fresh_state(params, opt), block, key)
        return result

    try:
        if search:
            chunk, result, notes = largest_fitting(chunks, vectorized)
            row(
                f"vectorized, chunk {chunk} (largest that fits"
                + (f"; {', '.join(notes)}" if notes else "")
                + ")",
                *result,
            )
        else:
            for chunk in chunks:
                try:
                    row(f"vectorized, chunk {chunk}", *vectorized(chunk))
                except Exception as error:
                    if not is_out_of_memory(error):
                        raise
                    add_row([f"vectorized, chunk {chunk}", "out of memory", "", ""])
    except _BudgetSpent:
        return ran.get("round")
    if over_budget(f"round {size}/{cohort}, sequential"):
        return ran.get("round")
    common.log(f"  round: {size}/{cohort} sequential")
    step, params, opt = common.make_asr_step(size, cohort, executor="sequential", **task_args)
    row("sequential", *time_round(step, params, opt, block, key, repeats))
    return ran.get("round")


class _BudgetSpent(Exception):
    """Raised out of a chunk attempt when the device check's budget is spent."""


ROUND_HEADERS = ["executor", "first call s (compile)", "s / round", "clients/s"]


def round_frames(shape: common.ClientShape, cohort: int, frame_seconds: float) -> float:
    """Encoder frames the round's local steps compute: every client's real steps × batch ×
    padded frames (the paper round's utterances fill their padding)."""
    block = common.synthetic_cohort(cohort, shape)
    steps = float(block["step_mask"].sum())
    return steps * shape.batch_size * shape.max_seconds_padded / frame_seconds


def section_paper_round(
    plan: Plan, rec: Recorder, peak: float | None, profile: bool = False
) -> None:
    from fl_dp_asr.models import asr

    s = plan.round_shape
    config, params = common.asr_task(plan.round_size, **plan.task_args(plan.round_size))[:2]
    frames = round_frames(s, plan.round_cohort, config.frame_seconds)
    flops = targets.model_flops(asr.count_params(params), frames)
    remat_flops = targets.model_flops(asr.count_params(params), frames, 8) if config.remat else None
    add_row = rec.table(
        f"Round step, {plan.round_size} model, cohort {plan.round_cohort}: every client "
        f"{s.local_steps} local steps × {s.batch_size} utterances of "
        f"{s.min_seconds:g}–{s.max_seconds:g} s (padded {s.max_seconds_padded:g} s), "
        f"per-layer clipping, noise, LAMB. Round MFU = model FLOPs of all clients' local "
        f"steps (6 · params · frames = {flops / 1e12:.4g} TFLOP) ÷ round time ÷ peak",
        [*ROUND_HEADERS, "model TFLOP/s", "round MFU", "round MFU with remat recompute"],
    )

    def mfu_columns(per_round: float) -> list[Any]:
        return [
            flops / per_round / 1e12,
            _mfu(flops, per_round, peak),
            _mfu(remat_flops, per_round, peak) if remat_flops else "(no remat)",
        ]

    one_round = compare_executors(
        plan.round_size,
        plan.task_args(plan.round_size),
        plan.round_cohort,
        plan.round_chunks,
        s,
        plan.repeats,
        add_row,
        search=True,
        extra=mfu_columns,
        over_budget=rec.over_budget,
    )
    if profile and one_round is not None and not rec.over_budget("profile"):
        section_profile(rec, one_round, plan.profile_rounds)


def section_profile(
    rec: Recorder, one_round: Callable[[], Any], rounds: int, top: int = 15
) -> None:
    """Top ops by time of ``rounds`` calls of ``one_round`` (a ``jax.profiler`` trace)."""
    common.log(f"  profile: {rounds} rounds")
    common.block_until_ready(one_round())  # warm: nothing compiles inside
    per_op, total_ms = common.trace_op_times(one_round, rounds)
    add_row = rec.table(
        f"Profile of the vectorized round (jax.profiler, {rounds} rounds): top {top} ops by "
        f"device time; all traced ops: {total_ms:.1f} ms per round",
        ["op", "ms / round", "% of traced op time", "calls / round"],
    )
    for name, (ms, calls) in per_op[:top]:
        add_row([name[:90], ms, f"{100 * ms / total_ms:.1f} %" if total_ms else "", calls])


def section_cohort_rounds(plan: Plan, rec: Recorder) -> None:
    s = plan.cohort_shape
    add_row = rec.table(
        f"Round step, cohort {plan.cohort}, Common Voice-like clients ({s.min_utterances}–"
        f"{s.max_utterances} utterances of {s.min_seconds:g}–{s.max_seconds:g} s, batch "
        f"{s.batch_size}, ≤ {s.local_steps} local steps)",
        ["model", *ROUND_HEADERS],
    )
    for size in plan.cohort_sizes:
        compare_executors(
            size,
            plan.task_args(size),
            plan.cohort,
            plan.cohort_chunks,
            plan.cohort_shape,
            plan.repeats,
            lambda row, size=size: add_row([size, *row]),
            search=False,
            over_budget=rec.over_budget,
        )


# ------------------------------------------------------------------ 4. compile per bucket


def section_compile(plan: Plan, rec: Recorder) -> None:
    from benchmarks import compile as compile_bench

    if not plan.compile_sizes:
        return
    add_row = rec.table(
        "Compile time of the vectorized round step (cohort 16, chunk 4) per length bucket, "
        "nothing cached",
        ["model", "bucket (audio / label)", "trace+lower s", "XLA compile s"],
    )
    for size in plan.compile_sizes:
        for seconds, label_len in compile_bench.BUCKETS:
            if rec.over_budget(f"compile: {size} bucket {seconds:g} s"):
                return
            common.log(f"  compile: {size} bucket {seconds:g} s")
            add_row(
                [
                    size,
                    f"{seconds:g} s / {label_len}",
                    *compile_bench.compile_seconds(size, seconds, label_len),
                ]
            )


# ------------------------------------------------------------------ 5. tests on the device


TEST_COMMAND = (
    "-m",
    "pytest",
    "-q",
    "-x",
    "-p",
    "no:cacheprovider",
    "tests/fl/test_round.py",
    "-k",
    "sharded or memory or transfer or agree",
)


def section_tests(rec: Recorder, timeout_s: float) -> None:
    command = [sys.executable, *TEST_COMMAND]
    # This process holds most device memory (the allocator preallocates): the child
    # allocates on demand.
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    common.log("  tests: " + " ".join(TEST_COMMAND))
    try:
        done = subprocess.run(
            command, cwd=common.REPO, env=env, capture_output=True, text=True, timeout=timeout_s
        )
        lines = (done.stdout + done.stderr).strip().splitlines()
        summary = lines[-1] if lines else "(no output)"
        status = "passed" if done.returncode == 0 else f"FAILED (rc {done.returncode})"
        if done.returncode:
            print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
    except subprocess.TimeoutExpired:
        status, summary = "TIMED OUT", f"after {timeout_s:.0f} s"
    rec.note(f"`python {' '.join(TEST_COMMAND[1:])}` on the device: {status}: {summary}")


# ------------------------------------------------------------------ driver


class Recorder:
    """The report under construction; every new row or note is printed and, with ``out``,
    written to that file at once, so a run killed mid-section keeps what it measured."""

    def __init__(self, report: common.Report, out: pathlib.Path | None, budget_s: float = math.inf):
        self.report, self.out = report, out
        self.budget_s = budget_s
        self.start = time.perf_counter()

    def over_budget(self, what: str) -> bool:
        """True, with a note that ``what`` is skipped, once the budget is spent: no section
        and no row of one starts after it, so one device call stays within its limit."""
        elapsed = time.perf_counter() - self.start
        if elapsed <= self.budget_s:
            return False
        self.note(
            f"{what} SKIPPED: {elapsed:.0f} s of the {self.budget_s:.0f} s budget spent "
            "(run it alone with --only)"
        )
        return True

    def table(self, caption: str, headers: Sequence[str]) -> Callable[[list[Any]], None]:
        """Adds an empty table; returns ``add_row(row)``."""
        rows: list[list[Any]] = []
        index = len(self.report.tables)
        self.report.tables.append((caption, common.markdown_table(headers, rows)))

        def add_row(row: list[Any]) -> None:
            rows.append(row)
            self.report.tables[index] = (caption, common.markdown_table(headers, rows))
            common.log("    | " + " | ".join(str(v) for v in row))
            self.flush()

        self.flush()
        return add_row

    def note(self, text: str) -> None:
        self.report.notes.append(text)
        common.log(f"    {text}")
        self.flush()

    def flush(self) -> None:
        if self.out is not None:
            self.out.write_text(self.report.markdown(), encoding="utf-8")


def run(
    plan: Plan,
    out: pathlib.Path | None = None,
    budget_s: float = 420.0,
    only: Sequence[str] | None = None,
    profile: bool = False,
    tests_budget_s: float = 120.0,
) -> common.Report:
    """Runs the sections of ``plan`` in :data:`SECTIONS` order; a failing section is noted,
    not fatal, and a section that would start after ``budget_s`` is skipped with a note."""
    import jax

    device = jax.devices()[0]
    peak = peak_tflops(device.device_kind)
    rec = Recorder(
        common.Report(
            "Device check" + (" (dry run: tiny shapes)" if plan is DRY_RUN else ""),
            f"`python -m benchmarks.device_check{' --dry-run' if plan is DRY_RUN else ''}"
            f"{' --only ' + ','.join(only) if only else ''}{' --profile' if profile else ''}`; "
            f"{jax.device_count()} × {device.device_kind}; dense bf16 peak used for MFU: "
            f"{f'{peak:g} TFLOP/s' if peak else 'unknown (no MFU)'}; repeats {plan.repeats} "
            "(medians), first calls include compilation",
        ),
        out,
        budget_s,
    )
    sections: dict[str, Callable[[], None]] = {
        "tests": lambda: section_tests(rec, tests_budget_s),
        "local step": lambda: section_local_step(plan, rec, peak),
        "paper round": lambda: section_paper_round(plan, rec, peak, profile),
        "cohort rounds": lambda: section_cohort_rounds(plan, rec),
        "compile per bucket": lambda: section_compile(plan, rec),
    }
    assert tuple(sections) == SECTIONS
    for name in SECTIONS:
        if (only and name not in only) or (name == "tests" and not plan.run_tests):
            continue
        if rec.over_budget(f"section '{name}'"):
            continue
        began = time.perf_counter()
        common.log(f"section {name}")
        try:
            sections[name]()
        except Exception as error:  # noqa: BLE001 -- report and go on to the next one
            lines = str(error).strip().splitlines()
            rec.note(
                f"section '{name}' FAILED: {type(error).__name__}: "
                f"{lines[0][:300] if lines else ''}"
            )
        rec.note(f"section '{name}': {time.perf_counter() - began:.0f} s")
        jax.clear_caches()
    rec.note(f"whole check: {time.perf_counter() - rec.start:.0f} s")
    return rec.report


def main(argv: Sequence[str] | None = None) -> common.Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny shapes, any machine (< 2 min on 2 CPU cores)"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="do not append to docs/benchmarks.md"
    )
    parser.add_argument("--out", type=pathlib.Path, help="also write the report here, row by row")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="no section or row starts after this many seconds (default "
        "420: one 8-minute device call with start-up and transfers)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="trace the paper round with jax.profiler; report the top ops",
    )
    parser.add_argument("--only", help="comma-separated sections: " + ", ".join(SECTIONS))
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    if only and (unknown := set(only) - set(SECTIONS)):
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    common.setup()
    report = run(DRY_RUN if args.dry_run else Plan(), args.out, args.budget_s, only, args.profile)
    common.publish(report, None if args.no_write else common.REPORT)
    return report


if __name__ == "__main__":
    main()
