"""The engine for several replicas: PostgreSQL, through psycopg 3 and a small connection pool.

The logic is base.py's, unchanged; what differs here is who may write at once. SQLite has
one writer at a time. PostgreSQL lets writers run together, so the few things that must not
interleave say so (base.Lock), with transaction-level advisory locks:

- Lock.CHAIN: deciding (budgets and the storm breaker are counts over the whole state) and
  every audit append (one hash chain for every replica) take their turns;
- Lock.CLAIM: claims take theirs, apart from CHAIN, so a sender never waits for a webhook's
  decision: the concurrency limit, the rate-limit slot and one operation per device hold
  because no two claims count at once, and the claim's SELECT skips a row another
  transaction holds (FOR UPDATE SKIP LOCKED) instead of waiting for it.

Each process makes its own pool on first use (a pool made before gunicorn forks would be
shared by every worker's sockets), of at most POOL_SIZE connections, and, when it sends,
one more outside the pool that LISTENs: a transaction that queues work NOTIFYs (delivered
at its commit), so an idle sender of any replica looks at once instead of at its next poll.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from bridge.audit import GENESIS
from bridge.store.base import Lock, SqlStore, StoreError, Tx
from bridge.store.schema import upgrade

log = logging.getLogger(__name__)

#: Connections one process holds at most in its pool (a sending process has one more, the
#: listener). A worker's store users are its 4 request threads, its senders
#: (BRIDGE_CONCURRENCY, 4 by default) and housekeeping, each for one short transaction at a
#: time (never across a device API call); one waiting for a connection waits within
#: BRIDGE_STATE_TIMEOUT.
POOL_SIZE = 8
#: The advisory locks' first key: this bridge's namespace ("albr"); the second is the lock.
_NAMESPACE = 0x616C6272
_LOCK_KEYS = {Lock.CHAIN: 1, Lock.CLAIM: 2}
_MIGRATION_KEY = 3
#: Server error classes that say the connection is gone or the server is going away.
_CONNECTION_LOST = ("08", "57P")
#: The channel a commit that queued work notifies (Tx.notify_queue).
CHANNEL = "alert_bridge_queue"
#: The listener's longest wait between two attempts to connect again.
LISTEN_RETRY_CAP = 5.0

SCHEMES = ("postgresql://", "postgres://")


def is_url(location: str) -> bool:
    return location.startswith(SCHEMES)


@lru_cache(maxsize=512)
def _translate(sql: str) -> str:
    # The statements in base.py hold no literal `?` or `%`, but a `%` is escaped all the same.
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresTx(Tx):
    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"

    def translate(self, sql: str) -> str:
        return _translate(sql)

    def json_text(self, column: str, key: str) -> str:
        return f"({column} ->> '{key}')"

    def stream(self, sql: str, params: Any = ()) -> Generator[dict[str, Any], None, None]:
        # A server-side cursor: the rows come in batches, not all at once.
        with self.conn.cursor(name="bridge_stream") as cursor:
            cursor.execute(_translate(sql), tuple(params))
            names = [d.name for d in cursor.description]
            for values in cursor:
                yield dict(zip(names, values, strict=True))

    def notify_queue(self) -> None:
        # Several in one transaction are delivered as one.
        self.execute(f"NOTIFY {CHANNEL}")

    def contains(self, column: str) -> str:
        return f"strpos(lower({column}), lower(?)) > 0"

    def audit_written(self) -> int:
        return int(self.value("SELECT id FROM audit_written"))

    def chain_head(self) -> tuple[int, str, int]:
        # One round trip, not two: it is read inside the decision lock.
        row = self.row("SELECT a.id, a.hash, w.id AS written FROM audit_written w LEFT JOIN"
                       " (SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1) a ON true")
        assert row is not None  # audit_written holds one row from the start
        if row["id"] is None:
            return 0, GENESIS, int(row["written"])
        return int(row["id"]), row["hash"], int(row["written"])

    def note_audit_written(self, last_id: int) -> None:
        self.execute("UPDATE audit_written SET id = ? WHERE id < ?", (last_id, last_id))

    def after_import(self, audit_written: int) -> None:
        # The identity goes on from the ids that came in (strict setval: no rows, no change).
        self.execute("SELECT setval(pg_get_serial_sequence('operations', 'id'),"
                     " (SELECT max(id) FROM operations))")
        top = self.value("SELECT coalesce(max(id), 0) FROM audit")
        self.note_audit_written(max(audit_written, int(top)))

    def schema_version(self) -> int:
        if self.value("SELECT to_regclass('schema_migrations')") is None:
            return 0
        return int(self.value("SELECT coalesce(max(version), 0) FROM schema_migrations"))

    def set_schema_version(self, version: int) -> None:
        self.execute("INSERT INTO schema_migrations (version, applied_at)"
                     " VALUES (?, extract(epoch FROM now()))", (version,))


class PostgresStore(SqlStore):
    """The state in a PostgreSQL database, shared by every replica that names it."""

    engine = "postgresql"

    def __init__(self, url: str, *, timeout: float = 30.0,
                 password_file: str | None = None) -> None:
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(url)
        except Exception:  # psycopg.ProgrammingError, whose message may quote the password
            raise StoreError("BRIDGE_STATE is not a valid PostgreSQL URL (expected"
                             " postgresql://USER@HOST:PORT/DBNAME)") from None
        self._url = url
        self._secrets: list[str] = [str(params["password"])] if params.get("password") else []
        self.where = _shown(params)
        self._timeout = timeout
        self._password_file = password_file
        self._lock = threading.Lock()
        self._pool: Any = None
        self._pid = 0
        self._upgrade_lock = threading.Lock()
        self._ready = False
        self._listener: _Listener | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"

    # -- connections -----------------------------------------------------------------------

    def _connections(self) -> Any:
        """This process's pool, made on first use in it (so after gunicorn forks)."""
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = self._new_pool()
                self._pid = os.getpid()
            return self._pool

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            # Transactions are begun and ended here, as with SQLite.
            "autocommit": True,
            "connect_timeout": max(2, round(min(self._timeout, 10.0))),
            "application_name": "alert-bridge",
        }
        if self._password_file:
            kwargs["password"] = self._read_password(self._password_file)
        return kwargs

    def _new_pool(self) -> Any:
        from psycopg_pool import ConnectionPool

        kwargs = self._connect_kwargs()
        pool = ConnectionPool(self._url, kwargs=kwargs, min_size=1, max_size=POOL_SIZE,
                              open=False, timeout=self._timeout, name="alert-bridge-state")
        pool.open(wait=False)
        return pool

    def _read_password(self, path: str) -> str:
        try:
            with open(path, encoding="utf-8") as f:
                password = f.read().strip()
        except OSError as exc:
            raise StoreError(f"BRIDGE_STATE_PASSWORD_FILE {path}: {exc.strerror}") from None
        self._secrets.append(password)
        return password

    @contextmanager
    def _transaction(self, begin: str, wait: float, lock: Lock, *,
                     deadline: float | None = None, setup: bool = False
                     ) -> Iterator[PostgresTx]:
        """A transaction on a pooled connection, committed when the block ends.

        A connection found dead at BEGIN (the server restarted since it was pooled) is
        dropped and the transaction begun once more on a fresh one; one cut later fails
        the transaction (StoreError), which the server rolls back: nothing half-written.
        """
        import psycopg

        deadline = time.monotonic() + wait if deadline is None else deadline
        if not (self._ready or setup):
            self._upgrade(deadline, wait)
        pool, conn = self._begin(begin, deadline, wait, lock)
        try:
            yield PostgresTx(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            if not conn.closed:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    pass  # the connection is broken: the pool drops it
            if isinstance(exc, psycopg.Error):
                raise self._failed(exc, wait) from exc
            raise
        finally:
            pool.putconn(conn)

    def _begin(self, begin: str, deadline: float, wait: float, lock: Lock) -> tuple[Any, Any]:
        """A pooled connection inside a new transaction, holding `lock`: (pool, connection)."""
        import psycopg

        pool = self._connections()
        for attempt in (1, 2):
            try:
                conn = pool.getconn(timeout=max(0.01, deadline - time.monotonic()))
            except psycopg.Error as exc:
                raise self._failed(exc, wait) from exc
            # Every wait for a lock (advisory or a row's) ends by the deadline. One round trip
            # for all three statements (the simple query protocol takes several at once; the
            # numbers are ours, not input), which every transaction pays before its work.
            statements = [begin, "SET LOCAL lock_timeout = "
                          f"{max(1, int((deadline - time.monotonic()) * 1000))}"]
            if lock in _LOCK_KEYS:
                statements.append(f"SELECT pg_advisory_xact_lock({_NAMESPACE:d}, "
                                  f"{_LOCK_KEYS[lock]:d})")
            try:
                conn.execute("; ".join(statements))
                return pool, conn
            except psycopg.Error as exc:
                lost = conn.closed or conn.broken or _lost(exc)
                if not conn.closed:
                    try:
                        conn.execute("ROLLBACK")
                    except psycopg.Error:
                        pass
                pool.putconn(conn)
                if attempt == 1 and lost:
                    pool.check()  # the others pooled with it are likely gone too
                    continue
                raise self._failed(exc, wait) from exc
        raise AssertionError("unreachable")

    def _upgrade(self, deadline: float, wait: float) -> None:
        """Create or upgrade the schema, once per store, under an advisory lock: of several
        replicas starting at once, one upgrades and the others then find it done."""
        with self._upgrade_lock:
            if self._ready:
                return
            with self._transaction("BEGIN", wait, Lock.NONE, deadline=deadline,
                                   setup=True) as tx:
                tx.execute("SELECT pg_advisory_xact_lock(?, ?)", (_NAMESPACE, _MIGRATION_KEY))
                upgrade(tx, "postgres", self.where)
            self._ready = True

    def _failed(self, exc: Exception, wait: float) -> StoreError:
        setting = " (BRIDGE_STATE_TIMEOUT)" if wait == self._timeout else ""
        if getattr(exc, "sqlstate", None) == "55P03":  # lock_not_available: lock_timeout
            return StoreError(f"state store {self.where}: locked by another writer for more"
                              f" than {wait:g}s{setting}")
        if type(exc).__name__ == "PoolTimeout":
            # The pool logs why it could not connect (psycopg.pool), each time it tries.
            return StoreError(f"state store {self.where}: no connection within {wait:g}s"
                              f"{setting}: the database is unreachable, or all {POOL_SIZE}"
                              " connections of this process are busy")
        return StoreError(f"state store {self.where}: {_scrub(exc, *self._secrets)}")

    @contextmanager
    def _write(self, wait: float | None = None, lock: Lock = Lock.CHAIN, *,
               deadline: float | None = None) -> Iterator[Tx]:
        with self._transaction("BEGIN", self._timeout if wait is None else wait, lock,
                               deadline=deadline) as tx:
            yield tx

    @contextmanager
    def _reading(self, snapshot: bool = False) -> Iterator[Tx]:
        begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if snapshot else \
            "BEGIN READ ONLY"
        with self._transaction(begin, self._timeout, Lock.NONE) as tx:
            yield tx

    def listen(self, wake: Callable[[], None]) -> None:
        import psycopg

        def connect() -> Any:
            # Keepalives: a connection the network dropped silently is found dead, not
            # waited on forever.
            return psycopg.connect(self._url, keepalives=1, keepalives_idle=10,
                                   keepalives_interval=5, keepalives_count=3,
                                   **self._connect_kwargs())

        with self._lock:
            if self._listener is None:
                self._listener = _Listener(connect, wake, self.where, self._secrets)
                self._listener.start()

    def unlisten(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()

    def close(self) -> None:
        self.unlisten()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()


class _Listener:
    """One connection, outside the pool, that LISTENs on CHANNEL and wakes the senders at
    each notification. Cut, it connects again by itself (backing off up to
    LISTEN_RETRY_CAP) and wakes them once more: a notification missed meanwhile costs at
    most one poll, as the senders poll anyway."""

    def __init__(self, connect: Callable[[], Any], wake: Callable[[], None], where: str,
                 secrets: list[str]) -> None:
        self._connect = connect
        self._wake = wake
        self._where = where
        self._secrets = secrets
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        import psycopg

        retry = 0.1
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if retry > 0.1:
                        log.info("state store %s: listening for queued work again", self._where)
                    retry = 0.1
                    self._wake()  # what was queued while not listening
                    while not self._stopping.is_set():
                        # Wait on the socket ourselves: psycopg's notifies() wakes every
                        # 0.1 s while it waits, a cost an idle bridge need not pay. The
                        # timeout only lets stop() be seen; a socket readable for a dropped
                        # connection makes notifies() raise, and the loop connects again.
                        if select.select([conn.fileno()], [], [], 1.0)[0] and \
                                list(conn.notifies(timeout=0)):
                            self._wake()
            except psycopg.Error as exc:
                if retry == 0.1:
                    log.warning("state store %s: not listening for queued work (%s); senders"
                                " poll meanwhile", self._where, _scrub(exc, *self._secrets))
                self._stopping.wait(retry)
                retry = min(LISTEN_RETRY_CAP, retry * 2)


def _lost(exc: Exception) -> bool:
    return (getattr(exc, "sqlstate", None) or "").startswith(_CONNECTION_LOST)


def _shown(params: dict[str, Any]) -> str:
    """The database as messages name it: never its password."""
    host = params.get("host") or "localhost"
    port = f":{params['port']}" if params.get("port") else ""
    user = f"{params['user']}@" if params.get("user") else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname', '')}"


def _scrub(exc: Exception, *secrets: str | None) -> str:
    """The first line of an error, with any secret it quotes blanked out."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
