"""Client for the device operation API: one PUT per operation, every answer (or failure to get
one) classified into a CallResult that says whether the operation ran, failed, or may have run."""

from __future__ import annotations

import hmac
import http.client
import json
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from types import TracebackType
from urllib.parse import quote, urlsplit

import requests
from requests.auth import AuthBase
from urllib3.exceptions import (
    ClosedPoolError,
    EmptyPoolError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import ConnectTimeoutError as Urllib3ConnectTimeoutError
from urllib3.exceptions import NameResolutionError as Urllib3NameResolutionError
from urllib3.exceptions import ProxyError as Urllib3ProxyError

from bridge.payloads import rfc3339
from bridge.vocab import CallKind, CallOutcome

log = logging.getLogger(__name__)

OPERATION_PATH = "inventory_device_name_operation"

#: Kinds a caller may try again later: the operation was refused before it started.
RETRYABLE_KINDS = frozenset({
    CallKind.SERVER_ERROR, CallKind.CONNECT_ERROR, CallKind.BUSY, CallKind.UNPROCESSABLE,
})

#: How many characters of an answer's body an error message quotes.
BODY_EXCERPT_CHARS = 200

# An answer body is only ever quoted or scanned for execution_id: reading more is pointless and
# would let a broken server fill memory.
_MAX_BODY_BYTES = 1 << 20

# Far more than any bearer token; a larger file is a wrong path, not a token.
_MAX_TOKEN_FILE_BYTES = 64 * 1024

# Status -> (kind, what the contract says it means). 5xx and everything else are handled apart.
_STATUS_KINDS: dict[int, tuple[CallKind, str]] = {
    400: (CallKind.REJECTED, "invalid operation or malformed body"),
    401: (CallKind.UNAUTHORIZED, "missing, invalid or expired token"),
    404: (CallKind.NOT_FOUND, "device not found in inventory"),
    409: (CallKind.BUSY, "device offline or busy with another operation"),
    422: (CallKind.UNPROCESSABLE, "device cannot perform the operation now"),
}

# OpenSSL reasons met in the handshake, i.e. before the request was written: a bad certificate,
# or https:// pointed at a plain-HTTP port (WRONG_VERSION_NUMBER; RECORD_LAYER_FAILURE since
# OpenSSL 3.2, which could in theory also mean a stream corrupted later). Any other TLS error may
# have happened after sending, so it is treated as ambiguous.
_TLS_HANDSHAKE_REASONS = frozenset(
    {
        "CERTIFICATE_VERIFY_FAILED",
        "WRONG_VERSION_NUMBER",
        "RECORD_LAYER_FAILURE",
        "UNKNOWN_PROTOCOL",
        "UNSUPPORTED_PROTOCOL",
        "NO_PROTOCOLS_AVAILABLE",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_INTERNAL_ERROR",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    }
)

# requests errors raised while the request is being prepared: nothing went on the wire.
_NOT_SENT_REQUEST_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidHeader,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidJSONError,
    requests.exceptions.URLRequired,
)


class Secret:
    """A string that never shows itself: repr and str give 'Secret(***)'; reveal() returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret holds a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time, so comparing a guessed token leaks nothing through timing.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    # Equal secrets would hash alike, so a hash would be a cheap oracle for the value.
    __hash__ = None  # type: ignore[assignment]


def _check_sendable(token: Secret) -> None:
    """Refuse a token an Authorization header cannot carry; the message never shows it."""
    if not token:
        raise ValueError("the token is empty")
    # Checked ahead because requests would otherwise fail on each call, with the header value
    # (the token) in its error message.
    if not all("\x21" <= ch <= "\x7e" for ch in token.reveal()):
        raise ValueError(
            "the token must be visible ASCII characters only (no spaces, no trailing newline)"
        )


class TokenSource:
    """The device API token for each call: a fixed one, or the content of a file, read again
    whenever the file changes.

    Docker and Kubernetes rotate a mounted secret by replacing the file (Kubernetes swaps a
    `..data` symlink): get() stats the path, following links, and reads it again when its
    inode, size or times differ, so the next call sends the new token without a restart. A
    replacement that cannot be used (unreadable, empty, not a token) keeps the previous token,
    with a warning that never quotes the content. Thread-safe; repr shows the path, never the
    token.
    """

    def __init__(self, token: Secret | None = None, *, path: str | None = None) -> None:
        if (token is None) == (path is None):
            raise TypeError("give either a token or a path")
        self.path = path
        self._lock = threading.Lock()
        # The tokens held lately: error texts are scrubbed of them, as an answer to a call
        # that started before a rotation may echo the one it was sent with.
        self._recent: deque[Secret] = deque(maxlen=4)
        self._stamp: tuple[int, ...] | None = None
        self._version: float | None = None
        if token is not None:
            if not isinstance(token, Secret):
                raise TypeError("token must be a Secret, so that it never shows in logs")
            _check_sendable(token)
            self._token = token
        else:
            self._token, self._stamp, self._version = self._read()
        self._recent.append(self._token)

    @classmethod
    def from_file(cls, path: str) -> TokenSource:
        """The token held in `path`; ValueError (saying why, never what) if it is unusable."""
        return cls(path=path)

    def get(self) -> Secret:
        """The token to send now: the file's current one if it changed since the last look."""
        if self.path is None or _stamp(self.path) == self._stamp:
            return self._token
        with self._lock:
            stamp = _stamp(self.path)
            if stamp != self._stamp:
                self._reload(stamp)
            return self._token

    @property
    def version(self) -> float | None:
        """For a file, the modification time of the file the current token came from: it tells
        every process reading the file whether the token was replaced since a given moment."""
        return self._version

    def recent(self) -> tuple[Secret, ...]:
        return tuple(self._recent)

    def _reload(self, stamp: tuple[int, ...] | None) -> None:
        # Lock held. The stamp is set last: get() answers without the lock once it sees the
        # new stamp, and must then find the new token.
        try:
            token, read_stamp, version = self._read()
        except ValueError as exc:
            # Remembered all the same, so a broken file is reported once, not on every call,
            # and read again when it changes again.
            self._stamp = stamp
            log.warning("token file %s changed, but %s: still sending the previous token",
                        self.path, exc)
            return
        # The version follows the file even when the token is the same, so that every process
        # that has looked at the file since it last changed tells the same version.
        self._version = version
        if token != self._token:
            self._token = token
            self._recent.append(token)
            log.info("token file %s changed: the device API token is replaced from this call on",
                     self.path)
        self._stamp = read_stamp

    def _read(self) -> tuple[Secret, tuple[int, ...], float]:
        assert self.path is not None
        try:
            with open(self.path, "rb") as file:
                info = os.fstat(file.fileno())
                raw = file.read(_MAX_TOKEN_FILE_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"the file cannot be read: {exc.strerror or type(exc).__name__}") \
                from None
        if len(raw) > _MAX_TOKEN_FILE_BYTES:
            raise ValueError(f"the file is larger than {_MAX_TOKEN_FILE_BYTES} bytes")
        try:
            token = Secret(raw.decode("utf-8").strip())
        except UnicodeDecodeError:
            raise ValueError("the file is not UTF-8 text") from None
        if not token:
            raise ValueError("the file is empty")
        _check_sendable(token)
        return token, _stamp_of(info), info.st_mtime

    def __bool__(self) -> bool:
        return True  # a source always holds a usable token

    def __repr__(self) -> str:
        return f"TokenSource(path={self.path!r})" if self.path else "TokenSource(***)"


def _stamp(path: str) -> tuple[int, ...] | None:
    try:
        return _stamp_of(os.stat(path))  # follows symlinks: a swapped ..data shows
    except OSError:
        return None


def _stamp_of(info: os.stat_result) -> tuple[int, ...]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


@dataclass(frozen=True)
class CallResult:
    """What one operate() call did.

    outcome: "succeeded" (the API initiated the operation), "failed" (it certainly did not), or
    "unknown" (it may have: a timeout or a dropped connection after sending; never re-send such a
    call without a person or a rule deciding so).

    kind: "ok" (200); by status "rejected" (400), "unauthorized" (401), "not_found" (404), "busy"
    (409), "unprocessable" (422), "server_error" (5xx), "unexpected_status" (any other; outcome
    "unknown" for another 2xx, else "failed"); without an answer "connect_error" (never sent),
    "timeout" (read timeout or connection lost after sending), "invalid_response" (not HTTP, or a
    fault nobody foresaw); "invalid_request" when the call could not be built (a device name
    such as "." or ".."), so nothing was sent.
    """

    outcome: CallOutcome
    kind: CallKind
    status_code: int | None
    execution_id: str | None
    error: str
    sent: bool
    elapsed: float
    #: How long the API said the operation would take to complete (its answer's
    #: estimated_completion minus its timestamp), at most MAX_COMPLETION; None: it did not say.
    completes_in: float | None = None

    @property
    def retryable(self) -> bool:
        """True when the API refused the operation for a passing reason (5xx, busy/offline, or
        the request never reached it): trying again later is safe and may succeed."""
        return self.kind in RETRYABLE_KINDS


class _BearerAuth(AuthBase):
    # Passing auth= (rather than a plain header) also stops requests from replacing the header
    # with credentials from ~/.netrc, which it does whenever auth is None.
    def __init__(self, token: Secret) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token.reveal()}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


class DeviceClient:
    """Sends operations to the device API and classifies the answers; never raises from operate().

    Thread safety: one client may be shared by several threads. It holds one requests.Session
    (keep-alive connections from urllib3's thread-safe pool) and never changes the session after
    construction: every per-call setting (headers, auth, timeouts) is passed to request(). The
    pool keeps 10 connections per host; more concurrent calls open extra, short-lived connections.
    A session passed in must not retry requests (urllib3 Retry on reads or statuses): a retried
    PUT could start an operation twice.

    The token is asked of `token` (a TokenSource, or a fixed Secret) for every call. A 401 for a
    token that the source has replaced meanwhile (a rotated secret file) is tried once more with
    the new one: a 401 means the API refused before starting anything.

    read_timeout bounds each wait for data, not the whole answer.
    """

    def __init__(
        self,
        base_url: str,
        token: Secret | TokenSource,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        verify: bool | str = True,
        session: requests.Session | None = None,
        user_agent: str = "alert-bridge/0.1",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("base_url must not contain credentials: the token authenticates")
        if parts.query or parts.fragment:
            raise ValueError(f"base_url must not have a query or fragment, got {base_url!r}")
        tokens = token if isinstance(token, TokenSource) else TokenSource(token)
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self._base_url = base_url.rstrip("/")
        self._netloc = parts.netloc
        self._tokens = tokens
        self._timeout = (connect_timeout, read_timeout)
        self._verify = verify
        self._headers = {"Accept": "application/json", "User-Agent": user_agent}
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self._clock = clock

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def tokens(self) -> TokenSource:
        return self._tokens

    def url_for(self, device: str) -> str:
        """The operation URL for a device; its name is always exactly one path segment."""
        if not isinstance(device, str):
            raise TypeError(f"device name must be a str, not {type(device).__name__}")
        if device in ("", ".", ".."):
            # URL handling resolves dot segments ("/x/../" is "/"), so these would call
            # another path; an empty name would leave the segment out.
            raise ValueError(f"device name {device!r} cannot be addressed as a path segment")
        # safe="" encodes '/' too. The result holds only unreserved characters and %XX escapes
        # of reserved ones, which requests and urllib3 leave as they are when preparing the URL.
        return f"{self._base_url}/{OPERATION_PATH}/{quote(device, safe='')}/"

    def operate(self, device: str, operation: str) -> CallResult:
        """PUT {"operation": operation} for the device and classify what happened."""
        start = self._clock()
        try:
            url = self.url_for(device)
        except (TypeError, ValueError) as exc:
            return self._result(
                start, CallOutcome.FAILED, CallKind.INVALID_REQUEST, False, error=str(exc)
            )
        token = self._tokens.get()
        result = self._call(start, url, operation, token)
        if result.kind == CallKind.UNAUTHORIZED:
            renewed = self._tokens.get()
            if renewed != token:
                log.warning("the device API refused the token, and the token file changed "
                            "meanwhile: trying once more with the new token")
                result = self._call(start, url, operation, renewed)
        return result

    def _call(self, start: float, url: str, operation: str, token: Secret) -> CallResult:
        try:
            # stream=True: the status line is known before the body is read, so a body that
            # breaks off does not hide a 200 (the operation was initiated).
            with self._session.request(
                "PUT",
                url,
                json={"operation": operation},
                headers=self._headers,
                auth=_BearerAuth(token),
                timeout=self._timeout,
                verify=self._verify,
                allow_redirects=False,  # a redirected PUT may turn into a GET, or go elsewhere
                stream=True,
            ) as response:
                return self._answer(start, response)
        except requests.ConnectTimeout:
            error = f"connect timeout after {self._timeout[0]:g}s: {self._netloc}"
            return self._result(
                start, CallOutcome.FAILED, CallKind.CONNECT_ERROR, False, error=error
            )
        except requests.ReadTimeout:
            return self._result(
                start, CallOutcome.UNKNOWN, CallKind.TIMEOUT, True, error=self._no_answer_error()
            )
        except requests.ConnectionError as exc:
            return self._connection_failure(start, exc)
        except requests.exceptions.ChunkedEncodingError as exc:
            error = f"connection dropped while reading the answer: {self._cause(exc)}"
            return self._result(start, CallOutcome.UNKNOWN, CallKind.TIMEOUT, True, error=error)
        except _NOT_SENT_REQUEST_ERRORS as exc:
            error = f"request could not be built: {self._cause(exc)}"
            return self._result(
                start, CallOutcome.FAILED, CallKind.INVALID_REQUEST, False, error=error
            )
        except Exception as exc:  # operate() must never raise
            # Reached only by a fault nobody foresaw: whether the request went out is unknown.
            error = f"unexpected error: {type(exc).__name__}: {self._cause(exc)}"
            return self._result(
                start, CallOutcome.UNKNOWN, CallKind.INVALID_RESPONSE, True, error=error
            )

    def close(self) -> None:
        """Close the session, if this client created it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DeviceClient(base_url={self._base_url!r})"

    # -- classification ----------------------------------------------------------------------

    def _answer(self, start: float, response: requests.Response) -> CallResult:
        status = response.status_code
        body = _read_body(response)
        if status == 200:
            return replace(self._result(
                start, CallOutcome.SUCCEEDED, CallKind.OK, True, status=status,
                execution_id=_execution_id(body),
            ), completes_in=_completes_in(body))
        if status in _STATUS_KINDS:
            kind, meaning = _STATUS_KINDS[status]
        elif 500 <= status <= 599:
            kind, meaning = CallKind.SERVER_ERROR, "server error"
        else:
            kind, meaning = CallKind.UNEXPECTED_STATUS, "unexpected status"
        # Another 2xx means the API accepted something: the operation may well have started.
        outcome = CallOutcome.UNKNOWN if 200 <= status <= 299 else CallOutcome.FAILED
        error = f"HTTP {status}: {meaning}"
        excerpt = self._excerpt(body) if body is not None else "(answer body could not be read)"
        if excerpt:
            error = f"{error}: {excerpt}"
        return self._result(start, outcome, kind, True, status=status, error=error)

    def _connection_failure(self, start: float, exc: requests.ConnectionError) -> CallResult:
        causes = list(_causes(exc))
        if _never_sent(causes):
            error = _describe_connect_failure(causes, self._netloc, self._timeout[0])
            if error is None:
                error = f"connection failed: {self._netloc}: {self._cause(exc)}"
            return self._result(
                start, CallOutcome.FAILED, CallKind.CONNECT_ERROR, False, error=error
            )
        malformed = [
            c
            for c in causes
            if isinstance(c, http.client.HTTPException)
            and not isinstance(c, http.client.RemoteDisconnected)
        ]
        if malformed:
            detail = self._excerpt(str(malformed[0]))
            error = f"malformed HTTP answer: {type(malformed[0]).__name__}: {detail}"
            return self._result(
                start, CallOutcome.UNKNOWN, CallKind.INVALID_RESPONSE, True, error=error
            )
        if any(isinstance(c, ReadTimeoutError) for c in causes):
            error = self._no_answer_error()
        else:
            error = (
                f"connection closed before an answer: {self._cause(exc)}: "
                "the operation may have been initiated"
            )
        return self._result(start, CallOutcome.UNKNOWN, CallKind.TIMEOUT, True, error=error)

    def _no_answer_error(self) -> str:
        return (
            f"no answer within {self._timeout[1]:g}s (read timeout): "
            "the operation may have been initiated"
        )

    def _result(
        self,
        start: float,
        outcome: CallOutcome,
        kind: CallKind,
        sent: bool,
        *,
        status: int | None = None,
        execution_id: str | None = None,
        error: str = "",
    ) -> CallResult:
        return CallResult(
            outcome=outcome,
            kind=kind,
            status_code=status,
            execution_id=execution_id,
            error=self._scrub(error),
            sent=sent,
            elapsed=max(0.0, self._clock() - start),
        )

    def _scrub(self, text: str) -> str:
        # Belt and braces: no path is known to put the token in a message, but a server may echo
        # it, and exceptions carry the request with its headers.
        for token in self._tokens.recent():
            text = text.replace(token.reveal(), "***")
        return text

    def _excerpt(self, body: str) -> str:
        # Scrub before cutting, so a token split by the cut cannot survive in part.
        text = " ".join(
            "".join(ch if ch.isprintable() else " " for ch in self._scrub(body)).split()
        )
        if len(text) > BODY_EXCERPT_CHARS:
            return text[:BODY_EXCERPT_CHARS] + "…"
        return text

    def _cause(self, exc: BaseException) -> str:
        """The innermost message of an exception chain, short, on one line, without the token."""
        deepest = list(_causes(exc))[-1]
        return self._excerpt(str(deepest) or type(deepest).__name__)


def _read_body(response: requests.Response) -> str | None:
    """The answer body as text (at most _MAX_BODY_BYTES), or None when reading it failed."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(chunk_size=65536):
            chunks.append(chunk)
            size += len(chunk)
            if size >= _MAX_BODY_BYTES:
                break
    except Exception:  # the status is known and decides the outcome; the body is a detail
        return None
    return b"".join(chunks)[:_MAX_BODY_BYTES].decode("utf-8", errors="replace")


def _execution_id(body: str | None) -> str | None:
    try:
        data = json.loads(body) if body is not None else None
    except ValueError:
        return None
    value = data.get("execution_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


#: The longest an operation is believed to take, whatever the API estimates: a verification
#: window counts from the estimated completion, and an absurd estimate must not defer it for
#: ever (the slowest operation, a factory reset, takes minutes).
MAX_COMPLETION = 3600.0


def _completes_in(body: str | None) -> float | None:
    """How long the operation of a 200 answer takes by the API's estimate, in seconds.

    A difference of the API's two times, so that its clock being off does not matter;
    bounded to [0, MAX_COMPLETION]. None when the answer does not say."""
    try:
        data = json.loads(body) if body is not None else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    started, done = rfc3339(data.get("timestamp")), rfc3339(data.get("estimated_completion"))
    if started is None or done is None:
        return None
    return min(max((done - started).total_seconds(), 0.0), MAX_COMPLETION)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and all it wraps, outermost first: requests wraps urllib3 errors, which
    wrap socket and ssl errors, through args, .reason and exception chaining."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = (getattr(current, "reason", None), *current.args, current.__cause__)
        todo.extend(e for e in inner if isinstance(e, BaseException))
        if current.__context__ is not None and not current.__suppress_context__:
            todo.append(current.__context__)


def _never_sent(causes: list[BaseException]) -> bool:
    """True when the chain proves the failure happened before the request was written."""
    if any(isinstance(c, ProtocolError | ReadTimeoutError) for c in causes):
        return False
    return any(
        isinstance(
            c,
            Urllib3ConnectTimeoutError  # includes NewConnectionError and NameResolutionError
            | Urllib3ProxyError  # urllib3 raises it only while reaching the proxy
            | ClosedPoolError
            | EmptyPoolError,
        )
        or _is_tls_handshake_error(c)
        for c in causes
    )


def _is_tls_handshake_error(exc: BaseException) -> bool:
    if isinstance(exc, ssl.SSLCertVerificationError | ssl.CertificateError):
        return True
    return isinstance(exc, ssl.SSLError) and exc.reason in _TLS_HANDSHAKE_REASONS


def _describe_connect_failure(
    causes: list[BaseException], netloc: str, timeout: float
) -> str | None:
    """A short account of why the connection failed, or None if no known cause is found."""
    for cause in causes:
        if isinstance(cause, Urllib3NameResolutionError):
            return f"name resolution failed: {netloc}"
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused: {netloc}"
        if _is_tls_handshake_error(cause):
            detail = getattr(cause, "verify_message", None) or getattr(cause, "reason", None)
            return f"TLS handshake failed: {netloc}: {detail or cause}"
        if isinstance(cause, Urllib3ProxyError):
            return f"proxy unreachable on the way to {netloc}"
        if isinstance(cause, Urllib3ConnectTimeoutError) and not isinstance(
            cause, NewConnectionError
        ):
            return f"connect timeout after {timeout:g}s: {netloc}"
    return None
