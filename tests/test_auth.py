"""Inbound authentication: Bearer, Basic and Grafana's HMAC, rotation, and the safe default."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.auth import InboundAuth
from bridge.client import Secret
from bridge.config import Settings
from bridge.errors import ConfigError
from tests.conftest import Bridge, Fake
from tests.helpers import payload

BODY = payload("grafana_unified_resolved.json")
# FORMATS.md B.5 test vectors, computed from Grafana's algorithm.
SIG = "5a25c839fa91f91a2d101aec746358690406a0202af43eead89240b60fc39607"
SIG_AT_1700000000 = "f5c38a796d30994f5e1551ef39a0b2dc9432d2c3e802303a90ad29740c0bcdf6"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_bearer_tokens_rotate() -> None:
    auth = InboundAuth(bearer_tokens=(Secret("old-token"), Secret("new-token")))
    assert auth.check({"Authorization": "Bearer old-token"}, b"", 0) == "bearer"
    assert auth.check({"Authorization": "Bearer new-token"}, b"", 0) == "bearer"
    assert auth.check({"Authorization": "bearer  new-token "}, b"", 0) == "bearer"
    for header in ("Bearer other", "Bearer ", "Bearer new-token2", "Basic new-token", ""):
        assert auth.check({"Authorization": header}, b"", 0) is None, header
    assert auth.check({}, b"", 0) is None


def test_basic_auth() -> None:
    auth = InboundAuth(basic_users=(("grafana", Secret("pw1")), ("am", Secret("pw:2"))))
    assert auth.check({"Authorization": basic("grafana", "pw1")}, b"", 0) == "basic"
    assert auth.check({"Authorization": basic("am", "pw:2")}, b"", 0) == "basic"
    for header in (basic("grafana", "pw:2"), basic("am", "pw1"), basic("x", "pw1"),
                   "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert auth.check({"Authorization": header}, b"", 0) is None, header


def test_grafana_hmac_test_vectors() -> None:
    auth = InboundAuth(hmac_secrets=(Secret("rotated-out"), Secret("test-hmac-secret")))
    assert auth.check({"X-Grafana-Alerting-Signature": SIG}, BODY, 0) == "grafana-hmac"
    assert auth.check({"X-Grafana-Alerting-Signature": SIG.upper()}, BODY, 0) == "grafana-hmac"
    assert auth.check({"X-Grafana-Alerting-Signature": SIG}, BODY + b" ", 0) is None
    simple = InboundAuth(hmac_secrets=(Secret("secret"),))
    assert simple.check({"X-Grafana-Alerting-Signature":
                         "3bcebf43c85d20bba6e3b6ba278af1d2ba3ab0d57de271b0ad30b833e851c5a6"},
                        b"test message", 0) == "grafana-hmac"


def test_grafana_hmac_with_timestamp_and_replay_window() -> None:
    auth = InboundAuth(hmac_secrets=(Secret("test-hmac-secret"),),
                       hmac_timestamp_header="X-Grafana-Alerting-Timestamp", hmac_window=300)
    headers = {"X-Grafana-Alerting-Signature": SIG_AT_1700000000,
               "X-Grafana-Alerting-Timestamp": "1700000000"}
    assert auth.check(headers, BODY, 1_700_000_000) == "grafana-hmac"
    assert auth.check(headers, BODY, 1_700_000_299) == "grafana-hmac"
    assert auth.check(headers, BODY, 1_700_000_301) is None  # a replay, too late
    assert auth.check(headers, BODY, 1_699_999_699) is None  # from the future
    assert auth.check({**headers, "X-Grafana-Alerting-Timestamp": "1700000001"}, BODY,
                      1_700_000_000) is None
    assert auth.check({"X-Grafana-Alerting-Signature": SIG}, BODY, 1_700_000_000) is None


# Header values as a WSGI server hands them over (latin-1): digits Python's int() refuses or
# takes, an integer past its conversion limit, signs, spaces inside, an empty value.
BAD_STAMPS = ["1" * 5000, "9" * 4301, "\u00b2", "\u00b9\u00b2\u00b3", "+1700000000", "-1",
              "1700000000.0", "1_700_000_000", "1700 000000", "", "0x6553f100", "\u0661"]


@pytest.mark.parametrize("stamp", BAD_STAMPS)
def test_a_bad_hmac_timestamp_is_refused_not_an_error(stamp: str) -> None:
    auth = InboundAuth(hmac_secrets=(Secret("test-hmac-secret"),),
                       hmac_timestamp_header="X-Grafana-Alerting-Timestamp")
    headers = {"X-Grafana-Alerting-Signature": SIG_AT_1700000000,
               "X-Grafana-Alerting-Timestamp": stamp}
    assert auth.check(headers, BODY, 1_700_000_000) is None


@settings(max_examples=300, deadline=None, derandomize=True)
@given(stamp=st.sampled_from(BAD_STAMPS) | st.text(st.characters(max_codepoint=255))
       | st.integers(min_value=0, max_value=10**4000).map(str))
def test_fuzz_hmac_timestamps_never_raise(stamp: str) -> None:
    auth = InboundAuth(hmac_secrets=(Secret("s"),), hmac_timestamp_header="X-Ts")
    assert auth.check({"X-Grafana-Alerting-Signature": "0" * 64, "X-Ts": stamp}, b"{}",
                      1_700_000_000) is None


def test_secrets_from_variables_and_files(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("# rotated 2026-11\nfile-token\n\n")
    auth = InboundAuth.from_env({
        "BRIDGE_WEBHOOK_TOKENS": "a, b", "BRIDGE_WEBHOOK_TOKENS_FILE": str(tmp_path / "tokens"),
        "BRIDGE_WEBHOOK_BASIC_AUTH": "grafana:pw", "BRIDGE_GRAFANA_HMAC_SECRETS": "h",
        "BRIDGE_GRAFANA_HMAC_WINDOW": "2m",
    })
    assert [t.reveal() for t in auth.bearer_tokens] == ["a", "b", "file-token"]
    assert auth.methods == ["bearer", "basic", "grafana-hmac"]
    assert auth.hmac_window == 120
    assert repr(auth) == "InboundAuth(bearer=3, basic=1, hmac=1)"
    with pytest.raises(ConfigError, match="user:password"):
        InboundAuth.from_env({"BRIDGE_WEBHOOK_BASIC_AUTH": "nopassword"})
    with pytest.raises(ConfigError, match="BRIDGE_WEBHOOK_TOKENS_FILE"):
        InboundAuth.from_env({"BRIDGE_WEBHOOK_TOKENS_FILE": str(tmp_path / "missing")})


def test_no_auth_binds_to_loopback_only() -> None:
    assert Settings.from_env({"BRIDGE_BIND": "127.0.0.1:9095"}).auth.configured is False
    Settings.from_env({"BRIDGE_BIND": "[::1]:9095"})
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0:9095 without webhook"):
        Settings.from_env({"BRIDGE_BIND": "0.0.0.0:9095"})
    Settings.from_env({"BRIDGE_BIND": "0.0.0.0:9095", "BRIDGE_WEBHOOK_TOKENS": "t"})
    Settings.from_env({"BRIDGE_BIND": "0.0.0.0:9095", "BRIDGE_INSECURE_NO_AUTH": "1"})
    Settings.from_env({"BRIDGE_BIND": "0.0.0.0:9095"}, insecure_no_auth=True)


def test_serve_refuses_an_open_public_bind(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "serve", "--bind", "0.0.0.0:9", "--state",
         str(tmp_path / "s.db")], capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: refusing to listen on 0.0.0.0:9 without webhook auth")
    assert len(proc.stderr.splitlines()) == 1


@pytest.fixture
def guarded(make_bridge: Callable[..., Bridge]) -> Bridge:
    return make_bridge(auth=InboundAuth(
        bearer_tokens=(Secret("am-token-1"), Secret("am-token-2")),
        basic_users=(("grafana", Secret("grafana-pw")),),
        hmac_secrets=(Secret("test-hmac-secret"),),
    ))


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": basic("grafana", "nope")},
    {"X-Grafana-Alerting-Signature": "0" * 64},
])
def test_unauthenticated_webhooks_get_a_bare_401(guarded: Bridge, fake: Fake,
                                                 headers: dict[str, str]) -> None:
    for path in ("/webhook", "/webhook/grafana", "/webhook/alertmanager"):
        r = guarded.post(path, BODY, headers=headers)
        assert (r.status_code, r.json()) == (401, {"error": "unauthorized"})
    assert guarded.audit() == []


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer am-token-1"}, {"Authorization": "Bearer am-token-2"},
    {"Authorization": basic("grafana", "grafana-pw")}, {"X-Grafana-Alerting-Signature": SIG},
])
def test_each_method_lets_a_webhook_in(guarded: Bridge, headers: dict[str, str]) -> None:
    r = guarded.post("/webhook/grafana", BODY, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "grafana"


def test_health_endpoints_need_no_credentials(guarded: Bridge) -> None:
    assert requests.get(guarded.url + "/-/healthy", timeout=5).status_code == 200
    ready = requests.get(guarded.url + "/-/ready", timeout=5).json()
    assert ready["auth"] == ["bearer", "basic", "grafana-hmac"]


@pytest.mark.parametrize("stamp", ["1" * 5000, "\u00b2"])
def test_a_bad_hmac_timestamp_gets_a_401_over_http(make_bridge: Callable[..., Bridge],
                                                   stamp: str) -> None:
    bridge = make_bridge(auth=InboundAuth(
        hmac_secrets=(Secret("test-hmac-secret"),),
        hmac_timestamp_header="X-Grafana-Alerting-Timestamp"))
    headers = {"X-Grafana-Alerting-Signature": SIG_AT_1700000000,
               "X-Grafana-Alerting-Timestamp": stamp}
    r = bridge.post("/webhook/grafana", BODY, headers=headers)
    assert (r.status_code, r.json()) == (401, {"error": "unauthorized"})
    metrics = requests.get(bridge.url + "/metrics", timeout=5).text
    assert 'alert_bridge_webhooks_total{code="401",source="grafana"} 1.0' in metrics
