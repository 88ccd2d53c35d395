"""The app factory: builds the collaborators it is not given and registers the blueprints.

Nothing here serves a request (bridge/web does) or starts a thread (BridgeContext.start does,
once the serving process has forked: see server.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask

from bridge.client import DeviceClient
from bridge.config import Settings
from bridge.console import init_app as init_console
from bridge.dispatch import Dispatcher
from bridge.housekeeping import Housekeeper
from bridge.intake import Intake
from bridge.loop import ClosingLoop, Judgement
from bridge.metrics import Metrics
from bridge.notify import Alertmanagers, Notifier
from bridge.rules import RuleSet, load_rules
from bridge.store import Store
from bridge.web import answers, lifecycle, operator, webhooks
from bridge.web.context import KEY, BridgeContext


def create_app(
    settings: Settings | None = None,
    *,
    rules: RuleSet | None = None,
    store: Store | None = None,
    client: DeviceClient | None = None,
    clock: Callable[[], float] = time.time,
) -> Flask:
    """Build the bridge's WSGI app. Collaborators not given are built from `settings`.

    Its BridgeContext (`bridge.web.context.context_of(app)`) holds them; nothing is sent
    until `context_of(app).start()`, and `stop(timeout)` drains the calls in flight.
    Raises RulesError when the rules file is invalid: the bridge never serves without rules.
    """
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # Werkzeug would answer a path with doubled slashes (/webhook//alertmanager) with a 308
    # redirect and an HTML body, past every error handler: the sender of a mistyped URL
    # would get no JSON error. Such a path is an unknown path (404), like any other.
    app.url_map.merge_slashes = False
    # One byte past the limit: werkzeug stops reading a body sent without Content-Length
    # (chunked) at the limit, silently, so only reading one byte more shows it is too long.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body + 1
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep answers in reading order
    app.extensions[KEY] = _context(settings, rules, store, client, clock)
    answers.init_app(app)
    for blueprint in (webhooks.blueprint, operator.blueprint, lifecycle.blueprint):
        app.register_blueprint(blueprint)
    init_console(app, clock)
    return app


def _context(settings: Settings, rules: RuleSet | None, store: Store | None,
             client: DeviceClient | None, clock: Callable[[], float]) -> BridgeContext:
    rules = rules or load_rules(settings.rules_path)
    store = store or settings.open_store()
    if client is None and not settings.dry_run:
        assert settings.api_token is not None
        client = DeviceClient(
            settings.api_url, settings.api_token,
            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
            verify=settings.api_ca_bundle or True,
        )
    # A worker serves one version of the rules all its life: a reload replaces the workers.
    metrics = Metrics(store, dry_run=settings.dry_run, started=clock(), clock=clock,
                      rules_loaded=len(rules.rules))
    dispatcher = None
    if client is not None and not settings.dry_run:
        dispatcher = Dispatcher(store, client, settings.policy(), clock=clock, metrics=metrics,
                                rules=rules)
    return BridgeContext(
        settings=settings, rules=rules, store=store, metrics=metrics,
        intake=Intake(settings, rules, store, metrics=metrics, dispatcher=dispatcher,
                      clock=clock),
        housekeeper=Housekeeper(store, settings.audit_retention, clock),
        dispatcher=dispatcher, loop=_loop(settings, rules, store, metrics, dispatcher, clock),
        clock=clock,
    )


def _loop(settings: Settings, rules: RuleSet, store: Store, metrics: Metrics,
          dispatcher: Dispatcher | None, clock: Callable[[], float]) -> ClosingLoop:
    managers = Alertmanagers(settings.alertmanager_urls) if settings.alertmanager_urls else None
    notifier = Notifier(managers, settings.notify_webhooks, clock=clock,
                        interval=settings.loop_interval)
    judgement = Judgement(rules, settings.dry_run, settings.max_age, settings.device_regex)
    return ClosingLoop(store, judgement, notifier, interval=settings.loop_interval,
                       external_url=settings.external_url, metrics=metrics,
                       wake=dispatcher.wake if dispatcher is not None else None, clock=clock)
