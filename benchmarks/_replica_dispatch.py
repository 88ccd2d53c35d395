"""Section 6c: dispatch throughput across replicas against the 0.1 s fake at concurrency 8
(issue 12: at least 80% of the ideal, as for one server in section 1b).

The concurrency limit is global: 8 calls in flight across all replicas together, which the
claim enforces in the shared state. Each replica runs 8 senders per worker, as one server
does, so most are idle at any moment and any may take the next operation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from _gen import alertmanager_payload
from _load import run_load
from _procs import Server, start_bridge, wait_until
from _replicas import WEBHOOK, fresh_database
from _report import Report, Target, table

CONCURRENCY = 8
DELAY = 0.1
PER_WEBHOOK = 10


def _outcome_times(state: str, tag: str) -> list[float]:
    like = f"{tag}-%"
    if state.startswith("postgresql://"):
        with psycopg.connect(state) as conn:
            rows = conn.execute("SELECT ts FROM audit WHERE event = 'outcome' AND device LIKE %s"
                                " ORDER BY ts", (like,)).fetchall()
    else:
        import sqlite3

        with sqlite3.connect(state) as conn:
            rows = conn.execute("SELECT ts FROM audit WHERE event = 'outcome' AND device LIKE ?"
                                " ORDER BY ts", (like,)).fetchall()
    return [float(ts) for (ts,) in rows]


def queue(servers: list[Server], tag: str, ops: int) -> int:
    """Queue `ops` operations on distinct devices through every replica at once: how many."""
    webhooks = ops // PER_WEBHOOK // len(servers)

    def send(n: int, server: Server) -> None:
        result = run_load(server.url + WEBHOOK, lambda i: alertmanager_payload([
            {"alertname": "BenchDeviceDown", "severity": "critical",
             "device": f"{tag}-{n}-{i}-{k}"} for k in range(PER_WEBHOOK)]),
            clients=2, total=webhooks)
        if result.errors:
            raise RuntimeError(f"queueing failed: {result.errors[:3]}")

    threads = [threading.Thread(target=send, args=(n, s)) for n, s in enumerate(servers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return webhooks * PER_WEBHOOK * len(servers)


def ended(state: str, tag: str, expected: int) -> list[float]:
    """The outcome times of `expected` operations, once all have ended."""
    ends = wait_until(lambda: (t := _outcome_times(state, tag)) and len(t) >= expected and t,
                      max(60.0, 20 * expected * DELAY / CONCURRENCY), f"{expected} outcomes",
                      interval=0.2)
    assert isinstance(ends, list)
    return ends


def drain(servers: list[Server], state: str, tag: str, ops: int,
          control: Callable[[str, str, object], Any],
          arrived: Callable[[str], int]) -> float:
    """Operations ended per second, first to last outcome in the audit, for `ops` operations
    queued whole before the first call may end: the first CONCURRENCY calls are held at the
    fake's gate until every webhook is answered, so that queueing (which takes the decision
    lock the senders' records take too) does not overlap the drain."""
    # The fake takes the first behaviour that matches: the hold first, then every call slow.
    control("POST", "reset", None)
    control("POST", "behaviour", {"hold": True, "delay": DELAY, "times": CONCURRENCY})
    control("POST", "behaviour", {"delay": DELAY})
    expected = queue(servers, tag, ops)
    wait_until(lambda: arrived(tag) >= CONCURRENCY, 60, f"{CONCURRENCY} calls held")
    control("POST", "gate", None)
    ends = ended(state, tag, expected)
    return (len(ends) - 1) / (ends[-1] - ends[0])


def section_replica_dispatch(quick: bool, report: Report, wd: Path, rules: Path,
                             env: dict[str, str], calls: Callable[[], list[dict[str, Any]]],
                             control: Callable[[str, str, object], Any]) -> None:
    ops = 160 if quick else 480
    ideal = CONCURRENCY / DELAY
    env = {**env, "BRIDGE_CONCURRENCY": str(CONCURRENCY), "BRIDGE_RATE_LIMIT": "1000"}
    rows, measured = [], {}

    def arrived(tag: str) -> int:
        return sum(1 for c in calls() if c.get("device", "").startswith(f"{tag}-"))

    try:
        with fresh_database() as url:
            for k, (name, replicas) in enumerate((("SQLite, 1 server", 1),
                                                  ("PostgreSQL, 1 replica", 1),
                                                  ("PostgreSQL, 3 replicas", 3))):
                state = str(wd / "spread.db") if name.startswith("SQLite") else url
                servers = [start_bridge(wd, f"bridge-spread-{k}-{n}", rules, state, env)
                           for n in range(replicas)]
                try:
                    ended(state, f"warm{k}", queue(servers, f"warm{k}",
                                                   2 * PER_WEBHOOK * replicas))
                    started = time.monotonic()
                    measured[name] = drain(servers, state, f"spread{k}", ops, control, arrived)
                    took = time.monotonic() - started
                finally:
                    for server in servers:
                        server.stop()
                rows.append((name, ops, f"{took:.1f} s", f"{measured[name]:.1f}",
                             f"{measured[name] / ideal:.0%}"))
    finally:
        control("POST", "reset", None)
    report.add(
        "### 6c. Dispatch throughput across replicas\n\n"
        f"BRIDGE_CONCURRENCY={CONCURRENCY} (global: calls in flight across all replicas "
        f"together) and BRIDGE_RATE_LIMIT=1000, the fake answering each call after {DELAY:g} s; "
        f"{ops} operations on distinct devices queued through every replica at once by webhooks "
        f"of {PER_WEBHOOK} alerts while the first {CONCURRENCY} calls are held at the fake, "
        "then drained once every webhook is answered (queueing takes the decision lock that "
        "the senders' records take too: this measures the senders). Throughput = operations "
        "ended per second, first to last `outcome` record of the audit; ideal = "
        f"{CONCURRENCY} ÷ {DELAY:g} s = {ideal:.0f}/s.\n\n"
        + table(("state", "operations", "queued, held, drained in", "ended/s", "share of ideal"),
                rows)
    )
    value = measured["PostgreSQL, 3 replicas"] / ideal
    report.target(Target(
        "6c", f"dispatch across 3 replicas at {DELAY:g} s per call, concurrency {CONCURRENCY} "
              f"≥ 80% of ideal ({ideal:.0f}/s)",
        f"{measured['PostgreSQL, 3 replicas']:.1f} operations/s", value, value >= 0.8))
