"""Warnings about rules that load but probably do not do what their author meant."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jinja2
from jinja2 import nodes

from bridge.errors import RuleProblem
from bridge.rules import Matcher, Rule, RuleSet


def lint(rules: RuleSet) -> list[RuleProblem]:
    """Every warning for the rule set, in file order."""
    problems: list[RuleProblem] = []
    for rule in rules.rules:
        never = _never_matches(rule)
        if never:
            problems.append(RuleProblem(rules.path, rule.line, rule.name,
                                        f"can never match: {never}"))
        for label in sorted(_template_labels(rule.device) - _guaranteed(rule)):
            problems.append(RuleProblem(
                rules.path, rule.line, rule.name,
                f"device template uses labels.{label}, which no matcher guarantees: an alert"
                f" without it renders an empty device name (add {label}=~\".+\")"))
    for i, j in _clashes(rules.rules):
        a, b = rules.rules[i], rules.rules[j]
        problems.append(RuleProblem(
            rules.path, b.line, b.name,
            f"one alert can match both this rule and '{a.name}' (line {a.line}): the same"
            f" device would get {a.operation} and {b.operation}"))
    return sorted(problems, key=lambda p: p.line or 0)


def _clashes(rules: Sequence[Rule]) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of rules one alert can match that send different operations
    to the same device, in order.

    Comparing every pair would take minutes at ten thousand rules. Only rules with the same
    device template can clash; of those, rule j is compared with the earlier rules that share
    its most selective `label = "value"` or have no equality on that label: every other rule
    says `label = "other"`, which no alert that rule j matches carries.
    """
    by_device: dict[str, list[int]] = {}
    for i, rule in enumerate(rules):
        by_device.setdefault(rule.device, []).append(i)
    pairs: list[tuple[int, int]] = []
    for members in by_device.values():
        if len({rules[i].operation for i in members}) < 2:
            continue
        equal: dict[tuple[str, str], set[int]] = {}
        constrained: dict[str, set[int]] = {}
        for i in members:
            for m in rules[i].matchers:
                if m.op == "=":
                    equal.setdefault((m.name, m.value), set()).add(i)
                    constrained.setdefault(m.name, set()).add(i)
        every = set(members)
        free = {label: every - ids for label, ids in constrained.items()}
        for j in members:
            b = rules[j]
            keys = [(m.name, m.value) for m in b.matchers if m.op == "="]
            if keys:
                label, value = min(keys, key=lambda k: len(equal[k]) + len(free[k[0]]))
                others = equal[(label, value)] | free[label]
            else:
                others = every
            pairs += [
                (i, j) for i in others
                if i < j and rules[i].operation != b.operation and _may_overlap(rules[i], b)
            ]
    return sorted(pairs)


def _guaranteed(rule: Rule) -> set[str]:
    """Labels that every alert the rule matches carries with a non-empty value."""
    return {m.name for m in rule.matchers if not m.matches({})}


def _never_matches(rule: Rule) -> str:
    by_label: dict[str, list[Matcher]] = {}
    for m in rule.matchers:
        by_label.setdefault(m.name, []).append(m)
    for label, matchers in by_label.items():
        for m in matchers:
            if m.op != "=":
                continue
            refused = next((o for o in matchers if not o.matches({label: m.value})), None)
            if refused is not None:
                return f"{m} and {refused} cannot both hold"
    return ""


def _may_overlap(a: Rule, b: Rule) -> bool:
    """False when no single alert can match both rules (contradicting matchers or status)."""
    if "any" not in (a.status, b.status) and a.status != b.status:
        return False
    for m in a.matchers:
        if m.op == "=" and any(not o.matches({m.name: m.value}) for o in b.matchers
                               if o.name == m.name):
            return False
    for m in b.matchers:
        if m.op == "=" and any(not o.matches({m.name: m.value}) for o in a.matchers
                               if o.name == m.name):
            return False
    return True


@functools.lru_cache(maxsize=1024)  # rule files repeat a few templates
def _template_labels(source: str) -> frozenset[str]:
    """Label names a device template reads as labels.x or labels['x'] (labels.get has a
    default, so it is not counted)."""
    try:
        tree = jinja2.Environment().parse(source)
    except jinja2.TemplateSyntaxError:
        return frozenset()  # the loader reports it
    found: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and _is_labels(node.node) and node.attr != "get":
            found.add(node.attr)
        elif isinstance(node, nodes.Getitem) and _is_labels(node.node) and \
                isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            found.add(node.arg.value)
    return frozenset(found)


def _is_labels(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "labels"
