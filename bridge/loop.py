"""The closing loop: did each operation fix its alert? Escalate when not; tell people when needed.

One thread per worker; on every round one of all the processes sharing the store (the holder
of a short lease) does the work, so that Alertmanager is asked once and every chat message is
sent once, whatever the number of workers and replicas. A round:

1. asks Alertmanager (BRIDGE_ALERTMANAGER_URLS) which alerts still fire, when some watched
   alert came from it: faster than waiting for its next resolved notification;
2. ends the watches whose alert resolved (remediated) or whose window passed
   (not_remediated), and for those judges the next step of the rule's ladder, as a webhook
   is judged, in the same transaction;
3. derives what people must know from the state, and tells Alertmanager and the chat webhooks.

Everything it decides is state in the store: a bridge killed between two steps carries on
after its restart, and never takes a step twice.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge import notices
from bridge.config import operation_url
from bridge.decide import ANY_NAME, Decision, State, decide_step
from bridge.errors import BridgeError
from bridge.ladder import Concluded, Watch
from bridge.metrics import Metrics
from bridge.notify import Alertmanagers, Notifier
from bridge.rules import RuleSet
from bridge.vocab import Verification

log = logging.getLogger(__name__)

#: A lease outlives this many rounds: a worker killed with it is replaced within a few rounds.
LEASE_ROUNDS = 3


@dataclass(frozen=True)
class Judgement:
    """What the next step of a ladder is judged with (the webhook's settings)."""

    rules: RuleSet
    dry_run: bool
    max_age: float
    device_pattern: re.Pattern[str] = ANY_NAME

    def next_step(self, watch: Watch, state: State, now: float) -> Decision | str:
        """The decision on the step after `watch`'s, or why the ladder ends without one."""
        rule = self.rules.named(watch.rule)
        if rule is None:
            return f"rule {watch.rule} is no longer in the rules file"
        if watch.step >= rule.steps:
            return (f"it was the last step of rule {rule.name}" if rule.steps > 1
                    else f"rule {rule.name} has no escalate steps")
        return decide_step(watch.alert(), rule, watch.step + 1, self.rules, state, now,
                           why=watch.failed_because, dry_run=self.dry_run,
                           device_pattern=self.device_pattern)


class ClosingLoop:
    """Verify, escalate, tell: one round every `interval` seconds, on one process at a time."""

    def __init__(self, store: object, judgement: Judgement, notifier: Notifier, *,
                 interval: float, external_url: str = "", metrics: Metrics | None = None,
                 wake: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        from bridge.store import Store

        self.store: Store = store  # type: ignore[assignment]
        self.judgement = judgement
        self.notifier = notifier
        self.interval = interval
        self.external_url = external_url
        self.metrics = metrics
        self.wake = wake
        self.clock = clock
        #: Who this process is, for the lease: drawn at random, so that no two share it.
        self.owner = random.SystemRandom().randrange(1, 2**52)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: One round at a time in this process (the thread's, and one a caller runs).
        self._round = threading.Lock()

    @property
    def alertmanagers(self) -> Alertmanagers | None:
        return self.notifier.alertmanagers

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="closing-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except BridgeError as exc:
                log.error("closing loop: %s", exc.message)
            except Exception:  # the loop must outlive any one bad round
                log.exception("closing loop: unexpected error")
            self._stop.wait(self.interval)

    def run_once(self) -> list[Concluded] | None:
        """One round, if this process holds the lease; the watches that ended (None: another
        process holds the lease)."""
        with self._round:
            return self._round_once()

    def _round_once(self) -> list[Concluded] | None:
        now = self.clock()
        if not self.store.take_lease(self.owner, now, LEASE_ROUNDS * self.interval):
            return None
        concluded = self.store.conclude(
            now, firing=self._firing(), judge=self.judgement.next_step,
            max_age=self.judgement.max_age,
            approval_timeout=self.judgement.rules.approval_timeout,
            rules_version=self.judgement.rules.version)
        for c in concluded:
            self._note(c)
        if self.wake is not None and any(c.next_operation_id for c in concluded):
            self.wake()
        self.tell(self.clock())
        return concluded

    def _firing(self) -> set[str] | None:
        """The fingerprints Alertmanager says fire now, when a watched alert came from it."""
        if self.alertmanagers is None or not self.store.watched_from("alertmanager"):
            return None
        return self.alertmanagers.firing()

    def _note(self, c: Concluded) -> None:
        w, r = c.watch, c.resolution
        if self.metrics is not None:
            self.metrics.verification(w.rule, w.operation, r.outcome, r.elapsed)
        if r.outcome != Verification.NOT_REMEDIATED:
            log.info("operation %d (%s on %s, rule %s): %s: %s", w.operation_id, w.operation,
                     w.device, w.rule, r.outcome, r.reason)
        elif c.next_operation_id is not None:
            log.warning("operation %d (%s on %s, rule %s) did not remediate: step %d follows"
                        " as operation %d", w.operation_id, w.operation, w.device, w.rule,
                        w.step + 1, c.next_operation_id)
        else:
            log.error("operation %d (%s on %s, rule %s) did not remediate and no step"
                      " follows (%s): a person is told", w.operation_id, w.operation,
                      w.device, w.rule, c.ended_because)

    def _page(self, operation_id: int | None) -> str:
        if not self.external_url:
            return ""
        if operation_id is None:
            return self.external_url + "/ui/"
        return operation_url(self.external_url, operation_id)

    def tell(self, now: float) -> None:
        """Derive the notices from the state; tell what is due about them."""
        if not self.notifier.configured:
            return
        current = notices.notices(self.store.notice_state(now), self._page)
        told = self.store.sync_notices(current, now)
        self.store.mark_told(self.notifier.deliver(told))
