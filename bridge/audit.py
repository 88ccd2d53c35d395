"""Audit records: what the bridge decided and did, for whom and why; queries and display.

Records form a hash chain: each carries the hash of the record before it (`prev_hash`) and its
own `hash`, SHA-256 over a canonical encoding of its id, every column and `prev_hash`. Altering,
removing or inserting a record breaks the chain at that point; `verify_chain` finds where.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime

from bridge.text import json_line, printable

# Events. A "decision" is written for every (alert, rule) judgement; an "attempt" for each
# call to the device API that will be tried again; an "outcome" once per operation that was
# decided EXECUTE, when it reaches its final result (succeeded, failed, unknown, expired).
DECISION = "decision"
APPROVAL = "approval"  # a person approved an operation that was pending approval
ATTEMPT = "attempt"
OUTCOME = "outcome"
OPERATOR = "operator"  # a person changed the state by hand (a cooldown cleared)


@dataclass(frozen=True)
class Delivery:
    """The webhook request a decision came from."""

    request_id: str
    source: str
    receiver: str
    group_key: str
    rules_version: str = ""


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
    rules_version: str  # the rules file (content hash) that made the decision
    #: The step of its rule's ladder, for decisions on a later step (2, 3, ...) and for
    #: verifications (1 for the rule's own operation); None otherwise.
    step: int | None
    #: Seconds from the call to the alert's resolution, for a `remediated` verification.
    elapsed: float | None
    prev_hash: str  # the hash of the record before; GENESIS for the first record ever written
    hash: str  # SHA-256 (hex) of chain_encoding(): id, every column above, prev_hash

    def to_json(self) -> dict[str, object]:
        doc = asdict(self)
        doc["time"] = iso(self.ts)
        del doc["ts"]
        return {"time": doc.pop("time"), **doc}


COLUMNS = tuple(f.name for f in fields(AuditRecord))
#: What a record's hash covers: every column but the hash itself, id and prev_hash included.
HASHED = COLUMNS[:-1]
#: What the store supplies for a new record; _append adds id, prev_hash and hash.
CONTENT = COLUMNS[1:-2]
#: prev_hash of the first record ever written.
GENESIS = "0" * 64
#: The largest id of a record or an operation: ids are 64-bit signed integers in SQLite (and
#: PostgreSQL's bigint); a larger number sent as an id or a bound is refused, not overflowed.
MAX_ID = 2**63 - 1

_INTEGER = frozenset({"id", "status_code", "operation_id", "attempt", "step"})
_REAL = frozenset({"ts", "elapsed"})
#: The HASHED columns that hold text.
_TEXT = frozenset(HASHED) - _INTEGER - _REAL
#: Columns added after records were first chained: a record hashes them only when it holds
#: a value, so every record written before they existed keeps its hash.
LATER = frozenset({"step", "elapsed"})


def new_record(record_id: int, content: Mapping[str, object],
               prev_hash: str) -> dict[str, object]:
    """The values of a record about to be appended, in HASHED order, typed as the store returns
    them. `content` holds every CONTENT column, by name.

    The hash is computed from these values and these values are what is stored, so a record
    read back hashes the same: an int timestamp becomes the float the REAL column gives back,
    a bool the int, and so on.
    """
    if content.keys() != _CONTENT_SET:
        missing, extra = set(CONTENT) - set(content), set(content) - set(CONTENT)
        raise ValueError(f"an audit record's columns: missing {sorted(missing)},"
                         f" unknown {sorted(extra)}")
    values: dict[str, object] = {"id": int(record_id)}
    for column, typed in _TYPED:
        value = content[column]
        values[column] = None if value is None else typed(value)
    values["prev_hash"] = prev_hash
    return values


_CONTENT_SET = frozenset(CONTENT)
#: Each CONTENT column with the type its values are stored as.
_TYPED: tuple[tuple[str, type], ...] = tuple(
    (column, int if column in _INTEGER else float if column in _REAL else str)
    for column in CONTENT)
#: The HASHED columns in the order chain_encoding writes them (its keys sorted), each with
#: whether it is left out when NULL.
_ENCODED = tuple((column, column in LATER) for column in sorted(HASHED))
#: json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False) makes a new
#: encoder per call; the same encoder, made once, writes the same bytes for less. Its keys
#: come sorted already (_ENCODED).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def chain_encoding(values: Mapping[str, object]) -> bytes:
    """The canonical bytes a record's hash is taken over.

    A JSON object of the HASHED columns (id, ts ... attempt, prev_hash) with sorted keys, no
    whitespace, non-ASCII characters as themselves, UTF-8; ts is a JSON number written as
    Python's repr of the float (1700000000.0), SQL NULL is null. Keys make it independent of
    column order and unambiguous whatever the strings contain. A column of LATER is left out
    when it is NULL (or missing), as it was from every record written before it existed.
    """
    get = values.get
    doc = {column: value for column, later in _ENCODED
           if (value := get(column)) is not None or not later}
    return _ENCODER.encode(doc).encode()


def chain_hash(values: Mapping[str, object]) -> str:
    return hashlib.sha256(chain_encoding(values)).hexdigest()


#: A new record's CONTENT values, in CONTENT order, each already of the type it is stored as
#: (str, int, float, or None): what the store builds for each of a storm's decisions.
StoredValues = tuple[object, ...]


def chain(first_id: int, contents: Iterable[Mapping[str, object] | StoredValues],
          prev_hash: str) -> tuple[list[tuple[object, ...]], str]:
    """New records for `contents`, chained from `prev_hash` with ids from `first_id` on:
    their rows (the values of new_record, then the hash) and the last hash. Each content is
    a mapping holding every CONTENT column by name (checked, and typed as new_record types
    it), or StoredValues (taken as they are).

    The same values and hashes as new_record and chain_hash record by record (a test holds
    them to it), built for a storm's hundreds of records at a time: each value written by
    the C function that writes its type, into a template of the keys made once.
    """
    rows: list[tuple[object, ...]] = []
    record_id = int(first_id)
    for content in contents:
        if type(content) is tuple:
            if len(content) != len(CONTENT):
                raise ValueError(f"an audit record's values: {len(content)}, not"
                                 f" {len(CONTENT)}")
            row = (record_id, *content, prev_hash)
        else:
            assert isinstance(content, Mapping)
            if content.keys() != _CONTENT_SET:
                new_record(record_id, content, prev_hash)  # raises, naming the columns
            row = (record_id, *[value if value is None or type(value) is typed else typed(value)
                                for value, typed in zip(_pick_content(content), _TYPES,
                                                        strict=True)],
                   prev_hash)
        prev_hash = hashlib.sha256(_encoding(row).encode()).hexdigest()
        rows.append((*row, prev_hash))
        record_id += 1
    return rows, prev_hash


def _encoding(row: tuple[object, ...]) -> str:
    """chain_encoding of a row of new_record's values, in HASHED order, as text."""
    values = _pick_sorted(row)
    try:
        texts = [write(value) for write, value in zip(_WRITERS, values, strict=True)]
    except TypeError:  # a NULL where text goes: not what the store writes, but allowed
        return chain_encoding(dict(zip(HASHED, row, strict=True))).decode()
    step, elapsed = values[_STEP_AT] is None, values[_ELAPSED_AT] is None
    for at in _LATER_AT:
        if values[at] is None:
            del texts[at]
    return _TEMPLATES[(step, elapsed)] % tuple(texts)


_write_text: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]
#: The text columns that hold NULL in records the store writes (no call, no execution id).
_NULL_TEXT = frozenset({"execution_id"})


def _text_or_null(value: str | None) -> str:
    return "null" if value is None else _write_text(value)


def _number(value: object) -> str:
    """A number (or NULL) as the JSON encoder writes it."""
    if value is None:
        return "null"
    if type(value) is float:
        if value != value:
            return "NaN"
        if value in (math.inf, -math.inf):
            return "Infinity" if value > 0 else "-Infinity"
        return float.__repr__(value)
    return int.__repr__(value)  # type: ignore[arg-type]


_TYPES = tuple(typed for _, typed in _TYPED)
_pick_content = operator.itemgetter(*CONTENT)
#: HASHED's names sorted, as chain_encoding writes them, and where each sits in a row.
_SORTED_NAMES = tuple(sorted(HASHED))
_pick_sorted = operator.itemgetter(*(HASHED.index(column) for column in _SORTED_NAMES))
#: What writes each value of the sorted document: text by json's own C function (a NULL there
#: raises TypeError, and the record is written by the encoder instead), numbers by _number.
_WRITERS = tuple(
    _number if column not in _TEXT else _text_or_null if column in _NULL_TEXT
    else _write_text for column in _SORTED_NAMES
)
_STEP_AT, _ELAPSED_AT = _SORTED_NAMES.index("step"), _SORTED_NAMES.index("elapsed")
#: The LATER columns' places in the sorted document, last first (deleted in that order).
_LATER_AT = sorted((_SORTED_NAMES.index(column) for column in LATER), reverse=True)
#: The document's text with a %s for each value, by whether step and elapsed are left out.
_TEMPLATES = {
    (step, elapsed): "{" + ",".join(
        f'"{column}":%s' for column in _SORTED_NAMES
        if not (column == "step" and step or column == "elapsed" and elapsed)) + "}"
    for step in (False, True) for elapsed in (False, True)
}


@dataclass(frozen=True)
class ChainReport:
    """What `verify_chain` found: the first problem, or how many records chain intact."""

    records: int
    first_id: int | None
    head_id: int | None
    head_hash: str | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return self.problem
        if self.head_id is None:
            return "OK: 0 records, the audit log is empty"
        count = f"{self.records} record{'' if self.records == 1 else 's'}"
        if self.first_id != 1:
            count += f" from record {self.first_id}"
        return f"OK: {count}, chain intact, head {self.head_id} sha256:{self.head_hash}"


def verify_chain(records: Iterable[AuditRecord], written_up_to: int = 0) -> ChainReport:
    """Walk `records` in id order and report the first break in the chain.

    The first record is the anchor: its prev_hash is trusted (older records may have been
    pruned) unless it is record 1, whose prev_hash must be GENESIS. `written_up_to` is the
    highest id ever written (SQLite's AUTOINCREMENT counter): records missing past the last one
    are reported too, as long as nobody reset that counter as well.
    """
    count, first, prev = 0, None, None
    for r in records:
        if prev is None:
            first = r.id
        elif r.id != prev.id + 1:
            return _broken(count, first, prev, f"audit record {r.id} does not follow record"
                           f" {prev.id}: {_missing(prev.id + 1, r.id - 1)}")
        if not r.hash:
            return _broken(count, first, prev, f"audit record {r.id} has no hash (written"
                           " without the chain, or its hash was removed)")
        if chain_hash({c: getattr(r, c) for c in HASHED}) != r.hash:
            return _broken(count, first, prev, f"audit record {r.id} was altered (its hash does"
                           " not match its content)")
        if prev is not None and r.prev_hash != prev.hash:
            return _broken(count, first, prev, f"audit record {r.id} is not chained to record"
                           f" {prev.id} (its prev_hash is not record {prev.id}'s hash): one of"
                           " them was inserted, replaced or rewritten")
        if prev is None and r.id == 1 and r.prev_hash != GENESIS:
            return _broken(count, first, prev, "audit record 1 was re-chained (its prev_hash"
                           " is not the genesis value)")
        count, prev = count + 1, r
    last = prev.id if prev is not None else 0
    if written_up_to > last:
        where = (f"the log ends at record {last}" if prev is not None
                 else "the audit log is empty")
        return _broken(count, first, prev, f"audit {_missing(last + 1, written_up_to)} from"
                       f" the end: {where}, but record {written_up_to} was written")
    return ChainReport(count, first, last or None, prev.hash if prev is not None else None)


def _missing(low: int, high: int) -> str:
    if low == high:
        return f"record {low} is missing"
    return f"records {low} to {high} are missing"


def _broken(count: int, first: int | None, prev: AuditRecord | None, problem: str) -> ChainReport:
    return ChainReport(count, first, prev.id if prev else None, prev.hash if prev else None,
                       problem)


@dataclass(frozen=True)
class AuditQuery:
    """Filters shared by `alert-bridge audit` and `GET /api/audit`."""

    device: str | None = None
    rule: str | None = None
    outcome: str | None = None
    since: float | None = None  # epoch seconds
    #: Only the records of this operation: its decision, approval, attempts and outcome. Give
    #: its device too: the audit is indexed by device.
    operation_id: int | None = None
    after_id: int = 0
    #: Only records older than this one (paging backwards from the newest); None: no bound.
    before_id: int | None = None
    #: The newest `limit` records that pass the filters, returned oldest first; None: all.
    limit: int | None = 50
    #: Page forwards instead: the oldest `limit` records after `after_id`.
    oldest_first: bool = False


# What datetime can show: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_FIRST_SHOWN, _LAST_SHOWN = -62_135_596_800.0, 253_402_300_799.0


# A storm's answer and audit show the same few times (its cooldowns' ends) hundreds of times.
@functools.lru_cache(maxsize=1024)
def iso(ts: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds, the form every output uses.

    A time past what datetime can show is shown at the limit instead of failing whatever
    reads it: a startsAt in the year 9999 is such a time in epoch seconds, and a state file
    written before payload times were bounded can hold a cooldown until the year 10000.
    """
    ts = min(max(ts, _FIRST_SHOWN), _LAST_SHOWN)
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def to_json_line(record: AuditRecord) -> str:
    return json_line(record.to_json())


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
    """Aligned columns; the last column (free text) is never padded.

    Cells may hold text from alerts: each is escaped (text.printable), so one row is one line.
    """
    rows = [tuple(printable(cell) for cell in row) for row in rows]
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
