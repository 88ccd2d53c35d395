"""The bridge as a running service: liveness and readiness probes, and its metrics."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from bridge.audit import iso
from bridge.errors import BridgeError
from bridge.metrics import CONTENT_TYPE
from bridge.vocab import Flag
from bridge.web.context import context

blueprint = Blueprint("lifecycle", __name__)


@blueprint.get("/-/healthy")
def healthy() -> Response:
    return jsonify(status="healthy")


@blueprint.get("/-/ready")
def ready() -> tuple[Response, int]:
    ctx = context()
    store, settings, rules = ctx.store, ctx.settings, ctx.rules
    try:
        store.check_writable(ctx.clock())  # webhooks need writes: a read would not tell
        unauthorized = store.get_flag(Flag.API_UNAUTHORIZED)
        replicas = store.replicas_alive(ctx.clock())
    except BridgeError as exc:
        return jsonify(status="not ready", error=exc.message), 503
    if unauthorized is not None:
        return jsonify(
            status="not ready",
            error=f"the device API has rejected the token (HTTP 401) since "
                  f"{iso(unauthorized)}: write a valid one to BRIDGE_API_TOKEN_FILE, or "
                  "fix BRIDGE_API_TOKEN and restart",
        ), 503
    sending = "paused" if store.get_flag(Flag.PAUSED) is not None else \
        "breaker_open" if store.get_flag(Flag.BREAKER_OPEN) is not None else "running"
    return jsonify(
        status="ready", sending=sending, rules=len(rules.rules), rules_version=rules.version,
        dry_run=settings.dry_run, auth=settings.auth.methods or ["none"],
        insecure_no_auth=settings.insecure_no_auth,
        # Never a password: `where` names the database without it.
        state=store.where, engine=store.engine, replicas=replicas,
    ), 200


@blueprint.get("/metrics")
def metrics() -> Response:
    ctx = context()
    try:  # the master records reloads in the store: any worker answers for the bridge
        ok_at = ctx.store.get_flag(Flag.RELOAD_OK)
        failed_at = ctx.store.get_flag(Flag.RELOAD_FAILED)
    except BridgeError:
        ok_at = failed_at = None  # the store's own gauge says it is down
    if failed_at is not None and (ok_at is None or failed_at > ok_at):
        ctx.metrics.note_reload(False, failed_at)
    else:  # never refused since the start, or a good reload came after the refusal
        ctx.metrics.note_reload(True, ok_at or 0.0)
    # Unauthenticated, like any Prometheus exporter: counts and states, never a secret.
    return Response(ctx.metrics.render(), content_type=CONTENT_TYPE)
