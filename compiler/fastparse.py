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
    CommentClause,
    CounterClause,
    IfaceItem,
    Ifnames,
    LimitNode,
    Locate,
    LogNode,
    MatchNode,
    NatAction,
    NatNode,
    PortItem,
    RuleNode,
    RulePart,
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


class _Unsure(Exception):
    """Not certain to read this as lark would: leave it to lark."""


class _Reader:
    """The rule's tokens, read in order. A token's column is found as it is
    taken, where the previous one ended: `findall` makes no match object
    per token, which halves the cost of tokenizing."""

    def __init__(self, text: str, locate: Locate) -> None:
        self.text = text
        self.tokens: list[str] = TOKEN.findall(text)
        self.count = len(self.tokens)  # read once: peek and take run once per token
        self.at = 0
        self.end = 0  # in `text`, just after the last token taken
        self.locate = locate

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < self.count else None

    def take(self) -> tuple[str, int]:
        """The next token and its 1-based column."""
        at = self.at
        if at >= self.count:
            raise _Unsure
        self.at = at + 1
        word = self.tokens[at]
        # Only spaces, and quotes that start no string, lie between two
        # tokens: the first `word` from there is this one.
        start = self.text.find(word, self.end)
        self.end = start + len(word)
        return word, start + 1

    def next_column(self) -> int:
        """The column of the next token, before it is taken."""
        return self.text.find(self.tokens[self.at], self.end) + 1

    def expect(self, word: str) -> int:
        text, col = self.take()
        if text != word:
            raise _Unsure
        return col

    def matching(self, pattern: re.Pattern[str]) -> tuple[str, int]:
        text, col = self.take()
        if not pattern.match(text):
            raise _Unsure
        return text, col


ReadMatch = Callable[[_Reader], MatchNode]
ReadPart = Callable[[_Reader], RulePart]


def parse(text: str, locate: Locate, start: str) -> SyntaxNode | None:
    """The rule's tree (a NatNode for `start` "nat"), or None where only lark can say."""
    if not text.isascii() or not text.isprintable() or '""' in text:
        return None
    reader = _Reader(text, locate)
    if not reader.tokens:
        return None
    try:
        if start == "nat":
            action = _nat_action(reader)
            return NatNode(action, _rest(reader, None, ENTRY_CLAUSES))
        if start == "rule":
            return _rest(reader, _verdict(reader), CLAUSES)
        if reader.peek() not in MATCHES:  # an entry has a match at least
            raise _Unsure
        return _rest(reader, None, ENTRY_CLAUSES)
    except _Unsure:
        return None


def _rest(reader: _Reader, verdict: VerdictNode | None, clauses: dict[str, ReadPart]) -> RuleNode:
    """The matches and then the clauses after the verdict (or NAT action), to the end."""
    parts: list[RulePart] = []
    while (word := reader.peek()) is not None and word in MATCHES:
        parts.append(MATCHES[word](reader))
    matches = len(parts)
    while (word := reader.peek()) is not None:
        # an entry's one comment ends it: lark refuses a second one as it
        # refuses any other word there
        if word not in clauses or (clauses is ENTRY_CLAUSES and len(parts) > matches):
            raise _Unsure
        parts.append(clauses[word](reader))
    # A rule starts at its verdict: one Loc for both.
    loc = verdict.loc if verdict is not None else reader.locate(1, reader.text.find(reader.tokens[0]) + 1)
    return assemble_rule(verdict, parts, loc)


def _nat_action(reader: _Reader) -> NatAction:
    word, col = reader.take()
    loc = reader.locate(1, col)
    if word == "masquerade":
        return NatAction("masquerade", None, None, loc, None)
    if word in ("snat", "dnat"):
        reader.expect("to")
        target, target_col = reader.matching(NAT_ADDRESS)
        kind: Literal["snat", "dnat"] = "snat" if word == "snat" else "dnat"
        return NatAction(kind, target, None, loc, reader.locate(1, target_col))
    if word == "redirect":
        reader.expect("to")
        port = _port(reader)
        return NatAction("redirect", None, port, loc, port.loc)
    raise _Unsure


def _verdict(reader: _Reader) -> VerdictNode:
    word, col = reader.take()
    if word in ("accept", "drop"):
        return VerdictNode(cast(VerdictKind, word), None, reader.locate(1, col))
    if word != "reject":
        raise _Unsure
    if reader.peek() != "with":
        return VerdictNode("reject", None, reader.locate(1, col))
    reader.take()
    kind = reader.take()[0]
    if kind == "tcp":
        reader.expect("reset")
        return VerdictNode("reject", "tcp reset", reader.locate(1, col))
    if kind != "icmp":
        raise _Unsure
    name, _ = reader.matching(NAME)
    return VerdictNode("reject", name, reader.locate(1, col))


def _keyword_match(kind: str, value: str) -> ReadMatch:
    def read(reader: _Reader) -> MatchNode:
        _, col = reader.take()
        return MatchNode(kind, value, reader.locate(1, col))

    return read


def _icmp(protocol: str) -> ReadMatch:
    def read(reader: _Reader) -> MatchNode:
        _, col = reader.take()
        if reader.peek() != "type":
            return MatchNode("proto", protocol, reader.locate(1, col))
        reader.take()
        kind = "icmp_type" if protocol == "icmp" else "icmpv6_type"
        return MatchNode(kind, _names(reader), reader.locate(1, col))

    return read


def _names(reader: _Reader) -> tuple[tuple[str, Loc], ...]:
    names = []
    while True:
        name, col = reader.matching(NAME)
        names.append((name, reader.locate(1, col)))
        if reader.peek() != ",":
            return tuple(names)
        reader.take()


def _proto(reader: _Reader) -> MatchNode:
    reader.take()
    word, col = reader.take()
    if INT.match(word):
        return MatchNode("proto", int(word), reader.locate(1, col))
    if NAME.match(word):
        return MatchNode("proto", word, reader.locate(1, col))
    raise _Unsure


def _port(reader: _Reader) -> PortItem:
    word, col = reader.take()
    loc = reader.locate(1, col)
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
    while reader.peek() == ",":
        reader.take()
        if reader.peek() == "}":
            break
        items.append(item(reader))
    reader.expect("}")
    return tuple(items)


def _ports(kind: str) -> ReadMatch:
    def read(reader: _Reader) -> MatchNode:
        _, col = reader.take()
        if reader.peek() == "{":
            reader.take()
            items = _set(reader, _port)
        else:
            items = (_port(reader),)
        return MatchNode(kind, items, reader.locate(1, col))

    return read


def _address(reader: _Reader) -> AddrItem:
    word, col = reader.take()
    if ADDRESS.match(word):
        return AddrItem("literal", word, reader.locate(1, col))
    if VAR.match(word):
        return AddrItem("var", word[1:], reader.locate(1, col))
    raise _Unsure


def _addresses(kind: str) -> ReadMatch:
    def read(reader: _Reader) -> MatchNode:
        _, col = reader.take()
        start = reader.next_column() if reader.at < reader.count else col
        negated = reader.peek() == "not"
        if negated:
            reader.take()
        if reader.peek() == "{":
            reader.take()
            items = _set(reader, _address)
            loc = reader.locate(1, start)
        else:
            items = (_address(reader),)
            # one address, the list's only word: one Loc for both
            loc = reader.locate(1, start) if negated else items[0].loc
        return MatchNode(kind, Addrs(items, negated, loc), reader.locate(1, col))

    return read


def _interface_name(reader: _Reader) -> tuple[str, int]:
    word, col = reader.take()
    if word.startswith('"'):
        return word[1:-1], col
    if IFNAME.match(word):
        return word, col
    raise _Unsure


def _interface_item(reader: _Reader) -> IfaceItem:
    if (word := reader.peek()) is not None and VAR.match(word):
        _, col = reader.take()
        return IfaceItem("var", word[1:], reader.locate(1, col))
    name, col = _interface_name(reader)
    return IfaceItem("name", name, reader.locate(1, col))


def _interface(kind: str) -> ReadMatch:
    def read(reader: _Reader) -> MatchNode:
        _, col = reader.take()
        value: Ifnames
        if reader.peek() == "{":
            reader.take()
            value = _set(reader, _interface_item)
        elif (word := reader.peek()) is not None and VAR.match(word):
            value = (_interface_item(reader),)
        else:
            value = _interface_name(reader)[0]
        return MatchNode(kind, value, reader.locate(1, col))

    return read


def _ct(reader: _Reader) -> MatchNode:
    _, col = reader.take()
    word = reader.take()[0]
    if word not in ("state", "status"):
        raise _Unsure
    return MatchNode(f"ct_{word}", _names(reader), reader.locate(1, col))


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
    _, col = reader.take()
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
        reader.locate(1, col),
    )


def _string(reader: _Reader) -> tuple[str, int]:
    word, col = reader.take()
    if len(word) < 2 or not (word.startswith('"') and word.endswith('"')):
        raise _Unsure
    return word[1:-1], col


def _log(reader: _Reader) -> LogNode:
    _, col = reader.take()
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
    return LogNode(prefix, level, reader.locate(1, col))


def _counter(reader: _Reader) -> CounterClause:
    _, col = reader.take()
    return CounterClause(reader.locate(1, col))


def _comment(reader: _Reader) -> CommentClause:
    reader.take()
    text, col = _string(reader)
    return CommentClause(text, reader.locate(1, col))


CLAUSES: dict[str, ReadPart] = {
    "limit": _limit,
    "log": _log,
    "counter": _counter,
    "comment": _comment,
}
ENTRY_CLAUSES: dict[str, ReadPart] = {"comment": _comment}
