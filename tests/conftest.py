"""Fixtures: a real fake device API, and the bridge served over real HTTP around it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.app import create_app
from bridge.audit import AuditQuery, AuditRecord
from bridge.client import Secret, TokenSource
from bridge.config import Settings
from bridge.fakeapi import DEFAULT_DEVICES, FakeApiServer, start_fake_api_in_thread
from bridge.rules import parse_rules
from bridge.store import open_store
from bridge.web.context import BridgeContext, context_of
from tests import alertmanager as am
from tests import postgres
from tests.alertmanager import Alertmanager
from tests.helpers import BridgeProcess, ThreadServer, wait_for_outcomes, wait_until

# Distinctive, so that finding it anywhere it should not be is unambiguous.
TOKEN = "tok-7Hq2-ZXv9-never-show-me"

#: Rules that fit the public payload files in tests/payloads/.
RULES = """\
defaults:
  cooldown: 30m
rules:
  - name: sync-high-load
    match: ['alertname = "HighLoad"']
    device: "{{ labels.system_under_test }}"
    operation: sync
  - name: reboot-grafana-hosts
    match: ['alertname = "Test alert"', 'instance =~ ".+"']
    device: "{{ labels.instance }}"
    operation: reboot
    status: any
  - name: reconf-on-resolve
    match: ['alertname = "ServiceHighErrorRate"']
    device: "{{ labels.service_name }}"
    operation: reconf
    status: resolved
  - name: legacy-cpu
    match: ['alertname = "Zeta CPU alert"']
    device: "{{ labels.instance }}"
    operation: sync
"""

DEVICES = [
    "MegaTron", "OptimusPrime", "StarScream", "badhost.example.com", "otherhost.example.com",
    "frontend", "zeta.domain", "r1", "r2",
]


class Fake:
    """The fake device API plus the few control calls tests make to it over HTTP."""

    def __init__(self, server: FakeApiServer) -> None:
        self.server = server
        self.url = server.url
        self.control = server.control_url

    def calls(self) -> list[dict[str, Any]]:
        r = requests.get(f"{self.control}/calls", timeout=5)
        r.raise_for_status()
        return r.json()["calls"]

    def arrived(self, n: int = 1) -> list[dict[str, Any]]:
        """Wait until `n` calls have reached the fake (a held call counts once it is held);
        the first `n` of them."""
        got = wait_until(lambda: (lambda c: c if len(c) >= n else None)(self.calls()),
                         what=f"{n} call(s) at the fake")
        return got[:n]

    def behave(self, **behaviour: Any) -> None:
        """Queue a behaviour (POST /_fake/behaviour), which the fake must accept with 201."""
        r = requests.post(f"{self.control}/behaviour", json=behaviour, timeout=5)
        assert r.status_code == 201, r.text

    def set_token(self, token: str) -> None:
        """The API rotates its token: only `token` is accepted from now on."""
        requests.put(f"{self.control}/token", json={"token": token}, timeout=5).raise_for_status()

    def set_durations(self, **seconds: float) -> None:
        """Have the fake claim that these operations take this long (estimated_completion)."""
        r = requests.put(f"{self.control}/durations", json=seconds, timeout=5)
        assert r.status_code == 200, r.text

    def open_gate(self) -> None:
        """Let the calls held by a `hold` behaviour go on."""
        requests.post(f"{self.control}/gate", timeout=5).raise_for_status()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test session's own, with the store's schema: its URL."""
    with postgres.fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def state_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a new, empty state is, on each engine: a SQLite file, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    url = request.getfixturevalue("postgres_url")
    postgres.empty(url)
    return url


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeApiServer]:
    with start_fake_api_in_thread(token=TOKEN, devices=[*DEFAULT_DEVICES, *DEVICES]) as server:
        yield server


@pytest.fixture
def fake_api(fake_server: FakeApiServer) -> Iterator[FakeApiServer]:
    """The fake device API, as it was at its start: no calls, no behaviours, full inventory."""
    fake_server.reset()
    yield fake_server
    fake_server.reset()  # also wakes calls still delayed or held by a behaviour


@pytest.fixture
def fake(fake_api: FakeApiServer) -> Fake:
    return Fake(fake_api)


class Bridge:
    """The bridge app served over real HTTP in this process."""

    def __init__(self, server: ThreadServer, settings: Settings, app: Any) -> None:
        self.server, self.settings, self.url, self.app = server, settings, server.url, app

    @property
    def context(self) -> BridgeContext:
        return context_of(self.app)

    @property
    def dispatcher(self) -> Any:
        return self.context.dispatcher

    def audit(self, **filters: Any) -> list[AuditRecord]:
        store = open_store(self.settings.state_path)
        try:
            return store.audit(AuditQuery(limit=None, **filters))
        finally:
            store.close()

    def outcomes(self, n: int, timeout: float = 20) -> list[AuditRecord]:
        """Wait until `n` operations have ended; their outcome records, in order."""
        return wait_for_outcomes(self.settings.state_path, n, timeout)

    def stop(self) -> None:
        self.server.close()
        self.context.stop(10)

    def post(self, path: str, body: bytes | str, **kwargs: Any) -> requests.Response:
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return requests.post(self.url + path, data=body, headers=headers, timeout=30, **kwargs)


@pytest.fixture
def make_bridge(tmp_path: Path, fake: Fake) -> Iterator[Callable[..., Bridge]]:
    """Start a bridge on `rules` (YAML text), talking to the fake API unless told otherwise."""
    started: list[Bridge] = []

    def make(rules: str = RULES, *, token: str | TokenSource | None = TOKEN,
             dry_run: bool = False,
             clock: Callable[[], float] | None = None, state: Path | None = None,
             start_dispatcher: bool = True, api_url: str | None = None,
             **overrides: Any) -> Bridge:
        rules_path = tmp_path / "rules.yaml"
        rules_path.write_text(rules)
        settings = Settings(
            rules_path=str(rules_path), state_path=str(state or tmp_path / "state.db"),
            api_url=api_url or fake.url,
            api_token=Secret(token) if isinstance(token, str) and token else token or None,
            dry_run_requested=dry_run, **{"read_timeout": 2.0, **overrides},
        )
        kwargs: dict[str, Any] = {"rules": parse_rules(rules, str(rules_path))}
        if clock is not None:
            kwargs["clock"] = clock
        app = create_app(settings, **kwargs)
        if start_dispatcher:  # as the server does once a worker has forked
            context_of(app).start()
        bridge = Bridge(ThreadServer(app), settings, app)
        started.append(bridge)
        return bridge

    yield make
    for bridge in started:
        bridge.stop()


@pytest.fixture
def bridge(make_bridge: Callable[..., Bridge]) -> Bridge:
    return make_bridge()


@pytest.fixture
def gunicorn_bridge(tmp_path: Path, fake: Fake) -> Iterator[Callable[..., BridgeProcess]]:
    """Factory for `alert-bridge serve` processes under real gunicorn; all stopped at the end."""
    procs: list[BridgeProcess] = []

    def start(rules: str = RULES, workers: int = 3, env: dict[str, str] | None = None,
              state: Path | str | None = None) -> BridgeProcess:
        rules_path = tmp_path / "rules.yaml"
        rules_path.write_text(rules)
        proc = BridgeProcess(
            tmp_path, rules_path, state or tmp_path / "state.db",
            {"BRIDGE_API_URL": fake.url, "BRIDGE_API_TOKEN": TOKEN, **(env or {})},
            workers=workers,
        )
        procs.append(proc)
        return proc.start()

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def alertmanagers(tmp_path: Path, gunicorn_bridge: Callable[..., BridgeProcess]
                  ) -> Iterator[Callable[..., Alertmanager]]:
    """Factory: `start(webhook_url, name=..., port=..., **config)` runs a real Alertmanager
    whose webhook goes to `webhook_url`; all are stopped at teardown (before the bridge,
    which this fixture depends on)."""
    am.require_alertmanager()
    started: list[Alertmanager] = []

    def start(webhook_url: str, name: str = "am", port: int | None = None,
              **config: Any) -> Alertmanager:
        instance = Alertmanager(tmp_path / name, am.config(webhook_url, **config))
        started.append(instance)
        return instance.start(port)

    yield start
    for instance in started:
        instance.stop()
    for instance in started:
        assert instance.proc is not None and instance.proc.poll() is not None
