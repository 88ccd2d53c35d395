"""Closing the loop end to end: a real Prometheus Alertmanager is both the source of the alerts
and where the bridge tells people, `alert-bridge serve` under gunicorn (two workers) calls the
fake device API, and the bridge asks Alertmanager whether each alert still fires.

Windows are seconds long; every wait polls the audit, the fake or Alertmanager with a deadline.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import requests

from bridge.audit import AuditRecord
from tests.alertmanager import Alertmanager, alert
from tests.conftest import Fake
from tests.helpers import BridgeProcess, audit, free_port, wait_until

WEBHOOK = "/webhook/alertmanager"
DEVICE = "office-router-01"


def rules(sync_verify: str, reboot_verify: str) -> str:
    return f"""\
rules:
  - name: unreachable-router
    match: ['alertname = "DeviceUnreachable"']
    device: "{{{{ labels.device }}}}"
    operation: sync
    cooldown: 1h
    verify: {sync_verify}
    escalate:
      - {{operation: reboot, verify: {reboot_verify}}}
  - name: wipe-compromised
    match: ['alertname = "Compromised"']
    device: "{{{{ labels.device }}}}"
    operation: factory
    allow_destructive: true
"""


Start = Callable[..., tuple[BridgeProcess, Alertmanager]]


@pytest.fixture
def closed_loop(gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake,
                alertmanagers: Callable[..., Alertmanager]) -> Start:
    """Start the bridge on `rules`, telling (and asking) an Alertmanager that routes every
    alert, the bridge's own included, back to the bridge's webhook."""
    fake.set_durations(sync=0, reboot=0, factory=0)  # the windows count from the call

    def start(text: str) -> tuple[BridgeProcess, Alertmanager]:
        port = free_port()
        bridge = gunicorn_bridge(text, workers=2, env={
            "BRIDGE_ALERTMANAGER_URLS": f"http://127.0.0.1:{port}",
            "BRIDGE_LOOP_INTERVAL": "0.5"})
        return bridge, alertmanagers(bridge.url + WEBHOOK, port=port)

    return start


def sent(fake: Fake) -> list[str]:
    return [c["json"]["operation"] for c in fake.calls() if c["device"] == DEVICE]


def verified(bridge: BridgeProcess, n: int) -> list[AuditRecord]:
    return wait_until(
        lambda: (lambda v: v if len(v) >= n else None)(
            [r for r in audit(bridge) if r.event == "verification"]),
        timeout=30, what=f"{n} verification record(s)")


def active(manager: Alertmanager, alertname: str) -> list[dict[str, Any]]:
    return [a for a in requests.get(manager.url + "/api/v2/alerts", timeout=5).json()
            if a["labels"].get("alertname") == alertname]


def test_an_alert_that_resolves_after_the_sync_is_remediated(
    closed_loop: Start, fake: Fake,
) -> None:
    bridge, manager = closed_loop(rules("1m", "1m"))
    down = alert("DeviceUnreachable", DEVICE)
    manager.fire(down)
    wait_until(lambda: sent(fake) == ["sync"], what="the sync")
    manager.resolve(down)
    (v,) = verified(bridge, 1)
    assert (v.outcome, v.operation, v.step, v.rule) == (
        "remediated", "sync", 1, "unreachable-router")
    assert v.elapsed is not None and 0 < v.elapsed < 60
    assert sent(fake) == ["sync"]


def test_a_ladder_climbs_while_the_alert_fires_and_remediates_at_step_two(
    closed_loop: Start, fake: Fake,
) -> None:
    bridge, manager = closed_loop(rules("2s", "1m"))
    down = alert("DeviceUnreachable", DEVICE)
    manager.fire(down)
    wait_until(lambda: sent(fake) == ["sync", "reboot"], timeout=30, what="sync, then reboot")
    manager.resolve(down)
    sync, reboot = verified(bridge, 2)
    assert [(v.operation, v.step, v.outcome) for v in (sync, reboot)] == [
        ("sync", 1, "not_remediated"), ("reboot", 2, "remediated")]
    step2 = [r for r in audit(bridge) if r.event == "decision" and r.step == 2]
    assert [(r.operation, r.outcome) for r in step2] == [("reboot", "execute")]
    assert step2[0].reason.startswith("step 2 of 2: sync did not remediate within 2s")
    assert sent(fake) == ["sync", "reboot"]


def test_a_ladder_that_runs_out_is_told_in_alertmanager_until_the_alert_resolves(
    closed_loop: Start, fake: Fake,
) -> None:
    bridge, manager = closed_loop(rules("2s", "2s"))
    down = alert("DeviceUnreachable", DEVICE)
    manager.fire(down)
    (told,) = wait_until(lambda: active(manager, "AlertBridgeNotRemediated"), timeout=40,
                         what="AlertBridgeNotRemediated in Alertmanager")
    assert {k: told["labels"][k] for k in ("alert_bridge", "device", "operation", "rule",
                                            "source_alertname", "severity")} == {
        "alert_bridge": "true", "device": DEVICE, "operation": "reboot",
        "rule": "unreachable-router", "source_alertname": "DeviceUnreachable",
        "severity": "critical"}
    assert "alert-bridge ack" in told["annotations"]["action"]
    # Alertmanager routes it back to the bridge, which never acts on its own alerts.
    own = wait_until(lambda: [r for r in audit(bridge) if r.outcome == "own_alert"],
                     what="the bridge's own alert back at its webhook")
    assert own[0].alertname == "AlertBridgeNotRemediated" and own[0].rule == ""
    manager.resolve(down)
    wait_until(lambda: active(manager, "AlertBridgeNotRemediated") == [], timeout=30,
               what="AlertBridgeNotRemediated resolved")
    assert sent(fake) == ["sync", "reboot"]


def test_an_approval_waits_in_alertmanager_until_a_person_approves(
    closed_loop: Start, fake: Fake,
) -> None:
    bridge, manager = closed_loop(rules("1m", "1m"))
    manager.fire(alert("Compromised", DEVICE))
    (waiting,) = wait_until(lambda: active(manager, "AlertBridgeApprovalPending"),
                            timeout=30, what="AlertBridgeApprovalPending in Alertmanager")
    operation_id = waiting["labels"]["operation_id"]
    assert waiting["annotations"]["action"] == (
        f"alert-bridge approve {operation_id}  (or: alert-bridge reject {operation_id})")
    approved = subprocess.run(
        [sys.executable, "-m", "bridge", "approve", operation_id, "--state", str(bridge.state),
         "--as", "alice"], capture_output=True, text=True, timeout=60)
    assert approved.returncode == 0, approved.stderr
    wait_until(lambda: active(manager, "AlertBridgeApprovalPending") == [], timeout=30,
               what="AlertBridgeApprovalPending resolved")
    wait_until(lambda: sent(fake) == ["factory"], what="the approved factory reset")


def test_a_bridge_killed_between_two_steps_carries_on_and_takes_no_step_twice(
    closed_loop: Start, fake: Fake,
) -> None:
    bridge, manager = closed_loop(rules("3s", "1m"))
    manager.fire(alert("DeviceUnreachable", DEVICE))
    wait_until(lambda: sent(fake) == ["sync"], what="the sync")
    bridge.crash()  # kill -9 while the sync's window is open
    fake.behave(hold=True, device=DEVICE)  # the reboot, when it comes, stays in flight
    bridge.start(port=bridge.port)
    wait_until(lambda: sent(fake) == ["sync", "reboot"], timeout=30,
               what="the reboot after the restart")
    bridge.crash()  # kill -9 with the reboot in flight
    fake.open_gate()
    bridge.start(port=bridge.port)
    ended = wait_until(lambda: [r for r in audit(bridge) if r.event == "outcome"
                                and r.operation == "reboot"], timeout=60,
                       what="the reboot ended after the second restart")
    assert [(r.outcome, r.reason) for r in ended] == [("unknown", "lost_in_flight")]
    step2 = [r for r in audit(bridge) if r.event == "decision" and r.step == 2]
    assert len(step2) == 1
    assert sent(fake) == ["sync", "reboot"]
