"""Tests for bridge.rules: loading rules.yaml, matchers, durations and device templates."""

# Expected messages are compared whole, as users read them, so some lines run long.
# ruff: noqa: E501

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from bridge.errors import BridgeError, RulesError
from bridge.rules import (
    DESTRUCTIVE,
    OPERATIONS,
    STATUSES,
    Matcher,
    Rule,
    RuleSet,
    TemplateRenderError,
    format_duration,
    load_rules,
    parse_duration,
    parse_matcher,
    parse_rules,
)

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
    keys = "name, match, device, operation, cooldown, status, allow_destructive"
    assert problems(MANY_ERRORS) == [
        "rules.yaml:2: invalid duration '1 hour' (expected a Prometheus duration such as 90s, 30m, 1h, 1d)",
        "rules.yaml:3: unknown key 'jitter' in 'defaults' (expected one of: cooldown)",
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
        "rules.yaml:2: unknown key 'rulez' (expected one of: defaults, rules)"
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
        "rules.yaml:1: unknown key 'common' (expected one of: defaults, rules)"
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
