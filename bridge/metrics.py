"""Prometheus metrics, served at GET /metrics: what came in, what was decided, what the device
API answered, and the bridge's state (queue, pause, breaker, token) read when scraped.

Under `alert-bridge serve` several gunicorn workers take turns answering /metrics, so every
counter and histogram uses prometheus_client's multiprocess mode: the master makes a private
directory and sets PROMETHEUS_MULTIPROC_DIR before any worker forks (`start_multiprocess`);
each worker writes its values to mmap files there; a scrape, whichever worker answers it, sums
the files of all workers, dead ones included, so counters never go back. The state gauges are
not kept in any process: a collector reads them from the shared state store at scrape time.

prometheus_client chooses between in-process and file-backed values once, when
`prometheus_client.values` is first imported, from PROMETHEUS_MULTIPROC_DIR. So this module
imports prometheus_client only inside functions: importing bridge.metrics (or bridge.server)
in the master must not fix that choice before the variable is set. Without the variable (the
app in one process, as the tests run it) every app gets its own CollectorRegistry.

No label carries a device name, an alert label or anything a sender or the API sent back,
other than the HTTP status: label values come from the rules file and fixed vocabularies.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from bridge.errors import BridgeError
from bridge.vocab import Flag

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from bridge.client import CallResult
    from bridge.store import Recorded, Store

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The classic Prometheus text format, which every Prometheus version reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: The `source` of a webhook refused before its format is known: named after its endpoint.
ENDPOINT_SOURCES = {
    "/webhook/alertmanager": "alertmanager",
    "/webhook/grafana": "grafana",
    "/webhook": "unknown",
}

# Device API calls: up to connect (3.05 s) + read (10 s) timeouts by default, and more when
# an operator raises them.
API_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0)
# From the call to the alert's resolution: a sync fixes in seconds, a reboot in minutes, and
# verify windows run to hours.
RESOLVE_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0)

F = TypeVar("F", bound=Callable[..., None])


def _never_raises(method: F) -> F:
    """Counting must never fail what is counted: a webhook already committed, an API answer
    about to be recorded. A failure (say /dev/shm full) is logged, and the value is lost."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            log.exception("metrics: could not record %s", method.__name__)

    return wrapper  # type: ignore[return-value]


class Metrics:
    """The metrics of one bridge app; build it in the process that serves the app.

    `rules_loaded` is how many rules the app serves: a reload replaces the workers, and with
    them their Metrics.
    """

    def __init__(self, store: Store, *, dry_run: bool, rules_loaded: int,
                 started: float, clock: Callable[[], float] = time.time) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        registry: CollectorRegistry | None
        if self.multiprocess_dir:
            if not getattr(values.ValueClass, "_multiprocess", False):
                raise RuntimeError(
                    f"prometheus_client was imported before {MULTIPROC_ENV} was set: its"
                    " values would stay in this process and /metrics would show one worker"
                )
            registry = None  # values live in files; each scrape builds its own registry
        else:
            registry = CollectorRegistry()
        self._registry = registry
        self._state = StateCollector(store, dry_run=dry_run, rules_loaded=rules_loaded,
                                     clock=clock)
        if registry is not None:
            registry.register(self._state)

        p = "alert_bridge_"
        self._webhooks = Counter(
            p + "webhooks", "Webhook requests answered, by payload source and HTTP answer code.",
            ["source", "code"], registry=registry)
        self._auth_failures = Counter(
            p + "webhook_auth_failures",
            "Webhook requests refused with 401 because no configured method authenticated them.",
            registry=registry)
        self._admin_auth_failures = Counter(
            p + "admin_auth_failures",
            "Approval API requests refused with 401 (wrong or missing admin token).",
            registry=registry)
        self._alerts = Counter(
            p + "alerts_evaluated", "Alerts judged against the rules, by payload source.",
            ["source"], registry=registry)
        self._decisions = Counter(
            p + "decisions", "Decisions recorded, by rule, operation and verdict"
            " (rule and operation empty for no_match).",
            ["rule", "operation", "verdict"], registry=registry)
        #: Each label set's child of _decisions: labels() checks and locks on every call,
        #: and a storm's decisions come under hundreds of rules.
        self._decision_children: dict[tuple[str, str, str], Any] = {}
        self._outcomes = Counter(
            p + "operation_outcomes", "Operations ended, by operation and outcome"
            " (succeeded, failed, unknown, expired; cancelled when their rule went).",
            ["operation", "outcome"], registry=registry)
        self._verifications = Counter(
            p + "verifications", "Operations verified, by rule, operation and result"
            " (remediated, not_remediated, resolved_before).",
            ["rule", "operation", "result"], registry=registry)
        self._time_to_resolve = Histogram(
            p + "time_to_resolve_seconds", "From the call of an operation that remediated to"
            " the resolution of its alert, by rule and operation.",
            ["rule", "operation"], buckets=RESOLVE_BUCKETS, registry=registry)
        self._api_duration = Histogram(
            p + "api_call_duration_seconds", "Device API calls (each attempt), by operation.",
            ["operation"], buckets=API_BUCKETS, registry=registry)
        self._api_responses = Counter(
            p + "api_responses", "Device API answers by HTTP status, or by the kind of failure"
            " when there was none (timeout, connect_error, invalid_response, invalid_request).",
            ["status"], registry=registry)
        # The answering worker sets these from the state store just before each scrape (see
        # app.py), so the most recent value is the bridge's: a worker that no scrape reached
        # since a reload was refused, then fixed, does not keep the old 0 in the sum.
        self._reload_success = Gauge(
            p + "reload_success", "1 if the last attempt to load the rules succeeded, else 0.",
            registry=registry, multiprocess_mode="livemostrecent")
        self._reload_time = Gauge(
            p + "reload_timestamp_seconds",
            "When the rules were last loaded successfully, in seconds since the epoch.",
            registry=registry, multiprocess_mode="livemax")
        self._last_loaded = 0.0
        self.note_reload(True, started)

    def render(self) -> bytes:
        """The text exposition of every metric, summed over all workers."""
        from prometheus_client import CollectorRegistry, generate_latest

        if self._registry is not None:
            return generate_latest(self._registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        registry.register(self._state)
        return generate_latest(registry)

    @_never_raises
    def webhook(self, source: str, code: int) -> None:
        self._webhooks.labels(source, str(code)).inc()

    @_never_raises
    def auth_failure(self) -> None:
        self._auth_failures.inc()

    @_never_raises
    def admin_auth_failure(self) -> None:
        self._admin_auth_failures.inc()

    @_never_raises
    def evaluated(self, source: str, alerts: int, recorded: Iterable[Recorded]) -> None:
        """One webhook's alerts and decisions, once they are committed."""
        self._alerts.labels(source).inc(alerts)
        # One increment per distinct label set: a storm of 500 alerts costs a handful.
        tally = Tally(
            (r.decision.rule.name if r.decision.rule else "", r.decision.operation,
             r.decision.verdict)
            for r in recorded
        )
        children = self._decision_children
        for labels, n in tally.items():
            child = children.get(labels)
            if child is None:
                child = children[labels] = self._decisions.labels(*labels)
            child.inc(n)

    @_never_raises
    def api_call(self, operation: str, result: CallResult) -> None:
        """One attempt's answer from the device API (or the lack of one)."""
        self._api_duration.labels(operation).observe(result.elapsed)
        status = str(result.status_code) if result.status_code is not None else result.kind
        self._api_responses.labels(status).inc()

    @_never_raises
    def outcome(self, operation: str, outcome: str) -> None:
        self._outcomes.labels(operation, outcome).inc()

    @_never_raises
    def verification(self, rule: str, operation: str, result: str,
                     seconds: float | None) -> None:
        """One verification ended; `seconds` from the call to the resolution, if remediated."""
        self._verifications.labels(rule, operation, result).inc()
        if seconds is not None:
            self._time_to_resolve.labels(rule, operation).observe(seconds)

    @_never_raises
    def note_reload(self, ok: bool, when: float) -> None:
        """Record an attempt to (re)load the rules: whether it succeeded, and when. Every scrape
        sets it from the store's flags (see app.py), so that every worker shows what the
        master did; the time of the last success never goes back (to a reload older than
        this worker's own start)."""
        self._reload_success.set(1 if ok else 0)
        if ok:
            self._last_loaded = max(self._last_loaded, when)
            self._reload_time.set(self._last_loaded)


class StateCollector:
    """Gauges read from the state store at scrape time, so right whichever worker answers."""

    def __init__(self, store: Store, *, dry_run: bool, rules_loaded: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._dry_run = dry_run
        self._rules_loaded = rules_loaded

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily("alert_bridge_" + name, doc, value=value)

        yield gauge("dry_run", "1 if the bridge decides and audits but calls nothing.",
                    1 if self._dry_run else 0)
        yield gauge("rules_loaded", "Rules in force.", self._rules_loaded)
        up = "1 if the state store answered this scrape and took a test write."
        try:
            self._store.check_writable(self._clock())
            depth = self._store.queue_depth(self._clock())
            flags = {flag: self._store.get_flag(flag) is not None
                     for flag in (Flag.PAUSED, Flag.BREAKER_OPEN, Flag.API_UNAUTHORIZED)}
        except BridgeError as exc:
            log.error("metrics: %s", exc.message)
            yield gauge("state_store_up", up, 0)
            return
        yield gauge("state_store_up", up, 1)
        queue = GaugeMetricFamily(
            "alert_bridge_queue_depth",
            "Open operations by state: queued (waiting to be sent, including held ones),"
            " sending, pending_approval.", labels=["state"])
        for state, n in sorted(depth.items()):
            queue.add_metric([state], n)
        yield queue
        yield gauge("paused", "1 while paused by `alert-bridge pause`.", flags[Flag.PAUSED])
        yield gauge("breaker_open", "1 while the storm breaker is open (nothing is sent).",
                    flags[Flag.BREAKER_OPEN])
        yield gauge("api_unauthorized",
                    "1 while the device API rejects the token (its last answer was 401).",
                    flags[Flag.API_UNAUTHORIZED])


# -- the serving process (gunicorn's master) ---------------------------------------------


def start_multiprocess() -> str:
    """Make a fresh private directory for the workers' metric files and point
    PROMETHEUS_MULTIPROC_DIR at it. Call in the master before any worker forks; any value
    the variable had is replaced, since files left by another run would be summed in."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="alert-bridge-metrics-", dir=base)  # mode 0700
    os.environ[MULTIPROC_ENV] = path
    return path


def worker_exited(pid: int) -> None:
    """Forget a dead worker's live gauges (its counters stay: totals never go back)."""
    from prometheus_client import multiprocess

    path = os.environ.get(MULTIPROC_ENV)
    if path:
        multiprocess.mark_process_dead(pid, path)


def end_multiprocess(path: str) -> None:
    """Remove the directory made by start_multiprocess (the master is stopping)."""
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(MULTIPROC_ENV) == path:
        del os.environ[MULTIPROC_ENV]
