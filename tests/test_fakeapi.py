"""The fake device API, served for real on a local port and driven over HTTP with requests."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from http.client import HTTPConnection
from typing import Any
from unittest.mock import MagicMock

import pytest
import requests

from bridge.fakeapi import DEFAULT_DEVICES, FakeApiServer, serve_fake_api, start_fake_api_in_thread
from tests.conftest import DEVICES, TOKEN, Fake
from tests.helpers import wait_until

INVENTORY = [*DEFAULT_DEVICES, *DEVICES]  # what the shared fake server starts with

AUTH = {"Authorization": f"Bearer {TOKEN}"}
OP_PATH = "/api/v1/inventory_device_name_operation/"


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def put_op(
    http: requests.Session,
    server: FakeApiServer,
    device: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> requests.Response:
    return http.put(
        f"{server.url}/inventory_device_name_operation/{device}/",
        json=body if data is None else None,
        data=data,
        headers=AUTH if headers is None else headers,
    )


def test_operation_answer_has_the_contract_shape(
    fake_api: FakeApiServer, http: requests.Session
) -> None:
    response = put_op(http, fake_api, "office-router-01", {"operation": "reboot"})

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {
        "id",
        "operation",
        "device_name",
        "status",
        "timestamp",
        "execution_id",
        "estimated_completion",
    }
    assert body["id"] == 1
    assert body["operation"] == "reboot"
    assert body["device_name"] == "office-router-01"
    assert body["status"] == "initiated"
    assert re.fullmatch(r"op_[0-9a-f]{12}", body["execution_id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["timestamp"])
    started = datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    done = datetime.strptime(body["estimated_completion"], "%Y-%m-%dT%H:%M:%SZ")
    assert done - started == timedelta(seconds=120)


def test_operation_ids_count_up(fake_api: FakeApiServer, http: requests.Session) -> None:
    ids = [
        put_op(http, fake_api, device, {"operation": "sync"}).json()["id"]
        for device in DEFAULT_DEVICES
    ]
    assert ids == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN} "},
    ],
    ids=["missing", "wrong", "no-scheme", "basic", "trailing-space"],
)
def test_token_is_required(
    fake_api: FakeApiServer, http: requests.Session, headers: dict[str, str]
) -> None:
    response = put_op(http, fake_api, "office-router-01", {"operation": "reboot"}, headers=headers)

    assert response.status_code == 401
    assert response.json() == {"error": "missing, invalid or expired token"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b'{"operation": "rebot"}', "invalid operation type 'rebot'"),
        (b"operation=reboot", 'malformed body: expected {"operation": "<type>"}'),
        (b'["reboot"]', 'malformed body: expected {"operation": "<type>"}'),
        (b"{}", 'malformed body: expected {"operation": "<type>"}'),
        (b'{"operation": 5}', 'malformed body: expected {"operation": "<type>"}'),
        (b"", 'malformed body: expected {"operation": "<type>"}'),
    ],
)
def test_bad_body_is_400(
    fake_api: FakeApiServer, http: requests.Session, data: bytes, error: str
) -> None:
    response = put_op(http, fake_api, "office-router-01", data=data)

    assert response.status_code == 400
    assert response.json()["error"] == error


def test_invalid_operation_lists_the_valid_ones(
    fake_api: FakeApiServer, http: requests.Session
) -> None:
    response = put_op(http, fake_api, "office-router-01", {"operation": "explode"})

    assert response.json() == {
        "error": "invalid operation type 'explode'",
        "valid_operations": ["sync", "reconf", "reboot", "device_factory", "factory"],
    }


def test_unknown_device_is_404(fake_api: FakeApiServer, http: requests.Session) -> None:
    response = put_op(http, fake_api, "no-such-device", {"operation": "sync"})

    assert response.status_code == 404
    assert response.json() == {
        "error": "device not found in inventory",
        "device_name": "no-such-device",
    }


def test_accept_any_device(http: requests.Session) -> None:
    with start_fake_api_in_thread(token=TOKEN, devices=None, accept_any_device=True) as server:
        response = put_op(http, server, "anything-at-all", {"operation": "sync"})

    assert response.status_code == 200
    assert response.json()["device_name"] == "anything-at-all"


def test_no_devices_means_an_empty_inventory(http: requests.Session) -> None:
    with start_fake_api_in_thread(token=TOKEN, devices=None) as server:
        listed = http.get(f"{server.control_url}/devices").json()
        response = put_op(http, server, "office-router-01", {"operation": "sync"})

    assert listed == {"devices": []}
    assert response.status_code == 404


def test_inventory_can_be_replaced_and_reset(
    fake_api: FakeApiServer, http: requests.Session
) -> None:
    assert http.get(f"{fake_api.control_url}/devices").json() == {
        "devices": sorted(INVENTORY)
    }

    replaced = http.put(f"{fake_api.control_url}/devices", json={"devices": ["r2", "r1"]})
    assert replaced.json() == {"devices": ["r1", "r2"]}
    assert put_op(http, fake_api, "r1", {"operation": "sync"}).status_code == 200
    assert put_op(http, fake_api, "office-router-01", {"operation": "sync"}).status_code == 404

    fake_api.reset()
    assert http.get(f"{fake_api.control_url}/devices").json() == {
        "devices": sorted(INVENTORY)
    }


def test_inventory_replacement_must_be_a_list_of_names(
    fake_api: FakeApiServer, http: requests.Session
) -> None:
    response = http.put(f"{fake_api.control_url}/devices", json={"devices": "r1"})

    assert response.status_code == 400
    assert response.json() == {"error": 'the body must be {"devices": [names...]}'}


def test_status_behaviour_applies_to_the_next_n_calls(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    fake.behave(status=503, times=2)

    statuses = [put_op(http, fake_api, "office-router-01", {"operation": "sync"}) for _ in range(3)]

    assert [r.status_code for r in statuses] == [503, 503, 200]
    assert statuses[0].json() == {"error": "service unavailable"}
    assert http.get(f"{fake_api.control_url}/behaviour").json() == {"behaviours": []}


def test_status_behaviour_without_times_lasts_until_reset(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    fake.behave(status=409)

    first = put_op(http, fake_api, "office-router-01", {"operation": "reboot"})
    second = put_op(http, fake_api, "office-router-02", {"operation": "reboot"})
    assert (first.status_code, second.status_code) == (409, 409)
    assert first.json() == {"error": "device is offline or another operation is in progress"}

    assert http.delete(f"{fake_api.control_url}/behaviour").json() == {"behaviours": []}
    assert put_op(http, fake_api, "office-router-01", {"operation": "reboot"}).status_code == 200


def test_status_behaviour_for_one_device(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    fake.behave(status=422, device="office-router-01")

    targeted = put_op(http, fake_api, "office-router-01", {"operation": "reboot"})
    other = put_op(http, fake_api, "office-router-02", {"operation": "reboot"})

    assert targeted.status_code == 422
    assert targeted.json() == {"error": "device cannot perform the operation (device offline)"}
    assert other.status_code == 200


def test_status_behaviour_ignores_the_token(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    # Like a load balancer in front of the API: it answers before anything is checked.
    fake.behave(status=502, times=1)

    response = put_op(http, fake_api, "office-router-01", {"operation": "reboot"}, headers={})

    assert response.status_code == 502
    assert response.json() == {"error": "bad gateway"}


def test_behaviours_apply_first_queued_first(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    fake.behave(status=500, times=1)
    fake.behave(status=409, times=1)

    statuses = [
        put_op(http, fake_api, "office-router-01", {"operation": "sync"}).status_code
        for _ in range(3)
    ]

    assert statuses == [500, 409, 200]


def test_behaviour_body_is_sent_verbatim(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    fake.behave(status=200, body="<html>queued</html>", times=1)

    response = put_op(http, fake_api, "office-router-01", {"operation": "sync"})

    assert response.status_code == 200
    assert response.text == "<html>queued</html>"
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_delay_behaviour_slows_the_normal_answer(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    fake.behave(delay=0.3, times=1)

    response = put_op(http, fake_api, "office-router-01", {"operation": "sync"})

    assert response.status_code == 200
    assert response.elapsed >= timedelta(seconds=0.3)
    call = fake_api.calls()[0]
    assert call["finished"] - call["time"] >= 0.3


def test_delay_with_status(fake_api: FakeApiServer, fake: Fake, http: requests.Session) -> None:
    fake.behave(status=504, delay=0.2, times=1)

    response = put_op(http, fake_api, "office-router-01", {"operation": "sync"})

    assert response.status_code == 504
    assert response.json() == {"error": "gateway timeout"}
    assert response.elapsed >= timedelta(seconds=0.2)


def test_queued_behaviours_are_listed(fake_api: FakeApiServer, http: requests.Session) -> None:
    posted = http.post(
        f"{fake_api.control_url}/behaviour", json={"status": 503, "device": "r1", "times": 3}
    )

    assert posted.json() == {
        "behaviour": {"status": 503, "delay": 0.0, "device": "r1", "times": 3, "body": None,
                      "hold": False},
        "queued": 1,
    }
    assert http.get(f"{fake_api.control_url}/behaviour").json() == {
        "behaviours": [
            {
                "status": 503,
                "delay": 0.0,
                "device": "r1",
                "times": 3,
                "body": None,
                "hold": False,
                "times_left": 3,
            }
        ]
    }


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({}, "a behaviour needs a status, a delay or a hold"),
        ({"hold": False}, "a behaviour needs a status, a delay or a hold"),
        ({"hold": "yes"}, "hold must be true or false"),
        ({"status": 700}, "status must be an integer from 200 to 599"),
        ({"status": "503"}, "status must be an integer from 200 to 599"),
        ({"status": True}, "status must be an integer from 200 to 599"),
        ({"delay": -1}, "delay must be a number of seconds >= 0"),
        ({"delay": 1e7}, "delay must be a number of seconds >= 0"),
        ({"status": 503, "times": 0}, "times must be an integer >= 1"),
        ({"status": 503, "device": 7}, "device must be a string"),
        ({"delay": 1, "body": "x"}, "body must be a string, and comes with a status"),
        ({"status": 503, "hang": True}, "unknown behaviour keys: hang"),
    ],
)
def test_invalid_behaviour_is_400(
    fake_api: FakeApiServer, http: requests.Session, spec: dict[str, Any], error: str
) -> None:
    response = http.post(f"{fake_api.control_url}/behaviour", json=spec)

    assert response.status_code == 400
    assert response.json() == {"error": error}


def test_behaviour_body_must_be_a_json_object(
    fake_api: FakeApiServer, http: requests.Session
) -> None:
    response = http.post(f"{fake_api.control_url}/behaviour", data="status=503")

    assert response.status_code == 400
    assert response.json() == {"error": "the body must be a JSON object"}


def test_every_call_is_recorded_as_received(
    fake_api: FakeApiServer, http: requests.Session
) -> None:
    fake_api.set_devices(["a/b"])
    put_op(http, fake_api, "a%2Fb", {"operation": "reboot"})
    put_op(http, fake_api, "a%2Fb", data=b"junk", headers={"Authorization": "Bearer nope"})

    calls = http.get(f"{fake_api.control_url}/calls").json()["calls"]

    assert [
        {k: v for k, v in call.items()
         if k not in ("time", "finished", "response", "client_port")}
        for call in calls
    ] == [
        {
            "seq": 1,
            "method": "PUT",
            "raw_path": f"{OP_PATH}a%2Fb/",
            "device": "a/b",
            "authorization": f"Bearer {TOKEN}",
            "content_type": "application/json",
            "body": '{"operation": "reboot"}',
            "json": {"operation": "reboot"},
            "status": 200,
        },
        {
            "seq": 2,
            "method": "PUT",
            "raw_path": f"{OP_PATH}a%2Fb/",
            "device": "a/b",
            "authorization": "Bearer nope",
            "content_type": None,
            "body": "junk",
            "json": None,
            "status": 401,
        },
    ]
    assert calls[0]["response"]["device_name"] == "a/b"
    assert calls[1]["response"] == {"error": "missing, invalid or expired token"}
    assert all(call["time"] <= call["finished"] for call in calls)
    assert all(isinstance(call["client_port"], int) for call in calls)


def test_raw_path_keeps_the_encoding_the_client_chose(fake_api: FakeApiServer) -> None:
    # Sent with http.client, which (unlike requests) sends the path as given: lower-case escapes
    # and escaped unreserved characters must be recorded untouched.
    connection = HTTPConnection("127.0.0.1", fake_api.port, timeout=5)
    try:
        connection.request("PUT", f"{OP_PATH}%2e%2e%2fx%41/", body=b"{}", headers=AUTH)
        assert connection.getresponse().status == 400
    finally:
        connection.close()

    call = fake_api.calls()[0]
    assert call["raw_path"] == f"{OP_PATH}%2e%2e%2fx%41/"
    assert call["device"] == "../xA"
    assert call["status"] == 400


def test_reset_restores_everything(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    put_op(http, fake_api, "office-router-01", {"operation": "sync"})
    fake.behave(status=503)
    fake_api.set_devices(["r1"])
    fake_api.set_token("another-token")

    assert http.post(f"{fake_api.control_url}/reset").json() == {"devices": sorted(INVENTORY)}
    assert fake_api.calls() == []
    answer = put_op(http, fake_api, "office-router-01", {"operation": "sync"})
    assert (answer.status_code, answer.json()["id"]) == (200, 1)


def test_calls_can_be_cleared(fake_api: FakeApiServer, http: requests.Session) -> None:
    put_op(http, fake_api, "office-router-01", {"operation": "sync"})
    put_op(http, fake_api, "office-router-02", {"operation": "sync"})

    assert http.delete(f"{fake_api.control_url}/calls").json() == {"cleared": 2}
    assert http.get(f"{fake_api.control_url}/calls").json() == {"calls": []}


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "PATCH"])
def test_other_methods_are_405_and_recorded(
    fake_api: FakeApiServer, http: requests.Session, method: str
) -> None:
    response = http.request(method, f"{fake_api.url}/inventory_device_name_operation/r1/")

    assert response.status_code == 405
    assert response.headers["Allow"] == "PUT"
    assert response.json() == {"error": f"method {method} not allowed: use PUT"}
    assert [(c["method"], c["status"]) for c in fake_api.calls()] == [(method, 405)]


def test_behaviours_do_not_apply_to_other_methods(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    fake.behave(status=503, times=1)

    assert http.get(f"{fake_api.url}/inventory_device_name_operation/r1/").status_code == 405
    assert put_op(http, fake_api, "r1", {"operation": "sync"}).status_code == 503


@pytest.mark.parametrize(
    "path",
    [
        f"{OP_PATH}a/b/",  # two segments: not the operation path
        f"{OP_PATH}office-router-01",  # trailing slash missing
        f"{OP_PATH}/",  # no name
    ],
)
def test_paths_under_the_operation_prefix_that_are_not_one_segment_are_404(
    fake_api: FakeApiServer, http: requests.Session, path: str
) -> None:
    response = http.put(f"http://127.0.0.1:{fake_api.port}{path}", json={"operation": "sync"})

    assert response.status_code == 404
    assert response.json() == {"error": "unknown path"}
    assert [(c["raw_path"], c["status"]) for c in fake_api.calls()] == [(path, 404)]


def test_unknown_paths_are_404_json_and_not_recorded(
    fake_api: FakeApiServer, http: requests.Session
) -> None:
    response = http.get(f"{fake_api.url}/devices/")

    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert set(response.json()) == {"error"}
    assert fake_api.calls() == []


def test_server_urls(fake_api: FakeApiServer) -> None:
    assert fake_api.port > 0
    assert fake_api.url == f"http://127.0.0.1:{fake_api.port}/api/v1"
    assert fake_api.control_url == f"http://127.0.0.1:{fake_api.port}/_fake"


def test_serve_fake_api_logs_how_to_reach_it(caplog: pytest.LogCaptureFixture, mocker: Any) -> None:
    # serve_forever() would block: the server is replaced, the app and the log line are real.
    server = MagicMock(server_port=8099)
    make_server = mocker.patch("bridge.fakeapi.make_server", return_value=server)
    caplog.set_level(logging.INFO, logger="bridge.fakeapi")

    serve_fake_api("127.0.0.1", 8099, token="demo-token")

    assert make_server.call_args.args[:2] == ("127.0.0.1", 8099)
    assert make_server.call_args.kwargs == {"threaded": True}
    assert caplog.messages == [
        "fake device API on http://127.0.0.1:8099/api/v1, token demo-token, 5 devices"
    ]
    server.serve_forever.assert_called_once_with()
    server.server_close.assert_called_once_with()


def held_call(server: FakeApiServer) -> tuple[ThreadPoolExecutor, Future[requests.Response]]:
    """Send one call from a thread (with its own session) and wait until the fake has it."""

    def call() -> requests.Response:
        with requests.Session() as own:
            return put_op(own, server, "office-router-01", {"operation": "sync"})

    pool = ThreadPoolExecutor(1)
    future = pool.submit(call)
    wait_until(lambda: len(server.calls()) == 1, what="the call to reach the fake")
    return pool, future


def test_a_held_call_waits_for_the_gate(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    fake.behave(hold=True, times=1)
    pool, future = held_call(fake_api)
    with pool:
        assert not future.done() and fake_api.calls()[0]["status"] is None
        assert http.post(f"{fake_api.control_url}/gate").json() == {"gate": "opened"}
        assert future.result(timeout=10).status_code == 200
    # The gate closes again for later held calls, and one opened with nobody waiting is a no-op.
    assert put_op(http, fake_api, "office-router-01", {"operation": "sync"}).status_code == 200


def test_a_held_call_meets_the_token_of_the_moment_it_goes_on(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    fake.behave(hold=True, times=1)
    pool, future = held_call(fake_api)
    with pool:
        answer = http.put(f"{fake_api.control_url}/token", json={"token": "rotated-token"})
        assert answer.json() == {"token": "changed"}
        fake_api.open_gate()
        assert future.result(timeout=10).status_code == 401
    rotated = {"Authorization": "Bearer rotated-token"}
    assert put_op(http, fake_api, "r1", {"operation": "sync"}, headers=rotated).status_code == 200


def test_a_held_call_with_a_status_answers_it_once_released(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    fake.behave(hold=True, status=401, times=1)
    pool, future = held_call(fake_api)
    with pool:
        fake_api.open_gate()
        assert future.result(timeout=10).status_code == 401


def test_a_reset_ends_a_held_call_with_503(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    fake.behave(hold=True)
    pool, future = held_call(fake_api)
    with pool:
        fake_api.reset()
        answer = future.result(timeout=10)
    assert (answer.status_code, answer.json()) == (
        503, {"error": "the fake API was reset while this call was delayed or held"})


@pytest.mark.parametrize("body", [{}, {"token": ""}, {"token": 7}, ["t"]])
def test_a_token_must_be_a_non_empty_string(
    fake_api: FakeApiServer, http: requests.Session, body: Any
) -> None:
    answer = http.put(f"{fake_api.control_url}/token", json=body)
    assert (answer.status_code, answer.json()) == (
        400, {"error": 'the body must be {"token": "<a non-empty string>"}'})
    assert put_op(http, fake_api, "r1", {"operation": "sync"}).status_code == 200


def test_durations_set_the_estimated_completion_until_reset(
    fake_api: FakeApiServer, fake: Fake, http: requests.Session
) -> None:
    def takes(operation: str) -> timedelta:
        body = put_op(http, fake_api, "office-router-01", {"operation": operation}).json()
        return (datetime.fromisoformat(body["estimated_completion"])
                - datetime.fromisoformat(body["timestamp"]))

    assert takes("reboot") == timedelta(seconds=120)
    fake.set_durations(reboot=2, sync=0)
    assert (takes("reboot"), takes("sync")) == (timedelta(seconds=2), timedelta(0))
    refused = http.put(f"{fake_api.control_url}/durations", json={"rebot": 1})
    assert refused.status_code == 400 and "operations of sync" in refused.json()["error"]
    assert http.put(f"{fake_api.control_url}/durations", json={"sync": -1}).status_code == 400
    http.post(f"{fake_api.control_url}/reset")
    assert takes("reboot") == timedelta(seconds=120)
