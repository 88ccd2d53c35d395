"""A real Prometheus Alertmanager on loopback, for end-to-end tests (tests/test_alertmanager.py).

Alertmanager runs as `prometheus-alertmanager` (Debian's name for the binary) with its own
storage directory and a free port; with no cluster gossip, unless given a cluster port and
peers (an HA pair, on loopback). Alerts go in through `POST /api/v2/alerts`;
what Alertmanager did about its webhook shows in its `/metrics` and its log.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import yaml

from bridge.audit import AuditRecord
from tests import helpers
from tests.helpers import BridgeProcess, LocalService, audit, free_port, need

BINARY = "prometheus-alertmanager"
AMTOOL = "amtool"
MISSING = f"{BINARY} is not installed (Debian package prometheus-alertmanager)"

#: Fast timings: first notification 1 s after the first alert, changes on 2 s ticks.
GROUP_WAIT, GROUP_INTERVAL, REPEAT_INTERVAL = "1s", "2s", "10s"


def require_alertmanager() -> None:
    """Skip on a laptop without Alertmanager; fail in CI (BRIDGE_TEST_REQUIRE_SERVICES=1)."""
    need(shutil.which(BINARY) is not None and shutil.which(AMTOOL) is not None, MISSING)


def config(webhook_url: str, *, receiver: str = "alert.bridge", token: str | None = None,
           group_by: Sequence[str] = ("alertname",), repeat_interval: str = REPEAT_INTERVAL
           ) -> str:
    """alertmanager.yml with one route and one webhook receiver, as the README recommends."""
    webhook: dict[str, Any] = {"url": webhook_url, "send_resolved": True, "max_alerts": 0}
    if token is not None:
        webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials": token}}
    return yaml.safe_dump({
        "route": {
            "receiver": receiver, "group_by": list(group_by), "group_wait": GROUP_WAIT,
            "group_interval": GROUP_INTERVAL, "repeat_interval": repeat_interval,
        },
        "receivers": [{"name": receiver, "webhook_configs": [webhook]}],
    }, sort_keys=False)


# Loaded here, not in the child: between fork and exec only the prctl call itself runs.
_LIBC = ctypes.CDLL(None) if sys.platform == "linux" else None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """Linux: the kernel sends Alertmanager SIGTERM if the test run dies without a teardown."""
    assert _LIBC is not None
    _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Alertmanager(LocalService):
    """One `prometheus-alertmanager` process: storage in `workdir`, a free port; gossip only
    with a `cluster_port` (127.0.0.1), to the `peers` (their cluster ports on 127.0.0.1)."""

    name = "alertmanager"

    def __init__(self, workdir: Path, config_text: str, cluster_port: int | None = None,
                 peers: Sequence[int] = ()) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir / "alertmanager.log")
        self.workdir = workdir
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(config_text)
        self.cluster_port = cluster_port
        self.peers = peers

    def _cluster_args(self) -> list[str]:
        if self.cluster_port is None:
            return ["--cluster.listen-address="]  # no gossip: nothing on 9094, no peer to wait for
        address = f"127.0.0.1:{self.cluster_port}"
        # Fast timings: the pair settles in seconds, and the second member sends what the
        # first has not within 1 s rather than 15.
        return [f"--cluster.listen-address={address}", f"--cluster.advertise-address={address}",
                *(f"--cluster.peer=127.0.0.1:{p}" for p in self.peers),
                "--cluster.peer-timeout=1s", "--cluster.pushpull-interval=1s",
                "--cluster.gossip-interval=100ms", "--cluster.settle-timeout=3s"]

    def start(self, port: int | None = None) -> Alertmanager:
        """Start on `port` (default: a free one; give one chosen before to tell the bridge
        where its Alertmanager will be)."""
        self.port = port or free_port()
        self.spawn(
            [BINARY, f"--config.file={self.config_path}",
             f"--storage.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             f"--web.external-url={self.url}",
             *self._cluster_args(),
             "--log.level=debug"],
            timeout=20, stdin=subprocess.DEVNULL, cwd=self.workdir,
            preexec_fn=_die_with_parent if _LIBC is not None else None,
        )
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    # -- feeding alerts ------------------------------------------------------------------

    def post(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        r = requests.post(self.url + "/api/v2/alerts", json=list(alerts), timeout=10)
        assert r.status_code == 200, f"POST /api/v2/alerts: {r.status_code} {r.text}"

    def fire(self, *alerts: Mapping[str, Any]) -> None:
        """Alerts given as {"labels": ..., "annotations": ...}; they fire from now."""
        self.post(alerts)

    def resolve(self, *alerts: Mapping[str, Any]) -> None:
        """Resolve: the same alerts with endsAt in the past. Annotations must be sent again,
        or the resolved alert arrives with none (a resolve replaces them)."""
        ended = (datetime.now(UTC) - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
        self.post({**alert, "endsAt": ended} for alert in alerts)

    # -- what it did ---------------------------------------------------------------------

    def metric(self, name: str, integration: str = "webhook") -> float:
        """A counter of Alertmanager's /metrics for the webhook integration (0 if absent)."""
        text = requests.get(self.url + "/metrics", timeout=5).text
        m = re.search(rf'^{name}{{integration="{integration}"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    def attempts(self) -> tuple[int, int]:
        """(webhook requests made, webhook requests that failed), retries included."""
        return (int(self.metric("alertmanager_notification_requests_total")),
                int(self.metric("alertmanager_notification_requests_failed_total")))


def alert(name: str, device: str, **labels: str) -> dict[str, Any]:
    """A critical alert as Alertmanager's API takes it: the labels and annotations of a
    webhook alert, without the times, which Alertmanager sets itself."""
    made = helpers.alert(name, device, severity="critical",
                         annotations={"summary": f"{device} does not answer"}, **labels)
    return {"labels": made["labels"], "annotations": made["annotations"]}


# -- the bridge's audit --------------------------------------------------------------------

def decisions(bridge: BridgeProcess) -> list[AuditRecord]:
    return [r for r in audit(bridge) if r.event == "decision"]


def deliveries(bridge: BridgeProcess) -> dict[str, list[AuditRecord]]:
    """Decision records per webhook request (request_id), in the order they were recorded."""
    by_request: dict[str, list[AuditRecord]] = {}
    for r in decisions(bridge):
        by_request.setdefault(r.request_id, []).append(r)
    return by_request


# -- a front for the bridge that can refuse deliveries -------------------------------------

class FlakyFront:
    """A reverse proxy in front of the bridge that answers 503 to the first `fail_first` POSTs
    and forwards everything else; it records every delivery and what it answered.

    With `pass_on_refused`, a refused POST is still forwarded and the bridge's answer is
    replaced by the 503: the bridge did the work, but the sender never learnt it.

    (The bridge itself answers 503 when its state store cannot be written, but only after its
    30 s SQLite busy timeout: longer than an Alertmanager flush lasts.)
    """

    def __init__(self, target: str, fail_first: int = 1, pass_on_refused: bool = False) -> None:
        self.target = target
        self.fail_first = fail_first
        self.pass_on_refused = pass_on_refused
        self._lock = threading.Lock()
        #: One entry per POST received: {"status": answered, "body": parsed JSON, "headers"}.
        self.deliveries: list[dict[str, Any]] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with front._lock:
                    refuse = len(front.deliveries) < front.fail_first
                    entry: dict[str, Any] = {"status": None, "forwarded": None,
                                             "body": json.loads(body),
                                             "headers": dict(self.headers)}
                    front.deliveries.append(entry)
                if not refuse or front.pass_on_refused:
                    forwarded = {k: v for k, v in self.headers.items()
                                 if k.lower() in ("content-type", "authorization", "user-agent")}
                    r = requests.post(front.target + self.path, data=body, headers=forwarded,
                                      timeout=30)
                    entry["forwarded"] = r.status_code
                    status, answer = r.status_code, r.content
                if refuse:
                    status, answer = 503, b'{"error": "front: service unavailable"}'
                entry["status"] = status
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def statuses(self) -> list[int | None]:
        with self._lock:
            return [d["status"] for d in self.deliveries]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
