"""Section 8: what an idle bridge costs (issue 15, target 5): CPU of the whole process tree
(gunicorn master and workers) over a window in which nothing is sent, as a share of one core,
beside a bare Flask app under the same gunicorn options (the floor gunicorn itself costs).

Each bridge is live against the fake device API and has sent a few operations first, so that
its workers are warm and its senders started, then left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _peer import tree_cpu
from _procs import Server, start_baseline, start_bridge
from _replicas import fresh_database, reactions
from _report import Report, Target, table

LIMIT = 1.0  # % of one core

#: (name, engine, extra settings) of the bridges measured.
SETUPS = (
    ("bridge, SQLite, defaults (4 senders per worker)", "sqlite", {}),
    ("bridge, SQLite, BRIDGE_CONCURRENCY=25", "sqlite", {"BRIDGE_CONCURRENCY": "25"}),
    ("bridge, PostgreSQL, defaults", "postgres", {}),
)


def idle_cpu(server: Server, window: float) -> float:
    """% of one core the server's process tree used over `window` seconds."""
    before, started = tree_cpu(server.pid), time.monotonic()
    time.sleep(window)  # the measurement window itself: nothing is sent meanwhile
    return 100 * (tree_cpu(server.pid) - before) / (time.monotonic() - started)


def section_idle(quick: bool, report: Report, wd: Path, rules: Path, env: dict[str, str],
                 calls: Callable[[], list[dict[str, Any]]]) -> None:
    window = 10.0 if quick else 30.0
    baseline = start_baseline(wd)
    try:
        time.sleep(2.0)  # settle after start: the window measures idling, not booting
        rows = [("bare Flask app (baseline)", f"{idle_cpu(baseline, window):.2f}")]
    finally:
        baseline.stop()
    measured = {}
    with fresh_database() as url:
        for k, (name, engine, extra) in enumerate(SETUPS):
            state = str(wd / f"idle-{k}.db") if engine == "sqlite" else url
            server = start_bridge(wd, f"bridge-idle-{k}", rules, state, {**env, **extra})
            try:
                reactions([server], f"idle{k}", 6, calls)  # both workers warm, senders started
                time.sleep(2.0)  # settle: the last call's closing-loop and log work done
                measured[name] = idle_cpu(server, window)
            finally:
                server.stop()
            rows.append((name, f"{measured[name]:.2f}"))
    report.add(
        f"CPU of the whole process tree (master and 2 workers), user + system, over {window:g} s "
        "in which nothing arrives, as % of one core. Idle senders sleep until woken (work "
        "queued, a store notification) or until the state says something comes due, at "
        "least every 5 s; on SQLite each process also looks at the state's work counter "
        "four times a second.\n\n"
        + table(("server", "idle CPU, % of a core"), rows)
    )
    for name, value in measured.items():
        report.target(Target("8", f"{name}: idle CPU ≤ {LIMIT:g}% of a core",
                             f"{value:.2f}%", value / LIMIT, value <= LIMIT))
