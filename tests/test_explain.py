"""explain: the same judgement as a webhook, shown rule by rule and guard by guard, changing
nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from bridge.auth import InboundAuth
from bridge.cli import main
from bridge.client import Secret
from tests.conftest import Bridge, Fake
from tests.helpers import alert, webhook

RULES = """\
rules:
  - name: reboot-down
    match: ['alertname = "DeviceDown"', 'severity =~ "critical|page"']
    device: "{{ labels.device }}"
    operation: reboot
  - name: sync-on-resolve
    match: ['alertname = "DeviceDown"']
    device: "{{ labels.device }}"
    operation: sync
    status: resolved
"""
PAYLOAD = webhook(
    alert("DeviceDown", "r1", severity="critical", fingerprint="a" * 16),
    alert("DeviceDown", "r2", severity="warning", fingerprint="b" * 16),
).decode()


def files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "payload.json").write_text(PAYLOAD)
    return tmp_path / "rules.yaml", tmp_path / "payload.json"


def test_explain_without_state(tmp_path: Path) -> None:
    rules, body = files(tmp_path)
    result = CliRunner().invoke(main, ["explain", str(body), "--rules", str(rules), "--state",
                                       str(tmp_path / "none.db"), "--live"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{body}: alertmanager payload, 2 alert(s); rules {rules}")
    assert lines[1] == (f"No state file at {tmp_path / 'none.db'}: no cooldown, budget use or"
                        " breaker is assumed.")
    assert lines[2:] == [
        "",
        "Alert 1: DeviceDown [aaaaaaaa] firing  {alertname=DeviceDown, severity=critical,"
        " device=r1}",
        "  rule reboot-down: MATCH -> reboot on r1: execute (rule matched)",
        "      duplicate  ok                first ask for it in this payload",
        "      cooldown   ok                no cooldown running",
        "      dry_run    ok                live",
        "      pause      ok                not paused",
        "      breaker    ok                storm breaker closed",
        "      give_up    ok                below the give-up count",
        "      window     ok                no window to skip",
        "      storm      ok                below the storm breaker's threshold",
        "      budgets    ok                within every budget",
        "  rule sync-on-resolve: no match: acts on resolved alerts; this one is firing",
        "",
        "Alert 2: DeviceDown [bbbbbbbb] firing  {alertname=DeviceDown, severity=warning,"
        " device=r2}",
        "  rule reboot-down: no match: severity=~\"critical|page\" does not hold"
        " (severity='warning')",
        "  rule sync-on-resolve: no match: acts on resolved alerts; this one is firing",
    ]
    assert not (tmp_path / "none.db").exists()


def test_explain_reads_the_state_and_changes_nothing(
    make_bridge: Callable[..., Bridge], fake: Fake, tmp_path: Path
) -> None:
    bridge = make_bridge(RULES)
    bridge.post("/webhook", PAYLOAD)
    bridge.outcomes(1)
    before = bridge.audit()
    rules, body = files(tmp_path)
    result = CliRunner().invoke(main, ["explain", str(body), "--rules", str(rules), "--state",
                                       bridge.settings.state_path, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    first = doc["alerts"][0]["rules"][0]
    assert (first["verdict"], first["device"]) == ("cooldown", "r1")
    cooldown = next(g for g in first["guards"] if g["guard"] == "cooldown")
    assert cooldown["passed"] is False and cooldown["reason"].startswith("in cooldown until ")
    assert doc["alerts"][1]["rules"][0] == {
        "rule": "reboot-down", "matched": False,
        "why_not": "severity=~\"critical|page\" does not hold (severity='warning')"}
    assert bridge.audit() == before
    assert len(fake.calls()) == 1


def test_explain_over_http(make_bridge: Callable[..., Bridge], fake: Fake) -> None:
    bridge = make_bridge(RULES, auth=InboundAuth(bearer_tokens=(Secret("hook"),)))
    assert bridge.post("/api/explain", PAYLOAD).status_code == 401
    r = bridge.post("/api/explain", PAYLOAD, headers={"Authorization": "Bearer hook"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["source"] == "alertmanager"
    assert [(x["rule"], x.get("verdict")) for x in doc["alerts"][0]["rules"]] == [
        ("reboot-down", "execute"), ("sync-on-resolve", None)]
    assert bridge.audit() == []
    assert fake.calls() == []
    bad = bridge.post("/api/explain", b"{}", headers={"Authorization": "Bearer hook"})
    assert bad.status_code == 400
    assert requests.get(bridge.url + "/api/explain", timeout=5).status_code == 405


def test_explain_errors_are_one_line(tmp_path: Path) -> None:
    rules, _ = files(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    result = CliRunner().invoke(main, ["explain", str(tmp_path / "bad.json"), "--rules",
                                       str(rules)])
    assert result.exit_code == 1
    assert result.output == (f"Error: {tmp_path / 'bad.json'}: body is not valid JSON:"
                             " Expecting property name enclosed in double quotes at line 1"
                             " column 2\n")
    missing = CliRunner().invoke(main, ["explain", str(tmp_path / "nope.json"), "--rules",
                                        str(rules)])
    assert missing.output == f"Error: {tmp_path / 'nope.json'}: No such file or directory\n"


def test_the_audit_over_http_pages_with_filters(make_bridge: Callable[..., Bridge],
                                                fake: Fake) -> None:
    bridge = make_bridge(RULES, admin_auth=InboundAuth(bearer_tokens=(Secret("ops"),)))
    bridge.post("/webhook", PAYLOAD)
    bridge.outcomes(1)
    url, ok = bridge.url + "/api/audit", {"Authorization": "Bearer ops"}
    assert requests.get(url, timeout=5).status_code == 401
    first = requests.get(url, params={"limit": 2}, headers=ok, timeout=5).json()
    assert [(r["id"], r["event"], r["outcome"]) for r in first["records"]] == [
        (1, "decision", "execute"), (2, "decision", "no_match")]
    rest = requests.get(url, params={"after_id": first["next_after_id"]}, headers=ok,
                        timeout=5).json()
    assert [(r["id"], r["outcome"]) for r in rest["records"]] == [(3, "succeeded")]
    assert rest["next_after_id"] == 3
    only = requests.get(url, params={"device": "r1", "outcome": "succeeded", "since": "1h"},
                        headers=ok, timeout=5).json()
    assert [r["execution_id"].startswith("op_") for r in only["records"]] == [True]
    bad = requests.get(url, params={"since": "soon"}, headers=ok, timeout=5)
    assert bad.status_code == 400 and "since" not in bad.json() and "soon" in bad.json()["error"]


@pytest.mark.parametrize("starts_at", ["9999-12-31T23:00:00Z", "9999-12-31T23:59:59Z"])
def test_explain_an_alert_from_the_far_future(tmp_path: Path, starts_at: str) -> None:
    (tmp_path / "rules.yaml").write_text(RULES.replace("    operation: reboot\n",
                                                       "    operation: reboot\n"
                                                       "    min_age: 5m\n    cooldown: 2h\n"))
    doc = json.loads(PAYLOAD)
    doc["alerts"][0]["startsAt"] = starts_at
    (tmp_path / "payload.json").write_text(json.dumps(doc))
    result = CliRunner().invoke(main, ["explain", str(tmp_path / "payload.json"), "--rules",
                                       str(tmp_path / "rules.yaml"), "--state",
                                       str(tmp_path / "none.db"), "--live"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    line = next(x for x in result.output.splitlines() if "rule reboot-down: MATCH" in x)
    assert line.startswith("  rule reboot-down: MATCH -> reboot on r1: held_min_age (alert must"
                           " fire for 5m first: not before ")
    assert line.endswith(f" (its startsAt {starts_at[:-1]}.000Z is in the future: counted"
                         " from now))")
    as_json = CliRunner().invoke(main, ["explain", str(tmp_path / "payload.json"), "--rules",
                                        str(tmp_path / "rules.yaml"), "--state",
                                        str(tmp_path / "none.db"), "--live", "--json"])
    assert as_json.exit_code == 0, as_json.output
    decided = json.loads(as_json.output)["alerts"][0]["rules"][0]
    assert decided["until"] < "2100"  # now + 5m + 2h, not the year 10000
