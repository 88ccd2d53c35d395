"""Verification and escalation, the values: an operation watched after it succeeded, how the
watch ends, and what the next step of its rule's ladder is told.

Pure: no store, no clock. The store keeps these as rows (so a watch outlives a restart and is
the same on every replica); the closing loop (bridge.loop) decides with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType

from bridge.audit import iso
from bridge.payloads import Alert
from bridge.rules import Rule, format_duration
from bridge.vocab import Verification


@dataclass(frozen=True)
class Watch:
    """An operation that succeeded and whose alert is watched: did it resolve in time?"""

    operation_id: int
    rule: str
    device: str
    operation: str
    step: int  # of the rule's ladder: 1 for the rule's own operation
    verify: float  # seconds: the window, counted from done_at
    called: float  # when the call ended (the API accepted the operation)
    done_at: float  # when the operation should be done: the API's estimate, else `called`
    # The alert that asked, to judge the next step on:
    fingerprint: str
    alertname: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float | None
    #: When the alert's episode began (its startsAt, else when the operation was queued): a
    #: resolution before it ended an earlier episode, not this one.
    starts: float = 0.0
    # The delivery that brought it, which the next step's decision names too:
    request_id: str = ""
    source: str = ""
    receiver: str = ""
    group_key: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "annotations", MappingProxyType(dict(self.annotations)))

    @property
    def deadline(self) -> float:
        """Past this, an alert still firing was not remediated by the operation."""
        return self.done_at + self.verify

    def alert(self) -> Alert:
        """The alert as it fired when it asked for the operation: the next step is judged on it."""
        starts = datetime.fromtimestamp(self.starts_at, UTC) if self.starts_at else None
        return Alert("firing", self.labels, self.annotations, starts, None, self.fingerprint,
                     "")

    @property
    def failed_because(self) -> str:
        """Why the next step is taken: "sync did not remediate within 10m"."""
        return f"{self.operation} did not remediate within {format_duration(self.verify)}"


@dataclass(frozen=True)
class Resolution:
    """How a watch ends when its alert resolved at `resolved_at`."""

    outcome: Verification
    elapsed: float | None  # seconds from the call to the resolution (remediated only)
    reason: str


def resolved(watch: Watch, resolved_at: float) -> Resolution:
    """The watch's outcome for a resolution at `resolved_at`, learned within its window.

    An alert that had resolved before the call ended was not fixed by the operation (the API
    had not even accepted it): it is recorded resolved_before and credited to nothing.
    """
    step = f"step {watch.step}: "
    if resolved_at <= watch.called:
        return Resolution(Verification.RESOLVED_BEFORE, None,
                          f"{step}the alert had resolved before the call ended: not credited"
                          " to the operation")
    elapsed = resolved_at - watch.called
    return Resolution(Verification.REMEDIATED, elapsed,
                      f"{step}the alert resolved {format_duration(round(elapsed, 3))} after the"
                      f" call, within {format_duration(watch.verify)} of its completion")


def expired(watch: Watch) -> Resolution:
    """The watch's outcome when its window passed with the alert still firing."""
    return Resolution(Verification.NOT_REMEDIATED, None,
                      f"step {watch.step}: the alert still fired"
                      f" {format_duration(watch.verify)} after the operation's completion")


@dataclass(frozen=True)
class Concluded:
    """A watch that ended: how, and what followed (the next step's operation, or why none)."""

    watch: Watch
    resolution: Resolution
    next_operation_id: int | None = None
    #: Set when the ladder ends here without remediation: why no step follows.
    ended_because: str = ""


@dataclass(frozen=True)
class Rung:
    """A step of a ladder in progress, as `explain` shows it: an operation on its way, or
    watched until `until`."""

    rule: str
    step: int
    operation: str
    operation_id: int
    state: str  # an open operation state, or "watching"
    fingerprint: str
    until: float | None = None  # while watching: the end of the window

    def to_json(self, rule: Rule | None) -> dict[str, object]:
        """The rung as explain shows it, with the step that would follow it and when, when
        the rule (as it is now) has one."""
        doc: dict[str, object] = {"step": self.step, "operation": self.operation,
                                  "operation_id": self.operation_id, "state": self.state}
        if self.until is not None:
            doc["until"] = iso(self.until)
        if rule is not None and self.step < rule.steps:
            follows = rule.step(self.step + 1)
            doc["next"] = {"step": self.step + 1, "operation": follows.operation,
                           "at": iso(self.until) if self.until is not None else None}
        return doc

    def describe(self, rule: Rule | None) -> str:
        """One line for `alert-bridge explain`."""
        doc = self.to_json(rule)
        text = f"step {self.step}: {self.operation} (operation {self.operation_id}) {self.state}"
        if "until" in doc:
            text += f" until {doc['until']}"
        follows = doc.get("next")
        if isinstance(follows, dict):
            text += f"; then step {follows['step']}: {follows['operation']} if it still fires"
        return text
