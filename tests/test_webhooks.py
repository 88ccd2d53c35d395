"""The whole path over real HTTP: webhook -> rules -> fake device API -> answer and audit."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.conftest import RULES, TOKEN, Bridge, Fake
from tests.helpers import payload, payload_json

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
