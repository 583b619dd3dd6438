"""``make bench``: every benchmark, each in its own process, tables appended to docs/benchmarks.md.

    python -m benchmarks.run               # default grid (~25 min on 2 busy CPU cores)
    python -m benchmarks.run --quick       # smoke run (3-4 min with a warm XLA cache)
    python -m benchmarks.run --full        # the full grid (tiny/small × cohorts 16/64/256 ...)
    python -m benchmarks.run --only executors,memory --no-write

Benchmarks: executors (rounds/s, clients/s), memory (vs cohort and chunk size), compile
(per model size and bucket), pipeline (host packing vs device, prefetch overlap),
accounting (s per ε), analysis (what limits CPU speed; paper-model FLOPs, GPU estimates).
A separate process per benchmark keeps peak-RSS readings and XLA flags independent.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from benchmarks import common

BENCHMARKS = ("accounting", "pipeline", "memory", "compile", "analysis", "executors")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke run")
    mode.add_argument("--full", action="store_true", help="the full grid (slow on CPU)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {BENCHMARKS}")
    flags = ["--quick"] if args.quick else ["--full"] if args.full else []
    flags += ["--no-write"] if args.no_write else []
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(common.REPO), os.environ.get("PYTHONPATH")])),
    )
    failed, start = [], time.perf_counter()
    for name in names:
        common.log(f"benchmark {name} {' '.join(flags)}")
        began = time.perf_counter()
        code = subprocess.call(
            [sys.executable, "-m", f"benchmarks.{name}", *flags], cwd=common.REPO, env=env
        )
        common.log(
            f"benchmark {name}: {'ok' if code == 0 else f'FAILED ({code})'} in "
            f"{time.perf_counter() - began:.0f} s"
        )
        if code:
            failed.append(name)
    common.log(
        f"all benchmarks: {time.perf_counter() - start:.0f} s"
        + (f"; failed: {failed}" if failed else "")
        + ("" if args.no_write else f"; results appended to {common.REPORT}")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
