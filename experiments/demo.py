r"""``make demo``: synthetic corpus → central seed model → FL + user-level DP → summary.

    python -m experiments.demo [--workdir runs/demo]

1. generates the synthetic espeak-ng corpus in ``data/synthetic`` (cached);
2. trains the ``tiny`` seed model centrally on its LibriSpeech-layout part
   (``experiments/configs/central.py:demo``);
3. fine-tunes it with federated learning and user-level DP (per-layer clipping, LAMB
   server) on its Common Voice-layout part, whose speakers and accents differ
   (``experiments/configs/fl_dp.py:demo``);
4. writes plots and prints the seed → FL+DP WER on held-out users and the privacy spent.

Every stage resumes from its work directory, so a second run only prints the summary.
"""

from __future__ import annotations

import argparse
import os

from experiments import plots, train_central, train_fl
from experiments.configs import central, fl_dp
from fl_dp_asr.train import cli


def run(workdir: str, central_config, fl_config) -> str:
    """The four stages with the given configs; returns the printed summary."""
    central_dir = os.path.join(workdir, "central")
    fl_dir = os.path.join(workdir, "fl_dp")

    print("== 1-2. corpus and central seed model " + "=" * 40, flush=True)
    central = train_central.train(central_config, central_dir)

    print("== 3. federated fine-tuning with user-level DP " + "=" * 31, flush=True)
    fl_config.init_checkpoint = os.path.join(central_dir, "checkpoints")
    fl = train_fl.train(fl_config, fl_dir)

    print("== 4. plots " + "=" * 66, flush=True)
    written = plots.make_plots([fl_dir], os.path.join(workdir, "plots"))
    text = summary_text(central, fl, fl_config, written)
    print(text, flush=True)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/demo", help="where runs and plots go")
    args = parser.parse_args(argv)
    cli.use_compilation_cache()
    run(args.workdir, central.get_config("demo"), fl_dp.get_config("demo"))


def summary_text(central: dict, fl: dict, config, plot_files: list[str]) -> str:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f} %"

    def eps(x):
        return "n/a" if x is None else f"{x:.2f}"

    return "\n".join(
        [
            "",
            "fl_dp_asr demo summary",
            f"  seed model (central, synthetic LibriSpeech part): dev WER "
            f"{pct(central['dev_wer'])}, CER {pct(central['dev_cer'])} after {central['step']} "
            "steps",
            f"  held-out Common Voice-part users: WER {pct(fl['seed_wer'])} (seed) -> "
            f"{pct(fl['final_wer'])} (FL + DP); CER {pct(fl['seed_cer'])} -> "
            f"{pct(fl['final_cer'])}",
            f"  FL: {fl['rounds']} rounds, {fl['sampling']} sampling, expected cohort "
            f"S={fl['cohort_size']} of K={fl['population']} users, {config.fl.local_steps} local "
            f"steps, {fl['clipping']} clipping ({fl['allocation']}) C={config.dp.clip_norm}, "
            f"z={fl['noise_multiplier']:.3g} (sigma_DP={fl['sigma_dp']:.3g})",
            f"  privacy of this simulation: user-level (eps_RDP={eps(fl['epsilon_rdp'])}, "
            f"delta={fl['delta']:g})-DP, eps_PLD={eps(fl['epsilon_pld'])}",
            f"  extrapolated (same sigma_DP and q; S'={fl['extrapolated_cohort']} of "
            f"K'={fl['extrapolated_population']} users): eps_RDP="
            f"{eps(fl['extrapolated_epsilon_rdp'])}, eps_PLD={eps(fl['extrapolated_epsilon_pld'])}",
            f"  checkpoints: {os.path.join(fl['workdir'], 'checkpoints')}",
            "  plots: " + ", ".join(plot_files),
        ]
    )


if __name__ == "__main__":
    main()
