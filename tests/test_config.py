"""Settings: flags over BRIDGE_* variables over defaults; the token stays secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.client import TokenSource
from bridge.config import DEFAULT_API_URL, Settings
from bridge.errors import ConfigError
from tests.helpers import replace_file


def test_defaults_are_the_safe_ones() -> None:
    s = Settings.from_env({})
    assert (s.rules_path, s.bind, s.workers, s.state_path, s.api_url) == (
        "rules.yaml", "127.0.0.1:9095", 2, "bridge-state.db", DEFAULT_API_URL)
    assert s.dry_run is True
    assert s.dry_run_reason.startswith("no API token configured")


def test_environment_then_flags() -> None:
    env = {"BRIDGE_RULES": "/etc/r.yaml", "BRIDGE_BIND": "0.0.0.0:1234",
           "BRIDGE_STATE": "/var/s.db", "BRIDGE_API_URL": "http://api.local/v1",
           "BRIDGE_API_TOKEN": "t0k", "BRIDGE_WEBHOOK_TOKENS": "hook"}
    s = Settings.from_env(env)
    assert (s.rules_path, s.bind, s.state_path, s.api_url) == (
        "/etc/r.yaml", "0.0.0.0:1234", "/var/s.db", "http://api.local/v1")
    assert s.dry_run is False
    flagged = Settings.from_env(env, rules_path="x.yaml", bind="127.0.0.1:1", state_path=None)
    assert (flagged.rules_path, flagged.bind, flagged.state_path) == (
        "x.yaml", "127.0.0.1:1", "/var/s.db")


def test_dry_run_variable() -> None:
    assert Settings.from_env({"BRIDGE_API_TOKEN": "t", "BRIDGE_DRY_RUN": "yes"}).dry_run
    assert not Settings.from_env({"BRIDGE_API_TOKEN": "t", "BRIDGE_DRY_RUN": "0"}).dry_run
    with pytest.raises(ConfigError, match="BRIDGE_DRY_RUN must be"):
        Settings.from_env({"BRIDGE_DRY_RUN": "maybe"})


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret-from-file\n")
    s = Settings.from_env({"BRIDGE_API_TOKEN_FILE": str(path)})
    assert isinstance(s.api_token, TokenSource)
    assert s.api_token.get().reveal() == "s3cret-from-file"
    assert "s3cret" not in repr(s) and s.dry_run is False
    replace_file(path, "s3cret-rotated\n")  # read again at the next call, not only at start
    assert s.api_token.get().reveal() == "s3cret-rotated"
    assert "s3cret" not in repr(s)
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env({"BRIDGE_API_TOKEN_FILE": str(path), "BRIDGE_API_TOKEN": "x"})
    with pytest.raises(ConfigError, match="No such file"):
        Settings.from_env({"BRIDGE_API_TOKEN_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(("content", "message"), [
    ("\n", "BRIDGE_API_TOKEN_FILE .*: the file is empty"),
    ("s3cret with space", "BRIDGE_API_TOKEN_FILE .*: the token must be visible ASCII"),
    ("s3cret" * 11_000, "BRIDGE_API_TOKEN_FILE .*: the file is larger than 65536 bytes"),
])
def test_a_token_file_that_cannot_be_used_stops_the_start(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as raised:
        Settings.from_env({"BRIDGE_API_TOKEN_FILE": str(path)})
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize("bind", ["9095", "host:", ":80", "h:99999", "h:x"])
def test_bad_bind(bind: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        Settings.from_env({"BRIDGE_BIND": bind})


def test_bad_api_url() -> None:
    with pytest.raises(ConfigError, match="http"):
        Settings.from_env({"BRIDGE_API_URL": "ftp://x"})


SECRET = "s" * 32


def test_console_settings(tmp_path: Path) -> None:
    secret_file = tmp_path / "session-secret"
    secret_file.write_text(SECRET + "\n")
    s = Settings.from_env({"BRIDGE_VIEWER_TOKENS": "v1, v2", "BRIDGE_SESSION_IDLE": "15m",
                           "BRIDGE_SESSION_SECRET_FILE": str(secret_file),
                           "BRIDGE_EXTERNAL_URL": "https://noc.example.net/bridge/"})
    assert [t.reveal() for t in s.viewer_auth.bearer_tokens] == ["v1", "v2"]
    assert s.session_secret is not None and s.session_secret.reveal() == SECRET
    assert SECRET not in repr(s)
    assert (s.session_idle, s.external_url) == (900.0, "https://noc.example.net/bridge")
    default = Settings.from_env({})
    assert (default.session_secret, default.session_idle, default.external_url) == (
        None, 1800.0, "")


@pytest.mark.parametrize(("env", "message"), [
    ({"BRIDGE_SESSION_SECRET": "short"}, "BRIDGE_SESSION_SECRET must be at least 32 characters"),
    ({"BRIDGE_SESSION_SECRET": SECRET, "BRIDGE_SESSION_SECRET_FILE": "/x"},
     "set BRIDGE_SESSION_SECRET or BRIDGE_SESSION_SECRET_FILE, not both"),
    ({"BRIDGE_SESSION_SECRET_FILE": "/nonexistent/secret"},
     "BRIDGE_SESSION_SECRET_FILE /nonexistent/secret: No such file or directory"),
    ({"BRIDGE_SESSION_IDLE": "0"}, "BRIDGE_SESSION_IDLE must be greater than 0"),
    ({"BRIDGE_EXTERNAL_URL": "ftp://x/"}, "BRIDGE_EXTERNAL_URL must be an http"),
    ({"BRIDGE_EXTERNAL_URL": "https://x/bridge?a=1"}, "BRIDGE_EXTERNAL_URL must be an http"),
])
def test_console_settings_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        Settings.from_env(env)


def test_notification_settings(tmp_path: Path) -> None:
    hooks = tmp_path / "webhooks"
    hooks.write_text("# Slack, #noc\nhttps://hooks.slack.com/services/T0/B0/xyzsecret\n")
    s = Settings.from_env({"BRIDGE_ALERTMANAGER_URLS": "http://am-1:9093/, http://am-2:9093",
                           "BRIDGE_NOTIFY_WEBHOOK_URLS_FILE": str(hooks),
                           "BRIDGE_LOOP_INTERVAL": "2s"})
    assert s.alertmanager_urls == ("http://am-1:9093", "http://am-2:9093")
    assert [h.reveal() for h in s.notify_webhooks] == [
        "https://hooks.slack.com/services/T0/B0/xyzsecret"]
    assert "xyzsecret" not in repr(s)
    assert s.loop_interval == 2.0
    default = Settings.from_env({})
    assert (default.alertmanager_urls, default.notify_webhooks, default.loop_interval) == (
        (), (), 10.0)


@pytest.mark.parametrize(("env", "message"), [
    ({"BRIDGE_ALERTMANAGER_URLS": "am-1:9093"},
     "BRIDGE_ALERTMANAGER_URLS: each must be an http(s) base URL such as"
     " http://alertmanager:9093, got 'am-1:9093'"),
    ({"BRIDGE_NOTIFY_WEBHOOK_URLS": "hooks.slack.com/services/secret"},
     "BRIDGE_NOTIFY_WEBHOOK_URLS: each must be an http(s) URL$"),
    ({"BRIDGE_LOOP_INTERVAL": "0"}, "BRIDGE_LOOP_INTERVAL must be greater than 0"),
])
def test_notification_settings_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)
