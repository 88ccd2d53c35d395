"""The closing loop in one process, on a clock the test moves: the bridge served over HTTP, the
fake device API, a chat webhook on loopback; the dispatcher and the loop stepped by hand."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from bridge.audit import AuditRecord, iso
from bridge.client import Secret
from tests.conftest import Bridge, Fake
from tests.helpers import LADDER, Clock, Receiver, alert, webhook
from tests.test_metrics import scrape, value

NOON = 1_800_014_400.0  # 2027-01-15T12:00:00Z


WIPE = """\
rules:
  - name: wipe-compromised
    match: ['alertname = "Compromised"']
    device: "{{ labels.device }}"
    operation: factory
    allow_destructive: true
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def ladder(make_bridge: Callable[..., Bridge], fake: Fake, receiver: Receiver
           ) -> tuple[Bridge, Clock]:
    """A bridge on LADDER whose operations the fake says are done at once."""
    fake.set_durations(sync=0, reboot=0)
    clock = Clock(NOON)
    bridge = make_bridge(LADDER, clock=clock, start_dispatcher=False,
                         notify_webhooks=(Secret(receiver.url + "/hooks/secret"),))
    return bridge, clock


def unreachable(status: str = "firing", ends_at: float | None = None) -> bytes:
    made = alert("DeviceUnreachable", "r1", status=status, fingerprint="fp-r1")
    if ends_at is not None:
        made["endsAt"] = iso(ends_at)
    return webhook(made)


def loop(bridge: Bridge) -> Any:
    return bridge.context.loop


def send(bridge: Bridge) -> None:
    """Let the dispatcher send what is due now."""
    bridge.dispatcher.step()


def sync_misses(bridge: Bridge, clock: Clock) -> list[Any]:
    """The alert fires, the sync is sent, its window passes: the round that ends its watch
    (and queues step 2, if a guard lets it), and what it concluded."""
    bridge.post("/webhook", unreachable())
    send(bridge)
    clock.now += 601
    return loop(bridge).run_once()


def records(bridge: Bridge, event: str) -> list[AuditRecord]:
    return [r for r in bridge.audit() if r.event == event]


def test_an_operation_whose_alert_resolves_in_its_window_remediated(
    ladder: tuple[Bridge, Clock], fake: Fake,
) -> None:
    bridge, clock = ladder
    assert bridge.post("/webhook", unreachable()).status_code == 200
    send(bridge)
    clock.now += 90
    bridge.post("/webhook", unreachable("resolved", ends_at=clock.now - 30))
    (ended,) = loop(bridge).run_once()  # the next round ends the watch
    assert (ended.resolution.outcome, ended.next_operation_id) == ("remediated", None)
    (v,) = records(bridge, "verification")
    assert (v.outcome, v.operation, v.step, v.elapsed, v.operation_id) == (
        "remediated", "sync", 1, 60.0, 1)
    assert v.reason == "step 1: the alert resolved 1m after the call, within 10m of its completion"
    samples = scrape(bridge.url)
    labels = {"rule": "unreachable-router", "operation": "sync"}
    assert value(samples, "alert_bridge_verifications_total", result="remediated",
                 **labels) == 1
    assert value(samples, "alert_bridge_time_to_resolve_seconds_sum", **labels) == 60.0
    assert loop(bridge).run_once() == []  # nothing left to watch, nothing escalates
    clock.now += 3600
    assert loop(bridge).run_once() == []
    assert [c["json"]["operation"] for c in fake.calls()] == ["sync"]


def test_a_ladder_climbs_while_the_alert_fires_and_stops_when_it_resolves(
    ladder: tuple[Bridge, Clock], fake: Fake,
) -> None:
    bridge, clock = ladder
    bridge.post("/webhook", unreachable())
    send(bridge)
    clock.now += 10 * 60 - 1
    assert loop(bridge).run_once() == []  # the window is still open
    clock.now += 2
    (ended,) = loop(bridge).run_once()
    assert (ended.resolution.outcome, ended.next_operation_id) == ("not_remediated", 2)
    step2 = records(bridge, "decision")[-1]
    assert (step2.operation, step2.outcome, step2.step, step2.operation_id) == (
        "reboot", "execute", 2, 2)
    assert step2.reason == ("step 2 of 2: sync did not remediate within 10m: rule matched")
    send(bridge)
    clock.now += 60
    bridge.post("/webhook", unreachable("resolved", ends_at=clock.now))
    loop(bridge).run_once()
    sync_v, reboot_v = records(bridge, "verification")
    assert (sync_v.outcome, reboot_v.outcome, reboot_v.step) == (
        "not_remediated", "remediated", 2)
    assert [c["json"]["operation"] for c in fake.calls()] == ["sync", "reboot"]
    clock.now += 3600
    assert loop(bridge).run_once() == []
    assert len(fake.calls()) == 2


def test_a_ladder_that_runs_out_tells_a_person_until_the_alert_resolves(
    ladder: tuple[Bridge, Clock], receiver: Receiver,
) -> None:
    bridge, clock = ladder
    sync_misses(bridge, clock)
    send(bridge)
    clock.now += 901
    (ended,) = loop(bridge).run_once()
    assert ended.ended_because == "it was the last step of rule unreachable-router"
    (told,) = receiver.bodies
    assert told["text"].startswith(
        "[FIRING] AlertBridgeNotRemediated: DeviceUnreachable on r1 still fires 15m after"
        " reboot on r1 (rule unreachable-router, operation 2); no step follows: it was the last"
        " step of rule unreachable-router")
    assert told["labels"]["alert_bridge"] == "true"
    loop(bridge).run_once()
    assert len(receiver.bodies) == 1  # told once, however many rounds
    clock.now += 60
    bridge.post("/webhook", unreachable("resolved", ends_at=clock.now))
    loop(bridge).run_once()
    assert receiver.bodies[-1]["text"].startswith("[RESOLVED] AlertBridgeNotRemediated")


def test_a_failed_operation_tells_a_person_until_acknowledged(
    ladder: tuple[Bridge, Clock], fake: Fake, receiver: Receiver,
) -> None:
    bridge, clock = ladder
    fake.behave(status=404)
    bridge.post("/webhook", unreachable())
    send(bridge)
    loop(bridge).run_once()
    (told,) = receiver.texts()
    assert told.startswith("[FIRING] AlertBridgeOperationFailed: sync on r1 (rule"
                           " unreachable-router, operation 1) ended failed (not_found)")
    assert bridge.context.store.acknowledge(1, "alice", clock.now) == "it ended failed"
    loop(bridge).run_once()
    assert receiver.texts()[-1].startswith("[RESOLVED] AlertBridgeOperationFailed")
    ack = [r for r in bridge.audit() if r.outcome == "acknowledged"]
    assert [(r.event, r.reason, r.operation_id) for r in ack] == [
        ("operator", "acknowledged by alice: it ended failed", 1)]


def test_a_failure_is_not_escalated(ladder: tuple[Bridge, Clock], fake: Fake) -> None:
    bridge, clock = ladder
    fake.behave(status=404)
    bridge.post("/webhook", unreachable())
    send(bridge)
    clock.now += 3600
    assert loop(bridge).run_once() == []
    assert records(bridge, "verification") == []
    assert len(fake.calls()) == 1


def test_an_alert_that_resolved_before_the_call_ended_is_not_credited(
    ladder: tuple[Bridge, Clock], fake: Fake,
) -> None:
    bridge, clock = ladder
    bridge.post("/webhook", unreachable())
    clock.now += 5
    bridge.post("/webhook", unreachable("resolved", ends_at=clock.now - 1))
    send(bridge)  # the call ends after the alert resolved
    loop(bridge).run_once()
    (v,) = records(bridge, "verification")
    assert (v.outcome, v.elapsed) == ("resolved_before", None)
    clock.now += 3600
    assert loop(bridge).run_once() == []


def test_a_step_waiting_for_approval_is_cancelled_when_the_alert_resolves(
    make_bridge: Callable[..., Bridge], fake: Fake, receiver: Receiver,
) -> None:
    fake.set_durations(sync=0)
    clock = Clock(NOON)
    rules = LADDER.replace("{operation: reboot, verify: 15m}",
                           "{operation: device_factory, allow_destructive: true}")
    bridge = make_bridge(rules, clock=clock, start_dispatcher=False,
                         notify_webhooks=(Secret(receiver.url + "/hooks/secret"),))
    (ended,) = sync_misses(bridge, clock)
    assert records(bridge, "decision")[-1].outcome == "pending_approval"
    assert receiver.texts()[-1].startswith("[FIRING] AlertBridgeApprovalPending:"
                                           " device_factory on r1")
    bridge.post("/webhook", unreachable("resolved", ends_at=clock.now))
    cancelled = records(bridge, "outcome")[-1]
    assert (cancelled.outcome, cancelled.reason, cancelled.operation_id) == (
        "cancelled", "alert_resolved", ended.next_operation_id)
    loop(bridge).run_once()
    assert receiver.texts()[-1].startswith("[RESOLVED] AlertBridgeApprovalPending")
    assert [c["json"]["operation"] for c in fake.calls()] == ["sync"]


def test_the_bridge_never_acts_on_its_own_alerts(make_bridge: Callable[..., Bridge],
                                                 fake: Fake) -> None:
    bridge = make_bridge(LADDER, start_dispatcher=False)
    own = alert("DeviceUnreachable", "r1", alert_bridge="true",
                annotations={"summary": "told by the bridge"})
    answer = bridge.post("/webhook", webhook(own)).json()
    assert answer["summary"] == {"own_alert": 1}
    (decision,) = answer["alerts"][0]["decisions"]
    assert (decision["rule"], decision["verdict"]) == (None, "own_alert")
    assert fake.calls() == []


def test_explain_shows_the_ladder_in_progress(ladder: tuple[Bridge, Clock]) -> None:
    bridge, clock = ladder
    bridge.post("/webhook", unreachable())
    send(bridge)
    answer = bridge.post("/api/explain", unreachable()).json()
    (rule,) = answer["alerts"][0]["rules"]
    assert rule["ladder"] == [{
        "step": 1, "operation": "sync", "operation_id": 1, "state": "watching",
        "until": iso(NOON + 600),
        "next": {"step": 2, "operation": "reboot", "at": iso(NOON + 600)}}]
    assert json.dumps(answer)  # plain JSON
    from click.testing import CliRunner

    from bridge.cli import main

    saved = bridge.settings.state_path + ".payload.json"
    with open(saved, "wb") as f:
        f.write(unreachable())
    shown = CliRunner().invoke(main, ["explain", saved, "--rules", bridge.settings.rules_path,
                                      "--state", bridge.settings.state_path])
    assert shown.exit_code == 0, shown.output
    assert (f"      ladder     step 1: sync (operation 1) watching until {iso(NOON + 600)};"
            " then step 2: reboot if it still fires") in shown.output.splitlines()


def test_the_report_ack_and_status_from_the_cli_and_over_http(
    make_bridge: Callable[..., Bridge], fake: Fake,
) -> None:
    from click.testing import CliRunner

    from bridge.auth import InboundAuth
    from bridge.cli import main

    fake.set_durations(sync=0, reboot=0)
    clock = Clock(float(int(time.time())))  # whole seconds, as endsAt carries them
    bridge = make_bridge(LADDER, clock=clock, start_dispatcher=False,
                         admin_auth=InboundAuth(bearer_tokens=(Secret("adm-1"),)))
    sync_misses(bridge, clock)
    send(bridge)
    clock.now += 30
    bridge.post("/webhook", unreachable("resolved", ends_at=clock.now))
    loop(bridge).run_once()  # reboot remediated
    fake.behave(status=404, device="r2")
    bridge.post("/webhook", webhook(alert("DeviceUnreachable", "r2")))
    send(bridge)  # operation 3 fails

    state = ["--state", bridge.settings.state_path]
    runner = CliRunner()
    done = runner.invoke(main, ["report", *state, "--json"])
    assert done.exit_code == 0, done.output
    doc = json.loads(done.output)
    by_operation = {r["operation"]: r for r in doc["rules"]}
    assert {k: by_operation["sync"][k] for k in ("sent", "succeeded", "failed_or_unknown",
                                                  "verified", "remediated", "notifications")} \
        == {"sent": 2, "succeeded": 1, "failed_or_unknown": 1, "verified": 1, "remediated": 0,
            "notifications": 1}
    assert {k: by_operation["reboot"][k] for k in ("escalations", "remediated",
                                                    "remediated_share")} == {
        "escalations": 1, "remediated": 1, "remediated_share": 1.0}
    assert by_operation["reboot"]["time_to_resolve_seconds"] == {"median": 30.0, "p90": 30.0}
    over_http = requests.get(bridge.url + "/api/report?since=7d&devices=1", timeout=10,
                             headers={"Authorization": "Bearer adm-1"})
    assert over_http.status_code == 200
    assert over_http.json()["rules"] == doc["rules"]
    assert [d["device"] for d in over_http.json()["devices"]] == ["r1", "r2"]
    refused = requests.get(bridge.url + "/api/report?since=soon", timeout=10,
                           headers={"Authorization": "Bearer adm-1"})
    assert (refused.status_code, refused.json()["parameter"]) == (400, "since")

    table = runner.invoke(main, ["report", *state, "--device"]).output.splitlines()
    assert table[1].split()[:3] == ["RULE", "OPERATION", "SENT"]
    assert "the devices that needed the most operations" in table
    assert runner.invoke(main, ["report", *state, "--since", "soon"]).exit_code == 2

    acked = runner.invoke(main, ["ack", "3", *state, "--as", "alice"])
    assert (acked.exit_code, acked.output) == (0, "Acknowledged operation 3: it ended failed;"
                                                  " people are no longer told about it.\n")
    again = runner.invoke(main, ["ack", "3", *state])
    assert (again.exit_code, again.output) == (
        1, "Error: operation 3 (failed) is already acknowledged\n")
    over = requests.post(bridge.url + "/api/operations/1/ack", timeout=10,
                         headers={"Authorization": "Bearer adm-1"})
    assert (over.status_code, over.json()["error"]) == (
        409, "operation 1 is succeeded: nothing to acknowledge (only an operation that ended"
             " failed or unknown, or the last of a ladder that did not remediate)")

    status = runner.invoke(main, ["status", *state, "--url", "http://127.0.0.1:9"]).output
    assert ("Verified: last day: 1 of 2 verified operations remediated (50%), median 30s to"
            " resolve") in status
