"""The store's contract, stated once against the Store protocol and run on every engine
(the `store` fixture: one parameter per engine); then what only SQLite has: its schema
versions on real files, writers that wait their turn within a bound, a small write-ahead log."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.audit import AuditQuery, Delivery
from bridge.client import CallResult
from bridge.decide import decide
from bridge.ladder import Concluded, Rung
from bridge.loop import Judgement
from bridge.notices import Notice
from bridge.payloads import Alert
from bridge.rules import RuleSet, parse_rules
from bridge.store import (
    REPLICA_GONE,
    SCHEMA_VERSION,
    WAL_LIMIT,
    AskingAlert,
    Claim,
    DeviceSeen,
    Operation,
    Recorded,
    SqliteStore,
    Store,
    StoreError,
    open_store,
)
from bridge.store.sqlite import _wal_mode
from bridge.vocab import Event, Flag, OpState, Verdict
from tests import helpers, postgres
from tests.conftest import Bridge
from tests.helpers import BridgeProcess, free_port, payload, payload_json, wait_until

NOW = 1_800_000_000.0
MAX_AGE = 600.0
APPROVAL_TIMEOUT = 1800.0
DELIVERY = Delivery("req-1", "alertmanager", "bridge", "{}:{}", "v1")

#: One rule per kind of operation the contract needs; no budgets, a wide breaker.
RULES = """\
defaults: {cooldown: 1h, give_up: {after: 2, within: 1d}}
budgets: []
breaker: {max: 1000, per: 5m}
rules:
  - name: reboot-down
    match: ['alertname = "DeviceDown"']
    device: "{{ labels.device }}"
    operation: reboot
  - name: sync-drift
    match: ['alertname = "Drift"']
    device: "{{ labels.device }}"
    operation: sync
    status: any
    min_age: 5m
  - name: reset-dead
    match: ['alertname = "Dead"']
    device: "{{ labels.device }}"
    operation: factory
    allow_destructive: true
"""


@pytest.fixture
def replicas(state_location: str) -> Iterator[Callable[[], Store]]:
    """Opens the state once more, as another process (or replica) would; closed at the end."""
    opened: list[Store] = []

    def open_one() -> Store:
        # As long as a served bridge waits (BRIDGE_STATE_TIMEOUT): the concurrency tests run
        # ten writers at once, and a loaded machine must not turn a wait into a failure.
        opened.append(open_store(state_location, timeout=30))
        return opened[-1]

    yield open_one
    for one in opened:
        one.close()


@pytest.fixture
def store(replicas: Callable[[], Store]) -> Store:
    """A new, empty store on each engine."""
    return replicas()


def alert(device: str, alertname: str = "DeviceDown", *, status: str = "firing",
          starts_at: float | None = None, annotations: dict[str, str] | None = None,
          ends_at: float | None = None, **labels: str) -> Alert:
    def moment(ts: float | None) -> datetime | None:
        return datetime.fromtimestamp(ts, UTC) if ts is not None else None

    return Alert(status, {"alertname": alertname, "device": device, **labels},
                 annotations or {}, moment(starts_at), moment(ends_at),
                 f"{alertname}-{device}", "")


def deliver(store: Store, *alerts: Alert, now: float = NOW, rules: str | RuleSet = RULES,
            answer: Callable[[list[Recorded]], Any] = lambda recorded: recorded) -> Any:
    """What a webhook does: judge the alerts and commit, in one transaction."""
    ruleset = parse_rules(rules) if isinstance(rules, str) else rules
    return store.record(
        DELIVERY, lambda state: decide(alerts, ruleset, state, now, dry_run=False), now,
        max_age=MAX_AGE, approval_timeout=APPROVAL_TIMEOUT, answer=answer,
    )


def verdicts(recorded: list[Recorded]) -> list[str]:
    return [r.decision.verdict for r in recorded]


def claim(store: Store, now: float = NOW, *, concurrency: int = 4, spacing: float = 0.0,
          lease: float = 60.0) -> Claim:
    return store.claim(now, concurrency=concurrency, spacing=spacing, lease=lease)


def claimed(store: Store, now: float = NOW, **limits: Any) -> Operation:
    op = claim(store, now, **limits).operation
    assert op is not None, "nothing to claim"
    return op


def result(outcome: str = "succeeded", kind: str = "ok", status: int | None = 200) -> CallResult:
    return CallResult(outcome, kind, status, "exec-1" if outcome == "succeeded" else None,
                      "" if outcome == "succeeded" else "boom", True, 0.1)


def outcomes(store: Store) -> list[tuple[str, str, str]]:
    """(device, outcome, reason) of every outcome record, oldest first."""
    return [(r.device, r.outcome, r.reason)
            for r in store.audit(AuditQuery(limit=None)) if r.event == Event.OUTCOME]


# -- claims: one operation per (device, operation) per cooldown ----------------------------


def test_a_cooldown_is_claimed_once_and_listed(store: Store) -> None:
    first = deliver(store, alert("r1"), alert("r2"))
    assert verdicts(first) == [Verdict.EXECUTE, Verdict.EXECUTE]
    assert all(r.operation_id for r in first)
    again = deliver(store, alert("r1"), now=NOW + 60)
    assert verdicts(again) == [Verdict.COOLDOWN]
    assert again[0].decision.until == NOW + 3600
    assert store.active_cooldowns(NOW) == {("r1", "reboot"): NOW + 3600,
                                           ("r2", "reboot"): NOW + 3600}
    listed = store.cooldowns(NOW, device="r1")
    assert [(c.device, c.operation, c.until, c.rule, c.operation_id) for c in listed] == [
        ("r1", "reboot", NOW + 3600, "reboot-down", first[0].operation_id)]
    assert [c.device for c in store.cooldowns(NOW)] == ["r1", "r2"]
    assert store.cooldowns(NOW + 3600) == [] and store.active_cooldowns(NOW + 3600) == {}


def test_a_failing_answer_commits_nothing(store: Store) -> None:
    def fail(_: list[Recorded]) -> None:
        raise RuntimeError("the answer could not be built")

    with pytest.raises(RuntimeError):
        deliver(store, alert("r1"), answer=fail)
    assert store.active_cooldowns(NOW) == {}
    assert store.audit(AuditQuery(limit=None)) == []
    assert verdicts(deliver(store, alert("r1"))) == [Verdict.EXECUTE]


def test_read_state_judges_without_writing(store: Store) -> None:
    deliver(store, alert("r1"))
    ruleset = parse_rules(RULES)
    judged = store.read_state(
        lambda state: decide([alert("r1"), alert("r2")], ruleset, state, NOW, dry_run=False))
    assert [d.verdict for d in judged] == [Verdict.COOLDOWN, Verdict.EXECUTE]
    assert list(store.active_cooldowns(NOW)) == [("r1", "reboot")]


# -- the queue: queued -> sending -> an end, or queued again -------------------------------


def test_claims_take_the_oldest_due_operation_and_mark_it_sending(store: Store) -> None:
    ids = [r.operation_id for r in deliver(store, alert("r1"), alert("r2"))]
    assert store.queue_depth(NOW) == {"pending_approval": 0, "queued": 2, "sending": 0}
    first = claimed(store)
    assert (first.id, first.device, first.state, first.attempts) == (
        ids[0], "r1", OpState.SENDING, 1)
    assert (first.rule, first.request_id, first.rules_version) == ("reboot-down", "req-1", "v1")
    assert claimed(store).id == ids[1]
    assert claim(store) == Claim(None, 0.0)
    assert store.queue_depth(NOW) == {"pending_approval": 0, "queued": 0, "sending": 2}


def test_at_most_concurrency_operations_are_sending(store: Store) -> None:
    deliver(store, alert("r1"), alert("r2"))
    op = claimed(store, concurrency=1)
    assert claim(store, concurrency=1).operation is None
    store.finish(op, result(), NOW)
    assert claimed(store, concurrency=1).device == "r2"


def test_never_two_operations_on_one_device_at_once(store: Store) -> None:
    reset = deliver(store, alert("r1"), alert("r1", "Dead"), alert("r2"))[1].operation_id
    store.settle(reset, True, "ann", NOW, max_age=MAX_AGE, release_until=NOW)
    first = claimed(store)
    assert (first.device, first.operation) == ("r1", "reboot")
    assert claimed(store).device == "r2"  # r1's reset waits behind its reboot
    assert claim(store).operation is None
    store.finish(first, result(), NOW)
    then = claimed(store)
    assert (then.device, then.operation) == ("r1", "factory")


def test_the_rate_limit_spaces_the_claims(store: Store) -> None:
    deliver(store, alert("r1"), alert("r2"))
    claimed(store, spacing=2.0)
    waiting = claim(store, NOW + 0.5, spacing=2.0)
    assert (waiting.operation, waiting.wait) == (None, 1.5)
    assert claimed(store, NOW + 2.0, spacing=2.0).device == "r2"


def test_a_success_ends_the_operation_and_keeps_its_cooldown(store: Store) -> None:
    deliver(store, alert("r1"))
    op = claimed(store)
    store.finish(op, result(), NOW + 1)
    assert store.queue_depth(NOW) == {"pending_approval": 0, "queued": 0, "sending": 0}
    assert outcomes(store) == [("r1", "succeeded", "API call")]
    (record,) = store.audit(AuditQuery(outcome="succeeded"))
    assert (record.execution_id, record.status_code, record.attempt, record.operation_id) == (
        "exec-1", 200, 1, op.id)
    assert store.active_cooldowns(NOW + 2) == {("r1", "reboot"): NOW + 3600}
    assert store.outcome_counts(NOW) == {"succeeded": 1}


def test_a_failure_ends_the_operation_and_shortens_its_cooldown(store: Store) -> None:
    deliver(store, alert("r1"))
    op = claimed(store)
    store.finish(op, result("failed", "rejected", 400), NOW + 1, release_until=NOW + 300)
    assert outcomes(store) == [("r1", "failed", "rejected")]
    assert store.active_cooldowns(NOW + 2) == {("r1", "reboot"): NOW + 300}
    # Never longer than it was.
    deliver(store, alert("r2"))
    store.finish(claimed(store), result("failed", "rejected", 400), NOW, release_until=NOW + 9e9)
    assert store.active_cooldowns(NOW)[("r2", "reboot")] == NOW + 3600


def test_a_retry_queues_the_operation_again_not_before_its_time(store: Store) -> None:
    deliver(store, alert("r1"))
    op = claimed(store)
    store.finish(op, result("failed", "server_error", 503), NOW + 1, retry_at=NOW + 10)
    (attempt,) = [r for r in store.audit(AuditQuery(limit=None)) if r.event == Event.ATTEMPT]
    assert attempt.reason.startswith("server_error; next attempt at ")
    assert store.queue_depth(NOW + 1)["queued"] == 1
    assert claim(store, NOW + 9).operation is None
    again = claimed(store, NOW + 10)
    assert (again.id, again.attempts) == (op.id, 2)


def test_an_expired_lease_ends_unknown_and_a_late_answer_is_kept_beside_it(store: Store) -> None:
    deliver(store, alert("r1"))
    op = claimed(store, lease=30.0)
    assert store.end_stale(NOW + 30, NOW + 300) == []  # not yet past its lease
    (lost,) = store.end_stale(NOW + 31, NOW + 300)
    assert (lost.id, lost.state) == (op.id, OpState.UNKNOWN)
    assert outcomes(store) == [("r1", "unknown", "lost_in_flight")]
    assert store.active_cooldowns(NOW + 31) == {("r1", "reboot"): NOW + 3600}  # kept: it may
    store.finish(op, result(), NOW + 40)  # ... have reached the device: the answer says so
    late = store.audit(AuditQuery(limit=1))[0]
    assert (late.event, late.outcome, late.reason) == (
        Event.ATTEMPT, "succeeded", "ok; arrived after the lease ran out")
    assert outcomes(store) == [("r1", "unknown", "lost_in_flight")]
    assert claim(store, NOW + 41).operation is None


def test_an_operation_past_its_maximum_age_is_never_sent_and_expires(store: Store) -> None:
    deliver(store, alert("r1"))
    too_late = NOW + MAX_AGE + 1
    assert claim(store, too_late).operation is None  # before any sweep
    assert store.queue_depth(too_late)["queued"] == 0
    (ended,) = store.end_stale(too_late, too_late + 60)
    assert ended.state == OpState.EXPIRED
    assert outcomes(store) == [("r1", "expired", "max_age")]
    assert store.active_cooldowns(too_late) == {("r1", "reboot"): too_late + 60}


# -- holds -----------------------------------------------------------------------------------


def test_a_held_operation_waits_for_min_age_and_a_resolve_cancels_it(store: Store) -> None:
    (held,) = deliver(store, alert("s1", "Drift", starts_at=NOW - 60))
    assert held.decision.verdict == Verdict.HELD_MIN_AGE
    assert claim(store, NOW + 239).operation is None
    assert claim(store, NOW + 240).operation is not None  # 5 minutes after it started
    deliver(store, alert("s2", "Drift", starts_at=NOW))
    deliver(store, alert("s2", "Drift", status="resolved", starts_at=NOW), now=NOW + 10)
    assert outcomes(store) == [("s2", "cancelled", "resolved_before_min_age")]
    assert store.active_cooldowns(NOW + 10).get(("s2", "sync")) is None


# -- budgets, give-up and the storm breaker: counts over what was queued ---------------------

BUDGETS = """\
budgets:
  - {name: reboots, operation: reboot, max: 3, per: 1h}
  - {name: per-site, operation: sync, group_by: site, max: 1, per: 1h}
breaker: {max: 1000, per: 5m}
rules:
  - name: reboot-down
    match: ['alertname = "DeviceDown"', 'site = ""']
    device: "{{ labels.device }}"
    operation: reboot
  - name: sync-site
    match: ['alertname = "Drift"']
    device: "{{ labels.device }}"
    operation: sync
"""


def test_budgets_count_what_was_queued_in_their_window(store: Store) -> None:
    first = deliver(store, *(alert(f"r{i}") for i in range(5)), rules=BUDGETS)
    assert verdicts(first) == [Verdict.EXECUTE] * 3 + [Verdict.HELD_BY_BUDGET] * 2
    assert verdicts(deliver(store, alert("r9"), now=NOW + 60, rules=BUDGETS)) == [
        Verdict.HELD_BY_BUDGET]
    # Failed operations count (they were sent); those never sent do not.
    store.finish(claimed(store, NOW + 60), result("failed", "rejected", 400), NOW + 60)
    store.end_stale(NOW + 3599, NOW + 3599)  # the other two expire unsent: room for two
    assert verdicts(deliver(store, alert("r5"), alert("r6"), alert("r7"), now=NOW + 3599,
                            rules=BUDGETS)) == [Verdict.EXECUTE, Verdict.EXECUTE,
                                                Verdict.HELD_BY_BUDGET]
    assert verdicts(deliver(store, alert("r8"), now=NOW + 3601 + 3600, rules=BUDGETS)) == [
        Verdict.EXECUTE]


def test_a_budget_grouped_by_a_label_counts_each_value_apart(store: Store) -> None:
    drift = partial(alert, alertname="Drift")
    assert verdicts(deliver(store, drift("a1", site="north"), drift("b1", site="south"),
                            rules=BUDGETS)) == [Verdict.EXECUTE, Verdict.EXECUTE]
    assert verdicts(deliver(store, drift("a2", site="north"), drift("c1", site="east"),
                            now=NOW + 1, rules=BUDGETS)) == [
        Verdict.HELD_BY_BUDGET, Verdict.EXECUTE]


def test_give_up_counts_operations_sent_to_the_device(store: Store) -> None:
    deliver(store, alert("r1"))
    store.finish(claimed(store), result(), NOW)
    deliver(store, alert("r1"), now=NOW + 3601)
    failed = claimed(store, NOW + 3601)
    store.finish(failed, result("failed", "rejected", 400), NOW + 3601, release_until=NOW + 3601)
    deliver(store, alert("r1"), now=NOW + 3602)  # a failed one does not count: 2 sent now
    store.finish(claimed(store, NOW + 3602), result(), NOW + 3602)
    assert verdicts(deliver(store, alert("r1"), now=NOW + 7203)) == [Verdict.GAVE_UP]


def test_the_storm_breaker_trips_stops_claims_and_resume_clears_it(store: Store) -> None:
    storm = RULES.replace("breaker: {max: 1000, per: 5m}", "breaker: {max: 3, per: 5m}")
    assert verdicts(deliver(store, *(alert(f"r{i}") for i in range(5)), rules=storm)) == [
        Verdict.EXECUTE] * 3 + [Verdict.BREAKER_OPEN] * 2
    assert store.get_flag(Flag.BREAKER_OPEN) == NOW
    assert claim(store).operation is None
    assert verdicts(deliver(store, alert("r7"), now=NOW + 1, rules=storm)) == [
        Verdict.BREAKER_OPEN]
    assert store.resume(NOW + 2) == ["storm breaker open"]
    assert store.get_flag(Flag.BREAKER_OPEN) is None
    assert store.get_flag(Flag.RESUMED) == NOW + 2
    assert claim(store, NOW + 2).operation is not None
    # Demand counts from the resume on.
    assert verdicts(deliver(store, alert("r8"), alert("r9"), now=NOW + 3, rules=storm)) == [
        Verdict.EXECUTE, Verdict.EXECUTE]


# -- approvals -------------------------------------------------------------------------------


def test_an_approved_operation_is_queued_and_sent(store: Store) -> None:
    (asked,) = deliver(store, alert("r1", "Dead"))
    assert asked.decision.verdict == Verdict.PENDING_APPROVAL
    assert [op.id for op in store.pending(NOW)] == [asked.operation_id]
    assert store.queue_depth(NOW)["pending_approval"] == 1
    assert claim(store).operation is None
    approved = store.settle(asked.operation_id, True, "ann", NOW + 60, max_age=MAX_AGE,
                            release_until=NOW)
    assert (approved.state, store.pending(NOW + 60)) == (OpState.QUEUED, [])
    record = store.audit(AuditQuery(limit=None))[-1]
    assert (record.event, record.outcome, record.reason) == (
        Event.APPROVAL, "approved", "approved by ann")
    # The maximum age counts from the approval.
    assert claim(store, NOW + 60 + MAX_AGE + 1).operation is None
    assert claimed(store, NOW + 60 + MAX_AGE).id == asked.operation_id


def test_a_rejected_operation_is_never_sent_and_keeps_its_cooldown(store: Store) -> None:
    (asked,) = deliver(store, alert("r1", "Dead"))
    rejected = store.settle(asked.operation_id, False, "bob", NOW, max_age=MAX_AGE,
                            release_until=NOW)
    assert rejected.state == OpState.REJECTED
    assert outcomes(store) == [("r1", "rejected", "rejected by bob")]
    assert claim(store).operation is None
    assert ("r1", "factory") in store.active_cooldowns(NOW)
    with pytest.raises(StoreError, match=f"operation {asked.operation_id} is rejected,"
                                         " not pending approval") as refused:
        store.settle(asked.operation_id, True, "ann", NOW, max_age=MAX_AGE, release_until=NOW)
    assert refused.value.status == 409
    with pytest.raises(StoreError, match="no operation 999") as missing:
        store.settle(999, True, "ann", NOW, max_age=MAX_AGE, release_until=NOW)
    assert missing.value.status == 404


def test_an_answer_past_the_approval_timeout_is_refused_and_expires_it(store: Store) -> None:
    (asked,) = deliver(store, alert("r1", "Dead"))
    late = NOW + APPROVAL_TIMEOUT + 1
    assert store.pending(late) == [] and store.queue_depth(late)["pending_approval"] == 0
    with pytest.raises(StoreError, match="expired at .* \\(approval timeout\\)") as refused:
        store.settle(asked.operation_id, True, "ann", late, max_age=MAX_AGE,
                     release_until=late + 60)
    assert refused.value.status == 409
    assert outcomes(store) == [("r1", "expired", "approval_timeout")]  # kept: one record
    assert store.active_cooldowns(late) == {("r1", "factory"): late + 60}
    assert store.end_stale(late, late) == []



# -- cancellation ------------------------------------------------------------------------------


def test_cancel_ends_what_waits_and_never_what_a_sender_holds(store: Store) -> None:
    ids = [r.operation_id for r in deliver(store, alert("r1"), alert("r2"), alert("r3", "Dead"),
                                           alert("r4"))]
    sending = claimed(store)
    assert sending.id == ids[0]
    ended = store.cancel(lambda op: None if op.device == "r4" else "rule_removed", NOW + 1,
                         release_until=NOW + 1)
    assert [op.id for op in ended] == ids[1:3]  # r1 is on its way, r4 was not named
    assert outcomes(store) == [("r2", "cancelled", "rule_removed"),
                               ("r3", "cancelled", "rule_removed")]
    assert sorted(store.active_cooldowns(NOW + 1)) == [("r1", "reboot"), ("r4", "reboot")]
    assert store.pending(NOW + 1) == []
    assert claimed(store, NOW + 1).device == "r4"
    assert store.cancel(lambda op: "rule_removed", NOW + 2) == []  # nothing waits now


def test_cancel_leaves_unread_what_was_queued_under_the_rules_named(store: Store) -> None:
    deliver(store, alert("r1"))  # queued under rules version v1
    looked: list[int] = []

    def why(op: Operation) -> str:
        looked.append(op.id)
        return "rule_removed"

    assert store.cancel(why, NOW, except_version="v1") == [] and looked == []
    (ended,) = store.cancel(why, NOW, except_version="v2")
    assert (ended.device, ended.state, looked) == ("r1", OpState.CANCELLED, [ended.id])


def test_cancel_one_by_id_says_why_it_cannot(store: Store) -> None:
    ids = [r.operation_id for r in deliver(store, alert("r1"), alert("r2"), alert("r3"))]

    def by(op: Operation) -> str:
        return "cancelled by ann"

    (ended,) = store.cancel(by, NOW, operation_id=ids[1])
    assert (ended.id, ended.state) == (ids[1], OpState.CANCELLED)
    assert store.active_cooldowns(NOW)[("r2", "reboot")] == NOW + 3600  # kept: no release
    with pytest.raises(StoreError, match="no operation 99") as missing:
        store.cancel(by, NOW, operation_id=99)
    assert missing.value.status == 404
    sending = claimed(store)
    for done in (sending.id, ids[1]):
        state = "sending" if done == sending.id else "cancelled"
        with pytest.raises(StoreError, match=f"operation {done} is {state}: only an operation"
                                             " that waits to be sent") as refused:
            store.cancel(by, NOW, operation_id=done)
        assert refused.value.status == 409
    too_late = NOW + MAX_AGE + 1
    with pytest.raises(StoreError, match=f"operation {ids[2]} expired at .*: it can no longer"
                                         " be cancelled") as expired:
        store.cancel(by, too_late, operation_id=ids[2])
    assert expired.value.status == 409

# -- replicas --------------------------------------------------------------------------------


def test_replicas_alive_are_those_whose_heartbeat_is_recent(
    store: Store, replicas: Callable[[], Store]
) -> None:
    assert store.replicas_alive(NOW) == 0
    other = replicas()  # another process on the same state
    store.heartbeat("host-a:1", "1.0", NOW)
    store.heartbeat("host-a:1", "1.0", NOW + 1)  # the same replica again: still one
    other.heartbeat("host-b:2", "1.0", NOW + 2)
    assert store.replicas_alive(NOW + 2) == other.replicas_alive(NOW + 2) == 2
    store.heartbeat("host-a:1", "1.0", NOW + 2 + REPLICA_GONE)
    # host-b beat last at NOW + 2: unseen for REPLICA_GONE, it is gone; host-a beats on.
    assert store.replicas_alive(NOW + 2 + REPLICA_GONE) == 2
    assert store.replicas_alive(NOW + 2.5 + REPLICA_GONE) == 1
    other.heartbeat("host-b:2", "1.0", NOW + 3 + REPLICA_GONE)  # back
    assert store.replicas_alive(NOW + 3 + REPLICA_GONE) == 2


# -- flags -----------------------------------------------------------------------------------


def test_flags_are_set_read_and_cleared(store: Store) -> None:
    assert store.get_flag(Flag.PAUSED) is None
    store.set_flag(Flag.PAUSED, NOW)
    store.set_flag(Flag.PAUSED, NOW + 1)
    assert store.get_flag(Flag.PAUSED) == NOW + 1
    store.set_flag(Flag.API_UNAUTHORIZED, NOW)
    store.set_flag(Flag.API_UNAUTHORIZED, None)
    assert store.get_flag(Flag.API_UNAUTHORIZED) is None
    store.check_writable(NOW + 2)
    assert store.get_flag(Flag.WRITE_CHECKED) == NOW + 2
    store.ping()


def test_pause_stops_claims_and_resume_says_what_it_cleared(store: Store) -> None:
    deliver(store, alert("r1"))
    store.set_flag(Flag.PAUSED, NOW)
    assert claim(store).operation is None
    assert verdicts(deliver(store, alert("r2"))) == [Verdict.PAUSED]
    assert store.resume(NOW + 1) == ["paused"]
    assert store.resume(NOW + 2) == []
    assert claimed(store, NOW + 2).device == "r1"


# -- cooldowns cleared by hand ---------------------------------------------------------------


def test_a_cooldown_cleared_by_hand_is_audited_and_the_device_remediable(store: Store) -> None:
    (first,) = deliver(store, alert("r1"))
    with pytest.raises(StoreError, match=f"operation {first.operation_id} is still queued") \
            as refused:
        store.clear_cooldowns("r1", None, "ann", NOW)
    assert refused.value.status == 409
    store.finish(claimed(store), result(), NOW)
    (cleared,) = store.clear_cooldowns("r1", "reboot", "ann", NOW + 1)
    assert (cleared.device, cleared.operation_id) == ("r1", first.operation_id)
    record = store.audit(AuditQuery(limit=1))[0]
    assert (record.event, record.outcome, record.device, record.operation_id) == (
        Event.OPERATOR, "cooldown_cleared", "r1", first.operation_id)
    assert record.reason.startswith("cleared by ann; it ran until ")
    assert store.active_cooldowns(NOW + 1) == {}
    assert verdicts(deliver(store, alert("r1"), now=NOW + 2)) == [Verdict.EXECUTE]
    with pytest.raises(StoreError, match="no cooldown in force on r2 \\(sync\\)") as missing:
        store.clear_cooldowns("r2", "sync", "ann", NOW)
    assert missing.value.status == 404


# -- the audit: a hash chain, read back by filters, pruned from the oldest -------------------


def test_every_write_chains_its_audit_records(store: Store) -> None:
    deliver(store, alert("r1"), alert("x", "NoSuchAlert"))
    store.finish(claimed(store), result(), NOW + 1)
    records = store.audit(AuditQuery(limit=None))
    assert [(r.id, r.event, r.outcome) for r in records] == [
        (1, "decision", "execute"), (2, "decision", "no_match"), (3, "outcome", "succeeded")]
    assert records[0].prev_hash == "0" * 64
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]
    report = store.verify_audit()
    assert (report.ok, report.records, report.head_id, report.head_hash) == (
        True, 3, 3, records[-1].hash)


def test_audit_queries_filter_and_page(store: Store) -> None:
    for i in range(4):
        deliver(store, alert(f"r{i}"), now=NOW + i)
    every = store.audit(AuditQuery(limit=None))
    assert [r.device for r in store.audit(AuditQuery(device="r2"))] == ["r2"]
    assert len(store.audit(AuditQuery(rule="reboot-down", outcome="execute"))) == 4
    assert store.audit(AuditQuery(outcome="failed")) == []
    assert [r.id for r in store.audit(AuditQuery(since=NOW + 2))] == [3, 4]
    assert [r.id for r in store.audit(AuditQuery(limit=2))] == [3, 4]  # the newest
    assert [r.id for r in store.audit(AuditQuery(limit=2, after_id=1, oldest_first=True))] == [
        2, 3]
    assert every[0].to_json()["time"] == "2027-01-15T08:00:00.000Z"


def test_pruning_keeps_the_newest_record_and_open_operations(store: Store) -> None:
    deliver(store, alert("r1"), alert("r2"))
    store.finish(claimed(store), result(), NOW)  # r1 ends; r2 stays queued
    assert store.prune(NOW + 10, batch=2) == 2
    assert store.prune(NOW + 10) == 0  # the newest record always stays
    (kept,) = store.audit(AuditQuery(limit=None))
    assert kept.id == 3
    report = store.verify_audit()
    assert (report.ok, report.first_id, report.records) == (True, 3, 1)
    assert store.queue_depth(NOW)["queued"] == 1
    # The chain goes on from the record that stayed, past the ids that went.
    deliver(store, alert("r3"), now=NOW + 11)
    assert [r.id for r in store.audit(AuditQuery(limit=None))] == [3, 4]
    assert store.verify_audit().ok



# -- what the operator console and the CLI read ------------------------------------------------


def test_an_operation_reads_with_the_alert_that_asked_and_expires_where_it_is_read(
    store: Store,
) -> None:
    (asked,) = deliver(store, alert("r1", "Dead", starts_at=NOW - 3600,
                                    annotations={"summary": "r1 was taken over"}))
    op = store.operation(asked.operation_id, NOW)
    assert op is not None and (op.device, op.state) == ("r1", OpState.PENDING_APPROVAL)
    assert store.asking_alerts([asked.operation_id, 99]) == {asked.operation_id: AskingAlert(
        {"alertname": "Dead", "device": "r1"}, {"summary": "r1 was taken over"}, NOW - 3600)}
    assert store.asking_alerts([]) == {}
    late = store.operation(asked.operation_id, NOW + APPROVAL_TIMEOUT + 1)  # no sweep yet
    assert late is not None and late.state == OpState.EXPIRED
    assert store.operation(99, NOW) is None


def test_the_audit_filters_by_operation_and_pages_backwards(store: Store) -> None:
    ids = [r.operation_id for r in deliver(store, *(alert(d, "Dead") for d in ("r1", "r2", "r3")))]
    store.settle(ids[1], False, "alice", NOW, max_age=MAX_AGE, release_until=NOW)
    timeline = store.audit(AuditQuery(device="r2", operation_id=ids[1], limit=None))
    assert [(r.event, r.outcome) for r in timeline] == [
        ("decision", "pending_approval"), ("outcome", "rejected")]
    newest = store.audit(AuditQuery(limit=2))
    older = store.audit(AuditQuery(limit=2, before_id=newest[0].id))
    assert [r.id for r in older + newest] == [1, 2, 3, 4]
    assert store.audit(AuditQuery(limit=2, before_id=1)) == []


def test_devices_are_found_by_part_of_their_name_most_recent_first(store: Store) -> None:
    for n, device in enumerate(("core-switch-01", "office-router-01", "core-switch-02",
                                "core-switch-01"), 1):
        deliver(store, alert(device, "Drift"), now=NOW + 60 * n)
    found = store.devices("SWITCH", 10)
    assert found == [DeviceSeen("core-switch-01", 2, NOW + 240),
                     DeviceSeen("core-switch-02", 1, NOW + 180)]
    assert [d.device for d in store.devices("", 2)] == ["core-switch-01", "core-switch-02"]
    assert store.devices("nowhere", 10) == []
    assert store.devices("%", 10) == []  # the text itself, not a pattern


def test_operations_per_week_count_what_alerts_asked_for_on_one_device(store: Store) -> None:
    # Twenty days ago once, then three times within the last seven days (a cooldown of 1h
    # lets each ask).
    for days_ago in (20, 6, 5, 0):
        deliver(store, alert("r1"), now=NOW - days_ago * 86400)
    deliver(store, alert("r2"))
    assert store.operations_per_week("r1", NOW, 4) == [0, 1, 0, 3]
    assert store.operations_per_week("r1", NOW, 1) == [3]
    assert store.operations_per_week("nobody", NOW, 2) == [0, 0]


def test_pause_and_resume_are_audited_under_the_persons_name(store: Store) -> None:
    assert store.pause(NOW, "alice (console, admin)") is True
    assert store.pause(NOW + 1, "bob") is False  # already paused: nothing recorded
    assert store.get_flag(Flag.PAUSED) == NOW
    assert store.resume(NOW + 2, "carol") == ["paused"]
    assert store.resume(NOW + 3) == []  # without a name, as before: not audited
    records = store.audit(AuditQuery(limit=None))
    assert [(r.event, r.outcome, r.reason) for r in records] == [
        ("operator", "sending_paused", "paused by alice (console, admin)"),
        ("operator", "sending_resumed", "resumed by carol (was: paused)")]
    assert store.verify_audit().ok


# -- the closing loop: watches, ladders, what people were told -------------------------------

#: The shared ladder (sync for 10m, then reboot for 15m), on the DeviceDown alerts of alert().
LADDER = "budgets: []\n" + helpers.LADDER.replace("DeviceUnreachable", "DeviceDown")


def conclude(store: Store, now: float, rules: str = LADDER,
             firing: set[str] | None = None) -> list[Concluded]:
    """One round of the closing loop's verifying: what the loop asks of the store."""
    judgement = Judgement(parse_rules(rules), dry_run=False, max_age=MAX_AGE)
    return store.conclude(now, firing=firing, judge=judgement.next_step, max_age=MAX_AGE,
                          approval_timeout=APPROVAL_TIMEOUT, rules_version="v1")


def succeeded(store: Store, now: float = NOW, *, takes: float | None = None,
              rules: str = LADDER, **labels: str) -> Operation:
    """An alert on r1 asks for the ladder's first step, which is sent and succeeds at `now`
    (the API estimating that it takes `takes` seconds)."""
    deliver(store, alert("r1", **labels), now=now - 1, rules=rules)
    op = claimed(store, now)
    store.finish(op, replace(result(), completes_in=takes), now)
    return op


def verifications(store: Store) -> list[tuple[str, int | None, float | None, int | None]]:
    return [(r.outcome, r.step, r.elapsed, r.operation_id)
            for r in store.audit(AuditQuery(limit=None)) if r.event == Event.VERIFICATION]


def test_a_watch_ends_remediated_when_its_alert_resolves_in_the_window(store: Store) -> None:
    op = succeeded(store, takes=30.0)
    assert conclude(store, NOW + 600) == []  # still watching: 10m count from completion
    resolved = alert("r1", status="resolved", ends_at=NOW + 620)
    deliver(store, resolved, now=NOW + 700, rules=LADDER)
    (ended,) = conclude(store, NOW + 701)
    assert (ended.watch.operation_id, ended.resolution.outcome) == (op.id, "remediated")
    assert verifications(store) == [("remediated", 1, 620.0, op.id)]
    assert conclude(store, NOW + 9999) == []  # a watch ends once
    assert store.verify_audit().ok


def test_a_missed_window_takes_the_next_step_once_even_from_two_replicas_at_once(
    replicas: Callable[[], Store],
) -> None:
    first, second = replicas(), replicas()
    op = succeeded(first)
    assert conclude(first, NOW + 599) == []
    with ThreadPoolExecutor(2) as pool:
        rounds = list(pool.map(lambda s: conclude(s, NOW + 601), (first, second)))
    (ended,) = [c for found in rounds for c in found]
    assert (ended.resolution.outcome, ended.next_operation_id) == ("not_remediated", op.id + 1)
    step2 = first.operation(op.id + 1, NOW + 601)
    assert step2 is not None and (step2.operation, step2.step, step2.state) == (
        "reboot", 2, OpState.QUEUED)
    decision = [r for r in first.audit(AuditQuery(limit=None)) if r.event == Event.DECISION][-1]
    assert (decision.operation, decision.step, decision.operation_id, decision.reason) == (
        "reboot", 2, op.id + 1, "step 2 of 2: sync did not remediate within 10m: rule matched")
    assert {c.operation: c.operation_id for c in first.cooldowns(NOW + 601, "r1")} == {
        "sync": op.id, "reboot": op.id + 1}  # each step its own cooldown
    assert conclude(second, NOW + 9999) == []


def test_the_last_step_missing_ends_the_ladder_and_a_person_is_told(store: Store) -> None:
    succeeded(store)
    conclude(store, NOW + 601)
    step2 = claimed(store, NOW + 602)
    store.finish(step2, result(), NOW + 603)
    (ended,) = conclude(store, NOW + 603 + 901)
    assert (ended.next_operation_id, ended.ended_because) == (
        None, "it was the last step of rule unreachable-router")
    (end,) = store.notice_state(NOW + 1600).ladders
    assert (end.subject.operation_id, end.subject.operation, end.why, end.verify) == (
        step2.id, "reboot", "it was the last step of rule unreachable-router", 900.0)
    # Until the alert resolves.
    deliver(store, alert("r1", status="resolved", ends_at=NOW + 1700), now=NOW + 1700,
            rules=LADDER)
    assert store.notice_state(NOW + 1700).ladders == ()


def test_a_ladder_that_ran_out_may_be_acknowledged_not_a_step_that_escalated(
    store: Store,
) -> None:
    first = succeeded(store)
    conclude(store, NOW + 601)
    step2 = claimed(store, NOW + 602)
    store.finish(step2, result(), NOW + 603)
    conclude(store, NOW + 603 + 901)
    with pytest.raises(StoreError, match=f"operation {first.id} is succeeded: nothing to"):
        store.acknowledge(first.id, "ann", NOW + 1600)  # a step followed it
    assert store.acknowledge(step2.id, "ann", NOW + 1600) == "it did not remediate its alert"
    assert store.notice_state(NOW + 1601).ladders == ()
    with pytest.raises(StoreError, match="already acknowledged"):
        store.acknowledge(step2.id, "ann", NOW + 1602)


def test_a_guard_that_refuses_the_next_step_ends_the_ladder(store: Store) -> None:
    succeeded(store)
    store.pause(NOW + 10, "ann")
    (ended,) = conclude(store, NOW + 601)
    assert ended.next_operation_id is None
    assert ended.ended_because.startswith("step 2 of 2: sync did not remediate within 10m:"
                                          " the bridge is paused")
    assert [r.outcome for r in store.audit(AuditQuery(limit=None))][-2:] == [
        "not_remediated", "paused"]


def test_an_alert_resolved_before_the_call_ended_is_not_credited(store: Store) -> None:
    deliver(store, alert("r1"), now=NOW - 10, rules=LADDER)
    deliver(store, alert("r1", status="resolved", ends_at=NOW - 5), now=NOW - 5, rules=LADDER)
    store.finish(claimed(store, NOW), result(), NOW)
    (ended,) = conclude(store, NOW + 1)
    assert ended.resolution.outcome == "resolved_before"
    assert verifications(store) == [("resolved_before", 1, None, 1)]


def test_a_resolution_of_an_earlier_episode_does_not_count(store: Store) -> None:
    deliver(store, alert("r1", status="resolved", ends_at=NOW - 100), now=NOW - 100,
            rules=LADDER)  # an earlier episode of the same alert
    deliver(store, alert("r1", starts_at=NOW - 50), now=NOW - 1, rules=LADDER)
    store.finish(claimed(store, NOW), result(), NOW)
    assert conclude(store, NOW + 60) == []
    assert conclude(store, NOW + 601)[0].resolution.outcome == "not_remediated"


def test_alertmanager_saying_an_alert_no_longer_fires_resolves_it_now(store: Store) -> None:
    op = succeeded(store)
    assert store.watched_from("alertmanager") and not store.watched_from("grafana")
    assert conclude(store, NOW + 60, firing={op.fingerprint}) == []
    (ended,) = conclude(store, NOW + 90, firing={"someone-else"})
    assert (ended.resolution.outcome, ended.resolution.elapsed) == ("remediated", 90.0)
    assert not store.watched_from("alertmanager")


def test_a_resolved_alert_cancels_the_steps_of_its_ladder_not_yet_sent(store: Store) -> None:
    succeeded(store)
    (ended,) = conclude(store, NOW + 601)
    assert store.in_progress(["DeviceDown-r1"]) == [
        Rung("unreachable-router", 2, "reboot", 2, OpState.QUEUED, "DeviceDown-r1")]
    deliver(store, alert("r1", status="resolved", ends_at=NOW + 610), now=NOW + 610,
            rules=LADDER)
    cancelled = store.operation(ended.next_operation_id or 0, NOW + 610)
    assert cancelled is not None and cancelled.state == OpState.CANCELLED
    assert outcomes(store)[-1] == ("r1", "cancelled", "alert_resolved")
    assert claim(store, NOW + 611).operation is None
    # The reboot's cooldown is released: the next alert may ask again.
    assert store.active_cooldowns(NOW + 611) == {("r1", "sync"): NOW - 1 + 3600}


def test_a_watch_shows_in_progress_until_it_ends(store: Store) -> None:
    op = succeeded(store, takes=30.0)
    assert store.in_progress(["DeviceDown-r1", "other"]) == [
        Rung("unreachable-router", 1, "sync", op.id, "watching", "DeviceDown-r1", NOW + 630)]
    assert store.in_progress([]) == []


def test_the_closing_loop_runs_on_one_process_at_a_time(replicas: Callable[[], Store]) -> None:
    one, two = replicas(), replicas()
    assert one.take_lease(1, NOW, 30.0)
    assert one.take_lease(1, NOW + 10, 30.0)  # the holder renews it
    assert not two.take_lease(2, NOW + 20, 30.0)
    assert two.take_lease(2, NOW + 41, 30.0)  # the first one's ran out: it died
    assert not one.take_lease(1, NOW + 42, 30.0)


def test_what_people_are_told_about(store: Store) -> None:
    deliver(store, alert("x1", "Dead"))  # a factory reset waits for approval
    deliver(store, alert("r1"))
    store.finish(claimed(store), result("failed", "not_found", 404), NOW + 1,
                 release_until=NOW + 301)
    state = store.notice_state(NOW + 2)
    (pending,) = state.pending
    assert (pending.subject.operation, pending.subject.source_alertname, pending.expires_at) == (
        "factory", "Dead", NOW + APPROVAL_TIMEOUT)
    (failure,) = state.failures
    assert (failure.subject.device, failure.outcome, failure.reason, failure.since) == (
        "r1", "failed", "not_found", NOW + 1)
    assert state.breaker_since is None
    assert store.notice_state(NOW + 302).failures == ()  # its cooldown ended


def test_an_acknowledged_failure_is_no_longer_told_and_only_once(store: Store) -> None:
    deliver(store, alert("r1"))
    op = claimed(store)
    store.finish(op, result("unknown", "timeout", None), NOW + 1)
    assert store.acknowledge(op.id, "alice", NOW + 2) == "it ended unknown"
    assert store.notice_state(NOW + 3).failures == ()
    with pytest.raises(StoreError, match="already acknowledged") as again:
        store.acknowledge(op.id, "alice", NOW + 4)
    assert again.value.status == 409
    with pytest.raises(StoreError, match="no operation 99") as missing:
        store.acknowledge(99, "alice", NOW + 4)
    assert missing.value.status == 404
    deliver(store, alert("r2"))
    with pytest.raises(StoreError, match="is queued: nothing to acknowledge"):
        store.acknowledge(op.id + 1, "alice", NOW + 5)
    (record,) = store.audit(AuditQuery(outcome="acknowledged", limit=None))
    assert (record.event, record.operation_id, record.reason) == (
        "operator", op.id, "acknowledged by alice: it ended unknown")


def test_notices_start_end_and_are_forgotten_once_everything_was_told(store: Store) -> None:
    one = Notice("AlertBridgeBreakerOpen", "critical", {}, "open", "resume", NOW)
    (told,) = store.sync_notices([one], NOW)
    assert (told.notice, told.ended, told.told_start) == (one, None, False)
    store.mark_told({one.key: {"told_start"}})
    (told,) = store.sync_notices([one], NOW + 10)
    assert told.told_start and not told.done
    (ended,) = store.sync_notices([], NOW + 20)
    assert ended.ended == NOW + 20
    store.mark_told({one.key: {"told_end", "told_resolved"}})
    assert store.sync_notices([], NOW + 30) == []
    # The same condition again later: a new start, told anew.
    (again,) = store.sync_notices([replace(one, since=NOW + 40)], NOW + 40)
    assert (again.notice.since, again.told_start) == (NOW + 40, False)

# -- several processes (or replicas) at once: every limit is global ---------------------------

THREE_OPERATIONS = """\
budgets: []
breaker: {max: 10000, per: 5m}
rules:
  - {name: reboot, match: ['alertname = "A"'], device: "{{ labels.device }}", operation: reboot}
  - {name: sync, match: ['alertname = "B"'], device: "{{ labels.device }}", operation: sync}
  - {name: reconf, match: ['alertname = "C"'], device: "{{ labels.device }}", operation: reconf}
"""


BUDGET_OF_20 = """\
budgets: [{name: reboots, operation: reboot, max: 20, per: 1h}]
breaker: {max: 10000, per: 5m}
rules:
  - {name: reboot, match: ['alertname = "DeviceDown"'], device: "{{ labels.device }}",
     operation: reboot}
"""


def in_parallel(work: Callable[[int], object], n: int) -> list[object]:
    """Run work(0) ... work(n - 1) in n threads at once; their results, or their error."""
    start = threading.Barrier(n)

    def run(i: int) -> object:
        start.wait(30)
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_senders_of_several_replicas_keep_the_limits_together(
    store: Store, replicas: Callable[[], Store]
) -> None:
    devices = [f"d{i}" for i in range(8)]
    deliver(store, *(alert(d, name) for d in devices for name in "ABC"),
            rules=THREE_OPERATIONS)
    handles = [replicas() for _ in range(3)]  # three replicas, four senders each
    lock = threading.Lock()
    in_flight: dict[int, str] = {}
    seen: list[tuple[int, int]] = []  # (operations in flight, of them on its device) per claim
    sent: list[int] = []

    def sender(i: int) -> None:
        mine, deadline = handles[i % 3], time.monotonic() + 60
        while time.monotonic() < deadline:
            op = mine.claim(NOW, concurrency=3, spacing=0.0, lease=60.0).operation
            if op is None:
                with lock:
                    if len(sent) == 24:
                        return
                continue
            with lock:
                seen.append((len(in_flight) + 1,
                             sum(d == op.device for d in in_flight.values()) + 1))
                in_flight[op.id] = op.device
                sent.append(op.id)
            mine.queue_depth(NOW)  # a moment in flight, as a call would be
            with lock:
                del in_flight[op.id]
            mine.finish(op, result(), NOW)
        raise AssertionError(f"sender {i}: not all sent within 60 s")

    in_parallel(sender, 12)
    assert sorted(sent) == list(range(1, 25))  # each once
    assert max(n for n, _ in seen) <= 3
    assert max(same for _, same in seen) == 1
    assert store.outcome_counts(NOW) == {"succeeded": 24}
    assert store.verify_audit().ok


def test_500_reboots_from_several_replicas_against_a_budget_of_20_queue_20(
    store: Store, replicas: Callable[[], Store]
) -> None:
    rules = parse_rules(BUDGET_OF_20)
    handles = [replicas() for _ in range(3)]

    def webhooks(i: int) -> list[str]:
        return [v for n in range(50)
                for v in verdicts(deliver(handles[i % 3], alert(f"r{i}-{n}"), rules=rules))]

    answers = [v for vs in in_parallel(webhooks, 10) for v in vs]  # type: ignore[union-attr]
    assert len(answers) == 500
    assert answers.count(Verdict.EXECUTE) == 20
    assert answers.count(Verdict.HELD_BY_BUDGET) == 480
    assert store.queue_depth(NOW)["queued"] == 20
    report = store.verify_audit()
    assert (report.ok, report.records) == (True, 500)


def test_webhooks_of_one_process_share_transactions_and_stay_exact(store: Store) -> None:
    """Threads of one process that record at once share a transaction (one lock, one
    commit): each still judges what the ones before it left, and one whose answer fails
    commits nothing while the others commit."""

    def failing(recorded: list[Recorded]) -> object:
        raise RuntimeError("answer failed")

    def webhook(i: int) -> object:
        # All ask for a reboot of the same device; every fifth answer fails.
        if i % 5 == 0:
            with pytest.raises(RuntimeError, match="answer failed"):
                deliver(store, alert("shared", team=f"t{i}"), answer=failing)
            return None
        return verdicts(deliver(store, alert("shared", team=f"t{i}")))

    answers = [v for vs in in_parallel(webhook, 20) if vs for v in vs]  # type: ignore[union-attr]
    assert len(answers) == 16
    assert answers.count(Verdict.EXECUTE) == 1
    assert answers.count(Verdict.COOLDOWN) == 15
    assert store.queue_depth(NOW)["queued"] == 1
    report = store.verify_audit()
    assert (report.ok, report.records) == (True, 16)


# -- PostgreSQL only: connections, failures, locks --------------------------------------------


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Callable[..., Store]]:
    """Opens stores on the session's database, emptied first; all closed at the end."""
    postgres.empty(postgres_url)
    opened: list[Store] = []

    def open_one(url: str = postgres_url, **options: Any) -> Store:
        opened.append(open_store(url, **{"timeout": 10.0, **options}))
        return opened[-1]

    yield open_one
    for one in opened:
        one.close()


def test_a_claim_never_waits_for_a_decision_in_progress(pg: Callable[..., Store]) -> None:
    store = pg()
    deliver(store, alert("r1"))
    deciding, decided = threading.Event(), threading.Event()

    def slow_judge(state: Any) -> list[Any]:
        deciding.set()
        decided.wait(30)  # holds the decision lock meanwhile
        return []

    webhook = threading.Thread(target=store.read_state, args=(slow_judge,))
    webhook.start()
    try:
        assert deciding.wait(10)
        op = bounded(lambda: claim(pg()).operation, within=5)
        assert op is not None and op.device == "r1"  # type: ignore[attr-defined]
        # ... while another decision waits its turn, within its timeout.
        with pytest.raises(StoreError, match="locked by another writer for more than 0.5s"):
            bounded(lambda: pg(timeout=0.5).read_state(lambda state: None))
    finally:
        decided.set()
        webhook.join(10)


def test_a_server_gone_and_back_costs_one_failed_call_at_most(
    pg: Callable[..., Store], postgres_url: str
) -> None:
    store = pg()
    deliver(store, alert("r1"))
    store.ping()
    assert postgres.cut_connections(postgres_url) >= 1  # every pooled connection dies
    store.set_flag(Flag.PAUSED, NOW)  # on a fresh connection: the dead ones are dropped
    assert store.get_flag(Flag.PAUSED) == NOW
    assert verdicts(deliver(store, alert("r2"))) == [Verdict.PAUSED]


def test_a_connection_cut_mid_transaction_commits_nothing(
    pg: Callable[..., Store], postgres_url: str
) -> None:
    store = pg()

    def cut_while_deciding(state: Any) -> list[Any]:
        postgres.cut_connections(postgres_url)
        return decide([alert("r1")], parse_rules(RULES), state, NOW, dry_run=False)

    with pytest.raises(StoreError) as failed:
        store.record(DELIVERY, cut_while_deciding, NOW, max_age=MAX_AGE,
                     approval_timeout=APPROVAL_TIMEOUT, answer=lambda recorded: recorded)
    assert failed.value.status == 503
    assert failed.value.message.startswith(f"state store {store.where}: ")
    assert store.active_cooldowns(NOW) == {} and store.audit(AuditQuery()) == []
    assert verdicts(deliver(store, alert("r1"))) == [Verdict.EXECUTE]


def test_an_unreachable_server_is_a_503_that_names_it_without_its_password(
    pg: Callable[..., Store], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://bridge:pw-Secret-42@127.0.0.1:{port}/state?sslmode=disable"
    store = pg(url, timeout=1.0)
    assert "pw-Secret-42" not in repr(store)
    assert store.where == f"postgresql://bridge@127.0.0.1:{port}/state"
    with pytest.raises(StoreError) as failed:
        store.ping()
    assert failed.value.status == 503
    assert failed.value.message == (
        f"state store postgresql://bridge@127.0.0.1:{port}/state: no connection within 1s"
        " (BRIDGE_STATE_TIMEOUT): the database is unreachable, or all 8 connections of this"
        " process are busy")
    assert "pw-Secret-42" not in failed.value.message
    assert "pw-Secret-42" not in caplog.text


def test_the_password_file_is_read_and_never_shown(
    pg: Callable[..., Store], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "password"
    secret.write_text("file-Secret-7\n")
    url = f"postgresql://bridge@127.0.0.1:{free_port()}/state"  # nothing listens there
    store = pg(url, password_file=str(secret), timeout=1.0)
    with pytest.raises(StoreError) as failed:
        store.ping()
    assert "file-Secret-7" not in failed.value.message + repr(store) + caplog.text
    missing = pg(url, password_file=str(tmp_path / "nope"))
    with pytest.raises(StoreError, match="BRIDGE_STATE_PASSWORD_FILE .*nope: No such file"):
        missing.ping()


def every_row(location: str) -> dict[str, list[dict[str, Any]]]:
    """A state's rows by table, JSON columns parsed (jsonb keeps its keys in its own order)."""
    store = open_store(location)
    try:
        found: dict[str, list[dict[str, Any]]] = {}
        for table, rows in store.export_rows():
            found.setdefault(table, []).extend(
                {k: json.loads(v) if k in ("labels", "annotations") else v
                 for k, v in row.items()} for row in rows)
        return found
    finally:
        store.close()


def a_state_of_every_kind(path: Path) -> str:
    """A SQLite state with a row of every kind: sent, in flight, queued, held for its age,
    pending approval, cooldowns, a pause flag, a notice, and the audit of all of it."""
    store = open_store(str(path))
    try:
        deliver(store, alert("r1"), alert("r2"), alert("r3"), alert("d1", "Drift"),
                alert("x1", "Dead", annotations={"summary": "gone"}, site="lab"))
        store.finish(claimed(store), result(), NOW + 1)
        claimed(store, NOW + 2)  # left in flight
        store.pause(NOW + 3, "ann")
        store.sync_notices([Notice("AlertBridgeBreakerOpen", "critical", {"x": "y"}, "open",
                                   "resume", NOW + 3)], NOW + 3)  # what people were told
        assert store.queue_depth(NOW + 3) == {"pending_approval": 1, "queued": 2, "sending": 1}
    finally:
        store.close()
    return str(path)


def copy_state(source: str, destination: str, env: dict[str, str]) -> Any:
    from click.testing import CliRunner

    from bridge.cli import main

    return CliRunner(env=env).invoke(main, ["copy-state", "--from", source, "--to", destination])


def verified(location: str) -> str:
    from click.testing import CliRunner

    from bridge.cli import main

    outcome = CliRunner().invoke(main, ["audit", "verify", "--state", location])
    assert outcome.exit_code == 0, outcome.output
    return str(outcome.output)


def test_copy_state_moves_a_whole_state_to_postgresql_and_back(
    pg: Callable[..., Store], postgres_url: str, tmp_path: Path
) -> None:
    pg()  # the database, emptied
    source = a_state_of_every_kind(tmp_path / "source.db")
    secret = tmp_path / "password"
    secret.write_text("file-Secret-8\n")
    env = {"BRIDGE_STATE_PASSWORD_FILE": str(secret)}
    there = copy_state(source, postgres_url, env)
    assert there.exit_code == 0, there.output
    assert there.output.splitlines()[0] == (
        f"Copied {source} to {postgres_url}: 7 audit records, 5 operations, 5 cooldowns,"
        " 2 flags.")
    back_path = str(tmp_path / "back.db")
    back = copy_state(postgres_url, back_path, env)
    assert back.exit_code == 0, back.output
    assert "file-Secret-8" not in there.output + back.output
    assert every_row(source) == every_row(postgres_url) == every_row(back_path)
    assert verified(source) == verified(postgres_url) == verified(back_path)
    assert verified(source).startswith("OK: 7 records, chain intact, head 7 sha256:")
    # The copies go on from the ids that came in: the next operation and record follow them.
    for location in (postgres_url, back_path):
        store = pg(location) if location == postgres_url else open_store(location)
        assert store.resume(NOW + 9, "ann") == ["paused"]  # the pause came along
        (queued,) = deliver(store, alert("r9"), now=NOW + 10)
        assert queued.operation_id == 6
        assert store.verify_audit().head_id == 9
        store.close()


def test_copy_state_refuses_a_destination_that_holds_state(
    pg: Callable[..., Store], postgres_url: str, tmp_path: Path
) -> None:
    deliver(pg(), alert("r1"))
    source = a_state_of_every_kind(tmp_path / "source.db")
    refused = copy_state(source, postgres_url, {})
    assert (refused.exit_code, refused.output) == (1, (
        f"Error: {postgres_url} already holds state (1 audit records, 1 operations,"
        " 1 cooldowns, 0 flags): copy-state only fills an empty store\n"))
    other = copy_state(postgres_url, source, {})  # a SQLite destination is checked alike
    assert other.exit_code == 1 and "Error: " + source + " already holds state (7 audit" \
        in other.output
    assert every_row(postgres_url)["audit"][0]["device"] == "r1"  # left as it was
    same = copy_state(source, source, {})
    assert same.output == f"Error: --from and --to are the same state ({source})\n"


def test_each_process_makes_its_own_connections_after_fork(
    pg: Callable[..., Store], postgres_url: str
) -> None:
    import multiprocessing

    def sessions() -> set[int]:
        with postgres.connection(postgres_url) as conn:
            return {pid for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'alert-bridge'")}

    store = pg()
    deliver(store, alert("r1"))  # the parent's pool is open and in use
    parents = sessions()
    made: multiprocessing.SimpleQueue[set[int]] = multiprocessing.get_context(
        "fork").SimpleQueue()

    def child() -> None:
        deliver(store, alert("r2"), now=NOW + 1)
        made.put(sessions() - parents)

    worker = multiprocessing.get_context("fork").Process(target=child)
    worker.start()
    worker.join(30)
    assert worker.exitcode == 0
    assert made.get(), "the child used the parent's connections"
    # The parent's connections are its own still: the child neither used nor closed them.
    assert parents <= sessions()
    assert verdicts(deliver(store, alert("r3"), now=NOW + 2)) == [Verdict.EXECUTE]
    assert sorted(store.active_cooldowns(NOW + 2)) == [("r1", "reboot"), ("r2", "reboot"),
                                                     ("r3", "reboot")]


def test_a_database_of_a_newer_bridge_is_refused(
    pg: Callable[..., Store], postgres_url: str
) -> None:
    with postgres.connection(postgres_url) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (%s, 0)", (SCHEMA_VERSION + 1,))
    try:
        with pytest.raises(StoreError, match=f"its schema is version {SCHEMA_VERSION + 1},"
                                             " newer than this bridge knows"):
            pg().ping()
    finally:
        with postgres.connection(postgres_url) as conn:
            conn.execute("DELETE FROM schema_migrations WHERE version > %s", (SCHEMA_VERSION,))


# -- SQLite only: schema versions on real files -----------------------------------------------

#: What a bridge from before schema versions (and before the hash chain, rules versions and
#: operation ids in cooldowns) left behind, with a record, a cooldown and a queued operation.
UNVERSIONED = """
CREATE TABLE cooldowns (device TEXT NOT NULL, operation TEXT NOT NULL, until REAL NOT NULL,
    rule TEXT NOT NULL, PRIMARY KEY (device, operation));
CREATE TABLE operations (id INTEGER PRIMARY KEY, device TEXT NOT NULL,
    operation TEXT NOT NULL, rule TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL,
    updated REAL NOT NULL, request_id TEXT NOT NULL, source TEXT NOT NULL,
    receiver TEXT NOT NULL, group_key TEXT NOT NULL, fingerprint TEXT NOT NULL,
    alertname TEXT NOT NULL, alert_status TEXT NOT NULL, labels TEXT NOT NULL,
    hold TEXT NOT NULL, claim_until REAL NOT NULL, next_attempt REAL NOT NULL,
    expires_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, lease_until REAL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,
    event TEXT NOT NULL, request_id TEXT NOT NULL, source TEXT NOT NULL,
    receiver TEXT NOT NULL, group_key TEXT NOT NULL, fingerprint TEXT NOT NULL,
    alertname TEXT NOT NULL, alert_status TEXT NOT NULL, rule TEXT NOT NULL,
    device TEXT NOT NULL, operation TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL,
    status_code INTEGER, execution_id TEXT, error TEXT NOT NULL, operation_id INTEGER,
    attempt INTEGER);
INSERT INTO cooldowns VALUES ('r1', 'reboot', 1800003600.0, 'reboot-down');
INSERT INTO operations (device, operation, rule, state, created, updated, request_id, source,
    receiver, group_key, fingerprint, alertname, alert_status, labels, hold, claim_until,
    next_attempt, expires_at) VALUES ('r1', 'reboot', 'reboot-down', 'queued', 1800000000.0,
    1800000000.0, 'req-0', 'alertmanager', 'bridge', '{}:{}', 'DeviceDown-r1', 'DeviceDown',
    'firing', '{"alertname": "DeviceDown", "device": "r1"}', '', 1800003600.0, 1800000000.0,
    1800000600.0);
INSERT INTO audit (ts, event, request_id, source, receiver, group_key, fingerprint, alertname,
    alert_status, rule, device, operation, outcome, reason, error, operation_id)
    VALUES (1800000000.0, 'decision', 'req-0', 'alertmanager', 'bridge', '{}:{}',
    'DeviceDown-r1', 'DeviceDown', 'firing', 'reboot-down', 'r1', 'reboot', 'execute',
    'rule matched', '', 1);
"""


def old_state_file(path: Path, script: str = UNVERSIONED) -> Path:
    with sqlite3.connect(path) as conn:
        conn.executescript(script)
    conn.close()
    return path


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    conn.close()
    return int(version)


def test_a_state_file_from_before_schema_versions_is_upgraded(tmp_path: Path) -> None:
    state = old_state_file(tmp_path / "old.db")
    store = SqliteStore(state)
    try:
        (cooldown,) = store.cooldowns(NOW)
        assert (cooldown.device, cooldown.operation_id) == ("r1", None)
        assert store.verify_audit().summary().startswith("OK: 1 record, chain intact, head 1")
        op = claimed(store)
        assert (op.device, op.rules_version) == ("r1", "")
        store.finish(op, result(), NOW)
        assert store.verify_audit().records == 2
    finally:
        store.close()
    assert user_version(state) == SCHEMA_VERSION


def test_a_state_file_of_todays_tables_without_a_version_is_taken_as_is(tmp_path: Path) -> None:
    made = SqliteStore(tmp_path / "state.db")
    deliver(made, alert("r1"))
    head = made.verify_audit().head_hash
    made.close()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute("PRAGMA user_version = 0")  # as a bridge before versions left it
    conn.close()
    store = SqliteStore(tmp_path / "state.db")
    try:
        assert store.verify_audit().head_hash == head
        assert verdicts(deliver(store, alert("r1"))) == [Verdict.COOLDOWN]
    finally:
        store.close()
    assert user_version(tmp_path / "state.db") == SCHEMA_VERSION


def test_a_state_file_of_a_newer_bridge_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    SqliteStore(state).close()
    newer = SCHEMA_VERSION + 1
    with sqlite3.connect(state) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    refusal = (f"state store {state}: its schema is version {newer}, newer than this bridge"
               f" knows (up to version {SCHEMA_VERSION}): run the bridge version that wrote"
               " it, or a newer one")
    store = SqliteStore(state)
    with pytest.raises(StoreError, match=refusal.replace("(", "\\(").replace(")", "\\)")):
        store.ping()
    store.close()
    from click.testing import CliRunner

    from bridge.cli import main

    listing = CliRunner().invoke(main, ["audit", "--state", str(state)])
    assert (listing.exit_code, listing.output) == (1, f"Error: {refusal}\n")
    assert user_version(state) == newer


OPENER = """
import os, sys, time
from bridge.store import SqliteStore
go = sys.argv[2]
deadline = time.monotonic() + 30
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.01)
store = SqliteStore(sys.argv[1])
print(store.verify_audit().summary())
store.close()
"""


def test_several_processes_opening_an_old_file_at_once_upgrade_it_once(tmp_path: Path) -> None:
    state = old_state_file(tmp_path / "old.db")
    go = tmp_path / "go"
    openers = [subprocess.Popen([sys.executable, "-c", OPENER, str(state), str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    go.touch()  # all of them open the file at once
    answers = [p.communicate(timeout=60) for p in openers]
    assert [p.returncode for p in openers] == [0] * 4, answers
    assert len({out for out, _ in answers}) == 1
    assert answers[0][0].startswith("OK: 1 record, chain intact")
    assert user_version(state) == SCHEMA_VERSION


# -- SQLite only: writers wait their turn, the write-ahead log stays small --------------------


@contextmanager
def holding_the_turn(store: SqliteStore) -> Iterator[None]:
    """`store` holds its write turn (and SQLite's write lock) until the block ends."""
    entered, leave = threading.Event(), threading.Event()

    def hold(_: object) -> None:
        entered.set()
        leave.wait(30)

    holder = threading.Thread(target=store.read_state, args=(hold,))
    holder.start()
    try:
        assert entered.wait(10), "the holder never got its turn"
        yield
    finally:
        leave.set()
        holder.join(10)


def bounded(call: Callable[[], object], within: float = 10.0) -> object:
    """Run `call`; fail, rather than hang, if it has not returned after `within` seconds."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=within)
    finally:
        pool.shutdown(wait=False)  # a call that hangs is let go once its lock is


def test_a_writer_gives_up_at_its_timeout_and_leaves_no_lock_behind(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    holder = SqliteStore(state, timeout=0.5)
    # Its own file descriptor, so it takes turns with `holder` as another process would.
    other = SqliteStore(state, timeout=0.5)
    busy = f"state store {state}: locked by another writer for more than 0.5s"
    try:
        with holding_the_turn(holder):
            for waiting_in in (holder, other):  # behind the thread lock, behind the flock
                with pytest.raises(StoreError, match=busy):
                    bounded(partial(waiting_in.set_flag, Flag.PAUSED, 1.0))
        # The turn `other` gave up on came to it later: it went straight back.
        late = SqliteStore(state, timeout=10)
        bounded(lambda: late.set_flag(Flag.PAUSED, 2.0))
        bounded(lambda: other.set_flag(Flag.PAUSED, 3.0))
        assert late.get_flag(Flag.PAUSED) == 3.0
        late.close()
    finally:
        holder.close()
        other.close()


def test_webhooks_sharing_transactions_still_give_up_at_their_timeout(tmp_path: Path) -> None:
    """Webhooks of one process waiting behind a held lock each give up after the timeout,
    whether they wait for the lock or for another webhook's transaction: not one after
    another."""
    holder = SqliteStore(tmp_path / "state.db", timeout=1.0)
    try:
        with holding_the_turn(holder):
            started = time.monotonic()

            def webhook(i: int) -> str:
                with pytest.raises(StoreError, match="locked by another writer") as refused:
                    deliver(holder, alert(f"d{i}"))
                return str(refused.value)

            answers = bounded(lambda: in_parallel(webhook, 4))
            elapsed = time.monotonic() - started
        # Each says what the person who set the timeout knows it as.
        assert set(answers) == {  # type: ignore[arg-type]
            f"state store {tmp_path / 'state.db'}: locked by another writer for more than 1s"
            " (BRIDGE_STATE_TIMEOUT)"}
        # The first waits for the lock, the others for its transaction: all give up at 1 s
        # (taking the next transaction's turn after the first gave up would end at 2 s).
        assert elapsed < 1.7, elapsed
        assert holder.queue_depth(NOW)["queued"] == 0
    finally:
        holder.close()


def storm(n: int, tag: str) -> bytes:
    """A webhook of `n` distinct alerts."""
    doc = payload_json("alertmanager_firing_multi.json")
    template = doc["alerts"][0]
    doc["alerts"] = [{**template, "fingerprint": f"{tag}{i:08x}",
                      "labels": {**template["labels"], "system_under_test": f"{tag}-{i}"}}
                     for i in range(n)]
    return json.dumps(doc).encode()


def wal_size(state: str | Path) -> int:
    wal = Path(f"{state}-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_the_write_ahead_log_stays_small_and_the_housekeeper_empties_it(
    make_bridge: Callable[..., Bridge],
) -> None:
    bridge = make_bridge(dry_run=True)
    state = bridge.settings.state_path
    largest = 0
    for n in range(40):  # some 4 MB of log in all: SQLite alone would keep all of it
        assert bridge.post("/webhook", storm(100, f"w{n}")).status_code == 200
        largest = max(largest, wal_size(state))
    # At most the limit, and the one transaction that went past it before the checkpoint.
    assert largest < 1.5 * WAL_LIMIT
    bridge.context.housekeeper.run_once()
    assert wal_size(state) == 0
    assert len(bridge.audit()) == 4000


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB file system (tmpfs), which only root may mount."""
    volume = tmp_path / "volume"
    volume.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(volume)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip("needs a 2 MB tmpfs volume, and mounting one is not permitted here: "
                    + (mounted.stderr.strip() or f"mount exited {mounted.returncode}"))
    try:
        yield volume
    finally:
        subprocess.run(["umount", "--lazy", str(volume)], check=True)


def fill(volume: Path) -> Path:
    """Take every byte left on `volume`, as another program's files would."""
    filler = volume / "filler"
    with filler.open("wb", buffering=0) as f:  # unbuffered: nothing left to fail at close
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_small_volume_holds_the_state_and_the_bridge_recovers_when_space_is_freed(
    gunicorn_bridge: Callable[..., BridgeProcess], small_volume: Path
) -> None:
    bridge = gunicorn_bridge(workers=2, state=small_volume / "state.db")
    body = payload("alertmanager_resolved.json")

    def post() -> int:
        return requests.post(bridge.url + "/webhook", data=body, timeout=30).status_code

    def ready() -> int:
        return requests.get(bridge.url + "/-/ready", timeout=30).status_code

    def store_up() -> str:
        text = requests.get(bridge.url + "/metrics", timeout=30).text
        return next(line.split()[1] for line in text.splitlines()
                    if line.startswith("alert_bridge_state_store_up "))

    try:
        # Each one writes some 20 KB of log: SQLite alone would fill the volume before 100.
        assert [post() for _ in range(150)] == [200] * 150
        filler = fill(small_volume)
        answers = [post() for _ in range(100)]
        assert 503 in answers
        # A failed webhook leaves the frames it wrote at the end of the write-ahead log: a
        # probe's one small row may fit there once or twice, until that space is used up too.
        wait_until(lambda: (ready(), store_up()) == (503, "0.0"),
                   what="the probes to find the volume full")
        filler.unlink()
        wait_until(lambda: ready() == 200, what="the bridge to recover by itself")
        assert (post(), store_up()) == (200, "1.0")
    finally:
        bridge.stop()  # before the volume goes


class _LockedFor:
    """A connection whose `PRAGMA journal_mode=WAL` answers "database is locked" the first
    `times` times, as SQLite does at once (no busy handler) while another connection sets
    the mode of a new file."""

    def __init__(self, times: int, code: int = sqlite3.SQLITE_BUSY) -> None:
        self.left, self.code, self.tries = times, code, 0

    def execute(self, sql: str) -> None:
        self.tries += 1
        if self.left:
            self.left -= 1
            error = sqlite3.OperationalError("database is locked")
            error.sqlite_errorcode = self.code  # type: ignore[attr-defined]
            raise error


def test_wal_mode_is_tried_again_while_another_connection_holds_the_file() -> None:
    conn = _LockedFor(3)
    _wal_mode(conn, timeout=5.0)  # type: ignore[arg-type]
    assert conn.tries == 4


def test_wal_mode_gives_up_at_the_timeout_and_on_any_other_error() -> None:
    with pytest.raises(sqlite3.OperationalError):
        _wal_mode(_LockedFor(10_000), timeout=0.05)  # type: ignore[arg-type]
    other = _LockedFor(1, code=sqlite3.SQLITE_IOERR)
    with pytest.raises(sqlite3.OperationalError):
        _wal_mode(other, timeout=5.0)  # type: ignore[arg-type]
    assert other.tries == 1
