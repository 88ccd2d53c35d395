"""Tests for bridge.rules: loading rules.yaml, matchers, durations and device templates."""

# Expected messages are compared whole, as users read them, so some lines run long.
# ruff: noqa: E501

from __future__ import annotations

import datetime as dt
import hashlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import Phase, assume, given, settings
from hypothesis import strategies as st

from bridge.errors import BridgeError, RulesError
from bridge.rules import (
    DEFAULT_BREAKER,
    DEFAULT_BUDGETS,
    DEFAULT_GIVE_UP,
    DESTRUCTIVE,
    OPERATIONS,
    RISK,
    STATUSES,
    Breaker,
    Budget,
    GiveUp,
    Matcher,
    Rule,
    RuleSet,
    TemplateRenderError,
    Window,
    format_duration,
    load_rules,
    parse_duration,
    parse_matcher,
    parse_rules,
)
from bridge.rules.templates import compile_template, plain_reference, render_device
from bridge.rules.yaml_lines import EXPLAIN_LIMIT

ROOT = Path(__file__).resolve().parent.parent

# Hypothesis' "explain" phase imports libcst, which warns on import; with filterwarnings=error
# that warning would hide the falsifying example behind a pytest INTERNALERROR.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]

VALID = """\
defaults:
  cooldown: 45m
rules:
  - name: reboot-unreachable-routers
    match:
      - alertname = "DeviceUnreachable"
      - severity =~ "critical|page"
      - site != "lab"
    device: "{{ labels.device }}"
    operation: reboot
    cooldown: 1h
    status: firing
    allow_destructive: false
  - name: factory-reset-bricked
    match: ['alertname = "Bricked"', 'env !~ "prod|staging"']
    device: "{{ annotations.target | default(labels.instance) }}"
    operation: factory
    status: any
    allow_destructive: true
  - name: sync-on-resolve
    match:
      - job=node
    device: "{{ labels.instance }}"
    operation: sync
    status: resolved
"""


def problems(text: str) -> list[str]:
    """The problems parse_rules reports for `text`, as the user sees them."""
    with pytest.raises(RulesError) as info:
        parse_rules(text)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return [str(p) for p in info.value.problems]


def rule(template: str = "{{ labels.device }}", **overrides: object) -> Rule:
    fields: dict = {"name": "r", "matchers": (), "device": template, "operation": "sync"}
    fields["cooldown"] = 60.0
    fields.update(overrides)
    return Rule(**fields)


# --- a valid file ------------------------------------------------------------------------------


def test_valid_file_builds_rules() -> None:
    rules = parse_rules(VALID, "conf/rules.yaml")

    assert isinstance(rules, RuleSet)
    assert rules.path == "conf/rules.yaml"
    assert rules.default_cooldown == 2700.0
    assert [r.name for r in rules.rules] == [
        "reboot-unreachable-routers",
        "factory-reset-bricked",
        "sync-on-resolve",
    ]
    first, second, third = rules.rules
    assert first.matchers == (
        Matcher("alertname", "=", "DeviceUnreachable"),
        Matcher("severity", "=~", "critical|page"),
        Matcher("site", "!=", "lab"),
    )
    assert first.device == "{{ labels.device }}"
    assert (first.operation, first.cooldown, first.status) == ("reboot", 3600.0, "firing")
    assert (first.allow_destructive, first.line) == (False, 4)

    assert second.matchers == (
        Matcher("alertname", "=", "Bricked"),
        Matcher("env", "!~", "prod|staging"),
    )
    assert (second.operation, second.status, second.allow_destructive) == ("factory", "any", True)
    assert second.cooldown == 2700.0  # from defaults
    assert second.line == 14

    assert third.matchers == (Matcher("job", "=", "node"),)
    assert (third.status, third.allow_destructive, third.cooldown, third.line) == (
        "resolved",
        False,
        2700.0,
        20,
    )


def test_defaults_are_optional() -> None:
    text = "rules:\n  - name: a\n    match: ['x=1']\n    device: d\n    operation: sync\n"
    rules = parse_rules(text)
    assert rules.default_cooldown == 1800.0
    assert rules.rules[0].cooldown == 1800.0
    assert rules.rules[0].status == "firing"


def test_empty_rule_list_and_null_sections() -> None:
    assert parse_rules("rules: []\n").rules == ()
    # Every rule (or default) commented out leaves a null, which means "none".
    assert parse_rules("defaults:\nrules:\n#  - name: x\n").rules == ()


def test_cooldown_zero_as_number_or_string() -> None:
    base = "rules:\n  - name: a\n    match: ['x=1']\n    device: d\n    operation: sync\n"
    assert parse_rules(base + "    cooldown: 0\n").rules[0].cooldown == 0.0
    assert parse_rules(base + "    cooldown: '0'\n").rules[0].cooldown == 0.0
    assert parse_rules("defaults: {cooldown: 90s}\n" + base).rules[0].cooldown == 90.0


def test_version_is_sha256_prefix_stable_and_content_sensitive() -> None:
    a = parse_rules(VALID)
    b = parse_rules(VALID, "other.yaml")
    c = parse_rules(VALID + "# a comment\n")
    assert a.version == hashlib.sha256(VALID.encode()).hexdigest()[:12]
    assert a.version == b.version
    assert len(a.version) == 12
    assert c.version != a.version
    assert a.rules == c.rules


def test_load_rules_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_bytes(VALID.encode())
    from_path = load_rules(path)
    from_str = load_rules(str(path))
    assert from_path.rules == parse_rules(VALID).rules
    assert from_path.path == str(path)
    assert from_path.version == parse_rules(VALID).version == from_str.version


def test_constants() -> None:
    assert OPERATIONS == ("sync", "reconf", "reboot", "device_factory", "factory")
    assert DESTRUCTIVE == frozenset({"factory", "device_factory"})
    assert STATUSES == ("firing", "resolved", "any")


def test_rule_wants_status() -> None:
    assert rule(status="firing").wants("firing") is True
    assert rule(status="firing").wants("resolved") is False
    assert rule(status="resolved").wants("resolved") is True
    assert rule(status="resolved").wants("firing") is False
    assert rule(status="any").wants("firing") is True
    assert rule(status="any").wants("resolved") is True


def test_rule_matches_and_failed_matcher() -> None:
    r = parse_rules(VALID).rules[0]
    labels = {"alertname": "DeviceUnreachable", "severity": "page", "site": "madrid"}
    assert r.matches(labels) is True
    assert r.failed_matcher(labels) is None
    assert r.matches({**labels, "site": "lab"}) is False
    assert r.failed_matcher({**labels, "site": "lab"}) == Matcher("site", "!=", "lab")
    assert r.failed_matcher({"site": "lab"}) == Matcher("alertname", "=", "DeviceUnreachable")


def test_rule_built_in_code_keeps_the_file_invariants() -> None:
    with pytest.raises(ValueError, match="destructive"):
        rule(operation="factory")
    with pytest.raises(ValueError, match="unknown operation"):
        rule(operation="rebot")
    with pytest.raises(ValueError, match="unknown status"):
        rule(status="sometimes")
    assert rule(operation="device_factory", allow_destructive=True).operation == "device_factory"


def test_rules_compare_by_value_not_by_compiled_template() -> None:
    assert rule() == rule()
    assert "Template" not in repr(rule())
    assert hash(Matcher("a", "=~", "x")) == hash(Matcher("a", "=~", "x"))


# --- matchers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("matcher", "labels", "expected"),
    [
        ('site = "lab"', {"site": "lab"}, True),
        ('site = "lab"', {"site": "lab2"}, False),
        ('site = "lab"', {}, False),
        ('site = ""', {}, True),  # a missing label equals ""
        ('site = ""', {"site": ""}, True),
        ('site = ""', {"site": "x"}, False),
        ('site != "lab"', {}, True),
        ('site != "lab"', {"site": "lab"}, False),
        ('site != "lab"', {"site": "madrid"}, True),
        ('site != ""', {}, False),
        ('site != ""', {"site": "x"}, True),
        ('severity =~ "critical|page"', {"severity": "critical"}, True),
        ('severity =~ "critical|page"', {"severity": "page"}, True),
        ('severity =~ "critical|page"', {"severity": "critical-ish"}, False),  # anchored
        ('severity =~ "critical|page"', {"severity": "not-page"}, False),
        ('severity =~ "critical|page"', {}, False),
        ('severity =~ "crit"', {"severity": "critical"}, False),
        ('x =~ ""', {}, True),
        ('x =~ ""', {"x": "a"}, False),
        ('x =~ ".*"', {}, True),
        ('x =~ ".+"', {}, False),
        ('x =~ ".+"', {"x": "a"}, True),
        ('x =~ "a|ab"', {"x": "ab"}, True),
        ('x =~ "(?i)LAB"', {"x": "lab"}, True),
        ('x =~ "a"', {"x": "a\n"}, False),  # "$" must not match before a trailing newline
        ('severity !~ "critical|page"', {"severity": "critical"}, False),
        ('severity !~ "critical|page"', {"severity": "critical-ish"}, True),
        ('severity !~ "critical|page"', {}, True),
        ('x !~ ""', {}, False),
        ('x !~ ".+"', {}, True),
        ('instance =~ "10\\.0\\.\\d+\\.1"', {"instance": "10.0.33.1"}, True),
        ('instance =~ "10\\.0\\.\\d+\\.1"', {"instance": "10a0.33.1"}, False),
    ],
)
def test_matcher_semantics(matcher: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_matcher(matcher).matches(labels) is expected


@pytest.mark.parametrize(
    ("text", "name", "op", "value"),
    [
        ('alertname = "DeviceUnreachable"', "alertname", "=", "DeviceUnreachable"),
        ('alertname="DeviceUnreachable"', "alertname", "=", "DeviceUnreachable"),
        ('  a  !=  "b"  ', "a", "!=", "b"),
        ('a=~"b"', "a", "=~", "b"),
        ('a!~"b"', "a", "!~", "b"),
        ("severity=critical", "severity", "=", "critical"),
        ("severity = critical", "severity", "=", "critical"),
        ("severity =~ critical|page", "severity", "=~", "critical|page"),
        ("msg = two words", "msg", "=", "two words"),
        ("site =", "site", "=", ""),
        ('site = ""', "site", "=", ""),
        ("a==b", "a", "=", "=b"),
        ("_x9 = 1", "_x9", "=", "1"),
        ('"odd-name.x" = "v"', "odd-name.x", "=", "v"),
        # Go-style escapes: \" \\ \n are decoded ...
        (r'a = "say \"hi\""', "a", "=", 'say "hi"'),
        (r'a = "back\\slash"', "a", "=", "back\\slash"),
        (r'a = "two\nlines"', "a", "=", "two\nlines"),
        # ... and any other backslash is kept, as Alertmanager does, so regexes read naturally.
        (r'a =~ "\d+\.\d+"', "a", "=~", r"\d+\.\d+"),
        (r"a =~ \d+", "a", "=~", r"\d+"),
    ],
)
def test_parse_matcher(text: str, name: str, op: str, value: str) -> None:
    assert parse_matcher(text) == Matcher(name, op, value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alertname", "invalid matcher 'alertname': expected =, !=, =~ or !~ after the label name 'alertname'"),
        ('= "x"', "invalid matcher '= \"x\"': expected a label name such as alertname at the start"),
        ('9a = "x"', "invalid matcher '9a = \"x\"': expected a label name such as alertname at the start"),
        ("a-b = x", "invalid matcher 'a-b = x': expected =, !=, =~ or !~ after the label name 'a'"),
        ("a ~= x", "invalid matcher 'a ~= x': expected =, !=, =~ or !~ after the label name 'a'"),
        ('a = "x', "invalid matcher 'a = \"x': value: missing closing double quote"),
        ('a = "x" y', "invalid matcher 'a = \"x\" y': unexpected text after the closing quote of the value"),
        ('a = x"y', "invalid matcher 'a = x\"y': unquoted value contains a double quote"),
        ('"" = x', "invalid matcher '\"\" = x': label name is empty"),
        ('"a = x', "invalid matcher '\"a = x': label name: missing closing double quote"),
        ('a =~ "("', "invalid regex in matcher 'a =~ \"(\"': missing ), unterminated subpattern at position 0"),
        ('a =~ "[[:alpha:]]"', "invalid regex in matcher 'a =~ \"[[:alpha:]]\"': Possible nested set at position 1"),
    ],
)  # fmt: skip
def test_parse_matcher_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_matcher(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ('foo:bar="x"', "foo:bar"),
        ("job:node:up = 1", "job:node:up"),
        (':leading = "x"', ":leading"),
        ('instance:rate5m !~ "0|1"', "instance:rate5m"),
    ],
)
def test_matcher_label_names_may_contain_colons_as_in_alertmanager(text: str, name: str) -> None:
    # Alertmanager's pkg/labels parser takes [a-zA-Z_:][a-zA-Z0-9_:]* as a label name; recording
    # rule outputs such as job:node:up keep their colons when they become alert labels.
    matcher = parse_matcher(text)
    assert matcher.name == name
    assert str(matcher).startswith(name)  # printed unquoted, as Alertmanager prints it
    assert parse_matcher(str(matcher)) == matcher
    rules = parse_rules(f"rules:\n  - name: a\n    match: ['{text}']\n    device: d\n    operation: sync\n")
    assert rules.rules[0].matchers == (matcher,)


@pytest.mark.parametrize(
    ("matcher", "canonical"),
    [
        (Matcher("alertname", "=", "DeviceUnreachable"), 'alertname="DeviceUnreachable"'),
        (Matcher("severity", "=~", "critical|page"), 'severity=~"critical|page"'),
        (Matcher("site", "!=", ""), 'site!=""'),
        (Matcher("a", "!~", 'q"uo\\te\nnl'), 'a!~"q\\"uo\\\\te\\nnl"'),
        (Matcher("odd-name", "=", "v"), '"odd-name"="v"'),
    ],
)
def test_matcher_str_is_canonical_alertmanager_form(matcher: Matcher, canonical: str) -> None:
    assert str(matcher) == canonical
    assert parse_matcher(canonical) == matcher


def test_matcher_rejects_unknown_operator_and_bad_regex() -> None:
    with pytest.raises(ValueError, match="unknown matcher operator"):
        Matcher("a", "==", "b")
    with pytest.raises(ValueError, match="unterminated"):
        Matcher("a", "=~", "(")


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(
    name=st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True),
    op=st.sampled_from(["=", "!=", "=~", "!~"]),
    value=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)
def test_matcher_str_round_trips(name: str, op: str, value: str) -> None:
    if op in ("=~", "!~"):
        value = value.replace("\\", "").replace("(", "").replace(")", "").replace("[", "")
        value = "".join(c for c in value if c not in "*+?{}|^$.")
    matcher = Matcher(name, op, value)
    assert parse_matcher(str(matcher)) == matcher


#: Pieces of regexes: literals the values share, and the constructs that end a literal prefix.
_REGEX_PIECES = ["a", "b", "ab", "t1", "\\.", ".", ".*", "b+", "a?", "|", "(-.+)?", "[ab]",
                 "(a|b)", "(?i:a)", "\\d", "-", "{2}"]


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(pieces=st.lists(st.sampled_from(_REGEX_PIECES), max_size=5),
       ignorecase=st.booleans(), op=st.sampled_from(["=~", "!~"]), data=st.data())
def test_a_regex_matcher_agrees_with_fullmatch_whatever_its_literal_prefix(
    pieces: list[str], ignorecase: bool, op: str, data: st.DataObject
) -> None:
    # Regex matchers compare the value's start with the pattern's leading literals before
    # running the regex: that shortcut must never change an answer.
    pattern = ("(?i)" if ignorecase else "") + "".join(pieces)
    try:
        regex = re.compile(pattern)
        matcher = Matcher("team", op, pattern)
    except (re.error, ValueError):
        assume(False)
        return
    matching = st.from_regex(regex, fullmatch=True).map(
        lambda v: v.swapcase() if ignorecase else v)
    values = data.draw(st.lists(matching | st.text("abAB.t1-2", max_size=6), min_size=1,
                                max_size=8))
    for value in values:
        expected = regex.fullmatch(value) is not None
        assert matcher.matches({"team": value}) == (expected if op == "=~" else not expected), \
            (pattern, value)


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("2w", 1209600.0),
        ("1y", 31536000.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1y2w3d4h5m6s7ms", 31536000 + 1209600 + 259200 + 14400 + 300 + 6 + 0.007),
        ("120m", 7200.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(
    "text",
    ["", "1 hour", "1hour", "1", "10", "-1h", "1.5h", "h", "1H", " 1h", "1h ", "30m1h", "1m1m",
     "1s500", "5ms1s", "1d 1h", "٣m", "99999999999999999999y", "300y"],
)  # fmt: skip
def test_parse_duration_errors(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == (
        f"invalid duration '{text}' (expected a Prometheus duration such as 90s, 30m, 1h, 1d)"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "0s"),
        (90, "1m30s"),
        (3600, "1h"),
        (5400, "1h30m"),
        (86400, "1d"),
        (7 * 86400, "1w"),
        (90 * 86400, "90d"),  # weeks and years only when exact, as Prometheus prints them
        (365 * 86400, "1y"),
        (0.5, "500ms"),
        (3661.25, "1h1m1s250ms"),
        (-90, "-1m30s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@settings(phases=PHASES)
@given(st.integers(min_value=0, max_value=(2**63 - 1) // 10**6))  # up to Go's time.Duration limit
def test_format_duration_round_trips(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) * 1000 == pytest.approx(ms, abs=1e-3)


# --- templates ---------------------------------------------------------------------------------


def test_template_renders_labels_and_annotations() -> None:
    r = rule("  {{ labels.site }}-{{ annotations['target'] | upper }}\n")
    assert r.render_device({"site": "mad"}, {"target": "rtr1"}) == "mad-RTR1"


def test_template_missing_label_renders_empty() -> None:
    assert rule("{{ labels.device }}").render_device({}, {}) == ""
    assert rule("x{{ labels.nope }}y{{ labels.get('nope') }}z").render_device({}, {}) == "xyz"
    assert rule("{{ labels.device | default('fallback') }}").render_device({}, {}) == "fallback"


@settings(max_examples=300, deadline=None)
@given(
    source=st.sampled_from([
        "{{ labels.device }}", " {{labels.device}}\n", "{{ annotations.target }}",
        "{{ labels.Device_1 }}", "{{ labels._x }}",
        "{{ labels.device }}{{ labels.site }}", "{{ labels.device|upper }}",
    ]),
    labels=st.dictionaries(st.sampled_from(["device", "site", "items", "get", "Device_1", "_x"]),
                           st.text(max_size=8)),
    annotations=st.dictionaries(st.sampled_from(["target", "device"]), st.text(max_size=8)),
)
def test_plain_templates_render_as_jinja_does(source: str, labels: dict[str, str],
                                              annotations: dict[str, str]) -> None:
    """A template that only names a label is read without Jinja: the same text."""
    # Names of dict attributes render the attribute (a method): those go through Jinja.
    assert plain_reference("{{ labels.items }}") is None
    template = compile_template(source)
    assert render_device(template, labels, annotations, source=source) == \
        render_device(template, labels, annotations)


def test_template_does_not_escape_html() -> None:
    assert rule().render_device({"device": "<a&b>"}, {}) == "<a&b>"


@pytest.mark.parametrize(
    "template",
    [
        "{{ labels.__class__.__mro__ }}",
        "{{ labels.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ labels.device.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_sandbox_blocks_internals(template: str) -> None:
    with pytest.raises(TemplateRenderError) as info:
        rule(template).render_device({"device": "d"}, {})
    assert "is unsafe" in str(info.value) or "undefined" in str(info.value)
    assert str(info.value).startswith("template error in 'device': ")


def test_sandbox_error_message() -> None:
    with pytest.raises(TemplateRenderError) as info:
        rule("{{ labels.__class__.__mro__ }}", name="evil").render_device({}, {})
    assert str(info.value) == (
        "template error in 'device': access to attribute '__class__' of 'dict' object is unsafe"
    )
    assert info.value.rule == "evil"
    assert isinstance(info.value, BridgeError)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ labels.device.x.y }}", "template error in 'device': 'str object' has no attribute 'x'"),
        ("{{ 1 / 0 }}", "template error in 'device': division by zero"),
        ("{{ labels.nope.deeper }}", "template error in 'device': 'dict object' has no attribute 'nope'"),
    ],
)  # fmt: skip
def test_template_render_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateRenderError) as info:
        rule(template).render_device({"device": "d"}, {})
    assert str(info.value) == message


def test_template_output_cap() -> None:
    assert len(rule("{{ 'a' * 1024 }}").render_device({}, {})) == 1024
    assert len(rule("  {{ 'a' * 1024 }}  \n").render_device({}, {})) == 1024
    with pytest.raises(TemplateRenderError) as info:
        rule("{{ 'a' * 5000 }}").render_device({}, {})
    assert str(info.value) == "device template rendered 5000 characters (limit 1024)"


def test_template_cannot_change_the_callers_labels() -> None:
    labels = {"device": "d"}
    assert rule("{{ labels.pop('device') }}").render_device(labels, {}) == "d"
    assert labels == {"device": "d"}


# --- errors in the file ------------------------------------------------------------------------

MANY_ERRORS = """\
defaults:
  cooldown: 1 hour
  jitter: 5m
rules:
  - name: reboot-routers
    match:
      - alertname = "DeviceUnreachable"
      - 'severity =~ "(critical"'
      - site: lab
      - nonsense
    device: "{{ labels.device }"
    operation: rebot
    cooldwn: 1h
    cooldown: 90 minutes
  - name: wipe
    match: ['alertname = "Bricked"']
    device: "{{ labels.device }}"
    operation: factory
    status: sometimes
  - name: reboot-routers
    match: 'alertname = "X"'
    device: 42
    operation: sync
    cooldown: 5
    allow_destructive: "yes"
  - match: []
    operation: reconf
    operation: sync
  - name: ""
    match: ['a = b']
    device: x
    operation: device_factory
    allow_destructive: false
  - just a string
"""


def test_many_errors_reported_at_once_in_line_order() -> None:
    ops = "sync, reconf, reboot, device_factory, factory"
    keys = (
        "name, match, device, operation, cooldown, status, allow_destructive, require_approval,"
        " dry_run, min_age, give_up, window, verify, escalate"
    )
    assert problems(MANY_ERRORS) == [
        "rules.yaml:2: invalid duration '1 hour' (expected a Prometheus duration such as 90s, 30m, 1h, 1d)",
        "rules.yaml:3: unknown key 'jitter' in 'defaults' (expected one of: cooldown, give_up, min_age, window, verify, approval_timeout)",
        "rules.yaml:8: rule 'reboot-routers': invalid regex in matcher 'severity =~ \"(critical\"': missing ), unterminated subpattern at position 0",
        "rules.yaml:9: rule 'reboot-routers': each matcher must be a string such as alertname = \"DeviceUnreachable\", got a mapping (write it as: site = \"lab\")",
        "rules.yaml:10: rule 'reboot-routers': invalid matcher 'nonsense': expected =, !=, =~ or !~ after the label name 'nonsense'",
        "rules.yaml:11: rule 'reboot-routers': invalid template in 'device': unexpected '}'",
        f"rules.yaml:12: rule 'reboot-routers': unknown operation 'rebot' (expected one of: {ops})",
        f"rules.yaml:13: rule 'reboot-routers': unknown key 'cooldwn' (expected one of: {keys})",
        "rules.yaml:14: rule 'reboot-routers': invalid duration '90 minutes' (expected a Prometheus duration such as 90s, 30m, 1h, 1d)",
        "rules.yaml:18: rule 'wipe': operation 'factory' is destructive: set allow_destructive: true to allow it",
        "rules.yaml:19: rule 'wipe': unknown status 'sometimes' (expected one of: firing, resolved, any)",
        "rules.yaml:20: rule 'reboot-routers': duplicate rule name 'reboot-routers' (first defined on line 5)",
        "rules.yaml:21: rule 'reboot-routers': 'match' must be a list of matchers such as - alertname = \"DeviceUnreachable\", got 'alertname = \"X\"'",
        "rules.yaml:22: rule 'reboot-routers': 'device' must be a non-empty template string, got 42",
        "rules.yaml:24: rule 'reboot-routers': 'cooldown' must be a string such as 30m, got 5",
        "rules.yaml:25: rule 'reboot-routers': 'allow_destructive' must be true or false, got 'yes'",
        "rules.yaml:26: missing required key 'name'",
        "rules.yaml:26: missing required key 'device'",
        "rules.yaml:26: 'match' must not be empty: the rule would match every alert",
        "rules.yaml:28: duplicate key 'operation' (first on line 27)",
        "rules.yaml:29: 'name' must be a non-empty string, got ''",
        "rules.yaml:32: operation 'device_factory' is destructive: set allow_destructive: true to allow it",
        "rules.yaml:34: each rule must be a mapping, got 'just a string'",
    ]  # fmt: skip


def test_problems_carry_file_line_and_rule() -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(MANY_ERRORS, "/etc/bridge/rules.yaml")
    first = info.value.problems[0]
    assert (first.file, first.line, first.rule) == ("/etc/bridge/rules.yaml", 2, None)
    regex = info.value.problems[2]
    assert (regex.line, regex.rule) == (8, "reboot-routers")
    assert isinstance(info.value, BridgeError)


def test_missing_required_keys() -> None:
    assert problems("rules:\n  - name: lonely\n") == [
        "rules.yaml:2: rule 'lonely': missing required key 'match'",
        "rules.yaml:2: rule 'lonely': missing required key 'device'",
        "rules.yaml:2: rule 'lonely': missing required key 'operation'",
    ]
    assert problems("defaults:\n  cooldown: 1h\n") == ["rules.yaml:1: missing required key 'rules'"]


def test_top_level_errors() -> None:
    assert problems("rules: []\nrulez: []\n") == [
        "rules.yaml:2: unknown key 'rulez' (expected one of: defaults, rules, budgets, breaker)"
    ]
    assert problems("rules: {}\n") == [
        "rules.yaml:1: 'rules' must be a list of rules, got a mapping"
    ]
    assert problems("defaults: 30m\nrules: []\n") == [
        "rules.yaml:1: 'defaults' must be a mapping, got '30m'"
    ]
    assert problems("defaults:\n  cooldown: 30\nrules: []\n") == [
        "rules.yaml:2: 'cooldown' must be a string such as 30m, got 30"
    ]


def test_duplicate_yaml_keys_are_errors() -> None:
    text = "rules: []\ndefaults: {cooldown: 1m}\nrules: []\n"
    assert problems(text) == ["rules.yaml:3: duplicate key 'rules' (first on line 1)"]
    text = "rules:\n  - name: a\n    match: ['x=1']\n    device: d\n    operation: sync\n    device: e\n"
    assert problems(text) == ["rules.yaml:6: rule 'a': duplicate key 'device' (first on line 4)"]


def test_yaml_merge_keys_may_be_overridden() -> None:
    text = """\
common: &common
  match: ['alertname = "X"']
  operation: sync
  device: "{{ labels.instance }}"
"""
    # A top-level helper key is still an unknown key ...
    assert problems(text + "rules: []\n") == [
        "rules.yaml:1: unknown key 'common' (expected one of: defaults, rules, budgets, breaker)"
    ]
    # ... but merging and overriding inside a rule is ordinary YAML, not a duplicate key.
    text = """\
rules:
  - &base
    name: base
    match: ['alertname = "X"']
    operation: sync
    device: "{{ labels.instance }}"
  - <<: *base
    name: derived
    operation: reconf
"""
    rules = parse_rules(text).rules
    assert [(r.name, r.operation, r.line) for r in rules] == [
        ("base", "sync", 2),
        ("derived", "reconf", 7),
    ]


def test_unquoted_template_gets_a_hint() -> None:
    text = "rules:\n  - name: a\n    match: ['x=1']\n    device: {{ labels.device }}\n    operation: sync\n"
    assert problems(text) == [
        "rules.yaml:4: rule 'a': 'device' must be a non-empty template string, got a mapping"
        ' (quote templates in YAML: device: "{{ labels.device }}")'
    ]


def test_template_syntax_error_names_template_line() -> None:
    text = "rules:\n  - name: a\n    match: ['x=1']\n    device: |\n      {{ x }}\n      {% if %}\n    operation: sync\n"
    assert problems(text) == [
        "rules.yaml:4: rule 'a': invalid template in 'device': Expected an expression,"
        " got 'end of statement block' (template line 2)"
    ]
    text = "rules:\n  - name: a\n    match: ['x=1']\n    device: '{{ x | nosuchfilter }}'\n    operation: sync\n"
    assert problems(text) == [
        "rules.yaml:4: rule 'a': invalid template in 'device': No filter named 'nosuchfilter'."
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules:\n  - name: a\n   bad: indent\n", "rules.yaml:3: invalid YAML: expected <block end>, but found '<block mapping start>' (while parsing a block collection on line 2)"),
        ("rules: [\n", "rules.yaml:2: invalid YAML: expected the node content, but found '<stream end>' (while parsing a flow node)"),
        ("rules: []\nx: 'open\n\n", "rules.yaml:4: invalid YAML: found unexpected end of stream (while scanning a quoted scalar on line 2)"),
        ("rules: !!python/object:os.system []\n", "rules.yaml:1: invalid YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system'"),
        ("rules: []\nwhen: 2024-13-45\n", "rules.yaml:2: invalid YAML: cannot read value: month must be in 1..12"),
        ("rules: []\n---\nrules: []\n", "rules.yaml:2: invalid YAML: but found another document (expected a single document in the stream on line 1)"),
        ("rules: []\n\nx: \x00\n", "rules.yaml:3: invalid YAML: unacceptable character #x0000: special characters are not allowed"),
    ],
)  # fmt: skip
def test_yaml_syntax_error_has_its_line(text: str, expected: str) -> None:
    assert problems(text) == [expected]


# A file past EXPLAIN_LIMIT: the line and libyaml's words (the pure-Python parser's re-read of
# ten thousand rules would take seconds), with the character PyYAML names added back.
_LONG = "# " + "x" * EXPLAIN_LIMIT + "\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules:\n  - name: a\n   bad: indent\n", "rules.yaml:4: invalid YAML: did not find expected '-' indicator (while parsing a block collection on line 3)"),
        ("rules: []\nx: @x\n", "rules.yaml:3: invalid YAML: found character '@' that cannot start any token (while scanning for the next token)"),
        ("rules: []\nx: 'é'\ny: 'ééé'\nz: \x00\n", "rules.yaml:5: invalid YAML: unacceptable character #x0000: control characters are not allowed"),
        ("rules: []\nwhen: 2024-13-45\n", "rules.yaml:3: invalid YAML: cannot read value: month must be in 1..12"),
    ],
)  # fmt: skip
def test_yaml_syntax_error_in_a_long_file_has_its_line(text: str, expected: str) -> None:
    assert problems(_LONG + text) == [expected]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file(text: str) -> None:
    assert problems(text) == ["rules.yaml: file is empty (expected a mapping with a 'rules' list)"]


@pytest.mark.parametrize(
    ("text", "what"),
    [("- name: a\n", "a list"), ("just text\n", "'just text'"), ("42\n", "42")],
)
def test_file_not_a_mapping(text: str, what: str) -> None:
    (message,) = problems(text)
    assert message.endswith(
        f": expected a mapping with a 'rules' list at the top level, got {what}"
    )


def test_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert str(info.value) == f"{path}: file not found"
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.rule) == (str(path), None, None)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as info:
        load_rules(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a file"
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"rules: []\n# caf\xe9\n")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert str(info.value) == f"{path}:2: file is not UTF-8 text (byte 0xe9 at offset 15)"


def test_load_rules_reports_problems_with_the_given_path(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: a\n")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert str(info.value).splitlines()[0] == f"{path}:2: rule 'a': missing required key 'match'"


# --- robustness --------------------------------------------------------------------------------

_FRAGMENTS = [
    "rules:", "defaults:", "  cooldown: 30m", "  cooldown: 0", "  cooldown: x", "  - name: a",
    "  - name: b", "    name: a", "    match:", "      - a = \"b\"", "      - 'a =~ \"(\"'",
    "      - x: y", "    device: \"{{ labels.d }}\"", "    device: {{ x }}", "    device: '{% if'",
    "    operation: reboot", "    operation: factory", "    allow_destructive: true",
    "    status: any", "    status: [1]", "  - []", "  - &a {name: c}", "  - *a", "  <<: *a",
    "  - !!binary xx", "- ", "? [a]", ": b", "'", "\"", "{", "[", "&x", "*x", "---", "\t", "%YAML 1.1",
    "  ? {a: 1}", "    : 2", "rules: !!set {a}", "x: !!float nope", "x: 0x" + "f" * 5000,
    # guardrails
    "budgets:", "budgets: []", "  - name: g", "    max: 0", "    max: 3", "    per: 5m",
    "    group_by: site", "    group_by: a-b", "breaker:", "  max: x", "  per: 0", "  give_up:",
    "    give_up: {after: 2, within: 1h}", "    after: 0", "    within: 1d", "    dry_run: true",
    "    require_approval: false", "    min_age: 5m", "    window:", "  window:",
    "      days: fri-mon", "      days: [mon, fry]", "      days: daily", "      start: 22:00",
    "      start: '22:00'", "      end: '05:00'", "      timezone: Europe/Madrid",
    "      timezone: Nowhere/Else", "      outside: skip", "  approval_timeout: 1h",
]  # fmt: skip


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(st.text())
def test_arbitrary_text_never_crashes(text: str) -> None:
    try:
        result = parse_rules(text)
    except RulesError as exc:
        assert exc.problems
    else:
        assert isinstance(result, RuleSet)


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=10), max_size=25))
def test_yamlish_text_never_crashes(lines: list[str]) -> None:
    try:
        result = parse_rules("\n".join(lines))
    except RulesError as exc:
        assert exc.problems
        assert all(str(p).startswith("rules.yaml") for p in exc.problems)
    else:
        assert isinstance(result, RuleSet)


# --- loading fast: libyaml, shared values ------------------------------------------------------


def _read_view(text: str, fast: bool) -> object:
    """What a loader reads from `text`, lines included, in a form that compares by value (or
    "error"): libyaml's reading (the loader's own chain) or PyYAML's pure-Python parser's."""
    from bridge.rules.yaml_lines import LineDict, LineList, _LineLoader, _read, load_yaml

    def view(x: object) -> object:
        if isinstance(x, LineDict):
            return ("map", x.line, [(view(k), x.key_lines[k], view(v)) for k, v in x.items()],
                    [(view(k), line, first) for k, line, first in x.duplicates])
        if isinstance(x, LineList):
            return ("list", x.line, list(zip(x.item_lines, map(view, x), strict=True)))
        return (type(x).__name__, repr(x) if isinstance(x, float) else x)  # repr: nan == nan

    if fast:
        data, problem = load_yaml(text, "rules.yaml")
        return "error" if problem else view(data)
    try:
        return view(_read(text, _LineLoader))
    except Exception:
        return "error"


def _libyaml_agrees(text: str) -> bool:
    # Where the two parsers differ, libyaml follows YAML 1.2 and its reading is kept: tabs as
    # separators ("a:\tb", "a: b\t"), which the pure-Python parser refuses, and an empty
    # value with the bare tag "!" ('' for libyaml, None for it).
    return "\t" not in text and not re.search(r"!(?![!\w])", text)


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=10), max_size=25))
def test_libyaml_reads_what_the_pure_python_parser_reads(lines: list[str]) -> None:
    text = "\n".join(lines)
    assume(_libyaml_agrees(text))
    assert _read_view(text, fast=True) == _read_view(text, fast=False)


_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.floats(
    allow_nan=False) | st.sampled_from(["<<", "=", "2024-01-02", "1h", "~", "yes", "0x1f"])
_KEYS = st.booleans() | st.integers(-3, 3) | st.text(max_size=5) | st.sampled_from(["<<", "="])
_DATA = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    _KEYS, inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(_DATA, st.sampled_from([False, True, None]), st.booleans())
def test_libyaml_reads_generated_documents_as_the_pure_python_parser_does(
    data: object, flow: bool | None, shared: bool
) -> None:
    import yaml

    # A value twice in the document makes PyYAML write an anchor and an alias.
    document = {"a": data, "b": data} if shared else data
    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True)
    assume(_libyaml_agrees(text))
    assert _read_view(text, fast=True) == _read_view(text, fast=False)


def test_libyaml_reads_merges_anchors_and_tags_as_the_pure_python_parser_does() -> None:
    text = (
        "common: &c {device: d, operation: sync}\n"
        "rules:\n"
        "  - <<: *c\n    name: a\n    name: again\n    device: e\n"
        "  - {<<: [*c, {x: 1}], name: !!str 2}\n"
        "  - ? [complex, key]\n    : v\n"
        "  - !!binary aGVsbG8=\n"
        "  - !!set {a, b}\n"
        "  - 2024-01-02 03:04:05\n"
    )
    assert _read_view(text, fast=True) == _read_view(text, fast=False) != "error"


def test_loading_leaves_the_garbage_collector_as_it_was() -> None:
    import gc

    assert gc.isenabled()
    parse_rules(VALID)
    assert gc.isenabled()
    gc.disable()
    try:
        parse_rules(VALID)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(RulesError):
        parse_rules("rules: [\n")
    assert gc.isenabled()


def test_rules_share_their_templates_and_matchers() -> None:
    from bridge.rules.templates import compile_template

    text = "rules:\n" + "".join(
        f"  - name: r{i}\n    match: ['team = \"t{i}\"', 'severity =~ \"critical|page\"']\n"
        f"    device: '{{{{ labels.device }}}}-shared'\n    operation: sync\n"
        for i in range(50)
    )
    compile_template.cache_clear()
    rules = parse_rules(text).rules
    assert compile_template.cache_info().misses == 1
    assert len({id(r._template) for r in rules}) == 1
    assert len({id(r.matchers[1]) for r in rules}) == 1  # the same severity matcher
    assert len({id(r.give_up) for r in rules}) == 1


# --- guardrails: parsing -----------------------------------------------------------------------

BASE_RULE = "  - name: {name}\n    match: ['x=1']\n    device: d\n    operation: {operation}\n"


def one_rule(extra: str = "", operation: str = "sync", top: str = "") -> str:
    """A file with `top` before the rules and one rule whose last lines are `extra`."""
    return top + "rules:\n" + BASE_RULE.format(name="r", operation=operation) + extra


GUARDED = """\
defaults:
  cooldown: 30m
  give_up: {after: 5, within: 12h}
  min_age: 1m
  approval_timeout: 2h
  window:
    days: [sat, sun]
    start: "08:00"
    end: "20:00"
    timezone: UTC
budgets:
  - name: global
    max: 30
    per: 10m
  - name: reboots
    operation: reboot
    max: 10
    per: 1h
  - name: per-site
    group_by: site
    max: 3
    per: 1h
breaker:
  max: 100
  per: 1m
rules:
  - name: night-reconf
    match: ['alertname = "ConfigOutdated"']
    device: "{{ labels.device }}"
    operation: reconf
    min_age: 0
    give_up: {after: 2}
    window:
      days: mon-fri
      start: "22:00"
      end: "05:00"
      timezone: Europe/Madrid
      outside: skip
  - name: shadow-reboot
    match: ['alertname = "MemoryExhausted"']
    device: "{{ labels.device }}"
    operation: reboot
    dry_run: true
    require_approval: true
    min_age: 5m
    give_up: {after: 1, within: 1h}
  - name: plain-sync
    match: ['alertname = "Drift"']
    device: "{{ labels.device }}"
    operation: sync
    window:
  - name: unattended-wipe
    match: ['alertname = "Compromised"']
    device: "{{ labels.device }}"
    operation: factory
    allow_destructive: true
    require_approval: false
"""


def test_guardrails_are_parsed() -> None:
    rules = parse_rules(GUARDED)
    assert rules.budgets == (
        Budget("global", 30, 600.0, None, None),
        Budget("reboots", 10, 3600.0, "reboot", None),
        Budget("per-site", 3, 3600.0, None, "site"),
    )
    assert rules.breaker == Breaker(100, 60.0)
    assert rules.approval_timeout == 7200.0
    night, shadow, plain, wipe = rules.rules

    assert night.window == Window(
        frozenset({0, 1, 2, 3, 4}), dt.time(22), dt.time(5), "Europe/Madrid", "skip"
    )
    assert night.min_age == 0.0  # its own, not the default 1m
    assert night.give_up == GiveUp(2, 43200.0)  # 'within' from defaults.give_up
    assert (night.dry_run, night.require_approval, night.risk) == (False, False, "routine")

    assert shadow.window == Window(frozenset({5, 6}), dt.time(8), dt.time(20), "UTC", "hold")
    assert (shadow.dry_run, shadow.require_approval, shadow.risk) == (True, True, "disruptive")
    assert (shadow.min_age, shadow.give_up) == (300.0, GiveUp(1, 3600.0))

    assert plain.window is None  # "window:" left empty: no window, not the default one
    assert (plain.min_age, plain.give_up) == (60.0, GiveUp(5, 43200.0))

    assert (wipe.risk, wipe.allow_destructive, wipe.require_approval) == (
        "destructive",
        True,
        False,
    )


def test_guardrail_defaults() -> None:
    rules = parse_rules(one_rule())
    assert rules.budgets == DEFAULT_BUDGETS == (Budget("global", 30, 600.0, None, None),)
    assert rules.breaker == DEFAULT_BREAKER == Breaker(50, 300.0)
    assert rules.approval_timeout == 3600.0
    (r,) = rules.rules
    assert (r.dry_run, r.min_age, r.window, r.require_approval) == (False, 0.0, None, False)
    assert r.give_up == DEFAULT_GIVE_UP == GiveUp(3, 86400.0)


def test_budgets_absent_empty_or_commented_out() -> None:
    assert parse_rules(one_rule()).budgets == DEFAULT_BUDGETS
    assert parse_rules(one_rule(top="budgets: []\n")).budgets == ()
    # Like "rules:", a budgets key whose entries are all commented out means none.
    assert parse_rules(one_rule(top="budgets:\n#  - name: global\n")).budgets == ()


def test_breaker_and_give_up_keep_defaults_for_keys_they_leave_out() -> None:
    assert parse_rules(one_rule(top="breaker: {max: 500}\n")).breaker == Breaker(500, 300.0)
    assert parse_rules(one_rule(top="breaker: {per: 1m}\n")).breaker == Breaker(50, 60.0)
    assert parse_rules(one_rule(top="breaker:\n")).breaker == DEFAULT_BREAKER
    assert parse_rules(one_rule("    give_up: {within: 1h}\n")).rules[0].give_up == GiveUp(
        3, 3600.0
    )
    assert parse_rules(one_rule("    give_up:\n")).rules[0].give_up == DEFAULT_GIVE_UP
    top = "defaults:\n  give_up: {after: 4}\n"
    assert parse_rules(one_rule(top=top)).rules[0].give_up == GiveUp(4, 86400.0)


def test_defaults_window_and_min_age_apply_to_rules_without_their_own() -> None:
    top = "defaults:\n  min_age: 90s\n  window: {days: daily, start: '01:00', end: '02:00', timezone: UTC}\n"
    (r,) = parse_rules(one_rule(top=top)).rules
    assert r.min_age == 90.0
    assert r.window == Window(frozenset(range(7)), dt.time(1), dt.time(2), "UTC")
    own = "    min_age: 0\n    window: {days: sun, start: '03:00', end: '04:00', timezone: UTC}\n"
    (r,) = parse_rules(one_rule(own, top=top)).rules
    assert r.min_age == 0.0
    assert r.window == Window(frozenset({6}), dt.time(3), dt.time(4), "UTC")


@pytest.mark.parametrize(
    ("operation", "risk", "approval"),
    [
        ("sync", "routine", False),
        ("reconf", "routine", False),
        ("reboot", "disruptive", False),
        ("device_factory", "destructive", True),
        ("factory", "destructive", True),
    ],
)
def test_require_approval_defaults_by_risk(operation: str, risk: str, approval: bool) -> None:
    extra = "    allow_destructive: true\n" if operation in DESTRUCTIVE else ""
    (r,) = parse_rules(one_rule(extra, operation)).rules
    assert (r.risk, r.require_approval) == (risk, approval)
    assert RISK[operation] == risk
    assert r == rule(operation=operation, allow_destructive=bool(extra), cooldown=1800.0, line=2,
                     matchers=(Matcher("x", "=", "1"),), device="d")  # fmt: skip


def test_require_approval_may_be_set_either_way() -> None:
    assert (
        parse_rules(one_rule("    require_approval: true\n", "reboot")).rules[0].require_approval
        is True
    )
    # Meaningless on a routine operation (it is the default) but harmless.
    assert parse_rules(one_rule("    require_approval: false\n")).rules[0].require_approval is False
    wipe = "    allow_destructive: true\n    require_approval: false\n"
    assert parse_rules(one_rule(wipe, "factory")).rules[0].require_approval is False
    # Without allow_destructive a destructive rule is refused anyway: one error, not two.
    assert problems(one_rule("    require_approval: false\n", "factory")) == [
        "rules.yaml:5: rule 'r': operation 'factory' is destructive: set allow_destructive: true to allow it"
    ]


def test_risk_table() -> None:
    assert dict(RISK) == {"sync": "routine", "reconf": "routine", "reboot": "disruptive",
                          "device_factory": "destructive", "factory": "destructive"}  # fmt: skip
    assert set(RISK) == set(OPERATIONS)
    assert DESTRUCTIVE == {op for op, risk in RISK.items() if risk == "destructive"}
    with pytest.raises(TypeError):
        RISK["sync"] = "destructive"  # type: ignore[index]


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("[mon, tue, wed, thu, fri]", {0, 1, 2, 3, 4}),
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("fri-mon", {4, 5, 6, 0}),  # ranges may wrap around the week
        ("sat-sun", {5, 6}),
        ("daily", {0, 1, 2, 3, 4, 5, 6}),
        ("Daily", {0, 1, 2, 3, 4, 5, 6}),
        ("sun", {6}),
        ("mon-mon", {0}),
        ("MON - Wed", {0, 1, 2}),
        ("'mon, wed,fri'", {0, 2, 4}),
        ("[sat-sun, wed]", {2, 5, 6}),
        ("[Tue, tue]", {1}),
    ],
)
def test_window_days(days: str, expected: set[int]) -> None:
    window = (
        f"    window: {{days: {days}, start: '22:00', end: '05:00', timezone: Europe/Madrid}}\n"
    )
    (r,) = parse_rules(one_rule(window)).rules
    assert r.window is not None
    assert r.window.days == frozenset(expected)


def test_unquoted_times_with_a_leading_zero_are_text_in_yaml() -> None:
    (r,) = parse_rules(one_rule("    window: {start: 00:30, end: 05:00, timezone: UTC}\n")).rules
    assert r.window is not None
    assert (r.window.start, r.window.end) == (dt.time(0, 30), dt.time(5))


def test_window_days_default_to_every_day_and_outside_to_hold() -> None:
    window = "    window: {start: '00:00', end: '00:00', timezone: UTC}\n"
    (r,) = parse_rules(one_rule(window)).rules
    assert r.window == Window(frozenset(range(7)), dt.time(0), dt.time(0), "UTC", "hold")


def test_shipped_rules_file_shows_every_guard() -> None:
    rules = load_rules(ROOT / "rules.yaml")
    assert rules.budgets == (
        Budget("global", 30, 600.0),
        Budget("reboots", 10, 3600.0, operation="reboot"),
        Budget("per-site", 3, 3600.0, group_by="site"),
    )
    assert (rules.breaker, rules.approval_timeout) == (Breaker(50, 300.0), 3600.0)
    by_name = {r.name: r for r in rules.rules}
    assert list(by_name)[:3] == [
        "reboot-unreachable-routers", "resync-config-drift", "reconf-after-policy-violation"
    ]  # fmt: skip
    assert by_name["reboot-stuck-access-points"].min_age == 300.0
    assert by_name["reconf-outdated-config-at-night"].window == Window(
        frozenset(range(5)), dt.time(22), dt.time(5), "Europe/Madrid", "hold"
    )
    assert by_name["reboot-on-memory-leak"].dry_run is True
    assert not any(r.require_approval for r in rules.rules)  # the destructive example is off


# --- guardrails: errors ------------------------------------------------------------------------

GUARD_ERRORS = """\
defaults:
  give_up: {after: 0, within: 1d}
  approval_timeout: 0
  min_age: 5
  window: nightly
budgets:
  - name: per-site
    max: 0
    per: 0s
    group_by: my-site
  - name: per-site
    max: 1.5
    per: 1h
    operation: rebot
    scope: all
  - max: 3
  - just text
breaker:
  max: many
  per: 1 minute
rules:
  - name: wipe
    match: ['alertname = "Bricked"']
    device: "{{ labels.device }}"
    operation: factory
    allow_destructive: true
    require_approval: "no"
    dry_run: 1
    give_up: {after: true, within: 0, times: 2}
    window:
      days: [mon, fry, 3]
      start: 22:00
      end: "25:00"
      timezone: Europe/Madird
      outside: wait
      tz: UTC
  - name: nightly
    match: ['a = b']
    device: d
    operation: reconf
    min_age: 5 minutes
    window:
      days: mon-
  - name: no-days
    match: ['a = b']
    device: d
    operation: sync
    window: {days: [], start: "1:00", end: 05:00, timezone: 1}
    give_up: 3
"""


def test_guardrail_errors_are_reported_at_once_in_line_order() -> None:
    ops = "sync, reconf, reboot, device_factory, factory"
    assert problems(GUARD_ERRORS) == [
        "rules.yaml:2: 'give_up.after' must be a whole number ≥ 1, got 0",
        "rules.yaml:3: 'approval_timeout' must be greater than 0, got 0",
        "rules.yaml:4: 'min_age' must be a string such as 30m, got 5",
        "rules.yaml:5: 'window' must be a mapping with start, end and timezone, got 'nightly'",
        "rules.yaml:8: budget 'per-site': 'max' must be a whole number ≥ 1, got 0",
        "rules.yaml:9: budget 'per-site': 'per' must be greater than 0, got '0s'",
        "rules.yaml:10: budget 'per-site': invalid label name 'my-site' in 'group_by' (expected letters, digits and _, not starting with a digit)",
        "rules.yaml:11: budget 'per-site': duplicate budget name 'per-site' (first defined on line 7)",
        "rules.yaml:12: budget 'per-site': 'max' must be a whole number ≥ 1, got 1.5",
        f"rules.yaml:14: budget 'per-site': unknown operation 'rebot' (expected one of: {ops})",
        "rules.yaml:15: budget 'per-site': unknown key 'scope' (expected one of: name, max, per, operation, group_by)",
        "rules.yaml:16: budget: missing required key 'name'",
        "rules.yaml:16: budget: missing required key 'per'",
        "rules.yaml:17: each budget must be a mapping, got 'just text'",
        "rules.yaml:19: 'breaker.max' must be a whole number ≥ 1, got 'many'",
        "rules.yaml:20: invalid duration '1 minute' (expected a Prometheus duration such as 90s, 30m, 1h, 1d)",
        "rules.yaml:27: rule 'wipe': 'require_approval' must be true or false, got 'no'",
        "rules.yaml:28: rule 'wipe': 'dry_run' must be true or false, got 1",
        "rules.yaml:29: rule 'wipe': unknown key 'times' in 'give_up' (expected one of: after, within)",
        "rules.yaml:29: rule 'wipe': 'give_up.after' must be a whole number ≥ 1, got true",
        "rules.yaml:29: rule 'wipe': 'give_up.within' must be greater than 0, got 0",
        "rules.yaml:31: rule 'wipe': unknown day 'fry' in window.days (expected mon, tue, wed, thu, fri, sat, sun)",
        "rules.yaml:31: rule 'wipe': each day in window.days must be a name such as mon, got 3",
        'rules.yaml:32: rule \'wipe\': \'window.start\' must be a string such as "22:00", got 1320: YAML reads an unquoted 22:00 as a number (quote times: start: "22:00")',
        "rules.yaml:33: rule 'wipe': invalid time '25:00' in window.end (expected HH:MM)",
        "rules.yaml:34: rule 'wipe': unknown time zone 'Europe/Madird'",
        "rules.yaml:35: rule 'wipe': unknown value 'wait' in window.outside (expected one of: hold, skip)",
        "rules.yaml:36: rule 'wipe': unknown key 'tz' in 'window' (expected one of: days, start, end, timezone, outside)",
        "rules.yaml:41: rule 'nightly': invalid duration '5 minutes' (expected a Prometheus duration such as 90s, 30m, 1h, 1d)",
        "rules.yaml:42: rule 'nightly': missing required key 'start' in 'window'",
        "rules.yaml:42: rule 'nightly': missing required key 'end' in 'window'",
        "rules.yaml:42: rule 'nightly': missing required key 'timezone' in 'window'",
        "rules.yaml:43: rule 'nightly': invalid day range 'mon-' in window.days (expected two days such as mon-fri)",
        "rules.yaml:48: rule 'no-days': 'window.days' must not be empty: the window would never open",
        "rules.yaml:48: rule 'no-days': invalid time '1:00' in window.start (expected HH:MM)",
        "rules.yaml:48: rule 'no-days': 'window.timezone' must be a time zone name such as Europe/Madrid, got 1",
        "rules.yaml:49: rule 'no-days': 'give_up' must be a mapping such as {after: 3, within: 1d}, got 3",
    ]  # fmt: skip


def test_budget_problems_name_the_budget_not_a_rule() -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(GUARD_ERRORS, "/etc/bridge/rules.yaml")
    budget = next(p for p in info.value.problems if p.line == 8)
    assert (budget.file, budget.line, budget.rule) == ("/etc/bridge/rules.yaml", 8, None)
    assert budget.message == "budget 'per-site': 'max' must be a whole number ≥ 1, got 0"
    day = next(p for p in info.value.problems if p.line == 31)
    assert (day.rule, day.message) == (
        "wipe", "unknown day 'fry' in window.days (expected mon, tue, wed, thu, fri, sat, sun)"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ("{start: 22:00, end: '05:00', timezone: UTC}", '\'window.start\' must be a string such as "22:00", got 1320: YAML reads an unquoted 22:00 as a number (quote times: start: "22:00")'),
        ("{start: '22:00', end: 23:59, timezone: UTC}", '\'window.end\' must be a string such as "22:00", got 1439: YAML reads an unquoted 23:59 as a number (quote times: end: "23:59")'),
        ("{start: '22:00', end: 5:00, timezone: UTC}", '\'window.end\' must be a string such as "22:00", got 300: YAML reads an unquoted 5:00 as a number (quote times: end: "05:00")'),
        ("{start: 7, end: '05:00', timezone: UTC}", '\'window.start\' must be a string such as "22:00", got 7 (quote times: start: "22:00")'),
        ("{start: '24:00', end: '05:00', timezone: UTC}", "invalid time '24:00' in window.start (expected HH:MM)"),
        ("{start: '22:00:00', end: '05:00', timezone: UTC}", "invalid time '22:00:00' in window.start (expected HH:MM)"),
        ("{start: '10pm', end: '05:00', timezone: UTC}", "invalid time '10pm' in window.start (expected HH:MM)"),
        ("{start: '22:00', end: '05:00', timezone: ''}", "unknown time zone ''"),
        ("{start: '22:00', end: '05:00', timezone: /etc/passwd}", "unknown time zone '/etc/passwd'"),
        ("{start: '22:00', end: '05:00', timezone: europe/madrid}", "unknown time zone 'europe/madrid'"),
        ("{days: 5, start: '22:00', end: '05:00', timezone: UTC}", "'window.days' must be a list of days such as [mon, tue] or a range such as mon-fri, got 5"),
        ("{days: '', start: '22:00', end: '05:00', timezone: UTC}", "'window.days' must not be empty: the window would never open"),
        ("{days: monday, start: '22:00', end: '05:00', timezone: UTC}", "unknown day 'monday' in window.days (expected mon, tue, wed, thu, fri, sat, sun)"),
        ("{days: mon-fry, start: '22:00', end: '05:00', timezone: UTC}", "unknown day 'fry' in window.days (expected mon, tue, wed, thu, fri, sat, sun)"),
        ("{days: mon-wed-fri, start: '22:00', end: '05:00', timezone: UTC}", "invalid day range 'mon-wed-fri' in window.days (expected two days such as mon-fri)"),
        ("{days: [mon, no], start: '22:00', end: '05:00', timezone: UTC}", "each day in window.days must be a name such as mon, got false"),
        ("{start: '22:00', end: '05:00', timezone: UTC, outside: 1}", "'window.outside' must be one of: hold, skip, got 1"),
        ("[22:00, 05:00]", "'window' must be a mapping with start, end and timezone, got a list"),
    ],
)  # fmt: skip
def test_window_errors(window: str, message: str) -> None:
    assert problems(one_rule(f"    window: {window}\n")) == [f"rules.yaml:6: rule 'r': {message}"]


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ("budgets: {global: 30}\n", "rules.yaml:1: 'budgets' must be a list of budgets, got a mapping"),
        ("budgets:\n  - {name: '', max: 1, per: 1h}\n", "rules.yaml:2: budget: 'name' must be a non-empty string, got ''"),
        ("budgets:\n  - {name: b, max: 1, per: 1h, group_by: 5}\n", "rules.yaml:2: budget 'b': 'group_by' must be a label name such as site, got 5"),
        ("budgets:\n  - {name: b, max: 1, per: 1h, group_by: 9site}\n", "rules.yaml:2: budget 'b': invalid label name '9site' in 'group_by' (expected letters, digits and _, not starting with a digit)"),
        ("budgets:\n  - {name: b, max: 1, per: 1h, operation: [reboot]}\n", "rules.yaml:2: budget 'b': 'operation' must be one of: sync, reconf, reboot, device_factory, factory, got a list"),
        ("budgets:\n  - {name: b, max: true, per: 1h}\n", "rules.yaml:2: budget 'b': 'max' must be a whole number ≥ 1, got true"),
        ("budgets:\n  - {name: b, max: 1, per: 60}\n", "rules.yaml:2: budget 'b': 'per' must be a string such as 30m, got 60"),
        ("budgets:\n  - {name: b, max: 1, per: 1h, max: 2}\n", "rules.yaml:2: budget 'b': duplicate key 'max' (first on line 2)"),
        ("breaker: 50\n", "rules.yaml:1: 'breaker' must be a mapping such as {max: 50, per: 5m}, got 50"),
        ("breaker: {max: 0}\n", "rules.yaml:1: 'breaker.max' must be a whole number ≥ 1, got 0"),
        ("breaker: {per: 0}\n", "rules.yaml:1: 'breaker.per' must be greater than 0, got 0"),
        ("breaker: {max: 5, every: 1m}\n", "rules.yaml:1: unknown key 'every' in 'breaker' (expected one of: max, per)"),
        ("defaults:\n  approval_timeout: 1 hour\n", "rules.yaml:2: invalid duration '1 hour' (expected a Prometheus duration such as 90s, 30m, 1h, 1d)"),
        ("defaults:\n  approval_timeout: '0s'\n", "rules.yaml:2: 'approval_timeout' must be greater than 0, got '0s'"),
        ("defaults:\n  window: {start: '22:00', end: '05:00', timezone: Europe/Madird}\n", "rules.yaml:2: unknown time zone 'Europe/Madird'"),
        ("defaults:\n  give_up: {after: 2.5}\n", "rules.yaml:2: 'give_up.after' must be a whole number ≥ 1, got 2.5"),
    ],
)  # fmt: skip
def test_budget_breaker_and_defaults_errors(top: str, message: str) -> None:
    assert problems(one_rule(top=top)) == [message]


# --- guardrails: value types built in code -----------------------------------------------------


def test_window_built_in_code_is_checked() -> None:
    with pytest.raises(ValueError) as info:
        Window(frozenset({0}), dt.time(22), dt.time(5), "Europe/Madird")
    assert str(info.value) == "unknown time zone 'Europe/Madird'"
    with pytest.raises(ValueError, match="must not be empty"):
        Window(frozenset(), dt.time(22), dt.time(5), "UTC")
    with pytest.raises(ValueError, match="0 \\(Monday\\) to 6"):
        Window(frozenset({7}), dt.time(22), dt.time(5), "UTC")
    with pytest.raises(ValueError, match="unknown value .later. in window.outside"):
        Window(frozenset({0}), dt.time(22), dt.time(5), "UTC", "later")
    with pytest.raises(ValueError, match="naive"):
        Window(frozenset({0}), dt.time(22, tzinfo=dt.UTC), dt.time(5), "UTC")
    window = Window({0, 1}, dt.time(22), dt.time(5), "UTC")  # type: ignore[arg-type]
    assert window.days == frozenset({0, 1})
    assert hash(window) == hash(Window(frozenset({1, 0}), dt.time(22), dt.time(5), "UTC"))
    assert "_zone" not in repr(window)


def test_window_needs_aware_datetimes() -> None:
    window = Window(frozenset({0}), dt.time(22), dt.time(5), "UTC")
    with pytest.raises(ValueError, match="timezone-aware"):
        window.contains(dt.datetime(2026, 6, 1, 23, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        window.next_opening(dt.datetime(2026, 6, 1, 23, 0))


def test_other_guard_values_built_in_code_are_checked() -> None:
    for bad in (lambda: GiveUp(0, 60.0), lambda: GiveUp(1, 0.0), lambda: GiveUp(True, 60.0),
                lambda: Budget("b", 0, 60.0), lambda: Budget("b", 1, -1.0),
                lambda: Budget("", 1, 60.0), lambda: Budget("b", 1, 60.0, "rebot"),
                lambda: Budget("b", 1, 60.0, None, "a-b"), lambda: Breaker(0, 60.0),
                lambda: Breaker(1, float("inf"))):  # fmt: skip
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError, match="unique"):
        RuleSet(rules=(), default_cooldown=0.0, path="x", version="v",
                budgets=(Budget("a", 1, 60.0), Budget("a", 2, 60.0)))  # fmt: skip
    with pytest.raises(ValueError, match="approval_timeout"):
        RuleSet(rules=(), default_cooldown=0.0, path="x", version="v", approval_timeout=0.0)
    built = RuleSet(rules=(), default_cooldown=0.0, path="x", version="v")
    assert (built.budgets, built.breaker, built.approval_timeout) == (
        DEFAULT_BUDGETS, DEFAULT_BREAKER, 3600.0
    )  # fmt: skip
    assert RuleSet((), 0.0, "x", "v", [Budget("a", 1, 60.0)]).budgets == (Budget("a", 1, 60.0),)  # type: ignore[arg-type]


def test_rule_built_in_code_gets_guard_defaults_and_checks() -> None:
    r = rule()
    assert (r.dry_run, r.min_age, r.give_up, r.window) == (False, 0.0, GiveUp(3, 86400.0), None)
    assert (r.require_approval, r.risk) == (False, "routine")
    wipe = rule(operation="factory", allow_destructive=True)
    assert (wipe.require_approval, wipe.risk) == (True, "destructive")
    assert (
        rule(operation="factory", allow_destructive=True, require_approval=False).require_approval
        is False
    )
    assert rule(operation="reboot", require_approval=True).require_approval is True
    # Positional construction is unchanged: the guard fields are keyword-only.
    positional = Rule("p", (), "d", "reboot", 60.0, "any", False, 7)
    assert (positional.status, positional.line, positional.risk) == ("any", 7, "disruptive")
    assert rule(min_age=5).min_age == 5.0
    for bad in ({"min_age": -1.0}, {"dry_run": "yes"}, {"require_approval": 1},
                {"give_up": (3, 60.0)}, {"window": "nightly"}):  # fmt: skip
        with pytest.raises(ValueError):
            rule(**bad)


@pytest.mark.parametrize(
    ("text", "build"),
    [
        (one_rule("    give_up: {after: 0}\n"), lambda: GiveUp(0, 60.0)),
        (one_rule("    give_up: {within: 0}\n"), lambda: GiveUp(1, 0)),
        (one_rule(top="breaker: {max: 0}\n"), lambda: Breaker(0, 60.0)),
        (one_rule(top="budgets: [{name: b, max: 0, per: 1m}]\n"), lambda: Budget("b", 0, 60.0)),
        (one_rule(top="budgets: [{name: b, max: 1, per: 1m, group_by: a-b}]\n"),
         lambda: Budget("b", 1, 60.0, None, "a-b")),
        (one_rule(operation="rebot"), lambda: rule(operation="rebot")),
        (one_rule("    status: sometimes\n"), lambda: rule(status="sometimes")),
        (one_rule("    dry_run: 'yes'\n"), lambda: rule(dry_run="yes")),
        (one_rule(operation="factory"), lambda: rule(operation="factory")),
        (one_rule("    window: {start: '22:00', end: '05:00', timezone: UTC, outside: later}\n"),
         lambda: Window(frozenset({0}), dt.time(22), dt.time(5), "UTC", "later")),
    ],
)  # fmt: skip
def test_values_built_in_code_get_the_messages_a_file_gets(text: str, build: Any) -> None:
    # One schema, one wording: no more ">= 1" in one place and "≥ 1" in another.
    with pytest.raises(RulesError) as file_error:
        parse_rules(text)
    (problem,) = file_error.value.problems
    with pytest.raises(ValueError) as code_error:
        build()
    assert str(code_error.value) == problem.message


def test_whole_numbers_written_as_floats_count_as_in_json_schema() -> None:
    # JSON Schema (and so an editor) cannot tell 3.0 from 3 or 0.0 from 0: neither does the loader.
    rules = parse_rules(one_rule("    give_up: {after: 2.0}\n    cooldown: 0.0\n", top="breaker: {max: 5.0}\n"))
    assert (rules.rules[0].give_up.after, rules.rules[0].cooldown, rules.breaker.max) == (2, 0.0, 5)
    assert type(rules.rules[0].give_up.after) is int
    assert problems(one_rule("    cooldown: 0.5\n")) == [
        "rules.yaml:6: rule 'r': 'cooldown' must be a string such as 30m, got 0.5"
    ]


def test_importing_the_rules_loads_no_web_http_or_database_library() -> None:
    code = "import sys, bridge.rules; print(sorted(m for m in ('flask', 'requests', 'sqlite3') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- maintenance windows -----------------------------------------------------------------------

MADRID = ZoneInfo("Europe/Madrid")
NIGHTS = Window(frozenset({0, 1, 2, 3, 4}), dt.time(22), dt.time(5), "Europe/Madrid")  # mon-fri


def madrid(*args: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*args).replace(tzinfo=MADRID, fold=fold)  # type: ignore[arg-type]


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args).replace(tzinfo=dt.UTC)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("when", "inside"),
    [
        (madrid(2026, 6, 1, 21, 59), False),  # Monday, before the window
        (madrid(2026, 6, 1, 22, 0), True),  # opens at start
        (madrid(2026, 6, 1, 23, 59), True),
        (madrid(2026, 6, 2, 0, 0), True),  # across midnight: Monday's window, on Tuesday
        (madrid(2026, 6, 2, 4, 59, 59), True),
        (madrid(2026, 6, 2, 5, 0), False),  # end is exclusive
        (madrid(2026, 6, 6, 4, 0), True),  # Saturday morning: Friday night's window
        (madrid(2026, 6, 6, 22, 0), False),  # Saturday night: no window
        (madrid(2026, 6, 7, 23, 0), False),  # Sunday night: no window
        (madrid(2026, 6, 8, 3, 0), False),  # Monday morning: would be Sunday's
        (utc(2026, 6, 1, 20, 0), True),  # 22:00 CEST, given in UTC
        (utc(2026, 6, 1, 19, 59), False),
        (dt.datetime(2026, 6, 1, 16, 0, tzinfo=ZoneInfo("America/New_York")), True),  # 22:00 Madrid
        (dt.datetime(2026, 6, 2, 5, 0, tzinfo=ZoneInfo("Asia/Tokyo")), True),  # 22:00 Madrid
        (dt.datetime(2026, 6, 2, 11, 59, tzinfo=ZoneInfo("Asia/Tokyo")), True),  # 04:59 Madrid
        (dt.datetime(2026, 6, 2, 12, 0, tzinfo=ZoneInfo("Asia/Tokyo")), False),  # 05:00 Madrid
        (utc(2026, 1, 5, 21, 0), True),  # winter: 22:00 CET is 21:00 UTC
        (utc(2026, 1, 5, 20, 59), False),
    ],
)
def test_window_contains(when: dt.datetime, inside: bool) -> None:
    assert NIGHTS.contains(when) is inside


@pytest.mark.parametrize(
    ("when", "opens"),
    [
        (madrid(2026, 6, 5, 12, 0), utc(2026, 6, 5, 20, 0)),  # Friday noon: tonight at 22:00
        (madrid(2026, 6, 6, 10, 0), utc(2026, 6, 8, 20, 0)),  # Saturday: Monday night
        (madrid(2026, 6, 6, 5, 0), utc(2026, 6, 8, 20, 0)),  # Friday's window just closed
        (madrid(2026, 6, 7, 23, 30), utc(2026, 6, 8, 20, 0)),  # Sunday night
        (madrid(2026, 6, 2, 5, 0), utc(2026, 6, 2, 20, 0)),  # Tuesday, just closed
        (utc(2026, 1, 9, 12, 0), utc(2026, 1, 9, 21, 0)),  # winter Friday: 22:00 CET
        (
            dt.datetime(2026, 6, 6, 9, 0, tzinfo=ZoneInfo("America/New_York")),
            utc(2026, 6, 8, 20, 0),
        ),
    ],
)
def test_window_next_opening(when: dt.datetime, opens: dt.datetime) -> None:
    result = NIGHTS.next_opening(when)
    assert result == opens
    assert result.tzinfo is dt.UTC
    assert NIGHTS.contains(result) is True


def test_next_opening_inside_the_window_is_when_itself() -> None:
    when = madrid(2026, 6, 2, 3, 0)
    assert NIGHTS.next_opening(when) is when


def test_whole_day_window_when_end_equals_start() -> None:
    sundays = Window(frozenset({6}), dt.time(0), dt.time(0), "Europe/Madrid")
    assert sundays.contains(madrid(2026, 6, 7, 0, 0)) is True
    assert sundays.contains(madrid(2026, 6, 7, 23, 59, 59)) is True
    assert sundays.contains(madrid(2026, 6, 8, 0, 0)) is False
    assert sundays.contains(madrid(2026, 6, 6, 23, 59, 59)) is False
    assert sundays.next_opening(madrid(2026, 6, 1, 12, 0)) == utc(2026, 6, 6, 22, 0)
    # Any other time: 24 hours from start on the listed day.
    from_eight = Window(frozenset({6}), dt.time(8), dt.time(8), "UTC")
    assert from_eight.contains(utc(2026, 6, 8, 7, 59)) is True
    assert from_eight.contains(utc(2026, 6, 8, 8, 0)) is False
    assert from_eight.contains(utc(2026, 6, 7, 7, 59)) is False
    daily = Window(frozenset(range(7)), dt.time(0), dt.time(0), "Europe/Madrid")
    assert all(daily.contains(utc(2026, 3, 29, h)) for h in range(24))


def test_window_across_the_spring_dst_change() -> None:
    # Europe/Madrid, Sunday 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
    saturday_night = Window(frozenset({5}), dt.time(22), dt.time(5), "Europe/Madrid")
    assert saturday_night.next_opening(madrid(2026, 3, 28, 12, 0)) == utc(2026, 3, 28, 21, 0)
    assert saturday_night.contains(utc(2026, 3, 28, 21, 0)) is True  # 22:00 CET
    assert saturday_night.contains(utc(2026, 3, 29, 2, 59)) is True  # 04:59 CEST
    assert saturday_night.contains(utc(2026, 3, 29, 3, 0)) is False  # 05:00 CEST: 6 hours in all
    # A start time the clock skips: the window opens at the first moment after the gap.
    early = Window(frozenset(range(7)), dt.time(2, 30), dt.time(4), "Europe/Madrid")
    assert early.next_opening(utc(2026, 3, 28, 23, 0)) == utc(2026, 3, 29, 1, 0)  # 03:00 CEST
    assert early.contains(utc(2026, 3, 29, 0, 59, 59)) is False  # 01:59:59 CET
    assert early.contains(utc(2026, 3, 29, 1, 0)) is True
    assert early.contains(utc(2026, 3, 29, 2, 0)) is False  # 04:00 CEST
    assert early.next_opening(utc(2026, 3, 29, 2, 0)) == utc(2026, 3, 30, 0, 30)  # 02:30 CEST
    assert early.next_opening(utc(2026, 3, 27, 23, 0)) == utc(2026, 3, 28, 1, 30)  # 02:30 CET
    # A window wholly inside the gap does not happen that day.
    skipped = Window(frozenset(range(7)), dt.time(2), dt.time(2, 59), "Europe/Madrid")
    assert skipped.next_opening(utc(2026, 3, 28, 23, 0)) == utc(2026, 3, 30, 0, 0)
    assert not any(skipped.contains(utc(2026, 3, 29, h, m)) for h in range(24) for m in (0, 30))
    # Sunday 00:00-00:00 that day lasts 23 hours.
    sunday = Window(frozenset({6}), dt.time(0), dt.time(0), "Europe/Madrid")
    assert sunday.next_opening(utc(2026, 3, 27)) == utc(2026, 3, 28, 23, 0)
    assert sunday.contains(utc(2026, 3, 29, 21, 59)) is True
    assert sunday.contains(utc(2026, 3, 29, 22, 0)) is False


def test_window_across_the_autumn_dst_change() -> None:
    # Europe/Madrid, Sunday 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC); the clock
    # shows 02:00-02:59 twice.
    saturday_night = Window(frozenset({5}), dt.time(22), dt.time(5), "Europe/Madrid")
    assert saturday_night.next_opening(madrid(2026, 10, 24, 12, 0)) == utc(2026, 10, 24, 20, 0)
    assert saturday_night.contains(utc(2026, 10, 25, 3, 59)) is True  # 04:59 CET
    assert saturday_night.contains(utc(2026, 10, 25, 4, 0)) is False  # 05:00 CET: 8 hours in all
    # A start time the clock shows twice: the window opens at the first, and stays open.
    early = Window(frozenset(range(7)), dt.time(2, 30), dt.time(4), "Europe/Madrid")
    assert early.next_opening(utc(2026, 10, 25, 0, 0)) == utc(2026, 10, 25, 0, 30)  # 02:30 CEST
    # (Aware datetimes whose offset depends on fold never compare equal across zones: use UTC.)
    assert early.next_opening(madrid(2026, 10, 25, 2, 0)) == madrid(2026, 10, 25, 2, 30).astimezone(
        dt.UTC
    )
    assert early.contains(madrid(2026, 10, 25, 2, 15, fold=1)) is True  # 02:15 CET, 2nd time
    assert early.contains(utc(2026, 10, 25, 2, 59)) is True  # 03:59 CET
    assert early.contains(utc(2026, 10, 25, 3, 0)) is False  # 04:00 CET
    # An end time the clock shows twice: the window closes at the first.
    late = Window(frozenset(range(7)), dt.time(1), dt.time(2, 30), "Europe/Madrid")
    assert late.contains(utc(2026, 10, 25, 0, 29)) is True  # 02:29 CEST
    assert late.contains(utc(2026, 10, 25, 0, 30)) is False  # 02:30 CEST
    assert late.contains(madrid(2026, 10, 25, 2, 15, fold=1)) is False  # 02:15 CET
    assert late.next_opening(utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 26, 0, 0)  # 01:00 CET
    # Sunday 00:00-00:00 that day lasts 25 hours.
    sunday = Window(frozenset({6}), dt.time(0), dt.time(0), "Europe/Madrid")
    assert sunday.next_opening(utc(2026, 10, 23)) == utc(2026, 10, 24, 22, 0)
    assert sunday.contains(utc(2026, 10, 25, 22, 59)) is True
    assert sunday.contains(utc(2026, 10, 25, 23, 0)) is False


def test_window_in_a_zone_with_a_half_hour_dst_shift_and_a_skipped_day() -> None:
    # Lord Howe Island moves its clocks by 30 minutes: 02:00 became 02:30 on 2026-10-04.
    howe = Window(frozenset(range(7)), dt.time(2, 15), dt.time(3), "Australia/Lord_Howe")
    assert howe.next_opening(utc(2026, 10, 3, 14, 0)) == utc(2026, 10, 3, 15, 30)  # 02:30 +11
    # Samoa skipped Friday 2011-12-30 entirely (Thursday 23:59 -10 was followed by Saturday
    # 00:00 +14): a Friday window has nothing to open on and waits for the next Friday.
    samoa = Window(frozenset({4}), dt.time(10), dt.time(11), "Pacific/Apia")
    assert samoa.next_opening(utc(2011, 12, 29, 12, 0)) == utc(2012, 1, 5, 20, 0)  # 10:00 +14
    assert not samoa.contains(utc(2011, 12, 30, 10, 0))  # Saturday 00:00, after the gap


# The zones and moments the property tests below draw from: DST changes in both directions,
# half-hour shifts, a skipped day, no DST at all.
ZONES = ["Europe/Madrid", "America/New_York", "Australia/Lord_Howe", "Pacific/Apia", "UTC",
         "Asia/Kolkata", "America/Santiago"]  # fmt: skip
_CHANGES = [utc(2026, 3, 29, 1), utc(2026, 10, 25, 1), utc(2026, 3, 8, 7), utc(2026, 11, 1, 6),
            utc(2026, 4, 4, 15), utc(2026, 10, 3, 15, 30), utc(2011, 12, 30, 10),
            utc(2026, 4, 5, 3), utc(2026, 9, 6, 4)]  # fmt: skip
_DAY = 86400
moments = st.one_of(
    st.integers(int(utc(2026, 1, 1).timestamp()), int(utc(2027, 1, 1).timestamp())),
    st.sampled_from(_CHANGES).flatmap(
        lambda t: st.integers(int(t.timestamp()) - 4 * _DAY, int(t.timestamp()) + 4 * _DAY)
    ),
).map(lambda seconds: dt.datetime.fromtimestamp(seconds, dt.UTC))
clocks = st.builds(dt.time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45, 59]))
windows = st.builds(
    Window,
    days=st.frozensets(st.integers(0, 6), min_size=1),
    start=clocks,
    end=clocks,
    timezone=st.sampled_from(ZONES),
)


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(window=windows, when=moments)
def test_next_opening_is_the_first_moment_inside(window: Window, when: dt.datetime) -> None:
    opens = window.next_opening(when)
    assert window.contains(opens)
    if window.contains(when):
        assert opens is when
        return
    assert when < opens <= when + dt.timedelta(days=8)
    assert opens.tzinfo is dt.UTC
    assert not window.contains(opens - dt.timedelta(microseconds=1))
    step = (opens - when) / 64
    assert not any(window.contains(when + step * i) for i in range(64))


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(window=windows, when=moments)
def test_contains_follows_the_wall_clock_away_from_dst_changes(
    window: Window, when: dt.datetime
) -> None:
    zone = ZoneInfo(window.timezone)
    offsets = {(when + dt.timedelta(hours=h)).astimezone(zone).utcoffset() for h in range(-30, 31)}
    if len(offsets) != 1:
        return  # within a day of a clock change: covered by the tests above
    local = when.astimezone(zone)
    day, clock = local.weekday(), local.time().replace(tzinfo=None)
    if window.start < window.end:
        expected = day in window.days and window.start <= clock < window.end
    else:
        expected = (day in window.days and clock >= window.start) or (
            (day - 1) % 7 in window.days and clock < window.end
        )
    assert window.contains(when) is expected


# --- verification and escalation -----------------------------------------------------------

LADDER = """\
defaults:
  cooldown: 1h
  verify: 10m
rules:
  - name: unreachable-router
    match: [alertname = "DeviceUnreachable", device =~ ".+"]
    device: "{{ labels.device }}"
    operation: sync
    escalate:
      - operation: reboot
        verify: 15m
        cooldown: 2h
      - {operation: device_factory, allow_destructive: true}
  - name: unverified
    match: [alertname = "ConfigDrift"]
    device: "{{ labels.device }}"
    operation: reconf
    verify: 0
"""


def test_a_ladder_is_the_rule_then_each_step_with_what_it_leaves_out_from_the_rule() -> None:
    ladder, unverified = parse_rules(LADDER).rules
    assert ladder.steps == 3 and ladder.step(1) is ladder
    sync, reboot, wipe = (ladder.step(n) for n in (1, 2, 3))
    assert [(r.name, r.operation, r.verify, r.cooldown) for r in (sync, reboot, wipe)] == [
        ("unreachable-router", "sync", 600.0, 3600.0),
        ("unreachable-router", "reboot", 900.0, 7200.0),
        ("unreachable-router", "device_factory", 600.0, 3600.0),  # the rule's verify, cooldown
    ]
    # A destructive step waits for a person unless it says otherwise, as a rule does.
    assert [r.require_approval for r in (sync, reboot, wipe)] == [False, False, True]
    assert reboot.matchers == ladder.matchers and reboot.give_up == ladder.give_up
    assert (unverified.verify, unverified.steps) == (0.0, 1)
    with pytest.raises(IndexError, match="has 3 step"):
        ladder.step(4)


def test_verification_is_off_unless_a_rule_or_the_defaults_say_so() -> None:
    (r,) = parse_rules(one_rule()).rules
    assert (r.verify, r.escalate, r.steps) == (0.0, (), 1)
    (r,) = parse_rules(one_rule(top="defaults: {verify: 5m}\n")).rules
    assert r.verify == 300.0


@pytest.mark.parametrize(("text", "message"), [
    (LADDER.replace("  verify: 10m\n", "", 1),
     "rules.yaml:4: rule 'unreachable-router': 'verify' is needed: step 2 of 3 follows only"
     " when step 1 did not remediate within it"),
    (LADDER.replace("verify: 15m", "verify: 0"),
     "rules.yaml:5: rule 'unreachable-router': 'verify' of step 2 (escalate) is needed: step 3"
     " of 3 follows only when step 2 did not remediate within it"),
    (LADDER.replace(", allow_destructive: true", ""),
     "rules.yaml:13: rule 'unreachable-router': operation 'device_factory' is destructive: set"
     " allow_destructive: true to allow it"),
    (LADDER.replace("operation: reboot", "operation: rebot"),
     "rules.yaml:10: rule 'unreachable-router': unknown operation 'rebot' (expected one of:"
     " sync, reconf, reboot, device_factory, factory)"),
    (LADDER.replace("cooldown: 2h", "wait: 2h"),
     "rules.yaml:12: rule 'unreachable-router': unknown key 'wait' in 'escalate' (expected one"
     " of: operation, verify, cooldown, allow_destructive, require_approval)"),
])
def test_ladder_mistakes_name_the_rule_and_the_line(text: str, message: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(text)
    assert [str(p) for p in info.value.problems] == [message]


def test_a_ladder_built_in_code_keeps_the_file_invariants() -> None:
    from bridge.rules import Step

    with pytest.raises(ValueError, match="'verify' is needed"):
        rule(escalate=(Step("reboot"),))
    with pytest.raises(ValueError, match="destructive"):
        Step("factory")
    built = rule(verify=60.0, escalate=(Step("reboot", verify=120.0),))
    assert built.step(2).operation == "reboot" and built.step(2).verify == 120.0
    assert built == rule(verify=60.0, escalate=(Step("reboot", verify=120.0),))
