"""Prometheus metrics at GET /metrics: exact counts over real HTTP, state read at scrape time,
exact totals across gunicorn workers, no secret in the output, and the shipped alert rules."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from bridge.auth import InboundAuth
from bridge.cli import main
from bridge.client import Secret
from bridge.metrics import MULTIPROC_ENV, Metrics
from bridge.store import SqliteStore, StoreError
from bridge.vocab import Flag
from tests.conftest import RULES, TOKEN, Bridge, Fake
from tests.helpers import (
    ROOT,
    BridgeProcess,
    Samples,
    make_disk_full,
    need,
    payload,
    scrape,
    value,
    wait_until,
)

ALERT_RULES = ROOT / "docs" / "prometheus-alerts.yml"
WEBHOOK_TOKEN = "wh-Zq81-never-in-metrics"
BASIC_PASSWORD = "pw-Kx55-never-in-metrics"
HMAC_SECRET = "hmac-Lp09-never-in-metrics"
ADMIN_TOKEN = "adm-Rt42-never-in-metrics"

RESOLVED = payload("alertmanager_resolved.json")  # 1 alert: reconf-on-resolve, execute
MULTI = payload("alertmanager_firing_multi.json")  # 3 alerts: sync-high-load, execute
LEGACY = payload("grafana_legacy_alerting_evalmatch_tags.json")  # 1 alert: legacy-cpu, execute
UNIFIED = payload("grafana_unified_resolved.json")  # 1 alert: no_match

def by_labels(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """Every sample of `name`, keyed by the values of `keys`; zero samples left out."""
    found = {}
    for (sample, labels), v in samples.items():
        if sample == name and v:
            found[tuple(dict(labels)[k] for k in keys)] = v
    return found


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the bridge in this process ------------------------------------------------------------


def test_webhooks_are_counted_by_source_and_answer_code(
    make_bridge: Callable[..., Bridge], fake: Fake, mocker: Any
) -> None:
    bridge = make_bridge(auth=InboundAuth(bearer_tokens=(Secret(WEBHOOK_TOKEN),)),
                         max_alerts=2, max_body=64 * 1024)
    ok = bearer(WEBHOOK_TOKEN)
    for path, body in (("/webhook/alertmanager", RESOLVED), ("/webhook/grafana", LEGACY),
                       ("/webhook", UNIFIED)):
        assert bridge.post(path, body, headers=ok).status_code == 200

    # The dispatcher sends the two operations: outcomes, latency and answers.
    def dispatched() -> Samples | None:
        got = scrape(bridge.url)
        done = by_labels(got, "alert_bridge_operation_outcomes_total", "operation", "outcome")
        return got if done == {("reconf", "succeeded"): 1, ("sync", "succeeded"): 1} else None

    samples = wait_until(dispatched, what="two outcomes in /metrics")
    for operation in ("reconf", "sync"):
        assert value(samples, "alert_bridge_api_call_duration_seconds_count",
                     operation=operation) == 1
        assert value(samples, "alert_bridge_api_call_duration_seconds_bucket",
                     operation=operation, le="+Inf") == 1
        assert 0 < value(samples, "alert_bridge_api_call_duration_seconds_sum",
                         operation=operation) < 5  # type: ignore[operator]
    assert by_labels(samples, "alert_bridge_api_responses_total", "status") == {("200",): 2}
    assert len(fake.calls()) == 2

    refused = [
        ("/webhook/alertmanager", b"not json", ok, 400),
        ("/webhook", b"{}", ok, 400),
        ("/webhook/grafana", RESOLVED, ok, 400),  # an Alertmanager body on the Grafana URL
        ("/webhook/alertmanager", RESOLVED, {}, 401),
        ("/webhook", RESOLVED, bearer("wrong"), 401),
        ("/webhook/grafana", b"x" * (64 * 1024 + 1), ok, 413),
        ("/webhook", MULTI, ok, 413),  # 3 alerts, more than max_alerts: the format is known
        ("/webhook/alertmanager", RESOLVED, {**ok, "Content-Type": "text/plain"}, 415),
    ]
    for path, body, headers, code in refused:
        assert bridge.post(path, body, headers=headers).status_code == code, (path, code)
    # Neither a webhook nor an answer to one: not counted.
    assert requests.get(bridge.url + "/webhook", timeout=5).status_code == 405
    assert bridge.post("/webhook/other", RESOLVED, headers=ok).status_code == 404

    make_disk_full(mocker, bridge.context.store)
    assert bridge.post("/webhook", UNIFIED, headers=ok).status_code == 503
    mocker.stopall()

    samples = scrape(bridge.url)
    assert by_labels(samples, "alert_bridge_webhooks_total", "source", "code") == {
        ("alertmanager", "200"): 1, ("grafana-legacy", "200"): 1, ("grafana", "200"): 1,
        ("alertmanager", "400"): 1, ("unknown", "400"): 1, ("grafana", "400"): 1,
        ("alertmanager", "401"): 1, ("unknown", "401"): 1,
        ("grafana", "413"): 1, ("alertmanager", "413"): 1,
        ("alertmanager", "415"): 1,
        ("grafana", "503"): 1,
    }
    assert value(samples, "alert_bridge_webhook_auth_failures_total") == 2
    # Evaluated and decided: only what was committed (not the 413 nor the 503).
    assert by_labels(samples, "alert_bridge_alerts_evaluated_total", "source") == {
        ("alertmanager",): 1, ("grafana-legacy",): 1, ("grafana",): 1}
    assert by_labels(samples, "alert_bridge_decisions_total", "rule", "operation",
                     "verdict") == {
        ("reconf-on-resolve", "reconf", "execute"): 1, ("legacy-cpu", "sync", "execute"): 1,
        ("", "", "no_match"): 1}


def test_repeats_and_failures_are_counted_per_verdict_outcome_and_status(
    make_bridge: Callable[..., Bridge], fake: Fake
) -> None:
    bridge = make_bridge(retry_base=0.05, max_attempts=2)
    fake.behave(status=503)  # both attempts fail: one attempt answer, then the outcome
    bridge.post("/webhook", RESOLVED)
    bridge.post("/webhook", RESOLVED)  # the same alert again: cooldown
    bridge.outcomes(1)

    def failed() -> Samples | None:
        got = scrape(bridge.url)
        done = by_labels(got, "alert_bridge_operation_outcomes_total", "operation", "outcome")
        return got if done == {("reconf", "failed"): 1} else None

    samples = wait_until(failed, what="the failed outcome in /metrics")
    assert by_labels(samples, "alert_bridge_decisions_total", "rule", "verdict") == {
        ("reconf-on-resolve", "execute"): 1, ("reconf-on-resolve", "cooldown"): 1}
    assert by_labels(samples, "alert_bridge_api_responses_total", "status") == {("503",): 2}
    assert value(samples, "alert_bridge_api_call_duration_seconds_count",
                 operation="reconf") == 2

    fake.server.reset()
    fake.behave(status=401, times=1)
    bridge.post("/webhook", MULTI)  # three syncs: the first is refused with 401
    wait_until(lambda: by_labels(scrape(bridge.url), "alert_bridge_api_responses_total",
                                 "status") == {("503",): 2, ("401",): 1, ("200",): 2},
               what="one 401 and two 200 answers")


def test_unanswered_calls_are_counted_by_kind(make_bridge: Callable[..., Bridge],
                                              fake: Fake) -> None:
    bridge = make_bridge(read_timeout=0.3)
    fake.behave(delay=1.0, times=1)
    bridge.post("/webhook", RESOLVED)  # reconf: a timeout is ambiguous, it ends unknown
    wait_until(lambda: by_labels(scrape(bridge.url), "alert_bridge_operation_outcomes_total",
                                 "operation", "outcome") == {("reconf", "unknown"): 1},
               what="the unknown outcome")
    samples = scrape(bridge.url)
    assert by_labels(samples, "alert_bridge_api_responses_total", "status") == {("timeout",): 1}


def test_state_gauges_are_read_from_the_store_at_scrape_time(
    make_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    rules = RULES.replace("    status: resolved\n", "    status: resolved\n"
                          "    require_approval: true\n")
    bridge = make_bridge(rules, start_dispatcher=False)
    state = bridge.settings.state_path

    def gauges() -> dict[str, float | None]:
        samples = scrape(bridge.url)
        names = ("paused", "breaker_open", "api_unauthorized", "dry_run", "rules_loaded",
                 "state_store_up", "reload_success")
        return {
            **{n: value(samples, f"alert_bridge_{n}") for n in names},
            **{f"queue_{s}": value(samples, "alert_bridge_queue_depth", state=s)
               for s in ("queued", "sending", "pending_approval")},
        }

    before = gauges()
    assert before == {"paused": 0, "breaker_open": 0, "api_unauthorized": 0, "dry_run": 0,
                      "rules_loaded": 4, "state_store_up": 1, "reload_success": 1,
                      "queue_queued": 0, "queue_sending": 0, "queue_pending_approval": 0}
    reload_time = value(scrape(bridge.url), "alert_bridge_reload_timestamp_seconds")
    assert reload_time is not None and abs(reload_time - time.time()) < 60

    bridge.post("/webhook", MULTI)  # three syncs, queued (no dispatcher runs)
    bridge.post("/webhook", RESOLVED)  # a reconf that waits for approval
    assert CliRunner().invoke(main, ["pause", "--state", state]).exit_code == 0
    other = SqliteStore(state)  # what another process (a worker, the CLI) would do
    other.set_flag(Flag.BREAKER_OPEN, time.time())
    other.set_flag(Flag.API_UNAUTHORIZED, time.time())
    assert gauges() == {**before, "paused": 1, "breaker_open": 1, "api_unauthorized": 1,
                        "queue_queued": 3, "queue_pending_approval": 1}

    assert CliRunner().invoke(main, ["resume", "--state", state]).exit_code == 0
    other.set_flag(Flag.API_UNAUTHORIZED, None)
    assert gauges() == {**before, "queue_queued": 3, "queue_pending_approval": 1}

    # The master records each reload in the store, as it refuses or accepts the file.
    other.set_flag(Flag.RELOAD_FAILED, time.time() + 100)
    samples = scrape(bridge.url)
    assert value(samples, "alert_bridge_reload_success") == 0
    assert value(samples, "alert_bridge_reload_timestamp_seconds") == reload_time
    other.set_flag(Flag.RELOAD_OK, 2_000_000_000.0)
    other.close()
    samples = scrape(bridge.url)
    assert value(samples, "alert_bridge_reload_success") == 1
    assert value(samples, "alert_bridge_reload_timestamp_seconds") == 2_000_000_000.0


def test_a_failing_store_leaves_metrics_up_and_says_so(bridge: Bridge, mocker: Any) -> None:
    store = bridge.context.store
    mocker.patch.object(store, "queue_depth", side_effect=StoreError("state store: locked"))
    samples = scrape(bridge.url)
    assert value(samples, "alert_bridge_state_store_up") == 0
    assert value(samples, "alert_bridge_queue_depth", state="queued") is None
    assert value(samples, "alert_bridge_rules_loaded") == 4


def test_readiness_and_the_store_gauge_say_when_the_store_cannot_be_written(
    bridge: Bridge, mocker: Any
) -> None:
    make_disk_full(mocker, bridge.context.store)  # reads still work
    ready = requests.get(bridge.url + "/-/ready", timeout=5)
    assert (ready.status_code, ready.json()) == (503, {
        "status": "not ready",
        "error": f"state store {bridge.settings.state_path}: database or disk is full"})
    assert value(scrape(bridge.url), "alert_bridge_state_store_up") == 0
    mocker.stopall()  # space freed
    assert requests.get(bridge.url + "/-/ready", timeout=5).status_code == 200
    assert value(scrape(bridge.url), "alert_bridge_state_store_up") == 1


def test_two_apps_in_one_process_keep_their_own_counts(
    make_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    first = make_bridge(dry_run=True)
    second = make_bridge(dry_run=True, state=tmp_path / "second.db")
    first.post("/webhook", RESOLVED)
    first.post("/webhook", RESOLVED)
    second.post("/webhook", RESOLVED)
    for bridge, n in ((first, 2), (second, 1)):
        samples = scrape(bridge.url)
        assert value(samples, "alert_bridge_webhooks_total", source="alertmanager",
                     code="200") == n
        assert value(samples, "alert_bridge_dry_run") == 1
        assert by_labels(samples, "alert_bridge_decisions_total", "verdict") == {
            ("dry_run",): n}


def test_secrets_never_appear_in_metrics(make_bridge: Callable[..., Bridge],
                                         fake: Fake) -> None:
    bridge = make_bridge(
        auth=InboundAuth(bearer_tokens=(Secret(WEBHOOK_TOKEN),),
                         basic_users=(("grafana", Secret(BASIC_PASSWORD)),),
                         hmac_secrets=(Secret(HMAC_SECRET),)),
        admin_auth=InboundAuth(bearer_tokens=(Secret(ADMIN_TOKEN),)),
    )
    fake.behave(status=401, times=1)  # the device API refuses the first call
    basic_credentials = base64.b64encode(f"grafana:{BASIC_PASSWORD}".encode()).decode()
    for headers in (bearer(WEBHOOK_TOKEN), {"Authorization": f"Basic {basic_credentials}"},
                    bearer(TOKEN), bearer(ADMIN_TOKEN),
                    {"X-Grafana-Alerting-Signature": HMAC_SECRET}):
        bridge.post("/webhook", RESOLVED, headers=headers)
    wait_until(lambda: value(scrape(bridge.url), "alert_bridge_api_unauthorized") == 1,
               what="the API's 401 in /metrics")
    bridge.post("/webhook", MULTI, headers=bearer(WEBHOOK_TOKEN))
    assert requests.post(bridge.url + "/api/operations/1/approve", headers=bearer("nope"),
                         timeout=5).status_code == 401
    assert requests.post(bridge.url + "/api/operations/1/approve", headers=bearer(TOKEN),
                         timeout=5).status_code == 401
    bridge.outcomes(4)
    wait_until(lambda: value(scrape(bridge.url), "alert_bridge_api_unauthorized") == 0,
               what="a later call to succeed")
    text = requests.get(bridge.url + "/metrics", timeout=10).text
    for secret in (TOKEN, WEBHOOK_TOKEN, BASIC_PASSWORD, basic_credentials, HMAC_SECRET,
                   ADMIN_TOKEN):
        assert secret not in text
    samples = scrape(bridge.url)
    assert by_labels(samples, "alert_bridge_api_responses_total", "status") == {
        ("401",): 1, ("200",): 3}
    assert value(samples, "alert_bridge_webhook_auth_failures_total") == 3
    assert value(samples, "alert_bridge_admin_auth_failures_total") == 2


def test_prometheus_client_is_not_imported_before_the_master_sets_its_directory() -> None:
    # It picks in-process or file-backed values once, at import: importing the bridge (as the
    # `serve` master does before it starts gunicorn) must leave that choice open.
    code = ("import sys, bridge.cli, bridge.server, bridge.app, bridge.metrics;"
            "sys.exit(any(m.startswith('prometheus_client') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0


def test_metrics_refuse_a_directory_set_after_prometheus_client_was_imported(
    bridge: Bridge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="imported before PROMETHEUS_MULTIPROC_DIR"):
        Metrics(bridge.context.store, dry_run=True,
                rules_loaded=0, started=0.0)


# -- under gunicorn, several workers -------------------------------------------------------


def metrics_dir(bridge: BridgeProcess) -> Path:
    found = re.search(r"metrics: multiprocess directory ([^\s\"]+)", bridge.log())
    assert found, bridge.log()
    return Path(found.group(1))


def webhooks_per_worker(directory: Path) -> dict[int, float]:
    """What each worker counted, from its own file (the sum is what a scrape shows)."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        counts[pid] = sum(
            s.value for m in MultiProcessCollector.merge([str(path)]) for s in m.samples
            if s.name == "alert_bridge_webhooks_total")
    return counts


def test_every_worker_answers_the_same_exact_totals(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake
) -> None:
    bridge = gunicorn_bridge(workers=3)
    directory = metrics_dir(bridge)
    assert directory.is_dir() and oct(directory.stat().st_mode & 0o777) == "0o700"
    wait_until(lambda: len(list(directory.glob("gauge_livemostrecent_*.db"))) == 3,
               what="three workers with their metrics")

    def post(_: int) -> int:
        with requests.Session() as s:  # a connection of its own
            return s.post(bridge.url + "/webhook/alertmanager", data=RESOLVED, timeout=30,
                          headers={"Content-Type": "application/json"}).status_code

    # Batches of simultaneous deliveries until at least two workers have taken some.
    sent = 0
    with ThreadPoolExecutor(12) as pool:
        for _ in range(10):
            assert list(pool.map(post, range(12))) == [200] * 12
            sent += 12
            if sum(1 for n in webhooks_per_worker(directory).values() if n) >= 2:
                break
    per_worker = webhooks_per_worker(directory)
    assert sum(per_worker.values()) == sent
    assert sum(1 for n in per_worker.values() if n) >= 2, per_worker

    outcomes = ("alert_bridge_operation_outcomes_total", "operation", "outcome")
    wait_until(lambda: by_labels(scrape(bridge.url), *outcomes) == {("reconf", "succeeded"): 1},
               what="the one operation's outcome")
    for _ in range(12):  # new connections: the scrapes land on different workers
        samples = scrape(bridge.url)
        assert by_labels(samples, "alert_bridge_webhooks_total", "source", "code") == {
            ("alertmanager", "200"): sent}
        assert by_labels(samples, "alert_bridge_decisions_total", "verdict") == {
            ("execute",): 1, ("cooldown",): sent - 1}
        assert value(samples, "alert_bridge_alerts_evaluated_total", source="alertmanager") \
            == sent
        assert value(samples, "alert_bridge_api_call_duration_seconds_count",
                     operation="reconf") == 1
        assert by_labels(samples, *outcomes) == {("reconf", "succeeded"): 1}
        # One value for the bridge, not one per worker.
        assert [k for k in samples if k[0] == "alert_bridge_reload_success"] == [
            ("alert_bridge_reload_success", ())]
        assert value(samples, "alert_bridge_reload_success") == 1
        assert value(samples, "alert_bridge_queue_depth", state="queued") == 0
    assert TOKEN not in requests.get(bridge.url + "/metrics", timeout=10).text

    # A worker that dies takes its live gauges along; what it counted stays in the totals.
    victim = max(per_worker, key=lambda pid: per_worker[pid])
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not (directory / f"gauge_livemostrecent_{victim}.db").exists()
               and len(list(directory.glob("gauge_livemostrecent_*.db"))) == 3,
               what="the dead worker forgotten and its replacement started")
    for _ in range(6):
        assert value(scrape(bridge.url), "alert_bridge_webhooks_total", source="alertmanager",
                     code="200") == sent

    assert bridge.stop(signal.SIGTERM) == 0
    assert not directory.exists()


def test_the_directory_goes_even_when_the_master_cannot_start(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    with socket.socket() as taken:  # gunicorn cannot bind this port: it gives up and exits
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = subprocess.run(
            [sys.executable, "-m", "bridge", "serve", "--rules", "rules.yaml",
             "--bind", f"127.0.0.1:{taken.getsockname()[1]}", "--workers", "1",
             "--state", "state.db"],
            env={**os.environ, "BRIDGE_DRY_RUN": "1"}, cwd=tmp_path, capture_output=True,
            text=True, timeout=120,
        )
    assert proc.returncode != 0
    found = re.search(r"metrics: multiprocess directory (\S+)", proc.stderr)
    assert found, proc.stderr
    assert not Path(found.group(1)).exists()


# -- the alert rules shipped for Prometheus ------------------------------------------------


PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "sum", "min", "max", "avg", "count", "rate", "irate", "increase",
    "deriv", "delta", "absent", "absent_over_time", "changes", "resets", "time",
    "max_over_time", "min_over_time", "avg_over_time", "histogram_quantile", "vector",
    "clamp_min", "clamp_max", "topk", "bottomk",
}


def exported_names(url: str) -> set[str]:
    text = requests.get(url + "/metrics", timeout=10).text
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update({"counter": [family.name + "_total"],
                      "histogram": [family.name + s for s in ("_bucket", "_count", "_sum")],
                      }.get(family.type, []))
        names.update(s.name for s in family.samples)
    return names


def test_the_alert_rules_use_only_metrics_the_bridge_exports(bridge: Bridge) -> None:
    doc = yaml.safe_load(ALERT_RULES.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {
        "AlertBridgeDown", "AlertBridgeBreakerOpen", "AlertBridgePausedForLong",
        "AlertBridgeApiUnauthorized", "AlertBridgeReloadFailed", "AlertBridgeQueueGrowing",
        "AlertBridgeWebhookErrors"}
    exported = exported_names(bridge.url)
    for rule in rules:
        assert rule["labels"]["severity"] == "page"
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        expr = re.sub(r'\{[^}]*\}|\[[^\]]*\]|"[^"]*"', " ", rule["expr"])
        expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
        words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr)) - PROMQL_WORDS
        assert words <= exported | {"up"}, (rule["alert"], words - exported)


PROMTOOL_TESTS = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - {series: 'up{$L}', values: '1 1 1 0x20'}
      - {series: 'alert_bridge_breaker_open{$L}', values: '0 0 1x20'}
      - {series: 'alert_bridge_paused{$L}', values: '1x200'}
      - {series: 'alert_bridge_api_unauthorized{$L}', values: '0x30'}
      - {series: 'alert_bridge_api_responses_total{$L,status="401"}', values: '0 0 1x30'}
      - {series: 'alert_bridge_reload_success{$L}', values: '1 1 0x20'}
      - {series: 'alert_bridge_queue_depth{$L,state="queued"}', values: '0+5x40'}
      - {series: 'alert_bridge_state_store_up{$L}', values: '1 0x20'}
      - {series: 'alert_bridge_webhooks_total{$L,source="alertmanager",code="200"}',
         values: '0+10x40'}
      - {series: 'alert_bridge_webhooks_total{$L,source="alertmanager",code="503"}',
         values: '0+5x40'}
      - {series: 'alert_bridge_webhook_auth_failures_total{$L}', values: '0+1x60'}
      - {series: 'alert_bridge_verifications_total{$L,$V,rule="sync-r",result="remediated"}',
         values: '0+1x150'}
      - {series: 'alert_bridge_verifications_total{$L,$V,rule="sync-r",result="not_remediated"}',
         values: '0+3x150'}
      - {series: 'alert_bridge_verifications_total{$L,$V,rule="good-r",result="remediated"}',
         values: '0+3x150'}
      - {series: 'alert_bridge_verifications_total{$L,$V,rule="good-r",result="not_remediated"}',
         values: '0+1x150'}
    alert_rule_test:
      - {eval_time: 1m, alertname: AlertBridgeApiUnauthorized, exp_alerts: []}
      - {eval_time: 3m, alertname: AlertBridgeApiUnauthorized, exp_alerts: [{exp_labels: &b
          {severity: page, job: alert-bridge, instance: "b:9095"}}]}
      - {eval_time: 6m, alertname: AlertBridgeDown, exp_alerts: []}
      - {eval_time: 9m, alertname: AlertBridgeDown, exp_alerts: [{exp_labels: *b}]}
      - {eval_time: 4m, alertname: AlertBridgeBreakerOpen, exp_alerts: [{exp_labels: *b}]}
      - {eval_time: 1h, alertname: AlertBridgePausedForLong, exp_alerts: []}
      - {eval_time: 150m, alertname: AlertBridgePausedForLong, exp_alerts: [{exp_labels: *b}]}
      - {eval_time: 8m, alertname: AlertBridgeReloadFailed, exp_alerts: [{exp_labels: *b}]}
      - {eval_time: 8m, alertname: AlertBridgeStateStoreDown, exp_alerts: [{exp_labels: *b}]}
      - {eval_time: 10m, alertname: AlertBridgeQueueGrowing, exp_alerts: []}
      - {eval_time: 25m, alertname: AlertBridgeQueueGrowing, exp_alerts: [{exp_labels:
          {severity: page, job: alert-bridge, instance: "b:9095", state: queued}}]}
      - {eval_time: 25m, alertname: AlertBridgeWebhookErrors, exp_alerts: [{exp_labels: *b}]}
      - {eval_time: 45m, alertname: AlertBridgeWebhookAuthFailures,
         exp_alerts: [{exp_labels: *b}]}
      - {eval_time: 30m, alertname: AlertBridgeRemediationRateLow, exp_alerts: []}
      - {eval_time: 90m, alertname: AlertBridgeRemediationRateLow, exp_alerts: [{exp_labels:
          {severity: page, job: alert-bridge, rule: sync-r}}]}
"""


def test_promtool_accepts_the_alert_rules_and_they_fire(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool is not installed (Debian package prometheus)")
    assert promtool is not None
    check = subprocess.run([promtool, "check", "rules", str(ALERT_RULES)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    # promtool's unit tests compare annotations too; these check the expressions only.
    doc = yaml.safe_load(ALERT_RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc))
    (tmp_path / "tests.yml").write_text(
        PROMTOOL_TESTS.replace("$L", 'job="alert-bridge",instance="b:9095"')
        .replace("$V", 'operation="sync"'))
    run = subprocess.run([promtool, "test", "rules", "tests.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_counting_a_storm_stays_cheap(make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(dry_run=True)
    metrics = bridge.context.metrics
    from bridge.decide import Decision
    from bridge.store import Recorded

    rule = bridge.context.rules.rules[0]
    recorded = [Recorded(Decision(None, rule, f"d{i}", "sync", "execute", ""))  # type: ignore
                for i in range(2000)]
    start = time.perf_counter()
    for _ in range(10):
        metrics.evaluated("alertmanager", 500, recorded)
    assert time.perf_counter() - start < 1.0
    assert value(scrape(bridge.url), "alert_bridge_decisions_total", rule=rule.name,
                 operation="sync", verdict="execute") == 20_000

