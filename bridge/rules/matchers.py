"""Alertmanager label matchers (``severity =~ "critical|page"``): parsing, matching, printing."""

from __future__ import annotations

import functools
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

MATCH_OPS = ("=", "!=", "=~", "!~")

#: Prometheus label names: what group_by may name (it ends up in JSON paths of queries).
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
#: Unquoted names in matchers, as Alertmanager's pkg/labels parser reads them: colons allowed.
MATCHER_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
#: The operators, longest first: "=~" is one operator, not "=" and a value starting with "~".
OPERATOR = r"=~|!=|!~|="
LABEL_NAME_RE = re.compile(LABEL_NAME)
_MATCHER_NAME_RE = re.compile(MATCHER_NAME)
_OP_RE = re.compile(rf"\s*({OPERATOR})\s*")


class _BadRegex(ValueError):
    pass


@functools.lru_cache(maxsize=4096)  # rule files repeat regexes; catch_warnings is slow
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


try:  # the parser behind re.compile; private, so its absence only costs _required_prefix
    from re import _parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - CPython 3.11+ has it
    _parser = None


def _required_prefix(pattern: str) -> str:
    """The text every value the regex fullmatches starts with: its leading literal characters
    ("t12" for ``t12(-.+)?``), or "" when it has none or they could match otherwise (a case-
    insensitive pattern). The rule index files a rule under it (bridge.rules.index), and
    matches() compares a value's start with it before running the regex.
    """
    if _parser is None:
        return ""
    try:
        parsed = _parser.parse(pattern)
        if parsed.state.flags & re.IGNORECASE:
            return ""
        prefix = []
        for op, argument in parsed:
            if op is not _parser.LITERAL:
                break
            prefix.append(chr(argument))
        return "".join(prefix)
    except Exception:
        return ""


# What keeps a regex out of an alternation with others (see _branch): a backreference by number
# (\1, which would name another group there) or by name, a named group (two regexes may name the
# same), a conditional on a group. Conservative: "\\1" (a backslash, then 1) is left out too.
_OWN_GROUPS_RE = re.compile(r"\\[1-9]|\(\?P[<=]|\(\?\(|\(\?<(?![=!])")
# Flags for the whole pattern, which Python allows only at its very start: "(?i)", "(?is)(?m)".
_LEADING_FLAGS_RE = re.compile(r"(?:\(\?[a-zA-Z]+\))+")


def _branch(pattern: str) -> str | None:
    """The regex as one branch of an alternation with others, "(?:...)", which fullmatches
    the same values; or None when it cannot be one (see _OWN_GROUPS_RE, and flags other than
    i, m and s for the whole pattern, which a branch cannot take on: "(?x)" turns "#" into a
    comment that would swallow the closing parenthesis)."""
    if _OWN_GROUPS_RE.search(pattern):
        return None
    flags = _LEADING_FLAGS_RE.match(pattern)
    if flags is None:
        return f"(?:{pattern})"
    letters = "".join(sorted(set(re.sub(r"[(?)]", "", flags.group()))))
    if not set(letters) <= set("ims"):
        return None
    return f"(?{letters}:{pattern[flags.end():]})"


# A regex that is a list of literals, "critical|page": "|" between runs of characters that are
# not metacharacters, or are punctuation escaped (an escaped "|" is left out: it would take
# telling apart from the bars between literals).
_LITERAL_LIST_RE = re.compile(r"(?:[^\\.^$*+?{}\[\]()]|\\[!-/:-@\[-`{}~ ])*")
_ESCAPED_RE = re.compile(r"\\(.)")


def _literals(pattern: str) -> frozenset[str] | None:
    """The strings a regex made only of literals and "|" matches in full, else None. One
    group around it all is allowed: "(critical|page)", "(?:critical|page)"."""
    for opening in ("(?:", "("):
        if pattern.startswith(opening) and pattern.endswith(")"):
            pattern = pattern[len(opening) : -1]
            break
    if not _LITERAL_LIST_RE.fullmatch(pattern):
        return None
    return frozenset(_ESCAPED_RE.sub(_unescaped, part) if "\\" in part else part
                     for part in pattern.split("|"))


def _unescaped(match: re.Match[str]) -> str:
    return match.group(1)


def quote(value: str) -> str:
    """Double-quote a string the way Alertmanager prints matcher values."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the double-quoted string at ``text[start]``; return its value and the index after it.

    Escapes follow Alertmanager's matcher parser: \\" \\\\ and \\n are decoded and any other
    backslash is kept as is, so regexes such as "\\d+" need no doubled backslashes.
    """
    end = text.find('"', start + 1)
    if end != -1 and "\\" not in text[start + 1 : end]:
        return text[start + 1 : end], end + 1  # nothing escaped: the common case, at C speed
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


@dataclass(frozen=True, slots=True)  # slots: rules are scanned by the thousand, keep them small
class Matcher:
    """One Alertmanager label matcher, e.g. ``severity=~"critical|page"``."""

    name: str
    op: str
    value: str
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _prefix: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op not in MATCH_OPS:
            raise ValueError(
                f"unknown matcher operator '{self.op}' (expected one of: =, !=, =~, !~)"
            )
        # One shared object for each operator and label name: rules are scanned by the
        # thousand, and comparing or hashing the same object stays in the CPU's caches.
        object.__setattr__(self, "op", MATCH_OPS[MATCH_OPS.index(self.op)])
        if type(self.name) is str:
            object.__setattr__(self, "name", sys.intern(self.name))
        if self.op in ("=~", "!~"):
            object.__setattr__(self, "_regex", _compile_regex(self.value))
            object.__setattr__(self, "_prefix", _required_prefix(self.value))

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
        hit = value.startswith(self._prefix) and self._regex.fullmatch(value) is not None
        return hit if self.op == "=~" else not hit

    def only_values(self) -> frozenset[str] | None:
        """The only values of the label with which this matcher holds ("" for a missing
        label), when there are a few: ``=``, and ``=~`` with a list of literals such as
        ``critical|page``. None for the others, which allow any number of values."""
        if self.op == "=":
            return frozenset((self.value,))
        if self.op != "=~":
            return None
        values = _literals(self.value)
        assert self._regex is not None
        if values is None or not all(self._regex.fullmatch(v) for v in values):
            return None
        return values

    def required_prefix(self) -> str:
        """For ``=~``, the text every value it allows starts with ("t12" for ``t12(-.+)?``),
        else "". A missing label reads as "", which starts with no such text: the matcher
        never holds for it when this is not empty."""
        return self._prefix if self.op == "=~" else ""

    def branch(self) -> str | None:
        """For ``=~``, its regex as one branch of an alternation with other matchers' (the
        rule index combines them, bridge.rules.index), when it can be one; else None."""
        return _branch(self.value) if self.op == "=~" else None

    def __str__(self) -> str:
        name = self.name if _MATCHER_NAME_RE.fullmatch(self.name) else quote(self.name)
        return f"{name}{self.op}{quote(self.value)}"


# Matchers are immutable, and ten thousand rules generated from an inventory repeat most of
# theirs (severity =~ "critical|page"): parse each text once, and share the value.
@functools.lru_cache(maxsize=4096)
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
