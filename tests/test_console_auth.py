"""Console sessions without a browser: what the signed cookie holds, and when it stops working."""

from __future__ import annotations

import pytest

from bridge.auth import InboundAuth
from bridge.client import Secret
from bridge.console.auth import MAX_SESSION, ConsoleAuth, name_problem
from bridge.vocab import Role

SECRET = Secret("a-session-secret-of-at-least-32-chars")
NOW = 1_800_000_000.0


def auth(secret: Secret | None = SECRET, admin: tuple[str, ...] = ("adm",),
         viewer: tuple[str, ...] = ("view",), idle: float = 600.0) -> ConsoleAuth:
    return ConsoleAuth(InboundAuth(bearer_tokens=tuple(Secret(t) for t in admin)),
                       InboundAuth(bearer_tokens=tuple(Secret(t) for t in viewer)), secret, idle)


def test_every_worker_and_replica_with_the_same_secret_accepts_the_session() -> None:
    got = auth().log_in("alice", "adm", NOW)
    assert got is not None
    person, cookie = got
    other_worker = auth().person(cookie, NOW + 1)
    assert other_worker is not None
    assert (other_worker.name, other_worker.role, other_worker.csrf) == (
        "alice", Role.ADMIN, person.csrf)
    assert other_worker.who == "alice (console, admin)"
    assert auth(Secret("another-secret-of-at-least-32-chars!")).person(cookie, NOW) is None
    assert "adm" not in cookie and SECRET.reveal() not in cookie


def test_a_session_ends_when_idle_too_long_too_old_tampered_with_or_its_token_is_gone() -> None:
    console = auth(idle=600)
    got = console.log_in("alice", "view", NOW)
    assert got is not None
    person, cookie = got
    assert person.role == Role.VIEWER and not person.may_act
    assert console.person(cookie, NOW + 600) is not None
    assert console.person(cookie, NOW + 601) is None  # idle
    busy, t = cookie, NOW
    while t + 500 < NOW + MAX_SESSION:  # kept busy all day...
        t += 500
        still = console.person(busy, t)
        assert still is not None
        busy = console.cookie(still, t)
    assert console.person(busy, NOW + MAX_SESSION + 1) is None  # ...it still ends
    assert console.person(cookie[:-2] + "xx", NOW) is None  # tampered
    assert console.person("", NOW) is None
    assert auth(viewer=("rotated",)).person(cookie, NOW) is None  # the token was removed
    assert auth(admin=("view",), viewer=()).person(cookie, NOW).role == Role.ADMIN  # type: ignore[union-attr]


def test_tokens_and_what_turns_the_console_off() -> None:
    assert auth().log_in("alice", "wrong", NOW) is None
    assert auth(admin=("both",), viewer=("both",)).log_in("a", "both", NOW)[0].role == Role.ADMIN  # type: ignore[index]
    assert auth(admin=(), viewer=()).problem is not None
    assert "BRIDGE_SESSION_SECRET" in (auth(secret=None).problem or "")
    assert auth(secret=None).person("anything", NOW) is None
    assert "adm" not in repr(auth()) and SECRET.reveal() not in repr(auth())


@pytest.mark.parametrize(("name", "problem"), [
    ("alice", None), ("Ana María", None), ("", "give your name"), ("x" * 65, "at most 64"),
    ("eve\u202e", "without control or invisible"), ("a\nb", "without control or invisible"),
])
def test_names_recorded_in_the_audit(name: str, problem: str | None) -> None:
    found = name_problem(name)
    assert (found is None) if problem is None else (problem in (found or ""))
