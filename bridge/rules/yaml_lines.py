"""Step 1 of loading rules: YAML into dicts and lists that remember the line of each key.

libyaml (PyYAML's C parser) reads the file, and its events become values directly: no tree of
nodes is built for a whole file first, which took more time and memory than the values. What
that leaves out (anchors and aliases, explicit tags, merge keys, keys that are mappings) goes
through nodes as PyYAML builds them. Only a file libyaml refuses is read again by PyYAML's
pure-Python parser, ten times slower, whose messages name the offending character; past
EXPLAIN_LIMIT, libyaml's own message is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from bridge.errors import RuleProblem


class LineDict(dict):
    """A YAML mapping that remembers its own line, each key's line, and repeated keys."""

    __slots__ = ("line", "key_lines", "duplicates")  # a file has thousands: no __dict__ each
    line: int
    key_lines: dict[Any, int]
    duplicates: list[tuple[Any, int, int]]  # (key, line, line of the first occurrence)


class LineList(list):
    """A YAML sequence that remembers its own line and each item's line."""

    __slots__ = ("line", "item_lines")
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


class _Lines:
    """What both loaders add to PyYAML's safe loader: line-keeping mappings and lists (the
    constructors below), each distinct scalar built once, and unbuildable values as errors."""

    source: str  # the text being read: libyaml's marks carry no copy of it

    def __init__(self, text: str) -> None:
        super().__init__(text)  # type: ignore[call-arg]
        self.source = text
        self.scalars: dict[tuple[str, str], Any] = {}
        self.tags: dict[tuple[str, Any], str] = {}

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        # The parser asks for the tag of every scalar, and a scalar's tag depends only on its
        # text and quoting (this loader has no path resolvers): ask PyYAML once per text.
        if kind is not yaml.ScalarNode:
            return super().resolve(kind, value, implicit)  # type: ignore[misc]
        key = (value, implicit)
        if key not in self.tags:
            self.tags[key] = super().resolve(kind, value, implicit)  # type: ignore[misc]
        return self.tags[key]

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            if type(node) is yaml.ScalarNode:
                # Scalars build immutable values, and rule files repeat a few of them
                # thousands of times ("sync", "1h", the same template): share one of each.
                key = (node.tag, node.value)
                if key not in self.scalars:
                    self.scalars[key] = super().construct_object(node, deep)  # type: ignore[misc]
                return self.scalars[key]
            return super().construct_object(node, deep)  # type: ignore[misc]
        except (ValueError, OverflowError) as exc:
            # Scalars PyYAML resolves but cannot build, e.g. "2020-13-45" as a date or an int
            # longer than Python's digit limit: report them like any other YAML error.
            raise ConstructorError(
                None, None, f"cannot read value: {exc}", node.start_mark
            ) from exc

    def node_text(self, node: yaml.Node) -> str:
        text = " ".join(self.source[node.start_mark.index : node.end_mark.index].split())
        return text if len(text) <= 60 else text[:57] + "..."


class _LineLoader(_Lines, yaml.SafeLoader):
    """The pure-Python parser, for its messages."""


class _FastLineLoader(_Lines, yaml.CSafeLoader):
    """libyaml."""


def _construct_map(loader: _LineLoader | _FastLineLoader, node: yaml.Node) -> Any:
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
            key = _ComplexKey(loader.node_text(key_node))
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


def _construct_seq(loader: _LineLoader | _FastLineLoader, node: yaml.Node) -> Any:
    if not isinstance(node, yaml.SequenceNode):
        found = getattr(node, "id", "a node")  # ScalarNode.id == "scalar"; absent from stubs
        raise ConstructorError(None, None, f"expected a list, found {found}", node.start_mark)
    data = LineList()
    data.line, data.item_lines = _line(node), [_line(child) for child in node.value]
    yield data
    data.extend(loader.construct_object(child) for child in node.value)


for _loader in (_LineLoader, _FastLineLoader):
    _loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
    _loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


class _Unsupported(Exception):
    """Something only the node-based loaders build (see _Events)."""


#: The tags of plain YAML values. The other tags a plain scalar can resolve to, "<<" (merge) and
#: "=" (value), mean something only inside a mapping, which the node-based loaders handle.
_VALUE_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "timestamp")
)


class _Events:
    """Builds the document from libyaml's events as the node-based loaders would from nodes,
    for documents without anchors, aliases, explicit tags, merge keys or complex keys: on
    meeting one it raises _Unsupported."""

    def __init__(self, loader: _FastLineLoader) -> None:
        self.loader = loader
        # Events as libyaml makes them (the stubs' Event | None would need a check per event).
        self.next: Callable[[], Any] = loader.get_event

    def document(self) -> Any:
        self.next()  # the start of the stream
        if type(self.next()) is yaml.StreamEndEvent:
            return None  # no document at all
        data = self.value(self.next())
        self.next()  # the end of the document
        if type(self.next()) is not yaml.StreamEndEvent:
            raise _Unsupported  # another document: the node-based loaders refuse it
        return data

    def value(self, event: Any) -> Any:
        kind = type(event)
        if kind is yaml.ScalarEvent:
            return self.scalar(event)
        if event.anchor is not None or event.tag not in (None, "!"):
            raise _Unsupported
        if kind is yaml.MappingStartEvent:
            return self.mapping(event)
        if kind is yaml.SequenceStartEvent:
            return self.sequence(event)
        raise _Unsupported  # an alias

    def scalar(self, event: Any) -> Any:
        if event.anchor is not None or event.tag not in (None, "!"):
            raise _Unsupported
        loader = self.loader
        tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag not in _VALUE_TAGS:
            raise _Unsupported
        key = (tag, event.value)
        if key not in loader.scalars:
            node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
            loader.scalars[key] = loader.yaml_constructors[tag](loader, node)
        return loader.scalars[key]

    def mapping(self, start: Any) -> LineDict:
        data = LineDict()
        data.line, data.key_lines, data.duplicates = _start_line(start), {}, []
        first_lines: dict[Any, int] = {}
        while True:
            event = self.next()
            if type(event) is yaml.MappingEndEvent:
                return data
            if type(event) is not yaml.ScalarEvent:
                raise _Unsupported  # a key that is a mapping, a list or an alias
            key = self.scalar(event)
            line = _start_line(event)
            if key in first_lines:
                data.duplicates.append((key, line, first_lines[key]))
            else:
                first_lines[key] = line
            data[key] = self.value(self.next())
            data.key_lines[key] = line

    def sequence(self, start: Any) -> LineList:
        data = LineList()
        data.line, data.item_lines = _start_line(start), []
        while True:
            event = self.next()
            if type(event) is yaml.SequenceEndEvent:
                return data
            data.item_lines.append(_start_line(event))
            data.append(self.value(event))


def _start_line(event: Any) -> int:
    return int(event.start_mark.line) + 1  # YAML marks are 0-based


def _read(text: str, loader_class: type[_Lines], events: bool = False) -> Any:
    loader = loader_class(text)
    try:
        if events:
            assert isinstance(loader, _FastLineLoader)
            return _Events(loader).document()
        return loader.get_single_data()  # type: ignore[attr-defined]
    finally:
        loader.dispose()  # type: ignore[attr-defined]


#: Files longer than this (about 500 rules) that libyaml refuses are explained by libyaml's own
#: message rather than read again by the pure-Python parser: at ten thousand rules that re-read
#: took 4 to 12 seconds (against 0.6 s), for a message that names the same line.
EXPLAIN_LIMIT = 128 * 1024


def load_yaml(text: str, path: str) -> tuple[Any, RuleProblem | None]:
    """The document, or a problem describing why it is not valid YAML."""
    refused: Exception
    try:
        return _read(text, _FastLineLoader, events=True), None
    except _Unsupported:
        try:
            return _read(text, _FastLineLoader), None
        except Exception as exc:  # whatever libyaml refuses is explained below
            refused = exc
    except Exception as exc:  # as above
        refused = exc
    if len(text) > EXPLAIN_LIMIT and isinstance(refused, yaml.YAMLError):
        return None, _problem(refused, text, path, by_libyaml=True)
    try:
        return _read(text, _LineLoader), None
    except (yaml.YAMLError, RecursionError) as exc:
        return None, _problem(exc, text, path)


def _problem(exc: Exception, text: str, path: str, *, by_libyaml: bool = False) -> RuleProblem:
    """What was wrong with the YAML, and on which line, from the parser's exception (libyaml's
    counts a bad character's position in bytes of UTF-8, the pure-Python parser's in
    characters)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem
        if problem == "found character that cannot start any token" and mark is not None:
            # libyaml's words, without the character PyYAML's parser names: name it.
            found = _character_at(text, mark.line, mark.column)
            if found is not None:
                problem = f"found character {found!r} that cannot start any token"
        message = f"invalid YAML: {problem or exc.context}"
        if exc.context and problem:
            where = exc.context_mark
            if where is not None and where.line + 1 != line:
                message += f" ({exc.context} on line {where.line + 1})"
            else:
                message += f" ({exc.context})"
        return RuleProblem(path, line, None, message)
    if isinstance(exc, yaml.reader.ReaderError):  # characters YAML does not allow, e.g. NUL
        if by_libyaml:
            line = text.encode("utf-8", "surrogatepass").count(b"\n", 0, exc.position) + 1
        else:
            line = text.count("\n", 0, exc.position) + 1
        return RuleProblem(path, line, None, f"invalid YAML: {str(exc).splitlines()[0]}")
    if isinstance(exc, RecursionError):
        return RuleProblem(path, None, None, "invalid YAML: nested too deeply")
    return RuleProblem(path, None, None, f"invalid YAML: {str(exc).splitlines()[0]}")


def _character_at(text: str, line: int, column: int) -> str | None:
    """The character at that 0-based line and column, or None when there is none."""
    start = 0
    for _ in range(line):
        start = text.find("\n", start) + 1
        if start == 0:
            return None
    end = text.find("\n", start)
    row = text[start:] if end == -1 else text[start:end]
    return row[column] if 0 <= column < len(row) else None
