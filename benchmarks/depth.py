"""Benchmark: compile time and program size of the round step vs model depth.

The tiny model's width (dim 144, MLP 576) at 4, 8, 16 and 36 blocks; vectorized executor,
cohort 4, chunk 2, 2 local steps × batch 2 of 4 s, the trainer's padding cuts (3 × 2),
per-layer clipping + noise + LAMB. Abstract inputs (nothing allocated), persistent cache
off. A program that runs its blocks as one scanned body compiles in about the same time at
every depth; an unrolled one grows faster than linearly.

    python -m benchmarks.depth [--quick | --full] [--no-write]
    python -m benchmarks.depth --depths 4,36       # any depths
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from benchmarks import common
from benchmarks import compile as compile_bench

SHAPE = dataclasses.replace(common.ClientShape(), local_steps=2)
COHORT, CHUNK = 4, 2


def grid(mode: str) -> tuple[int, ...]:
    return {"quick": (2, 4), "full": (4, 8, 16, 36)}.get(mode, (4, 36))


def measure(depth: int) -> dict[str, float]:
    """``trace_s`` (trace + lower), ``compile_s`` (XLA) and ``hlo_mb`` (StableHLO text)."""
    trace_s, compile_s, lowered = compile_bench.time_compile(
        "tiny", COHORT, CHUNK, SHAPE, num_blocks=depth
    )
    return {"trace_s": trace_s, "compile_s": compile_s, "hlo_mb": len(lowered.as_text()) / 1e6}


def run(depths: Sequence[int]) -> common.Report:
    rows, first = [], None
    for depth in depths:
        common.log(f"  depth {depth}")
        m = measure(depth)
        total = m["trace_s"] + m["compile_s"]
        first = first or total
        rows.append(
            [depth, m["trace_s"], m["compile_s"], total, f"{total / first:.2f}×", m["hlo_mb"]]
        )
        common.log("    | " + " | ".join(str(v) for v in rows[-1]))
    report = common.Report(
        "Round-step compile time vs depth",
        f"tiny width, cohort {COHORT}, chunk {CHUNK}, {SHAPE.local_steps} local steps × batch "
        f"{SHAPE.batch_size} of {SHAPE.max_seconds_padded:g} s, padding cuts 3 × 2, per-layer "
        "clipping + noise + LAMB; persistent compilation cache off",
    )
    report.add_table(
        "",
        [
            "blocks",
            "trace+lower s",
            "XLA compile s",
            "total s",
            f"vs {depths[0]} blocks",
            "StableHLO MB",
        ],
        rows,
    )
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_const", const="quick", dest="mode")
    parser.add_argument("--full", action="store_const", const="full", dest="mode")
    parser.add_argument("--depths", help="comma-separated numbers of blocks")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    depths = (
        tuple(int(d) for d in args.depths.split(","))
        if args.depths
        else grid(args.mode or "default")
    )
    common.setup(cache=False)
    common.publish(run(depths), None if args.no_write else common.REPORT)


if __name__ == "__main__":
    main()
