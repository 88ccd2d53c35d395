"""Intake: a webhook body in, its decisions committed, the sender's answer out.

parse (payloads) -> limits -> decide and store in one transaction (store.record) -> answer.
Nothing here knows HTTP: the webhooks blueprint hands over the body, and tests call it directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge import payloads
from bridge.audit import Delivery, iso
from bridge.config import Settings
from bridge.decide import TRIPPED, explain, explanation_json, judge, prepare, summarize
from bridge.errors import BridgeError
from bridge.rules import RuleSet
from bridge.store import Recorded, Store
from bridge.vocab import Verdict

if TYPE_CHECKING:
    from bridge.dispatch import Dispatcher
    from bridge.metrics import Metrics

log = logging.getLogger(__name__)


class BodyTooLarge(BridgeError):
    """The body is larger than BRIDGE_MAX_BODY."""

    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"body is larger than BRIDGE_MAX_BODY ({limit} bytes)")


@dataclass(frozen=True)
class Intake:
    """Takes webhook bodies for one app: its settings, rules, store and clock.

    Every refusal is a BridgeError whose status is the HTTP answer: 413 past the size or alert
    limits, 415 for a body that is not JSON by its type, 400 for a body that is not a payload
    (a PayloadError, saying where), 503 when the store cannot be written.
    """

    settings: Settings
    rules: RuleSet
    store: Store
    metrics: Metrics | None = None
    #: Woken when an operation is queued; None in dry run (nothing is ever sent).
    dispatcher: Dispatcher | None = None
    clock: Callable[[], float] = time.time

    def receive(self, body: bytes, content_type: str, source: str | None,
                request_id: str) -> dict[str, Any]:
        """Parse, decide, commit: the answer to one webhook. `source` is the format the
        endpoint expects (None: told apart by shape); `content_type` its Content-Type."""
        return self.take(self.parse(body, content_type, source), request_id)

    def check_size(self, body: bytes) -> None:
        """Refuse a body over BRIDGE_MAX_BODY (413)."""
        if len(body) > self.settings.max_body:
            raise BodyTooLarge(self.settings.max_body)

    def parse(self, body: bytes, content_type: str, source: str | None) -> payloads.Notification:
        """The notification a webhook body holds (its size and type checked first)."""
        self.check_size(body)
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind and kind != "application/json" and not kind.endswith("+json"):
            raise BridgeError(f"Content-Type must be application/json, got {kind}", status=415)
        return payloads.parse(body, source)

    def take(self, notification: payloads.Notification, request_id: str) -> dict[str, Any]:
        """Decide on a parsed notification, within the limits, and commit; the answer."""
        settings, rules, now = self.settings, self.rules, self.clock()
        if len(notification.alerts) > settings.max_alerts:
            raise BridgeError(
                f"payload has {len(notification.alerts)} alerts, more than BRIDGE_MAX_ALERTS"
                f" ({settings.max_alerts}); set max_alerts in the sender's webhook config",
                status=413,
            )
        delivery = Delivery(request_id, notification.source, notification.receiver,
                            notification.group_key, rules.version)
        # Matching and rendering devices read no state: done before the write lock is taken,
        # so that other webhooks wait only for the guards and the writes.
        prepared = prepare(notification.alerts, rules, device_pattern=settings.device_regex)
        # Answer once the decisions are committed, never before: the API calls come after,
        # from the dispatcher, so a slow device API cannot slow the sender down. The answer
        # is built before the commit, so that a failure to build it commits nothing.
        recorded, answer = self.store.record(
            delivery,
            lambda state: judge(prepared, rules, state, now, dry_run=settings.dry_run),
            now, max_age=settings.max_age, approval_timeout=rules.approval_timeout,
            answer=lambda recorded: (recorded, _answer(
                request_id, notification, settings.dry_run, recorded)),
        )
        if self.metrics is not None:
            self.metrics.evaluated(notification.source, len(notification.alerts), recorded)
        if any(r.decision.reason.startswith(TRIPPED) for r in recorded):
            log.error("STORM BREAKER TRIPPED: no operation is sent until an operator runs "
                      "`alert-bridge resume` (request %s)", request_id)
        if self.dispatcher is not None and any(r.operation_id for r in recorded):
            self.dispatcher.wake()
        log.info(
            "webhook %s receiver=%r groupKey=%r alerts=%d %s", notification.source,
            notification.receiver, notification.group_key, len(notification.alerts),
            " ".join(f"{k}={v}" for k, v in answer["summary"].items()),
        )
        return answer

    def explain(self, body: bytes, *, live: bool = False) -> dict[str, Any]:
        """The decisions a webhook with this body would get, guard by guard, from the live
        state; changes nothing. `live` judges as a live bridge even in dry run."""
        notification = payloads.parse(body, None)
        dry_run = self.settings.dry_run and not live
        now = self.clock()
        results = self.store.read_state(
            lambda state: explain(notification.alerts, self.rules, state, now, dry_run=dry_run,
                                  device_pattern=self.settings.device_regex)
        )
        rungs = self.store.in_progress(sorted({a.fingerprint for a in notification.alerts}))
        return {"source": notification.source, "dry_run": dry_run, "state": True,
                "alerts": explanation_json(results, rungs)}


def _answer(request_id: str, notification: payloads.Notification, dry_run: bool,
            recorded: list[Recorded]) -> dict[str, Any]:
    """The JSON answer to a webhook: its decisions, alert by alert."""
    by_alert: dict[int, list[dict[str, object]]] = {}
    for r in recorded:
        by_alert.setdefault(id(r.decision.alert), []).append(_decision_json(r))
    return {
        "request_id": request_id,
        "source": notification.source,
        "receiver": notification.receiver,
        "groupKey": notification.group_key,
        "dry_run": dry_run,
        "summary": summarize(r.decision for r in recorded),
        "alerts": [
            {
                "fingerprint": alert.fingerprint,
                "alertname": alert.alertname,
                "status": alert.status,
                "decisions": by_alert.get(id(alert), []),
            }
            for alert in notification.alerts
        ],
    }


def _decision_json(r: Recorded) -> dict[str, object]:
    d = r.decision
    doc: dict[str, object] = {
        "rule": d.rule.name if d.rule else None,
        "device": d.device,
        "operation": d.operation,
        "verdict": d.verdict,
        "reason": d.reason,
    }
    if d.until is not None:
        doc["until"] = iso(d.until)
    if d.not_before is not None and d.verdict != Verdict.EXECUTE:
        doc["not_before"] = iso(d.not_before)
    if r.operation_id is not None:
        doc["operation_id"] = r.operation_id
    return doc
