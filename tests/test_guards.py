"""Guardrails over real HTTP: budgets, the storm breaker, pause, give-up, windows, min age,
shadow mode and approvals. The bridge must not be able to wreck a fleet."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from bridge.audit import iso
from bridge.auth import InboundAuth
from bridge.cli import main
from bridge.client import Secret
from tests.conftest import Bridge, Fake
from tests.helpers import Clock, alert, device_down, read_audit, webhook

NOON = 1_800_014_400.0  # 2027-01-15T12:00:00Z, a Friday


def verdicts(answer: dict[str, Any]) -> Counter[str]:
    return Counter(d["verdict"] for a in answer["alerts"] for d in a["decisions"])


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


REBOOT = """\
budgets:
  - {name: reboots, operation: reboot, max: 20, per: 1h}
breaker: {max: 10000, per: 5m}
rules:
  - name: reboot-down
    match: ['alertname = "DeviceDown"']
    device: "{{ labels.device }}"
    operation: reboot
"""


def test_a_storm_of_500_reboots_against_a_budget_of_20_makes_20_calls(
    make_bridge: Callable[..., Bridge], fake: Fake
) -> None:
    devices = [f"sw-{i:03d}" for i in range(500)]
    requests.put(f"{fake.control}/devices", json={"devices": devices}, timeout=5)
    bridge = make_bridge(REBOOT, rate_limit=1000.0, concurrency=8)
    total: Counter[str] = Counter()
    for start in range(0, 500, 100):
        answer = bridge.post("/webhook", device_down(*devices[start:start + 100]))
        total += verdicts(answer.json())
    assert total == {"execute": 20, "held_by_budget": 480}
    bridge.outcomes(20)
    assert len(fake.calls()) == 20
    held = [r for r in bridge.audit(outcome="held_by_budget")]
    assert len(held) == 480
    assert held[0].reason == "budget 'reboots' spent: 20 of 20 per 1h"


BREAKER = """\
breaker: {max: 3, per: 5m}
rules:
  - name: sync-down
    match: ['alertname = "DeviceDown"']
    device: "{{ labels.device }}"
    operation: sync
"""


def test_the_breaker_trips_survives_a_restart_and_resume_clears_it(
    make_bridge: Callable[..., Bridge], fake: Fake, tmp_path: Path
) -> None:
    bridge = make_bridge(BREAKER)
    answer = bridge.post("/webhook", device_down(*(f"r{i}" for i in range(5)))).json()
    assert [d["verdict"] for a in answer["alerts"] for d in a["decisions"]] == [
        "execute", "execute", "execute", "breaker_open", "breaker_open"]
    assert answer["alerts"][3]["decisions"][0]["reason"] == (
        "storm breaker tripped: 4 operations asked for within 5m")
    bridge.stop()
    state = tmp_path / "state.db"
    again = make_bridge(BREAKER)  # a restart on the same state file
    assert requests.get(again.url + "/-/ready", timeout=5).json()["sending"] == "breaker_open"
    assert verdicts(again.post("/webhook", device_down("r7")).json()) == {"breaker_open": 1}
    status = cli("status", "--state", str(state))
    assert "Sending:  STORM BREAKER OPEN since" in status.output
    resumed = cli("resume", "--state", str(state))
    assert resumed.output == ("Resumed (was: storm breaker open); queued operations are sent.\n")
    assert verdicts(again.post("/webhook", device_down("r8")).json()) == {"execute": 1}
    again.outcomes(4)
    # The operations queued before the trip were never sent while it was open... and are now.
    assert "r8" in {c["device"] for c in fake.calls()}


def test_pause_is_a_kill_switch_that_persists(make_bridge: Callable[..., Bridge], fake: Fake,
                                             tmp_path: Path) -> None:
    bridge = make_bridge(BREAKER.replace("max: 3", "max: 100"), start_dispatcher=False)
    state = str(tmp_path / "state.db")
    bridge.post("/webhook", device_down("r1"))  # queued while the dispatcher is stopped
    assert cli("pause", "--state", state).output == (
        "Paused: no operation is sent until `alert-bridge resume`.\n")
    assert verdicts(bridge.post("/webhook", device_down("r2")).json()) == {"paused": 1}
    assert bridge.dispatcher.step() > 0  # nothing may be claimed while paused
    assert fake.calls() == []
    assert cli("resume", "--state", state).output.startswith("Resumed (was: paused)")
    bridge.dispatcher.step()
    assert [c["device"] for c in fake.calls()] == ["r1"]


GIVE_UP = """\
rules:
  - name: reboot-down
    match: ['alertname = "DeviceDown"']
    device: "{{ labels.device }}"
    operation: reboot
    cooldown: 10m
    give_up: {after: 2, within: 1h}
"""


def test_give_up_on_a_device_that_keeps_failing(make_bridge: Callable[..., Bridge]) -> None:
    clock = Clock(NOON)
    bridge = make_bridge(GIVE_UP, clock=clock, start_dispatcher=False)
    seen = []
    for _ in range(4):
        answer = bridge.post("/webhook", device_down("r1")).json()
        seen.append(answer["alerts"][0]["decisions"][0])
        clock.now += 11 * 60
    assert [d["verdict"] for d in seen] == ["execute", "execute", "gave_up", "gave_up"]
    assert seen[2]["reason"] == "reboot already sent 2 times within 1h; giving up on r1"


WINDOWED = """\
rules:
  - name: night-reconf
    match: ['alertname = "Drift"']
    device: "{{ labels.device }}"
    operation: reconf
    window: {days: mon-fri, start: "22:00", end: "05:00", timezone: Europe/Madrid}
"""


def test_a_maintenance_window_holds_the_operation_until_it_opens(
    make_bridge: Callable[..., Bridge], fake: Fake
) -> None:
    clock = Clock(NOON)
    bridge = make_bridge(WINDOWED, clock=clock, start_dispatcher=False)
    answer = bridge.post("/webhook", webhook(alert("Drift", "r1")))
    decision = answer.json()["alerts"][0]["decisions"][0]
    assert decision["verdict"] == "held_for_window"
    assert decision["not_before"] == "2027-01-15T21:00:00.000Z"  # 22:00 in Madrid (CET)
    bridge.dispatcher.step()
    assert fake.calls() == []
    clock.now = NOON + 9 * 3600 + 1
    bridge.dispatcher.step()
    assert [c["json"] for c in fake.calls()] == [{"operation": "reconf"}]


PATIENT = """\
rules:
  - name: reboot-after-5m
    match: ['alertname = "DeviceDown"']
    device: "{{ labels.device }}"
    operation: reboot
    min_age: 5m
"""


def test_min_age_rides_out_a_flap(make_bridge: Callable[..., Bridge], fake: Fake) -> None:
    clock = Clock(NOON)
    bridge = make_bridge(PATIENT, clock=clock, start_dispatcher=False)
    started = "2027-01-15T11:59:00Z"  # a minute before NOON
    young = webhook(alert("DeviceDown", "r1", starts_at=started))
    decision = bridge.post("/webhook", young).json()["alerts"][0]["decisions"][0]
    assert (decision["verdict"], decision["not_before"]) == (
        "held_min_age", "2027-01-15T12:04:00.000Z")
    clock.now += 60
    resolved = bridge.post("/webhook", webhook(
        alert("DeviceDown", "r1", status="resolved", starts_at=started))).json()
    assert resolved["summary"] == {"no_match": 1}
    clock.now += 600
    bridge.dispatcher.step()
    assert fake.calls() == []
    assert [(r.event, r.outcome, r.reason) for r in bridge.audit() if r.event != "decision"] == [
        ("outcome", "cancelled", "resolved_before_min_age")]


def test_min_age_then_send(make_bridge: Callable[..., Bridge], fake: Fake) -> None:
    clock = Clock(NOON)
    bridge = make_bridge(PATIENT, clock=clock, start_dispatcher=False)
    bridge.post("/webhook", webhook(alert("DeviceDown", "r1", starts_at="2027-01-15T11:59:00Z")))
    clock.now += 4 * 60 + 1
    bridge.dispatcher.step()
    assert [c["device"] for c in fake.calls()] == ["r1"]


def test_shadow_mode_audits_and_sends_nothing(make_bridge: Callable[..., Bridge],
                                              fake: Fake) -> None:
    bridge = make_bridge(PATIENT.replace("    min_age: 5m", "    dry_run: true"))
    answer = bridge.post("/webhook", device_down("r1")).json()
    assert answer["alerts"][0]["decisions"][0]["verdict"] == "dry_run"
    assert answer["dry_run"] is False  # the bridge is live; only this rule is in shadow mode
    assert [r.reason for r in bridge.audit()] == ["shadow mode (rule dry_run): nothing is sent"]
    assert fake.calls() == []


WIPE = """\
rules:
  - name: wipe-owned
    match: ['alertname = "Owned"']
    device: "{{ labels.device }}"
    operation: factory
    allow_destructive: true
"""


def test_a_destructive_rule_without_its_flag_fails_check(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(WIPE.replace("    allow_destructive: true\n", ""))
    result = cli("check", str(path))
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {path}:5: rule 'wipe-owned': operation 'factory' is destructive:"
        " set allow_destructive: true to allow it\n")


def test_destructive_operations_wait_for_approval(make_bridge: Callable[..., Bridge],
                                                  fake: Fake, tmp_path: Path) -> None:
    bridge = make_bridge(WIPE)
    state = str(tmp_path / "state.db")
    owned = webhook(alert("Owned", "r1"), alert("Owned", "r2"))
    answer = bridge.post("/webhook", owned).json()
    assert verdicts(answer) == {"pending_approval": 2}
    listing = cli("pending", "--state", state)
    assert listing.exit_code == 0
    lines = listing.output.splitlines()
    assert lines[0].split() == ["ID", "QUEUED", "AT", "RULE", "DEVICE", "OPERATION", "ALERT"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2"]
    assert fake.calls() == []
    approved = cli("approve", "1", "--state", state, "--as", "alice")
    assert approved.output == ("Approved operation 1: factory on r1 (rule wipe-owned);"
                               " the bridge sends it now.\n")
    rejected = cli("reject", "2", "--state", state, "--as", "bob")
    assert rejected.output == ("Rejected operation 2: factory on r2 (rule wipe-owned);"
                               " it will not be sent.\n")
    bridge.outcomes(2)
    assert [(c["device"], c["json"]) for c in fake.calls()] == [("r1", {"operation": "factory"})]
    records = [(r.event, r.outcome, r.reason) for r in bridge.audit() if r.event != "decision"]
    assert ("approval", "approved", "approved by alice") in records
    assert ("outcome", "rejected", "rejected by bob") in records
    again = cli("approve", "2", "--state", state)
    assert (again.exit_code, again.output) == (
        1, "Error: operation 2 is rejected, not pending approval\n")
    assert cli("approve", "99", "--state", state).output == "Error: no operation 99\n"


def test_approval_over_http_needs_an_admin_token(make_bridge: Callable[..., Bridge],
                                                 fake: Fake) -> None:
    closed = make_bridge(WIPE)
    r = requests.post(closed.url + "/api/operations/1/approve", timeout=5)
    assert (r.status_code, r.json()) == (
        403, {"error": "the operator API is disabled: start the bridge with BRIDGE_ADMIN_TOKENS"
                       " (or BRIDGE_ADMIN_TOKENS_FILE) set, and send one of its tokens as"
                       " Authorization: Bearer TOKEN"})
    closed.stop()
    bridge = make_bridge(WIPE, admin_auth=InboundAuth(bearer_tokens=(Secret("admin-1"),)))
    bridge.post("/webhook", webhook(alert("Owned", "r1")))
    ok = {"Authorization": "Bearer admin-1"}
    assert requests.get(bridge.url + "/api/operations/pending", timeout=5).status_code == 401
    listed = requests.get(bridge.url + "/api/operations/pending", headers=ok, timeout=5).json()
    assert [(o["id"], o["state"], o["device"]) for o in listed["operations"]] == [
        (1, "pending_approval", "r1")]
    bad = requests.post(bridge.url + "/api/operations/1/approve",
                        headers={"Authorization": "Bearer nope"}, timeout=5)
    assert (bad.status_code, bad.json()) == (401, {"error": "unauthorized"})
    r = requests.post(bridge.url + "/api/operations/1/approve", json={"by": "carol"},
                      headers=ok, timeout=5)
    assert (r.status_code, r.json()["state"]) == (200, "queued")
    bridge.outcomes(1)
    assert [c["device"] for c in fake.calls()] == ["r1"]
    again = requests.post(bridge.url + "/api/operations/1/reject", headers=ok, timeout=5)
    assert (again.status_code, again.json()) == (
        409, {"error": "operation 1 is succeeded, not pending approval"})
    missing = requests.post(bridge.url + "/api/operations/7/reject", headers=ok, timeout=5)
    assert missing.status_code == 404


def test_unapproved_operations_expire(make_bridge: Callable[..., Bridge], fake: Fake) -> None:
    clock = Clock(NOON)
    bridge = make_bridge(WIPE.replace("rules:", "defaults: {approval_timeout: 30m}\nrules:"),
                         clock=clock, start_dispatcher=False)
    bridge.post("/webhook", webhook(alert("Owned", "r1")))
    clock.now += 31 * 60
    bridge.dispatcher.step()
    assert [(r.outcome, r.reason) for r in bridge.audit() if r.event == "outcome"] == [
        ("expired", "approval_timeout")]
    assert fake.calls() == []


WIPE_IN_5S = WIPE.replace("rules:", "defaults: {approval_timeout: 5s}\nrules:")
OWNED = webhook(alert("Owned", "r1"))


def test_an_approval_past_its_timeout_is_expired_though_no_sweep_ran(
    make_bridge: Callable[..., Bridge], fake: Fake, tmp_path: Path
) -> None:
    # The bridge queued it 8 s ago (by its clock) and stopped at once: no sweep ever ran.
    queued_at = time.time() - 8
    first = make_bridge(WIPE_IN_5S, clock=Clock(queued_at), start_dispatcher=False)
    assert verdicts(first.post("/webhook", OWNED).json()) == {"pending_approval": 1}
    first.stop()
    state = str(tmp_path / "state.db")
    assert cli("pending", "--state", state).output == "No operation is waiting for approval.\n"
    status = cli("status", "--state", state, "--url", first.url).output
    assert "Queue:    0 queued, 0 sending, 0 pending approval" in status
    approved = cli("approve", "1", "--state", state, "--as", "alice")
    assert (approved.exit_code, approved.output) == (
        1, f"Error: operation 1 expired at {iso(queued_at + 5)} (approval timeout)\n")
    assert [(r.event, r.outcome, r.reason) for r in read_audit(state)
            if r.event != "decision"] == [("outcome", "expired", "approval_timeout")]
    again = make_bridge(WIPE_IN_5S, start_dispatcher=False)  # the next start
    again.dispatcher.step()
    assert fake.calls() == []
    rejected = cli("reject", "1", "--state", state)
    assert (rejected.exit_code, rejected.output) == (
        1, f"Error: operation 1 expired at {iso(queued_at + 5)} (approval timeout)\n")


def test_an_approval_past_its_timeout_is_refused_over_http(
    make_bridge: Callable[..., Bridge], fake: Fake
) -> None:
    clock = Clock(NOON)
    bridge = make_bridge(WIPE_IN_5S, clock=clock, start_dispatcher=False,
                         admin_auth=InboundAuth(bearer_tokens=(Secret("admin-1"),)))
    bridge.post("/webhook", OWNED)
    clock.now += 8  # before any sweep
    ok = {"Authorization": "Bearer admin-1"}
    listed = requests.get(bridge.url + "/api/operations/pending", headers=ok, timeout=5)
    assert listed.json() == {"operations": []}
    assert 'alert_bridge_queue_depth{state="pending_approval"} 0.0' in requests.get(
        bridge.url + "/metrics", timeout=5).text
    expired = {"error": "operation 1 expired at 2027-01-15T12:00:05.000Z (approval timeout)"}
    for verdict in ("approve", "reject"):
        r = requests.post(f"{bridge.url}/api/operations/1/{verdict}", headers=ok, timeout=5)
        assert (r.status_code, r.json()) == (409, expired)
    bridge.dispatcher.step()
    assert fake.calls() == []
    assert [(r.event, r.outcome, r.reason) for r in bridge.audit() if r.event != "decision"] == [
        ("outcome", "expired", "approval_timeout")]


@pytest.mark.parametrize("command", ["pending", "approve", "reject", "pause", "resume",
                                     "status"])
def test_guard_commands_have_help_with_an_example(command: str) -> None:
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and f"alert-bridge {command}" in result.output
