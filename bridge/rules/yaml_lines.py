"""Step 1 of loading rules: YAML into dicts and lists that remember the line of each key."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from bridge.errors import RuleProblem


class LineDict(dict):
    """A YAML mapping that remembers its own line, each key's line, and repeated keys."""

    line: int
    key_lines: dict[Any, int]
    duplicates: list[tuple[Any, int, int]]  # (key, line, line of the first occurrence)


class LineList(list):
    """A YAML sequence that remembers its own line and each item's line."""

    line: int
    item_lines: list[int]

    def numbered(self) -> Iterator[tuple[Any, int]]:
        """Each item with its line."""
        return zip(self, self.item_lines, strict=True)


@dataclass(frozen=True)
class _ComplexKey:
    """Stands in for a mapping or list used as a key, which Python cannot hash.

    The usual cause is an unquoted template, ``device: {{ labels.device }}``, which YAML reads as
    a mapping inside a mapping; keeping it lets validation explain that instead of PyYAML's
    "found unhashable key".
    """

    text: str

    def __str__(self) -> str:
        return self.text


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1  # YAML marks are 0-based


def _node_text(node: yaml.Node) -> str:
    start, end = node.start_mark, node.end_mark
    text = start.buffer[start.index : end.index] if start.buffer is not None else node.tag
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


class _LineLoader(yaml.SafeLoader):
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            # Scalars PyYAML resolves but cannot build, e.g. "2020-13-45" as a date or an int
            # longer than Python's digit limit: report them like any other YAML error.
            raise ConstructorError(
                None, None, f"cannot read value: {exc}", node.start_mark
            ) from exc


def _construct_map(loader: _LineLoader, node: yaml.Node) -> Any:
    if not isinstance(node, yaml.MappingNode):
        found = getattr(node, "id", "a node")  # ScalarNode.id == "scalar"; absent from stubs
        raise ConstructorError(None, None, f"expected a mapping, found {found}", node.start_mark)
    data = LineDict()
    data.line, data.key_lines, data.duplicates = _line(node), {}, []
    yield data  # yield first so aliases can refer to this mapping while it is being built
    own_count = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)  # prepends the entries of "<<" merge keys
    merged_count = len(node.value) - own_count
    own_lines: dict[Any, int] = {}
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            key = _ComplexKey(_node_text(key_node))
        line = _line(key_node)
        # Keys from a merge are meant to be overridden; repeating a key of one's own is a mistake
        # PyYAML would hide by keeping the last value.
        if index >= merged_count:
            if key in own_lines:
                data.duplicates.append((key, line, own_lines[key]))
            else:
                own_lines[key] = line
        data[key] = loader.construct_object(value_node)
        data.key_lines[key] = line


def _construct_seq(loader: _LineLoader, node: yaml.Node) -> Any:
    if not isinstance(node, yaml.SequenceNode):
        found = getattr(node, "id", "a node")  # ScalarNode.id == "scalar"; absent from stubs
        raise ConstructorError(None, None, f"expected a list, found {found}", node.start_mark)
    data = LineList()
    data.line, data.item_lines = _line(node), [_line(child) for child in node.value]
    yield data
    data.extend(loader.construct_object(child) for child in node.value)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def load_yaml(text: str, path: str) -> tuple[Any, RuleProblem | None]:
    """The document, or a problem describing why it is not valid YAML."""
    try:
        return yaml.load(text, Loader=_LineLoader), None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = f"invalid YAML: {exc.problem or exc.context}"
        if exc.context and exc.problem:
            where = exc.context_mark
            if where is not None and where.line + 1 != line:
                message += f" ({exc.context} on line {where.line + 1})"
            else:
                message += f" ({exc.context})"
        return None, RuleProblem(path, line, None, message)
    except yaml.reader.ReaderError as exc:  # characters YAML does not allow, e.g. NUL
        line = text.count("\n", 0, exc.position) + 1
        return None, RuleProblem(path, line, None, f"invalid YAML: {str(exc).splitlines()[0]}")
    except yaml.YAMLError as exc:
        return None, RuleProblem(path, None, None, f"invalid YAML: {str(exc).splitlines()[0]}")
    except RecursionError:
        return None, RuleProblem(path, None, None, "invalid YAML: nested too deeply")
