"""Section 5: reaction time, SQLite (one server) against PostgreSQL (one and three replicas).

Reaction time: from just before a webhook is sent to when the fake device API receives the
PUT it causes (the fake's own arrival time: both clocks are this machine's), one webhook at
a time to an idle bridge. Across replicas each webhook goes to the next replica in turn, and
any replica's sender may make the call: what LISTEN/NOTIFY is for.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from _gen import alertmanager_payload
from _load import percentile
from _procs import Server, start_bridge, wait_until
from _report import Report, Target, ms, table

#: The server the benchmark makes its database on (trust auth, as in the tests).
ADMIN_URL = os.environ.get("BRIDGE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
WEBHOOK = "/webhook/alertmanager"
TARGETS = {"sqlite": 0.050, "postgres": 0.100}
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
              calls: Callable[[], list[dict[str, Any]]]) -> tuple[list[float], list[float]]:
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
        answer = requests.post(servers[i % len(servers)].url + WEBHOOK, data=body, timeout=30,
                               headers={"Content-Type": "application/json"})
        answer.raise_for_status()
        answered.append(time.time() - sent)
        call = wait_until(lambda d=device: next(
            (c for c in calls() if c.get("device") == d), None), 30, f"the call for {device}")
        took.append(call["time"] - sent)  # type: ignore[index]
    return answered, took


def section_replicas(quick: bool, report: Report, wd: Path, rules: Path, env: dict[str, str],
                     calls: Callable[[], list[dict[str, Any]]]) -> None:
    samples = 15 if quick else 60
    rows, measured = [], {}
    with fresh_database() as url:
        for name, state, replicas in (("SQLite, 1 server", str(wd / "react.db"), 1),
                                      ("PostgreSQL, 1 replica", url, 1),
                                      ("PostgreSQL, 3 replicas", url, 3)):
            servers = [start_bridge(wd, f"bridge-react-{len(rows)}-{n}", rules, state, env)
                       for n in range(replicas)]
            try:
                # Every worker of every replica warmed (imports, templates) first.
                reactions(servers, f"warm{len(rows)}", 6 * replicas, calls)
                answered, took = reactions(servers, f"r{len(rows)}", samples, calls)
            finally:
                for server in servers:
                    server.stop()
            p50, p99 = percentile(took, 50), percentile(took, 99)
            measured[name] = p99
            rows.append((name, len(took), ms(percentile(answered, 50)), ms(p50), ms(p99),
                         ms(max(took))))
    report.add(
        "### 5a. Reaction time, one server and several replicas\n\n"
        f"From a webhook sent to the PUT it causes arriving at the fake device API, {samples} "
        f"webhooks one at a time, {PACE:g} s apart, to an idle bridge (2 workers per server, "
        "4 senders each); across replicas each goes to the next replica, and any may send. "
        "The webhook's own answer time is shown beside it.\n\n"
        + table(("state", "webhooks", "answer p50 ms", "reaction p50 ms", "reaction p99 ms",
                 "reaction max ms"), rows)
    )
    for name, engine in (("SQLite, 1 server", "sqlite"), ("PostgreSQL, 3 replicas", "postgres")):
        limit = TARGETS[engine]
        report.target(Target("5", f"{name}: reaction p99 ≤ {ms(limit)} ms",
                             f"{ms(measured[name])} ms", measured[name] / limit,
                             measured[name] <= limit))
