"""Section 5: loading rules. `alert-bridge check` beside libyaml alone, and the memory of a
process that holds the loaded rules.

Each measurement is a fresh child process, so imports, caches and the allocator start cold
every time, as they do for `check` and for a worker that starts or reloads.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: What "reading the file with libyaml" costs: PyYAML's C loader, nothing else.
LIBYAML = """\
import sys, yaml
with open(sys.argv[1], encoding="utf-8") as f:
    yaml.load(f.read(), Loader=yaml.CSafeLoader)
"""

#: A process holding loaded rules, as a worker does: the app's imports, the rules, a collection
#: (what is left is what the rules keep), then its resident and peak memory in KiB.
HOLD = """\
import gc, sys
import bridge.app
from bridge.rules import load_rules
rules = load_rules(sys.argv[1])
gc.collect()
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(len(rules.rules), status["VmRSS"].split()[0], status["VmHWM"].split()[0])
"""


@dataclass(frozen=True)
class Cost:
    cpu: float  # user + system seconds of the child
    wall: float


def child_cost(argv: Sequence[str], cwd: Path) -> Cost:
    """CPU and wall seconds of one child process run to its end; it must exit 0 (`check`
    does with warnings, without --strict)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Cost(cpu, wall)


@dataclass(frozen=True)
class CheckResult:
    by: str
    rules: int
    libyaml: Cost
    check: Cost
    summary: str  # the last line `check` printed

    @property
    def ratio(self) -> float:
        return self.check.cpu / self.libyaml.cpu


def compare_check(path: Path, by: str, rules: int, root: Path, repeats: int) -> CheckResult:
    """`python -m bridge check FILE` beside the libyaml snippet on the same file, alternating
    so that drift on a shared machine favours neither; best of `repeats` each."""
    check_argv = [sys.executable, "-m", "bridge", "check", str(path)]
    yaml_argv = [sys.executable, "-c", LIBYAML, str(path)]
    checks, yamls = [], []
    for i in range(repeats):
        pair = [(checks, check_argv), (yamls, yaml_argv)]
        for costs, argv in pair if i % 2 == 0 else pair[::-1]:
            costs.append(child_cost(argv, root))
    summary = subprocess.run(check_argv, cwd=root, capture_output=True, text=True,
                             check=False).stdout.strip().splitlines()[-1]
    return CheckResult(by, rules, _best(yamls), _best(checks), summary)


def _best(costs: list[Cost]) -> Cost:
    return Cost(min(c.cpu for c in costs), min(c.wall for c in costs))


@dataclass(frozen=True)
class Held:
    rules: int
    rss_mib: float
    peak_mib: float


def hold_rules(path: Path, root: Path) -> Held:
    done = subprocess.run([sys.executable, "-c", HOLD, str(path)], cwd=root,
                          capture_output=True, text=True, check=True)
    count, rss, peak = (int(x) for x in done.stdout.split())
    return Held(count, rss / 1024, peak / 1024)
