"""The one typed bundle each app serves from: create_app builds it, blueprints read it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    from bridge.config import Settings
    from bridge.dispatch import Dispatcher
    from bridge.housekeeping import Housekeeper
    from bridge.intake import Intake
    from bridge.loop import ClosingLoop
    from bridge.metrics import Metrics
    from bridge.rules import RuleSet
    from bridge.store import Store

#: Where the context sits in `app.extensions`.
KEY = "bridge"


@dataclass(frozen=True)
class BridgeContext:
    """What one app works with. Its background work (the dispatcher's sender threads, the
    housekeeping) is not running until start(): call that in the process that serves the
    app, after gunicorn forks (server.py does), as threads do not survive a fork."""

    settings: Settings
    rules: RuleSet
    store: Store
    metrics: Metrics
    intake: Intake
    housekeeper: Housekeeper
    #: None in dry run: nothing is ever sent.
    dispatcher: Dispatcher | None
    #: Verifies what was sent, escalates, tells people (bridge.loop).
    loop: ClosingLoop
    clock: Callable[[], float]

    def start(self) -> None:
        """Start sending queued operations, closing the loop on them, and pruning the audit
        past its retention."""
        if self.dispatcher is not None:
            self.dispatcher.start()
            # Work queued by another replica wakes these senders too, not only their poll.
            self.store.listen(self.dispatcher.wake)
        self.loop.start()
        self.housekeeper.start()

    def stop(self, timeout: float) -> None:
        """Stop the background work; the calls in flight get `timeout` seconds to end."""
        self.housekeeper.stop()
        self.loop.stop()
        self.store.unlisten()
        if self.dispatcher is not None:
            self.dispatcher.stop(timeout)


def context_of(app: Flask) -> BridgeContext:
    """The context of a bridge app (from outside a request: the server's hooks, tests)."""
    ctx: BridgeContext = app.extensions[KEY]
    return ctx


def context() -> BridgeContext:
    """The context of the app serving the current request."""
    return context_of(current_app)
