"""Statistics of a federated speech dataset: users, utterances per user, hours; text and a PNG.

    python -m fl_dp_asr.data.stats --dataset common_voice_local --config en --split train \\
        --manual-dir data/synthetic --data-dir data/tfds --plot runs/cv_train_stats.png

Builds the dataset first if needed (see :func:`fl_dp_asr.data.load_split`).
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from fl_dp_asr.data.builders import BUILDERS, load_federated
from fl_dp_asr.data.errors import DataError
from fl_dp_asr.data.federated import FederatedDataset

#: Histogram bins of utterances per user: [1], [2], [3, 5], [6, 10], ... (upper bounds).
_BIN_EDGES = (1, 2, 5, 10, 20, 50, 100, 1000)
#: Utterance ids of inserted canary utterances start with this (fl_dp_asr.memorization).
CANARY_PREFIX = "canary-"


def summarize(dataset: FederatedDataset) -> dict[str, Any]:
    """Users, utterances, hours, users by gender, per-user quantiles and the
    utterances-per-user histogram; with inserted canary utterances (ids starting
    :data:`CANARY_PREFIX`) also ``canary_utterances`` and ``canary_users``."""
    counts = dataset.user_num_utterances()
    seconds = dataset.durations()
    lower = 1
    histogram: list[tuple[str, int]] = []
    for upper in _BIN_EDGES + (np.inf,):
        label = (
            f"{lower}"
            if upper == lower
            else (f"{lower}+" if upper == np.inf else f"{lower}-{int(upper)}")
        )
        users = int(((counts >= lower) & (counts <= upper)).sum())
        if users or histogram:  # no leading empty bins
            histogram.append((label, users))
        if upper == np.inf or counts.size == 0 or upper >= counts.max():
            break
        lower = int(upper) + 1
    canaries = [
        row
        for row, utterance in enumerate(dataset.utterance_ids)
        if utterance.startswith(CANARY_PREFIX)
    ]
    canary_counts = (
        {
            "canary_utterances": len(canaries),
            "canary_users": len({dataset.user_of_row[row] for row in canaries}),
        }
        if canaries
        else {}
    )
    return {
        "users": dataset.num_users,
        "utterances": len(dataset),
        "hours": dataset.hours,
        "users_by_gender": {
            gender or "unknown": n
            for gender, n in sorted(collections.Counter(dataset.user_genders()).items())
        },
        "utterances_per_user": {
            q: float(np.percentile(counts, p)) if counts.size else 0.0
            for q, p in (("min", 0), ("median", 50), ("p90", 90), ("max", 100))
        },
        "mean_utterances_per_user": float(counts.mean()) if counts.size else 0.0,
        "seconds_per_utterance": {
            q: float(np.percentile(seconds, p)) if seconds.size else 0.0
            for q, p in (("min", 0), ("median", 50), ("max", 100))
        },
        "histogram": histogram,
        **canary_counts,
    }


def format_summary(title: str, summary: dict[str, Any]) -> str:
    per_user = summary["utterances_per_user"]
    seconds = summary["seconds_per_utterance"]
    lines = [
        f"{title}: {summary['users']} users, {summary['utterances']} utterances, "
        f"{summary['hours']:.3f} h",
        f"  utterances/user: min {per_user['min']:.0f}, median {per_user['median']:.0f}, "
        f"p90 {per_user['p90']:.0f}, max {per_user['max']:.0f}, "
        f"mean {summary['mean_utterances_per_user']:.2f}",
        f"  seconds/utterance: min {seconds['min']:.2f}, median {seconds['median']:.2f}, "
        f"max {seconds['max']:.2f}",
        "  users by gender: "
        + ", ".join(f"{gender} {n}" for gender, n in summary["users_by_gender"].items()),
    ]
    if summary.get("canary_utterances"):
        lines.append(
            f"  canary utterances: {summary['canary_utterances']} in "
            f"{summary['canary_users']} users"
        )
    lines.append("  users by utterance count:")
    width = max((len(label) for label, _ in summary["histogram"]), default=1)
    top = max((n for _, n in summary["histogram"]), default=1) or 1
    for label, n in summary["histogram"]:
        lines.append(f"    {label:>{width}} | {'#' * round(40 * n / top):<40} {n}")
    return "\n".join(lines)


def plot(title: str, dataset: FederatedDataset, path: str | pathlib.Path) -> None:
    """Writes a PNG: users per utterance count (log axes) and utterance durations."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    counts = dataset.user_num_utterances()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    bins = np.unique(np.geomspace(1, max(2, counts.max(initial=1) + 1), 30).astype(int))
    left.hist(counts, bins=bins)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("utterances per user")
    left.set_ylabel("users")
    right.hist(dataset.durations(), bins=40)
    right.set_xlabel("utterance duration (s)")
    right.set_ylabel("utterances")
    figure.suptitle(
        f"{title}: {dataset.num_users} users, {len(dataset)} utterances, {dataset.hours:.2f} h"
    )
    figure.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 2 bad flags or a data error,
    like the trainers)."""
    parser = argparse.ArgumentParser(
        prog="python -m fl_dp_asr.data.stats", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dataset", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--config", required=True, help="LibriSpeech subset or CV language")
    parser.add_argument("--split", default=None, help="default: the config's only split")
    parser.add_argument("--manual-dir", default=None, help="corpus directory (to build)")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--plot", default=None, help="PNG file to write")
    parser.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="when building: skip (and count) corrupt audio files and bad "
        "transcripts instead of failing on the first one",
    )
    args = parser.parse_args(argv)
    try:
        dataset = load_federated(
            args.dataset,
            args.config,
            args.split,
            manual_dir=args.manual_dir,
            data_dir=args.data_dir,
            skip_bad_files=args.skip_bad_files,
        )
    except (DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    title = f"{args.dataset}/{args.config}" + (f" {args.split}" if args.split else "")
    print(format_summary(title, summarize(dataset)))
    if args.plot:
        plot(title, dataset, args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
