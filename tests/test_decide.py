"""The pure decision core: alerts x rules x cooldowns x now -> decisions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from bridge import decide as d
from bridge.payloads import Alert
from bridge.rules import Budget, Matcher, Rule, RuleSet, parse_rules
from bridge.rules.index import CHUNK, index_rules

# Hypothesis' "explain" phase imports libcst, which warns on import (see test_rules.py).
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]

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


@dataclass
class FakeState:
    """decide.State from plain values: what the store would have said."""

    cooldowns: dict[d.Key, float] = field(default_factory=dict)
    paused: bool = False
    breaker_open: bool = False
    sent: dict[d.Key, int] = field(default_factory=dict)
    used: dict[tuple[str, str], int] = field(default_factory=dict)
    demand: int = 0
    asked: list[tuple[str, float]] = field(default_factory=list)

    def cooldown_until(self, key: d.Key) -> float | None:
        return self.cooldowns.get(key)

    def operations_since(self, key: d.Key, since: float) -> int:
        self.asked.append(("operations_since", since))
        return self.sent.get(key, 0)

    def budget_used(self, budget: Budget, group: str, since: float) -> int:
        self.asked.append((f"budget_used:{budget.name}:{group}", since))
        return self.used.get((budget.name, group), 0)

    def demand_since(self, since: float) -> int:
        self.asked.append(("demand_since", since))
        return self.demand


def alert(status: str = "firing", starts_at: datetime | None = None, **labels: str) -> Alert:
    return Alert(status=status, labels=MappingProxyType(labels),
                 annotations=MappingProxyType({}), starts_at=starts_at, ends_at=None,
                 fingerprint="f" + labels.get("device", ""), generator_url="")


def verdicts(decisions: list[d.Decision]) -> list[tuple[str | None, str, str, str]]:
    return [(x.rule.name if x.rule else None, x.device, x.operation, x.verdict)
            for x in decisions]


def test_every_matching_rule_acts_with_its_own_cooldown() -> None:
    out = d.decide([alert(alertname="DeviceUnreachable", device="r1")], RULES, FakeState(), NOW,
                   dry_run=False)
    assert verdicts(out) == [
        ("reboot-unreachable", "r1", "reboot", "execute"),
        ("sync-unreachable", "r1", "sync", "execute"),
    ]
    assert [x.until for x in out] == [NOW + 3600, NOW + 600]


def test_each_alert_is_judged_on_its_own_labels() -> None:
    alerts = [alert(alertname="DeviceUnreachable", device="r1", site="lab"),
              alert(alertname="DeviceUnreachable", device="r2", site="hq")]
    out = d.decide(alerts, RULES, FakeState(), NOW, dry_run=False)
    assert verdicts(out) == [
        ("sync-unreachable", "r1", "sync", "execute"),
        ("reboot-unreachable", "r2", "reboot", "execute"),
        ("sync-unreachable", "r2", "sync", "execute"),
    ]


def test_same_device_and_operation_twice_in_one_payload_is_one_action() -> None:
    alerts = [alert(alertname="DeviceUnreachable", device="r1", instance="a"),
              alert(alertname="DeviceUnreachable", device="r1", instance="b")]
    out = d.decide(alerts, RULES, FakeState(), NOW, dry_run=False)
    assert [x.verdict for x in out] == ["execute", "execute", "duplicate", "duplicate"]


def test_cooldown_blocks_until_it_ends() -> None:
    cooldowns = {("r1", "reboot"): NOW + 5, ("r1", "sync"): NOW - 1}
    out = d.decide([alert(alertname="DeviceUnreachable", device="r1")], RULES,
                   FakeState(cooldowns), NOW, dry_run=False)
    assert [x.verdict for x in out] == ["cooldown", "execute"]
    assert out[0].until == NOW + 5
    assert out[0].reason == "in cooldown until 2027-01-15T08:00:05.000Z"


def test_cooldown_ending_exactly_now_no_longer_blocks() -> None:
    out = d.decide([alert(alertname="DeviceUnreachable", device="r1")], RULES,
                   FakeState({("r1", "reboot"): NOW}), NOW, dry_run=False)
    assert out[0].verdict == "execute"


def test_dry_run_decides_but_does_not_execute() -> None:
    out = d.decide([alert(alertname="DeviceUnreachable", device="r1")], RULES,
                   FakeState({("r1", "sync"): NOW + 60}), NOW, dry_run=True)
    assert [x.verdict for x in out] == ["dry_run", "cooldown"]


def test_status_selects_rules() -> None:
    firing = alert(alertname="PolicyViolation", device="r1")
    resolved = alert("resolved", alertname="PolicyViolation", device="r1")
    assert verdicts(d.decide([firing], RULES, FakeState(), NOW, dry_run=False)) == [
        (None, "", "", "no_match")]
    assert verdicts(d.decide([resolved], RULES, FakeState(), NOW, dry_run=False)) == [
        ("reconf-on-resolve", "r1", "reconf", "execute")]


def test_missing_device_label_is_an_empty_device() -> None:
    out = d.decide([alert(alertname="DeviceUnreachable")], RULES, FakeState(), NOW, dry_run=False)
    assert [x.verdict for x in out] == ["empty_device", "empty_device"]
    assert out[0].reason == "device template '{{ labels.device }}' rendered an empty name"


def test_template_error_is_a_verdict_not_an_exception() -> None:
    out = d.decide([alert(alertname="Weird", device="r1")], RULES, FakeState(), NOW, dry_run=False)
    assert [x.verdict for x in out] == ["template_error"]
    assert "device" in out[0].reason


def test_dot_segments_and_control_characters_are_invalid_devices() -> None:
    for name in (".", "..", "r\n1", "a\x00b", "a\tb"):
        out = d.decide([alert(alertname="DeviceUnreachable", device=name)], RULES, FakeState(), NOW,
                       dry_run=False)
        assert {x.verdict for x in out} == {"invalid_device"}, name


def test_no_rule_matched() -> None:
    out = d.decide([alert(alertname="Other", device="r1")], RULES, FakeState(), NOW, dry_run=False)
    assert verdicts(out) == [(None, "", "", "no_match")]
    assert out[0].reason == "no rule matches this firing alert"


def test_summarize_counts_in_a_stable_order() -> None:
    alerts = [alert(alertname="DeviceUnreachable", device="r1"), alert(alertname="Other")]
    out = d.decide(alerts, RULES, FakeState({("r1", "sync"): NOW + 1}), NOW, dry_run=False)
    assert d.summarize(out) == {"execute": 1, "cooldown": 1, "no_match": 1}


def test_matching_keeps_file_order_and_misses_nothing() -> None:
    rules = parse_rules("""\
rules:
  - {name: a, match: ['alertname = "X"'], device: d, operation: sync}
  - {name: b, match: ['site = "hq"'], device: d, operation: reconf}
  - {name: c, match: ['alertname = "Y"'], device: d, operation: reboot}
  - {name: d, match: ['alertname =~ "X|Y"'], device: d, operation: sync}
  - {name: e, match: ['alertname = "X"', 'alertname = "Y"'], device: d, operation: sync}
  - {name: f, match: ['alertname = "X"'], device: e, operation: sync}
""")
    assert [r.name for r in rules.matching({"alertname": "X"})] == ["a", "d", "f"]
    assert [r.name for r in rules.matching({"alertname": "Y"})] == ["c", "d"]
    assert [r.name for r in rules.matching({})] == []
    for labels in ({"alertname": "X", "site": "hq"}, {"alertname": "Y"}, {"site": "hq"}):
        every = [r.name for r in rules.rules if r.matches(labels)]
        assert [r.name for r in rules.matching(labels)] == every


# Small vocabularies, so that random rules and alerts often meet. Values include lists of
# literals ("a|b", "(a|b)", "a|" for "a" or missing), escapes, and regexes no index can use.
_LABELS = ["alertname", "team", "severity"]
_VALUES = ["", "a", "b", "a.b", "A", "a|b"]
_PATTERNS = ["a", "a|b", "(a|b)", "(?:b|a)", "a|", "", "a\\.b", "a.b", ".+", "(?i)a", "a|b.*",
             "[ab]", "a\\|b", "A|a"]
_MATCHER = st.one_of(
    st.builds(Matcher, st.sampled_from(_LABELS), st.sampled_from(["=", "!="]),
              st.sampled_from(_VALUES)),
    st.builds(Matcher, st.sampled_from(_LABELS), st.sampled_from(["=~", "!~"]),
              st.sampled_from(_PATTERNS)),
)
_ALERT_LABELS = st.dictionaries(st.sampled_from(_LABELS), st.sampled_from(_VALUES))


def assert_index_agrees_with_a_full_scan(matchers: list[list[Matcher]],
                                         alerts: list[dict[str, str]], *,
                                         chunk: int = CHUNK) -> None:
    """Rules with these matchers: for each alert's labels, the index finds exactly the rules
    a scan of every rule finds, in file order."""
    rules = [Rule(f"r{i}", tuple(m), "d", "sync", 60.0) for i, m in enumerate(matchers)]
    index = index_rules(matchers, chunk=chunk)
    for labels in alerts:
        assert index.matching(labels) == [i for i, rule in enumerate(rules) if rule.matches(labels)]


def filed(rules: RuleSet) -> dict[str, str]:
    """Where the index files each rule: under "label=value" ("label=a|b" for each of two),
    "label^prefix", "label~regex" (an alternation), or "-" (tried by every alert)."""
    index = index_rules([r.matchers for r in rules.rules])
    where: dict[int, str] = {}
    for label, by_value in index.by_label.items():
        for value, entries in sorted(by_value.items()):
            where.update((p, f"{where[p]}|{value}" if p in where else f"{label}={value}")
                         for p in entries.positions)
    for label, by_length in index.by_prefix.items():
        for by_text in by_length.values():
            for text, entries in by_text.items():
                where.update((p, f"{label}^{text}") for p in entries.positions)
    for label, chunks in index.by_regex.items():
        where.update((p, f"{label}~regex") for chunk in chunks for p in chunk.rules.positions)
    where.update((p, "-") for p in index.unindexed.positions)
    return {rules.rules[p].name: w for p, w in sorted(where.items())}


@settings(max_examples=400, deadline=None, phases=PHASES)
@given(st.lists(st.lists(_MATCHER, max_size=4), max_size=15), st.lists(_ALERT_LABELS, max_size=5))
def test_the_index_finds_exactly_the_rules_a_full_scan_finds(
    matchers: list[list[Matcher]], alerts: list[dict[str, str]]
) -> None:
    assert_index_agrees_with_a_full_scan(matchers, alerts)


def test_any_label_and_lists_of_literals_index_rules() -> None:
    rules = parse_rules("""\
rules:
  - {name: by-team, match: ['team = "t1"', 'severity =~ "critical|page"'], device: d,
     operation: sync}
  - {name: by-severity, match: ['severity =~ "(critical|page)"'], device: d, operation: sync}
  - {name: by-regex, match: ['team =~ "(?i)t1.*"'], device: d, operation: sync}
  - {name: empty-is-missing, match: ['site = ""', 'team = "t2"'], device: d, operation: sync}
""")
    # A list of literals is filed under each of its values; "(?i)t1.*" under none: its rule
    # is found by running the regex.
    assert filed(rules) == {"by-team": "team=t1", "by-severity": "severity=critical|page",
                            "by-regex": "team~regex", "empty-is-missing": "team=t2"}
    names = [r.name for r in rules.matching({"team": "t1", "severity": "page"})]
    assert names == ["by-team", "by-severity", "by-regex"]
    assert [r.name for r in rules.matching({"team": "t2"})] == ["empty-is-missing"]
    assert [r.name for r in rules.matching({"severity": "warning"})] == []
    assert [r.name for r in rules.matching({"team": "T1-x"})] == ["by-regex"]


def test_a_regex_with_leading_literals_indexes_its_rule_by_that_prefix() -> None:
    rules = parse_rules("""\
rules:
  - {name: t1, match: ['team =~ "t1(-.+)?"'], device: d, operation: sync}
  - {name: t12, match: ['team =~ "t12.*"'], device: d, operation: sync}
  - {name: t, match: ['team =~ "t1.*|t2"'], device: d, operation: sync}
  - {name: exact, match: ['team =~ "t1.*"', 'site = "hq"'], device: d, operation: sync}
  - {name: any-case, match: ['team =~ "(?i)t1.*"'], device: d, operation: sync}
  - {name: no-literal, match: ['team =~ ".*-t1"'], device: d, operation: sync}
""")

    def names(labels: dict[str, str]) -> list[str]:
        return [r.name for r in rules.matching(labels)]

    # "exact": as few rules share site = "hq" as share the prefix "t1": filed under the value.
    # "any-case" and "no-literal" have no prefix: found by their regexes.
    assert filed(rules) == {"t1": "team^t1", "t12": "team^t12", "t": "team^t", "exact": "site=hq",
                            "any-case": "team~regex", "no-literal": "team~regex"}
    assert names({"team": "t123"}) == ["t12", "t", "any-case"]
    assert names({"team": "t1"}) == ["t1", "t", "any-case"]
    assert names({"team": "t2", "site": "hq"}) == ["t"]
    assert names({"team": "t1-x", "site": "hq"}) == ["t1", "t", "exact", "any-case"]
    assert names({"team": "x-t1"}) == ["no-literal"]
    # Other case, no label, an empty one: no value starts with a prefix.
    assert names({"team": "T1"}) == ["any-case"]
    for labels in ({}, {"team": ""}):
        assert names(labels) == []


# Values that are prefixes of each other, and patterns whose leading literals are such prefixes,
# beside patterns that have none or whose literals could match otherwise.
_TEAMS = ["", "t", "t1", "t12", "t123", "t1-x", "t2", "T1", "x-t1"]
_TEAM_PATTERNS = ["t1(-.+)?", "t12.*", "t.*", "t1", "t1|t2", "t1.*|t2", "t1$", "^t1.*",
                  "(?i)t1.*", "t1?2", "t\\d+", "t\\x31.*", "t12-a", "[t]1.*", ".*t1", "t1|",
                  "(?:t1)-?.*", "t(1|12)", "t1+", "t123|t1-x", "(?i:t)1.*", "t12\\b.*"]
_TEAM_MATCHER = st.one_of(
    st.builds(Matcher, st.just("team"), st.just("=~"), st.sampled_from(_TEAM_PATTERNS)),
    st.builds(Matcher, st.sampled_from(["team", "site"]), st.sampled_from(["=~", "!~"]),
              st.sampled_from(_TEAM_PATTERNS)),
    st.builds(Matcher, st.sampled_from(["team", "site"]), st.sampled_from(["=", "!="]),
              st.sampled_from(_TEAMS)),
)
# Alerts' values: the ones above, short texts of the same letters, and values the patterns allow.
_TEAM_VALUE = (st.sampled_from(_TEAMS) | st.text("t12-xT", max_size=5)
               | st.sampled_from(_TEAM_PATTERNS).flatmap(
                   lambda p: st.from_regex(p, fullmatch=True)))
_TEAM_LABELS = st.dictionaries(st.sampled_from(["team", "site"]), _TEAM_VALUE)


@settings(max_examples=400, deadline=None, phases=PHASES)
@given(st.lists(st.lists(_TEAM_MATCHER, max_size=3), max_size=15),
       st.lists(_TEAM_LABELS, max_size=5))
def test_the_prefix_index_finds_exactly_the_rules_a_full_scan_finds(
    matchers: list[list[Matcher]], alerts: list[dict[str, str]]
) -> None:
    assert_index_agrees_with_a_full_scan(matchers, alerts)


def test_rules_no_key_narrows_are_filed_by_their_regexes_in_alternations() -> None:
    many = "\n".join(f"  - {{name: r{i}, match: ['severity = \"critical\"', "
                     f"'team =~ \"(?i)t{i}(-.+)?\"'], device: d, operation: sync}}"
                     for i in range(CHUNK + 8))
    rules = parse_rules(f"rules:\n{many}\n")
    # Every rule shares severity = "critical": each is filed by its team regex instead, in
    # alternations of CHUNK.
    assert set(filed(rules).values()) == {"team~regex"}
    chunks = index_rules([r.matchers for r in rules.rules]).by_regex["team"]
    assert [len(c.rules.positions) for c in chunks] == [CHUNK, 8]
    for i in (5, CHUNK + 3):
        found = rules.matching({"severity": "critical", "team": f"T{i}-x"})
        assert [r.name for r in found] == [f"r{i}"]
    assert rules.matching({"severity": "critical", "team": "u5"}) == []
    assert rules.matching({"team": "t5"}) == []
    # As few rules as CHUNK share it: filed under the value.
    few = parse_rules("rules:\n" + "\n".join(many.splitlines()[:CHUNK]) + "\n")
    assert set(filed(few).values()) == {"severity=critical"}
    assert [r.name for r in few.matching({"severity": "critical", "team": "t5"})] == ["r5"]


def test_a_regex_joins_an_alternation_as_a_branch_that_matches_the_same_values() -> None:
    def branch(pattern: str) -> str | None:
        return Matcher("team", "=~", pattern).branch()

    assert branch("t1|t2") == "(?:t1|t2)"
    assert branch("(?i)t1.*") == "(?i:t1.*)"
    assert branch("(?s)(?mi)a.b$") == "(?ims:a.b$)"
    assert branch("(?<=a)b|(?!c).") == "(?:(?<=a)b|(?!c).)"
    # Groups of its own by number or name, flags a branch cannot take: each tried alone.
    for alone in ("(a)\\1", "(?P<t>a)", "(?P<t>a)(?P=t)", "(a)?(?(1)b|c)", "(?x)a # b",
                  "(?a)\\w"):
        assert branch(alone) is None, alone
    assert Matcher("team", "!~", "t1").branch() is None


# Regexes of every shape a branch must keep: flags for the whole pattern, groups, alternation,
# anchors, lookarounds, an empty one; and those that must stay out (groups by number or name).
_ANY_PATTERNS = ["(?i)t1.*", "(?s)t.1", "(?im)^T1$", "(t1|t2)(-.+)?", "t1|", "", ".*-t1",
                 "(?:T|t)\\d", "t(?=1)..?", "(?<=t)1|t", "(t)\\1", "(?P<x>t)(?P=x)1?", "[^x].*",
                 "(?i:T)1", "t1\\b.*", "(?x) t 1", "t1(?#note)", "a++|t1*+"]
_ANY_MATCHER = st.one_of(
    st.builds(Matcher, st.sampled_from(["team", "site"]), st.just("=~"),
              st.sampled_from(_ANY_PATTERNS)),
    st.builds(Matcher, st.sampled_from(["team", "site"]), st.sampled_from(["=", "!=", "!~"]),
              st.sampled_from(_TEAMS)),
)

_ANY_LABELS = st.dictionaries(st.sampled_from(["team", "site"]),
                              _TEAM_VALUE | st.sampled_from(["tt", "tt1", "T1", "t\n1", "-t1"]))


@settings(max_examples=400, deadline=None, phases=PHASES)
@given(st.lists(st.lists(_ANY_MATCHER, max_size=3), max_size=15),
       st.lists(_ANY_LABELS, max_size=5), st.integers(1, 4))
# Joined, "\\1" would name the first rule's group, unset when its branch failed.
@example([[Matcher("team", "=~", "(t1|t2)(-.+)?")], [Matcher("team", "=~", "(t)\\1")]],
         [{"team": "tt"}], 2)
def test_the_regex_alternations_find_exactly_the_rules_a_full_scan_finds(
    matchers: list[list[Matcher]], alerts: list[dict[str, str]], chunk: int
) -> None:
    assert_index_agrees_with_a_full_scan(matchers, alerts, chunk=chunk)


# -- guards ----------------------------------------------------------------------------------

GUARDED = parse_rules("""\
budgets:
  - {name: global, max: 5, per: 10m}
  - {name: reboots, operation: reboot, max: 2, per: 1h}
  - {name: per-site, group_by: site, max: 1, per: 1h}
breaker: {max: 4, per: 5m}
rules:
  - name: reboot
    match: ['alertname = "Down"']
    device: "{{ labels.device }}"
    operation: reboot
    give_up: {after: 2, within: 6h}
  - name: night-reconf
    match: ['alertname = "Drift"']
    device: "{{ labels.device }}"
    operation: reconf
    window: {days: daily, start: "22:00", end: "05:00", timezone: UTC}
  - name: night-reconf-or-nothing
    match: ['alertname = "Drift2"']
    device: "{{ labels.device }}"
    operation: reconf
    window: {days: daily, start: "22:00", end: "05:00", timezone: UTC, outside: skip}
  - name: patient
    match: ['alertname = "Flappy"']
    device: "{{ labels.device }}"
    operation: sync
    min_age: 5m
  - name: shadow
    match: ['alertname = "New"']
    device: "{{ labels.device }}"
    operation: sync
    dry_run: true
  - name: wipe
    match: ['alertname = "Owned"']
    device: "{{ labels.device }}"
    operation: factory
    allow_destructive: true
""")
NOON = 1_800_014_400.0  # 2027-01-15T12:00:00Z


def judge(alerts: list[Alert], state: FakeState | None = None, now: float = NOON,
          ) -> list[tuple[str, str]]:
    out = d.decide(alerts, GUARDED, state or FakeState(), now, dry_run=False)
    return [(x.verdict, x.reason) for x in out]


def down(device: str, site: str = "") -> Alert:
    return alert(alertname="Down", device=device, **({"site": site} if site else {}))


def flappy(starts_at: datetime | None) -> Alert:
    """A Flappy alert on r1 that started firing at `starts_at`."""
    return alert(starts_at=starts_at, alertname="Flappy", device="r1")


def test_paused_and_breaker_open_send_nothing() -> None:
    assert judge([down("r1")], FakeState(paused=True)) == [
        ("paused", "the bridge is paused (alert-bridge resume)")]
    assert judge([down("r1")], FakeState(breaker_open=True)) == [
        ("breaker_open", "the storm breaker is open (alert-bridge resume)")]


def test_cooldown_and_dry_run_come_before_the_kill_switches() -> None:
    state = FakeState({("r1", "reboot"): NOON + 60}, paused=True)
    assert judge([down("r1")], state)[0][0] == "cooldown"


def test_the_breaker_trips_when_demand_passes_its_threshold() -> None:
    alerts = [alert(alertname="New", device="x")] + [down(f"r{i}", f"s{i}") for i in range(3)]
    assert [v for v, _ in judge(alerts, FakeState(demand=2))] == [
        "dry_run", "execute", "execute", "breaker_open"]
    assert judge([down("r9")], FakeState(demand=4))[0] == (
        "breaker_open", "storm breaker tripped: 5 operations asked for within 5m")


def test_budgets_global_per_operation_and_per_group() -> None:
    assert [v for v, _ in judge([down("a", "hq"), down("b", "hq"), down("c", "lab")])] == [
        "execute", "held_by_budget", "execute"]
    assert judge([down("a", "hq")], FakeState(used={("per-site", "hq"): 1}))[0] == (
        "held_by_budget", "budget 'per-site' for site='hq' spent: 1 of 1 per 1h")
    assert judge([down("d", "x")], FakeState(used={("reboots", ""): 2}))[0] == (
        "held_by_budget", "budget 'reboots' spent: 2 of 2 per 1h")
    assert judge([down("d", "x")], FakeState(used={("global", ""): 5}))[0] == (
        "held_by_budget", "budget 'global' spent: 5 of 5 per 10m")


def test_budget_windows_slide() -> None:
    state = FakeState()
    judge([down("a", "hq")], state)
    assert ("budget_used:global:", NOON - 600) in state.asked
    assert ("budget_used:per-site:hq", NOON - 3600) in state.asked
    assert ("demand_since", NOON - 300) in state.asked


def test_give_up_after_n_operations_within_the_window() -> None:
    state = FakeState(sent={("r1", "reboot"): 2})
    assert judge([down("r1")], state) == [
        ("gave_up", "reboot already sent 2 times within 6h; giving up on r1")]
    assert ("operations_since", NOON - 6 * 3600) in state.asked
    assert judge([down("r1")], FakeState(sent={("r1", "reboot"): 1}))[0][0] == "execute"


def test_maintenance_window_holds_or_skips() -> None:
    out = d.decide([alert(alertname="Drift", device="r1")], GUARDED, FakeState(), NOON,
                   dry_run=False)
    opens = NOON + 10 * 3600  # 22:00 the same day
    assert (out[0].verdict, out[0].not_before, out[0].until) == (
        "held_for_window", opens, opens + 1800)
    assert out[0].reason == "held until the maintenance window opens at 2027-01-15T22:00:00.000Z"
    assert judge([alert(alertname="Drift2", device="r1")]) == [
        ("outside_window", "outside the rule's maintenance window")]
    at_night = NOON + 11 * 3600
    assert judge([alert(alertname="Drift", device="r1")], now=at_night)[0][0] == "execute"
    assert judge([alert(alertname="Drift2", device="r1")], now=at_night)[0][0] == "execute"


def test_min_age_holds_young_alerts() -> None:
    young = flappy(datetime.fromtimestamp(NOON - 60, UTC))
    out = d.decide([young], GUARDED, FakeState(), NOON, dry_run=False)
    assert (out[0].verdict, out[0].not_before) == ("held_min_age", NOON + 240)
    old = flappy(datetime.fromtimestamp(NOON - 600, UTC))
    assert d.decide([old], GUARDED, FakeState(), NOON, dry_run=False)[0].verdict == "execute"


def test_shadow_rules_are_dry_runs() -> None:
    assert judge([alert(alertname="New", device="r1")]) == [
        ("dry_run", "shadow mode (rule dry_run): nothing is sent")]


def test_destructive_operations_wait_for_approval() -> None:
    assert judge([alert(alertname="Owned", device="r1")]) == [
        ("pending_approval", "destructive operation: waits for alert-bridge approve")]


def test_an_alert_from_the_future_counts_its_min_age_from_now() -> None:
    out = d.decide([flappy(datetime(2099, 1, 1, tzinfo=UTC))], GUARDED, FakeState(), NOON,
                   dry_run=False)
    assert (out[0].verdict, out[0].not_before, out[0].until) == (
        "held_min_age", NOON + 300, NOON + 300 + 1800)
    assert out[0].reason == (
        "alert must fire for 5m first: not before 2027-01-15T12:05:00.000Z (its startsAt"
        " 2099-01-01T00:00:00.000Z is in the future: counted from now)")
    # One second ahead (a sender's clock a little fast) is the same thing, said the same way.
    ahead = d.decide([flappy(datetime.fromtimestamp(NOON + 1, UTC))], GUARDED, FakeState(),
                     NOON, dry_run=False)[0]
    assert (ahead.not_before, ahead.reason.endswith("in the future: counted from now)")) == (
        NOON + 300, True)
    # Exactly now is not the future: it has fired for 0s of its 5m.
    on_time = d.decide([flappy(datetime.fromtimestamp(NOON, UTC))], GUARDED, FakeState(),
                       NOON, dry_run=False)[0]
    assert on_time.reason == "alert must fire for 5m first: not before 2027-01-15T12:05:00.000Z"


# The longest durations the rules accept, on every guard that adds one to a time.
EXTREME = parse_rules("""\
rules:
  - name: patient
    match: ['alertname = "Flappy"']
    device: "{{ labels.device }}"
    operation: sync
    min_age: 292y
    cooldown: 292y
  - name: patient-at-night
    match: ['alertname = "Flappy"']
    device: "{{ labels.device }}"
    operation: reconf
    min_age: 292y
    cooldown: 292y
    window: {days: mon, start: "23:59", end: "00:00", timezone: Pacific/Kiritimati}
  - name: patient-approved
    match: ['alertname = "Flappy"']
    device: "{{ labels.device }}"
    operation: factory
    allow_destructive: true
    min_age: 292y
    cooldown: 292y
""")
YEAR_292 = 292 * 365 * 86400.0
WEEK = 7 * 86400.0


@settings(max_examples=300, deadline=None, derandomize=True)
@given(starts=st.none() | st.sampled_from([
    datetime.max.replace(tzinfo=UTC), datetime(9999, 12, 31, 23, tzinfo=UTC),
    datetime(2099, 1, 1, tzinfo=UTC), datetime.min.replace(tzinfo=UTC, microsecond=1),
]) | st.datetimes(timezones=st.just(UTC)))
def test_every_time_derived_from_startsat_is_bounded(starts: datetime | None) -> None:
    for rules in (GUARDED, EXTREME):
        decisions = d.decide([flappy(starts)], rules, FakeState(), NOON, dry_run=False)
        for x in decisions:
            for t in (x.until, x.not_before):
                assert t is None or NOON - 1 <= t <= NOON + 2 * YEAR_292 + WEEK, x
        explained = d.explain([flappy(starts)], rules, FakeState(), NOON, dry_run=False)
        json.dumps(d.explanation_json(explained))  # every time in it renders


# -- the bridge's own alerts and the steps of a ladder -----------------------------------------

LADDERS = parse_rules("""\
budgets: [{name: reboots, operation: reboot, max: 1, per: 1h}]
rules:
  - name: unreachable-router
    match: ['alertname = "Down"']
    device: "{{ labels.device }}"
    operation: sync
    verify: 10m
    escalate:
      - {operation: reboot, verify: 15m, cooldown: 2h}
      - {operation: device_factory, allow_destructive: true}
""")


def test_the_bridge_never_acts_on_its_own_alerts_whatever_rule_matches() -> None:
    own = alert(alertname="Down", device="r1", alert_bridge="true")
    (decision,) = d.decide([own], LADDERS, FakeState(), NOON, dry_run=False)
    assert (decision.rule, decision.verdict, decision.reason) == (
        None, "own_alert", "the bridge's own alert (label alert_bridge): it is for people, the"
        " bridge never acts on it")
    assert d.summarize([decision]) == {"own_alert": 1}
    ((_, (explained,)),) = d.explain([own], LADDERS, FakeState(), NOON, dry_run=False)
    assert (explained.matched, explained.why_not) == (False, decision.reason)


def test_a_step_is_a_full_decision_with_its_own_operation_cooldown_and_guards() -> None:
    down_r1 = alert(alertname="Down", device="r1")
    why = "sync did not remediate within 10m"
    step = d.decide_step(down_r1, LADDERS.rules[0], 2, LADDERS, FakeState(), NOON, why=why,
                         dry_run=False)
    assert (step.operation, step.verdict, step.step, step.until) == (
        "reboot", "execute", 2, NOON + 7200)
    assert step.reason == "step 2 of 3: sync did not remediate within 10m: rule matched"
    assert step.rule is not None and step.rule.verify == 900.0
    # Every guard: the step's own cooldown, budgets, pause ...
    cooling = FakeState({("r1", "reboot"): NOON + 60})
    assert d.decide_step(down_r1, LADDERS.rules[0], 2, LADDERS, cooling, NOON, why=why,
                         dry_run=False).verdict == "cooldown"
    spent = FakeState(used={("reboots", ""): 1})
    assert d.decide_step(down_r1, LADDERS.rules[0], 2, LADDERS, spent, NOON, why=why,
                         dry_run=False).verdict == "held_by_budget"
    assert d.decide_step(down_r1, LADDERS.rules[0], 2, LADDERS, FakeState(paused=True), NOON,
                         why=why, dry_run=False).verdict == "paused"
    # ... and a destructive last step waits for a person.
    wipe = d.decide_step(down_r1, LADDERS.rules[0], 3, LADDERS, FakeState(), NOON,
                         why="reboot did not remediate within 15m", dry_run=False)
    assert (wipe.operation, wipe.verdict) == ("device_factory", "pending_approval")
    assert wipe.reason.startswith("step 3 of 3: reboot did not remediate within 15m: "
                                  "destructive operation: waits for alert-bridge approve")


def test_control_characters_are_unicode_category_cc() -> None:
    """Device names are refused for exactly Unicode's control characters (category Cc)."""
    import sys
    import unicodedata

    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        refused = d.device_name_problem(f"a{ch}b") == "device name contains control characters"
        assert refused == (unicodedata.category(ch) == "Cc"), hex(code)
