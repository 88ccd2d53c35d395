"""The bridge as an operator runs it: `alert-bridge serve` under gunicorn with several workers."""

from __future__ import annotations

import gc
import signal
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests
from click.testing import CliRunner

from bridge.cli import main
from bridge.server import YOUNG_THRESHOLD, settle_heap
from tests import postgres
from tests.conftest import RULES, Fake
from tests.helpers import BridgeProcess, audit, outcomes, payload, wait_until


def post_together(url: str | list[str], body: bytes, n: int) -> list[requests.Response]:
    """Send `n` identical deliveries released at the same instant from `n` threads (taking
    turns over the URLs, when there are several)."""
    barrier = threading.Barrier(n)
    urls = [url] if isinstance(url, str) else url

    def one(i: int) -> requests.Response:
        url = urls[i % len(urls)]
        with requests.Session() as s:
            s.get(url.rsplit("/webhook", 1)[0] + "/-/healthy", timeout=10)  # connect first
            barrier.wait(10)
            return s.post(url, data=body, headers={"Content-Type": "application/json"},
                          timeout=60)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_twenty_simultaneous_duplicates_make_exactly_one_call(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake, state_location: str
) -> None:
    bridge = gunicorn_bridge(workers=3, state=state_location)
    answers = post_together(bridge.url + "/webhook/alertmanager",
                            payload("alertmanager_resolved.json"), 20)
    assert [r.status_code for r in answers] == [200] * 20
    verdicts = Counter(r.json()["alerts"][0]["decisions"][0]["verdict"] for r in answers)
    assert verdicts == {"execute": 1, "cooldown": 19}
    outcomes(bridge, 1)
    records = audit(bridge)
    assert [c["raw_path"] for c in fake.calls()] == [
        "/api/v1/inventory_device_name_operation/frontend/"]
    assert Counter((r.event, r.outcome) for r in records) == {
        ("decision", "execute"): 1, ("decision", "cooldown"): 19, ("outcome", "succeeded"): 1}
    assert len({r.id for r in records}) == 21


def test_two_replicas_on_one_database_make_exactly_one_call(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake, postgres_url: str
) -> None:
    postgres.empty(postgres_url)
    # The local server trusts its users, so a password in the URL is sent but not needed:
    # enough to see that it never shows.
    url = postgres_url.replace("://postgres@", "://postgres:pw-Replica-9@")
    replicas = [gunicorn_bridge(workers=2, state=url) for _ in range(2)]
    answers = post_together([r.url + "/webhook/alertmanager" for r in replicas],
                            payload("alertmanager_resolved.json"), 20)
    assert [r.status_code for r in answers] == [200] * 20
    verdicts = Counter(r.json()["alerts"][0]["decisions"][0]["verdict"] for r in answers)
    assert verdicts == {"execute": 1, "cooldown": 19}
    outcomes(replicas[0], 1)
    assert len(fake.calls()) == 1
    result = CliRunner().invoke(main, ["audit", "verify", "--state", url])
    assert (result.exit_code, result.output.split(", head")[0]) == (
        0, "OK: 21 records, chain intact")
    assert "pw-Replica-9" not in replicas[0].log() + replicas[1].log()
    assert f"state {postgres_url}," in replicas[0].log()  # named, without the password


def ready(bridge: BridgeProcess) -> dict[str, object]:
    body: dict[str, object] = requests.get(bridge.url + "/-/ready", timeout=5).json()
    return body


def test_ready_and_status_name_the_database_and_count_each_serve_once(
    gunicorn_bridge: Callable[..., BridgeProcess], postgres_url: str
) -> None:
    postgres.empty(postgres_url)
    url = postgres_url.replace("://postgres@", "://postgres:pw-Ready-5@")
    first = gunicorn_bridge(workers=2, state=url)
    wait_until(lambda: ready(first)["replicas"] == 1, what="the first replica's heartbeat")
    second = gunicorn_bridge(workers=2, state=url)
    # Two serves of two workers each: two replicas, whichever worker of either answers.
    wait_until(lambda: [ready(r)["replicas"] for r in (first, second) * 3] == [2] * 6,
               what="both replicas counted by both")
    body = ready(second)
    assert (body["status"], body["state"], body["engine"]) == (
        "ready", postgres_url, "postgresql")
    status = CliRunner().invoke(main, ["status", "--state", url, "--url", first.url])
    assert f"State:    {postgres_url} (postgresql), 2 replicas alive" in status.output
    assert "pw-Ready-5" not in str(body) + status.output + first.log() + second.log()
    sqlite_one = gunicorn_bridge(workers=2)  # the default: a SQLite file
    wait_until(lambda: ready(sqlite_one)["replicas"] == 1, what="the SQLite replica")
    assert (ready(sqlite_one)["state"], ready(sqlite_one)["engine"]) == (
        str(sqlite_one.state), "sqlite")


def test_every_writer_gives_up_within_the_state_timeout(
    gunicorn_bridge: Callable[..., BridgeProcess]
) -> None:
    bridge = gunicorn_bridge(workers=3, env={"BRIDGE_STATE_TIMEOUT": "1s"})
    body = payload("alertmanager_resolved.json")
    gate = sqlite3.connect(bridge.state, isolation_level=None)
    gate.execute("BEGIN IMMEDIATE")  # an outside process holds the write lock
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(post_together, bridge.url + "/webhook", body, 24)
        try:
            # Writers that queued behind one another would take 24 x 1 s in all.
            answers = waiting.result(timeout=10)
        finally:
            gate.execute("ROLLBACK")  # the gate opens, whatever happened
            gate.close()
    assert [r.status_code for r in answers] == [503] * 24
    assert {r.json()["error"] for r in answers} == {
        f"state store {bridge.state}: locked by another writer for more than 1s"
        " (BRIDGE_STATE_TIMEOUT)"}
    after = [requests.post(bridge.url + "/webhook", data=body, timeout=30) for _ in range(6)]
    assert [r.status_code for r in after] == [200] * 6


def test_several_workers_really_serve(gunicorn_bridge: Callable[..., BridgeProcess]) -> None:
    bridge = gunicorn_bridge(workers=3)
    bridge.wait_for_workers(3)


def test_a_restart_keeps_cooldowns(gunicorn_bridge: Callable[..., BridgeProcess],
                                   fake: Fake) -> None:
    body = payload("alertmanager_firing_multi.json")
    first = gunicorn_bridge(workers=2)
    assert requests.post(first.url + "/webhook", data=body, timeout=30).json()["summary"] == {
        "execute": 3}
    outcomes(first, 3)
    assert first.stop(signal.SIGTERM) == 0
    second = gunicorn_bridge(workers=2, state=first.state)
    again = requests.post(second.url + "/webhook", data=body, timeout=30).json()
    assert again["summary"] == {"cooldown": 3}
    assert len(fake.calls()) == 3


def test_sighup_reaches_the_server_and_it_keeps_serving(
    gunicorn_bridge: Callable[..., BridgeProcess]
) -> None:
    bridge = gunicorn_bridge(workers=2)
    assert bridge.proc is not None
    old = bridge.wait_for_workers(2)
    # SIGHUP with new rules replaces every worker (with the same rules it changes nothing:
    # tests/test_reload.py).
    bridge.rules.write_text(RULES + "# changed\n")
    bridge.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: (lambda w: len(w) == 2 and not w & old)(bridge.worker_pids()),
               what="two new workers after SIGHUP")
    wait_until(lambda: requests.get(bridge.url + "/-/ready", timeout=2).status_code == 200,
               what="ready after SIGHUP")
    assert bridge.stop(signal.SIGTERM) == 0


def test_kill_9_loses_nothing_and_sends_nothing_twice(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake
) -> None:
    # One call at a time, the first held by the fake: when the crash comes, one operation is
    # in flight and two are queued. A 2 s read timeout makes the in-flight lease short (about
    # 10 s).
    env = {"BRIDGE_CONCURRENCY": "1", "BRIDGE_API_TIMEOUT": "2"}
    first = gunicorn_bridge(workers=2, env=env)
    fake.behave(hold=True, times=1)
    answer = requests.post(first.url + "/webhook", timeout=30,
                           data=payload("alertmanager_firing_multi.json")).json()
    assert answer["summary"] == {"execute": 3}
    fake.arrived(1)
    first.crash()
    second = gunicorn_bridge(workers=2, env=env, state=first.state)
    ended = outcomes(second, 3, timeout=60)
    by_device = {o.device: (o.outcome, o.reason) for o in ended}
    in_flight = fake.calls()[0]["device"]
    assert by_device.pop(in_flight) == ("unknown", "lost_in_flight")
    assert set(by_device.values()) == {("succeeded", "API call")}
    assert Counter(c["device"] for c in fake.calls()) == {
        "MegaTron": 1, "OptimusPrime": 1, "StarScream": 1}
    records = audit(second)
    assert Counter(r.event for r in records) == {"decision": 3, "outcome": 3}
    assert "resuming: 2 operations queued, 1 were being sent" in second.log()


def test_sigterm_drains_calls_in_flight(gunicorn_bridge: Callable[..., BridgeProcess],
                                        fake: Fake) -> None:
    bridge = gunicorn_bridge(workers=2)
    fake.behave(hold=True, times=1)
    requests.post(bridge.url + "/webhook", data=payload("alertmanager_resolved.json"),
                  timeout=30)
    fake.arrived(1)
    workers = bridge.wait_for_workers(2)
    assert bridge.proc is not None
    bridge.proc.send_signal(signal.SIGTERM)
    # The idle worker leaves at once; the one with the call waits for its answer.
    assert bridge.wait_for_workers(1) < workers and bridge.proc.poll() is None
    fake.open_gate()
    assert bridge.proc.wait(30) == 0
    assert [(r.event, r.outcome) for r in audit(bridge)] == [
        ("decision", "execute"), ("outcome", "succeeded")]


def test_logs_are_json_lines_with_the_request_id(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake
) -> None:
    import json

    bridge = gunicorn_bridge(workers=2)
    answer = requests.post(bridge.url + "/webhook", data=payload("alertmanager_resolved.json"),
                           timeout=30).json()
    outcomes(bridge, 1)
    assert bridge.stop(signal.SIGTERM) == 0
    lines = [json.loads(line) for line in bridge.log().splitlines() if line.strip()]
    assert {"time", "level", "logger", "pid", "message"} <= set(lines[0])
    assert any(x["logger"] == "gunicorn.error" and "Booting worker" in x["message"]
               for x in lines)
    webhook = [x for x in lines if x["message"].startswith("webhook alertmanager")]
    assert [x.get("request_id") for x in webhook] == [answer["request_id"]]
    assert {r.request_id for r in audit(bridge)} == {answer["request_id"]}


def test_logs_in_plain_text_on_request(gunicorn_bridge: Callable[..., BridgeProcess]) -> None:
    bridge = gunicorn_bridge(workers=1, env={"BRIDGE_LOG_FORMAT": "text"})
    answer = requests.post(bridge.url + "/webhook", data=payload("alertmanager_resolved.json"),
                           timeout=30).json()
    assert bridge.stop(signal.SIGTERM) == 0
    line = next(x for x in bridge.log().splitlines() if "webhook alertmanager" in x)
    assert " INFO [" in line and line.endswith(f"(request {answer['request_id']})")


def test_audit_follow_keeps_up_with_several_workers_writing(
    gunicorn_bridge: Callable[..., BridgeProcess], fake: Fake
) -> None:
    import json
    import queue
    import subprocess
    import sys

    bridge = gunicorn_bridge(workers=3)
    requests.post(bridge.url + "/webhook", data=payload("alertmanager_firing_single.json"),
                  timeout=30)
    follow = subprocess.Popen(
        [sys.executable, "-m", "bridge", "audit", "--follow", "--json", "--limit", "0",
         "--state", str(bridge.state)], stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in follow.stdout or ()],
                              daemon=True)
    reader.start()
    try:
        answers = post_together(bridge.url + "/webhook/alertmanager",
                                payload("alertmanager_firing_multi.json"), 12)
        assert [r.status_code for r in answers] == [200] * 12
        outcomes(bridge, 3)
        total = len(audit(bridge))
        seen = [json.loads(lines.get(timeout=20))["id"] for _ in range(total)]
        assert seen == list(range(1, total + 1))  # every record, once, in order
    finally:
        follow.terminate()
        follow.wait(10)
        if follow.stdout:
            follow.stdout.close()


def test_a_worker_takes_what_its_app_built_out_of_the_collectors_walks() -> None:
    # What _start_worker does first in each worker (bridge.server.settle_heap).
    threshold = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
