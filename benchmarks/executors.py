"""Benchmark 1: rounds/s and clients/s of the round-step executors on the ASR models.

``vectorized`` (several chunk sizes) and ``sequential`` run side by side in this process,
interleaved round by round; ``sharded`` runs in a subprocess with 8 fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before jax is
imported), next to ``sequential`` and ``vectorized`` runs of that process.
Compile time is excluded (every variant is warmed up first).

    python -m benchmarks.executors [--quick | --full] [--repeats N] [--config tiny:64:4,8[:full]]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

from benchmarks import common

TARGET = ("tiny", 64, "cv")  # vectorized ≥ 1.2× sequential clients/s here
TARGET_RATIO = 1.2
# Client mixes: "cv" = Common Voice-like (1–20 utterances: 1–10 real local steps of 10);
# "full" = every client takes all 10 steps (the paper's protocol: clients cycle through
# their data for 10 steps, pack_cohort's default).
CLIENT_MIXES = {
    "cv": common.ClientShape(),
    "full": dataclasses.replace(common.ClientShape(), min_utterances=20),
}


def grid(mode: str) -> list[dict[str, Any]]:
    """The measured configurations: model size, cohort, vectorized chunk sizes, repeats."""
    if mode == "quick":
        return [dict(size="tiny", cohort=8, chunks=(4,), repeats=2, sharded=False, mix="cv")]
    if mode == "full":
        return [
            dict(
                size=s,
                cohort=c,
                chunks=tuple(k for k in (4, 8, 16, 64) if k <= c),
                repeats=5,
                sharded=True,
                mix=mix,
            )
            for s in ("tiny", "small")
            for c in (16, 64, 256)
            for mix in CLIENT_MIXES
        ]
    return [
        dict(size="tiny", cohort=16, chunks=(2, 4), repeats=3, sharded=True, mix="cv"),
        dict(size="tiny", cohort=64, chunks=(4,), repeats=5, sharded=False, mix="cv"),
        dict(size="tiny", cohort=64, chunks=(4,), repeats=3, sharded=False, mix="full"),
    ]


def _variants(size: str, cohort: int, chunks) -> dict[str, Any]:
    steps = {"sequential": common.make_asr_step(size, cohort, executor="sequential")}
    for chunk in chunks:
        steps[f"vectorized/{chunk}"] = common.make_asr_step(size, cohort, chunk_size=chunk)
    return steps


def measure(
    size: str, cohort: int, variants: dict[str, Any], repeats: int, mix: str = "cv", seed: int = 0
) -> dict[str, list[float]]:
    """Seconds per round of each variant (after one warm-up round each), interleaved."""
    import jax

    block = jax.device_put(common.synthetic_cohort(cohort, CLIENT_MIXES[mix], seed=seed))
    key = jax.random.key(seed)
    for name, (step, params, opt) in variants.items():
        common.log(f"  {size}/{cohort} {name}: compiling + warm-up round")
        common.block_until_ready(step(common.fresh_state(params, opt), block, key))

    def runner(step, params, opt):
        def run():
            state = common.fresh_state(params, opt)
            common.block_until_ready(state)
            common.block_until_ready(step(state, block, key))

        return run

    common.log(f"  {size}/{cohort}: timing {list(variants)} × {repeats}")
    times = common.interleaved({name: runner(*v) for name, v in variants.items()}, repeats)
    common.log(
        f"  {size}/{cohort}: median s/round "
        + ", ".join(f"{name} {common.median(ts):.3g}" for name, ts in times.items())
    )
    return times


def _sharded_worker(args: argparse.Namespace) -> None:
    """Runs in the 8-device subprocess: sequential, vectorized, sharded; printed as JSON."""
    import jax

    assert jax.device_count() == 8, jax.devices()
    variants = {
        "sequential": common.make_asr_step(args.size, args.cohort, executor="sequential"),
        f"vectorized/{args.chunk}": common.make_asr_step(
            args.size, args.cohort, chunk_size=args.chunk
        ),
        f"sharded/{args.chunk}x8": common.make_asr_step(
            args.size, args.cohort, executor="sharded", chunk_size=args.chunk
        ),
    }
    times = measure(args.size, args.cohort, variants, args.repeats, args.mix)
    print("RESULT " + json.dumps(times), flush=True)


def run_sharded(size: str, cohort: int, repeats: int, mix: str) -> dict[str, list[float]]:
    """Sequential, vectorized and sharded in a process with 8 fake CPU devices.

    Chunks of 2 clients per device (small chunks are fastest on CPU)."""
    chunk = 2 if cohort % 16 == 0 else max(1, cohort // 8)
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        PYTHONPATH=str(common.REPO),
    )
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.executors",
        "--sharded-worker",
        "--size",
        size,
        "--cohort",
        str(cohort),
        "--chunk",
        str(chunk),
        "--repeats",
        str(repeats),
        "--mix",
        mix,
    ]
    common.log(f"  {size}/{cohort}: sharded subprocess (8 fake CPU devices)")
    out = subprocess.run(
        cmd, env=env, cwd=common.REPO, check=True, capture_output=True, text=True
    ).stdout
    line = next(x for x in out.splitlines()[::-1] if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def parse_config(text: str) -> dict[str, Any]:
    """``size:cohort:chunk,chunk[:sharded][:full]`` (e.g. ``tiny:64:4,8:full``) → a grid entry.

    ``full``: every client takes all local steps (default: Common Voice-like, 1–10)."""
    size, cohort, chunks, *flags = text.split(":")
    return dict(
        size=size,
        cohort=int(cohort),
        chunks=tuple(int(c) for c in chunks.split(",")),
        repeats=5,
        sharded="sharded" in flags,
        mix="full" if "full" in flags else "cv",
    )


def run(
    mode: str = "default", repeats: int | None = None, configs: list[dict[str, Any]] | None = None
) -> common.Report:
    from fl_dp_asr.data import cohorts

    rows, target_rows, mixes = [], [], {}
    configs = configs or grid(mode)
    for cfg in configs:
        size, cohort, mix = cfg["size"], cfg["cohort"], cfg["mix"]
        reps = repeats or cfg["repeats"]
        stats = cohorts.cohort_summary(common.synthetic_cohort(cohort, CLIENT_MIXES[mix]))
        mixes[mix] = f"{stats['mean_steps']:.2f} real steps/client"
        times = measure(size, cohort, _variants(size, cohort, cfg["chunks"]), reps, mix)
        base = common.median(times["sequential"])
        for name, ts in times.items():
            med = common.median(ts)
            rows.append(
                [
                    size,
                    cohort,
                    mix,
                    name,
                    reps,
                    med,
                    1 / med,
                    cohort / med,
                    base / med,
                    f"{min(ts):.3g}–{max(ts):.3g}",
                ]
            )
        if (size, cohort, mix) == TARGET:
            best = min(
                (n for n in times if n.startswith("vectorized")),
                key=lambda n: common.median(times[n]),
            )
            ratio = base / common.median(times[best])
            target_rows.append(
                [
                    f"{size}, cohort {cohort}, {mix} clients",
                    best,
                    reps,
                    ratio,
                    "met" if ratio >= TARGET_RATIO else "MISSED",
                ]
            )
        if cfg["sharded"]:
            sharded = run_sharded(size, cohort, reps, mix)
            seq = common.median(sharded["sequential"])
            for name, ts in sharded.items():
                med = common.median(ts)
                rows.append(
                    [
                        size,
                        cohort,
                        mix,
                        f"{name} (8-device process)",
                        reps,
                        med,
                        1 / med,
                        cohort / med,
                        seq / med,
                        f"{min(ts):.3g}–{max(ts):.3g}",
                    ]
                )
    report = common.Report(
        "Executors: rounds/s and clients/s",
        f"mode={mode}; synthetic clients (int16 16 kHz audio of 1–4 s, padded to 4 s; local "
        "batch 2, 10 padded local steps); clients 'cv' = Common Voice-like, 1–20 utterances "
        "so 1–10 real local steps, 'full' = every client takes all 10 steps (the paper's "
        "protocol); " + ", ".join(f"{k}: {v}" for k, v in mixes.items()) + "; per-layer "
        "clipping, noise, LAMB server; medians of interleaved runs, compile excluded.",
    )
    report.add_table(
        "",
        [
            "model",
            "cohort",
            "clients",
            "executor/chunk",
            "runs",
            "s/round (median)",
            "rounds/s",
            "clients/s",
            "speed-up vs sequential",
            "range (s)",
        ],
        rows,
    )
    if target_rows:
        report.add_table(
            f"Target: vectorized ≥ {TARGET_RATIO}× sequential clients/s",
            ["setting", "best vectorized", "runs", "clients/s ratio", "target"],
            target_rows,
        )
    report.notes.append(
        "Rows marked (8-device process) run in a separate process with "
        "XLA_FLAGS=--xla_force_host_platform_device_count=8 (8 fake CPU "
        "devices on the same 2 cores); their speed-up is against the "
        "sequential run of that same process."
    )
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_const", const="quick", dest="mode")
    parser.add_argument("--full", action="store_const", const="full", dest="mode")
    parser.add_argument("--repeats", type=int)
    parser.add_argument(
        "--config",
        action="append",
        type=parse_config,
        help="size:cohort:chunks instead of the grid, e.g. tiny:64:4,8",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--sharded-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--cohort", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--mix", default="cv", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    common.setup()
    if args.sharded_worker:
        _sharded_worker(args)
        return
    common.publish(
        run(args.mode or "default", args.repeats, args.config),
        None if args.no_write else common.REPORT,
    )


if __name__ == "__main__":
    main()
