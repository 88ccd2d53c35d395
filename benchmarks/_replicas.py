"""Section 6: SQLite (one server) against PostgreSQL (one to three replicas): reaction time,
and webhooks per second.

Reaction time: from just before a webhook is sent to when the fake device API receives the
PUT it causes (the fake's own arrival time: both clocks are this machine's), one webhook at
a time to an idle bridge. Across replicas each webhook goes to the next replica in turn, and
any replica's sender may make the call: what LISTEN/NOTIFY is for.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from _gen import alertmanager_payload
from _load import LoadResult, percentile, run_load
from _procs import Server, start_bridge, wait_until
from _report import Report, Target, ms, table

#: The server the benchmark makes its database on (trust auth, as in the tests).
ADMIN_URL = os.environ.get("BRIDGE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
WEBHOOK = "/webhook/alertmanager"
TARGETS = {"sqlite": 0.050, "postgres": 0.100}
#: Issue 15's median for an idle bridge on SQLite (its p99 is TARGETS["sqlite"]).
SQLITE_MEDIAN = 0.025
#: Seconds between two webhooks: an idle bridge, past the default rate limit's spacing.
PACE = 0.2


@contextmanager
def fresh_database() -> Iterator[str]:
    """A database of the benchmark's own, dropped after: its URL."""
    import psycopg

    name = f"bridge_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def reactions(servers: list[Server], tag: str, samples: int,
              calls: Callable[[], list[dict[str, Any]]],
              path: str = WEBHOOK) -> tuple[list[float], list[float]]:
    """Seconds from each webhook sent to its answer, and to its PUT received; one webhook
    at a time, PACE apart, so that the rate limit's spacing (0.1 s by default) is not what
    is measured."""
    answered, took = [], []
    for i in range(samples):
        time.sleep(PACE)
        device = f"react-{tag}-{i}"
        body = alertmanager_payload([{"alertname": "BenchDeviceDown", "severity": "critical",
                                      "device": device}])
        sent = time.time()
        answer = requests.post(servers[i % len(servers)].url + path, data=body, timeout=30,
                               headers={"Content-Type": "application/json"})
        answer.raise_for_status()
        answered.append(time.time() - sent)
        call = wait_until(lambda d=device: next(
            (c for c in calls() if c.get("device") == d), None), 30, f"the call for {device}")
        took.append(call["time"] - sent)  # type: ignore[index]
    return answered, took


def throughput(servers: list[Server], tag: str, duration: float) -> LoadResult:
    """Webhooks/s from CLIENTS clients spread over the replicas, each webhook queueing one
    operation for a device of its own (sent meanwhile to the fake API)."""
    results: list[LoadResult] = []

    def load(n: int, server: Server) -> None:
        results.append(run_load(
            server.url + WEBHOOK, lambda i: alertmanager_payload([{
                "alertname": "BenchDeviceDown", "severity": "critical",
                "device": f"load-{tag}-{n}-{i}"}]),
            clients=max(1, CLIENTS // len(servers)), duration=duration, warmup=0.5))

    threads = [threading.Thread(target=load, args=(n, s)) for n, s in enumerate(servers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Run side by side: the counts add up, the wall time is one run's.
    total = LoadResult()
    for r in results:
        total = total.merge(r)
    total.elapsed = max(r.elapsed for r in results)
    return total


def lock_hold(rules: Path, env: dict[str, str], samples: int) -> list[float]:
    """Seconds the decision lock (Lock.CHAIN, an advisory lock) is held per webhook of one
    alert, from granted to committed: the bridge's Intake in this process on a fresh
    database, one webhook at a time (so no wait for the lock is counted). Serialized, it
    bounds the webhooks per second of all replicas together at 1 / this."""
    from bridge.app import create_app
    from bridge.config import Settings
    from bridge.store.base import Lock
    from bridge.web.context import context_of

    held: list[float] = []
    with fresh_database() as url:
        app = create_app(Settings.from_env({**env, "BRIDGE_RULES": str(rules),
                                            "BRIDGE_STATE": url}))
        store: Any = context_of(app).store
        transaction = store._transaction

        @contextmanager
        def timed(begin: str, wait: float, lock: Lock, **options: Any) -> Iterator[Any]:
            # Entered once the lock is granted (at BEGIN); left once COMMIT returned.
            with transaction(begin, wait, lock, **options) as tx:
                granted = time.perf_counter()
                yield tx
            if lock == Lock.CHAIN:
                held.append(time.perf_counter() - granted)

        store._transaction = timed
        intake = context_of(app).intake
        try:
            for i in range(samples + 10):
                body = alertmanager_payload([{"alertname": "BenchDeviceDown",
                                              "severity": "critical", "device": f"hold-{i}"}])
                intake.receive(body, "application/json", "alertmanager", f"hold-{i}")
        finally:
            store.close()
    return held[-samples:]


#: (name, engine, replicas) of the setups measured.
SETUPS = (("SQLite, 1 server", "sqlite", 1), ("PostgreSQL, 1 replica", "postgres", 1),
          ("PostgreSQL, 2 replicas", "postgres", 2), ("PostgreSQL, 3 replicas", "postgres", 3))
CLIENTS = 6


def section_replicas(quick: bool, report: Report, wd: Path, rules: Path, env: dict[str, str],
                     calls: Callable[[], list[dict[str, Any]]]) -> None:
    samples, duration = (15, 3.0) if quick else (60, 8.0)
    reaction_rows, load_rows, measured, medians = [], [], {}, {}
    for k, (name, engine, replicas) in enumerate(SETUPS):
        # A fresh state per setup: the operations the last one's load queued drain at the
        # rate limit (10/s), and the next one's reactions would wait behind them.
        with fresh_database() as url:
            state = str(wd / "react.db") if engine == "sqlite" else url
            servers = [start_bridge(wd, f"bridge-react-{k}-{n}", rules, state, env)
                       for n in range(replicas)]
            try:
                # Every worker of every replica warmed (imports, templates) first.
                reactions(servers, f"warm{k}", 6 * replicas, calls)
                answered, took = reactions(servers, f"r{k}", samples, calls)
                loaded = throughput(servers, f"t{k}", duration)
            finally:
                for server in servers:
                    server.stop()
            measured[name] = percentile(took, 99)
            medians[name] = percentile(took, 50)
            reaction_rows.append((name, len(took), ms(percentile(answered, 50)),
                                  ms(percentile(took, 50)), ms(measured[name]), ms(max(took))))
            load_rows.append((name, CLIENTS, loaded.count, f"{loaded.rate:.0f}",
                              ms(loaded.pct(50)), ms(loaded.pct(99)), len(loaded.errors)))
    report.add(
        "### 6a. Reaction time, one server and several replicas\n\n"
        f"From a webhook sent to the PUT it causes arriving at the fake device API, {samples} "
        f"webhooks one at a time, {PACE:g} s apart, to an idle bridge (2 workers per server, "
        "4 senders each); across replicas each goes to the next replica, and any may send. "
        "The webhook's own answer time is shown beside it.\n\n"
        + table(("state", "webhooks", "answer p50 ms", "reaction p50 ms", "reaction p99 ms",
                 "reaction max ms"), reaction_rows)
    )
    held = lock_hold(rules, env, samples * 3)
    report.add(
        "### 6b. Webhooks per second, one server and several replicas\n\n"
        f"{CLIENTS} clients for {duration:g} s, spread evenly over the replicas; each webhook "
        "queues one operation for a device of its own, which the bridge sends meanwhile.\n\n"
        + table(("state", "clients", "webhooks", "per second", "p50 ms", "p99 ms", "errors"),
                load_rows)
        + f"\n\nOn PostgreSQL every replica judges and commits under one advisory lock (one "
        f"operation per device and cooldown, global budgets, one audit chain). Held per "
        f"webhook of one alert, from granted to committed, {len(held)} webhooks one at a time "
        f"in the benchmark's own process: p50 {ms(percentile(held, 50))} ms, p90 "
        f"{ms(percentile(held, 90))} ms (so at most ~{1 / percentile(held, 50):.0f} webhooks/s "
        f"across all replicas, on an idle machine)."
    )
    sqlite = medians["SQLite, 1 server"]
    report.target(Target("6a", f"SQLite, 1 server: reaction p50 ≤ {ms(SQLITE_MEDIAN)} ms "
                         "(issue 15)", f"{ms(sqlite)} ms", sqlite / SQLITE_MEDIAN,
                         sqlite <= SQLITE_MEDIAN))
    for name, engine in (("SQLite, 1 server", "sqlite"), ("PostgreSQL, 3 replicas", "postgres")):
        limit = TARGETS[engine]
        report.target(Target("6a", f"{name}: reaction p99 ≤ {ms(limit)} ms",
                             f"{ms(measured[name])} ms", measured[name] / limit,
                             measured[name] <= limit))
