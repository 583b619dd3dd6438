"""Benchmark 5: seconds per ε evaluation (RDP / PLD) at typical settings.

Logging ε every N rounds must never slow training: compare the seconds per uncached
evaluation here with the seconds per round of the executors benchmark.
:class:`fl_dp_asr.dp.accounting.RunAccountant` caches per (rounds, accountant), so repeated
logging of the same T is free; the cached-call row shows it.

    python -m benchmarks.accounting [--quick | --full]
"""

from __future__ import annotations

import time

from benchmarks import common

# (label, noise multiplier z, cohort S, population K, rounds T, δ): the paper's Common Voice
# and LibriSpeech-like settings, and a small simulated one.
SETTINGS = (
    ("paper CV: S=1024, K=34.8k", 1.024 * 3.0, 1024, 34_753, 2000, 1e-9),
    ("paper extrapolated: S=50k, K=6.95M", 5.0, 50_000, 6_950_000, 2000, 1e-9),
    ("simulation: S=64, K=2000", 1.0, 64, 2000, 500, 1e-6),
)


def grid(mode: str) -> tuple[tuple, int]:
    if mode == "quick":
        return SETTINGS[2:], 2
    return SETTINGS, (5 if mode == "full" else 3)


def run(mode: str = "default") -> common.Report:
    from fl_dp_asr.dp import accounting

    settings, repeats = grid(mode)
    rows = []
    for label, z, cohort, population, rounds, delta in settings:
        for sampling, method in (("poisson", "rdp"), ("fixed", "rdp"), ("poisson", "pld")):
            common.log(f"  accounting: {label} {sampling}/{method}")
            times, eps = [], None
            for i in range(repeats):
                start = time.perf_counter()
                # A different T each time: no cache anywhere can answer.
                value = accounting.epsilon(
                    z, cohort, population, rounds + i, delta, sampling, method
                ).epsilon
                times.append(time.perf_counter() - start)
                eps = value if eps is None else eps  # ε at T itself
            rows.append(
                [label, rounds, f"{sampling}/{method}", z, eps, common.median(times), max(times)]
            )
        acc = accounting.RunAccountant("poisson", cohort, population, z, delta)
        acc.epsilon(rounds)
        cached = common.median([common.time_call(lambda: acc.epsilon(rounds)) for _ in range(100)])
        rows.append(
            [label, rounds, "RunAccountant, cached", z, acc.epsilon(rounds), cached, cached]
        )
    report = common.Report(
        "Accounting cost: seconds per ε evaluation",
        f"mode={mode}; fl_dp_asr.dp.accounting.epsilon (dp-accounting), median of {repeats} "
        "uncached evaluations each; z = noise std on the sum / C.",
    )
    report.add_table(
        "",
        ["setting", "rounds T", "sampling/accountant", "z", "ε", "s per ε (median)", "s (max)"],
        rows,
    )
    report.notes.append(
        "Log ε with RunAccountant every N rounds: an RDP evaluation costs "
        "far less than one round; PLD is for the final report (or log it "
        "rarely / in a background thread)."
    )
    return report


def main(argv=None) -> None:
    common.standard_main(run, __doc__, argv, jax_setup=False)


if __name__ == "__main__":
    main()
