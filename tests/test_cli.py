"""The `alert-bridge` command, driven with click's runner and as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli import main
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
