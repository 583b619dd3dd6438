"""The replication report's tables, from the cells' results: CER/WER per method and σ_DP
(mean ± std over seeds), along an axis, per depth, and the per-layer signal/noise analysis
of the runs' metrics (``train/layer_*_norms/<leaf>``)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from typing import Any

from experiments import plots
from experiments.replication.design import (
    DEMO_DEPTH,
    KEY_METHODS,
    PAPER_PARAMS,
    PAPER_SIGMAS,
    Study,
    deep_sigmas,
    num_params,
)


def _stats(values: Sequence[float]) -> str:
    points = [100 * v for v in values]
    if len(points) == 1:
        return f"{points[0]:.1f}"
    return f"{statistics.mean(points):.1f} ± {statistics.stdev(points):.1f}"


def errors_cell(runs: list[dict], with_count: bool = False) -> str:
    """A table cell: final CER and WER over ``runs`` ("–" when none ran)."""
    if not runs:
        return "–"
    count = f" (n={len(runs)})" if with_count else ""
    return (
        f"CER {_stats([r['final_cer'] for r in runs])} · WER "
        f"{_stats([r['final_wer'] for r in runs])}{count}"
    )


def mean_cer(runs: list[dict]) -> float:
    """Final CER over ``runs``, mean, in points."""
    return 100 * statistics.mean(r["final_cer"] for r in runs)


def select(results: list[dict], **match) -> list[dict]:
    """The cell results whose fields equal ``match`` (e.g. ``method="global", depth=16``);
    the curve cells (``rounds`` set) only when asked for."""
    match.setdefault("rounds", None)  # the curve cells run longer: not part of the tables
    return [r for r in results if all(r[k] == v for k, v in match.items())]


def grid_group(results: list[dict], study: Study, **match) -> list[dict]:
    """:func:`select` within the main grid: LAMB, the demo's depth, the study's cohort."""
    return select(
        results, **{"server": "lamb", "depth": DEMO_DEPTH, "cohort": study.cohort, **match}
    )


def grid_table(results: list[dict], study: Study) -> str:
    """Rows = methods, columns = σ_DP: held-out CER and WER, mean ± std over seeds."""
    lines = [
        "| method | " + " | ".join(level_header(s, DEMO_DEPTH) for s in study.sigmas) + " |",
        "|---" * (len(study.sigmas) + 1) + "|",
    ]
    for method in study.methods:
        cells = []
        for sigma in study.sigmas:
            runs = grid_group(
                results, study, method=method, **({} if method == "no DP" else {"sigma_dp": sigma})
            )
            if method == "no DP" and sigma != 0.0:
                cells.append("")
                continue
            cells.append(errors_cell(runs, with_count=True))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    eps = {
        s: r["extrapolated_epsilon_rdp"]
        for r in results
        for s in [r["sigma_dp"]]
        if r.get("extrapolated_epsilon_rdp") is not None
    }
    lines.append(
        "| ε (extrapolated, RDP) | "
        + " | ".join(f"{eps[s]:.2f}" if s in eps else "∞ (no noise)" for s in study.sigmas)
        + " |"
    )
    return "\n".join(lines) + "\n"


def axis_table(
    results: list[dict],
    axis: str,
    values: Sequence[Any],
    methods: Sequence[str],
    sigma: float,
    **fixed,
) -> str:
    """CER/WER of ``methods`` along ``axis`` (cohort or depth) at σ_DP = ``sigma``."""
    lines = [
        "| method | " + " | ".join(f"{axis} {v}" for v in values) + " |",
        "|---" * (len(values) + 1) + "|",
    ]
    for method in methods:
        cells = []
        for value in values:
            match = {"server": "lamb", **fixed, axis: value}
            if method != "no DP":
                match["sigma_dp"] = sigma
            runs = select(results, method=method, **match)
            cells.append(errors_cell(runs))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ per-layer analysis

SIGNAL, NOISE, DELTA = (
    "train/layer_signal_norms/",
    "train/layer_noise_norms/",
    "train/layer_delta_norms/",
)


def module_means(records: list[dict], prefix: str) -> dict[str, float]:
    """Per module (a leaf name without its last part, e.g. ``block_00/attention/query``):
    the norm over its leaves of the per-layer metric ``prefix``, averaged over rounds."""
    per_round: dict[str, list[float]] = {}
    for record in records:
        squares: dict[str, float] = {}
        for key, value in record.items():
            if key.startswith(prefix):
                module = key[len(prefix) :].rsplit("/", 1)[0]
                squares[module] = squares.get(module, 0.0) + value**2
        for module, square in squares.items():
            per_round.setdefault(module, []).append(square**0.5)
    return {module: statistics.mean(values) for module, values in per_round.items()}


def _snr(signal: dict[str, float], noise: dict[str, float]) -> dict[str, float]:
    """Per module with noise: signal over noise (modules without noise are left out)."""
    return {module: signal.get(module, 0.0) / value for module, value in noise.items() if value}


def module_snr(records: list[dict]) -> dict[str, float]:
    """Per module: signal ‖Σclip(Δ)_h‖/S over noise ‖ξ_h‖/S (round means; noisy runs)."""
    return _snr(module_means(records, SIGNAL), module_means(records, NOISE))


def depth_table(results: list[dict], study: Study, sigma: float) -> str:
    """Per depth at σ_DP = ``sigma``: CER of no DP and the key methods (mean over seeds),
    per-layer − global, and how unequal the layers are under each: the range of the
    per-module S/N (seed 0). Under global clipping every coordinate gets the same noise,
    so its S/N range is the range of the modules' per-coordinate signal."""
    global_, per_layer = KEY_METHODS
    lines = [
        f"| blocks | seed model | no DP | {global_} | {per_layer} | {per_layer} − {global_} | "
        f"module S/N, {global_}: min – max (max/min) | module S/N, {per_layer} |",
        "|---" * 8 + "|",
    ]

    def seed0(runs: list[dict]) -> dict:
        return next(r for r in runs if r["seed"] == 0)

    for depth in study.depths:
        fixed = dict(server="lamb", depth=depth, cohort=study.cohort)
        runs = {m: select(results, method=m, sigma_dp=sigma, **fixed) for m in KEY_METHODS}
        base = select(results, method="no DP", **fixed)
        if not (base and all(runs.values())):
            continue
        gap = mean_cer(runs[per_layer]) - mean_cer(runs[global_])
        lines.append(
            f"| {depth} | CER {100 * base[0]['seed_cer']:.1f} | {errors_cell(base)} | "
            f"{errors_cell(runs[global_])} | {errors_cell(runs[per_layer])} | "
            f"{gap:+.1f} | {snr_range(seed0(runs[global_]))} | "
            f"{snr_range(seed0(runs[per_layer]))} |"
        )
    return "\n".join(lines) + "\n"


def signal_noise_table(runs: dict[str, list[dict]]) -> str:
    """Per module and run: mean client delta ‖Δ_h‖, signal ‖Σclip(Δ)_h‖/S, noise ‖ξ_h‖/S,
    and signal/noise, averaged over the rounds."""
    columns = {
        name: (module_means(r, DELTA), module_means(r, SIGNAL), module_means(r, NOISE))
        for name, r in runs.items()
    }
    modules = sorted(next(iter(columns.values()))[0])
    head = "| module | " + " | ".join(f"{n}: ‖Δ‖ · signal · noise · S/N" for n in runs) + " |"
    lines = [head, "|---" * (len(runs) + 1) + "|"]
    for module in modules:
        cells = []
        for delta, signal, noise in columns.values():
            ratios = _snr(signal, noise)
            snr = f"{ratios[module]:#.2g}" if module in ratios else "∞"
            cells.append(
                f"{delta.get(module, 0.0):.2e} · {signal.get(module, 0.0):.2e} · "
                f"{noise.get(module, 0.0):.2e} · **{snr}**"
            )
        lines.append(f"| {module} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def noise_per_coordinate_table(study: Study) -> str:
    """σ_DP·√D of the study's σ_DP levels and the paper's, at each depth and the paper's D."""
    depths = sorted({DEMO_DEPTH, *study.depths, *study.deep_depths, 36})
    sizes = [(f"{d} blocks (D = {num_params(d) / 1e6:.2f} M)", num_params(d)) for d in depths]
    sizes.append((f"paper (D = {PAPER_PARAMS / 1e6:.1f} M)", PAPER_PARAMS))
    sigmas = sorted(
        {
            *(s for s in study.sigmas if s > 0),
            *PAPER_SIGMAS,
            *(s for d in study.deep_depths for s in deep_sigmas(study, d)),
        }
    )
    lines = [
        "| σ_DP | " + " | ".join(name for name, _ in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    for sigma in sigmas:
        lines.append(
            f"| {sigma:g} | " + " | ".join(two_digits(sigma * d**0.5) for _, d in sizes) + " |"
        )
    return "\n".join(lines) + "\n"


def two_digits(value: float) -> str:
    """2 significant digits, without an exponent: 0.0032, 0.16, 30, 1600."""
    return f"{value:.2g}" if value < 100 else f"{float(f'{value:.2g}'):.0f}"


def level_header(sigma: float, depth: int) -> str:
    return f"σ_DP = {sigma:g} (σ_DP·√D = {two_digits(sigma * num_params(depth) ** 0.5)})"


def snr_range(run: dict) -> str:
    """min – max (max/min) of a noisy run's per-module S/N."""
    snr = module_snr(read_metrics(run)).values()
    return f"{min(snr):.2g} – {max(snr):.2g} ({two_digits(max(snr) / min(snr))}×)"


def read_metrics(result: dict) -> list[dict]:
    return plots.read_jsonl(os.path.join(result["workdir"], "metrics.jsonl"))
