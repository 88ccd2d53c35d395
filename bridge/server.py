"""Runs the app under gunicorn in this very process, so signals sent to `serve` reach the server."""

from __future__ import annotations

import gc
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
from bridge.vocab import Flag
from bridge.web.context import context_of

log = logging.getLogger(__name__)
#: How often the master looks at the rules file for a change of content.
WATCH_INTERVAL = 2.0
#: Signals that stop a worker: held back from a new worker until it has its own handlers.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


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
            # A draining worker sends no heartbeat: past this the master would kill it with
            # its calls in flight, so it outlasts the drain.
            "timeout": max(60, math.ceil(settings.drain_timeout) + 15),
            # SIGTERM: workers stop taking requests, then their dispatchers finish the calls
            # in flight (worker_exit below) within the drain timeout.
            "graceful_timeout": math.ceil(settings.drain_timeout) + 5,
            "worker_exit": _drain,
            # The worker has forked, built its app and installed its signal handlers: its
            # sender and housekeeping threads start (threads do not survive a fork), then
            # the stop signals held back since the fork are taken.
            "post_worker_init": _start_worker,
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
        """Validate the rules file again; True when the workers must be replaced to run it.
        A file that fails is refused whole; one with the running rules' content is a no-op."""
        path, now = self.settings.rules_path, time.time()
        store = self.settings.open_store()
        try:
            try:
                rules = load_rules(path)
            except RulesError as exc:
                store.set_flag(Flag.RELOAD_FAILED, now)  # first: whoever reads the log finds it
                log.error("rules reload refused, still running version %s: %s",
                          self.rules.version, "; ".join(str(p) for p in exc.problems))
                return False
            store.set_flag(Flag.RELOAD_OK, now)
        finally:
            store.close()
        if rules.version == self.rules.version:
            log.info("rules file %s unchanged (version %s): no worker replaced", path,
                     rules.version)
            return False
        log.info("rules reloaded from %s: version %s -> %s (%d rules)", path,
                 self.rules.version, rules.version, len(rules.rules))
        self.rules = rules
        return True

    def _watch(self) -> None:
        """SIGHUP ourselves when the rules file's content changes (not its mere mtime).

        The file is read and hashed again only when its stat changed (a large generated
        file takes milliseconds to hash: an idle bridge should not pay that every look)."""
        path = self.settings.rules_path
        seen, last = _stat(path), _digest(path)
        while True:
            time.sleep(WATCH_INTERVAL)
            now = _stat(path)
            if now == seen:
                continue
            seen = now
            current = _digest(path)
            if current != last:
                last = current
                os.kill(os.getpid(), signal.SIGHUP)


class _ReloadingArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, except that SIGHUP first validates the rules: a bad file is
    refused whole and the workers keep running the old rules; a good one replaces every
    worker (gracefully: each drains its calls in flight) with workers on the new rules."""

    def handle_hup(self) -> None:
        self.log.info("Hang up: %s", self.master_name)
        if not self.app.reload_rules():
            return
        # Not gunicorn's reload(): after starting the new workers it waits, up to
        # graceful_timeout, for the old ones to exit, and the master handles no signal
        # meanwhile; a second reload (or a stop) then waited behind a slow device call that
        # an old worker was draining. Nothing else reload() does applies: a reload changes
        # the rules, never the server's settings. The master's loop sends the old workers
        # SIGTERM again while they drain, which a gthread worker takes as the same request.
        for _ in range(self.num_workers):
            self.spawn_worker()
        self.manage_workers()  # SIGTERM to the oldest workers: every old one

    def spawn_worker(self) -> int:
        # From its fork until it installs its own handlers, a worker runs the master's, which
        # only queue a signal for a master loop the worker never runs: a stop signal sent then
        # (a stop just after a reload started workers) was lost, and the stop waited
        # graceful_timeout for a worker that never heard it. Blocked, the signal waits for
        # the worker instead (_start_worker); in the master it waits for the fork only.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().spawn_worker()  # type: ignore[no-any-return]
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _stat(path: str) -> tuple[int, ...]:
    """What changes when a file is written or replaced: inode, size, times (ns)."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def _drain(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)  # None when the worker failed to build its app
    if app is not None:
        context_of(app).stop(server.cfg.graceful_timeout - 5)


def _start_worker(worker: Any) -> None:
    """gunicorn's post_worker_init: start the app's background work, then handle a stop
    signal that arrived since the fork."""
    try:
        settle_heap()
        # Started while the stop signals are blocked, the threads keep them blocked: the
        # kernel gives a stop signal to the main thread, which gunicorn's handlers wake.
        context_of(worker.wsgi).start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


#: Python's collector looks at its youngest objects after this many more were made than
#: freed (Python's default: 700). A 500-alert webhook makes about a hundred thousand that
#: mostly go when it is answered; every 700 of them, the collector walked those still alive.
YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Once a worker has built its app: what exists now (rules, templates, Flask, the
    libraries) lives as long as the worker, so gc.freeze() takes it out of the collector's
    walks, and collections of the young come less often (YOUNG_THRESHOLD).

    Without it, the full collections that storms set off every few webhooks walked the
    whole heap: about 40 ms each in a worker with 500 rules, against 1 ms after the freeze
    (benchmarks/ANALYSIS.md). Cycles of garbage are still collected, a little later."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def _forget_worker(server: Any, worker: Any) -> None:
    metrics.worker_exited(worker.pid)
