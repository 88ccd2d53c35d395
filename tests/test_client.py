"""DeviceClient against the fake device API over real HTTP: every answer of the contract, the
failures before and after sending, hostile device names, and the token kept out of sight."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, ProtocolError

from bridge.client import MAX_COMPLETION, CallResult, DeviceClient, Secret, TokenSource
from bridge.fakeapi import FakeApiServer
from tests.conftest import TOKEN, Fake
from tests.helpers import replace_file, wait_until

OP_PATH = "/api/v1/inventory_device_name_operation/"


@pytest.fixture
def client(fake_api: FakeApiServer) -> Iterator[DeviceClient]:
    with DeviceClient(fake_api.url, Secret(TOKEN), read_timeout=5.0) as device_client:
        yield device_client


@contextmanager
def raw_server(reply: bytes) -> Iterator[str]:
    """A TCP server that reads one request, writes `reply` as is and hangs up: for answers no
    HTTP framework gives (a hang-up, garbage, a body cut short). Yields a base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)  # a client that never comes must not hang the test run

    def serve() -> None:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        with connection:
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += connection.recv(65536)
            connection.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/api/v1"
    finally:
        thread.join(timeout=10)
        listener.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused, and nobody can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def result(
    outcome: str,
    kind: str,
    status_code: int | None,
    error: str,
    *,
    sent: bool = True,
    execution_id: str | None = None,
) -> dict[str, Any]:
    return {
        "outcome": outcome,
        "kind": kind,
        "status_code": status_code,
        "execution_id": execution_id,
        "error": error,
        "sent": sent,
    }


def fields(call_result: CallResult) -> dict[str, Any]:
    """A CallResult without elapsed, which only an injected clock makes exact."""
    return {
        "outcome": call_result.outcome,
        "kind": call_result.kind,
        "status_code": call_result.status_code,
        "execution_id": call_result.execution_id,
        "error": call_result.error,
        "sent": call_result.sent,
    }


# -- answers of the contract -------------------------------------------------------------------


def test_200_succeeds_with_the_execution_id(fake_api: FakeApiServer, client: DeviceClient) -> None:
    answer = client.operate("office-router-01", "reboot")

    execution_id = fake_api.calls()[0]["response"]["execution_id"]
    assert fields(answer) == result("succeeded", "ok", 200, "", execution_id=execution_id)
    assert execution_id.startswith("op_")
    assert answer.retryable is False


def test_a_200_says_how_long_the_operation_takes_by_the_apis_estimate(
    fake: Fake, client: DeviceClient
) -> None:
    assert client.operate("office-router-01", "reboot").completes_in == 120.0
    fake.set_durations(sync=3)
    assert client.operate("office-router-01", "sync").completes_in == 3.0
    # An estimate the answer lacks is unknown; an absurd one is bounded.
    fake.behave(status=200, body='{"execution_id": "op_1"}', times=1)
    assert client.operate("office-router-01", "sync").completes_in is None
    fake.behave(status=200, times=1, body='{"timestamp": "2027-01-01T00:00:00Z",'
                ' "estimated_completion": "9999-12-31T23:59:59Z"}')
    assert client.operate("office-router-01", "sync").completes_in == MAX_COMPLETION
    fake.behave(status=200, times=1, body='{"timestamp": "2027-01-01T00:00:00Z",'
                ' "estimated_completion": "2026-01-01T00:00:00Z"}')
    assert client.operate("office-router-01", "sync").completes_in == 0.0


def test_the_request_is_exactly_the_contract(fake_api: FakeApiServer, client: DeviceClient) -> None:
    client.operate("office-router-01", "factory")

    [call] = fake_api.calls()
    assert call["method"] == "PUT"
    assert call["raw_path"] == f"{OP_PATH}office-router-01/"
    assert call["authorization"] == f"Bearer {TOKEN}"
    assert call["content_type"] == "application/json"
    assert call["body"] == '{"operation": "factory"}'
    assert call["json"] == {"operation": "factory"}


def test_elapsed_comes_from_the_clock(fake_api: FakeApiServer) -> None:
    ticks = iter([100.0, 100.25])
    with DeviceClient(fake_api.url, Secret(TOKEN), clock=lambda: next(ticks)) as timed:
        answer = timed.operate("office-router-01", "sync")

    assert answer.elapsed == 0.25


def test_200_without_execution_id_still_succeeds(
    fake_api: FakeApiServer, client: DeviceClient
) -> None:
    fake_api.add_behaviour(status=200, times=1)  # answers {"detail": "ok"}

    assert fields(client.operate("office-router-01", "sync")) == result("succeeded", "ok", 200, "")


def test_200_with_a_body_that_is_not_json_still_succeeds(
    fake_api: FakeApiServer, client: DeviceClient
) -> None:
    fake_api.add_behaviour(status=200, body="<html>accepted</html>", times=1)

    assert fields(client.operate("office-router-01", "sync")) == result("succeeded", "ok", 200, "")


def test_400_invalid_operation(client: DeviceClient) -> None:
    answer = client.operate("office-router-01", "rebot")

    assert fields(answer) == result(
        "failed",
        "rejected",
        400,
        "HTTP 400: invalid operation or malformed body: "
        '{"error":"invalid operation type \'rebot\'",'
        '"valid_operations":["sync","reconf","reboot","device_factory","factory"]}',
    )
    assert answer.retryable is False


def test_401_wrong_token(fake_api: FakeApiServer) -> None:
    with DeviceClient(fake_api.url, Secret("some-other-token")) as wrong:
        answer = wrong.operate("office-router-01", "sync")

    assert fields(answer) == result(
        "failed",
        "unauthorized",
        401,
        "HTTP 401: missing, invalid or expired token: "
        '{"error":"missing, invalid or expired token"}',
    )
    assert answer.retryable is False


def test_404_unknown_device(client: DeviceClient) -> None:
    answer = client.operate("no-such-router", "sync")

    assert fields(answer) == result(
        "failed",
        "not_found",
        404,
        "HTTP 404: device not found in inventory: "
        '{"device_name":"no-such-router","error":"device not found in inventory"}',
    )
    assert answer.retryable is False


@pytest.mark.parametrize(
    ("status", "kind", "outcome", "retryable", "error"),
    [
        (
            409,
            "busy",
            "failed",
            True,
            "HTTP 409: device offline or busy with another operation: "
            '{"error":"device is offline or another operation is in progress"}',
        ),
        (
            422,
            "unprocessable",
            "failed",
            True,
            "HTTP 422: device cannot perform the operation now: "
            '{"error":"device cannot perform the operation (device offline)"}',
        ),
        (
            500,
            "server_error",
            "failed",
            True,
            'HTTP 500: server error: {"error":"failed to initiate operation"}',
        ),
        (
            503,
            "server_error",
            "failed",
            True,
            'HTTP 503: server error: {"error":"service unavailable"}',
        ),
        (
            599,
            "server_error",
            "failed",
            True,
            'HTTP 599: server error: {"error":"unknown"}',
        ),
        (
            418,
            "unexpected_status",
            "failed",
            False,
            'HTTP 418: unexpected status: {"error":"i\'m a teapot"}',
        ),
        (
            302,
            "unexpected_status",
            "failed",
            False,
            'HTTP 302: unexpected status: {"detail":"found"}',
        ),
        # Another 2xx: the API accepted something, so the operation may have started.
        (
            202,
            "unexpected_status",
            "unknown",
            False,
            'HTTP 202: unexpected status: {"detail":"accepted"}',
        ),
        (204, "unexpected_status", "unknown", False, "HTTP 204: unexpected status"),
    ],
)
def test_other_statuses(
    fake_api: FakeApiServer,
    client: DeviceClient,
    status: int,
    kind: str,
    outcome: str,
    retryable: bool,
    error: str,
) -> None:
    fake_api.add_behaviour(status=status, times=1)

    answer = client.operate("office-router-01", "reboot")

    assert fields(answer) == result(outcome, kind, status, error)
    assert answer.retryable is retryable


def test_redirects_are_not_followed(fake_api: FakeApiServer, client: DeviceClient) -> None:
    # A redirected PUT can turn into a GET or land elsewhere: one call, and it is reported.
    fake_api.add_behaviour(status=307, times=1)

    answer = client.operate("office-router-01", "reboot")

    assert (answer.kind, answer.status_code) == ("unexpected_status", 307)
    assert len(fake_api.calls()) == 1


def test_long_bodies_are_cut_and_flattened(fake_api: FakeApiServer, client: DeviceClient) -> None:
    fake_api.add_behaviour(status=502, body="<html>\n\t" + "x" * 300 + "\n</html>", times=1)

    answer = client.operate("office-router-01", "reboot")

    assert answer.error == "HTTP 502: server error: <html> " + "x" * 193 + "…"


# -- failures before and after sending ---------------------------------------------------------


def test_read_timeout_is_unknown_and_sent(fake_api: FakeApiServer) -> None:
    fake_api.add_behaviour(delay=30)  # woken by the fixture's reset, long after the timeout

    with DeviceClient(fake_api.url, Secret(TOKEN), read_timeout=0.2) as impatient:
        answer = impatient.operate("office-router-01", "reboot")

    assert fields(answer) == result(
        "unknown",
        "timeout",
        None,
        "no answer within 0.2s (read timeout): the operation may have been initiated",
    )
    assert answer.retryable is False
    assert answer.elapsed >= 0.2
    # The fake holds the call and has not answered it yet: it did arrive.
    [call] = fake_api.calls()
    assert (call["raw_path"], call["status"]) == (f"{OP_PATH}office-router-01/", None)


def test_connection_refused_is_not_sent(closed_port: int) -> None:
    with DeviceClient(f"http://127.0.0.1:{closed_port}/api/v1", Secret(TOKEN)) as refused:
        answer = refused.operate("office-router-01", "reboot")

    assert fields(answer) == result(
        "failed", "connect_error", None, f"connection refused: 127.0.0.1:{closed_port}", sent=False
    )
    assert answer.retryable is True


def test_tls_handshake_failure_is_not_sent(fake_api: FakeApiServer) -> None:
    # Speaking TLS to the plain-HTTP fake: the handshake fails before any request is written.
    with DeviceClient(f"https://127.0.0.1:{fake_api.port}/api/v1", Secret(TOKEN)) as tls:
        answer = tls.operate("office-router-01", "reboot")

    assert (answer.outcome, answer.kind, answer.status_code, answer.sent) == (
        "failed",
        "connect_error",
        None,
        False,
    )
    # OpenSSL 3.2 renamed the reason for this case.
    assert answer.error in {
        f"TLS handshake failed: 127.0.0.1:{fake_api.port}: WRONG_VERSION_NUMBER",
        f"TLS handshake failed: 127.0.0.1:{fake_api.port}: RECORD_LAYER_FAILURE",
    }
    assert fake_api.calls() == []


def test_hang_up_without_an_answer_is_unknown() -> None:
    with raw_server(b"") as url, DeviceClient(url, Secret(TOKEN)) as hung_up:
        answer = hung_up.operate("office-router-01", "reboot")

    assert fields(answer) == result(
        "unknown",
        "timeout",
        None,
        "connection closed before an answer: Remote end closed connection without response: "
        "the operation may have been initiated",
    )
    assert answer.retryable is False


def test_garbage_instead_of_http_is_unknown() -> None:
    with raw_server(b"HELLO THERE\r\n\r\n") as url, DeviceClient(url, Secret(TOKEN)) as garbled:
        answer = garbled.operate("office-router-01", "reboot")

    assert fields(answer) == result(
        "unknown",
        "invalid_response",
        None,
        "malformed HTTP answer: BadStatusLine: HELLO THERE",
    )


def test_200_whose_body_breaks_off_still_succeeds() -> None:
    reply = b'HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n{"execution_id": "op_1'
    with raw_server(reply) as url, DeviceClient(url, Secret(TOKEN)) as cut:
        answer = cut.operate("office-router-01", "reboot")

    assert fields(answer) == result("succeeded", "ok", 200, "")


def test_error_whose_body_breaks_off_keeps_its_status() -> None:
    reply = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 200\r\n\r\n{"
    with raw_server(reply) as url, DeviceClient(url, Secret(TOKEN)) as cut:
        answer = cut.operate("office-router-01", "reboot")

    assert fields(answer) == result(
        "failed", "server_error", 503, "HTTP 503: server error: (answer body could not be read)"
    )


# Faults a local server cannot produce on demand: raised from Session.request.


def test_connect_timeout_is_not_sent(mocker: Any) -> None:
    url = "http://api.example.test/api/v1/inventory_device_name_operation/r1/"
    mocker.patch.object(
        requests.Session,
        "request",
        side_effect=requests.ConnectTimeout(
            MaxRetryError(None, url, ConnectTimeoutError(None, "timed out"))  # type: ignore[arg-type]
        ),
    )
    with DeviceClient("http://api.example.test/api/v1", Secret(TOKEN)) as slow:
        answer = slow.operate("r1", "reboot")

    assert fields(answer) == result(
        "failed", "connect_error", None, "connect timeout after 3.05s: api.example.test", sent=False
    )
    assert answer.retryable is True


def test_connection_dropped_while_reading_is_unknown(mocker: Any) -> None:
    mocker.patch.object(
        requests.Session,
        "request",
        side_effect=requests.exceptions.ChunkedEncodingError(
            ProtocolError("Response ended prematurely")
        ),
    )
    with DeviceClient("http://api.example.test/api/v1", Secret(TOKEN)) as dropped:
        answer = dropped.operate("r1", "reboot")

    assert fields(answer) == result(
        "unknown",
        "timeout",
        None,
        "connection dropped while reading the answer: Response ended prematurely",
    )
    assert answer.retryable is False


def test_unforeseen_exceptions_do_not_escape(mocker: Any) -> None:
    mocker.patch.object(requests.Session, "request", side_effect=RuntimeError("boom"))
    with DeviceClient("http://api.example.test/api/v1", Secret(TOKEN)) as broken:
        answer = broken.operate("r1", "reboot")

    assert fields(answer) == result(
        "unknown", "invalid_response", None, "unexpected error: RuntimeError: boom"
    )


# -- device names ------------------------------------------------------------------------------

HOSTILE_NAMES = [
    " a/b",
    "x?y",
    "%2e%2e",
    "#",
    "a\nb",
    "\x00",
    "é",
    "a//b",
    "/",
    "../etc",
    "...",
    "a/../b",
    "r1/ HTTP/1.1\r\nX-Injected: 1",
    "ab/%?#é\n.." * 1000,  # 11,000 characters
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: repr(n)[:20])
def test_any_name_is_exactly_one_path_segment(
    fake_api: FakeApiServer, client: DeviceClient, name: str
) -> None:
    fake_api.set_devices([name])

    answer = client.operate(name, "sync")

    [call] = fake_api.calls()
    assert call["raw_path"] == f"{OP_PATH}{quote(name, safe='')}/"
    assert call["device"] == name
    assert answer.kind == "ok"


def test_url_for_encodes_the_name(client: DeviceClient, fake_api: FakeApiServer) -> None:
    assert (
        client.url_for("a/b?c#d")
        == f"{fake_api.url}/inventory_device_name_operation/a%2Fb%3Fc%23d/"
    )
    assert client.url_for("office-router-01") == (
        f"{fake_api.url}/inventory_device_name_operation/office-router-01/"
    )


def test_url_for_tolerates_a_trailing_slash_on_the_base_url() -> None:
    with DeviceClient("http://api.example.test/api/v1/", Secret(TOKEN)) as slashed:
        assert slashed.url_for("r1") == (
            "http://api.example.test/api/v1/inventory_device_name_operation/r1/"
        )


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_dot_and_empty_names_are_refused(
    fake_api: FakeApiServer, client: DeviceClient, name: str
) -> None:
    with pytest.raises(ValueError, match="cannot be addressed as a path segment"):
        client.url_for(name)

    answer = client.operate(name, "reboot")

    assert fields(answer) == result(
        "failed",
        "invalid_request",
        None,
        f"device name {name!r} cannot be addressed as a path segment",
        sent=False,
    )
    assert answer.retryable is False
    assert fake_api.calls() == []


def test_a_name_that_is_not_text_is_refused(client: DeviceClient) -> None:
    answer = client.operate("\udc80", "reboot")  # a lone surrogate: no UTF-8 for it

    assert (answer.outcome, answer.kind, answer.sent) == ("failed", "invalid_request", False)


# -- the token ---------------------------------------------------------------------------------


def test_secret_never_shows_itself() -> None:
    secret = Secret(TOKEN)

    assert repr(secret) == "Secret(***)"
    assert str(secret) == "Secret(***)"
    assert f"{secret}" == "Secret(***)"
    assert secret.reveal() == TOKEN


def test_secret_compares_by_value_and_is_not_hashable() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert bool(Secret("a")) is True
    assert bool(Secret("")) is False
    with pytest.raises(TypeError):
        hash(Secret("a"))


def test_client_repr_shows_the_url_not_the_token(fake_api: FakeApiServer) -> None:
    with DeviceClient(fake_api.url, Secret(TOKEN)) as shown:
        assert repr(shown) == f"DeviceClient(base_url='{fake_api.url}')"
        assert TOKEN not in repr(vars(shown))


def test_the_token_never_appears_in_errors(
    fake_api: FakeApiServer, client: DeviceClient, closed_port: int, mocker: Any
) -> None:
    # The server echoes the token in its error body; exceptions carry it in their text.
    fake_api.add_behaviour(status=500, body=f"bad header: Bearer {TOKEN}", times=1)
    answers = [client.operate("office-router-01", "reboot")]
    fake_api.add_behaviour(status=502, body="x" * 190 + TOKEN, times=1)  # straddles the cut
    answers.append(client.operate("office-router-01", "reboot"))
    with DeviceClient(f"http://127.0.0.1:{closed_port}/api/v1", Secret(TOKEN)) as refused:
        answers.append(refused.operate("office-router-01", "reboot"))
    mocker.patch.object(
        requests.Session,
        "request",
        side_effect=[
            requests.exceptions.InvalidHeader(f"Invalid header value b'Bearer {TOKEN}'"),
            requests.ConnectionError(f"failed with Authorization: Bearer {TOKEN}"),
            RuntimeError(f"token was {TOKEN}"),
        ],
    )
    answers += [client.operate("office-router-01", "reboot") for _ in range(3)]

    assert [a.error for a in answers] == [
        "HTTP 500: server error: bad header: Bearer ***",
        "HTTP 502: server error: " + "x" * 190 + "***",
        f"connection refused: 127.0.0.1:{closed_port}",
        "request could not be built: Invalid header value b'Bearer ***'",
        "connection closed before an answer: failed with Authorization: Bearer ***: "
        "the operation may have been initiated",
        "unexpected error: RuntimeError: token was ***",
    ]
    assert all(TOKEN not in repr(a) for a in answers)


@pytest.mark.parametrize(
    "token", [f"{TOKEN}\n", f" {TOKEN}", "tok en", "tøken", "tok\x00en"], ids=repr
)
def test_tokens_that_cannot_be_sent_are_refused_without_showing_them(token: str) -> None:
    with pytest.raises(ValueError, match="visible ASCII") as raised:
        DeviceClient("http://api.example.test/api/v1", Secret(token))

    assert token.strip() not in str(raised.value)


def test_the_token_must_be_a_secret() -> None:
    with pytest.raises(TypeError, match="token must be a Secret"):
        DeviceClient("http://api.example.test/api/v1", TOKEN)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token is empty"):
        DeviceClient("http://api.example.test/api/v1", Secret(""))


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        ("ftp://api.example.test/api/v1", "must be an http"),
        ("api.example.test/api/v1", "must be an http"),
        ("http://user:pw@api.example.test/api/v1", "must not contain credentials"),
        ("http://api.example.test/api/v1?x=1", "must not have a query"),
    ],
)
def test_bad_base_urls_are_refused(base_url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeviceClient(base_url, Secret(TOKEN))


# -- a token file that is rotated ---------------------------------------------------------------

OLD = "tok-old-Rr5t-never-show-me"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-token"
    path.write_text(OLD + "\n")
    return path


def sent_tokens(fake_api: FakeApiServer) -> list[tuple[str | None, int | None]]:
    return [(c["authorization"], c["status"]) for c in fake_api.calls()]


def test_a_replaced_token_file_is_sent_from_the_next_call(
    fake_api: FakeApiServer, token_file: Path
) -> None:
    with DeviceClient(fake_api.url, TokenSource.from_file(str(token_file))) as rotating:
        assert rotating.operate("office-router-01", "sync").kind == "unauthorized"
        replace_file(token_file, TOKEN + "\n")
        assert rotating.operate("office-router-01", "sync").kind == "ok"

    assert sent_tokens(fake_api) == [(f"Bearer {OLD}", 401), (f"Bearer {TOKEN}", 200)]


def test_a_kubernetes_secret_swap_is_seen(fake_api: FakeApiServer, tmp_path: Path) -> None:
    # The kubelet's layout: token -> ..data/token, ..data -> ..<timestamp>/; an update writes
    # a new timestamped directory and renames a new ..data link over the old one.
    mount = tmp_path / "secret"
    (mount / "..2026_01").mkdir(parents=True)
    (mount / "..2026_01" / "token").write_text(OLD)
    (mount / "..data").symlink_to("..2026_01")
    (mount / "token").symlink_to("..data/token")
    source = TokenSource.from_file(str(mount / "token"))
    with DeviceClient(fake_api.url, source) as rotating:
        assert rotating.operate("office-router-01", "sync").kind == "unauthorized"
        (mount / "..2026_02").mkdir()
        (mount / "..2026_02" / "token").write_text(TOKEN)
        (mount / "..data_tmp").symlink_to("..2026_02")
        os.replace(mount / "..data_tmp", mount / "..data")
        assert rotating.operate("office-router-01", "sync").kind == "ok"


def call_held_while(fake_api: FakeApiServer, client: DeviceClient, change: Any) -> CallResult:
    """Make one call that the fake holds at its gate while `change()` runs, then let it go."""
    fake_api.add_behaviour(hold=True, times=1)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.operate, "office-router-01", "sync")
        wait_until(fake_api.calls, what="the call to reach the fake")
        change()
        fake_api.open_gate()
        return future.result(timeout=10)


def test_a_401_for_a_token_replaced_during_the_call_is_retried_once_with_the_new_one(
    fake_api: FakeApiServer, token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with DeviceClient(fake_api.url, TokenSource.from_file(str(token_file))) as rotating:
        answer = call_held_while(
            fake_api, rotating, lambda: replace_file(token_file, TOKEN + "\n"))

    assert (answer.outcome, answer.kind, answer.status_code) == ("succeeded", "ok", 200)
    assert sent_tokens(fake_api) == [(f"Bearer {OLD}", 401), (f"Bearer {TOKEN}", 200)]
    assert "token file changed meanwhile: trying once more" in caplog.text
    assert OLD not in caplog.text and TOKEN not in caplog.text


@pytest.mark.parametrize("rewrite", [None, OLD + "\n", f"  {OLD}\n\n"], ids=repr)
def test_a_401_for_the_token_still_in_the_file_is_final(
    fake_api: FakeApiServer, token_file: Path, rewrite: str | None
) -> None:
    # The file unchanged, or rewritten with the same token: sending it again cannot help.
    with DeviceClient(fake_api.url, TokenSource.from_file(str(token_file))) as rotating:
        answer = call_held_while(
            fake_api, rotating, lambda: rewrite and replace_file(token_file, rewrite))

    assert (answer.outcome, answer.kind) == ("failed", "unauthorized")
    assert sent_tokens(fake_api) == [(f"Bearer {OLD}", 401)]


def test_the_retry_after_a_401_is_made_only_once(
    fake_api: FakeApiServer, token_file: Path
) -> None:
    with DeviceClient(fake_api.url, TokenSource.from_file(str(token_file))) as rotating:
        answer = call_held_while(
            fake_api, rotating, lambda: replace_file(token_file, "tok-also-wrong"))

    assert (answer.outcome, answer.kind) == ("failed", "unauthorized")
    assert sent_tokens(fake_api) == [(f"Bearer {OLD}", 401), ("Bearer tok-also-wrong", 401)]


@pytest.mark.parametrize(("content", "why"), [
    ("", "the file is empty"),
    ("\n  \n", "the file is empty"),
    ("tok en", "the token must be visible ASCII characters only (no spaces, no trailing"
               " newline)"),
    (b"\xff\xfe", "the file is not UTF-8 text"),
    (None, "the file cannot be read: No such file or directory"),
], ids=repr)
def test_a_replacement_that_cannot_be_used_keeps_the_previous_token(
    fake_api: FakeApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    content: str | bytes | None, why: str,
) -> None:
    path = tmp_path / "api-token"
    path.write_text(TOKEN)
    with DeviceClient(fake_api.url, TokenSource.from_file(str(path))) as rotating:
        if content is None:
            path.unlink()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            replace_file(path, content)
        with caplog.at_level(logging.WARNING, logger="bridge.client"):
            answers = [rotating.operate("office-router-01", "sync") for _ in range(2)]
        assert [a.kind for a in answers] == ["ok", "ok"]
        # Said once, not on every call, and never with the content.
        assert [r.getMessage() for r in caplog.records] == [
            f"token file {path} changed, but {why}: still sending the previous token"]
        replace_file(path, "tok-next-one")
        assert rotating.operate("office-router-01", "sync").kind == "unauthorized"

    assert fake_api.calls()[-1]["authorization"] == "Bearer tok-next-one"
    assert TOKEN not in caplog.text


def test_a_token_source_never_shows_its_token(fake_api: FakeApiServer, token_file: Path) -> None:
    source = TokenSource.from_file(str(token_file))
    assert repr(source) == f"TokenSource(path={str(token_file)!r})"
    assert repr(TokenSource(Secret(TOKEN))) == "TokenSource(***)"
    with DeviceClient(fake_api.url, source) as rotating:
        assert OLD not in repr(vars(rotating)) and OLD not in repr(vars(source))
        rotating.operate("office-router-01", "sync")
        replace_file(token_file, TOKEN)
        # A server that still echoes the token of before the rotation.
        fake_api.add_behaviour(status=500, body=f"{OLD} then {TOKEN}", times=1)
        answer = rotating.operate("office-router-01", "sync")

    assert answer.error == "HTTP 500: server error: *** then ***"


# -- sharing -----------------------------------------------------------------------------------


def test_one_client_serves_many_threads(fake_api: FakeApiServer, client: DeviceClient) -> None:
    devices = [f"router-{i:02d}" for i in range(24)]
    fake_api.set_devices(devices)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda d: client.operate(d, "sync"), devices))

    assert [a.kind for a in answers] == ["ok"] * 24
    assert len({a.execution_id for a in answers}) == 24
    assert sorted(c["device"] for c in fake_api.calls()) == devices


def test_a_session_passed_in_is_used_and_left_open(fake_api: FakeApiServer, mocker: Any) -> None:
    with requests.Session() as session:
        spy = mocker.spy(session, "request")
        with DeviceClient(fake_api.url, Secret(TOKEN), session=session) as shared:
            assert shared.operate("office-router-01", "sync").kind == "ok"
        assert spy.call_args.args == (
            "PUT",
            f"{fake_api.url}/inventory_device_name_operation/office-router-01/",
        )
        # Still usable after the client closed: its owner closes it.
        assert session.get(f"{fake_api.control_url}/devices").status_code == 200
