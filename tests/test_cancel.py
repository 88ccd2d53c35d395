"""Cancelling an operation that waits to be sent: `alert-bridge cancel ID` and
POST /api/operations/ID/cancel end it `cancelled`, audited with who did it; it is never sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests
from click.testing import CliRunner

from bridge.auth import InboundAuth
from bridge.cli import main
from bridge.client import Secret
from tests.conftest import Bridge, Fake
from tests.helpers import Clock, alert, payload, webhook

NOON = 1_800_014_400.0  # 2027-01-15T12:00:00Z, a Friday
WAITING = """\
rules:
  - name: night-reconf
    match: ['alertname = "Drift"']
    device: "{{ labels.device }}"
    operation: reconf
    window: {start: "22:00", end: "05:00", timezone: UTC}
  - name: asked-sync
    match: ['alertname = "Asked"']
    device: "{{ labels.device }}"
    operation: sync
    require_approval: true
"""
ADMIN = {"Authorization": "Bearer admin-1"}
NOT_WAITING = ("only an operation that waits to be sent (queued, held or pending approval)"
               " can be cancelled")


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def ended(bridge: Bridge) -> list[tuple[int | None, str, str]]:
    return [(r.operation_id, r.outcome, r.reason) for r in bridge.audit()
            if r.event == "outcome"]


def test_cancel_ends_a_held_operation_for_good(make_bridge: Callable[..., Bridge],
                                               fake: Fake) -> None:
    clock = Clock(NOON)
    bridge = make_bridge(WAITING, clock=clock, start_dispatcher=False)
    drift = webhook(alert("Drift", "r1"))
    decision = bridge.post("/webhook", drift).json()["alerts"][0]["decisions"][0]
    assert (decision["verdict"], decision["operation_id"]) == ("held_for_window", 1)
    state = bridge.settings.state_path
    done = cli("cancel", "1", "--state", state, "--as", "alice")
    assert (done.exit_code, done.output) == (
        0, "Cancelled operation 1: reconf on r1 (rule night-reconf); it will not be sent.\n")
    clock.now = NOON + 10 * 3600 + 1  # the window is open
    bridge.dispatcher.step()
    assert fake.calls() == []
    assert ended(bridge) == [(1, "cancelled", "cancelled by alice")]
    again = cli("cancel", "1", "--state", state)
    assert (again.exit_code, again.output) == (
        1, f"Error: operation 1 is cancelled: {NOT_WAITING}\n")
    assert cli("cancel", "99", "--state", state).output == "Error: no operation 99\n"
    # Its cooldown stays, as a rejection's does: the same alert does not queue it again.
    verdict = bridge.post("/webhook", drift).json()["alerts"][0]["decisions"][0]["verdict"]
    assert verdict == "cooldown"


def test_cancel_over_http_needs_an_admin_token(make_bridge: Callable[..., Bridge],
                                               fake: Fake) -> None:
    closed = make_bridge(WAITING)
    refused = requests.post(closed.url + "/api/operations/1/cancel", timeout=5)
    assert refused.status_code == 403 and "BRIDGE_ADMIN_TOKENS" in refused.json()["error"]
    closed.stop()
    bridge = make_bridge(WAITING, admin_auth=InboundAuth(bearer_tokens=(Secret("admin-1"),)))
    bridge.post("/webhook", webhook(alert("Asked", "r1")))
    url = bridge.url + "/api/operations/1/cancel"
    assert requests.post(url, timeout=5).status_code == 401
    bad = requests.post(url, data="who=carol", headers=ADMIN, timeout=5)
    assert (bad.status_code, bad.json()) == (
        400, {"error": 'the body must be empty or a JSON object such as {"who": "alice"}'})
    bad = requests.post(url, json={"who": 7}, headers=ADMIN, timeout=5)
    assert (bad.status_code, bad.json()) == (
        400, {"error": "must be a string: the name recorded in the audit", "where": "who"})
    done = requests.post(url, json={"who": "carol"}, headers=ADMIN, timeout=5)
    assert done.status_code == 200
    assert (done.json()["id"], done.json()["state"], done.json()["device"]) == (
        1, "cancelled", "r1")
    assert ended(bridge) == [(1, "cancelled", "cancelled by carol (HTTP)")]
    again = requests.post(url, headers=ADMIN, timeout=5)
    assert (again.status_code, again.json()) == (
        409, {"error": f"operation 1 is cancelled: {NOT_WAITING}"})
    missing = requests.post(bridge.url + "/api/operations/7/cancel", headers=ADMIN, timeout=5)
    assert (missing.status_code, missing.json()) == (404, {"error": "no operation 7"})
    pending = requests.get(bridge.url + "/api/operations/pending", headers=ADMIN, timeout=5)
    assert pending.json() == {"operations": []}
    assert fake.calls() == []


def test_an_operation_being_sent_cannot_be_cancelled(make_bridge: Callable[..., Bridge],
                                                     fake: Fake) -> None:
    fake.behave(hold=True, times=1)
    bridge = make_bridge(read_timeout=30.0)
    bridge.post("/webhook", payload("alertmanager_resolved.json"))  # one reconf, sent at once
    fake.arrived(1)  # and held
    late = cli("cancel", "1", "--state", bridge.settings.state_path)
    assert (late.exit_code, late.output) == (
        1, f"Error: operation 1 is sending: {NOT_WAITING}\n")
    fake.open_gate()
    assert [(r.outcome, r.reason) for r in bridge.outcomes(1)] == [("succeeded", "API call")]
