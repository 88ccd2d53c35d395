"""The Markdown report: tables, targets with met / not met, and the machine it ran on."""

from __future__ import annotations

import math
import os
import platform
import re
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
    #: Said under every section heading when only some sections run (run.py --only).
    refreshed: str = ""

    def add(self, text: str) -> None:
        self.parts.append(text.rstrip() + "\n")
        print(text.rstrip() + "\n", flush=True)

    def section(self, heading: str) -> None:
        """Start a section ("## 3. Title"): merge_reports replaces sections by their number."""
        self.add(heading + "\n" + (f"\n{self.refreshed}\n" if self.refreshed else ""))

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


TARGETS = "## Targets"


def _blocks(text: str) -> list[tuple[str, str]]:
    """The text cut before each "## " heading: (key, block); the key of "## 3. Title" is
    "3." (of "## 2c. Title", a part of section 2 run on its own, "2c."), of another heading
    the heading itself, of what comes before the first one "".
    """
    blocks: list[tuple[str, str]] = []
    key, lines = "", []
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            blocks.append((key, "".join(lines)))
            words = line.split()
            key = words[1] if _NUMBERED.fullmatch(words[1]) else line.strip()
            lines = []
        lines.append(line)
    blocks.append((key, "".join(lines)))
    return [(k, b) for k, b in blocks if b or k]


_NUMBERED = re.compile(r"(\d+)([a-z]?)\.")


def _number(key: str) -> float:
    """The number of a numbered section's key ("2c." just after "2."); other keys sort after
    every number."""
    m = _NUMBERED.fullmatch(key)
    if m is None:
        return float("inf")
    return int(m[1]) + (ord(m[2]) - ord("a") + 1) / 100 if m[2] else int(m[1])


def _section_order(section: str) -> tuple[int, str]:
    digits = "".join(c for c in section if c.isdigit())
    return (int(digits) if digits else 0, section)


def _merge_targets(old: str, new: str) -> str:
    """The old targets table with the rows of the sections in `new` replaced by its rows."""
    def rows(block: str) -> list[str]:
        return [line for line in block.splitlines()[1:] if line.startswith("| ")][2:]

    fresh = rows(new)
    ran = {row.split("|")[1].strip() for row in fresh}
    kept = [row for row in rows(old) if row.split("|")[1].strip() not in ran]
    merged = sorted(kept + fresh, key=lambda row: _section_order(row.split("|")[1].strip()))
    lines = old.splitlines()
    table_at = [i for i, line in enumerate(lines) if line.startswith("| ")]
    if not table_at:
        return new
    first, last = table_at[0], table_at[-1]
    return "\n".join(lines[: first + 2] + merged + lines[last + 1 :]) + "\n"


def merge_reports(old: str, new: str) -> str:
    """`old` with every section of `new` in place of the section of the same number (or
    heading), new sections put in number order, and the targets table's rows of the sections
    that ran replaced: for a run of only some sections (run.py --only)."""
    blocks = _blocks(old)
    for key, block in _blocks(new):
        if not key:
            continue
        keys = [k for k, _ in blocks]
        if key == TARGETS and key in keys:
            at = keys.index(key)
            blocks[at] = (key, _merge_targets(blocks[at][1], block))
        elif key in keys:
            blocks[keys.index(key)] = (key, block)
        elif _number(key) == float("inf"):
            blocks.append((key, block))
        else:
            later = [i for i, k in enumerate(keys) if k and _number(k) > _number(key)]
            blocks.insert(later[0] if later else len(blocks), (key, block))
    return "".join(block.rstrip("\n") + "\n\n" for _, block in blocks).rstrip("\n") + "\n"
