"""alert-bridge benchmarks: dispatch, webhooks under load, the decision core, memory, loading.

    python benchmarks/run.py            # the full run, about 10-12 minutes
    python benchmarks/run.py --quick    # every part shortened: a smoke run of a minute or two
    python benchmarks/run.py --only load,match   # some parts; their sections replaced in --out

Section 6 makes (and drops) a database on the PostgreSQL server at BRIDGE_BENCH_POSTGRES
(default postgresql://postgres@127.0.0.1:5432/postgres).

Prints a Markdown report and writes it to docs/benchmarks.md (--out to change). Servers run as
real processes on loopback ports: the bridge (`python -m bridge serve`, 2 gunicorn workers),
the fake device API (`python -m bridge fake-api`) and a baseline bare Flask app under the same
gunicorn options. The machine is assumed shared and noisy: every HTTP number stands beside a
baseline measured in the same run, and the targets are ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# The helpers beside this file, and the bridge of this checkout, before anything installed.
sys.path[:0] = [str(BENCH_DIR), str(ROOT)]

import requests  # noqa: E402
from _core import run_core  # noqa: E402
from _gen import alert_labels, alertmanager_payload, guardrails_off, rules_yaml  # noqa: E402
from _idle import section_idle  # noqa: E402
from _load import CLIENTS, LoadResult, percentile, run_load  # noqa: E402
from _peer import section_peer  # noqa: E402
from _procs import (  # noqa: E402
    Server,
    rss_mib,
    start_baseline,
    start_bridge,
    start_fake_api,
    stop_all,
    wait_until,
)
from _replica_dispatch import section_replica_dispatch  # noqa: E402
from _replicas import section_replicas  # noqa: E402
from _report import Report, Target, machine, merge_reports, ms, ratio, table  # noqa: E402
from _rules_loading import compare_check, hold_rules  # noqa: E402

FAKE_TOKEN = "bench-token"
WEBHOOK = "/webhook/alertmanager"


@dataclass(frozen=True)
class Config:
    quick: bool
    # 1a: webhooks per phase (fast API, slow API), split over `dispatch_rounds` fresh bridges
    dispatch_webhooks: int
    dispatch_rounds: int
    dispatch_alerts: int  # alerts (so operations) per webhook
    dispatch_clients: int
    slow_delay: float
    # 1b
    throughput_ops: int
    throughput_concurrency: int
    throughput_delay: float
    # 2
    load_clients: int
    load_duration: float  # seconds per run; each server runs `load_rounds` times per payload
    load_rounds: int
    load_warmup: float
    live_storms: int  # 2b: storm webhooks one after the other to a live bridge
    storm_samples: int  # 2c: storm webhooks one at a time, bridge and baseline each
    storm_warmup: int
    # 3
    core_rules: tuple[int, ...]
    core_alerts: tuple[int, ...]
    core_budget: float  # seconds: longer single decide() calls are skipped
    core_passes: int  # times the grid is timed; each combination keeps its lowest cost
    # 5
    load_rules: tuple[int, ...]  # rules in the files `check` reads; the target is the last
    load_repeats: int
    memory_rules: tuple[int, ...]  # rules held; the target compares the last to the first


FULL = Config(
    quick=False, dispatch_webhooks=300, dispatch_rounds=2, dispatch_alerts=3, dispatch_clients=4,
    slow_delay=2.0, throughput_ops=400, throughput_concurrency=8, throughput_delay=0.1,
    load_clients=8, load_duration=8.0, load_rounds=2, load_warmup=1.0, live_storms=10,
    storm_samples=30, storm_warmup=3,
    core_rules=(10, 100, 1_000, 10_000), core_alerts=(1, 100, 10_000), core_budget=15.0,
    core_passes=2, load_rules=(1_000, 10_000), load_repeats=3, memory_rules=(100, 1_000, 10_000),
)
QUICK = Config(
    quick=True, dispatch_webhooks=40, dispatch_rounds=1, dispatch_alerts=3, dispatch_clients=4,
    slow_delay=2.0, throughput_ops=80, throughput_concurrency=8, throughput_delay=0.1,
    load_clients=8, load_duration=2.0, load_rounds=1, load_warmup=0.5, live_storms=3,
    storm_samples=8, storm_warmup=2,
    core_rules=(10, 100, 1_000), core_alerts=(1, 100, 1_000), core_budget=2.0,
    core_passes=1, load_rules=(10_000,), load_repeats=1, memory_rules=(100, 10_000),
)

DISPATCH_RULES = """\
defaults:
  cooldown: 30m
rules:
  - name: reboot-down-devices
    match:
      - alertname = "BenchDeviceDown"
      - severity =~ "critical|page"
    device: "{{ labels.device }}"
    operation: reboot
    cooldown: 1h
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Helpers over the servers


def dispatch_payload(tag: str, i: int, alerts: int) -> bytes:
    """A webhook whose alerts name devices no other webhook names: each queues `alerts` ops."""
    return alertmanager_payload([
        {"alertname": "BenchDeviceDown", "severity": "critical", "device": f"{tag}-{i}-{k}"}
        for k in range(alerts)
    ])


def fake_control(fake: Server, method: str, path: str, body: object = None) -> Any:
    response = requests.request(method, f"{fake.url}/_fake/{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def fake_calls(fake: Server) -> list[dict[str, Any]]:
    calls = fake_control(fake, "GET", "calls")["calls"]
    return [c for c in calls if c.get("method") == "PUT"]


def live_env(fake: Server, **extra: str) -> dict[str, str]:
    return {"BRIDGE_API_URL": f"{fake.url}/api/v1", "BRIDGE_API_TOKEN": FAKE_TOKEN, **extra}


def audit_query(state: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the bridge's audit while it runs (WAL: readers do not block its writers)."""
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def verdicts(state: Path) -> Counter[str]:
    rows = audit_query(
        state, "SELECT outcome, count(*) FROM audit WHERE event = 'decision' GROUP BY outcome"
    )
    return Counter(dict(rows))


def show_counts(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.most_common()) or "none"


def server_errors(wd: Path, since: float) -> str:
    """The last error lines the servers logged since `since`, as a Markdown code block."""
    lines: list[str] = []
    for path in sorted(wd.glob("*.log"), key=lambda p: p.stat().st_mtime):
        if path.stat().st_mtime < since:
            continue
        lines += [f"{path.name}: {line.strip()}" for line in path.read_text(errors="replace")
                  .splitlines() if " ERROR " in line or "Error:" in line]
    if not lines:
        return ""
    return "\n\n```\n" + "\n".join(lines[-3:]) + "\n```"


def worker_rss(server: Server) -> list[float]:
    return [r for r in (rss_mib(pid) for pid in server.workers()) if r is not None]


def settle_workers(server: Server, workers: int = 2, timeout: float = 30.0) -> None:
    """Wait until the master has all its workers and their memory stops growing (booted)."""
    wait_until(lambda: len(server.workers()) >= workers, timeout, f"{server.name} workers")
    deadline = time.monotonic() + timeout
    previous = worker_rss(server)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = worker_rss(server)
        if len(current) == len(previous) and all(
            abs(a - b) < 0.25 for a, b in zip(current, previous, strict=True)
        ):
            return
        previous = current


# ---------------------------------------------------------------------------------------------
# Section 1: dispatch


def dispatch_latency(cfg: Config, report: Report, wd: Path, fake: Server, rules: Path) -> None:
    per_round = cfg.dispatch_webhooks // cfg.dispatch_rounds
    phases = (("fast", 0.0), ("slow", cfg.slow_delay))
    results: dict[str, LoadResult] = {name: LoadResult() for name, _ in phases}
    info: dict[str, dict[str, Any]] = {name: {"verdicts": Counter(), "calls": 0}
                                       for name, _ in phases}
    for rnd in range(cfg.dispatch_rounds):
        # Alternate the order, so drift on a shared machine does not favour one phase.
        for name, delay in phases if rnd % 2 == 0 else phases[::-1]:
            tag = f"{name}{rnd}"
            fake_control(fake, "POST", "reset")
            if delay:
                fake_control(fake, "POST", "behaviour", {"delay": delay})
            state = wd / f"dispatch-{tag}.db"
            bridge = start_bridge(wd, f"bridge-dispatch-{tag}", rules, state, live_env(fake))
            try:
                url = bridge.url + WEBHOOK
                n = cfg.dispatch_alerts
                # Warm both workers (imports, template compilation) before measuring.
                run_load(url, lambda i, t=tag, n=n: dispatch_payload(f"warm-{t}", i, n),
                         clients=cfg.dispatch_clients, total=4 * cfg.dispatch_clients)
                result = run_load(url, lambda i, t=tag, n=n: dispatch_payload(t, i, n),
                                  clients=cfg.dispatch_clients, total=per_round)
                results[name] = results[name].merge(result)
                info[name]["verdicts"] += verdicts(state)
                info[name]["calls"] += len(fake_calls(fake))
                log(f"  dispatch latency {tag}: p50 {ms(result.pct(50))} ms "
                    f"p99 {ms(result.pct(99))} ms, {len(result.errors)} errors")
            finally:
                fake_control(fake, "DELETE", "behaviour")  # wake delayed calls: quick drain
                bridge.stop()
    rows = []
    for name, delay in phases:
        r = results[name]
        rows.append((
            f"{'fast' if not delay else 'slow'} API ({delay:g} s per call)", r.count,
            cfg.dispatch_alerts, show_counts(info[name]["verdicts"]), info[name]["calls"],
            ms(r.pct(50)), ms(r.pct(99)), ms(max(r.latencies, default=float("nan"))),
            len(r.errors),
        ))
    report.add(
        f"### 1a. Webhook answer latency, fast vs slow device API\n\n"
        f"{cfg.dispatch_webhooks} webhooks per phase from {cfg.dispatch_clients} concurrent "
        f"clients, in {cfg.dispatch_rounds} round(s), each against a fresh bridge (live, 2 "
        f"workers, default BRIDGE_CONCURRENCY/BRIDGE_RATE_LIMIT) and the fake API; every webhook "
        f"holds {cfg.dispatch_alerts} alerts naming devices no other webhook names, so each "
        f"alert queues a real operation (rule `device: \"{{{{ labels.device }}}}\"`, cooldown "
        f"1h). Verdicts include the warm-up webhooks; API calls are those the fake received "
        f"while the phase ran.\n\n"
        + table(("phase", "webhooks", "alerts each", "verdicts (audit)", "API calls",
                 "p50 ms", "p99 ms", "max ms", "errors"), rows)
    )
    fast, slow = results["fast"].pct(99), results["slow"].pct(99)
    value = slow / fast
    report.target(Target(
        "1a", f"webhook p99 with a {cfg.slow_delay:g} s API ≤ 1.5 × p99 with a fast API",
        f"{ms(slow)} ms vs {ms(fast)} ms", value, value <= 1.5,
    ))


def dispatch_throughput(cfg: Config, report: Report, wd: Path, fake: Server,
                        rules: Path) -> None:
    conc, delay, ops = cfg.throughput_concurrency, cfg.throughput_delay, cfg.throughput_ops
    ideal = conc / delay
    rows = []
    measured: dict[float, dict[str, float]] = {}
    for api_delay in (delay, 0.0):
        m = measure_dispatch(cfg, wd, fake, rules, api_delay)
        measured[api_delay] = m
        rows.append((
            f"{api_delay:g} s", ops, ms(m["queue_time"]) + " ms", f"{m['outcome_rate']:.1f}",
            f"{m['fake_rate']:.1f}", f"{m['in_flight']:.2f} (max {m['max_in_flight']:.0f})",
            ms(m["call_time"]), show_counts(m["outcomes"]),  # type: ignore[arg-type]
        ))
    # The fake alone, driven by `conc` clients: its own ceiling at this delay.
    fake_control(fake, "POST", "reset")
    fake_control(fake, "POST", "behaviour", {"delay": delay})
    url = f"{fake.url}/api/v1/inventory_device_name_operation/ceiling-probe/"
    body = json.dumps({"operation": "sync"}).encode()
    ceiling = run_load(url, lambda i: body, clients=conc, total=ops, method="PUT",
                       headers={"Authorization": f"Bearer {FAKE_TOKEN}"})
    fake_control(fake, "POST", "reset")
    m = measured[delay]
    report.add(
        f"### 1b. Dispatch throughput\n\n"
        f"A fresh live bridge with BRIDGE_CONCURRENCY={conc} and BRIDGE_RATE_LIMIT=1000 (so the "
        f"rate limit does not bind); {ops} operations on distinct devices are queued by "
        f"{ops // 10} webhooks of 10 alerts from 4 clients, then drained. Throughput = "
        f"operations ended per second, from the first to the last `outcome` record of the "
        f"audit; the fake's view (first call arrived → last call finished) beside it. "
        f"\"In flight\" is the mean number of calls the fake was serving at once over that "
        f"span (the sum of call durations ÷ the span). The 0 s row shows the dispatcher's own "
        f"ceiling with an instant API.\n\n"
        + table(("API delay", "operations", "time to queue all", "ended/s (audit)",
                 "ended/s (fake)", "in flight at the fake", "mean call ms", "outcomes"), rows)
        + "\n\n"
        + table(("reference", "calls/s", "share of ideal"), [
            (f"ideal: {conc} in flight ÷ {delay:g} s", f"{ideal:.1f}", "100%"),
            (f"the fake alone, {conc} concurrent clients at {delay:g} s (its ceiling)",
             f"{ceiling.rate:.1f}", f"{ceiling.rate / ideal:.0%}"),
            ("the bridge against the fake (audit)", f"{m['outcome_rate']:.1f}",
             f"{m['outcome_rate'] / ideal:.0%}"),
        ])
    )
    value = m["outcome_rate"] / ideal
    report.target(Target(
        "1b", f"dispatch throughput at {delay:g} s per call and concurrency {conc} ≥ 80% of "
              f"ideal ({ideal:.0f}/s)",
        f"{m['outcome_rate']:.1f} operations/s", value, value >= 0.8,
    ))
    # Each of the `conc` senders spends conc / rate seconds per operation; what is not the
    # call itself is the dispatcher's own work (claim and finish transactions, wake-ups).
    overhead = conc / m["outcome_rate"] - m["call_time"]
    report.add(
        f"Where the time goes: the fake alone reaches {ceiling.rate:.1f} calls/s "
        f"({ceiling.rate / ideal:.0%} of ideal) with {conc} clients, so it caps this "
        f"measurement near there; the bridge kept {m['in_flight']:.2f} of {conc} calls in "
        f"flight on average, each {ms(m['call_time'])} ms at the fake, so every operation cost "
        f"a sender about {ms(overhead)} ms besides the call; with an instant API the "
        f"dispatcher ends {measured[0.0]['outcome_rate']:.1f} operations/s "
        f"({measured[0.0]['outcome_rate'] / ideal:.1f}× the ideal at {delay:g} s)."
    )


def measure_dispatch(cfg: Config, wd: Path, fake: Server, rules: Path,
                     api_delay: float) -> dict[str, Any]:
    ops, conc = cfg.throughput_ops, cfg.throughput_concurrency
    fake_control(fake, "POST", "reset")
    if api_delay:
        fake_control(fake, "POST", "behaviour", {"delay": api_delay})
    tag = f"tp{api_delay:g}"
    state = wd / f"dispatch-{tag}.db"
    env = live_env(fake, BRIDGE_CONCURRENCY=str(conc), BRIDGE_RATE_LIMIT="1000")
    bridge = start_bridge(wd, f"bridge-throughput-{tag}", rules, state, env)
    try:
        per_webhook = 10
        t0 = time.perf_counter()
        queued = run_load(bridge.url + WEBHOOK,
                          lambda i: dispatch_payload(tag, i, per_webhook),
                          clients=4, total=ops // per_webhook)
        queue_time = time.perf_counter() - t0
        if queued.errors:
            raise RuntimeError(f"queueing failed: {queued.errors[:3]}")
        expected = (ops // per_webhook) * per_webhook
        ideal_time = expected / (conc / max(api_delay, 0.01))
        wait_until(
            lambda: audit_query(state, "SELECT count(*) FROM audit WHERE event = 'outcome'")[0][0]
            >= expected,
            max(60.0, 10 * ideal_time), f"{expected} outcomes", interval=0.2,
        )
        ends = [ts for (ts,) in audit_query(
            state, "SELECT ts FROM audit WHERE event = 'outcome' ORDER BY ts")]
        outcomes = Counter(dict(audit_query(
            state, "SELECT outcome, count(*) FROM audit WHERE event = 'outcome' GROUP BY outcome")))
        calls = [c for c in fake_calls(fake) if c.get("finished")]
    finally:
        bridge.stop()
    outcome_rate = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 else float("nan")
    start = min(c["time"] for c in calls)
    end = max(c["finished"] for c in calls)
    busy = sum(c["finished"] - c["time"] for c in calls)
    events = sorted([(c["time"], 1) for c in calls] + [(c["finished"], -1) for c in calls])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    log(f"  dispatch throughput at {api_delay:g} s: {outcome_rate:.1f} ended/s, "
        f"in flight {busy / (end - start):.2f}")
    return {
        "queue_time": queue_time, "outcome_rate": outcome_rate,
        "fake_rate": len(calls) / (end - start), "in_flight": busy / (end - start),
        "max_in_flight": peak, "call_time": busy / len(calls), "outcomes": outcomes,
    }


# ---------------------------------------------------------------------------------------------
# Section 2: webhooks under load (and the memory of section 4)


@dataclass
class Payload:
    name: str
    rules: int
    alerts: int


def section_webhooks(cfg: Config, report: Report, wd: Path,
                     memory: list[tuple[Any, ...]]) -> None:
    """Runs section 2, adding the memory rows of section 4 to `memory` as it goes."""
    payloads = (Payload("typical", 50, 3), Payload("storm", 500, 500))
    baseline = start_baseline(wd)
    settle_workers(baseline)
    memory.append(("baseline (bare Flask)", "idle after start", *fmt_rss(worker_rss(baseline))))
    results: dict[tuple[str, str, str], LoadResult] = {}
    answers: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for p in payloads:
        rules = wd / f"rules-{p.name}.yaml"
        rules.write_text(rules_yaml(p.rules))
        body = alertmanager_payload([alert_labels(i, p.rules) for i in range(p.alerts)])
        sizes[p.name] = len(body)
        bridge = start_bridge(wd, f"bridge-{p.name}", rules, wd / f"state-{p.name}.db", {})
        try:
            settle_workers(bridge)
            memory.append((f"bridge, {p.name} rules ({p.rules})", "idle after start",
                           *fmt_rss(worker_rss(bridge))))
            answer = requests.post(bridge.url + WEBHOOK, data=body, timeout=60,
                                   headers={"Content-Type": "application/json"})
            answer.raise_for_status()
            doc = answer.json()
            answers[p.name] = ", ".join(f"{k} {v}" for k, v in doc["summary"].items())
            if not doc.get("dry_run"):
                raise RuntimeError("the section 2 bridge is expected to run in dry run")
            servers = (("baseline", baseline), ("bridge", bridge))
            for rnd in range(cfg.load_rounds):
                for client in CLIENTS:
                    # Alternate the order, so drift on a shared machine favours neither.
                    for name, server in servers if rnd % 2 == 0 else servers[::-1]:
                        r = run_load(server.url + WEBHOOK, lambda i, b=body: b,
                                     clients=cfg.load_clients, duration=cfg.load_duration,
                                     warmup=cfg.load_warmup, client=client)
                        key = (p.name, client, name)
                        results[key] = results.get(key, LoadResult()).merge(r)
                        log(f"  {p.name} {client:11} {name:8} round {rnd}: {r.rate:.1f} req/s "
                            f"p50 {ms(r.pct(50))} p99 {ms(r.pct(99))} ms")
            memory.append((f"bridge, {p.name} rules ({p.rules})",
                           f"after the {p.name} load", *fmt_rss(worker_rss(bridge))))
            size = sum(f.stat().st_size for f in wd.glob(f"state-{p.name}.db*")) / 2**20
            answers[p.name] += f"; state file after the load: {size:.0f} MiB"
        finally:
            bridge.stop()
    memory.append(("baseline (bare Flask)", "after both loads", *fmt_rss(worker_rss(baseline))))
    baseline.stop()

    rows = []
    for p in payloads:
        for client in CLIENTS:
            for name in ("baseline", "bridge"):
                r = results[(p.name, client, name)]
                rows.append((
                    f"{p.name} ({p.alerts} alerts, {sizes[p.name] / 1024:.0f} KiB; "
                    f"{p.rules} rules)", client, name, r.count, f"{r.rate:.1f}",
                    ms(r.pct(50)), ms(r.pct(99)), ms(max(r.latencies, default=float("nan"))),
                    f"{r.client_cpu / r.elapsed:.2f}" if r.elapsed else "—",
                    f"{r.count / r.client_cpu:.0f}" if r.client_cpu else "—", len(r.errors),
                ))
    report.add(
        f"{cfg.load_clients} concurrent clients (threads, one keep-alive connection each) send "
        f"the same payload for {cfg.load_duration:g} s per run after a {cfg.load_warmup:g} s "
        f"warm-up, {cfg.load_rounds} run(s) per server and client, bridge and baseline "
        f"alternating. The bridge runs in **dry run** (no API token): every alert matches "
        f"exactly one rule (`alertname = \"A<i>\"` plus a severity regex) and yields a "
        f"`dry_run` decision, audited in SQLite (one row per decision; the webhooks a worker "
        f"takes at once share a transaction). The baseline is benchmarks/baseline_app.py "
        f"(`request.get_json()`, answer 200) under `python -m gunicorn` with the bridge's "
        f"options (2 workers, gthread, 4 threads, timeout 60).\n\n"
        f"Two load generators: `requests` (a requests.Session per thread, the usual Python client) "
        f"and `http.client` (a bare connection per thread, several times cheaper per request). "
        f"\"Client CPU\" is what the load generator itself used, in cores, and \"client "
        f"ceiling\" the rate it could drive with one whole core (requests ÷ its CPU seconds). "
        f"Its threads share one GIL, so a client near 1 core is at its limit, and the server "
        f"it measured was not the bottleneck: the ratio to such a baseline flatters the "
        f"bridge. On a 2-core machine the load generator also competes with the servers for "
        f"CPU.\n\n"
        + table(("payload", "client", "server", "requests", "req/s", "p50 ms", "p99 ms",
                 "max ms", "client CPU", "client ceiling req/s", "errors"), rows)
        + "\n\nOne answer of the bridge: "
        + "; ".join(f"{name}: {text}" for name, text in answers.items()) + "."
    )

    def r(payload: str, client: str, server: str) -> LoadResult:
        return results[(payload, client, server)]

    columns = [(p.name, c) for p in payloads for c in CLIENTS]
    report.add(table(
        ("ratio bridge ÷ baseline", *(f"{p} ({c})" for p, c in columns)),
        [
            ("throughput", *(ratio(r(p, c, "bridge").rate / r(p, c, "baseline").rate)
                             for p, c in columns)),
            ("p50 latency", *(ratio(r(p, c, "bridge").pct(50) / r(p, c, "baseline").pct(50))
                              for p, c in columns)),
            ("p99 latency", *(ratio(r(p, c, "bridge").pct(99) / r(p, c, "baseline").pct(99))
                              for p, c in columns)),
        ],
    ))
    report.add(
        "Tail spread, p99 ÷ p50 of the same server (a server that is uniformly slower keeps "
        "its spread; a much wider one means some requests wait far longer than others): "
        + "; ".join(
            f"{p} ({c}): bridge {ratio(r(p, c, 'bridge').pct(99) / r(p, c, 'bridge').pct(50))}"
            f", baseline {ratio(r(p, c, 'baseline').pct(99) / r(p, c, 'baseline').pct(50))}"
            for p, c in columns
        ) + "."
    )
    for client in CLIENTS:
        base, bridge_r = r("typical", client, "baseline"), r("typical", client, "bridge")
        value = bridge_r.rate / base.rate
        cores = base.client_cpu / base.elapsed if base.elapsed else 0.0
        report.target(Target(
            "2", f"typical payload (3 alerts, 50 rules): throughput ≥ 50% of the baseline's "
                 f"[client: {client}]",
            f"{bridge_r.rate:.1f} vs {base.rate:.1f} req/s (against the baseline the load "
            f"generator used {cores:.2f} cores{': client-bound' if cores >= 0.8 else ''})",
            value, value >= 0.5,
        ))
    for client in CLIENTS:
        base, bridge_r = r("storm", client, "baseline"), r("storm", client, "bridge")
        value = bridge_r.pct(99) / base.pct(99)
        report.target(Target(
            "2", f"storm payload (500 alerts, 500 rules): p99 ≤ 20 × the baseline's p99 "
                 f"[client: {client}]",
            f"{ms(bridge_r.pct(99))} vs {ms(base.pct(99))} ms", value, value <= 20,
        ))


def live_storm(cfg: Config, report: Report, wd: Path, fake: Server) -> None:
    """Storm webhooks one after the other to a live bridge: does each cost more than the last?"""
    fake_control(fake, "POST", "reset")
    rules = wd / "rules-live-storm.yaml"
    rules.write_text(rules_yaml(500, operation="sync"))
    state = wd / "state-live-storm.db"
    bridge = start_bridge(wd, "bridge-live-storm", rules, state, live_env(fake))
    times: list[float] = []
    try:
        settle_workers(bridge)
        with requests.Session() as session:
            for k in range(cfg.live_storms):
                body = alertmanager_payload(
                    [alert_labels(i, 500, device=f"live{k}-{i}") for i in range(500)]
                )
                t0 = time.perf_counter()
                answer = session.post(bridge.url + WEBHOOK, data=body, timeout=120,
                                      headers={"Content-Type": "application/json"})
                times.append(time.perf_counter() - t0)
                answer.raise_for_status()
        counts = verdicts(state)
        calls = len(fake_calls(fake))
    finally:
        bridge.stop()
        fake_control(fake, "POST", "reset")
    shown = sorted({0, len(times) // 2, len(times) - 1})
    report.add(
        f"### 2b. Storm, live: does a webhook cost more as history accumulates? (no target)\n\n"
        f"{cfg.live_storms} storm webhooks (500 alerts on devices never seen before, 500 "
        f"rules) sent one after the other, by one client, to a fresh **live** bridge against "
        f"the fake API (default dispatch settings; its dispatcher sends meanwhile). Verdicts: "
        f"{show_counts(counts)}; API calls during the run: {calls}.\n\n"
        + table(("webhook", "latency ms"), [(f"#{i + 1}", ms(times[i])) for i in shown])
        + f"\n\nLast ÷ first: {ratio(times[-1] / times[0])}."
    )
    log(f"  live storm: first {ms(times[0])} ms, last {ms(times[-1])} ms")


def storm_one_at_a_time(cfg: Config, report: Report, wd: Path, fake: Server) -> None:
    """Issue 15, target 3: a 500-alert webhook against 500 rules, one at a time, to a live
    bridge, beside the bare Flask app parsing and answering the same payload."""
    fake_control(fake, "POST", "reset")
    rules = wd / "rules-storm-seq.yaml"
    rules.write_text(rules_yaml(500, operation="sync"))
    state = wd / "state-storm-seq.db"
    baseline = start_baseline(wd)
    bridge = start_bridge(wd, "bridge-storm-seq", rules, state, live_env(fake))
    times: dict[str, list[float]] = {"baseline": [], "bridge": []}
    servers = (("baseline", baseline), ("bridge", bridge))
    try:
        settle_workers(baseline)
        settle_workers(bridge)
        sessions = {name: requests.Session() for name, _ in servers}
        # Warm-up rounds (imports, templates, the first transactions) are not counted.
        for k in range(-cfg.storm_warmup, cfg.storm_samples):
            # Devices never seen before: every alert queues an operation (the costly path),
            # as in a storm of new alerts; the same body goes to the baseline.
            body = alertmanager_payload(
                [alert_labels(i, 500, device=f"seq{k}-{i}") for i in range(500)]
            )
            # Alternate the order, so drift on a shared machine favours neither.
            for name, server in servers if k % 2 == 0 else servers[::-1]:
                t0 = time.perf_counter()
                answer = sessions[name].post(server.url + WEBHOOK, data=body, timeout=120,
                                             headers={"Content-Type": "application/json"})
                took = time.perf_counter() - t0
                answer.raise_for_status()
                if k >= 0:
                    times[name].append(took)
        for session in sessions.values():
            session.close()
        counts = verdicts(state)
    finally:
        bridge.stop()
        baseline.stop()
        fake_control(fake, "POST", "reset")
    rows = [(name, len(t), ms(percentile(t, 50)), ms(percentile(t, 99)), ms(min(t)))
            for name, t in times.items()]
    med = percentile(times["bridge"], 50) / percentile(times["baseline"], 50)
    p99 = percentile(times["bridge"], 99) / percentile(times["baseline"], 99)
    report.add(
        f"{cfg.storm_samples} storm webhooks (500 alerts, 164 KiB, each alert on a device "
        f"never seen before, so each queues an operation; 500 rules) sent **one at a time** "
        f"by one client (a requests.Session) to a fresh **live** bridge (SQLite state, 2 "
        f"workers, against the fake API: its dispatcher sends meanwhile at the default rate "
        f"limit), and the same bodies to the bare Flask baseline (`request.get_json()`, "
        f"answer 200), alternating, after {cfg.storm_warmup} warm-up webhook(s) each. "
        f"Verdicts (warm-up included): {show_counts(counts)}.\n\n"
        + table(("server", "webhooks", "p50 ms", "p99 ms", "min ms"), rows)
        + f"\n\nBridge ÷ baseline: p50 {ratio(med)}, p99 {ratio(p99)}."
    )
    log(f"  storm one at a time: bridge p50 {ms(percentile(times['bridge'], 50))} ms, "
        f"baseline p50 {ms(percentile(times['baseline'], 50))} ms: {med:.1f}x")
    report.target(Target(
        "2c", "storm payload (500 alerts, 500 rules) one at a time to a live bridge: p50 ≤ 10 "
              "× the baseline's p50",
        f"{ms(percentile(times['bridge'], 50))} vs {ms(percentile(times['baseline'], 50))} ms "
        f"(p99 {ms(percentile(times['bridge'], 99))} vs "
        f"{ms(percentile(times['baseline'], 99))} ms, {ratio(p99)})", med, med <= 10,
    ))


def fmt_rss(values: list[float]) -> tuple[str, str]:
    return (" / ".join(f"{v:.1f}" for v in values) or "—",
            f"{sum(values) / len(values):.1f}" if values else "—")


# ---------------------------------------------------------------------------------------------
# Section 3: the decision core


#: How the rules of section 3 pick their alerts (see _gen.KEYS), as the table names them.
CORE_KEYS = {
    "alertname": '`alertname = "A<i>"`',
    "team": '`team = "t<i>"` (another label)',
    "prefix": '`team =~ "t<i>(-.+)?"` (a regex: indexed by its prefix)',
    "regex": '`team =~ "(?i)t<i>(-.+)?"` (a regex no key indexes: joined in alternations)',
    "unindexed": '`team =~ "(?P<team>t<i>)(-.+)?"` (a regex that joins no alternation: no index)',
}


def section_core(cfg: Config, report: Report) -> None:
    results, parse_times = run_core(cfg.core_rules, cfg.core_alerts, budget=cfg.core_budget,
                                    log=log, keys=tuple(CORE_KEYS), passes=cfg.core_passes)
    by_key = {(r.by, r.rules, r.alerts): r for r in results}
    rows = []
    for by, shown in CORE_KEYS.items():
        for n_rules in cfg.core_rules:
            cells = []
            for n_alerts in cfg.core_alerts:
                r = by_key[(by, n_rules, n_alerts)]
                cells.append(f"{r.per_alert * 1e6:.1f}" if r.per_alert is not None
                             else f"— ({r.note})")
            rows.append((shown, f"{n_rules:,}", *cells, f"{parse_times[(by, n_rules)]:.2f}"))
    report.add(
        "CPU time per alert of `bridge.decide.decide(alerts, ruleset, <no state>, now, "
        "dry_run=True)`, best of up to 7 batches of ≥ 0.1 s (CPU time of the benchmark "
        "process, so other processes on the machine do not count), and of "
        f"{cfg.core_passes} pass(es) over the grid, rule counts ascending then descending. "
        "Rule i picks its alerts by one of five matchers: an equality on `alertname`, an "
        "equality on another label (`team`), a regex that is not a list of literals but starts "
        "with literal text (`t<i>`), which indexes it by that prefix, the same regex "
        "case-insensitive, which no key indexes (the index joins such regexes into "
        "alternations of 32 and runs those), or the same regex with a named group, which "
        "cannot join an alternation (two would name the same group), so every alert tries "
        "every such rule; each rule also has "
        "`severity =~ \"critical|page\"` and renders `{{ labels.device }}`. Alert j matches "
        "rule j mod rules, so every alert gets one `dry_run` decision. Rulesets come from "
        "`bridge.rules.parse_rules` on generated YAML; the last column is that parse's CPU "
        "time. Calls estimated to take more than "
        f"{cfg.core_budget:g} s are skipped.\n\n"
        + table(("rules match by", "rules",
                 *(f"µs/alert, {n:,} alert{'s' if n > 1 else ''}" for n in cfg.core_alerts),
                 "parse CPU s"), rows)
    )
    mid = cfg.core_alerts[1] if len(cfg.core_alerts) > 1 else cfg.core_alerts[0]

    def cost(by: str, n: int) -> float:
        r = by_key[(by, n, mid)]
        return r.per_alert if r.per_alert is not None else float("nan")

    steps = list(zip(cfg.core_rules, cfg.core_rules[1:], strict=False))
    report.add(table(
        ("rules step", *(f"{shown}: cost per alert ({mid} alerts)" for shown in CORE_KEYS.values()),
         "rules growth"),
        [(f"{a:,} → {b:,}", *(ratio(cost(by, b) / cost(by, a)) for by in CORE_KEYS),
          ratio(b / a)) for a, b in steps],
    ))
    low, high = 100, cfg.core_rules[-1]
    for by in ("alertname", "team", "prefix"):
        value = cost(by, high) / cost(by, low)
        report.target(Target(
            "3", f"rules keyed by {CORE_KEYS[by]}: {high:,} rules cost ≤ 2 × what {low} rules "
                 f"cost per alert",
            f"{cost(by, high) * 1e6:.1f} vs {cost(by, low) * 1e6:.1f} µs/alert", value,
            value <= 2,
        ))
    for by in ("regex", "unindexed"):
        growth = [(a, b, cost(by, b) / cost(by, a)) for a, b in steps]
        worst_step = max(growth, key=lambda s: s[2] / (s[1] / s[0]), default=None)
        worst = worst_step[2] / (worst_step[1] / worst_step[0]) if worst_step else float("nan")
        report.target(Target(
            "3", f"rules no key indexes, {CORE_KEYS[by]}: cost per alert grows no worse than "
                 "linearly in rules",
            (f"worst step {worst_step[0]:,} → {worst_step[1]:,} rules: cost per alert "
             f"{ratio(worst_step[2])} for {ratio(worst_step[1] / worst_step[0])} the rules"
             if worst_step else "—"), worst, worst <= 1.0,
        ))


# ---------------------------------------------------------------------------------------------
# Section 5: loading rules


def section_load(cfg: Config, report: Report, wd: Path) -> None:
    results = []
    for n in cfg.load_rules:
        for by in ("team", "alertname"):
            path = wd / f"rules-load-{by}-{n}.yaml"
            path.write_text(rules_yaml(n, by=by))
            r = compare_check(path, by, n, ROOT, cfg.load_repeats)
            results.append(r)
            log(f"  check {by:9} rules={n:<6} {r.check.cpu:.2f} s CPU, libyaml alone "
                f"{r.libyaml.cpu:.2f} s: {r.ratio:.2f}×")
    report.add(
        f"`python -m bridge check FILE` (what `alert-bridge check` runs) beside a Python that "
        f"only reads the same file with libyaml, `yaml.load(text, Loader=yaml.CSafeLoader)`: "
        f"each a fresh process, imports included, best of {cfg.load_repeats} alternating runs, "
        f"CPU seconds (user + system of the child) and wall seconds. Rule i matches "
        f'`team = "t<i>"` or `alertname = "A<i>"` plus `severity =~ "critical|page"`, and '
        f"renders `{{{{ labels.device }}}}`, which no matcher guarantees: `check` prints one "
        f"warning per rule, and the time includes them.\n\n"
        + table(("rules keyed by", "rules", "libyaml alone CPU s", "check CPU s",
                 "check ÷ libyaml", "libyaml wall s", "check wall s", "check says"),
                [(f"`{r.by}`", f"{r.rules:,}", f"{r.libyaml.cpu:.2f}", f"{r.check.cpu:.2f}",
                  ratio(r.ratio), f"{r.libyaml.wall:.2f}", f"{r.check.wall:.2f}",
                  r.summary.split(": ", 1)[-1].split(" (")[0]) for r in results])
    )
    for r in results:
        if r.rules == cfg.load_rules[-1]:
            report.target(Target(
                "5", f"`check` on {r.rules:,} rules keyed by {r.by} ≤ 2 × libyaml alone",
                f"{r.check.cpu:.2f} vs {r.libyaml.cpu:.2f} CPU s", r.ratio, r.ratio <= 2,
            ))
    held = []
    for n in cfg.memory_rules:
        path = wd / f"rules-hold-{n}.yaml"
        path.write_text(rules_yaml(n, by="team"))
        held.append(hold_rules(path, ROOT))
        log(f"  holding {n} rules: {held[-1].rss_mib:.1f} MiB")
    report.add(
        "Memory of a process that imports what a worker imports (`bridge.app`), loads the "
        "rules (keyed by `team`) and collects its garbage: VmRSS then, and VmHWM, the peak "
        "while loading, MiB.\n\n"
        + table(("rules", "RSS MiB", "peak MiB", "RSS ÷ RSS with the fewest rules"),
                [(f"{h.rules:,}", f"{h.rss_mib:.1f}", f"{h.peak_mib:.1f}",
                  ratio(h.rss_mib / held[0].rss_mib)) for h in held])
    )
    low, high = held[0], held[-1]
    value = high.rss_mib / low.rss_mib
    report.target(Target(
        "5", f"memory holding {high.rules:,} rules ≤ 2 × holding {low.rules}",
        f"{high.rss_mib:.1f} vs {low.rss_mib:.1f} MiB", value, value <= 2,
    ))


# ---------------------------------------------------------------------------------------------


#: The parts --only can name, in run order: what each runs.
PARTS = {
    "dispatch": "section 1 (dispatch latency and throughput)",
    "webhooks": "sections 2 and 4 (webhooks under load, memory per worker)",
    "storm": "section 2c (storm webhooks one at a time to a live bridge, vs the baseline)",
    "match": "section 3 (the decision core: cost per alert by rule count)",
    "load": "section 5 (loading rules: check vs libyaml, memory holding rules)",
    "replicas": "section 6 (reaction time, webhooks/s and dispatch throughput, SQLite vs "
                "PostgreSQL replicas)",
    "peer": "section 7 (beside Event-Driven Ansible's ansible-rulebook, installed in a cache "
            "venv)",
    "idle": "section 8 (idle CPU: SQLite and PostgreSQL bridges beside a bare Flask app)",
}


def parse_only(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(
            f"unknown part {', '.join(unknown) or 'none'} (expected some of: {', '.join(PARTS)})"
        )
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="parts for --only: " + "; ".join(f"{k}: {v}" for k, v in PARTS.items()),
    )
    parser.add_argument("--quick", action="store_true", help="shorten every part (smoke run)")
    parser.add_argument("--only", type=parse_only, default=None, metavar="PART,...",
                        help="run only these parts and replace only their sections (and "
                             "their rows of the targets table) in --out, keeping the rest")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="where to write the report (default: docs/benchmarks.md)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (logs, state files) for inspection")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    parts = args.only or tuple(PARTS)
    # Ctrl-C and SIGTERM end the run through the finally below, which kills the servers
    # (SIGINT too when started in the background, where it is inherited as ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    wd = Path(tempfile.mkdtemp(prefix="alert-bridge-bench-"))
    started = time.monotonic()
    command = "python benchmarks/run.py" + (" --quick" if cfg.quick else "") + (
        f" --only {','.join(args.only)}" if args.only else "")
    report = Report(refreshed=_refreshed_note(command, wd) if args.only else "")
    if not args.only:
        report.add(_preamble(command, cfg, wd))
    failed: list[str] = []
    try:
        run_parts(cfg, report, wd, parts, failed)
        report.add("## Targets\n\n" + report.targets_table())
        if not args.only:
            report.add(f"Whole run: {(time.monotonic() - started) / 60:.1f} minutes.")
    except BaseException:
        log(f"interrupted; logs and state files are kept in {wd}")
        args.keep = True
        raise
    finally:
        stop_all()
        if failed:
            args.keep = True
        if not args.keep:
            shutil.rmtree(wd, ignore_errors=True)
        elif wd.exists():
            log(f"work directory (logs, state files): {wd}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    analysis = (Path(__file__).parent / "ANALYSIS.md").read_text()
    text = report.text().rstrip("\n") + "\n\n" + analysis
    if args.only and args.out.exists():
        text = merge_reports(args.out.read_text(), text)
    args.out.write_text(text)
    log(f"wrote {args.out}")
    if failed:
        log(f"sections that failed: {', '.join(failed)}")
    return 1 if failed else 0


def _preamble(command: str, cfg: Config, wd: Path) -> str:
    return (
        f"# alert-bridge benchmarks\n\n"
        f"Generated by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        + (" (**quick smoke run: short and noisy, not for conclusions**)" if cfg.quick else "")
        + ". Rerun it to refresh this file; numbers from another machine or another run are "
        "comparable only as ratios. `--only PART,...` reruns some parts and replaces only "
        "their sections.\n\n"
        + table(("machine", ""), machine(ROOT, wd))
        + "\n\nEvery generated rules file "
        + ("sets the bridge's guardrails out of the way (`budgets: []`, storm `breaker` at "
           "100,000,000 operations per minute): these benchmarks measure the pipeline, not "
           "the guards." if guardrails_off() else "is plain: this bridge has no budgets or "
           "storm breaker.")
    )


def _refreshed_note(command: str, wd: Path) -> str:
    facts = dict(machine(ROOT, wd))
    # Sessions run on other machines than the one in the header: say which this was.
    return (f"*Refreshed alone by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
            f"({facts['CPUs']} × {facts['CPU model']}; load average at start "
            f"{facts['load average at start']}; bridge code {facts['bridge code']}).*")


def run_parts(cfg: Config, report: Report, wd: Path, parts: tuple[str, ...],
              failed: list[str]) -> None:
    def guarded(section: str, fn: Callable[..., object], *fn_args: object) -> None:
        """Run one section; a failure is reported (with the servers' errors) and the run goes
        on, so one broken part of a bridge under development does not hide the others."""
        since = time.time()
        try:
            fn(*fn_args)
        except Exception as exc:
            failed.append(section)
            log(f"section {section} failed:\n{traceback.format_exc()}")
            report.add(f"**Section {section} failed**: `{type(exc).__name__}: {exc}`"
                       + server_errors(wd, since))
            report.target(Target(section, "the targets of this section", "failed (see above)",
                                 float("nan"), None))

    fake = start_fake_api(wd, FAKE_TOKEN) \
        if {"dispatch", "webhooks", "storm", "replicas", "idle"} & set(parts) else None
    rules = wd / "dispatch-rules.yaml"
    rules.write_text(guardrails_off() + DISPATCH_RULES)
    # What the sections on live bridges beside the fake take: the rules, the bridge's
    # settings, and the calls the fake received.
    live = () if fake is None else (rules, live_env(fake), lambda: fake_calls(fake))
    if "dispatch" in parts:
        assert fake is not None
        log("section 1: dispatch")
        report.section("## 1. Dispatch (issue 3)")
        guarded("1a", dispatch_latency, cfg, report, wd, fake, rules)
        guarded("1b", dispatch_throughput, cfg, report, wd, fake, rules)
    memory: list[tuple[Any, ...]] = []
    if "webhooks" in parts:
        assert fake is not None
        log("section 2: webhooks under load")
        report.section("## 2. Webhooks under load (issue 4)")
        guarded("2", section_webhooks, cfg, report, wd, memory)
        guarded("2b", live_storm, cfg, report, wd, fake)
    if "storm" in parts:
        assert fake is not None
        log("section 2c: storm webhooks one at a time")
        report.section("## 2c. Storm webhooks one at a time (issue 15, target 3)")
        guarded("2c", storm_one_at_a_time, cfg, report, wd, fake)
    if "replicas" in parts:
        assert fake is not None
        log("section 6: reaction time, one server and several replicas")
        report.section("## 6. Several replicas on PostgreSQL (issue 12)")
        guarded("6", section_replicas, cfg.quick, report, wd, *live)
        guarded("6c", section_replica_dispatch, cfg.quick, report, wd, *live,
                lambda method, path, body: fake_control(fake, method, path, body))
    if "idle" in parts:
        assert fake is not None
        log("section 8: idle cost")
        report.section("## 8. Idle cost (issue 15)")
        guarded("8", section_idle, cfg.quick, report, wd, *live)
    if fake is not None:
        fake.stop()
    if "match" in parts:
        log("section 3: decision core")
        report.section("## 3. The decision core alone (no HTTP, no store)")
        guarded("3", section_core, cfg, report)
    if "webhooks" in parts:
        report.section("## 4. Memory per worker")
        report.add(
            "VmRSS of each gunicorn worker (children of the master, from /proc), MiB, right "
            "after start (workers booted, nothing served) and after the section 2 load.\n\n"
            + table(("server", "when", "RSS per worker (MiB)", "mean"), memory)
        )
    if "load" in parts:
        log("section 5: loading rules")
        report.section("## 5. Loading rules (issue 15)")
        guarded("5", section_load, cfg, report, wd)
    if "peer" in parts:
        log("section 7: beside Event-Driven Ansible")
        report.section("## 7. Beside Event-Driven Ansible (issue 15)")
        guarded("7", section_peer, cfg.quick, report, wd, rules, log)


if __name__ == "__main__":
    sys.exit(main())
