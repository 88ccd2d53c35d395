"""Which rules an alert's labels can match, found without trying every rule.

Each rule is filed under one of its matchers that allow only some values of a label
(``team = "t1"``, or ``severity =~ "critical|page"``), or only values that start with some
text (``team =~ "t1(-.+)?"``, whose values all start with "t1"): the one the fewest rules share.
An alert then looks up its own value of each label rules are filed under (and each start of it
that rules are filed under), and is tried against the rules found there and the rules that have
no such matcher, in file order. A rule that is not found cannot match: its label has a value
the matcher does not allow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.rules.matchers import Matcher

#: What a matcher files its rule under: (label, the only values it allows, "") or
#: (label, frozenset(), the text every value it allows starts with).
Key = tuple[str, frozenset[str], str]


@dataclass(frozen=True)
class RuleIndex:
    #: label -> value -> the positions of the rules filed under that value, ascending.
    by_label: Mapping[str, Mapping[str, tuple[int, ...]]]
    #: The positions of the rules with no matcher to file them under, ascending.
    unindexed: tuple[int, ...]
    #: label -> length -> prefix of that length -> the positions of the rules filed under that
    #: prefix, ascending.
    by_prefix: Mapping[str, Mapping[int, Mapping[str, tuple[int, ...]]]]

    def candidates(self, labels: Mapping[str, str]) -> list[int]:
        """The positions of the rules that may match these labels, ascending (file order)."""
        found: list[int] = []
        lists = 0
        for label, by_value in self.by_label.items():
            value = labels.get(label)
            # As the matchers read labels: a missing label is "", a value is read as text.
            hit = by_value.get("" if value is None else value if type(value) is str else str(value))
            if hit:
                found += hit
                lists += 1
        for label, by_length in self.by_prefix.items():
            value = labels.get(label)
            text = "" if value is None else value if type(value) is str else str(value)
            for length, by_text in by_length.items():
                # The start of the value that long: a shorter value finds nothing, as every
                # prefix filed there has that length.
                hit = by_text.get(text[:length])
                if hit:
                    found += hit
                    lists += 1
        if self.unindexed:
            found += self.unindexed
            lists += 1
        return sorted(found) if lists > 1 else found


def index_rules(matchers: Sequence[Sequence[Matcher]]) -> RuleIndex:
    """The index of rules with these matchers (one sequence per rule, in file order)."""
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

    by_label: dict[str, dict[str, list[int]]] = {}
    by_prefix: dict[str, dict[int, dict[str, list[int]]]] = {}
    unindexed: list[int] = []
    for position, rule in enumerate(keys):
        if not rule:
            unindexed.append(position)
            continue
        label, values, prefix = min(rule, key=cost)
        if prefix:
            by_length = by_prefix.setdefault(label, {})
            by_length.setdefault(len(prefix), {}).setdefault(prefix, []).append(position)
        for value in values:
            by_label.setdefault(label, {}).setdefault(value, []).append(position)
    return RuleIndex(
        {label: {v: tuple(p) for v, p in by_value.items()} for label, by_value in by_label.items()},
        tuple(unindexed),
        {label: {n: {text: tuple(p) for text, p in by_text.items()}
                 for n, by_text in by_length.items()}
         for label, by_length in by_prefix.items()},
    )


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
