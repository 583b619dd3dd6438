"""The privacy calculator's inputs: numbers as typed on the command line (``6.95e6``), the
checks between them, and the extrapolation rows of ``--rows FILE`` (CSV) and the grid flags
(:mod:`fl_dp_asr.cli.privacy`). A bad input raises :class:`CliError` naming the flag or the
file, line and column."""

import argparse
import csv
import dataclasses
import decimal
import math
from typing import cast

from fl_dp_asr.dp import accounting

ROW_COLUMNS_REQUIRED = ("sigma_dp", "target_cohort", "rounds")
ROW_COLUMNS_POPULATION = ("target_population", "target_sampling_rate")
ROW_COLUMNS_OPTIONAL = ("label", "delta", "simulated_cohort")


class CliError(Exception):
    """A bad input; ``main`` prints it as one line on stderr and exits with status 2."""


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
            f"expected an integer (e.g. 1024 or 6.95e6), got {text!r} which is not integral"
        )
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


def check_cohort(
    cohort: int, population: int, cohort_name: str, population_name: str, where: str
) -> None:
    """CliError naming both inputs (flags or columns) when the cohort exceeds the population."""
    if cohort > population:
        raise CliError(
            f"{where}: {cohort_name} ({cohort:,}) must not exceed {population_name} "
            f"({population:,}): a cohort is drawn from the population"
        )


def accountants(choice: str) -> tuple[accounting.AccountantName, ...]:
    """The accountants of ``--accountant`` (``both``: RDP and PLD)."""
    if choice == "both":
        return accounting.ACCOUNTANTS
    return (cast(accounting.AccountantName, choice),)


def check_accountant_choice(sampling: str, choice: str) -> None:
    """CliError when ``--accountant`` cannot analyse ``--sampling``."""
    if choice != "both" and not accounting.supports(sampling, choice):
        raise CliError(
            "--accountant pld does not support --sampling fixed (no PLD "
            "analysis of fixed-size cohorts without replacement); use --accountant "
            "rdp with --sampling fixed, or --sampling poisson with --accountant "
            "pld/rdp/both"
        )


# --------------------------------------------------------------------------------------
# Extrapolation rows (--rows FILE and the grid flags)
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


def population_from_rate(cohort: int, rate: float, where: str) -> int:
    if not 0 < rate <= 1:
        raise CliError(f"{where}: target sampling rate must be in (0, 1], got {rate:g}")
    return round(cohort / rate)


def read_rows(
    path: str, default_delta: float, default_simulated_cohort: int
) -> list[ExtrapolationRow]:
    """Reads an extrapolation CSV: ``#`` lines are comments, the first other line the header.

    Columns: ``sigma_dp``, ``target_cohort``, ``rounds`` and one of ``target_population``
    / ``target_sampling_rate`` (then K' = round(S'/q')); optional ``label``, ``delta``,
    ``simulated_cohort`` (defaults from the command line).
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            numbered = [
                (n, line)
                for n, line in enumerate(f, 1)
                if line.strip() and not line.lstrip().startswith("#")
            ]
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
            f"{', '.join(ROW_COLUMNS_OPTIONAL)}; got {', '.join(header)}"
        )
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
            population = population_from_rate(
                cohort, value("target_sampling_rate", parse_number), where
            )
        rows.append(
            ExtrapolationRow(
                sigma_dp=value("sigma_dp", parse_positive),
                target_cohort=cohort,
                target_population=population,
                rounds=value("rounds", parse_count),
                delta=value("delta", parse_probability, default_delta),
                simulated_cohort=value("simulated_cohort", parse_count, default_simulated_cohort),
                label=record.get("label", ""),
            )
        )
    if not rows:
        raise CliError(f"--rows file {path!r} has a header but no rows")
    return rows


def grid_rows(args: argparse.Namespace) -> list[ExtrapolationRow]:
    grid_given = [
        args.sigma_dp,
        args.target_cohort,
        args.target_population,
        args.target_sampling_rate,
    ]
    if not any(g is not None for g in grid_given):
        return []
    if (
        args.sigma_dp is None
        or args.target_cohort is None
        or (args.target_population is None and args.target_sampling_rate is None)
    ):
        raise CliError(
            "extrapolate: a grid needs --sigma-dp, --target-cohort and "
            "--target-population (or --target-sampling-rate)"
        )
    rows = []
    for sigma in args.sigma_dp:
        for cohort in args.target_cohort:
            if args.target_population is not None:
                populations = args.target_population
                for population in populations:
                    check_cohort(
                        cohort, population, "--target-cohort", "--target-population", "extrapolate"
                    )
            else:
                populations = [
                    population_from_rate(cohort, rate, "extrapolate")
                    for rate in args.target_sampling_rate
                ]
            for population in populations:
                for rounds in args.rounds:
                    rows.append(
                        ExtrapolationRow(
                            sigma, cohort, population, rounds, args.delta, args.simulated_cohort
                        )
                    )
    return rows
