"""Limits of numeric options, checked before any work: one rule for the command line and the options classes.

A limit is ``(low, high, kind)``: ``kind`` ``">="`` allows ``low``, ``">"`` excludes it; ``None`` leaves a side
open. Every number must also be finite. :func:`check_fields` checks an options object's fields (``EngineOptions``,
``TomoOptions``, ``EdgeOptions``); :mod:`edgeray.cli.limits` checks the command line's flags with the same rule.
"""

from __future__ import annotations

import math

Limit = tuple[float | None, float | None, str]


def problem(value, low: float | None, high: float | None, kind: str = ">=", integer: bool = False) -> str | None:
    """What is wrong with ``value`` against the limit (``must be >= 1``, ...), or None when it is within."""
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        return "must be an integer" if integer else "must be a number"
    if not math.isfinite(value):
        return "must be a finite number"
    if low is not None and (value < low if kind == ">=" else value <= low):
        return f"must be {kind} {low:g}" + (f" and <= {high:g}" if high is not None else "")
    if high is not None and value > high:
        return f"must be <= {high:g}"
    return None


def check_fields(options, limits: dict[str, Limit], integers: tuple[str, ...] = (), flags: bool = False) -> None:
    """Raise ValueError naming the first field of ``options`` outside its limit (``None`` values are not checked);
    ``integers``: fields that must be whole numbers; ``flags``: name the command-line flag too (``--max-batch``)."""
    for name, (low, high, kind) in limits.items():
        value = getattr(options, name)
        if value is None:
            continue
        found = problem(value, low, high, kind, name in integers)
        if found is not None:
            flag = f" (--{name.replace('_', '-')})" if flags else ""
            raise ValueError(f"{type(options).__name__}.{name}{flag} {found}, not {value!r}")
