"""Dispatch: send queued operations to the device API and record each one's outcome."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from bridge.client import CallResult, DeviceClient
from bridge.store import Store

log = logging.getLogger(__name__)


class Dispatcher:
    """Sends operations that the store has queued, one call each.

    An operation is moved from queued to sending in the store before the call: if two
    dispatchers ever hold the same id, only one of them gets it.
    """

    def __init__(
        self, store: Store, client: DeviceClient, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.client = client
        self.clock = clock

    def send(self, operation_ids: Iterable[int]) -> dict[int, CallResult]:
        results: dict[int, CallResult] = {}
        for op_id in operation_ids:
            op = self.store.start(op_id, self.clock())
            if op is None:
                continue
            result = self.client.operate(op.device, op.operation)
            self.store.finish(op_id, result, self.clock())
            log_result = log.info if result.outcome == "succeeded" else log.warning
            log_result(
                "operation %d: %s on %s by rule %s: %s%s",
                op_id, op.operation, op.device, op.rule, result.outcome,
                f" ({result.error})" if result.error else "",
            )
            results[op_id] = result
        return results
