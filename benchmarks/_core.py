"""Section 3: the decision core alone, bridge.decide.decide, without HTTP or a store."""

from __future__ import annotations

import inspect
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from _gen import alert_labels, alertmanager_payload, rules_yaml


class EmptyState:
    """A past with nothing in it, for decide() versions that take a State object: no cooldowns,
    no operations, no budgets used, not paused, breaker closed."""

    paused = False
    breaker_open = False

    def cooldown_until(self, key: object) -> None:
        return None

    def operations_since(self, key: object, since: float) -> int:
        return 0

    def budget_used(self, budget: object, group: str, since: float) -> int:
        return 0

    def demand_since(self, since: float) -> int:
        return 0


def empty_state() -> Any:
    """What decide() takes as its third argument for "no cooldowns, nothing happened yet":
    {} for the version that takes a cooldowns mapping, an EmptyState for a State object."""
    import bridge.decide

    if hasattr(bridge.decide, "State"):
        wanted = {
            name for name, _ in inspect.getmembers(bridge.decide.State)
            if not name.startswith("_")
        }
        missing = wanted - {n for n in dir(EmptyState) if not n.startswith("_")}
        if missing:
            raise RuntimeError(
                "bridge.decide.State has members benchmarks/_core.py EmptyState lacks: "
                + ", ".join(sorted(missing))
            )
        return EmptyState()
    return {}


def make_alerts(count: int, rules: int, by: str) -> tuple[Any, ...]:
    """`count` alerts spread over the rules (alert i matches rule i % rules), parsed from an
    Alertmanager payload exactly as a webhook's would be."""
    from bridge import payloads

    body = alertmanager_payload([alert_labels(i, rules, by=by) for i in range(count)])
    return payloads.parse(body, "alertmanager").alerts


@dataclass
class CoreResult:
    by: str
    rules: int
    alerts: int
    per_alert: float | None  # seconds; None when skipped
    note: str = ""


def time_call(fn: Callable[[], object], *, min_batch: float, batches: int,
              max_total: float) -> tuple[float, object]:
    """Lowest CPU seconds per call over up to `batches` batches of at least `min_batch` CPU
    seconds each (fewer when `max_total` would be exceeded), and the first call's result.

    CPU time of this process, not wall time: on a shared machine, time spent waiting for a
    CPU while other processes run is not the code's cost. The process runs nothing else now.
    """
    t0 = time.process_time()
    result = fn()
    first = time.process_time() - t0
    loops = max(1, int(min_batch / max(first, 1e-7)))
    best = first
    spent = first
    for _ in range(batches):
        if spent + first * loops > max_total:
            break
        t0 = time.process_time()
        for _ in range(loops):
            fn()
        elapsed = time.process_time() - t0
        spent += elapsed
        best = min(best, elapsed / loops)
    return best, result


def run_core(rule_counts: Sequence[int], alert_counts: Sequence[int], *, budget: float,
             log: Callable[[str], None], keys: Sequence[str] = ("alertname", "team"),
             passes: int = 1) -> tuple[list[CoreResult], dict[tuple[str, int], float]]:
    """Time decide() per alert over the grid, for rules keyed each way of `keys` (see
    _gen.KEYS); returns the results and the rules' parse times (CPU seconds).

    The grid is timed `passes` times, rule counts in turn ascending and descending, and each
    combination keeps its lowest cost: on a shared machine, a busy minute then weighs on no
    one rule count alone. A combination whose estimated single call (from the smaller
    payload's cost per alert) exceeds `budget` seconds is skipped, and says so.
    """
    from bridge.decide import decide
    from bridge.rules import parse_rules

    state = empty_state()
    now = time.time()
    # Warm up (imports, Jinja's caches, the allocator) so the first row is not penalised.
    warm = parse_rules(rules_yaml(10, by="alertname"), "warm-up.yaml")
    warm_alerts = make_alerts(100, 10, "alertname")
    for _ in range(20):
        decide(warm_alerts, warm, state, now, dry_run=True)
    best: dict[tuple[str, int, int], CoreResult] = {}
    parse_times: dict[tuple[str, int], float] = {}
    rulesets: dict[tuple[str, int], Any] = {}
    for number in range(passes):
        for by in keys:
            for n_rules in rule_counts if number % 2 == 0 else rule_counts[::-1]:
                if (by, n_rules) not in rulesets:
                    t0 = time.process_time()
                    rulesets[(by, n_rules)] = parse_rules(rules_yaml(n_rules, by=by),
                                                          f"bench-{by}-{n_rules}.yaml")
                    parse_times[(by, n_rules)] = time.process_time() - t0
                ruleset = rulesets[(by, n_rules)]
                per_alert_seen: float | None = None
                for n_alerts in alert_counts:
                    key = (by, n_rules, n_alerts)
                    if key in best and best[key].per_alert is None:
                        continue  # skipped
                    if per_alert_seen is not None and per_alert_seen * n_alerts > budget:
                        best.setdefault(key, CoreResult(
                            by, n_rules, n_alerts, None,
                            f"skipped: one call would take ~{per_alert_seen * n_alerts:.0f} s",
                        ))
                        continue
                    per_alert = _per_alert(decide, ruleset, state, now, key, budget)
                    per_alert_seen = per_alert
                    if key not in best or per_alert < (best[key].per_alert or 0):
                        best[key] = CoreResult(by, n_rules, n_alerts, per_alert)
                    log(f"  decide {by:10} rules={n_rules:<6} alerts={n_alerts:<6} "
                        f"{per_alert * 1e6:9.1f} µs/alert (pass {number + 1})")
    results = list(best.values())
    sys.stderr.flush()
    return results, parse_times


def _per_alert(decide: Callable[..., Any], ruleset: Any, state: Any, now: float,
               key: tuple[str, int, int], budget: float) -> float:
    """CPU seconds per alert of decide() on a payload of alerts that each match one rule."""
    by, n_rules, n_alerts = key
    alerts = make_alerts(n_alerts, n_rules, by)

    def call() -> Any:
        return decide(alerts, ruleset, state, now, dry_run=True)

    per_call, decisions = time_call(call, min_batch=0.1, batches=7, max_total=budget * 1.5)
    got = Counter(d.verdict for d in decisions)
    if got != Counter({"dry_run": n_alerts}):
        raise RuntimeError(f"{by}/{n_rules}/{n_alerts}: unexpected verdicts {got}")
    return per_call / n_alerts
