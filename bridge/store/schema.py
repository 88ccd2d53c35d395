"""The store's schema and its versions: numbered migrations, applied in order, never undone.

The state records the version it was last brought to (SQLite: PRAGMA user_version), so
opening a state upgrades it by the steps it lacks, inside one transaction that keeps every
other process out; a state written by a newer bridge is refused rather than misread.

A new version is one more Migration at the end of MIGRATIONS, with the steps each engine
takes to reach it. Its steps must not rely on columns a later step adds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bridge.audit import CONTENT, GENESIS, chain_hash
from bridge.store.base import StoreError, Tx

Step = Callable[[Tx], None]


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    sqlite: tuple[Step, ...]


def _run(script: str) -> Step:
    """A step that runs every statement of `script` (`;`-separated, no `;` inside one)."""
    def step(tx: Tx) -> None:
        for statement in script.split(";"):
            if statement.strip():
                tx.execute(statement)
    return step


SQLITE_TABLES = """
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
CREATE INDEX IF NOT EXISTS audit_device ON audit (device, id)
"""

#: Columns added to state files before they had a version: (table, column, declaration).
_UNVERSIONED_COLUMNS = (
    ("audit", "rules_version", "TEXT NOT NULL DEFAULT ''"),
    ("operations", "rules_version", "TEXT NOT NULL DEFAULT ''"),
    ("cooldowns", "operation_id", "INTEGER"),
)


def _sqlite_columns(tx: Tx, table: str) -> set[str]:
    return {row["name"] for row in tx.rows(f"PRAGMA table_info({table})")}


def _add_unversioned_columns(tx: Tx) -> None:
    """A state file from before versions may lack columns added since: added, empty for
    old rows. (The one place columns are probed: such a file says nothing of its shape.)"""
    for table, column, declaration in _UNVERSIONED_COLUMNS:
        if column not in _sqlite_columns(tx, table):
            tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _chain_unchained_audit(tx: Tx) -> None:
    """Give an audit table from before the hash chain its two columns, and chain its records.

    The chain then vouches for those records as they were at the upgrade, not before.
    """
    if "hash" in _sqlite_columns(tx, "audit"):
        return
    tx.execute("ALTER TABLE audit ADD COLUMN prev_hash TEXT NOT NULL DEFAULT ''")
    tx.execute("ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT ''")
    after, prev_hash = 0, GENESIS
    columns = ", ".join(("id", *CONTENT))
    while True:
        batch = tx.rows(f"SELECT {columns} FROM audit WHERE id > ? ORDER BY id LIMIT 1000",
                        (after,))
        if not batch:
            return
        for row in batch:
            digest = chain_hash({**row, "prev_hash": prev_hash})
            tx.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?",
                       (prev_hash, digest, row["id"]))
            prev_hash = digest
        after = batch[-1]["id"]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "the tables; a state file from before versions gets the columns it lacks, and an"
           " audit from before the hash chain is chained",
        sqlite=(_run(SQLITE_TABLES), _add_unversioned_columns, _chain_unchained_audit),
    ),
)
#: The version this bridge writes, and the newest it can read.
LATEST = MIGRATIONS[-1].version


def refuse_newer(found: int, where: str) -> None:
    """A state written by a newer bridge may mean what this one cannot know: not read."""
    if found > LATEST:
        raise StoreError(
            f"state store {where}: its schema is version {found}, newer than this bridge knows"
            f" (up to version {LATEST}): run the bridge version that wrote it, or a newer one")


def upgrade(tx: Tx, engine: str, where: str) -> None:
    """Bring the schema to LATEST, inside the caller's transaction (which keeps every other
    process out, so the version read here is the one the steps start from)."""
    found = tx.schema_version()
    refuse_newer(found, where)
    for migration in MIGRATIONS:
        if migration.version > found:
            for step in getattr(migration, engine):
                step(tx)
            tx.set_schema_version(migration.version)
