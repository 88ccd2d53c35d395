"""Dispatch: send the operations the store has queued, retry by the contract, record each end.

Webhooks only queue operations (store.record); dispatcher threads in every gunicorn worker
take them from the shared store. The store's atomic claim keeps every limit global: at most
`concurrency` calls in flight, calls spaced by the rate limit, one operation per device at a
time, and no operation ever held by two senders.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bridge.client import CallResult, DeviceClient
from bridge.errors import BridgeError
from bridge.store import Operation, Store
from bridge.vocab import CallKind, CallOutcome, Flag, OpState

if TYPE_CHECKING:
    from bridge.metrics import Metrics
    from bridge.rules import RuleSet

log = logging.getLogger(__name__)

#: Store flag set (to the time) while the device API rejects the token; /-/ready fails on it.
#: With a token file: the version (TokenSource.version) of the file whose token was rejected.

# Operations that may be sent again after an ambiguous attempt (a timeout or a dropped
# connection after the request left, or a gateway timeout): the device may have started the
# first one. A second `sync` re-reads the configuration the first one read: harmless. A
# second `reconf` while the first applies may cut the device off half-way, a second `reboot`
# takes a device that is coming back down again, and a second factory reset is never
# acceptable. Those end `unknown` for a person to check instead.
REPEATABLE_AFTER_AMBIGUITY = frozenset({"sync"})

# Answers that say the operation did not start, so sending it again is safe for any
# operation: the server failed to initiate it (5xx except 504), the request never left, or
# the device was busy or offline.
_BACKOFF = frozenset({CallKind.SERVER_ERROR, CallKind.CONNECT_ERROR})
_BUSY = frozenset({CallKind.BUSY, CallKind.UNPROCESSABLE})
_AMBIGUOUS = frozenset({CallKind.TIMEOUT, CallKind.INVALID_RESPONSE})


@dataclass(frozen=True)
class DispatchPolicy:
    """Limits and retry spacing; every number is a setting (see config.Settings)."""

    concurrency: int = 4  # API calls in flight, all workers together
    rate_limit: float = 10.0  # API calls started per second, all workers together
    max_age: float = 600.0  # an operation not sent this long after its alert is not sent
    max_attempts: int = 5  # per operation, all retry classes together
    retry_base: float = 2.0  # 5xx and connect errors: base * 2**(attempt-1), jittered
    retry_cap: float = 120.0
    busy_base: float = 60.0  # 409/422: the device is busy or offline; wait longer
    busy_cap: float = 600.0
    failure_cooldown: float = 300.0  # cooldown left after an operation that did not happen
    lease: float = 60.0  # longer than any call can take (connect + read timeouts + margin)
    # Idle senders sleep until woken (work queued in this process, or a store notification:
    # LISTEN/NOTIFY on PostgreSQL, a watched signal row on SQLite) or until the next thing due
    # (a retry, a hold's end, an expiry, a lease), and at most this long: a lost wake-up
    # costs at most this much latency.
    poll_interval: float = 5.0


@dataclass(frozen=True)
class Step:
    """What to do after an attempt: try again at `retry_at`, or end with `result`."""

    result: CallResult
    retry_at: float | None = None


def next_step(op: Operation, result: CallResult, now: float, policy: DispatchPolicy,
              rng: random.Random) -> Step:
    """Decide, from one attempt's result, whether the operation is retried or ended."""
    kind = result.kind
    if kind == CallKind.SERVER_ERROR and result.status_code == 504:
        # A gateway timeout means the request may have reached the API behind the gateway.
        kind = CallKind.TIMEOUT
        result = replace(result, outcome=CallOutcome.UNKNOWN)
    if result.outcome == CallOutcome.SUCCEEDED:
        return Step(result)
    if kind in _AMBIGUOUS and op.operation not in REPEATABLE_AFTER_AMBIGUITY:
        return Step(result)
    if op.attempts >= policy.max_attempts:
        return Step(result)
    if kind in _BACKOFF or kind in _AMBIGUOUS:
        delay = min(policy.retry_cap, policy.retry_base * 2 ** (op.attempts - 1))
    elif kind in _BUSY:
        delay = min(policy.busy_cap, policy.busy_base * 2 ** (op.attempts - 1))
    else:  # 400, 401, 404, other statuses: retrying cannot help
        return Step(result)
    # Equal jitter: never sooner than half the delay, so retries stay spaced, yet spread out.
    return Step(result, now + delay / 2 + rng.uniform(0, delay / 2))


#: The sweep (expiries, lost leases, operations their rule no longer allows) runs at most
#: this often, at a sender's step.
SWEEP_INTERVAL = 1.0
#: Woken for something due, a sender looks this much after it, so that the time has passed.
_AFTER_DUE = 0.005


class Dispatcher:
    """Sender threads of one process. Start after fork; stop() drains calls in flight.

    Idle senders cost nothing: they sleep on a condition. A wake() (work queued) rouses one;
    one that claims an operation rouses the next before sending it, so a burst spreads over
    every free sender while a single operation costs one claim, not one per sender. Of the
    idle senders, one at a time (the timekeeper) also wakes by itself when the store says
    something comes due, or after poll_interval; the others sleep until roused, unless they
    know of something due sooner than it wakes.
    """

    def __init__(self, store: Store, client: DeviceClient, policy: DispatchPolicy, *,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 metrics: Metrics | None = None, rules: RuleSet | None = None) -> None:
        self.store = store
        self.rules = rules
        self.metrics = metrics
        self.client = client
        self.policy = policy
        self.clock = clock
        self.rng = rng or random.Random()
        self._wakeup = threading.Condition()
        #: Bumped by every wake(): a sender that saw it change since it last looked does not
        #: go to sleep, so a wake-up that came while it was looking is never lost.
        self._wakes = 0
        #: When the idle sender that wakes soonest by itself wakes (monotonic; inf: none).
        self._keeper_wakes_at = math.inf
        self._sleeping = 0
        #: The token file holds the token the API refused: look at it every sweep, idle or not.
        self._token_refused = False
        #: The 401 flag may be up (any process may raise it): a success looks, and clears it.
        self._flag_seen = True
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_sweep = 0.0

    def start(self) -> None:
        for n in range(self.policy.concurrency):
            thread = threading.Thread(target=self._run, name=f"dispatch-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """New work may be there: an idle sender looks now rather than at its next poll."""
        with self._wakeup:
            self._wakes += 1
            self._wakeup.notify()

    def stop(self, timeout: float) -> bool:
        """Take no new operation; wait up to `timeout` for calls in flight. True if drained."""
        self._stopping.set()
        with self._wakeup:
            self._wakeup.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        drained = not any(t.is_alive() for t in self._threads)
        if not drained:
            log.warning("dispatcher stopped with calls still in flight; they will end unknown")
        return drained

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._wakeup:
                seen = self._wakes
            try:
                wait, idle = self._step()
            except BridgeError as exc:
                log.error("dispatcher: %s", exc.message)
                wait, idle = self.policy.poll_interval, True
            except Exception:  # a sender thread must outlive any single bad operation
                log.exception("dispatcher: unexpected error")
                wait, idle = self.policy.poll_interval, True
            if wait > 0:
                self._sleep(seen, wait, idle)

    def _sleep(self, seen: int, wait: float, idle: bool) -> None:
        """Wait for a wake-up, or `wait` seconds: always when waiting for the rate limit's
        next slot; when idle, only if no other idle sender wakes by itself sooner (the one
        that does keeps time for all; the others sleep until roused)."""
        with self._wakeup:
            if self._wakes != seen or self._stopping.is_set():
                return  # woken while looking: look again
            at = time.monotonic() + wait
            timed = not idle or at < self._keeper_wakes_at
            if idle and timed:
                self._keeper_wakes_at = at
            self._sleeping += 1
            try:
                self._wakeup.wait(wait if timed else None)
            finally:
                self._sleeping -= 1
                if self._keeper_wakes_at == at:
                    self._keeper_wakes_at = math.inf

    @property
    def sleeping(self) -> int:
        """How many senders are waiting now (for work, a due time or the rate limit)."""
        with self._wakeup:
            return self._sleeping

    def step(self) -> float:
        """Send at most one operation. Returns how long to wait before the next step."""
        return self._step()[0]

    def _step(self) -> tuple[float, bool]:
        """step(), and whether the wait is an idle one (nothing to send until woken or due)
        rather than the rate limit's spacing."""
        now = self.clock()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self._sweep(now)
            self._forget_a_replaced_token()
        claim = self.store.claim(
            now, concurrency=self.policy.concurrency, spacing=1.0 / self.policy.rate_limit,
            lease=self.policy.lease,
        )
        if claim.operation is None:
            if claim.wait:
                return min(claim.wait, self.policy.poll_interval), False
            return self._until_due(now), True
        if claim.room:
            with self._wakeup:
                self._wakeup.notify()  # there may be more: the next idle sender looks too
        self.send(claim.operation)
        return 0.0, False

    def _until_due(self, now: float) -> float:
        """How long an idle sender may sleep: until the store's next due time, or the next
        sweep if that comes later (a sweep ends what expired and lost leases), at most
        poll_interval; at most a sweep's interval while a refused token file waits to be
        replaced (readiness comes back within a second of it)."""
        longest = SWEEP_INTERVAL if self._token_refused else self.policy.poll_interval
        due = self.store.next_due(now)
        if due is None:
            return longest
        return min(longest, max(due, self._next_sweep) - now + _AFTER_DUE)

    def _sweep(self, now: float) -> None:
        """End the operations that can no longer be sent as they should."""
        for op in self.store.end_stale(now, now + self.policy.failure_cooldown):
            self._ended(op, "ended without an answer: " +
                        ("expired" if op.state == OpState.EXPIRED else "lost in flight"))
        rules = self.rules
        if rules is None:
            return
        # A rule deleted or put in shadow mode since its operation was queued (held for a
        # window, for min_age or for approval) must not act any more. These senders run the
        # rules in force (a reload replaces them), and look once a second, the first time
        # before their first claim. The operation did not happen: its cooldown is released.
        # Those queued under these very rules need no look: their rule was in force then as
        # it is now. After a storm thousands wait, and each process looks every second.
        for op in self.store.cancel(lambda o: rules.why_not_sent(o.rule), now,
                                    release_until=now, except_version=rules.version):
            self._ended(op, f"cancelled: {rules.why_not_sent(op.rule)}")

    def _ended(self, op: Operation, how: str) -> None:
        log.warning("operation %d (%s on %s) %s", op.id, op.operation, op.device, how)
        if self.metrics is not None:
            self.metrics.outcome(op.operation, op.state)

    def send(self, op: Operation) -> CallResult:
        result = self.client.operate(op.device, op.operation)
        if self.metrics is not None:
            self.metrics.api_call(op.operation, result)
        now = self.clock()
        step = next_step(op, result, now, self.policy, self.rng)
        final = step.result
        # An operation that certainly did not happen leaves a short cooldown, so the next
        # alert can try again without every repeat of it hammering the API.
        release = None if final.outcome in (CallOutcome.SUCCEEDED, CallOutcome.UNKNOWN) else \
            now + self.policy.failure_cooldown
        # This sender goes on to claim the next operation itself, so no other needs telling
        # that a sending slot is free (with several replicas, every process's listener would
        # wake a sender for a claim that finds nothing) unless this one is stopping.
        self.store.finish(op, final, now, retry_at=step.retry_at, release_until=release,
                          wake_others=self._stopping.is_set())
        if self.metrics is not None and step.retry_at is None:
            self.metrics.outcome(op.operation, final.outcome)
        self._note_auth(final)
        if step.retry_at is not None:
            log.warning("operation %d: %s on %s, attempt %d: %s; retry in %.1fs", op.id,
                        op.operation, op.device, op.attempts, final.error,
                        step.retry_at - now)
        else:
            (log.info if final.outcome == CallOutcome.SUCCEEDED else log.warning)(
                "operation %d: %s on %s by rule %s: %s after %d attempt(s)%s", op.id,
                op.operation, op.device, op.rule, final.outcome, op.attempts,
                f" ({final.error})" if final.error else "",
            )
        return final

    def _note_auth(self, result: CallResult) -> None:
        if result.kind == "unauthorized":
            # The client looked at the token file after the 401, so this is the version that
            # held the rejected token. Written before the flag, which /-/ready reads.
            self.store.set_flag(Flag.API_UNAUTHORIZED_VERSION, self.client.tokens.version)
            if self.store.get_flag(Flag.API_UNAUTHORIZED) is None:
                self.store.set_flag(Flag.API_UNAUTHORIZED, self.clock())
            log.error(
                "THE DEVICE API REJECTED THE TOKEN (HTTP 401): every further call will fail "
                "until the token is replaced: write the new one to BRIDGE_API_TOKEN_FILE (used "
                "from the next call on), or fix BRIDGE_API_TOKEN and restart"
            )
            self._flag_seen = True
        elif result.outcome == CallOutcome.SUCCEEDED and self._flag_seen:
            # Read only while the flag may be up (seen by this process, or at its last sweep),
            # not at every call: a read per call is a round trip per operation on PostgreSQL.
            if self.store.get_flag(Flag.API_UNAUTHORIZED):
                self.store.set_flag(Flag.API_UNAUTHORIZED, None)
            self._flag_seen = False

    def _forget_a_replaced_token(self) -> None:
        """Clear the 401 flag once the token file no longer holds the rejected token, as a
        restart with a new token does: a readiness probe that kept failing would keep away
        the webhooks whose calls show that the new token works."""
        tokens = self.client.tokens
        self._token_refused = False
        self._flag_seen = self.store.get_flag(Flag.API_UNAUTHORIZED) is not None
        if tokens.path is None or not self._flag_seen:
            return
        rejected = self.store.get_flag(Flag.API_UNAUTHORIZED_VERSION)
        tokens.get()  # reads the file again if it changed
        self._token_refused = True
        if rejected is not None and tokens.version != rejected:
            self._token_refused = False
            self.store.set_flag(Flag.API_UNAUTHORIZED, None)
            log.warning("the token file %s was replaced since the device API rejected its "
                        "token: ready again; the next call will tell whether the new one works",
                        tokens.path)
