"""The SQLite state store on real files: writers wait their turn within a bound, and the
write-ahead log stays small."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import requests

from bridge.audit import AuditQuery
from bridge.store import PAUSED, WAL_LIMIT, AskingAlert, DeviceSeen, SqliteStore, StoreError
from tests import test_guards as guards
from tests.conftest import Bridge
from tests.helpers import BridgeProcess, payload, payload_json, wait_until


@contextmanager
def holding_the_turn(store: SqliteStore) -> Iterator[None]:
    """`store` holds its write turn (and SQLite's write lock) until the block ends."""
    entered, leave = threading.Event(), threading.Event()

    def hold(_: object) -> None:
        entered.set()
        leave.wait(30)

    holder = threading.Thread(target=store.read_state, args=(hold,))
    holder.start()
    try:
        assert entered.wait(10), "the holder never got its turn"
        yield
    finally:
        leave.set()
        holder.join(10)


def bounded(call: Callable[[], object], within: float = 10.0) -> object:
    """Run `call`; fail, rather than hang, if it has not returned after `within` seconds."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=within)
    finally:
        pool.shutdown(wait=False)  # a call that hangs is let go once its lock is


def test_a_writer_gives_up_at_its_timeout_and_leaves_no_lock_behind(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    holder = SqliteStore(state, timeout=0.5)
    # Its own file descriptor, so it takes turns with `holder` as another process would.
    other = SqliteStore(state, timeout=0.5)
    busy = f"state store {state}: locked by another writer for more than 0.5s"
    try:
        with holding_the_turn(holder):
            for waiting_in in (holder, other):  # behind the thread lock, behind the flock
                with pytest.raises(StoreError, match=busy):
                    bounded(partial(waiting_in.set_flag, PAUSED, 1.0))
        # The turn `other` gave up on came to it later: it went straight back.
        late = SqliteStore(state, timeout=10)
        bounded(lambda: late.set_flag(PAUSED, 2.0))
        bounded(lambda: other.set_flag(PAUSED, 3.0))
        assert late.get_flag(PAUSED) == 3.0
        late.close()
    finally:
        holder.close()
        other.close()


def storm(n: int, tag: str) -> bytes:
    """A webhook of `n` distinct alerts."""
    doc = payload_json("alertmanager_firing_multi.json")
    template = doc["alerts"][0]
    doc["alerts"] = [{**template, "fingerprint": f"{tag}{i:08x}",
                      "labels": {**template["labels"], "system_under_test": f"{tag}-{i}"}}
                     for i in range(n)]
    return json.dumps(doc).encode()


def wal_size(state: str | Path) -> int:
    wal = Path(f"{state}-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_the_write_ahead_log_stays_small_and_the_housekeeper_empties_it(
    make_bridge: Callable[..., Bridge],
) -> None:
    bridge = make_bridge(dry_run=True)
    state = bridge.settings.state_path
    largest = 0
    for n in range(40):  # some 4 MB of log in all: SQLite alone would keep all of it
        assert bridge.post("/webhook", storm(100, f"w{n}")).status_code == 200
        largest = max(largest, wal_size(state))
    # At most the limit, and the one transaction that went past it before the checkpoint.
    assert largest < 1.5 * WAL_LIMIT
    bridge.context.housekeeper.run_once()
    assert wal_size(state) == 0
    assert len(bridge.audit()) == 4000


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB file system (tmpfs), which only root may mount."""
    volume = tmp_path / "volume"
    volume.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(volume)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip("needs a 2 MB tmpfs volume, and mounting one is not permitted here: "
                    + (mounted.stderr.strip() or f"mount exited {mounted.returncode}"))
    try:
        yield volume
    finally:
        subprocess.run(["umount", "--lazy", str(volume)], check=True)


def fill(volume: Path) -> Path:
    """Take every byte left on `volume`, as another program's files would."""
    filler = volume / "filler"
    with filler.open("wb", buffering=0) as f:  # unbuffered: nothing left to fail at close
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_small_volume_holds_the_state_and_the_bridge_recovers_when_space_is_freed(
    gunicorn_bridge: Callable[..., BridgeProcess], small_volume: Path
) -> None:
    bridge = gunicorn_bridge(workers=2, state=small_volume / "state.db")
    body = payload("alertmanager_resolved.json")

    def post() -> int:
        return requests.post(bridge.url + "/webhook", data=body, timeout=30).status_code

    def ready() -> int:
        return requests.get(bridge.url + "/-/ready", timeout=30).status_code

    def store_up() -> str:
        text = requests.get(bridge.url + "/metrics", timeout=30).text
        return next(line.split()[1] for line in text.splitlines()
                    if line.startswith("alert_bridge_state_store_up "))

    try:
        # Each one writes some 20 KB of log: SQLite alone would fill the volume before 100.
        assert [post() for _ in range(150)] == [200] * 150
        filler = fill(small_volume)
        answers = [post() for _ in range(100)]
        assert 503 in answers
        assert (ready(), store_up()) == (503, "0.0")
        filler.unlink()
        wait_until(lambda: ready() == 200, what="the bridge to recover by itself")
        assert (post(), store_up()) == (200, "1.0")
    finally:
        bridge.stop()  # before the volume goes


# -- the queries the console reads ------------------------------------------------------------

WIPE = "defaults: {approval_timeout: 1h, cooldown: 1m}\n" + guards.WIPE
DAY = guards.NOON
Clock = guards.Clock


def owned(device: str, **annotations: str) -> bytes:
    return json.dumps({
        "version": "4", "status": "firing", "receiver": "r", "groupKey": "{}:{}",
        "alerts": [{"status": "firing", "labels": {"alertname": "Owned", "device": device},
                    "annotations": annotations, "startsAt": "2027-01-15T11:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z"}]}).encode()


def test_an_operation_reads_with_the_alert_that_asked_and_expires_where_it_is_read(
    make_bridge: Callable[..., Bridge],
) -> None:
    bridge = make_bridge(WIPE, clock=Clock(DAY), start_dispatcher=False)
    bridge.post("/webhook", owned("r1", summary="r1 was taken over"))
    store = SqliteStore(bridge.settings.state_path)
    try:
        op = store.operation(1, DAY)
        assert op is not None and (op.device, op.state) == ("r1", "pending_approval")
        assert store.asking_alerts([1, 99]) == {1: AskingAlert(
            {"alertname": "Owned", "device": "r1"}, {"summary": "r1 was taken over"},
            DAY - 3600)}
        assert store.asking_alerts([]) == {}
        late = store.operation(1, DAY + 3601)  # past the approval timeout, no sweep yet
        assert late is not None and late.state == "expired"
        assert store.operation(2, DAY) is None
    finally:
        store.close()


def test_the_audit_filters_by_operation_and_pages_backwards(
    make_bridge: Callable[..., Bridge],
) -> None:
    bridge = make_bridge(WIPE, clock=Clock(DAY), start_dispatcher=False)
    for device in ("r1", "r2", "r3"):
        bridge.post("/webhook", owned(device))
    store = SqliteStore(bridge.settings.state_path)
    try:
        store.settle(2, False, "alice", DAY, max_age=600, release_until=DAY)
        timeline = store.audit(AuditQuery(operation_id=2, limit=None))
        assert [(r.event, r.outcome) for r in timeline] == [
            ("decision", "pending_approval"), ("outcome", "rejected")]
        newest = store.audit(AuditQuery(limit=2))
        older = store.audit(AuditQuery(limit=2, before_id=newest[0].id))
        assert [r.id for r in older + newest] == [1, 2, 3, 4]
        assert store.audit(AuditQuery(limit=2, before_id=1)) == []
    finally:
        store.close()


def test_devices_are_found_by_part_of_their_name_most_recent_first(
    make_bridge: Callable[..., Bridge],
) -> None:
    clock = Clock(DAY)
    bridge = make_bridge(WIPE, clock=clock, start_dispatcher=False)
    for device in ("core-switch-01", "office-router-01", "core-switch-02", "core-switch-01"):
        clock.now += 60
        bridge.post("/webhook", owned(device))
    store = SqliteStore(bridge.settings.state_path)
    try:
        found = store.devices("SWITCH", 10)
        assert found == [DeviceSeen("core-switch-01", 2, DAY + 240),
                         DeviceSeen("core-switch-02", 1, DAY + 180)]
        assert [d.device for d in store.devices("", 2)] == ["core-switch-01", "core-switch-02"]
        assert store.devices("nowhere", 10) == []
    finally:
        store.close()


def test_operations_per_week_count_what_alerts_asked_for_on_one_device(
    make_bridge: Callable[..., Bridge],
) -> None:
    clock = Clock(DAY)
    bridge = make_bridge(WIPE, clock=clock, start_dispatcher=False)
    # Twenty days ago once, then three times within the last seven days (a cooldown of 1m
    # lets each ask).
    for days_ago in (20, 6, 5, 0):
        clock.now = DAY - days_ago * 86400
        bridge.post("/webhook", owned("r1"))
    bridge.post("/webhook", owned("r2"))
    store = SqliteStore(bridge.settings.state_path)
    try:
        assert store.operations_per_week("r1", DAY, 4) == [0, 1, 0, 3]
        assert store.operations_per_week("r1", DAY, 1) == [3]
        assert store.operations_per_week("nobody", DAY, 2) == [0, 0]
    finally:
        store.close()


def test_pause_and_resume_are_audited_under_the_persons_name(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    try:
        assert store.pause(DAY, "alice (console, admin)") is True
        assert store.pause(DAY + 1, "bob") is False  # already paused: nothing recorded
        assert store.get_flag(PAUSED) == DAY
        assert store.resume(DAY + 2, "carol") == ["paused"]
        assert store.resume(DAY + 3) == []  # without a name, as before: not audited
        records = store.audit(AuditQuery(limit=None))
        assert [(r.event, r.outcome, r.reason) for r in records] == [
            ("operator", "sending_paused", "paused by alice (console, admin)"),
            ("operator", "sending_resumed", "resumed by carol (was: paused)")]
        assert store.verify_audit().ok
    finally:
        store.close()
