"""Real server processes on loopback for the benchmarks: start, wait until ready, measure, kill.

Every process is started in its own session (process group), registered, and killed by
`stop_all()`, which run.py calls in a `finally` (so also on Ctrl-C and on errors).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent

#: The gunicorn options bridge/server.py sets (BridgeServer.options), as command-line flags,
#: for the baseline app; graceful_timeout there is drain_timeout (30 s) + 5.
GUNICORN_FLAGS = (
    "--workers", "2", "--worker-class", "gthread", "--threads", "4", "--timeout", "60",
    "--graceful-timeout", "35", "--no-control-socket", "--error-logfile", "-",
    "--log-level", "info",
)

_RUNNING: list[Server] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(probe: Callable[[], object], timeout: float, what: str,
               interval: float = 0.05) -> object:
    """Poll `probe` until it returns something truthy; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (requests.RequestException, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


class Server:
    """One server process (and its children) in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path,
                 env: dict[str, str] | None = None, ready_path: str = "/") -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"{name}.log"
        # BRIDGE_* settings of the caller's shell must not leak into a benchmark's servers.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        full_env = {**inherited, "PYTHONPATH": str(ROOT), **(env or {})}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT,
                start_new_session=True,
            )
        _RUNNING.append(self)
        self._ready_path = ready_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> Server:
        def probe() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            return requests.get(self.url + self._ready_path, timeout=2).status_code == 200

        wait_until(probe, timeout, f"{self.name} {self._ready_path}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it is not gone within `grace`."""
        if self in _RUNNING:
            _RUNNING.remove(self)
        if self.proc.poll() is None:
            _killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Workers may outlive a master killed hard; the group takes them all.
        _killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def workers(self) -> list[int]:
        return child_pids(self.proc.pid)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all() -> None:
    for server in list(reversed(_RUNNING)):
        server.stop(grace=3.0)


def start_fake_api(workdir: Path, token: str) -> Server:
    port = free_port()
    server = Server(
        "fake-api",
        [sys.executable, "-m", "bridge", "fake-api", "--bind", f"127.0.0.1:{port}",
         "--any-device", "--token", token],
        port, workdir, ready_path="/_fake/calls",
    )
    return server.wait_ready()


def start_bridge(workdir: Path, name: str, rules: Path, state: Path | str,
                 env: dict[str, str]) -> Server:
    """`python -m bridge serve` with 2 workers; `env` holds its BRIDGE_* settings (no others:
    without BRIDGE_API_TOKEN the bridge runs in dry run)."""
    port = free_port()
    server = Server(
        name,
        [sys.executable, "-m", "bridge", "serve", "--rules", str(rules),
         "--bind", f"127.0.0.1:{port}", "--workers", "2", "--state", str(state)],
        port, workdir, env=env, ready_path="/-/ready",
    )
    return server.wait_ready()


def start_baseline(workdir: Path) -> Server:
    """The bare Flask app of baseline_app.py under gunicorn with the bridge's options."""
    port = free_port()
    server = Server(
        "baseline",
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", *GUNICORN_FLAGS,
         "--chdir", str(BENCH_DIR), "baseline_app:app"],
        port, workdir, ready_path="/-/healthy",
    )
    return server.wait_ready()


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (gunicorn workers of a master), from /proc."""
    children: set[int] = set()
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            try:
                text = (task / "children").read_text()
            except OSError:
                continue
            children.update(int(c) for c in text.split())
    except OSError:
        pass
    if not children:  # kernels without CONFIG_PROC_CHILDREN: scan every process's PPid
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _status_field(int(entry.name), "PPid") == str(pid):
                children.add(int(entry.name))
    return sorted(children)


def _status_field(pid: int, field: str) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == field:
                return value.strip()
    except OSError:
        return None
    return None


def rss_mib(pid: int) -> float | None:
    """VmRSS of a process in MiB, or None if it is gone."""
    value = _status_field(pid, "VmRSS")
    if value is None:
        return None
    kb = int(value.split()[0])
    return kb / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
