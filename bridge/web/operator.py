"""The operator API: the audit, the operations waiting for a person, cancelling, reloading.

Every route needs an admin token (BRIDGE_ADMIN_TOKENS); without any configured, every one is
closed (403), not open: that is the safe default.
"""

from __future__ import annotations

import logging
import os
import signal

from flask import Blueprint, Response, jsonify, request

from bridge.audit import MAX_ID, AuditQuery
from bridge.errors import ParameterError, PayloadError, RulesError
from bridge.rules import load_rules, parse_duration
from bridge.vocab import Flag
from bridge.web.context import context

log = logging.getLogger(__name__)

blueprint = Blueprint("operator", __name__)

#: The most audit records one GET /api/audit answers; page on with after_id.
AUDIT_PAGE = 1000

#: What an operator without a token can do instead, by endpoint.
_OTHERWISE = {
    "operator.reload": "; without it, SIGHUP to the `alert-bridge serve` process or a change"
                       " of the rules file reloads the rules",
}


@blueprint.before_request
def _authenticate() -> tuple[Response, int] | None:
    if request.method == "OPTIONS":  # Flask answers it itself, with the methods allowed
        return None
    ctx = context()
    admin_auth = ctx.settings.admin_auth
    if not admin_auth.configured:
        return jsonify(error="the operator API is disabled: start the bridge with"
                             " BRIDGE_ADMIN_TOKENS (or BRIDGE_ADMIN_TOKENS_FILE) set, and"
                             " send one of its tokens as Authorization: Bearer TOKEN"
                             + _OTHERWISE.get(request.endpoint or "", "")), 403
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
    now = ctx.clock()
    op = ctx.store.settle(_integer("operation_id", operation_id, 1, MAX_ID),
                          verdict == "approve", _operator(), now,
                          max_age=ctx.settings.max_age,
                          release_until=now + ctx.settings.failure_cooldown)
    if ctx.dispatcher is not None and verdict == "approve":
        ctx.dispatcher.wake()
    return jsonify(op.to_json())


@blueprint.post("/api/operations/<operation_id>/cancel")
def cancel(operation_id: str) -> Response:
    ctx = context()
    who = _operator()
    (op,) = ctx.store.cancel(lambda _: f"cancelled by {who}", ctx.clock(),
                             operation_id=_integer("operation_id", operation_id, 1, MAX_ID))
    return jsonify(op.to_json())


@blueprint.post("/api/operations/<operation_id>/ack")
def acknowledge(operation_id: str) -> Response:
    """A person has a failed operation, or a ladder that ran out, in hand (alert-bridge ack)."""
    ctx = context()
    op_id = _integer("operation_id", operation_id, 1, MAX_ID)
    what = ctx.store.acknowledge(op_id, _operator(), ctx.clock())
    return jsonify(operation_id=op_id, acknowledged=what)


@blueprint.get("/api/report")
def report() -> Response:
    """`alert-bridge report --json`: how well each rule's operations work."""
    from bridge.report import of_store

    ctx, args = context(), request.args
    try:
        span = parse_duration(args.get("since", "7d"))
    except ValueError as exc:
        raise ParameterError("since", str(exc)) from None
    built = of_store(ctx.store, ctx.clock(), span, args.get("rule") or None)
    return jsonify(built.to_json(args.get("devices", "") in ("1", "true", "yes")))


@blueprint.post("/-/reload")
def reload() -> tuple[Response, int]:
    """Validate the rules file; if it changed, have the master reload every worker."""
    ctx = context()
    running = ctx.rules.version
    try:
        new = load_rules(ctx.settings.rules_path)
    except RulesError as exc:
        ctx.store.set_flag(Flag.RELOAD_FAILED, ctx.clock())
        log.error("rules reload refused, still running version %s", running)
        return jsonify(error=f"rules file invalid: still running version {running}",
                       problems=[str(p) for p in exc.problems]), 400
    if new.version == running:
        # Nothing to replace: asking again and again costs no worker and no call in
        # flight. The file is valid, though, so a refusal recorded before is over.
        ctx.store.set_flag(Flag.RELOAD_OK, ctx.clock())
        return jsonify(status="unchanged", version=new.version,
                       message=f"the rules are unchanged, version {new.version}:"
                               " nothing to reload"), 200
    master = os.environ.get("BRIDGE_MASTER_PID")
    if not master:
        return jsonify(error="reloading needs the server `alert-bridge serve` starts"), 409
    os.kill(int(master), signal.SIGHUP)  # the master validates again and swaps workers
    return jsonify(status="reloading", version=new.version, previous=running,
                   message=f"new workers serve version {new.version} as soon as they"
                           " start (/-/ready shows it); the old ones finish their calls"
                           " in flight"), 202


def _integer(name: str, text: str, low: int, high: int) -> int:
    """A request parameter that must be a whole number from `low` to `high`."""
    # isdigit bounds the work too: no int() on a 5,000-digit string, no sign or spaces.
    if text.isascii() and text.isdigit() and len(text.lstrip("0")) <= len(str(high)) \
            and low <= int(text) <= high:
        return int(text)
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise ParameterError(name, f"must be an integer from {low} to {high}, got {shown!r}")


def _operator() -> str:
    """Who acts over the operator API, for the audit: the optional JSON body {"who": NAME}
    (approve and reject also read "by", their first name for it)."""
    if not request.get_data(cache=True):
        return "api (HTTP)"
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise PayloadError('the body must be empty or a JSON object such as {"who": "alice"}')
    key = "who" if "who" in body or "by" not in body else "by"
    name = body.get(key, "")
    if not isinstance(name, str):
        raise PayloadError("must be a string: the name recorded in the audit", where=key)
    return f"{name or 'api'} (HTTP)"
