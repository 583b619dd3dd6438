"""Benchmark 2: memory of the round step vs cohort size (must stay flat) and vs chunk size.

Two measures per setting:

* compiled temp memory — ``step.lower(...).compile().memory_analysis().temp_size_in_bytes``:
  the scratch buffers XLA allocates for one call, excluding arguments and outputs;
* peak RSS (``VmHWM``, Linux) during one round, in a fresh process per setting (so that
  allocator caches of one setting do not hide another's peak), reset after compilation
  and a warm-up round through ``/proc/self/clear_refs``: everything resident — Python,
  XLA runtime and code, parameters, server state, the cohort block (host and device
  copies) and the step's buffers.

To execute cohorts up to 1024 clients in seconds on a CPU, the clients here are light
(1–4 utterances of 1 s: 1–2 local steps of batch 2, padded to 2 steps); the model and the
round step are the real ones. ``--batch-size 1`` shows an XLA:CPU quirk of the current
engine: with a size-1 batch axis the reshape of the cohort into chunks gets a layout that
XLA fixes with a full copy of the cohort audio, so temp memory grows with the cohort.

    python -m benchmarks.memory [--quick | --full]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

from benchmarks import common

LIGHT = common.ClientShape(
    min_utterances=1,
    max_utterances=4,
    batch_size=2,
    local_steps=2,
    max_seconds=1.0,
    max_seconds_padded=1.0,
    max_label_len=16,
)


def grid(mode: str) -> tuple[list[int], int, list[int], int]:
    """(cohorts at the fixed chunk, fixed chunk, chunk sizes, cohort for the chunk sweep)."""
    if mode == "quick":
        return [16, 32], 8, [], 32
    if mode == "full":
        return [16, 32, 64, 128, 256, 512, 1024], 8, [1, 2, 4, 8, 16, 32, 64], 256
    return [16, 128, 1024], 8, [2, 8, 32], 128


def _rss_kib(field: str) -> int:
    text = pathlib.Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def measure_round(
    size: str, cohort: int, chunk: int, shape: common.ClientShape = LIGHT
) -> dict[str, float]:
    """Compiled memory and peak RSS of one round step (run this in a fresh process)."""
    import jax

    step, params, opt = common.make_asr_step(size, cohort, chunk_size=chunk)
    block = jax.device_put(common.synthetic_cohort(cohort, shape))
    key = jax.random.key(0)
    state = common.fresh_state(params, opt)
    stats = step.lower(state, block, key).compile().memory_analysis()
    common.block_until_ready(step(state, block, key))  # warm-up: compiles the call path
    state = common.fresh_state(params, opt)
    common.block_until_ready(state)
    pathlib.Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux)
    common.block_until_ready(step(state, block, key))
    return {
        "temp_mib": stats.temp_size_in_bytes / 2**20,
        "block_mib": sum(x.nbytes for x in jax.tree.leaves(block)) / 2**20,
        "peak_rss_mib": _rss_kib("VmHWM") / 1024,
    }


def measure_in_subprocess(size: str, cohort: int, chunk: int, batch_size: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.memory",
            "--worker",
            "--size",
            size,
            "--cohort",
            str(cohort),
            "--chunk",
            str(chunk),
            "--batch-size",
            str(batch_size),
        ],
        cwd=common.REPO,
        env=dict(os.environ, PYTHONPATH=str(common.REPO)),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(next(x for x in out.splitlines()[::-1] if x.startswith("{")))


def _shape(batch_size: int) -> common.ClientShape:
    return dataclasses.replace(
        LIGHT, batch_size=batch_size, max_utterances=LIGHT.local_steps * batch_size
    )


def run(mode: str = "default", size: str = "tiny", batch_size: int = 2) -> common.Report:
    cohorts, fixed_chunk, chunks, sweep_cohort = grid(mode)
    shape = _shape(batch_size)
    measured: dict[tuple[int, int], dict] = {}  # each (cohort, chunk) once

    def row(cohort: int, chunk: int) -> list:
        if (cohort, chunk) not in measured:
            common.log(f"  memory: {size} cohort {cohort} chunk {chunk}")
            measured[cohort, chunk] = measure_in_subprocess(size, cohort, chunk, batch_size)
        m = measured[cohort, chunk]
        return [
            cohort,
            chunk,
            m["temp_mib"],
            m["block_mib"],
            m["peak_rss_mib"],
            m["peak_rss_mib"] - 2 * m["block_mib"],
        ]

    rows = [row(cohort, fixed_chunk) for cohort in cohorts]
    chunk_rows = [row(sweep_cohort, chunk) for chunk in chunks]
    temps = [r[2] for r in rows]
    flat = max(temps) <= 1.2 * min(temps)
    report = common.Report(
        "Memory of the round step vs cohort size and chunk size",
        f"mode={mode}; {size} model, vectorized executor, per-layer clipping + noise + LAMB; "
        f"light clients (1–{shape.max_utterances} utterances of 1 s, local batch "
        f"{shape.batch_size}, {shape.local_steps} local steps) so that 1024 clients run in "
        "seconds. Peak RSS = VmHWM during one round (after compile and a warm-up round) in a "
        "fresh process per setting; the cohort block is resident twice (numpy and device "
        "copy).",
    )
    headers = [
        "cohort",
        "chunk",
        "compiled temp (MiB)",
        "cohort block (MiB)",
        "peak RSS (MiB)",
        "peak RSS − 2 × block (MiB)",
    ]
    report.add_table(f"Cohort sweep at chunk {fixed_chunk}", headers, rows)
    if chunk_rows:
        report.add_table(f"Chunk sweep at cohort {sweep_cohort}", headers, chunk_rows)
    report.notes.append(
        f"Compiled temp memory across cohorts {cohorts[0]}→{cohorts[-1]}: "
        f"{min(temps):.1f}–{max(temps):.1f} MiB → "
        + ("flat (≤ 1.2×): target met." if flat else "NOT flat: target missed.")
    )
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_const", const="quick", dest="mode")
    parser.add_argument("--full", action="store_const", const="full", dest="mode")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch-size", type=int, default=2, help="local batch B")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cohort", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    common.setup()
    if args.worker:
        print(
            json.dumps(measure_round(args.size, args.cohort, args.chunk, _shape(args.batch_size)))
        )
        return
    common.publish(
        run(args.mode or "default", args.size, args.batch_size),
        None if args.no_write else common.REPORT,
    )


if __name__ == "__main__":
    main()
