"""The package declares every distribution its code imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from tests.helpers import ROOT


def imported_top_level_modules() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "bridge").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"bridge", "__future__"}


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-")
            for d in project["dependencies"]}


def test_every_imported_distribution_is_declared() -> None:
    owners = packages_distributions()
    needed = {owners[m][0].lower().replace("_", "-") for m in imported_top_level_modules()}
    assert needed - declared() == set()
    # The test can fail: the code imports at least the core four.
    assert {"flask", "requests", "pyyaml", "jinja2"} <= needed
