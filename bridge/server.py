"""Runs the app under gunicorn in this very process, so signals sent to `serve` reach the server."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
import threading
import time
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from bridge import logs, metrics
from bridge.config import Settings
from bridge.errors import RulesError
from bridge.rules import RuleSet, load_rules
from bridge.store import RELOAD_FAILED, RELOAD_OK

log = logging.getLogger(__name__)
#: How often the master looks at the rules file for a change of content.
WATCH_INTERVAL = 2.0


class BridgeServer(BaseApplication):  # type: ignore[misc]
    """gunicorn's master; each worker builds its own app (and its own store connections)."""

    def __init__(self, settings: Settings, rules: RuleSet, **options: Any) -> None:
        self.settings = settings
        # Validated here, in the master; workers inherit them when they fork, so a worker
        # never starts on a file that failed validation.
        self.rules = rules
        self.options = {
            "bind": [settings.bind],
            "workers": settings.workers,
            # Threads let one worker wait on the device API while it answers other webhooks.
            "worker_class": "gthread",
            "threads": 4,
            "timeout": 60,
            # SIGTERM: workers stop taking requests, then their dispatchers finish the calls
            # in flight (worker_exit below) within the drain timeout.
            "graceful_timeout": math.ceil(settings.drain_timeout) + 5,
            "worker_exit": _drain,
            # A dead worker's live gauges leave /metrics (its counters stay in the totals).
            "child_exit": _forget_worker,
            "proc_name": "alert-bridge",
            # gunicorn's control socket lives in $HOME, which a read-only container lacks;
            # operators signal the master instead.
            "control_socket_disable": True,
            # Worker heartbeat files: in memory, so a read-only root filesystem is fine.
            "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
            "errorlog": "-",
            "logconfig_dict": logs.gunicorn_config(settings.log_format),
            "loglevel": "info",
            **options,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def run(self) -> None:
        # Workers write their metrics to files in a fresh directory made before they fork;
        # a scrape of any worker sums them all. The master removes it however it stops.
        path = metrics.start_multiprocess()
        logging.getLogger(__name__).info("metrics: multiprocess directory %s", path)
        master = os.getpid()
        os.environ["BRIDGE_MASTER_PID"] = str(master)  # for POST /-/reload in the workers
        threading.Thread(target=self._watch, name="rules-watch", daemon=True).start()
        try:
            _ReloadingArbiter(self).run()
        finally:
            if os.getpid() == master:  # workers leave gunicorn through here too
                metrics.end_multiprocess(path)

    def load(self) -> Any:
        from bridge.app import create_app

        return create_app(self.settings, rules=self.rules)

    def reload_rules(self) -> bool:
        """Validate the rules file again; keep the running rules when it fails, whole."""
        path, now = self.settings.rules_path, time.time()
        store = self.settings.open_store()
        try:
            try:
                rules = load_rules(path)
            except RulesError as exc:
                log.error("rules reload refused, still running version %s: %s",
                          self.rules.version, "; ".join(str(p) for p in exc.problems))
                store.set_flag(RELOAD_FAILED, now)
                return False
            store.set_flag(RELOAD_OK, now)
        finally:
            store.close()
        log.info("rules reloaded from %s: version %s -> %s (%d rules)", path,
                 self.rules.version, rules.version, len(rules.rules))
        self.rules = rules
        return True

    def _watch(self) -> None:
        """SIGHUP ourselves when the rules file's content changes (not its mere mtime)."""
        last = _digest(self.settings.rules_path)
        while True:
            time.sleep(WATCH_INTERVAL)
            current = _digest(self.settings.rules_path)
            if current != last:
                last = current
                os.kill(os.getpid(), signal.SIGHUP)


class _ReloadingArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, except that SIGHUP first validates the rules: a bad file is
    refused whole and the workers keep running the old rules; a good one replaces every
    worker (gracefully: each drains its calls in flight) with workers on the new rules."""

    def handle_hup(self) -> None:
        if self.app.reload_rules():
            super().handle_hup()


def _digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def _drain(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    dispatcher = app.extensions["bridge"]["dispatcher"] if app is not None else None
    if dispatcher is not None:
        dispatcher.stop(server.cfg.graceful_timeout - 5)


def _forget_worker(server: Any, worker: Any) -> None:
    metrics.worker_exited(worker.pid)
