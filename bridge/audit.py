"""Audit records: what the bridge decided and did, for whom and why; queries and display."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime

# Events. A "decision" is written for every (alert, rule) judgement; an "attempt" for each
# call to the device API that will be tried again; an "outcome" once per operation that was
# decided EXECUTE, when it reaches its final result (succeeded, failed, unknown, expired).
DECISION = "decision"
APPROVAL = "approval"  # a person approved an operation that was pending approval
ATTEMPT = "attempt"
OUTCOME = "outcome"


@dataclass(frozen=True)
class Delivery:
    """The webhook request a decision came from."""

    request_id: str
    source: str
    receiver: str
    group_key: str


@dataclass(frozen=True)
class AuditRecord:
    id: int
    ts: float
    event: str
    request_id: str
    source: str
    receiver: str
    group_key: str
    fingerprint: str
    alertname: str
    alert_status: str
    rule: str
    device: str
    operation: str
    outcome: str
    reason: str
    status_code: int | None
    execution_id: str | None
    error: str
    operation_id: int | None
    attempt: int | None

    def to_json(self) -> dict[str, object]:
        doc = asdict(self)
        doc["time"] = iso(self.ts)
        del doc["ts"]
        return {"time": doc.pop("time"), **doc}


COLUMNS = tuple(f.name for f in fields(AuditRecord))


@dataclass(frozen=True)
class AuditQuery:
    """Filters shared by `alert-bridge audit` and (later) the HTTP audit API."""

    device: str | None = None
    rule: str | None = None
    outcome: str | None = None
    since: float | None = None  # epoch seconds
    after_id: int = 0
    #: The newest `limit` records that pass the filters, returned oldest first; None: all.
    limit: int | None = 50


def iso(ts: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds, the form every output uses."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def to_json_line(record: AuditRecord) -> str:
    return json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":"))


TABLE_HEADER = ("TIME", "RULE", "DEVICE", "OPERATION", "OUTCOME", "HTTP", "DETAIL")


def table_row(r: AuditRecord) -> tuple[str, ...]:
    if r.event == ATTEMPT:
        detail = f"attempt {r.attempt}: {r.error} ({r.reason})"
    elif r.event == OUTCOME:
        detail = r.execution_id or r.error or r.reason
    else:
        detail = r.reason
    alert = f"{r.alertname or '-'}[{r.fingerprint[:8]}]" if r.fingerprint else (r.alertname or "-")
    return (
        iso(r.ts)[:-5].replace("T", " "),
        r.rule or "-",
        r.device or "-",
        r.operation or "-",
        r.outcome,
        str(r.status_code) if r.status_code is not None else "-",
        f"{alert} {detail}".strip(),
    )


def format_table(records: list[AuditRecord], header: bool = True) -> str:
    return format_rows(TABLE_HEADER if header else None, [table_row(r) for r in records])


def format_rows(header: tuple[str, ...] | None, rows: list[tuple[str, ...]]) -> str:
    """Aligned columns; the last column (free text) is never padded."""
    if header:
        rows = [header, *rows]
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
