"""Hostile input: device names from labels, oversized or malformed bodies, fuzzing, secrets."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.audit import iso
from bridge.config import Settings
from bridge.errors import ConfigError
from tests.conftest import TOKEN, Bridge, Fake
from tests.helpers import BridgeProcess, audit, device_down, outcomes, payload, webhook

OP_PATH = "/api/v1/inventory_device_name_operation/"
RULES = """\
breaker: {max: 100000, per: 5m}
budgets: []
rules:
  - name: reboot-down
    match: ['alertname = "DeviceDown"']
    device: "{{ labels.device }}"
    operation: reboot
"""
HOSTILE = ["../admin", "a/b", "x?y", "%2e%2e", "#", "a\nb", "a\x00b", "x" * 10_000, ".", "..",
           "r1/../../admin", "r 1", "\u202eevil", "r1?operation=factory", "r1#frag", "é"]


def test_hostile_device_names_are_refused_and_audited(make_bridge: Callable[..., Bridge],
                                                      fake: Fake) -> None:
    bridge = make_bridge(RULES)
    answer = bridge.post("/webhook", device_down(*HOSTILE)).json()
    got = [(d["verdict"], d["reason"]) for a in answer["alerts"] for d in a["decisions"]]
    # the 10 kB name is stopped earlier, by the template's output cap
    assert [v for v, _ in got] == ["invalid_device"] * 7 + ["template_error"] + \
        ["invalid_device"] * (len(HOSTILE) - 8)
    assert got[7][1] == "device template rendered 10000 characters (limit 1024)"
    assert got[0][1] == ("device name '../admin' does not match the device pattern"
                         " '[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}'")
    assert got[5][1] == "device name contains control characters"
    refused = bridge.audit(outcome="invalid_device")
    assert len(refused) == len(HOSTILE) - 1
    assert [r.device for r in refused[5:7]] == ["a\\nb", "a\\x00b"]  # escaped, not raw
    assert max(len(r.device) for r in refused) <= 64 + len("...(10000 chars)")
    bridge.post("/webhook", device_down("r1"))
    bridge.outcomes(1)
    assert [c["raw_path"] for c in fake.calls()] == [OP_PATH + "r1/"]


def test_even_a_permissive_pattern_never_changes_the_url(make_bridge: Callable[..., Bridge],
                                                         fake: Fake) -> None:
    names = ["a/b", "x?y", "%2e%2e", "#", "r1/../../admin", "r1?operation=factory", "é",
             "../admin"]
    requests.put(f"{fake.control}/devices", json={"devices": names}, timeout=5)
    bridge = make_bridge(RULES, device_pattern=".+", concurrency=8, rate_limit=1000.0)
    answer = bridge.post("/webhook", device_down(*names, ".", "..", "a\nb")).json()
    assert answer["summary"] == {"execute": len(names), "invalid_device": 3}
    bridge.outcomes(len(names))
    calls = fake.calls()
    assert sorted(c["raw_path"] for c in calls) == sorted(
        OP_PATH + quote(n, safe="") + "/" for n in names)
    assert {c["status"] for c in calls} == {200}  # every one reached its own device, by name
    assert sorted(c["device"] for c in calls) == sorted(names)


def test_too_large_bodies_get_413(make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(RULES, max_body=4096)
    r = bridge.post("/webhook", b"{" + b" " * 5000 + b"}")
    assert (r.status_code, r.json()) == (
        413, {"error": "body is larger than BRIDGE_MAX_BODY (4096 bytes)"})
    assert bridge.post("/webhook", b"{" + b" " * 4096).status_code == 413  # 4097 bytes
    assert bridge.post("/webhook", b"{" + b" " * 4095).status_code == 400  # 4096: read, parsed


def test_too_many_alerts_get_413(make_bridge: Callable[..., Bridge], fake: Fake) -> None:
    bridge = make_bridge(RULES, max_alerts=3)
    r = bridge.post("/webhook", device_down("r1", "r2", "r3", "r4"))
    assert (r.status_code, r.json()) == (413, {"error": (
        "payload has 4 alerts, more than BRIDGE_MAX_ALERTS (3); set max_alerts in the"
        " sender's webhook config")})
    assert bridge.audit() == []


def test_wrong_content_type_gets_415(bridge: Bridge) -> None:
    body = payload("alertmanager_firing_multi.json")
    r = bridge.post("/webhook", body, headers={"Content-Type": "text/plain"})
    assert (r.status_code, r.json()) == (
        415, {"error": "Content-Type must be application/json, got text/plain"})
    ok = requests.post(bridge.url + "/webhook", data=body, timeout=10,
                       headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000, b'{"alerts": [' * 5000])
def test_deeply_nested_json_is_a_clear_400(bridge: Bridge, body: bytes) -> None:
    r = bridge.post("/webhook", body)
    assert r.status_code == 400
    assert r.json()["error"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["version", "alerts", "status", "labels", "receiver",
                                       "groupKey", "startsAt", "orgId", "state", "ruleName",
                                       "evalMatches", "tags", "x"]) | st.text(max_size=5),
                      children, max_size=6),
    max_leaves=30,
)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes_never_cause_a_5xx(bridge: Bridge, body: bytes) -> None:
    for path in ("/webhook", "/webhook/alertmanager", "/webhook/grafana"):
        r = bridge.post(path, body)
        assert r.status_code < 500, (path, body, r.text)


@FUZZ
@given(doc=JSON)
def test_fuzz_arbitrary_json_never_causes_a_5xx(bridge: Bridge, doc: object) -> None:
    body = json.dumps(doc).encode()
    for path in ("/webhook", "/webhook/alertmanager", "/webhook/grafana"):
        r = bridge.post(path, body)
        assert r.status_code < 500, (path, body, r.text)


# Every guard that turns a payload time into a time of its own: min_age (from startsAt), a
# window, approval; each with a cooldown after it.
TIMED_RULES = RULES + """\
  - name: sync-when-old
    match: ['alertname = "DeviceDown"']
    device: "{{ labels.device }}"
    operation: sync
    min_age: 5m
    cooldown: 2h
  - name: reconf-at-night-when-old
    match: ['alertname = "DeviceDown"']
    device: "{{ labels.device }}"
    operation: reconf
    min_age: 1d
    window: {days: mon, start: "03:00", end: "04:00", timezone: Europe/Madrid}
  - name: wipe-when-old
    match: ['alertname = "DeviceDown"']
    device: "{{ labels.device }}"
    operation: factory
    allow_destructive: true
    min_age: 5m
    status: any
"""
@pytest.fixture
def timed_bridge(make_bridge: Callable[..., Bridge]) -> Bridge:
    return make_bridge(TIMED_RULES, start_dispatcher=False)


# Times from the far past to the end of datetime's range, a skewed clock's future, the zero
# time, an offset that crosses the year 9999 in UTC, and no time at all.
TIMES = st.sampled_from([
    "2026-11-25T10:00:00Z", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00.5Z", "bad", "",
    "9999-12-31T23:00:00Z", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59.999999999Z",
    "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59+23:59", "2099-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.999Z",
]) | st.none()


@FUZZ
@given(alerts=st.lists(st.fixed_dictionaries({
    "status": st.sampled_from(["firing", "resolved", "other", ""]),
    # Half of them match the rules, on devices not yet in cooldown, so that their times reach
    # every guard.
    "labels": st.fixed_dictionaries({"alertname": st.just("DeviceDown"),
                                     "device": st.from_regex(r"[a-z][a-z0-9]{0,12}",
                                                             fullmatch=True)})
    | st.dictionaries(st.sampled_from(["alertname", "device", "site"]),
                      st.sampled_from(["DeviceDown", "r1", "", "../x", "a\x00"])
                      | st.text(max_size=8)),
    "startsAt": TIMES,
    "endsAt": TIMES,
})))
def test_fuzz_alert_shaped_payloads_never_cause_a_5xx(timed_bridge: Bridge,
                                                      alerts: list) -> None:
    bridge = timed_bridge  # one for all examples: state builds up as in life
    body = webhook(*alerts)
    for path in ("/webhook/alertmanager", "/api/explain"):
        r = bridge.post(path, body)
        assert r.status_code < 500, r.text
    if r.status_code == 200:
        # Nothing the payload says pushes a time past now + the longest min_age + cooldown.
        latest = iso(time.time() + 8 * 86400)
        times = [rule[k] for a in r.json()["alerts"] for rule in a["rules"]
                 for k in ("until", "not_before") if k in rule]
        assert all(t < latest for t in times), times


def test_a_missing_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BRIDGE_API_CA_BUNDLE .*: no such file"):
        Settings.from_env({"BRIDGE_API_CA_BUNDLE": str(tmp_path / "ca.pem")})
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert Settings.from_env({"BRIDGE_API_CA_BUNDLE": str(tmp_path / "ca.pem")}).api_ca_bundle


def test_a_bad_device_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="BRIDGE_DEVICE_PATTERN is not a valid regex"):
        Settings.from_env({"BRIDGE_DEVICE_PATTERN": "(["})


def test_no_secret_in_any_log_line_audit_record_or_answer(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake, tmp_path: Path
) -> None:
    hook_token, admin_token = "hook-Zq81-secret", "admin-Pw77-secret"
    bridge = gunicorn_bridge(env={"BRIDGE_WEBHOOK_TOKENS": hook_token,
                                  "BRIDGE_ADMIN_TOKENS": admin_token,
                                  "BRIDGE_RETRY_BASE": "0.05", "BRIDGE_MAX_ATTEMPTS": "2"})
    auth = {"Authorization": f"Bearer {hook_token}"}
    answers = []
    fake.behave(status=500, times=2)
    for name in ("alertmanager_firing_multi.json", "grafana_unified_firing.json",
                 "alertmanager_resolved.json"):
        answers.append(requests.post(bridge.url + "/webhook", data=payload(name),
                                     headers=auth, timeout=30).text)
    answers.append(requests.post(bridge.url + "/webhook", data=b"{bad", headers=auth,
                                 timeout=30).text)
    answers.append(requests.post(bridge.url + "/webhook", data=b"{}", timeout=30,
                                 headers={"Authorization": f"Bearer {hook_token}x"}).text)
    answers.append(requests.get(bridge.url + "/api/operations/pending", timeout=30,
                                headers={"Authorization": "Bearer wrong"}).text)
    answers.append(requests.get(bridge.url + "/-/ready", timeout=30).text)
    outcomes(bridge, 6)
    bridge.stop()
    records = "\n".join(json.dumps(r.to_json()) for r in audit(bridge))
    for secret in (TOKEN, hook_token, admin_token):
        for where, text in (("log", bridge.log()), ("audit", records),
                            ("answers", "\n".join(answers))):
            assert secret not in text, f"{secret} appears in the {where}"
    assert "refused: authentication failed" in bridge.log()


def post_chunked(url: str, path: str, chunks: list[bytes]) -> tuple[int, dict[str, Any]]:
    """POST with Transfer-Encoding: chunked and no Content-Length, as streaming clients do."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=iter(chunks), encode_chunked=True,
                     headers={"Content-Type": "application/json",
                              "Transfer-Encoding": "chunked"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_a_chunked_body_over_the_limit_gets_413_under_gunicorn(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake
) -> None:
    bridge = gunicorn_bridge(RULES, workers=1, env={"BRIDGE_MAX_BODY": "4096"})
    big = device_down(*(f"r{i}" for i in range(40)))  # about 7 kB, valid JSON
    assert len(big) > 4096
    chunks = [big[i:i + 1000] for i in range(0, len(big), 1000)]
    status, doc = post_chunked(bridge.url, "/webhook/alertmanager", chunks)
    assert (status, doc) == (413, {"error": "body is larger than BRIDGE_MAX_BODY (4096 bytes)"})
    # At the limit, and under it, a chunked body is read whole and judged.
    exact = device_down("r1")
    exact = exact[:-1] + b" " * (4096 - len(exact)) + b"}"
    assert len(exact) == 4096
    status, doc = post_chunked(bridge.url, "/webhook/alertmanager", [exact[:100], exact[100:]])
    assert (status, doc["summary"]) == (200, {"execute": 1}), doc
    status, doc = post_chunked(bridge.url, "/webhook/alertmanager", [device_down("r2")])
    assert (status, doc["summary"]) == (200, {"execute": 1}), doc
    assert len([r for r in audit(bridge) if r.event == "decision"]) == 2
    status, doc = post_chunked(bridge.url, "/webhook//alertmanager", [device_down("r3")])
    assert (status, set(doc)) == (404, {"error"})  # gunicorn passes the path on as it is
