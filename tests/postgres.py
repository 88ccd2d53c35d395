"""A real PostgreSQL for the tests: a fresh database per test session on the local server
(127.0.0.1:5432, user postgres), dropped after. Skipped where there is none, unless
BRIDGE_TEST_REQUIRE_SERVICES=1 (then missing it fails)."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.helpers import need

#: Where the test databases are made: BRIDGE_TEST_POSTGRES, else the local server's `test`.
ADMIN_URL = os.environ.get("BRIDGE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
#: Every table the store keeps state in, emptied between tests.
TABLES = ("cooldowns", "operations", "meta", "audit", "replicas", "verifications",
          "resolutions", "notices")


@contextmanager
def connection(url: str = ADMIN_URL) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        yield conn


def reachable() -> str | None:
    """Why the server cannot be used, or None when it can."""
    import psycopg

    try:
        with connection() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL is not reachable at {ADMIN_URL}: {str(exc).strip().splitlines()[0]}"
    return None


def url_of(database: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + database


@contextmanager
def fresh_database() -> Iterator[str]:
    """A database of its own, with the store's schema: its URL. Dropped afterwards."""
    problem = reachable()
    need(problem is None, problem or "")
    name = f"bridge_test_{os.getpid()}_{secrets.token_hex(4)}"
    with connection() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        from bridge.store import open_store

        store = open_store(url_of(name))
        store.ping()  # creates the schema
        store.close()
        yield url_of(name)
    finally:
        with connection() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def empty(url: str) -> None:
    """Back to a state no bridge has written to (the schema stays)."""
    with connection(url) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
        conn.execute("UPDATE audit_written SET id = 0")


def cut_connections(url: str) -> int:
    """End every other session on the database, as a server restart or a failover would:
    how many there were."""
    with connection(url) as conn:
        return len(conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall())


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of the database, that the test can cut (every
    connection through it closed, new ones closed as soon as accepted: the database is
    unreachable) and restore, as a network partition or a failover would."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._cut = False
        threading.Thread(target=self._accept, name="pg-proxy", daemon=True).start()

    def url(self, url: str) -> str:
        """`url` (to the target) through the proxy."""
        return url.replace(f"{self.target[0]}:{self.target[1]}/", f"127.0.0.1:{self.port}/")

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for sock in self._open:
                _close(sock)
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._cut:
                    _close(client)
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=3)
                except OSError:
                    _close(client)
                    continue
                upstream.settimeout(None)
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    _close(src)
    _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
