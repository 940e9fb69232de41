"""A hand-written fast path for well-formed single-line rules.

lark stays the reference: this parser accepts only what it can read with
certainty, builds exactly the tree lark's Transformer would (both finish a
rule with `syntax.assemble_rule`), and returns None for anything else,
which then goes to lark (and to lark's error messages).
tests/test_fastparse.py holds the two equal."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal, TypeVar, cast

from nfc.errors import Loc
from nfc.grammar import PATTERNS, WORDS
from nfc.ir import ByteUnit, LogLevel, MeterKey, TimeUnit, VerdictKind
from nfc.syntax import (
    AddrItem,
    Addrs,
    Clause,
    CommentClause,
    CounterClause,
    IfaceItem,
    Ifnames,
    LimitNode,
    LogNode,
    MatchNode,
    NatAction,
    NatNode,
    PortItem,
    RuleNode,
    SyntaxNode,
    VerdictNode,
    assemble_rule,
)


def _whole(pattern: str) -> re.Pattern[str]:
    """A pattern that must match a whole token."""
    return re.compile(rf"(?:{pattern})\Z")


def _words(terminal: str) -> str:
    return "|".join(WORDS[terminal])


# A token is a quoted string, a brace or comma, or a run of anything else
# up to a space: the grammar's words as written in the usual way.
TOKEN = re.compile(r'"[^"]*"|[{},]|[^ {},"]+')
# The grammar's terminals (grammar/__init__.py); fastparse reads "10/second"
# or "saddr/24" as one token where lark sees three, so some are combined.
INT = _whole(PATTERNS["INT"])
NAME = _whole(PATTERNS["NAME"])
VAR = _whole(PATTERNS["VAR"])
ADDRESS = _whole(PATTERNS["ADDRESS"])
NAT_ADDRESS = _whole(PATTERNS["NAT_ADDRESS"])
IFNAME = _whole(PATTERNS["IFNAME"])
RANGE = _whole(f"({PATTERNS['INT']})-({PATTERNS['INT']})")
RATE = _whole(f"({PATTERNS['INT']})/({_words('TIME_UNIT')})")
BYTE_RATE = _whole(f"({_words('BYTE_UNIT')})/({_words('TIME_UNIT')})")
PER = _whole(f"({_words('PER_KEY')})(?:/({PATTERNS['INT']}))?")
SECOND_MASK = _whole(f"/({PATTERNS['INT']})")
BURST_UNITS = WORDS["BURST_UNIT"]
LOG_LEVELS = WORDS["LOG_LEVEL"]


Item = TypeVar("Item")
_loc = tuple.__new__  # a Loc from its fields in order, minus NamedTuple's argument handling


class _Unsure(Exception):
    """Not certain to read this as lark would: leave it to lark."""


class _Reader:
    """The rule's tokens, read in order. A token's place is found as it is
    taken, where the previous one ended: `findall` makes no match object
    per token, which halves the cost of tokenizing. The rule is one line of
    its file as written, from `origin` on, so a place is a Loc made there."""

    def __init__(self, text: str, origin: Loc) -> None:
        self.text = text
        self.tokens: list[str | None] = TOKEN.findall(text)
        self.tokens.append(None)  # after the last token: what `peek` sees, and where `take` stops
        self.at = 0
        self.end = 0  # in `text`, just after the last token taken
        self.file, self.line, self.offset = origin

    def peek(self) -> str | None:
        return self.tokens[self.at]

    def take(self) -> tuple[str, Loc]:
        """The next token and its place."""
        word = self.tokens[self.at]
        if word is None:
            raise _Unsure
        self.at += 1
        # Only spaces, and quotes that start no string, lie between two
        # tokens: the first `word` from there is this one.
        start = self.text.find(word, self.end)
        self.end = start + len(word)
        return word, _loc(Loc, (self.file, self.line, self.offset + start + 1))

    def expect(self, word: str) -> None:
        if self.take()[0] != word:
            raise _Unsure

    def matching(self, pattern: re.Pattern[str]) -> tuple[str, Loc]:
        text, loc = self.take()
        if not pattern.match(text):
            raise _Unsure
        return text, loc


ReadMatch = Callable[[_Reader], MatchNode]
ReadClause = Callable[[_Reader], Clause]


def parse(text: str, origin: Loc, start: str) -> SyntaxNode | None:
    """The rule's tree (a NatNode for `start` "nat"), or None where only lark
    can say. `text` lies on one line of its file as written, just after
    `origin`: its column c is at `origin.col + c`."""
    if not text.isascii() or not text.isprintable() or '""' in text:
        return None
    reader = _Reader(text, origin)
    first = reader.tokens[0]
    if first is None:
        return None
    try:
        if start == "nat":
            action = _nat_action(reader)
            return NatNode(action, _rest(reader, None, ENTRY_CLAUSES))
        if start == "rule":
            return _rest(reader, _verdict(reader), CLAUSES)
        if first not in MATCHES:  # an entry has a match at least
            raise _Unsure
        return _rest(reader, None, ENTRY_CLAUSES)
    except _Unsure:
        return None


def _rest(reader: _Reader, verdict: VerdictNode | None, clauses: dict[str, ReadClause]) -> RuleNode:
    """The matches and then the clauses after the verdict (or NAT action), to the end."""
    matches: list[MatchNode] = []
    tokens = reader.tokens
    while (word := tokens[reader.at]) in MATCHES:
        matches.append(MATCHES[word](reader))
    parts: list[Clause] = []
    while (word := tokens[reader.at]) is not None:
        # an entry's one comment ends it: lark refuses a second one as it
        # refuses any other word there
        if word not in clauses or (clauses is ENTRY_CLAUSES and parts):
            raise _Unsure
        parts.append(clauses[word](reader))
    # A rule starts at its verdict: one Loc for both.
    if verdict is not None:
        loc = verdict.loc
    else:
        first = reader.text.find(cast(str, tokens[0]))
        loc = _loc(Loc, (reader.file, reader.line, reader.offset + first + 1))
    return assemble_rule(verdict, tuple(matches), parts, loc)


def _nat_action(reader: _Reader) -> NatAction:
    word, loc = reader.take()
    if word == "masquerade":
        return NatAction("masquerade", None, None, loc, None)
    if word in ("snat", "dnat"):
        reader.expect("to")
        target, target_loc = reader.matching(NAT_ADDRESS)
        kind: Literal["snat", "dnat"] = "snat" if word == "snat" else "dnat"
        return NatAction(kind, target, None, loc, target_loc)
    if word == "redirect":
        reader.expect("to")
        port = _port(reader)
        return NatAction("redirect", None, port, loc, port.loc)
    raise _Unsure


def _verdict(reader: _Reader) -> VerdictNode:
    word, loc = reader.take()
    if word in ("accept", "drop"):
        return VerdictNode(cast(VerdictKind, word), None, loc)
    if word != "reject":
        raise _Unsure
    if reader.peek() != "with":
        return VerdictNode("reject", None, loc)
    reader.take()
    kind = reader.take()[0]
    if kind == "tcp":
        reader.expect("reset")
        return VerdictNode("reject", "tcp reset", loc)
    if kind != "icmp":
        raise _Unsure
    name, _ = reader.matching(NAME)
    return VerdictNode("reject", name, loc)


def _keyword_match(kind: str, value: str) -> ReadMatch:
    def read(reader: _Reader) -> MatchNode:
        _, loc = reader.take()
        return MatchNode(kind, value, loc)

    return read


def _icmp(protocol: str) -> ReadMatch:
    def read(reader: _Reader) -> MatchNode:
        _, loc = reader.take()
        if reader.peek() != "type":
            return MatchNode("proto", protocol, loc)
        reader.take()
        kind = "icmp_type" if protocol == "icmp" else "icmpv6_type"
        return MatchNode(kind, _names(reader), loc)

    return read


def _names(reader: _Reader) -> tuple[tuple[str, Loc], ...]:
    names = []
    while True:
        name, loc = reader.matching(NAME)
        names.append((name, loc))
        if reader.peek() != ",":
            return tuple(names)
        reader.take()


def _proto(reader: _Reader) -> MatchNode:
    reader.take()
    word, loc = reader.take()
    if INT.match(word):
        return MatchNode("proto", int(word), loc)
    if NAME.match(word):
        return MatchNode("proto", word, loc)
    raise _Unsure


def _port(reader: _Reader) -> PortItem:
    word, loc = reader.take()
    if INT.match(word):
        return PortItem("number", int(word), None, loc)
    if found := RANGE.match(word):
        return PortItem("range", int(found[1]), int(found[2]), loc)
    if NAME.match(word):
        return PortItem("service", word, None, loc)
    if VAR.match(word):
        return PortItem("var", word[1:], None, loc)
    raise _Unsure


def _set(reader: _Reader, item: Callable[[_Reader], Item]) -> tuple[Item, ...]:
    """'{' item (',' item)* ','? '}' after the '{'."""
    items = [item(reader)]
    tokens = reader.tokens
    while tokens[reader.at] == ",":
        reader.take()
        if tokens[reader.at] == "}":
            break
        items.append(item(reader))
    reader.expect("}")
    return tuple(items)


def _ports(kind: str) -> ReadMatch:
    def read(reader: _Reader) -> MatchNode:
        _, loc = reader.take()
        if reader.tokens[reader.at] == "{":
            reader.take()
            items = _set(reader, _port)
        else:
            items = (_port(reader),)
        return MatchNode(kind, items, loc)

    return read


def _address(reader: _Reader) -> AddrItem:
    word, loc = reader.take()
    if ADDRESS.match(word):
        return AddrItem("literal", word, loc)
    if VAR.match(word):
        return AddrItem("var", word[1:], loc)
    raise _Unsure


def _addresses(kind: str) -> ReadMatch:
    def read(reader: _Reader) -> MatchNode:
        _, loc = reader.take()
        tokens = reader.tokens
        negated = tokens[reader.at] == "not"
        if negated:
            start = reader.take()[1]  # the list starts at its `not`
        if tokens[reader.at] == "{":
            brace = reader.take()[1]
            items = _set(reader, _address)
            list_loc = start if negated else brace
        else:
            items = (_address(reader),)
            # one address, the list's only word: one Loc for both
            list_loc = start if negated else items[0].loc
        return MatchNode(kind, Addrs(items, negated, list_loc), loc)

    return read


def _interface_name(reader: _Reader) -> tuple[str, Loc]:
    word, loc = reader.take()
    if word.startswith('"'):
        return word[1:-1], loc
    if IFNAME.match(word):
        return word, loc
    raise _Unsure


def _interface_item(reader: _Reader) -> IfaceItem:
    if (word := reader.peek()) is not None and VAR.match(word):
        _, loc = reader.take()
        return IfaceItem("var", word[1:], loc)
    name, loc = _interface_name(reader)
    return IfaceItem("name", name, loc)


def _interface(kind: str) -> ReadMatch:
    def read(reader: _Reader) -> MatchNode:
        _, loc = reader.take()
        value: Ifnames
        if reader.peek() == "{":
            reader.take()
            value = _set(reader, _interface_item)
        elif (word := reader.peek()) is not None and VAR.match(word):
            value = (_interface_item(reader),)
        else:
            value = _interface_name(reader)[0]
        return MatchNode(kind, value, loc)

    return read


def _ct(reader: _Reader) -> MatchNode:
    _, loc = reader.take()
    word = reader.take()[0]
    if word not in ("state", "status"):
        raise _Unsure
    return MatchNode(f"ct_{word}", _names(reader), loc)


MATCHES: dict[str, ReadMatch] = {
    "ip": _keyword_match("family", "ip"),
    "ip6": _keyword_match("family", "ip6"),
    "tcp": _keyword_match("proto", "tcp"),
    "udp": _keyword_match("proto", "udp"),
    "sctp": _keyword_match("proto", "sctp"),
    "icmp": _icmp("icmp"),
    "icmpv6": _icmp("icmpv6"),
    "proto": _proto,
    "dport": _ports("dport"),
    "sport": _ports("sport"),
    "from": _addresses("saddr"),
    "to": _addresses("daddr"),
    "iif": _interface("iif"),
    "oif": _interface("oif"),
    "ct": _ct,
}


def _int(reader: _Reader) -> int:
    return int(reader.matching(INT)[0])


def _limit(reader: _Reader) -> LimitNode:
    _, loc = reader.take()
    over = reader.peek() == "over"
    if over:
        reader.take()
    word, _ = reader.take()
    if found := RATE.match(word):
        rate, byte_unit, time_unit = int(found[1]), None, found[2]
    elif INT.match(word):
        unit = BYTE_RATE.match(reader.take()[0])
        if not unit:
            raise _Unsure
        rate, byte_unit, time_unit = int(word), unit[1], unit[2]
    else:
        raise _Unsure
    burst = burst_unit = per = v4_mask = v6_mask = size = name = None
    if reader.peek() == "burst":
        reader.take()
        burst = _int(reader)
        if reader.peek() in BURST_UNITS:
            burst_unit = reader.take()[0]
    if reader.peek() == "per":
        reader.take()
        key = PER.match(reader.take()[0])
        if not key:
            raise _Unsure
        per = key[1]
        if key[2] is not None:
            v4_mask = int(key[2])
            if reader.peek() == ",":
                reader.take()
                second = SECOND_MASK.match(reader.take()[0])
                if not second:
                    raise _Unsure
                v6_mask = int(second[1])
    if reader.peek() == "size":
        reader.take()
        size = _int(reader)
    if reader.peek() == "name":
        reader.take()
        name = reader.matching(NAME)[0]
    # The patterns admit only the grammar's TIME_UNIT, BYTE_UNIT and PER_KEY words.
    return LimitNode(
        over,
        rate,
        cast(ByteUnit | None, byte_unit),
        cast(TimeUnit, time_unit),
        burst,
        burst_unit,
        cast(MeterKey | None, per),
        v4_mask,
        v6_mask,
        size,
        name,
        loc,
    )


def _string(reader: _Reader) -> tuple[str, Loc]:
    word, loc = reader.take()
    if len(word) < 2 or not (word.startswith('"') and word.endswith('"')):
        raise _Unsure
    return word[1:-1], loc


def _log(reader: _Reader) -> LogNode:
    _, loc = reader.take()
    prefix: str | None = None
    level: LogLevel | None = None
    if reader.peek() == "prefix":
        reader.take()
        prefix = _string(reader)[0]
    if reader.peek() == "level":
        reader.take()
        word = reader.take()[0]
        if word not in LOG_LEVELS:
            raise _Unsure
        level = cast(LogLevel, word)  # one of the grammar's LOG_LEVEL words
    return LogNode(prefix, level, loc)


def _counter(reader: _Reader) -> CounterClause:
    _, loc = reader.take()
    return CounterClause(loc)


def _comment(reader: _Reader) -> CommentClause:
    reader.take()
    text, loc = _string(reader)
    return CommentClause(text, loc)


CLAUSES: dict[str, ReadClause] = {
    "limit": _limit,
    "log": _log,
    "counter": _counter,
    "comment": _comment,
}
ENTRY_CLAUSES: dict[str, ReadClause] = {"comment": _comment}
