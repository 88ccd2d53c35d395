"""The bridge as a running service: liveness and readiness probes, rules reload, metrics."""

from __future__ import annotations

import logging
import os
import signal

from flask import Blueprint, Response, jsonify, request

from bridge.audit import iso
from bridge.errors import BridgeError, RulesError
from bridge.metrics import CONTENT_TYPE
from bridge.rules import load_rules
from bridge.vocab import Flag
from bridge.web.context import context

log = logging.getLogger(__name__)

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
    ), 200


@blueprint.post("/-/reload")
def reload() -> tuple[Response, int]:
    """Validate the rules file; if it is good, have the master reload every worker."""
    ctx = context()
    settings, running = ctx.settings, ctx.rules.version
    if settings.admin_auth.configured and \
            settings.admin_auth.check(request.headers, b"", ctx.clock()) is None:
        return jsonify(error="unauthorized"), 401
    try:
        new = load_rules(settings.rules_path)
    except RulesError as exc:
        ctx.store.set_flag(Flag.RELOAD_FAILED, ctx.clock())
        log.error("rules reload refused, still running version %s", running)
        return jsonify(error=f"rules file invalid: still running version {running}",
                       problems=[str(p) for p in exc.problems]), 400
    master = os.environ.get("BRIDGE_MASTER_PID")
    if not master:
        return jsonify(error="reloading needs the server `alert-bridge serve` starts"), 409
    os.kill(int(master), signal.SIGHUP)  # the master validates again and swaps workers
    return jsonify(status="reloading", version=new.version, previous=running), 202


@blueprint.get("/metrics")
def metrics() -> Response:
    ctx = context()
    try:  # a reload the master refused shows on every worker's scrape
        ok_at = ctx.store.get_flag(Flag.RELOAD_OK)
        failed_at = ctx.store.get_flag(Flag.RELOAD_FAILED)
    except BridgeError:
        ok_at = failed_at = None  # the store's own gauge says it is down
    if failed_at is not None and (ok_at is None or failed_at > ok_at):
        ctx.metrics.note_reload(False, failed_at)
    # Unauthenticated, like any Prometheus exporter: counts and states, never a secret.
    return Response(ctx.metrics.render(), content_type=CONTENT_TYPE)
