"""Section 7: the bridge beside Event-Driven Ansible's engine (ansible-rulebook) on the same
work, on the same machine, in the same run.

The peer runs benchmarks/eda/rulebook.yml: the ansible.eda.alertmanager source, one rule with
the bridge's benchmark rule (`rules`, DISPATCH_RULES of run.py) as its condition, `throttle`
for the cooldown and ansible.builtin.uri for the PUT. It is a benchmark peer, not a
dependency: it is installed into a venv of its own under BRIDGE_BENCH_EDA_HOME (default
~/.cache/alert-bridge-bench/eda), `pip install ansible-rulebook ansible-core`, with the
ansible.eda collection from Galaxy, or from BRIDGE_BENCH_EDA_COLLECTION (a directory or
tarball of the collection) where Galaxy cannot be reached. Java 17 must be installed (the
rules engine is Drools, in the same process through jpy).

Measured for each engine, against the fake device API:
- reaction: a webhook of one alert sent → its PUT received, one at a time, idle engine;
- burst: ONE webhook holding `burst` alerts for as many devices (what Alertmanager sends for a
  group) → every one of their PUTs received; when the webhook was answered;
- duplicates: each of `pairs` alerts delivered twice at the same moment (two Alertmanagers of
  an HA pair that both notify) → PUTs received per alert;
- memory: VmRSS summed over the whole process tree, idle and at its peak during the burst;
- idle CPU: utime+stime (with that of reaped children) of the whole tree over a window with
  no work, as % of one core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from _gen import alertmanager_payload
from _load import percentile
from _procs import (
    BENCH_DIR,
    Server,
    child_pids,
    free_port,
    rss_mib,
    start_bridge,
    start_fake_api,
    wait_until,
)
from _replicas import reactions
from _report import Report, Target, ms, table

EDA_HOME = Path(os.environ.get("BRIDGE_BENCH_EDA_HOME")
                or Path.home() / ".cache" / "alert-bridge-bench" / "eda")
COLLECTIONS = EDA_HOME / "collections"
RULEBOOK_DIR = BENCH_DIR / "eda"
TOKEN = "peer-token"
ALERT = {"alertname": "BenchDeviceDown", "severity": "critical"}
#: The bridge's dispatch limits in the second bridge row: as wide as ansible-rulebook's
#: parallel strategy (25 actions at once, no rate limit), so the burst compares the engines
#: and not their defaults.
WIDE_LIMITS = {"BRIDGE_CONCURRENCY": "25", "BRIDGE_RATE_LIMIT": "100000"}


class Unavailable(Exception):
    """ansible-rulebook cannot run here; the message says why."""


# ---------------------------------------------------------------------------------------------
# Installing the peer


def _run(argv: list[str | Path], what: str, timeout: float = 900) -> str:
    try:
        done = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{what}: {exc}") from exc
    if done.returncode != 0:
        tail = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "WARNING: Location" not in line][-3:]
        raise Unavailable(f"{what} failed ({done.returncode}): {' / '.join(tail)}")
    return done.stdout


def install_eda(log: Callable[[str], None]) -> list[tuple[str, str]]:
    """Make sure the venv holds ansible-rulebook and ansible.eda; their versions (and Java's)."""
    bin_dir = EDA_HOME / "bin"
    if not (bin_dir / "ansible-rulebook").exists():
        log(f"installing ansible-rulebook into {EDA_HOME}")
        _run([sys.executable, "-m", "venv", EDA_HOME], "creating the venv")
        _run([bin_dir / "pip", "install", "-q", "ansible-rulebook", "ansible-core"],
             "pip install ansible-rulebook ansible-core")
    manifest = COLLECTIONS / "ansible_collections" / "ansible" / "eda" / "MANIFEST.json"
    if not manifest.exists():
        source = os.environ.get("BRIDGE_BENCH_EDA_COLLECTION", "ansible.eda")
        log(f"installing the ansible.eda collection from {source}")
        _run([bin_dir / "ansible-galaxy", "collection", "install", "-p", COLLECTIONS, source],
             f"ansible-galaxy collection install {source} (set BRIDGE_BENCH_EDA_COLLECTION to a "
             "local copy of the collection where Galaxy cannot be reached)")
    # Also the check that Java is there: the engine cannot start without it.
    shown = _run([bin_dir / "ansible-rulebook", "--version"],
                 "ansible-rulebook --version (is Java 17 installed?)", timeout=120)
    facts = dict(line.strip().split(" = ", 1) for line in shown.splitlines() if " = " in line)
    collection = json.loads(manifest.read_text())["collection_info"]["version"]
    return [("ansible-rulebook", shown.split()[1].strip("[]")),
            ("ansible.eda collection", collection),
            ("ansible-core", facts.get("Ansible core version", "?")),
            ("drools_jpy", facts.get("Drools_jpy version", "?")),
            ("Java", facts.get("Java version", "?"))]


def start_eda(wd: Path, fake: Server) -> Engine:
    port = free_port()
    bin_dir = EDA_HOME / "bin"
    server = Server(
        "ansible-rulebook",
        [str(bin_dir / "ansible-rulebook"), "-r", str(RULEBOOK_DIR / "rulebook.yml"),
         "-i", str(RULEBOOK_DIR / "inventory.yml"),
         "-E", "ALERTMANAGER_PORT,DEVICE_API_URL,DEVICE_API_TOKEN"],
        port, wd,
        env={"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
             "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ALERTMANAGER_PORT": str(port),
             "DEVICE_API_URL": f"{fake.url}/api/v1", "DEVICE_API_TOKEN": TOKEN},
        ready_path="/",  # the alertmanager source's status page
    )
    # The JVM and the rule engine start before the source listens.
    return Engine("ansible-rulebook", server.wait_ready(120), "/alertmanager", eda_jobs)


# ---------------------------------------------------------------------------------------------
# The process tree


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += child_pids(current)
    return found


def tree_rss(pid: int) -> float:
    return sum(r for r in (rss_mib(p) for p in tree(pid)) if r is not None)


def tree_cpu(pid: int) -> float:
    """CPU seconds of the tree: utime+stime of every live process, plus cutime+cstime, so
    that a child reaped meanwhile still counts (in its parent's)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])
    return total / ticks


def eda_jobs(pid: int) -> int:
    """ansible-playbook processes under `pid`: ansible-rulebook runs each action as one."""
    count = 0
    for p in tree(pid):
        try:
            count += b"ansible-playbook" in Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
    return count


@dataclass
class Engine:
    name: str
    server: Server
    path: str  # the webhook's path
    #: Actions still running under the engine's process (the bridge's run in its threads).
    jobs: Callable[[int], int] = lambda pid: 0

    @property
    def url(self) -> str:  # what _replicas.reactions posts to, with `path` appended
        return self.server.url

    def quiet(self) -> bool:
        return self.jobs(self.server.pid) == 0


@dataclass
class Measured:
    took: list[float] = field(default_factory=list)
    burst: float = float("nan")
    burst_calls: int = 0
    burst_answer: float = float("nan")
    duplicates: Counter[int] = field(default_factory=Counter)  # calls per alert: alerts
    rss_idle: float = float("nan")
    rss_peak: float = float("nan")
    idle_cpu: float = float("nan")


def puts(fake: Server) -> list[dict[str, Any]]:
    calls = requests.get(f"{fake.url}/_fake/calls", timeout=30).json()["calls"]
    return [c for c in calls if c.get("method") == "PUT"]


def post(engine: Engine, devices: list[str]) -> float:
    """Send one webhook with an alert per device; seconds until it was answered."""
    body = alertmanager_payload([{**ALERT, "device": d} for d in devices])
    sent = time.time()
    answer = requests.post(engine.url + engine.path, data=body, timeout=1800,
                           headers={"Content-Type": "application/json"})
    answer.raise_for_status()
    return time.time() - sent


def measure(engine: Engine, fake: Server, tag: str, samples: int, pairs: int, burst: int,
            idle_window: float) -> Measured:
    result = Measured()
    calls = lambda: puts(fake)  # noqa: E731
    reactions([engine], f"{tag}-warm", 3, calls, path=engine.path)  # type: ignore[list-item]
    wait_until(engine.quiet, 120, f"{engine.name} idle")

    result.rss_idle = tree_rss(engine.server.pid)
    before, t0 = tree_cpu(engine.server.pid), time.monotonic()
    time.sleep(idle_window)  # the measurement window itself: nothing is sent meanwhile
    result.idle_cpu = 100 * (tree_cpu(engine.server.pid) - before) / (time.monotonic() - t0)

    _, result.took = reactions([engine], tag, samples, calls,  # type: ignore[list-item]
                               path=engine.path)

    # Duplicates: both copies of each alert sent at the same moment, from two threads.
    devices = [f"dup-{tag}-{i}" for i in range(pairs)]
    barrier = threading.Barrier(2 * pairs)

    def deliver(device: str) -> None:
        barrier.wait()
        post(engine, [device])

    threads = [threading.Thread(target=deliver, args=(d,)) for d in devices for _ in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: set(devices) <= {c["device"] for c in calls()}, 300,
               f"{engine.name}: a call for each duplicated alert")
    wait_until(engine.quiet, 300, f"{engine.name} idle after the duplicates")
    # A second call would already be on its way; this window lets it arrive.
    time.sleep(2.0)
    per_device = Counter(c["device"] for c in calls() if c["device"] in set(devices))
    result.duplicates = Counter(per_device[d] for d in devices)

    # The burst, with the tree's memory sampled meanwhile.
    devices = [f"burst-{tag}-{i}" for i in range(burst)]
    wanted = set(devices)
    peak = [tree_rss(engine.server.pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            peak.append(tree_rss(engine.server.pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    sent = time.time()
    answered: list[float] = []
    sender = threading.Thread(target=lambda: answered.append(post(engine, devices)))
    sender.start()

    def all_arrived() -> list[dict[str, Any]] | None:
        got = [c for c in calls() if c["device"] in wanted]
        return got if len({c["device"] for c in got}) >= burst else None

    try:
        got: list[dict[str, Any]] = wait_until(  # type: ignore[assignment]
            all_arrived, 1800, f"{engine.name}: {burst} calls", interval=0.1)
        sender.join()
    finally:
        done.set()
        sampler.join()
    result.burst_calls = len({c["device"] for c in got})
    result.burst = max(c["time"] for c in got) - sent
    result.burst_answer = answered[0] if answered else float("nan")
    result.rss_peak = max(peak)
    return result


# ---------------------------------------------------------------------------------------------
# The section


def section_peer(quick: bool, report: Report, wd: Path, rules: Path,
                 log: Callable[[str], None]) -> None:
    samples, pairs, burst, idle_window = (5, 3, 40, 10.0) if quick else (20, 10, 200, 30.0)
    fake = start_fake_api(wd, TOKEN)
    env = {"BRIDGE_API_URL": f"{fake.url}/api/v1", "BRIDGE_API_TOKEN": TOKEN}
    rows: list[tuple[object, ...]] = []
    measured: dict[str, Measured] = {}
    why_not = ""
    versions: list[tuple[str, str]] = []
    try:
        setups: list[tuple[str, Callable[[], Engine]]] = [
            ("alert-bridge, defaults (4 calls in flight, 10 started/s)",
             lambda: Engine("bridge", start_bridge(wd, "bridge-peer", rules,
                                                   wd / "peer.db", env), "/webhook/alertmanager")),
            ("alert-bridge, 25 in flight, no rate limit",
             lambda: Engine("bridge-wide", start_bridge(wd, "bridge-peer-wide", rules,
                                                        wd / "peer-wide.db",
                                                        {**env, **WIDE_LIMITS}),
                            "/webhook/alertmanager")),
        ]
        try:
            versions = install_eda(log)
            setups.append((f"ansible-rulebook {versions[0][1]}, parallel (25 actions at once)",
                           lambda: start_eda(wd, fake)))
        except Unavailable as exc:
            why_not = str(exc)
            log(f"section 7: ansible-rulebook cannot run here: {why_not}")
        for k, (name, start) in enumerate(setups):
            log(f"section 7: {name}")
            engine = start()
            try:
                m = measure(engine, fake, f"p{k}", samples, pairs, burst, idle_window)
            finally:
                engine.server.stop()
            measured[engine.name] = m
            rows.append((
                name, ms(percentile(m.took, 50)), ms(percentile(m.took, 99)),
                f"{m.burst:.1f} s ({m.burst_calls} calls)", f"{m.burst_answer:.2f} s",
                ", ".join(f"{n} call{'s' if n != 1 else ''}: {a}"
                          for n, a in sorted(m.duplicates.items())),
                f"{m.rss_idle:.0f}", f"{m.rss_peak:.0f}", f"{m.idle_cpu:.2f}",
            ))
    finally:
        fake.stop()
    report.add(
        "Event-Driven Ansible's engine beside the bridge, on the same work, one after the "
        "other on this machine: the bridge (SQLite, 2 gunicorn workers) with the rule of "
        "section 1 (reboot on `BenchDeviceDown` at `severity` critical or page, cooldown 1 h) "
        "and `ansible-rulebook` with benchmarks/eda/rulebook.yml, the same rule as its users "
        "write it (the ansible.eda.alertmanager source, `throttle` once within 1 hour per "
        "device, `run_module` ansible.builtin.uri PUT to the device API). Both call the same "
        "fake device API.\n\n"
        f"- reaction: {samples} webhooks of one alert, one at a time, to an idle engine: "
        "sent → PUT received;\n"
        f"- burst: one webhook holding {burst} alerts for {burst} devices → the last of their "
        f"{burst} PUTs received; and when the webhook itself was answered;\n"
        f"- duplicates: {pairs} alerts each delivered twice at the same moment (an "
        "Alertmanager HA pair) → PUTs per alert (\"1 call: N\" is N alerts called once);\n"
        "- memory: VmRSS summed over the process tree (gunicorn master and workers; "
        "ansible-rulebook, its JVM inside it, and the ansible-playbook jobs it runs), after "
        "warming up and at the peak of the burst;\n"
        f"- idle CPU: utime+stime of the whole tree over {idle_window:g} s with nothing sent, "
        "as % of one core.\n\n"
        + table(("engine", "reaction p50 ms", "reaction p99 ms", f"burst: {burst} PUTs after",
                 "burst webhook answered after", "duplicates (PUTs per alert: alerts)",
                 "RSS idle MiB", "RSS peak MiB", "idle CPU % of a core"), rows)
        + ("\n\n" + table(("peer", "version"), versions) if versions else "")
        + (f"\n\n**ansible-rulebook could not run here**: {why_not}" if why_not else "")
    )
    bridge, peer = measured.get("bridge"), measured.get("ansible-rulebook")
    if bridge is None or peer is None:
        report.target(Target("7", "the bridge's figures beside ansible-rulebook's",
                             "ansible-rulebook did not run", float("nan"), None))
        return
    react = percentile(bridge.took, 50) / percentile(peer.took, 50)
    report.target(Target(
        "7", "the bridge's figures beside ansible-rulebook's, same work and run",
        f"reaction p50 {ms(percentile(bridge.took, 50))} vs {ms(percentile(peer.took, 50))} ms, "
        f"{burst}-alert burst {bridge.burst:.1f} vs {peer.burst:.1f} s (bridge at its defaults), "
        f"idle CPU {bridge.idle_cpu:.2f} vs {peer.idle_cpu:.2f} % (ratio: reaction p50)",
        react, True))
