r"""Plots of federated runs from their ``metrics.jsonl``.

    python -m experiments.plots --out runs/demo/plots runs/demo/fl_dp [more run dirs ...]

Writes ``wer_vs_round.png``, ``wer_vs_epsilon.png`` and, per run,
``layer_norms_<run>.png``: the heat map (layers × rounds) of the mean pre-clipping norm of
client deltas, log10 scale — the paper's argument that per-layer norms of a transformer's
deltas differ by orders of magnitude — and ``clip_bounds_<run>.png``: the same heat map of
the clip bounds C_{h,t} (adaptive clipping moves them; fixed bounds give flat rows).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fl_dp_asr.train.metrics import read_jsonl

LAYER_PREFIX = "train/layer_delta_norms/"
BOUND_PREFIX = "train/layer_clip_norms/"
HEAT_MAPS = {  # file prefix: (metric prefix, title, colour-bar label)
    "layer_norms": (
        LAYER_PREFIX,
        "per-layer client delta norms",
        "log10 mean ‖Δ_h‖ (before clipping)",
    ),
    "clip_bounds": (BOUND_PREFIX, "clip bounds", "log10 C_h (this round's bound)"),
}


def save(fig, path: str) -> None:
    """Lays out ``fig``, writes it to ``path`` (PNG, 120 dpi) and closes it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _series(records, key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    steps, values = zip(*points) if points else ((), ())
    return np.asarray(steps), np.asarray(values, dtype=float)


def _name(run_dir: str) -> str:
    return os.path.basename(os.path.normpath(run_dir))


def plot_wer_vs_round(runs: dict[str, list[dict]], path: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, records in runs.items():
        ax.plot(*_series(records, "eval/wer"), marker="o", label=name)
    ax.set(xlabel="round", ylabel="WER (held-out users)", title="WER vs round")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, path)


def plot_wer_vs_epsilon(runs: dict[str, list[dict]], path: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, records in runs.items():
        evals = [r for r in records if "eval/wer" in r]
        if not evals:
            continue
        last = evals[-1]
        epsilon = last.get("eval/epsilon_rdp", float("inf"))
        ax.scatter([epsilon if np.isfinite(epsilon) else np.nan], [last["eval/wer"]], label=name)
    ax.set(
        xscale="log",
        xlabel="ε (RDP, user level)",
        ylabel="final WER",
        title="WER vs ε (runs without noise have ε = ∞ and are not shown)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)


def layer_norm_matrix(
    records: list[dict], prefix: str = LAYER_PREFIX
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Layer names, rounds, and the [layers, rounds] matrix of the per-layer metric
    ``prefix + layer`` (default: mean delta norms)."""
    rows = [r for r in records if any(k.startswith(prefix) for k in r)]
    layers = sorted({k[len(prefix) :] for r in rows for k in r if k.startswith(prefix)})
    matrix = np.array(
        [[r.get(prefix + layer, np.nan) for r in rows] for layer in layers], dtype=float
    )
    return layers, np.array([r["step"] for r in rows]), matrix


def plot_layer_norms(
    records: list[dict],
    path: str,
    title: str,
    prefix: str = LAYER_PREFIX,
    label: str = HEAT_MAPS["layer_norms"][2],
) -> None:
    """Heat map (layers × rounds, log10) of a per-layer metric; nothing if it is absent."""
    layers, rounds, matrix = layer_norm_matrix(records, prefix)
    if not layers:
        return
    fig, ax = plt.subplots(figsize=(8, max(3, 0.16 * len(layers))))
    image = ax.imshow(
        np.log10(np.maximum(matrix, 1e-12)),
        aspect="auto",
        cmap="viridis",
        extent=(rounds[0] - 0.5, rounds[-1] + 0.5, len(layers) - 0.5, -0.5),
    )
    ax.set_yticks(range(len(layers)), layers, fontsize=5)
    ax.set(xlabel="round", title=title)
    fig.colorbar(image, ax=ax, label=label)
    save(fig, path)


def make_plots(run_dirs: Sequence[str], out_dir: str) -> list[str]:
    """Writes every plot for ``run_dirs`` into ``out_dir``; returns the files written."""
    os.makedirs(out_dir, exist_ok=True)
    runs = {}
    for run_dir in run_dirs:
        path = os.path.join(run_dir, "metrics.jsonl")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: is {run_dir} a train_fl work dir?")
        runs[_name(run_dir)] = read_jsonl(path)
    written = [
        os.path.join(out_dir, "wer_vs_round.png"),
        os.path.join(out_dir, "wer_vs_epsilon.png"),
    ]
    plot_wer_vs_round(runs, written[0])
    plot_wer_vs_epsilon(runs, written[1])
    for name, records in runs.items():
        for file_prefix, (prefix, title, label) in HEAT_MAPS.items():
            path = os.path.join(out_dir, f"{file_prefix}_{name}.png")
            plot_layer_norms(records, path, f"{name}: {title}", prefix, label)
            if os.path.exists(path):
                written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="train_fl work directories")
    parser.add_argument("--out", required=True, help="output directory for PNG files")
    args = parser.parse_args(argv)
    for path in make_plots(args.runs, args.out):
        print(path)


if __name__ == "__main__":
    main()
