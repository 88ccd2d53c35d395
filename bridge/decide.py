"""The decision core: alerts x rules x state x now -> one Decision per (alert, rule).

No Flask, no HTTP, no database and no clock here: the state comes in through the small State
interface and `now` is an argument. The store runs decide() inside its write transaction, so
the state it reads cannot change before the decisions are committed; `explain` runs the very
same function on a read-only state.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from bridge.audit import iso
from bridge.payloads import Alert
from bridge.rules import Budget, Rule, RuleSet, TemplateRenderError, format_duration

# Verdicts that queue an operation (all claim the cooldown and spend budget).
EXECUTE = "execute"
PENDING_APPROVAL = "pending_approval"
HELD_FOR_WINDOW = "held_for_window"
HELD_MIN_AGE = "held_min_age"
# Verdicts that do not, each with its reason.
COOLDOWN = "cooldown"
DRY_RUN = "dry_run"
DUPLICATE = "duplicate"
PAUSED = "paused"
BREAKER_OPEN = "breaker_open"
GAVE_UP = "gave_up"
OUTSIDE_WINDOW = "outside_window"
HELD_BY_BUDGET = "held_by_budget"
TEMPLATE_ERROR = "template_error"
EMPTY_DEVICE = "empty_device"
INVALID_DEVICE = "invalid_device"
NO_MATCH = "no_match"

QUEUING = (EXECUTE, PENDING_APPROVAL, HELD_FOR_WINDOW, HELD_MIN_AGE)
VERDICTS = (
    *QUEUING, COOLDOWN, DRY_RUN, DUPLICATE, PAUSED, BREAKER_OPEN, GAVE_UP, OUTSIDE_WINDOW,
    HELD_BY_BUDGET, TEMPLATE_ERROR, EMPTY_DEVICE, INVALID_DEVICE, NO_MATCH,
)
#: The reason of the decision that trips the storm breaker starts with this.
TRIPPED = "storm breaker tripped"
#: Decisions that count as "operations asked for" towards the storm breaker.
DEMAND = (*QUEUING, HELD_BY_BUDGET, BREAKER_OPEN)

#: Without a configured pattern every name passes (only dot segments and control characters
#: are refused); the bridge itself always passes the configured BRIDGE_DEVICE_PATTERN.
ANY_NAME = re.compile(r".+", re.DOTALL)

# A (device, operation) pair: the unit that cooldowns, claims and deduplication work on.
Key = tuple[str, str]


class State(Protocol):
    """What decide() may know about the past; the store provides it, tests fake it."""

    @property
    def paused(self) -> bool: ...
    @property
    def breaker_open(self) -> bool: ...
    def cooldown_until(self, key: Key) -> float | None: ...
    def operations_since(self, key: Key, since: float) -> int: ...
    def budget_used(self, budget: Budget, group: str, since: float) -> int: ...
    def demand_since(self, since: float) -> int: ...


@dataclass(frozen=True)
class Decision:
    """What the bridge decided for one alert under one rule (or under no rule at all)."""

    alert: Alert
    rule: Rule | None
    device: str
    operation: str
    verdict: str
    reason: str
    #: For queuing verdicts: the end of the cooldown the operation claims. For COOLDOWN: when
    #: the running cooldown ends. Otherwise None. Epoch seconds.
    until: float | None = None
    #: For held verdicts: the operation is not sent before this time.
    not_before: float | None = None

    @property
    def key(self) -> Key:
        return (self.device, self.operation)


@dataclass
class _Tally:
    """What this payload has already asked for, on top of the stored state."""

    keys: set[Key]
    budgets: Counter[tuple[str, str]]
    demand: int = 0


def decide(alerts: Iterable[Alert], rules: RuleSet, state: State, now: float, *,
           dry_run: bool, device_pattern: re.Pattern[str] = ANY_NAME) -> list[Decision]:
    """Judge every alert on its own labels against every rule, and every guard in turn.

    A rendered device name must match `device_pattern` in full: labels are untrusted input.
    """
    decisions: list[Decision] = []
    tally = _Tally(set(), Counter())
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
            decisions.append(
                _judge(alert, rule, rules, state, now, dry_run, device_pattern, tally))
    return decisions


def _judge(alert: Alert, rule: Rule, rules: RuleSet, state: State, now: float, dry_run: bool,
           device_pattern: re.Pattern[str], tally: _Tally) -> Decision:
    def verdict(device: str, name: str, reason: str, until: float | None = None,
                not_before: float | None = None) -> Decision:
        return Decision(alert, rule, device, rule.operation, name, reason, until, not_before)

    # Guards in order: what the alert asks for, then whether it may happen at all, then
    # whether it may happen now. The first guard that says no gives the verdict.
    try:
        device = rule.render_device(alert.labels, alert.annotations)
    except TemplateRenderError as exc:
        return verdict("", TEMPLATE_ERROR, exc.message)
    if not device:
        return verdict("", EMPTY_DEVICE, f"device template {rule.device!r} rendered an empty name")
    problem = device_name_problem(device, device_pattern)
    if problem:
        # The name may be hostile: the audit keeps a bounded, escaped form of it.
        return verdict(_shown(device), INVALID_DEVICE, problem)
    key = (device, rule.operation)
    if key in tally.keys:
        return verdict(device, DUPLICATE, "this payload already asks for this operation")
    cooldown = state.cooldown_until(key)
    if cooldown is not None and cooldown > now:
        tally.keys.add(key)
        return verdict(device, COOLDOWN, f"in cooldown until {iso(cooldown)}", cooldown)
    if dry_run or rule.dry_run:
        tally.keys.add(key)
        why = "shadow mode (rule dry_run)" if rule.dry_run else "dry run"
        return verdict(device, DRY_RUN, f"{why}: nothing is sent")
    if state.paused:
        return verdict(device, PAUSED, "the bridge is paused (alert-bridge resume)")
    if state.breaker_open:
        return verdict(device, BREAKER_OPEN, "the storm breaker is open (alert-bridge resume)")
    give_up = rule.give_up
    done = state.operations_since(key, now - give_up.within)
    if done >= give_up.after:
        return verdict(device, GAVE_UP, f"{rule.operation} already sent {done} times within "
                                        f"{_duration(give_up.within)}; giving up on {device}")
    window = rule.window
    opens = None
    if window is not None:
        opens = window.next_opening(_utc(now)).timestamp()
        if opens > now and window.outside == "skip":
            return verdict(device, OUTSIDE_WINDOW, "outside the rule's maintenance window")
    # From here on the operation counts as asked for: a storm of them trips the breaker.
    breaker = rules.breaker
    tally.demand += 1
    asked = state.demand_since(now - breaker.per) + tally.demand
    if asked > breaker.max:
        return verdict(device, BREAKER_OPEN, f"{TRIPPED}: {asked} operations asked "
                                             f"for within {_duration(breaker.per)}")
    for budget in rules.budgets:
        if budget.operation not in (None, rule.operation):
            continue
        group = alert.labels.get(budget.group_by, "") if budget.group_by else ""
        used = state.budget_used(budget, group, now - budget.per) + \
            tally.budgets[(budget.name, group)]
        if used >= budget.max:
            scope = f" for {budget.group_by}={group!r}" if budget.group_by else ""
            return verdict(device, HELD_BY_BUDGET, f"budget '{budget.name}'{scope} spent: "
                                                   f"{used} of {budget.max} per "
                                                   f"{_duration(budget.per)}")
    for budget in rules.budgets:
        if budget.operation in (None, rule.operation):
            group = alert.labels.get(budget.group_by, "") if budget.group_by else ""
            tally.budgets[(budget.name, group)] += 1
    tally.keys.add(key)
    # The operation is queued now; holds decide when it may be sent.
    not_before = now
    if opens is not None and opens > now:
        not_before = opens
    mature = (alert.starts_at.timestamp() + rule.min_age) if alert.starts_at and rule.min_age \
        else now
    until = max(not_before, mature) + rule.cooldown
    if rule.require_approval:
        return verdict(device, PENDING_APPROVAL,
                       f"{rule.risk} operation: waits for alert-bridge approve", until,
                       max(not_before, mature))
    if mature > not_before and mature > now:
        return verdict(device, HELD_MIN_AGE, f"alert must fire for {_duration(rule.min_age)} "
                                             f"first: not before {iso(mature)}", until, mature)
    if not_before > now:
        return verdict(device, HELD_FOR_WINDOW, f"held until the maintenance window opens at "
                                                f"{iso(not_before)}", until, not_before)
    return verdict(device, EXECUTE, "rule matched", until, now)


def device_name_problem(name: str, pattern: re.Pattern[str] = ANY_NAME) -> str:
    """Why `name` cannot be a device name, or "" when it can.

    The client percent-encodes names as one path segment, but "." and ".." are dot segments
    that URL handling removes, and control characters are never part of a real inventory
    name; beyond that, the configured pattern (BRIDGE_DEVICE_PATTERN) decides.
    """
    if name in (".", ".."):
        return f"device name {name!r} is a path dot segment"
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        return "device name contains control characters"
    if not pattern.fullmatch(name):
        return f"device name '{_shown(name)}' does not match the device pattern {pattern.pattern!r}"
    return ""


def _shown(name: str, limit: int = 64) -> str:
    """A hostile name as it may be shown: control characters escaped, length bounded."""
    text = name.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + f"...({len(name)} chars)"


def summarize(decisions: Iterable[Decision]) -> dict[str, int]:
    """Count decisions per verdict, in VERDICTS order, leaving out zeros."""
    counts = dict.fromkeys(VERDICTS, 0)
    for d in decisions:
        counts[d.verdict] += 1
    return {k: v for k, v in counts.items() if v}


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


_duration = format_duration
