"""The embedded engine: one SQLite file in WAL mode, one connection per thread.

Every write transaction takes SQLite's write lock up front (BEGIN IMMEDIATE), which makes
claims atomic across all the processes that share the file: that is what lets several
gunicorn workers run side by side. Writers queue for that lock in the kernel (_FileTurn).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bridge.store.base import Lock, SqlStore, StoreError, Tx
from bridge.store.schema import LATEST, refuse_newer, upgrade
from bridge.vocab import Flag

log = logging.getLogger(__name__)

def _null(value: None) -> None:
    return value


# sqlite3 binds None as NULL only after looking for an adapter for it and failing (two
# attribute lookups that raise and are caught, some 3,000 instructions); a storm's audit
# records bind 2,500 NULLs. With one registered, the look finds it: None still binds as NULL.
# Process-wide, as sqlite3's adapters are.
sqlite3.register_adapter(type(None), _null)

#: The write-ahead log is copied into the database once it holds this much, and its file is
#: cut back to this size after. SQLite's default (4 MB, never cut back) can fill a small
#: volume with log alone, and then the checkpoint that would empty it has no room to run.
WAL_LIMIT = 1024 * 1024
#: How often each process looks whether another one gave its senders work (an operator's
#: approve or resume from the command line, another worker's call ending). A look is one
#: PRAGMA on a connection of its own, so an idle bridge pays next to nothing for it.
WATCH_INTERVAL = 0.25


class SqliteTx(Tx):
    def notify_queue(self) -> None:
        # SQLite has no NOTIFY: the other processes' watchers (SqliteStore.listen) see this
        # count change when the transaction commits, and only then.
        self.execute("INSERT INTO meta (key, value) VALUES (?, 1)"
                     " ON CONFLICT (key) DO UPDATE SET value = meta.value + 1",
                     (Flag.QUEUE_SIGNAL,))

    def json_text(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}')"

    def contains(self, column: str) -> str:
        return f"instr(lower({column}), lower(?)) > 0"

    def audit_written(self) -> int:
        # AUTOINCREMENT remembers the highest id ever inserted, explicit ids included.
        return int(self.value(
            "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'audit'"))

    def after_import(self, audit_written: int) -> None:
        # Operations' INTEGER PRIMARY KEY goes on from the highest id by itself; AUTOINCREMENT
        # took the inserted audit ids into sqlite_sequence, but not ids pruned at the source.
        if audit_written > self.audit_written():
            self.execute("DELETE FROM sqlite_sequence WHERE name = 'audit'")
            self.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('audit', ?)",
                         (audit_written,))

    def schema_version(self) -> int:
        return int(self.value("PRAGMA user_version"))

    def set_schema_version(self, version: int) -> None:
        self.execute(f"PRAGMA user_version = {int(version)}")


class SqliteStore(SqlStore):
    """The embedded store: one SQLite file in WAL mode, one connection per thread."""

    engine = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        self.where = self.path
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._turn_lock = threading.Lock()
        self._file_turn: _FileTurn | None = None  # opened on first write, after fork
        self._connections: list[sqlite3.Connection] = []
        self._ready = False
        self._watcher: _Watcher | None = None

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
            _wal_mode(conn, self._timeout)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            (page_size,) = conn.execute("PRAGMA page_size").fetchone()
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_LIMIT // page_size}")
            if not self._ready:
                self._upgrade(conn)
                self._ready = True
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Bring the file's schema to this bridge's version (schema.py), or refuse a newer one.

        The version is read again under the write lock: of several processes opening an old
        file at once, one upgrades it and the others find it done."""
        found = SqliteTx(conn).schema_version()
        refuse_newer(found, self.where)
        if found == LATEST:
            return
        with _transaction(conn):
            upgrade(SqliteTx(conn), "sqlite", self.where)

    @contextmanager
    def _write(self, wait: float | None = None, lock: Lock = Lock.CHAIN, *,
               deadline: float | None = None) -> Iterator[Tx]:
        """One write transaction (see _writer). SQLite has one writer at a time: every `lock`
        is the same lock."""
        with self._writer(wait, deadline) as conn, _transaction(conn):
            yield SqliteTx(conn)

    @contextmanager
    def _reading(self, snapshot: bool = False) -> Iterator[Tx]:
        conn = self._connect()
        try:
            if not snapshot:
                yield SqliteTx(conn)
                return
            conn.execute("BEGIN")  # deferred: a read transaction, one consistent snapshot
            try:
                yield SqliteTx(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    @contextmanager
    def _writer(self, wait: float | None = None,
                deadline: float | None = None) -> Iterator[sqlite3.Connection]:
        """This thread's connection in its turn to write. Given up (StoreError, 503) unless
        the turn comes within `wait` (the timeout), or by `deadline`, counting every wait: for
        this process's turn, the other processes', and SQLite's write lock (held by anyone
        else: a backup, an operator's sqlite3)."""
        wait = self._timeout if wait is None else wait
        conn = self._connect()
        deadline = time.monotonic() + wait if deadline is None else deadline
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

    def listen(self, wake: Callable[[], None]) -> None:
        with self._lock:
            if self._watcher is None:
                self._watcher = _Watcher(self.path, wake)

    def unlisten(self) -> None:
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()

    def close(self) -> None:
        self.unlisten()
        if self._file_turn is not None:
            self._file_turn.close()
        self._file_turn = None
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database and cut its file to nothing, giving
        back its space. False when a reader kept part of it (the next one will do)."""
        with self._writer() as conn:
            (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy


class _Watcher:
    """A thread with a connection of its own that wakes the senders when another connection
    (any process's, this one's other threads' too) committed a change to Flag.QUEUE_SIGNAL.

    PRAGMA data_version tells, without reading a table, whether anyone committed at all
    since the last look; only then is the signal read."""

    def __init__(self, path: str, wake: Callable[[], None]) -> None:
        self._path = path
        self._wake = wake
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        version = signal = None
        failing = False
        while not self._stopping.wait(WATCH_INTERVAL):
            try:
                if conn is None:
                    conn = sqlite3.connect(self._path, timeout=1.0, isolation_level=None,
                                           check_same_thread=False)
                now = conn.execute("PRAGMA data_version").fetchone()[0]
                if now == version:
                    continue
                version = now
                row = conn.execute("SELECT value FROM meta WHERE key = ?",
                                   (Flag.QUEUE_SIGNAL,)).fetchone()
                if row != signal:
                    signal = row
                    self._wake()
                failing = False
            except sqlite3.Error as exc:
                if not failing:  # once per outage, not ten times a second
                    log.warning("state store %s: cannot watch for queued work (%s); senders "
                                "poll meanwhile", self._path, exc)
                failing = True
                if conn is not None:
                    conn.close()
                conn, version = None, None
        if conn is not None:
            conn.close()


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


def _wal_mode(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the file in WAL mode (it stays so; later connections find it done).

    Unlike other statements, this one can answer "database is locked" at once, without
    SQLite's busy handler, while another connection sets the mode or recovers the log: when
    several processes or threads open a new state file together. It is tried again until the
    timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)  # a back-off: nothing to wait on but the other connection's lock
        delay = min(delay * 2, 0.05)


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
