"""alert-bridge check's warnings: rules that load but probably do not do what was meant."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

from click.testing import CliRunner
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from bridge.cli import main
from bridge.lint import _clashes, _may_overlap, lint
from bridge.rules import STATUSES, Matcher, Rule, parse_rules

# Hypothesis' "explain" phase imports libcst, which warns on import (see test_rules.py).
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]

RULES = """\
rules:
  - name: reboot-down
    match: ['alertname = "DeviceDown"']
    device: "{{ labels.device }}"
    operation: reboot
  - name: sync-down
    match: ['alertname = "DeviceDown"', 'device =~ ".+"']
    device: "{{ labels.device }}"
    operation: sync
  - name: impossible
    match: ['alertname = "A"', 'alertname = "B"', 'host =~ ".+"']
    device: "{{ labels['host'] }}"
    operation: sync
  - name: sync-other-site
    match: ['alertname = "DeviceDown"', 'site = "lab"', 'device != ""']
    device: "{{ labels.device }}"
    operation: reconf
  - name: reconf-lab-only
    match: ['alertname = "DeviceDown"', 'site = "hq"', 'device != ""']
    device: "{{ labels.device }}"
    operation: sync
  - name: on-resolve
    match: ['alertname = "DeviceDown"', 'device=~".+"']
    device: "{{ labels.device }}"
    operation: reconf
    status: resolved
  - name: defaulted
    match: ['alertname = "X"']
    device: "{{ labels.get('device', 'fallback') }}"
    operation: sync
"""


def test_each_kind_of_warning(tmp_path: Path) -> None:
    rules = parse_rules(RULES, "rules.yaml")
    assert [str(p) for p in lint(rules)] == [
        "rules.yaml:2: rule 'reboot-down': device template uses labels.device, which no"
        " matcher guarantees: an alert without it renders an empty device name"
        " (add device=~\".+\")",
        "rules.yaml:6: rule 'sync-down': one alert can match both this rule and"
        " 'reboot-down' (line 2): the same device would get reboot and sync",
        "rules.yaml:10: rule 'impossible': can never match: alertname=\"A\" and"
        " alertname=\"B\" cannot both hold",
        "rules.yaml:14: rule 'sync-other-site': one alert can match both this rule and"
        " 'reboot-down' (line 2): the same device would get reboot and reconf",
        "rules.yaml:14: rule 'sync-other-site': one alert can match both this rule and"
        " 'sync-down' (line 6): the same device would get sync and reconf",
        "rules.yaml:18: rule 'reconf-lab-only': one alert can match both this rule and"
        " 'reboot-down' (line 2): the same device would get reboot and sync",
    ]


def test_check_prints_warnings_and_strict_fails_on_them(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Warning"] * 6 + [str(path)]
    assert lines[-1].startswith(f"{path}: OK, 6 warnings, 7 rules (version ")
    strict = CliRunner().invoke(main, ["check", "--strict", str(path)])
    assert strict.exit_code == 1
    assert strict.output.count("Warning: ") == 6


def test_the_shipped_rules_have_no_warnings() -> None:
    from tests.helpers import ROOT

    result = CliRunner().invoke(main, ["check", "--strict", str(ROOT / "rules.yaml")])
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output


# Small vocabularies, so that random rules often share labels, values and devices.
_MATCHERS = st.builds(
    Matcher, st.sampled_from(["alertname", "team", "site"]),
    st.sampled_from(["=", "!=", "=~", "!~"]), st.sampled_from(["", "a", "b", "a|b", ".+"]),
)
_RULES = st.lists(
    st.tuples(st.lists(_MATCHERS, max_size=3), st.sampled_from(["{{ labels.device }}", "d"]),
              st.sampled_from(["sync", "reboot", "reconf"]), st.sampled_from(STATUSES)),
    max_size=12,
)


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(_RULES)
def test_overlaps_are_those_a_comparison_of_every_pair_finds(specs: list[tuple]) -> None:
    rules = tuple(
        Rule(f"r{i}", tuple(matchers), device, operation, 60.0, status, line=i + 1)
        for i, (matchers, device, operation, status) in enumerate(specs)
    )
    every_pair = [
        (i, j) for i, j in combinations(range(len(rules)), 2)
        if rules[i].operation != rules[j].operation and rules[i].device == rules[j].device
        and _may_overlap(rules[i], rules[j])
    ]
    assert _clashes(rules) == every_pair
