"""What every answer shares: an X-Request-Id, and errors in one JSON shape, never an HTML page.

`{"error": "what is wrong"}`, plus `where` (a payload's JSON path) or `parameter` (a request
parameter's name) when the error names one; 500 only for the bridge's own failures.
"""

from __future__ import annotations

import logging
import uuid

from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException

from bridge.errors import BridgeError, ParameterError, PayloadError

log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    app.before_request(_new_request_id)
    app.after_request(_request_id_header)
    app.register_error_handler(BridgeError, _bridge_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)


def request_id() -> str:
    """The id of the request being served, as its answer's X-Request-Id says."""
    return str(g.get("request_id", ""))


def _new_request_id() -> None:
    g.request_id = uuid.uuid4().hex[:16]


def _request_id_header(response: Response) -> Response:
    response.headers["X-Request-Id"] = request_id()
    return response


def _bridge_error(exc: BridgeError) -> tuple[Response, int]:
    body: dict[str, object] = {"error": exc.message}
    if isinstance(exc, PayloadError) and exc.where:
        body["where"] = exc.where
    if isinstance(exc, ParameterError):
        body["parameter"] = exc.parameter
    if exc.status >= 500:
        log.error("request %s: %s", request_id() or "-", exc.message)
    return jsonify(body), exc.status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    return jsonify(error=exc.description or exc.name), exc.code or 500


def _internal_error(exc: Exception) -> tuple[Response, int]:
    log.exception("request %s failed", request_id() or "-")
    return jsonify(error="internal error", request_id=request_id()), 500
