"""What a person does in the console: log in and out, approve, reject, pause, resume, explain.

Every form is a POST that pages.py has checked already (same site, CSRF token, logged in).
Acting needs an admin's session; each action is audited with the person's name and role.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Response, g, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from bridge import payloads
from bridge.console.auth import COOKIE, LOGIN_COOKIE, LOGIN_FORM_TTL, name_problem
from bridge.console.context import services
from bridge.console.pages import bp, operation, page, parse_id, refused, set_cookie
from bridge.decide import explain as explain_alerts
from bridge.errors import BridgeError, PayloadError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
Answer = BaseResponse | tuple[str, int]


def admin_only(view: F) -> F:
    """Viewers may look but not act: the buttons are not shown, and the endpoints say 403."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not g.person.may_act:
            log.warning("console: %s may not %s %s", g.person.who, request.method, request.path)
            return refused(403, "Viewers may look but not act: approving, rejecting, pausing"
                                " and resuming need a session opened with an admin token.")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _login_page(status: int = 200, error: str | None = None, name: str = "") -> Response:
    auth = services().console.auth
    nonce, cookie = auth.login_form()
    html, status = page("login.html", status, error=error, name=name, form_csrf=nonce,
                        next=_next() or "")
    response = Response(html, status, mimetype="text/html")
    set_cookie(response, LOGIN_COOKIE, cookie, LOGIN_FORM_TTL)
    return response


def _next() -> str | None:
    """Where to go after login: a console path, never another site (`//evil`, `/\\evil`)."""
    target = request.values.get("next", "")
    if target.startswith("/ui/") and "//" not in target and "\\" not in target:
        return target
    return None


@bp.get("/login")
def login() -> Answer:
    if g.person is not None:
        return redirect(url_for("console.overview"))
    return _login_page()


@bp.post("/login")
def log_in() -> Answer:
    s = services()
    auth = s.console.auth
    if not auth.login_form_ok(request.form.get("csrf", ""), request.cookies.get(LOGIN_COOKIE)):
        return _login_page(403, "This login form was too old, or did not come from this page:"
                                " try again.")
    name, token = request.form.get("name", "").strip(), request.form.get("token", "").strip()
    problem = name_problem(name)
    if problem is not None:
        return _login_page(400, problem.capitalize() + ".", name)
    got = auth.log_in(name, token, s.now())
    if got is None:
        log.warning("console: login as %r from %s refused: the token is not accepted", name,
                    request.remote_addr)
        return _login_page(401, "That token is not accepted.", name)
    g.person = got[0]  # the session cookie is set on the way out
    log.info("console: %s logged in from %s", g.person.who, request.remote_addr)
    return redirect(request.script_root + (_next() or "/ui/"), 303)


@bp.post("/logout")
def log_out() -> BaseResponse:
    log.info("console: %s logged out", g.person.who)
    g.logged_out = True
    response = redirect(url_for("console.login"), 303)
    response.delete_cookie(COOKIE, path=request.script_root + "/ui")
    return response


@bp.post("/pause")
@admin_only
def pause() -> Answer:
    s = services()
    s.store.pause(s.now(), g.person.who)
    log.warning("console: %s paused sending", g.person.who)
    return redirect(url_for("console.overview"), 303)


@bp.post("/resume")
@admin_only
def resume() -> Answer:
    s = services()
    was = s.store.resume(s.now(), g.person.who)
    log.warning("console: %s resumed sending (was: %s)", g.person.who,
                ", ".join(was) or "running")
    if s.dispatcher is not None:
        s.dispatcher.wake()
    return redirect(url_for("console.overview"), 303)


@bp.post("/operations/<operation_id>/<any(approve, reject):verdict>")
@admin_only
def settle(operation_id: str, verdict: str) -> Answer:
    s = services()
    op_id, now = parse_id("operation_id", operation_id, 1), s.now()
    try:
        op = s.store.settle(op_id, verdict == "approve", g.person.who, now,
                            max_age=s.settings.max_age,
                            release_until=now + s.settings.failure_cooldown)
    except BridgeError as exc:  # gone, expired, or someone else answered first
        if exc.status >= 500:
            raise
        return operation(operation_id, error=exc.message, status=exc.status)
    log.warning("console: %s %sd operation %d (%s on %s)", g.person.who, verdict, op.id,
                op.operation, op.device)
    if s.dispatcher is not None and verdict == "approve":
        s.dispatcher.wake()
    return redirect(url_for("console.operation", operation_id=op.id, done=f"{verdict}d"), 303)


@bp.get("/explain")
def explain_form() -> Answer:
    return page("explain.html", payload="", live=False, results=None, error=None)


@bp.post("/explain")
def explain() -> Answer:
    """What the bridge would do with a payload: `alert-bridge explain`, changing nothing."""
    s = services()
    text = request.form.get("payload", "")
    live = request.form.get("live") == "1"
    try:
        notification = payloads.parse(text.encode(), None)
    except PayloadError as exc:
        where = f" (at {exc.where})" if exc.where else ""
        return page("explain.html", 400, payload=text, live=live, results=None,
                    error=exc.message + where)
    if len(notification.alerts) > s.settings.max_alerts:
        return page("explain.html", 413, payload=text, live=live, results=None,
                    error=f"the payload has {len(notification.alerts)} alerts, more than"
                          f" BRIDGE_MAX_ALERTS ({s.settings.max_alerts})")
    dry_run = s.settings.dry_run and not live
    now = s.now()
    results = s.store.read_state(
        lambda state: explain_alerts(notification.alerts, s.rules, state, now, dry_run=dry_run,
                                     device_pattern=s.settings.device_regex))
    return page("explain.html", payload=text, live=live, results=results, error=None,
                source=notification.source, dry_run=dry_run)
