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
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.audit import iso
from bridge.auth import InboundAuth
from bridge.cli import main
from bridge.client import Secret
from bridge.config import Settings
from bridge.errors import ConfigError
from tests.conftest import TOKEN, Bridge, Fake
from tests.helpers import (
    BridgeProcess,
    alert,
    audit,
    device_down,
    following,
    outcomes,
    payload,
    raw_controls,
    webhook,
)

OP_PATH = "/api/v1/inventory_device_name_operation/"
RULES = """\
breaker: {max: 100000, per: 5m}
budgets: []
rules:
  - name: reboot-down
    match: ['alertname = "DeviceDown"']
    device: "{{ labels.device }}"
    operation: reboot
  - name: wipe-owned
    match: ['kind = "owned"']
    device: "{{ labels.device }}"
    operation: factory
    allow_destructive: true
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


# -- untrusted text on the operator's terminal ------------------------------------------------

#: A forged audit row after a newline, then clear-screen, an OSC 52 clipboard write, a C1 CSI,
#: a right-to-left override, a line separator, DEL and a Unicode tag character.
FORGED_ROW = "2023-11-14 22:13:20  wipe-owned  r9  reboot  succeeded  200  forged"
HOSTILE_TEXT = ("Owned\n" + FORGED_ROW + "\r\x1b[2J\x1b]52;c;cm0gLXJmIH4K\x07\x9b31m"
                "\u202eevil\u2028next\u2029\x7f\U000e0041")


def owned(n: int, alertname: str | None = None, **labels: str) -> bytes:
    """One firing alert that wipe-owned sends to device d{n}, with these labels as well."""
    return webhook(alert(alertname, f"d{n}", kind="owned", **labels))


def human_outputs(bridge: Bridge, payload_path: Path, **extra: list[str]) -> dict[str, Result]:
    """What an operator reads about this bridge's state: every human-readable command."""
    state, rules = bridge.settings.state_path, bridge.settings.rules_path
    commands = {
        "audit": ["audit", "--state", state, "--limit", "0"],
        "audit --limit 1": ["audit", "--state", state, "--limit", "1"],
        "pending": ["pending", "--state", state],
        "status": ["status", "--state", state, "--url", bridge.url, "--last", "1"],
        "explain": ["explain", str(payload_path), "--rules", rules, "--state", state],
        "cooldowns": ["cooldowns", "--state", state],
        **extra,
    }
    return {name: CliRunner().invoke(main, args) for name, args in commands.items()}


def test_hostile_label_text_reaches_the_terminal_escaped(make_bridge: Callable[..., Bridge],
                                                         tmp_path: Path) -> None:
    bridge = make_bridge(RULES)
    body = owned(1, alertname=HOSTILE_TEXT, site=HOSTILE_TEXT)
    assert bridge.post("/webhook", body).json()["summary"] == {"pending_approval": 1}
    (tmp_path / "hostile.json").write_bytes(body)
    rules_with_hostile_name = tmp_path / "hostile-rules.yaml"
    rules_with_hostile_name.write_text(RULES.replace("factory", '"fact\\e[2J\\x9bory"'))
    state = bridge.settings.state_path
    reject = CliRunner().invoke(main, ["reject", "1", "--state", state, "--as", HOSTILE_TEXT])
    assert reject.exit_code == 0, reject.output
    outputs = human_outputs(
        bridge, tmp_path / "hostile.json",
        since=["audit", "--state", state, "--since", HOSTILE_TEXT],
        check=["check", str(rules_with_hostile_name)],
    )
    for name, result in outputs.items():
        assert "Traceback" not in result.output, (name, result.output)
        assert raw_controls(result.output) == [], (name, result.output)
        assert not any(line.startswith(FORGED_ROW[:30]) for line in result.output.splitlines())
    # one row per record: the decision and its rejection, each on one line
    table = outputs["audit"].output.splitlines()
    assert len(table) == 3 and [row.split()[5] for row in table[1:]] == [
        "pending_approval", "rejected"]
    assert "Owned\\n2023-11-14 22:13:20" in table[1] and "\\x1b[2J\\x1b]52;c;" in table[1]
    assert "\\x9b31m\\u202eevil\\u2028next\\u2029\\x7f\\U000e0041" in table[1]
    assert "rejected by Owned\\n" in table[2]
    assert outputs["since"].output.startswith("Error: --since: invalid duration 'Owned\\n")
    assert outputs["check"].exit_code == 1


def test_audit_follow_escapes_hostile_text(make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(RULES)
    with following("--state", bridge.settings.state_path) as lines:
        assert lines.get(timeout=20).startswith("TIME ")
        bridge.post("/webhook", owned(1, alertname=HOSTILE_TEXT))
        row = lines.get(timeout=20)
        assert raw_controls(row.rstrip("\n")) == []
        assert "pending_approval" in row and "Owned\\n2023" in row
        bridge.post("/webhook", owned(2, alertname="Owned"))
        assert "d2" in lines.get(timeout=20)  # the next record is the next line: nothing forged


LABEL_TEXT = st.text(max_size=40) | st.sampled_from([
    HOSTILE_TEXT, FORGED_ROW, "\n", "\r\n", "\x1b[2J", "\x1b]52;c;eA==\x07", "\x9b1m", "\x85",
    "\u202e", "\u2066", "\u200b", "\ufeff", "\u2028", "\u2029", "\x00", "\x7f", "\U000e0041",
    "\\x1b", "é\u00a0ü",
])


@pytest.fixture
def owned_bridge(make_bridge: Callable[..., Bridge]) -> Bridge:
    return make_bridge(RULES)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(alertname=LABEL_TEXT, site=LABEL_TEXT)
def test_fuzz_any_label_text_is_one_escaped_line_per_record(
    owned_bridge: Bridge, tmp_path: Path, alertname: str, site: str
) -> None:
    n = len(owned_bridge.audit()) + 1  # a new device each time: no cooldown in the way
    hostile, plain = tmp_path / "hostile.json", tmp_path / "plain.json"
    hostile.write_bytes(owned(n, alertname=alertname, site=site))
    plain.write_bytes(owned(n, alertname="A", site="B"))
    assert owned_bridge.post("/webhook", hostile.read_bytes()).status_code == 200
    outputs = human_outputs(owned_bridge, hostile)
    for name, result in outputs.items():
        assert (name, result.exit_code, raw_controls(result.output)) == (name, 0, [])
    lines = {name: result.output.splitlines() for name, result in outputs.items()}
    assert len(lines["audit --limit 1"]) == 2
    assert len(lines["audit"]) == 1 + n
    assert len(lines["pending"]) == 1 + n
    assert len(lines["cooldowns"]) == 1 + n
    assert lines["status"][-3] == "Latest:"
    reference = human_outputs(owned_bridge, plain)["explain"].output.splitlines()
    assert len(lines["explain"]) == len(reference)


# -- the edges of the operator's parameters ----------------------------------------------------

TOO_BIG = str(2**63)  # one past SQLite's (and PostgreSQL bigint's) largest integer
BIGGEST = str(2**63 - 1)
AUDIT_PARAMETERS = [
    ("limit", "-1", "limit: must be an integer from 1 to 1000, got '-1'"),
    ("limit", "0", "limit: must be an integer from 1 to 1000, got '0'"),
    ("limit", "1001", "limit: must be an integer from 1 to 1000, got '1001'"),
    ("limit", TOO_BIG, f"limit: must be an integer from 1 to 1000, got '{TOO_BIG}'"),
    ("limit", "ten", "limit: must be an integer from 1 to 1000, got 'ten'"),
    ("after_id", "-1", f"after_id: must be an integer from 0 to {BIGGEST}, got '-1'"),
    ("after_id", TOO_BIG, f"after_id: must be an integer from 0 to {BIGGEST}, got '{TOO_BIG}'"),
    ("after_id", "1" * 5000, f"after_id: must be an integer from 0 to {BIGGEST}, got '111"),
    ("since", "soon", "since: invalid duration 'soon'"),
    ("since", "9" * 30 + "y", "since: invalid duration '999"),
]


@pytest.fixture
def operator_api(make_bridge: Callable[..., Bridge]) -> Bridge:
    bridge = make_bridge(RULES, admin_auth=InboundAuth(bearer_tokens=(Secret("ops"),)))
    bridge.post("/webhook", owned(1))
    return bridge


@pytest.mark.parametrize(("parameter", "value", "error"), AUDIT_PARAMETERS)
def test_audit_api_parameters_out_of_range_are_a_400_naming_them(
    operator_api: Bridge, parameter: str, value: str, error: str
) -> None:
    r = requests.get(operator_api.url + "/api/audit", params={parameter: value}, timeout=5,
                     headers={"Authorization": "Bearer ops"})
    assert (r.status_code, r.json()["parameter"]) == (400, parameter), r.text
    assert r.json()["error"].startswith(error)


def test_audit_api_parameters_at_their_edges(operator_api: Bridge) -> None:
    def get(**params: str) -> list[int]:
        r = requests.get(operator_api.url + "/api/audit", params=params, timeout=5,
                         headers={"Authorization": "Bearer ops"})
        assert r.status_code == 200, r.text
        return [record["id"] for record in r.json()["records"]]

    assert get(limit="1") == [1]
    assert get(limit="1000", after_id="0") == [1]
    assert get(after_id=BIGGEST) == []
    assert get(since="0") == [] and get(since="10y") == [1]


@pytest.mark.parametrize(("operation_id", "status"), [
    (TOO_BIG, 400), ("9" * 30, 400), (BIGGEST, 404), ("0", 400), ("1", 200)])
def test_operation_ids_out_of_range_are_a_400(operator_api: Bridge, operation_id: str,
                                              status: int) -> None:
    r = requests.post(f"{operator_api.url}/api/operations/{operation_id}/reject", timeout=5,
                      headers={"Authorization": "Bearer ops"})
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json() == {"parameter": "operation_id", "error": (
            f"operation_id: must be an integer from 1 to {BIGGEST}, got '{operation_id}'")}


@pytest.mark.parametrize("args", [
    ["approve", TOO_BIG], ["reject", TOO_BIG], ["approve", "99999999999999999999"],
    ["approve", "0"], ["reject", "-1"], ["audit", "--limit", TOO_BIG],
    ["audit", "--limit", "-1"], ["status", "--last", TOO_BIG, "--url", "http://127.0.0.1:9"],
    ["audit", "--since", "9" * 30 + "y"],
])
def test_cli_numbers_out_of_range_are_an_error_line(operator_api: Bridge,
                                                    args: list[str]) -> None:
    result = CliRunner().invoke(main, [*args, "--state", operator_api.settings.state_path])
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert result.exit_code != 0
    error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1, result.output
    assert args[-1] in error[0] or args[1] in error[0], error
