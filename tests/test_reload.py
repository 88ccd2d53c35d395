"""Hot reload under gunicorn: a change of the file, SIGHUP and POST /-/reload reach every
worker; a file that fails validation is refused whole and every worker keeps the old rules."""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import requests
from click.testing import CliRunner

from bridge.cli import main
from bridge.rules import parse_rules
from bridge.store import SqliteStore
from bridge.vocab import Flag
from tests.conftest import RULES, Fake
from tests.helpers import (
    BridgeProcess,
    alert,
    audit,
    outcomes,
    payload,
    scrape,
    value,
    wait_until,
    webhook,
)

NEW_RULE = """\
  - name: added-later
    match: ['alertname = "Added"', 'device =~ ".+"']
    device: "{{ labels.device }}"
    operation: sync
"""


BAD = RULES + NEW_RULE.replace("operation: sync", "operation: rebot")
#: POST /-/reload is an operator endpoint: it needs one of BRIDGE_ADMIN_TOKENS.
OPERATOR = {"BRIDGE_ADMIN_TOKENS": "adm-reload-1"}
AS_OPERATOR = {"Authorization": "Bearer adm-reload-1"}


def post_reload(bridge: BridgeProcess) -> requests.Response:
    return requests.post(bridge.url + "/-/reload", headers=AS_OPERATOR, timeout=5)


def flag(bridge: BridgeProcess, key: str) -> float:
    """When the master last raised a flag in the state file (0 if never)."""
    store = SqliteStore(bridge.state)
    try:
        return store.get_flag(key) or 0.0
    finally:
        store.close()


def hang_up(bridge: BridgeProcess, recorded: str = Flag.RELOAD_OK) -> None:
    """SIGHUP the master; return once it has recorded the reload (or its refusal)."""
    before = flag(bridge, recorded)
    assert bridge.proc is not None
    bridge.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: flag(bridge, recorded) > before, what=f"the master to set {recorded}")


def refuse(bridge: BridgeProcess) -> None:
    """Reload a file that fails validation; return once the master has refused it."""
    bridge.rules.write_text(BAD)
    hang_up(bridge, Flag.RELOAD_FAILED)


def reload_success(bridge: BridgeProcess) -> float | None:
    return value(scrape(bridge.url), "alert_bridge_reload_success")


def status_rules_line(bridge: BridgeProcess) -> str:
    result = CliRunner().invoke(main, ["status", "--state", str(bridge.state),
                                       "--url", bridge.url, "--last", "0"])
    assert result.exit_code == 0, result.output
    return "".join(line for line in result.output.splitlines() if line.startswith("Rules:"))


def versions(bridge: BridgeProcess, n: int = 12) -> set[str]:
    """The rules version each of n requests saw (they spread over the workers)."""
    seen = set()
    for _ in range(n):
        with requests.Session() as s:  # a new connection each time: any worker may answer
            seen.add(s.get(bridge.url + "/-/ready", timeout=5).json()["rules_version"])
    return seen


def test_a_changed_file_reaches_every_worker(gunicorn_bridge: Callable[..., BridgeProcess],
                                             fake: Fake) -> None:
    bridge = gunicorn_bridge(workers=3)
    old = versions(bridge)
    bridge.rules.write_text(RULES + NEW_RULE)
    new = parse_rules(RULES + NEW_RULE).version
    assert old != {new}
    wait_until(lambda: versions(bridge) == {new}, timeout=30, what="every worker on new rules")
    assert "rules reloaded from" in bridge.log()


def test_a_bad_file_is_refused_whole_and_every_worker_keeps_the_old_rules(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake
) -> None:
    bridge = gunicorn_bridge(workers=3, env=OPERATOR)
    (old,) = versions(bridge)
    refuse(bridge)
    assert versions(bridge) == {old}
    assert "unknown operation 'rebot'" in bridge.log()
    status = CliRunner().invoke(main, ["status", "--state", str(bridge.state)])
    assert "was REFUSED (invalid file; see the log): the previous rules still run" in \
        status.output
    scrape = requests.get(bridge.url + "/metrics", timeout=5).text
    assert "alert_bridge_reload_success 0.0" in scrape
    answer = post_reload(bridge)
    assert answer.status_code == 400
    assert answer.json()["error"] == f"rules file invalid: still running version {old}"
    assert any("unknown operation 'rebot'" in p for p in answer.json()["problems"])
    # Fixed: POST /-/reload makes every worker switch.
    bridge.rules.write_text(RULES + NEW_RULE)
    answer = post_reload(bridge)
    assert answer.status_code == 202
    new = answer.json()["version"]
    wait_until(lambda: versions(bridge) == {new}, timeout=30, what="every worker on new rules")
    requests.post(bridge.url + "/webhook", data=payload("alertmanager_firing_single.json"),
                  timeout=10)
    assert [(r.outcome, r.rules_version) for r in audit(bridge)] == [("no_match", new)]
    assert bridge.stop() == 0


def test_a_fixed_file_and_a_restart_forget_a_refused_reload(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake
) -> None:
    bridge = gunicorn_bridge(workers=2)
    refuse(bridge)
    assert reload_success(bridge) == 0
    assert "REFUSED" in status_rules_line(bridge)
    assert bridge.stop() == 0
    again = gunicorn_bridge(RULES + NEW_RULE, workers=2, state=bridge.state)
    assert [reload_success(again) for _ in range(6)] == [1] * 6  # whichever worker answers
    assert "REFUSED" not in status_rules_line(again)


def test_a_good_reload_forgets_a_refused_one_even_back_to_the_running_file(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake
) -> None:
    bridge = gunicorn_bridge(workers=2)
    refuse(bridge)
    assert [reload_success(bridge) for _ in range(6)] == [0] * 6
    bridge.rules.write_text(RULES)  # what every worker runs: a reload changes no rule
    hang_up(bridge)
    assert status_rules_line(bridge).startswith("Rules:    last reloaded at")
    assert [reload_success(bridge) for _ in range(6)] == [1] * 6


def waiting_rules() -> str:
    """A rule held for a window that opens in three hours, and one that waits for approval."""
    opens = datetime.now(UTC) + timedelta(hours=3)
    return f"""\
rules:
  - name: night-reconf
    match: ['alertname = "Drift"']
    device: "{{{{ labels.device }}}}"
    operation: reconf
    window: {{start: "{opens:%H:%M}", end: "{opens + timedelta(hours=1):%H:%M}", timezone: UTC}}
  - name: asked-sync
    match: ['alertname = "Drift"']
    device: "{{{{ labels.device }}}}"
    operation: sync
    require_approval: true
"""


@pytest.mark.parametrize("how", ["reload", "restart"])
def test_operations_of_a_removed_or_shadowed_rule_are_cancelled(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake, how: str
) -> None:
    held = waiting_rules()
    bridge = gunicorn_bridge(held, workers=2)
    drift = webhook(alert("Drift", "r1"))
    answer = requests.post(bridge.url + "/webhook", data=drift, timeout=10).json()
    assert answer["summary"] == {"held_for_window": 1, "pending_approval": 1}
    # night-reconf deleted, asked-sync in shadow mode.
    kept = held.split("  - name: asked-sync", 1)[1]
    changed = "rules:\n  - name: asked-sync" + kept.replace("    require_approval: true",
                                                           "    dry_run: true")
    bridge.rules.write_text(changed)
    if how == "reload":
        assert bridge.proc is not None
        bridge.proc.send_signal(signal.SIGHUP)
    else:
        assert bridge.stop() == 0
        bridge = gunicorn_bridge(changed, workers=2, state=bridge.state)
    where = f"{bridge.rules} (rules version {parse_rules(changed).version})"
    assert sorted((o.rule, o.outcome, o.reason) for o in outcomes(bridge, 2)) == [
        ("asked-sync", "cancelled", f"rule 'asked-sync' is in shadow mode (dry_run) in {where}"),
        ("night-reconf", "cancelled", f"rule 'night-reconf' was removed from {where}"),
    ]
    wait_until(lambda: "cancelled: rule 'night-reconf' was removed" in bridge.log(),
               what="the cancellation in the log")
    # Never sent, and the cooldown released: the shadow rule now reports what it would do.
    again = requests.post(bridge.url + "/webhook", data=drift, timeout=10).json()
    assert again["summary"] == {"dry_run": 1}
    assert fake.calls() == []


def test_a_second_reload_is_served_while_the_first_drains_a_slow_call(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake
) -> None:
    # The call stays in flight until the test opens the gate: the worker the first reload
    # replaced drains it meanwhile (both limits far above how long the test holds it).
    env = {"BRIDGE_API_TIMEOUT": "120", "BRIDGE_DRAIN_TIMEOUT": "120", **OPERATOR}
    bridge = gunicorn_bridge(workers=2, env=env)
    fake.behave(hold=True, times=1)
    requests.post(bridge.url + "/webhook", data=payload("alertmanager_resolved.json"),
                  timeout=10)
    fake.arrived(1)  # and held: the slow call in flight
    second = RULES + NEW_RULE
    bridge.rules.write_text(second)
    assert bridge.proc is not None
    bridge.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: versions(bridge) == {parse_rules(second).version},
               what="every worker on the second rules")
    third = second + NEW_RULE.replace("added-later", "added-last")
    bridge.rules.write_text(third)
    try:
        answer = post_reload(bridge)
        assert (answer.status_code, answer.json()["version"]) == (
            202, parse_rules(third).version)
        wait_until(lambda: versions(bridge) == {parse_rules(third).version}, timeout=30,
                   what="every worker on the third rules while the slow call is still held")
        assert [c["status"] for c in fake.calls()] == [None]  # still held
    finally:
        fake.open_gate()
    assert [(o.outcome, o.reason) for o in outcomes(bridge, 1)] == [("succeeded", "API call")]


def test_reload_over_http_is_closed_without_an_admin_token_and_sighup_still_works(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake
) -> None:
    bridge = gunicorn_bridge(workers=2)
    (old,) = versions(bridge)
    bridge.rules.write_text(RULES + NEW_RULE)
    refused = requests.post(bridge.url + "/-/reload", timeout=5)
    assert refused.status_code == 403
    assert refused.json() == {"error": (
        "the operator API is disabled: start the bridge with BRIDGE_ADMIN_TOKENS (or"
        " BRIDGE_ADMIN_TOKENS_FILE) set, and send one of its tokens as Authorization: Bearer"
        " TOKEN; without it, SIGHUP to the `alert-bridge serve` process or a change of the"
        " rules file reloads the rules")}
    assert bridge.proc is not None
    bridge.proc.send_signal(signal.SIGHUP)
    new = parse_rules(RULES + NEW_RULE).version
    wait_until(lambda: versions(bridge) == {new}, what="every worker on the new rules")
    assert new != old


def test_reloading_an_unchanged_file_replaces_no_worker(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake
) -> None:
    bridge = gunicorn_bridge(workers=2, env=OPERATOR)
    before = bridge.wait_for_workers(2)
    (version,) = versions(bridge)
    answers = [post_reload(bridge) for _ in range(50)]
    assert {(a.status_code, a.json()["status"], a.json()["version"]) for a in answers} == {
        (200, "unchanged", version)}
    assert answers[0].json()["message"] == (
        f"the rules are unchanged, version {version}: nothing to reload")
    # A SIGHUP reaches the master after all those answers; it would have replaced the
    # workers for the first of them already. It finds the file unchanged too.
    hang_up(bridge)
    assert bridge.worker_pids() == before


def test_a_stop_right_after_a_reload_reaches_the_new_workers(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake
) -> None:
    bridge = gunicorn_bridge(workers=2)
    bridge.rules.write_text(RULES + NEW_RULE)
    assert bridge.proc is not None
    bridge.proc.send_signal(signal.SIGHUP)
    bridge.proc.send_signal(signal.SIGTERM)  # while the new workers are still starting
    assert bridge.stop(timeout=30) == 0  # well within graceful_timeout (35 s)
    assert "rules reloaded from" in bridge.log()
