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

from bridge.store import PAUSED, WAL_LIMIT, SqliteStore, StoreError
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
