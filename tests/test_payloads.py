"""bridge.payloads against the captured webhook bodies in tests/payloads/ (see SOURCES.md)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import PayloadError
from bridge.payloads import SOURCES, Alert, Notification, detect, fingerprint, parse
from tests.helpers import PAYLOADS
from tests.helpers import payload as body
from tests.helpers import payload_json as doc

PAYLOAD_FILES = sorted(PAYLOADS.glob("*.json"))

# database=None: hypothesis must not write a .hypothesis/ directory into the tree.
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def expected_source(path: Path) -> str:
    for prefix, source in (
        ("alertmanager_", "alertmanager"),
        ("grafana_unified_", "grafana"),
        ("grafana_legacy_", "grafana-legacy"),
    ):
        if path.name.startswith(prefix):
            return source
    raise AssertionError(f"payload file with unknown prefix: {path.name}")


def reference_fingerprint(labels: dict[str, str]) -> str:
    """The FNV-1a snippet of FORMATS.md A.4, an independent oracle."""
    h = 14695981039346656037
    for k in sorted(labels):
        for b in k.encode() + b"\xff" + labels[k].encode() + b"\xff":
            h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return format(h, "016x")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def parse_error(raw: bytes, source: str | None = None) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        parse(raw, source)
    return info.value


def replaced(target: dict[str, Any], changes: dict[str, Any]) -> None:
    """Set each key of `changes` in `target`; a None value deletes the key instead."""
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def am_with(**changes: Any) -> dict[str, Any]:
    """alertmanager_firing_multi.json with top-level keys replaced (None deletes)."""
    payload = doc("alertmanager_firing_multi.json")
    replaced(payload, changes)
    return payload


def am_alert_with(index: int, **changes: Any) -> dict[str, Any]:
    """alertmanager_firing_multi.json with keys of alerts[index] replaced (None deletes)."""
    payload = doc("alertmanager_firing_multi.json")
    replaced(payload["alerts"][index], changes)
    return payload


# --- every captured body ----------------------------------------------------------------------


def test_payload_files_are_present() -> None:
    names = {p.name for p in PAYLOAD_FILES}
    assert len(names) == 23
    assert {expected_source(p) for p in PAYLOAD_FILES} == set(SOURCES)


@pytest.mark.parametrize("path", PAYLOAD_FILES, ids=lambda p: p.name)
def test_every_payload_parses_and_is_detected(path: Path) -> None:
    source = expected_source(path)
    raw = path.read_bytes()

    assert detect(json.loads(raw)) == source
    notification = parse(raw)
    assert notification.source == source
    assert notification.status in ("firing", "resolved")
    assert notification.alerts
    for alert in notification.alerts:
        assert alert.status in ("firing", "resolved")
        assert len(alert.fingerprint) == 16
        for moment in (alert.starts_at, alert.ends_at):
            assert moment is None or moment.utcoffset() is not None
            assert moment is None or moment.tzinfo is UTC
    # The endpoint each sender is pointed at accepts it and gives the same result.
    endpoint = "alertmanager" if source == "alertmanager" else "grafana"
    assert parse(raw, endpoint) == notification


# --- Alertmanager -----------------------------------------------------------------------------


def test_alertmanager_firing_multi_exact() -> None:
    n = parse(body("alertmanager_firing_multi.json"))

    assert n.source == "alertmanager"
    assert n.receiver == "default-receiver"
    assert n.group_key == '{}:{alertname="HighLoad"}'
    assert n.status == "firing"
    assert n.truncated_alerts == 0
    assert [a.alertname for a in n.alerts] == ["HighLoad"] * 3
    assert [a.labels["system_under_test"] for a in n.alerts] == [
        "MegaTron",
        "OptimusPrime",
        "StarScream",
    ]
    first = n.alerts[0]
    assert first == Alert(
        status="firing",
        labels={
            "alertname": "HighLoad",
            "severity": "warning",
            "system_under_test": "MegaTron",
            "test_environment": "acc",
        },
        annotations={
            "description": "System load average > 3",
            "summary": "System load average > 3",
        },
        starts_at=utc(2021, 8, 19, 11, 52, 22, 12000),
        ends_at=None,
        fingerprint="7b4a450cc2e62574",
        generator_url="http://49077ddbdc65:9090/graph?g0.expr=avg+by%28system_under_test%2C"
        "+test_environment%29+%28system_load_average_1m%29+%3E+1&g0.tab=1",
    )
    assert [a.ends_at for a in n.alerts] == [None, None, None]


def test_alertmanager_nanoseconds_truncated_to_microseconds_in_utc() -> None:
    n = parse(body("alertmanager_firing_multi_pre_v0.19.json"))
    # "2019-09-27T16:27:56.612666101Z": truncated, not rounded.
    assert [a.starts_at for a in n.alerts] == [utc(2019, 9, 27, 16, 27, 56, 612666)] * 3
    assert n.alerts[0].starts_at.tzinfo is UTC


def test_alertmanager_resolved_has_ends_at() -> None:
    n = parse(body("alertmanager_resolved.json"))
    (alert,) = n.alerts
    assert n.status == "resolved"
    assert alert.status == "resolved"
    assert alert.starts_at == utc(2026, 8, 24, 10, 34, 30, 583000)
    assert alert.ends_at == utc(2026, 8, 24, 10, 39, 30, 583000)
    assert alert.fingerprint == "0eeee852e85422ff"
    assert alert.annotations["description"] == "frontend is failing 10.08% of calls (baseline 0%)."
    # Same alert as the firing delivery: same identity.
    (firing,) = parse(body("alertmanager_firing_single.json")).alerts
    assert (firing.fingerprint, firing.starts_at, firing.ends_at) == (
        alert.fingerprint,
        alert.starts_at,
        None,
    )


def test_alertmanager_receiver_is_unquoted() -> None:
    n = parse(body("alertmanager_resolved_receiver_quoted.json"))
    assert (
        json.loads(body("alertmanager_resolved_receiver_quoted.json"))["receiver"] == r"web\.hook"
    )
    assert n.receiver == "web.hook"
    assert n.alerts[0].ends_at == utc(2022, 7, 29, 11, 17, 27, 300000)
    assert n.alerts[0].labels["deployment"] == "eric-log-transformer"


def go_quote_meta(text: str) -> str:
    """Go regexp.QuoteMeta."""
    return "".join("\\" + c if c in r"\.+*?()|[]{}^$" else c for c in text)


@pytest.mark.parametrize(
    "name", ["web.hook", "a+b*c?", "(x|y)", "[a]{1}", "^start$", r"back\slash", "plain-name"]
)
def test_receiver_unquote_round_trips_go_quote_meta(name: str) -> None:
    n = parse(encode(am_with(receiver=go_quote_meta(name))))
    assert n.receiver == name


def test_pre_0_19_fingerprints_are_computed() -> None:
    raw = doc("alertmanager_firing_multi_pre_v0.19.json")
    assert all("fingerprint" not in a for a in raw["alerts"])
    n = parse(body("alertmanager_firing_multi_pre_v0.19.json"))
    assert [a.fingerprint for a in n.alerts] == [
        "4a110cc8dbe76532",
        "e92130f1a362a046",
        "1e1c2fe4c8293484",
    ]
    for alert, raw_alert in zip(n.alerts, raw["alerts"], strict=True):
        assert alert.fingerprint == reference_fingerprint(raw_alert["labels"])
        assert alert.fingerprint == fingerprint(alert.labels)
    assert n.truncated_alerts == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "alertmanager_firing_multi.json",
            ["7b4a450cc2e62574", "b453fd4bfb081d13", "ee0c653eceb40ad0"],
        ),
        ("alertmanager_firing_single.json", ["0eeee852e85422ff"]),
        ("alertmanager_resolved_receiver_quoted.json", ["fbab788ec4c1018b"]),
        # Grafana test and unit-test alerts have no hidden labels, so they match too (B.3).
        ("grafana_unified_test_notification.json", ["57c6d9296de2ad39"]),
        ("grafana_unified_alerting_lib_test.json", ["fac0861a85de433a"]),
    ],
)
def test_fingerprint_matches_sender(name: str, expected: list[str]) -> None:
    raw_alerts = doc(name)["alerts"]
    assert [a["fingerprint"] for a in raw_alerts] == expected
    assert [fingerprint(a["labels"]) for a in raw_alerts] == expected


def test_fingerprint_of_empty_label_set_is_fnv_offset_basis() -> None:
    assert fingerprint({}) == "cbf29ce484222325"


def test_fingerprint_uses_bytewise_order_and_utf8() -> None:
    labels = {"b": "1", "a": "ü", "B": "x", "é": "€"}
    assert fingerprint(labels) == reference_fingerprint(labels)
    assert fingerprint(labels) == fingerprint(dict(reversed(labels.items())))
    assert fingerprint({"a": "bc"}) != fingerprint({"ab": "c"})


def test_legacy_v3_numeric_group_key() -> None:
    n = parse(body("alertmanager_legacy_v3.json"), "alertmanager")
    (alert,) = n.alerts
    assert n.group_key == "5615590933959184469"
    assert n.receiver == "alerta"
    assert n.truncated_alerts == 0
    # "2016-08-01T13:27:08.008+03:00"
    assert alert.starts_at == utc(2016, 8, 1, 10, 27, 8, 8000)
    assert alert.ends_at is None
    assert alert.fingerprint == "d2089d8d0f422129"
    assert alert.fingerprint == reference_fingerprint(
        doc("alertmanager_legacy_v3.json")["alerts"][0]["labels"]
    )
    assert alert.alertname == "failedConnect"
    assert alert.generator_url == "http://prometheus.host:9090/..."


def test_truncated_alerts() -> None:
    n = parse(body("alertmanager_truncated.json"))
    assert n.truncated_alerts == 1
    assert [a.fingerprint for a in n.alerts] == ["7b4a450cc2e62574", "b453fd4bfb081d13"]


def test_new_fields_are_ignored() -> None:
    newer = parse(body("alertmanager_v0.34_fields.json"))
    older = parse(body("alertmanager_firing_multi.json"))
    assert newer == older


# --- Grafana unified --------------------------------------------------------------------------


def test_grafana_mixed_two_resolved_one_firing() -> None:
    n = parse(body("grafana_unified_mixed.json"), "grafana")
    assert n.source == "grafana"
    assert n.receiver == "Webhook test"
    assert n.group_key == '{}/{test="true"}:{}'
    assert n.status == "firing"
    assert [a.status for a in n.alerts] == ["resolved", "resolved", "firing"]
    assert [a.labels.get("instance") for a in n.alerts] == [
        "badhost.example.com",
        "otherhost.example.com",
        None,
    ]
    assert [a.ends_at for a in n.alerts] == [
        utc(2022, 6, 17, 1, 8, 28, 652747),
        utc(2022, 6, 17, 1, 8, 28, 652747),
        None,
    ]
    assert n.alerts[2].alertname == "Second webhook test"
    assert n.alerts[2].starts_at == utc(2022, 6, 17, 1, 3, 0, 782137)


def test_grafana_fingerprint_is_kept_not_recomputed() -> None:
    n = parse(body("grafana_unified_firing.json"))
    assert [a.fingerprint for a in n.alerts] == [
        "aaafafe0953f0962",
        "fb31814ac93dbe7d",
        "6f9cd313db421ef1",
    ]
    # Grafana hashes hidden labels: the visible ones give something else.
    assert all(a.fingerprint != fingerprint(a.labels) for a in n.alerts)


def test_grafana_offset_converted_to_utc() -> None:
    n = parse(body("grafana_unified_docs_example.json"))
    # "2021-10-12T09:51:03.157076+02:00"
    assert n.alerts[0].starts_at == utc(2021, 10, 12, 7, 51, 3, 157076)
    assert n.alerts[0].annotations["runbook_url"] == "https://myrunbook.com/runbook/1234"


def test_grafana_zero_start_time_is_none() -> None:
    n = parse(body("grafana_unified_alerting_lib_test.json"))
    (alert,) = n.alerts
    assert (alert.starts_at, alert.ends_at) == (None, None)
    assert n.receiver == "my_receiver"
    assert n.group_key == "alertname"


def test_grafana_resolved() -> None:
    n = parse(body("grafana_unified_resolved.json"))
    (alert,) = n.alerts
    assert n.status == alert.status == "resolved"
    assert alert.ends_at == utc(2022, 6, 17, 0, 51, 24, 67337)
    assert alert.fingerprint == "d8a21484c9c25a60"


def test_grafana_test_notification_edge_case() -> None:
    n = parse(body("grafana_unified_test_notification.json"))
    assert n.receiver == ""
    assert n.status == "resolved"
    assert n.truncated_alerts == 1
    assert n.alerts[0].generator_url == ""


# --- legacy Grafana ---------------------------------------------------------------------------


def test_legacy_evalmatch_tags_become_labels() -> None:
    n = parse(body("grafana_legacy_alerting_evalmatch_tags.json"), "grafana")
    (alert,) = n.alerts
    assert n.source == "grafana-legacy"
    assert n.receiver == ""
    assert n.group_key == "grafana-legacy:7"
    assert n.status == "firing"
    assert n.truncated_alerts == 0
    expected_labels = {
        "__name__": "netdata_cpu_cpu_percentage_average",
        "chart": "cpu.cpu0",
        "dimension": "user",
        "family": "utilization",
        "instance": "zeta.domain",
        "job": "monitoring",
        "info.host_id": "i-0d0721c7f97545d43",
        "alertname": "Zeta CPU alert",
    }
    rule_url = (
        "https://grafana.domain.tld/dashboard/db/alarms?fullscreen&edit&tab=alert&panelId=1&orgId=1"
    )
    assert alert == Alert(
        status="firing",
        labels=expected_labels,
        annotations={"title": "[Alerting] CPU alert", "message": "boom!", "ruleUrl": rule_url},
        starts_at=None,
        ends_at=None,
        fingerprint=reference_fingerprint(expected_labels),
        generator_url=rule_url,
    )


def test_legacy_rule_tags_merged_with_evalmatch_tags() -> None:
    rule = parse(body("grafana_legacy_alerting_rule_tags.json")).alerts
    assert [dict(a.labels) for a in rule] == [
        {
            "enabled": "true",
            "relay": "7",
            "on-alerting": "relay-on",
            "on-ok": "ignore",
            "alertname": "Testing -> Battery Voltage alert",
        }
    ]
    docs = parse(body("grafana_legacy_alerting.json")).alerts
    assert [dict(a.labels) for a in docs] == [
        {"tag name": "tag value", "alertname": "Panel Title alert"}
    ]


def test_legacy_evalmatch_tags_override_rule_tags_and_alertname_wins() -> None:
    payload = doc("grafana_legacy_alerting.json")
    payload["tags"] = {"site": "rule", "kind": "rule"}
    payload["evalMatches"] = [
        {"value": 1, "metric": "a", "tags": {"site": "one", "alertname": "spoof"}},
        {"value": None, "metric": "b", "tags": {"site": "two"}},
    ]
    n = parse(encode(payload))
    assert [dict(a.labels) for a in n.alerts] == [
        {"site": "one", "kind": "rule", "alertname": "Panel Title alert"},
        {"site": "two", "kind": "rule", "alertname": "Panel Title alert"},
    ]
    assert n.alerts[0].fingerprint != n.alerts[1].fingerprint


def test_legacy_one_alert_per_evalmatch() -> None:
    n = parse(body("grafana_legacy_test_notification.json"))
    assert len(n.alerts) == 2
    assert n.group_key == "grafana-legacy:0"
    assert [dict(a.labels) for a in n.alerts] == [{"alertname": "Test rule"}] * 2


def test_legacy_ok_is_resolved() -> None:
    n = parse(body("grafana_legacy_ok.json"))
    (alert,) = n.alerts
    assert n.status == "resolved"
    assert alert.status == "resolved"
    assert dict(alert.labels) == {"alertname": "Zeta CPU alert"}
    assert alert.fingerprint == reference_fingerprint({"alertname": "Zeta CPU alert"})
    # Same rule as grafana_legacy_alerting_evalmatch_tags.json: same group key.
    assert n.group_key == "grafana-legacy:7"
    assert [a.status for a in parse(body("grafana_legacy_ok_test_notification.json")).alerts] == [
        "resolved"
    ]


def test_legacy_no_data_is_firing_with_rule_labels() -> None:
    n = parse(body("grafana_legacy_no_data.json"))
    (alert,) = n.alerts
    assert n.status == alert.status == "firing"
    assert dict(alert.labels) == {"alertname": "No Data alert"}
    assert dict(alert.annotations) == {
        "title": "[Alerting] No Data alert",
        "message": "The panel has no data.",
        "ruleUrl": "http://localhost:3000/d/GG2qhR3Wz/alerttest?fullscreen&edit&tab=alert&panelId=6&orgId=1",
    }


def test_legacy_missing_parts() -> None:
    n = parse(encode({"evalMatches": None, "state": "no_data", "ruleId": "r-1"}))
    (alert,) = n.alerts
    assert n.status == "firing"
    assert n.group_key == "grafana-legacy:r-1"
    assert dict(alert.labels) == {}
    assert alert.alertname == ""
    assert dict(alert.annotations) == {}
    assert alert.fingerprint == "cbf29ce484222325"
    assert parse(encode({"ruleName": "x", "state": "ok"})).group_key == "grafana-legacy:"


# --- values -----------------------------------------------------------------------------------


def test_values_are_read_only() -> None:
    alert = parse(body("alertmanager_firing_single.json")).alerts[0]
    with pytest.raises(TypeError):
        alert.labels["severity"] = "info"  # type: ignore[index]
    with pytest.raises(TypeError):
        alert.annotations["summary"] = "x"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        alert.status = "resolved"  # type: ignore[misc]


def test_constructed_values_copy_their_mappings() -> None:
    labels = {"alertname": "A"}
    alert = Alert("firing", labels, {}, None, None, "f", "")
    labels["alertname"] = "B"
    assert alert.alertname == "A"
    n = Notification("alertmanager", "r", "g", "firing", [alert], 0)  # type: ignore[arg-type]
    assert n.alerts == (alert,)


def test_null_labels_and_missing_optional_fields() -> None:
    payload = am_alert_with(
        0, labels=None, annotations=None, generatorURL=None, startsAt=None, fingerprint=None
    )
    payload["alerts"][0]["labels"] = None
    payload.pop("truncatedAlerts")
    payload.pop("groupKey")
    payload.pop("receiver")
    n = parse(encode(payload))
    alert = n.alerts[0]
    assert dict(alert.labels) == {}
    assert dict(alert.annotations) == {}
    assert alert.generator_url == ""
    assert alert.starts_at is None
    assert alert.alertname == ""
    assert alert.fingerprint == "cbf29ce484222325"
    assert (n.receiver, n.group_key, n.truncated_alerts) == ("", "", 0)


def test_empty_alert_list_is_accepted() -> None:
    n = parse(encode(am_with(alerts=[])))
    assert n.alerts == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-08-19T11:52:22Z", utc(2021, 8, 19, 11, 52, 22)),
        ("2021-08-19T11:52:22.1Z", utc(2021, 8, 19, 11, 52, 22, 100000)),
        ("2021-08-19T11:52:22.999999999Z", utc(2021, 8, 19, 11, 52, 22, 999999)),
        ("2020-04-23T17:28:01.014462791+04:00", utc(2020, 4, 23, 13, 28, 1, 14462)),
        ("2021-12-31T23:30:00-01:00", utc(2022, 1, 1, 0, 30, 0)),
        ("2021-08-19t11:52:22z", utc(2021, 8, 19, 11, 52, 22)),
        ("0001-01-01T00:00:00Z", None),
        ("0001-01-01T00:00:00.000000000Z", None),
        ("0001-01-01T00:00:00.5Z", utc(1, 1, 1, 0, 0, 0, 500000)),
    ],
)
def test_timestamps(text: str, expected: datetime | None) -> None:
    n = parse(encode(am_alert_with(0, startsAt=text, endsAt=text)))
    assert n.alerts[0].starts_at == expected
    assert n.alerts[0].ends_at == expected


def test_lone_surrogate_is_replaced() -> None:
    raw = encode(am_alert_with(0, annotations={"summary": "bad \ud800 text"}))
    assert b"\\ud800" in raw
    n = parse(raw)
    assert n.alerts[0].annotations["summary"] == "bad \ufffd text"
    n.alerts[0].annotations["summary"].encode("utf-8")


def test_lone_surrogates_are_replaced_wherever_they_are() -> None:
    doc = json.loads(encode(am_alert_with(0, labels={"te\udc80am": "ops\udbff"})))
    doc["receiver"], doc["groupKey"] = "r\ud800", "{}:{alertname=\"\udfff\"}"
    n = parse(json.dumps(doc).encode())
    assert (n.receiver, n.group_key) == ("r\ufffd", '{}:{alertname="\ufffd"}')
    assert n.alerts[0].labels["te\ufffdam"] == "ops\ufffd"


@pytest.mark.parametrize("text", ["\\ud800", "\\u", "\ud7ff", "\ue000", "\\\\ud800"])
def test_text_that_only_looks_like_a_surrogate_escape_is_kept(text: str) -> None:
    raw = encode(am_alert_with(0, annotations={"summary": text}))
    assert parse(raw).alerts[0].annotations["summary"] == text


def test_utf8_bom_is_tolerated() -> None:
    assert parse(b"\xef\xbb\xbf" + body("alertmanager_firing_single.json")) == parse(
        body("alertmanager_firing_single.json")
    )


# --- detection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"alerts": [], "version": "4"}, "alertmanager"),
        ({"alerts": [], "version": "3"}, "alertmanager"),
        ({"alerts": [], "version": "1"}, "grafana"),
        ({"alerts": [], "orgId": 1}, "grafana"),
        ({"alerts": [], "title": "x"}, "grafana"),
        ({"alerts": [], "version": "4", "orgId": 1}, "alertmanager"),
        ({"ruleName": "r"}, "grafana-legacy"),
        ({"evalMatches": []}, "grafana-legacy"),
        ({"state": "ok", "title": "[OK] r"}, "grafana-legacy"),
    ],
)
def test_detect(value: dict[str, Any], expected: str) -> None:
    assert detect(value) == expected


@pytest.mark.parametrize(
    ("value", "message", "where"),
    [
        (
            [],
            "not an Alertmanager or Grafana webhook payload: "
            "the top level is an array, expected an object",
            "",
        ),
        (
            {"foo": 1, "state": "ok"},
            "not an Alertmanager or Grafana webhook payload: "
            'no "alerts", "ruleName" or "evalMatches" key',
            "",
        ),
        (
            {"alerts": []},
            'payload has "alerts" but no "version" '
            '(expected "4" or "3" for Alertmanager, "1" for Grafana)',
            "version",
        ),
        (
            {"alerts": [], "version": 4},
            'unsupported Alertmanager payload version 4 (expected "4" or "3")',
            "version",
        ),
        (
            {"alerts": [], "version": "2", "orgId": 1},
            'unsupported Grafana payload version "2" (expected "1")',
            "version",
        ),
    ],
)
def test_detect_rejects(value: object, message: str, where: str) -> None:
    with pytest.raises(PayloadError) as info:
        detect(value)
    assert info.value.message == message
    assert info.value.where == where


# --- errors -----------------------------------------------------------------------------------


def test_not_json() -> None:
    e = parse_error(b"hello")
    assert e.message == "body is not valid JSON: Expecting value at line 1 column 1"
    assert e.where == ""
    e = parse_error(b'{"alerts": [}')
    assert e.message == "body is not valid JSON: Expecting value at line 1 column 13"


@pytest.mark.parametrize("raw", [b"", b" \r\n\t"])
def test_empty_body(raw: bytes) -> None:
    e = parse_error(raw)
    assert (e.message, e.where) == ("body is empty", "")


def test_invalid_utf8() -> None:
    e = parse_error(b'{"receiver": "\xff"}')
    assert e.message == "body is not valid UTF-8: invalid start byte at byte 14"
    assert e.where == ""


def test_nan_is_not_json() -> None:
    e = parse_error(b'{"alerts": [], "version": "4", "truncatedAlerts": NaN}')
    assert e.message == "body is not valid JSON: NaN is not allowed"


def test_huge_integer() -> None:
    e = parse_error(b'{"groupKey": ' + b"9" * 5000 + b"}")
    assert e.message.startswith("body cannot be decoded: Exceeds the limit (4300 digits)")


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 100_000])
def test_deeply_nested(raw: bytes) -> None:
    e = parse_error(raw)
    assert (e.message, e.where) == ("body is nested too deeply", "")


def test_json_list_top_level() -> None:
    e = parse_error(b"[1, 2]")
    assert e.message == (
        "not an Alertmanager or Grafana webhook payload: "
        "the top level is an array, expected an object"
    )
    assert e.where == ""


@pytest.mark.parametrize(
    ("alerts", "got"),
    [({"a": 1}, "an object"), (None, "null"), ("x", 'a string ("x")')],
)
def test_alerts_not_a_list(alerts: object, got: str) -> None:
    payload = am_with()
    payload["alerts"] = alerts
    e = parse_error(encode(payload))
    assert e.message == f"alerts must be an array, got {got}"
    assert e.where == "alerts"


def test_alert_not_an_object() -> None:
    payload = am_with()
    payload["alerts"][1] = "HighLoad"
    e = parse_error(encode(payload))
    assert e.message == 'alerts[1] must be an object, got a string ("HighLoad")'
    assert e.where == "alerts[1]"


def test_label_value_a_number() -> None:
    payload = am_with()
    payload["alerts"][2]["labels"]["severity"] = 3
    e = parse_error(encode(payload))
    assert e.message == "alerts[2].labels.severity must be a string, got a number (3)"
    assert e.where == "alerts[2].labels.severity"


def test_label_key_that_is_not_an_identifier_is_quoted_in_path() -> None:
    payload = am_with()
    payload["alerts"][0]["labels"]["info.host_id"] = None
    e = parse_error(encode(payload))
    assert e.message == 'alerts[0].labels["info.host_id"] must be a string, got null'
    assert e.where == 'alerts[0].labels["info.host_id"]'


def test_labels_not_an_object() -> None:
    e = parse_error(encode(am_alert_with(2, labels=["a", "b"])))
    assert (e.message, e.where) == (
        "alerts[2].labels must be an object, got an array",
        "alerts[2].labels",
    )


def test_annotation_value_not_a_string() -> None:
    e = parse_error(encode(am_alert_with(0, annotations={"summary": {"x": 1}})))
    assert e.message == "alerts[0].annotations.summary must be a string, got an object"
    assert e.where == "alerts[0].annotations.summary"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", 'alerts[1].startsAt is not an RFC 3339 timestamp: "yesterday"'),
        ("2021-08-19", 'alerts[1].startsAt is not an RFC 3339 timestamp: "2021-08-19"'),
        (
            "2021-08-19T11:52:22",
            'alerts[1].startsAt is not an RFC 3339 timestamp: "2021-08-19T11:52:22"',
        ),
        (
            "2021-08-19T11:52:22.Z",
            'alerts[1].startsAt is not an RFC 3339 timestamp: "2021-08-19T11:52:22.Z"',
        ),
        (
            "2021-08-19 11:52:22Z",
            'alerts[1].startsAt is not an RFC 3339 timestamp: "2021-08-19 11:52:22Z"',
        ),
        (
            "２０２１-08-19T11:52:22Z",
            'alerts[1].startsAt is not an RFC 3339 timestamp: "２０２１-08-19T11:52:22Z"',
        ),
        ("2021-13-19T11:52:22Z", 'alerts[1].startsAt is not a valid time: "2021-13-19T11:52:22Z"'),
        ("2021-02-29T11:52:22Z", 'alerts[1].startsAt is not a valid time: "2021-02-29T11:52:22Z"'),
        (
            "2021-08-19T11:52:22+24:00",
            'alerts[1].startsAt is not a valid time: "2021-08-19T11:52:22+24:00"',
        ),
        (
            "0001-01-01T00:00:00+01:00",
            'alerts[1].startsAt is not a valid time: "0001-01-01T00:00:00+01:00"',
        ),
        (
            "9999-12-31T23:59:59-01:00",
            'alerts[1].startsAt is not a valid time: "9999-12-31T23:59:59-01:00"',
        ),
        (
            1629373942,
            "alerts[1].startsAt must be an RFC 3339 timestamp string, got a number (1629373942)",
        ),
    ],
)
def test_bad_starts_at(value: object, message: str) -> None:
    e = parse_error(encode(am_alert_with(1, startsAt=value)))
    assert e.message == message
    assert e.where == "alerts[1].startsAt"


def test_bad_ends_at() -> None:
    e = parse_error(encode(am_alert_with(0, endsAt=False)))
    assert (
        e.message == "alerts[0].endsAt must be an RFC 3339 timestamp string, got a boolean (false)"
    )
    assert e.where == "alerts[0].endsAt"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (None, 'alerts[1].status is missing (expected "firing" or "resolved")'),
        ("pending", 'alerts[1].status must be "firing" or "resolved", got "pending"'),
        ("FIRING", 'alerts[1].status must be "firing" or "resolved", got "FIRING"'),
        (1, 'alerts[1].status must be "firing" or "resolved", got 1'),
    ],
)
def test_bad_alert_status(status: object, message: str) -> None:
    e = parse_error(encode(am_alert_with(1, status=status)))
    assert (e.message, e.where) == (message, "alerts[1].status")


def test_bad_top_level_fields() -> None:
    e = parse_error(encode(am_with(status=None)))
    assert (e.message, e.where) == ('status is missing (expected "firing" or "resolved")', "status")
    e = parse_error(encode(am_with(receiver=["a"])))
    assert (e.message, e.where) == ("receiver must be a string, got an array", "receiver")
    e = parse_error(encode(am_with(groupKey=1.5)))
    assert (e.message, e.where) == ("groupKey must be a string, got a number (1.5)", "groupKey")
    e = parse_error(encode(am_with(truncatedAlerts=-1)))
    assert e.message == "truncatedAlerts must be a non-negative integer, got a number (-1)"
    assert e.where == "truncatedAlerts"
    e = parse_error(encode(am_with(truncatedAlerts=True)))
    assert e.message == "truncatedAlerts must be a non-negative integer, got a boolean (true)"
    e = parse_error(encode(am_alert_with(0, fingerprint=7)))
    assert e.message == "alerts[0].fingerprint must be a string, got a number (7)"
    assert e.where == "alerts[0].fingerprint"
    e = parse_error(encode(am_alert_with(0, generatorURL={})))
    assert e.where == "alerts[0].generatorURL"


@pytest.mark.parametrize(
    ("name", "source", "message"),
    [
        (
            "grafana_unified_firing.json",
            "alertmanager",
            'expected an Alertmanager payload (version "4" or "3"), got a Grafana payload',
        ),
        (
            "grafana_legacy_alerting.json",
            "alertmanager",
            'expected an Alertmanager payload (version "4" or "3"), got a legacy Grafana payload',
        ),
        (
            "alertmanager_firing_multi.json",
            "grafana",
            'expected a Grafana payload (unified alerting version "1" or legacy dashboard '
            "alerting), got an Alertmanager payload",
        ),
        (
            "grafana_unified_firing.json",
            "grafana-legacy",
            "expected a legacy Grafana dashboard alerting payload, got a Grafana payload",
        ),
    ],
)
def test_wrong_source_for_endpoint(name: str, source: str, message: str) -> None:
    e = parse_error(body(name), source)
    assert (e.message, e.where) == (message, "")


def test_unsupported_version() -> None:
    e = parse_error(encode(am_with(version="5")), "alertmanager")
    assert e.message == 'unsupported Alertmanager payload version "5" (expected "4" or "3")'
    assert e.where == "version"
    e = parse_error(encode(am_with(version=None)))
    assert e.message == (
        'payload has "alerts" but no "version" '
        '(expected "4" or "3" for Alertmanager, "1" for Grafana)'
    )
    assert e.where == "version"


def test_legacy_errors() -> None:
    payload = doc("grafana_legacy_alerting_evalmatch_tags.json")
    payload["evalMatches"][0]["tags"]["job"] = 1
    e = parse_error(encode(payload))
    assert (e.message, e.where) == (
        "evalMatches[0].tags.job must be a string, got a number (1)",
        "evalMatches[0].tags.job",
    )
    payload["evalMatches"] = [{"value": 1}, 5]
    e = parse_error(encode(payload))
    assert (e.message, e.where) == (
        "evalMatches[1] must be an object, got a number (5)",
        "evalMatches[1]",
    )
    payload["evalMatches"] = {"value": 1}
    e = parse_error(encode(payload))
    assert (e.message, e.where) == ("evalMatches must be an array, got an object", "evalMatches")
    e = parse_error(encode({"ruleName": "r"}))
    assert (e.message, e.where) == ("state is missing (expected a string)", "state")
    e = parse_error(encode({"ruleName": "r", "state": "ok", "tags": "a"}))
    assert (e.message, e.where) == ('tags must be an object, got a string ("a")', "tags")
    e = parse_error(encode({"ruleName": "r", "state": "ok", "ruleId": 1.5}))
    assert (e.message, e.where) == ("ruleId must be an integer, got a number (1.5)", "ruleId")
    e = parse_error(encode({"ruleName": 3, "state": "ok"}))
    assert (e.message, e.where) == ("ruleName must be a string, got a number (3)", "ruleName")
    e = parse_error(encode({"ruleName": "r", "state": "ok", "title": 3}))
    assert (e.message, e.where) == ("title must be a string, got a number (3)", "title")


def test_long_values_are_shortened_in_messages() -> None:
    e = parse_error(encode(am_alert_with(0, status="x" * 500)))
    assert e.message == 'alerts[0].status must be "firing" or "resolved", got "' + "x" * 56 + "..."


def test_programming_errors_are_not_payload_errors() -> None:
    with pytest.raises(ValueError, match="source must be None or one of"):
        parse(body("alertmanager_firing_multi.json"), "prometheus")
    with pytest.raises(TypeError, match="body must be bytes, got str"):
        parse('{"alerts": []}')  # type: ignore[arg-type]


# --- nothing but PayloadError escapes ---------------------------------------------------------

ENDPOINT_SOURCES = st.sampled_from([None, "alertmanager", "grafana", "grafana-legacy"])

# Keys the parser looks at, so that generated objects reach past detection.
KEYS = st.sampled_from(
    [
        "alerts",
        "version",
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "fingerprint",
        "generatorURL",
        "receiver",
        "groupKey",
        "truncatedAlerts",
        "orgId",
        "state",
        "title",
        "message",
        "ruleUrl",
        "ruleName",
        "ruleId",
        "evalMatches",
        "tags",
    ]
) | st.text(max_size=8)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    # NaN and infinities are dumped as NaN/Infinity, which parse() must reject.
    | st.floats()
    | st.sampled_from(
        [
            "4",
            "3",
            "1",
            "firing",
            "resolved",
            "ok",
            "alerting",
            "",
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "2021-08-19T11:52:22.012345678+02:00",
            "2021-02-29T11:52:22Z",
            "9999-12-31T23:59:59-23:59",
            # the far future, which the bridge must bound wherever it derives a time from it
            "9999-12-31T23:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "2099-01-01T00:00:00Z",
        ]
    )
    | st.text(max_size=20)
)

JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=30,
)

# Scalars and small containers as often as deep values: most checks are one level deep.
REPLACEMENTS = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(KEYS, SCALARS, max_size=3),
    JSON_VALUES,
)


def parse_or_payload_error(raw: bytes, source: str | None) -> None:
    try:
        result = parse(raw, source)
    except PayloadError as e:
        assert isinstance(e.where, str)
        assert e.message
    else:
        assert isinstance(result, Notification)
        assert result.source in SOURCES


@FUZZ
@given(raw=st.binary(max_size=200), source=ENDPOINT_SOURCES)
def test_fuzz_arbitrary_bytes(raw: bytes, source: str | None) -> None:
    parse_or_payload_error(raw, source)


@FUZZ
@given(value=JSON_VALUES, source=ENDPOINT_SOURCES)
def test_fuzz_arbitrary_json(value: object, source: str | None) -> None:
    parse_or_payload_error(json.dumps(value).encode(), source)


@FUZZ
@given(
    path=st.sampled_from(PAYLOAD_FILES),
    data=st.data(),
    replacement=REPLACEMENTS,
    delete=st.booleans(),
    source=ENDPOINT_SOURCES,
)
def test_fuzz_mutated_real_payloads(
    path: Path, data: st.DataObject, replacement: object, delete: bool, source: str | None
) -> None:
    payload = json.loads(path.read_bytes())
    # Walk down from the top, stopping at each level with some probability, so that top-level
    # keys and whole alerts are replaced about as often as single label values.
    parent: Any = None
    step: Any = None
    node: Any = payload
    while isinstance(node, dict | list) and node:
        if parent is not None and data.draw(st.booleans(), label="stop here"):
            break
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, step = node, data.draw(st.sampled_from(keys), label="step")
        node = parent[step]
    if delete:
        del parent[step]
    else:
        parent[step] = replacement
    parse_or_payload_error(json.dumps(payload).encode(), source)


# Values that break each kind of check at least once: every type, the empty containers, the
# out-of-range zero time, a wrong enum string.
ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5,
    "",
    "x",
    [],
    [1],
    {},
    {"a": 1},
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59.999999999Z",
]
DELETE = object()


def json_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += json_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += json_paths(item, (*path, index))
    return paths


@pytest.mark.parametrize("path", PAYLOAD_FILES, ids=lambda p: p.name)
def test_every_value_replaced_or_deleted(path: Path) -> None:
    """Deterministic sweep next to the fuzzing: every position of a real body gets every odd
    value (and is deleted); parse() must answer with a Notification or a PayloadError."""
    original = json.loads(path.read_bytes())
    for target in json_paths(original)[1:]:
        for value in [*ODD_VALUES, DELETE]:
            payload = json.loads(path.read_bytes())
            parent = payload
            for step in target[:-1]:
                parent = parent[step]
            if value is DELETE:
                del parent[target[-1]]
            else:
                parent[target[-1]] = value
            raw = json.dumps(payload).encode()
            for source in (None, "alertmanager", "grafana"):
                try:
                    parse(raw, source)
                except PayloadError:
                    pass
