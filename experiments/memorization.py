r"""Does the model remember what a user said? The memorization audit with sped-up canary
utterances, without and with user-level DP (README "Memorization audit").

    python -m experiments.memorization [--quick] [--workdir runs/memorization] [--readme]

After Wang, Thakkar, Mathews (arXiv 2310.11739): canary utterances of random letters, spoken
by espeak-ng 2x faster, are inserted r ∈ {1, 4, 16} times into chosen users' training data
(``config.audit.utterances``); as many canaries of the same kind are held out. Every run starts
from the demo's seed model (``make demo``'s central stage; trained first if missing) and ends
with the canaries transcribed and scored (:mod:`fl_dp_asr.memorization.measure`):

- **FL, no DP** (no clipping, no noise): the run that must show memorization;
- **FL with user-level DP**: global and per-layer (by dim) clipping at the replication's σ_DP
  levels (:data:`experiments.replication.design.FULL`), the same recipe otherwise;
- **central**: the seed model's central training continued with the canaries in its data
  (the paper's non-federated baseline).

The FL runs use the demo recipe (LAMB server, local batches of 4) with 5 local steps on the
first :attr:`Study.max_users` users of the synthetic Common Voice part, so that a user takes
part in about a quarter of the rounds: with the demo's 300 users a canary holder would take
part in one or two of 24 rounds and nothing could be memorized on a CPU budget. Runs are cached
(``<workdir>/<run>/summary.json``): an interrupted study resumes. Writes
``<workdir>/memorization.md`` and ``memorization.png`` (with ``--readme``: README's
``memorization:begin/end`` block and ``docs/memorization.png``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from experiments import canary_utterances, markers, train_central, train_fl
from experiments.configs import central, fl_dp
from experiments.replication.design import METHODS
from fl_dp_asr.train import cli, utils

BEGIN, END = "<!-- memorization:begin -->", "<!-- memorization:end -->"
PAGE = """# Memorization audit: results

Written by `python -m experiments.memorization --readme` (the [guide](guides/memorization.md)
says what is measured and how to read it).

{report}
![Inserted vs held-out canary CER by repetition count, and the membership attack's ROC per
run](memorization.png)
"""
Config = Callable[[], ml_collections.ConfigDict]


@dataclasses.dataclass(frozen=True)
class Study:
    """What to run.

    Attributes:
        rounds: FL rounds of every FL run.
        max_users: training users kept (the first, by id): sets how often a user takes part.
        cohort: expected cohort (Poisson).
        sigmas: σ_DP (noise std on the cohort mean / C) of the DP runs.
        methods: clipping methods of the DP runs (names of the replication's ``METHODS``).
        per_repeat, users, candidates: ``config.audit.utterances`` (canaries per repetition
            count, users holding them, M of the exposure).
        central_steps: steps of the central run (0: none).
        eval_every: rounds between evaluations (held-out WER and the canaries).
    """

    rounds: int = 24
    max_users: int | None = 64
    cohort: int = 16
    local_steps: int = 5
    sigmas: tuple[float, ...] = (1e-2, 1e-1)
    methods: tuple[str, ...] = ("global", "per-layer by dim")
    per_repeat: int = 8
    users: int | None = None
    candidates: int = 1000
    central_steps: int = 100
    eval_every: int = 12


QUICK = Study(
    rounds=2, max_users=None, cohort=2, local_steps=2, sigmas=(0.1,), per_repeat=1, users=2,
    candidates=8, central_steps=2, eval_every=2,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Recipes:
    """The FL and central configs the runs start from (the demo's; the tests' tiny ones)."""

    fl: Config = dataclasses.field(default=lambda: fl_dp.get_config("demo"))
    central: Config = dataclasses.field(default=lambda: central.get_config("demo"))


def run_names(study: Study) -> list[str]:
    """The runs of ``study``, in the table's order."""
    dp = [f"{m}, σ_DP={s:g}" for s in study.sigmas for m in study.methods]
    return ["FL, no DP", *dp] + (["central, no DP"] if study.central_steps else [])


def _audit(config: ml_collections.ConfigDict, study: Study) -> None:
    u = config.audit.utterances
    u.per_repeat, u.users, u.candidates = study.per_repeat, study.users, study.candidates


def fl_config(name: str, study: Study, recipes: Recipes) -> ml_collections.ConfigDict:
    """The FL run ``name`` of :func:`run_names`."""
    config = recipes.fl()
    config.progress_bar = False
    config.data.max_users = study.max_users
    config.fl.rounds = study.rounds
    config.fl.cohort_size = study.cohort
    config.fl.local_steps = study.local_steps
    config.eval.every = study.eval_every
    config.checkpoint.every = study.rounds
    config.dp.target_cohort = None  # the ε of the canaries' users is the simulation's own
    config.dp.noise_multiplier = None
    method, _, sigma = name.partition(", σ_DP=")
    if name == "FL, no DP":
        method, sigma = "no DP", "0"
    for key, value in METHODS[method].items():
        config.dp[key] = value
    config.dp.sigma_dp = float(sigma) or None
    _audit(config, study)
    return config


def central_config(study: Study, recipes: Recipes, seed: str) -> ml_collections.ConfigDict:
    """The central run: the seed model's training continued ``central_steps`` steps with the
    canaries in its data (the seed's recipe, no warm-up)."""
    config = recipes.central()
    config.init_checkpoint = seed
    config.train.num_steps = study.central_steps
    config.optimizer.warmup_steps = 0
    config.eval.every = config.checkpoint.every = study.central_steps
    _audit(config, study)
    return config


def seed_checkpoint(recipes: Recipes) -> str:
    """The FL recipe's seed model; trained by the central recipe first when missing."""
    seed = recipes.fl().init_checkpoint
    if not os.path.isdir(seed):
        print(f"== the seed model ({seed} is missing: training it)", flush=True)
        train_central.train(recipes.central(), os.path.dirname(seed))
    return seed


def run_all(study: Study, workdir: str, recipes: Recipes) -> dict[str, dict[str, Any]]:
    """Every run's summary (cached in ``<workdir>/<run>/summary.json``)."""
    seed = seed_checkpoint(recipes)
    results, round_steps = {}, {}  # the DP runs of a method share its compiled round step
    for name in run_names(study):
        run_dir = os.path.join(workdir, _slug(name))
        done = os.path.join(run_dir, "summary.json")
        if not os.path.exists(done):
            print(f"== {name}", flush=True)
            began = time.perf_counter()
            if name.startswith("central"):
                summary = train_central.train(central_config(study, recipes, seed), run_dir)
            else:
                config = fl_config(name, study, recipes)
                config.init_checkpoint = seed
                summary = train_fl.train(config, run_dir, round_steps)
            summary["seconds"] = time.perf_counter() - began
            utils.write_json(done, summary)
        with open(done, encoding="utf-8") as f:
            results[name] = json.load(f) | {"workdir": run_dir}
    return results


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.replace("σ_DP=", "s")).strip("_")


def table(results: dict[str, dict[str, Any]], repeats: Sequence[int]) -> str:
    """The markdown table: per run ε and, per r, inserted vs held-out CER, exposure, AUC."""
    head = ["run", "ε (δ)"] + [
        f"r={r}: CER inserted / held-out, fitted exposure, AUC"
        for r in sorted(repeats, reverse=True)
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in results.items():
        epsilon = s.get("epsilon_rdp")
        cells = [name, "∞" if epsilon is None else f"{epsilon:.3g} ({s['delta']:g})"]
        if "delta" not in s:
            cells[1] = "∞ (central)"
        for r in sorted(repeats, reverse=True):
            p = f"memorization_r{r}/"
            cells.append(
                f"{100 * s[p + 'cer_inserted']:.0f} % / {100 * s[p + 'cer_heldout']:.0f} %, "
                f"{s[p + 'exposure_fit_inserted']:.1f} vs {s[p + 'exposure_fit_heldout']:.1f} "
                f"bits, {s[p + 'auc']:.2f}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(
    results: dict[str, dict[str, Any]], study: Study, workdir: str, command: str, minutes: float
) -> str:
    """The study's markdown (table, how to read it) and its plot ``<workdir>/memorization.png``."""
    repeats = canary_utterances.repeats_of(next(iter(results.values())))
    canary_utterances.plot(
        {name: s["workdir"] for name, s in results.items()},
        os.path.join(workdir, "memorization.png"),
    )
    return (
        f"`{command}` ({minutes:.0f} min of runs on 2 CPU cores): {study.rounds} FL rounds of an "
        f"expected {study.cohort} of {study.max_users or 'all'} synthetic users from the demo's "
        f"seed model; {study.per_repeat} canaries per r, as many held out; M = "
        f"{study.candidates} candidates per canary.\n\n"
        + table(results, repeats)
        + "\nCER inserted / held-out: mean greedy CER of the inserted canaries with r copies "
        "vs every held-out canary (memorized: far lower). Fitted exposure: bits of random texts "
        "of the canary's format its CTC loss beats (skew-normal tail fitted to the M "
        "candidates, Carlini et al.). AUC: loss-threshold membership attack, inserted at r vs "
        "held-out (area under the ROC's convex hull, jax_privacy). ε: the simulation's own "
        "(RDP), the guarantee of a canary holder here.\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two rounds, one σ_DP (smoke)")
    parser.add_argument("--workdir", default="runs/memorization")
    parser.add_argument("--readme", action="store_true", help="update README and docs/")
    args = parser.parse_args(argv)
    cli.set_compilation_cache(os.path.join(args.workdir, "xla_cache"))
    study = QUICK if args.quick else Study()
    results = run_all(study, args.workdir, Recipes())
    command = "python -m experiments.memorization" + (" --quick" if args.quick else "")
    minutes = sum(r["seconds"] for r in results.values()) / 60  # the runs, also when cached
    text = report(results, study, args.workdir, command, minutes)
    utils.write_text(os.path.join(args.workdir, "memorization.md"), text)
    print(text)
    if args.readme:
        shutil.copyfile(os.path.join(args.workdir, "memorization.png"), "docs/memorization.png")
        utils.write_text("docs/memorization.md", PAGE.format(report=text))
        with open("README.md", encoding="utf-8") as f:
            readme = f.read()
        utils.write_text("README.md", markers.embed(readme, BEGIN, END, text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
