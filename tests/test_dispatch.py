"""Dispatch: webhooks answer once decisions are kept; operations are sent, retried, ended once."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.client import CallResult, TokenSource
from bridge.dispatch import DispatchPolicy, next_step
from bridge.store import Operation, SqliteStore
from bridge.vocab import Flag
from tests.conftest import TOKEN, Bridge, Fake
from tests.helpers import (
    BridgeProcess,
    Clock,
    device_down,
    free_port,
    make_disk_full,
    outcomes,
    payload,
    replace_file,
    wait_until,
)

RESOLVED = payload("alertmanager_resolved.json")  # one reconf on "frontend"
MULTI = payload("alertmanager_firing_multi.json")  # sync on MegaTron, OptimusPrime, StarScream

# Retries fast enough for tests; every other setting as shipped.
FAST = {"retry_base": 0.05, "busy_retry": 0.2, "max_attempts": 3}

REBOOT_RULES = """\
rules:
  - name: reboot-high-load
    match: ['alertname = "HighLoad"']
    device: "{{ labels.system_under_test }}"
    operation: reboot
  - name: sync-high-load
    match: ['alertname = "HighLoad"']
    device: "{{ labels.system_under_test }}"
    operation: sync
"""


def op(operation: str = "reboot", attempts: int = 1) -> Operation:
    return Operation(1, "r1", operation, "rule", "sending", 0.0, attempts, 0.0, "req", "am",
                     "recv", "gk", "fp", "A", "firing")


def result(kind: str, outcome: str = "failed", status: int | None = None) -> CallResult:
    return CallResult(outcome, kind, status, None, "boom", True, 0.1)


POLICY = DispatchPolicy(retry_base=2.0, retry_cap=120.0, busy_base=60.0, busy_cap=600.0,
                        max_attempts=5)


@pytest.mark.parametrize("operation, res, retried", [
    ("reboot", result("ok", "succeeded", 200), False),
    ("reboot", result("server_error", status=500), True),
    ("factory", result("server_error", status=503), True),
    ("reboot", result("connect_error"), True),
    ("reboot", result("busy", status=409), True),
    ("reboot", result("unprocessable", status=422), True),
    ("reboot", result("rejected", status=400), False),
    ("reboot", result("unauthorized", status=401), False),
    ("reboot", result("not_found", status=404), False),
    ("reboot", result("timeout", "unknown"), False),
    ("reconf", result("timeout", "unknown"), False),
    ("factory", result("timeout", "unknown"), False),
    ("sync", result("timeout", "unknown"), True),
    ("reboot", result("server_error", status=504), False),
    ("sync", result("server_error", status=504), True),
    ("reboot", result("unexpected_status", "unknown", 202), False),
])
def test_what_is_retried(operation: str, res: CallResult, retried: bool) -> None:
    step = next_step(op(operation), res, 1000.0, POLICY, random.Random(1))
    assert (step.retry_at is not None) == retried


def test_a_gateway_timeout_is_ambiguous() -> None:
    step = next_step(op("reboot"), result("server_error", status=504), 0.0, POLICY,
                     random.Random(1))
    assert (step.result.outcome, step.retry_at) == ("unknown", None)


def test_backoff_doubles_with_equal_jitter_and_is_capped() -> None:
    rng = random.Random()
    for attempts, low, high in [(1, 1, 2), (2, 2, 4), (3, 4, 8), (4, 8, 16)]:
        for _ in range(50):
            step = next_step(op(attempts=attempts), result("server_error", status=500), 0.0,
                             POLICY, rng)
            assert step.retry_at is not None and low <= step.retry_at <= high
    capped = DispatchPolicy(retry_base=2.0, retry_cap=5.0, max_attempts=50)
    step = next_step(op(attempts=20), result("connect_error"), 0.0, capped, rng)
    assert step.retry_at is not None and 2.5 <= step.retry_at <= 5.0


def test_busy_devices_wait_longer() -> None:
    step = next_step(op(attempts=2), result("busy", status=409), 0.0, POLICY, random.Random(3))
    assert step.retry_at is not None and 60 <= step.retry_at <= 120


def test_attempts_are_bounded() -> None:
    step = next_step(op(attempts=5), result("server_error", status=500), 0.0, POLICY,
                     random.Random(1))
    assert step.retry_at is None and step.result.outcome == "failed"


def test_jitter_comes_from_the_injected_randomness(mocker: Any) -> None:
    rng = random.Random()
    mocker.patch.object(rng, "uniform", return_value=0.0)
    step = next_step(op(attempts=3), result("server_error", status=500), 100.0, POLICY, rng)
    assert step.retry_at == 104.0  # half of 2 * 2**2, plus no jitter


# -- over real HTTP --------------------------------------------------------------------------


def test_the_webhook_answers_before_a_slow_api_is_called(
    make_bridge: Callable[..., Bridge], fake: Fake
) -> None:
    bridge = make_bridge(read_timeout=5.0)
    fake.behave(hold=True, times=1)
    answer = bridge.post("/webhook", RESOLVED).json()
    assert answer["summary"] == {"execute": 1}
    # The answer came back while the call was, at most, held by the fake.
    assert [r.event for r in bridge.audit()] == ["decision"]
    (held,) = fake.arrived(1)
    assert held["finished"] is None
    fake.open_gate()
    (outcome,) = bridge.outcomes(1)
    assert outcome.outcome == "succeeded"


def events(bridge: Bridge) -> list[tuple[str, str, int | None, int | None]]:
    return [(r.event, r.outcome, r.status_code, r.attempt) for r in bridge.audit()
            if r.event != "decision"]


def test_server_errors_are_retried_then_fail(make_bridge: Callable[..., Bridge],
                                             fake: Fake) -> None:
    bridge = make_bridge(**FAST)
    fake.behave(status=503)
    bridge.post("/webhook", RESOLVED)
    bridge.outcomes(1)
    assert events(bridge) == [("attempt", "failed", 503, 1), ("attempt", "failed", 503, 2),
                              ("outcome", "failed", 503, 3)]
    assert len(fake.calls()) == 3


def test_a_passing_server_error_is_retried_until_success(make_bridge: Callable[..., Bridge],
                                                         fake: Fake) -> None:
    bridge = make_bridge(**FAST)
    fake.behave(status=500, times=2)
    bridge.post("/webhook", RESOLVED)
    (outcome,) = bridge.outcomes(1)
    assert (outcome.outcome, outcome.attempt) == ("succeeded", 3)
    assert [c["status"] for c in fake.calls()] == [500, 500, 200]


def test_busy_devices_are_retried_with_their_own_longer_spacing(
    make_bridge: Callable[..., Bridge], fake: Fake
) -> None:
    bridge = make_bridge(retry_base=0.01, busy_retry=0.4, max_attempts=3)
    fake.behave(status=409, times=1)
    bridge.post("/webhook", RESOLVED)
    (outcome,) = bridge.outcomes(1)
    assert (outcome.outcome, outcome.attempt) == ("succeeded", 2)
    first, second = fake.calls()
    assert first["status"] == 409
    assert second["time"] - first["finished"] >= 0.2  # at least half the busy spacing


# -- waking: idle senders sleep until there is work or something comes due ------------------

#: Longer than any test waits: a sender that only polled would never be seen to send.
NEVER = 3600.0


def sleepy(bridge: Bridge) -> Bridge:
    """Start the bridge's senders with no poll to fall back on, and wait until all sleep."""
    dispatcher = bridge.dispatcher
    dispatcher.policy = replace(dispatcher.policy, poll_interval=NEVER)
    bridge.context.start()
    wait_until(lambda: dispatcher.sleeping == dispatcher.policy.concurrency,
               what="every sender asleep")
    return bridge


def test_a_retry_is_sent_when_due_without_a_poll(make_bridge: Callable[..., Bridge],
                                                 fake: Fake) -> None:
    # The retry comes due well after the rate limit's next slot (0.1 s): only its due time
    # can wake a sender for it.
    bridge = sleepy(make_bridge(start_dispatcher=False, retry_base=0.6))
    fake.behave(status=503, times=1)
    bridge.post("/webhook", RESOLVED)
    (outcome,) = bridge.outcomes(1)
    assert (outcome.outcome, outcome.attempt) == ("succeeded", 2)


def test_work_queued_by_another_process_wakes_an_idle_sender_on_sqlite(
    make_bridge: Callable[..., Bridge], fake: Fake
) -> None:
    intake = make_bridge(start_dispatcher=False)  # sends nothing itself
    sleepy(make_bridge(start_dispatcher=False))  # the same state file, other connections
    assert intake.post("/webhook", RESOLVED).status_code == 200
    fake.arrived(1)  # within wait_until's deadline, far short of the poll interval
    assert [(r.event, r.outcome) for r in intake.outcomes(1)] == [("outcome", "succeeded")]


def test_a_wake_with_nothing_to_send_costs_one_claim_not_one_per_sender(
    make_bridge: Callable[..., Bridge], mocker: Any
) -> None:
    bridge = sleepy(make_bridge(start_dispatcher=False, concurrency=4))
    claims = mocker.spy(bridge.context.store, "claim")
    bridge.dispatcher.wake()
    wait_until(lambda: claims.call_count and bridge.dispatcher.sleeping == 4,
               what="the woken sender asleep again")
    assert claims.call_count == 1


@pytest.mark.parametrize("status, kind", [(400, "rejected"), (401, "unauthorized"),
                                          (404, "not_found")])
def test_final_answers_are_not_retried(make_bridge: Callable[..., Bridge], fake: Fake,
                                       status: int, kind: str) -> None:
    bridge = make_bridge(**FAST)
    fake.behave(status=status)
    bridge.post("/webhook", RESOLVED)
    (outcome,) = bridge.outcomes(1)
    assert (outcome.outcome, outcome.reason, outcome.status_code) == ("failed", kind, status)
    assert outcome.error.startswith(f"HTTP {status}")
    assert len(fake.calls()) == 1


def test_a_timeout_after_sending_is_not_resent_for_a_reboot(
    make_bridge: Callable[..., Bridge], fake: Fake
) -> None:
    bridge = make_bridge(REBOOT_RULES, read_timeout=0.5, **FAST)
    fake.behave(delay=1.5, device="MegaTron", times=2)  # the reboot, then sync's 1st attempt
    bridge.post("/webhook", MULTI)
    outcomes = bridge.outcomes(6)
    by_op = {(o.device, o.operation): (o.outcome, o.reason, o.attempt) for o in outcomes}
    assert by_op[("MegaTron", "reboot")] == ("unknown", "timeout", 1)
    # sync is safe to repeat: it is retried, and succeeds once the fake stops delaying
    assert by_op[("MegaTron", "sync")] == ("succeeded", "API call", 2)
    reboots = [c for c in fake.calls() if c["device"] == "MegaTron"
               and c["json"] == {"operation": "reboot"}]
    assert len(reboots) == 1


def test_unreachable_api_is_retried_then_fails(make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(api_url=f"http://127.0.0.1:{free_port()}/api/v1", **FAST)
    bridge.post("/webhook", RESOLVED)
    (outcome,) = bridge.outcomes(1)
    assert (outcome.outcome, outcome.reason, outcome.attempt) == ("failed", "connect_error", 3)


def test_a_401_fails_readiness_until_a_call_succeeds(bridge: Bridge, fake: Fake) -> None:
    fake.behave(status=401, times=1)
    bridge.post("/webhook", RESOLVED)
    bridge.outcomes(1)
    ready = requests.get(bridge.url + "/-/ready", timeout=5)
    assert ready.status_code == 503
    assert "rejected the token (HTTP 401)" in ready.json()["error"]
    bridge.post("/webhook", MULTI)
    bridge.outcomes(4)
    assert requests.get(bridge.url + "/-/ready", timeout=5).status_code == 200


SYNC_DOWN = """\
rules:
  - name: sync-down
    match: ['alertname = "DeviceDown"']
    device: "{{ labels.device }}"
    operation: sync
"""
NEW_TOKEN = "tok-rotated-4Kp8-never-show-me"


def token_file_bridge(start: Callable[..., BridgeProcess], token_file: Path) -> BridgeProcess:
    """`serve` under gunicorn reading the API token from a file that starts with TOKEN."""
    token_file.write_text(TOKEN + "\n")
    return start(SYNC_DOWN, workers=2, env={"BRIDGE_API_TOKEN": "",
                                            "BRIDGE_API_TOKEN_FILE": str(token_file)})


def ready(url: str) -> requests.Response:
    return requests.get(url + "/-/ready", timeout=5)


def test_a_rotated_token_file_is_used_without_a_restart(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake, tmp_path: Path
) -> None:
    token_file = tmp_path / "api-token"
    bridge = token_file_bridge(gunicorn_bridge, token_file)
    requests.post(bridge.url + "/webhook", data=device_down("r1"), timeout=30)
    assert outcomes(bridge, 1)[-1].outcome == "succeeded"
    fake.set_token(NEW_TOKEN)  # the API rotates the token: the one in the file is now refused
    requests.post(bridge.url + "/webhook", data=device_down("r2"), timeout=30)
    refused = outcomes(bridge, 2)[-1]
    assert (refused.device, refused.outcome, refused.reason) == ("r2", "failed", "unauthorized")
    # The flag is raised just after the outcome is recorded.
    wait_until(lambda: ready(bridge.url).status_code == 503, what="not ready after the 401")

    replace_file(token_file, NEW_TOKEN + "\n")
    # Ready again before any call: the token refused is no longer the one in the file, as after
    # a restart; else a readiness probe would keep away the webhooks that prove the new one.
    wait_until(lambda: ready(bridge.url).status_code == 200, what="ready once it is replaced")
    requests.post(bridge.url + "/webhook", data=device_down("frontend"), timeout=30)
    last = outcomes(bridge, 3)[-1]
    assert (last.device, last.outcome) == ("frontend", "succeeded")
    assert ready(bridge.url).status_code == 200
    assert [(c["device"], c["authorization"], c["status"]) for c in fake.calls()] == [
        ("r1", f"Bearer {TOKEN}", 200), ("r2", f"Bearer {TOKEN}", 401),
        ("frontend", f"Bearer {NEW_TOKEN}", 200)]
    assert bridge.stop() == 0
    assert TOKEN not in bridge.log() and NEW_TOKEN not in bridge.log()


def test_a_401_after_the_token_file_changed_in_flight_is_retried_once_with_the_new_token(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake, tmp_path: Path
) -> None:
    token_file = tmp_path / "api-token"
    bridge = token_file_bridge(gunicorn_bridge, token_file)
    fake.set_token(NEW_TOKEN)
    fake.behave(hold=True, times=1)
    requests.post(bridge.url + "/webhook", data=device_down("r1"), timeout=30)
    fake.arrived(1)
    replace_file(token_file, NEW_TOKEN + "\n")  # while the call with the old token is in flight
    fake.open_gate()
    (outcome,) = outcomes(bridge, 1)
    assert (outcome.outcome, outcome.attempt) == ("succeeded", 1)
    assert [(c["authorization"], c["status"]) for c in fake.calls()] == [
        (f"Bearer {TOKEN}", 401), (f"Bearer {NEW_TOKEN}", 200)]
    assert ready(bridge.url).status_code == 200
    assert bridge.stop() == 0
    assert "token file changed" in bridge.log() and NEW_TOKEN not in bridge.log()


def test_only_a_usable_replacement_of_a_rejected_token_file_makes_the_bridge_ready(
    make_bridge: Callable[..., Bridge], fake: Fake, tmp_path: Path
) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN)
    clock = Clock(1_700_000_000.0)
    bridge = make_bridge(SYNC_DOWN, token=TokenSource.from_file(str(token_file)), clock=clock,
                         start_dispatcher=False)
    fake.set_token(NEW_TOKEN)
    bridge.post("/webhook", device_down("r1"))
    bridge.dispatcher.step()  # the call, refused
    assert ready(bridge.url).status_code == 503
    for written, content, status in (("empty", "\n", 503), ("new token", NEW_TOKEN, 200)):
        replace_file(token_file, content)
        clock.now += 2
        bridge.dispatcher.step()  # nothing to send; looks at the token file
        assert ready(bridge.url).status_code == status, f"with the file {written}"
    bridge.post("/webhook", device_down("r2"))
    bridge.dispatcher.step()
    assert [(c["authorization"], c["status"]) for c in fake.calls()] == [
        (f"Bearer {TOKEN}", 401), (f"Bearer {NEW_TOKEN}", 200)]
    assert ready(bridge.url).status_code == 200


def test_a_fixed_token_rejected_keeps_the_bridge_not_ready_until_a_call_succeeds(
    make_bridge: Callable[..., Bridge], fake: Fake
) -> None:
    clock = Clock(1_700_000_000.0)
    bridge = make_bridge(SYNC_DOWN, clock=clock, start_dispatcher=False)
    fake.behave(status=401, times=1)
    bridge.post("/webhook", device_down("r1"))
    bridge.dispatcher.step()
    clock.now += 2
    bridge.dispatcher.step()  # a sweep: with a fixed token there is no file to look at
    assert ready(bridge.url).status_code == 503


def test_failed_operations_leave_a_short_cooldown(make_bridge: Callable[..., Bridge],
                                                  fake: Fake) -> None:
    bridge = make_bridge(failure_cooldown=60.0, **FAST)
    fake.behave(status=404, device="OptimusPrime")
    bridge.post("/webhook", MULTI)
    outcomes = bridge.outcomes(3)
    store = SqliteStore(bridge.settings.state_path)
    cooldowns = store.active_cooldowns(0)
    store.close()
    failed = next(o for o in outcomes if o.device == "OptimusPrime")
    ok = next(o for o in outcomes if o.device == "MegaTron")
    assert cooldowns[("OptimusPrime", "sync")] == pytest.approx(failed.ts + 60.0)
    assert cooldowns[("MegaTron", "sync")] == pytest.approx(ok.ts + 1800.0, abs=5)


def test_operations_too_old_to_send_expire(make_bridge: Callable[..., Bridge],
                                           fake: Fake) -> None:
    clock = Clock(1_700_000_000.0)
    bridge = make_bridge(clock=clock, start_dispatcher=False, max_age=60.0,
                         failure_cooldown=120.0)
    bridge.post("/webhook", RESOLVED)
    clock.now += 61
    bridge.dispatcher.step()
    records = bridge.audit()
    assert [(r.event, r.outcome, r.reason) for r in records] == [
        ("decision", "execute", "rule matched"), ("outcome", "expired", "max_age")]
    assert fake.calls() == []
    store = SqliteStore(bridge.settings.state_path)
    assert store.active_cooldowns(clock.now) == {("frontend", "reconf"): clock.now + 120.0}
    store.close()


def test_no_sender_takes_an_operation_past_its_maximum_age_before_the_sweep(
    make_bridge: Callable[..., Bridge], fake: Fake
) -> None:
    clock = Clock(1_700_000_000.0)
    bridge = make_bridge(clock=clock, start_dispatcher=False, max_age=60.0)
    store = bridge.context.store
    bridge.post("/webhook", RESOLVED)
    store.set_flag(Flag.PAUSED, clock.now)
    clock.now += 59.9
    bridge.dispatcher.step()  # sweeps (nothing is too old yet); sends nothing while paused
    store.resume(clock.now)
    clock.now += 0.6  # past the maximum age, before the next sweep (a second after the last)
    bridge.dispatcher.step()
    assert fake.calls() == []
    clock.now += 1
    bridge.dispatcher.step()
    assert [(r.outcome, r.reason) for r in bridge.audit() if r.event == "outcome"] == [
        ("expired", "max_age")]


def overlap(calls: list[dict[str, Any]]) -> int:
    """The largest number of calls the fake was answering at the same moment."""
    edges = sorted([(c["time"], 1) for c in calls] + [(c["finished"], -1) for c in calls])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_concurrency_is_bounded_and_one_operation_per_device(
    make_bridge: Callable[..., Bridge], fake: Fake
) -> None:
    bridge = make_bridge(REBOOT_RULES, concurrency=2, rate_limit=1000.0)
    fake.behave(hold=True, times=2)
    bridge.post("/webhook", MULTI)
    # The first two calls stay in flight together until the gate opens: on two devices.
    held = fake.arrived(2)
    assert {c["finished"] for c in held} == {None} and len({c["device"] for c in held}) == 2
    fake.open_gate()
    bridge.outcomes(6)
    calls = fake.calls()
    assert len(calls) == 6
    assert overlap(calls) == 2
    for device in ("MegaTron", "OptimusPrime", "StarScream"):
        assert overlap([c for c in calls if c["device"] == device]) == 1


def test_calls_are_spaced_by_the_rate_limit(make_bridge: Callable[..., Bridge],
                                            fake: Fake) -> None:
    clock = Clock(1_700_000_000.0)
    bridge = make_bridge(REBOOT_RULES, clock=clock, start_dispatcher=False, concurrency=4,
                         rate_limit=5.0)
    bridge.post("/webhook", MULTI)
    for sent in range(1, 7):
        assert bridge.dispatcher.step() == 0.0  # a call made
        # The next slot is a fifth of a second away: until then, nothing more is sent.
        assert bridge.dispatcher.step() == pytest.approx(0.2)
        assert len(fake.calls()) == sent
        clock.now += 0.2


def test_an_unwritable_store_answers_503_so_the_sender_retries(
    bridge: Bridge, fake: Fake, mocker: Any
) -> None:
    make_disk_full(mocker, bridge.context.store)
    r = bridge.post("/webhook", RESOLVED)
    assert r.status_code == 503
    assert r.json() == {"error": f"state store {bridge.settings.state_path}: "
                                 "database or disk is full"}
    mocker.stopall()
    assert bridge.audit() == []
    assert fake.calls() == []
    ok = bridge.post("/webhook", RESOLVED)
    assert ok.status_code == 200
    wait_until(lambda: len(fake.calls()) == 1, what="the call once the store works again")


def test_the_app_factory_starts_no_thread_its_context_starts_and_stops_them(
    make_bridge: Callable[..., Bridge], fake: Fake
) -> None:
    # Threads do not survive a fork: the server starts them in each worker, after the fork.
    def background() -> set[threading.Thread]:
        return {t for t in threading.enumerate()
                if t.name.startswith("dispatch-") or t.name == "housekeeping"}

    before = background()  # those of other bridges, stopping
    bridge = make_bridge(start_dispatcher=False)
    assert background() - before == set()
    assert bridge.post("/webhook/alertmanager", RESOLVED).status_code == 200
    assert fake.calls() == []  # queued, not sent
    bridge.context.start()
    started = background() - before
    assert sorted(t.name for t in started) == ["dispatch-0", "dispatch-1", "dispatch-2",
                                               "dispatch-3", "housekeeping"]
    assert bridge.outcomes(1)[0].outcome == "succeeded"
    bridge.context.stop(10)
    wait_until(lambda: not any(t.is_alive() for t in started), what="its threads to end")
