"""End to end with a real Prometheus Alertmanager: alerts posted to Alertmanager's API, grouped,
repeated, resolved, retried and delivered by Alertmanager itself to `alert-bridge serve` under
gunicorn, which calls the fake device API.

Timings come from Alertmanager (group_wait 1s, group_interval 2s): every wait polls the audit,
the fake API or Alertmanager's /metrics with a deadline.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from bridge.audit import AuditRecord
from tests import alertmanager as am
from tests.alertmanager import Alertmanager, FlakyFront, alert, decisions, deliveries
from tests.conftest import TOKEN, Fake
from tests.helpers import BridgeProcess, outcomes, wait_until

RULES = """\
defaults:
  cooldown: 1h
rules:
  - name: reboot-unreachable
    match: ['alertname = "DeviceUnreachable"']
    device: "{{ labels.device }}"
    operation: reboot
  - name: reconf-on-recovery
    match: ['alertname = "DeviceUnreachable"']
    device: "{{ labels.device }}"
    operation: reconf
    status: resolved
"""

DEVICES = ("office-router-01", "office-router-02", "core-switch-01")
GROUP_KEY = '{}:{alertname="DeviceUnreachable"}'
WEBHOOK = "/webhook/alertmanager"


def unreachable(*devices: str) -> list[dict[str, object]]:
    return [alert("DeviceUnreachable", d) for d in devices]


def calls(fake: Fake) -> list[tuple[str, str]]:
    """What the device API received, as sorted (device, operation) pairs."""
    return sorted((c["device"], c["json"]["operation"]) for c in fake.calls())


def verdicts(records: list[AuditRecord]) -> list[tuple[str, str, str, str]]:
    """Decision records as sorted (device, alert status, rule, verdict)."""
    return sorted((r.device, r.alert_status, r.rule, r.outcome) for r in records)


def nth_delivery(bridge: BridgeProcess, n: int, timeout: float = 30) -> list[AuditRecord]:
    """Wait until the bridge has recorded `n` webhook deliveries; the decisions of the n-th."""
    got = wait_until(
        lambda: (lambda d: d if len(d) >= n else None)(list(deliveries(bridge).values())),
        timeout=timeout, what=f"delivery #{n} recorded in the bridge's audit")
    return got[n - 1]


def executed(bridge: BridgeProcess) -> list[tuple[str, str]]:
    """Every (device, operation) the bridge decided to execute, sorted."""
    return sorted((r.device, r.operation) for r in decisions(bridge) if r.outcome == "execute")


def not_cooldown(bridge: BridgeProcess) -> Counter[str]:
    """Verdicts other than cooldown: a repeat arriving late on a slow machine adds only those."""
    return Counter(r.outcome for r in decisions(bridge) if r.outcome != "cooldown")


def attempts_reach(manager: Alertmanager, n: int) -> tuple[int, int]:
    """Wait until Alertmanager has had answers to `n` webhook requests: (requests, failed).
    (It counts a request once the answer is in, after the bridge has written its audit.)"""
    return wait_until(lambda: (lambda a: a if a[0] >= n else None)(manager.attempts()),
                      what=f"{n} webhook requests counted by Alertmanager")


def test_the_alertmanager_config_passes_amtool(tmp_path: Path) -> None:
    am.require_alertmanager()
    path = tmp_path / "alertmanager.yml"
    path.write_text(am.config("http://127.0.0.1:9095/webhook/alertmanager", token="secret"))
    checked = subprocess.run([am.AMTOOL, "check-config", str(path)], capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout and "1 receivers" in checked.stdout


def test_a_grouped_notification_makes_one_operation_per_device(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake,
    alertmanagers: Callable[..., Alertmanager],
) -> None:
    bridge = gunicorn_bridge(rules=RULES)
    manager = alertmanagers(bridge.url + WEBHOOK)
    manager.fire(*unreachable(*DEVICES))

    first = nth_delivery(bridge, 1)
    assert verdicts(first) == sorted(
        (d, "firing", "reboot-unreachable", "execute") for d in DEVICES)
    ended = outcomes(bridge, 3)
    assert sorted((o.device, o.operation, o.outcome) for o in ended) == sorted(
        (d, "reboot", "succeeded") for d in DEVICES)
    # One notification for the group: one request, Alertmanager's group key, the receiver name
    # unquoted (Alertmanager sends it as alert\.bridge), fingerprints as Alertmanager has them.
    assert len({r.request_id for r in first}) == 1
    assert {(r.source, r.receiver, r.group_key) for r in first} == {
        ("alertmanager", "alert.bridge", GROUP_KEY)}
    listed = requests.get(manager.url + "/api/v2/alerts", timeout=5).json()
    assert sorted(r.fingerprint for r in first) == sorted(a["fingerprint"] for a in listed)

    got = sorted(fake.calls(), key=lambda c: c["device"])
    assert [(c["device"], c["raw_path"], c["json"], c["authorization"]) for c in got] == [
        (d, f"/api/v1/inventory_device_name_operation/{d}/", {"operation": "reboot"},
         f"Bearer {TOKEN}") for d in sorted(DEVICES)]
    assert not_cooldown(bridge) == {"execute": 3}
    assert attempts_reach(manager, 1)[1] == 0


def test_repeat_interval_resends_make_no_second_operation(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake,
    alertmanagers: Callable[..., Alertmanager],
) -> None:
    bridge = gunicorn_bridge(rules=RULES)
    manager = alertmanagers(bridge.url + WEBHOOK, repeat_interval="4s")
    manager.fire(*unreachable(*DEVICES))
    first = nth_delivery(bridge, 1)
    outcomes(bridge, 3)
    assert calls(fake) == sorted((d, "reboot") for d in DEVICES)

    # Nothing changed in Alertmanager, so the next delivery of the group is the repeat.
    repeat = nth_delivery(bridge, 2)
    assert verdicts(repeat) == sorted(
        (d, "firing", "reboot-unreachable", "cooldown") for d in DEVICES)
    assert {(r.group_key, r.fingerprint) for r in repeat} == {
        (r.group_key, r.fingerprint) for r in first}
    assert min(r.ts for r in repeat) - max(r.ts for r in first) > 3.5  # not before 4s
    assert attempts_reach(manager, 2) == (2, 0)
    # Decisions are committed before the bridge answers: had the repeat asked for anything,
    # it would be queued by now. Nothing is, and the device API got nothing more.
    assert [r.outcome for r in am.audit(bridge) if r.event == "outcome"] == ["succeeded"] * 3
    assert calls(fake) == sorted((d, "reboot") for d in DEVICES)


def test_partial_then_full_resolution_reconfigures_exactly_the_resolved_devices(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake,
    alertmanagers: Callable[..., Alertmanager],
) -> None:
    bridge = gunicorn_bridge(rules=RULES)
    manager = alertmanagers(bridge.url + WEBHOOK)
    alerts = dict(zip(DEVICES, unreachable(*DEVICES), strict=True))
    manager.fire(*alerts.values())
    outcomes(bridge, 3)
    assert calls(fake) == sorted((d, "reboot") for d in DEVICES)

    # One of the three recovers: the group stays "firing", that alert arrives "resolved".
    manager.resolve(alerts["office-router-02"])
    partial = wait_until(
        lambda: next((d for d in deliveries(bridge).values()
                      if any(r.alert_status == "resolved" for r in d)), None),
        what="the partial resolution to reach the bridge")
    assert verdicts(partial) == [
        ("core-switch-01", "firing", "reboot-unreachable", "cooldown"),
        ("office-router-01", "firing", "reboot-unreachable", "cooldown"),
        ("office-router-02", "resolved", "reconf-on-recovery", "execute"),
    ]
    outcomes(bridge, 4)
    assert calls(fake) == sorted([*((d, "reboot") for d in DEVICES),
                                  ("office-router-02", "reconf")])

    # The other two recover: the whole group is resolved.
    manager.resolve(alerts["office-router-01"], alerts["core-switch-01"])
    full = wait_until(
        lambda: next((d for d in deliveries(bridge).values()
                      if all(r.alert_status == "resolved" for r in d)), None),
        what="the full resolution to reach the bridge")
    assert verdicts(full) == [
        ("core-switch-01", "resolved", "reconf-on-recovery", "execute"),
        ("office-router-01", "resolved", "reconf-on-recovery", "execute"),
    ]
    outcomes(bridge, 6)
    assert calls(fake) == sorted([*((d, "reboot") for d in DEVICES),
                                  *((d, "reconf") for d in DEVICES)])
    # Over the whole exchange: three reboots and three reconfs were decided, nothing else ran.
    assert executed(bridge) == calls(fake)
    assert not_cooldown(bridge) == {"execute": 6}
    assert manager.attempts()[1] == 0


def test_two_alertmanagers_that_both_deliver_make_one_operation_per_device(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake,
    alertmanagers: Callable[..., Alertmanager],
) -> None:
    """An HA pair whose gossip failed: two independent instances, same config, same alerts,
    so both notify. The bridge's cooldown claim is what keeps it to one operation."""
    bridge = gunicorn_bridge(rules=RULES)
    pair = [alertmanagers(bridge.url + WEBHOOK, name=name) for name in ("am-a", "am-b")]
    for manager in pair:
        manager.fire(*unreachable(*DEVICES))

    wait_until(lambda: all(m.attempts()[0] >= 1 for m in pair), what="both to deliver")
    assert [m.attempts()[1] for m in pair] == [0, 0]
    first, second = nth_delivery(bridge, 1), nth_delivery(bridge, 2)
    assert {(r.group_key, r.fingerprint) for r in first} == {
        (r.group_key, r.fingerprint) for r in second}
    both = verdicts(first + second)
    assert [v[:3] for v in both] == sorted(
        (d, "firing", "reboot-unreachable") for d in DEVICES for _ in range(2))
    assert Counter((v[0], v[3]) for v in both) == {
        **{(d, "execute"): 1 for d in DEVICES}, **{(d, "cooldown"): 1 for d in DEVICES}}
    outcomes(bridge, 3)
    assert calls(fake) == sorted((d, "reboot") for d in DEVICES)
    assert not_cooldown(bridge) == {"execute": 3}


@pytest.mark.parametrize("pass_on_refused", [False, True], ids=["refused", "answer-lost"])
def test_a_503_in_front_of_the_bridge_is_retried_and_still_one_operation_per_device(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake,
    alertmanagers: Callable[..., Alertmanager], pass_on_refused: bool,
) -> None:
    """The bridge's front answers 503 once. "refused": the delivery never reached the bridge.
    "answer-lost": it did, the bridge acted, and only the answer was replaced by a 503; the
    retry then reaches the bridge a second time."""
    bridge = gunicorn_bridge(rules=RULES)
    front = FlakyFront(bridge.url, fail_first=1, pass_on_refused=pass_on_refused)
    try:
        manager = alertmanagers(front.url + WEBHOOK)
        manager.fire(*unreachable(*DEVICES))
        wait_until(lambda: 200 in front.statuses(), what="a delivery answered 200")
        outcomes(bridge, 3)
    finally:
        front.close()

    assert front.statuses()[:2] == [503, 200], "Alertmanager did not retry after the 503"
    refused, retried = front.deliveries[:2]
    # The retry is the same notification: same group, same alerts.
    assert retried["body"]["groupKey"] == refused["body"]["groupKey"] == GROUP_KEY
    assert retried["body"]["alerts"] == refused["body"]["alerts"]
    assert retried["headers"]["User-Agent"].startswith("Alertmanager/")
    assert attempts_reach(manager, 2)[1] == 1

    # The bridge saw what the front passed on; the first of those made the operations.
    assert refused["forwarded"] == (200 if pass_on_refused else None)
    recorded = list(deliveries(bridge).values())
    assert len(recorded) == len([d for d in front.deliveries if d["forwarded"] is not None])
    assert verdicts(recorded[0]) == sorted(
        (d, "firing", "reboot-unreachable", "execute") for d in DEVICES)
    if pass_on_refused:
        assert verdicts(recorded[1]) == sorted(
            (d, "firing", "reboot-unreachable", "cooldown") for d in DEVICES)
    assert not_cooldown(bridge) == {"execute": 3}
    assert calls(fake) == sorted((d, "reboot") for d in DEVICES)


def test_bearer_tokens_on_both_sides(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake,
    alertmanagers: Callable[..., Alertmanager],
) -> None:
    good, wrong = "am-webhook-5Rt8-good", "am-webhook-0000-wrong"
    bridge = gunicorn_bridge(rules=RULES, env={"BRIDGE_WEBHOOK_TOKENS": f"retired-token,{good}"})
    # Configured right: its alert becomes an operation.
    trusted = alertmanagers(bridge.url + WEBHOOK, name="am-good", token=good)
    trusted.fire(*unreachable("office-router-01"))
    ended = outcomes(bridge, 1)
    assert [(o.device, o.operation, o.outcome) for o in ended] == [
        ("office-router-01", "reboot", "succeeded")]
    assert attempts_reach(trusted, 1)[1] == 0

    # Configured with a wrong token, for another device: refused, and nothing happens.
    stranger = alertmanagers(bridge.url + WEBHOOK, name="am-wrong", token=wrong,
                             receiver="wrong.token")
    stranger.fire(*unreachable("core-switch-01"))
    first_try = attempts_reach(stranger, 1)
    assert first_try[1] == first_try[0], (
        "the bridge accepted a webhook carrying a wrong bearer token "
        f"(BRIDGE_WEBHOOK_TOKENS not enforced?): attempts, failed = {first_try}")
    wait_until(lambda: "unexpected status code 401" in stranger.log(),
               what="Alertmanager to log the 401")
    # A 4xx is not retried within the flush; the notification comes again on the next tick,
    # and is refused again.
    wait_until(lambda: (lambda a: a[0] >= 2 and a[0] == a[1])(stranger.attempts()),
               what="a second refused delivery")
    assert [r for r in am.audit(bridge) if r.receiver != "alert.bridge"] == []
    assert not_cooldown(bridge) == {"execute": 1}
    assert executed(bridge) == calls(fake) == [("office-router-01", "reboot")]
    assert attempts_reach(trusted, 1)[1] == 0
