"""Effectiveness: how often each rule's operations fix what they were sent for, from the audit.

Everything is counted from audit records, so the report is the same on every replica and for
any past span the retention keeps: outcome records say what reached the device API,
verification records whether it remediated the alert (and how long that took), decision records
of a ladder's later steps are the escalations, and the events that make the bridge tell a person
(an approval asked for, an operation failed or unknown, a ladder that ran out) are counted as
notifications raised.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.audit import AuditQuery, AuditRecord, format_rows, iso
from bridge.rules import format_duration
from bridge.vocab import QUEUING, Event, OpState, Verdict, Verification

#: Outcomes of operations that reached (or may have reached) the device API.
_SENT = frozenset({OpState.SUCCEEDED, OpState.FAILED, OpState.UNKNOWN})


@dataclass
class Line:
    """The counts of one rule and operation (or of one device)."""

    sent: int = 0  # ended succeeded, failed or unknown
    succeeded: int = 0
    failed: int = 0  # failed or unknown
    remediated: int = 0
    not_remediated: int = 0
    resolved_before: int = 0  # resolved before the call ended: credited to nothing
    escalations: int = 0  # later steps of a ladder that were queued
    notifications: int = 0
    seconds: list[float] = field(default_factory=list)  # from the call to the resolution

    @property
    def verified(self) -> int:
        """Verifications that judged the operation: remediated or not."""
        return self.remediated + self.not_remediated

    @property
    def share(self) -> float | None:
        """The share of verified operations that remediated; None before any was verified."""
        return self.remediated / self.verified if self.verified else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def p90(self) -> float | None:
        return nearest_rank(self.seconds, 0.9)

    def to_json(self) -> dict[str, object]:
        return {
            "sent": self.sent, "succeeded": self.succeeded, "failed_or_unknown": self.failed,
            "verified": self.verified, "remediated": self.remediated,
            "remediated_share": _round(self.share), "not_remediated": self.not_remediated,
            "resolved_before": self.resolved_before,
            "time_to_resolve_seconds": {"median": _round(self.median), "p90": _round(self.p90)},
            "escalations": self.escalations, "notifications": self.notifications,
        }


def nearest_rank(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by nearest rank: a value that happened, whatever the sample's size."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass
class Report:
    """Per (rule, operation), and per device, over the records from `since` to `until`."""

    since: float
    until: float
    rules: dict[tuple[str, str], Line] = field(default_factory=dict)
    devices: dict[str, Line] = field(default_factory=dict)

    @property
    def total(self) -> Line:
        """Every rule together."""
        total = Line()
        for line in self.rules.values():
            for name in ("sent", "succeeded", "failed", "remediated", "not_remediated",
                         "resolved_before", "escalations", "notifications"):
                setattr(total, name, getattr(total, name) + getattr(line, name))
            total.seconds += line.seconds
        return total

    def worst_devices(self, limit: int = 10) -> list[tuple[str, Line]]:
        """The devices that needed the most operations: the ones that keep breaking."""
        ranked = sorted(self.devices.items(), key=lambda kv: (-kv[1].sent, kv[0]))
        return [(d, line) for d, line in ranked if line.sent][:limit]

    def to_json(self, devices: bool = False) -> dict[str, object]:
        doc: dict[str, object] = {
            "since": iso(self.since), "until": iso(self.until),
            "rules": [{"rule": rule, "operation": op, **line.to_json()}
                      for (rule, op), line in sorted(self.rules.items())],
            "total": self.total.to_json(),
        }
        if devices:
            doc["devices"] = [{"device": d, **line.to_json()} for d, line in self.worst_devices()]
        return doc


def build(records: Iterable[AuditRecord], since: float, until: float,
          rule: str | None = None) -> Report:
    """The report of these records (oldest first), of one rule or all."""
    records = [r for r in records if rule is None or r.rule == rule]
    report = Report(since, until)
    later_steps = {(r.rule, r.device, r.fingerprint, r.step) for r in records
                   if r.event == Event.DECISION and (r.step or 1) > 1}
    for r in records:
        if not r.rule:
            continue
        for line in (report.rules.setdefault((r.rule, r.operation), Line()),
                     report.devices.setdefault(r.device, Line())):
            _count(line, r, later_steps)
    return report


def of_store(store: Any, now: float, span: float, rule: str | None = None) -> Report:
    """The report of a store's audit over the last `span` seconds (a bridge.store.Store)."""
    return build(store.audit(AuditQuery(since=now - span, rule=rule, limit=None)), now - span,
                 now, rule)


def _count(line: Line, r: AuditRecord, later_steps: set[tuple[str, str, str, int | None]]
           ) -> None:
    if r.event == Event.OUTCOME and r.outcome in _SENT:
        line.sent += 1
        if r.outcome == OpState.SUCCEEDED:
            line.succeeded += 1
        else:
            line.failed += 1
            line.notifications += 1  # AlertBridgeOperationFailed
    elif r.event == Event.DECISION:
        if (r.step or 1) > 1 and r.outcome in QUEUING:
            line.escalations += 1
        if r.outcome == Verdict.PENDING_APPROVAL:
            line.notifications += 1  # AlertBridgeApprovalPending
    elif r.event == Event.VERIFICATION:
        if r.outcome == Verification.REMEDIATED:
            line.remediated += 1
            if r.elapsed is not None:
                line.seconds.append(r.elapsed)
        elif r.outcome == Verification.NOT_REMEDIATED:
            line.not_remediated += 1
            if (r.rule, r.device, r.fingerprint, (r.step or 1) + 1) not in later_steps:
                line.notifications += 1  # the ladder ran out: AlertBridgeNotRemediated
        elif r.outcome == Verification.RESOLVED_BEFORE:
            line.resolved_before += 1


def _share(line: Line) -> str:
    return "-" if line.share is None else f"{line.share:.0%}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else format_duration(round(value, 1))


TABLE_HEADER = ("RULE", "OPERATION", "SENT", "OK", "FAILED", "VERIFIED", "REMEDIATED",
                "MEDIAN", "P90", "ESCALATED", "NOTIFIED")


def _cells(line: Line) -> tuple[str, ...]:
    return (str(line.sent), str(line.succeeded), str(line.failed), str(line.verified),
            f"{line.remediated} ({_share(line)})", _seconds(line.median), _seconds(line.p90),
            str(line.escalations), str(line.notifications))


def format_report(report: Report, devices: bool = False) -> str:
    """The report as aligned columns, rule by rule, then (with `devices`) the worst devices."""
    rows = [(rule, op, *_cells(line)) for (rule, op), line in sorted(report.rules.items())]
    rows.append(("all rules", "", *_cells(report.total)))
    text = (f"from {iso(report.since)} to {iso(report.until)}\n"
            + format_rows(TABLE_HEADER, rows))
    if devices:
        worst = [(device, *_cells(line)) for device, line in report.worst_devices()]
        text += "\n\nthe devices that needed the most operations\n" + format_rows(
            ("DEVICE", *TABLE_HEADER[2:]), worst)
    return text


def remediation_line(report: Report) -> str:
    """The remediation rate over the report's span, in words (`status`, the console)."""
    total = report.total
    if not total.verified:
        return "no operation verified"
    return (f"{total.remediated} of {total.verified} verified operations remediated"
            f" ({_share(total)}), median {_seconds(total.median)} to resolve")
