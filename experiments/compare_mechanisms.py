"""DP-FTRL vs the Gaussian mechanism on the demo task, at equal ε and equal rounds.

Three ways to spend the same user-level (ε, δ) on the demo FL recipe (S = 16 of K = 300
users, per-layer clipping, LAMB), each with its noise multiplier calibrated to the target:

* ``gaussian / poisson``: fresh noise every round, Poisson sampling's amplification
  (what the simulator does by default; a deployment must guarantee the sampling);
* ``gaussian / cyclic``: fresh noise every round, users in b = K // S fixed groups taking
  turns, no amplification (what a deployment without sampling guarantees can claim);
* ``blt / cyclic``: DP-FTRL with a BLT strategy optimized for (n, b), same participation.

    python -m experiments.compare_mechanisms [--target-epsilon 20] [--seeds 0,1]
        [--rounds 20] [--workdir runs/mechanisms] [--seed-model runs/demo/central/checkpoints]

Run ``make demo`` first (its seed model). Prints a markdown table (held-out WER/CER after
the last round, z, ε) and writes it to ``<workdir>/table.md``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from experiments import train_fl
from experiments.configs import fl_dp
from fl_dp_asr.dp import accounting
from fl_dp_asr.dp.correlated import CorrelatedNoise

POPULATION, COHORT = 300, 16  # the demo's synthetic Common Voice part and cohort
SETTINGS = (("gaussian", "poisson"), ("gaussian", "cyclic"), ("blt", "cyclic"))


def noise_multiplier(
    mechanism: str, sampling: str, target: float, rounds: int, delta: float
) -> float:
    """z calibrated so that ``rounds`` rounds spend ``target`` (RDP)."""
    if sampling == "poisson":
        return accounting.calibrate_noise(target, COHORT, POPULATION, rounds, delta)
    separation = min(POPULATION // COHORT, rounds)
    strategy = (
        CorrelatedNoise("blt", rounds, separation)
        if mechanism == "blt"
        else CorrelatedNoise.independent(rounds, separation)
    )
    return strategy.calibrate(target, delta)


def run_one(mechanism: str, sampling: str, seed: int, args: argparse.Namespace) -> dict:
    config = fl_dp.get_config("demo")
    config.seed = seed
    config.init_checkpoint = args.seed_model
    config.progress_bar = False
    config.fl.rounds = args.rounds
    config.eval.every = args.rounds
    config.fl.sampling = sampling
    config.dp.mechanism = mechanism
    config.dp.target_cohort = None
    config.dp.sigma_dp = None
    config.dp.noise_multiplier = noise_multiplier(
        mechanism, sampling, args.target_epsilon, args.rounds, config.dp.delta
    )
    if sampling == "cyclic":
        config.fl.min_separation = min(POPULATION // COHORT, args.rounds)
    workdir = os.path.join(args.workdir, f"{mechanism}_{sampling}_seed{seed}")
    summary = train_fl.train(config, workdir)
    assert summary["population"] == POPULATION, summary["population"]
    return summary


def table(rows: list[tuple[str, str, int, dict]]) -> str:
    lines = [
        "| mechanism / participation | seed | z | ε (RDP) | held-out WER | held-out CER |",
        "|---|---|---|---|---|---|",
    ]
    for mechanism, sampling, seed, s in rows:
        lines.append(
            f"| {mechanism} / {sampling} | {seed} | {s['noise_multiplier']:.4g} | "
            f"{s['epsilon_rdp']:.3g} | {100 * s['final_wer']:.1f} % | "
            f"{100 * s['final_cer']:.1f} % |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-epsilon", type=float, default=20.0)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workdir", default="runs/mechanisms")
    parser.add_argument("--seed-model", default="runs/demo/central/checkpoints")
    args = parser.parse_args(argv)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for mechanism, sampling in SETTINGS:
            rows.append((mechanism, sampling, seed, run_one(mechanism, sampling, seed, args)))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = (
        f"Target ε = {args.target_epsilon:g} (δ = 1e-6), {args.rounds} rounds, S = {COHORT} "
        f"of K = {POPULATION}, demo recipe\n\n" + table(rows)
    )
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "table.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
