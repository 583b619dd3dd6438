"""The replication report: merges the cells' results into ``docs/replication.md`` (the
header, the tables of :mod:`~experiments.replication.tables`, the plots, the deep stage's
section) and the README's block, keeping the hand-written parts between their markers."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

from experiments import markers, plots
from experiments.replication import cell_run
from experiments.replication.cell_run import Recipes
from experiments.replication.design import (
    DEMO_DEPTH,
    KEY_METHODS,
    PAPER_NOISE_PER_COORD,
    PAPER_PARAMS,
    PAPER_SIGMAS,
    Cell,
    Study,
    deep_sigmas,
    num_params,
)
from experiments.replication.tables import (
    DELTA,
    axis_table,
    depth_table,
    errors_cell,
    grid_group,
    grid_table,
    level_header,
    mean_cer,
    module_snr,
    noise_per_coordinate_table,
    read_metrics,
    select,
    signal_noise_table,
    snr_range,
)
from fl_dp_asr.train import utils

BEGIN, END = "<!-- replication:begin -->", "<!-- replication:end -->"
# The hand-written analysis in docs/replication.md, kept when the study rewrites the file.
ANALYSIS_BEGIN, ANALYSIS_END = "<!-- analysis:begin -->", "<!-- analysis:end -->"
# The deep stage's section: ``--stages deep`` alone rewrites only this block of the report.
DEEP_BEGIN, DEEP_END = "<!-- deep:begin -->", "<!-- deep:end -->"
# The GPU preset's section (experiments.device_study), written by hand from its report.
DEVICE_BEGIN, DEVICE_END = "<!-- device:begin -->", "<!-- device:end -->"
# Blocks a regeneration keeps when its own text leaves them empty.
KEPT_BLOCKS = ((ANALYSIS_BEGIN, ANALYSIS_END), (DEEP_BEGIN, DEEP_END), (DEVICE_BEGIN, DEVICE_END))


def wall_seconds(results: Sequence[dict], workdir: str, study: Study) -> float:
    """Wall time the cells took: the union of their [end − seconds, end] intervals (cells
    of parallel workers overlap; a study resumed over several calls adds up its calls).
    A cell's end is its ``ended`` time, else its result file's modification time."""
    intervals = []
    for result in results:
        cell = Cell(**{f.name: result[f.name] for f in dataclasses.fields(Cell)})
        ended = result.get("ended") or os.path.getmtime(cell_run.result_path(workdir, cell, study))
        intervals.append((ended - result["seconds"], ended))
    total, reach = 0.0, -float("inf")
    for start, end in sorted(intervals):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def seed_seconds(workdir: str, study: Study) -> float:
    """Wall time of the seed models this study trained itself (not the demo's), seconds."""
    total = 0.0
    for depth in {DEMO_DEPTH, *study.depths, *study.deep_depths}:
        done = os.path.join(workdir, "seeds", f"depth{depth}", "seed.json")
        if os.path.exists(done):
            with open(done, encoding="utf-8") as f:
                total += json.load(f).get("seconds", 0.0)
    return total


def deep_section(results: list[dict], study: Study) -> str:
    """The ``deep`` stage's report (between :data:`DEEP_BEGIN` and :data:`DEEP_END`): per
    depth, the methods at each σ_DP level (CER/WER over seeds), the per-module S/N range of
    each noisy row and the whole per-module S/N table (seed 0)."""
    if not any(r["depth"] in study.deep_depths for r in results):
        return f"{DEEP_BEGIN}\n{DEEP_END}\n"
    parts = [
        DEEP_BEGIN,
        "## Depth at the paper's noise per coordinate",
        "",
        "What sets a layer's signal-to-noise ratio is the noise per coordinate relative "
        "to the clipping budget, σ_DP·√D (D = number of parameters), not σ_DP alone. "
        f"The paper's σ_DP = {PAPER_SIGMAS[0]:g} and {PAPER_SIGMAS[1]:g} on "
        f"{PAPER_PARAMS / 1e6:.1f} M parameters are σ_DP·√D = "
        f"{PAPER_NOISE_PER_COORD[0]:.2g} and {PAPER_NOISE_PER_COORD[1]:.2g}. "
        "σ_DP·√D of every level:",
        "",
        noise_per_coordinate_table(study),
    ]
    for depth in study.deep_depths:
        fixed = dict(server="lamb", depth=depth, cohort=study.cohort)
        levels = deep_sigmas(study, depth)
        if not any(select(results, **fixed, method=m) for m in study.deep_methods):
            continue
        lines = [
            "| method | " + " | ".join(level_header(s, depth) for s in levels) + " |",
            "|---" * (len(levels) + 1) + "|",
        ]
        for method in study.deep_methods:
            runs = [
                select(
                    results,
                    method=method,
                    **fixed,
                    **({} if method == "no DP" else {"sigma_dp": sigma}),
                )
                for sigma in levels
            ]
            lines.append(
                f"| {method} | " + " | ".join(errors_cell(r, with_count=True) for r in runs) + " |"
            )
        seed_model = next(r for r in results if r["depth"] == depth)
        parts += [
            f"### {depth} blocks (D = {num_params(depth) / 1e6:.2f} M)",
            "",
            f"Seed model (trained centrally with the demo's recipe): held-out CER "
            f"{100 * seed_model['seed_cer']:.1f} %, WER {100 * seed_model['seed_wer']:.1f} "
            f"%; {study.rounds} rounds, mean ± std over seeds.",
            "",
            "\n".join(lines),
            "",
        ]
        noisy = {
            (m, s): select(results, method=m, sigma_dp=s, seed=0, **fixed)
            for s in levels
            for m in study.deep_methods
            if m != "no DP"
        }
        noisy = {k: v[0] for k, v in noisy.items() if v}
        if noisy:
            parts += [
                "Per-module S/N (signal ‖Σ clip(Δ)_h‖/S over noise ‖ξ_h‖/S, averaged "
                "over rounds, seed 0), min – max (max/min):",
                "",
                "| method | " + " | ".join(level_header(s, depth) for s in levels) + " |",
                "|---" * (len(levels) + 1) + "|",
            ]
            for method in dict.fromkeys(m for m, _ in noisy):
                parts.append(
                    f"| {method} | "
                    + " | ".join(
                        snr_range(noisy[method, s]) if (method, s) in noisy else "–" for s in levels
                    )
                    + " |"
                )
            parts += [
                "",
                "<details><summary>Per-module S/N, every module</summary>",
                "",
                snr_table({f"{m}, σ_DP = {s:g}": read_metrics(r) for (m, s), r in noisy.items()}),
                "</details>",
                "",
            ]
    return "\n".join(parts + [DEEP_END]) + "\n"


def snr_table(runs: dict[str, list[dict]]) -> str:
    """Per module (rows) and run (columns, named by the keys): S/N, averaged over rounds."""
    snrs = {name: module_snr(records) for name, records in runs.items()}
    modules = sorted({module for snr in snrs.values() for module in snr})
    lines = ["| module | " + " | ".join(snrs) + " |", "|---" * (len(snrs) + 1) + "|"]
    for module in modules:
        lines.append(
            f"| {module} | "
            + " | ".join(f"{snr[module]:#.2g}" if module in snr else "–" for snr in snrs.values())
            + " |"
        )
    return "\n".join(lines) + "\n"


def _label(result: dict) -> str:
    return result["method"] + (f", σ_DP = {result['sigma_dp']:g}" if result["sigma_dp"] else "")


def plot_curves(curves: list[dict], path: str) -> None:
    """Held-out CER vs round, one line per run (the longer ``curve`` runs)."""
    fig, ax = plots.plt.subplots(figsize=(6, 3.6))
    for result in curves:
        steps, values = plots._series(read_metrics(result), "eval/cer")
        ax.plot(steps, 100 * values, marker="o", label=_label(result))
    ax.set(xlabel="round", ylabel="CER on held-out users (%)", title="CER vs round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    plots.save(fig, path)


def plot_cer_vs_epsilon(results: list[dict], study: Study, path: str) -> None:
    """One line per method: mean final CER vs the extrapolated ε (log x), like the paper's
    WER-vs-ε figure; the no-DP level as a horizontal line."""
    fig, ax = plots.plt.subplots(figsize=(6.5, 4.2))
    for method in study.methods:
        points = []
        for sigma in study.sigmas[1:]:
            runs = grid_group(results, study, method=method, sigma_dp=sigma)
            if runs and method != "no DP" and runs[0].get("extrapolated_epsilon_rdp"):
                points.append((runs[0]["extrapolated_epsilon_rdp"], mean_cer(runs)))
        if method == "no DP":
            runs = grid_group(results, study, method=method)
            if runs:
                ax.axhline(mean_cer(runs), color="k", linestyle="--", label="no DP")
        elif points:
            ax.plot(*zip(*sorted(points)), marker="o", label=method)
    ax.set(
        xscale="log",
        xlabel="ε (RDP, extrapolated deployment)",
        ylabel="CER on held-out users (%)",
        title="CER vs ε per clipping method",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    plots.save(fig, path)


def detectability(results: list[dict], study: Study) -> str:
    """Whether global clipping at the highest σ_DP loses ≥ 5 CER points against no DP."""
    base = grid_group(results, study, method="no DP")
    top = grid_group(results, study, method="global", sigma_dp=study.top)
    if not (base and top):
        return "Detectability: not measured (run the `probe` stage)."
    gap = mean_cer(top) - mean_cer(base)
    verdict = "met" if gap >= 5 else "NOT met: raise the highest σ_DP"
    return (
        f"Detectability: at the highest σ_DP = {study.top:g} global clipping loses "
        f"{gap:.1f} CER points against no DP (condition ≥ 5: {verdict})."
    )


def report(
    results: list[dict],
    study: Study,
    out: str,
    seconds: float,
    seed_seconds: float = 0.0,
    recipes: Recipes = Recipes(),
) -> str:
    """The markdown of ``docs/replication.md``; writes its plots next to it.

    ``seconds``: the federated runs' wall time (:func:`wall_seconds`); ``seed_seconds``:
    the seed models the study trained itself; ``recipes``: the configs the cells change
    (for the header).
    """
    figures = os.path.join(os.path.dirname(out) or ".", "replication")
    os.makedirs(figures, exist_ok=True)
    plot_cer_vs_epsilon(results, study, os.path.join(figures, "cer_vs_epsilon.png"))
    first, fl = results[0], recipes.fl()
    parts = [
        "<!-- generated by python -m experiments.replicate -->",
        "# Replication: global vs per-layer clipping under DP noise, at CPU scale",
        "",
        f"{len(results)} federated runs, {seconds / 60:.0f} min of wall time, plus "
        f"{seed_seconds / 60:.0f} min of central training for the seed models of other depths "
        f"({(seconds + seed_seconds) / 3600:.2f} h in all, 2 CPU cores). "
        f"Each: the demo recipe for {study.rounds} rounds from the same seed model (held-out "
        f"WER {100 * first['seed_wer']:.1f} %, CER {100 * first['seed_cer']:.1f} %), "
        f"{fl.fl.sampling.capitalize()} cohorts of expected size S = {study.cohort} of "
        f"{first['population']} users, {fl.fl.local_steps} local SGD steps, "
        f"{fl.server.optimizer.upper()} server (lr {fl.server.learning_rate:g}), "
        f"C = {fl.dp.clip_norm:g}. Final CER and WER on the held-out users' utterances, "
        "mean ± std over seeds (n = runs). ε: the extrapolated deployment with the same σ_DP "
        f"and q (S' = {fl.dp.target_cohort:,}, δ = {fl.dp.delta:g}, RDP).",
        "",
        detectability(results, study),
        "",
        "## Analysis",
        "",
        ANALYSIS_BEGIN,
        ANALYSIS_END,
        "",
        "## Methods × σ_DP",
        "",
        grid_table(results, study),
        "![CER vs ε](replication/cer_vs_epsilon.png)",
        "",
    ]
    curves = [r for r in results if r["rounds"] == study.curve_rounds]
    if curves:
        plot_curves(curves, os.path.join(figures, "curves.png"))
        parts += ["## How many rounds: the curves", ""]
        for curve in curves:
            evals = [(r["step"], r["eval/cer"]) for r in read_metrics(curve) if "eval/cer" in r]
            parts += [
                f"{_label(curve)}: held-out CER by round: "
                + ", ".join(f"{step}: {100 * cer:.1f} %" for step, cer in evals)
                + ".",
                "",
            ]
        parts += ["![CER vs round](replication/curves.png)", ""]
    adam = [r for r in results if r["server"] == "adam"]
    if adam:
        parts += [
            f"## Layer-wise normalization: LAMB vs Adam at σ_DP = {study.top:g}",
            "",
            axis_table(
                results,
                "server",
                ["lamb", "adam"],
                study.adam,
                study.top,
                depth=DEMO_DEPTH,
                cohort=study.cohort,
            ),
            "",
        ]
    if any(r["cohort"] != study.cohort for r in results):
        parts += [
            f"## Simulated cohort size at σ_DP = {study.top:g} (per-layer by dim)",
            "",
            axis_table(
                results,
                "cohort",
                study.cohorts,
                ["per-layer by dim"],
                study.top,
                depth=DEMO_DEPTH,
                seed=0,
            ),
            "",
        ]
    if any(r["depth"] != DEMO_DEPTH for r in results):
        parts += [
            "## Depth",
            "",
            "Seed models of each depth at the tiny width, trained centrally with the "
            "demo's recipe, then fine-tuned like every other cell. CER points; the S/N "
            "columns are per module (signal ‖Σ clip(Δ)_h‖/S over noise ‖ξ_h‖/S, "
            "averaged over rounds, seed 0).",
            "",
        ]
        for sigma in study.depth_sigmas:
            parts += [f"At σ_DP = {sigma:g}:", "", depth_table(results, study, sigma), ""]
    parts += [deep_section(results, study)]
    noisy = [sigma for sigma in study.sigmas if sigma > 0]
    key_metrics = {}  # σ_DP → key method → the seed-0 run's metrics
    for sigma in sorted({noisy[0], study.top}) if noisy else []:
        key_runs = {
            m: grid_group(results, study, method=m, sigma_dp=sigma, seed=0) for m in KEY_METHODS
        }
        if all(key_runs.values()):
            key_metrics[sigma] = {m: read_metrics(runs[0]) for m, runs in key_runs.items()}
            parts += [
                f"## Per layer at σ_DP = {sigma:g}: signal vs noise",
                "",
                "Per module, averaged over rounds: the mean client delta norm ‖Δ_h‖ "
                "(before clipping), the signal ‖Σ clip(Δ)_h‖/S and the noise ‖ξ_h‖/S "
                "on the cohort mean, and their ratio S/N.",
                "",
                signal_noise_table(key_metrics[sigma]),
                "",
            ]
    if study.top in key_metrics:
        for method, records in key_metrics[study.top].items():
            for prefix, what in ((DELTA, "delta_norms"), (plots.BOUND_PREFIX, "clip_bounds")):
                name = f"{what}_{method.replace(' ', '_')}.png"
                plots.plot_layer_norms(
                    records,
                    os.path.join(figures, name),
                    f"{method}, σ_DP = {study.top:g}: {what}",
                    prefix,
                )
                if os.path.exists(os.path.join(figures, name)):
                    parts += [f"![{method}: {what}](replication/{name})", ""]
    return "\n".join(parts + ["", DEVICE_BEGIN, DEVICE_END, ""])


def write_markdown(text: str, out: str, readme: str | None) -> None:
    """``out`` (atomically) and, if given, the README block between the markers.

    Blocks that ``text`` leaves empty keep what ``out`` had (:data:`KEPT_BLOCKS`): the
    hand-written analysis, the deep stage's section (a study run without it does not erase
    it) and the GPU preset's."""
    old = ""
    if os.path.exists(out):
        with open(out, encoding="utf-8") as f:
            old = f.read()
    for begin, end in KEPT_BLOCKS:
        kept = markers.find_block(old, begin, end)
        if kept and f"{begin}\n{end}" in text:
            text = markers.replace_block(text, begin, end, kept)
    utils.write_text(out, text)
    if readme and os.path.exists(readme):
        with open(readme, encoding="utf-8") as f:
            content = f.read()
        if BEGIN in content:
            table = text.split("## Methods × σ_DP", 1)[-1].split("![", 1)[0].strip()
            utils.write_text(readme, markers.embed(content, BEGIN, END, f"{table}\n"))


def write_deep_section(results: list[dict], study: Study, out: str) -> str:
    """Rewrites only the deep stage's block of ``out`` (inserted before the methods × σ_DP
    tables if ``out`` has none); returns the block."""
    with open(out, encoding="utf-8") as f:
        content = f.read()
    block = deep_section(results, study).rstrip("\n")
    if DEEP_BEGIN in content:
        content = markers.replace_block(content, DEEP_BEGIN, DEEP_END, block)
    else:
        content = content.replace("## Methods × σ_DP", f"{block}\n\n## Methods × σ_DP", 1)
    utils.write_text(out, content)
    return block
