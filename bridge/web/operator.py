"""The operator API: the audit, and the operations waiting for a person's answer.

Every route needs an admin token (BRIDGE_ADMIN_TOKENS); without any configured, the API is off.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from bridge.audit import MAX_ID, AuditQuery
from bridge.errors import ParameterError
from bridge.rules import parse_duration
from bridge.web.context import context

log = logging.getLogger(__name__)

blueprint = Blueprint("operator", __name__)

#: The most audit records one GET /api/audit answers; page on with after_id.
AUDIT_PAGE = 1000


@blueprint.before_request
def _authenticate() -> tuple[Response, int] | None:
    if request.method == "OPTIONS":  # Flask answers it itself, with the methods allowed
        return None
    ctx = context()
    admin_auth = ctx.settings.admin_auth
    if not admin_auth.configured:
        return jsonify(error="the operator API is disabled: set BRIDGE_ADMIN_TOKENS"), 403
    if admin_auth.check(request.headers, b"", ctx.clock()) is None:
        log.warning("%s %s from %s refused: authentication failed", request.method,
                    request.path, request.remote_addr)
        ctx.metrics.admin_auth_failure()
        return jsonify(error="unauthorized"), 401
    return None


@blueprint.get("/api/audit")
def audit() -> Response:
    ctx, args = context(), request.args
    try:
        since = ctx.clock() - parse_duration(args["since"]) if "since" in args else None
    except ValueError as exc:
        raise ParameterError("since", str(exc)) from None
    after_id = _integer("after_id", args.get("after_id", "0"), 0, MAX_ID)
    limit = _integer("limit", args.get("limit", "100"), 1, AUDIT_PAGE)
    query = AuditQuery(device=args.get("device"), rule=args.get("rule"),
                       outcome=args.get("outcome"), since=since, after_id=after_id,
                       limit=limit, oldest_first=True)
    records = ctx.store.audit(query)
    return jsonify(records=[r.to_json() for r in records],
                   next_after_id=records[-1].id if records else after_id)


@blueprint.get("/api/operations/pending")
def pending() -> Response:
    ctx = context()
    return jsonify(operations=[op.to_json() for op in ctx.store.pending(ctx.clock())])


# The id is matched as text: Flask's int converter takes any length, and past MAX_ID the
# store would overflow (a 500); a number out of range is a 400 that says so.
@blueprint.post("/api/operations/<operation_id>/<any(approve, reject):verdict>")
def settle(operation_id: str, verdict: str) -> Response:
    ctx = context()
    body = request.get_json(silent=True)
    who = str(body.get("by", "")) if isinstance(body, dict) else ""
    now = ctx.clock()
    op = ctx.store.settle(_integer("operation_id", operation_id, 1, MAX_ID),
                          verdict == "approve", f"{who or 'api'} (HTTP)",
                          now, max_age=ctx.settings.max_age,
                          release_until=now + ctx.settings.failure_cooldown)
    if ctx.dispatcher is not None and verdict == "approve":
        ctx.dispatcher.wake()
    return jsonify(op.to_json())


def _integer(name: str, text: str, low: int, high: int) -> int:
    """A request parameter that must be a whole number from `low` to `high`."""
    # isdigit bounds the work too: no int() on a 5,000-digit string, no sign or spaces.
    if text.isascii() and text.isdigit() and len(text.lstrip("0")) <= len(str(high)) \
            and low <= int(text) <= high:
        return int(text)
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise ParameterError(name, f"must be an integer from {low} to {high}, got {shown!r}")
