"""Shared test machinery: real servers on loopback, polling with deadlines, payload files."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from werkzeug.serving import make_server

from bridge.audit import AuditQuery, AuditRecord
from bridge.store import SqliteStore, open_store

PAYLOADS = Path(__file__).parent / "payloads"
ROOT = Path(__file__).parent.parent
T = TypeVar("T")

#: .ci/run sets this: a test whose service is missing then fails instead of skipping.
REQUIRE_SERVICES = os.environ.get("BRIDGE_TEST_REQUIRE_SERVICES", "") not in ("", "0")


def need(available: bool, reason: str) -> None:
    """Skip (on a laptop) or fail (in CI) when a service a test needs is missing."""
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def payload_json(name: str) -> Any:
    return json.loads(payload(name))


#: When the alerts that `alert` builds started firing, unless a test says otherwise.
STARTS_AT = "2026-11-25T10:00:00Z"
#: Go's zero time: what Alertmanager sends as the endsAt of an alert still firing.
NOT_ENDED = "0001-01-01T00:00:00Z"


def alert(name: str | None, device: str | None = None, *, status: str = "firing",
          starts_at: str = STARTS_AT, fingerprint: str | None = None,
          annotations: dict[str, str] | None = None, **labels: str) -> dict[str, Any]:
    """One alert as Alertmanager writes it in a webhook body: `alertname` first (none if
    `name` is None), then `labels`, then `device` if given. Without a fingerprint the bridge
    computes one from the labels, as it does for a sender that omits it."""
    made: dict[str, Any] = {
        "status": status,
        "labels": {**({} if name is None else {"alertname": name}), **labels,
                   **({} if device is None else {"device": device})},
        "annotations": annotations or {}, "startsAt": starts_at,
        # The bridge only parses a resolved alert's endsAt: its start will do.
        "endsAt": NOT_ENDED if status == "firing" else starts_at,
    }
    if fingerprint is not None:
        made["fingerprint"] = fingerprint
    return made


#: A rule with a ladder: sync, verified for 10 minutes; if the alert still fires, reboot.
LADDER = """\
rules:
  - name: unreachable-router
    match: ['alertname = "DeviceUnreachable"']
    device: "{{ labels.device }}"
    operation: sync
    cooldown: 1h
    verify: 10m
    escalate:
      - {operation: reboot, verify: 15m}
"""


def webhook(*alerts: dict[str, Any], receiver: str = "bridge") -> bytes:
    """An Alertmanager webhook body (version 4) carrying `alerts`; the group fires while one
    of them does, as in Alertmanager."""
    firing = any(a.get("status") == "firing" for a in alerts)
    return json.dumps({
        "version": "4", "status": "firing" if firing else "resolved", "receiver": receiver,
        "groupKey": "{}:{}", "alerts": list(alerts),
    }).encode()


def device_down(*devices: str) -> bytes:
    """A webhook body: one firing DeviceDown alert per device."""
    return webhook(*(alert("DeviceDown", d) for d in devices))


class Clock:
    """A clock the test sets: give it as `clock=` and move it with `clock.now += seconds`."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def replace_file(path: Path, text: str) -> None:
    """Give `path` new content at once (write aside, then rename over it), as Docker and
    Kubernetes replace a mounted secret: a reader sees the old file or the new, never half."""
    new = path.with_name(f".{path.name}.new")
    new.write_text(text)
    os.replace(new, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(probe: Callable[[], T], timeout: float = 15.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (requests.ConnectionError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def make_disk_full(mocker: Any, store: SqliteStore) -> None:
    """Make the store's writes fail as SQLite does on a full disk (reads still work): a fault
    no local server can produce on demand. Undo with mocker.stopall()."""
    real_connect = store._connect

    class DiskFull:
        def __init__(self, conn: Any) -> None:
            self.conn = conn

        def execute(self, sql: str, params: Any = ()) -> Any:
            if sql.startswith(("INSERT", "UPDATE")):
                raise sqlite3.OperationalError("database or disk is full")
            return self.conn.execute(sql, params)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.conn, name)

    mocker.patch.object(store, "_connect", lambda: DiskFull(real_connect()))


def read_audit(state: str | Path) -> list[AuditRecord]:
    """Every audit record of a state (a file, or a PostgreSQL URL), oldest first."""
    store = open_store(str(state))
    try:
        return store.audit(AuditQuery(limit=None))
    finally:
        store.close()


def wait_for_outcomes(state: str | Path, n: int, timeout: float = 30) -> list[AuditRecord]:
    """Wait until `n` operations have ended; their outcome records, in order."""
    return wait_until(
        lambda: (lambda got: got if len(got) >= n else None)(
            [r for r in read_audit(state) if r.event == "outcome"]),
        timeout=timeout, what=f"{n} outcome records",
    )


def audit(bridge: BridgeProcess) -> list[AuditRecord]:
    return read_audit(bridge.state)


def outcomes(bridge: BridgeProcess, n: int, timeout: float = 30) -> list[AuditRecord]:
    return wait_for_outcomes(bridge.state, n, timeout)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample a GET /metrics answers, keyed by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    r = requests.get(url + "/metrics", timeout=10)  # a new connection: any worker may answer
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


class ThreadServer:
    """A WSGI app served over real HTTP by werkzeug in a background thread."""

    def __init__(self, app: Any) -> None:
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class Receiver:
    """A chat webhook on loopback (what Slack's incoming webhooks are to the bridge): records
    every JSON body posted to it; `refuse(n, status)` answers the next n posts with `status`."""

    def __init__(self) -> None:
        from flask import Flask, jsonify, request

        self.bodies: list[Any] = []
        self.refused: list[Any] = []
        self._refuse: list[int] = []
        self._lock = threading.Lock()
        app = Flask(__name__)

        @app.post("/<path:path>")
        def receive(path: str) -> Any:
            if path == "redirect":  # where a sender must not follow
                return "", 307, {"Location": "/elsewhere"}
            body = request.get_json(force=True)
            with self._lock:
                if self._refuse:
                    self.refused.append(body)
                    return jsonify(error="refused"), self._refuse.pop(0)
                self.bodies.append(body)
            return jsonify(ok=True)

        self.server = ThreadServer(app)
        self.url = self.server.url

    def refuse(self, times: int, status: int = 500) -> None:
        with self._lock:
            self._refuse += [status] * times

    def texts(self) -> list[str]:
        with self._lock:
            return [b["text"] for b in self.bodies]

    def close(self) -> None:
        self.server.close()


def live_children(pid: int) -> set[int]:
    """The processes whose parent is `pid` and that have not exited, read from /proc (each
    /proc/N/stat gives the state and the parent after the command's closing parenthesis)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue  # gone while we looked
        if int(parent) == pid and state not in ("Z", "X"):
            found.add(int(stat.parent.name))
    return found


class LocalService:
    """A server process of the tests: a free loopback port, its output in `log_path`, ready
    once its GET /-/ready answers 200."""

    name = "service"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def spawn(self, argv: list[str], timeout: float, **popen: Any) -> None:
        """Run `argv` (which listens on self.port) in its own session, so that a crash can
        take all of it; return once it is ready, fail if it exits first."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, **popen)
        log.close()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200

        wait_until(ready, timeout=timeout, what=f"{self.name} /-/ready")


class BridgeProcess(LocalService):
    """`python -m bridge serve` under real gunicorn, as an operator would start it."""

    name = "bridge"

    def __init__(self, workdir: Path, rules: Path, state: Path | str, env: dict[str, str],
                 workers: int = 3, extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(workdir / "bridge.log")
        self.workdir, self.rules, self.state = workdir, rules, state
        self.env = {**os.environ, **env}
        self.workers = workers
        self.extra_args = extra_args

    def start(self, port: int | None = None) -> BridgeProcess:
        """Start (or start again, after a crash: on its old `port` if given)."""
        self.port = port or free_port()
        self.spawn(
            [sys.executable, "-m", "bridge", "serve", "--rules", str(self.rules),
             "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
             "--state", str(self.state), *self.extra_args],
            timeout=30, env=self.env, cwd=self.workdir,
        )
        return self

    def worker_pids(self) -> set[int]:
        """gunicorn's workers alive now: the children of `serve`, which is the master."""
        assert self.proc is not None
        return live_children(self.proc.pid)

    def wait_for_workers(self, n: int) -> set[int]:
        """Wait until exactly `n` workers are alive; their pids."""
        return wait_until(lambda: (lambda w: w if len(w) == n else None)(self.worker_pids()),
                          what=f"{n} gunicorn worker(s)")

    def crash(self) -> None:
        """kill -9 the master and every worker at once, as a power cut or OOM kill would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"bridge did not stop on signal {sig}:\n{self.log()}") from None


#: Unicode categories that must never reach a terminal raw: controls (C0, DEL, C1), format
#: characters (bidi overrides, zero-width, tags), surrogates, private use, unassigned, and the
#: line and paragraph separators.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def raw_controls(text: str) -> list[str]:
    """The characters of `text` (a command's output, split into lines by "\\n") that a
    terminal would act on or hide: what none of the human outputs may contain."""
    return [ch for ch in text if ch != "\n" and unicodedata.category(ch) in UNSAFE_CATEGORIES]


@contextmanager
def following(*args: str) -> Iterator[queue.Queue[str]]:
    """`alert-bridge audit --follow ARGS` as a real process; its output lines as they come."""
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "audit", "--follow", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8")
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or ()],
                              daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        proc.terminate()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
