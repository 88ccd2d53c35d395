"""Load rules.yaml into immutable rules that map alerts to device operations.

Every problem in the file is reported at once, with its line, so an operator fixes them in one pass.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from yaml.constructor import ConstructorError

from bridge.errors import BridgeError, RuleProblem, RulesError

OPERATIONS = ("sync", "reconf", "reboot", "device_factory", "factory")
DESTRUCTIVE = frozenset({"factory", "device_factory"})
#: How much harm each operation can do. Destructive operations need allow_destructive: true
#: and, unless the rule says require_approval: false, a person's approval.
RISK: Mapping[str, str] = MappingProxyType(
    {
        "sync": "routine",
        "reconf": "routine",
        "reboot": "disruptive",
        "device_factory": "destructive",
        "factory": "destructive",
    }
)
RISKS = ("routine", "disruptive", "destructive")
STATUSES = ("firing", "resolved", "any")
MATCH_OPS = ("=", "!=", "=~", "!~")
#: Day names of maintenance windows; the index is datetime.weekday() (0 = Monday).
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: What happens to an operation asked for outside its rule's window.
OUTSIDE = ("hold", "skip")

DEFAULT_COOLDOWN = "30m"
DEFAULT_APPROVAL_TIMEOUT = "1h"
#: Longest device name a template may produce; anything longer is a runaway template, not a device.
MAX_DEVICE_LENGTH = 1024

_TOP_KEYS = ("defaults", "rules", "budgets", "breaker")
_DEFAULTS_KEYS = ("cooldown", "give_up", "min_age", "window", "approval_timeout")
_RULE_KEYS = (
    "name", "match", "device", "operation", "cooldown", "status", "allow_destructive",
    "require_approval", "dry_run", "min_age", "give_up", "window",
)  # fmt: skip
_REQUIRED_RULE_KEYS = ("name", "match", "device", "operation")
_GIVE_UP_KEYS = ("after", "within")
_WINDOW_KEYS = ("days", "start", "end", "timezone", "outside")
_REQUIRED_WINDOW_KEYS = ("start", "end", "timezone")
_BUDGET_KEYS = ("name", "max", "per", "operation", "group_by")
_REQUIRED_BUDGET_KEYS = ("name", "max", "per")
_BREAKER_KEYS = ("max", "per")


class TemplateRenderError(BridgeError):
    """A rule's device template failed to render for an alert."""

    def __init__(self, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        #: Name of the rule whose template failed, when known.
        self.rule = rule


# ---------------------------------------------------------------------------------------------
# Durations

# Prometheus' own pattern (model.ParseDuration): units largest first, each at most once.
_DURATION_RE = re.compile(
    r"(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?"
)
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
# Prometheus rejects what does not fit Go's time.Duration (int64 nanoseconds, about 292 years).
_MAX_DURATION_MS = (2**63 - 1) // 1_000_000


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as ``90s``, ``30m``, ``1h30m``, ``1d`` or ``0``.

    Raises ValueError with a message fit for the user.
    """
    error = ValueError(
        f"invalid duration '{text}' (expected a Prometheus duration such as 90s, 30m, 1h, 1d)"
    )
    if not isinstance(text, str):
        raise error
    if text == "0":
        return 0.0
    match = _DURATION_RE.fullmatch(text) if text else None
    if match is None:
        raise error
    total_ms = 0
    for digits, (_, unit_ms) in zip(match.groups(), _UNITS_MS, strict=True):
        if digits is None:
            continue
        if len(digits) > 20:  # far beyond the limit below; also keeps int() off huge strings
            raise error
        total_ms += int(digits) * unit_ms
    if total_ms > _MAX_DURATION_MS:
        raise error
    return total_ms / 1000


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


# ---------------------------------------------------------------------------------------------
# Matchers

# Prometheus label names: what group_by may name (it ends up in JSON paths of queries).
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Unquoted names in matchers, as Alertmanager's pkg/labels parser reads them: colons allowed.
_MATCHER_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# Longest operators first so "=~" is not read as "=" followed by a value starting with "~".
_OP_RE = re.compile(r"\s*(=~|!=|!~|=)\s*")


class _BadRegex(ValueError):
    pass


def _compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile an Alertmanager regex; callers use fullmatch, which anchors it like ``^(?:...)$``.

    Alertmanager uses Go's RE2. Python's ``re`` agrees on the syntax people write in matchers
    (classes, alternation, repetition, (?i)); it also accepts lookarounds and backreferences that
    RE2 would reject, and lacks \\p{...} and \\Q...\\E. Using fullmatch instead of wrapping the
    pattern keeps a leading "(?i)" legal, which Python only allows at the very start.
    """
    with warnings.catch_warnings():
        # Python warns (FutureWarning) on "[[" and similar; RE2 reads "[[:alpha:]]" as a POSIX
        # class while Python reads it as a plain set, so reject instead of silently differing.
        warnings.simplefilter("error")
        try:
            return re.compile(pattern)
        except (re.error, Warning, OverflowError, RecursionError, ValueError) as exc:
            raise _BadRegex(str(exc)) from exc


def _quote(value: str) -> str:
    """Double-quote a string the way Alertmanager prints matcher values."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the double-quoted string at ``text[start]``; return its value and the index after it.

    Escapes follow Alertmanager's matcher parser: \\" \\\\ and \\n are decoded and any other
    backslash is kept as is, so regexes such as "\\d+" need no doubled backslashes.
    """
    out = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"n": "\n", '"': '"', "\\": "\\"}.get(nxt, "\\" + nxt))
            i += 2
            continue
        if char == '"':
            return "".join(out), i + 1
        out.append(char)
        i += 1
    raise ValueError("missing closing double quote")


@dataclass(frozen=True)
class Matcher:
    """One Alertmanager label matcher, e.g. ``severity=~"critical|page"``."""

    name: str
    op: str
    value: str
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op not in MATCH_OPS:
            raise ValueError(
                f"unknown matcher operator '{self.op}' (expected one of: =, !=, =~, !~)"
            )
        if self.op in ("=~", "!~"):
            object.__setattr__(self, "_regex", _compile_regex(self.value))

    def matches(self, labels: Mapping[str, str]) -> bool:
        # As in Alertmanager, a missing label and an empty one are the same thing.
        value = labels.get(self.name)
        if value is None:
            value = ""
        elif not isinstance(value, str):
            value = str(value)
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        assert self._regex is not None
        hit = self._regex.fullmatch(value) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        name = self.name if _MATCHER_NAME_RE.fullmatch(self.name) else _quote(self.name)
        return f"{name}{self.op}{_quote(self.value)}"


def parse_matcher(text: str) -> Matcher:
    """Parse ``name OP value`` (OP one of =, !=, =~, !~) as Alertmanager does.

    Follows Alertmanager's classic matcher parser, ``ParseMatcher`` in its ``pkg/labels``
    package (what its configuration and amtool used before the UTF-8 parser, and still use in
    classic mode): an unquoted name is ``[a-zA-Z_:][a-zA-Z0-9_:]*``, so ``foo:bar="x"`` is one
    matcher. From the UTF-8 parser (``matcher/parse``) it also takes double-quoted names, for
    labels such as ``"odd-name.x"``. The value is double-quoted or an unquoted run without
    double quotes (taken literally, surrounding spaces dropped; may be empty), with the same
    escapes as ``pkg/labels``. Raises ValueError naming the matcher.
    """

    def fail(reason: str) -> ValueError:
        return ValueError(f"invalid matcher '{text}': {reason}")

    source = text.strip()
    if source.startswith('"'):
        try:
            name, pos = _read_quoted(source, 0)
        except ValueError as exc:
            raise fail(f"label name: {exc}") from None
        if not name:
            raise fail("label name is empty")
    else:
        name_match = _MATCHER_NAME_RE.match(source)
        if name_match is None:
            raise fail("expected a label name such as alertname at the start")
        name, pos = name_match.group(), name_match.end()
    op_match = _OP_RE.match(source, pos)
    if op_match is None:
        raise fail(f"expected =, !=, =~ or !~ after the label name '{name}'")
    op, rest = op_match.group(1), source[op_match.end() :]
    if rest.startswith('"'):
        try:
            value, end = _read_quoted(rest, 0)
        except ValueError as exc:
            raise fail(f"value: {exc}") from None
        if end != len(rest):
            raise fail("unexpected text after the closing quote of the value")
    elif '"' in rest:
        raise fail("unquoted value contains a double quote")
    else:
        value = rest
    try:
        return Matcher(name, op, value)
    except _BadRegex as exc:
        raise ValueError(f"invalid regex in matcher '{text}': {exc}") from None


# ---------------------------------------------------------------------------------------------
# Templates


class _Sandbox(SandboxedEnvironment):
    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # The stock sandbox returns an Undefined that only fails when used further, so
        # "{{ labels.__class__ }}" would silently render "". Reaching for internals is a mistake
        # or an attack either way: fail loudly.
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


_ENV = _Sandbox(
    autoescape=False,
    undefined=jinja2.Undefined,
    # labels.get('x') on a missing label should render "" like labels.x does, not "None".
    finalize=lambda value: "" if value is None else value,
)


def _compile_template(source: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        where = f" (template line {exc.lineno})" if exc.lineno and exc.lineno > 1 else ""
        raise ValueError(f"invalid template in 'device': {exc.message or exc}{where}") from None
    except Exception as exc:  # absurd templates hit Python's limits (nesting, recursion)
        raise ValueError(f"invalid template in 'device': {exc}") from None


# ---------------------------------------------------------------------------------------------
# Guardrails: giving up, maintenance windows, budgets and the storm breaker


def _is_count(value: Any) -> bool:
    """True for a whole number >= 1 (YAML's true/false are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class GiveUp:
    """Stop asking for an operation on a device once it was sent ``after`` times in ``within``."""

    after: int  # >= 1
    within: float  # seconds, > 0

    def __post_init__(self) -> None:
        if not _is_count(self.after):
            raise ValueError(f"give_up.after must be a whole number >= 1, got {self.after!r}")
        if not _is_seconds(self.within) or self.within <= 0:
            raise ValueError(f"give_up.within must be more than 0 seconds, got {self.within!r}")


@dataclass(frozen=True)
class Budget:
    """At most ``max`` operations in any sliding ``per`` seconds (per value of ``group_by``)."""

    name: str  # unique among the budgets of a rule set
    max: int  # >= 1
    per: float  # seconds, > 0
    operation: str | None = None  # only this operation counts; None: every operation
    group_by: str | None = None  # a label name: one budget per value of it; None: one budget

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"budget name must be a non-empty string, got {self.name!r}")
        if not _is_count(self.max):
            raise ValueError(f"budget max must be a whole number >= 1, got {self.max!r}")
        if not _is_seconds(self.per) or self.per <= 0:
            raise ValueError(f"budget per must be more than 0 seconds, got {self.per!r}")
        if self.operation is not None and self.operation not in OPERATIONS:
            raise ValueError(f"unknown operation '{self.operation}'")
        # The name ends up in queries (json paths): only real label names get that far.
        if self.group_by is not None and not (
            isinstance(self.group_by, str) and _LABEL_NAME_RE.fullmatch(self.group_by)
        ):
            raise ValueError(f"invalid label name {self.group_by!r} in group_by")


@dataclass(frozen=True)
class Breaker:
    """The storm breaker: trips when too many operations (``max``) are asked for in ``per``."""

    max: int  # >= 1
    per: float  # seconds, > 0

    def __post_init__(self) -> None:
        if not _is_count(self.max):
            raise ValueError(f"breaker max must be a whole number >= 1, got {self.max!r}")
        if not _is_seconds(self.per) or self.per <= 0:
            raise ValueError(f"breaker per must be more than 0 seconds, got {self.per!r}")


DEFAULT_GIVE_UP = GiveUp(3, 86400.0)
#: Used when the file has no ``budgets`` key at all: at most 30 operations in any 10 minutes.
DEFAULT_BUDGETS = (Budget("global", 30, 600.0, None, None),)
DEFAULT_BREAKER = Breaker(50, 300.0)

_UTC = datetime.UTC
#: How far next_opening looks ahead: a week, plus a day for DST shifts.
_WINDOW_SEARCH_DAYS = 8


def _zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError "unknown time zone '...'" when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: keys such as "/etc/x", "../x" or files that are not zone files.
        raise ValueError(f"unknown time zone '{name}'") from None


def _as_utc(when: datetime.datetime) -> datetime.datetime:
    if not isinstance(when, datetime.datetime) or when.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got {when!r}")
    return when.astimezone(_UTC)


@dataclass(frozen=True)
class Window:
    """A weekly maintenance window in local time.

    On each day of ``days`` the window opens at ``start`` and closes at ``end`` (exclusive).
    When ``end`` is earlier than ``start`` it closes the next day (22:00-05:00 belongs to the
    day it starts on); when they are equal it lasts until ``start`` the next day (24 hours on
    ordinary days; 00:00-00:00 is the whole calendar day).

    Daylight saving time: a boundary is the first moment the clock in ``timezone`` shows that
    time on that date. A time that happens twice (clocks go back) means its first occurrence;
    a time that does not exist (clocks go forward) means the first moment after the gap. So a
    window is always one unbroken stretch of time and may be an hour longer or shorter on the
    night the clocks change.
    """

    days: frozenset[int]  # 0 = Monday ... 6 = Sunday
    start: datetime.time
    end: datetime.time
    timezone: str  # IANA name, e.g. Europe/Madrid
    outside: str = "hold"  # "hold": queue until the window opens; "skip": do not act
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        days = frozenset(self.days)
        if not days:
            raise ValueError("window days must not be empty")
        if not days <= frozenset(range(7)) or not all(type(d) is int for d in days):
            raise ValueError(f"window days must be 0 (Monday) to 6 (Sunday), got {sorted(days)}")
        object.__setattr__(self, "days", days)
        for clock in (self.start, self.end):
            if not isinstance(clock, datetime.time) or clock.tzinfo is not None:
                raise ValueError(f"window times must be naive datetime.time values, got {clock!r}")
        if self.outside not in OUTSIDE:
            raise ValueError(f"unknown window outside '{self.outside}' (expected hold or skip)")
        if not isinstance(self.timezone, str):
            raise ValueError(f"window timezone must be a string, got {self.timezone!r}")
        object.__setattr__(self, "_zone", _zone(self.timezone))

    def _boundary(self, day: datetime.date, clock: datetime.time) -> datetime.datetime:
        """The first moment, in UTC, at which the local clock shows ``day`` ``clock`` or later."""
        zone = self._zone
        naive = datetime.datetime.combine(day, clock)
        first = naive.replace(tzinfo=zone).astimezone(_UTC)  # fold=0: the earlier of two
        if first.astimezone(zone).replace(tzinfo=None) == naive:
            return first
        # The clock skips this time (a DST gap). With fold=0 and fold=1 zoneinfo applies the
        # offsets from before and after the gap; the change lies between. Transitions happen
        # on whole seconds, so bisect over seconds for the first one showing `naive` or later.
        other = naive.replace(tzinfo=zone, fold=1).astimezone(_UTC)
        low = math.floor(min(first, other).timestamp())
        high = math.ceil(max(first, other).timestamp())

        def reached(seconds: int) -> bool:
            shown = datetime.datetime.fromtimestamp(seconds, zone).replace(tzinfo=None)
            return shown >= naive

        if reached(low):
            return datetime.datetime.fromtimestamp(low, _UTC)
        if not reached(high):  # not a gap after all; cannot happen with real zone data
            return max(first, other)
        while high - low > 1:
            middle = (low + high) // 2
            if reached(middle):
                high = middle
            else:
                low = middle
        return datetime.datetime.fromtimestamp(high, _UTC)

    def _span(self, day: datetime.date) -> tuple[datetime.datetime, datetime.datetime]:
        """When the window of ``day`` opens and closes, in UTC (empty if opens >= closes)."""
        end_day = day if self.start < self.end else day + datetime.timedelta(days=1)
        return self._boundary(day, self.start), self._boundary(end_day, self.end)

    def contains(self, when: datetime.datetime) -> bool:
        """True when the window is open at ``when`` (timezone-aware, in any zone)."""
        moment = _as_utc(when)
        today = moment.astimezone(self._zone).date()
        # A window belongs to the day it opens: yesterday's may still be open. Two days back and
        # one ahead also cover zones whose clocks jumped across midnight.
        for offset in (-2, -1, 0, 1):
            day = today + datetime.timedelta(days=offset)
            if day.weekday() in self.days:
                opens, closes = self._span(day)
                if opens <= moment < closes:
                    return True
        return False

    def next_opening(self, when: datetime.datetime) -> datetime.datetime:
        """``when`` itself if the window is open then; else the moment it next opens, in UTC.

        Raises ValueError when ``when`` is naive, or (impossible with real zone data) when the
        window does not open within 8 days.
        """
        if self.contains(when):
            return when
        moment = _as_utc(when)
        today = moment.astimezone(self._zone).date()
        for offset in range(-1, _WINDOW_SEARCH_DAYS + 1):
            day = today + datetime.timedelta(days=offset)
            if day.weekday() in self.days:
                opens, closes = self._span(day)
                if moment < opens < closes:
                    return opens
        raise ValueError(
            f"window does not open within {_WINDOW_SEARCH_DAYS} days of {when.isoformat()}"
        )


_TIME_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def _parse_clock(text: str) -> datetime.time:
    """``HH:MM`` (24-hour) as a time; ValueError otherwise."""
    match = _TIME_RE.fullmatch(text)
    if match is None:
        raise ValueError(text)
    return datetime.time(int(match.group(1)), int(match.group(2)))


# ---------------------------------------------------------------------------------------------
# Rules


def _destructive_message(operation: str) -> str:
    return f"operation '{operation}' is destructive: set allow_destructive: true to allow it"


@dataclass(frozen=True)
class Rule:
    """One rule: when an alert matches, run ``operation`` on the device its template names."""

    name: str
    matchers: tuple[Matcher, ...]
    device: str  # template source
    operation: str
    cooldown: float  # seconds
    status: str = "firing"
    allow_destructive: bool = False
    line: int = 0  # line of the rule in the file; 0 when built in code
    # Guardrails (keyword-only, so positional construction keeps working):
    #: Shadow mode: decisions are audited as dry_run and nothing is sent.
    dry_run: bool = field(default=False, kw_only=True)
    #: Act only once the alert has been firing (since its startsAt) for this many seconds.
    min_age: float = field(default=0.0, kw_only=True)
    give_up: GiveUp = field(default=DEFAULT_GIVE_UP, kw_only=True)
    window: Window | None = field(default=None, kw_only=True)
    #: Whether a person must approve each operation. Left out (None) it becomes True for
    #: destructive operations and False otherwise; after construction it is always a bool.
    require_approval: bool = field(default=None, kw_only=True)  # type: ignore[assignment]
    _template: jinja2.Template | None = field(default=None, repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        # The loader reports these with lines; checking again here keeps a Rule built in code
        # (tests, other tools) from ever holding an operation the file could not.
        object.__setattr__(self, "matchers", tuple(self.matchers))
        if self.operation not in OPERATIONS:
            raise ValueError(f"unknown operation '{self.operation}'")
        if self.status not in STATUSES:
            raise ValueError(f"unknown status '{self.status}'")
        if self.operation in DESTRUCTIVE and self.allow_destructive is not True:
            raise ValueError(_destructive_message(self.operation))
        if not isinstance(self.dry_run, bool):
            raise ValueError(f"dry_run must be true or false, got {self.dry_run!r}")
        if not _is_seconds(self.min_age) or self.min_age < 0:
            raise ValueError(f"min_age must be 0 or more seconds, got {self.min_age!r}")
        object.__setattr__(self, "min_age", float(self.min_age))
        if not isinstance(self.give_up, GiveUp):
            raise ValueError(f"give_up must be a GiveUp, got {self.give_up!r}")
        if self.window is not None and not isinstance(self.window, Window):
            raise ValueError(f"window must be a Window or None, got {self.window!r}")
        if self.require_approval is None:
            object.__setattr__(self, "require_approval", self.operation in DESTRUCTIVE)
        elif not isinstance(self.require_approval, bool):
            raise ValueError(
                f"require_approval must be true or false, got {self.require_approval!r}"
            )
        if self._template is None:
            object.__setattr__(self, "_template", _compile_template(self.device))

    @property
    def risk(self) -> str:
        """How much harm the operation can do: routine, disruptive or destructive (see RISK)."""
        return RISK[self.operation]

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when every matcher holds for these labels."""
        return all(m.matches(labels) for m in self.matchers)

    def failed_matcher(self, labels: Mapping[str, str]) -> Matcher | None:
        """The first matcher that does not hold, or None when the rule matches."""
        return next((m for m in self.matchers if not m.matches(labels)), None)

    def wants(self, alert_status: str) -> bool:
        """True when the rule acts on alerts with this status ("firing" or "resolved")."""
        return self.status == "any" or self.status == alert_status

    def render_device(self, labels: Mapping[str, str], annotations: Mapping[str, str]) -> str:
        """The device the template names for this alert, surrounding whitespace stripped.

        Raises TemplateRenderError when the template fails or renders more than
        MAX_DEVICE_LENGTH characters. An empty result is returned as "" for the caller to judge.
        """
        assert self._template is not None
        try:
            # Copies: the sandbox lets templates call dict methods such as pop().
            text = self._template.render(labels=dict(labels), annotations=dict(annotations))
        except Exception as exc:  # anything raised here comes from the rule's own template
            raise TemplateRenderError(f"template error in 'device': {exc}", self.name) from exc
        text = text.strip()
        if len(text) > MAX_DEVICE_LENGTH:
            raise TemplateRenderError(
                f"device template rendered {len(text)} characters (limit {MAX_DEVICE_LENGTH})",
                self.name,
            )
        return text


@dataclass(frozen=True)
class RuleSet:
    """All rules of one file, in file order."""

    rules: tuple[Rule, ...]
    default_cooldown: float
    path: str  # file name as given
    version: str  # first 12 hex chars of the sha256 of the file's bytes
    #: Top-level ``budgets``; without the key, DEFAULT_BUDGETS (30 operations per 10 minutes).
    budgets: tuple[Budget, ...] = DEFAULT_BUDGETS
    breaker: Breaker = DEFAULT_BREAKER
    #: Seconds an operation waits for a person's approval before it expires.
    approval_timeout: float = 3600.0
    # Rules indexed by the value of an `alertname = "..."` matcher, and the rest: most rule
    # sets name their alert, so an alert is tried against a handful of rules, not all.
    _by_alertname: Mapping[str, tuple[int, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _unindexed: tuple[int, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", tuple(self.budgets))
        if not all(isinstance(budget, Budget) for budget in self.budgets):
            raise ValueError(f"budgets must be Budget values, got {self.budgets!r}")
        budget_names = [budget.name for budget in self.budgets]
        if len(set(budget_names)) != len(budget_names):
            raise ValueError(f"budget names must be unique, got {budget_names}")
        if not isinstance(self.breaker, Breaker):
            raise ValueError(f"breaker must be a Breaker, got {self.breaker!r}")
        if not _is_seconds(self.approval_timeout) or self.approval_timeout <= 0:
            raise ValueError(
                f"approval_timeout must be more than 0 seconds, got {self.approval_timeout!r}"
            )
        by_name: dict[str, list[int]] = {}
        rest: list[int] = []
        for i, rule in enumerate(self.rules):
            names = {m.value for m in rule.matchers if m.name == "alertname" and m.op == "="}
            if len(names) == 1:
                by_name.setdefault(names.pop(), []).append(i)
            else:  # no alertname equality, or two that contradict (never matches anyway)
                rest.append(i)
        object.__setattr__(self, "_by_alertname", {k: tuple(v) for k, v in by_name.items()})
        object.__setattr__(self, "_unindexed", tuple(rest))

    def candidates(self, labels: Mapping[str, str]) -> list[Rule]:
        """The rules that may match these labels, in file order (others certainly do not)."""
        named = self._by_alertname.get(labels.get("alertname", ""), ())
        if not named:
            return [self.rules[i] for i in self._unindexed]
        if not self._unindexed:
            return [self.rules[i] for i in named]
        return [self.rules[i] for i in sorted((*named, *self._unindexed))]


# ---------------------------------------------------------------------------------------------
# Step 1: YAML with line numbers


class _LineDict(dict):
    """A YAML mapping that remembers its own line, each key's line, and repeated keys."""

    line: int
    key_lines: dict[Any, int]
    duplicates: list[tuple[Any, int, int]]  # (key, line, line of the first occurrence)


class _LineList(list):
    """A YAML sequence that remembers its own line and each item's line."""

    line: int
    item_lines: list[int]


@dataclass(frozen=True)
class _ComplexKey:
    """Stands in for a mapping or list used as a key, which Python cannot hash.

    The usual cause is an unquoted template, ``device: {{ labels.device }}``, which YAML reads as
    a mapping inside a mapping; keeping it lets validation explain that instead of PyYAML's
    "found unhashable key".
    """

    text: str

    def __str__(self) -> str:
        return self.text


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1  # YAML marks are 0-based


def _node_text(node: yaml.Node) -> str:
    start, end = node.start_mark, node.end_mark
    text = start.buffer[start.index : end.index] if start.buffer is not None else node.tag
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


class _LineLoader(yaml.SafeLoader):
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            # Scalars PyYAML resolves but cannot build, e.g. "2020-13-45" as a date or an int
            # longer than Python's digit limit: report them like any other YAML error.
            raise ConstructorError(
                None, None, f"cannot read value: {exc}", node.start_mark
            ) from exc


def _construct_map(loader: _LineLoader, node: yaml.Node) -> Any:
    if not isinstance(node, yaml.MappingNode):
        found = getattr(node, "id", "a node")  # ScalarNode.id == "scalar"; absent from stubs
        raise ConstructorError(None, None, f"expected a mapping, found {found}", node.start_mark)
    data = _LineDict()
    data.line, data.key_lines, data.duplicates = _line(node), {}, []
    yield data  # yield first so aliases can refer to this mapping while it is being built
    own_count = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)  # prepends the entries of "<<" merge keys
    merged_count = len(node.value) - own_count
    own_lines: dict[Any, int] = {}
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            key = _ComplexKey(_node_text(key_node))
        line = _line(key_node)
        # Keys from a merge are meant to be overridden; repeating a key of one's own is a mistake
        # PyYAML would hide by keeping the last value.
        if index >= merged_count:
            if key in own_lines:
                data.duplicates.append((key, line, own_lines[key]))
            else:
                own_lines[key] = line
        data[key] = loader.construct_object(value_node)
        data.key_lines[key] = line


def _construct_seq(loader: _LineLoader, node: yaml.Node) -> Any:
    if not isinstance(node, yaml.SequenceNode):
        found = getattr(node, "id", "a node")  # ScalarNode.id == "scalar"; absent from stubs
        raise ConstructorError(None, None, f"expected a list, found {found}", node.start_mark)
    data = _LineList()
    data.line, data.item_lines = _line(node), [_line(child) for child in node.value]
    yield data
    data.extend(loader.construct_object(child) for child in node.value)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _load_yaml(text: str, path: str) -> tuple[Any, RuleProblem | None]:
    """The document, or a problem describing why it is not valid YAML."""
    try:
        return yaml.load(text, Loader=_LineLoader), None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = f"invalid YAML: {exc.problem or exc.context}"
        if exc.context and exc.problem:
            where = exc.context_mark
            if where is not None and where.line + 1 != line:
                message += f" ({exc.context} on line {where.line + 1})"
            else:
                message += f" ({exc.context})"
        return None, RuleProblem(path, line, None, message)
    except yaml.reader.ReaderError as exc:  # characters YAML does not allow, e.g. NUL
        line = text.count("\n", 0, exc.position) + 1
        return None, RuleProblem(path, line, None, f"invalid YAML: {str(exc).splitlines()[0]}")
    except yaml.YAMLError as exc:
        return None, RuleProblem(path, None, None, f"invalid YAML: {str(exc).splitlines()[0]}")
    except RecursionError:
        return None, RuleProblem(path, None, None, "invalid YAML: nested too deeply")


# ---------------------------------------------------------------------------------------------
# Step 2: validation, collecting every problem


def _describe(value: Any) -> str:
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


@dataclass
class _RuleSpec:
    """The checked values of one rule; complete only when no problem was found."""

    line: int
    name: Any = None
    matchers: list[Matcher] = field(default_factory=list)
    device: Any = None
    template: jinja2.Template | None = None
    operation: Any = None
    cooldown: float | None = None  # None: use the default
    status: str = "firing"
    allow_destructive: bool = False
    require_approval: bool | None = None  # None: by the operation's risk
    dry_run: bool = False
    min_age: float | None = None  # None: use the default
    give_up: GiveUp | None = None  # None: use the default
    window: Window | None = None
    has_window: bool = False  # the rule has a 'window' key; "window:" left empty means none


@dataclass
class _Settings:
    """Everything in the file besides its rules, defaulted where the file is silent."""

    cooldown: float = field(default_factory=lambda: parse_duration(DEFAULT_COOLDOWN))
    min_age: float = 0.0
    give_up: GiveUp = DEFAULT_GIVE_UP
    window: Window | None = None
    approval_timeout: float = field(
        default_factory=lambda: parse_duration(DEFAULT_APPROVAL_TIMEOUT)
    )
    budgets: tuple[Budget, ...] = DEFAULT_BUDGETS
    breaker: Breaker = DEFAULT_BREAKER


def _parse_days(term: str) -> set[int]:
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


class _Validator:
    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[RuleProblem] = []
        self.rule_names: dict[str, int] = {}  # name -> line of its 'name' key
        self.budget_names: dict[str, int] = {}  # name -> line of its 'name' key

    def problem(self, line: int | None, rule: str | None, message: str) -> None:
        self.problems.append(RuleProblem(self.path, line, rule, message))

    def check_keys(
        self,
        mapping: _LineDict,
        allowed: tuple[str, ...],
        rule: str | None,
        where: str = "",
        prefix: str = "",
    ) -> None:
        for key, line, first in mapping.duplicates:
            self.problem(
                line, rule, f"{prefix}duplicate key '{key}'{where} (first on line {first})"
            )
        for key in mapping:
            if key not in allowed:
                self.problem(
                    mapping.key_lines[key],
                    rule,
                    f"{prefix}unknown key '{key}'{where} (expected one of: {', '.join(allowed)})",
                )

    def check_required(
        self,
        mapping: _LineDict,
        required: tuple[str, ...],
        line: int,
        rule: str | None,
        where: str = "",
        prefix: str = "",
    ) -> None:
        for key in required:
            if key not in mapping:
                self.problem(line, rule, f"{prefix}missing required key '{key}'{where}")

    def duration(
        self,
        mapping: _LineDict,
        key: str,
        rule: str | None,
        name: str = "",
        prefix: str = "",
        positive: bool = False,
    ) -> float | None:
        """The duration under ``key``; ``name`` is how messages call it (default: the key)."""
        value, line = mapping[key], mapping.key_lines[key]
        name = name or key
        if isinstance(value, int) and not isinstance(value, bool) and value == 0:
            seconds = 0.0  # "cooldown: 0" is unambiguous even though YAML makes it a number
        elif not isinstance(value, str):
            self.problem(
                line, rule, f"{prefix}'{name}' must be a string such as 30m, got {_describe(value)}"
            )
            return None
        else:
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                self.problem(line, rule, f"{prefix}{exc}")
                return None
        if positive and seconds <= 0:
            self.problem(
                line, rule, f"{prefix}'{name}' must be greater than 0, got {_describe(value)}"
            )
            return None
        return seconds

    def count(
        self, mapping: _LineDict, key: str, rule: str | None, name: str = "", prefix: str = ""
    ) -> int | None:
        value = mapping[key]
        if _is_count(value):
            return int(value)
        self.problem(
            mapping.key_lines[key],
            rule,
            f"{prefix}'{name or key}' must be a whole number ≥ 1, got {_describe(value)}",
        )
        return None

    def flag(self, mapping: _LineDict, key: str, rule: str | None) -> bool | None:
        value = mapping[key]
        if isinstance(value, bool):
            return value
        self.problem(
            mapping.key_lines[key], rule, f"'{key}' must be true or false, got {_describe(value)}"
        )
        return None

    def document(self, data: Any) -> tuple[_Settings, list[_RuleSpec]]:
        settings = _Settings()
        if data is None:
            self.problem(None, None, "file is empty (expected a mapping with a 'rules' list)")
            return settings, []
        if not isinstance(data, _LineDict):
            self.problem(
                getattr(data, "line", None),
                None,
                f"expected a mapping with a 'rules' list at the top level, got {_describe(data)}",
            )
            return settings, []
        self.check_keys(data, _TOP_KEYS, None)

        defaults = data.get("defaults")
        if isinstance(defaults, _LineDict):
            self.defaults(defaults, settings)
        elif defaults is not None:  # "defaults:" with everything commented out is fine
            self.problem(
                data.key_lines["defaults"],
                None,
                f"'defaults' must be a mapping, got {_describe(defaults)}",
            )
        if "budgets" in data:
            settings.budgets = self.budgets(data)
        if "breaker" in data:
            settings.breaker = self.breaker(data)

        if "rules" not in data:
            self.problem(data.line, None, "missing required key 'rules'")
            return settings, []
        rules = data["rules"]
        if rules is None:  # "rules:" with every rule commented out: no rules, not an error
            return settings, []
        if not isinstance(rules, _LineList):
            self.problem(
                data.key_lines["rules"],
                None,
                f"'rules' must be a list of rules, got {_describe(rules)}",
            )
            return settings, []
        specs = [
            self.rule(item, line, settings)
            for item, line in zip(rules, rules.item_lines, strict=True)
        ]
        return settings, [spec for spec in specs if spec is not None]

    def defaults(self, defaults: _LineDict, settings: _Settings) -> None:
        self.check_keys(defaults, _DEFAULTS_KEYS, None, " in 'defaults'")
        if "cooldown" in defaults:
            settings.cooldown = self.duration(defaults, "cooldown", None) or 0.0
        if "min_age" in defaults:
            settings.min_age = self.duration(defaults, "min_age", None) or 0.0
        if "approval_timeout" in defaults:
            timeout = self.duration(defaults, "approval_timeout", None, positive=True)
            settings.approval_timeout = timeout or settings.approval_timeout
        if "give_up" in defaults:
            settings.give_up = self.give_up(defaults, None, DEFAULT_GIVE_UP)
        if "window" in defaults:
            settings.window = self.window(defaults, None)

    def give_up(self, mapping: _LineDict, rule: str | None, base: GiveUp) -> GiveUp:
        """``give_up``; keys it leaves out come from ``base`` (defaults.give_up, else 3 in 1d)."""
        value, line = mapping["give_up"], mapping.key_lines["give_up"]
        if value is None:  # "give_up:" with its keys commented out
            return base
        if not isinstance(value, _LineDict):
            self.problem(
                line,
                rule,
                "'give_up' must be a mapping such as {after: 3, within: 1d}, "
                f"got {_describe(value)}",
            )
            return base
        self.check_keys(value, _GIVE_UP_KEYS, rule, " in 'give_up'")
        after, within = base.after, base.within
        if "after" in value:
            after = self.count(value, "after", rule, "give_up.after") or after
        if "within" in value:
            within = self.duration(value, "within", rule, "give_up.within", positive=True) or within
        return GiveUp(after, within)

    def window(self, mapping: _LineDict, rule: str | None) -> Window | None:
        value, line = mapping["window"], mapping.key_lines["window"]
        if value is None:  # "window:" left empty: no window (also overrides defaults.window)
            return None
        if not isinstance(value, _LineDict):
            self.problem(
                line,
                rule,
                f"'window' must be a mapping with start, end and timezone, got {_describe(value)}",
            )
            return None
        before = len(self.problems)
        self.check_keys(value, _WINDOW_KEYS, rule, " in 'window'")
        self.check_required(value, _REQUIRED_WINDOW_KEYS, line, rule, " in 'window'")
        days = self.days(value, rule) if "days" in value else frozenset(range(7))
        start = self.clock(value, "start", rule) if "start" in value else None
        end = self.clock(value, "end", rule) if "end" in value else None
        zone = self.timezone(value, rule) if "timezone" in value else None
        outside = self.outside(value, rule) if "outside" in value else "hold"
        if len(self.problems) != before:
            return None
        assert days is not None and start is not None and end is not None
        assert zone is not None and outside is not None
        return Window(days, start, end, zone, outside)

    def days(self, window: _LineDict, rule: str | None) -> frozenset[int] | None:
        value, line = window["days"], window.key_lines["days"]
        terms: list[tuple[Any, int]]
        if isinstance(value, str):
            terms = [(term, line) for term in value.split(",")] if value.strip() else []
        elif isinstance(value, _LineList):
            terms = list(zip(value, value.item_lines, strict=True))
        else:
            self.problem(
                line,
                rule,
                "'window.days' must be a list of days such as [mon, tue] or a range such as "
                f"mon-fri, got {_describe(value)}",
            )
            return None
        if not terms:
            self.problem(line, rule, "'window.days' must not be empty: the window would never open")
            return None
        days: set[int] = set()
        ok = True
        for term, term_line in terms:
            if not isinstance(term, str):
                self.problem(
                    term_line,
                    rule,
                    f"each day in window.days must be a name such as mon, got {_describe(term)}",
                )
                ok = False
                continue
            try:
                days |= _parse_days(term)
            except ValueError as exc:
                self.problem(term_line, rule, str(exc))
                ok = False
        return frozenset(days) if ok else None

    def clock(self, window: _LineDict, key: str, rule: str | None) -> datetime.time | None:
        value, line = window[key], window.key_lines[key]
        if not isinstance(value, str):
            # YAML 1.1 reads an unquoted 22:00 (or 5:00) as the number 1320 (300): base 60.
            # Only a leading zero keeps it text, so 05:00 works unquoted and 22:00 does not.
            if isinstance(value, int) and not isinstance(value, bool) and 60 <= value < 1440:
                shown = f"{value // 60:02d}:{value % 60:02d}"
                why = f": YAML reads an unquoted {value // 60}:{value % 60:02d} as a number"
            else:
                shown, why = "22:00", ""
            self.problem(
                line,
                rule,
                f"'window.{key}' must be a string such as \"22:00\", got {_describe(value)}{why}"
                f' (quote times: {key}: "{shown}")',
            )
            return None
        try:
            return _parse_clock(value)
        except ValueError:
            self.problem(line, rule, f"invalid time '{value}' in window.{key} (expected HH:MM)")
            return None

    def timezone(self, window: _LineDict, rule: str | None) -> str | None:
        value, line = window["timezone"], window.key_lines["timezone"]
        if not isinstance(value, str):
            self.problem(
                line,
                rule,
                "'window.timezone' must be a time zone name such as Europe/Madrid, "
                f"got {_describe(value)}",
            )
            return None
        try:
            _zone(value)
        except ValueError as exc:
            self.problem(line, rule, str(exc))
            return None
        return value

    def outside(self, window: _LineDict, rule: str | None) -> str | None:
        value, line = window["outside"], window.key_lines["outside"]
        expected = ", ".join(OUTSIDE)
        if not isinstance(value, str):
            self.problem(
                line, rule, f"'window.outside' must be one of: {expected}, got {_describe(value)}"
            )
        elif value not in OUTSIDE:
            self.problem(
                line,
                rule,
                f"unknown value '{value}' in window.outside (expected one of: {expected})",
            )
        else:
            return value
        return None

    def budgets(self, data: _LineDict) -> tuple[Budget, ...]:
        value, line = data["budgets"], data.key_lines["budgets"]
        if value is None:  # "budgets:" with every budget commented out: none, like "budgets: []"
            return ()
        if not isinstance(value, _LineList):
            self.problem(line, None, f"'budgets' must be a list of budgets, got {_describe(value)}")
            return ()
        budgets = [
            self.budget(item, line) for item, line in zip(value, value.item_lines, strict=True)
        ]
        return tuple(budget for budget in budgets if budget is not None)

    def budget(self, item: Any, line: int) -> Budget | None:
        # Budgets have no rule: messages name the budget instead ("budget 'per-site': ...").
        if not isinstance(item, _LineDict):
            self.problem(line, None, f"each budget must be a mapping, got {_describe(item)}")
            return None
        before = len(self.problems)
        name = item.get("name")
        label = name if isinstance(name, str) and name.strip() else None
        prefix = f"budget '{label}': " if label is not None else "budget: "
        self.check_keys(item, _BUDGET_KEYS, None, prefix=prefix)
        self.check_required(item, _REQUIRED_BUDGET_KEYS, line, None, prefix=prefix)
        if "name" in item:
            name_line = item.key_lines["name"]
            if label is None:
                self.problem(
                    name_line,
                    None,
                    f"{prefix}'name' must be a non-empty string, got {_describe(name)}",
                )
            elif (first := self.budget_names.get(label)) is not None:
                self.problem(
                    name_line,
                    None,
                    f"{prefix}duplicate budget name '{label}' (first defined on line {first})",
                )
            else:
                self.budget_names[label] = name_line
        most = self.count(item, "max", None, prefix=prefix) if "max" in item else None
        per = (
            self.duration(item, "per", None, prefix=prefix, positive=True)
            if "per" in item
            else None
        )
        operation = self.operation(item, None, prefix) if "operation" in item else None
        group_by = self.label_name(item, "group_by", prefix) if "group_by" in item else None
        if len(self.problems) != before:
            return None
        assert label is not None and most is not None and per is not None
        return Budget(label, most, per, operation, group_by)

    def label_name(self, mapping: _LineDict, key: str, prefix: str) -> str | None:
        value, line = mapping[key], mapping.key_lines[key]
        if not isinstance(value, str):
            self.problem(
                line,
                None,
                f"{prefix}'{key}' must be a label name such as site, got {_describe(value)}",
            )
        elif not _LABEL_NAME_RE.fullmatch(value):
            self.problem(
                line,
                None,
                f"{prefix}invalid label name '{value}' in '{key}' "
                "(expected letters, digits and _, not starting with a digit)",
            )
        else:
            return value
        return None

    def breaker(self, data: _LineDict) -> Breaker:
        value, line = data["breaker"], data.key_lines["breaker"]
        if value is None:  # "breaker:" with its keys commented out: the default breaker
            return DEFAULT_BREAKER
        if not isinstance(value, _LineDict):
            self.problem(
                line,
                None,
                f"'breaker' must be a mapping such as {{max: 50, per: 5m}}, got {_describe(value)}",
            )
            return DEFAULT_BREAKER
        self.check_keys(value, _BREAKER_KEYS, None, " in 'breaker'")
        most, per = DEFAULT_BREAKER.max, DEFAULT_BREAKER.per
        if "max" in value:
            most = self.count(value, "max", None, "breaker.max") or most
        if "per" in value:
            per = self.duration(value, "per", None, "breaker.per", positive=True) or per
        return Breaker(most, per)

    def rule(self, item: Any, line: int, settings: _Settings) -> _RuleSpec | None:
        if not isinstance(item, _LineDict):
            self.problem(line, None, f"each rule must be a mapping, got {_describe(item)}")
            return None
        spec = _RuleSpec(line=line)
        name = item.get("name")
        label = name if isinstance(name, str) and name.strip() else None
        self.check_keys(item, _RULE_KEYS, label)
        for key in _REQUIRED_RULE_KEYS:
            if key not in item:
                self.problem(line, label, f"missing required key '{key}'")

        if "name" in item:
            name_line = item.key_lines["name"]
            if label is None:
                self.problem(
                    name_line, None, f"'name' must be a non-empty string, got {_describe(name)}"
                )
            elif (first := self.rule_names.get(label)) is not None:
                self.problem(
                    name_line,
                    label,
                    f"duplicate rule name '{label}' (first defined on line {first})",
                )
            else:
                self.rule_names[label] = name_line
            spec.name = label

        if "match" in item:
            spec.matchers = self.matchers(item, label)
        if "device" in item:
            spec.device, spec.template = self.device(item, label)
        if "operation" in item:
            spec.operation = self.operation(item, label)
        if "cooldown" in item:
            spec.cooldown = self.duration(item, "cooldown", label)
        if "status" in item:
            spec.status = self.status(item, label)
        if "allow_destructive" in item:
            spec.allow_destructive = bool(self.flag(item, "allow_destructive", label))
        # A wrongly typed allow_destructive is already reported; do not pile a second error on it.
        allow_ok = isinstance(item.get("allow_destructive", False), bool)
        if spec.operation in DESTRUCTIVE and allow_ok and not spec.allow_destructive:
            self.problem(item.key_lines["operation"], label, _destructive_message(spec.operation))
        # require_approval: false needs allow_destructive: true on a destructive operation,
        # which the check above already demands; on other operations it is the default anyway.
        if "require_approval" in item:
            spec.require_approval = self.flag(item, "require_approval", label)
        if "dry_run" in item:
            spec.dry_run = bool(self.flag(item, "dry_run", label))
        if "min_age" in item:
            spec.min_age = self.duration(item, "min_age", label)
        if "give_up" in item:
            spec.give_up = self.give_up(item, label, settings.give_up)
        if "window" in item:
            spec.has_window = True
            spec.window = self.window(item, label)
        return spec

    def matchers(self, item: _LineDict, label: str | None) -> list[Matcher]:
        value, line = item["match"], item.key_lines["match"]
        if not isinstance(value, _LineList):
            self.problem(
                line,
                label,
                "'match' must be a list of matchers such as "
                f'- alertname = "DeviceUnreachable", got {_describe(value)}',
            )
            return []
        if not value:
            self.problem(line, label, "'match' must not be empty: the rule would match every alert")
            return []
        matchers = []
        for entry, entry_line in zip(value, value.item_lines, strict=True):
            if not isinstance(entry, str):
                hint = ""
                if isinstance(entry, _LineDict) and len(entry) == 1:
                    # "- alertname: X" is the usual slip; show the matcher it was meant to be.
                    ((key, val),) = entry.items()
                    hint = f" (write it as: {key} = {_quote('' if val is None else str(val))})"
                self.problem(
                    entry_line,
                    label,
                    'each matcher must be a string such as alertname = "DeviceUnreachable", '
                    f"got {_describe(entry)}{hint}",
                )
                continue
            try:
                matchers.append(parse_matcher(entry))
            except ValueError as exc:
                self.problem(entry_line, label, str(exc))
        return matchers

    def device(self, item: _LineDict, label: str | None) -> tuple[Any, jinja2.Template | None]:
        value, line = item["device"], item.key_lines["device"]
        if not isinstance(value, str) or not value.strip():
            hint = ""
            if isinstance(value, dict):
                hint = ' (quote templates in YAML: device: "{{ labels.device }}")'
            self.problem(
                line,
                label,
                f"'device' must be a non-empty template string, got {_describe(value)}{hint}",
            )
            return None, None
        try:
            return value, _compile_template(value)
        except ValueError as exc:
            self.problem(line, label, str(exc))
            return None, None

    def operation(self, item: _LineDict, label: str | None, prefix: str = "") -> str | None:
        value, line = item["operation"], item.key_lines["operation"]
        expected = ", ".join(OPERATIONS)
        if not isinstance(value, str):
            self.problem(
                line,
                label,
                f"{prefix}'operation' must be one of: {expected}, got {_describe(value)}",
            )
        elif value not in OPERATIONS:
            self.problem(
                line, label, f"{prefix}unknown operation '{value}' (expected one of: {expected})"
            )
        else:
            return value
        return None

    def status(self, item: _LineDict, label: str | None) -> str:
        value, line = item["status"], item.key_lines["status"]
        expected = ", ".join(STATUSES)
        if not isinstance(value, str):
            self.problem(
                line, label, f"'status' must be one of: {expected}, got {_describe(value)}"
            )
        elif value not in STATUSES:
            self.problem(line, label, f"unknown status '{value}' (expected one of: {expected})")
        else:
            return value
        return "firing"


# ---------------------------------------------------------------------------------------------
# Step 3: build, and the public entry points


def _parse(text: str, path: str, raw: bytes) -> RuleSet:
    data, yaml_problem = _load_yaml(text, path)
    if yaml_problem is not None:
        raise RulesError([yaml_problem])
    validator = _Validator(path)
    settings, specs = validator.document(data)
    if validator.problems:
        raise RulesError(sorted(validator.problems, key=lambda p: p.line or 0))
    rules = tuple(
        Rule(
            name=spec.name,
            matchers=tuple(spec.matchers),
            device=spec.device,
            operation=spec.operation,
            cooldown=settings.cooldown if spec.cooldown is None else spec.cooldown,
            status=spec.status,
            allow_destructive=spec.allow_destructive,
            line=spec.line,
            dry_run=spec.dry_run,
            min_age=settings.min_age if spec.min_age is None else spec.min_age,
            give_up=settings.give_up if spec.give_up is None else spec.give_up,
            window=spec.window if spec.has_window else settings.window,
            require_approval=spec.require_approval,  # type: ignore[arg-type]  # None: by risk
            _template=spec.template,
        )
        for spec in specs
    )
    version = hashlib.sha256(raw).hexdigest()[:12]
    return RuleSet(
        rules=rules,
        default_cooldown=settings.cooldown,
        path=path,
        version=version,
        budgets=settings.budgets,
        breaker=settings.breaker,
        approval_timeout=settings.approval_timeout,
    )


def parse_rules(text: str, path: str = "rules.yaml") -> RuleSet:
    """Rules from the text of a rules file; ``path`` only names the file in errors.

    Raises RulesError listing every problem found, in line order.
    """
    return _parse(text, path, text.encode("utf-8", "surrogatepass"))


def load_rules(path: str | os.PathLike[str]) -> RuleSet:
    """Rules from a file. Raises RulesError, also when the file is missing or unreadable."""
    name = os.fspath(path)
    try:
        raw = Path(name).read_bytes()
    except FileNotFoundError:
        raise RulesError([RuleProblem(name, None, None, "file not found")]) from None
    except IsADirectoryError:
        raise RulesError([RuleProblem(name, None, None, "is a directory, not a file")]) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RulesError([RuleProblem(name, None, None, f"cannot read file: {reason}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        raise RulesError([RuleProblem(name, line, None, message)]) from None
    return _parse(text, name, raw)
