"""The operator console: server-rendered pages under /ui/ for the people who run the bridge.

Overview, approvals, the audit, devices and rules, read from the same store and functions as
the CLI and the JSON API; approve, reject, pause and resume for admins. `init_app` is all the
app factory calls. The pages live in `pages` (reading) and `actions` (forms), the sessions and
roles in `auth`.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, redirect, url_for
from werkzeug.wrappers import Response as BaseResponse

from bridge.console import actions
from bridge.console.auth import NO_SECRET, ConsoleAuth
from bridge.console.context import Console
from bridge.console.pages import bp
from bridge.web.context import context_of

log = logging.getLogger(__name__)

__all__ = ["actions", "init_app"]  # actions adds the forms to the blueprint


def init_app(app: Flask, clock: Callable[[], float]) -> None:
    """Serve the console from `app`, reading the bridge's collaborators at request time."""
    settings = context_of(app).settings
    auth = ConsoleAuth(settings.admin_auth, settings.viewer_auth, settings.session_secret,
                       settings.session_idle)
    app.extensions["console"] = Console(auth, clock, clock())
    app.register_blueprint(bp)
    app.add_url_rule("/", "console_root", _to_console)
    prefix = _path(settings.external_url)
    if prefix:
        app.wsgi_app = Prefixed(app.wsgi_app, prefix)  # type: ignore[method-assign]
    if auth.enabled:
        log.info("console: on at %s/ui/ (%r)", settings.external_url or "", auth)
    elif auth.problem == NO_SECRET:  # tokens are set: someone meant to turn it on
        log.warning("console: %s", auth.problem)
    else:
        log.info("console: %s", auth.problem)


def _to_console() -> BaseResponse:
    return redirect(url_for("console.overview"))


def _path(external_url: str) -> str:
    """The path part of BRIDGE_EXTERNAL_URL (without its trailing slash): "" for none."""
    return urllib.parse.urlsplit(external_url).path.rstrip("/")


class Prefixed:
    """The console under the path of BRIDGE_EXTERNAL_URL, behind a reverse proxy or not.

    A proxy that keeps the prefix sends /bridge/ui/...; one that strips it sends /ui/...: both
    reach the console, and its links and cookies always carry the prefix, so the browser keeps
    going through the proxy. Paths outside the console (webhooks, metrics) are left alone.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], prefix: str) -> None:
        self.app, self.prefix = app, prefix

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(self.prefix + "/") or path == self.prefix:
            rest = path[len(self.prefix):] or "/"
            if rest == "/" or rest == "/ui" or rest.startswith("/ui/"):
                environ["PATH_INFO"] = rest
                environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + self.prefix
        elif path == "/" or path == "/ui" or path.startswith("/ui/"):
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + self.prefix
        return self.app(environ, start_response)
