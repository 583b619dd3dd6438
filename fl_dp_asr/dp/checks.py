"""Validation of the numbers DP settings are made of; errors name the setting and the value."""

from __future__ import annotations

import math
import numbers
from typing import cast


def check_integer(name: str, value: object, minimum: int = 1) -> int:
    """Returns ``value`` as an int ≥ ``minimum``; integral floats such as ``6.95e6`` pass."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = cast(float, value)  # a numbers.Real: int() and comparisons work on it
    if not isinstance(value, numbers.Integral) and not (
        math.isfinite(value) and float(value).is_integer()
    ):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_positive(
    name: str, value: object, allow_zero: bool = False, allow_inf: bool = False
) -> float:
    """Returns ``value`` as a float after checking it is > 0 (or ≥ 0) and not NaN.

    Args:
        name: the setting's name, for the error message (e.g. ``"dp.clip_norm"``).
        value: a real number.
        allow_zero: accept 0.
        allow_inf: accept +∞ (e.g. a clip bound meaning "no clipping").

    Raises:
        ValueError: not a real number, NaN, ∞ (unless allowed) or too small.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = cast(float, value)  # a numbers.Real: comparisons work on it
    in_range = value >= 0 if allow_zero else value > 0
    if not (in_range and (math.isfinite(value) or (allow_inf and value == math.inf))):
        bound = ">= 0" if allow_zero else "> 0"
        qualifier = "not NaN" if allow_inf else "finite"
        raise ValueError(f"{name} must be {qualifier} and {bound}, got {value!r}")
    return float(value)


def check_delta(delta: object) -> float:
    """Returns δ as a float after checking 0 < δ < 1."""
    if (
        isinstance(delta, bool)
        or not isinstance(delta, numbers.Real)
        or not 0 < cast(float, delta) < 1
    ):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)
