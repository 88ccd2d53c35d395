"""The effectiveness report, counted from audit records (built here as the store writes them)."""

from __future__ import annotations

import dataclasses
from typing import Any

from bridge.audit import AuditRecord
from bridge.report import build, format_report, nearest_rank, remediation_line

T0 = 1_800_000_000.0
_FIELDS = [f.name for f in dataclasses.fields(AuditRecord)]


def record(event: str, outcome: str, rule: str = "sync-router", operation: str = "sync",
           device: str = "r1", **fields: Any) -> AuditRecord:
    blank: dict[str, Any] = dict.fromkeys(_FIELDS, "")
    blank.update(id=0, ts=T0, status_code=None, execution_id=None, operation_id=None,
                 attempt=None, step=None, elapsed=None)
    blank.update(event=event, outcome=outcome, rule=rule, operation=operation, device=device,
                 fingerprint=f"fp-{device}", **fields)
    return AuditRecord(**blank)


def ladder(device: str, *, fixed_by_sync: float | None = None,
           fixed_by_reboot: float | None = None) -> list[AuditRecord]:
    """One alert on `device` through a two-step ladder (sync, then reboot)."""
    got = [record("decision", "execute", device=device, operation_id=1),
           record("outcome", "succeeded", device=device, operation_id=1)]
    if fixed_by_sync is not None:
        return [*got, record("verification", "remediated", device=device, step=1,
                             elapsed=fixed_by_sync)]
    got += [record("verification", "not_remediated", device=device, step=1),
            record("decision", "execute", operation="reboot", device=device, step=2),
            record("outcome", "succeeded", operation="reboot", device=device)]
    if fixed_by_reboot is not None:
        return [*got, record("verification", "remediated", operation="reboot", device=device,
                             step=2, elapsed=fixed_by_reboot)]
    return [*got, record("verification", "not_remediated", operation="reboot", device=device,
                         step=2)]


def test_per_rule_and_operation_counts_shares_times_escalations_and_notifications() -> None:
    records = [
        *ladder("r1", fixed_by_sync=10.0), *ladder("r2", fixed_by_sync=30.0),
        *ladder("r3", fixed_by_reboot=200.0), *ladder("r4"),
        record("decision", "pending_approval", rule="wipe", operation="factory", device="r5"),
        record("outcome", "unknown", rule="wipe", operation="factory", device="r5"),
        record("verification", "resolved_before", device="r6", step=1),
        record("decision", "no_match", rule="", operation="", device=""),
    ]
    report = build(records, T0 - 3600, T0)
    sync, reboot, wipe = (report.rules[k] for k in (
        ("sync-router", "sync"), ("sync-router", "reboot"), ("wipe", "factory")))
    assert (sync.sent, sync.succeeded, sync.failed, sync.verified, sync.remediated) == (
        4, 4, 0, 4, 2)
    assert (sync.share, sync.median, sync.p90, sync.resolved_before) == (0.5, 20.0, 30.0, 1)
    # r3 and r4 escalated to a reboot; r4's ladder ran out, which tells a person.
    assert (reboot.escalations, reboot.remediated, reboot.not_remediated) == (2, 1, 1)
    assert (sync.notifications, reboot.notifications) == (0, 1)
    # An approval asked for and an operation ended unknown: two notifications.
    assert (wipe.sent, wipe.failed, wipe.notifications, wipe.share) == (1, 1, 2, None)
    total = report.total
    assert (total.sent, total.remediated, total.verified, total.escalations) == (7, 3, 6, 2)
    doc = report.to_json(devices=True)
    assert doc["total"]["remediated_share"] == 0.5
    assert doc["total"]["time_to_resolve_seconds"] == {"median": 30.0, "p90": 200.0}
    assert [d["device"] for d in doc["devices"]][:2] == ["r3", "r4"]  # two operations each


def test_one_rule_only_and_an_empty_span() -> None:
    records = [*ladder("r1", fixed_by_sync=5.0),
               record("outcome", "failed", rule="other", device="r9")]
    assert list(build(records, T0 - 60, T0, rule="other").rules) == [("other", "sync")]
    empty = build([], T0 - 60, T0)
    assert empty.rules == {} and remediation_line(empty) == "no operation verified"
    assert "all rules" in format_report(empty)


def test_the_table_and_the_status_line() -> None:
    report = build([*ladder("r1", fixed_by_sync=90.0), *ladder("r2")], T0 - 86400, T0)
    table = format_report(report, devices=True).splitlines()
    assert table[0] == "from 2027-01-14T08:00:00.000Z to 2027-01-15T08:00:00.000Z"
    assert table[1].split() == ["RULE", "OPERATION", "SENT", "OK", "FAILED", "VERIFIED",
                                "REMEDIATED", "MEDIAN", "P90", "ESCALATED", "NOTIFIED"]
    assert table[3].split() == ["sync-router", "sync", "2", "2", "0", "2", "1", "(50%)",
                                "1m30s", "1m30s", "0", "0"]
    assert "the devices that needed the most operations" in table
    assert remediation_line(report) == (
        "1 of 3 verified operations remediated (33%), median 1m30s to resolve")


def test_nearest_rank_takes_values_that_happened() -> None:
    assert nearest_rank([], 0.9) is None
    assert nearest_rank([5.0], 0.9) == 5.0
    assert nearest_rank([float(n) for n in range(1, 11)], 0.9) == 9.0
    assert nearest_rank([float(n) for n in range(1, 12)], 0.9) == 10.0
