"""Settings: command-line flags over BRIDGE_* environment variables over safe defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from bridge.client import Secret
from bridge.errors import ConfigError

DEFAULT_API_URL = "https://control.zequenze.com/api/v1"
# 9090 is Prometheus, 9093/9094 Alertmanager; 9095 is free of both.
DEFAULT_BIND = "127.0.0.1:9095"
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True)
class Settings:
    rules_path: str = "rules.yaml"
    bind: str = DEFAULT_BIND
    workers: int = 2
    state_path: str = "bridge-state.db"
    api_url: str = DEFAULT_API_URL
    api_token: Secret | None = field(default=None, repr=True)
    dry_run_requested: bool = False
    connect_timeout: float = 3.05
    read_timeout: float = 10.0

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
    def from_env(cls, env: Mapping[str, str] | None = None, **flags: object) -> Settings:
        """Build settings from the environment, then apply flags that were given (not None)."""
        env = os.environ if env is None else env
        settings = cls(
            rules_path=env.get("BRIDGE_RULES") or cls.rules_path,
            bind=env.get("BRIDGE_BIND") or cls.bind,
            state_path=env.get("BRIDGE_STATE") or cls.state_path,
            api_url=env.get("BRIDGE_API_URL") or DEFAULT_API_URL,
            api_token=_token(env),
            dry_run_requested=_flag(env, "BRIDGE_DRY_RUN"),
        )
        given = {k: v for k, v in flags.items() if v is not None}
        settings = replace(settings, **given)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        parse_bind(self.bind)
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if not self.api_url.startswith(("http://", "https://")):
            raise ConfigError(f"BRIDGE_API_URL must be an http(s) URL, got {self.api_url!r}")


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


def _token(env: Mapping[str, str]) -> Secret | None:
    if env.get("BRIDGE_API_TOKEN") and env.get("BRIDGE_API_TOKEN_FILE"):
        raise ConfigError("set BRIDGE_API_TOKEN or BRIDGE_API_TOKEN_FILE, not both")
    if env.get("BRIDGE_API_TOKEN"):
        return Secret(env["BRIDGE_API_TOKEN"].strip())
    path = env.get("BRIDGE_API_TOKEN_FILE")
    if not path:
        return None
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"BRIDGE_API_TOKEN_FILE {path}: {exc.strerror or exc}") from None
    if not value:
        raise ConfigError(f"BRIDGE_API_TOKEN_FILE {path}: file is empty")
    return Secret(value)
