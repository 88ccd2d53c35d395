"""The console's pages: what a person reads, and the checks every request passes first.

Each page reads the store through the same methods as the CLI and the JSON API. Everything an
alert carries is untrusted: templates autoescape it, and `shown()` also writes control and
invisible characters as escapes, as the CLI does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from bridge.audit import MAX_ID, AuditQuery, AuditRecord, iso, table_row, to_json_line
from bridge.console.auth import COOKIE, csrf_ok
from bridge.console.context import services
from bridge.errors import BridgeError, ParameterError
from bridge.report import of_store, remediation_line
from bridge.rules import format_duration, parse_duration
from bridge.text import printable
from bridge.vocab import Flag, Outcome, Verdict

log = logging.getLogger(__name__)

bp = Blueprint("console", __name__, url_prefix="/ui", template_folder="templates",
               static_folder="static", static_url_path="/static")

#: Records per page of the audit and of a device's history.
PAGE = 50
#: Weeks shown on a device's page, to see whether it keeps coming back.
WEEKS = 12
#: Nothing is loaded from anywhere but the bridge, no inline script or style runs, no other
#: site may frame a page or be the target of a form.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
       " form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(f"console/{template}", **context), status


def refused(status: int, message: str) -> tuple[str, int]:
    return page("refused.html", status, message=message)


@bp.context_processor
def _helpers() -> dict[str, Any]:
    s = services()
    now = s.now()
    return {
        "person": g.get("person"), "now": now, "shown": _shown, "when": _when,
        "detail": lambda r: table_row(r)[-1], "duration": format_duration,
        "ago": lambda ts: format_duration(max(0, round(now - ts))),
        "left": lambda ts: format_duration(max(0, round(ts - now))),
        "pending_count": len(s.store.pending(now)) if g.get("person") else 0,
    }


def _shown(text: object) -> str:
    return printable("" if text is None else str(text))


def _when(ts: float | None) -> str:
    return "-" if ts is None else iso(ts)[:-5].replace("T", " ") + " UTC"


@bp.before_request
def _check_request() -> BaseResponse | tuple[str, int] | None:
    """Console off, not logged in, a form from another site or without its CSRF token:
    each is answered here, before any page runs."""
    if request.endpoint == "console.static":
        return None
    s = services()
    auth = s.console.auth
    if not auth.enabled:
        return page("off.html", 403, problem=auth.problem)
    g.person = auth.person(request.cookies.get(COOKIE), s.now())
    # SameSite=Strict keeps the cookie off cross-site requests already; browsers also say
    # where a request comes from, which stops a cross-site login form too.
    if request.method == "POST" and request.headers.get("Sec-Fetch-Site", "same-origin") \
            not in ("same-origin", "none"):
        return refused(403, "This form was sent from another site: refused.")
    if request.endpoint in ("console.login", "console.log_in"):
        return None
    if g.person is None:
        if request.method == "GET":
            return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        return refused(401, "You are not logged in, or your session has ended: log in again.")
    if request.method == "POST" and not csrf_ok(g.person, request.form.get("csrf", "")):
        return refused(403, "This form carries no valid CSRF token (it may come from an"
                            " earlier session): reload the page and try again.")
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    person = g.get("person")
    if person is not None and not g.get("logged_out"):
        # Every request moves the idle deadline on.
        s = services()
        set_cookie(response, COOKIE, s.console.auth.cookie(person, s.now()),
                   s.console.auth.idle)
    return response


def set_cookie(response: Response, name: str, value: str, max_age: float) -> None:
    """A console cookie: only for the console's paths, never for scripts, never cross-site."""
    secure = request.is_secure or services().settings.external_url.startswith("https://")
    response.set_cookie(name, value, max_age=max(1, int(max_age)),
                        path=request.script_root + "/ui", secure=secure, httponly=True,
                        samesite="Strict")


@bp.errorhandler(BridgeError)
def _bridge_error(exc: BridgeError) -> tuple[str, int]:
    if exc.status >= 500:
        log.error("console %s %s: %s", request.method, request.path, exc.message)
    return page("refused.html", exc.status, message=exc.message)


# -- pages -------------------------------------------------------------------------------------


@bp.get("/")
def overview() -> tuple[str, int]:
    s = services()
    store, now = s.store, s.now()
    paused, breaker = store.get_flag(Flag.PAUSED), store.get_flag(Flag.BREAKER_OPEN)
    return page(
        "overview.html", settings=s.settings, rules=s.rules, started=s.console.started,
        paused=paused, breaker=breaker,
        paused_by=_first(store.audit, Outcome.SENDING_PAUSED, paused),
        tripped_by=_first(store.audit, Verdict.BREAKER_OPEN, breaker),
        unauthorized=store.get_flag(Flag.API_UNAUTHORIZED),
        last_hour=store.outcome_counts(now - 3600), last_day=store.outcome_counts(now - 86400),
        depth=store.queue_depth(now), pending=store.pending(now)[:5],
        reload_ok=store.get_flag(Flag.RELOAD_OK), reload_failed=store.get_flag(Flag.RELOAD_FAILED),
        latest=store.audit(AuditQuery(limit=10))[::-1],
        remediation=remediation_line(of_store(store, now, 86400.0)),
        replicas=store.replicas_alive(now), state=store.where,
    )


def _first(audit: Callable[[AuditQuery], list[AuditRecord]], outcome: str,
           since: float | None) -> AuditRecord | None:
    """The first record with this outcome from `since` on: who paused, what tripped."""
    if since is None:
        return None
    found = audit(AuditQuery(outcome=outcome, since=since, limit=1, oldest_first=True))
    return found[0] if found else None


@bp.get("/approvals")
def approvals() -> tuple[str, int]:
    s = services()
    pending = s.store.pending(s.now())
    alerts = s.store.asking_alerts([op.id for op in pending])
    history = {op.device: s.store.audit(AuditQuery(device=op.device, limit=5))[::-1]
               for op in pending}
    return page("approvals.html", pending=pending, alerts=alerts, history=history)


@bp.get("/operations/<operation_id>")
def operation(operation_id: str, error: str | None = None,
              status: int = 200) -> tuple[str, int]:
    s = services()
    op_id = parse_id("operation_id", operation_id, 1)
    op = s.store.operation(op_id, s.now())
    if op is None:
        return refused(404, f"There is no operation {op_id}.")
    return page("operation.html", status, op=op, error=error,
                done=request.args.get("done") if error is None else None,
                alert=s.store.asking_alerts([op_id]).get(op_id),
                # With the device: the audit is indexed by device, not by operation (an
                # index more would cost every webhook a page more to write).
                timeline=s.store.audit(AuditQuery(device=op.device, operation_id=op_id,
                                                  limit=None)))


@bp.get("/audit")
def audit() -> tuple[str, int]:
    query, filters = _audit_filters()
    records, older, newer = _paged(query)
    return page("audit.html", records=records, older=older, newer=newer, filters=filters)


@bp.get("/audit.jsonl")
def audit_download() -> Response:
    """The records the audit page's filters select, all of them, as JSON lines."""
    query, _ = _audit_filters()
    store = services().store

    def lines() -> Iterator[str]:
        after = 0
        while True:
            batch = store.audit(replace(query, after_id=after, limit=1000, oldest_first=True))
            yield from (to_json_line(r) + "\n" for r in batch)
            if len(batch) < 1000:
                return
            after = batch[-1].id

    return Response(lines(), mimetype="application/x-ndjson", headers={
        "Content-Disposition": 'attachment; filename="alert-bridge-audit.jsonl"'})


def _audit_filters() -> tuple[AuditQuery, dict[str, str]]:
    args = request.args
    filters = {k: args.get(k, "").strip() for k in ("device", "rule", "outcome", "since")}
    since = None
    if filters["since"]:
        try:
            since = services().now() - parse_duration(filters["since"])
        except ValueError as exc:
            raise ParameterError("since", str(exc)) from None
    query = AuditQuery(device=filters["device"] or None, rule=filters["rule"] or None,
                       outcome=filters["outcome"] or None, since=since)
    return query, {k: v for k, v in filters.items() if v}


def _paged(query: AuditQuery) -> tuple[list[AuditRecord], int | None, int | None]:
    """One page of records, newest first, and the ids to page on from (older, newer)."""
    store = services().store
    before, after = _id_arg("before"), _id_arg("after")
    if after is not None:
        records = store.audit(replace(query, after_id=after, limit=PAGE + 1, oldest_first=True))
        more_newer, more_older = len(records) > PAGE, True
        records = records[:PAGE]
    else:
        records = store.audit(replace(query, before_id=before, limit=PAGE + 1))
        more_older, more_newer = len(records) > PAGE, before is not None
        records = records[-PAGE:]
    records.reverse()
    older = records[-1].id if records and more_older else None
    newer = records[0].id if records and more_newer else None
    return records, older, newer


def _id_arg(name: str) -> int | None:
    text = request.args.get(name, "")
    return parse_id(name, text, 0) if text else None


def parse_id(name: str, text: str, low: int) -> int:
    """A record or operation id from the URL: a 400 page, not a 500, for anything else."""
    if text.isascii() and text.isdigit() and len(text) <= len(str(MAX_ID)) \
            and low <= int(text) <= MAX_ID:
        return int(text)
    raise ParameterError(name, f"must be a whole number from {low} to {MAX_ID}")


@bp.get("/devices")
def devices() -> tuple[str, int]:
    q = request.args.get("q", "").strip()
    return page("devices.html", q=q, found=services().store.devices(q, 100))


@bp.get("/devices/<path:name>")
def device(name: str) -> tuple[str, int]:
    s = services()
    now = s.now()
    records, older, newer = _paged(AuditQuery(device=name))
    weeks = s.store.operations_per_week(name, now, WEEKS)
    return page("device.html", name=name, cooldowns=s.store.cooldowns(now, name),
                weeks=weeks, most=max(weeks) or 1, records=records, older=older, newer=newer)


@bp.get("/rules")
def rules() -> tuple[str, int]:
    s = services()
    return page("rules.html", rules=s.rules, started=s.console.started)


@bp.get("/rules/<name>")
def rule(name: str) -> tuple[str, int]:
    s = services()
    found = next((r for r in s.rules.rules if r.name == name), None)
    if found is None:
        return refused(404, f"No rule named {name!r} is in force (rules version"
                            f" {s.rules.version}).")
    report = of_store(s.store, s.now(), 7 * 86400.0, name)
    return page("rule.html", rule=found, rules=s.rules,
                latest=s.store.audit(AuditQuery(rule=name, limit=20))[::-1],
                report=sorted(report.rules.items()))
