"""The SQLite state store on real files: writers wait their turn within a bound, and the
write-ahead log stays small."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from bridge.store import PAUSED, SqliteStore, StoreError


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
