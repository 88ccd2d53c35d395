"""Inbound authentication of webhook senders: Bearer tokens, Basic auth, Grafana's HMAC.

Several secrets of each kind may be valid at once, so they can be rotated without downtime.
Every comparison runs in constant time, and no secret is ever part of a repr or a message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bridge.client import Secret
from bridge.errors import ConfigError

GRAFANA_SIGNATURE_HEADER = "X-Grafana-Alerting-Signature"
# A signed timestamp as Grafana sends it; 15 digits reach far past any clock in use.
_UNIX_SECONDS = re.compile(r"[0-9]{1,15}")


class Headers(Protocol):
    """Case-insensitive header lookup, as werkzeug's Headers provides."""

    def __getitem__(self, key: str) -> str: ...
    def __contains__(self, key: str, /) -> bool: ...


@dataclass(frozen=True)
class InboundAuth:
    bearer_tokens: tuple[Secret, ...] = ()
    basic_users: tuple[tuple[str, Secret], ...] = ()
    hmac_secrets: tuple[Secret, ...] = ()
    hmac_header: str = GRAFANA_SIGNATURE_HEADER
    hmac_timestamp_header: str = ""  # "": Grafana signs the body alone
    hmac_window: float = 300.0  # accepted clock difference of a signed timestamp, seconds

    @property
    def configured(self) -> bool:
        return bool(self.bearer_tokens or self.basic_users or self.hmac_secrets)

    @property
    def methods(self) -> list[str]:
        return [name for name, on in (("bearer", self.bearer_tokens),
                                      ("basic", self.basic_users),
                                      ("grafana-hmac", self.hmac_secrets)) if on]

    def __repr__(self) -> str:
        return (f"InboundAuth(bearer={len(self.bearer_tokens)}, basic={len(self.basic_users)},"
                f" hmac={len(self.hmac_secrets)})")

    def check(self, headers: Headers, body: bytes, now: float) -> str | None:
        """The method that authenticates this request, or None. Open when nothing is set."""
        if not self.configured:
            return "none"
        scheme, _, credentials = _header(headers, "Authorization").partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and credentials and self.bearer_tokens:
            if _any_equal(credentials.encode(), (t.reveal().encode() for t in self.bearer_tokens)):
                return "bearer"
        if scheme.lower() == "basic" and credentials and self.basic_users:
            if self._basic_ok(credentials):
                return "basic"
        if self.hmac_secrets and self._hmac_ok(headers, body, now):
            return "grafana-hmac"
        return None

    def _basic_ok(self, credentials: str) -> bool:
        try:
            user, sep, password = base64.b64decode(credentials, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        if not sep:
            return False
        ok = False
        for name, secret in self.basic_users:
            # Both halves compared every time: which one failed must not show in the timing.
            same_user = hmac.compare_digest(user, name.encode())
            same_password = hmac.compare_digest(password, secret.reveal().encode())
            ok |= same_user & same_password
        return ok

    def _hmac_ok(self, headers: Headers, body: bytes, now: float) -> bool:
        signature = _header(headers, self.hmac_header).lower()
        if not signature:
            return False
        signed = body
        if self.hmac_timestamp_header:
            stamp = _header(headers, self.hmac_timestamp_header)
            # Unix seconds in ASCII digits: str.isdigit() also takes "²", which int() refuses,
            # and int() refuses more than 4300 digits; either would fail the request, not
            # refuse it.
            if not _UNIX_SECONDS.fullmatch(stamp) or abs(now - int(stamp)) > self.hmac_window:
                return False  # unsigned time, or a replay from outside the window
            signed = stamp.encode() + b":" + body
        expected = (
            hmac.new(s.reveal().encode(), signed, hashlib.sha256).hexdigest().encode()
            for s in self.hmac_secrets
        )
        return _any_equal(signature.encode(), expected)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> InboundAuth:
        from bridge.rules import parse_duration

        basic = []
        for entry in _secret_list(env, "BRIDGE_WEBHOOK_BASIC_AUTH"):
            user, sep, password = entry.partition(":")
            if not sep or not user or not password:
                raise ConfigError("BRIDGE_WEBHOOK_BASIC_AUTH entries must be user:password")
            basic.append((user, Secret(password)))
        window = env.get("BRIDGE_GRAFANA_HMAC_WINDOW", "").strip()
        try:
            window_seconds = parse_duration(window) if window else 300.0
        except ValueError as exc:
            raise ConfigError(f"BRIDGE_GRAFANA_HMAC_WINDOW: {exc}") from None
        return cls(
            bearer_tokens=tuple(Secret(t) for t in _secret_list(env, "BRIDGE_WEBHOOK_TOKENS")),
            basic_users=tuple(basic),
            hmac_secrets=tuple(Secret(t) for t in _secret_list(env, "BRIDGE_GRAFANA_HMAC_SECRETS")),
            hmac_header=env.get("BRIDGE_GRAFANA_HMAC_HEADER", "").strip()
            or GRAFANA_SIGNATURE_HEADER,
            hmac_timestamp_header=env.get("BRIDGE_GRAFANA_HMAC_TIMESTAMP_HEADER", "").strip(),
            hmac_window=window_seconds,
        )


def _header(headers: Headers, name: str) -> str:
    return headers[name].strip() if name in headers else ""


def admin_from_env(env: Mapping[str, str]) -> InboundAuth:
    """Bearer tokens of the people (or tools) allowed to approve and reject over HTTP."""
    return _bearer_from_env(env, "BRIDGE_ADMIN_TOKENS")


def viewer_from_env(env: Mapping[str, str]) -> InboundAuth:
    """Tokens of the people who may look at the console but not act."""
    return _bearer_from_env(env, "BRIDGE_VIEWER_TOKENS")


def _bearer_from_env(env: Mapping[str, str], name: str) -> InboundAuth:
    return InboundAuth(bearer_tokens=tuple(secrets_from_env(env, name)))


def secret_from_env(env: Mapping[str, str], name: str) -> Secret | None:
    """One secret from NAME or NAME_FILE (its whole content, stripped), or None."""
    path = env.get(f"{name}_FILE", "")
    if env.get(name) and path:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    if not path:
        return Secret(env[name].strip()) if env.get(name, "").strip() else None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{name}_FILE {path}: {exc.strerror or exc}") from None
    if not text:
        raise ConfigError(f"{name}_FILE {path}: the file is empty")
    return Secret(text)


def secrets_from_env(env: Mapping[str, str], name: str) -> list[Secret]:
    """Secrets from NAME (comma-separated) and NAME_FILE (one per line, # comments)."""
    return [Secret(value) for value in _secret_list(env, name)]


def _any_equal(given: bytes, candidates: object) -> bool:
    ok = False
    for candidate in candidates:  # type: ignore[attr-defined]
        ok |= hmac.compare_digest(given, candidate)  # no early exit: timing shows no index
    return ok


def _secret_list(env: Mapping[str, str], name: str) -> list[str]:
    """Secrets from NAME (comma-separated) and NAME_FILE (one per line), both allowed."""
    values = [v.strip() for v in env.get(name, "").split(",")]
    path = env.get(f"{name}_FILE", "")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{name}_FILE {path}: {exc.strerror or exc}") from None
        values += [line.strip() for line in text.splitlines()]
    return [v for v in values if v and not v.startswith("#")]


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
