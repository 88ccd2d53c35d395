"""State that outlives a request: cooldown claims, the operations queue and the audit log.

SqliteStore is the embedded default. Every write that belongs together happens in one
transaction, and SQLite's write lock (BEGIN IMMEDIATE) makes claims atomic across all the
processes that share the file, which is what lets several gunicorn workers run side by side.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from bridge import decide
from bridge.audit import (
    APPROVAL,
    ATTEMPT,
    COLUMNS,
    CONTENT,
    DECISION,
    GENESIS,
    HASHED,
    OPERATOR,
    OUTCOME,
    AuditQuery,
    AuditRecord,
    ChainReport,
    Delivery,
    chain_hash,
    iso,
    new_record,
    verify_chain,
)
from bridge.client import CallResult
from bridge.decide import Decision, Key, State
from bridge.errors import BridgeError
from bridge.rules import Budget
from bridge.vocab import Flag, Outcome

T = TypeVar("T")
log = logging.getLogger(__name__)

# Operation states. PENDING_APPROVAL, QUEUED and SENDING are open; the others are final.
PENDING_APPROVAL = "pending_approval"
QUEUED = "queued"
SENDING = "sending"
SUCCEEDED = "succeeded"
FAILED = "failed"
UNKNOWN = "unknown"
EXPIRED = "expired"
REJECTED = "rejected"
CANCELLED = "cancelled"
#: Operations that never reached the device API: they count for nothing.
NEVER_SENT = (EXPIRED, REJECTED, CANCELLED)
#: The outcome of the audit record a person's `alert-bridge cooldowns clear` writes.
COOLDOWN_CLEARED = "cooldown_cleared"

#: The write-ahead log is copied into the database once it holds this much, and its file is
#: cut back to this size after. SQLite's default (4 MB, never cut back) can fill a small
#: volume with log alone, and then the checkpoint that would empty it has no room to run.
WAL_LIMIT = 1024 * 1024
#: The longest a readiness probe or a scrape waits for its test write's turn: writes that
#: wait longer than that are what not ready means.
PROBE_WAIT = 1.0

# Flags in the meta table; each holds the time it was raised.
PAUSED = "paused_since"
BREAKER_OPEN = "breaker_open_since"
#: When an operator last resumed: the storm breaker counts demand from then on only.
RESUMED = "resumed_at"
#: When the rules file was last reloaded, and when a reload was last refused.
RELOAD_OK = "rules_reload_ok_at"
RELOAD_FAILED = "rules_reload_failed_at"


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

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id, "state": self.state, "device": self.device,
            "operation": self.operation, "rule": self.rule, "created": iso(self.created),
            "expires_at": iso(self.expires_at), "alertname": self.alertname,
            "fingerprint": self.fingerprint, "request_id": self.request_id,
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

_OP_COLUMNS = (
    "id, device, operation, rule, state, created, attempts, claim_until, request_id, source,"
    " receiver, group_key, fingerprint, alertname, alert_status, rules_version, expires_at"
)


@dataclass(frozen=True)
class Claim:
    """The operation a sender may send now, or None and how long to wait for the rate limit."""

    operation: Operation | None
    wait: float


class Store(Protocol):
    """What the bridge needs from a state backend (SQLite now, PostgreSQL for replicas later)."""

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
               operation_id: int | None = None,
               release_until: float | None = None) -> list[Operation]: ...
    def claim(self, now: float, *, concurrency: int, spacing: float, lease: float) -> Claim: ...
    def finish(self, op: Operation, result: CallResult, now: float, *,
               retry_at: float | None = None, release_until: float | None = None) -> None: ...
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
    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS cooldowns (
    device TEXT NOT NULL,
    operation TEXT NOT NULL,
    until REAL NOT NULL,
    rule TEXT NOT NULL,
    operation_id INTEGER,            -- the operation that claimed it (NULL in old state files)
    PRIMARY KEY (device, operation)
);
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    operation TEXT NOT NULL,
    rule TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    request_id TEXT NOT NULL,
    source TEXT NOT NULL,
    receiver TEXT NOT NULL,
    group_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    alertname TEXT NOT NULL,
    alert_status TEXT NOT NULL,
    rules_version TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL,            -- the alert's labels, JSON: budgets group by them
    annotations TEXT NOT NULL DEFAULT '{}',  -- the alert's annotations, JSON, for a person
    starts_at REAL,                  -- the alert's startsAt, for a person (NULL: none given)
    hold TEXT NOT NULL,              -- why it waited: '', approval, window, min_age
    claim_until REAL NOT NULL,       -- the cooldown end this operation claimed
    next_attempt REAL NOT NULL,      -- not sent before this time (holds, retry spacing)
    expires_at REAL NOT NULL,        -- not sent after this time (max age, approval timeout)
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_until REAL                 -- while sending: past this, the sender is presumed dead
);
CREATE INDEX IF NOT EXISTS operations_open ON operations (state, next_attempt)
    WHERE state IN ('queued', 'sending', 'pending_approval');
CREATE INDEX IF NOT EXISTS operations_key ON operations (device, operation, created);
CREATE INDEX IF NOT EXISTS operations_created ON operations (created);
CREATE INDEX IF NOT EXISTS operations_updated ON operations (updated);
CREATE INDEX IF NOT EXISTS operations_held_for_age ON operations (fingerprint)
    WHERE state = 'queued' AND hold = 'min_age';
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    event TEXT NOT NULL,
    request_id TEXT NOT NULL,
    source TEXT NOT NULL,
    receiver TEXT NOT NULL,
    group_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    alertname TEXT NOT NULL,
    alert_status TEXT NOT NULL,
    rule TEXT NOT NULL,
    device TEXT NOT NULL,
    operation TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    status_code INTEGER,
    execution_id TEXT,
    error TEXT NOT NULL,
    operation_id INTEGER,
    attempt INTEGER,
    rules_version TEXT NOT NULL DEFAULT '',
    prev_hash TEXT NOT NULL DEFAULT '',  -- hash of the record before (the chain, see audit.py)
    hash TEXT NOT NULL DEFAULT ''        -- sha256 of id, every column and prev_hash
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
CREATE INDEX IF NOT EXISTS audit_demand ON audit (event, ts, outcome);
CREATE INDEX IF NOT EXISTS audit_device ON audit (device, id);
"""

_COOLDOWN_COLUMNS = "device, operation, until, rule, operation_id"

# Only _append() uses it: every record is written with its id and its place in the chain.
_AUDIT_INSERT = (
    f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)


class SqliteStore:
    """The embedded store: one SQLite file in WAL mode, one connection per thread."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._turn_lock = threading.Lock()
        self._file_turn: _FileTurn | None = None  # opened on first write, after fork
        self._connections: list[sqlite3.Connection] = []
        self._ready = False

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    # -- connection handling -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so that a transaction
            # takes the write lock up front instead of failing to upgrade half-way through.
            conn = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            (page_size,) = conn.execute("PRAGMA page_size").fetchone()
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_LIMIT // page_size}")
            if not self._ready:
                with _transaction(conn):
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    _add_missing_columns(conn)
                    _chain_unchained_audit(conn)
                self._ready = True
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self, wait: float | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction (see _writer)."""
        with self._writer(wait) as conn, _transaction(conn):
            yield conn

    @contextmanager
    def _writer(self, wait: float | None = None) -> Iterator[sqlite3.Connection]:
        """This thread's connection in its turn to write. Given up (StoreError, 503) unless
        the turn comes within `wait` (the timeout), counting every wait: for this process's
        turn, the other processes', and SQLite's write lock (held by anyone else: a backup,
        an operator's sqlite3)."""
        wait = self._timeout if wait is None else wait
        conn = self._connect()
        deadline = time.monotonic() + wait
        try:
            with self._turn(deadline, wait):
                _busy_timeout(conn, deadline - time.monotonic())
                try:
                    yield conn
                finally:
                    _busy_timeout(conn, self._timeout)
        except sqlite3.Error as exc:
            raise self._failed(exc, wait) from exc

    def _failed(self, exc: sqlite3.Error, wait: float | None = None) -> StoreError:
        # Errors raised by the sqlite3 module itself (a closed connection) carry no code.
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
            return self._busy(self._timeout if wait is None else wait)
        return StoreError(f"state store {self.path}: {exc}")

    def _busy(self, wait: float) -> StoreError:
        setting = " (BRIDGE_STATE_TIMEOUT)" if wait == self._timeout else ""
        return StoreError(f"state store {self.path}: locked by another writer for more than"
                          f" {wait:g}s{setting}")

    @contextmanager
    def _turn(self, deadline: float, wait: float) -> Iterator[None]:
        """Writers take turns: first within this process, then across processes.

        SQLite's own busy handler retries on a timer and keeps no queue, so under load an
        unlucky writer can lose the write lock many times in a row (seconds of tail latency,
        measured in benchmarks/). A thread lock plus flock on a side file queues writers in
        the kernel instead; BEGIN IMMEDIATE then almost never waits. Each wait ends at the
        writer's deadline, so a lock held elsewhere makes every writer give up in time
        instead of each waiting out all those queued before it.
        """
        if not self._turn_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self._busy(wait)
        try:
            if self._file_turn is None:
                self._file_turn = _FileTurn(self.path + "-writer.lock")
            if not self._file_turn.acquire(deadline):
                raise self._busy(wait)
            try:
                yield
            finally:
                self._file_turn.release()
        finally:
            self._turn_lock.release()

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        try:
            return self._connect().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def close(self) -> None:
        if self._file_turn is not None:
            self._file_turn.close()
        self._file_turn = None
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- the Store interface -------------------------------------------------------------

    def ping(self) -> None:
        self._read("SELECT count(*) FROM cooldowns")

    def active_cooldowns(self, now: float) -> dict[Key, float]:
        rows = self._read("SELECT device, operation, until FROM cooldowns WHERE until > ?", (now,))
        return {(device, op): until for device, op, until in rows}

    def cooldowns(self, now: float, device: str | None = None) -> list[Cooldown]:
        """The cooldowns in force at `now` (of one device, or all), by device and operation."""
        sql = (f"SELECT {_COOLDOWN_COLUMNS} FROM cooldowns WHERE until > ?"
               + (" AND device = ?" if device is not None else "")
               + " ORDER BY device, operation")
        return [Cooldown(*row) for row in self._read(sql, (now,) if device is None
                                                     else (now, device))]

    def clear_cooldowns(self, device: str, operation: str | None, who: str,
                        now: float) -> list[Cooldown]:
        """End the cooldowns in force on `device` (one operation, or all), by a person's word.

        For a device fixed by hand that must be remediable again now. Each one cleared gets an
        audit record. Refused while an operation for it is still open: a new alert could then
        queue a second one behind it.
        """
        what = f"{device} ({operation})" if operation else device
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {_COOLDOWN_COLUMNS} FROM cooldowns WHERE device = ? AND until > ?"
                + (" AND operation = ?" if operation else "") + " ORDER BY operation",
                (device, now, operation) if operation else (device, now),
            ).fetchall()
            cleared = [Cooldown(*row) for row in rows]
            if not cleared:
                raise StoreError(f"no cooldown in force on {what}", status=404)
            self._refuse_if_open(conn, cleared)
            audit = []
            for c in cleared:
                conn.execute("DELETE FROM cooldowns WHERE device = ? AND operation = ?",
                             (c.device, c.operation))
                audit.append((
                    now, OPERATOR, "", "", "", "", "", "", "", c.rule, c.device, c.operation,
                    COOLDOWN_CLEARED, f"cleared by {who}; it ran until {iso(c.until)}",
                    None, None, "", c.operation_id, None, "",
                ))
            _append(conn, audit)
        return cleared

    def _refuse_if_open(self, conn: sqlite3.Connection, cooldowns: list[Cooldown]) -> None:
        for c in cooldowns:
            row = conn.execute(
                "SELECT id, state FROM operations WHERE device = ? AND operation = ?"
                " AND state IN (?, ?, ?) ORDER BY id LIMIT 1",
                (c.device, c.operation, PENDING_APPROVAL, QUEUED, SENDING),
            ).fetchone()
            if row is not None:
                raise StoreError(
                    f"{c.operation} on {c.device}: operation {row[0]} is still {row[1]}; clearing"
                    " its cooldown would let an alert queue a second one. Wait for it to end"
                    " (or reject it, if it is pending approval)", status=409)

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
        recorded: list[Recorded] = []
        audit: list[tuple] = []
        with self._write() as conn:
            state = _TxnState(conn)
            decisions = judge(state)
            if any(d.verdict == decide.BREAKER_OPEN for d in decisions) and not state.breaker_open:
                _set_meta(conn, BREAKER_OPEN, now)
            for d in decisions:
                op_id = None
                if d.verdict in decide.QUEUING:
                    assert d.rule is not None and d.until is not None
                    op_id = self._queue(conn, delivery, d, now, max_age, approval_timeout)
                    conn.execute(
                        "INSERT INTO cooldowns (device, operation, until, rule, operation_id)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (device, operation) DO UPDATE"
                        " SET until = excluded.until, rule = excluded.rule,"
                        " operation_id = excluded.operation_id",
                        (d.device, d.operation, d.until, d.rule.name, op_id),
                    )
                audit.append(_decision_row(now, delivery, d, op_id))
                recorded.append(Recorded(d, op_id))
            resolved = {d.alert.fingerprint for d in decisions if d.alert.status == "resolved"}
            for fingerprint in resolved:
                audit.extend(self._cancel_immature(conn, fingerprint, now))
            _append(conn, audit)
            return answer(recorded)

    def read_state(self, judge: Callable[[State], T]) -> T:
        """Run `judge` on the current state without writing anything (explain, tests)."""
        with self._write() as conn:
            return judge(_TxnState(conn))

    def _cancel_immature(self, conn: sqlite3.Connection, fingerprint: str,
                         now: float) -> list[tuple]:
        """Cancel the held operations of an alert that resolved: their audit rows, to append."""
        # An alert that resolves before its rule's min_age was a flap: its held operation
        # is dropped, which is what min_age is for.
        ids = conn.execute(
            "SELECT id FROM operations WHERE fingerprint = ? AND state = ? AND hold = 'min_age'"
            " AND attempts = 0", (fingerprint, QUEUED),
        ).fetchall()
        audit: list[tuple] = []
        for (op_id,) in ids:
            self._cancel(conn, op_id, "resolved_before_min_age", now, now, audit,
                         error="the alert resolved before the rule's min_age: not sent")
        return audit

    def _cancel(self, conn: sqlite3.Connection, operation_id: int, reason: str, now: float,
                release_until: float | None, audit: list[tuple], error: str = "",
                ) -> Operation | None:
        """The one way an operation ends CANCELLED: only while it waits (queued, held or
        pending approval, and not past its expiry), never once a sender holds it. Appends its
        audit row to `audit`; None when it no longer waits."""
        row = conn.execute(
            f"UPDATE operations SET state = ?, updated = ? WHERE id = ? AND state IN (?, ?)"
            f" AND expires_at >= ? RETURNING {_OP_COLUMNS}",
            (CANCELLED, now, operation_id, QUEUED, PENDING_APPROVAL, now),
        ).fetchone()
        if row is None:
            return None
        op = Operation(*row)
        if release_until is not None:
            self._release(conn, op, release_until)
        audit.append(_operation_row(now, OUTCOME, op, CANCELLED, reason, None, None, error))
        return op

    def _queue(self, conn: sqlite3.Connection, delivery: Delivery, d: Decision, now: float,
               max_age: float, approval_timeout: float) -> int:
        assert d.rule is not None and d.until is not None
        not_before = d.not_before or now
        if d.verdict == decide.PENDING_APPROVAL:
            state, hold, expires = PENDING_APPROVAL, "approval", now + approval_timeout
        else:
            hold = {decide.HELD_FOR_WINDOW: "window", decide.HELD_MIN_AGE: "min_age"}.get(
                d.verdict, "")
            # Max age counts from when the operation may first be sent.
            state, expires = QUEUED, max(now, not_before) + max_age
        cur = conn.execute(
            "INSERT INTO operations (device, operation, rule, state, created, updated,"
            " request_id, source, receiver, group_key, fingerprint, alertname, alert_status,"
            " rules_version, labels, annotations, starts_at, hold, claim_until, next_attempt,"
            " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                d.device, d.operation, d.rule.name, state, now, now, delivery.request_id,
                delivery.source, delivery.receiver, delivery.group_key, d.alert.fingerprint,
                d.alert.alertname, d.alert.status, delivery.rules_version,
                json.dumps(dict(d.alert.labels)), json.dumps(dict(d.alert.annotations)),
                d.alert.starts_at.timestamp() if d.alert.starts_at else None, hold,
                d.until, not_before, expires,
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def claim(self, now: float, *, concurrency: int, spacing: float, lease: float) -> Claim:
        """Take the next queued operation that may be sent now, and mark it SENDING.

        All senders in all processes share the limits kept here: at most `concurrency`
        operations SENDING, one call started per `spacing` seconds, and never two operations
        on one device at once. A sender that holds an operation past `lease` is presumed dead.
        """
        with self._write() as conn:
            if _meta(conn, PAUSED, 0.0) or _meta(conn, BREAKER_OPEN, 0.0):
                return Claim(None, 0.0)  # a person must resume the bridge first
            (sending,) = conn.execute(
                "SELECT count(*) FROM operations WHERE state = ?", (SENDING,)
            ).fetchone()
            if sending >= concurrency:
                return Claim(None, 0.0)
            slot = _meta(conn, "next_call_slot", 0.0)
            if slot > now:
                return Claim(None, slot - now)
            row = conn.execute(
                f"SELECT {_OP_COLUMNS} FROM operations o WHERE state = ? AND next_attempt <= ?"
                " AND expires_at >= ?"  # too old, though the sweep has not ended it yet
                " AND NOT EXISTS (SELECT 1 FROM operations s"
                "                 WHERE s.state = ? AND s.device = o.device)"
                " ORDER BY next_attempt, id LIMIT 1",
                (QUEUED, now, now, SENDING),
            ).fetchone()
            if row is None:
                return Claim(None, 0.0)
            op = Operation(*row)
            conn.execute(
                "UPDATE operations SET state = ?, updated = ?, attempts = attempts + 1,"
                " lease_until = ? WHERE id = ?",
                (SENDING, now, now + lease, op.id),
            )
            _set_meta(conn, "next_call_slot", max(slot, now) + spacing)
        return Claim(replace(op, state=SENDING, attempts=op.attempts + 1), 0.0)

    def finish(self, op: Operation, result: CallResult, now: float, *,
               retry_at: float | None = None, release_until: float | None = None) -> None:
        """Record one attempt's result: queue the operation again, or end it with its outcome.

        `release_until` shortens the device's cooldown (to that time) when the operation ends
        without having reached the device, so a later alert may try again.
        """
        with self._write() as conn:
            if retry_at is not None:
                updated = conn.execute(
                    "UPDATE operations SET state = ?, updated = ?, next_attempt = ?,"
                    " lease_until = NULL WHERE id = ? AND state = ?",
                    (QUEUED, now, retry_at, op.id, SENDING),
                ).rowcount
                event, reason = ATTEMPT, f"{result.kind}; next attempt at {iso(retry_at)}"
            else:
                updated = conn.execute(
                    "UPDATE operations SET state = ?, updated = ?, lease_until = NULL"
                    " WHERE id = ? AND state = ?",
                    (result.outcome, now, op.id, SENDING),
                ).rowcount
                event = OUTCOME
                reason = "API call" if result.outcome == "succeeded" else result.kind
            if not updated:
                # The lease ran out and the operation was already ended as unknown: that
                # record stands, and this late result is recorded beside it, not over it.
                event, reason = ATTEMPT, f"{result.kind}; arrived after the lease ran out"
            elif retry_at is None and release_until is not None:
                self._release(conn, op, release_until)
            _append(conn, [_operation_row(
                now, event, op, result.outcome, reason, result.status_code,
                result.execution_id, result.error,
            )])

    def end_stale(self, now: float, release_until: float) -> list[Operation]:
        """End operations that can no longer be sent as they should.

        Queued ones past their maximum age, and ones nobody approved in time, end EXPIRED
        (acting late can do more harm than good) and release their cooldown; ones whose
        sender's lease ran out end UNKNOWN (the call may have reached the device) and keep it.
        """
        with self._write() as conn:
            ended, audit = self._expire(conn, now, release_until)
            lost = conn.execute(
                f"UPDATE operations SET state = ?, updated = ?, lease_until = NULL"
                f" WHERE state = ? AND lease_until < ? RETURNING {_OP_COLUMNS}",
                (UNKNOWN, now, SENDING, now),
            ).fetchall()
            for row in lost:
                op = Operation(*row)
                audit.append(_operation_row(
                    now, OUTCOME, op, UNKNOWN, "lost_in_flight", None, None,
                    "the process sending it stopped before the answer was recorded",
                ))
                ended.append(op)
            _append(conn, audit)
        return ended

    def _expire(self, conn: sqlite3.Connection, now: float, release_until: float,
                operation_id: int | None = None) -> tuple[list[Operation], list[tuple]]:
        """End EXPIRED the open operations past their expiry (or just this one, if it is):
        the operations, and their audit rows to append."""
        sql = ("UPDATE operations SET state = ?, updated = ? WHERE state IN (?, ?)"
               " AND expires_at < ?")
        params: list[object] = [EXPIRED, now, QUEUED, PENDING_APPROVAL, now]
        if operation_id is not None:
            sql += " AND id = ?"
            params.append(operation_id)
        ended: list[Operation] = []
        audit: list[tuple] = []
        for *row, hold in conn.execute(f"{sql} RETURNING {_OP_COLUMNS}, hold",
                                       params).fetchall():
            op = Operation(*row)
            self._release(conn, op, release_until)
            reason, error = ("approval_timeout", "nobody approved it in time") \
                if hold == "approval" else ("max_age", "not sent within the maximum age")
            audit.append(_operation_row(now, OUTCOME, op, EXPIRED, reason, None, None, error))
            ended.append(op)
        return ended, audit

    def pending(self, now: float) -> list[Operation]:
        """Operations waiting for a person, and not yet past their approval timeout."""
        rows = self._read(
            f"SELECT {_OP_COLUMNS} FROM operations WHERE state = ? AND expires_at >= ?"
            " ORDER BY id", (PENDING_APPROVAL, now),
        )
        return [Operation(*row) for row in rows]

    def operation(self, operation_id: int, now: float) -> Operation | None:
        """One operation by its id, or None. One still open but past its expiry at `now` reads
        as expired, swept or not, as everywhere else."""
        rows = self._read(f"SELECT {_OP_COLUMNS} FROM operations WHERE id = ?", (operation_id,))
        if not rows:
            return None
        op = Operation(*rows[0])
        if op.state in (QUEUED, PENDING_APPROVAL) and op.expires_at < now:
            op = replace(op, state=EXPIRED)
        return op

    def asking_alerts(self, operation_ids: Sequence[int]) -> dict[int, AskingAlert]:
        """The alert (labels, annotations, startsAt) that asked for each of these operations."""
        ids = list(operation_ids)
        if not ids:
            return {}
        rows = self._read(
            f"SELECT id, labels, annotations, starts_at FROM operations"
            f" WHERE id IN ({', '.join('?' * len(ids))})", ids)
        return {op_id: AskingAlert(json.loads(labels), json.loads(annotations), starts_at)
                for op_id, labels, annotations, starts_at in rows}

    def devices(self, containing: str, limit: int) -> list[DeviceSeen]:
        """The devices the audit names whose name contains this text (any case), the most
        recently seen first."""
        rows = self._read(
            "SELECT device, count(*), max(ts) FROM audit WHERE device != ''"
            " AND instr(lower(device), lower(?)) > 0 GROUP BY device"
            " ORDER BY max(ts) DESC, device LIMIT ?", (containing, limit))
        return [DeviceSeen(*row) for row in rows]

    def operations_per_week(self, device: str, now: float, weeks: int) -> list[int]:
        """How many operations alerts asked for on `device` in each of the last `weeks` weeks
        (7-day spans ending at `now`), oldest first: whether it keeps coming back."""
        rows = self._read(
            "SELECT CAST((? - created) / ? AS INTEGER) AS ago, count(*) FROM operations"
            " WHERE device = ? AND created > ? AND created <= ? GROUP BY ago",
            (now, WEEK, device, now - weeks * WEEK, now))
        counts = [0] * weeks
        for ago, n in rows:
            counts[weeks - 1 - ago] = n
        return counts

    def settle(self, operation_id: int, approve: bool, who: str, now: float, *,
               max_age: float, release_until: float) -> Operation:
        """A person's answer to an operation pending approval: queue it, or reject it.

        One past its approval timeout is refused and ends EXPIRED now if no sweep ended it
        yet (releasing its cooldown to `release_until`): an answer after the timeout is no
        answer, whether or not the bridge was running to notice the timeout.
        """
        refusal: StoreError | None = None
        with self._write() as conn:
            _, audit = self._expire(conn, now, release_until, operation_id)
            _append(conn, audit)
            op, not_before, hold = _operation(conn, operation_id)
            refusal = _not_pending(op, hold)
            if refusal is None:
                self._answer(conn, op, approve, who, now, max(now, not_before) + max_age)
        if refusal is not None:
            raise refusal  # after the commit: the expiry it found is kept
        return replace(op, state=QUEUED if approve else REJECTED)

    def _answer(self, conn: sqlite3.Connection, op: Operation, approve: bool, who: str,
                now: float, expires_at: float) -> None:
        if approve:
            conn.execute(
                "UPDATE operations SET state = ?, updated = ?, hold = '', expires_at = ?"
                " WHERE id = ?", (QUEUED, now, expires_at, op.id),
            )
            event, outcome, reason = APPROVAL, "approved", f"approved by {who}"
        else:
            # A rejected operation keeps its cooldown: the same alert asking again at
            # once would only ask the same person the same question.
            conn.execute("UPDATE operations SET state = ?, updated = ? WHERE id = ?",
                         (REJECTED, now, op.id))
            event, outcome, reason = OUTCOME, REJECTED, f"rejected by {who}"
        _append(conn, [_operation_row(now, event, op, outcome, reason, None, None, "")])

    def cancel(self, why: Callable[[Operation], str | None], now: float, *,
               operation_id: int | None = None,
               release_until: float | None = None) -> list[Operation]:
        """End operations that wait to be sent (queued, held, pending approval) as CANCELLED,
        each audited with the reason `why` gives it; `why` returning None leaves one waiting.

        With `operation_id`, that one operation: StoreError 404 when there is none, 409 when
        it no longer waits (being sent, or ended). Without, every waiting one `why` names.
        `release_until` shortens the cooldown each one claimed; None keeps it.
        """
        if operation_id is None:
            # Read first, outside the write lock: dispatchers ask every second, and there is
            # almost never anything to cancel.
            rows = self._read(f"SELECT {_OP_COLUMNS} FROM operations WHERE state IN (?, ?)"
                              " AND expires_at >= ? ORDER BY id", (QUEUED, PENDING_APPROVAL, now))
            reasons = {op.id: reason for op in (Operation(*r) for r in rows)
                       if (reason := why(op)) is not None}
            if not reasons:
                return []
        ended: list[Operation] = []
        audit: list[tuple] = []
        with self._write() as conn:
            if operation_id is not None:
                op, _, _ = _operation(conn, operation_id)
                reason = why(op)
                if op.state not in (QUEUED, PENDING_APPROVAL) or reason is None:
                    raise StoreError(
                        f"operation {operation_id} is {op.state}: only an operation that"
                        " waits to be sent (queued, held or pending approval) can be cancelled",
                        status=409,
                    )
                if op.expires_at < now:  # the sweep records it EXPIRED; nothing to cancel
                    raise StoreError(f"operation {operation_id} expired at"
                                     f" {iso(op.expires_at)}: it can no longer be cancelled",
                                     status=409)
                reasons = {op.id: reason}
            for op_id, reason in reasons.items():
                # One a sender took since it was read is not touched: it is on its way.
                cancelled = self._cancel(conn, op_id, reason, now, release_until, audit)
                if cancelled is not None:
                    ended.append(cancelled)
            _append(conn, audit)
        return ended

    def _release(self, conn: sqlite3.Connection, op: Operation, until: float) -> None:
        # Only the cooldown this operation claimed, and only ever shorter.
        conn.execute(
            "UPDATE cooldowns SET until = min(until, ?)"
            " WHERE device = ? AND operation = ? AND until = ?",
            (until, op.device, op.operation, op.claim_until),
        )

    def outcome_counts(self, since: float) -> dict[str, int]:
        """How many operations ended with each outcome since then."""
        rows = self._read(
            "SELECT outcome, count(*) FROM audit WHERE event = ? AND ts >= ? GROUP BY outcome",
            (OUTCOME, since),
        )
        return dict(rows)

    def queue_depth(self, now: float) -> dict[str, int]:
        """Open operations by state; those past their expiry are no longer open, swept or not."""
        rows = self._read(
            "SELECT state, count(*) FROM operations WHERE state IN (?, ?, ?)"
            " AND (state = ? OR expires_at >= ?) GROUP BY state",
            (PENDING_APPROVAL, QUEUED, SENDING, SENDING, now),
        )
        return {PENDING_APPROVAL: 0, QUEUED: 0, SENDING: 0, **dict(rows)}

    def prune(self, before: float, batch: int = 500) -> int:
        """Delete up to `batch` audit records older than `before`, oldest first, and the
        final operations as old. Short transactions, so webhooks never wait long; the newest
        record always stays, so the hash chain goes on from it. Returns how many went."""
        with self._write() as conn:
            gone = conn.execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE ts < ?"
                " AND id < (SELECT max(id) FROM audit) ORDER BY id LIMIT ?)", (before, batch),
            ).rowcount
            conn.execute(
                "DELETE FROM operations WHERE id IN (SELECT id FROM operations WHERE updated < ?"
                " AND state NOT IN (?, ?, ?) ORDER BY id LIMIT ?)",
                (before, QUEUED, SENDING, PENDING_APPROVAL, batch),
            )
        return gone

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database and cut its file to nothing, giving
        back its space. False when a reader kept part of it (the next one will do)."""
        with self._writer() as conn:
            (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy

    def check_writable(self, now: float) -> None:
        """Write one row, as a webhook would: StoreError (its cause) if the store cannot take
        it now. A read cannot tell: a full disk, or a lock held elsewhere, stops writes only."""
        with self._write(min(PROBE_WAIT, self._timeout)) as conn:
            _set_meta(conn, Flag.WRITE_CHECKED, now)

    def pause(self, now: float, who: str) -> bool:
        """Stop sending, by a person's word, audited under `who`; False if already paused."""
        with self._write() as conn:
            if _meta(conn, PAUSED, 0.0):
                return False
            _set_meta(conn, PAUSED, now)
            _append(conn, [_operator_row(now, Outcome.SENDING_PAUSED, f"paused by {who}")])
        return True

    def resume(self, now: float, who: str | None = None) -> list[str]:
        """Clear pause and storm breaker; what was set, for the operator to read. With `who`,
        the resumption is audited under that name."""
        with self._write() as conn:
            was = [name for name, flag in (("paused", PAUSED), ("storm breaker open",
                                                               BREAKER_OPEN))
                   if _meta(conn, flag, 0.0)]
            conn.execute("DELETE FROM meta WHERE key IN (?, ?)", (PAUSED, BREAKER_OPEN))
            _set_meta(conn, RESUMED, now)
            if who is not None:
                reason = f"resumed by {who} (was: {', '.join(was) or 'running'})"
                _append(conn, [_operator_row(now, Outcome.SENDING_RESUMED, reason)])
        return was

    def get_flag(self, key: str) -> float | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_flag(self, key: str, value: float | None) -> None:
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                _set_meta(conn, key, value)

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
        sql = f"SELECT {', '.join(COLUMNS)} FROM audit WHERE {' AND '.join(where)}"
        if query.limit is None:
            rows = self._read(sql + " ORDER BY id", params)
        elif query.oldest_first:
            rows = self._read(sql + " ORDER BY id LIMIT ?", [*params, query.limit])
        else:
            rows = self._read(sql + " ORDER BY id DESC LIMIT ?", [*params, query.limit])[::-1]
        return [AuditRecord(*row) for row in rows]

    def verify_audit(self) -> ChainReport:
        """Walk the whole audit chain, in one read snapshot: writers carry on meanwhile."""
        conn = self._connect()
        try:
            conn.execute("BEGIN")  # deferred: a read transaction, one consistent snapshot
            try:
                row = conn.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
                cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit ORDER BY id")
                return verify_chain((AuditRecord(*r) for r in cursor), row[0] if row else 0)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc


class _FileTurn:
    """A turn across processes: an exclusive flock on a side file, waited for in the
    kernel's queue, with a deadline.

    flock() cannot time out, so a thread of our own waits in it, and the writer waits for
    that thread until its deadline. A lock that comes after its writer gave up goes to the
    next writer of this process if one is waiting, else straight back to the kernel. One
    writer at a time calls acquire() (the caller holds the process's thread lock).
    """

    def __init__(self, path: str) -> None:
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            self._fd = -1  # e.g. a read-only directory: SQLite alone decides
        self._changed = threading.Condition()
        self._held = False  # this process holds the flock
        self._waiter = False  # our thread is blocked in flock()
        self._wanted = False  # a writer waits for the flock
        self._closed = False

    def acquire(self, deadline: float) -> bool:
        if self._fd < 0:
            return True
        with self._changed:
            if not self._held and not self._waiter:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._held = True
                except BlockingIOError:
                    self._waiter = True
                    threading.Thread(target=self._wait, name="state-writer-turn",
                                     daemon=True).start()
            self._wanted = True
            try:
                while not self._held:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._changed.wait(left)
                return True
            finally:
                self._wanted = False

    def _wait(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            got = True
        except OSError:  # never seen; its writer gives up at its deadline, the next tries anew
            log.exception("state store: waiting for the writer lock failed")
            got = False
        with self._changed:
            self._waiter = False
            if got and self._wanted and not self._closed:
                self._held = True
                self._changed.notify_all()
                return
            if got:  # its writer gave up: let the other processes have it
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            if self._closed:
                os.close(self._fd)

    def release(self) -> None:
        if self._fd < 0:
            return
        with self._changed:
            self._held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            if self._fd >= 0 and not self._waiter:
                os.close(self._fd)  # else the waiting thread closes it when flock() returns


class _TxnState:
    """decide.State read through the connection that holds the write transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.paused = _meta(conn, PAUSED, 0.0) > 0
        self.breaker_open = _meta(conn, BREAKER_OPEN, 0.0) > 0
        # Nothing is written while decide() reads, so a count asked twice is the same count;
        # a storm payload asks the breaker and budget counts once per operation.
        self._counts: dict[tuple[str, tuple[object, ...]], int] = {}

    def _count(self, sql: str, params: Sequence[object]) -> int:
        key = (sql, tuple(params))
        if key not in self._counts:
            (n,) = self._conn.execute(sql, params).fetchone()
            self._counts[key] = int(n)
        return self._counts[key]

    def cooldown_until(self, key: Key) -> float | None:
        row = self._conn.execute(
            "SELECT until FROM cooldowns WHERE device = ? AND operation = ?", key
        ).fetchone()
        return row[0] if row else None

    def operations_since(self, key: Key, since: float) -> int:
        return self._count(
            "SELECT count(*) FROM operations WHERE device = ? AND operation = ? AND created >= ?"
            " AND state NOT IN (?, ?, ?, ?)", (*key, since, FAILED, *NEVER_SENT),
        )

    def budget_used(self, budget: Budget, group: str, since: float) -> int:
        sql = "SELECT count(*) FROM operations WHERE created >= ? AND state NOT IN (?, ?, ?)"
        params: list[object] = [since, *NEVER_SENT]
        if budget.operation:
            sql += " AND operation = ?"
            params.append(budget.operation)
        if budget.group_by:
            # Label names are [a-zA-Z_][a-zA-Z0-9_]* (checked at load): safe in a JSON path.
            sql += f" AND coalesce(json_extract(labels, '$.{budget.group_by}'), '') = ?"
            params.append(group)
        return self._count(sql, params)

    def demand_since(self, since: float) -> int:
        since = max(since, _meta(self._conn, RESUMED, 0.0))
        marks = ", ".join("?" * len(decide.DEMAND))
        return self._count(
            f"SELECT count(*) FROM audit WHERE event = ? AND ts >= ? AND outcome IN ({marks})",
            (DECISION, since, *decide.DEMAND),
        )


def _append(conn: sqlite3.Connection, rows: Iterable[tuple]) -> None:
    """Append audit records, each chained to the one before: the one way records are written.

    The caller holds the write transaction (BEGIN IMMEDIATE), so no other worker appends
    between reading the head and writing: the chain stays linear. The head is read once per
    call, however many rows. The id is the one AUTOINCREMENT would choose (past the highest
    ever written), so the records after a deleted tail show the gap.
    """
    rows = list(rows)
    if not rows:
        return
    head = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    (written,) = conn.execute(
        "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'audit'").fetchone()
    last_id, prev_hash = head if head is not None else (0, GENESIS)
    next_id = max(last_id, written) + 1
    for row in rows:
        values = new_record(next_id, row, prev_hash)
        prev_hash = chain_hash(values)
        conn.execute(_AUDIT_INSERT, (*values.values(), prev_hash))
        next_id += 1


#: Columns added after state files were first created: (table, column, declaration).
_ADDED_COLUMNS = (
    ("audit", "rules_version", "TEXT NOT NULL DEFAULT ''"),
    ("operations", "rules_version", "TEXT NOT NULL DEFAULT ''"),
    ("cooldowns", "operation_id", "INTEGER"),
    ("operations", "annotations", "TEXT NOT NULL DEFAULT '{}'"),
    ("operations", "starts_at", "REAL"),
)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Columns added after a state file was created: added to it, empty for old rows."""
    for table, column, declaration in _ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if have and column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _chain_unchained_audit(conn: sqlite3.Connection) -> None:
    """Give an audit table from before the hash chain its two columns, and chain its records.

    Runs once, in the schema transaction. The chain then vouches for those records as they
    were at the upgrade, not before.
    """
    if "hash" in {row[1] for row in conn.execute("PRAGMA table_info(audit)")}:
        return
    conn.execute("ALTER TABLE audit ADD COLUMN prev_hash TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT ''")
    after, prev_hash = 0, GENESIS
    columns = ", ".join(("id", *CONTENT))
    while True:
        batch = conn.execute(
            f"SELECT {columns} FROM audit WHERE id > ? ORDER BY id LIMIT 1000", (after,)
        ).fetchall()
        if not batch:
            return
        for row in batch:
            values = dict(zip(HASHED, (*row, prev_hash), strict=True))
            digest = chain_hash(values)
            conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?",
                         (prev_hash, digest, row[0]))
            prev_hash = digest
        after = batch[-1][0]


def _not_pending(op: Operation, hold: str) -> StoreError | None:
    """Why a person's answer to this operation comes too late, if it does."""
    if op.state == PENDING_APPROVAL:
        return None
    if op.state == EXPIRED and hold == "approval":
        return StoreError(f"operation {op.id} expired at {iso(op.expires_at)}"
                          " (approval timeout)", status=409)
    return StoreError(f"operation {op.id} is {op.state}, not pending approval", status=409)


def _operation(conn: sqlite3.Connection, operation_id: int) -> tuple[Operation, float, str]:
    """An operation, the time before which it is not sent, and why it waits; StoreError 404
    if there is none."""
    row = conn.execute(
        f"SELECT {_OP_COLUMNS}, next_attempt, hold FROM operations WHERE id = ?",
        (operation_id,),
    ).fetchone()
    if row is None:
        raise StoreError(f"no operation {operation_id}", status=404)
    *fields, not_before, hold = row
    return Operation(*fields), not_before, hold


def _decision_row(now: float, delivery: Delivery, d: Decision, op_id: int | None) -> tuple:
    return (
        now, DECISION, delivery.request_id, delivery.source, delivery.receiver,
        delivery.group_key, d.alert.fingerprint, d.alert.alertname, d.alert.status,
        d.rule.name if d.rule else "", d.device, d.operation, d.verdict, d.reason,
        None, None, "", op_id, None, delivery.rules_version,
    )


def _operation_row(now: float, event: str, op: Operation, outcome: str, reason: str,
                   status_code: int | None, execution_id: str | None, error: str) -> tuple:
    return (
        now, event, op.request_id, op.source, op.receiver, op.group_key, op.fingerprint,
        op.alertname, op.alert_status, op.rule, op.device, op.operation, outcome, reason,
        status_code, execution_id, error, op.id, op.attempts, op.rules_version,
    )


def _operator_row(now: float, outcome: str, reason: str) -> tuple:
    """An audit record of a person's action on the whole bridge (no alert, no device)."""
    return (now, OPERATOR, "", "", "", "", "", "", "", "", "", "", outcome, reason,
            None, None, "", None, None, "")


def _meta(conn: sqlite3.Connection, key: str, default: float) -> float:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else default


def _set_meta(conn: sqlite3.Connection, key: str, value: float) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _busy_timeout(conn: sqlite3.Connection, seconds: float) -> None:
    """How long SQLite waits for a lock held elsewhere, from now on, on this connection."""
    conn.execute(f"PRAGMA busy_timeout = {max(0, int(seconds * 1000))}")


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (it does on a full disk); a COMMIT that failed
        # otherwise would leave this connection inside the transaction, holding the lock.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
