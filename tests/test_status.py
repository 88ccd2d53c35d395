"""alert-bridge status: one screen about a running bridge and its state."""

from __future__ import annotations

from collections.abc import Callable

import requests
from click.testing import CliRunner

from bridge.cli import main
from bridge.rules import parse_rules
from tests.conftest import RULES, Bridge, Fake
from tests.helpers import free_port, payload, wait_until


def beating(bridge: Bridge) -> None:
    """Wait for the bridge's housekeeping to beat its heartbeat (it does as it starts)."""
    wait_until(lambda: requests.get(bridge.url + "/-/ready", timeout=5).json()["replicas"] == 1,
               what="a heartbeat")


def test_status_of_a_live_bridge(make_bridge: Callable[..., Bridge], fake: Fake) -> None:
    bridge = make_bridge()
    bridge.post("/webhook", payload("alertmanager_resolved.json"))
    bridge.outcomes(1)
    beating(bridge)
    state = bridge.settings.state_path
    result = CliRunner().invoke(main, ["status", "--state", state, "--url", bridge.url,
                                       "--last", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    version = parse_rules(RULES).version
    assert lines[:8] == [
        f"Server:   {bridge.url}: live, 4 rules (version {version}), webhook auth: none",
        f"State:    {state} (sqlite), 1 replica alive",
        "Sending:  running",
        "API:      last hour: 1 succeeded",
        "Queue:    0 queued, 0 sending, 0 pending approval",
        "Verified: last day: no operation verified",
        "Latest:",
        "  TIME                 RULE               DEVICE    OPERATION  OUTCOME    HTTP  DETAIL",
    ]
    assert [line.split()[5] for line in lines[8:]] == ["execute", "succeeded"]


def test_status_without_a_server_and_paused(make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge(dry_run=True)
    bridge.post("/webhook", payload("alertmanager_resolved.json"))
    beating(bridge)
    state = bridge.settings.state_path
    assert CliRunner().invoke(main, ["pause", "--state", state]).exit_code == 0
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["status", "--state", state, "--url", url, "--last", "0"])
    server, where, sending, api, queue, verified = result.output.splitlines()
    assert server == f"Server:   not answering at {url}"
    assert where == f"State:    {state} (sqlite), 1 replica alive"
    assert sending.startswith("Sending:  PAUSED since ")
    assert api == "API:      last hour: no operation ended"
    assert queue == "Queue:    0 queued, 0 sending, 0 pending approval"
    assert verified == "Verified: last day: no operation verified"
