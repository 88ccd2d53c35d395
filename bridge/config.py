"""Settings: command-line flags over BRIDGE_* environment variables over safe defaults."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from bridge.auth import (
    InboundAuth,
    admin_from_env,
    is_loopback,
    secret_from_env,
    secrets_from_env,
    viewer_from_env,
)
from bridge.client import Secret, TokenSource
from bridge.dispatch import DispatchPolicy
from bridge.errors import ConfigError
from bridge.rules import parse_duration
from bridge.store import Store, is_url, open_store

DEFAULT_API_URL = "https://control.zequenze.com/api/v1"
# A device name as inventories write them: letters, digits and . _ : @ - , at most 128
# characters, starting with a letter or digit. Anything else a label carries is refused.
DEFAULT_DEVICE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}"
# 9090 is Prometheus, 9093/9094 Alertmanager; 9095 is free of both.
DEFAULT_BIND = "127.0.0.1:9095"
#: The shortest console session secret accepted: 32 characters of a random string.
MIN_SESSION_SECRET = 32
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True)
class Settings:
    rules_path: str = "rules.yaml"
    bind: str = DEFAULT_BIND
    workers: int = 2
    # A SQLite path, or a PostgreSQL URL that may hold a password: kept out of the repr.
    state_path: str = field(default="bridge-state.db", repr=False)
    #: BRIDGE_STATE_PASSWORD_FILE: the PostgreSQL password, when the URL does not hold it.
    state_password_file: str | None = None
    api_url: str = DEFAULT_API_URL
    # A TokenSource for BRIDGE_API_TOKEN_FILE: the file is read again whenever it changes.
    api_token: Secret | TokenSource | None = field(default=None, repr=True)
    dry_run_requested: bool = False
    connect_timeout: float = 3.05
    read_timeout: float = 10.0
    concurrency: int = 4
    rate_limit: float = 10.0
    max_age: float = 600.0
    max_attempts: int = 5
    retry_base: float = 2.0
    busy_retry: float = 60.0
    failure_cooldown: float = 300.0
    drain_timeout: float = 30.0
    auth: InboundAuth = field(default_factory=InboundAuth)
    admin_auth: InboundAuth = field(default_factory=InboundAuth)
    insecure_no_auth: bool = False
    device_pattern: str = DEFAULT_DEVICE_PATTERN
    api_ca_bundle: str | None = None
    max_body: int = 10 * 1024 * 1024
    max_alerts: int = 5000
    log_format: str = "json"
    audit_retention: float = 90 * 86400.0
    state_timeout: float = 30.0
    # The console (bridge/console): who may look, what signs the sessions, where it is seen.
    viewer_auth: InboundAuth = field(default_factory=InboundAuth)
    session_secret: Secret | None = None
    session_idle: float = 1800.0
    #: The URL people reach the bridge at (through a proxy, maybe under a path); "": unknown.
    external_url: str = ""
    #: The team's Alertmanager (the members of one cluster): where the bridge's own alerts go,
    #: and whom it asks whether an alert still fires.
    alertmanager_urls: tuple[str, ...] = ()
    #: Chat incoming webhooks (Slack, Mattermost) told the same news; their URLs are secrets.
    notify_webhooks: tuple[Secret, ...] = ()
    #: How often the closing loop verifies, escalates and tells people.
    loop_interval: float = 10.0

    @property
    def dry_run(self) -> bool:
        """Dry run when asked for, and always when there is no token to call the API with."""
        return self.dry_run_requested or not self.api_token

    @property
    def dry_run_reason(self) -> str:
        if self.dry_run_requested:
            return "BRIDGE_DRY_RUN is set"
        if not self.api_token:
            return "no API token configured (BRIDGE_API_TOKEN or BRIDGE_API_TOKEN_FILE)"
        return ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, listening: bool = True,
                 **flags: object) -> Settings:
        """Build settings from the environment, then apply flags that were given (not None).

        `listening=False` is for the commands that do not serve (pause, audit, approve, ...):
        they skip the check that a wide bind has webhook authentication, which is about the
        server and must not stand between an operator and the kill switch.
        """
        env = os.environ if env is None else env
        settings = cls(
            rules_path=env.get("BRIDGE_RULES") or cls.rules_path,
            bind=env.get("BRIDGE_BIND") or cls.bind,
            state_path=state_path_from_env(env),
            state_password_file=state_password_file_from_env(env),
            api_url=env.get("BRIDGE_API_URL") or DEFAULT_API_URL,
            api_token=_token(env),
            dry_run_requested=_flag(env, "BRIDGE_DRY_RUN"),
            connect_timeout=_seconds(env, "BRIDGE_API_CONNECT_TIMEOUT", cls.connect_timeout),
            read_timeout=_seconds(env, "BRIDGE_API_TIMEOUT", cls.read_timeout),
            concurrency=int(_number(env, "BRIDGE_CONCURRENCY", cls.concurrency)),
            rate_limit=_number(env, "BRIDGE_RATE_LIMIT", cls.rate_limit),
            max_age=_seconds(env, "BRIDGE_MAX_AGE", cls.max_age),
            max_attempts=int(_number(env, "BRIDGE_MAX_ATTEMPTS", cls.max_attempts)),
            retry_base=_seconds(env, "BRIDGE_RETRY_BASE", cls.retry_base),
            busy_retry=_seconds(env, "BRIDGE_BUSY_RETRY", cls.busy_retry),
            failure_cooldown=_seconds(env, "BRIDGE_FAILURE_COOLDOWN", cls.failure_cooldown),
            drain_timeout=_seconds(env, "BRIDGE_DRAIN_TIMEOUT", cls.drain_timeout),
            auth=InboundAuth.from_env(env),
            admin_auth=admin_from_env(env),
            insecure_no_auth=_flag(env, "BRIDGE_INSECURE_NO_AUTH"),
            device_pattern=env.get("BRIDGE_DEVICE_PATTERN") or DEFAULT_DEVICE_PATTERN,
            api_ca_bundle=env.get("BRIDGE_API_CA_BUNDLE") or None,
            max_body=int(_number(env, "BRIDGE_MAX_BODY", cls.max_body)),
            max_alerts=int(_number(env, "BRIDGE_MAX_ALERTS", cls.max_alerts)),
            log_format=(env.get("BRIDGE_LOG_FORMAT") or "json").strip().lower(),
            audit_retention=_seconds(env, "BRIDGE_AUDIT_RETENTION", cls.audit_retention),
            state_timeout=_seconds(env, "BRIDGE_STATE_TIMEOUT", cls.state_timeout),
            viewer_auth=viewer_from_env(env),
            session_secret=secret_from_env(env, "BRIDGE_SESSION_SECRET"),
            session_idle=_seconds(env, "BRIDGE_SESSION_IDLE", cls.session_idle),
            external_url=external_url_from_env(env),
            alertmanager_urls=_urls(env, "BRIDGE_ALERTMANAGER_URLS"),
            notify_webhooks=tuple(secrets_from_env(env, "BRIDGE_NOTIFY_WEBHOOK_URLS")),
            loop_interval=_seconds(env, "BRIDGE_LOOP_INTERVAL", cls.loop_interval),
        )
        given = {k: v for k, v in flags.items() if v is not None}
        settings = replace(settings, **given)  # type: ignore[arg-type]
        settings.validate()
        if listening:
            settings.check_listen()
        return settings

    def check_listen(self) -> None:
        """Refuse to serve webhooks beyond loopback to anyone: they can reboot devices."""
        host, _ = parse_bind(self.bind)
        if not (self.auth.configured or self.insecure_no_auth or is_loopback(host)):
            raise ConfigError(
                f"refusing to listen on {self.bind} without webhook authentication: anyone who"
                " reaches it could reboot devices. Set BRIDGE_WEBHOOK_TOKENS (or"
                " BRIDGE_WEBHOOK_BASIC_AUTH, BRIDGE_GRAFANA_HMAC_SECRETS), bind to loopback, or"
                " pass --insecure-no-auth"
            )

    def validate(self) -> None:
        parse_bind(self.bind)
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if not self.api_url.startswith(("http://", "https://")):
            raise ConfigError(f"BRIDGE_API_URL must be an http(s) URL, got {self.api_url!r}")
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"BRIDGE_LOG_FORMAT must be json or text, got {self.log_format!r}")
        try:
            re.compile(self.device_pattern)
        except re.error as exc:
            raise ConfigError(f"BRIDGE_DEVICE_PATTERN is not a valid regex: {exc}") from None
        if self.api_ca_bundle and not os.path.isfile(self.api_ca_bundle):
            raise ConfigError(f"BRIDGE_API_CA_BUNDLE {self.api_ca_bundle}: no such file")
        for name, value in (("BRIDGE_MAX_BODY", self.max_body),
                            ("BRIDGE_MAX_ALERTS", self.max_alerts),
                            ("BRIDGE_CONCURRENCY", self.concurrency),
                            ("BRIDGE_RATE_LIMIT", self.rate_limit),
                            ("BRIDGE_MAX_ATTEMPTS", self.max_attempts),
                            ("BRIDGE_API_TIMEOUT", self.read_timeout),
                            ("BRIDGE_API_CONNECT_TIMEOUT", self.connect_timeout),
                            ("BRIDGE_STATE_TIMEOUT", self.state_timeout),
                            ("BRIDGE_SESSION_IDLE", self.session_idle),
                            ("BRIDGE_LOOP_INTERVAL", self.loop_interval)):
            if value <= 0:
                raise ConfigError(f"{name} must be greater than 0, got {value:g}")
        for hook in self.notify_webhooks:
            if not _is_http_url(hook.reveal()):
                # Not shown: the URL of an incoming webhook is its secret.
                raise ConfigError("BRIDGE_NOTIFY_WEBHOOK_URLS: each must be an http(s) URL")
        if self.session_secret and len(self.session_secret.reveal()) < MIN_SESSION_SECRET:
            raise ConfigError(
                f"BRIDGE_SESSION_SECRET must be at least {MIN_SESSION_SECRET} characters (for"
                " example the output of `openssl rand -base64 32`)")

    def open_store(self) -> Store:
        """The state store (SQLite, or PostgreSQL for a URL), with the bound every write
        waits within."""
        return open_store(self.state_path, timeout=self.state_timeout,
                          password_file=self.state_password_file)

    @property
    def state_is_url(self) -> bool:
        return is_url(self.state_path)

    @property
    def device_regex(self) -> re.Pattern[str]:
        return re.compile(self.device_pattern)

    def policy(self) -> DispatchPolicy:
        return DispatchPolicy(
            concurrency=self.concurrency, rate_limit=self.rate_limit, max_age=self.max_age,
            max_attempts=self.max_attempts, retry_base=self.retry_base,
            retry_cap=max(self.retry_base, 120.0), busy_base=self.busy_retry,
            busy_cap=max(self.busy_retry, 600.0), failure_cooldown=self.failure_cooldown,
            # A call takes at most about connect + read timeout; past that its sender is gone.
            lease=self.connect_timeout + self.read_timeout + 5.0,
        )


def state_path_from_env(env: Mapping[str, str] | None = None, given: str | None = None) -> str:
    """The state file: `given` (--state), else BRIDGE_STATE, else ./bridge-state.db.

    Read alone, without the other settings, by the commands that only open the state file:
    a broken setting elsewhere must never keep an operator from pausing the bridge.
    """
    env = os.environ if env is None else env
    return given or env.get("BRIDGE_STATE") or Settings.state_path


def state_password_file_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """BRIDGE_STATE_PASSWORD_FILE, read alone like the state's location."""
    env = os.environ if env is None else env
    return env.get("BRIDGE_STATE_PASSWORD_FILE") or None


def external_url_from_env(env: Mapping[str, str] | None = None) -> str:
    """BRIDGE_EXTERNAL_URL without its trailing slash ("" when unset), or a ConfigError.

    Read alone by `pending`, which prints links to the console and reads no other setting.
    """
    env = os.environ if env is None else env
    text = env.get("BRIDGE_EXTERNAL_URL", "").strip()
    if not text:
        return ""
    url = urllib.parse.urlsplit(text)
    if url.scheme not in ("http", "https") or not url.netloc or url.query or url.fragment:
        raise ConfigError("BRIDGE_EXTERNAL_URL must be an http(s) URL without a query or"
                          f" fragment, such as https://noc.example.net/bridge/, got {text!r}")
    return text.rstrip("/")


#: The console's page of one operation, below BRIDGE_EXTERNAL_URL (bridge/console serves it).
OPERATION_PAGE = "/ui/operations/{}"


def operation_url(external_url: str, operation_id: int) -> str:
    """Where a person sees, approves or rejects an operation in the console."""
    return external_url + OPERATION_PAGE.format(operation_id)


def _is_http_url(text: str) -> bool:
    url = urllib.parse.urlsplit(text)
    return url.scheme in ("http", "https") and bool(url.hostname)


def _urls(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated http(s) base URLs, without trailing slashes."""
    urls = tuple(u.strip().rstrip("/") for u in env.get(name, "").split(",") if u.strip())
    for url in urls:
        if not _is_http_url(url) or urllib.parse.urlsplit(url).query:
            raise ConfigError(f"{name}: each must be an http(s) base URL such as"
                              f" http://alertmanager:9093, got {url!r}")
    return urls


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"bind address must be HOST:PORT, got {bind!r}")
    return host.strip("[]"), int(port)


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(f"{name} must be 1/true/yes/on or 0/false/no/off, got {value!r}")


def _token(env: Mapping[str, str]) -> Secret | TokenSource | None:
    if env.get("BRIDGE_API_TOKEN") and env.get("BRIDGE_API_TOKEN_FILE"):
        raise ConfigError("set BRIDGE_API_TOKEN or BRIDGE_API_TOKEN_FILE, not both")
    if env.get("BRIDGE_API_TOKEN"):
        return Secret(env["BRIDGE_API_TOKEN"].strip())
    path = env.get("BRIDGE_API_TOKEN_FILE")
    if not path:
        return None
    try:
        return TokenSource.from_file(path)
    except ValueError as exc:
        raise ConfigError(f"BRIDGE_API_TOKEN_FILE {path}: {exc}") from None


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    return _setting(env, name, default, duration=False)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration setting: a Prometheus duration (90s, 5m) or a bare number of seconds."""
    return _setting(env, name, default, duration=True)


def _setting(env: Mapping[str, str], name: str, default: float, *, duration: bool) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        if not duration:
            raise ConfigError(f"{name} must be a number, got {text!r}") from None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
