"""Which rules an alert's labels match, found without trying every rule.

Each rule is filed under one of its matchers that allow only some values of a label
(``team = "t1"``, or ``severity =~ "critical|page"``), or only values that start with some
text (``team =~ "t1(-.+)?"``, whose values all start with "t1"): the one the fewest rules share.
An alert then looks up its own value of each label rules are filed under (and each start of it
that rules are filed under), and is tried against the rules found there, in file order. A rule
that is not found cannot match: its label has a value the matcher does not allow.

A rule with no such matcher, or only ones that many rules share (``severity =~ "critical|page"``
in every rule), is filed by a regex of its own that no key can read (``team =~ "(?i)t1(-.+)?"``)
if it has one: the regexes of such rules on one label are joined into alternations of CHUNK,
an alert runs each alternation once on its value (in C, a few tens of nanoseconds a regex), and
tries the rules of the alternations that matched. Every alert tries the rules left, picked only
by ``!=``, ``!~`` or a regex that cannot join an alternation (see Matcher.branch)."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bridge.rules.matchers import Matcher

#: How many rules' regexes one alternation joins, and how many rules may share a key before a
#: rule is filed by its regex instead. Matching a value against an alternation costs each branch
#: a few tens of nanoseconds, against a few hundred for trying a rule; and where a branch enters
#: a group of its own, Python's regex engine clears every group numbered before it, so such a
#: branch costs more the further it is from the start: 32 keeps that small.
CHUNK = 32

#: What a matcher files its rule under: (label, the only values it allows, "") or
#: (label, frozenset(), the text every value it allows starts with).
Key = tuple[str, frozenset[str], str]


#: A rule as the index files it: its position in the file, the matcher it is tried by first,
#: and its other matchers.
Entry = tuple[int, Matcher | None, tuple[Matcher, ...]]


@dataclass(frozen=True, slots=True)
class Entries:
    """Rules filed under one key, ascending, held the way they are tried: the matcher each is
    tried by first (one that its key does not already promise; None for a rule with no
    matchers), side by side, and the rest only for the rules that pass it. A scan of thousands
    of rules then reads little more than those first matchers, not the rules around them, which
    would crowd them out of the CPU's caches."""

    positions: tuple[int, ...]
    firsts: tuple[Matcher | None, ...]
    rests: tuple[tuple[Matcher, ...], ...]

    @classmethod
    def of(cls, entries: Sequence[Entry]) -> Entries:
        return cls(tuple(e[0] for e in entries), tuple(e[1] for e in entries),
                   tuple(e[2] for e in entries))

    def holding(self, labels: Mapping[str, str]) -> list[int]:
        """The positions of the rules whose matchers all hold for these labels."""
        hit = []
        rests = self.rests
        for i, first in enumerate(self.firsts):
            if first is None or first.matches(labels):
                for matcher in rests[i]:  # not all(...): a generator costs more than matching
                    if not matcher.matches(labels):
                        break
                else:
                    hit.append(self.positions[i])
        return hit


@dataclass(frozen=True, slots=True)
class RegexChunk:
    """Rules filed by their regexes on one label: an alternation of those regexes, and the
    rules."""

    #: The alternation's fullmatch: a match when any of the rules' regexes matches all of the
    #: value, None when none does.
    any_of: Callable[[str], object]
    rules: Entries


@dataclass(frozen=True)
class RuleIndex:
    #: label -> value -> the rules filed under that value.
    by_label: Mapping[str, Mapping[str, Entries]]
    #: label -> length -> prefix of that length -> the rules filed under that prefix.
    by_prefix: Mapping[str, Mapping[int, Mapping[str, Entries]]]
    #: label -> the alternations of the rules filed by their regex on that label, in file order.
    by_regex: Mapping[str, tuple[RegexChunk, ...]]
    #: The rules with nothing to file them under.
    unindexed: Entries

    def matching(self, labels: Mapping[str, str]) -> list[int]:
        """The positions of the rules whose matchers all hold for these labels, ascending
        (file order)."""
        tried: list[Entries] = []
        for label, by_value in self.by_label.items():
            entries = by_value.get(_text(labels.get(label)))
            if entries is not None:
                tried.append(entries)
        for label, by_length in self.by_prefix.items():
            text = _text(labels.get(label))
            for length, by_text in by_length.items():
                # The start of the value that long: a shorter value finds nothing, as every
                # prefix filed there has that length.
                entries = by_text.get(text[:length])
                if entries is not None:
                    tried.append(entries)
        for label, chunks in self.by_regex.items():
            text = _text(labels.get(label))
            tried += [chunk.rules for chunk in chunks if chunk.any_of(text) is not None]
        if self.unindexed.positions:
            tried.append(self.unindexed)
        found: list[int] = []
        lists = 0
        for entries in tried:
            if hit := entries.holding(labels):
                found += hit
                lists += 1
        return sorted(found) if lists > 1 else found


def _text(value: object) -> str:
    """A label's value as the matchers read it: a missing label is "", a value is text."""
    return "" if value is None else value if type(value) is str else str(value)


def index_rules(matchers: Sequence[Sequence[Matcher]], *, chunk: int = CHUNK) -> RuleIndex:
    """The index of rules with these matchers (one sequence per rule, in file order); ``chunk``
    is CHUNK, smaller in tests."""
    memo: dict[int, tuple[frozenset[str], str] | None] = {}
    keys = [_keys(rule, memo) for rule in matchers]
    sharing = Counter((label, value) for rule in keys for label, values, _ in rule
                      for value in values)
    sharing_prefix = Counter((label, prefix) for rule in keys for label, _, prefix in rule
                             if prefix)

    def cost(key: Key) -> tuple[bool, int, bool]:
        # How many rules share the key; one that allows "" goes last, as every alert without
        # the label has that value. Between a prefix and values as many rules share, the
        # values: an alert finds the rules of one value, but those of each prefix of its own.
        label, values, prefix = key
        if prefix:
            return False, sharing_prefix[(label, prefix)], True
        return "" in values, sum(sharing[(label, v)] for v in values), False

    by_label: dict[str, dict[str, list[Entry]]] = {}
    by_prefix: dict[str, dict[int, dict[str, list[Entry]]]] = {}
    by_regex: dict[str, list[tuple[Entry, str]]] = {}
    unindexed: list[Entry] = []
    for position, rule in enumerate(keys):
        best = min(rule, key=cost) if rule else None
        if best is None or cost(best)[:2] > (False, chunk):
            # No key, or one that leaves an alert many rules to try: a regex of the rule that
            # is no key itself (that would find the same rules) and can join an alternation.
            joinable = next(((m, b) for m in matchers[position]
                             if memo[id(m)] is None and (b := m.branch()) is not None), None)
            if joinable is not None:
                entry = _entry(position, matchers[position], first=joinable[0])
                by_regex.setdefault(joinable[0].name, []).append((entry, joinable[1]))
                continue
        if best is None:
            unindexed.append(_entry(position, matchers[position]))
            continue
        label, values, prefix = best
        filed_by = next(m for m in matchers[position]
                        if m.name == label and memo[id(m)] == (values, prefix))
        entry = _entry(position, matchers[position], last=filed_by)
        if prefix:
            by_length = by_prefix.setdefault(label, {})
            by_length.setdefault(len(prefix), {}).setdefault(prefix, []).append(entry)
        for value in values:
            by_label.setdefault(label, {}).setdefault(value, []).append(entry)
    return RuleIndex(
        {label: {v: Entries.of(e) for v, e in by_value.items()}
         for label, by_value in by_label.items()},
        {label: {n: {text: Entries.of(e) for text, e in by_text.items()}
                 for n, by_text in by_length.items()}
         for label, by_length in by_prefix.items()},
        {label: _chunks(filed, chunk) for label, filed in by_regex.items()},
        Entries.of(unindexed),
    )


def _entry(position: int, matchers: Sequence[Matcher], *, first: Matcher | None = None,
           last: Matcher | None = None) -> Entry:
    """The rule at that position with these matchers, in the order they are tried: ``first``
    (the regex of an alternation, which matching says only that one of its rules' regexes
    did), the others in file order, and ``last`` (the matcher of its key, which finding the
    rule under the key already promises holds, or nearly)."""
    ordered = [m for m in matchers if m is not first and m is not last]
    if first is not None:
        ordered.insert(0, first)
    if last is not None:
        ordered.append(last)
    return position, (ordered[0] if ordered else None), tuple(ordered[1:])


def _chunks(filed: Sequence[tuple[Entry, str]], size: int) -> tuple[RegexChunk, ...]:
    """The rules filed by their regexes on one label (each with its regex as a branch), in
    alternations of ``size``."""
    chunks = []
    for start in range(0, len(filed), size):
        part = filed[start : start + size]
        rules = Entries.of([entry for entry, _ in part])
        any_of: Callable[[str], object]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # each regex alone compiled without one
                any_of = re.compile("|".join(branch for _, branch in part)).fullmatch
        except (re.error, OverflowError, RecursionError):  # pragma: no cover - not seen
            # Each branch compiled alone; should they not join, every rule is tried.
            any_of = _anything
        chunks.append(RegexChunk(any_of, rules))
    return tuple(chunks)


def _anything(text: str) -> object:  # pragma: no cover - see _chunks
    return text


def _keys(matchers: Sequence[Matcher], memo: dict[int, tuple[frozenset[str], str] | None],
          ) -> list[Key]:
    """The key of each matcher of a rule that allows only some values, or only values with
    some start (see Key); ``memo`` holds each matcher's, by identity (rules share most of
    theirs, and a matcher's own hash is slower to take than that)."""
    keys = []
    for m in matchers:
        if id(m) not in memo:
            values = m.only_values()
            if values is not None:
                memo[id(m)] = values, ""
            else:
                prefix = m.required_prefix()
                memo[id(m)] = (frozenset(), prefix) if prefix else None
        found = memo[id(m)]
        if found is not None:
            keys.append((m.name, *found))
    return keys
