"""Load rules.yaml: YAML with lines, every problem against the schema at once, then values.

Every problem in the file is reported at once, with its line, so an operator fixes them in one pass.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bridge.errors import RuleProblem, RulesError
from bridge.rules.kinds import At, describe
from bridge.rules.schema import DEFAULTS, RULE, TOP
from bridge.rules.sections import Values
from bridge.rules.values import Rule, RuleSet, resolve
from bridge.rules.yaml_lines import LineDict, load_yaml


def _read(data: Any, path: str) -> tuple[Values, list[RuleProblem]]:
    """Step 2: the document read against the schema, by key, and every problem found."""
    at = At(path, [], {})
    if data is None:
        at.problem(None, "file is empty (expected a mapping with a 'rules' list)")
        return Values(), at.problems
    if not isinstance(data, LineDict):
        at.problem(
            getattr(data, "line", None),
            f"expected a mapping with a 'rules' list at the top level, got {describe(data)}",
        )
        return Values(), at.problems
    return TOP.read(data, data.line, at), at.problems


def _build(document: Values, path: str, version: str) -> RuleSet:
    """Step 3: values from a document without problems; what it leaves out takes defaults.

    A rule is judged whole here too, with the defaults it takes: a ladder needs `verify`,
    which may come from `defaults`.
    """
    defaults = document.get("defaults", {})
    # What a rule leaves out is the same for every rule: resolve it once, not per rule.
    common = {f.attribute: resolve(f, {}, defaults) for f in RULE.fields if not f.required}
    rules, problems = [], []
    for spec in document["rules"]:
        try:
            rules.append(Rule(**{**common, **{RULE[key].attribute: resolve(RULE[key], spec,
                                                                           defaults)
                                              for key in spec}}, line=spec.line, _checked=True))
        except ValueError as exc:
            problems.append(RuleProblem(path, spec.line, spec["name"], str(exc)))
    if problems:
        raise RulesError(problems)
    return RuleSet(
        rules=tuple(rules),
        default_cooldown=resolve(DEFAULTS["cooldown"], defaults),
        path=path,
        version=version,
        budgets=resolve(TOP["budgets"], document),
        breaker=resolve(TOP["breaker"], document),
        approval_timeout=resolve(DEFAULTS["approval_timeout"], defaults),
    )


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Loading makes hundreds of thousands of objects that stay, and the cyclic garbage
    collector walks them again and again as they grow: a third of the time ten thousand rules
    took. What loading discards goes by reference counting anyway. Restored as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _parse(text: str, path: str, raw: bytes) -> RuleSet:
    with _collector_paused():
        data, yaml_problem = load_yaml(text, path)
        if yaml_problem is not None:
            raise RulesError([yaml_problem])
        document, problems = _read(data, path)
        # The rules are built into the memory the file's mappings leave: fewer blocks of it
        # stay half used for as long as the rules live.
        del data
        if problems:
            raise RulesError(sorted(problems, key=lambda p: p.line or 0))
        return _build(document, path, hashlib.sha256(raw).hexdigest()[:12])


def parse_rules(text: str, path: str = "rules.yaml") -> RuleSet:
    """Rules from the text of a rules file; ``path`` only names the file in errors.

    Raises RulesError listing every problem found, in line order.
    """
    return _parse(text, path, text.encode("utf-8", "surrogatepass"))


def load_rules(path: str | os.PathLike[str]) -> RuleSet:
    """Rules from a file. Raises RulesError, also when the file is missing or unreadable."""
    name = os.fspath(path)
    try:
        raw = Path(name).read_bytes()
    except FileNotFoundError:
        raise RulesError([RuleProblem(name, None, None, "file not found")]) from None
    except IsADirectoryError:
        raise RulesError([RuleProblem(name, None, None, "is a directory, not a file")]) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RulesError([RuleProblem(name, None, None, f"cannot read file: {reason}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        raise RulesError([RuleProblem(name, line, None, message)]) from None
    return _parse(text, name, raw)
