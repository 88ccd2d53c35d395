"""A small HTTP load generator: a pool of threads, each with its own keep-alive connection
(a requests.Session, or a bare http.client connection).

It runs in the benchmark's own process, which shares the machine's CPUs with the servers under
test, so it has a ceiling of its own. run.py always runs it against the baseline app in the
same run, and reports the CPU the load generator itself used, to make that ceiling visible.
"""

from __future__ import annotations

import http.client
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

JSON = {"Content-Type": "application/json"}


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0  # wall seconds of the measured part
    client_cpu: float = 0.0  # CPU seconds this process used meanwhile (the load generator)

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q)

    def merge(self, other: LoadResult) -> LoadResult:
        return LoadResult(
            self.latencies + other.latencies, self.errors + other.errors,
            self.elapsed + other.elapsed, self.client_cpu + other.client_cpu,
        )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


#: The load generator's HTTP clients: requests.Session (what the brief asks for; about 1.5 ms
#: of client CPU per request) and a bare http.client connection (several times cheaper), to
#: tell when the requests client is what limits a measurement.
CLIENTS = ("requests", "http.client")


class _Sender:
    """One thread's keep-alive connection, sending requests and checking for 200."""

    def __init__(self, kind: str, url: str, method: str, headers: dict[str, str]) -> None:
        if kind not in CLIENTS:
            raise ValueError(f"unknown client {kind!r}")
        self.kind, self.url, self.method, self.headers = kind, url, method, headers
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.session = requests.Session() if kind == "requests" else None
        self.conn: http.client.HTTPConnection | None = None

    def send(self, data: bytes) -> str | None:
        """Send one request; None when answered 200, else what went wrong."""
        if self.session is not None:
            try:
                response = self.session.request(self.method, self.url, data=data,
                                                headers=self.headers, timeout=60)
            except requests.RequestException as exc:
                return f"{type(exc).__name__}: {exc}"
            if response.status_code != 200:
                return f"HTTP {response.status_code}: {response.text[:200]}"
            return None
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self.conn.request(self.method, self.path, body=data, headers=self.headers)
            answer = self.conn.getresponse()
            text = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return f"{type(exc).__name__}: {exc}"
        if answer.will_close:
            self.close()
        if answer.status != 200:
            return f"HTTP {answer.status}: {text[:200]!r}"
        return None

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_load(
    url: str,
    body: Callable[[int], bytes],
    *,
    clients: int,
    total: int | None = None,
    duration: float | None = None,
    warmup: float = 0.0,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    client: str = "requests",
) -> LoadResult:
    """Send `body(i)` to `url` (POST unless `method`) from `clients` threads, until `total`
    requests or for `duration` seconds; `client` is one of CLIENTS.

    Requests that start during the first `warmup` seconds are sent but not counted. Every
    answer must be 200; anything else is collected in `errors` (and not counted as a latency).
    """
    if (total is None) == (duration is None):
        raise ValueError("give exactly one of total and duration")
    counter = itertools.count()
    sent_headers = {**JSON, **(headers or {})}
    lock = threading.Lock()
    result = LoadResult()
    start = measure_from = 0.0
    stop_at = math.inf
    ready = threading.Barrier(clients + 1)

    def worker() -> None:
        mine: list[float] = []
        errors: list[str] = []
        sender = _Sender(client, url, method, sent_headers)
        try:
            ready.wait()
            while True:
                i = next(counter)
                if total is not None and i >= total:
                    break
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    break
                error = sender.send(body(i))
                t1 = time.perf_counter()
                if error is not None:
                    errors.append(error)
                elif t0 >= measure_from:
                    mine.append(t1 - t0)
        finally:
            sender.close()
        with lock:
            result.latencies.extend(mine)
            result.errors.extend(errors)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    # The clock starts when every sender exists; the threads read these after the barrier.
    cpu0 = time.process_time()
    start = time.perf_counter()
    measure_from = start + warmup
    if duration is not None:
        stop_at = measure_from + duration
    ready.wait()
    for t in threads:
        t.join()
    end = time.perf_counter()
    result.client_cpu = time.process_time() - cpu0
    result.elapsed = end - (measure_from if warmup else start)
    return result
