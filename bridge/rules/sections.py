"""Fields and sections: the rows and tables the rules schema is made of.

A section reads one mapping of the file (unknown, duplicate and missing keys, then each field by
its kind), checks a value built in code field by field, and describes itself in JSON Schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from bridge.rules.kinds import INVALID, NO_DEFAULT, At, Kind, describe
from bridge.rules.yaml_lines import LineDict, LineList


@dataclass(frozen=True)
class Field:
    """One key of a section: its kind, whether the file must give it, and its default."""

    key: str
    kind: Kind
    doc: str  # what it means, for JSON Schema (the README has the long form)
    required: bool = False
    #: The value when the file leaves the key out, as read (seconds, not "30m"); nested
    #: sections are dicts of their keys, lists are lists of such dicts.
    default: Any = NO_DEFAULT
    #: Attribute of the built value that holds it: "" for one named as the key; None for none.
    attr: str | None = ""
    #: The key names its item: no two items of the list may share it (rule and budget names).
    unique: bool = False

    @property
    def attribute(self) -> str:
        """The attribute of the built value that holds it; "" when none does."""
        return self.key if self.attr == "" else self.attr or ""

    def check(self, value: Any, name: str) -> Any:
        """``value`` as built in code, normalised; None is allowed when it is the default."""
        if value is None and self.default is None:
            return None
        return self.kind.check(value, name)

    def json(self) -> dict[str, Any]:
        described = {"description": self.doc, **self.kind.json()}
        if self.default is not NO_DEFAULT and self.default is not None:
            described["default"] = self.kind.to_yaml(self.default)
        return described


class Values(dict[str, Any]):
    """What was read from one mapping of the file, by key, and the line it started on."""

    __slots__ = ("line",)
    line: int


#: A rule that involves several fields: given the values by key (read, or defaults), it names
#: the key to blame and what is wrong, or returns None.
CrossCheck = Callable[[Mapping[str, Any]], "tuple[str, str] | None"]


@dataclass(frozen=True, eq=False)  # compared by identity: each section is declared once
class Section:
    """A mapping of the file: its fields in the order messages and the README list them."""

    name: str  # "rule", "window"; also the JSON Schema definition
    fields: tuple[Field, ...]
    doc: str = ""
    #: How messages name a field of this section: "window." + "start" -> 'window.start'.
    path: str = ""
    #: How key messages name this section: "unknown key 'x' in 'window'".
    where: str = ""
    #: What a mapping of it looks like, for "must be a mapping such as {max: 50, per: 5m}".
    shape: str = ""
    #: Who owns the problems inside: "rule" (they carry the rule's name), "prefix" (they
    #: start with "budget 'name': "), or "" (the owner of the enclosing mapping).
    owner: str = ""
    checks: tuple[CrossCheck, ...] = ()
    _by_key: dict[str, Field] = dataclass_field(init=False, repr=False, compare=False)
    _defaults: dict[str, Any] = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_key", {f.key: f for f in self.fields})
        object.__setattr__(self, "_defaults", {
            f.key: f.default for f in self.fields if f.default is not NO_DEFAULT
        })

    def __getitem__(self, key: str) -> Field:
        return self._by_key[key]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.fields)

    def _prefix(self, name: Any) -> str:
        """How messages about an item named ``name`` start, when the section owns them so."""
        if self.owner != "prefix":
            return ""
        return f"{self.name} '{name}': " if _is_name(name) else f"{self.name}: "

    def _owned(self, at: At, name: Any) -> At:
        # At(...) rather than dataclasses.replace: this runs once per rule, and replace is slow.
        if self.owner == "rule":
            return At(at.path, at.problems, at.names, name if _is_name(name) else None, at.prefix)
        if self.owner:
            return At(at.path, at.problems, at.names, at.rule, self._prefix(name))
        return at

    def read(self, mapping: LineDict, line: int, at: At) -> Values:
        """Every key of ``mapping`` checked against the fields; problems go to ``at``."""
        at = self._owned(at, mapping.get("name"))
        for key, key_line, first in mapping.duplicates:
            at.problem(key_line, f"duplicate key '{key}'{self.where} (first on line {first})")
        for key in mapping:
            if key not in self._by_key:
                at.problem(
                    mapping.key_lines[key],
                    f"unknown key '{key}'{self.where} (expected one of: {', '.join(self.keys)})",
                )
        for f in self.fields:
            if f.required and f.key not in mapping:
                at.problem(line, f"missing required key '{f.key}'{self.where}")
        values = Values()
        values.line = line
        for f in self.fields:
            if f.key in mapping:
                key_line = mapping.key_lines[f.key]
                value = f.kind.read(mapping[f.key], key_line, self.path + f.key, at)
                if f.unique and value is not INVALID:
                    at.define(self.name, value, key_line)
                values[f.key] = value
        for check in self.checks:
            found = check({**self._defaults, **values})
            if found is not None:
                key, message = found
                at.problem(mapping.key_lines.get(key, line), message)
        return values

    def check(self, built: Any) -> None:
        """Check a value built in code (a Rule, a Window, ...) field by field, normalising it.

        Raises ValueError with the message a file with the same mistake would get.
        """
        prefix = self._prefix(getattr(built, "name", None))
        values = {}
        for f in self.fields:
            attribute = f.attribute
            if not attribute or not hasattr(built, attribute):
                continue
            value = getattr(built, attribute)
            try:
                normal = f.check(value, self.path + f.key)
            except ValueError as exc:
                raise ValueError(f"{prefix}{exc}") from None
            if normal is not value:
                object.__setattr__(built, attribute, normal)
            values[f.key] = normal
        for check in self.checks:
            found = check(values)
            if found is not None:
                raise ValueError(f"{prefix}{found[1]}")

    def json(self, nullable: bool) -> dict[str, Any]:
        required = [f.key for f in self.fields if f.required]
        return {
            "type": ["object", "null"] if nullable else "object",
            **({"description": self.doc} if self.doc else {}),
            "properties": {f.key: f.json() for f in self.fields},
            **({"required": required} if required else {}),
            "additionalProperties": False,
        }


def _is_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name.strip())


def _ref(section: Section) -> dict[str, Any]:
    return {"$ref": f"#/definitions/{section.name}"}


@dataclass(frozen=True)
class Nested(Kind):
    """A mapping of its own (give_up, window, breaker, defaults).

    ``partial``: keys it leaves out come from the level below (defaults, then the built-in
    default), and an empty ``key:`` means "as below"; otherwise an empty ``key:`` means none.
    """

    section: Section
    partial: bool = True

    def read(self, value: Any, line: int, name: str, at: At) -> Any:
        if value is None:  # "window:" with its keys commented out
            return Values() if self.partial else None
        if not isinstance(value, LineDict):
            shape = f" {self.section.shape}" if self.section.shape else ""
            at.problem(line, f"'{name}' must be a mapping{shape}, got {describe(value)}")
            return INVALID
        return self.section.read(value, line, at)

    def check(self, value: Any, name: str) -> Any:
        if getattr(type(value), "SECTION", None) is not self.section:
            raise ValueError(f"'{name}' must be a {self.section.name} value, got {value!r}")
        return value

    def json(self) -> dict[str, Any]:
        # Validators ignore the keywords beside a $ref (draft-07): wrap it, so editors still
        # show the field's description.
        return {"allOf": [_ref(self.section)]}

    def to_yaml(self, value: Any) -> Any:
        return {k: self.section[k].kind.to_yaml(v) for k, v in value.items()}


@dataclass(frozen=True)
class ListOf(Kind):
    """A list of mappings (rules, budgets); an empty ``key:`` is an empty list."""

    section: Section

    def read(self, value: Any, line: int, name: str, at: At) -> Any:
        if value is None:  # "rules:" with every rule commented out
            return []
        noun = self.section.name
        if not isinstance(value, LineList):
            at.problem(line, f"'{name}' must be a list of {noun}s, got {describe(value)}")
            return INVALID
        items = []
        for item, item_line in value.numbered():
            if isinstance(item, LineDict):
                items.append(self.section.read(item, item_line, at))
            else:
                at.problem(item_line, f"each {noun} must be a mapping, got {describe(item)}")
        return items

    def check(self, value: Any, name: str) -> tuple[Any, ...]:
        items = tuple(value)
        for item in items:
            Nested(self.section).check(item, name)
        unique = [f.attribute for f in self.section.fields if f.unique and f.attribute]
        for attribute in unique:
            names = [getattr(item, attribute) for item in items]
            if len(set(names)) != len(names):
                raise ValueError(f"{self.section.name} names must be unique, got {names}")
        return items

    def json(self) -> dict[str, Any]:
        return {"type": ["array", "null"], "items": _ref(self.section)}

    def to_yaml(self, value: Any) -> Any:
        return [Nested(self.section).to_yaml(item) for item in value]
