"""The privacy calculator's output: aligned text and markdown tables, numbers as printed,
the settings block above each table (:mod:`fl_dp_asr.cli.privacy`)."""

import math
from collections.abc import Iterable, Sequence

from fl_dp_asr.dp import accounting


def fmt_int(value: int) -> str:
    return f"{value:,}"


def fmt_sig(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}"


def fmt_eps(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}"


def json_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Aligned plain-text table: first column left-aligned, the others right-aligned."""
    rows = [list(map(str, row)) for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_markdown(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """GitHub-flavoured markdown table, numbers right-aligned."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def guarantee_description(sampling: str) -> str:
    return (
        f"user-level (ε, δ)-DP, {accounting.NEIGHBORING_RELATIONS[sampling]} "
        "neighbouring datasets, all T rounds released"
    )


def settings_lines(items: Sequence[tuple[str, str]], sampling: str = "poisson") -> str:
    pairs = [("guarantee", guarantee_description(sampling))] + list(items)
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)} : {v}" for k, v in pairs)


def pld_footnotes(lines: Sequence[str]) -> str:
    return "".join(f"\n\nPLD: {line}" for line in lines)
