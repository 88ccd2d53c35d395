"""The kinds of value a rules file holds: durations, counts, flags, matchers, days, times...

Each kind knows three things about one sort of value, so that they cannot drift apart: how to
read it from YAML (reporting every problem with its line and a hint), how to check it when code
builds a value directly, and how to describe it in JSON Schema. ``sections`` puts them in
fields and mappings; ``schema`` is the table made of them.
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.errors import RuleProblem
from bridge.rules.durations import UNITS_PATTERN, format_duration, parse_duration
from bridge.rules.matchers import (
    LABEL_NAME,
    LABEL_NAME_RE,
    MATCHER_NAME,
    OPERATOR,
    Matcher,
    parse_matcher,
    quote,
)
from bridge.rules.templates import compile_template
from bridge.rules.yaml_lines import LineDict, LineList


class _Invalid:
    """What a kind reads from a value it found wrong (the problem is already reported)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


#: The default of a field that has none: the file must say it (or it is a required key).
NO_DEFAULT: Any = _NoDefault()


def describe(value: Any) -> str:
    """A short description of a wrong value for an error message."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return f"'{value}'" if len(value) <= 60 else f"'{value[:57]}...'"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} value"


@dataclass(frozen=True)
class At:
    """Where the problems found while reading one mapping go, and whose they are."""

    path: str  # the file, as the user named it
    problems: list[RuleProblem]
    #: Names defined so far, per section ("rule", "budget"): name -> line of its 'name' key.
    names: dict[str, dict[str, int]]
    rule: str | None = None
    prefix: str = ""

    def problem(self, line: int | None, message: str) -> None:
        self.problems.append(RuleProblem(self.path, line, self.rule, self.prefix + message))

    def define(self, section: str, name: str, line: int) -> None:
        """Note that ``name`` (of a ``section``: "rule", "budget") is defined on ``line``; a
        second definition is a problem."""
        defined = self.names.setdefault(section, {})
        if name in defined:
            first = defined[name]
            self.problem(
                line, f"duplicate {section} name '{name}' (first defined on line {first})"
            )
        else:
            defined[name] = line


class Kind:
    """One sort of value. A kind whose file form is its built form only needs check and json."""

    def read(self, value: Any, line: int, name: str, at: At) -> Any:
        """The value for the file's ``value`` (``name`` as messages call it), or INVALID."""
        try:
            return self.check(value, name)
        except ValueError as exc:
            at.problem(line, str(exc))
            return INVALID

    def check(self, value: Any, name: str) -> Any:
        """``value`` as built in code, normalised; ValueError saying what is wrong with it."""
        raise NotImplementedError

    def json(self) -> dict[str, Any]:
        """The JSON Schema of the value as the file writes it."""
        raise NotImplementedError

    def to_yaml(self, value: Any) -> Any:
        """``value`` as a file would write it (for JSON Schema defaults)."""
        return value


def _is_seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# Durations for JSON Schema: "0", or the units pattern matching something (it also matches "").
_DURATION_PATTERN = rf"^(?:0|(?=[0-9]){UNITS_PATTERN})$"
# A non-zero digit anywhere makes a duration positive: every part counts up.
_POSITIVE_DURATION_PATTERN = rf"^(?=[^1-9]*[1-9]){UNITS_PATTERN}$"


@dataclass(frozen=True)
class Duration(Kind):
    """A Prometheus duration (``30m``) in the file; seconds (a float) once read."""

    positive: bool = False  # more than 0; otherwise 0 or more

    def read(self, value: Any, line: int, name: str, at: At) -> Any:
        try:
            if type(value) in (int, float) and value == 0:
                seconds = 0.0  # "cooldown: 0" is clear although YAML makes it a number
            elif isinstance(value, str):
                seconds = parse_duration(value)
            else:
                raise ValueError(f"'{name}' must be a string such as 30m, got {describe(value)}")
            self._in_range(seconds, value, name)
        except ValueError as exc:
            at.problem(line, str(exc))
            return INVALID
        return seconds

    def check(self, value: Any, name: str) -> float:
        if not _is_seconds(value):
            raise ValueError(f"'{name}' must be a number of seconds, got {describe(value)}")
        self._in_range(value, value, name)
        return float(value)

    def _in_range(self, seconds: float, shown: Any, name: str) -> None:
        if self.positive and seconds <= 0:
            raise ValueError(f"'{name}' must be greater than 0, got {describe(shown)}")
        if seconds < 0:
            raise ValueError(f"'{name}' must not be negative, got {describe(shown)}")

    def json(self) -> dict[str, Any]:
        if self.positive:
            return {"type": "string", "pattern": _POSITIVE_DURATION_PATTERN}
        return {"anyOf": [{"type": "string", "pattern": _DURATION_PATTERN}, {"const": 0}]}

    def to_yaml(self, value: Any) -> Any:
        return format_duration(value)


class Count(Kind):
    """A whole number of at least 1 (YAML's true and false are not numbers here).

    3.0 is 3, as JSON Schema's integer has it: the editor and the loader agree.
    """

    def check(self, value: Any, name: str) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        raise ValueError(f"'{name}' must be a whole number ≥ 1, got {describe(value)}")

    def json(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": 1}


class Flag(Kind):
    def check(self, value: Any, name: str) -> bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"'{name}' must be true or false, got {describe(value)}")

    def json(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Choice(Kind):
    """One of a few words; ``noun`` names an unknown one ("unknown operation 'rebot'")."""

    values: tuple[str, ...]
    noun: str = ""

    def check(self, value: Any, name: str) -> str:
        if isinstance(value, str) and value in self.values:
            return value
        expected = ", ".join(self.values)
        if not isinstance(value, str):
            raise ValueError(f"'{name}' must be one of: {expected}, got {describe(value)}")
        what = f"{self.noun} '{value}'" if self.noun else f"value '{value}' in {name}"
        raise ValueError(f"unknown {what} (expected one of: {expected})")

    def json(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}


class Name(Kind):
    """A name people read in answers and the audit: any text but blank."""

    def check(self, value: Any, name: str) -> str:
        if isinstance(value, str) and value.strip():
            return value
        raise ValueError(f"'{name}' must be a non-empty string, got {describe(value)}")

    def json(self) -> dict[str, Any]:
        return {"type": "string", "pattern": r"\S"}


class LabelName(Kind):
    def check(self, value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise ValueError(f"'{name}' must be a label name such as site, got {describe(value)}")
        if not LABEL_NAME_RE.fullmatch(value):
            raise ValueError(
                f"invalid label name '{value}' in '{name}' "
                "(expected letters, digits and _, not starting with a digit)"
            )
        return value

    def json(self) -> dict[str, Any]:
        return {"type": "string", "pattern": f"^{LABEL_NAME}$"}


class Template(Kind):
    """A Jinja2 template source; it must compile in the sandbox."""

    def check(self, value: Any, name: str) -> str:
        if not isinstance(value, str) or not value.strip():
            hint = ""
            if isinstance(value, dict):  # YAML reads an unquoted {{ x }} as a mapping
                hint = f' (quote templates in YAML: {name}: "{{{{ labels.device }}}}")'
            raise ValueError(
                f"'{name}' must be a non-empty template string, got {describe(value)}{hint}"
            )
        compile_template(value)
        return value

    def json(self) -> dict[str, Any]:
        return {"type": "string", "pattern": r"\S"}


class Matchers(Kind):
    """A list of Alertmanager matchers in the file; a tuple of Matcher once read."""

    def read(self, value: Any, line: int, name: str, at: At) -> Any:
        if not isinstance(value, LineList):
            at.problem(
                line,
                f"'{name}' must be a list of matchers such as "
                f'- alertname = "DeviceUnreachable", got {describe(value)}',
            )
            return INVALID
        if not value:
            at.problem(line, f"'{name}' must not be empty: the rule would match every alert")
            return INVALID
        matchers = [self._one(entry, entry_line, at) for entry, entry_line in value.numbered()]
        return INVALID if any(m is INVALID for m in matchers) else tuple(matchers)

    @staticmethod
    def _one(entry: Any, line: int, at: At) -> Any:
        if not isinstance(entry, str):
            hint = ""
            if isinstance(entry, LineDict) and len(entry) == 1:
                # "- alertname: X" is the usual slip; show the matcher it was meant to be.
                ((key, val),) = entry.items()
                hint = f" (write it as: {key} = {quote('' if val is None else str(val))})"
            at.problem(
                line,
                'each matcher must be a string such as alertname = "DeviceUnreachable", '
                f"got {describe(entry)}{hint}",
            )
            return INVALID
        try:
            return parse_matcher(entry)
        except ValueError as exc:
            at.problem(line, str(exc))
            return INVALID

    def check(self, value: Any, name: str) -> tuple[Matcher, ...]:
        # Code may build a rule without matchers (it matches every alert); a file may not.
        matchers = tuple(value)
        if not all(isinstance(m, Matcher) for m in matchers):
            raise ValueError(f"'{name}' must hold Matcher values, got {matchers!r}")
        return matchers

    def json(self) -> dict[str, Any]:
        # The name and operator only: values and regexes are the loader's to judge.
        quoted = r'"(?:[^"\\]|\\[\s\S])+"'
        head = rf"^\s*(?:{MATCHER_NAME}|{quoted})\s*(?:{OPERATOR})"
        return {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": head}}


# ---------------------------------------------------------------------------------------------
# Maintenance windows: days, clock times and time zones

#: Day names of maintenance windows; the index is datetime.weekday() (0 = Monday).
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EVERY_DAY = frozenset(range(7))


def parse_days(term: str) -> set[int]:
    """Weekday numbers in "daily", "mon" or a range such as "mon-fri" or "fri-mon" (wrapping).

    Raises ValueError with a message fit for the user.
    """
    text = term.strip()
    if text.lower() == "daily":
        return set(range(7))
    parts = [part.strip() for part in text.split("-")]
    if len(parts) > 2 or (len(parts) == 2 and not all(parts)):
        raise ValueError(
            f"invalid day range '{text}' in window.days (expected two days such as mon-fri)"
        )
    numbers = []
    for part in parts:
        if part.lower() not in DAYS:
            raise ValueError(f"unknown day '{part}' in window.days (expected {', '.join(DAYS)})")
        numbers.append(DAYS.index(part.lower()))
    first, last = numbers[0], numbers[-1]
    if first <= last:
        return set(range(first, last + 1))
    return set(range(first, 7)) | set(range(0, last + 1))


def _any_case(word: str) -> str:
    """A JSON Schema pattern for ``word`` in any case (JSON Schema patterns take no flags)."""
    return "".join(f"[{c.upper()}{c}]" for c in word)


_DAY = "(?:" + "|".join(_any_case(day) for day in DAYS) + ")"
_DAY_TERM = rf"\s*(?:{_any_case('daily')}|{_DAY}(?:\s*-\s*{_DAY})?)\s*"


class Days(Kind):
    """Days in the file ("mon-fri", [sat, sun], "daily"); a frozenset of weekdays once read."""

    def read(self, value: Any, line: int, name: str, at: At) -> Any:
        terms: list[tuple[Any, int]]
        if isinstance(value, str):
            terms = [(term, line) for term in value.split(",")] if value.strip() else []
        elif isinstance(value, LineList):
            terms = list(value.numbered())
        else:
            at.problem(
                line,
                f"'{name}' must be a list of days such as [mon, tue] or a range such as "
                f"mon-fri, got {describe(value)}",
            )
            return INVALID
        if not terms:
            at.problem(line, self._empty(name))
            return INVALID
        days: set[int] = set()
        ok = True
        for term, term_line in terms:
            try:
                if not isinstance(term, str):
                    raise ValueError(
                        f"each day in {name} must be a name such as mon, got {describe(term)}"
                    )
                days |= parse_days(term)
            except ValueError as exc:
                at.problem(term_line, str(exc))
                ok = False
        return frozenset(days) if ok else INVALID

    @staticmethod
    def _empty(name: str) -> str:
        return f"'{name}' must not be empty: the window would never open"

    def check(self, value: Any, name: str) -> frozenset[int]:
        days = frozenset(value)
        if not days:
            raise ValueError(self._empty(name))
        if not days <= _EVERY_DAY or not all(type(d) is int for d in days):
            raise ValueError(f"'{name}' must be 0 (Monday) to 6 (Sunday), got {sorted(days)}")
        return days

    def json(self) -> dict[str, Any]:
        listed = {"type": "string", "pattern": f"^{_DAY_TERM}(?:,{_DAY_TERM})*$"}
        one = {"type": "string", "pattern": f"^{_DAY_TERM}$"}
        return {"anyOf": [listed, {"type": "array", "minItems": 1, "items": one}]}

    def to_yaml(self, value: Any) -> Any:
        return "daily" if value == _EVERY_DAY else [DAYS[d] for d in sorted(value)]


_CLOCK = r"([01][0-9]|2[0-3]):([0-5][0-9])"
_CLOCK_RE = re.compile(_CLOCK)


class Clock(Kind):
    """A time of day, "HH:MM" (24-hour) in the file; a naive datetime.time once read."""

    def read(self, value: Any, line: int, name: str, at: At) -> Any:
        key = name.rpartition(".")[2]
        if not isinstance(value, str):
            # YAML 1.1 reads an unquoted 22:00 (or 5:00) as the number 1320 (300): base 60.
            # Only a leading zero keeps it text, so 05:00 works unquoted and 22:00 does not.
            if isinstance(value, int) and not isinstance(value, bool) and 60 <= value < 1440:
                shown = f"{value // 60:02d}:{value % 60:02d}"
                why = f": YAML reads an unquoted {value // 60}:{value % 60:02d} as a number"
            else:
                shown, why = "22:00", ""
            at.problem(
                line,
                f"'{name}' must be a string such as \"22:00\", got {describe(value)}{why}"
                f' (quote times: {key}: "{shown}")',
            )
            return INVALID
        match = _CLOCK_RE.fullmatch(value)
        if match is None:
            at.problem(line, f"invalid time '{value}' in {name} (expected HH:MM)")
            return INVALID
        return datetime.time(int(match.group(1)), int(match.group(2)))

    def check(self, value: Any, name: str) -> datetime.time:
        if not isinstance(value, datetime.time) or value.tzinfo is not None:
            raise ValueError(f"'{name}' must be a naive datetime.time, got {value!r}")
        return value

    def json(self) -> dict[str, Any]:
        return {"type": "string", "pattern": f"^{_CLOCK}$"}

    def to_yaml(self, value: Any) -> Any:
        return value.strftime("%H:%M")


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError "unknown time zone '...'" when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: keys such as "/etc/x", "../x" or files that are not zone files.
        raise ValueError(f"unknown time zone '{name}'") from None


class TimeZone(Kind):
    def check(self, value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise ValueError(
                f"'{name}' must be a time zone name such as Europe/Madrid, got {describe(value)}"
            )
        time_zone(value)
        return value

    def json(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "examples": ["Europe/Madrid", "UTC"]}
