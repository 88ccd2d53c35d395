"""The README and the container definition say what the code does."""

from __future__ import annotations

import re

from bridge.rules import parse_rules
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text()


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README, re.DOTALL)


def test_the_rules_example_in_the_readme_loads() -> None:
    block = next(b for b in yaml_blocks() if b.lstrip().startswith("defaults:"))
    rules = parse_rules(block, "README.md")
    assert [r.name for r in rules.rules] == ["reboot-unreachable-routers"]
    assert rules.rules[0].window is not None


def test_the_readme_opens_with_exactly_two_commands() -> None:
    head = README.split("---", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", head, re.DOTALL)
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert commands[0].endswith("alert-bridge serve")
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == commands[1], "the README's test command and .ci/run must be the same"


def test_every_environment_variable_in_the_code_is_documented() -> None:
    code = "\n".join(p.read_text() for p in (ROOT / "bridge").glob("*.py"))
    names = set(re.findall(r'"(BRIDGE_[A-Z_]+)"', code))
    undocumented = sorted(n for n in names if n not in README)
    assert undocumented == []


def test_the_container_runs_unprivileged_with_a_healthcheck_and_a_volume() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM ", dockerfile, re.MULTILINE)
    assert len(stages) == 2  # build tools stay in the build stage
    assert re.search(r"^USER bridge$", dockerfile, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n.*/-/healthy", dockerfile, re.MULTILINE)
    assert 'VOLUME ["/var/lib/alert-bridge"]' in dockerfile
    assert "BRIDGE_STATE=/var/lib/alert-bridge/" in dockerfile


def reference_rows() -> set[str]:
    """The field names in the first column of the README's rules reference table."""
    section = README.split("## Rules reference", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for cell in re.findall(r"^\| ([^|]+) \|", section, re.MULTILINE):
        names.update(re.findall(r"`([^`]+)`", cell))
    return names


def test_every_rules_field_is_in_the_readme_and_every_documented_one_exists() -> None:
    from bridge import rules as r

    schema = (
        {f"{k}" for k in r._TOP_KEYS}
        | {f"defaults.{k}" for k in r._DEFAULTS_KEYS}
        | {f"budgets[].{k}" for k in r._BUDGET_KEYS}
        | set(r._RULE_KEYS)
    )
    documented = reference_rows()
    # breaker, give_up and window are documented with their sub-keys in their own row.
    assert sorted(schema - documented) == []
    assert sorted(documented - schema) == []
    section = README.split("## Rules reference", 1)[1].split("\n## ", 1)[0]
    for key in (*r._BREAKER_KEYS, *r._GIVE_UP_KEYS, *r._WINDOW_KEYS):
        assert key in section, key
