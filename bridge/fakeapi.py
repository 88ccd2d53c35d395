"""A fake of the device operation API for tests and demos: answers as the contract says, records
every call it receives, and can be told to fail, to answer slowly, to hold calls until released,
or to accept another token."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit

from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Response as WerkzeugResponse

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
OPERATION_PREFIX = f"{API_PREFIX}/inventory_device_name_operation/"
CONTROL_PREFIX = "/_fake"

DEFAULT_DEVICES: tuple[str, ...] = (
    "office-router-01",
    "office-router-02",
    "core-switch-01",
    "branch-ap-17",
    "lab-firewall-01",
)

#: Operation -> how long the fake claims it takes (estimated_completion - timestamp).
OPERATION_DURATIONS: dict[str, timedelta] = {
    "sync": timedelta(seconds=30),
    "reconf": timedelta(seconds=60),
    "reboot": timedelta(seconds=120),
    "device_factory": timedelta(seconds=300),
    "factory": timedelta(seconds=600),
}

# Error texts for statuses a behaviour makes the fake answer, in the words of the contract.
_ERROR_MESSAGES = {
    400: "invalid operation type",
    401: "missing, invalid or expired token",
    404: "device not found in inventory",
    409: "device is offline or another operation is in progress",
    422: "device cannot perform the operation (device offline)",
    500: "failed to initiate operation",
}


@dataclass(frozen=True)
class Behaviour:
    """An instruction queued by a test: answer `status` (with `body`, or a JSON error) instead of
    processing the call, and/or wait `delay` seconds first, and/or `hold` the call until the gate
    opens (POST /_fake/gate); only for `device` if set; only for the next `times` matching calls
    if set, else until reset."""

    status: int | None = None
    delay: float = 0.0
    device: str | None = None
    times: int | None = None
    body: str | None = None
    hold: bool = False

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Behaviour:
        """Validate a behaviour as posted to /_fake/behaviour; ValueError says what is wrong."""
        unknown = set(spec) - {"status", "delay", "device", "times", "body", "hold"}
        if unknown:
            raise ValueError(f"unknown behaviour keys: {', '.join(sorted(unknown))}")
        status, delay = spec.get("status"), spec.get("delay", 0.0)
        device, times, body = spec.get("device"), spec.get("times"), spec.get("body")
        hold = spec.get("hold", False)
        if status is not None and (not _is_int(status) or not 200 <= status <= 599):
            raise ValueError("status must be an integer from 200 to 599")
        if not isinstance(delay, int | float) or isinstance(delay, bool) or not 0 <= delay < 1e6:
            raise ValueError("delay must be a number of seconds >= 0")
        if not isinstance(hold, bool):
            raise ValueError("hold must be true or false")
        if status is None and not delay and not hold:
            raise ValueError("a behaviour needs a status, a delay or a hold")
        if device is not None and not isinstance(device, str):
            raise ValueError("device must be a string")
        if times is not None and (not _is_int(times) or times < 1):
            raise ValueError("times must be an integer >= 1")
        if body is not None and (not isinstance(body, str) or status is None):
            raise ValueError("body must be a string, and comes with a status")
        return cls(status, float(delay), device, times, body, hold)

    def matches(self, device: str) -> bool:
        return self.device is None or self.device == device


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Arrival(NamedTuple):
    """A call as recorded, the behaviour it takes, and the events that end its waiting: `released`
    at a reset or shutdown, `gate` when the gate opens (and also at a reset or shutdown)."""

    record: dict[str, Any]
    behaviour: Behaviour | None
    released: threading.Event
    gate: threading.Event


class FakeApiState:
    """Everything the fake remembers; one lock guards it, as the server answers in threads."""

    def __init__(self, token: str, devices: Iterable[str], accept_any_device: bool) -> None:
        self.token = token
        self.accept_any_device = accept_any_device
        self._initial_token = token
        self._initial_devices = frozenset(devices)
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._gate = threading.Event()
        self._clear()

    def _clear(self) -> None:
        self._calls: list[dict[str, Any]] = []
        self._behaviours: list[tuple[Behaviour, int | None]] = []  # (behaviour, calls left)
        self._devices = set(self._initial_devices)
        self._next_operation_id = 1
        self.token = self._initial_token
        self._durations = dict(OPERATION_DURATIONS)

    def reset(self) -> None:
        """Back to the state at creation; delayed calls in flight stop waiting."""
        with self._lock:
            self._clear()
            self._wake_delayed_calls()

    def release(self) -> None:
        """Wake every delayed or held call (at shutdown), so no handler thread outlives the
        server."""
        with self._lock:
            self._released.set()
            self._gate.set()

    def open_gate(self) -> None:
        """Let every held call go on; calls held from now on wait for the next opening."""
        with self._lock:
            self._gate.set()
            self._gate = threading.Event()

    def set_token(self, token: str) -> None:
        """Accept `token` from now on (and no longer the old one), as an API that rotated it."""
        with self._lock:
            self.token = token

    def arrive(self, record: dict[str, Any], *, operation: bool) -> Arrival:
        """Record a call; for an operation call, take the first queued behaviour matching it."""
        with self._lock:
            record = {
                "seq": len(self._calls) + 1,
                **record,
                "status": None,
                "response": None,
                "finished": None,
            }
            self._calls.append(record)
            behaviour = None
            for index, (candidate, left) in enumerate(self._behaviours):
                if operation and candidate.matches(record["device"]):
                    behaviour = candidate
                    if left is not None:
                        if left == 1:
                            del self._behaviours[index]
                        else:
                            self._behaviours[index] = (candidate, left - 1)
                    break
            # Taken under the lock, so a gate opened once the call is recorded lets it through.
            return Arrival(record, behaviour, self._released, self._gate)

    def finish(self, record: dict[str, Any], status: int, response: Any) -> None:
        with self._lock:
            record.update(status=status, response=response, finished=time.time())

    def initiate(self, device: str, operation: str) -> dict[str, Any] | None:
        """The 200 body for a new operation, or None if the device is not in the inventory."""
        with self._lock:
            if not self.accept_any_device and device not in self._devices:
                return None
            operation_id = self._next_operation_id
            self._next_operation_id += 1
            takes = self._durations[operation]
        now = datetime.now(UTC).replace(microsecond=0)
        return {
            "id": operation_id,
            "operation": operation,
            "device_name": device,
            "status": "initiated",
            "timestamp": _iso(now),
            "execution_id": f"op_{secrets.token_hex(6)}",
            "estimated_completion": _iso(now + takes),
        }

    def calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(call) for call in self._calls]

    def clear_calls(self) -> int:
        with self._lock:
            count, self._calls = len(self._calls), []
            return count

    def add_behaviour(self, behaviour: Behaviour) -> int:
        with self._lock:
            self._behaviours.append((behaviour, behaviour.times))
            return len(self._behaviours)

    def behaviours(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**asdict(b), "times_left": left} for b, left in self._behaviours]

    def clear_behaviours(self) -> None:
        """Forget queued behaviours; calls delayed by one stop waiting."""
        with self._lock:
            self._behaviours = []
            self._wake_delayed_calls()

    def _wake_delayed_calls(self) -> None:
        # Lock held. Calls arriving from now on wait on fresh events.
        self._released.set()
        self._released = threading.Event()
        self._gate.set()
        self._gate = threading.Event()

    def devices(self) -> list[str]:
        with self._lock:
            return sorted(self._devices)

    def set_durations(self, seconds: Mapping[str, float]) -> dict[str, float]:
        """Claim that these operations take this long (in estimated_completion), until reset."""
        with self._lock:
            self._durations.update({op: timedelta(seconds=s) for op, s in seconds.items()})
            return {op: d.total_seconds() for op, d in self._durations.items()}

    def set_devices(self, devices: Iterable[str]) -> list[str]:
        with self._lock:
            self._devices = set(devices)
            return sorted(self._devices)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def create_fake_api(
    token: str = "fake-token",
    devices: Iterable[str] | None = DEFAULT_DEVICES,
    *,
    accept_any_device: bool = False,
) -> Flask:
    """The fake as a Flask app. devices=None starts with an empty inventory; the state is in
    app.extensions["fake_api"] (a FakeApiState).

    PUT /api/v1/inventory_device_name_operation/<name>/ answers as the contract says. Control:
    GET|DELETE /_fake/calls; GET|POST|DELETE /_fake/behaviour (POST {"status", "delay",
    "device", "times", "body", "hold"}); POST /_fake/gate (held calls go on); PUT /_fake/token
    ({"token": "..."}: the token accepted from now on); GET|PUT /_fake/devices
    ({"devices": [...]}); PUT /_fake/durations ({"sync": 2, ...}: the seconds each operation
    claims to take in estimated_completion); POST /_fake/reset (also restores the starting
    token and durations).
    """
    state = FakeApiState(token, devices or (), accept_any_device)
    app = Flask(__name__)
    app.extensions["fake_api"] = state

    @app.before_request
    def operation_calls() -> Response | None:
        # Handled before Flask's routing, which decodes the path first: a name holding "%2F"
        # would become two segments, and merge_slashes would redirect "//".
        raw_path = _raw_path(request.environ)
        if raw_path.startswith(OPERATION_PREFIX):
            return _operation_call(state, raw_path)
        return None

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> WerkzeugResponse:
        response = exc.get_response()
        response.set_data(json.dumps({"error": exc.description or exc.name}))
        response.content_type = "application/json"
        return response

    app.register_blueprint(_control(state))
    return app


def _control(state: FakeApiState) -> Blueprint:
    """The test-facing endpoints under /_fake: read calls, queue behaviours, open the gate."""
    control = Blueprint("fake_control", __name__, url_prefix=CONTROL_PREFIX)

    @control.get("/calls")
    def get_calls() -> Response:
        return jsonify(calls=state.calls())

    @control.delete("/calls")
    def delete_calls() -> Response:
        return jsonify(cleared=state.clear_calls())

    @control.get("/behaviour")
    def get_behaviours() -> Response:
        return jsonify(behaviours=state.behaviours())

    @control.post("/behaviour")
    def post_behaviour() -> tuple[Response, int]:
        spec = request.get_json(silent=True)
        try:
            if not isinstance(spec, dict):
                raise ValueError("the body must be a JSON object")
            behaviour = Behaviour.from_spec(spec)
        except ValueError as exc:
            return jsonify(error=str(exc)), 400
        queued = state.add_behaviour(behaviour)
        return jsonify(behaviour=asdict(behaviour), queued=queued), 201

    @control.delete("/behaviour")
    def delete_behaviours() -> Response:
        state.clear_behaviours()
        return jsonify(behaviours=[])

    @control.post("/gate")
    def post_gate() -> Response:
        state.open_gate()
        return jsonify(gate="opened")

    @control.put("/token")
    def put_token() -> Response | tuple[Response, int]:
        spec = request.get_json(silent=True)
        token = spec.get("token") if isinstance(spec, dict) else None
        if not isinstance(token, str) or not token:
            return jsonify(error='the body must be {"token": "<a non-empty string>"}'), 400
        state.set_token(token)
        return jsonify(token="changed")  # not echoed: the fake keeps tokens out of answers too

    @control.post("/reset")
    def post_reset() -> Response:
        state.reset()
        return jsonify(devices=state.devices())

    @control.get("/devices")
    def get_devices() -> Response:
        return jsonify(devices=state.devices())

    @control.put("/devices")
    def put_devices() -> Response | tuple[Response, int]:
        spec = request.get_json(silent=True)
        names = spec.get("devices") if isinstance(spec, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return jsonify(error='the body must be {"devices": [names...]}'), 400
        return jsonify(devices=state.set_devices(names))

    @control.put("/durations")
    def put_durations() -> Response | tuple[Response, int]:
        spec = request.get_json(silent=True)
        if not isinstance(spec, dict) or not all(
            op in OPERATION_DURATIONS and _is_seconds(s) for op, s in spec.items()
        ):
            return jsonify(error='the body must be {"<operation>": <seconds >= 0>, ...} for'
                                 f' operations of {", ".join(OPERATION_DURATIONS)}'), 400
        return jsonify(durations=state.set_durations(spec))

    return control


def _is_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e6


def _raw_path(environ: Mapping[str, Any]) -> str:
    """The request path exactly as on the wire, percent-encoding intact, without the query."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw is None:
        # Servers without RAW_URI give only the decoded path: an encoded "/" cannot be told apart.
        return quote(environ.get("PATH_INFO", "").encode("latin-1"), safe="/")
    # WSGI hands over the bytes of the request line as latin-1.
    raw = raw.encode("latin-1").decode("utf-8", errors="backslashreplace")
    if not raw.startswith("/"):
        raw = urlsplit(raw).path  # absolute form: http://host/path
    return raw.split("?", 1)[0]


def _operation_call(state: FakeApiState, raw_path: str) -> Response:
    arrived = time.time()
    segment = raw_path[len(OPERATION_PREFIX) :]
    name = segment[:-1] if segment.endswith("/") else segment
    is_operation_path = bool(name) and segment.endswith("/") and "/" not in name
    body = request.get_data()
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    arrival = state.arrive(
        {
            "method": request.method,
            "raw_path": raw_path,
            "device": unquote(name),
            "authorization": request.headers.get("Authorization"),
            "content_type": request.headers.get("Content-Type"),
            # Tells which of several client processes sent it (their socket's port).
            "client_port": request.environ.get("REMOTE_PORT"),
            "body": body.decode("utf-8", errors="replace"),
            "json": parsed,
            "time": arrived,
        },
        operation=is_operation_path and request.method == "PUT",
    )
    record, behaviour = arrival.record, arrival.behaviour
    payload: str | dict[str, Any]
    if not is_operation_path:
        status, payload = 404, {"error": "unknown path"}
    elif request.method != "PUT":
        status, payload = 405, {"error": f"method {request.method} not allowed: use PUT"}
    elif behaviour is not None and _interrupted(behaviour, arrival):
        status = 503
        payload = {"error": "the fake API was reset while this call was delayed or held"}
    elif behaviour is not None and behaviour.status is not None:
        status = behaviour.status
        payload = behaviour.body if behaviour.body is not None else _error_body(status)
    else:
        # The token is read only now, so a held call meets the token of the moment it goes on.
        status, payload = _process(state, record["device"], record["authorization"], parsed)
    state.finish(record, status, payload)
    if isinstance(payload, str):
        response = Response(payload, status, mimetype="text/plain")
    else:
        response = jsonify(payload)
        response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    elif status == 405:
        response.headers["Allow"] = "PUT"
    return response


def _interrupted(behaviour: Behaviour, arrival: Arrival) -> bool:
    """Hold the call at the gate and/or delay it, as the behaviour says; True when a reset or
    the shutdown ended the wait instead."""
    if behaviour.hold:
        arrival.gate.wait()
        if arrival.released.is_set():
            return True
    return bool(behaviour.delay) and arrival.released.wait(behaviour.delay)


def _process(
    state: FakeApiState, device: str, authorization: str | None, body: Any
) -> tuple[int, dict[str, Any]]:
    """What the real API does with a PUT that no behaviour intercepted."""
    if authorization != f"Bearer {state.token}":
        return 401, {"error": _ERROR_MESSAGES[401]}
    if not isinstance(body, dict) or not isinstance(body.get("operation"), str):
        return 400, {"error": 'malformed body: expected {"operation": "<type>"}'}
    operation = body["operation"]
    if operation not in OPERATION_DURATIONS:
        return 400, {
            "error": f"invalid operation type {operation!r}",
            "valid_operations": list(OPERATION_DURATIONS),
        }
    answer = state.initiate(device, operation)
    if answer is None:
        return 404, {"error": _ERROR_MESSAGES[404], "device_name": device}
    return 200, answer


def _error_body(status: int) -> dict[str, Any]:
    message = _ERROR_MESSAGES.get(status) or HTTP_STATUS_CODES.get(status, "unknown").lower()
    return {"error": message} if status >= 400 else {"detail": message}


class FakeApiServer:
    """A fake API served on a background thread; `url` is the base URL for a DeviceClient."""

    def __init__(self, server: BaseWSGIServer, app: Flask) -> None:
        self.app = app
        self.state: FakeApiState = app.extensions["fake_api"]
        self.host = server.host
        self.port = server.server_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}{API_PREFIX}"
        self.control_url = f"http://{host}:{self.port}{CONTROL_PREFIX}"
        self._server = server
        # A short poll interval: shutdown() waits for the serving loop to notice.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-api-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._stopped = False

    def calls(self) -> list[dict[str, Any]]:
        """The calls received so far, as GET /_fake/calls lists them."""
        return self.state.calls()

    def add_behaviour(self, **spec: Any) -> None:
        """Queue a behaviour, as POST /_fake/behaviour does (same keys, same checks)."""
        self.state.add_behaviour(Behaviour.from_spec(spec))

    def set_devices(self, devices: Iterable[str]) -> None:
        self.state.set_devices(devices)

    def open_gate(self) -> None:
        """Let the calls held by a `hold` behaviour go on, as POST /_fake/gate does."""
        self.state.open_gate()

    def set_token(self, token: str) -> None:
        """Accept another token from now on, as PUT /_fake/token does."""
        self.state.set_token(token)

    def reset(self) -> None:
        """Forget calls and behaviours, restore the inventory and token, wake waiting calls."""
        self.state.reset()

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.state.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FakeApiServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"FakeApiServer(url={self.url!r})"


def start_fake_api_in_thread(
    host: str = "127.0.0.1", port: int = 0, **kwargs: Any
) -> FakeApiServer:
    """Serve a fake API (create_fake_api(**kwargs)) on a background thread; port 0 picks one."""
    app = create_fake_api(**kwargs)
    return FakeApiServer(make_server(host, port, app, threaded=True), app)


def serve_fake_api(host: str, port: int, **kwargs: Any) -> None:
    """Serve a fake API (create_fake_api(**kwargs)) in the foreground until interrupted."""
    app = create_fake_api(**kwargs)
    state: FakeApiState = app.extensions["fake_api"]
    server = make_server(host, port, app, threaded=True)
    inventory = "any device" if state.accept_any_device else f"{len(state.devices())} devices"
    # The fake token is printed on purpose: it is what a demo user needs to call the fake.
    logger.info(
        "fake device API on http://%s:%d%s, token %s, %s",
        host,
        server.server_port,
        API_PREFIX,
        state.token,
        inventory,
    )
    try:
        server.serve_forever()
    finally:
        state.release()
        server.server_close()
