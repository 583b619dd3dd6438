"""The privacy calculator with correlated noise (``--mechanism blt|banded_toeplitz``,
DP-FTRL): ``epsilon``, ``calibrate`` and ``extrapolate`` of :mod:`fl_dp_asr.cli.privacy`
for min-separation participation (:mod:`fl_dp_asr.dp.correlated`; no sampling
amplification)."""

import argparse
import json
from collections.abc import Sequence

from fl_dp_asr.cli.privacy_inputs import CliError, ExtrapolationRow, accountants, check_cohort
from fl_dp_asr.cli.privacy_output import (
    fmt_eps,
    fmt_int,
    fmt_sig,
    format_markdown,
    format_table,
    json_float,
    pld_footnotes,
)
from fl_dp_asr.dp import accounting

CORRELATED_PARTICIPATION = (
    "cyclic groups: the population split into b fixed groups, "
    "round t draws its cohort from group t mod b, so a user takes part "
    "at most once every b rounds (no sampling amplification claimed)"
)


def mechanism_from_flags(
    args: argparse.Namespace, cohort: int, population: int, rounds: int, command: str
):
    """The CorrelatedNoise of the flags (optimized), checking b against T, K and S.

    ``--min-separation`` b beyond the T rounds is refused (every user already takes part at
    most once at b = T); the default ⌊K/S⌋ is capped at T.
    """
    from fl_dp_asr.dp import correlated  # pylint: disable=import-outside-toplevel

    if args.min_separation is not None and args.min_separation > rounds:
        raise CliError(
            f"{command}: --min-separation {args.min_separation} exceeds the T = "
            f"{rounds} rounds: at b = T every user already takes part at most once, "
            f"so b > T means nothing; pass --min-separation {rounds} (or less), or "
            f"leave it out for ⌊K/S⌋ capped at T"
        )
    separation = min(args.min_separation or population // cohort, rounds)
    if cohort * separation > population:
        raise CliError(
            f"{command}: --min-separation {separation} needs a population of at "
            f"least b·S = {separation * cohort:,} users (b groups of a cohort "
            f"each), got {population:,}; lower --min-separation or --cohort"
        )
    try:
        return correlated.CorrelatedNoise(
            args.mechanism, rounds, separation, bands=args.bands, max_buffers=args.max_buffers
        ).optimize()
    except ValueError as err:
        raise CliError(f"{command}: {err}") from None


def check_flags(args: argparse.Namespace, command: str) -> None:
    given = [
        flag
        for flag, value in (
            ("--sampling", args.sampling),
            ("--clipped-count-stddev", getattr(args, "clipped_count_stddev", None)),
            ("--clip-bounds", getattr(args, "clip_bounds", None)),
        )
        if value is not None
    ]
    if given:
        raise CliError(
            f"{command}: {given[0]} does not apply to --mechanism {args.mechanism}"
            f" (min-separation participation, one clipped-sum query per round)"
        )


def _strategy_description(mechanism) -> str:
    if mechanism.kind == "blt":
        return (
            f"BLT, {mechanism.num_buffers} buffer(s) (noise state: "
            f"{mechanism.num_buffers} × params, float32)"
        )
    return (
        f"banded Toeplitz, {mechanism.bands} bands (noise state: "
        f"{mechanism.num_buffers} × params, float32)"
    )


def run(args: argparse.Namespace, command: str) -> str:
    """``epsilon`` / ``calibrate`` with ``--mechanism blt|banded_toeplitz``."""
    from fl_dp_asr.dp import correlated  # pylint: disable=import-outside-toplevel

    check_flags(args, command)
    check_cohort(args.cohort, args.population, "--cohort", "--population", command)
    mechanism = mechanism_from_flags(args, args.cohort, args.population, args.rounds, command)
    results, footnotes = [], []
    for name in accountants(args.accountant):
        try:
            if command == "calibrate":
                z = mechanism.calibrate(args.target_epsilon, args.delta, accountant=name)
            elif args.sigma_dp is not None:
                z = accounting.sigma_dp_to_noise_multiplier(args.sigma_dp, args.cohort)
            else:
                z = args.noise_multiplier
            results.append((name, z, mechanism.epsilon(z, args.delta, accountant=name)))
        except accounting.PldRefusedError as refused:
            results.append((name, None, None))
            footnotes.append(refused.explain("--accountant rdp"))
    settings = {
        "mechanism": mechanism.kind,
        "min_separation": mechanism.min_separation,
        "max_participations": mechanism.max_participations,
        "sensitivity": mechanism.sensitivity(),
        "strategy": mechanism.to_dict(),
        "cohort_size": args.cohort,
        "population": args.population,
        "rounds": args.rounds,
        "delta": args.delta,
        "participation": "cyclic",
        "neighboring_relation": accounting.ZERO_OUT_ONE_USER,
    }
    if command == "calibrate":
        settings["target_epsilon"] = args.target_epsilon
    if args.json:
        return json.dumps(
            {
                "settings": settings,
                "results": [
                    {
                        "accountant": name,
                        "supported": g is not None,
                        "noise_multiplier": z,
                        "sigma_dp": None
                        if z is None
                        else accounting.noise_multiplier_to_sigma_dp(z, args.cohort),
                        "effective_noise_multiplier": None
                        if g is None
                        else g.effective_noise_multiplier,
                        "epsilon": None if g is None else json_float(g.epsilon),
                        "rdp_order": None if g is None else g.rdp_order,
                    }
                    for name, z, g in results
                ],
            },
            indent=2,
        )
    lines = [
        (
            "guarantee",
            f"user-level (ε, δ)-DP, {accounting.ZERO_OUT_ONE_USER} "
            "neighbouring datasets, all T rounds released",
        ),
        ("mechanism", correlated.MECHANISM_DESCRIPTIONS[mechanism.kind]),
        ("strategy", _strategy_description(mechanism)),
        ("participation", CORRELATED_PARTICIPATION),
        (
            "min separation b",
            f"{mechanism.min_separation:,}  (k = ⌈T/b⌉ = "
            f"{mechanism.max_participations:,} participations at most)",
        ),
        (
            "sensitivity",
            f"{fmt_sig(mechanism.sensitivity())}  (of C, in clip norms; "
            "ε is that of one Gaussian with z/sens)",
        ),
    ]
    if command == "calibrate":
        lines.append(("target ε", f"{args.target_epsilon:g}"))
    else:
        z = results[0][1] if results else None
        sigma_dp = None if z is None else accounting.noise_multiplier_to_sigma_dp(z, args.cohort)
        lines += [
            ("z", f"{fmt_sig(z)}  (std of the draws before C⁻¹, on the sum / C)"),
            ("σ_DP = z/S", f"{fmt_sig(sigma_dp)}  (on the mean / C)"),
        ]
    lines += [
        ("cohort S", fmt_int(args.cohort)),
        ("population K", fmt_int(args.population)),
        ("rounds T", fmt_int(args.rounds)),
        ("δ", f"{args.delta:g}"),
    ]
    width = max(len(k) for k, _ in lines)
    summary = "\n".join(f"{k.ljust(width)} : {v}" for k, v in lines)
    if command == "calibrate":
        rows = [
            [name.upper(), "n/a", "-", "-", "-", "refused (see below)"]
            if g is None
            else [
                name.upper(),
                f"{z:.5g}",
                fmt_sig(accounting.noise_multiplier_to_sigma_dp(z, args.cohort)),
                fmt_sig(g.effective_noise_multiplier),
                fmt_eps(g.epsilon),
                "",
            ]
            for name, z, g in results
        ]
        headers = ["accountant", "z (sum / C)", "σ_DP (mean / C)", "z/sens", "ε at z", ""]
    else:
        rows = [
            [name.upper(), "n/a", "-", "-", "refused (see below)"]
            if g is None
            else [
                name.upper(),
                fmt_eps(g.epsilon),
                fmt_sig(g.effective_noise_multiplier),
                fmt_sig(g.rdp_order),
                "",
            ]
            for name, z, g in results
        ]
        headers = ["accountant", "ε", "z/sens", "RDP order", ""]
    return summary + "\n\n" + format_table(headers, rows) + pld_footnotes(footnotes)


def run_extrapolate(args: argparse.Namespace, rows: Sequence[ExtrapolationRow]) -> str:
    """``extrapolate --mechanism blt|banded_toeplitz``: per row z' = S'·σ_DP, b = the flag
    or ⌊K'/S'⌋, ε of T rounds of the correlated mechanism for (T, b)."""
    chosen = accountants(args.accountant)
    records = []
    for row in rows:
        label = f" ({row.label})" if row.label else ""
        where = (
            f"extrapolate: row σ_DP={row.sigma_dp:g}, S'={row.target_cohort}, "
            f"K'={row.target_population}, T={row.rounds}{label}"
        )
        mechanism = mechanism_from_flags(
            args, row.target_cohort, row.target_population, row.rounds, where
        )
        z = accounting.sigma_dp_to_noise_multiplier(row.sigma_dp, row.target_cohort)
        epsilons = {}
        for name in chosen:
            try:
                epsilons[name] = mechanism.epsilon(z, row.delta, accountant=name).epsilon
            except accounting.PldRefusedError:
                epsilons[name] = None
        records.append((row, mechanism, z, epsilons))
    if args.json:
        return json.dumps(
            {
                "mechanism": args.mechanism,
                "participation": "cyclic",
                "neighboring_relation": accounting.ZERO_OUT_ONE_USER,
                "rows": [
                    {
                        "label": row.label,
                        "sigma_dp": row.sigma_dp,
                        "simulated_cohort": row.simulated_cohort,
                        "target_cohort": row.target_cohort,
                        "target_population": row.target_population,
                        "rounds": row.rounds,
                        "delta": row.delta,
                        "noise_multiplier": z,
                        "min_separation": m.min_separation,
                        "max_participations": m.max_participations,
                        "sensitivity": m.sensitivity(),
                        **{f"epsilon_{name}": json_float(eps) for name, eps in epsilons.items()},
                    }
                    for row, m, z, epsilons in records
                ],
            },
            indent=2,
        )
    with_label = any(row.label for row in rows)
    headers = (
        (["setting"] if with_label else [])
        + ["σ_DP", "S'", "K'", "b", "k", "z' = S'·σ_DP", "sens", "T", "δ"]
        + [f"ε {name.upper()}" for name in chosen]
    )
    table = [
        ([row.label] if with_label else [])
        + [
            f"{row.sigma_dp:g}",
            fmt_int(row.target_cohort),
            fmt_int(row.target_population),
            fmt_int(m.min_separation),
            fmt_int(m.max_participations),
            fmt_sig(z),
            fmt_sig(m.sensitivity()),
            fmt_int(row.rounds),
            f"{row.delta:g}",
        ]
        + [fmt_eps(epsilons[name]) for name in chosen]
        for row, m, z, epsilons in records
    ]
    notes = [
        (
            "guarantee",
            f"user-level (ε, δ)-DP, {accounting.ZERO_OUT_ONE_USER} "
            "neighbouring datasets, all T rounds released",
        ),
        (
            "mechanism",
            f"{args.mechanism} correlated noise (DP-FTRL), strategy optimized "
            f"by jax_privacy for (T, b)",
        ),
        ("participation", CORRELATED_PARTICIPATION + "; b = --min-separation or ⌊K'/S'⌋"),
        (
            "extrapolation",
            "simulated with cohort S and per-mean noise σ_DP; privacy "
            "claimed for cohort S' out of K' with the same σ_DP: "
            "z' = S'·σ_DP",
        ),
    ]
    if args.markdown:
        return (
            "\n".join(f"- **{k}**: {v}" for k, v in notes)
            + "\n\n"
            + format_markdown(headers, table)
        )
    width = max(len(k) for k, _ in notes)
    return (
        "\n".join(f"{k.ljust(width)} : {v}" for k, v in notes)
        + "\n\n"
        + format_table(headers, table)
    )
