"""A real PostgreSQL for the tests: a fresh database per test session on the local server
(127.0.0.1:5432, user postgres), dropped after. Skipped where there is none, unless
BRIDGE_TEST_REQUIRE_SERVICES=1 (then missing it fails)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.helpers import need

#: Where the test databases are made: BRIDGE_TEST_POSTGRES, else the local server's `test`.
ADMIN_URL = os.environ.get("BRIDGE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
#: Every table the store keeps state in, emptied between tests.
TABLES = ("cooldowns", "operations", "meta", "audit", "replicas")


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
