"""The bridge's vocabulary: every word that is stored, answered or audited, in one place.

Each is a StrEnum, so a member is equal to the text it stands for: rows written before these
existed read back as the same values, and JSON answers and audit records carry plain strings.
This module imports nothing, so any step of the pipeline may use it.
"""

from __future__ import annotations

from enum import StrEnum

#: The label every alert the bridge sends carries (with the value "true"): routes send them to
#: people with it, and the bridge never acts on an alert that has it.
OWN_LABEL = "alert_bridge"


class Verdict(StrEnum):
    """What decide() concluded for one alert and rule (the audit's `outcome` of a decision)."""

    # These queue an operation: they claim the cooldown and spend budget.
    EXECUTE = "execute"
    PENDING_APPROVAL = "pending_approval"
    HELD_FOR_WINDOW = "held_for_window"
    HELD_MIN_AGE = "held_min_age"
    # These do not, each with its reason.
    COOLDOWN = "cooldown"
    DRY_RUN = "dry_run"
    DUPLICATE = "duplicate"
    PAUSED = "paused"
    BREAKER_OPEN = "breaker_open"
    GAVE_UP = "gave_up"
    OUTSIDE_WINDOW = "outside_window"
    HELD_BY_BUDGET = "held_by_budget"
    TEMPLATE_ERROR = "template_error"
    EMPTY_DEVICE = "empty_device"
    INVALID_DEVICE = "invalid_device"
    NO_MATCH = "no_match"
    #: The alert is one the bridge sent itself (it carries the `alert_bridge` label): a
    #: route that loops it back must not make the bridge act on its own news.
    OWN_ALERT = "own_alert"


#: Verdicts that queue an operation.
QUEUING = frozenset({Verdict.EXECUTE, Verdict.PENDING_APPROVAL, Verdict.HELD_FOR_WINDOW,
                     Verdict.HELD_MIN_AGE})
#: Verdicts that count as "operations asked for" towards the storm breaker.
DEMAND = QUEUING | {Verdict.HELD_BY_BUDGET, Verdict.BREAKER_OPEN}


class OpState(StrEnum):
    """Where an operation is. The first three are open; the others are final."""

    PENDING_APPROVAL = "pending_approval"
    QUEUED = "queued"
    SENDING = "sending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


#: Operations that may still be sent.
OPEN_STATES = frozenset({OpState.PENDING_APPROVAL, OpState.QUEUED, OpState.SENDING})
#: How an operation can end, in the order status lines list them.
FINAL_STATES = tuple(state for state in OpState if state not in OPEN_STATES)
#: Operations that never reached the device API: they count for nothing.
NEVER_SENT = frozenset({OpState.EXPIRED, OpState.REJECTED, OpState.CANCELLED})


class Hold(StrEnum):
    """Why a queued operation waits before it may be sent."""

    NONE = ""
    APPROVAL = "approval"
    WINDOW = "window"
    MIN_AGE = "min_age"


class Event(StrEnum):
    """The kind of an audit record."""

    DECISION = "decision"  # decide() judged an alert against a rule
    APPROVAL = "approval"  # a person approved an operation that was pending approval
    ATTEMPT = "attempt"  # one call to the device API that will be tried again
    OUTCOME = "outcome"  # how an operation ended
    OPERATOR = "operator"  # a person changed state by hand (a cooldown cleared)
    VERIFICATION = "verification"  # whether an operation that succeeded fixed its alert


class Outcome(StrEnum):
    """Audit outcomes that are neither a verdict nor an operation state."""

    APPROVED = "approved"
    COOLDOWN_CLEARED = "cooldown_cleared"
    #: A person paused sending, or resumed it (from the console or the CLI).
    SENDING_PAUSED = "sending_paused"
    SENDING_RESUMED = "sending_resumed"
    #: A person acknowledged a failed operation or a ladder that did not remediate: the
    #: bridge stops telling people about it.
    ACKNOWLEDGED = "acknowledged"
    #: A queued step of a ladder that was not sent, because its alert resolved first.
    ALERT_RESOLVED = "alert_resolved"


class Verification(StrEnum):
    """How the watch on an operation that succeeded ended (the outcome of a verification)."""

    #: The alert resolved after the call and within the rule's `verify` window.
    REMEDIATED = "remediated"
    #: The window passed and the alert still fired.
    NOT_REMEDIATED = "not_remediated"
    #: The alert had resolved before the call ended: not credited to the operation.
    RESOLVED_BEFORE = "resolved_before"


class CallOutcome(StrEnum):
    """What one call to the device API did to the device, as far as the bridge can know."""

    SUCCEEDED = "succeeded"  # the API initiated the operation
    FAILED = "failed"  # it certainly did not
    UNKNOWN = "unknown"  # it may have: the answer was lost or ambiguous


class CallKind(StrEnum):
    """Why a call ended as it did: the answer's class, or what went wrong before one came."""

    OK = "ok"
    REJECTED = "rejected"  # 400
    UNAUTHORIZED = "unauthorized"  # 401
    NOT_FOUND = "not_found"  # 404
    BUSY = "busy"  # 409
    UNPROCESSABLE = "unprocessable"  # 422
    SERVER_ERROR = "server_error"  # 5xx
    UNEXPECTED_STATUS = "unexpected_status"
    INVALID_REQUEST = "invalid_request"
    CONNECT_ERROR = "connect_error"
    TIMEOUT = "timeout"
    INVALID_RESPONSE = "invalid_response"


class Flag(StrEnum):
    """Keys of the store's meta table; each holds a time (or a time-like number)."""

    PAUSED = "paused_since"
    BREAKER_OPEN = "breaker_open_since"
    #: When an operator last resumed: the storm breaker counts demand from then on only.
    RESUMED = "resumed_at"
    RELOAD_OK = "rules_reload_ok_at"
    RELOAD_FAILED = "rules_reload_failed_at"
    API_UNAUTHORIZED = "api_unauthorized_since"
    #: Which version of the token file the device API refused (a replaced file may be good).
    API_UNAUTHORIZED_VERSION = "api_unauthorized_token_version"
    #: The earliest time the next call may start (the global rate limit).
    NEXT_CALL_SLOT = "next_call_slot"
    #: When a readiness probe or a scrape last wrote to the store, to see that it can.
    WRITE_CHECKED = "write_checked_at"
    #: Until when one process of all that share the store runs the closing loop (verifying,
    #: escalating, telling people), and which one: a number it drew at random.
    LOOP_LEASE = "loop_lease_until"
    LOOP_OWNER = "loop_lease_owner"
    #: A count that every commit which may give senders work bumps, on SQLite: the other
    #: processes' idle senders watch it (PostgreSQL tells them with NOTIFY instead).
    QUEUE_SIGNAL = "queue_signal"


class Role(StrEnum):
    """What a person logged in to the console may do."""

    ADMIN = "admin"  # look, approve, reject, pause and resume (BRIDGE_ADMIN_TOKENS)
    VIEWER = "viewer"  # look only (BRIDGE_VIEWER_TOKENS)
