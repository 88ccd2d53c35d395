"""The decision core: alerts x rules x state x now -> one Decision per (alert, rule).

No Flask, no HTTP, no database and no clock here: the state comes in through the small State
interface and `now` is an argument. The store runs decide() inside its write transaction, so
the state it reads cannot change before the decisions are committed; `explain` runs the very
same function on a read-only state.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from bridge.audit import iso
from bridge.ladder import Rung
from bridge.payloads import Alert
from bridge.rules import Budget, Rule, RuleSet, TemplateRenderError, format_duration
from bridge.vocab import OWN_LABEL, Verdict

#: Every verdict, in the order the README lists them.
VERDICTS = tuple(Verdict)
#: The reason of an OWN_ALERT decision.
OWN_ALERT_REASON = (f"the bridge's own alert (label {OWN_LABEL}): it is for people, the"
                    " bridge never acts on it")
#: The reason of the decision that trips the storm breaker starts with this.
TRIPPED = "storm breaker tripped"

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
    #: Which step of the rule's ladder this is: 1 for the rule's own operation.
    step: int = 1

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
    return judge(prepare(alerts, rules, device_pattern=device_pattern), rules, state, now,
                 dry_run=dry_run)


#: An (alert, rule) pair on its way to the guards with the device its template named, or the
#: Decision that already ends it (no rule matched, the device cannot be used).
Prepared = tuple[Alert, Rule, str] | Decision


def prepare(alerts: Iterable[Alert], rules: RuleSet, *,
            device_pattern: re.Pattern[str] = ANY_NAME) -> list[Prepared]:
    """What decide() does before it reads any state: match each alert to the rules and render
    each matching rule's device. Nothing here depends on the state or the clock, so the store
    runs it before taking its write lock, and judge() the rest under it."""
    prepared: list[Prepared] = []
    for alert in alerts:
        if OWN_LABEL in alert.labels:
            prepared.append(Decision(alert, None, "", "", Verdict.OWN_ALERT, OWN_ALERT_REASON))
            continue
        matched = [r for r in rules.matching(alert.labels) if r.wants(alert.status)]
        if not matched:
            reason = f"no rule matches this {alert.status} alert"
            prepared.append(Decision(alert, None, "", "", Verdict.NO_MATCH, reason))
            continue
        prepared.extend(_device(alert, rule, device_pattern) for rule in matched)
    return prepared


def judge(prepared: Sequence[Prepared], rules: RuleSet, state: State, now: float, *,
          dry_run: bool) -> list[Decision]:
    """The decisions on prepare()'s pairs, each through every guard, on this state."""
    preload = getattr(state, "preload", None)
    asks = [p for p in prepared if not isinstance(p, Decision)]
    if preload is not None and asks:
        # A state that can answer many keys in one read is told them first (the store's,
        # where each question is a query): the answers are the same, asked in bulk.
        preload([(device, rule.operation, now - rule.give_up.within)
                 for _, rule, device in asks])
    tally = _Tally(set(), Counter())
    return [p if isinstance(p, Decision)
            else _judge(_Ask(p[0], p[1], rules, state, now, dry_run, p[2], tally))
            for p in prepared]


def decide_step(alert: Alert, rule: Rule, step: int, rules: RuleSet, state: State,
                now: float, *, why: str, dry_run: bool,
                device_pattern: re.Pattern[str] = ANY_NAME) -> Decision:
    """Judge step `step` of `rule`'s ladder for `alert`, through every guard, as a webhook's
    decision is judged; its reason says which step and `why` it is taken.

    Raises IndexError when the rule has no such step."""
    rung = rule.step(step)
    ask = _ask(alert, rung, rules, state, now, dry_run, device_pattern, _Tally(set(), Counter()))
    decision = ask if isinstance(ask, Decision) else _judge(ask)
    return replace(decision, step=step,
                   reason=f"step {step} of {rule.steps}: {why}: {decision.reason}")


@dataclass
class _Ask:
    """One rule asking for one operation on one device, on its way through the guards."""

    alert: Alert
    rule: Rule
    rules: RuleSet
    state: State
    now: float
    dry_run: bool
    device: str
    tally: _Tally

    @property
    def key(self) -> Key:
        return (self.device, self.rule.operation)

    def verdict(self, name: str, reason: str, until: float | None = None,
                not_before: float | None = None) -> Decision:
        return Decision(self.alert, self.rule, self.device, self.rule.operation, name, reason,
                        until, not_before)

    def groups(self) -> list[tuple[Budget, str]]:
        """The budgets this operation falls under, each with the alert's group in it."""
        return [
            (b, self.alert.labels.get(b.group_by, "") if b.group_by else "")
            for b in self.rules.budgets if b.operation in (None, self.rule.operation)
        ]


def _ask(alert: Alert, rule: Rule, rules: RuleSet, state: State, now: float, dry_run: bool,
         device_pattern: re.Pattern[str], tally: _Tally) -> _Ask | Decision:
    """Render the device; a name that cannot be used ends the matter here."""
    found = _device(alert, rule, device_pattern)
    if isinstance(found, Decision):
        return found
    return _Ask(alert, rule, rules, state, now, dry_run, found[2], tally)


def _device(alert: Alert, rule: Rule, device_pattern: re.Pattern[str]) -> Prepared:
    """The device the rule's template names for the alert, or the Decision refusing it."""
    def refused(device: str, name: str, reason: str) -> Decision:
        return Decision(alert, rule, device, rule.operation, name, reason)

    try:
        device = rule.render_device(alert.labels, alert.annotations)
    except TemplateRenderError as exc:
        return refused("", Verdict.TEMPLATE_ERROR, exc.message)
    if not device:
        return refused("", Verdict.EMPTY_DEVICE,
                       f"device template {rule.device!r} rendered an empty name")
    problem = device_name_problem(device, device_pattern)
    if problem:
        # The name may be hostile: the audit keeps a bounded, escaped form of it.
        return refused(_shown(device), Verdict.INVALID_DEVICE, problem)
    return (alert, rule, device)


# -- the guards, in order ---------------------------------------------------------------------
# Each returns the Decision that stops the operation, or None to let it pass. First what the
# alert asks for, then whether it may happen at all, then whether it may happen now.


def _duplicate(a: _Ask) -> Decision | None:
    if a.key in a.tally.keys:
        return a.verdict(Verdict.DUPLICATE, "this payload already asks for this operation")
    return None


def _cooldown(a: _Ask) -> Decision | None:
    until = a.state.cooldown_until(a.key)
    if until is not None and until > a.now:
        return a.verdict(Verdict.COOLDOWN, f"in cooldown until {iso(until)}", until)
    return None


def _dry_run(a: _Ask) -> Decision | None:
    if a.dry_run or a.rule.dry_run:
        why = "shadow mode (rule dry_run)" if a.rule.dry_run else "dry run"
        return a.verdict(Verdict.DRY_RUN, f"{why}: nothing is sent")
    return None


def _paused(a: _Ask) -> Decision | None:
    if a.state.paused:
        return a.verdict(Verdict.PAUSED, "the bridge is paused (alert-bridge resume)")
    return None


def _breaker_open(a: _Ask) -> Decision | None:
    if a.state.breaker_open:
        return a.verdict(Verdict.BREAKER_OPEN, "the storm breaker is open (alert-bridge resume)")
    return None


def _give_up(a: _Ask) -> Decision | None:
    give_up = a.rule.give_up
    done = a.state.operations_since(a.key, a.now - give_up.within)
    if done >= give_up.after:
        return a.verdict(Verdict.GAVE_UP, f"{a.rule.operation} already sent {done} times within "
                                  f"{_duration(give_up.within)}; giving up on {a.device}")
    return None


def _window_skip(a: _Ask) -> Decision | None:
    window = a.rule.window
    if window is not None and window.outside == "skip" and _opens(a) > a.now:
        return a.verdict(Verdict.OUTSIDE_WINDOW, "outside the rule's maintenance window")
    return None


def _storm(a: _Ask) -> Decision | None:
    # Counts this operation as asked for, whatever the later guards say.
    breaker = a.rules.breaker
    asked = a.state.demand_since(a.now - breaker.per) + a.tally.demand + 1
    if asked > breaker.max:
        return a.verdict(Verdict.BREAKER_OPEN, f"{TRIPPED}: {asked} operations asked for within "
                                       f"{_duration(breaker.per)}")
    return None


def _budgets(a: _Ask) -> Decision | None:
    for budget, group in a.groups():
        used = a.state.budget_used(budget, group, a.now - budget.per) + \
            a.tally.budgets[(budget.name, group)]
        if used >= budget.max:
            scope = f" for {budget.group_by}={group!r}" if budget.group_by else ""
            return a.verdict(Verdict.HELD_BY_BUDGET,
                             f"budget '{budget.name}'{scope} spent: {used} of "
                                             f"{budget.max} per {_duration(budget.per)}")
    return None


#: (name, guard) in the order decide() applies them; explain shows each one's answer.
GUARDS: tuple[tuple[str, Callable[[_Ask], Decision | None]], ...] = (
    ("duplicate", _duplicate), ("cooldown", _cooldown), ("dry_run", _dry_run),
    ("pause", _paused), ("breaker", _breaker_open), ("give_up", _give_up),
    ("window", _window_skip), ("storm", _storm), ("budgets", _budgets),
)
# What each guard's verdict does to the payload's tally: whether the operation counts as
# taken (later asks for it are duplicates) and as demand on the storm breaker.
_TAKES_KEY = frozenset({Verdict.COOLDOWN, Verdict.DRY_RUN})
_COUNTS_AS_DEMAND = ("storm", "budgets")


def _judge(a: _Ask) -> Decision:
    for name, guard in GUARDS:
        stop = guard(a)
        if stop is not None:
            if stop.verdict in _TAKES_KEY:
                a.tally.keys.add(a.key)
            if name in _COUNTS_AS_DEMAND:
                a.tally.demand += 1
            return stop
    a.tally.demand += 1
    a.tally.keys.add(a.key)
    for budget, group in a.groups():
        a.tally.budgets[(budget.name, group)] += 1
    return _queue(a)


def _opens(a: _Ask) -> float:
    window = a.rule.window
    return window.next_opening(_utc(a.now)).timestamp() if window is not None else a.now


def _queue(a: _Ask) -> Decision:
    """The operation is queued; approval and holds decide when it may be sent.

    Every time decided here is now plus rule durations (each at most ~292 years, as in
    Prometheus), never a time taken from the payload: `_matures` bounds startsAt by now.
    """
    rule, now = a.rule, a.now
    not_before = max(now, _opens(a))
    mature, note = _matures(a)
    until = max(not_before, mature) + rule.cooldown
    if rule.require_approval:
        return a.verdict(Verdict.PENDING_APPROVAL, f"{rule.risk} operation: waits for alert-bridge "
                                           f"approve{note}", until, max(not_before, mature))
    if mature > not_before and mature > now:
        return a.verdict(Verdict.HELD_MIN_AGE,
                         f"alert must fire for {_duration(rule.min_age)} first: "
                                       f"not before {iso(mature)}{note}", until, mature)
    if not_before > now:
        return a.verdict(Verdict.HELD_FOR_WINDOW, f"held until the maintenance window opens at "
                                          f"{iso(not_before)}{note}", until, not_before)
    return a.verdict(Verdict.EXECUTE, "rule matched", until, now)


def _matures(a: _Ask) -> tuple[float, str]:
    """When the alert will have fired for the rule's min_age, and a note for the reason when
    that is not counted from its startsAt."""
    starts, min_age = a.alert.starts_at, a.rule.min_age
    if starts is None or not min_age:
        return a.now, ""
    started = starts.timestamp()
    if started > a.now:
        # A sender's clock running ahead, or a pushed alert, can date an alert in the future,
        # up to the year 9999. It says nothing about how long the alert has fired, and
        # counting from it would hold the operation, and claim the device's cooldown, until
        # then. So it has fired for no time yet: min_age counts from now.
        return a.now + min_age, (f" (its startsAt {iso(started)} is in the future: counted"
                                 " from now)")
    return started + min_age, ""


#: Unicode's control characters (category Cc): U+0000-U+001F and U+007F-U+009F.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def device_name_problem(name: str, pattern: re.Pattern[str] = ANY_NAME) -> str:
    """Why `name` cannot be a device name, or "" when it can.

    The client percent-encodes names as one path segment, but "." and ".." are dot segments
    that URL handling removes, and control characters are never part of a real inventory
    name; beyond that, the configured pattern (BRIDGE_DEVICE_PATTERN) decides.
    """
    if name in (".", ".."):
        return f"device name {name!r} is a path dot segment"
    if _CONTROL.search(name):
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
    counts: dict[str, int] = dict.fromkeys(VERDICTS, 0)
    for d in decisions:
        counts[d.verdict] += 1
    return {k: v for k, v in counts.items() if v}


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


_duration = format_duration


# -- explain: the same judgement, shown guard by guard ----------------------------------------

_PASSED = {
    "duplicate": "first ask for it in this payload", "cooldown": "no cooldown running",
    "dry_run": "live", "pause": "not paused", "breaker": "storm breaker closed",
    "give_up": "below the give-up count", "window": "no window to skip",
    "storm": "below the storm breaker's threshold", "budgets": "within every budget",
}


@dataclass(frozen=True)
class GuardCheck:
    """One guard's answer for one (alert, rule), judged on its own."""

    guard: str
    passed: bool
    verdict: str
    reason: str


@dataclass(frozen=True)
class RuleExplanation:
    rule: Rule
    matched: bool
    why_not: str  # for a rule that does not match: the status or the first failing matcher
    decision: Decision | None  # what decide() decided, for a rule that matches
    guards: tuple[GuardCheck, ...]

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"rule": self.rule.name, "matched": self.matched}
        if not self.matched:
            doc["why_not"] = self.why_not
        if self.decision is not None:
            d = self.decision
            doc.update(device=d.device, operation=d.operation, verdict=d.verdict,
                       reason=d.reason)
            if d.until is not None:
                doc["until"] = iso(d.until)
            if d.not_before is not None and d.verdict != Verdict.EXECUTE:
                doc["not_before"] = iso(d.not_before)
            doc["guards"] = [
                {"guard": g.guard, "passed": g.passed, "verdict": g.verdict, "reason": g.reason}
                for g in self.guards
            ]
        return doc


def explain(alerts: Iterable[Alert], rules: RuleSet, state: State, now: float, *,
            dry_run: bool, device_pattern: re.Pattern[str] = ANY_NAME,
            ) -> list[tuple[Alert, list[RuleExplanation]]]:
    """For each alert, every rule: why it does not match, or its decision and every guard's."""
    alerts = list(alerts)
    decisions = decide(alerts, rules, state, now, dry_run=dry_run,
                       device_pattern=device_pattern)
    out = []
    for alert in alerts:
        explained = []
        for rule in rules.rules:
            if OWN_LABEL in alert.labels:
                explained.append(RuleExplanation(rule, False, OWN_ALERT_REASON, None, ()))
                continue
            if not rule.wants(alert.status):
                why = f"acts on {rule.status} alerts; this one is {alert.status}"
                explained.append(RuleExplanation(rule, False, why, None, ()))
                continue
            failed = rule.failed_matcher(alert.labels)
            if failed is not None:
                value = alert.labels.get(failed.name, "")
                why = f"{failed} does not hold ({failed.name}={value!r})"
                explained.append(RuleExplanation(rule, False, why, None, ()))
                continue
            decision = next(d for d in decisions if d.alert is alert and d.rule is rule)
            ask = _ask(alert, rule, rules, state, now, dry_run, device_pattern,
                       _Tally(set(), Counter()))
            checks: tuple[GuardCheck, ...] = ()
            if isinstance(ask, _Ask):
                checks = tuple(
                    GuardCheck(name, stop is None, stop.verdict if stop else "pass",
                               stop.reason if stop else _PASSED[name])
                    for name, stop in ((name, guard(ask)) for name, guard in GUARDS)
                )
            explained.append(RuleExplanation(rule, True, "", decision, checks))
        out.append((alert, explained))
    return out


def explanation_json(results: list[tuple[Alert, list[RuleExplanation]]],
                     rungs: Sequence[Rung] = ()) -> list[object]:
    """The explanation as JSON; `rungs` (the store's ladders in progress) add, to each rule
    that has one on the alert, the step on its way or being verified and the one to follow."""
    def rule_json(alert: Alert, r: RuleExplanation) -> dict[str, object]:
        doc = r.to_json()
        ladder = [g.to_json(r.rule) for g in rungs if g.of(r.rule, alert.fingerprint)]
        return {**doc, "ladder": ladder} if ladder else doc

    return [
        {"fingerprint": alert.fingerprint, "alertname": alert.alertname, "status": alert.status,
         "labels": dict(alert.labels), "rules": [rule_json(alert, r) for r in explained]}
        for alert, explained in results
    ]


class EmptyState:
    """The state of a bridge that has never acted: for explaining without a state file."""

    paused = False
    breaker_open = False

    def cooldown_until(self, key: Key) -> float | None:
        return None

    def operations_since(self, key: Key, since: float) -> int:
        return 0

    def budget_used(self, budget: Budget, group: str, since: float) -> int:
        return 0

    def demand_since(self, since: float) -> int:
        return 0
