"""Read one YAML file into YNodes: every value keeps its file position, and
a string scalar can place a position inside its text (for errors in rules).
Every failure, from unreadable bytes to YAML syntax, is a PolicyError."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import yaml

from nfc.errors import Loc, PolicyError, printable
from nfc.textfile import read_text

# libyaml's parser where PyYAML was built with it: the same marks, 15x faster.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 64
# More than any number in a policy, and few enough digits to print in a message
# (int to str stops at 4300 digits; hex and binary YAML ints have no such limit).
MAX_INT_BITS = 4096
STR_TAG = "tag:yaml.org,2002:str"
NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
MERGE_TAG = "tag:yaml.org,2002:merge"
_make = tuple.__new__  # a named tuple (Loc, TextSpan) from its fields in order, minus its `__new__` call


@dataclass(frozen=True)
class YNode:
    """A YAML node: a scalar, a list of YNodes or a str-keyed dict of YNodes."""

    value: Any
    loc: Loc
    key_locs: dict[str, Loc] = field(default_factory=dict, compare=False, repr=False)
    # Where a string scalar's text lies in the file, to place errors inside it.
    span: TextSpan | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, value: Any, loc: Loc, key_locs: dict[str, Loc], span: TextSpan | None) -> YNode:
        """`YNode(...)` with every field given, built by filling its `__dict__`:
        a frozen dataclass's `__init__` sets each field by `object.__setattr__`,
        slow for a node per rule of a big policy."""
        node = object.__new__(cls)
        object.__setattr__(node, "__dict__", {"value": value, "loc": loc, "key_locs": key_locs, "span": span})
        return node

    def plain(self) -> Any:
        """The value with locations stripped, for comparing defines."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value

    def text_origin(self) -> Loc | None:
        """Where a string scalar's text starts, when it is one line of its
        file as written: its column c is then at this Loc's col + c. None
        for any other text, whose positions `loc_in_text` works out."""
        span = self.span
        if span is None or not span.single_line:
            return None
        return _make(Loc, (self.loc.file, span.line, span.text_col - 1))

    def locator(self) -> Callable[[int, int], Loc]:
        """`loc_in_text`, specialised for this scalar: the parser asks for a
        position per token, so single-line rules get a shortcut."""
        origin = self.text_origin()
        if origin is not None:
            file, first_line, offset = origin
            return (
                lambda line, col: _make(Loc, (file, first_line, offset + col))
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


class TextSpan(NamedTuple):
    """A string scalar's place in its file. Positions inside it are worked
    out only when an error needs one. (A named tuple: one per rule, and a
    frozen dataclass costs several times as much to make.)"""

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


def _mark_loc(path: str, mark: Any) -> Loc:
    return Loc(path, mark.line + 1, mark.column + 1)


def load_yaml(path: str, loc: Loc | None = None) -> YNode:
    """Parse one YAML file into YNodes; every failure is a PolicyError."""
    text = read_text(path, loc or Loc(path, 1, 1), limit=MAX_FILE_BYTES, kind="file")
    if not text.strip():
        raise PolicyError(Loc(path, 1, 1), "empty policy file", "a policy starts with 'nfc: 1'")
    try:
        loader = LOADER(text)
    except yaml.reader.ReaderError as exc:
        raise PolicyError(_index_loc(path, text, exc.position), f"YAML: {_reader_problem(exc)}") from None
    try:
        root = _Composer(path, loader, text).document()
        if root is None or root.value is None:
            raise PolicyError(Loc(path, 1, 1), "policy file holds no YAML document")
        return root
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
    finally:
        loader.dispose()


def _index_loc(path: str, text: str, index: int) -> Loc:
    line = text.count("\n", 0, index) + 1
    return Loc(path, line, index - (text.rfind("\n", 0, index) + 1) + 1)


def _reader_problem(exc: yaml.reader.ReaderError) -> str:
    character = exc.character if isinstance(exc.character, int) else ord(exc.character)
    return f"the control character U+{character:04X} is not allowed"


def _span(start: Any, end: Any, style: str | None, value: str, source: str) -> TextSpan:
    """The span of a scalar from its parser marks."""
    first, last = start.index, end.index
    style = style or None  # libyaml says '' where PyYAML says None: plain
    quoted = 1 if style in ("'", '"') else 0
    # the raw text is one line, and between its quotes the value itself (compared in place: no copies)
    single_line = (
        last - first - 2 * quoted == len(value)
        and source.find("\n", first, last) < 0
        and source.startswith(value, first + quoted)
    )
    column = start.column + 1
    # a TextSpan from its fields in order: one per rule, and the named tuple's `__new__` is a call more
    return _make(TextSpan, (source, first, last, start.line + 1, column, style, single_line, column + quoted))


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


class _Parser(Protocol):
    """What the composer uses of a PyYAML loader, C or Python (their stubs
    leave most of it untyped)."""

    def get_event(self) -> yaml.Event | None: ...
    def check_event(self, *choices: type[yaml.Event]) -> bool: ...
    def resolve(self, kind: type[yaml.Node], value: str, implicit: tuple[bool, bool]) -> str: ...
    def construct_object(self, node: yaml.Node, deep: bool = False) -> object: ...


@dataclass(slots=True)
class _Open:
    """A collection whose end event has not come yet."""

    loc: Loc
    items: list[YNode] | dict[str, YNode]
    key_locs: dict[str, Loc]
    anchor: str | None
    budget: int  # the node budget before it, to size it for its aliases
    height: int = 0  # the levels below it so far
    key: YNode | None = None  # in a mapping, the key that waits for its value


@dataclass(frozen=True, slots=True)
class _Anchored:
    node: YNode
    height: int
    size: int  # in YAML nodes, each alias inside it counted as what it names


class _Composer:
    """Builds YNodes straight from the parser's events. libyaml's own
    composer recurses in C, so deep nesting overflowed the stack (SIGSEGV)
    before any check could run; the event stream is flat, so depth and size
    are checked here as each node starts, and refused at that node. An alias
    counts as the depth and size of the node it names."""

    def __init__(self, path: str, loader: _Parser, source: str) -> None:
        self.path = path
        self.loader = loader
        self.source = source
        self.budget = MAX_NODES
        self.anchors: dict[str, _Anchored] = {}
        self.first_anchors: dict[str, Loc] = {}  # every anchor so far, open or done, at its node

    def document(self) -> YNode | None:
        """The stream's one document, or None for an empty stream."""
        loader = self.loader
        loader.get_event()  # the stream's start
        if loader.check_event(yaml.StreamEndEvent):
            return None
        loader.get_event()  # the document's start
        root = self._compose()
        loader.get_event()  # the document's end
        following = loader.get_event()
        if following is not None and not isinstance(following, yaml.StreamEndEvent):
            raise PolicyError(
                _mark_loc(self.path, following.start_mark),
                "YAML syntax: a policy file holds one document, and another one starts here",
            )
        return root

    def _compose(self) -> YNode:
        get_event = self.loader.get_event
        scalar_event = yaml.ScalarEvent
        stack: list[_Open] = []
        while True:
            event = get_event()
            height = 0
            if isinstance(event, scalar_event):
                node = self._scalar(event, stack)
            elif isinstance(event, yaml.CollectionStartEvent):
                items: list[YNode] | dict[str, YNode] = (
                    [] if isinstance(event, yaml.SequenceStartEvent) else {}
                )
                stack.append(self._start(event, len(stack), items))
                continue
            elif isinstance(event, yaml.AliasEvent):
                node, height = self._alias(event, len(stack))
            else:  # the end of the innermost collection
                done = stack.pop()
                node, height = YNode.of(done.items, done.loc, done.key_locs, None), done.height
                if done.anchor is not None:
                    self.anchors[done.anchor] = _Anchored(node, height, done.budget - self.budget)
            if not stack:
                return node
            parent = stack[-1]
            if height >= parent.height:
                parent.height = height + 1
            if isinstance(parent.items, list):
                parent.items.append(node)
            elif parent.key is None:
                parent.key = _checked_key(node, parent.key_locs)
            else:
                key: str = parent.key.value
                parent.items[key] = node
                parent.key_locs[key] = parent.key.loc
                parent.key = None

    def _count(self, loc: Loc, depth: int, size: int = 1, height: int = 0) -> None:
        """Spend `size` nodes of the budget on a node at `depth` holding `height` levels."""
        self.budget -= size
        if self.budget < 0:
            raise PolicyError(loc, f"policy has more than {MAX_NODES} YAML nodes")
        if depth + height > MAX_DEPTH:
            raise PolicyError(loc, f"YAML nesting is deeper than {MAX_DEPTH} levels")

    def _new_anchor(self, name: str, loc: Loc) -> None:
        first = self.first_anchors.get(name)
        if first is not None:
            raise PolicyError(
                loc, f"YAML syntax: the anchor '&{printable(name)}' is used again (first at {first})"
            )
        self.first_anchors[name] = loc

    def _start(
        self, event: yaml.CollectionStartEvent, depth: int, items: list[YNode] | dict[str, YNode]
    ) -> _Open:
        loc = _mark_loc(self.path, event.start_mark)
        budget = self.budget
        self._count(loc, depth)
        if event.anchor is not None:
            self._new_anchor(event.anchor, loc)
        return _Open(loc, items, {}, event.anchor, budget)

    def _alias(self, event: yaml.AliasEvent, depth: int) -> tuple[YNode, int]:
        loc = _mark_loc(self.path, event.start_mark)
        name = str(event.anchor)
        anchored = self.anchors.get(name)
        if anchored is None:
            if name in self.first_anchors:
                raise PolicyError(loc, f"YAML alias '*{printable(name)}' is inside the node it names")
            raise PolicyError(loc, f"YAML syntax: found undefined alias '*{printable(name)}'")
        self._count(loc, depth, anchored.size, anchored.height)
        return anchored.node, anchored.height

    def _scalar(self, event: yaml.ScalarEvent, stack: list[_Open]) -> YNode:
        mark: Any = event.start_mark  # a Loc made here as `_mark_loc` makes it: one per rule
        loc = _make(Loc, (self.path, mark.line + 1, mark.column + 1))
        self._count(loc, len(stack))
        tag = event.tag
        if tag is None and not event.implicit[0]:
            # quoted, as most rules are: a string, the resolver's answer where
            # no path resolver is added (none is), without its call per rule
            tag = STR_TAG
        elif tag is None or tag == "!":
            tag = self.loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        value: Any = event.value
        if tag in NUMBER_TAGS and ":" in event.value:
            # YAML 1.1's base 60: 1024:65535 would be the number 126975, and
            # an address written in full (2001:0:0:0:0:0:0:1) a number too.
            raise PolicyError(
                loc,
                f"YAML reads {printable(event.value)} as a number in base 60",
                "put it in quotes; a port range is written 1024-65535",
            )
        if tag != STR_TAG:
            parent = stack[-1] if stack else None
            if (
                tag == MERGE_TAG
                and parent is not None
                and parent.key is None
                and isinstance(parent.items, dict)
            ):
                raise PolicyError(loc, "YAML merge keys ('<<') are not supported")
            # Without marks: the constructor's message then says no position of its own.
            node = yaml.ScalarNode(tag, event.value, None, None, event.style)
            try:
                value = self.loader.construct_object(node, deep=True)
            except (ValueError, OverflowError, yaml.constructor.ConstructorError) as exc:
                raise PolicyError(loc, f"invalid YAML value {printable(repr(event.value))}: {exc}") from None
            if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
                raise PolicyError(loc, f"the number {printable(event.value)} is out of range")
        span = (
            _span(event.start_mark, event.end_mark, event.style, value, self.source)
            if isinstance(value, str)
            else None
        )
        scalar = YNode.of(value, loc, {}, span)
        if event.anchor is not None:
            self._new_anchor(event.anchor, loc)
            self.anchors[event.anchor] = _Anchored(scalar, 0, 1)
        return scalar


def _checked_key(node: YNode, key_locs: dict[str, Loc]) -> YNode:
    """A mapping's key, checked before its value is read."""
    key = node.value
    if not isinstance(key, str):
        raise PolicyError(
            node.loc, f"mapping key {printable(repr(node.plain()))} must be a string", "quote the key"
        )
    if key in key_locs:
        raise PolicyError(node.loc, f"duplicate key '{printable(key)}' (first at {key_locs[key]})")
    return node
