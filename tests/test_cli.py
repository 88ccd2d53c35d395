"""The `alert-bridge` command, driven with click's runner and as a real process."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from bridge.cli import main
from bridge.store import SqliteStore
from tests.conftest import Bridge
from tests.helpers import ROOT, following, payload

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z: in the past, so --since can exclude it

BAD_RULES = """\
defaults:
  cooldown: 30m
rules:
  - name: reboot-routers
    match: ['alertname = "DeviceUnreachable"']
    device: "{{ labels.device }}"
    operation: rebot
  - name: reboot-routers
    match: ['severity =~ "(critical"']
    device: "{{ labels.device }}"
    operation: reboot
    cooldown: 1 hour
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_check_accepts_the_shipped_rules_file(runner: CliRunner) -> None:
    result = runner.invoke(main, ["check", str(ROOT / "rules.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{ROOT / 'rules.yaml'}: OK, 6 rules (version ")
    assert result.output.endswith(
        "; operations: reboot, reconf, sync; default cooldown 30m)\n")


def test_check_prints_every_error_with_file_and_line(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BAD_RULES)
    result = runner.invoke(main, ["check", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert all(line.startswith(f"Error: {path}:") for line in lines), lines
    assert len(lines) == 4, lines
    assert f"Error: {path}:7: rule 'reboot-routers': unknown operation 'rebot'" in lines[0]
    assert ":8:" in lines[1] and "duplicate" in lines[1]
    assert ":9:" in lines[2] and "(critical" in lines[2]
    assert ":12:" in lines[3] and "1 hour" in lines[3]
    assert "Traceback" not in result.output


def test_check_missing_file_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["check", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'nope.yaml'}: file not found\n"


def test_serve_refuses_an_invalid_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BAD_RULES)
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "serve", "--rules", str(path),
         "--state", str(tmp_path / "s.db")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0].startswith(f"Error: {path}:7: rule 'reboot-routers'")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "s.db").exists()


@pytest.fixture
def audited(make_bridge: Callable[..., Bridge]) -> Bridge:
    bridge = make_bridge(dry_run=True, clock=lambda: NOW)
    bridge.post("/webhook/alertmanager", payload("alertmanager_firing_multi.json"))
    bridge.post("/webhook/alertmanager", payload("alertmanager_firing_single.json"))
    return bridge


def test_audit_table(runner: CliRunner, audited: Bridge) -> None:
    result = runner.invoke(main, ["audit", "--state", audited.settings.state_path])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "TIME                 RULE            DEVICE        OPERATION  OUTCOME   HTTP  DETAIL",
        "2023-11-14 22:13:20  sync-high-load  MegaTron      sync       dry_run   -     "
        "HighLoad[7b4a450c] dry run: nothing is sent",
        "2023-11-14 22:13:20  sync-high-load  OptimusPrime  sync       dry_run   -     "
        "HighLoad[b453fd4b] dry run: nothing is sent",
        "2023-11-14 22:13:20  sync-high-load  StarScream    sync       dry_run   -     "
        "HighLoad[ee0c653e] dry run: nothing is sent",
        "2023-11-14 22:13:20  -               -             -          no_match  -     "
        "ServiceHighErrorRate[0eeee852] no rule matches this firing alert",
    ]


def test_audit_filters_and_json(runner: CliRunner, audited: Bridge) -> None:
    state = audited.settings.state_path
    result = runner.invoke(main, ["audit", "--state", state, "--device", "OptimusPrime",
                                  "--json"])
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.output.splitlines()]
    assert [(d["device"], d["rule"], d["outcome"], d["time"]) for d in docs] == [
        ("OptimusPrime", "sync-high-load", "dry_run", "2023-11-14T22:13:20.000Z")]
    only = runner.invoke(main, ["audit", "--state", state, "--outcome", "no_match", "--json"])
    assert [json.loads(x)["alertname"] for x in only.output.splitlines()] == [
        "ServiceHighErrorRate"]
    by_rule = runner.invoke(main, ["audit", "--state", state, "--rule", "sync-high-load",
                                   "--limit", "2", "--json"])
    assert [json.loads(x)["device"] for x in by_rule.output.splitlines()] == [
        "OptimusPrime", "StarScream"]
    recent = runner.invoke(main, ["audit", "--state", state, "--since", "1h", "--json"])
    assert (recent.exit_code, recent.output) == (0, "")
    years = runner.invoke(main, ["audit", "--state", state, "--since", "100y", "--json"])
    assert len(years.output.splitlines()) == 4


def test_audit_errors_are_one_line(runner: CliRunner, tmp_path: Path, audited: Bridge) -> None:
    missing = runner.invoke(main, ["audit", "--state", str(tmp_path / "none.db")])
    assert missing.exit_code == 1
    assert missing.output == (f"Error: {tmp_path / 'none.db'}: no such state file"
                              " (has the bridge run here? see --state)\n")
    bad = runner.invoke(main, ["audit", "--state", audited.settings.state_path,
                               "--since", "yesterday"])
    assert bad.exit_code == 1
    assert bad.output.startswith("Error: --since: invalid duration 'yesterday'")


def test_audit_follow_prints_new_records(make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(dry_run=True)
    bridge.post("/webhook", payload("alertmanager_firing_single.json"))
    with following("--json", "--state", bridge.settings.state_path) as lines:
        assert json.loads(lines.get(timeout=20))["outcome"] == "no_match"
        bridge.post("/webhook", payload("alertmanager_firing_multi.json"))
        got = [json.loads(lines.get(timeout=20))["device"] for _ in range(3)]
        assert got == ["MegaTron", "OptimusPrime", "StarScream"]


@pytest.mark.parametrize("command", sorted(main.commands))  # type: ignore[attr-defined]
def test_every_command_has_help_with_an_example(runner: CliRunner, command: str) -> None:
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
    assert "alert-bridge " + command in result.output


def test_python_dash_m_bridge_is_the_same_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "bridge", "--help"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0
    for command in ("serve", "check", "audit", "fake-api"):
        assert command in proc.stdout


def verdicts(answer: requests.Response) -> list[tuple[str, str]]:
    return [(d["device"], d["verdict"]) for a in answer.json()["alerts"]
            for d in a["decisions"]]


def test_cooldowns_list_and_clear_by_hand(runner: CliRunner, bridge: Bridge) -> None:
    state = bridge.settings.state_path
    first = bridge.post("/webhook", payload("alertmanager_firing_multi.json"))
    bridge.outcomes(3)
    ids = {d["device"]: d["operation_id"] for a in first.json()["alerts"] for d in a["decisions"]}
    listing = runner.invoke(main, ["cooldowns", "--state", state])
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert lines[0].split() == ["DEVICE", "OPERATION", "UNTIL", "LEFT", "RULE", "OPERATION", "ID"]
    assert [(x.split()[0], x.split()[1], x.split()[-2], x.split()[-1]) for x in lines[1:]] == [
        (device, "sync", "sync-high-load", str(ids[device]))
        for device in ("MegaTron", "OptimusPrime", "StarScream")]
    assert all(x.split()[4] in ("30m", "29m59s", "29m58s") for x in lines[1:])
    docs = [json.loads(x) for x in runner.invoke(
        main, ["cooldowns", "--state", state, "--device", "OptimusPrime", "--json"]).output
        .splitlines()]
    assert [(d["device"], d["operation"], d["rule"], d["operation_id"]) for d in docs] == [
        ("OptimusPrime", "sync", "sync-high-load", ids["OptimusPrime"])]
    assert docs[0]["until"].endswith("Z")

    cleared = runner.invoke(main, ["cooldowns", "clear", "MegaTron", "--operation", "sync",
                                   "--state", state, "--as", "alice"])
    assert cleared.exit_code == 0, cleared.output
    assert cleared.output.startswith(
        "Cleared the cooldown of sync on MegaTron (rule sync-high-load); it ran until ")
    left = runner.invoke(main, ["cooldowns", "--state", state]).output.splitlines()
    assert [x.split()[0] for x in left[1:]] == ["OptimusPrime", "StarScream"]
    record = bridge.audit(outcome="cooldown_cleared")
    assert [(r.event, r.device, r.operation, r.rule, r.operation_id) for r in record] == [
        ("operator", "MegaTron", "sync", "sync-high-load", ids["MegaTron"])]
    assert record[0].reason.startswith("cleared by alice; it ran until ")
    verified = runner.invoke(main, ["audit", "verify", "--state", state])
    assert verified.exit_code == 0 and verified.output.startswith("OK: "), verified.output
    again = bridge.post("/webhook", payload("alertmanager_firing_multi.json"))
    assert verdicts(again) == [("MegaTron", "execute"), ("OptimusPrime", "cooldown"),
                               ("StarScream", "cooldown")]


def test_cooldowns_clear_refusals(runner: CliRunner, make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(start_dispatcher=False)  # operations stay queued
    state = bridge.settings.state_path
    bridge.post("/webhook", payload("alertmanager_firing_multi.json"))
    nothing = runner.invoke(main, ["cooldowns", "clear", "r1", "--state", state])
    assert (nothing.exit_code, nothing.output) == (1, "Error: no cooldown in force on r1\n")
    assert runner.invoke(main, ["cooldowns", "--state", state, "--device", "r1"]).output == (
        "No cooldown in force on r1.\n")
    other_op = runner.invoke(main, ["cooldowns", "clear", "MegaTron", "--operation", "reboot",
                                    "--state", state])
    assert other_op.output == "Error: no cooldown in force on MegaTron (reboot)\n"
    busy = runner.invoke(main, ["cooldowns", "clear", "MegaTron", "--state", state])
    assert (busy.exit_code, busy.output) == (1, (
        "Error: sync on MegaTron: operation 1 is still queued; clearing its cooldown would let"
        " an alert queue a second one. Wait for it to end (or reject it, if it is pending"
        " approval)\n"))
    assert len(runner.invoke(main, ["cooldowns", "--state", state]).output.splitlines()) == 4
    mixed = runner.invoke(main, ["cooldowns", "--device", "MegaTron", "clear", "MegaTron",
                                 "--state", state])
    assert mixed.output == ("Error: --device: only for listing cooldowns, not for"
                            " `alert-bridge cooldowns clear`\n")
    assert bridge.audit(outcome="cooldown_cleared") == []


def test_cooldowns_of_a_state_file_from_before_operation_ids(runner: CliRunner,
                                                             tmp_path: Path) -> None:
    state = tmp_path / "old.db"
    conn = sqlite3.connect(state)
    conn.execute("CREATE TABLE cooldowns (device TEXT NOT NULL, operation TEXT NOT NULL,"
                 " until REAL NOT NULL, rule TEXT NOT NULL, PRIMARY KEY (device, operation))")
    conn.execute("INSERT INTO cooldowns VALUES ('r1', 'reboot', 4102444800.0, 'old-rule')")
    conn.commit()
    conn.close()
    listing = runner.invoke(main, ["cooldowns", "--state", str(state)])
    assert listing.output.splitlines()[1].startswith("r1      reboot     2100-01-01 00:00:00")
    assert listing.output.splitlines()[1].endswith("old-rule  -")
    cleared = runner.invoke(main, ["cooldowns", "clear", "r1", "--state", str(state)])
    assert cleared.exit_code == 0, cleared.output
    assert runner.invoke(main, ["audit", "verify", "--state", str(state)]).exit_code == 0


@pytest.fixture
def state_file(tmp_path: Path) -> str:
    store = SqliteStore(tmp_path / "state.db")
    store.ping()  # creates it, as a bridge that ran here would have
    store.close()
    return str(tmp_path / "state.db")


OPEN_BIND = {"BRIDGE_BIND": "0.0.0.0:9095"}  # no webhook authentication: serve refuses it


@pytest.mark.parametrize("args", [
    ["pause"], ["resume"], ["audit"], ["pending"], ["cooldowns"], ["audit", "verify"],
    ["status", "--url", "http://127.0.0.1:9"],
])
def test_operator_commands_ignore_the_listen_check(runner: CliRunner, state_file: str,
                                                   args: list[str]) -> None:
    result = runner.invoke(main, [*args, "--state", state_file], env=OPEN_BIND)
    assert (result.exit_code, "refusing" in result.output) == (0, False), result.output


@pytest.mark.parametrize("command", ["approve", "reject"])
def test_approve_and_reject_ignore_the_listen_check(runner: CliRunner, state_file: str,
                                                    command: str) -> None:
    result = runner.invoke(main, [command, "1", "--state", state_file], env=OPEN_BIND)
    assert (result.exit_code, result.output) == (1, "Error: no operation 1\n")


def test_the_kill_switch_works_whatever_the_settings(runner: CliRunner, state_file: str,
                                                     tmp_path: Path) -> None:
    broken = {**OPEN_BIND, "BRIDGE_API_TOKEN_FILE": str(tmp_path / "missing"),
              "BRIDGE_MAX_AGE": "soon", "BRIDGE_STATE": state_file}
    paused = runner.invoke(main, ["pause"], env=broken)
    assert (paused.exit_code, paused.output) == (
        0, "Paused: no operation is sent until `alert-bridge resume`.\n")
    resumed = runner.invoke(main, ["resume"], env=broken)
    assert (resumed.exit_code, resumed.output) == (
        0, "Resumed (was: paused); queued operations are sent.\n")
    refused = runner.invoke(main, ["serve", "--state", state_file], env=OPEN_BIND)
    assert refused.exit_code == 1
    assert refused.output.startswith("Error: refusing to listen on 0.0.0.0:9095 without webhook")


def test_pending_and_approve_link_to_the_console_when_the_external_url_is_set(
    runner: CliRunner, make_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    from tests.helpers import alert, webhook
    from tests.test_guards import WIPE

    bridge = make_bridge(WIPE, start_dispatcher=False)
    bridge.post("/webhook", webhook(alert("Owned", "r1")))
    state = str(tmp_path / "state.db")
    env = {"BRIDGE_EXTERNAL_URL": "https://noc.example.net/bridge/"}
    link = "https://noc.example.net/bridge/ui/operations/1"
    listed = runner.invoke(main, ["pending", "--state", state], env=env)
    assert listed.output.splitlines()[0].split()[-1] == "CONSOLE"
    assert listed.output.splitlines()[1].endswith(link)
    as_json = runner.invoke(main, ["pending", "--state", state, "--json"], env=env)
    assert json.loads(as_json.output)["console_url"] == link
    assert "CONSOLE" not in runner.invoke(main, ["pending", "--state", state]).output
    approved = runner.invoke(main, ["approve", "1", "--state", state, "--as", "a"], env=env)
    assert approved.output.splitlines()[-1] == f"Console: {link}"
    bad = runner.invoke(main, ["pending", "--state", state],
                        env={"BRIDGE_EXTERNAL_URL": "noc.example.net/bridge"})
    assert (bad.exit_code, bad.output) == (
        1, "Error: BRIDGE_EXTERNAL_URL must be an http(s) URL without a query or fragment,"
           " such as https://noc.example.net/bridge/, got 'noc.example.net/bridge'\n")
