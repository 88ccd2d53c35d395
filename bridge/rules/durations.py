"""Prometheus durations (``90s``, ``30m``, ``1h30m``, ``1d``): reading and printing them."""

from __future__ import annotations

import math
import re

_DAY_MS = 24 * 60 * 60 * 1000
_UNITS_MS = (
    ("y", 365 * _DAY_MS),
    ("w", 7 * _DAY_MS),
    ("d", _DAY_MS),
    ("h", 60 * 60 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
)
#: Prometheus' own pattern (model.ParseDuration): units largest first, each at most once, each
#: count a group. It also matches "", which is not a duration.
UNITS_PATTERN = "".join(f"(?:([0-9]+){unit})?" for unit, _ in _UNITS_MS)
_DURATION_RE = re.compile(UNITS_PATTERN)
# Prometheus rejects what does not fit Go's time.Duration (int64 nanoseconds, about 292 years).
_MAX_DURATION_MS = (2**63 - 1) // 1_000_000


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as ``90s``, ``30m``, ``1h30m``, ``1d`` or ``0``.

    Raises ValueError with a message fit for the user.
    """
    if text == "0":
        return 0.0
    match = _DURATION_RE.fullmatch(text) if isinstance(text, str) and text else None
    if match is None:
        raise _invalid(text)
    total_ms = 0
    for digits, (_, unit_ms) in zip(match.groups(), _UNITS_MS, strict=True):
        if digits is None:
            continue
        if len(digits) > 20:  # far beyond the limit below; also keeps int() off huge strings
            raise _invalid(text)
        total_ms += int(digits) * unit_ms
    if total_ms > _MAX_DURATION_MS:
        raise _invalid(text)
    return total_ms / 1000


def _invalid(text: object) -> ValueError:
    return ValueError(
        f"invalid duration '{text}' (expected a Prometheus duration such as 90s, 30m, 1h, 1d)"
    )


def format_duration(seconds: float) -> str:
    """Display form of a duration as Prometheus prints it: 3600 -> "1h", 5400 -> "1h30m", 0 -> "0s".

    Rounds to milliseconds. Years and weeks are used only when exact (90d stays "90d", not
    "12w6d"), so ``parse_duration(format_duration(x)) == x`` for whole non-negative milliseconds.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"cannot format duration {seconds}")
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    parts = []
    for name, unit_ms in _UNITS_MS:
        if name in ("y", "w") and ms % unit_ms:
            continue
        count, ms = divmod(ms, unit_ms)
        if count:
            parts.append(f"{count}{name}")
    return sign + "".join(parts)
