"""Benchmark 3: compile time of the round step per model size and number of length buckets.

Every length bucket (padded audio length, label length) is one more shape, so one more
compilation of the round step: a run with n buckets pays the sum of the first n rows.
Measured on abstract inputs (``jax.ShapeDtypeStruct``: nothing allocated) with the
persistent compilation cache off; ``trace+lower`` is Python/JAX time, ``compile`` is XLA.

    python -m benchmarks.compile [--quick | --full]
"""

from __future__ import annotations

import dataclasses

from benchmarks import common

# (padded seconds, label length) of the length buckets, shortest first.
BUCKETS = ((4.0, 64), (8.0, 128), (16.0, 256))


def grid(mode: str) -> list[tuple[str, int]]:
    """(model size, number of buckets)."""
    if mode == "quick":
        return [("tiny", 1)]
    if mode == "full":
        return [("tiny", 3), ("small", 3), ("paper", 1)]
    return [("tiny", 2)]


def compile_seconds(
    size: str, seconds: float, label_len: int, cohort: int = 16, chunk: int = 4
) -> tuple[float, float]:
    """(trace+lower s, XLA compile s) of the vectorized round step for one bucket."""
    shape = dataclasses.replace(
        common.ClientShape(),
        max_seconds_padded=seconds,
        max_seconds=seconds,
        max_label_len=label_len,
    )
    return time_compile(size, cohort, chunk, shape)[:2]


def time_compile(size: str, cohort: int, chunk: int, shape: common.ClientShape, **model_overrides):
    """``(trace+lower s, XLA compile s, lowered)`` of the vectorized round step on abstract
    inputs, with JAX's in-memory caches cleared first."""
    import jax

    step, params, opt = common.make_asr_step(size, cohort, chunk_size=chunk, **model_overrides)
    state = jax.eval_shape(lambda: common.fresh_state(params, opt))
    block = common.abstract_cohort(cohort, shape)
    jax.clear_caches()
    lower_s, lowered = _timed(lambda: step.lower(state, block, jax.random.key(0)))
    compile_s, _ = _timed(lowered.compile)
    return lower_s, compile_s, lowered


def _timed(fn):
    import time

    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(mode: str = "default") -> common.Report:
    rows = []
    for size, num_buckets in grid(mode):
        total = 0.0
        for i, (seconds, label_len) in enumerate(BUCKETS[:num_buckets]):
            common.log(f"  compile: {size} bucket {seconds:g} s / {label_len} tokens")
            lower_s, compile_s = compile_seconds(size, seconds, label_len)
            total += lower_s + compile_s
            rows.append(
                [
                    size,
                    f"{seconds:g} s / {label_len}",
                    lower_s,
                    compile_s,
                    lower_s + compile_s,
                    i + 1,
                    total,
                ]
            )
    report = common.Report(
        "Compile time of the round step",
        f"mode={mode}; vectorized executor, cohort 16, chunk 4, 10 local steps × batch 2; "
        "per-layer clipping + noise + LAMB; persistent compilation cache off; one compile "
        "per bucket (the machine is shared: ±30 %).",
    )
    report.add_table(
        "",
        [
            "model",
            "bucket (audio / labels)",
            "trace+lower (s)",
            "XLA compile (s)",
            "total (s)",
            "buckets",
            "cumulative (s)",
        ],
        rows,
    )
    report.notes.append(
        "A run compiles one round step per bucket it meets (plus the "
        "evaluation step per eval bucket); the cumulative column is the "
        "start-up cost of a run with that many buckets."
    )
    return report


def main(argv=None) -> None:
    common.standard_main(run, __doc__, argv, cache=False)


if __name__ == "__main__":
    main()
