"""Read one YAML file into YNodes: every value keeps its file position, and
a string scalar can place a position inside its text (for errors in rules).
Every failure, from unreadable bytes to YAML syntax, is a PolicyError."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from nfc.errors import Loc, PolicyError, printable

# libyaml's parser where PyYAML was built with it: the same marks, 15x faster.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 64


@dataclass(frozen=True)
class YNode:
    """A YAML node: a scalar, a list of YNodes or a str-keyed dict of YNodes."""

    value: Any
    loc: Loc
    key_locs: dict[str, Loc] = field(default_factory=dict, compare=False, repr=False)
    # Where a string scalar's text lies in the file, to place errors inside it.
    span: TextSpan | None = field(default=None, compare=False, repr=False)

    def plain(self) -> Any:
        """The value with locations stripped, for comparing defines."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value

    def locator(self) -> Callable[[int, int], Loc]:
        """`loc_in_text`, specialised for this scalar: the parser asks for a
        position per token, so single-line rules get a shortcut."""
        span = self.span
        if span is not None and span.single_line:
            file, first_line, offset = self.loc.file, span.line, span.text_col - 1
            make = tuple.__new__  # Loc from its fields in order, minus NamedTuple's argument handling
            return (
                lambda line, col: make(Loc, (file, first_line, offset + col))
                if line == 1
                else self.loc_in_text(line, col)
            )
        return self.loc_in_text

    def loc_in_text(self, line: int, col: int) -> Loc:
        """The file position of 1-based (line, col) inside this string scalar."""
        if self.span is None:
            return self.loc
        if line == 1 and self.span.single_line:
            return Loc(self.loc.file, self.span.line, self.span.text_col + col - 1)
        text_map = self.span.text_map(str(self.value))
        if not text_map:
            return self.loc
        lines = str(self.value).split("\n")
        index = sum(len(text) + 1 for text in lines[: line - 1]) + col - 1
        if index >= len(text_map):  # just past the end: after the last character
            last_line, last_col = text_map[-1]
            return Loc(self.loc.file, last_line, last_col + 1)
        file_line, file_col = text_map[index]
        return Loc(self.loc.file, file_line, file_col)


@dataclass(frozen=True)
class TextSpan:
    """A string scalar's place in its file. Positions inside it are worked
    out only when an error needs one."""

    source: str  # the whole file, shared by every span of it
    start: int
    end: int
    line: int
    col: int
    style: str | None
    single_line: bool  # and its value is the file text as it stands
    text_col: int  # the column of its first character, when single_line

    def text_map(self, value: str) -> tuple[tuple[int, int], ...] | None:
        return _text_map(self, value)


def _read_text(path: str, loc: Loc | None = None) -> str:
    where = loc or Loc(path, 1, 1)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PolicyError(where, f"cannot read {printable(path)}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise PolicyError(where, f"file is larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PolicyError(Loc(path, line, col), "file is not valid UTF-8") from None


def _mark_loc(path: str, mark: Any) -> Loc:
    return Loc(path, mark.line + 1, mark.column + 1)


def load_yaml(path: str, loc: Loc | None = None) -> YNode:
    """Parse one YAML file into YNodes; every failure is a PolicyError."""
    text = _read_text(path, loc)
    if not text.strip():
        raise PolicyError(Loc(path, 1, 1), "empty policy file", "a policy starts with 'nfc: 1'")
    try:
        loader = LOADER(text)
    except yaml.reader.ReaderError as exc:
        raise PolicyError(_index_loc(path, text, exc.position), f"YAML: {_reader_problem(exc)}") from None
    try:
        root = loader.get_single_node()
        if root is None:
            raise PolicyError(Loc(path, 1, 1), "policy file holds no YAML document")
        if isinstance(root, yaml.ScalarNode) and root.tag == "tag:yaml.org,2002:null":
            raise PolicyError(Loc(path, 1, 1), "policy file holds no YAML document")
        return _Converter(path, loader, text).convert(root)
    except yaml.reader.ReaderError as exc:
        raise PolicyError(_index_loc(path, text, exc.position), f"YAML: {_reader_problem(exc)}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if mark and exc.context_mark and mark.line >= len(text.splitlines()):
            mark = exc.context_mark  # ran off the end: say where the open construct began
        where = _mark_loc(path, mark) if mark else Loc(path, 1, 1)
        problem = exc.problem or exc.context or "malformed YAML"
        at_tab = mark is not None and mark.index < len(text) and text[mark.index] == "\t"
        raise PolicyError(where, f"YAML syntax: {problem}", _yaml_hint(problem, at_tab)) from None
    except yaml.YAMLError as exc:
        raise PolicyError(Loc(path, 1, 1), f"YAML syntax: {exc}") from None
    except RecursionError:
        mark = loader.get_mark() if hasattr(loader, "get_mark") else None
        where = _mark_loc(path, mark) if mark else Loc(path, 1, 1)
        raise PolicyError(where, "YAML nesting is too deep") from None
    finally:
        loader.dispose()


def _index_loc(path: str, text: str, index: int) -> Loc:
    line = text.count("\n", 0, index) + 1
    return Loc(path, line, index - (text.rfind("\n", 0, index) + 1) + 1)


def _reader_problem(exc: yaml.reader.ReaderError) -> str:
    character = exc.character if isinstance(exc.character, int) else ord(exc.character)
    return f"the control character U+{character:04X} is not allowed"


def _span(node: yaml.ScalarNode, value: str, source: str) -> TextSpan:
    raw = source[node.start_mark.index : node.end_mark.index]
    style = node.style or None  # libyaml says '' where PyYAML says None: plain
    quoted = style in ("'", '"')
    single_line = "\n" not in raw and (raw[1:-1] if quoted else raw) == value
    return TextSpan(
        source,
        node.start_mark.index,
        node.end_mark.index,
        node.start_mark.line + 1,
        node.start_mark.column + 1,
        style,
        single_line,
        node.start_mark.column + 1 + (1 if quoted else 0),
    )


def _text_map(span: TextSpan, value: str) -> tuple[tuple[int, int], ...] | None:
    """Trace each character of a scalar's value back to its (line, col) in
    the file, for plain, quoted and literal-block scalars whose value is the
    file text with only indentation and line folding removed."""
    raw = span.source[span.start : span.end]
    first_line, first_col = span.line, span.col
    positions: list[tuple[int, int]] = []
    text: list[str] = []
    if span.style in ("'", '"'):
        if "\n" in raw or raw[1:-1] != value:
            return None
        return tuple((first_line, first_col + 1 + i) for i in range(len(value)))
    if span.style == "|":
        lines = raw.split("\n")[1:]
        indent = min((len(t) - len(t.lstrip(" ")) for t in lines if t.strip()), default=0)
        for offset, line in enumerate(lines, start=1):
            for i, char in enumerate(line[indent:]):
                positions.append((first_line + offset, indent + i + 1))
                text.append(char)
            positions.append((first_line + offset, len(line) + 1))
            text.append("\n")
    elif span.style is None:
        for offset, line in enumerate(raw.split("\n")):
            stripped = line.strip(" \t")
            start = (first_col if offset == 0 else 1) + len(line) - len(line.lstrip(" \t"))
            if text:
                positions.append(positions[-1])
                text.append(" ")
            for i, char in enumerate(stripped):
                positions.append((first_line + offset, start + i))
                text.append(char)
    else:
        return None
    joined = "".join(text)
    if joined.rstrip("\n") != value.rstrip("\n"):
        return None
    return tuple(positions[: len(value)])


def _yaml_hint(problem: str, at_tab: bool = False) -> str | None:
    if at_tab or "found character '\\t'" in problem:
        return "YAML indents with spaces, not tabs"
    if "mapping values" in problem or "expected <block end>" in problem:
        return "a rule that holds ': ' or ' #' must be quoted: put it in single quotes"
    return None


class _Converter:
    def __init__(self, path: str, loader: yaml.SafeLoader, source: str) -> None:
        self.path = path
        self.loader = loader
        self.source = source
        self.budget = MAX_NODES

    def convert(self, node: yaml.Node, depth: int = 0) -> YNode:
        self.budget -= 1
        loc = _mark_loc(self.path, node.start_mark)
        if self.budget < 0:
            raise PolicyError(loc, f"policy has more than {MAX_NODES} YAML nodes")
        if depth > MAX_DEPTH:
            raise PolicyError(loc, f"YAML nesting is deeper than {MAX_DEPTH} levels")
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc, depth)
        if isinstance(node, yaml.SequenceNode):
            return YNode([self.convert(item, depth + 1) for item in node.value], loc)
        assert isinstance(node, yaml.ScalarNode)  # the one kind of node left
        return self._scalar(node, loc)

    def _mapping(self, node: yaml.MappingNode, loc: Loc, depth: int) -> YNode:
        values: dict[str, YNode] = {}
        key_locs: dict[str, Loc] = {}
        for key_node, value_node in node.value:
            key_loc = _mark_loc(self.path, key_node.start_mark)
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise PolicyError(key_loc, "YAML merge keys ('<<') are not supported")
            key = self.convert(key_node).value
            if not isinstance(key, str):
                raise PolicyError(
                    key_loc,
                    f"mapping key {printable(repr(key))} must be a string",
                    "quote the key",
                )
            if key in values:
                raise PolicyError(key_loc, f"duplicate key '{printable(key)}' (first at {key_locs[key]})")
            key_locs[key] = key_loc
            values[key] = self.convert(value_node, depth + 1)
        return YNode(values, loc, key_locs)

    def _scalar(self, node: yaml.ScalarNode, loc: Loc) -> YNode:
        try:
            value = self.loader.construct_object(node, deep=True)
        except (ValueError, OverflowError, yaml.constructor.ConstructorError) as exc:
            raise PolicyError(loc, f"invalid YAML value {printable(repr(node.value))}: {exc}") from None
        span = _span(node, value, self.source) if isinstance(value, str) else None
        return YNode(value, loc, span=span)
