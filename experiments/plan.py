r"""Plan a run for a TPU slice or GPU box from the compiler alone: ``fl-dp-asr-plan``.

    fl-dp-asr-plan --config experiments/configs/fl_dp.py:paper --topology v5e-256
    fl-dp-asr-plan --config experiments/configs/fl_dp.py:paper --topology v5p-128 \
        --config.dp.mechanism=blt --config.fl.sampling=cyclic --config.fl.min_separation=20
    JAX_PLATFORMS=cpu fl-dp-asr-plan --config experiments/configs/fl_dp.py:paper \
        --topology h100x8                       # needs the CUDA plugin, not a GPU

Builds the trainer's **real** round step for the config (:func:`experiments.fl_round_step.
make_round_step`: model, local training, clipping, noise, server optimizer, canaries,
adaptive clipping, DP-FTRL) on the target's compile-only devices
(:mod:`fl_dp_asr.aot.targets`), sharded over all of them, compiles it with the target's own
compiler (libtpu, XLA:GPU) and prints, as markdown:

* per chip: argument, temp, output and aliased bytes against the chip's memory, "fits" or
  "does not fit" and the headroom;
* the largest chunk (clients vectorized at once per chip) that fits, found by compiling
  (``--chunk`` fixes it instead);
* compile time and program size;
* the collectives of the optimized program and their bytes per round; a parameter-sized
  collective inside a loop (per client or per step) is an error;
* model FLOPs per round, the compiled program's loop-aware FLOPs and memory traffic
  (:mod:`fl_dp_asr.aot.hlo`), and from them a lower bound on the round's time (compiled
  FLOPs at the chip's peak), a roofline estimate (with the traffic at its bandwidth) and an
  upper bound on MFU (model / compiled FLOPs).

Everything is the compiler's view, not a run: nothing is measured on a device.

Exit status: 0 when the config fits; 1 when it does not fit at any chunk, or a
parameter-sized collective sits inside a loop (the table is printed first); 2 for a bad
flag or config field.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import jax
import ml_collections

from experiments import fl_setup
from experiments.planner import (
    GIB,
    Compiled,
    Planner,
    RoundShape,
    clients_per_chip,
    default_population,
    fits,
    largest_chunk,
    parameter_bytes,
    parameter_shapes,
)
from fl_dp_asr.aot import hlo, targets
from fl_dp_asr.train import utils

NO_TRITON_GEMM = "--xla_gpu_enable_triton_gemm=false"
# A collective inside a loop moving at least this share of the parameters' bytes is one that
# gathers or reduces parameters per client or per local step: refused.
PARAMETER_SIZED = 0.1


# ------------------------------------------------------------------ the report


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def _seconds(value: float) -> str:
    """``3.46 s``, ``57.7 min``, ``1.1 h``."""
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 600:
        return f"{value / 60:.1f} min"
    return f"{value:.3g} s"


def model_flops_per_chip(
    config: ml_collections.ConfigDict, shape: RoundShape, num_chips: int
) -> float:
    """6 · parameters · encoder frames of the round's local training per chip, every slot
    real (the usual MFU numerator, :func:`fl_dp_asr.aot.targets.model_flops`: forward +
    backward, no attention term)."""
    model_config = utils.model_config_from(config.model)
    num_params = sum(x.size for x in parameter_shapes(config))
    frames = (
        shape.num_slots
        / num_chips
        * shape.local_steps
        * shape.batch_size
        * shape.seconds
        / model_config.frame_seconds
    )
    return targets.model_flops(num_params, frames)


def roofline_seconds(cost: hlo.HloCost, chip: targets.Chip) -> float:
    """The round's time at the chip's peak FLOP/s or HBM bandwidth, whichever binds."""
    return max(cost.flops / chip.peak_flops, cost.hbm_bytes / chip.hbm_bandwidth)


def report(
    planner: Planner, best: Compiled, tried: Sequence[Compiled], rounds: int, params_bytes: int
) -> tuple[str, list[str]]:
    """The markdown report and the list of problems (empty: the plan holds)."""
    target, chip = planner.target, planner.target.chip
    cost = best.cost
    shape = planner.round_shape(best.num_slots)
    problems = []
    if best.refused:
        problems.append(f"does not fit at chunk {best.chunk}: the compiler says {best.refused}")
    elif not fits(best, chip):
        problems.append(
            f"does not fit: {_gib(best.peak_bytes)} GiB per chip at chunk "
            f"{best.chunk}, the chip has {_gib(chip.hbm_bytes)} GiB"
        )
    in_loop = [
        c
        for c in cost.collectives
        if c.loop_depth > 0 and c.bytes >= PARAMETER_SIZED * params_bytes
    ]
    problems += [
        f"parameter-sized {c.op} {c.name} ({c.bytes / 2**20:.1f} MiB) inside a "
        f"loop, {c.per_round} times per round: the client loop moves parameters"
        for c in in_loop
    ]
    model = model_flops_per_chip(planner.config, shape, target.num_chips)
    compute_s = cost.flops / chip.peak_flops
    memory_s = cost.hbm_bytes / chip.hbm_bandwidth
    roofline_s = roofline_seconds(cost, chip)
    mfu_bound = model / cost.flops if cost.flops > 0 else float("nan")
    mfu_roofline = model / (chip.peak_flops * roofline_s) if roofline_s > 0 else float("nan")
    fl = planner.config.fl
    lines = [
        f"## Plan: `{target.name}` ({target.num_chips} × {chip.name}, "
        f"{targets.num_hosts(planner.devices)} hosts, topology `{target.topology}`)",
        "",
        f"The trainer's round step, compiled for the target by its own compiler "
        f"(jax {jax.__version__}); **the compiler's numbers, not a run**. Cohort "
        f"S = {fl.cohort_size} ({fl.sampling}, population {planner.population:,}): "
        f"{shape.num_slots} client slots, {shape.num_slots // target.num_chips} per chip; "
        f"{shape.local_steps} local steps × {shape.batch_size} utterances × "
        f"{shape.seconds:g} s padded; model `{planner.config.model.size}`; "
        f"clipping {planner.config.dp.clipping}, noise {planner.config.dp.mechanism}, "
        f"server {planner.config.server.optimizer}.",
        "",
        "| chunk | clients per chip | arguments GiB | temp GiB | output GiB | aliased GiB | "
        f"code GiB | peak GiB / {_gib(chip.hbm_bytes)} | fits | roofline s / round | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in tried:
        mm, mark = c.memory, f"{c.chunk}{' ←' if c is best else ''}"
        if mm is None:  # refused by the compiler
            lines.append(
                f"| {mark} | {c.num_slots // target.num_chips} | | "
                f"{_gib(c.required_bytes)} (compiler) | | | | | does not fit | | "
                f"{c.compile_s:.0f} |"
            )
            continue
        lines.append(
            f"| {mark} | {c.num_slots // target.num_chips} | "
            f"{_gib(mm.argument_size_in_bytes)} | "
            f"{_gib(mm.temp_size_in_bytes)} | {_gib(mm.output_size_in_bytes)} | "
            f"{_gib(mm.alias_size_in_bytes)} | {_gib(mm.generated_code_size_in_bytes)} | "
            f"{_gib(c.peak_bytes)} | {'fits' if fits(c, chip) else 'does not fit'} | "
            f"{roofline_seconds(c.cost, chip):.3g} | {c.compile_s:.0f} |"
        )
    lines += [
        f"- Chunk {c.chunk}: refused by the compiler: {c.refused}" for c in tried if c.refused
    ]
    fastest = min(
        (c for c in tried if fits(c, chip)),
        default=best,
        key=lambda c: roofline_seconds(c.cost, chip),
    )
    headroom = chip.hbm_bytes - best.peak_bytes
    lines += [
        "",
        f"- **Chunk {best.chunk}**: {_gib(best.peak_bytes)} GiB per chip, headroom "
        f"{_gib(headroom)} GiB ({headroom / chip.hbm_bytes:.0%}); compiled in "
        f"{best.compile_s:.0f} s on this machine; optimized HLO {best.hlo_chars / 1e6:.1f} M "
        f"characters, {len(cost.loops)} loops."
        + (
            ""
            if fastest is best
            else f" The smallest roofline estimate is chunk {fastest.chunk}'s: a larger chunk pads "
            "the round with more client slots (the slots are a multiple of chunk × chips)."
        ),
        f"- Chip memory and peaks: {chip.source}.",
        "",
        "| collective | MiB per run | per round | inside loops | MiB per round |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {c.op} `{c.name}` | {c.bytes / 2**20:.2f} | {c.per_round} | {c.loop_depth} | "
        f"{c.bytes * c.per_round / 2**20:.2f} |"
        for c in cost.collectives
    ]
    if not cost.collectives:
        lines.append("| (none) | | | | |")
    lines += [
        "",
        f"- Parameters: {params_bytes / 2**20:.1f} MiB; a collective inside a loop moving "
        f"≥ {PARAMETER_SIZED:.0%} of that is refused.",
        "",
        "| per chip, per round | value |",
        "|---|---|",
        f"| model FLOPs (6 · N · frames, every slot real) | {model:.3e} |",
        f"| compiled dot/conv FLOPs (loop-aware) | {cost.flops:.3e} |",
        f"| compiled HBM traffic (estimate) | {cost.hbm_bytes / GIB:.1f} GiB |",
        f"| **lower bound per round**: compiled FLOPs at peak "
        f"({chip.peak_flops / 1e12:.0f} TFLOP/s) | **{_seconds(compute_s)}** |",
        f"| lower bound for {rounds} rounds | {_seconds(compute_s * rounds)} |",
        f"| traffic at HBM bandwidth ({chip.hbm_bandwidth / 1e9:,.0f} GB/s) | "
        f"{_seconds(memory_s)} |",
        f"| roofline estimate per round (the larger of the two) | {_seconds(roofline_s)} |",
        f"| roofline estimate for {rounds} rounds | {_seconds(roofline_s * rounds)} |",
        f"| **MFU upper bound** (model / compiled FLOPs) | **{mfu_bound:.0%}** |",
        f"| MFU at the roofline estimate | {mfu_roofline:.0%} |",
        "",
        "The compiled FLOPs are exact (every loop trip counted): no round can take less than "
        "the lower bound, and MFU cannot exceed model / compiled FLOPs (remat's recompute and "
        "attention make the compiled FLOPs exceed 6·N·frames). The traffic is an estimate "
        "(operands and results of every kernel outside on-chip memory), so the roofline is an "
        "estimate, not a bound.",
    ]
    if cost.unknown_loops:
        lines.append(
            f"- {len(cost.unknown_loops)} loops without a readable trip count were "
            "counted once: FLOPs and traffic are underestimated."
        )
    if problems:
        lines += ["", "**Problems:**", *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n", problems


def plan(
    config: ml_collections.ConfigDict,
    topology: str,
    *,
    seconds: float = 8.0,
    population: int | None = None,
    chunk: int | None = None,
    log=print,
    hlo_dir: str | None = None,
) -> tuple[str, list[str]]:
    """The plan's markdown report and its problems (module docstring)."""
    fl_setup.check_config(config)
    target = targets.target(topology)
    note = ""
    if target.chip.platform == "cuda" and "triton_gemm" not in os.environ.get("XLA_FLAGS", ""):
        # Deviceless, XLA:GPU cannot autotune (no GPU to time kernels on) and its Triton GEMM
        # emitter then rejects the default tiling of some dots (the front end's weight
        # gradient): cuBLAS does the GEMMs instead.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {NO_TRITON_GEMM}".strip()
        note = (
            f"\n- Compiled with `XLA_FLAGS={NO_TRITON_GEMM}`: without a GPU there is no "
            "autotuning, and XLA's Triton GEMM emitter refuses the default tiling of the "
            "front end's weight gradient (`Couldn't find output tile sizes`); cuBLAS runs "
            "the GEMMs instead. A compile on a real GPU autotunes (not verified here).\n"
        )
    devices = targets.abstract_devices(target)
    planner = Planner(
        config, target, devices, seconds, population or default_population(config), hlo_dir=hlo_dir
    )
    if chunk is None:
        best, tried = largest_chunk(planner, clients_per_chip(planner), log)
        if best is None:
            best = tried[0]
    else:
        best = planner.compile(chunk)
        tried = [best]
    text, problems = report(planner, best, tried, config.fl.rounds, parameter_bytes(config))
    return text + note, problems


# ------------------------------------------------------------------ command line


def main(argv: Sequence[str]) -> None:
    del argv
    from absl import logging as absl_logging

    from fl_dp_asr.train import cli

    absl_logging.set_verbosity(absl_logging.WARNING)
    text, problems = plan(
        _CONFIG.value,
        _TOPOLOGY.value,
        seconds=_SECONDS.value,
        population=_POPULATION.value,
        chunk=_CHUNK.value,
        log=lambda message: print(message, file=sys.stderr, flush=True),
        hlo_dir=_HLO_DIR.value,
    )
    print(text)
    if _OUT.value:
        utils.write_text(_OUT.value, text)
    if problems:
        cli.fail("fl-dp-asr-plan", "; ".join(problems), status=1)


def console_main() -> None:
    """The console script ``fl-dp-asr-plan``: ``python -m experiments.plan``."""
    global _CONFIG, _TOPOLOGY, _SECONDS, _POPULATION, _CHUNK, _OUT, _HLO_DIR
    import functools

    from absl import app, flags
    from ml_collections import config_flags

    from fl_dp_asr.train import cli

    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "trainer config file (fl_dp.py)", lock_config=True
    )
    _TOPOLOGY = flags.DEFINE_string(
        "topology", None, "target: v5e-256, v5p-128, v4-32, v6e-64, h100x8, h200x8, a100x8, ..."
    )
    _SECONDS = flags.DEFINE_float(
        "seconds", 8.0, "padded utterance length of the round's bucket (s); the corpus decides it"
    )
    _POPULATION = flags.DEFINE_integer(
        "population",
        None,
        "users the cohort is drawn from (default: S·K'/S' of the config's extrapolation)",
    )
    _CHUNK = flags.DEFINE_integer(
        "chunk",
        None,
        "clients vectorized per chip (default: the largest that fits, found by compiling)",
    )
    _OUT = flags.DEFINE_string("out", None, "also write the report to this file")
    _HLO_DIR = flags.DEFINE_string(
        "hlo_dir",
        None,
        "also write each compiled program's optimized HLO text there (chunk<N>.hlo.txt)",
    )
    flags.DEFINE_bool("debug", False, "show the traceback of an error instead of one line")
    flags.mark_flags_as_required(["config", "topology"])

    def run(argv):
        try:
            main(argv)
        except (ValueError, RuntimeError, FileNotFoundError) as error:
            if flags.FLAGS.debug:
                raise
            cli.fail(
                "fl-dp-asr-plan",
                cli.config_path_message(str(error), _CONFIG.value),
                status=1 if isinstance(error, RuntimeError) else 2,
            )

    app.run(run, flags_parser=functools.partial(cli.parse_flags, prog="fl-dp-asr-plan"))


if __name__ == "__main__":
    console_main()
