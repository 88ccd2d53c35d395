"""The whole path over real HTTP: webhook -> rules -> fake device API -> answer and audit."""

from __future__ import annotations

import http.client
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.audit import iso
from bridge.store import SqliteStore
from tests.conftest import RULES, TOKEN, Bridge, Fake
from tests.helpers import ROOT, alert, payload, payload_json, webhook

OP_PATH = "/api/v1/inventory_device_name_operation/"

RESOLVED_RULE = """\
  - name: reconf-high-load-resolved
    match: ['alertname = "HighLoad"']
    device: "{{ labels.system_under_test }}"
    operation: reconf
    status: resolved
"""


def puts(fake: Fake) -> list[tuple[str, str, Any]]:
    return [(c["raw_path"], c["authorization"], c["json"]) for c in fake.calls()]


def decisions(answer: dict[str, Any]) -> list[tuple[str, str | None, str, str, str]]:
    return [(a["fingerprint"], d["rule"], d["device"], d["operation"], d["verdict"])
            for a in answer["alerts"] for d in a["decisions"]]


def test_grouped_alertmanager_firing_makes_one_put_per_device(bridge: Bridge, fake: Fake) -> None:
    r = bridge.post("/webhook/alertmanager", payload("alertmanager_firing_multi.json"))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["source"] == "alertmanager"
    assert answer["summary"] == {"execute": 3}
    first = answer["alerts"][0]["decisions"][0]
    assert (first["verdict"], first["device"], first["operation_id"]) == ("execute", "MegaTron", 1)
    assert r.headers["X-Request-Id"] == answer["request_id"]
    outcomes = bridge.outcomes(3)
    assert sorted(puts(fake)) == [
        (OP_PATH + name + "/", f"Bearer {TOKEN}", {"operation": "sync"})
        for name in ("MegaTron", "OptimusPrime", "StarScream")
    ]
    assert {(o.outcome, o.status_code) for o in outcomes} == {("succeeded", 200)}
    assert all(o.execution_id and o.execution_id.startswith("op_") for o in outcomes)


def test_exact_body_and_headers_reach_the_api(bridge: Bridge, fake: Fake) -> None:
    bridge.post("/webhook/alertmanager", payload("alertmanager_firing_multi.json"))
    bridge.outcomes(3)
    call = fake.calls()[0]
    assert json.loads(call["body"]) == {"operation": "sync"}
    assert call["authorization"] == f"Bearer {TOKEN}"
    assert call["method"] == "PUT"


def test_resend_within_cooldown_makes_no_second_call(bridge: Bridge, fake: Fake) -> None:
    body = payload("alertmanager_firing_multi.json")
    bridge.post("/webhook/alertmanager", body)
    again = bridge.post("/webhook/alertmanager", body).json()
    assert again["summary"] == {"cooldown": 3}
    bridge.outcomes(3)
    assert len(fake.calls()) == 3
    until = again["alerts"][0]["decisions"][0]["until"]
    assert until.endswith("Z")


def partially_resolved() -> bytes:
    doc = payload_json("alertmanager_firing_multi.json")
    doc["alerts"][1]["status"] = "resolved"
    doc["alerts"][1]["endsAt"] = "2026-11-25T10:00:00.123456789Z"
    return json.dumps(doc).encode()


def test_partial_resolution_acts_only_for_rules_that_ask_for_resolved(
    make_bridge: Callable[..., Bridge], fake: Fake
) -> None:
    bridge = make_bridge(RULES + RESOLVED_RULE)
    answer = bridge.post("/webhook/alertmanager", partially_resolved()).json()
    assert [(rule, dev, op, v) for _, rule, dev, op, v in decisions(answer)] == [
        ("sync-high-load", "MegaTron", "sync", "execute"),
        ("reconf-high-load-resolved", "OptimusPrime", "reconf", "execute"),
        ("sync-high-load", "StarScream", "sync", "execute"),
    ]
    bridge.outcomes(3)
    assert sorted(c["json"]["operation"] for c in fake.calls()) == ["reconf", "sync", "sync"]


def test_full_resolution(bridge: Bridge, fake: Fake) -> None:
    answer = bridge.post("/webhook/alertmanager", payload("alertmanager_resolved.json")).json()
    assert [(rule, dev, op, v) for _, rule, dev, op, v in decisions(answer)] == [
        ("reconf-on-resolve", "frontend", "reconf", "execute")]
    bridge.outcomes(1)
    assert puts(fake) == [(OP_PATH + "frontend/", f"Bearer {TOKEN}", {"operation": "reconf"})]


def test_firing_alert_does_not_trigger_a_resolved_only_rule(bridge: Bridge, fake: Fake) -> None:
    answer = bridge.post("/webhook/alertmanager", payload("alertmanager_firing_single.json"))
    assert answer.json()["summary"] == {"no_match": 1}
    assert fake.calls() == []


@pytest.mark.parametrize("path", ["/webhook/grafana", "/webhook"])
def test_grafana_unified_firing(bridge: Bridge, fake: Fake, path: str) -> None:
    answer = bridge.post(path, payload("grafana_unified_firing.json")).json()
    assert answer["source"] == "grafana"
    assert [(rule, dev, v) for _, rule, dev, _, v in decisions(answer)] == [
        ("reboot-grafana-hosts", "badhost.example.com", "execute"),
        ("reboot-grafana-hosts", "otherhost.example.com", "execute"),
        (None, "", "no_match"),
    ]
    bridge.outcomes(2)
    assert sorted(c["raw_path"] for c in fake.calls()) == [
        OP_PATH + "badhost.example.com/", OP_PATH + "otherhost.example.com/"]


def test_grafana_unified_resolved_and_mixed(bridge: Bridge, fake: Fake) -> None:
    resolved = bridge.post("/webhook/grafana", payload("grafana_unified_resolved.json")).json()
    assert resolved["summary"] == {"no_match": 1}  # no instance label: the matcher fails
    mixed = bridge.post("/webhook/grafana", payload("grafana_unified_mixed.json")).json()
    assert [(a["status"], [d["verdict"] for d in a["decisions"]]) for a in mixed["alerts"]] == [
        ("resolved", ["execute"]), ("resolved", ["execute"]), ("firing", ["no_match"])]
    bridge.outcomes(2)
    assert len(fake.calls()) == 2


@pytest.mark.parametrize("path", ["/webhook/grafana", "/webhook"])
def test_legacy_grafana(bridge: Bridge, fake: Fake, path: str) -> None:
    answer = bridge.post(path, payload("grafana_legacy_alerting_evalmatch_tags.json")).json()
    assert answer["source"] == "grafana-legacy"
    assert [(rule, dev, v) for _, rule, dev, _, v in decisions(answer)] == [
        ("legacy-cpu", "zeta.domain", "execute")]
    bridge.outcomes(1)
    assert puts(fake) == [(OP_PATH + "zeta.domain/", f"Bearer {TOKEN}", {"operation": "sync"})]


@pytest.mark.parametrize("name", [
    "alertmanager_firing_multi_pre_v0.19.json", "alertmanager_legacy_v3.json",
    "alertmanager_truncated.json", "alertmanager_v0.34_fields.json",
    "alertmanager_resolved_receiver_quoted.json",
])
def test_every_alertmanager_variant_is_accepted(bridge: Bridge, name: str) -> None:
    for path in ("/webhook/alertmanager", "/webhook"):
        r = bridge.post(path, payload(name))
        assert r.status_code == 200, r.text
        assert r.json()["source"] == "alertmanager"


def test_receiver_name_is_unquoted(bridge: Bridge) -> None:
    r = bridge.post("/webhook", payload("alertmanager_resolved_receiver_quoted.json"))
    assert r.json()["receiver"] == "web.hook"


@pytest.mark.parametrize("body, where, fragment", [
    (b"", "", "empty"),
    (b"{not json", "", "not valid JSON"),
    (b"[1, 2]", "", "object"),
    (b'{"version": "4", "status": "firing", "alerts": {}}', "alerts", "array"),
    (b'{"version": "4", "status": "firing", "alerts": [{"status": "firing",'
     b' "labels": {"a": 1}}]}', "alerts[0].labels.a", "string"),
    (b"\xff\xfe", "", "UTF-8"),
])
def test_bad_bodies_get_a_400_that_says_what_and_where(
    bridge: Bridge, fake: Fake, body: bytes, where: str, fragment: str
) -> None:
    # An Alertmanager-shaped body is refused by /webhook/grafana for its format, earlier.
    paths = ["/webhook/alertmanager", "/webhook"] + ([] if where else ["/webhook/grafana"])
    for path in paths:
        r = bridge.post(path, body)
        assert r.status_code == 400, (path, r.text)
        doc = r.json()
        assert fragment in doc["error"], doc
        assert doc.get("where", "") == where
    assert fake.calls() == []


def test_a_payload_sent_to_the_wrong_endpoint_is_refused(bridge: Bridge) -> None:
    r = bridge.post("/webhook/grafana", payload("alertmanager_firing_multi.json"))
    assert r.status_code == 400
    assert "Grafana" in r.json()["error"]
    r = bridge.post("/webhook/alertmanager", payload("grafana_unified_firing.json"))
    assert r.status_code == 400
    assert "Alertmanager" in r.json()["error"]


def test_unknown_paths_and_methods_answer_json(bridge: Bridge) -> None:
    r = requests.get(bridge.url + "/nope", timeout=5)
    assert (r.status_code, r.headers["Content-Type"]) == (404, "application/json")
    r = requests.get(bridge.url + "/webhook", timeout=5)
    assert r.status_code == 405
    assert "error" in r.json()


def test_dry_run_without_token_calls_nothing(make_bridge: Callable[..., Bridge],
                                             fake: Fake) -> None:
    bridge = make_bridge(token=None)
    answer = bridge.post("/webhook", payload("alertmanager_firing_multi.json")).json()
    assert answer["dry_run"] is True
    assert answer["summary"] == {"dry_run": 3}
    assert fake.calls() == []
    assert [r.outcome for r in bridge.audit()] == ["dry_run"] * 3
    assert bridge.dispatcher is None


def test_dry_run_flag_with_token_calls_nothing(make_bridge: Callable[..., Bridge],
                                               fake: Fake) -> None:
    bridge = make_bridge(dry_run=True)
    answer = bridge.post("/webhook", payload("alertmanager_firing_multi.json")).json()
    assert answer["summary"] == {"dry_run": 3}
    assert fake.calls() == []
    r = requests.get(bridge.url + "/-/ready", timeout=5).json()
    assert r["dry_run"] is True


def test_audit_records_every_field(bridge: Bridge, fake: Fake) -> None:
    answer = bridge.post("/webhook/alertmanager", payload("alertmanager_resolved.json")).json()
    bridge.outcomes(1)
    records = bridge.audit()
    assert [(r.event, r.outcome) for r in records] == [
        ("decision", "execute"), ("outcome", "succeeded")]
    decision, outcome = records
    doc = payload_json("alertmanager_resolved.json")
    for r in records:
        assert r.request_id == answer["request_id"]
        assert (r.source, r.receiver, r.group_key) == (
            "alertmanager", doc["receiver"], doc["groupKey"])
        assert (r.fingerprint, r.alertname, r.alert_status) == (
            doc["alerts"][0]["fingerprint"], "ServiceHighErrorRate", "resolved")
        assert (r.rule, r.device, r.operation) == ("reconf-on-resolve", "frontend", "reconf")
        assert r.operation_id == decision.operation_id is not None
    assert (decision.attempt, outcome.attempt) == (None, 1)
    from bridge.rules import parse_rules

    assert {r.rules_version for r in records} == {parse_rules(RULES).version}
    assert outcome.status_code == 200
    assert outcome.execution_id == fake.calls()[0]["response"]["execution_id"]
    assert outcome.error == ""


def test_health_and_readiness(bridge: Bridge) -> None:
    assert requests.get(bridge.url + "/-/healthy", timeout=5).status_code == 200
    ready = requests.get(bridge.url + "/-/ready", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["rules"] == 4


# -- times from the payload, and what happens when a request fails half-way ------------------

SHIPPED_RULES = (ROOT / "rules.yaml").read_text()
NOW = 1_795_000_000.0  # 2026-11-19T09:46:40Z: a fixed clock, so every derived time is exact


def group(*alerts: tuple[str, str, str]) -> bytes:
    """An Alertmanager group of (alertname, device, startsAt) alerts, all firing, critical."""
    return webhook(*(alert(name, device, starts_at=starts, severity="critical")
                     for name, device, starts in alerts))


def sql(bridge: Bridge, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(bridge.settings.state_path) as conn:
        return conn.execute(query).fetchall()


@pytest.mark.parametrize("starts_at", [
    "9999-12-31T23:00:00Z", "9999-12-31T23:59:59.999999999Z", "2099-01-01T00:00:00Z",
    "2026-11-19T09:46:41Z",
])
def test_an_alert_from_the_future_counts_its_min_age_from_now(
    make_bridge: Callable[..., Bridge], starts_at: str
) -> None:
    bridge = make_bridge(SHIPPED_RULES, clock=lambda: NOW, start_dispatcher=False)
    r = bridge.post("/webhook/alertmanager", group(
        ("AccessPointUnreachable", "ap-7", starts_at), ("DeviceUnreachable", "r1", iso(NOW))))
    assert r.status_code == 200, r.text
    held, other = (a["decisions"][0] for a in r.json()["alerts"])
    mature = NOW + 300  # the rule's min_age, 5m, from now
    assert held == {
        "rule": "reboot-stuck-access-points", "device": "ap-7", "operation": "reboot",
        "verdict": "held_min_age",
        "reason": f"alert must fire for 5m first: not before {iso(mature)} (its startsAt"
                  f" {iso(parse_time(starts_at))} is in the future: counted from now)",
        "until": iso(mature + 7200), "not_before": iso(mature), "operation_id": 1,
    }
    assert other["verdict"] == "execute"  # the rest of the group is judged as usual
    # Every time stored for it is bounded by now + min_age + cooldown, and so is the next
    # genuine alert's cooldown.
    assert sql(bridge, "SELECT max(until) FROM cooldowns") == [(mature + 7200,)]
    assert sql(bridge, "SELECT max(next_attempt), max(claim_until), max(expires_at)"
                       " FROM operations") == [(mature, mature + 7200, mature + 600)]
    genuine = bridge.post("/webhook/alertmanager", group(
        ("AccessPointUnreachable", "ap-7", iso(NOW - 600)))).json()
    assert [(d["verdict"], d["until"]) for d in genuine["alerts"][0]["decisions"]] == [
        ("cooldown", iso(mature + 7200))]
    explained = bridge.post("/api/explain", group(
        ("AccessPointUnreachable", "ap-8", starts_at)))
    assert explained.status_code == 200, explained.text
    assert explained.json()["alerts"][0]["rules"][3]["not_before"] == iso(mature)


def parse_time(text: str) -> float:
    from bridge.payloads import parse

    alert = parse(group(("x", "y", text))).alerts[0]
    assert alert.starts_at is not None
    return alert.starts_at.timestamp()


def test_a_cooldown_stored_past_year_9999_is_answered_not_a_500(
    make_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    # What a bridge before the fix left behind: a cooldown claimed until the year 10000.
    state = tmp_path / "old.db"
    SqliteStore(state).ping()
    with sqlite3.connect(state) as conn:
        conn.execute("INSERT INTO cooldowns (device, operation, until, rule)"
                     " VALUES ('ap-7', 'reboot', ?, 'x')", (253_402_300_800.0 + 3600,))
    bridge = make_bridge(SHIPPED_RULES, clock=lambda: NOW, state=state, start_dispatcher=False)
    body = group(("AccessPointUnreachable", "ap-7", iso(NOW - 600)),
                 ("DeviceUnreachable", "r1", iso(NOW)))
    r = bridge.post("/webhook/alertmanager", body)
    assert r.status_code == 200, r.text
    assert [d["verdict"] for a in r.json()["alerts"] for d in a["decisions"]] == [
        "cooldown", "execute"]
    assert r.json()["alerts"][0]["decisions"][0]["until"] == "9999-12-31T23:59:59.000Z"
    assert bridge.post("/api/explain", body).status_code == 200


def test_a_webhook_that_fails_after_deciding_commits_nothing(
    make_bridge: Callable[..., Bridge], fake: Fake, mocker: Any
) -> None:
    bridge = make_bridge(start_dispatcher=False)
    body = payload("alertmanager_firing_multi.json")
    # A fault no payload can cause any more: building the answer fails after the decisions.
    mocker.patch("bridge.intake._decision_json", side_effect=RuntimeError("boom"))
    r = bridge.post("/webhook/alertmanager", body)
    assert (r.status_code, r.json()["error"]) == (500, "internal error")
    assert bridge.audit() == []
    assert sql(bridge, "SELECT count(*) FROM cooldowns") == [(0,)]
    assert sql(bridge, "SELECT count(*) FROM operations") == [(0,)]
    mocker.stopall()
    again = bridge.post("/webhook/alertmanager", body)  # what Alertmanager's retry finds
    assert again.json()["summary"] == {"execute": 3}


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("path", [
    "/webhook//alertmanager", "/webhook//", "/webhook/", "/webhook/alertmanager/",
    "/webhook/alertmanager//", "/webhook/alertmanager/x", "/api//explain", "/-//ready",
    "/%2e%2e/webhook", "/webhook/%2Falertmanager",
])
def test_odd_paths_answer_the_json_error(bridge: Bridge, method: str, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", bridge.server.port, timeout=10)
    try:
        conn.request(method, path, body=b"{}" if method == "POST" else None,
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        status, kind, doc = r.status, r.getheader("Content-Type"), json.loads(r.read())
    finally:
        conn.close()
    assert (status, kind) == (404, "application/json"), doc
    assert set(doc) == {"error"}
