"""Where alerts come in: the webhook endpoints, and /api/explain, which takes the same bodies.

Every route here is authenticated as a webhook sender (BRIDGE_WEBHOOK_* settings), on a body
read within BRIDGE_MAX_BODY first; the work itself is the app's Intake.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from bridge.intake import BodyTooLarge
from bridge.metrics import ENDPOINT_SOURCES
from bridge.web.answers import request_id
from bridge.web.context import context

log = logging.getLogger(__name__)

blueprint = Blueprint("webhooks", __name__)


@blueprint.before_request
def _authenticate() -> tuple[Response, int] | None:
    if request.method == "OPTIONS":  # Flask answers it itself, with the methods allowed
        return None
    ctx = context()
    try:  # before any work
        body = request.get_data(cache=True)
    except RequestEntityTooLarge:  # a Content-Length past MAX_CONTENT_LENGTH
        raise BodyTooLarge(ctx.settings.max_body) from None
    ctx.intake.check_size(body)
    if ctx.settings.auth.check(request.headers, body, ctx.clock()) is not None:
        return None
    # Say nothing about which check failed, to the sender or in the log.
    log.warning("webhook %s from %s refused: authentication failed", request.path,
                request.remote_addr)
    ctx.metrics.auth_failure()
    return jsonify(error="unauthorized"), 401


@blueprint.after_request
def _count(response: Response) -> Response:
    # Also runs for answers made by the error handlers (400, 401, 413, 415, 503).
    endpoint_source = ENDPOINT_SOURCES.get(request.path)
    if request.method == "POST" and endpoint_source is not None:
        context().metrics.webhook(g.get("webhook_source") or endpoint_source,
                                  response.status_code)
    return response


def _receive(source: str | None) -> Response:
    intake = context().intake
    notification = intake.parse(request.get_data(cache=True), request.mimetype, source)
    g.webhook_source = notification.source  # counted by its format from here on
    return jsonify(intake.take(notification, request_id()))


@blueprint.post("/webhook/alertmanager")
def alertmanager() -> Response:
    return _receive("alertmanager")


@blueprint.post("/webhook/grafana")
def grafana() -> Response:
    return _receive("grafana")


@blueprint.post("/webhook")
def any_source() -> Response:
    return _receive(None)


@blueprint.post("/api/explain")
def explain() -> Response:
    """The decisions a webhook with this body would get, guard by guard; changes nothing."""
    live = request.args.get("live", "") in ("1", "true", "yes")
    return jsonify(context().intake.explain(request.get_data(cache=True), live=live))
