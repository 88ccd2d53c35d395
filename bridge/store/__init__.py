"""State that outlives a request: cooldown claims, the operations queue and the audit log.

`base` holds the logic, written once in SQL both engines run; `sqlite` (one server, the
default) and `postgres` (several replicas) are the engines; `schema` holds the versioned
migrations. Every write that belongs together happens in one transaction.
"""

from __future__ import annotations

from bridge.store.base import (
    HEARTBEAT,
    PROBE_WAIT,
    REPLICA_GONE,
    WEEK,
    AskingAlert,
    Claim,
    Cooldown,
    DeviceSeen,
    Operation,
    Recorded,
    Store,
    StoreError,
)
from bridge.store.postgres import POOL_SIZE, PostgresStore, is_url
from bridge.store.schema import LATEST as SCHEMA_VERSION
from bridge.store.sqlite import WAL_LIMIT, SqliteStore


def open_store(location: str, *, timeout: float = 30.0,
               password_file: str | None = None) -> Store:
    """The store at `location`: a PostgreSQL database for a postgresql:// or postgres:// URL,
    else a SQLite file. `timeout` bounds every write's wait; `password_file` (PostgreSQL)
    holds the password, when neither the URL nor libpq's PGPASSWORD or ~/.pgpass does."""
    if is_url(location):
        return PostgresStore(location, timeout=timeout, password_file=password_file)
    return SqliteStore(location, timeout=timeout)


__all__ = [
    "HEARTBEAT", "POOL_SIZE", "PROBE_WAIT", "REPLICA_GONE", "SCHEMA_VERSION", "WAL_LIMIT", "WEEK",
    "AskingAlert", "Claim", "Cooldown", "DeviceSeen", "Operation", "PostgresStore", "Recorded",
    "SqliteStore", "Store", "StoreError", "is_url", "open_store",
]
