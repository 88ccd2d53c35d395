"""The store's logic, written once in SQL that every engine runs: claims, queue, audit.

An engine (sqlite.py, postgres.py) supplies connections, transactions and the few words its
SQL spells differently, through a Tx; everything that decides what is written lives here.
Statements use `?` for parameters; a Tx translates them when its engine wants another mark.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from bridge.audit import (
    COLUMNS,
    CONTENT,
    GENESIS,
    AuditQuery,
    AuditRecord,
    ChainReport,
    Delivery,
    StoredValues,
    chain,
    iso,
    verify_chain,
)
from bridge.client import CallResult
from bridge.decide import Decision, Key, State
from bridge.errors import BridgeError
from bridge.jsontext import encoder
from bridge.ladder import Concluded, Resolution, Rung, Watch, expired, resolved
from bridge.notices import (
    Delivered,
    Failure,
    LadderEnd,
    Notice,
    NoticeState,
    Pending,
    Subject,
    Told,
)
from bridge.payloads import Alert
from bridge.rules import Budget
from bridge.vocab import (
    DEMAND,
    NEVER_SENT,
    OPEN_STATES,
    QUEUING,
    CallOutcome,
    Event,
    Flag,
    Hold,
    OpState,
    Outcome,
    Verdict,
    Verification,
)

T = TypeVar("T")
Row = dict[str, Any]
#: An audit record to append: its columns by name, or its values as stored (audit.chain).
Entry = Row | StoredValues

#: The longest a readiness probe or a scrape waits for its test write's turn: writes that
#: wait longer than that are what not ready means.
PROBE_WAIT = 1.0
#: Seconds between a replica's heartbeats; one unseen for REPLICA_GONE is counted gone.
HEARTBEAT = 5.0
REPLICA_GONE = 3 * HEARTBEAT
#: A replica's row is deleted once unseen this long (its host is not coming back).
_REPLICA_FORGOTTEN = 86400.0
#: The tables a state is made of, in the order copy-state writes them, each with its key.
STATE_TABLES = (("meta", "key"), ("cooldowns", "device, operation"), ("operations", "id"),
                ("audit", "id"), ("verifications", "operation_id"),
                ("resolutions", "fingerprint, resolved_at"), ("notices", "key"))
#: The last "table" export_rows gives: the highest audit id ever written, in one row.
AUDIT_WRITTEN = "audit_written"
#: Rows per INSERT batch of copy-state.
COPY_BATCH = 500


class StoreError(BridgeError):
    """The state store cannot be read or written, or refuses what was asked of it."""

    status = 503

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message, status)


@dataclass(frozen=True)
class Recorded:
    """A decision as it was committed; EXECUTE decisions carry the id of their operation."""

    decision: Decision
    operation_id: int | None = None


@dataclass(frozen=True)
class Operation:
    """A recorded EXECUTE decision on its way to the device API."""

    id: int
    device: str
    operation: str
    rule: str
    state: str
    created: float
    attempts: int
    claim_until: float
    request_id: str
    source: str
    receiver: str
    group_key: str
    fingerprint: str
    alertname: str
    alert_status: str
    rules_version: str = ""
    #: Not sent after this time: the approval timeout while pending, then the maximum age.
    expires_at: float = 0.0
    #: The step of its rule's ladder: 1 for the rule's own operation.
    step: int = 1

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Operation:
        """The operation in a row that holds (at least) its columns."""
        return cls(**{name: row[name] for name in _OP_FIELDS})

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id, "state": self.state, "device": self.device,
            "operation": self.operation, "rule": self.rule, "created": iso(self.created),
            "expires_at": iso(self.expires_at), "alertname": self.alertname,
            "fingerprint": self.fingerprint, "request_id": self.request_id, "step": self.step,
        }


@dataclass(frozen=True)
class Cooldown:
    """A cooldown in force: no `operation` is queued for `device` again before `until`."""

    device: str
    operation: str
    until: float
    rule: str  # the rule whose operation claimed it
    operation_id: int | None  # that operation; None for claims older than this column

    def to_json(self) -> dict[str, object]:
        return {"device": self.device, "operation": self.operation, "until": iso(self.until),
                "rule": self.rule, "operation_id": self.operation_id}


@dataclass(frozen=True)
class AskingAlert:
    """The alert that asked for an operation, as a person deciding on it needs to see it."""

    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float | None  # None: the payload gave no startsAt


@dataclass(frozen=True)
class DeviceSeen:
    """A device the audit names: how many records it has and when the newest was written."""

    device: str
    records: int
    last_seen: float


#: Seconds in the buckets of operations_per_week.
WEEK = 7 * 86400.0


@dataclass(frozen=True)
class Claim:
    """The operation a sender may send now, or None and how long to wait for the rate limit."""

    operation: Operation | None
    wait: float
    #: With an operation: whether the concurrency limit leaves room for another sender now
    #: (otherwise waking one to look would only cost a claim that finds none). A hint about
    #: the moment, not part of what was claimed.
    room: bool = field(default=False, compare=False)


_OP_FIELDS = tuple(f.name for f in fields(Operation))
_OP_COLUMNS = ", ".join(_OP_FIELDS)
_COOLDOWN_COLUMNS = ", ".join(f.name for f in fields(Cooldown))
_AUDIT_COLUMNS = ", ".join(COLUMNS)
#: The state an operation ends in, for each final result of a call.
_ENDS_AS = {CallOutcome.SUCCEEDED: OpState.SUCCEEDED, CallOutcome.FAILED: OpState.FAILED,
            CallOutcome.UNKNOWN: OpState.UNKNOWN}


class Store(Protocol):
    """What the bridge needs from a state backend: SQLite (one server) or PostgreSQL."""

    #: Where the state is, as messages and logs show it (never a password).
    where: str
    #: Which engine keeps it: "sqlite" or "postgresql".
    engine: str

    def ping(self) -> None: ...
    def active_cooldowns(self, now: float) -> dict[Key, float]: ...
    def cooldowns(self, now: float, device: str | None = None) -> list[Cooldown]: ...
    def clear_cooldowns(self, device: str, operation: str | None, who: str,
                        now: float) -> list[Cooldown]: ...
    def record(self, delivery: Delivery, judge: Callable[[State], list[Decision]], now: float,
               *, max_age: float, approval_timeout: float,
               answer: Callable[[list[Recorded]], T]) -> T: ...
    def read_state(self, judge: Callable[[State], T]) -> T: ...
    def pending(self, now: float) -> list[Operation]: ...
    def operation(self, operation_id: int, now: float) -> Operation | None: ...
    def asking_alerts(self, operation_ids: Sequence[int]) -> dict[int, AskingAlert]: ...
    def devices(self, containing: str, limit: int) -> list[DeviceSeen]: ...
    def operations_per_week(self, device: str, now: float, weeks: int) -> list[int]: ...
    def pause(self, now: float, who: str) -> bool: ...
    def settle(self, operation_id: int, approve: bool, who: str, now: float, *,
               max_age: float, release_until: float) -> Operation: ...
    def cancel(self, why: Callable[[Operation], str | None], now: float, *,
               operation_id: int | None = None, release_until: float | None = None,
               except_version: str | None = None) -> list[Operation]: ...
    def claim(self, now: float, *, concurrency: int, spacing: float, lease: float) -> Claim: ...
    def next_due(self, now: float) -> float | None: ...
    def listen(self, wake: Callable[[], None]) -> None: ...
    def unlisten(self) -> None: ...
    def finish(self, op: Operation, result: CallResult, now: float, *,
               retry_at: float | None = None, release_until: float | None = None,
               wake_others: bool = True) -> None: ...
    def end_stale(self, now: float, release_until: float) -> list[Operation]: ...
    def queue_depth(self, now: float) -> dict[str, int]: ...
    def outcome_counts(self, since: float) -> dict[str, int]: ...
    def resume(self, now: float, who: str | None = None) -> list[str]: ...
    def prune(self, before: float, batch: int = 500) -> int: ...
    def checkpoint(self) -> bool: ...
    def check_writable(self, now: float) -> None: ...
    def get_flag(self, key: str) -> float | None: ...
    def set_flag(self, key: str, value: float | None) -> None: ...
    def audit(self, query: AuditQuery) -> list[AuditRecord]: ...
    def verify_audit(self) -> ChainReport: ...
    # The closing loop (bridge.loop):
    def take_lease(self, owner: int, now: float, ttl: float) -> bool: ...
    def watched_from(self, source: str) -> bool: ...
    def conclude(self, now: float, *, firing: set[str] | None, judge: NextStep,
                 max_age: float, approval_timeout: float,
                 rules_version: str) -> list[Concluded]: ...
    def in_progress(self, fingerprints: Sequence[str]) -> list[Rung]: ...
    def notice_state(self, now: float) -> NoticeState: ...
    def sync_notices(self, current: Sequence[Notice], now: float) -> list[Told]: ...
    def mark_told(self, delivered: Delivered) -> None: ...
    def acknowledge(self, operation_id: int, who: str, now: float) -> str: ...
    def heartbeat(self, replica: str, version: str, now: float) -> None: ...
    def replicas_alive(self, now: float) -> int: ...
    def export_rows(self) -> Iterator[tuple[str, list[Row]]]: ...
    def import_rows(self, batches: Iterable[tuple[str, list[Row]]]) -> dict[str, int]: ...
    def close(self) -> None: ...


class Lock(Enum):
    """What a write transaction must not run beside, on an engine that lets writers run at
    once (PostgreSQL). SQLite runs one writer at a time anyway and needs none of these."""

    #: Decisions and every audit append, one at a time: budgets and the storm breaker are
    #: counts that must not change between reading and writing, and the hash chain is one line.
    CHAIN = "chain"
    #: Claims, one at a time: the concurrency limit, the rate-limit slot and one operation per
    #: device hold only if no two claims read the same counts. Never waits for CHAIN.
    CLAIM = "claim"
    #: Rows nobody else reads to decide anything (flags, the write probe, pruning).
    NONE = "none"


class Tx:
    """A connection inside one transaction, speaking the SQL this module writes.

    Engines subclass it for the few things their SQL spells differently.
    """

    #: Appended to the claim's SELECT: where other writers run at once, a row one of them
    #: holds is skipped, not waited for.
    SKIP_LOCKED = ""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def translate(self, sql: str) -> str:
        """`sql` with its `?` marks as the engine's driver wants them."""
        return sql

    def notify_queue(self) -> None:
        """Tell every process's idle senders, once this commits, that there may be work
        (an operation queued, approved, or a sending slot freed): each engine's listen()
        hears it."""

    def execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        return self.conn.execute(self.translate(sql), tuple(params))

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return _named(self.execute(sql, params))

    def row(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def value(self, sql: str, params: Sequence[object] = ()) -> Any:
        found = self.execute(sql, params).fetchone()
        return found[0] if found else None

    def stream(self, sql: str, params: Sequence[object] = ()) -> Generator[Row, None, None]:
        """Rows one at a time, for a result too large to hold (the whole audit)."""
        cursor = self.execute(sql, params)
        names = [d[0] for d in cursor.description]
        for values in cursor:
            yield dict(zip(names, values, strict=True))

    def json_text(self, column: str, key: str) -> str:
        """An expression for the text at `key` of the JSON object in `column` (NULL if none).

        `key` is a label name, checked at load ([a-zA-Z_][a-zA-Z0-9_]*): safe in the SQL."""
        raise NotImplementedError

    def contains(self, column: str) -> str:
        """An expression true where the text in `column` contains the parameter's text, in
        any case (one `?`)."""
        raise NotImplementedError

    def audit_written(self) -> int:
        """The highest audit id ever written, deleted or not (0 before the first)."""
        raise NotImplementedError

    def note_audit_written(self, last_id: int) -> None:
        """Remember `last_id` as written, where the engine does not remember it by itself."""

    def chain_head(self) -> tuple[int, str, int]:
        """Where the audit chain goes on from: the newest record's id and hash (0 and GENESIS
        when there is none), and the highest id ever written."""
        head = self.row("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
        last_id, last_hash = (head["id"], head["hash"]) if head is not None else (0, GENESIS)
        return last_id, last_hash, self.audit_written()

    def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        cursor = self.conn.cursor()
        try:
            cursor.executemany(self.translate(sql), rows)
        finally:
            cursor.close()

    def after_import(self, audit_written: int) -> None:
        """After rows came in with their own ids: the engine's counters go on from them, and
        the highest audit id ever written is `audit_written` (or the highest id, if more)."""
        raise NotImplementedError

    def schema_version(self) -> int:
        """The version of the schema (schema.MIGRATIONS) this state was last brought to."""
        raise NotImplementedError

    def set_schema_version(self, version: int) -> None:
        raise NotImplementedError


def _named(cursor: Any) -> list[Row]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


class _Engine:
    """What every part of the store stands on: an engine's transactions (`_write`,
    `_reading`), which SQLite and PostgreSQL each supply."""

    #: Where the state is, as messages show it (never a password).
    where: str
    #: BRIDGE_STATE_TIMEOUT: the longest a write waits for its turn.
    _timeout: float

    # -- what an engine supplies ----------------------------------------------------------

    def _write(self, wait: float | None = None, lock: Lock = Lock.CHAIN, *,
               deadline: float | None = None) -> AbstractContextManager[Tx]:
        """One write transaction, committed when the block ends, rolled back if it raises;
        StoreError (503) if its turn does not come within `wait` (default: the timeout), or
        by `deadline` (time.monotonic()) when that is given: one that waited already."""
        raise NotImplementedError

    def _reading(self, snapshot: bool = False) -> AbstractContextManager[Tx]:
        """A connection to read with; in one consistent snapshot if `snapshot`."""
        raise NotImplementedError

    def checkpoint(self) -> bool:
        """Give back what the engine's log holds; False if some had to stay (next time)."""
        return True

    def close(self) -> None:
        raise NotImplementedError

    def listen(self, wake: Callable[[], None]) -> None:
        """Call `wake` whenever another process may have queued work (Tx.notify_queue), from
        a thread of this process, until unlisten() or close(); nothing to do where no other
        process sends."""

    def unlisten(self) -> None:
        """Stop calling the `wake` given to listen()."""

    # -- reads ----------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        with self._reading() as tx:
            return tx.rows(sql, params)


class _ClosingLoop(_Engine):
    """The closing loop's state: watches of sent operations, their ladders, and what people
    were told."""

    def take_lease(self, owner: int, now: float, ttl: float) -> bool:
        """Hold the closing loop's lease until now + ttl unless another owner holds it: True
        when `owner` may run this round. A dead owner's lease runs out by itself."""
        with self._write() as tx:
            holder = _meta(tx, Flag.LOOP_OWNER)
            if holder not in (0.0, float(owner)) and _meta(tx, Flag.LOOP_LEASE) > now:
                return False
            _set_meta(tx, Flag.LOOP_OWNER, float(owner))
            _set_meta(tx, Flag.LOOP_LEASE, now + ttl)
            return True

    def watched_from(self, source: str) -> bool:
        """Whether something open waits on an alert from `source` (a watch, a ladder that ran
        out, a later step not sent yet): the loop then asks Alertmanager about them."""
        with self._reading() as tx:
            return bool(_open_fingerprints(tx, source, limit=1))

    def conclude(self, now: float, *, firing: set[str] | None, judge: NextStep,
                 max_age: float, approval_timeout: float,
                 rules_version: str) -> list[Concluded]:
        """End the watches that are over, and judge the next step of each that missed.

        `firing`: the fingerprints Alertmanager says fire now (None: it was not asked); an
        open alert from Alertmanager not among them resolved, as far as the bridge can tell,
        now. A watch ends remediated (or resolved_before) when its alert resolved within its
        window, not_remediated once the window passed; then `judge` decides the ladder's next
        step on the state of this very transaction, and it is queued as a webhook's would be.
        """
        with self._write() as tx:
            entries: list[Entry] = []
            if firing is not None:
                for fingerprint in sorted(_open_fingerprints(tx, "alertmanager") - firing):
                    entries += _alert_resolved(tx, fingerprint, now, now)
            concluded = [
                _conclude(tx, w, now, entries, judge, max_age, approval_timeout, rules_version)
                for w in _watches(tx, _DUE, (_WATCHING, now))]
            _append(tx, entries)
            return concluded

    def in_progress(self, fingerprints: Sequence[str]) -> list[Rung]:
        """The ladders these alerts are on: their operations on the way, and their watches."""
        if not fingerprints:
            return []
        marks = ", ".join("?" * len(fingerprints))
        rows = self._read(
            f"SELECT o.rule, o.step, o.operation, o.id, o.state, o.fingerprint,"
            f" v.state AS watch, v.deadline FROM operations o LEFT JOIN verifications v"
            f" ON v.operation_id = o.id WHERE o.fingerprint IN ({marks})"
            f" AND (o.state IN (?, ?, ?) OR v.state = ?) ORDER BY o.id",
            (*fingerprints, *sorted(OPEN_STATES), _WATCHING))
        return [Rung(r["rule"], r["step"], r["operation"], r["id"], r["watch"] or r["state"],
                     r["fingerprint"], r["deadline"] if r["watch"] else None) for r in rows]

    def notice_state(self, now: float) -> NoticeState:
        """What a person should know about now."""
        with self._reading() as tx:
            since = tx.value("SELECT value FROM meta WHERE key = ?", (Flag.BREAKER_OPEN,))
            return NoticeState(
                pending=tuple(Pending(_subject(r), r["created"], r["expires_at"]) for r in tx.rows(
                    f"SELECT {_SUBJECT}, o.created, o.expires_at FROM operations o"
                    " WHERE o.state = ? AND o.expires_at >= ? ORDER BY o.id",
                    (OpState.PENDING_APPROVAL, now))),
                failures=tuple(_failures(tx, now)),
                ladders=tuple(_ladder_ends(tx)),
                breaker_since=since,
                breaker_reason=_tripped_by(tx, since) if since is not None else "")

    def sync_notices(self, current: Sequence[Notice], now: float) -> list[Told]:
        """Remember the notices in force (a new one starts, a missing one ends now): each with
        something left to tell."""
        with self._write(lock=Lock.NONE) as tx:
            known = {r["key"]: r for r in tx.rows("SELECT key, ended FROM notices")}
            for notice in current:
                _keep_notice(tx, notice, known.get(notice.key))
            keys = {n.key for n in current}
            for key in sorted(k for k, r in known.items() if k not in keys and r["ended"] is None):
                tx.execute("UPDATE notices SET ended = ? WHERE key = ?", (now, key))
            told = (_told(r) for r in tx.rows("SELECT * FROM notices ORDER BY since, key"))
            return [t for t in told if not t.done]

    def mark_told(self, delivered: Delivered) -> None:
        """Note what was told; forget the notices with nothing left to tell."""
        with self._write(lock=Lock.NONE) as tx:
            for key, flags in sorted(delivered.items()):
                for flag in sorted(flags & _TOLD):
                    tx.execute(f"UPDATE notices SET {flag} = 1 WHERE key = ?", (key,))
            tx.execute("DELETE FROM notices WHERE ended IS NOT NULL AND told_end = 1"
                       " AND told_resolved = 1")

    def acknowledge(self, operation_id: int, who: str, now: float) -> str:
        """A person has in hand what the bridge tells about this operation: that it ended
        failed or unknown, or did not remediate with no step to follow. Audited; what it was.

        StoreError 404 for no such operation, 409 when there is nothing to acknowledge."""
        with self._write() as tx:
            row = tx.row(f"SELECT {_OP_COLUMNS}, acked FROM operations WHERE id = ?",
                         (operation_id,))
            if row is None:
                raise StoreError(f"no operation {operation_id}", status=404)
            op = Operation.of(row)
            what = _acknowledgeable(tx, op, row["acked"])
            table, key = ("operations", "id") if op.state in _FAILURES else \
                ("verifications", "operation_id")
            tx.execute(f"UPDATE {table} SET acked = ? WHERE {key} = ?", (now, op.id))
            _append(tx, [_operation_entry(now, Event.OPERATOR, op, Outcome.ACKNOWLEDGED,
                                          f"acknowledged by {who}: {what}")])
            return what


class _Replication(_Engine):
    """Replicas' heartbeats, and a whole state read out of one store into another."""

    def heartbeat(self, replica: str, version: str, now: float) -> None:
        """Note `replica` alive now (its first beat notes its start); forget long-gone ones."""
        with self._write(lock=Lock.NONE) as tx:
            tx.execute(
                "INSERT INTO replicas (id, started, last_seen, version) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen,"
                " version = excluded.version", (replica, now, now, version))
            tx.execute("DELETE FROM replicas WHERE last_seen < ?", (now - _REPLICA_FORGOTTEN,))

    def replicas_alive(self, now: float) -> int:
        """How many replicas beat within REPLICA_GONE seconds of `now`."""
        return int(self._read("SELECT count(*) AS n FROM replicas WHERE last_seen >= ?",
                              (now - REPLICA_GONE,))[0]["n"])

    def export_rows(self) -> Iterator[tuple[str, list[Row]]]:
        """The whole state as (table, rows) batches, from one read snapshot: STATE_TABLES in
        order, then AUDIT_WRITTEN. JSON columns come as text on both engines."""
        with self._reading(snapshot=True) as tx:
            for table, key in STATE_TABLES:
                batch: list[Row] = []
                with closing(tx.stream(f"SELECT * FROM {table} ORDER BY {key}")) as rows:
                    for row in rows:
                        if table == "meta" and row["key"] == Flag.QUEUE_SIGNAL:
                            continue  # how this database's processes wake each other
                        batch.append({k: _json_text(v) for k, v in row.items()})
                        if len(batch) == COPY_BATCH:
                            yield table, batch
                            batch = []
                if batch:
                    yield table, batch
            yield AUDIT_WRITTEN, [{"id": tx.audit_written()}]

    def import_rows(self, batches: Iterable[tuple[str, list[Row]]]) -> dict[str, int]:
        """Fill this empty store with export_rows' batches, as they are (the same ids, the
        same audit hashes), in one transaction: all of it or nothing. Rows per table."""
        copied = {table: 0 for table, _ in STATE_TABLES}
        with self._write() as tx:
            held = _held(tx)
            if any(held.values()):
                raise StoreError(
                    f"{self.where} already holds state ({_counted(held)}): copy-state only"
                    " fills an empty store", status=409)
            tx.execute("DELETE FROM meta")  # at most the readiness probe's own row
            written = 0
            for table, rows in batches:
                if table == AUDIT_WRITTEN:
                    written = int(rows[0]["id"])
                    continue
                columns = list(rows[0])
                tx.execute_many(
                    f"INSERT INTO {table} ({', '.join(columns)})"
                    f" VALUES ({', '.join('?' * len(columns))})",
                    [tuple(row[c] for c in columns) for row in rows])
                copied[table] += len(rows)
            tx.after_import(written)
        return copied


def _held(tx: Tx) -> dict[str, int]:
    """What a store holds that copy-state would overwrite (a readiness probe's row aside)."""
    count = "SELECT count(*) FROM "
    return {
        "audit records": int(tx.value(count + "audit")),
        "operations": int(tx.value(count + "operations")),
        "cooldowns": int(tx.value(count + "cooldowns")),
        "flags": int(tx.value(count + "meta WHERE key <> ?", (Flag.WRITE_CHECKED,))),
    }


def _counted(held: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in held.items())


def _json_text(value: Any) -> Any:
    """A column's value as both engines take it: a JSON object (PostgreSQL jsonb) as text."""
    return json.dumps(value) if isinstance(value, dict | list) else value


class SqlStore(_ClosingLoop, _Replication):
    """Every Store method, over an engine's transactions (`_write`, `_reading`)."""

    def ping(self) -> None:
        self._read("SELECT count(*) AS n FROM cooldowns")

    def active_cooldowns(self, now: float) -> dict[Key, float]:
        rows = self._read("SELECT device, operation, until FROM cooldowns WHERE until > ?", (now,))
        return {(r["device"], r["operation"]): r["until"] for r in rows}

    def cooldowns(self, now: float, device: str | None = None) -> list[Cooldown]:
        """The cooldowns in force at `now` (of one device, or all), by device and operation."""
        sql = (f"SELECT {_COOLDOWN_COLUMNS} FROM cooldowns WHERE until > ?"
               + (" AND device = ?" if device is not None else "")
               + " ORDER BY device, operation")
        return [Cooldown(**r) for r in self._read(sql, (now,) if device is None
                                                  else (now, device))]

    def pending(self, now: float) -> list[Operation]:
        """Operations waiting for a person, and not yet past their approval timeout."""
        rows = self._read(
            f"SELECT {_OP_COLUMNS} FROM operations WHERE state = ? AND expires_at >= ?"
            " ORDER BY id", (OpState.PENDING_APPROVAL, now),
        )
        return [Operation.of(r) for r in rows]

    def operation(self, operation_id: int, now: float) -> Operation | None:
        """One operation by its id, or None. One still open but past its expiry at `now` reads
        as expired, swept or not, as everywhere else."""
        rows = self._read(f"SELECT {_OP_COLUMNS} FROM operations WHERE id = ?", (operation_id,))
        if not rows:
            return None
        op = Operation.of(rows[0])
        if op.state in (OpState.QUEUED, OpState.PENDING_APPROVAL) and op.expires_at < now:
            op = replace(op, state=OpState.EXPIRED)
        return op

    def asking_alerts(self, operation_ids: Sequence[int]) -> dict[int, AskingAlert]:
        """The alert (labels, annotations, startsAt) that asked for each of these operations."""
        ids = list(operation_ids)
        if not ids:
            return {}
        rows = self._read(
            f"SELECT id, labels, annotations, starts_at FROM operations"
            f" WHERE id IN ({', '.join('?' * len(ids))})", ids)
        return {r["id"]: AskingAlert(_json(r["labels"]), _json(r["annotations"]), r["starts_at"])
                for r in rows}

    def devices(self, containing: str, limit: int) -> list[DeviceSeen]:
        """The devices the audit names whose name contains this text (any case), the most
        recently seen first."""
        with self._reading() as tx:
            rows = tx.rows(
                "SELECT device, count(*) AS records, max(ts) AS last_seen FROM audit"
                f" WHERE device != '' AND {tx.contains('device')} GROUP BY device"
                " ORDER BY max(ts) DESC, device LIMIT ?", (containing, limit))
        return [DeviceSeen(**r) for r in rows]

    def operations_per_week(self, device: str, now: float, weeks: int) -> list[int]:
        """How many operations alerts asked for on `device` in each of the last `weeks` weeks
        (7-day spans ending at `now`), oldest first: whether it keeps coming back."""
        rows = self._read(
            "SELECT created FROM operations WHERE device = ? AND created > ? AND created <= ?",
            (device, now - weeks * WEEK, now))
        counts = [0] * weeks
        for r in rows:
            counts[weeks - 1 - int((now - r["created"]) / WEEK)] += 1
        return counts

    def outcome_counts(self, since: float) -> dict[str, int]:
        """How many operations ended with each outcome since then."""
        rows = self._read(
            "SELECT outcome, count(*) AS n FROM audit WHERE event = ? AND ts >= ?"
            " GROUP BY outcome", (Event.OUTCOME, since),
        )
        return {r["outcome"]: r["n"] for r in rows}

    def queue_depth(self, now: float) -> dict[str, int]:
        """Open operations by state; those past their expiry are no longer open, swept or not."""
        rows = self._read(
            "SELECT state, count(*) AS n FROM operations WHERE state IN (?, ?, ?)"
            " AND (state = ? OR expires_at >= ?) GROUP BY state",
            (*sorted(OPEN_STATES), OpState.SENDING, now),
        )
        return {**dict.fromkeys(sorted(OPEN_STATES), 0), **{r["state"]: r["n"] for r in rows}}

    def get_flag(self, key: str) -> float | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def audit(self, query: AuditQuery) -> list[AuditRecord]:
        where: list[str] = ["id > ?"]
        params: list[object] = [query.after_id]
        for column in ("device", "rule", "outcome", "operation_id"):
            value = getattr(query, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.since is not None:
            where.append("ts >= ?")
            params.append(query.since)
        if query.before_id is not None:
            where.append("id < ?")
            params.append(query.before_id)
        sql = f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(where)}"
        if query.limit is None:
            rows = self._read(sql + " ORDER BY id", params)
        elif query.oldest_first:
            rows = self._read(sql + " ORDER BY id LIMIT ?", [*params, query.limit])
        else:
            rows = self._read(sql + " ORDER BY id DESC LIMIT ?", [*params, query.limit])[::-1]
        return [AuditRecord(**r) for r in rows]

    def verify_audit(self) -> ChainReport:
        """Walk the whole audit chain, in one read snapshot: writers carry on meanwhile."""
        with self._reading(snapshot=True) as tx:
            written = tx.audit_written()
            # Closed inside the transaction even when the walk stops at a break early.
            with closing(tx.stream(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY id")) as rows:
                return verify_chain((AuditRecord(**r) for r in rows), written)

    # -- decisions ------------------------------------------------------------------------

    def record(self, delivery: Delivery, judge: Callable[[State], list[Decision]], now: float,
               *, max_age: float, approval_timeout: float,
               answer: Callable[[list[Recorded]], T]) -> T:
        """Decide and commit in one write transaction: claims, queue, holds, audit.

        `judge` (decide.decide with the payload bound) reads the state through the write lock,
        so no other worker can claim the same cooldown or spend the same budget meanwhile:
        whatever it decides is what is committed, all or nothing. `answer` turns what was
        recorded into the reply, before the commit: if it fails, nothing is committed, and
        the sender's retry finds the state as it was.
        """
        def work(tx: Tx) -> T:
            recorded: list[Recorded] = []
            entries: list[Entry] = []
            state = _TxnState(tx)
            decisions = judge(state)
            if any(d.verdict == Verdict.BREAKER_OPEN for d in decisions) \
                    and not state.breaker_open:
                _set_meta(tx, Flag.BREAKER_OPEN, now)
            queuing = [d for d in decisions if d.verdict in QUEUING]
            op_ids = dict(zip(map(id, queuing), _queue_all(
                tx, delivery, queuing, now, max_age, approval_timeout), strict=True))
            for d in decisions:
                op_id = op_ids.get(id(d))
                entries.append(_decision_entry(now, delivery, d, op_id))
                recorded.append(Recorded(d, op_id))
            resolved = {d.alert.fingerprint: _resolved_at(d.alert, now) for d in decisions
                        if d.alert.status == "resolved"}
            for fingerprint, resolved_at in resolved.items():
                entries.extend(_cancel_immature(tx, fingerprint, now))
                entries.extend(_alert_resolved(tx, fingerprint, resolved_at, now))
            _append(tx, entries)
            return answer(recorded)

        return self._combined(work)

    def _combined(self, work: Callable[[Tx], T]) -> T:
        """Run `work` in a write transaction, together with the work other threads of this
        process hand in meanwhile: one lock and one commit for all of them.

        Under load a webhook's transaction spends most of its time holding the lock through
        the commit's flush to disk; those that queue behind it in this process share the next
        one. Each runs in turn, so each judges the state as the ones before it left it (a
        cooldown claimed, a budget spent), exactly as in a transaction of its own. One that
        raises is left out and the others run again in a new transaction, so it fails alone,
        with nothing of it committed; a failure to commit fails them all. Each thread gets
        its own result, once committed, or its error.
        """
        with _COMBINERS:
            combiner = self.__dict__.setdefault("_combiner", _Combiner())
        # The wait for the state stays bounded by the timeout, this one included.
        deadline = time.monotonic() + self._timeout
        mine = _Work(work)
        batch = combiner.join(mine, deadline)
        if batch is None:
            raise StoreError(f"state store {self.where}: locked by another writer for more"
                             f" than {self._timeout:g}s (BRIDGE_STATE_TIMEOUT)")
        if batch:
            # A batch of works that waited ends by the earliest of their deadlines (refused
            # as after the timeout, which is what they waited in all); a work that found no
            # transaction running waits the whole timeout, as it always did.
            until = min(w.deadline for w in batch) if any(w.waited for w in batch) else None
            try:
                self._run_together(batch, until)
            finally:
                combiner.done(batch)
        return mine.result()

    def _run_together(self, batch: list[_Work], until: float | None) -> None:
        left = batch
        while left:
            running: _Work | None = None
            try:
                with self._write(deadline=until) as tx:
                    for running in left:
                        running.value = running.work(tx)
                    running = None
                return
            except Exception as exc:
                if running is None:  # the transaction failed, not one work: all fail
                    for w in left:
                        w.error = exc
                    return
                running.error = exc
                left = [w for w in left if w is not running]
            except BaseException as exc:
                for w in left:
                    w.error = exc
                raise

    def read_state(self, judge: Callable[[State], T]) -> T:
        """Run `judge` on the current state without writing anything (explain, tests)."""
        with self._write() as tx:
            return judge(_TxnState(tx))

    # -- the queue ------------------------------------------------------------------------

    def claim(self, now: float, *, concurrency: int, spacing: float, lease: float) -> Claim:
        """Take the next queued operation that may be sent now, and mark it SENDING.

        All senders in all processes share the limits kept here: at most `concurrency`
        operations SENDING, one call started per `spacing` seconds, and never two operations
        on one device at once. A sender that holds an operation past `lease` is presumed dead.
        """
        # Two statements under the claim lock, each one round trip: every claim of every
        # sender of every replica takes turns here, so the turn is kept short.
        with self._write(lock=Lock.CLAIM) as tx:
            gate = tx.rows(
                "SELECT (SELECT value FROM meta WHERE key = ?) AS paused,"
                " (SELECT value FROM meta WHERE key = ?) AS breaker,"
                " (SELECT value FROM meta WHERE key = ?) AS slot,"
                " (SELECT count(*) FROM operations WHERE state = ?) AS sending",
                (Flag.PAUSED, Flag.BREAKER_OPEN, Flag.NEXT_CALL_SLOT, OpState.SENDING),
            )[0]
            if gate["paused"] or gate["breaker"]:
                return Claim(None, 0.0)  # a person must resume the bridge first
            if gate["sending"] >= concurrency:
                return Claim(None, 0.0)
            slot = gate["slot"] or 0.0
            if slot > now:
                return Claim(None, slot - now)
            row = tx.row(
                "UPDATE operations SET state = ?, updated = ?, attempts = attempts + 1,"
                " lease_until = ? WHERE id = ("
                "SELECT id FROM operations o WHERE state = ? AND next_attempt <= ?"
                " AND expires_at >= ?"  # too old, though the sweep has not ended it yet
                " AND NOT EXISTS (SELECT 1 FROM operations s"
                "                 WHERE s.state = ? AND s.device = o.device)"
                " ORDER BY next_attempt, id LIMIT 1" + tx.SKIP_LOCKED +
                f") RETURNING {_OP_COLUMNS}",
                (OpState.SENDING, now, now + lease, OpState.QUEUED, now, now, OpState.SENDING),
            )
            if row is None:
                return Claim(None, 0.0)
            _set_meta(tx, Flag.NEXT_CALL_SLOT, max(slot, now) + spacing)
        return Claim(Operation.of(row), 0.0, room=gate["sending"] + 1 < concurrency)

    def next_due(self, now: float) -> float | None:
        """The next moment after `now` when time alone changes what a sender may do: a
        queued operation's next attempt (a retry, the end of a hold), an open one's expiry,
        a sending one's lease running out. None when no such moment is ahead: only new work,
        a finished call or a resume can change anything then, and each of those wakes the
        senders (Tx.notify_queue)."""
        row = self._read(
            "SELECT min(CASE WHEN state = ? AND next_attempt > ? THEN next_attempt END) AS due,"
            " min(CASE WHEN state <> ? AND expires_at > ? THEN expires_at END) AS expires,"
            " min(CASE WHEN state = ? AND lease_until > ? THEN lease_until END) AS lease"
            " FROM operations WHERE state IN (?, ?, ?)",
            (OpState.QUEUED, now, OpState.SENDING, now, OpState.SENDING, now,
             OpState.QUEUED, OpState.PENDING_APPROVAL, OpState.SENDING),
        )[0]
        times = [t for t in row.values() if t is not None]
        return min(times) if times else None

    def finish(self, op: Operation, result: CallResult, now: float, *,
               retry_at: float | None = None, release_until: float | None = None,
               wake_others: bool = True) -> None:
        """Record one attempt's result: queue the operation again, or end it with its outcome.

        `release_until` shortens the device's cooldown (to that time) when the operation ends
        without having reached the device, so a later alert may try again. `wake_others`
        tells every process's idle senders that a sending slot is free (Tx.notify_queue); a
        sender that goes on to claim the next operation itself need not.
        """
        with self._write() as tx:
            if retry_at is not None:
                updated = tx.execute(
                    "UPDATE operations SET state = ?, updated = ?, next_attempt = ?,"
                    " lease_until = NULL WHERE id = ? AND state = ?",
                    (OpState.QUEUED, now, retry_at, op.id, OpState.SENDING),
                ).rowcount
                event, reason = Event.ATTEMPT, f"{result.kind}; next attempt at {iso(retry_at)}"
            else:
                updated = tx.execute(
                    "UPDATE operations SET state = ?, updated = ?, lease_until = NULL"
                    " WHERE id = ? AND state = ?",
                    (_ENDS_AS[CallOutcome(result.outcome)], now, op.id, OpState.SENDING),
                ).rowcount
                event = Event.OUTCOME
                reason = "API call" if result.outcome == CallOutcome.SUCCEEDED else result.kind
            if not updated:
                # The lease ran out and the operation was already ended as unknown: that
                # record stands, and this late result is recorded beside it, not over it.
                event, reason = Event.ATTEMPT, f"{result.kind}; arrived after the lease ran out"
            else:
                if wake_others:
                    tx.notify_queue()  # a sending slot (and the device) is free again
                if retry_at is None and release_until is not None:
                    _release(tx, op, release_until)
                elif retry_at is None and result.outcome == CallOutcome.SUCCEEDED:
                    _watch(tx, op, result, now)
            _append(tx, [_operation_entry(
                now, event, op, result.outcome, reason, status_code=result.status_code,
                execution_id=result.execution_id, error=result.error,
            )])

    def end_stale(self, now: float, release_until: float) -> list[Operation]:
        """End operations that can no longer be sent as they should.

        Queued ones past their maximum age, and ones nobody approved in time, end EXPIRED
        (acting late can do more harm than good) and release their cooldown; ones whose
        sender's lease ran out end UNKNOWN (the call may have reached the device) and keep it.
        """
        with self._write() as tx:
            ended, entries = _expire(tx, now, release_until)
            lost = tx.rows(
                f"UPDATE operations SET state = ?, updated = ?, lease_until = NULL"
                f" WHERE state = ? AND lease_until < ? RETURNING {_OP_COLUMNS}",
                (OpState.UNKNOWN, now, OpState.SENDING, now),
            )
            for row in lost:
                op = Operation.of(row)
                entries.append(_operation_entry(
                    now, Event.OUTCOME, op, OpState.UNKNOWN, "lost_in_flight",
                    error="the process sending it stopped before the answer was recorded",
                ))
                ended.append(op)
            _append(tx, entries)
        return ended

    def settle(self, operation_id: int, approve: bool, who: str, now: float, *,
               max_age: float, release_until: float) -> Operation:
        """A person's answer to an operation pending approval: queue it, or reject it.

        One past its approval timeout is refused and ends EXPIRED now if no sweep ended it
        yet (releasing its cooldown to `release_until`): an answer after the timeout is no
        answer, whether or not the bridge was running to notice the timeout.
        """
        refusal: StoreError | None = None
        with self._write() as tx:
            _, entries = _expire(tx, now, release_until, operation_id)
            _append(tx, entries)
            op, not_before, hold = _stored(tx, operation_id)
            refusal = _not_pending(op, hold)
            if refusal is None:
                _answer(tx, op, approve, who, now, max(now, not_before) + max_age)
        if refusal is not None:
            raise refusal  # after the commit: the expiry it found is kept
        return replace(op, state=OpState.QUEUED if approve else OpState.REJECTED)

    def cancel(self, why: Callable[[Operation], str | None], now: float, *,
               operation_id: int | None = None, release_until: float | None = None,
               except_version: str | None = None) -> list[Operation]:
        """End operations that wait to be sent (queued, held, pending approval) as CANCELLED,
        each audited with the reason `why` gives it; `why` returning None leaves one waiting.

        With `operation_id`, that one operation: StoreError 404 when there is none, 409 when
        it no longer waits (being sent, or ended). Without, every waiting one `why` names.
        `release_until` shortens the cooldown each one claimed; None keeps it.
        `except_version` leaves out, unread, those queued under that rules version.
        """
        if operation_id is None:
            # Read first, outside the write lock: dispatchers ask every second, and there is
            # almost never anything to cancel.
            with self._reading() as tx:
                # Each row straight into an Operation (its columns in its fields' order), not
                # through a dict: after a storm thousands wait, read every second by each
                # process's dispatcher.
                params: list[object] = [OpState.QUEUED, OpState.PENDING_APPROVAL, now]
                if except_version is not None:
                    params.append(except_version)
                waiting = [Operation(*values) for values in tx.execute(
                    f"SELECT {_OP_COLUMNS} FROM operations WHERE state IN (?, ?)"
                    " AND expires_at >= ?"
                    + (" AND rules_version <> ?" if except_version is not None else "")
                    + " ORDER BY id", params).fetchall()]
            reasons = {op.id: reason for op in waiting if (reason := why(op)) is not None}
            if not reasons:
                return []
        ended: list[Operation] = []
        entries: list[Row] = []
        with self._write() as tx:
            if operation_id is not None:
                reasons = {operation_id: _cancellable(tx, operation_id, why, now)}
            for op_id, reason in reasons.items():
                # One a sender took since it was read is not touched: it is on its way.
                cancelled = _cancel(tx, op_id, reason, now, release_until, entries)
                if cancelled is not None:
                    ended.append(cancelled)
            _append(tx, entries)
        return ended

    # -- operators and housekeeping -------------------------------------------------------

    def clear_cooldowns(self, device: str, operation: str | None, who: str,
                        now: float) -> list[Cooldown]:
        """End the cooldowns in force on `device` (one operation, or all), by a person's word.

        For a device fixed by hand that must be remediable again now. Each one cleared gets an
        audit record. Refused while an operation for it is still open: a new alert could then
        queue a second one behind it.
        """
        what = f"{device} ({operation})" if operation else device
        with self._write() as tx:
            rows = tx.rows(
                f"SELECT {_COOLDOWN_COLUMNS} FROM cooldowns WHERE device = ? AND until > ?"
                + (" AND operation = ?" if operation else "") + " ORDER BY operation",
                (device, now, operation) if operation else (device, now),
            )
            cleared = [Cooldown(**r) for r in rows]
            if not cleared:
                raise StoreError(f"no cooldown in force on {what}", status=404)
            _refuse_if_open(tx, cleared)
            entries = []
            for c in cleared:
                tx.execute("DELETE FROM cooldowns WHERE device = ? AND operation = ?",
                           (c.device, c.operation))
                entries.append(_entry(
                    now, Event.OPERATOR, rule=c.rule, device=c.device, operation=c.operation,
                    outcome=Outcome.COOLDOWN_CLEARED, operation_id=c.operation_id,
                    reason=f"cleared by {who}; it ran until {iso(c.until)}",
                ))
            _append(tx, entries)
        return cleared

    def pause(self, now: float, who: str) -> bool:
        """Stop sending, by a person's word, audited under `who`; False if already paused."""
        with self._write() as tx:
            if _meta(tx, Flag.PAUSED):
                return False
            _set_meta(tx, Flag.PAUSED, now)
            _append(tx, [_entry(now, Event.OPERATOR, outcome=Outcome.SENDING_PAUSED,
                                reason=f"paused by {who}")])
        return True

    def resume(self, now: float, who: str | None = None) -> list[str]:
        """Clear pause and storm breaker; what was set, for the operator to read. With `who`,
        the resumption is audited under that name."""
        with self._write() as tx:
            was = [name for name, flag in (("paused", Flag.PAUSED),
                                           ("storm breaker open", Flag.BREAKER_OPEN))
                   if _meta(tx, flag)]
            tx.execute("DELETE FROM meta WHERE key IN (?, ?)", (Flag.PAUSED, Flag.BREAKER_OPEN))
            _set_meta(tx, Flag.RESUMED, now)
            tx.notify_queue()
            if who is not None:
                reason = f"resumed by {who} (was: {', '.join(was) or 'running'})"
                _append(tx, [_entry(now, Event.OPERATOR, outcome=Outcome.SENDING_RESUMED,
                                    reason=reason)])
        return was

    def set_flag(self, key: str, value: float | None) -> None:
        with self._write(lock=Lock.NONE) as tx:
            if value is None:
                tx.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                _set_meta(tx, key, value)

    def check_writable(self, now: float) -> None:
        """Write one row, as a webhook would: StoreError (its cause) if the store cannot take
        it now. A read cannot tell: a full disk, or a lock held elsewhere, stops writes only."""
        with self._write(PROBE_WAIT, lock=Lock.NONE) as tx:
            _set_meta(tx, Flag.WRITE_CHECKED, now)

    def prune(self, before: float, batch: int = 500) -> int:
        """Delete up to `batch` audit records older than `before`, oldest first, and the
        final operations as old. Short transactions, so webhooks never wait long; the newest
        record always stays, so the hash chain goes on from it. Returns how many went."""
        with self._write(lock=Lock.NONE) as tx:
            gone = tx.execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE ts < ?"
                " AND id < (SELECT max(id) FROM audit) ORDER BY id LIMIT ?)", (before, batch),
            ).rowcount
            tx.execute(
                "DELETE FROM operations WHERE id IN (SELECT id FROM operations WHERE updated < ?"
                " AND state NOT IN (?, ?, ?) ORDER BY id LIMIT ?)",
                (before, *sorted(OPEN_STATES), batch),
            )
            tx.execute(
                "DELETE FROM verifications WHERE operation_id IN (SELECT operation_id FROM"
                " verifications WHERE concluded < ? ORDER BY operation_id LIMIT ?)",
                (before, batch))
            tx.execute("DELETE FROM resolutions WHERE resolved_at < ?", (before,))
        return int(gone)


#: Devices per query when _TxnState.preload reads many at once (well under every engine's
#: limit on parameters).
_PRELOAD_CHUNK = 500
_NOT_SENT = (OpState.FAILED, *sorted(NEVER_SENT))
_DEMAND = sorted(DEMAND)
_DEMAND_SINCE = ("SELECT count(*) FROM audit WHERE event = ? AND ts >= ?"
                 f" AND outcome IN ({', '.join('?' * len(_DEMAND))})")
_SENT_SINCE = (" FROM operations WHERE device = ? AND operation = ? AND created >= ?"
               f" AND state NOT IN ({', '.join('?' * len(_NOT_SENT))})")


_COMBINERS = threading.Lock()


class _Work:
    """One thread's part of a combined transaction (SqlStore._combined)."""

    def __init__(self, work: Callable[[Tx], Any]) -> None:
        self.work = work
        self.done = False
        self.waited = False  # for another thread's transaction, before its own
        self.deadline = 0.0  # by when its thread gives up waiting for the state
        self.value: Any = None
        self.error: BaseException | None = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class _Combiner:
    """Hands the work threads wait with to the one thread that runs the next transaction."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: list[_Work] = []
        self._running = False

    def join(self, work: _Work, deadline: float) -> list[_Work] | None:
        """Wait until `work` is done (an empty list), or its thread is to run the next
        transaction: every work waiting then, its own first. None past the deadline."""
        with self._changed:
            self._waiting.append(work)
            work.deadline = deadline
            while self._running and not work.done:
                work.waited = True
                left = deadline - time.monotonic()
                if work not in self._waiting:
                    # In the transaction running now, which ends by the earliest deadline
                    # of its works, this one's included.
                    self._changed.wait()
                elif left <= 0:
                    self._waiting.remove(work)
                    return None
                else:
                    self._changed.wait(left)
            if work.done:
                return []
            self._running = True
            batch, self._waiting = self._waiting, []
            batch.remove(work)
            return [work, *batch]

    def done(self, batch: list[_Work]) -> None:
        with self._changed:
            for work in batch:
                work.done = True
            self._running = False
            self._changed.notify_all()


class _TxnState:
    """decide.State read through the connection that holds the write transaction."""

    def __init__(self, tx: Tx) -> None:
        self._tx = tx
        # One query for the three flags: on PostgreSQL each is a round trip inside the lock.
        flags = {r["key"]: r["value"] for r in tx.rows(
            "SELECT key, value FROM meta WHERE key IN (?, ?, ?)",
            (Flag.PAUSED, Flag.BREAKER_OPEN, Flag.RESUMED))}
        self.paused = flags.get(Flag.PAUSED, 0.0) > 0
        self.breaker_open = flags.get(Flag.BREAKER_OPEN, 0.0) > 0
        self._resumed = flags.get(Flag.RESUMED, 0.0)
        # Nothing is written while decide() reads, so a count asked twice is the same count;
        # a storm payload asks each of them once per operation. Each is kept by what it was
        # asked with.
        #: Budget counts, by their query and its parameters.
        self._budgets: dict[tuple[str, tuple[object, ...]], int] = {}
        #: Cooldowns read ahead by preload (None: none in force for that key).
        self._cooldowns: dict[Key, float | None] = {}
        #: How often each (device, operation) was sent since a time, read ahead by preload.
        self._sent: dict[tuple[str, str, float], int] = {}
        #: The storm breaker's count, by the start of its window.
        self._demand: dict[float, int] = {}

    def preload(self, asks: Sequence[tuple[str, str, float]]) -> None:
        """Read ahead, in a few queries, what decide() will ask of each (device, operation,
        give-up window start): its cooldown and how often it was sent. A storm payload
        would otherwise ask two queries per alert, inside the write lock."""
        tx = self._tx
        keys = {(device, operation) for device, operation, _ in asks}
        sinces = sorted({since for _, _, since in asks})
        devices = sorted({device for device, _ in keys})
        self._cooldowns.update(dict.fromkeys(keys, None))
        sent: dict[tuple[str, str, float], int] = {}
        for at in range(0, len(devices), _PRELOAD_CHUNK):
            chunk = devices[at:at + _PRELOAD_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for r in tx.rows(f"SELECT device, operation, until FROM cooldowns"
                             f" WHERE device IN ({marks})", chunk):
                if (r["device"], r["operation"]) in keys:
                    self._cooldowns[(r["device"], r["operation"])] = r["until"]
            for since in sinces:
                for r in tx.rows(
                        f"SELECT device, operation, count(*) AS n FROM operations"
                        f" WHERE device IN ({marks}) AND created >= ? AND state NOT IN"
                        f" ({', '.join('?' * len(_NOT_SENT))}) GROUP BY device, operation",
                        (*chunk, since, *_NOT_SENT)):
                    sent[(r["device"], r["operation"], since)] = int(r["n"])
        for ask in asks:
            self._sent[ask] = sent.get(ask, 0)

    def cooldown_until(self, key: Key) -> float | None:
        if key in self._cooldowns:
            return self._cooldowns[key]
        return self._tx.value(
            "SELECT until FROM cooldowns WHERE device = ? AND operation = ?", key)

    def _count(self, cache: dict[Any, int], key: object, sql: str,
               params: Sequence[object]) -> int:
        """The count `sql` gives, kept in `cache` under `key`: asked once per transaction."""
        if key not in cache:
            cache[key] = int(self._tx.value(sql, params))
        return cache[key]

    def operations_since(self, key: Key, since: float) -> int:
        ask = (*key, since)
        return self._count(self._sent, ask, "SELECT count(*)" + _SENT_SINCE, (*ask, *_NOT_SENT))

    def budget_used(self, budget: Budget, group: str, since: float) -> int:
        sql = "SELECT count(*) FROM operations WHERE created >= ? AND state NOT IN (?, ?, ?)"
        params: list[object] = [since, *sorted(NEVER_SENT)]
        if budget.operation:
            sql += " AND operation = ?"
            params.append(budget.operation)
        if budget.group_by:
            sql += f" AND coalesce({self._tx.json_text('labels', budget.group_by)}, '') = ?"
            params.append(group)
        return self._count(self._budgets, (sql, tuple(params)), sql, params)

    def demand_since(self, since: float) -> int:
        return self._count(self._demand, since, _DEMAND_SINCE,
                           (Event.DECISION, max(since, self._resumed), *_DEMAND))


# -- writing, step by step: each takes the transaction it is part of ----------------------


def _queue(tx: Tx, delivery: Delivery, d: Decision, now: float, max_age: float,
           approval_timeout: float) -> int:
    """Queue the operation a decision asks for and claim its cooldown: the operation's id."""
    return _queue_all(tx, delivery, [d], now, max_age, approval_timeout)[0]


_OP_INSERT = (
    "INSERT INTO operations (device, operation, rule, state, created, updated, request_id,"
    " source, receiver, group_key, fingerprint, alertname, alert_status, rules_version,"
    " labels, annotations, starts_at, hold, claim_until, next_attempt, expires_at, step,"
    " verify) VALUES "
)
_OP_VALUES = "(" + ", ".join("?" * 23) + ")"
#: json.dumps, its encoder made once: a storm writes two documents per operation.
_dumps = encoder()


def _as_dict(mapping: Mapping[str, str]) -> dict[str, str]:
    """A dict of `mapping`, which json's encoder needs: an Alert's labels are a mappingproxy,
    whose copy() costs a fifth of what dict() of it does."""
    return mapping.copy() if isinstance(mapping, MappingProxyType) else dict(mapping)


#: The hold an operation queued on a verdict waits in (none: sent when its turn comes). The
#: states and holds a queued operation is written with, as text: sqlite3 binds a str subclass
#: only after failing to find an adapter for it, and an enum's .value is a property call.
_HOLDS: dict[str, str] = {Verdict.HELD_FOR_WINDOW: Hold.WINDOW.value,
                         Verdict.HELD_MIN_AGE: Hold.MIN_AGE.value}
_NO_HOLD, _APPROVAL_HOLD = Hold.NONE.value, Hold.APPROVAL.value
_QUEUED, _PENDING = OpState.QUEUED.value, OpState.PENDING_APPROVAL.value
#: Operations per INSERT of _queue_all: one statement (one round trip) for many, well under
#: every engine's limit on parameters.
_QUEUE_BATCH = 100


def _queue_all(tx: Tx, delivery: Delivery, decisions: Sequence[Decision], now: float,
               max_age: float, approval_timeout: float) -> list[int]:
    """Queue the operations these decisions ask for and claim their cooldowns: their ids, in
    the same order. No two ask for the same (device, operation): decide() makes the second
    a duplicate."""
    rows = []
    for d in decisions:
        assert d.rule is not None and d.until is not None
        alert, not_before = d.alert, d.not_before or now
        if d.verdict == Verdict.PENDING_APPROVAL:
            state, hold, expires = _PENDING, _APPROVAL_HOLD, now + approval_timeout
        else:
            hold = _HOLDS.get(d.verdict, _NO_HOLD)
            # Max age counts from when the operation may first be sent.
            state, expires = _QUEUED, max(now, not_before) + max_age
        rows.append((
            d.device, d.operation, d.rule.name, state, now, now, delivery.request_id,
            delivery.source, delivery.receiver, delivery.group_key, alert.fingerprint,
            alert.alertname, alert.status, delivery.rules_version,
            _dumps(_as_dict(alert.labels)), _dumps(_as_dict(alert.annotations)),
            alert.starts_at.timestamp() if alert.starts_at else None, hold, d.until,
            not_before, expires, d.step,
            # Only a firing alert can be watched until it resolves.
            d.rule.verify if alert.status == "firing" else 0.0,
        ))
    ids: dict[Key, int] = {}
    for at in range(0, len(rows), _QUEUE_BATCH):
        batch = rows[at:at + _QUEUE_BATCH]
        # Told apart by their key, not by the order RETURNING gives the rows in.
        cursor = tx.execute(_OP_INSERT + ", ".join([_OP_VALUES] * len(batch))
                            + " RETURNING device, operation, id",
                            list(itertools.chain.from_iterable(batch)))
        ids.update(((device, operation), int(op_id))
                   for device, operation, op_id in cursor.fetchall())
    tx.execute_many(
        "INSERT INTO cooldowns (device, operation, until, rule, operation_id)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (device, operation) DO UPDATE"
        " SET until = excluded.until, rule = excluded.rule,"
        " operation_id = excluded.operation_id",
        [(d.device, d.operation, d.until, d.rule.name if d.rule else "", ids[d.key])
         for d in decisions],
    )
    if any(row[3] == OpState.QUEUED for row in rows):
        tx.notify_queue()
    return [ids[d.key] for d in decisions]


def _cancel_immature(tx: Tx, fingerprint: str, now: float) -> list[Row]:
    """Cancel the held operations of an alert that resolved: their audit entries, to append."""
    # An alert that resolves before its rule's min_age was a flap: its held operation
    # is dropped, which is what min_age is for.
    rows = tx.rows(
        "SELECT id FROM operations WHERE fingerprint = ? AND state = ? AND hold = ?"
        " AND attempts = 0", (fingerprint, OpState.QUEUED, Hold.MIN_AGE),
    )
    entries: list[Row] = []
    for row in rows:
        _cancel(tx, row["id"], "resolved_before_min_age", now, now, entries,
                error="the alert resolved before the rule's min_age: not sent")
    return entries


def _cancel(tx: Tx, operation_id: int, reason: str, now: float, release_until: float | None,
            entries: list[Row], error: str = "") -> Operation | None:
    """The one way an operation ends CANCELLED: only while it waits (queued, held or
    pending approval, and not past its expiry), never once a sender holds it. Appends its
    audit entry to `entries`; None when it no longer waits."""
    row = tx.row(
        f"UPDATE operations SET state = ?, updated = ? WHERE id = ? AND state IN (?, ?)"
        f" AND expires_at >= ? RETURNING {_OP_COLUMNS}",
        (OpState.CANCELLED, now, operation_id, OpState.QUEUED, OpState.PENDING_APPROVAL, now),
    )
    if row is None:
        return None
    op = Operation.of(row)
    if release_until is not None:
        _release(tx, op, release_until)
    entries.append(_operation_entry(now, Event.OUTCOME, op, OpState.CANCELLED, reason,
                                    error=error))
    return op


def _cancellable(tx: Tx, operation_id: int, why: Callable[[Operation], str | None],
                 now: float) -> str:
    """Why this one operation is cancelled; StoreError 404 or 409 when it cannot be."""
    op, _, _ = _stored(tx, operation_id)
    reason = why(op)
    if op.state not in (OpState.QUEUED, OpState.PENDING_APPROVAL) or reason is None:
        raise StoreError(
            f"operation {operation_id} is {op.state}: only an operation that waits to be"
            " sent (queued, held or pending approval) can be cancelled", status=409)
    if op.expires_at < now:  # the sweep records it EXPIRED; nothing to cancel
        raise StoreError(f"operation {operation_id} expired at {iso(op.expires_at)}: it can"
                         " no longer be cancelled", status=409)
    return reason


def _expire(tx: Tx, now: float, release_until: float,
            operation_id: int | None = None) -> tuple[list[Operation], list[Row]]:
    """End EXPIRED the open operations past their expiry (or just this one, if it is):
    the operations, and their audit entries to append."""
    sql = ("UPDATE operations SET state = ?, updated = ? WHERE state IN (?, ?)"
           " AND expires_at < ?")
    params: list[object] = [OpState.EXPIRED, now, OpState.QUEUED, OpState.PENDING_APPROVAL, now]
    if operation_id is not None:
        sql += " AND id = ?"
        params.append(operation_id)
    ended: list[Operation] = []
    entries: list[Row] = []
    for row in tx.rows(f"{sql} RETURNING {_OP_COLUMNS}, hold", params):
        op = Operation.of(row)
        _release(tx, op, release_until)
        reason, error = ("approval_timeout", "nobody approved it in time") \
            if row["hold"] == Hold.APPROVAL else ("max_age", "not sent within the maximum age")
        entries.append(_operation_entry(now, Event.OUTCOME, op, OpState.EXPIRED, reason,
                                        error=error))
        ended.append(op)
    return ended, entries


def _answer(tx: Tx, op: Operation, approve: bool, who: str, now: float,
            expires_at: float) -> None:
    outcome: str
    if approve:
        tx.execute(
            "UPDATE operations SET state = ?, updated = ?, hold = ?, expires_at = ?"
            " WHERE id = ?", (OpState.QUEUED, now, Hold.NONE, expires_at, op.id),
        )
        tx.notify_queue()
        event, outcome, reason = Event.APPROVAL, Outcome.APPROVED, f"approved by {who}"
    else:
        # A rejected operation keeps its cooldown: the same alert asking again at
        # once would only ask the same person the same question.
        tx.execute("UPDATE operations SET state = ?, updated = ? WHERE id = ?",
                   (OpState.REJECTED, now, op.id))
        event, outcome, reason = Event.OUTCOME, OpState.REJECTED, f"rejected by {who}"
    _append(tx, [_operation_entry(now, event, op, outcome, reason)])


def _release(tx: Tx, op: Operation, until: float) -> None:
    # Only the cooldown this operation claimed, and only ever shorter.
    tx.execute(
        "UPDATE cooldowns SET until = ? WHERE device = ? AND operation = ? AND until = ?"
        " AND until > ?",
        (until, op.device, op.operation, op.claim_until, until),
    )


def _refuse_if_open(tx: Tx, cooldowns: list[Cooldown]) -> None:
    for c in cooldowns:
        row = tx.row(
            "SELECT id, state FROM operations WHERE device = ? AND operation = ?"
            " AND state IN (?, ?, ?) ORDER BY id LIMIT 1",
            (c.device, c.operation, *sorted(OPEN_STATES)),
        )
        if row is not None:
            raise StoreError(
                f"{c.operation} on {c.device}: operation {row['id']} is still {row['state']};"
                " clearing its cooldown would let an alert queue a second one. Wait for it to"
                " end (or reject it, if it is pending approval)", status=409)


def _stored(tx: Tx, operation_id: int) -> tuple[Operation, float, str]:
    """An operation, the time before which it is not sent, and why it waits; StoreError 404
    if there is none."""
    row = tx.row(f"SELECT {_OP_COLUMNS}, next_attempt, hold FROM operations WHERE id = ?",
                 (operation_id,))
    if row is None:
        raise StoreError(f"no operation {operation_id}", status=404)
    return Operation.of(row), row["next_attempt"], row["hold"]


def _not_pending(op: Operation, hold: str) -> StoreError | None:
    """Why a person's answer to this operation comes too late, if it does."""
    if op.state == OpState.PENDING_APPROVAL:
        return None
    if op.state == OpState.EXPIRED and hold == Hold.APPROVAL:
        return StoreError(f"operation {op.id} expired at {iso(op.expires_at)}"
                          " (approval timeout)", status=409)
    return StoreError(f"operation {op.id} is {op.state}, not pending approval", status=409)


def _json(value: Any) -> Any:
    """A JSON column's value: SQLite gives its text, PostgreSQL (jsonb) the value itself."""
    return json.loads(value) if isinstance(value, str) else value


def _meta(tx: Tx, key: str, default: float = 0.0) -> float:
    value = tx.value("SELECT value FROM meta WHERE key = ?", (key,))
    return default if value is None else value


def _set_meta(tx: Tx, key: str, value: float) -> None:
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


# -- the closing loop, step by step ---------------------------------------------------------

#: A judge of a ladder's next step: the decision on it, or why the ladder ends without one.
NextStep = Callable[[Watch, State, float], "Decision | str"]
_WATCHING = "watching"
_FAILURES = (OpState.FAILED, OpState.UNKNOWN)
_TOLD = frozenset({"told_start", "told_end", "told_resolved"})
#: The operation a notice is about, as _subject reads it.
_SUBJECT = "o.id, o.device, o.operation, o.rule, o.alertname"
#: The watches to end now: their window passed, or their alert resolved since it began.
_DUE = ("v.state = ? AND (v.deadline < ? OR EXISTS (SELECT 1 FROM resolutions r"
        " WHERE r.fingerprint = o.fingerprint AND r.resolved_at >= v.starts))")


def _resolved_at(alert: Alert, now: float) -> float:
    """When a resolved alert resolved: its endsAt, never later than now (a sender's clock
    may run ahead), else now."""
    return min(alert.ends_at.timestamp(), now) if alert.ends_at is not None else now


def _watch(tx: Tx, op: Operation, result: CallResult, now: float) -> None:
    """Start watching the alert of an operation that just succeeded, if its rule verifies:
    the window closes `verify` after the operation should be done."""
    row = tx.row("SELECT verify, starts_at, created FROM operations WHERE id = ?", (op.id,))
    if row is None or not row["verify"]:
        return
    done_at = now + (result.completes_in or 0.0)
    tx.execute(
        "INSERT INTO verifications (operation_id, rule, device, operation, step, verify,"
        " called, done_at, deadline, starts, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (op.id, op.rule, op.device, op.operation, op.step, row["verify"], now, done_at,
         done_at + row["verify"], row["starts_at"] or row["created"], _WATCHING))


def _watches(tx: Tx, where: str, params: Sequence[object]) -> list[Watch]:
    rows = tx.rows(
        "SELECT v.operation_id, v.rule, v.device, v.operation, v.step, v.verify, v.called,"
        " v.done_at, v.starts, o.fingerprint, o.alertname, o.labels, o.annotations,"
        " o.starts_at, o.request_id, o.source, o.receiver, o.group_key FROM verifications v"
        f" JOIN operations o ON o.id = v.operation_id WHERE {where} ORDER BY v.operation_id",
        params)
    return [Watch(r["operation_id"], r["rule"], r["device"], r["operation"], r["step"],
                  r["verify"], r["called"], r["done_at"], r["fingerprint"], r["alertname"],
                  _json(r["labels"]), _json(r["annotations"]), r["starts_at"], r["starts"],
                  r["request_id"], r["source"], r["receiver"], r["group_key"]) for r in rows]


def _alert_resolved(tx: Tx, fingerprint: str, resolved_at: float, now: float) -> list[Row]:
    """Remember that an alert resolved: its watches end on the loop's next round, people stop
    being told that its ladder ran out, and its ladder's later steps not sent yet are
    cancelled (a ladder stops as soon as its alert resolves). Their audit entries."""
    tx.execute("INSERT INTO resolutions (fingerprint, resolved_at) VALUES (?, ?)"
               " ON CONFLICT DO NOTHING", (fingerprint, resolved_at))
    tx.execute(
        "UPDATE verifications SET resolved_at = ? WHERE resolved_at IS NULL AND state = ?"
        " AND operation_id IN (SELECT id FROM operations WHERE fingerprint = ?)",
        (resolved_at, Verification.NOT_REMEDIATED, fingerprint))
    entries = []
    for row in tx.rows(
        f"UPDATE operations SET state = ?, updated = ? WHERE fingerprint = ? AND step > 1"
        f" AND state IN (?, ?) AND attempts = 0 RETURNING {_OP_COLUMNS}",
        (OpState.CANCELLED, now, fingerprint, OpState.QUEUED, OpState.PENDING_APPROVAL),
    ):
        op = Operation.of(row)
        _release(tx, op, now)
        entries.append(_operation_entry(
            now, Event.OUTCOME, op, OpState.CANCELLED, Outcome.ALERT_RESOLVED,
            error="the alert resolved before this step of its ladder was sent"))
    return entries


def _verification_entry(now: float, w: Watch, r: Resolution) -> Row:
    return _entry(
        now, Event.VERIFICATION, request_id=w.request_id, source=w.source,
        receiver=w.receiver, group_key=w.group_key, fingerprint=w.fingerprint,
        alertname=w.alertname, alert_status="firing", rule=w.rule, device=w.device,
        operation=w.operation, outcome=r.outcome, reason=r.reason, operation_id=w.operation_id,
        step=w.step, elapsed=r.elapsed)


def _conclude(tx: Tx, w: Watch, now: float, entries: list[Entry], judge: NextStep,
              max_age: float, approval_timeout: float, rules_version: str) -> Concluded:
    """End a watch that is over; after a miss, judge and queue the ladder's next step."""
    first = tx.value("SELECT min(resolved_at) FROM resolutions WHERE fingerprint = ?"
                     " AND resolved_at >= ?", (w.fingerprint, w.starts))
    r = resolved(w, first) if first is not None and first <= w.deadline else expired(w)
    tx.execute("UPDATE verifications SET state = ?, concluded = ?, resolved_at = ?"
               " WHERE operation_id = ?", (r.outcome, now, first, w.operation_id))
    entries.append(_verification_entry(now, w, r))
    if r.outcome != Verification.NOT_REMEDIATED:
        return Concluded(w, r)
    if first is not None:  # it resolved, only after the window: nothing more to do for it
        return _run_out(tx, w, r, f"the alert resolved at {iso(first)}, after the window")
    decided = judge(w, _TxnState(tx), now)
    if isinstance(decided, str):
        return _run_out(tx, w, r, decided)
    delivery = Delivery(w.request_id, w.source, w.receiver, w.group_key, rules_version)
    op_id = None
    if decided.verdict in QUEUING:
        op_id = _queue(tx, delivery, decided, now, max_age, approval_timeout)
    elif decided.verdict == Verdict.BREAKER_OPEN and not _meta(tx, Flag.BREAKER_OPEN):
        _set_meta(tx, Flag.BREAKER_OPEN, now)
    entries.append(_decision_entry(now, delivery, decided, op_id))
    if op_id is None:
        return _run_out(tx, w, r, f"{decided.reason} ({decided.verdict})")
    tx.execute("UPDATE verifications SET next_operation_id = ? WHERE operation_id = ?",
               (op_id, w.operation_id))
    return Concluded(w, r, op_id)


def _run_out(tx: Tx, w: Watch, r: Resolution, why: str) -> Concluded:
    """The ladder ends at this missed watch: a person is told why no step follows."""
    tx.execute("UPDATE verifications SET ended = 1, ended_why = ? WHERE operation_id = ?",
               (why, w.operation_id))
    return Concluded(w, r, None, why)


def _open_fingerprints(tx: Tx, source: str, limit: int | None = None) -> set[str]:
    """The alerts from `source` that something open waits on: a watch, a ladder that ran out
    unacknowledged, a later step not sent yet."""
    bound = f" LIMIT {int(limit)}" if limit else ""
    found = {r["fingerprint"] for r in tx.rows(
        "SELECT DISTINCT o.fingerprint FROM verifications v JOIN operations o"
        " ON o.id = v.operation_id WHERE o.source = ? AND v.resolved_at IS NULL"
        " AND (v.state = ? OR (v.state = ? AND v.acked IS NULL))" + bound,
        (source, _WATCHING, Verification.NOT_REMEDIATED))}
    if limit and found:
        return found
    return found | {r["fingerprint"] for r in tx.rows(
        "SELECT DISTINCT fingerprint FROM operations WHERE source = ? AND step > 1"
        " AND state IN (?, ?)" + bound, (source, OpState.QUEUED, OpState.PENDING_APPROVAL))}


def _subject(row: Row) -> Subject:
    return Subject(row["id"], row["device"], row["operation"], row["rule"], row["alertname"])


def _failures(tx: Tx, now: float) -> Iterable[Failure]:
    """Operations that ended failed or unknown while their cooldown runs, unacknowledged."""
    for r in tx.rows(
        f"SELECT {_SUBJECT}, o.state, o.updated FROM operations o JOIN cooldowns c"
        " ON c.operation_id = o.id WHERE o.state IN (?, ?) AND o.acked IS NULL AND c.until > ?"
        " ORDER BY o.id", (*_FAILURES, now),
    ):
        reason = tx.value(  # the audit is indexed by device
            "SELECT reason FROM audit WHERE device = ? AND operation_id = ? AND event = ?"
            " ORDER BY id DESC LIMIT 1", (r["device"], r["id"], Event.OUTCOME))
        yield Failure(_subject(r), r["state"], reason or "", r["updated"])


def _ladder_ends(tx: Tx) -> Iterable[LadderEnd]:
    """The ladders that ran out on an alert that still fires, unacknowledged: the last step
    missed, no step could follow, or the next one ended without being sent."""
    never_sent = sorted(NEVER_SENT)
    for r in tx.rows(
        f"SELECT {_SUBJECT}, v.verify, v.ended, v.ended_why, v.concluded, n.state AS next,"
        " n.updated AS next_ended FROM verifications v JOIN operations o"
        " ON o.id = v.operation_id LEFT JOIN operations n ON n.id = v.next_operation_id"
        " WHERE v.state = ? AND v.resolved_at IS NULL AND v.acked IS NULL"
        f" AND (v.ended = 1 OR n.state IN ({', '.join('?' * len(never_sent))})) ORDER BY o.id",
        (Verification.NOT_REMEDIATED, *never_sent),
    ):
        if r["ended"]:
            yield LadderEnd(_subject(r), r["verify"], r["ended_why"], r["concluded"])
        else:
            yield LadderEnd(_subject(r), r["verify"], f"its next step ended {r['next']}",
                            r["next_ended"])


def _tripped_by(tx: Tx, since: float) -> str:
    """The reason of the decision that tripped the storm breaker open `since`."""
    reason = tx.value(
        "SELECT reason FROM audit WHERE event = ? AND ts >= ? AND outcome = ?"
        " ORDER BY id LIMIT 1", (Event.DECISION, since, Verdict.BREAKER_OPEN))
    return reason or "see alert-bridge status"


def _acknowledgeable(tx: Tx, op: Operation, acked: float | None) -> str:
    """What there is to acknowledge about `op`, or StoreError 409 saying why nothing."""
    if op.state in _FAILURES:
        if acked is not None:
            raise StoreError(f"operation {op.id} ({op.state}) is already acknowledged",
                             status=409)
        return f"it ended {op.state}"
    watch = tx.row(
        "SELECT v.state, v.acked, v.ended, n.state AS next FROM verifications v LEFT JOIN"
        " operations n ON n.id = v.next_operation_id WHERE v.operation_id = ?", (op.id,))
    if watch is None or watch["state"] != Verification.NOT_REMEDIATED or not (
            watch["ended"] or watch["next"] in NEVER_SENT):
        raise StoreError(f"operation {op.id} is {op.state}: nothing to acknowledge (only an"
                         " operation that ended failed or unknown, or the last of a ladder"
                         " that did not remediate)", status=409)
    if watch["acked"] is not None:
        raise StoreError(f"operation {op.id} (not remediated) is already acknowledged",
                         status=409)
    return "it did not remediate its alert"


def _keep_notice(tx: Tx, n: Notice, known: Row | None) -> None:
    shown = (n.alertname, n.severity, json.dumps(dict(n.labels)), n.summary, n.action, n.url)
    if known is None:
        tx.execute(
            "INSERT INTO notices (key, alertname, severity, labels, summary, action, url, since,"
            " told_start, told_end, told_resolved) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0)",
            (n.key, *shown, n.since))
    elif known["ended"] is not None:
        # It ended and came back before it was forgotten: a new start, to tell anew.
        tx.execute(
            "UPDATE notices SET alertname = ?, severity = ?, labels = ?, summary = ?,"
            " action = ?, url = ?, since = ?, ended = NULL, told_start = 0, told_end = 0,"
            " told_resolved = 0 WHERE key = ?", (*shown, n.since, n.key))
    else:
        tx.execute("UPDATE notices SET summary = ?, action = ?, url = ? WHERE key = ?",
                   (n.summary, n.action, n.url, n.key))


def _told(r: Row) -> Told:
    notice = Notice(r["alertname"], r["severity"], _json(r["labels"]), r["summary"],
                    r["action"], r["since"], r["url"])
    return Told(notice, r["ended"], bool(r["told_start"]), bool(r["told_end"]),
                bool(r["told_resolved"]))


# -- the audit: entries keyed by column, appended to the chain ----------------------------

#: A new record's columns when nothing is said of them: empty text, or NULL where the column
#: takes numbers.
_BLANK: dict[str, object] = {
    column: None if column in ("status_code", "execution_id", "operation_id", "attempt", "step",
                               "elapsed")
    else "" for column in CONTENT
}


def _entry(now: float, event: Event, **columns: object) -> Row:
    """A new audit record's content, keyed by column; what is not given is blank."""
    unknown = set(columns) - set(_BLANK)
    if unknown:
        raise TypeError(f"not audit columns: {sorted(unknown)}")
    return {**_BLANK, "ts": now, "event": event, **columns}


def _decision_entry(now: float, delivery: Delivery, d: Decision,
                    op_id: int | None) -> StoredValues:
    """A decision's record, its values as stored, in CONTENT order: a storm makes hundreds,
    and audit.chain takes these without checking or typing them (a test holds them to the
    record _entry makes of the same decision)."""
    alert = d.alert
    return (
        float(now), _DECISION, delivery.request_id, delivery.source, delivery.receiver,
        delivery.group_key, alert.fingerprint, alert.alertname, alert.status,
        d.rule.name if d.rule else "", d.device, d.operation, str(d.verdict), d.reason,
        None, None, "", op_id, None, delivery.rules_version, d.step if d.step > 1 else None,
        None,
    )


_DECISION = Event.DECISION.value


def _operation_entry(now: float, event: Event, op: Operation, outcome: str, reason: str,
                     **columns: object) -> Row:
    return _entry(now, event, **{
        "request_id": op.request_id, "source": op.source, "receiver": op.receiver,
        "group_key": op.group_key, "fingerprint": op.fingerprint, "alertname": op.alertname,
        "alert_status": op.alert_status, "rule": op.rule, "device": op.device,
        "operation": op.operation, "outcome": outcome, "reason": reason,
        "operation_id": op.id, "attempt": op.attempts, "rules_version": op.rules_version,
        "step": op.step if op.step > 1 else None, **columns,
    })


_AUDIT_INSERT = (
    f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES ({', '.join('?' * len(COLUMNS))})"
)


def _append(tx: Tx, entries: Iterable[Entry]) -> None:
    """Append audit records, each chained to the one before: the one way records are written.

    The caller holds the transaction that serialises appends (Lock.CHAIN), so no other writer
    appends between reading the head and writing: the chain stays linear. The head is read
    once per call, however many records. The id goes past the highest ever written, so the
    records after a deleted tail show the gap.
    """
    entries = list(entries)
    if not entries:
        return
    last_id, prev_hash, written = tx.chain_head()
    first_id = max(last_id, written) + 1
    rows, _ = chain(first_id, entries, prev_hash)
    tx.execute_many(_AUDIT_INSERT, rows)
    tx.note_audit_written(first_id + len(rows) - 1)
