"""Telling people: the bridge's notices, delivered for real to a chat webhook on loopback and to a
real Prometheus Alertmanager (Debian's prometheus-alertmanager)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from bridge import notices, notify
from bridge.client import Secret
from bridge.notices import Failure, LadderEnd, Notice, NoticeState, Pending, Subject, Told
from bridge.notify import Alertmanagers, Notifier, Sender
from tests import alertmanager as am
from tests.helpers import Clock, Receiver, free_port, wait_until

T0 = 1_800_000_000.0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def ours(caplog: pytest.LogCaptureFixture) -> str:
    """What the notifier logged (the test's receiver logs its requests, paths and all)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "bridge.notify")


def pending(operation_id: int = 42, url: str = "") -> Notice:
    subject = Subject(operation_id, "core-switch-01", "device_factory", "wipe-compromised",
                      "Compromised")
    return notices.approval_pending(Pending(subject, T0, T0 + 3600), url)


def test_a_notice_carries_the_labels_routes_match_and_says_what_to_do() -> None:
    notice = pending(url="https://noc.example.net/bridge/ui/operations/42")
    assert notice.all_labels == {
        "alertname": "AlertBridgeApprovalPending", "alert_bridge": "true", "severity": "warning",
        "device": "core-switch-01", "operation": "device_factory", "rule": "wipe-compromised",
        "source_alertname": "Compromised", "operation_id": "42"}
    assert notice.to_alertmanager(T0 + 240) == {
        "labels": notice.all_labels,
        "annotations": {
            "summary": "device_factory on core-switch-01 (rule wipe-compromised, operation 42)"
                       " waits for approval until 2027-01-15T09:00:00.000Z",
            "action": "alert-bridge approve 42  (or: alert-bridge reject 42)",
            "console_url": "https://noc.example.net/bridge/ui/operations/42"},
        "startsAt": "2027-01-15T08:00:00.000Z", "endsAt": "2027-01-15T08:04:00.000Z",
        "generatorURL": "https://noc.example.net/bridge/ui/operations/42"}
    assert notice.key == pending(url="elsewhere").key  # the labels are its identity
    assert notice.key != pending(operation_id=43).key


def test_every_notice_names_its_alert_and_severity_and_links_the_console() -> None:
    state = NoticeState(
        failures=(Failure(Subject(7, "r1", "reboot", "reboot-r", "Down"), "unknown", "timeout",
                          T0),),
        ladders=(LadderEnd(Subject(8, "r1", "reboot", "reboot-r", "Down"), 900.0,
                           "it was the last step of rule reboot-r", T0),),
        breaker_since=T0, breaker_reason="storm breaker tripped: 51 operations")
    failed, ladder, breaker = notices.notices(
        state, lambda op: f"https://noc/ui/operations/{op}" if op else "https://noc/ui/")
    assert [(n.alertname, n.severity, n.url) for n in (failed, ladder, breaker)] == [
        ("AlertBridgeOperationFailed", "warning", "https://noc/ui/operations/7"),
        ("AlertBridgeNotRemediated", "critical", "https://noc/ui/operations/8"),
        ("AlertBridgeBreakerOpen", "critical", "https://noc/ui/")]
    assert failed.summary == "reboot on r1 (rule reboot-r, operation 7) ended unknown (timeout)"
    assert failed.action.endswith("alert-bridge ack 7")
    assert ladder.summary == ("Down on r1 still fires 15m after reboot on r1 (rule reboot-r,"
                              " operation 8); no step follows: it was the last step of rule"
                              " reboot-r")
    assert breaker.labels == {} and breaker.action.endswith("alert-bridge resume")
    assert notices.notices(NoticeState()) == []


def test_chat_text_cannot_ping_a_channel_or_disguise_a_link() -> None:
    notice = Notice("AlertBridgeOperationFailed", "warning", {},
                    "<!channel> & <https://evil.example|click>", "ack", T0)
    assert notice.to_webhook(None)["text"] == (
        "[FIRING] AlertBridgeOperationFailed: &lt;!channel&gt; &amp;"
        " &lt;https://evil.example|click&gt;\nack")


def test_chat_webhooks_hear_once_that_it_started_and_once_that_it_ended(
    receiver: Receiver,
) -> None:
    clock = Clock(T0)
    notifier = Notifier(None, (Secret(receiver.url + "/hooks/T0/B0/secret"),), clock=clock)
    notice = pending()
    assert notifier.deliver([Told(notice)]) == {notice.key: {"told_resolved", "told_start"}}
    assert notifier.deliver([Told(notice, told_start=True)]) == {notice.key: {"told_resolved"}}
    assert notifier.deliver([Told(notice, ended=T0 + 60, told_start=True)]) == {
        notice.key: {"told_resolved", "told_end"}}
    assert receiver.texts() == [
        "[FIRING] AlertBridgeApprovalPending: device_factory on core-switch-01 (rule"
        " wipe-compromised, operation 42) waits for approval until 2027-01-15T09:00:00.000Z\n"
        "alert-bridge approve 42  (or: alert-bridge reject 42)",
        "[RESOLVED] AlertBridgeApprovalPending: device_factory on core-switch-01 (rule"
        " wipe-compromised, operation 42) waits for approval until 2027-01-15T09:00:00.000Z",
    ]
    firing, resolved = receiver.bodies
    assert (firing["status"], resolved["status"], resolved["endsAt"]) == (
        "firing", "resolved", "2027-01-15T08:01:00.000Z")
    # Something that came and went between two rounds is not worth a message.
    assert notifier.deliver([Told(pending(43), ended=T0)]) == {
        pending(43).key: {"told_resolved", "told_start", "told_end"}}
    assert len(receiver.bodies) == 2


def test_a_message_that_cannot_be_delivered_is_tried_again_then_given_up_and_logged(
    receiver: Receiver, caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(T0)
    secret_path = "/hooks/T0/B0/xoxb-very-secret"
    notifier = Notifier(None, (Secret(receiver.url + secret_path),), clock=clock)
    receiver.refuse(2, 503)
    assert notifier.deliver([Told(pending())]) == {pending().key: {"told_resolved"}}
    clock.now += 30
    assert notifier.deliver([Told(pending())]) == {pending().key: {"told_resolved"}}
    clock.now += 30
    assert notifier.deliver([Told(pending())])[pending().key] == {"told_resolved", "told_start"}
    assert len(receiver.refused) == 2 and len(receiver.bodies) == 1
    # Past GIVE_UP a refused message is given up, with the whole text in the log.
    receiver.refuse(1, 500)
    clock.now = T0 + notify.GIVE_UP + 1
    with caplog.at_level(logging.WARNING, "bridge.notify"):
        assert "told_start" in notifier.deliver([Told(pending(44))])[pending(44).key]
    logged = ours(caplog)
    assert "gave up telling the chat webhooks about AlertBridgeApprovalPending" in logged
    assert f"chat message to http://127.0.0.1:{receiver.server.port} failed: HTTP 500" in logged
    assert "secret" not in logged  # the URL's path is the webhook's secret


def test_an_unreachable_receiver_is_logged_by_host_and_costs_one_short_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nobody listens
    notifier = Notifier(Alertmanagers((f"http://user:pw@127.0.0.1:{port}",)),
                        (Secret(f"http://127.0.0.1:{port}/hooks/secret"),), clock=Clock(T0))
    with caplog.at_level(logging.WARNING, "bridge.notify"):
        delivered = notifier.deliver([Told(pending())])
    assert delivered == {pending().key: set()}
    logged = ours(caplog)
    assert f"notification to http://127.0.0.1:{port} failed: ConnectionError" in logged
    assert "pw" not in logged and "secret" not in logged


# -- a real Alertmanager ------------------------------------------------------------------------

@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[am.Alertmanager]:
    am.require_alertmanager()
    instance = am.Alertmanager(tmp_path / "am", am.config("http://127.0.0.1:9/unused"))
    yield instance.start()
    instance.stop()


def active(manager: am.Alertmanager) -> list[dict[str, object]]:
    return requests.get(manager.url + "/api/v2/alerts", timeout=5).json()


def test_alertmanager_shows_a_notice_while_it_lasts_and_resolves_it_when_it_ends(
    alertmanager: am.Alertmanager,
) -> None:
    notice = replace(pending(), since=time.time())
    managers = Alertmanagers((alertmanager.url, f"http://127.0.0.1:{free_port()}"))
    notifier = Notifier(managers, interval=1.0)
    assert notifier.deliver([Told(notice)]) == {notice.key: {"told_start"}}
    (shown,) = wait_until(lambda: active(alertmanager), what="the notice in Alertmanager")
    assert shown["labels"] == notice.all_labels
    assert shown["annotations"]["action"] == "alert-bridge approve 42  (or: alert-bridge reject 42)"
    assert managers.firing() == {shown["fingerprint"]}  # the second member does not answer

    # Alertmanager takes a resolution only with an endsAt it has reached.
    ended = notifier.deliver([Told(notice, ended=time.time(), told_start=True)])
    assert ended == {notice.key: {"told_resolved", "told_end"}}
    wait_until(lambda: active(alertmanager) == [], what="the notice resolved in Alertmanager")
    assert managers.firing() == set()


def received(manager: am.Alertmanager) -> int:
    """How many alerts Alertmanager's API has taken in (its own counter)."""
    text = requests.get(manager.url + "/metrics", timeout=5).text
    return sum(int(float(m)) for m in re.findall(
        r'^alertmanager_alerts_received_total\{[^}]*status="firing"[^}]*\} (\S+)$', text, re.M))


def test_alertmanager_gets_notices_again_only_when_they_change_or_the_resend_is_due(
    alertmanager: am.Alertmanager,
) -> None:
    clock = Clock(time.time())
    one, two = (replace(pending(n), since=clock.now) for n in (42, 43))
    notifier = Notifier(Alertmanagers((alertmanager.url,)), clock=clock)
    notifier.deliver([Told(one)])
    assert received(alertmanager) == 1
    clock.now += 10
    notifier.deliver([Told(one)])  # nothing new, and the resend is not due
    assert received(alertmanager) == 1
    notifier.deliver([Told(one), Told(two)])  # a new one: all of them again
    assert received(alertmanager) == 3
    clock.now += notify.RESEND
    notifier.deliver([Told(one), Told(two)])  # the resend
    assert received(alertmanager) == 5


def test_a_redirect_is_not_followed(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "bridge.notify"):
        assert not Sender().post(receiver.url + "/redirect", {"text": "x"}, "chat message")
    assert receiver.bodies == [] and "HTTP 307" in ours(caplog)
