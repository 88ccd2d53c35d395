"""The pure decision core: alerts x rules x cooldowns x now -> decisions."""

from __future__ import annotations

from types import MappingProxyType

from bridge import decide as d
from bridge.payloads import Alert
from bridge.rules import parse_rules

NOW = 1_800_000_000.0

RULES = parse_rules("""\
defaults: {cooldown: 10m}
rules:
  - name: reboot-unreachable
    match: ['alertname = "DeviceUnreachable"', 'site != "lab"']
    device: "{{ labels.device }}"
    operation: reboot
    cooldown: 1h
  - name: sync-unreachable
    match: ['alertname = "DeviceUnreachable"']
    device: "{{ labels.device }}"
    operation: sync
  - name: reconf-on-resolve
    match: ['alertname = "PolicyViolation"']
    device: "{{ labels.device }}"
    operation: reconf
    status: resolved
  - name: bad-template
    match: ['alertname = "Weird"']
    device: "{{ labels.device.nope() }}"
    operation: sync
""")


def alert(status: str = "firing", **labels: str) -> Alert:
    return Alert(status=status, labels=MappingProxyType(labels),
                 annotations=MappingProxyType({}), starts_at=None, ends_at=None,
                 fingerprint="f" + labels.get("device", ""), generator_url="")


def verdicts(decisions: list[d.Decision]) -> list[tuple[str | None, str, str, str]]:
    return [(x.rule.name if x.rule else None, x.device, x.operation, x.verdict)
            for x in decisions]


def test_every_matching_rule_acts_with_its_own_cooldown() -> None:
    out = d.decide([alert(alertname="DeviceUnreachable", device="r1")], RULES, {}, NOW,
                   dry_run=False)
    assert verdicts(out) == [
        ("reboot-unreachable", "r1", "reboot", "execute"),
        ("sync-unreachable", "r1", "sync", "execute"),
    ]
    assert [x.until for x in out] == [NOW + 3600, NOW + 600]


def test_each_alert_is_judged_on_its_own_labels() -> None:
    alerts = [alert(alertname="DeviceUnreachable", device="r1", site="lab"),
              alert(alertname="DeviceUnreachable", device="r2", site="hq")]
    out = d.decide(alerts, RULES, {}, NOW, dry_run=False)
    assert verdicts(out) == [
        ("sync-unreachable", "r1", "sync", "execute"),
        ("reboot-unreachable", "r2", "reboot", "execute"),
        ("sync-unreachable", "r2", "sync", "execute"),
    ]


def test_same_device_and_operation_twice_in_one_payload_is_one_action() -> None:
    alerts = [alert(alertname="DeviceUnreachable", device="r1", instance="a"),
              alert(alertname="DeviceUnreachable", device="r1", instance="b")]
    out = d.decide(alerts, RULES, {}, NOW, dry_run=False)
    assert [x.verdict for x in out] == ["execute", "execute", "duplicate", "duplicate"]


def test_cooldown_blocks_until_it_ends() -> None:
    cooldowns = {("r1", "reboot"): NOW + 5, ("r1", "sync"): NOW - 1}
    out = d.decide([alert(alertname="DeviceUnreachable", device="r1")], RULES, cooldowns, NOW,
                   dry_run=False)
    assert [x.verdict for x in out] == ["cooldown", "execute"]
    assert out[0].until == NOW + 5
    assert out[0].reason == "in cooldown until 2027-01-15T08:00:05.000Z"


def test_cooldown_ending_exactly_now_no_longer_blocks() -> None:
    out = d.decide([alert(alertname="DeviceUnreachable", device="r1")], RULES,
                   {("r1", "reboot"): NOW}, NOW, dry_run=False)
    assert out[0].verdict == "execute"


def test_dry_run_decides_but_does_not_execute() -> None:
    out = d.decide([alert(alertname="DeviceUnreachable", device="r1")], RULES,
                   {("r1", "sync"): NOW + 60}, NOW, dry_run=True)
    assert [x.verdict for x in out] == ["dry_run", "cooldown"]


def test_status_selects_rules() -> None:
    firing = alert(alertname="PolicyViolation", device="r1")
    resolved = alert("resolved", alertname="PolicyViolation", device="r1")
    assert verdicts(d.decide([firing], RULES, {}, NOW, dry_run=False)) == [
        (None, "", "", "no_match")]
    assert verdicts(d.decide([resolved], RULES, {}, NOW, dry_run=False)) == [
        ("reconf-on-resolve", "r1", "reconf", "execute")]


def test_missing_device_label_is_an_empty_device() -> None:
    out = d.decide([alert(alertname="DeviceUnreachable")], RULES, {}, NOW, dry_run=False)
    assert [x.verdict for x in out] == ["empty_device", "empty_device"]
    assert out[0].reason == "device template '{{ labels.device }}' rendered an empty name"


def test_template_error_is_a_verdict_not_an_exception() -> None:
    out = d.decide([alert(alertname="Weird", device="r1")], RULES, {}, NOW, dry_run=False)
    assert [x.verdict for x in out] == ["template_error"]
    assert "device" in out[0].reason


def test_dot_segments_and_control_characters_are_invalid_devices() -> None:
    for name in (".", "..", "r\n1", "a\x00b", "a\tb"):
        out = d.decide([alert(alertname="DeviceUnreachable", device=name)], RULES, {}, NOW,
                       dry_run=False)
        assert {x.verdict for x in out} == {"invalid_device"}, name


def test_no_rule_matched() -> None:
    out = d.decide([alert(alertname="Other", device="r1")], RULES, {}, NOW, dry_run=False)
    assert verdicts(out) == [(None, "", "", "no_match")]
    assert out[0].reason == "no rule matches this firing alert"


def test_summarize_counts_in_a_stable_order() -> None:
    alerts = [alert(alertname="DeviceUnreachable", device="r1"), alert(alertname="Other")]
    out = d.decide(alerts, RULES, {("r1", "sync"): NOW + 1}, NOW, dry_run=False)
    assert d.summarize(out) == {"execute": 1, "cooldown": 1, "no_match": 1}


def test_the_alertname_index_keeps_file_order_and_misses_nothing() -> None:
    rules = parse_rules("""\
rules:
  - {name: a, match: ['alertname = "X"'], device: d, operation: sync}
  - {name: b, match: ['site = "hq"'], device: d, operation: reconf}
  - {name: c, match: ['alertname = "Y"'], device: d, operation: reboot}
  - {name: d, match: ['alertname =~ "X|Y"'], device: d, operation: sync}
  - {name: e, match: ['alertname = "X"', 'alertname = "Y"'], device: d, operation: sync}
  - {name: f, match: ['alertname = "X"'], device: e, operation: sync}
""")
    assert [r.name for r in rules.candidates({"alertname": "X"})] == ["a", "b", "d", "e", "f"]
    assert [r.name for r in rules.candidates({"alertname": "Y"})] == ["b", "c", "d", "e"]
    assert [r.name for r in rules.candidates({})] == ["b", "d", "e"]
    for labels in ({"alertname": "X", "site": "hq"}, {"alertname": "Y"}, {"site": "hq"}):
        every = [r.name for r in rules.rules if r.matches(labels)]
        assert [r.name for r in rules.candidates(labels) if r.matches(labels)] == every
