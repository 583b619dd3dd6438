"""Privacy calculator for user-level DP federated learning (``python -m fl_dp_asr.privacy``).

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

    python -m fl_dp_asr.privacy epsilon --sigma-dp 1e-5 --cohort 204800 \\
        --population 6.95e6 --rounds 2000
    python -m fl_dp_asr.privacy calibrate --target-epsilon 8 --cohort 1024 \\
        --population 34750 --rounds 2000 --sampling fixed --accountant rdp
    python -m fl_dp_asr.privacy extrapolate --rows experiments/paper_extrapolation.csv
    python -m fl_dp_asr.privacy calibrate --target-epsilon 8 --cohort 1024 \\
        --population 34750 --rounds 2000 --mechanism blt --min-separation 32
"""

import argparse
import csv
import dataclasses
import decimal
import json
import logging
import math
import sys
from collections.abc import Iterable, Sequence

from fl_dp_asr.dp import accounting, adaptive

PROG = "fl-dp-asr-privacy"
PAPER_DELTA = 1e-9
PAPER_ROUNDS = 2000
PAPER_SIMULATED_COHORT = 1024
ROW_COLUMNS_REQUIRED = ("sigma_dp", "target_cohort", "rounds")
ROW_COLUMNS_POPULATION = ("target_population", "target_sampling_rate")
ROW_COLUMNS_OPTIONAL = ("label", "delta", "simulated_cohort")
EXTRAPOLATION_SAMPLING = ("Poisson sampling: each user joins a round independently with "
                          "probability q' = S'/K' (S' = expected cohort size)")


class CliError(Exception):
    """A bad input; ``main`` prints it as one line on stderr and exits with status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become :class:`CliError` (one line, no usage)."""

    def error(self, message: str):
        command = self.prog.removeprefix(PROG).strip()
        raise CliError(f"{command}: {message}" if command else message)


# --------------------------------------------------------------------------------------
# Parsing numbers
# --------------------------------------------------------------------------------------
def parse_integer(text: str) -> int:
    """An integer written as ``1024``, ``6.95e6`` or ``69_500_000``; no fractional part.

    >>> parse_integer("6.95e6")
    6950000
    """
    try:
        value = decimal.Decimal(text.strip().replace("_", ""))
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(
            f"expected an integer (e.g. 1024 or 6.95e6), got {text!r} which is not integral")
    return int(value)


def parse_number(text: str) -> float:
    """A finite real number (``1e-9``, ``0.5``)."""
    try:
        value = float(text.strip().replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def parse_count(text: str) -> int:
    """An integer >= 1 (a cohort, a population, a number of rounds), as :func:`parse_integer`."""
    value = parse_integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def parse_positive(text: str) -> float:
    """A finite number > 0 (a noise multiplier, σ_DP, a target ε)."""
    value = parse_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def parse_probability(text: str) -> float:
    """A number strictly between 0 and 1 (δ)."""
    value = parse_number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def check_cohort(cohort: int, population: int, cohort_name: str, population_name: str,
                 where: str) -> None:
    """CliError naming both inputs (flags or columns) when the cohort exceeds the population."""
    if cohort > population:
        raise CliError(f"{where}: {cohort_name} ({cohort:,}) must not exceed {population_name} "
                       f"({population:,}): a cohort is drawn from the population")


# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------
def _fmt_int(value: int) -> str:
    return f"{value:,}"


def _fmt_sig(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}"


def _fmt_eps(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}"


def _json_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Aligned plain-text table: first column left-aligned, the others right-aligned."""
    rows = [list(map(str, row)) for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_markdown(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """GitHub-flavoured markdown table, numbers right-aligned."""
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def _guarantee_description(sampling: str) -> str:
    return (f"user-level (ε, δ)-DP, {accounting.NEIGHBORING_RELATIONS[sampling]} "
            "neighbouring datasets, all T rounds released")


def _settings_lines(items: Sequence[tuple[str, str]], sampling: str = "poisson") -> str:
    pairs = [("guarantee", _guarantee_description(sampling))] + list(items)
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)} : {v}" for k, v in pairs)


def _accountants(choice: str) -> tuple[accounting.AccountantName, ...]:
    return accounting.ACCOUNTANTS if choice == "both" else (choice,)  # type: ignore[return-value]


def _check_accountant_choice(sampling: str, choice: str) -> None:
    if choice != "both" and not accounting.supports(sampling, choice):
        raise CliError("--accountant pld does not support --sampling fixed (no PLD "
                       "analysis of fixed-size cohorts without replacement); use --accountant "
                       "rdp with --sampling fixed, or --sampling poisson with --accountant "
                       "pld/rdp/both")


# --------------------------------------------------------------------------------------
# epsilon
# --------------------------------------------------------------------------------------
def _run_epsilon(args: argparse.Namespace) -> str:
    if args.mechanism != "gaussian":
        return _run_correlated(args, "epsilon")
    args.sampling = args.sampling or "poisson"
    _check_accountant_choice(args.sampling, args.accountant)
    check_cohort(args.cohort, args.population, "--cohort", "--population", "epsilon")
    if args.sigma_dp is not None:
        z = accounting.sigma_dp_to_noise_multiplier(args.sigma_dp, args.cohort)
    else:
        z = args.noise_multiplier
    results: list[tuple[str, accounting.PrivacyGuarantee | None]] = []
    notes: dict[str, str] = {}
    footnotes: list[str] = []
    for name in _accountants(args.accountant):
        if not accounting.supports(args.sampling, name):
            results.append((name, None))
            notes[name] = "PLD does not support fixed-size sampling"
            continue
        try:
            results.append((name, accounting.epsilon(z, args.cohort, args.population,
                                                     args.rounds, args.delta, args.sampling,
                                                     name)))
        except accounting.PldRefusedError as refused:
            results.append((name, None))
            notes[name] = "refused (see below)"
            footnotes.append(refused.explain("--accountant rdp"))
    split = _adaptive_split(args, z)
    settings = {"noise_multiplier": z,
                "sigma_dp": accounting.noise_multiplier_to_sigma_dp(z, args.cohort),
                **split,
                "cohort_size": args.cohort, "population": args.population,
                "sampling_rate": args.cohort / args.population, "rounds": args.rounds,
                "delta": args.delta, "sampling": args.sampling,
                "neighboring_relation": accounting.NEIGHBORING_RELATIONS[args.sampling]}
    if args.json:
        return json.dumps({"settings": settings, "results": [
            {"accountant": name, "supported": g is not None,
             "epsilon": None if g is None else _json_float(g.epsilon),
             "rdp_order": None if g is None else g.rdp_order} for name, g in results]},
            indent=2)
    summary = _settings_lines([
        ("sampling", accounting.SAMPLING_DESCRIPTIONS[args.sampling]),
        ("cohort S", _fmt_int(args.cohort)), ("population K", _fmt_int(args.population)),
        ("q = S/K", _fmt_sig(settings["sampling_rate"])),
        ("z", f"{_fmt_sig(z)}  (noise std on the sum / C)"),
        ("σ_DP = z/S", f"{_fmt_sig(settings['sigma_dp'])}  (noise std on the mean / C)"),
        *_adaptive_lines(split),
        ("rounds T", _fmt_int(args.rounds)), ("δ", f"{args.delta:g}")], args.sampling)
    rows = [[name.upper(), _fmt_eps(g.epsilon) if g else "n/a",
             _fmt_sig(g.rdp_order) if g else "-", notes.get(name, "")]
            for name, g in results]
    return (summary + "\n\n" + format_table(["accountant", "ε", "RDP order", ""], rows)
            + _footnotes(footnotes))


def _footnotes(lines: Sequence[str]) -> str:
    return "".join(f"\n\nPLD: {line}" for line in lines)


def _adaptive_split(args: argparse.Namespace, z: float) -> dict[str, float]:
    """Adaptive clipping (``--clipped-count-stddev``): z_Δ and z_b of the two queries whose
    composition is z (fl_dp_asr.dp.adaptive); ``{}`` without it."""
    if args.clipped_count_stddev is None:
        if args.clip_bounds is not None:
            raise CliError("epsilon: --clip-bounds needs --clipped-count-stddev: H only sets "
                           "the clipped-count noise multiplier z_b = 2σ_b/√H of adaptive "
                           "clipping")
        return {}
    sigma_b, bounds = args.clipped_count_stddev, args.clip_bounds or 1
    z_b = adaptive.count_noise_multiplier(sigma_b, bounds)
    if z_b <= z:
        raise CliError(f"epsilon: --clipped-count-stddev {sigma_b:g} with --clip-bounds "
                       f"{bounds} gives the clipped-count noise multiplier z_b = 2σ_b/√H = "
                       f"{z_b:.4g}, which must exceed the overall z = {z:.4g} (z_Δ = "
                       f"(z⁻² − z_b⁻²)^-½): raise --clipped-count-stddev, lower "
                       f"--clip-bounds, or lower the noise")
    return {"clipped_count_stddev": sigma_b, "clip_bounds": bounds,
            "delta_noise_multiplier": adaptive.delta_noise_multiplier(z, z_b),
            "count_noise_multiplier": z_b}


def _adaptive_lines(split: dict[str, float]) -> list[tuple[str, str]]:
    if not split:
        return []
    return [("z_Δ", f"{_fmt_sig(split['delta_noise_multiplier'])}  (delta sum's share: "
                    "z = (z_Δ⁻² + z_b⁻²)^-½)"),
            ("z_b = 2σ_b/√H", f"{_fmt_sig(split['count_noise_multiplier'])}  (clipped counts: "
                              f"σ_b = {split['clipped_count_stddev']:g}, "
                              f"H = {split['clip_bounds']} bounds)")]


# --------------------------------------------------------------------------------------
# calibrate
# --------------------------------------------------------------------------------------
def _run_calibrate(args: argparse.Namespace) -> str:
    if args.mechanism != "gaussian":
        return _run_correlated(args, "calibrate")
    args.sampling = args.sampling or "poisson"
    _check_accountant_choice(args.sampling, args.accountant)
    check_cohort(args.cohort, args.population, "--cohort", "--population", "calibrate")
    results: list[tuple[str, float | None, float | None]] = []
    notes: dict[str, str] = {}
    footnotes: list[str] = []
    for name in _accountants(args.accountant):
        if not accounting.supports(args.sampling, name):
            results.append((name, None, None))
            notes[name] = "PLD does not support fixed-size sampling"
            continue
        try:
            z = accounting.calibrate_noise(args.target_epsilon, args.cohort, args.population,
                                           args.rounds, args.delta, args.sampling, name)
        except accounting.PldRefusedError as refused:
            results.append((name, None, None))
            notes[name] = "refused (see below)"
            footnotes.append(refused.explain("--accountant rdp"))
            continue
        achieved = accounting.epsilon(z, args.cohort, args.population, args.rounds,
                                      args.delta, args.sampling, name).epsilon
        results.append((name, z, achieved))
    if args.json:
        return json.dumps({
            "settings": {"target_epsilon": args.target_epsilon, "cohort_size": args.cohort,
                         "population": args.population,
                         "sampling_rate": args.cohort / args.population,
                         "rounds": args.rounds, "delta": args.delta,
                         "sampling": args.sampling,
                         "neighboring_relation":
                             accounting.NEIGHBORING_RELATIONS[args.sampling]},
            "results": [{"accountant": name, "supported": z is not None,
                         "noise_multiplier": z,
                         "sigma_dp": None if z is None else
                         accounting.noise_multiplier_to_sigma_dp(z, args.cohort),
                         "epsilon": None if z is None else _json_float(eps)}
                        for name, z, eps in results]}, indent=2)
    summary = _settings_lines([
        ("sampling", accounting.SAMPLING_DESCRIPTIONS[args.sampling]),
        ("target ε", f"{args.target_epsilon:g}"), ("cohort S", _fmt_int(args.cohort)),
        ("population K", _fmt_int(args.population)),
        ("q = S/K", _fmt_sig(args.cohort / args.population)),
        ("rounds T", _fmt_int(args.rounds)), ("δ", f"{args.delta:g}")], args.sampling)
    rows = [[name.upper(), "n/a", "-", "-", notes[name]]
            if z is None else
            [name.upper(), f"{z:.5g}",
             _fmt_sig(accounting.noise_multiplier_to_sigma_dp(z, args.cohort)),
             _fmt_eps(eps), ""] for name, z, eps in results]
    return summary + "\n\n" + format_table(
        ["accountant", "z (sum / C)", "σ_DP (mean / C)", "ε at z", ""], rows
    ) + _footnotes(footnotes)


# --------------------------------------------------------------------------------------
# Correlated noise (--mechanism blt|banded_toeplitz)
# --------------------------------------------------------------------------------------
CORRELATED_PARTICIPATION = ("cyclic groups: the population split into b fixed groups, "
                            "round t draws its cohort from group t mod b, so a user takes part "
                            "at most once every b rounds (no sampling amplification claimed)")


def _correlated_mechanism(args: argparse.Namespace, cohort: int, population: int,
                          rounds: int, command: str):
    """The CorrelatedNoise of the flags (optimized), checking b against K and S."""
    from fl_dp_asr.dp import correlated   # pylint: disable=import-outside-toplevel
    separation = args.min_separation or population // cohort
    if separation > rounds:
        separation = rounds          # b beyond T changes nothing: every user once at most
    if cohort * separation > population:
        raise CliError(f"{command}: --min-separation {separation} needs a population of at "
                       f"least b·S = {separation * cohort:,} users (b groups of a cohort "
                       f"each), got {population:,}; lower --min-separation or --cohort")
    try:
        return correlated.CorrelatedNoise(
            args.mechanism, rounds, separation, bands=args.bands,
            max_buffers=args.max_buffers).optimize()
    except ValueError as err:
        raise CliError(f"{command}: {err}") from None


def _check_correlated_flags(args: argparse.Namespace, command: str) -> None:
    given = [flag for flag, value in (("--sampling", args.sampling),
                                      ("--clipped-count-stddev",
                                       getattr(args, "clipped_count_stddev", None)),
                                      ("--clip-bounds", getattr(args, "clip_bounds", None)))
             if value is not None]
    if given:
        raise CliError(f"{command}: {given[0]} does not apply to --mechanism {args.mechanism}"
                       f" (min-separation participation, one clipped-sum query per round)")


def _strategy_description(mechanism) -> str:
    if mechanism.kind == "blt":
        return (f"BLT, {mechanism.num_buffers} buffer(s) (noise state: "
                f"{mechanism.num_buffers} × params, float32)")
    return (f"banded Toeplitz, {mechanism.bands} bands (noise state: "
            f"{mechanism.num_buffers} × params, float32)")


def _run_correlated(args: argparse.Namespace, command: str) -> str:
    """``epsilon`` / ``calibrate`` with ``--mechanism blt|banded_toeplitz``."""
    from fl_dp_asr.dp import correlated   # pylint: disable=import-outside-toplevel
    _check_correlated_flags(args, command)
    check_cohort(args.cohort, args.population, "--cohort", "--population", command)
    mechanism = _correlated_mechanism(args, args.cohort, args.population, args.rounds,
                                      command)
    results, footnotes = [], []
    for name in _accountants(args.accountant):
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
    settings = {"mechanism": mechanism.kind, "min_separation": mechanism.min_separation,
                "max_participations": mechanism.max_participations,
                "sensitivity": mechanism.sensitivity(), "strategy": mechanism.to_dict(),
                "cohort_size": args.cohort, "population": args.population,
                "rounds": args.rounds, "delta": args.delta, "participation": "cyclic",
                "neighboring_relation": accounting.ZERO_OUT_ONE_USER}
    if command == "calibrate":
        settings["target_epsilon"] = args.target_epsilon
    if args.json:
        return json.dumps({"settings": settings, "results": [
            {"accountant": name, "supported": g is not None, "noise_multiplier": z,
             "sigma_dp": None if z is None else
             accounting.noise_multiplier_to_sigma_dp(z, args.cohort),
             "effective_noise_multiplier": None if g is None else g.effective_noise_multiplier,
             "epsilon": None if g is None else _json_float(g.epsilon),
             "rdp_order": None if g is None else g.rdp_order}
            for name, z, g in results]}, indent=2)
    lines = [("guarantee", f"user-level (ε, δ)-DP, {accounting.ZERO_OUT_ONE_USER} "
                           "neighbouring datasets, all T rounds released"),
             ("mechanism", correlated.MECHANISM_DESCRIPTIONS[mechanism.kind]),
             ("strategy", _strategy_description(mechanism)),
             ("participation", CORRELATED_PARTICIPATION),
             ("min separation b", f"{mechanism.min_separation:,}  (k = ⌈T/b⌉ = "
                                  f"{mechanism.max_participations:,} participations at most)"),
             ("sensitivity", f"{_fmt_sig(mechanism.sensitivity())}  (of C, in clip norms; "
                             "ε is that of one Gaussian with z/sens)")]
    if command == "calibrate":
        lines.append(("target ε", f"{args.target_epsilon:g}"))
    else:
        z = results[0][1] if results else None
        sigma_dp = accounting.noise_multiplier_to_sigma_dp(z, args.cohort)  # type: ignore[arg-type]
        lines += [("z", f"{_fmt_sig(z)}  (std of the draws before C⁻¹, on the sum / C)"),
                  ("σ_DP = z/S", f"{_fmt_sig(sigma_dp)}  (on the mean / C)")]
    lines += [("cohort S", _fmt_int(args.cohort)), ("population K", _fmt_int(args.population)),
              ("rounds T", _fmt_int(args.rounds)), ("δ", f"{args.delta:g}")]
    width = max(len(k) for k, _ in lines)
    summary = "\n".join(f"{k.ljust(width)} : {v}" for k, v in lines)
    if command == "calibrate":
        rows = [[name.upper(), "n/a", "-", "-", "-", "refused (see below)"] if g is None else
                [name.upper(), f"{z:.5g}",
                 _fmt_sig(accounting.noise_multiplier_to_sigma_dp(z, args.cohort)),
                 _fmt_sig(g.effective_noise_multiplier), _fmt_eps(g.epsilon), ""]
                for name, z, g in results]
        headers = ["accountant", "z (sum / C)", "σ_DP (mean / C)", "z/sens", "ε at z", ""]
    else:
        rows = [[name.upper(), "n/a", "-", "-", "refused (see below)"] if g is None else
                [name.upper(), _fmt_eps(g.epsilon), _fmt_sig(g.effective_noise_multiplier),
                 _fmt_sig(g.rdp_order), ""] for name, z, g in results]
        headers = ["accountant", "ε", "z/sens", "RDP order", ""]
    return summary + "\n\n" + format_table(headers, rows) + _footnotes(footnotes)


# --------------------------------------------------------------------------------------
# extrapolate
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ExtrapolationRow:
    """One setting to extrapolate; ``label`` is free text (e.g. where it comes from)."""

    sigma_dp: float
    target_cohort: int
    target_population: int
    rounds: int
    delta: float
    simulated_cohort: int
    label: str = ""


def _population_from_rate(cohort: int, rate: float, where: str) -> int:
    if not 0 < rate <= 1:
        raise CliError(f"{where}: target sampling rate must be in (0, 1], got {rate:g}")
    return round(cohort / rate)


def read_rows(path: str, default_delta: float, default_simulated_cohort: int
              ) -> list[ExtrapolationRow]:
    """Reads an extrapolation CSV: ``#`` lines are comments, the first other line the header.

    Columns: ``sigma_dp``, ``target_cohort``, ``rounds`` and one of ``target_population``
    / ``target_sampling_rate`` (then K' = round(S'/q')); optional ``label``, ``delta``,
    ``simulated_cohort`` (defaults from the command line).
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            numbered = [(n, line) for n, line in enumerate(f, 1)
                        if line.strip() and not line.lstrip().startswith("#")]
    except OSError as err:
        raise CliError(f"cannot read --rows file {path!r}: {err.strerror}") from None
    if not numbered:
        raise CliError(f"--rows file {path!r} has no header line")
    header_line, header = numbered[0][0], next(csv.reader([numbered[0][1]]))
    header = [h.strip() for h in header]
    known = ROW_COLUMNS_REQUIRED + ROW_COLUMNS_POPULATION + ROW_COLUMNS_OPTIONAL
    unknown = [h for h in header if h not in known]
    missing = [h for h in ROW_COLUMNS_REQUIRED if h not in header]
    population_columns = [h for h in ROW_COLUMNS_POPULATION if h in header]
    if unknown or missing or len(population_columns) != 1:
        raise CliError(
            f"{path}:{header_line}: header must have columns {', '.join(ROW_COLUMNS_REQUIRED)}, "
            f"exactly one of {' / '.join(ROW_COLUMNS_POPULATION)}, optionally "
            f"{', '.join(ROW_COLUMNS_OPTIONAL)}; got {', '.join(header)}")
    rows = []
    for line_number, line in numbered[1:]:
        cells = [c.strip() for c in next(csv.reader([line]))]
        where = f"{path}:{line_number}"
        if len(cells) != len(header):
            raise CliError(f"{where}: expected {len(header)} columns, got {len(cells)}")
        record = dict(zip(header, cells))

        def value(column: str, parse, default=None):
            text = record.get(column, "")
            if text == "":
                if default is None:
                    raise CliError(f"{where}: column {column!r} is empty")
                return default
            try:
                return parse(text)
            except argparse.ArgumentTypeError as err:
                raise CliError(f"{where}: column {column!r}: {err}") from None

        cohort = value("target_cohort", parse_count)
        if population_columns[0] == "target_population":
            population = value("target_population", parse_count)
            check_cohort(cohort, population, "target_cohort", "target_population", where)
        else:
            population = _population_from_rate(
                cohort, value("target_sampling_rate", parse_number), where)
        rows.append(ExtrapolationRow(
            sigma_dp=value("sigma_dp", parse_positive), target_cohort=cohort,
            target_population=population, rounds=value("rounds", parse_count),
            delta=value("delta", parse_probability, default_delta),
            simulated_cohort=value("simulated_cohort", parse_count,
                                   default_simulated_cohort),
            label=record.get("label", "")))
    if not rows:
        raise CliError(f"--rows file {path!r} has a header but no rows")
    return rows


def _grid_rows(args: argparse.Namespace) -> list[ExtrapolationRow]:
    grid_given = [args.sigma_dp, args.target_cohort, args.target_population,
                  args.target_sampling_rate]
    if not any(g is not None for g in grid_given):
        return []
    if args.sigma_dp is None or args.target_cohort is None or (
            args.target_population is None and args.target_sampling_rate is None):
        raise CliError("extrapolate: a grid needs --sigma-dp, --target-cohort and "
                       "--target-population (or --target-sampling-rate)")
    rows = []
    for sigma in args.sigma_dp:
        for cohort in args.target_cohort:
            if args.target_population is not None:
                populations = args.target_population
                for population in populations:
                    check_cohort(cohort, population, "--target-cohort", "--target-population",
                                 "extrapolate")
            else:
                populations = [_population_from_rate(cohort, rate, "extrapolate")
                               for rate in args.target_sampling_rate]
            for population in populations:
                for rounds in args.rounds:
                    rows.append(ExtrapolationRow(sigma, cohort, population, rounds, args.delta,
                                                 args.simulated_cohort))
    return rows


def _run_extrapolate(args: argparse.Namespace) -> str:
    rows = []
    if args.rows:
        rows += read_rows(args.rows, args.delta, args.simulated_cohort)
    rows += _grid_rows(args)
    if not rows:
        raise CliError("extrapolate: give --rows FILE and/or a grid (--sigma-dp, "
                       "--target-cohort, --target-population)")
    if args.mechanism != "gaussian":
        return _run_correlated_extrapolate(args, rows)
    results = []
    for row in rows:
        try:
            results.append((row, accounting.extrapolate(
                row.sigma_dp, row.simulated_cohort, row.target_cohort, row.target_population,
                row.rounds, row.delta, accountants=_accountants(args.accountant))))
        except ValueError as err:
            label = f" ({row.label})" if row.label else ""
            raise CliError(f"extrapolate: row σ_DP={row.sigma_dp:g}, "
                           f"S'={row.target_cohort}, K'={row.target_population}, "
                           f"T={row.rounds}{label}: {err}") from None
    if args.json:
        return json.dumps({
            "sampling": "poisson",
            "neighboring_relation": accounting.NEIGHBORING_RELATIONS["poisson"],
            "rows": [{"label": row.label, **{
                k: _json_float(v) if isinstance(v, float) else v
                for k, v in dataclasses.asdict(e).items()},
                "simulated_noise_multiplier": e.simulated_noise_multiplier}
                for row, e in results]}, indent=2)
    with_label = any(row.label for row, _ in results)
    headers = (["setting"] if with_label else []) + [
        "σ_DP", "S'", "K'", "q' = S'/K'", "z' = S'·σ_DP", "T", "δ"]
    if "rdp" in _accountants(args.accountant):
        headers += ["ε RDP", "RDP order"]
    if "pld" in _accountants(args.accountant):
        headers += ["ε PLD"]
    table = []
    for row, e in results:
        cells = ([row.label] if with_label else []) + [
            f"{e.sigma_dp:g}", _fmt_int(e.target_cohort), _fmt_int(e.target_population),
            _fmt_sig(e.sampling_rate), _fmt_sig(e.noise_multiplier), _fmt_int(e.rounds),
            f"{e.delta:g}"]
        if "rdp" in _accountants(args.accountant):
            cells += [_fmt_eps(e.epsilon_rdp), _fmt_sig(e.rdp_order)]
        if "pld" in _accountants(args.accountant):
            cells += [_fmt_eps(e.epsilon_pld)]
        table.append(cells)
    simulated = sorted({e.simulated_cohort for _, e in results})
    notes = [
        ("sampling", EXTRAPOLATION_SAMPLING),
        ("extrapolation", "simulated with cohort S and per-mean noise σ_DP; privacy claimed "
                          "for cohort S' out of K' with the same σ_DP: z' = S'·σ_DP, "
                          "q' = S'/K' (arXiv 2310.00098)"),
        ("simulated S", ", ".join(_fmt_int(s) for s in simulated))]
    if args.markdown:
        text = "\n".join(f"- **{k}**: {v}" for k, v in [
            ("guarantee", _guarantee_description("poisson")), *notes])
        return text + "\n\n" + format_markdown(headers, table)
    return _settings_lines(notes) + "\n\n" + format_table(headers, table)


def _run_correlated_extrapolate(args: argparse.Namespace,
                                rows: Sequence[ExtrapolationRow]) -> str:
    """``extrapolate --mechanism blt|banded_toeplitz``: per row z' = S'·σ_DP, b = the flag
    or ⌊K'/S'⌋, ε of T rounds of the correlated mechanism for (T, b)."""
    accountants = _accountants(args.accountant)
    records = []
    for row in rows:
        label = f" ({row.label})" if row.label else ""
        where = (f"extrapolate: row σ_DP={row.sigma_dp:g}, S'={row.target_cohort}, "
                 f"K'={row.target_population}, T={row.rounds}{label}")
        mechanism = _correlated_mechanism(args, row.target_cohort, row.target_population,
                                          row.rounds, where)
        z = accounting.sigma_dp_to_noise_multiplier(row.sigma_dp, row.target_cohort)
        epsilons = {}
        for name in accountants:
            try:
                epsilons[name] = mechanism.epsilon(z, row.delta, accountant=name).epsilon
            except accounting.PldRefusedError:
                epsilons[name] = None
        records.append((row, mechanism, z, epsilons))
    if args.json:
        return json.dumps({
            "mechanism": args.mechanism, "participation": "cyclic",
            "neighboring_relation": accounting.ZERO_OUT_ONE_USER,
            "rows": [{"label": row.label, "sigma_dp": row.sigma_dp,
                      "simulated_cohort": row.simulated_cohort,
                      "target_cohort": row.target_cohort,
                      "target_population": row.target_population, "rounds": row.rounds,
                      "delta": row.delta, "noise_multiplier": z,
                      "min_separation": m.min_separation,
                      "max_participations": m.max_participations,
                      "sensitivity": m.sensitivity(),
                      **{f"epsilon_{name}": _json_float(eps) for name, eps in epsilons.items()}}
                     for row, m, z, epsilons in records]}, indent=2)
    with_label = any(row.label for row in rows)
    headers = (["setting"] if with_label else []) + [
        "σ_DP", "S'", "K'", "b", "k", "z' = S'·σ_DP", "sens", "T", "δ"] + [
        f"ε {name.upper()}" for name in accountants]
    table = [([row.label] if with_label else []) + [
        f"{row.sigma_dp:g}", _fmt_int(row.target_cohort), _fmt_int(row.target_population),
        _fmt_int(m.min_separation), _fmt_int(m.max_participations), _fmt_sig(z),
        _fmt_sig(m.sensitivity()), _fmt_int(row.rounds), f"{row.delta:g}"] + [
        _fmt_eps(epsilons[name]) for name in accountants] for row, m, z, epsilons in records]
    notes = [("guarantee", f"user-level (ε, δ)-DP, {accounting.ZERO_OUT_ONE_USER} "
                           "neighbouring datasets, all T rounds released"),
             ("mechanism", f"{args.mechanism} correlated noise (DP-FTRL), strategy optimized "
                           f"by jax_privacy for (T, b)"),
             ("participation", CORRELATED_PARTICIPATION + "; b = --min-separation or "
                                                          "⌊K'/S'⌋"),
             ("extrapolation", "simulated with cohort S and per-mean noise σ_DP; privacy "
                               "claimed for cohort S' out of K' with the same σ_DP: "
                               "z' = S'·σ_DP")]
    if args.markdown:
        return ("\n".join(f"- **{k}**: {v}" for k, v in notes) + "\n\n"
                + format_markdown(headers, table))
    width = max(len(k) for k, _ in notes)
    return ("\n".join(f"{k.ljust(width)} : {v}" for k, v in notes) + "\n\n"
            + format_table(headers, table))


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def _plain(text: str) -> str:
    """Help text without reStructuredText's double backticks (argparse prints them raw)."""
    return text.replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fl-dp-asr-privacy``."""
    parser = _Parser(prog=PROG, description=_plain(__doc__.split("\n\n")[0]),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    def mechanism_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--mechanism", choices=("gaussian", "blt", "banded_toeplitz"),
                       default="gaussian",
                       help="gaussian: independent noise, amplification by --sampling; blt / "
                            "banded_toeplitz: correlated noise (DP-FTRL) with min-separation "
                            "participation, no amplification (the strategy is optimized by "
                            "jax_privacy: 5-40 s). Default: %(default)s")
        p.add_argument("--min-separation", type=parse_count, metavar="B",
                       help="correlated noise: a user takes part at most once every B rounds "
                            "(cyclic groups; needs K >= B·S). Default: K // S")
        p.add_argument("--bands", type=parse_count,
                       help="banded_toeplitz: bands of C, <= B (default B; 1 = independent "
                            "noise every round)")
        p.add_argument("--max-buffers", type=parse_count, default=10,
                       help="blt: most buffers the optimizer tries (default: %(default)s)")

    def run_settings(p: argparse.ArgumentParser, accountant_default: str = "both") -> None:
        p.add_argument("--cohort", type=parse_count, required=True,
                       help="users per round S (expected, for Poisson sampling)")
        p.add_argument("--population", type=parse_count, required=True,
                       help="users K that can be sampled (6.95e6-style input accepted)")
        p.add_argument("--rounds", type=parse_count, required=True, help="rounds T")
        p.add_argument("--delta", type=parse_probability, default=PAPER_DELTA,
                       help="δ (default: %(default)g, the paper's)")
        p.add_argument("--sampling", choices=accounting.SAMPLING_SCHEMES, default=None,
                       help="Gaussian mechanism only. poisson: each user joins with "
                            "probability q = S/K (add-or-remove-one-user DP); fixed: S users "
                            "without replacement (replace-one-user DP, RDP only). "
                            "Default: poisson")
        mechanism_flags(p)
        p.add_argument("--accountant", choices=("rdp", "pld", "both"),
                       default=accountant_default, help="default: %(default)s")
        p.add_argument("--json", action="store_true", help="print JSON")

    p_eps = sub.add_parser("epsilon", help="ε of a run",
                           description="User-level ε after T rounds.")
    noise = p_eps.add_mutually_exclusive_group(required=True)
    noise.add_argument("--noise-multiplier", type=parse_positive,
                       help="z: noise std on the SUM of clipped deltas / C")
    noise.add_argument("--sigma-dp", type=parse_positive,
                       help="σ_DP: noise std on the cohort MEAN / C (z = S·σ_DP)")
    p_eps.add_argument("--clipped-count-stddev", type=parse_positive, metavar="SIGMA_B",
                       help="adaptive clipping: noise std σ_b on the clipped counts; prints "
                            "z_Δ and z_b next to the overall z (ε is that of z)")
    p_eps.add_argument("--clip-bounds", type=parse_count, metavar="H",
                       help="adaptive clipping: number of adapted bounds (1 = global; per "
                            "layer: the number of layers); default 1; needs "
                            "--clipped-count-stddev")
    run_settings(p_eps)
    p_eps.set_defaults(run=_run_epsilon)

    p_cal = sub.add_parser("calibrate", help="smallest noise for a target ε",
                           description="Smallest z (and σ_DP = z/S) with ε(z) ≤ target "
                                       "(tolerance 1e-3 on z).")
    p_cal.add_argument("--target-epsilon", type=parse_positive, required=True)
    run_settings(p_cal)
    p_cal.set_defaults(run=_run_calibrate)

    p_ext = sub.add_parser(
        "extrapolate", help="the paper's population extrapolation",
        description="Keep σ_DP of a simulated run (cohort S), report the privacy of cohort "
                    "S' out of K' (z' = S'·σ_DP, q' = S'/K', Poisson sampling). Rows come "
                    "from --rows FILE and/or from every combination of the grid flags.")
    p_ext.add_argument("--rows", metavar="FILE",
                       help="CSV with columns sigma_dp, target_cohort, rounds, "
                            "target_population (or target_sampling_rate); optional label, "
                            "delta, simulated_cohort; '#' lines are comments")
    p_ext.add_argument("--sigma-dp", type=parse_positive, nargs="+", help="σ_DP grid")
    p_ext.add_argument("--target-cohort", type=parse_count, nargs="+", help="S' grid")
    population = p_ext.add_mutually_exclusive_group()
    population.add_argument("--target-population", type=parse_count, nargs="+",
                            help="K' grid")
    population.add_argument("--target-sampling-rate", type=parse_number, nargs="+",
                            help="q' grid instead of K' (K' = round(S'/q'))")
    p_ext.add_argument("--rounds", type=parse_count, nargs="+", default=[PAPER_ROUNDS],
                       help="T grid (default: %(default)s)")
    p_ext.add_argument("--delta", type=parse_probability, default=PAPER_DELTA,
                       help="δ (default: %(default)g)")
    p_ext.add_argument("--simulated-cohort", type=parse_count,
                       default=PAPER_SIMULATED_COHORT, help="S (default: %(default)s)")
    p_ext.add_argument("--accountant", choices=("rdp", "pld", "both"), default="both",
                       help="PLD takes up to a few seconds per row at T=2000 "
                            "(default: %(default)s)")
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
