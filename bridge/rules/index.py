"""Which rules an alert's labels can match, found without trying every rule.

Each rule is filed under one of its matchers that allow only some values of a label
(``team = "t1"``, or ``severity =~ "critical|page"``): the one the fewest rules share. An alert
then looks up its own value of each label rules are filed under, and is tried against the rules
found there and the rules that have no such matcher, in file order. A rule that is not found
cannot match: its label has a value the matcher does not allow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.rules.matchers import Matcher


@dataclass(frozen=True)
class RuleIndex:
    #: label -> value -> the positions of the rules filed under that value, ascending.
    by_label: Mapping[str, Mapping[str, tuple[int, ...]]]
    #: The positions of the rules with no matcher to file them under, ascending.
    unindexed: tuple[int, ...]

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
        if self.unindexed:
            found += self.unindexed
            lists += 1
        return sorted(found) if lists > 1 else found


def index_rules(matchers: Sequence[Sequence[Matcher]]) -> RuleIndex:
    """The index of rules with these matchers (one sequence per rule, in file order)."""
    memo: dict[int, frozenset[str] | None] = {}
    keys = [_keys(rule, memo) for rule in matchers]
    sharing = Counter((label, value) for rule in keys for label, values in rule
                      for value in values)

    def cost(key: tuple[str, frozenset[str]]) -> tuple[bool, int]:
        # How many rules share the key; one that allows "" goes last, as every alert without
        # the label has that value.
        label, values = key
        return "" in values, sum(sharing[(label, v)] for v in values)

    by_label: dict[str, dict[str, list[int]]] = {}
    unindexed: list[int] = []
    for position, rule in enumerate(keys):
        if not rule:
            unindexed.append(position)
            continue
        label, values = min(rule, key=cost)
        for value in values:
            by_label.setdefault(label, {}).setdefault(value, []).append(position)
    return RuleIndex(
        {label: {v: tuple(p) for v, p in by_value.items()} for label, by_value in by_label.items()},
        tuple(unindexed),
    )


def _keys(matchers: Sequence[Matcher], memo: dict[int, frozenset[str] | None],
          ) -> list[tuple[str, frozenset[str]]]:
    """(label, the only values it may have) for each matcher of a rule that allows only some;
    ``memo`` holds what each matcher allows, by identity (rules share most of theirs, and a
    matcher's own hash is slower to take than that)."""
    keys = []
    for m in matchers:
        if id(m) not in memo:
            memo[id(m)] = m.only_values()
        values = memo[id(m)]
        if values is not None:
            keys.append((m.name, values))
    return keys
