"""Flask wiring: webhook endpoints feed the pipeline payloads -> decide -> store -> dispatch."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from bridge import payloads
from bridge.audit import MAX_ID, AuditQuery, Delivery, iso
from bridge.client import DeviceClient
from bridge.config import Settings
from bridge.console import init_app as init_console
from bridge.decide import TRIPPED, decide, explain, explanation_json, summarize
from bridge.dispatch import API_UNAUTHORIZED, Dispatcher
from bridge.errors import BridgeError, ParameterError, PayloadError, RulesError
from bridge.metrics import CONTENT_TYPE, ENDPOINT_SOURCES, Metrics
from bridge.rules import RuleSet, load_rules, parse_duration
from bridge.store import (
    BREAKER_OPEN,
    PAUSED,
    RELOAD_FAILED,
    RELOAD_OK,
    Recorded,
    Store,
)

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    rules: RuleSet | None = None,
    store: Store | None = None,
    client: DeviceClient | None = None,
    clock: Callable[[], float] = time.time,
    start_dispatcher: bool = True,
) -> Flask:
    """Build the bridge's WSGI app. Collaborators not given are built from `settings`.

    Unless in dry run, the app owns a Dispatcher whose sender threads start here (so call
    this after fork) and stop with `app.extensions["bridge"]["dispatcher"].stop(timeout)`.
    Raises RulesError when the rules file is invalid: the bridge never serves without rules.
    """
    settings = settings or Settings.from_env()
    rules = rules or load_rules(settings.rules_path)
    store = store or settings.open_store()
    if client is None and not settings.dry_run:
        assert settings.api_token is not None
        client = DeviceClient(
            settings.api_url, settings.api_token,
            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
            verify=settings.api_ca_bundle or True,
        )
    # Read from the app at scrape time, so that a reload that swaps the rules shows at once.
    metrics = Metrics(store, dry_run=settings.dry_run, started=clock(), clock=clock,
                      rules_loaded=lambda: len(app.extensions["bridge"]["rules"].rules))
    dispatcher = None
    if client is not None and not settings.dry_run:
        dispatcher = Dispatcher(store, client, settings.policy(), clock=clock, metrics=metrics,
                                rules=rules)
        if start_dispatcher:
            dispatcher.start()

    housekeeper = Housekeeper(store, settings.audit_retention, clock)
    if start_dispatcher:
        housekeeper.start()

    device_regex = settings.device_regex
    app = Flask(__name__)
    # Werkzeug would answer a path with doubled slashes (/webhook//alertmanager) with a 308
    # redirect and an HTML body, past every error handler: the sender of a mistyped URL
    # would get no JSON error. Such a path is an unknown path (404), like any other.
    app.url_map.merge_slashes = False
    # One byte past the limit: werkzeug stops reading a body sent without Content-Length
    # (chunked) at the limit, silently, so only reading one byte more shows it is too long.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body + 1
    too_large = f"body is larger than BRIDGE_MAX_BODY ({settings.max_body} bytes)"
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep answers in reading order
    app.extensions["bridge"] = {
        "settings": settings, "rules": rules, "store": store, "dispatcher": dispatcher,
        "metrics": metrics, "housekeeper": housekeeper,
    }
    init_console(app, clock)

    @app.before_request
    def _request_id_and_auth() -> tuple[Response, int] | None:
        g.request_id = uuid.uuid4().hex[:16]
        if request.method != "POST" or not (
            request.path.startswith("/webhook") or request.path == "/api/explain"
        ):
            return None
        try:  # before any work
            body = request.get_data(cache=True)
        except RequestEntityTooLarge:  # a Content-Length past MAX_CONTENT_LENGTH
            raise BridgeError(too_large, status=413) from None
        if len(body) > settings.max_body:
            raise BridgeError(too_large, status=413)
        if settings.auth.check(request.headers, body, clock()) is not None:
            return None
        # Say nothing about which check failed, to the sender or in the log.
        log.warning("webhook %s from %s refused: authentication failed", request.path,
                    request.remote_addr)
        metrics.auth_failure()
        return jsonify(error="unauthorized"), 401

    @app.after_request
    def _request_id_header(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response

    @app.after_request
    def _count_webhook(response: Response) -> Response:
        # Also runs for answers made by the error handlers (400, 401, 413, 415, 503).
        endpoint_source = ENDPOINT_SOURCES.get(request.path)
        if request.method == "POST" and endpoint_source is not None:
            metrics.webhook(g.get("webhook_source") or endpoint_source, response.status_code)
        return response

    def receive(source: str | None) -> Response:
        kind = request.mimetype
        if kind and kind != "application/json" and not kind.endswith("+json"):
            raise BridgeError(f"Content-Type must be application/json, got {kind}",
                              status=415)
        notification = payloads.parse(request.get_data(cache=True), source)
        g.webhook_source = notification.source
        if len(notification.alerts) > settings.max_alerts:
            raise BridgeError(
                f"payload has {len(notification.alerts)} alerts, more than BRIDGE_MAX_ALERTS"
                f" ({settings.max_alerts}); set max_alerts in the sender's webhook config",
                status=413,
            )
        now = clock()
        delivery = Delivery(
            g.request_id, notification.source, notification.receiver, notification.group_key,
            rules.version,
        )
        # Answer once the decisions are committed, never before: the API calls come after,
        # from the dispatcher, so a slow device API cannot slow the sender down. The answer
        # is built before the commit, so that a failure to build it commits nothing.
        recorded, answer = store.record(
            delivery,
            lambda state: decide(notification.alerts, rules, state, now,
                                 dry_run=settings.dry_run, device_pattern=device_regex),
            now, max_age=settings.max_age, approval_timeout=rules.approval_timeout,
            answer=lambda recorded: (recorded, _webhook_answer(
                g.request_id, notification, settings.dry_run, recorded)),
        )
        metrics.evaluated(notification.source, len(notification.alerts), recorded)
        if any(r.decision.reason.startswith(TRIPPED) for r in recorded):
            log.error("STORM BREAKER TRIPPED: no operation is sent until an operator runs "
                      "`alert-bridge resume` (request %s)", g.request_id)
        if dispatcher is not None and any(r.operation_id for r in recorded):
            dispatcher.wake()
        log.info(
            "webhook %s receiver=%r groupKey=%r alerts=%d %s", notification.source,
            notification.receiver, notification.group_key, len(notification.alerts),
            " ".join(f"{k}={v}" for k, v in answer["summary"].items()),
        )
        return jsonify(answer)

    @app.post("/webhook/alertmanager")
    def webhook_alertmanager() -> Response:
        return receive("alertmanager")

    @app.post("/webhook/grafana")
    def webhook_grafana() -> Response:
        return receive("grafana")

    @app.post("/webhook")
    def webhook_any() -> Response:
        return receive(None)

    @app.post("/api/explain")
    def explain_payload() -> Response:
        """The decisions a webhook with this body would get, guard by guard; changes nothing."""
        notification = payloads.parse(request.get_data(cache=True), None)
        live = request.args.get("live", "") in ("1", "true", "yes")
        dry_run = settings.dry_run and not live
        now = clock()
        results = store.read_state(
            lambda state: explain(notification.alerts, rules, state, now, dry_run=dry_run,
                                  device_pattern=device_regex)
        )
        return jsonify(source=notification.source, dry_run=dry_run, state=True,
                       alerts=explanation_json(results))

    def admin(action: Callable[[], Response | tuple[Response, int]], otherwise: str = "",
              ) -> tuple[Response, int] | Response:
        """Run an operator endpoint for a holder of an admin token. Without any configured,
        every operator endpoint is closed (403), not open: that is the safe default."""
        if not settings.admin_auth.configured:
            return jsonify(error="the operator API is disabled: start the bridge with"
                                 " BRIDGE_ADMIN_TOKENS (or BRIDGE_ADMIN_TOKENS_FILE) set, and"
                                 " send one of its tokens as Authorization: Bearer TOKEN"
                                 + otherwise), 403
        if settings.admin_auth.check(request.headers, b"", clock()) is None:
            log.warning("%s %s from %s refused: authentication failed", request.method,
                        request.path, request.remote_addr)
            metrics.admin_auth_failure()
            return jsonify(error="unauthorized"), 401
        return action()

    @app.get("/api/audit")
    def audit_records() -> tuple[Response, int] | Response:
        def read() -> Response:
            args = request.args
            try:
                since = clock() - parse_duration(args["since"]) if "since" in args else None
            except ValueError as exc:
                raise ParameterError("since", str(exc)) from None
            after_id = _integer("after_id", args.get("after_id", "0"), 0, MAX_ID)
            limit = _integer("limit", args.get("limit", "100"), 1, AUDIT_PAGE)
            query = AuditQuery(device=args.get("device"), rule=args.get("rule"),
                               outcome=args.get("outcome"), since=since, after_id=after_id,
                               limit=limit, oldest_first=True)
            records = store.audit(query)
            return jsonify(records=[r.to_json() for r in records],
                           next_after_id=records[-1].id if records else after_id)

        return admin(read)

    @app.get("/api/operations/pending")
    def pending() -> tuple[Response, int] | Response:
        return admin(lambda: jsonify(operations=[op.to_json() for op in store.pending(clock())]))

    # The id is matched as text: Flask's int converter takes any length, and past MAX_ID the
    # store would overflow (a 500); a number out of range is a 400 that says so.
    @app.post("/api/operations/<operation_id>/<any(approve, reject):verdict>")
    def settle(operation_id: str, verdict: str) -> tuple[Response, int] | Response:
        def act() -> Response:
            now = clock()
            op = store.settle(_integer("operation_id", operation_id, 1, MAX_ID),
                              verdict == "approve", _operator(), now,
                              max_age=settings.max_age,
                              release_until=now + settings.failure_cooldown)
            if dispatcher is not None and verdict == "approve":
                dispatcher.wake()
            return jsonify(op.to_json())

        return admin(act)

    @app.post("/api/operations/<operation_id>/cancel")
    def cancel(operation_id: str) -> tuple[Response, int] | Response:
        def act() -> Response:
            who = _operator()
            (op,) = store.cancel(lambda _: f"cancelled by {who}", clock(),
                                 operation_id=_integer("operation_id", operation_id, 1, MAX_ID))
            return jsonify(op.to_json())

        return admin(act)

    @app.post("/-/reload")
    def reload() -> tuple[Response, int] | Response:
        return admin(reload_rules, "; without it, SIGHUP to the `alert-bridge serve` process"
                                   " or a change of the rules file reloads the rules")

    def reload_rules() -> tuple[Response, int]:
        """Validate the rules file; if it changed, have the master reload every worker."""
        try:
            new = load_rules(settings.rules_path)
        except RulesError as exc:
            store.set_flag(RELOAD_FAILED, clock())
            log.error("rules reload refused, still running version %s", rules.version)
            return jsonify(error=f"rules file invalid: still running version {rules.version}",
                           problems=[str(p) for p in exc.problems]), 400
        if new.version == rules.version:
            # Nothing to replace: asking again and again costs no worker and no call in
            # flight. The file is valid, though, so a refusal recorded before is over.
            store.set_flag(RELOAD_OK, clock())
            return jsonify(status="unchanged", version=new.version,
                           message=f"the rules are unchanged, version {new.version}:"
                                   " nothing to reload"), 200
        master = os.environ.get("BRIDGE_MASTER_PID")
        if not master:
            return jsonify(error="reloading needs the server `alert-bridge serve` starts"), 409
        os.kill(int(master), signal.SIGHUP)  # the master validates again and swaps workers
        return jsonify(status="reloading", version=new.version, previous=rules.version,
                       message=f"new workers serve version {new.version} as soon as they"
                               " start (/-/ready shows it); the old ones finish their calls"
                               " in flight"), 202

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        try:  # the master records reloads in the store: any worker answers for the bridge
            ok_at, failed_at = store.get_flag(RELOAD_OK), store.get_flag(RELOAD_FAILED)
        except BridgeError:
            ok_at = failed_at = None  # the store's own gauge says it is down
        if failed_at is not None and (ok_at is None or failed_at > ok_at):
            metrics.note_reload(False, failed_at)
        else:  # never refused since the start, or a good reload came after the refusal
            metrics.note_reload(True, ok_at or 0.0)
        # Unauthenticated, like any Prometheus exporter: counts and states, never a secret.
        return Response(metrics.render(), content_type=CONTENT_TYPE)

    @app.get("/-/healthy")
    def healthy() -> Response:
        return jsonify(status="healthy")

    @app.get("/-/ready")
    def ready() -> tuple[Response, int]:
        try:
            store.check_writable(clock())  # webhooks need writes: a read would not tell
            unauthorized = store.get_flag(API_UNAUTHORIZED)
        except BridgeError as exc:
            return jsonify(status="not ready", error=exc.message), 503
        if unauthorized is not None:
            return jsonify(
                status="not ready",
                error=f"the device API has rejected the token (HTTP 401) since "
                      f"{iso(unauthorized)}: write a valid one to BRIDGE_API_TOKEN_FILE, or "
                      "fix BRIDGE_API_TOKEN and restart",
            ), 503
        sending = "paused" if store.get_flag(PAUSED) is not None else \
            "breaker_open" if store.get_flag(BREAKER_OPEN) is not None else "running"
        return jsonify(
            status="ready", sending=sending, rules=len(rules.rules), rules_version=rules.version,
            dry_run=settings.dry_run, auth=settings.auth.methods or ["none"],
            insecure_no_auth=settings.insecure_no_auth,
        ), 200

    @app.errorhandler(BridgeError)
    def bridge_error(exc: BridgeError) -> tuple[Response, int]:
        body: dict[str, object] = {"error": exc.message}
        if isinstance(exc, PayloadError) and exc.where:
            body["where"] = exc.where
        if isinstance(exc, ParameterError):
            body["parameter"] = exc.parameter
        if exc.status >= 500:
            log.error("request %s: %s", g.get("request_id", "-"), exc.message)
        return jsonify(body), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return jsonify(error=exc.description or exc.name), exc.code or 500

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> tuple[Response, int]:
        log.exception("request %s failed", g.get("request_id", "-"))
        return jsonify(error="internal error", request_id=g.get("request_id", "")), 500

    return app


def _webhook_answer(request_id: str, notification: payloads.Notification, dry_run: bool,
                    recorded: list[Recorded]) -> dict[str, Any]:
    """The JSON answer to a webhook: its decisions, alert by alert."""
    by_alert: dict[int, list[Recorded]] = {}
    for r in recorded:
        by_alert.setdefault(id(r.decision.alert), []).append(r)
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
                "decisions": [_decision_json(r) for r in by_alert.get(id(alert), [])],
            }
            for alert in notification.alerts
        ],
    }


#: The most audit records one GET /api/audit answers; page on with after_id.
AUDIT_PAGE = 1000


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
    if d.not_before is not None and d.verdict != "execute":
        doc["not_before"] = iso(d.not_before)
    if r.operation_id is not None:
        doc["operation_id"] = r.operation_id
    return doc


class Housekeeper:
    """Prunes audit records and finished operations past the retention, a batch at a time,
    then empties the state store's write-ahead log (which gives its space back)."""

    INTERVAL = 60.0

    def __init__(self, store: Store, retention: float, clock: Callable[[], float]) -> None:
        self.store, self.retention, self.clock = store, retention, clock
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="housekeeping", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> int:
        """Prune, then empty the write-ahead log; how many audit records went."""
        pruned = 0
        try:
            while not self._stop.is_set():
                gone = self.store.prune(self.clock() - self.retention)
                pruned += gone
                if gone == 0:
                    break
        finally:
            # Even when pruning failed: on a full disk, emptying the log gives space back.
            self.store.checkpoint()
        return pruned

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            try:
                pruned = self.run_once()
            except BridgeError as exc:
                log.error("housekeeping: %s", exc.message)
                continue
            if pruned:
                log.info("audit retention: pruned %d records older than %s", pruned,
                         iso(self.clock() - self.retention))
