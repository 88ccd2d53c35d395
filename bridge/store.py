"""State that outlives a request: cooldown claims, the operations queue and the audit log.

SqliteStore is the embedded default. Every write that belongs together happens in one
transaction, and SQLite's write lock (BEGIN IMMEDIATE) makes claims atomic across all the
processes that share the file, which is what lets several gunicorn workers run side by side.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

from bridge import decide
from bridge.audit import COLUMNS, DECISION, OUTCOME, AuditQuery, AuditRecord, Delivery
from bridge.client import CallResult
from bridge.decide import Decision, Key
from bridge.errors import BridgeError

# Operation states. QUEUED and SENDING are open; the others are final.
QUEUED = "queued"
SENDING = "sending"


class StoreError(BridgeError):
    """The state store cannot be read or written."""

    status = 503


@dataclass(frozen=True)
class Recorded:
    """A decision as it was committed; EXECUTE decisions carry the id of their operation."""

    decision: Decision
    operation_id: int | None = None


@dataclass(frozen=True)
class Operation:
    id: int
    device: str
    operation: str
    rule: str
    state: str
    created: float


class Store(Protocol):
    """What the bridge needs from a state backend (SQLite now, PostgreSQL for replicas later)."""

    def ping(self) -> None: ...
    def active_cooldowns(self, now: float) -> dict[Key, float]: ...
    def record(
        self, delivery: Delivery, decisions: Sequence[Decision], now: float
    ) -> list[Recorded]: ...
    def start(self, operation_id: int, now: float) -> Operation | None: ...
    def finish(self, operation_id: int, result: CallResult, now: float) -> None: ...
    def audit(self, query: AuditQuery) -> list[AuditRecord]: ...
    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS cooldowns (
    device TEXT NOT NULL,
    operation TEXT NOT NULL,
    until REAL NOT NULL,
    rule TEXT NOT NULL,
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
    alert_status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS operations_open ON operations (state)
    WHERE state IN ('queued', 'sending');
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
    operation_id INTEGER
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
CREATE INDEX IF NOT EXISTS audit_device ON audit (device, id);
"""

_AUDIT_INSERT = (
    f"INSERT INTO audit ({', '.join(COLUMNS[1:])}) VALUES ({', '.join('?' * (len(COLUMNS) - 1))})"
)


class SqliteStore:
    """The embedded store: one SQLite file in WAL mode, one connection per thread."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
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
            if not self._ready:
                with _transaction(conn):
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                self._ready = True
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.path}: {exc}") from exc
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            with _transaction(conn):
                yield conn
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.path}: {exc}") from exc

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        try:
            return self._connect().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.path}: {exc}") from exc

    def close(self) -> None:
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

    def record(
        self, delivery: Delivery, decisions: Sequence[Decision], now: float
    ) -> list[Recorded]:
        """Commit decisions: claim cooldowns, queue operations and audit, all or nothing.

        The decisions were made on a snapshot. Another worker may have claimed the same
        (device, operation) since; the claim here is the arbiter, and a lost claim turns the
        decision into COOLDOWN before it is audited.
        """
        recorded: list[Recorded] = []
        with self._write() as conn:
            for d in decisions:
                op_id = None
                if d.verdict == decide.EXECUTE:
                    assert d.rule is not None and d.until is not None
                    won = conn.execute(
                        "INSERT INTO cooldowns (device, operation, until, rule) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (device, operation) DO UPDATE"
                        " SET until = excluded.until, rule = excluded.rule"
                        " WHERE cooldowns.until <= ?",
                        (d.device, d.operation, d.until, d.rule.name, now),
                    ).rowcount
                    if won:
                        op_id = self._queue(conn, delivery, d, now)
                    else:
                        (until,) = conn.execute(
                            "SELECT until FROM cooldowns WHERE device = ? AND operation = ?",
                            d.key,
                        ).fetchone()
                        d = replace(
                            d, verdict=decide.COOLDOWN, reason="in cooldown (claimed concurrently)",
                            until=until,
                        )
                conn.execute(_AUDIT_INSERT, _decision_row(now, delivery, d, op_id))
                recorded.append(Recorded(d, op_id))
        return recorded

    def _queue(self, conn: sqlite3.Connection, delivery: Delivery, d: Decision, now: float) -> int:
        assert d.rule is not None
        cur = conn.execute(
            "INSERT INTO operations (device, operation, rule, state, created, updated,"
            " request_id, source, receiver, group_key, fingerprint, alertname, alert_status)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                d.device, d.operation, d.rule.name, QUEUED, now, now, delivery.request_id,
                delivery.source, delivery.receiver, delivery.group_key, d.alert.fingerprint,
                d.alert.alertname, d.alert.status,
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def start(self, operation_id: int, now: float) -> Operation | None:
        """Move a queued operation to SENDING; None if it is not queued (someone else has it)."""
        with self._write() as conn:
            row = conn.execute(
                "UPDATE operations SET state = ?, updated = ? WHERE id = ? AND state = ?"
                " RETURNING id, device, operation, rule, state, created",
                (SENDING, now, operation_id, QUEUED),
            ).fetchone()
        return Operation(*row) if row else None

    def finish(self, operation_id: int, result: CallResult, now: float) -> None:
        """Record the final outcome of an operation that was SENDING, with its audit record."""
        with self._write() as conn:
            row = conn.execute(
                "UPDATE operations SET state = ?, updated = ? WHERE id = ? AND state = ?"
                " RETURNING request_id, source, receiver, group_key, fingerprint, alertname,"
                " alert_status, rule, device, operation",
                (result.outcome, now, operation_id, SENDING),
            ).fetchone()
            if row is None:
                raise StoreError(f"operation {operation_id} is not being sent")
            reason = "API call" if result.outcome == "succeeded" else result.kind
            conn.execute(
                _AUDIT_INSERT,
                (now, OUTCOME, *row, result.outcome, reason, result.status_code,
                 result.execution_id, result.error, operation_id),
            )

    def audit(self, query: AuditQuery) -> list[AuditRecord]:
        where: list[str] = ["id > ?"]
        params: list[object] = [query.after_id]
        for column in ("device", "rule", "outcome"):
            value = getattr(query, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.since is not None:
            where.append("ts >= ?")
            params.append(query.since)
        sql = f"SELECT {', '.join(COLUMNS)} FROM audit WHERE {' AND '.join(where)}"
        if query.limit is None:
            rows = self._read(sql + " ORDER BY id", params)
        else:
            rows = self._read(sql + " ORDER BY id DESC LIMIT ?", [*params, query.limit])[::-1]
        return [AuditRecord(*row) for row in rows]


def _decision_row(now: float, delivery: Delivery, d: Decision, op_id: int | None) -> tuple:
    return (
        now, DECISION, delivery.request_id, delivery.source, delivery.receiver,
        delivery.group_key, d.alert.fingerprint, d.alert.alertname, d.alert.status,
        d.rule.name if d.rule else "", d.device, d.operation, d.verdict, d.reason,
        None, None, "", op_id,
    )


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
