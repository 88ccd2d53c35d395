"""What the console reads from the bridge it is part of, in one place.

The pages reach the store, the rules, the settings and the dispatcher only through
`services()`, so that a change in how the app holds them is one change here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

from bridge.console.auth import ConsoleAuth
from bridge.web.context import context

if TYPE_CHECKING:
    from bridge.config import Settings
    from bridge.dispatch import Dispatcher
    from bridge.rules import RuleSet
    from bridge.store import Store


@dataclass(frozen=True)
class Console:
    """The console's own part of an app: built once by init_app."""

    auth: ConsoleAuth
    clock: Callable[[], float]
    #: When this worker loaded its rules (a reload replaces the workers, so it is the app's
    #: start).
    started: float


@dataclass(frozen=True)
class Services:
    settings: Settings
    rules: RuleSet
    store: Store
    dispatcher: Dispatcher | None  # None in dry run
    console: Console

    def now(self) -> float:
        return self.console.clock()


def services() -> Services:
    """The bridge's collaborators, as the app that serves this request holds them."""
    bridge = context()
    return Services(bridge.settings, bridge.rules, bridge.store, bridge.dispatcher,
                    current_app.extensions["console"])
