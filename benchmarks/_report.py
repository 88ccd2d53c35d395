"""The Markdown report: tables, targets with met / not met, and the machine it ran on."""

from __future__ import annotations

import math
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "—"
    value = seconds * 1000
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def ratio(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return "—"
    return f"{value:.2f}×" if value < 10 else f"{value:.1f}×"


@dataclass
class Target:
    section: str
    text: str  # what is required, in words
    measured: str  # what was measured, in words
    value: float  # the measured ratio
    met: bool | None  # None: could not be measured

    @property
    def verdict(self) -> str:
        if self.met is None:
            return "not measured"
        return "**met**" if self.met else "**not met**"


@dataclass
class Report:
    parts: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.parts.append(text.rstrip() + "\n")
        print(text.rstrip() + "\n", flush=True)

    def target(self, target: Target) -> None:
        self.targets.append(target)
        self.add(
            f"- Target ({target.section}): {target.text}. Measured: {target.measured} "
            f"→ {target.verdict}."
        )

    def targets_table(self) -> str:
        rows = [
            (t.section, t.text, t.measured, ratio(t.value), t.verdict) for t in self.targets
        ]
        return table(("section", "target", "measured", "ratio", "result"), rows)

    def text(self) -> str:
        return "\n".join(self.parts)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision(root: Path) -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
            check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "bridge"], cwd=root, capture_output=True,
            text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{rev} + uncommitted changes in bridge/" if dirty else rev


def commit_latency(directory: Path, count: int = 50) -> float:
    """Median seconds of one small SQLite write transaction as the bridge's store makes it
    (WAL, synchronous=FULL, BEGIN IMMEDIATE): mostly the disk's fsync time."""
    path = directory / "commit-probe.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (x REAL)")
        times = []
        for i in range(count):
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?)", (i,))
            conn.execute("COMMIT")
            times.append(time.perf_counter() - t0)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    times.sort()
    return times[len(times) // 2]


def machine(root: Path, workdir: Path) -> list[tuple[str, str]]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return [
        ("CPUs", str(os.cpu_count())),
        ("CPU model", cpu_model()),
        ("Python", sys.version.split()[0] + f" ({platform.python_implementation()})"),
        ("platform", platform.platform()),
        ("SQLite", sqlite3.sqlite_version),
        ("load average at start", " ".join(f"{x:.2f}" for x in load)),
        ("SQLite commit (WAL, synchronous=FULL) in the work dir",
         f"{ms(commit_latency(workdir))} ms median"),
        ("bridge code", git_revision(root)),
    ]
