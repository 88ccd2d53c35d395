"""The webhook's work without HTTP: Intake parses, checks the limits, decides, commits, answers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bridge.audit import AuditQuery
from bridge.client import Secret
from bridge.config import Settings
from bridge.errors import BridgeError, PayloadError
from bridge.intake import Intake
from bridge.rules import parse_rules
from bridge.store import SqliteStore
from tests.conftest import RULES, TOKEN
from tests.helpers import device_down, payload

NOW = 1_795_000_000.0
JSON = "application/json"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "state.db")
    yield store
    store.close()


def intake(store: SqliteStore, **settings: object) -> Intake:
    """An Intake that judges as a live bridge (with a token), on the conftest rules."""
    config = Settings(rules_path="rules.yaml", api_token=Secret(TOKEN))
    config = replace(config, **settings)  # type: ignore[arg-type]
    return Intake(config, parse_rules(RULES, "rules.yaml"), store, clock=lambda: NOW)


def test_a_body_is_decided_committed_and_answered(store: SqliteStore) -> None:
    answer = intake(store).receive(payload("alertmanager_firing_multi.json"),
                                   "application/json; charset=utf-8", "alertmanager", "req-1")
    assert (answer["request_id"], answer["source"], answer["dry_run"]) == (
        "req-1", "alertmanager", False)
    assert answer["summary"] == {"execute": 3}
    assert [(d["device"], d["operation"], d["operation_id"])
            for a in answer["alerts"] for d in a["decisions"]] == [
        ("MegaTron", "sync", 1), ("OptimusPrime", "sync", 2), ("StarScream", "sync", 3)]
    records = store.audit(AuditQuery(limit=None))
    assert [(r.event, r.request_id, r.device, r.outcome) for r in records] == [
        ("decision", "req-1", device, "execute")
        for device in ("MegaTron", "OptimusPrime", "StarScream")]
    assert store.queue_depth(NOW)["queued"] == 3


def test_a_second_delivery_finds_the_cooldown_the_first_claimed(store: SqliteStore) -> None:
    take, body = intake(store), payload("alertmanager_firing_multi.json")
    assert take.receive(body, JSON, None, "first")["summary"] == {"execute": 3}
    assert take.receive(body, JSON, None, "second")["summary"] == {"cooldown": 3}


def test_an_alert_no_rule_matches_is_answered_and_audited(store: SqliteStore) -> None:
    answer = intake(store).receive(device_down("r1"), JSON, None, "req-1")
    assert answer["summary"] == {"no_match": 1}
    assert [r.outcome for r in store.audit(AuditQuery(limit=None))] == ["no_match"]


def test_dry_run_decides_and_audits_but_queues_nothing(store: SqliteStore) -> None:
    answer = intake(store, dry_run_requested=True).receive(
        payload("alertmanager_firing_multi.json"), JSON, "alertmanager", "req-1")
    assert (answer["dry_run"], answer["summary"]) == (True, {"dry_run": 3})
    assert len(store.audit(AuditQuery(limit=None))) == 3
    assert store.queue_depth(NOW).get("queued", 0) == 0


@pytest.mark.parametrize(("body", "content_type", "source", "status", "message"), [
    (b"x" * 101, JSON, None, 413, "body is larger than BRIDGE_MAX_BODY (100 bytes)"),
    (device_down("r1"), "text/plain", None, 415,
     "Content-Type must be application/json, got text/plain"),
    (b"not json", JSON, None, 400, "body is not valid JSON"),
    (payload("alertmanager_firing_multi.json"), JSON, "grafana", 400,
     "expected a Grafana payload"),
])
def test_a_body_out_of_bounds_is_refused_with_its_status(
    store: SqliteStore, body: bytes, content_type: str, source: str | None, status: int,
    message: str,
) -> None:
    take = intake(store, max_body=100 if status == 413 else 10 * 1024 * 1024)
    with pytest.raises(BridgeError) as refused:
        take.receive(body, content_type, source, "req-1")
    assert refused.value.status == status
    assert message in refused.value.message
    assert store.audit(AuditQuery(limit=None)) == []


def test_more_alerts_than_the_limit_are_refused_once_the_format_is_known(
    store: SqliteStore
) -> None:
    take = intake(store, max_alerts=2)
    notification = take.parse(payload("alertmanager_firing_multi.json"), JSON, None)
    assert notification.source == "alertmanager"  # what the metrics count the refusal under
    with pytest.raises(BridgeError) as refused:
        take.take(notification, "req-1")
    assert refused.value.status == 413
    assert refused.value.message.startswith("payload has 3 alerts, more than BRIDGE_MAX_ALERTS")
    assert store.audit(AuditQuery(limit=None)) == []


def test_a_payload_error_says_where(store: SqliteStore) -> None:
    with pytest.raises(PayloadError) as refused:
        intake(store).receive(b'{"version": "4", "alerts": {}}', JSON, None, "req-1")
    assert refused.value.where == "alerts"


def test_explain_answers_what_receive_would_do_and_changes_nothing(store: SqliteStore) -> None:
    take = intake(store, dry_run_requested=True)
    body = payload("alertmanager_firing_multi.json")
    dry = take.explain(body)
    live = take.explain(body, live=True)
    assert (dry["source"], dry["dry_run"], live["dry_run"]) == ("alertmanager", True, False)
    assert [r["verdict"] for a in live["alerts"] for r in a["rules"] if r["matched"]] == [
        "execute"] * 3
    assert store.audit(AuditQuery(limit=None)) == []
