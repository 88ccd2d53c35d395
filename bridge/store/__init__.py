"""State that outlives a request: cooldown claims, the operations queue and the audit log.

`base` holds the logic, written once; `sqlite` is the engine; `schema` its versioned
migrations. Every write that belongs together happens in one transaction.
"""

from __future__ import annotations

from bridge.store.base import (
    PROBE_WAIT,
    Claim,
    Cooldown,
    Operation,
    Recorded,
    Store,
    StoreError,
)
from bridge.store.schema import LATEST as SCHEMA_VERSION
from bridge.store.sqlite import WAL_LIMIT, SqliteStore
from bridge.vocab import Flag

# The meta flags under their old names, for the modules that import them from here.
PAUSED = Flag.PAUSED
BREAKER_OPEN = Flag.BREAKER_OPEN
RELOAD_OK = Flag.RELOAD_OK
RELOAD_FAILED = Flag.RELOAD_FAILED

__all__ = [
    "BREAKER_OPEN", "PAUSED", "PROBE_WAIT", "RELOAD_FAILED", "RELOAD_OK", "SCHEMA_VERSION",
    "WAL_LIMIT", "Claim", "Cooldown", "Operation", "Recorded", "SqliteStore", "Store",
    "StoreError",
]
