"""Load rules.yaml into immutable rules that map alerts to device operations.

Every problem in the file is reported at once, with its line, so an operator fixes them in one pass.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from yaml.constructor import ConstructorError

from bridge.errors import BridgeError, RuleProblem, RulesError

OPERATIONS = ("sync", "reconf", "reboot", "device_factory", "factory")
DESTRUCTIVE = frozenset({"factory", "device_factory"})
STATUSES = ("firing", "resolved", "any")
MATCH_OPS = ("=", "!=", "=~", "!~")

DEFAULT_COOLDOWN = "30m"
#: Longest device name a template may produce; anything longer is a runaway template, not a device.
MAX_DEVICE_LENGTH = 1024

_TOP_KEYS = ("defaults", "rules")
_DEFAULTS_KEYS = ("cooldown",)
_RULE_KEYS = ("name", "match", "device", "operation", "cooldown", "status", "allow_destructive")
_REQUIRED_RULE_KEYS = ("name", "match", "device", "operation")


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

_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
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
        name = self.name if _LABEL_NAME_RE.fullmatch(self.name) else _quote(self.name)
        return f"{name}{self.op}{_quote(self.value)}"


def parse_matcher(text: str) -> Matcher:
    """Parse ``name OP value`` (OP one of =, !=, =~, !~) as Alertmanager does.

    The name is a label name or a double-quoted string; the value is double-quoted or an unquoted
    run without double quotes (taken literally, surrounding spaces dropped; may be empty).
    Raises ValueError naming the matcher.
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
        name_match = _LABEL_NAME_RE.match(source)
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
        if self._template is None:
            object.__setattr__(self, "_template", _compile_template(self.device))

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
    # Rules indexed by the value of an `alertname = "..."` matcher, and the rest: most rule
    # sets name their alert, so an alert is tried against a handful of rules, not all.
    _by_alertname: Mapping[str, tuple[int, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _unindexed: tuple[int, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
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


class _Validator:
    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[RuleProblem] = []
        self.rule_names: dict[str, int] = {}  # name -> line of its 'name' key

    def problem(self, line: int | None, rule: str | None, message: str) -> None:
        self.problems.append(RuleProblem(self.path, line, rule, message))

    def check_keys(
        self, mapping: _LineDict, allowed: tuple[str, ...], rule: str | None, where: str = ""
    ) -> None:
        for key, line, first in mapping.duplicates:
            self.problem(line, rule, f"duplicate key '{key}'{where} (first on line {first})")
        for key in mapping:
            if key not in allowed:
                self.problem(
                    mapping.key_lines[key],
                    rule,
                    f"unknown key '{key}'{where} (expected one of: {', '.join(allowed)})",
                )

    def duration(self, mapping: _LineDict, key: str, rule: str | None) -> float | None:
        value, line = mapping[key], mapping.key_lines[key]
        if isinstance(value, int) and not isinstance(value, bool) and value == 0:
            return 0.0  # "cooldown: 0" is unambiguous even though YAML makes it a number
        if not isinstance(value, str):
            self.problem(
                line, rule, f"'{key}' must be a string such as 30m, got {_describe(value)}"
            )
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.problem(line, rule, str(exc))
            return None

    def document(self, data: Any) -> tuple[float, list[_RuleSpec]]:
        default_cooldown = parse_duration(DEFAULT_COOLDOWN)
        if data is None:
            self.problem(None, None, "file is empty (expected a mapping with a 'rules' list)")
            return default_cooldown, []
        if not isinstance(data, _LineDict):
            self.problem(
                getattr(data, "line", None),
                None,
                f"expected a mapping with a 'rules' list at the top level, got {_describe(data)}",
            )
            return default_cooldown, []
        self.check_keys(data, _TOP_KEYS, None)

        defaults = data.get("defaults")
        if isinstance(defaults, _LineDict):
            self.check_keys(defaults, _DEFAULTS_KEYS, None, " in 'defaults'")
            if "cooldown" in defaults:
                default_cooldown = self.duration(defaults, "cooldown", None) or 0.0
        elif defaults is not None:  # "defaults:" with everything commented out is fine
            self.problem(
                data.key_lines["defaults"],
                None,
                f"'defaults' must be a mapping, got {_describe(defaults)}",
            )

        if "rules" not in data:
            self.problem(data.line, None, "missing required key 'rules'")
            return default_cooldown, []
        rules = data["rules"]
        if rules is None:  # "rules:" with every rule commented out: no rules, not an error
            return default_cooldown, []
        if not isinstance(rules, _LineList):
            self.problem(
                data.key_lines["rules"],
                None,
                f"'rules' must be a list of rules, got {_describe(rules)}",
            )
            return default_cooldown, []
        specs = [self.rule(item, line) for item, line in zip(rules, rules.item_lines, strict=True)]
        return default_cooldown, [spec for spec in specs if spec is not None]

    def rule(self, item: Any, line: int) -> _RuleSpec | None:
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
            allow = item["allow_destructive"]
            if isinstance(allow, bool):
                spec.allow_destructive = allow
            else:
                self.problem(
                    item.key_lines["allow_destructive"],
                    label,
                    f"'allow_destructive' must be true or false, got {_describe(allow)}",
                )
        # A wrongly typed allow_destructive is already reported; do not pile a second error on it.
        allow_ok = isinstance(item.get("allow_destructive", False), bool)
        if spec.operation in DESTRUCTIVE and allow_ok and not spec.allow_destructive:
            self.problem(item.key_lines["operation"], label, _destructive_message(spec.operation))
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

    def operation(self, item: _LineDict, label: str | None) -> str | None:
        value, line = item["operation"], item.key_lines["operation"]
        expected = ", ".join(OPERATIONS)
        if not isinstance(value, str):
            self.problem(
                line, label, f"'operation' must be one of: {expected}, got {_describe(value)}"
            )
        elif value not in OPERATIONS:
            self.problem(line, label, f"unknown operation '{value}' (expected one of: {expected})")
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
    default_cooldown, specs = validator.document(data)
    if validator.problems:
        raise RulesError(sorted(validator.problems, key=lambda p: p.line or 0))
    rules = tuple(
        Rule(
            name=spec.name,
            matchers=tuple(spec.matchers),
            device=spec.device,
            operation=spec.operation,
            cooldown=default_cooldown if spec.cooldown is None else spec.cooldown,
            status=spec.status,
            allow_destructive=spec.allow_destructive,
            line=spec.line,
            _template=spec.template,
        )
        for spec in specs
    )
    version = hashlib.sha256(raw).hexdigest()[:12]
    return RuleSet(rules=rules, default_cooldown=default_cooldown, path=path, version=version)


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
