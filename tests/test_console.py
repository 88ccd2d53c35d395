"""The operator console in a real browser (Debian's Chromium, driven by Playwright), against the
bridge over real HTTP (under gunicorn, or in a thread where a test needs the clock) and the
fake device API."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect
from werkzeug.wrappers import Request, Response

from bridge.audit import iso
from bridge.auth import InboundAuth
from bridge.client import Secret
from bridge.console.auth import COOKIE
from bridge.store import SqliteStore
from tests.browser import (
    ADMIN_TOKEN,
    CHROMIUM,
    CONSOLE_ENV,
    SESSION_SECRET,
    VIEWER_TOKEN,
    accept_dialogs,
    chromium,
    cookie,
    csrf_of,
    have_chromium,
    log_in,
    visible_text,
)
from tests.conftest import Bridge, Fake
from tests.helpers import (
    LADDER,
    BridgeProcess,
    ThreadServer,
    audit,
    need,
    outcomes,
    wait_until,
)
from tests.test_guards import WIPE, Clock

RULES = "defaults: {cooldown: 1h}\n" + WIPE + """\
  - name: sync-drift
    match: ['alertname = "Drift"']
    device: "{{ labels.device }}"
    operation: sync
"""


def alert(alertname: str, device: str, labels: dict[str, str] | None = None,
          annotations: dict[str, str] | None = None) -> bytes:
    """An Alertmanager webhook body with one firing alert."""
    return json.dumps({
        "version": "4", "status": "firing", "receiver": "bridge", "groupKey": "{}:{}",
        "alerts": [{"status": "firing", "labels": {"alertname": alertname, "device": device,
                                                   **(labels or {})},
                    "annotations": annotations or {}, "startsAt": "2026-11-25T10:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z"}]}).encode()


def send(url: str, body: bytes) -> dict[str, Any]:
    r = requests.post(url + "/webhook", data=body, timeout=30,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    return r.json()


def state_of(state: str | Path, operation_id: int) -> str:
    store = SqliteStore(state)
    try:
        op = store.operation(operation_id, 0)
        assert op is not None
        return op.state
    finally:
        store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    need(have_chromium(), f"the console's browser tests need Chromium at {CHROMIUM}"
                          " (Debian: apt-get install chromium)")
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def served(gunicorn_bridge: Callable[..., BridgeProcess]) -> BridgeProcess:
    """The bridge under gunicorn, two workers, its console on."""
    return gunicorn_bridge(RULES, workers=2, env=CONSOLE_ENV)


def console(**overrides: Any) -> dict[str, Any]:
    """Settings of an in-thread bridge whose console is on."""
    return {"admin_auth": InboundAuth(bearer_tokens=(Secret(ADMIN_TOKEN),)),
            "viewer_auth": InboundAuth(bearer_tokens=(Secret(VIEWER_TOKEN),)),
            "session_secret": Secret(SESSION_SECRET), **overrides}


def test_an_admin_approves_a_factory_reset_and_the_device_api_receives_it(
    served: BridgeProcess, page: Page, fake: Fake
) -> None:
    send(served.url, alert("Owned", "r1"))
    accept_dialogs(page)
    log_in(page, served.url + "/", "alice", ADMIN_TOKEN)
    expect(page.locator("h1")).to_have_text("Overview")
    page.get_by_role("link", name="Approvals").click()
    card = page.locator(".approval", has_text="r1")
    expect(card).to_contain_text("factory")
    expect(card).to_contain_text("left")
    card.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("status")).to_have_text("You approved it.")
    wait_until(lambda: [(c["device"], c["json"]) for c in fake.calls()]
               == [("r1", {"operation": "factory"})], what="the factory reset of r1")
    outcomes(served, 1)
    assert ("approval", "approved", "approved by alice (console, admin)") in [
        (r.event, r.outcome, r.reason) for r in audit(served)]
    page.reload()  # the operation's timeline, as the audit has it now
    expect(page.locator(".timeline > li .event")).to_have_text(
        ["decision", "approval", "outcome"])


def test_a_viewer_finds_no_way_to_act_and_is_refused_if_they_try(
    served: BridgeProcess, page: Page, fake: Fake
) -> None:
    send(served.url, alert("Owned", "r1"))
    log_in(page, served.url + "/ui/approvals", "victor", VIEWER_TOKEN)
    expect(page.locator(".approval")).to_contain_text("an admin approves or rejects")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    expect(page.get_by_role("button", name="Reject")).to_have_count(0)
    page.get_by_role("link", name="Overview").click()
    expect(page.locator("#sending")).to_contain_text("Sending")
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    token = csrf_of(page)  # a valid session and CSRF token: only the role is missing
    for path in ("/ui/operations/1/approve", "/ui/operations/1/reject", "/ui/pause",
                 "/ui/resume"):
        answer = page.request.post(served.url + path, form={"csrf": token},
                                   max_redirects=0)
        assert answer.status == 403, path
        assert "Viewers may look but not act" in answer.text()
    assert state_of(served.state, 1) == "pending_approval"
    assert fake.calls() == []


def test_a_form_without_its_csrf_token_or_from_another_site_is_refused(
    served: BridgeProcess, page: Page
) -> None:
    send(served.url, alert("Owned", "r1"))
    log_in(page, served.url + "/", "alice", ADMIN_TOKEN)
    approve = served.url + "/ui/operations/1/approve"
    for form in ({}, {"csrf": "forged"}):
        answer = page.request.post(approve, form=form, max_redirects=0)
        assert (answer.status, "no valid CSRF token" in answer.text()) == (403, True)
    # A page of another site (localhost is not 127.0.0.1) posts a form to the console.
    attacker = ThreadServer(lambda environ, start: Response(
        f'<form method="post" action="{approve}"><input name="csrf" value="guess">'
        '<button>Win a prize</button></form>', mimetype="text/html")(environ, start))
    try:
        page.goto(attacker.url.replace("127.0.0.1", "localhost"))
        page.get_by_role("button", name="Win a prize").click()
        expect(page.locator("main")).to_contain_text("sent from another site: refused")
    finally:
        attacker.close()
    assert state_of(served.state, 1) == "pending_approval"


def test_the_audit_filters_by_device_and_downloads_what_it_shows(
    make_bridge: Callable[..., Bridge], page: Page
) -> None:
    bridge = make_bridge(RULES, start_dispatcher=False, **console())
    for device in ("r1", "r2", "r1"):
        send(bridge.url, alert("Drift", device))
    log_in(page, bridge.url + "/ui/audit", "alice", VIEWER_TOKEN)
    expect(page.locator(".record")).to_have_count(3)
    page.get_by_label("Device").fill("r1")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator(".record")).to_have_count(2)
    assert "device=r1" in page.url
    for record in page.locator(".record summary").all():
        expect(record).to_contain_text("sync on r1")
    page.locator(".record summary").first.click()  # every field, once opened
    expect(page.locator(".record .fields").first).to_contain_text("cooldown")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download as JSON lines").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert [(json.loads(x)["device"], json.loads(x)["outcome"]) for x in lines] == [
        ("r1", "execute"), ("r1", "cooldown")]


HOSTILE = '<script>window.pwned = 1</script><img src="http://192.0.2.1/x.png">'


def test_html_in_an_alert_stays_text_and_no_page_loads_anything_from_another_origin(
    make_bridge: Callable[..., Bridge], page: Page
) -> None:
    bridge = make_bridge(RULES, start_dispatcher=False, **console())
    send(bridge.url, alert("Owned", "r1", {"note": HOSTILE}, {"summary": HOSTILE}))
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    log_in(page, bridge.url + "/", "alice", ADMIN_TOKEN)
    for path in ("/ui/", "/ui/approvals", "/ui/operations/1", "/ui/audit", "/ui/devices",
                 "/ui/devices/r1", "/ui/rules", "/ui/rules/wipe-owned", "/ui/explain"):
        answer = page.goto(bridge.url + path)
        assert answer is not None and answer.status == 200, path
        assert "default-src 'none'" in answer.headers["content-security-policy"]
    page.goto(bridge.url + "/ui/operations/1")
    assert visible_text(page).count(HOSTILE) == 2  # the label and the annotation, as text
    assert page.evaluate("window.pwned") is None
    expect(page.locator("main img")).to_have_count(0)
    strangers = [url for url in requested if not url.startswith(bridge.url + "/")]
    assert strangers == []
    assert any(url.endswith("/ui/static/console.css") for url in requested)


def test_the_session_cookie_is_http_only_same_site_strict_and_secure_over_https(
    make_bridge: Callable[..., Bridge], page: Page
) -> None:
    bridge = make_bridge(RULES, start_dispatcher=False, **console())
    log_in(page, bridge.url + "/", "alice", ADMIN_TOKEN)
    session = cookie(page, COOKIE)
    assert (session["httpOnly"], session["sameSite"], session["secure"], session["path"]) == (
        True, "Strict", False, "/ui")
    assert page.evaluate("document.cookie") == ""
    assert ADMIN_TOKEN not in session["value"]
    bridge.stop()
    # Behind a proxy that serves it over HTTPS (what BRIDGE_EXTERNAL_URL says), it is Secure.
    https = make_bridge(RULES, start_dispatcher=False,
                        **console(external_url="https://noc.example.net"))
    form = requests.get(https.url + "/ui/login", timeout=5)
    assert "Secure" in form.headers["Set-Cookie"]


def test_a_session_ends_after_its_idle_time_and_at_logout(
    make_bridge: Callable[..., Bridge], page: Page
) -> None:
    clock = Clock(1_800_000_000.0)
    bridge = make_bridge(RULES, start_dispatcher=False, clock=clock,
                         **console(session_idle=300.0))
    log_in(page, bridge.url + "/ui/rules", "alice", ADMIN_TOKEN)
    expect(page.locator("h1")).to_have_text("Rules in force")  # back where they were going
    clock.now += 299
    page.reload()  # within the idle time: still in, and the idle time starts again
    expect(page.locator("h1")).to_have_text("Rules in force")
    clock.now += 299
    page.reload()
    expect(page.locator("h1")).to_have_text("Rules in force")
    clock.now += 301
    page.reload()
    expect(page.locator("h1")).to_have_text("Log in")
    log_in(page, bridge.url + "/", "alice", ADMIN_TOKEN)
    expect(page.locator("h1")).to_have_text("Overview")
    page.get_by_role("button", name="Log out").click()
    expect(page.locator("h1")).to_have_text("Log in")
    page.goto(bridge.url + "/ui/")
    expect(page.locator("h1")).to_have_text("Log in")
    assert [c["name"] for c in page.context.cookies()] == ["alert_bridge_login"]


class StrippingProxy:
    """A reverse proxy that serves the bridge under /bridge and strips that prefix, as
    `location /bridge/ { proxy_pass http://bridge:9095/; }` does in nginx."""

    def __init__(self) -> None:
        self.upstream = ""
        self.server = ThreadServer(self.app)
        self.url = self.server.url

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        path = request.full_path.rstrip("?").removeprefix("/bridge")
        upstream = requests.request(
            request.method, self.upstream + path, data=request.get_data(), timeout=30,
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            allow_redirects=False)
        hop = {"connection", "transfer-encoding", "content-encoding", "content-length"}
        headers = [(k, v) for k, v in upstream.raw.headers.items() if k.lower() not in hop]
        return Response(upstream.content, upstream.status_code, headers)(environ, start_response)


def test_the_console_works_under_the_path_of_the_external_url(
    make_bridge: Callable[..., Bridge], page: Page
) -> None:
    proxy = StrippingProxy()
    try:
        bridge = make_bridge(RULES, start_dispatcher=False,
                             **console(external_url=proxy.url + "/bridge/"))
        proxy.upstream = bridge.url
        send(bridge.url, alert("Owned", "r1"))
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        log_in(page, proxy.url + "/bridge/", "alice", ADMIN_TOKEN)
        expect(page.locator("h1")).to_have_text("Overview")
        page.get_by_role("link", name="Approvals").click()
        page.get_by_role("link", name="#1").click()
        assert page.url == proxy.url + "/bridge/ui/operations/1"
        assert cookie(page, COOKIE)["path"] == "/bridge/ui"
        assert all(url.startswith(proxy.url + "/bridge/") for url in requested), requested
        # A proxy that keeps the prefix reaches the same pages.
        direct = page.goto(bridge.url + "/bridge/ui/login")
        assert direct is not None and direct.status == 200
    finally:
        proxy.server.close()


def test_without_tokens_or_a_session_secret_the_console_says_how_to_turn_it_on(
    make_bridge: Callable[..., Bridge], page: Page
) -> None:
    off = make_bridge(RULES, start_dispatcher=False)
    answer = page.goto(off.url + "/")
    assert answer is not None and answer.status == 403
    expect(page.locator("main")).to_contain_text("Set BRIDGE_ADMIN_TOKENS")
    off.stop()
    no_secret = make_bridge(RULES, start_dispatcher=False, **console(session_secret=None))
    answer = page.goto(no_secret.url + "/ui/login")
    assert answer is not None and answer.status == 403
    expect(page.locator("main")).to_contain_text("BRIDGE_SESSION_SECRET")


def test_a_wrong_token_is_refused_and_login_goes_nowhere_but_the_console(
    make_bridge: Callable[..., Bridge], page: Page
) -> None:
    bridge = make_bridge(RULES, start_dispatcher=False, **console())
    log_in(page, bridge.url + "/", "mallory", "not-a-token")
    expect(page.get_by_role("alert")).to_have_text("That token is not accepted.")
    page.goto(bridge.url + "/ui/login?next=//evil.example/")
    log_in(page, page.url, "alice", ADMIN_TOKEN)
    assert page.url == bridge.url + "/ui/"


def test_an_admin_pauses_and_resumes_and_both_are_audited(
    make_bridge: Callable[..., Bridge], page: Page
) -> None:
    bridge = make_bridge(RULES, start_dispatcher=False, **console())
    accept_dialogs(page)
    log_in(page, bridge.url + "/", "alice", ADMIN_TOKEN)
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#sending")).to_contain_text("paused by alice (console, admin)")
    assert send(bridge.url, alert("Drift", "r1"))["summary"] == {"paused": 1}
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#sending")).not_to_contain_text("Paused")
    assert [(r.outcome, r.reason) for r in bridge.audit() if r.event == "operator"] == [
        ("sending_paused", "paused by alice (console, admin)"),
        ("sending_resumed", "resumed by alice (console, admin) (was: paused)")]


def test_explain_shows_what_the_bridge_would_do_and_a_device_page_its_history(
    make_bridge: Callable[..., Bridge], page: Page
) -> None:
    bridge = make_bridge(RULES, start_dispatcher=False, **console())
    send(bridge.url, alert("Drift", "r2"))
    log_in(page, bridge.url + "/ui/explain", "victor", VIEWER_TOKEN)
    page.locator("textarea").fill(alert("Drift", "r2").decode())
    page.get_by_role("button", name="Explain").click()
    expect(page.locator("main")).to_contain_text("MATCH → sync on r2")
    expect(page.locator("main")).to_contain_text("cooldown")
    page.goto(bridge.url + "/ui/devices")
    page.get_by_label("Name contains").fill("R2")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="r2").click()
    expect(page.locator("h1")).to_have_text("r2")
    expect(page.locator(".card").first).to_contain_text("sync until")
    expect(page.locator(".weeks b").last).to_have_text("1")
    expect(page.locator(".record")).to_have_count(1)


def test_the_overview_and_a_rules_page_show_how_well_it_remediates(
    make_bridge: Callable[..., Bridge], fake: Fake, page: Page
) -> None:
    fake.set_durations(sync=0, reboot=0)
    clock = Clock(float(int(time.time())))
    bridge = make_bridge(LADDER, clock=clock, start_dispatcher=False, **console())
    down = alert("DeviceUnreachable", "r1")
    send(bridge.url, down)
    bridge.dispatcher.step()
    clock.now += 601  # the sync's window passes: the reboot follows
    bridge.context.loop.run_once()
    bridge.dispatcher.step()
    clock.now += 45
    resolved = json.loads(down)
    resolved["alerts"][0].update(status="resolved", endsAt=iso(clock.now))
    send(bridge.url, json.dumps(resolved).encode())
    bridge.context.loop.run_once()
    log_in(page, bridge.url + "/ui/", "victor", VIEWER_TOKEN)
    expect(page.locator(".remediation")).to_contain_text(
        "Last day: 1 of 2 verified operations remediated (50%), median 45s to resolve.")
    page.goto(bridge.url + "/ui/rules/unreachable-router")
    rows = page.locator(".remediation tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("reboot")
    expect(rows.nth(0)).to_contain_text("1 (100%)")
    expect(rows.nth(0)).to_contain_text("45 s")
    expect(rows.nth(1)).to_contain_text("0 (0%)")


def test_the_overview_counts_the_replicas_that_beat(
    make_bridge: Callable[..., Bridge], page: Page
) -> None:
    bridge = make_bridge(RULES, start_dispatcher=False, **console())
    store = bridge.context.store
    now = time.time()
    store.heartbeat("host-a:1", "test", now)
    store.heartbeat("host-b:2", "test", now)
    store.heartbeat("host-c:3", "test", now - 3600)  # gone an hour ago
    log_in(page, bridge.url + "/ui/", "victor", VIEWER_TOKEN)
    expect(page.locator(".replicas")).to_contain_text("2 replicas beating")
    expect(page.locator(".replicas")).to_contain_text(bridge.settings.state_path)
