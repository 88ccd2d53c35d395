"""Housekeeping: the audit retention and the write-ahead log, kept in bounds in the background."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from bridge.audit import iso
from bridge.errors import BridgeError
from bridge.store import Store

log = logging.getLogger(__name__)


class Housekeeper:
    """Prunes audit records and finished operations past the retention, a batch at a time,
    then empties the state store's write-ahead log (which gives its space back)."""

    INTERVAL = 60.0

    def __init__(self, store: Store, retention: float, clock: Callable[[], float]) -> None:
        self.store, self.retention, self.clock = store, retention, clock
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="housekeeping", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

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
        while not self._stop.wait(self.INTERVAL):
            try:
                pruned = self.run_once()
            except BridgeError as exc:
                log.error("housekeeping: %s", exc.message)
                continue
            if pruned:
                log.info("audit retention: pruned %d records older than %s", pruned,
                         iso(self.clock() - self.retention))
