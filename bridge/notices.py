"""The bridge's own alerts, the values: what a person should know, and what was told of it.

A Notice is derived afresh from the stored state on every round of the closing loop
(bridge.loop), as Prometheus evaluates its rules; the store remembers which notices it told
people about (Told), so that each start and end is told once. Pure: delivery is bridge.notify.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from bridge.audit import iso
from bridge.rules import format_duration
from bridge.vocab import OWN_LABEL

# The names of the bridge's alerts: routes and silences match them, keep them as they are.
APPROVAL_PENDING = "AlertBridgeApprovalPending"
OPERATION_FAILED = "AlertBridgeOperationFailed"
NOT_REMEDIATED = "AlertBridgeNotRemediated"
BREAKER_OPEN = "AlertBridgeBreakerOpen"
ALERTNAMES = (APPROVAL_PENDING, OPERATION_FAILED, NOT_REMEDIATED, BREAKER_OPEN)


@dataclass(frozen=True)
class Notice:
    """Something a person should know, for as long as it lasts: one alert of the bridge's."""

    alertname: str  # one of ALERTNAMES
    severity: str  # "warning" or "critical"
    #: Identify it: device, operation, rule, source_alertname, operation_id (as relevant).
    labels: Mapping[str, str]
    summary: str  # one line: what happened
    action: str  # what a person can do about it: the exact command
    since: float  # when it started
    url: str = ""  # the console's page for it, when BRIDGE_EXTERNAL_URL is set

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    @property
    def all_labels(self) -> dict[str, str]:
        """The label set Alertmanager sees (and deduplicates on)."""
        return {"alertname": self.alertname, OWN_LABEL: "true", "severity": self.severity,
                **self.labels}

    @property
    def key(self) -> str:
        """Its identity: the same condition gets the same key on every round and replica."""
        return json.dumps(self.all_labels, sort_keys=True, separators=(",", ":"))

    @property
    def annotations(self) -> dict[str, str]:
        notes = {"summary": self.summary, "action": self.action}
        if self.url:
            notes["console_url"] = self.url
        return notes

    def to_alertmanager(self, ends_at: float) -> dict[str, Any]:
        """The alert as Alertmanager's POST /api/v2/alerts takes it."""
        doc: dict[str, Any] = {"labels": self.all_labels, "annotations": self.annotations,
                               "startsAt": iso(self.since), "endsAt": iso(ends_at)}
        if self.url:
            doc["generatorURL"] = self.url
        return doc

    def to_webhook(self, ended: float | None) -> dict[str, Any]:
        """The JSON a chat webhook gets: `text` for people (what Slack and Mattermost show),
        the rest for programs."""
        status = "resolved" if ended is not None else "firing"
        text = f"[{status.upper()}] {self.alertname}: {self.summary}"
        if ended is None:
            text += f"\n{self.action}" + (f"\n{self.url}" if self.url else "")
        return {"text": chat_text(text), "status": status, "alertname": self.alertname,
                "labels": self.all_labels, "annotations": self.annotations,
                "startsAt": iso(self.since), **({"endsAt": iso(ended)} if ended else {})}


def chat_text(text: str) -> str:
    """`text` with &, < and > escaped as Slack asks: a label holding <!channel> must not ping
    a whole channel, and <url|label> must not disguise a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- the notices, from what the store holds ---------------------------------------------------

@dataclass(frozen=True)
class Subject:
    """The operation a notice is about."""

    operation_id: int
    device: str
    operation: str
    rule: str
    source_alertname: str  # the alert that asked for it

    @property
    def labels(self) -> dict[str, str]:
        return {"device": self.device, "operation": self.operation, "rule": self.rule,
                "source_alertname": self.source_alertname,
                "operation_id": str(self.operation_id)}

    def __str__(self) -> str:
        return (f"{self.operation} on {self.device} (rule {self.rule},"
                f" operation {self.operation_id})")


@dataclass(frozen=True)
class Pending:
    """An operation waiting for a person's approval."""

    subject: Subject
    since: float
    expires_at: float


@dataclass(frozen=True)
class Failure:
    """An operation that ended failed or unknown, whose cooldown still runs, not acknowledged."""

    subject: Subject
    outcome: str
    reason: str
    since: float


@dataclass(frozen=True)
class LadderEnd:
    """The last operation of a ladder (or of a rule without one) that did not remediate, whose
    alert still fires, not acknowledged."""

    subject: Subject
    verify: float
    why: str  # why no step follows
    since: float


@dataclass(frozen=True)
class NoticeState:
    """What the store holds that a person should know about."""

    pending: tuple[Pending, ...] = ()
    failures: tuple[Failure, ...] = ()
    ladders: tuple[LadderEnd, ...] = ()
    breaker_since: float | None = None
    breaker_reason: str = ""


def approval_pending(p: Pending, url: str = "") -> Notice:
    s = p.subject
    return Notice(
        APPROVAL_PENDING, "warning", s.labels,
        f"{s} waits for approval until {iso(p.expires_at)}",
        f"alert-bridge approve {s.operation_id}  (or: alert-bridge reject {s.operation_id})",
        p.since, url)


def operation_failed(f: Failure, url: str = "") -> Notice:
    s = f.subject
    why = f" ({f.reason})" if f.reason else ""
    return Notice(
        OPERATION_FAILED, "warning", s.labels, f"{s} ended {f.outcome}{why}",
        f"check {s.device}; alert-bridge audit --device {s.device}; then"
        f" alert-bridge ack {s.operation_id}", f.since, url)


def not_remediated(e: LadderEnd, url: str = "") -> Notice:
    s = e.subject
    return Notice(
        NOT_REMEDIATED, "critical", s.labels,
        f"{s.source_alertname} on {s.device} still fires {format_duration(e.verify)} after"
        f" {s}; no step follows: {e.why}",
        f"a person must look at {s.device}; alert-bridge ack {s.operation_id} once in hand",
        e.since, url)


def breaker_open(since: float, reason: str, url: str = "") -> Notice:
    return Notice(
        BREAKER_OPEN, "critical", {},
        f"the storm breaker is open: nothing is sent to the device API ({reason})",
        "look at what tripped it (alert-bridge status), then alert-bridge resume", since, url)


def notices(state: NoticeState, page: Callable[[int | None], str] = lambda _: "",
            ) -> list[Notice]:
    """Every notice in force; `page` gives the console's address of an operation (or of the
    overview, for None), "" when it is not known."""
    found = [approval_pending(p, page(p.subject.operation_id)) for p in state.pending]
    found += [operation_failed(f, page(f.subject.operation_id)) for f in state.failures]
    found += [not_remediated(e, page(e.subject.operation_id)) for e in state.ladders]
    if state.breaker_since is not None:
        found.append(breaker_open(state.breaker_since, state.breaker_reason, page(None)))
    return found


@dataclass(frozen=True)
class Told:
    """A notice as the store remembers it: when it started and ended, and who knows."""

    notice: Notice
    ended: float | None = None  # None: in force
    #: The chat webhooks got the message that it started / that it ended.
    told_start: bool = False
    told_end: bool = False
    #: Alertmanager got it with endsAt now (only matters once it ended).
    told_resolved: bool = False

    @property
    def done(self) -> bool:
        """Nothing is left to tell about it: it may be forgotten."""
        return self.ended is not None and self.told_end and self.told_resolved


#: What one round delivered: for each notice key, the flags to set (Told field names).
Delivered = dict[str, set[str]]


