"""Runs the app under gunicorn in this very process, so signals sent to `serve` reach the server."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from gunicorn.app.base import BaseApplication

from bridge import logs, metrics
from bridge.config import Settings


class BridgeServer(BaseApplication):  # type: ignore[misc]
    """gunicorn's master; each worker builds its own app (and its own store connections)."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self.settings = settings
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
        try:
            super().run()
        finally:
            if os.getpid() == master:  # workers leave gunicorn through here too
                metrics.end_multiprocess(path)

    def load(self) -> Any:
        from bridge.app import create_app

        return create_app(self.settings)


def _drain(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    dispatcher = app.extensions["bridge"]["dispatcher"] if app is not None else None
    if dispatcher is not None:
        dispatcher.stop(server.cfg.graceful_timeout - 5)


def _forget_worker(server: Any, worker: Any) -> None:
    metrics.worker_exited(worker.pid)
