"""Housekeeping: the replica's heartbeat, the audit retention and the write-ahead log, kept
in bounds in the background."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from bridge.audit import iso
from bridge.errors import BridgeError
from bridge.store import HEARTBEAT, Store

log = logging.getLogger(__name__)


def replica_id() -> str:
    """This `serve`'s name among the replicas: host:pid of its gunicorn master, so that its
    workers beat one row in turn (replicas are what a Service balances over, not workers,
    which come and go with every rules reload). Outside gunicorn, this process's own pid."""
    return f"{socket.gethostname()}:{os.environ.get('BRIDGE_MASTER_PID') or os.getpid()}"


def bridge_version() -> str:
    try:
        return version("zequenze-alert-bridge")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class Housekeeper:
    """Beats the replica's heartbeat every HEARTBEAT seconds; prunes audit records and
    finished operations past the retention, a batch at a time, then empties the state
    store's write-ahead log (which gives its space back), every INTERVAL."""

    INTERVAL = 60.0

    def __init__(self, store: Store, retention: float, clock: Callable[[], float]) -> None:
        self.store, self.retention, self.clock = store, retention, clock
        self.replica, self.version = replica_id(), bridge_version()
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="housekeeping", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        """Tell the other replicas (and /-/ready, and `status`) this one is alive."""
        self.store.heartbeat(self.replica, self.version, self.clock())

    def run_once(self) -> int:
        """Prune, then empty the write-ahead log; how many audit records went."""
        pruned = 0
        try:
            while not self._stop.is_set():
                gone = self.store.prune(self.clock() - self.retention)
                pruned += gone
                if gone == 0:
                    break
        finally:
            # Even when pruning failed: on a full disk, emptying the log gives space back.
            self.store.checkpoint()
        return pruned

    def _run(self) -> None:
        # Monotonic: a test's or an operator's clock jump must not stall the beats.
        next_prune = time.monotonic() + self.INTERVAL
        while True:
            self._attempt("heartbeat", self.beat)
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.INTERVAL
                self._attempt("housekeeping", self._prune)
            if self._stop.wait(HEARTBEAT):
                return

    def _prune(self) -> None:
        pruned = self.run_once()
        if pruned:
            log.info("audit retention: pruned %d records older than %s", pruned,
                     iso(self.clock() - self.retention))

    def _attempt(self, what: str, work: Callable[[], None]) -> None:
        try:
            work()
        except BridgeError as exc:
            log.error("%s: %s", what, exc.message)
