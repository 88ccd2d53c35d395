"""The decision core: alerts x rules x cooldown snapshot x now -> one Decision per (alert, rule).

Pure on purpose: no Flask, no HTTP, no database, no clock. Everything it needs is an argument,
so it is cheap to test and `explain` can run exactly the same code without side effects.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bridge.audit import iso
from bridge.payloads import Alert
from bridge.rules import Rule, RuleSet, TemplateRenderError

# Verdicts. Only EXECUTE leads to an API call; every other verdict says why not.
EXECUTE = "execute"
COOLDOWN = "cooldown"
DRY_RUN = "dry_run"
DUPLICATE = "duplicate"
TEMPLATE_ERROR = "template_error"
EMPTY_DEVICE = "empty_device"
INVALID_DEVICE = "invalid_device"
NO_MATCH = "no_match"

VERDICTS = (
    EXECUTE, COOLDOWN, DRY_RUN, DUPLICATE, TEMPLATE_ERROR, EMPTY_DEVICE, INVALID_DEVICE, NO_MATCH,
)

# A (device, operation) pair: the unit that cooldowns, claims and deduplication work on.
Key = tuple[str, str]


@dataclass(frozen=True)
class Decision:
    """What the bridge decided for one alert under one rule (or under no rule at all)."""

    alert: Alert
    rule: Rule | None
    device: str
    operation: str
    verdict: str
    reason: str
    #: For EXECUTE: the end of the cooldown this action claims. For COOLDOWN: when the
    #: running cooldown ends. Otherwise None. Epoch seconds.
    until: float | None = None

    @property
    def key(self) -> Key:
        return (self.device, self.operation)


def decide(
    alerts: Iterable[Alert],
    rules: RuleSet,
    cooldowns: Mapping[Key, float],
    now: float,
    *,
    dry_run: bool,
) -> list[Decision]:
    """Judge every alert on its own labels against every rule.

    `cooldowns` maps (device, operation) to the epoch second its cooldown ends; entries in the
    past are ignored. Every matching rule acts, but one payload asks for a given
    (device, operation) at most once: later requests for the same pair are DUPLICATE.
    """
    decisions: list[Decision] = []
    taken: set[Key] = set()
    for alert in alerts:
        matched = [
            r for r in rules.candidates(alert.labels)
            if r.wants(alert.status) and r.matches(alert.labels)
        ]
        if not matched:
            reason = f"no rule matches this {alert.status} alert"
            decisions.append(Decision(alert, None, "", "", NO_MATCH, reason))
            continue
        for rule in matched:
            decision = _judge(alert, rule, cooldowns, now, dry_run, taken)
            if decision.verdict in (EXECUTE, DRY_RUN, COOLDOWN):
                taken.add(decision.key)
            decisions.append(decision)
    return decisions


def _judge(
    alert: Alert,
    rule: Rule,
    cooldowns: Mapping[Key, float],
    now: float,
    dry_run: bool,
    taken: set[Key],
) -> Decision:
    def verdict(device: str, name: str, reason: str, until: float | None = None) -> Decision:
        return Decision(alert, rule, device, rule.operation, name, reason, until)

    try:
        device = rule.render_device(alert.labels, alert.annotations)
    except TemplateRenderError as exc:
        return verdict("", TEMPLATE_ERROR, exc.message)
    if not device:
        return verdict("", EMPTY_DEVICE, f"device template {rule.device!r} rendered an empty name")
    problem = device_name_problem(device)
    if problem:
        return verdict(device, INVALID_DEVICE, problem)
    if (device, rule.operation) in taken:
        return verdict(device, DUPLICATE, "this payload already asks for this operation")
    until = cooldowns.get((device, rule.operation))
    if until is not None and until > now:
        return verdict(device, COOLDOWN, f"in cooldown until {iso(until)}", until)
    if dry_run:
        return verdict(device, DRY_RUN, "dry run: nothing is sent")
    return verdict(device, EXECUTE, "rule matched", now + rule.cooldown)


def device_name_problem(name: str) -> str:
    """Why `name` cannot be a device name, or "" when it can.

    The client percent-encodes names as one path segment, but "." and ".." are dot segments
    that URL handling removes, and control characters are never part of a real inventory name.
    """
    if name in (".", ".."):
        return f"device name {name!r} is a path dot segment"
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        return "device name contains control characters"
    return ""


def summarize(decisions: Iterable[Decision]) -> dict[str, int]:
    """Count decisions per verdict, in VERDICTS order, leaving out zeros."""
    counts = dict.fromkeys(VERDICTS, 0)
    for d in decisions:
        counts[d.verdict] += 1
    return {k: v for k, v in counts.items() if v}
