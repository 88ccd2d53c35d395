"""The JSON Schema of rules.yaml: published as the CLI prints it, and held to the loader.

Every rules example of the README and the shipped rules.yaml pass both; structurally wrong
files (unknown key, wrong type, missing required key) fail both, at the same lines; and on
generated files the schema never refuses what the loader accepts.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from bridge.cli import main
from bridge.errors import RulesError
from bridge.rules import OPERATIONS, STATUSES, json_schema, json_schema_text, parse_rules
from bridge.rules.yaml_lines import LineDict, LineList, load_yaml
from tests.helpers import ROOT

SCHEMA_FILE = ROOT / "docs" / "rules.schema.json"
VALIDATOR = jsonschema.Draft7Validator(json_schema())
# Hypothesis' "explain" phase imports libcst, which warns on import (see test_rules.py).
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]


def test_the_schema_command_prints_the_published_schema() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    assert result.output == json_schema_text() == SCHEMA_FILE.read_text(encoding="utf-8"), (
        "docs/rules.schema.json is out of date: alert-bridge schema > docs/rules.schema.json"
    )


def test_the_published_schema_is_a_valid_draft_7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(json_schema())


def test_the_shipped_rules_file_points_editors_at_the_schema() -> None:
    first = (ROOT / "rules.yaml").read_text().splitlines()[0]
    match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert match is not None
    assert (ROOT / match.group(1)).resolve() == SCHEMA_FILE.resolve()  # relative to rules.yaml


def rules_examples() -> list[tuple[str, str]]:
    """(where, text) of the shipped rules.yaml and every README yaml block with a rules list."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)
    examples = [("rules.yaml", (ROOT / "rules.yaml").read_text())]
    examples += [
        (f"README.md block {i}", b) for i, b in enumerate(blocks) if "\nrules:" in f"\n{b}"
    ]
    assert len(examples) >= 2
    return examples


@pytest.mark.parametrize(("where", "text"), rules_examples())
def test_every_rules_example_passes_the_loader_and_the_schema(where: str, text: str) -> None:
    assert parse_rules(text, where).rules
    assert [e.message for e in VALIDATOR.iter_errors(yaml.safe_load(text))] == []


# --- structurally wrong files ------------------------------------------------------------------

RULE = {"name": "r", "match": "['alertname = \"X\"']", "device": '"{{ labels.device }}"',
        "operation": "sync"}  # fmt: skip


def doc(top: str = "", drop: tuple[str, ...] = (), **keys: str) -> str:
    """A file with ``top`` before one rule; the rule's keys, less ``drop``, plus ``keys``."""
    lines = "".join(f"    {k}: {v}\n" for k, v in {**RULE, **keys}.items() if k not in drop)
    return top + "rules:\n  - " + lines[4:]


def flow(mapping: dict[str, str], drop: str = "", **more: str) -> str:
    """A YAML flow mapping of ``mapping`` and ``more``, less the key ``drop``."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in {**mapping, **more}.items() if k != drop) + "}"


WINDOW = {"start": "'22:00'", "end": "'05:00'", "timezone": "UTC"}
BUDGET = {"name": "b", "max": "1", "per": "1h"}


def budgets(budget: str) -> str:
    return f"budgets:\n  - {budget}\n"


WRONG = {
    # unknown keys, at every level
    "top": doc("rulez: []\n"),
    "defaults": doc("defaults: {jitter: 5m}\n"),
    "rule": doc(cooldwn="1h"),
    "give_up": doc(give_up="{after: 2, times: 3}"),
    "window": doc(window=flow(WINDOW, tz="UTC")),
    "budget": doc(budgets(flow(BUDGET, scope="all"))),
    "breaker": doc("breaker: {max: 5, every: 1m}\n"),
    "step": doc(verify="5m", escalate="[{operation: reboot, after: 5m}]"),
    # wrong types
    "rules": "rules: {}\n",
    "defaults type": doc("defaults: 30m\n"),
    "rule item": "rules:\n  - just a string\n",
    "name": doc(name="3"),
    "match": doc(match="'alertname = \"X\"'"),
    "matcher": doc(match="[{site: lab}]"),
    "device": doc(device="42"),
    "operation": doc(operation="[reboot]"),
    "cooldown": doc(cooldown="5"),
    "status": doc(status="1"),
    "allow_destructive": doc(allow_destructive="'yes'"),
    "require_approval": doc(require_approval="'no'"),
    "dry_run": doc(dry_run="1"),
    "min_age": doc(min_age="5"),
    "give_up type": doc(give_up="3"),
    "give_up.after": doc(give_up="{after: 2.5}"),
    "window type": doc(window="nightly"),
    "window.days": doc(window=flow(WINDOW, days="5")),
    "window.start": doc(window=flow(WINDOW, start="22:00")),  # unquoted: YAML reads 1320
    "window.timezone": doc(window=flow(WINDOW, timezone="1")),
    "window.outside": doc(window=flow(WINDOW, outside="1")),
    "budgets": doc("budgets: {global: 30}\n"),
    "budget.max": doc(budgets(flow(BUDGET, max="true"))),
    "budget.per": doc(budgets(flow(BUDGET, per="60"))),
    "budget.operation": doc(budgets(flow(BUDGET, operation="[reboot]"))),
    "budget.group_by": doc(budgets(flow(BUDGET, group_by="5"))),
    "breaker type": doc("breaker: 50\n"),
    "breaker.max": doc("breaker: {max: many}\n"),
    "verify": doc(verify="10"),
    "escalate": doc(verify="5m", escalate="{operation: reboot}"),
    "step item": doc(verify="5m", escalate="[reboot]"),
    "step.operation": doc(verify="5m", escalate="[{operation: rebot}]"),
    "step.verify": doc(verify="5m", escalate="[{operation: reboot, verify: 15}]"),
    "step.cooldown": doc(verify="5m", escalate="[{operation: reboot, cooldown: true}]"),
    "step.allow_destructive": doc(verify="5m",
                                  escalate="[{operation: reboot, allow_destructive: 1}]"),
    "step.require_approval": doc(verify="5m",
                                 escalate="[{operation: reboot, require_approval: 'no'}]"),
    # missing required keys
    "no rules": "defaults: {cooldown: 1h}\n",
    **{f"no {key}": doc(drop=(key,)) for key in RULE},
    **{f"no window.{key}": doc(window=flow(WINDOW, drop=key)) for key in WINDOW},
    **{f"no budget.{key}": doc(budgets(flow(BUDGET, drop=key))) for key in BUDGET},
    "no step.operation": doc(verify="5m", escalate="[{verify: 5m}]"),
}


def line_of(data: Any, path: list[Any]) -> int:
    """The line the loader gives the value at ``path`` (its key's line, or its item's)."""
    line, node = data.line, data
    for step in path:
        if isinstance(node, LineDict):
            line = node.key_lines[step]
        elif isinstance(node, LineList):
            line = node.item_lines[step]
        node = node[step]
    return line


def schema_lines(data: Any) -> set[int]:
    """The lines of the schema's errors for ``data``, placed as the loader places its own."""
    lines = set()
    for error in VALIDATOR.iter_errors(data):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties":  # the unknown key itself
            extra = set(error.instance) - set(error.schema["properties"])
            lines |= {line_of(data, [*path, key]) for key in extra}
        else:
            lines.add(line_of(data, path))
    return lines


def test_the_wrong_files_cover_every_section_and_field() -> None:
    from bridge.rules import schema

    named = {name.removeprefix("no ").split()[0] for name in WRONG}
    sections = {"top", "defaults", "rule", "give_up", "window", "budget", "breaker", "step"}
    assert sections <= named
    assert {f"step.{f.key}" for f in schema.STEP.fields} <= named
    assert {f.key for f in schema.RULE.fields} <= named
    assert {f"window.{f.key}" for f in schema.WINDOW.fields if f.required} <= named
    assert {f"budget.{f.key}" for f in schema.BUDGET.fields} <= named


@pytest.mark.parametrize("text", WRONG.values(), ids=WRONG.keys())
def test_structurally_wrong_files_fail_both_at_the_same_lines(text: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(text)
    data, _ = load_yaml(text, "rules.yaml")
    assert schema_lines(data) == {p.line for p in info.value.problems}, str(info.value)


# --- generated files ---------------------------------------------------------------------------


def pick(valid: list[Any], invalid: list[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, sometimes not: files with one or two mistakes, not only wrecks."""
    return st.integers(0, 19).flatmap(lambda n: st.sampled_from(invalid if n == 0 else valid))


DURATIONS = pick(
    ["30m", "0", 0, 0.0, "0s", "1h30m", "500ms", "1y2w3d", "90s"],
    ["1 hour", 5, "", "-1m", None, 0.5],
)
POSITIVE = pick(["1h", "90s", "1d", "500ms"], ["0s", "0", 0, "1 hour", 60])
COUNTS = pick([1, 3, 30, 2.0], [0, -1, 2.5, True, "3", 0.0])
FLAGS = pick([True, False], ["yes", 1, None])
MATCHERS = pick(
    [
        'alertname = "X"',
        "job:node:up = 1",
        '"odd.name"=~"a|b"',
        r"a!~\d+",
        "x=1",
        "severity=critical",
        ' site != ""',
        "site =",
        'a =~ "(?i)LAB"',
    ],
    ["a ~= x", "a-b = x", "nonsense", 'a =~ "("', 5, {"site": "lab"}],
)
DAYS = pick(
    [
        "mon-fri",
        "fri-mon",
        "daily",
        "Daily",
        "MON - Wed",
        "mon, wed,fri",
        ["sat", "sun"],
        ["sat-sun", "wed"],
        "sun",
    ],
    ["mon-", "monday", [], "", 5, ["mon", 3], "mon-wed-fri"],
)
CLOCKS = pick(["22:00", "05:00", "00:30", "23:59"], ["24:00", "1:00", 1320, "22:00:00", None])
ZONES = pick(["UTC", "Europe/Madrid", "America/New_York"], ["Nowhere/Else", "", 1])
GIVE_UP = st.fixed_dictionaries({}, optional={"after": COUNTS, "within": POSITIVE})
WINDOWS = st.fixed_dictionaries(
    {"start": CLOCKS, "end": CLOCKS, "timezone": ZONES},
    optional={"days": DAYS, "outside": pick(["hold", "skip"], ["wait", 1])},
)  # fmt: skip
RULE_KEYS = {
    "match": st.integers(0, 9).flatmap(
        lambda n: st.sampled_from(["x=1", []]) if n == 0 else st.lists(MATCHERS, min_size=1)
    ),
    "device": pick(["{{ labels.device }}", "d", "{{ labels.instance | replace(':22', '') }}"],
                   ["", "{{ x }", 42, "   "]),
    "operation": pick(["sync", "reconf", "reboot"], ["rebot", 1, "factory", *OPERATIONS]),
}  # fmt: skip
RULE_FIELDS = {
    "cooldown": DURATIONS, "status": pick(list(STATUSES), ["sometimes", 1]),
    "allow_destructive": FLAGS, "require_approval": FLAGS, "dry_run": FLAGS,
    "min_age": DURATIONS, "give_up": GIVE_UP | st.none(), "window": WINDOWS | st.none(),
}  # fmt: skip
BUDGETS = st.lists(
    st.fixed_dictionaries(
        {"max": COUNTS, "per": POSITIVE},
        optional={"operation": pick(list(OPERATIONS), ["rebot"]),
                  "group_by": pick(["site", "region"], ["a-b", "9x", 5])},
    ),
    max_size=2,
)  # fmt: skip


@st.composite
def rule_files(draw: st.DrawFn) -> dict[str, Any]:
    rules = []
    for i in range(draw(st.integers(0, 3))):
        rule = {"name": f"rule-{i}", **draw(st.fixed_dictionaries(RULE_KEYS, optional=RULE_FIELDS))}
        rules.append(rule)
    top: dict[str, Any] = {"rules": rules}
    defaults = {"cooldown": DURATIONS, "min_age": DURATIONS, "give_up": GIVE_UP,
                "window": WINDOWS, "approval_timeout": POSITIVE}  # fmt: skip
    extra = {
        "defaults": st.fixed_dictionaries({}, optional=defaults),
        "budgets": BUDGETS.map(lambda bs: [{"name": f"b{i}", **b} for i, b in enumerate(bs)]),
        "breaker": st.fixed_dictionaries({}, optional={"max": COUNTS, "per": POSITIVE}),
    }
    top.update(draw(st.fixed_dictionaries({}, optional=extra)))  # fmt: skip
    return top


# Loader messages that mean "wrong key or wrong type": the level the schema must also refuse.
STRUCTURAL = re.compile(
    r"unknown key|missing required key|must be a (string|list|mapping|whole number|label name"
    r"|time zone name|non-empty)|must be true or false|must be one of|each \w+ must be"
)


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(rule_files())
def test_the_schema_refuses_exactly_what_the_loader_refuses_structurally(data: Any) -> None:
    text = yaml.safe_dump(data, sort_keys=False)
    errors = [e.message for e in VALIDATOR.iter_errors(yaml.safe_load(text))]
    try:
        parse_rules(text)
    except RulesError as exc:
        structural = [str(p) for p in exc.problems if STRUCTURAL.search(p.message)]
        assert errors or not structural, f"the schema accepts what the loader refuses: {structural}"
    else:
        assert errors == [], f"the schema refuses a file the loader accepts:\n{text}"
