"""Privacy calculator for user-level DP federated learning (``python -m fl_dp_asr.cli.privacy``).

Subcommands (all ε are user-level (ε, δ)-DP over all T rounds; see
:mod:`fl_dp_asr.dp.accounting` for the model and the sampling assumptions):

``epsilon``
    ε of a run: ``--noise-multiplier z`` (std on the sum / C) or ``--sigma-dp`` (std on
    the mean / C, converted with z = S·σ_DP), ``--cohort S --population K --rounds T``.
``calibrate``
    the smallest z (and σ_DP) reaching ``--target-epsilon``.
``--mechanism blt|banded_toeplitz`` (``epsilon``, ``calibrate``, ``extrapolate``)
    correlated noise (DP-FTRL, :mod:`fl_dp_asr.dp.correlated`) instead of the Gaussian
    mechanism with sampling amplification: participation with min separation
    ``--min-separation b`` (default ⌊K/S⌋, cyclic groups of the population), ε of one
    Gaussian mechanism with multiplier z/sens (sens from jax_privacy; no amplification).
    Building the strategy optimizes it with jax_privacy: 5-40 s.
``extrapolate``
    the paper's extrapolation (arXiv 2310.00098): keep the simulated run's σ_DP,
    claim the privacy of cohort S' out of population K' (z' = S'·σ_DP, q' = S'/K').
    Grids (``--sigma-dp 1e-6 3e-6 --target-cohort 51200 204800 ...``, every
    combination) and/or ``--rows FILE`` (CSV, see ``experiments/paper_extrapolation.csv``).

Integer quantities accept ``6.95e6``-style input. ``--accountant rdp|pld|both``
(PLD is tighter and slower: up to a few seconds per ε at T = 2000). ``--json`` prints
machine-readable output (ε with no finite bound becomes ``null``). Errors exit with
status 2 and one line on stderr.

Examples::

    python -m fl_dp_asr.cli.privacy epsilon --sigma-dp 1e-5 --cohort 204800 \\
        --population 6.95e6 --rounds 2000
    python -m fl_dp_asr.cli.privacy calibrate --target-epsilon 8 --cohort 1024 \\
        --population 34750 --rounds 2000 --sampling fixed --accountant rdp
    python -m fl_dp_asr.cli.privacy extrapolate --rows experiments/paper_extrapolation.csv
    python -m fl_dp_asr.cli.privacy calibrate --target-epsilon 8 --cohort 1024 \\
        --population 34750 --rounds 2000 --mechanism blt --min-separation 32
"""

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

from fl_dp_asr.cli import privacy_correlated
from fl_dp_asr.cli.privacy_inputs import (
    CliError,
    accountants,
    check_accountant_choice,
    check_cohort,
    grid_rows,
    parse_count,
    parse_number,
    parse_positive,
    parse_probability,
    read_rows,
)
from fl_dp_asr.cli.privacy_output import (
    fmt_eps,
    fmt_int,
    fmt_sig,
    format_markdown,
    format_table,
    guarantee_description,
    json_float,
    pld_footnotes,
    settings_lines,
)
from fl_dp_asr.dp import accounting, adaptive

PROG = "fl-dp-asr-privacy"
PAPER_DELTA = 1e-9
PAPER_ROUNDS = 2000
PAPER_SIMULATED_COHORT = 1024
EXTRAPOLATION_SAMPLING = (
    "Poisson sampling: each user joins a round independently with "
    "probability q' = S'/K' (S' = expected cohort size)"
)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become :class:`CliError` (one line, no usage)."""

    def error(self, message: str):
        command = self.prog.removeprefix(PROG).strip()
        raise CliError(f"{command}: {message}" if command else message)


# --------------------------------------------------------------------------------------
# epsilon
# --------------------------------------------------------------------------------------
def _run_epsilon(args: argparse.Namespace) -> str:
    if args.mechanism != "gaussian":
        return privacy_correlated.run(args, "epsilon")
    args.sampling = args.sampling or "poisson"
    check_accountant_choice(args.sampling, args.accountant)
    check_cohort(args.cohort, args.population, "--cohort", "--population", "epsilon")
    if args.sigma_dp is not None:
        z = accounting.sigma_dp_to_noise_multiplier(args.sigma_dp, args.cohort)
    else:
        z = args.noise_multiplier
    results: list[tuple[str, accounting.PrivacyGuarantee | None]] = []
    notes: dict[str, str] = {}
    footnotes: list[str] = []
    for name in accountants(args.accountant):
        if not accounting.supports(args.sampling, name):
            results.append((name, None))
            notes[name] = "PLD does not support fixed-size sampling"
            continue
        try:
            results.append(
                (
                    name,
                    accounting.epsilon(
                        z,
                        args.cohort,
                        args.population,
                        args.rounds,
                        args.delta,
                        args.sampling,
                        name,
                    ),
                )
            )
        except accounting.PldRefusedError as refused:
            results.append((name, None))
            notes[name] = "refused (see below)"
            footnotes.append(refused.explain("--accountant rdp"))
    split = _adaptive_split(args, z)
    settings = {
        "noise_multiplier": z,
        "sigma_dp": accounting.noise_multiplier_to_sigma_dp(z, args.cohort),
        **split,
        "cohort_size": args.cohort,
        "population": args.population,
        "sampling_rate": args.cohort / args.population,
        "rounds": args.rounds,
        "delta": args.delta,
        "sampling": args.sampling,
        "neighboring_relation": accounting.NEIGHBORING_RELATIONS[args.sampling],
    }
    if args.json:
        return json.dumps(
            {
                "settings": settings,
                "results": [
                    {
                        "accountant": name,
                        "supported": g is not None,
                        "epsilon": None if g is None else json_float(g.epsilon),
                        "rdp_order": None if g is None else g.rdp_order,
                    }
                    for name, g in results
                ],
            },
            indent=2,
        )
    summary = settings_lines(
        [
            ("sampling", accounting.SAMPLING_DESCRIPTIONS[args.sampling]),
            ("cohort S", fmt_int(args.cohort)),
            ("population K", fmt_int(args.population)),
            ("q = S/K", fmt_sig(settings["sampling_rate"])),
            ("z", f"{fmt_sig(z)}  (noise std on the sum / C)"),
            ("σ_DP = z/S", f"{fmt_sig(settings['sigma_dp'])}  (noise std on the mean / C)"),
            *_adaptive_lines(split),
            ("rounds T", fmt_int(args.rounds)),
            ("δ", f"{args.delta:g}"),
        ],
        args.sampling,
    )
    rows = [
        [
            name.upper(),
            fmt_eps(g.epsilon) if g else "n/a",
            fmt_sig(g.rdp_order) if g else "-",
            notes.get(name, ""),
        ]
        for name, g in results
    ]
    return (
        summary
        + "\n\n"
        + format_table(["accountant", "ε", "RDP order", ""], rows)
        + pld_footnotes(footnotes)
    )


def _adaptive_split(args: argparse.Namespace, z: float) -> dict[str, float]:
    """Adaptive clipping (``--clipped-count-stddev``): z_Δ and z_b of the two queries whose
    composition is z (fl_dp_asr.dp.adaptive); ``{}`` without it."""
    if args.clipped_count_stddev is None:
        if args.clip_bounds is not None:
            raise CliError(
                "epsilon: --clip-bounds needs --clipped-count-stddev: H only sets "
                "the clipped-count noise multiplier z_b = 2σ_b/√H of adaptive "
                "clipping"
            )
        return {}
    sigma_b, bounds = args.clipped_count_stddev, args.clip_bounds or 1
    z_b = adaptive.count_noise_multiplier(sigma_b, bounds)
    if z_b <= z:
        raise CliError(
            f"epsilon: --clipped-count-stddev {sigma_b:g} with --clip-bounds "
            f"{bounds} gives the clipped-count noise multiplier z_b = 2σ_b/√H = "
            f"{z_b:.4g}, which must exceed the overall z = {z:.4g} (z_Δ = "
            f"(z⁻² − z_b⁻²)^-½): raise --clipped-count-stddev, lower "
            f"--clip-bounds, or lower the noise"
        )
    return {
        "clipped_count_stddev": sigma_b,
        "clip_bounds": bounds,
        "delta_noise_multiplier": adaptive.delta_noise_multiplier(z, z_b),
        "count_noise_multiplier": z_b,
    }


def _adaptive_lines(split: dict[str, float]) -> list[tuple[str, str]]:
    if not split:
        return []
    return [
        (
            "z_Δ",
            f"{fmt_sig(split['delta_noise_multiplier'])}  (delta sum's share: "
            "z = (z_Δ⁻² + z_b⁻²)^-½)",
        ),
        (
            "z_b = 2σ_b/√H",
            f"{fmt_sig(split['count_noise_multiplier'])}  (clipped counts: "
            f"σ_b = {split['clipped_count_stddev']:g}, "
            f"H = {split['clip_bounds']} bounds)",
        ),
    ]


# --------------------------------------------------------------------------------------
# calibrate
# --------------------------------------------------------------------------------------
def _run_calibrate(args: argparse.Namespace) -> str:
    if args.mechanism != "gaussian":
        return privacy_correlated.run(args, "calibrate")
    args.sampling = args.sampling or "poisson"
    check_accountant_choice(args.sampling, args.accountant)
    check_cohort(args.cohort, args.population, "--cohort", "--population", "calibrate")
    results: list[tuple[str, float | None, float | None]] = []
    notes: dict[str, str] = {}
    footnotes: list[str] = []
    for name in accountants(args.accountant):
        if not accounting.supports(args.sampling, name):
            results.append((name, None, None))
            notes[name] = "PLD does not support fixed-size sampling"
            continue
        try:
            z = accounting.calibrate_noise(
                args.target_epsilon,
                args.cohort,
                args.population,
                args.rounds,
                args.delta,
                args.sampling,
                name,
            )
        except accounting.PldRefusedError as refused:
            results.append((name, None, None))
            notes[name] = "refused (see below)"
            footnotes.append(refused.explain("--accountant rdp"))
            continue
        achieved = accounting.epsilon(
            z, args.cohort, args.population, args.rounds, args.delta, args.sampling, name
        ).epsilon
        results.append((name, z, achieved))
    if args.json:
        return json.dumps(
            {
                "settings": {
                    "target_epsilon": args.target_epsilon,
                    "cohort_size": args.cohort,
                    "population": args.population,
                    "sampling_rate": args.cohort / args.population,
                    "rounds": args.rounds,
                    "delta": args.delta,
                    "sampling": args.sampling,
                    "neighboring_relation": accounting.NEIGHBORING_RELATIONS[args.sampling],
                },
                "results": [
                    {
                        "accountant": name,
                        "supported": z is not None,
                        "noise_multiplier": z,
                        "sigma_dp": None
                        if z is None
                        else accounting.noise_multiplier_to_sigma_dp(z, args.cohort),
                        "epsilon": None if z is None else json_float(eps),
                    }
                    for name, z, eps in results
                ],
            },
            indent=2,
        )
    summary = settings_lines(
        [
            ("sampling", accounting.SAMPLING_DESCRIPTIONS[args.sampling]),
            ("target ε", f"{args.target_epsilon:g}"),
            ("cohort S", fmt_int(args.cohort)),
            ("population K", fmt_int(args.population)),
            ("q = S/K", fmt_sig(args.cohort / args.population)),
            ("rounds T", fmt_int(args.rounds)),
            ("δ", f"{args.delta:g}"),
        ],
        args.sampling,
    )
    rows = [
        [name.upper(), "n/a", "-", "-", notes[name]]
        if z is None
        else [
            name.upper(),
            f"{z:.5g}",
            fmt_sig(accounting.noise_multiplier_to_sigma_dp(z, args.cohort)),
            fmt_eps(eps),
            "",
        ]
        for name, z, eps in results
    ]
    return (
        summary
        + "\n\n"
        + format_table(["accountant", "z (sum / C)", "σ_DP (mean / C)", "ε at z", ""], rows)
        + pld_footnotes(footnotes)
    )


# --------------------------------------------------------------------------------------
# extrapolate
# --------------------------------------------------------------------------------------
def _run_extrapolate(args: argparse.Namespace) -> str:
    rows = []
    if args.rows:
        rows += read_rows(args.rows, args.delta, args.simulated_cohort)
    rows += grid_rows(args)
    if not rows:
        raise CliError(
            "extrapolate: give --rows FILE and/or a grid (--sigma-dp, "
            "--target-cohort, --target-population)"
        )
    if args.mechanism != "gaussian":
        return privacy_correlated.run_extrapolate(args, rows)
    results = []
    for row in rows:
        try:
            results.append(
                (
                    row,
                    accounting.extrapolate(
                        row.sigma_dp,
                        row.simulated_cohort,
                        row.target_cohort,
                        row.target_population,
                        row.rounds,
                        row.delta,
                        accountants=accountants(args.accountant),
                    ),
                )
            )
        except ValueError as err:
            label = f" ({row.label})" if row.label else ""
            raise CliError(
                f"extrapolate: row σ_DP={row.sigma_dp:g}, "
                f"S'={row.target_cohort}, K'={row.target_population}, "
                f"T={row.rounds}{label}: {err}"
            ) from None
    if args.json:
        return json.dumps(
            {
                "sampling": "poisson",
                "neighboring_relation": accounting.NEIGHBORING_RELATIONS["poisson"],
                "rows": [
                    {
                        "label": row.label,
                        **{
                            k: json_float(v) if isinstance(v, float) else v
                            for k, v in dataclasses.asdict(e).items()
                        },
                        "simulated_noise_multiplier": e.simulated_noise_multiplier,
                    }
                    for row, e in results
                ],
            },
            indent=2,
        )
    with_label = any(row.label for row, _ in results)
    headers = (["setting"] if with_label else []) + [
        "σ_DP",
        "S'",
        "K'",
        "q' = S'/K'",
        "z' = S'·σ_DP",
        "T",
        "δ",
    ]
    if "rdp" in accountants(args.accountant):
        headers += ["ε RDP", "RDP order"]
    if "pld" in accountants(args.accountant):
        headers += ["ε PLD"]
    table = []
    for row, e in results:
        cells = ([row.label] if with_label else []) + [
            f"{e.sigma_dp:g}",
            fmt_int(e.target_cohort),
            fmt_int(e.target_population),
            fmt_sig(e.sampling_rate),
            fmt_sig(e.noise_multiplier),
            fmt_int(e.rounds),
            f"{e.delta:g}",
        ]
        if "rdp" in accountants(args.accountant):
            cells += [fmt_eps(e.epsilon_rdp), fmt_sig(e.rdp_order)]
        if "pld" in accountants(args.accountant):
            cells += [fmt_eps(e.epsilon_pld)]
        table.append(cells)
    simulated = sorted({e.simulated_cohort for _, e in results})
    notes = [
        ("sampling", EXTRAPOLATION_SAMPLING),
        (
            "extrapolation",
            "simulated with cohort S and per-mean noise σ_DP; privacy claimed "
            "for cohort S' out of K' with the same σ_DP: z' = S'·σ_DP, "
            "q' = S'/K' (arXiv 2310.00098)",
        ),
        ("simulated S", ", ".join(fmt_int(s) for s in simulated)),
    ]
    if args.markdown:
        text = "\n".join(
            f"- **{k}**: {v}" for k, v in [("guarantee", guarantee_description("poisson")), *notes]
        )
        return text + "\n\n" + format_markdown(headers, table)
    return settings_lines(notes) + "\n\n" + format_table(headers, table)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def _plain(text: str) -> str:
    """Help text without reStructuredText's double backticks (argparse prints them raw)."""
    return text.replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fl-dp-asr-privacy``."""
    parser = _Parser(
        prog=PROG,
        description=_plain(__doc__.split("\n\n")[0]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def mechanism_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--mechanism",
            choices=("gaussian", "blt", "banded_toeplitz"),
            default="gaussian",
            help="gaussian: independent noise, amplification by --sampling; blt / "
            "banded_toeplitz: correlated noise (DP-FTRL) with min-separation "
            "participation, no amplification (the strategy is optimized by "
            "jax_privacy: 5-40 s). Default: %(default)s",
        )
        p.add_argument(
            "--min-separation",
            type=parse_count,
            metavar="B",
            help="correlated noise: a user takes part at most once every B rounds "
            "(cyclic groups; needs K >= B·S and B <= T). Default: K // S, "
            "capped at T",
        )
        p.add_argument(
            "--bands",
            type=parse_count,
            help="banded_toeplitz: bands of C, <= B (default B; 1 = independent noise every round)",
        )
        p.add_argument(
            "--max-buffers",
            type=parse_count,
            default=10,
            help="blt: most buffers the optimizer tries (default: %(default)s)",
        )

    def run_settings(p: argparse.ArgumentParser, accountant_default: str = "both") -> None:
        p.add_argument(
            "--cohort",
            type=parse_count,
            required=True,
            help="users per round S (expected, for Poisson sampling)",
        )
        p.add_argument(
            "--population",
            type=parse_count,
            required=True,
            help="users K that can be sampled (6.95e6-style input accepted)",
        )
        p.add_argument("--rounds", type=parse_count, required=True, help="rounds T")
        p.add_argument(
            "--delta",
            type=parse_probability,
            default=PAPER_DELTA,
            help="δ (default: %(default)g, the paper's)",
        )
        p.add_argument(
            "--sampling",
            choices=accounting.SAMPLING_SCHEMES,
            default=None,
            help="Gaussian mechanism only. poisson: each user joins with "
            "probability q = S/K (add-or-remove-one-user DP); fixed: S users "
            "without replacement (replace-one-user DP, RDP only). "
            "Default: poisson",
        )
        mechanism_flags(p)
        p.add_argument(
            "--accountant",
            choices=("rdp", "pld", "both"),
            default=accountant_default,
            help="default: %(default)s",
        )
        p.add_argument("--json", action="store_true", help="print JSON")

    p_eps = sub.add_parser("epsilon", help="ε of a run", description="User-level ε after T rounds.")
    noise = p_eps.add_mutually_exclusive_group(required=True)
    noise.add_argument(
        "--noise-multiplier",
        type=parse_positive,
        help="z: noise std on the SUM of clipped deltas / C",
    )
    noise.add_argument(
        "--sigma-dp",
        type=parse_positive,
        help="σ_DP: noise std on the cohort MEAN / C (z = S·σ_DP)",
    )
    p_eps.add_argument(
        "--clipped-count-stddev",
        type=parse_positive,
        metavar="SIGMA_B",
        help="adaptive clipping: noise std σ_b on the clipped counts; prints "
        "z_Δ and z_b next to the overall z (ε is that of z)",
    )
    p_eps.add_argument(
        "--clip-bounds",
        type=parse_count,
        metavar="H",
        help="adaptive clipping: number of adapted bounds (1 = global; per "
        "layer: the number of layers); default 1; needs "
        "--clipped-count-stddev",
    )
    run_settings(p_eps)
    p_eps.set_defaults(run=_run_epsilon)

    p_cal = sub.add_parser(
        "calibrate",
        help="smallest noise for a target ε",
        description="Smallest z (and σ_DP = z/S) with ε(z) ≤ target (tolerance 1e-3 on z).",
    )
    p_cal.add_argument("--target-epsilon", type=parse_positive, required=True)
    run_settings(p_cal)
    p_cal.set_defaults(run=_run_calibrate)

    p_ext = sub.add_parser(
        "extrapolate",
        help="the paper's population extrapolation",
        description="Keep σ_DP of a simulated run (cohort S), report the privacy of cohort "
        "S' out of K' (z' = S'·σ_DP, q' = S'/K', Poisson sampling). Rows come "
        "from --rows FILE and/or from every combination of the grid flags.",
    )
    p_ext.add_argument(
        "--rows",
        metavar="FILE",
        help="CSV with columns sigma_dp, target_cohort, rounds, "
        "target_population (or target_sampling_rate); optional label, "
        "delta, simulated_cohort; '#' lines are comments",
    )
    p_ext.add_argument("--sigma-dp", type=parse_positive, nargs="+", help="σ_DP grid")
    p_ext.add_argument("--target-cohort", type=parse_count, nargs="+", help="S' grid")
    population = p_ext.add_mutually_exclusive_group()
    population.add_argument("--target-population", type=parse_count, nargs="+", help="K' grid")
    population.add_argument(
        "--target-sampling-rate",
        type=parse_number,
        nargs="+",
        help="q' grid instead of K' (K' = round(S'/q'))",
    )
    p_ext.add_argument(
        "--rounds",
        type=parse_count,
        nargs="+",
        default=[PAPER_ROUNDS],
        help="T grid (default: %(default)s)",
    )
    p_ext.add_argument(
        "--delta", type=parse_probability, default=PAPER_DELTA, help="δ (default: %(default)g)"
    )
    p_ext.add_argument(
        "--simulated-cohort",
        type=parse_count,
        default=PAPER_SIMULATED_COHORT,
        help="S (default: %(default)s)",
    )
    p_ext.add_argument(
        "--accountant",
        choices=("rdp", "pld", "both"),
        default="both",
        help="PLD takes up to a few seconds per row at T=2000 (default: %(default)s)",
    )
    mechanism_flags(p_ext)
    output = p_ext.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument("--markdown", action="store_true", help="print a markdown table")
    p_ext.set_defaults(run=_run_extrapolate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 2 bad input)."""
    # dp_accounting logs (through absl) every RDP order it drops for numerical reasons;
    # the bound stays valid, so keep the command's output clean.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        args = build_parser().parse_args(argv)
        text = args.run(args)
    except (CliError, ValueError) as err:
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    finally:
        absl_logger.setLevel(level)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
