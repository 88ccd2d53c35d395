"""Several replicas on one PostgreSQL database: work queued by one is sent by any, at once."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from bridge.audit import AuditRecord
from bridge.cli import main
from tests import alertmanager as am
from tests import helpers, postgres
from tests.alertmanager import Alertmanager
from tests.conftest import TOKEN, Bridge, Fake
from tests.helpers import (
    BridgeProcess,
    free_port,
    payload,
    read_audit,
    wait_for_outcomes,
    wait_until,
    webhook,
)

#: Longer than any test waits: a sender that only polled would never be seen to send.
NEVER = 3600.0


def listening(url: str) -> int:
    """How many sessions on the database LISTEN for queued work."""
    with postgres.connection(url) as conn:
        return int(conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query = 'LISTEN alert_bridge_queue'").fetchone()[0])


def test_work_queued_by_one_replica_wakes_an_idle_sender_of_another(
    make_bridge: Callable[..., Bridge], fake: Fake, postgres_url: str
) -> None:
    postgres.empty(postgres_url)
    intake = make_bridge(state=postgres_url, start_dispatcher=False)  # sends nothing itself
    sender = make_bridge(state=postgres_url, start_dispatcher=False)
    # Its senders poll once at start, then only when woken.
    sender.dispatcher.policy = replace(sender.dispatcher.policy, poll_interval=NEVER)
    sender.context.start()
    wait_until(lambda: listening(postgres_url) == 1, what="the sender listening")
    assert intake.post("/webhook", payload("alertmanager_resolved.json")).status_code == 200
    fake.arrived(1)  # within wait_until's deadline, far short of the poll interval
    assert [(r.event, r.outcome) for r in intake.outcomes(1)] == [("outcome", "succeeded")]


# -- end to end: three `serve` replicas behind an Alertmanager HA pair ---------------------

RULES = """\
defaults:
  cooldown: 1h
budgets:
  - {name: global, max: 20, per: 1h}
breaker: {max: 1000, per: 5m}
rules:
  - name: reboot-unreachable
    match: ['alertname = "DeviceUnreachable"']
    device: "{{ labels.device }}"
    operation: reboot
"""
STORM = [f"storm-{n:02d}" for n in range(60)]
#: lease = connect + read timeout + 5 s: a dead replica's calls end unknown 9 s after it took them.
FAST = {"BRIDGE_API_TIMEOUT": "3s", "BRIDGE_API_CONNECT_TIMEOUT": "1s",
        "BRIDGE_CONCURRENCY": "3", "BRIDGE_RATE_LIMIT": "100"}


@pytest.fixture
def replicas(tmp_path: Path, fake: Fake, postgres_url: str
             ) -> Iterator[Callable[..., list[BridgeProcess]]]:
    """Factory: `n` `alert-bridge serve` processes (one worker each) on one fresh database
    (at `url`, when it is reached another way), with `env` over the FAST settings."""
    postgres.empty(postgres_url)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    started: list[BridgeProcess] = []

    def start(n: int, url: str = postgres_url, **env: str) -> list[BridgeProcess]:
        for i in range(n):
            (tmp_path / f"r{i}").mkdir()
            started.append(BridgeProcess(
                tmp_path / f"r{i}", rules, url,
                {"BRIDGE_API_URL": fake.url, "BRIDGE_API_TOKEN": TOKEN, **FAST, **env},
                workers=1))
        for proc in started:
            proc.start()
        return started

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def ha_pair(tmp_path: Path) -> Iterator[Callable[[list[str]], list[Alertmanager]]]:
    """Factory: two Alertmanagers clustered with each other on loopback, each delivering to
    its own webhook URL; stopped at teardown."""
    am.require_alertmanager()
    started: list[Alertmanager] = []

    def start(urls: list[str]) -> list[Alertmanager]:
        ports = [free_port() for _ in urls]
        for i, url in enumerate(urls):
            started.append(Alertmanager(tmp_path / f"am{i}", am.config(url), cluster_port=ports[i],
                                        peers=[p for p in ports if p != ports[i]]))
        for manager in started:
            manager.start()
        wait_until(lambda: all(len(peers(m)) == len(urls) for m in started),
                   what="the Alertmanagers to see each other")
        return started

    yield start
    for manager in started:
        manager.stop()


def peers(manager: Alertmanager) -> list[object]:
    status = requests.get(manager.url + "/api/v2/status", timeout=5).json()
    return list(status["cluster"].get("peers") or [])


def owner(port: int, candidates: list[BridgeProcess]) -> BridgeProcess:
    """The replica one of whose processes has a socket on local port `port`."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"sport = :{port}"],
                         capture_output=True, text=True, check=True).stdout
    pids = {int(p) for p in re.findall(r"pid=(\d+)", out)}
    found = [r for r in candidates if pids & r.worker_pids()]
    assert len(found) == 1, f"port {port}: {out!r}"
    return found[0]


def fire(pair: list[Alertmanager], *devices: str) -> None:
    for manager in pair:
        manager.fire(*(am.alert("DeviceUnreachable", d) for d in devices))


def ended(state: str, n: int) -> list[AuditRecord]:
    return wait_for_outcomes(state, n, timeout=60)


def test_three_replicas_behind_an_alertmanager_pair_keep_every_guarantee(
    replicas: Callable[..., list[BridgeProcess]], ha_pair: Callable[..., list[Alertmanager]],
    fake: Fake, postgres_url: str
) -> None:
    requests.put(f"{fake.control}/devices", json={"devices": ["solo", *STORM]},
                 timeout=5).raise_for_status()
    bridges = replicas(3)
    pair = ha_pair([b.url + "/webhook/alertmanager" for b in bridges[:2]])

    fire(pair, "solo")  # one alert, at both members of the pair: one call
    assert [c["device"] for c in fake.arrived(1)] == ["solo"]
    assert [(r.device, r.outcome) for r in ended(postgres_url, 1)] == [("solo", "succeeded")]

    # A storm against a budget of 20 (one spent), the first 3 calls held at the device API.
    fake.behave(hold=True, times=3)
    fire(pair, *STORM)
    held = wait_until(lambda: (lambda h: h if len(h) == 3 else None)(
        [c for c in fake.calls() if c["status"] is None]), what="3 calls held")
    victim = owner(held[0]["client_port"], bridges)
    lost = {c["device"] for c in held if owner(c["client_port"], bridges) is victim}
    victim.crash()  # kill -9, with its calls in flight
    fake.open_gate()  # the others' held calls are answered

    records = ended(postgres_url, 20)
    calls = Counter(c["device"] for c in fake.calls())
    assert len(calls) == 20 and set(calls.values()) == {1}  # the budget, each device once
    by_device = {r.device: (r.outcome, r.reason) for r in records}
    assert {d for d, how in by_device.items() if how == ("unknown", "lost_in_flight")} == lost
    assert {how for d, how in by_device.items() if d not in lost} == {
        ("succeeded", "API call")}
    verdicts = Counter(r.outcome for r in read_audit(postgres_url) if r.event == "decision")
    assert verdicts["execute"] == 20
    assert set(verdicts) <= {"execute", "cooldown", "held_by_budget"}
    result = CliRunner().invoke(main, ["audit", "verify", "--state", postgres_url])
    assert result.exit_code == 0 and result.output.startswith("OK: "), result.output


@pytest.fixture
def proxy() -> Iterator[postgres.CuttableProxy]:
    target = requests.utils.urlparse(postgres.ADMIN_URL)
    front = postgres.CuttableProxy((target.hostname or "127.0.0.1", target.port or 5432))
    yield front
    front.close()


def post(bridge: BridgeProcess, device: str) -> requests.Response:
    return requests.post(bridge.url + "/webhook/alertmanager", timeout=30,
                         data=webhook(helpers.alert("DeviceUnreachable", device)))


def test_the_database_unreachable_for_a_while_gives_503s_then_recovery_nothing_lost_or_doubled(
    replicas: Callable[..., list[BridgeProcess]], proxy: postgres.CuttableProxy, fake: Fake,
    postgres_url: str
) -> None:
    requests.put(f"{fake.control}/devices", json={"devices": ["before", "during"]},
                 timeout=5).raise_for_status()
    bridges = replicas(2, proxy.url(postgres_url), BRIDGE_STATE_TIMEOUT="2s")
    assert post(bridges[0], "before").status_code == 200
    ended(postgres_url, 1)

    proxy.cut()
    for bridge in bridges:
        wait_until(lambda b=bridge: requests.get(b.url + "/-/ready", timeout=10).status_code
                   == 503, what="/-/ready failing")
        answer = post(bridge, "during")
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"].startswith("state store ")

    proxy.restore()
    for bridge in bridges:
        wait_until(lambda b=bridge: requests.get(b.url + "/-/ready", timeout=10).status_code
                   == 200, what="/-/ready again")
        wait_until(lambda b=bridge: "listening for queued work again" in b.log(),
                   what="the listener connected again")
    # Alertmanager's retry, to the other replica: the first to commit anything about it.
    assert post(bridges[1], "during").status_code == 200
    records = ended(postgres_url, 2)
    assert [(r.device, r.outcome) for r in records] == [
        ("before", "succeeded"), ("during", "succeeded")]
    assert Counter(c["device"] for c in fake.calls()) == {"before": 1, "during": 1}
    decisions = [(r.device, r.outcome) for r in read_audit(postgres_url) if r.event == "decision"]
    assert decisions == [("before", "execute"), ("during", "execute")]
    result = CliRunner().invoke(main, ["audit", "verify", "--state", postgres_url])
    assert result.exit_code == 0 and result.output.startswith("OK: 4 records"), result.output
