"""Rule strings → syntax trees, with the lark grammar in grammar/rules.lark.

The trees keep the rule's words and the file position of each; meaning
(what a `$name` holds, which family a rule covers) is `lower`'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, VisitError

from nfc.errors import Loc, PolicyError, did_you_mean

MAX_RULE_CHARS = 4096

Locate = Callable[[int, int], Loc]


@dataclass(frozen=True)
class PortItem:
    kind: str  # number | range | service | var
    value: str | int
    end: int | None
    loc: Loc


@dataclass(frozen=True)
class AddrItem:
    kind: str  # literal | var
    text: str
    loc: Loc


@dataclass(frozen=True)
class Addrs:
    items: tuple[AddrItem, ...]
    negated: bool
    loc: Loc


@dataclass(frozen=True)
class MatchNode:
    """One match clause: `kind` is family, proto, dport, sport, saddr, daddr,
    iif, oif, ct_state, icmp_type or icmpv6_type."""

    kind: str
    value: Any
    loc: Loc


@dataclass(frozen=True)
class VerdictNode:
    kind: str  # accept | drop | reject
    reject_with: str | None  # None, "tcp reset" or an ICMP type name
    loc: Loc


@dataclass(frozen=True)
class LimitNode:
    over: bool
    rate: int
    byte_unit: str | None  # None for packet rates
    time_unit: str
    burst: int | None
    burst_unit: str | None
    per: str | None  # saddr | daddr
    v4_mask: int | None
    v6_mask: int | None
    size: int | None
    name: str | None
    loc: Loc


@dataclass(frozen=True)
class LogNode:
    prefix: str | None
    level: str | None
    loc: Loc


@dataclass(frozen=True)
class RuleNode:
    verdict: VerdictNode | None  # None for a notrack entry
    matches: tuple[MatchNode, ...]
    limit: LimitNode | None
    log: LogNode | None
    counter: bool
    comment: str | None
    comment_loc: Loc | None
    loc: Loc


@cache
def _parser() -> Lark:
    grammar = resources.files("nfc.grammar").joinpath("rules.lark").read_text(encoding="utf-8")
    return Lark(grammar, start=["rule", "entry"], parser="lalr", propagate_positions=True)


# Human names for the grammar's named terminals, used in "expected ..." messages.
_TERMINAL_WORDS = {
    "INT": "a number",
    "NAME": "a name",
    "VAR": "a $name",
    "ADDRESS": "an address",
    "IFNAME": "an interface name",
    "STRING": 'a "quoted string"',
    "TIME_UNIT": "second/minute/hour/day",
    "BYTE_UNIT": "bytes/kbytes/mbytes",
    "BURST_UNIT": "packets/bytes",
    "PER_KEY": "saddr/daddr",
    "LOG_LEVEL": "a log level",
    "OVER": "over",
    "NOT": "not",
    "$END": "end of rule",
}


def _expected_words(names: set[str]) -> list[str]:
    terminals = {t.name: t for t in _parser().terminals}
    words = set()
    for name in names:
        if name in _TERMINAL_WORDS:
            words.add(_TERMINAL_WORDS[name])
        elif name in terminals and terminals[name].pattern.type == "str":
            words.add(f"'{terminals[name].pattern.value}'")
    return sorted(words)


class _ToAst(Transformer):
    """lark tree → RuleNode. Positions become file locations via `locate`."""

    def __init__(self) -> None:
        super().__init__()
        self.locate: Locate = lambda line, col: Loc("<rule>", line, col)

    def _loc(self, meta_or_token: Any) -> Loc:
        return self.locate(meta_or_token.line, meta_or_token.column)

    # verdicts
    @v_args(meta=True)
    def accept(self, meta: Any, _: list) -> VerdictNode:
        return VerdictNode("accept", None, self._loc(meta))

    @v_args(meta=True)
    def drop(self, meta: Any, _: list) -> VerdictNode:
        return VerdictNode("drop", None, self._loc(meta))

    @v_args(meta=True)
    def reject(self, meta: Any, _: list) -> VerdictNode:
        return VerdictNode("reject", None, self._loc(meta))

    @v_args(meta=True)
    def reject_tcp_reset(self, meta: Any, _: list) -> VerdictNode:
        return VerdictNode("reject", "tcp reset", self._loc(meta))

    @v_args(meta=True)
    def reject_icmp(self, meta: Any, children: list) -> VerdictNode:
        return VerdictNode("reject", str(children[0]), self._loc(meta))

    # matches
    def _match(self, kind: str, value: Any, meta: Any) -> MatchNode:
        return MatchNode(kind, value, self._loc(meta))

    @v_args(meta=True)
    def family_ip(self, meta: Any, _: list) -> MatchNode:
        return self._match("family", "ip", meta)

    @v_args(meta=True)
    def family_ip6(self, meta: Any, _: list) -> MatchNode:
        return self._match("family", "ip6", meta)

    @v_args(meta=True)
    def proto_tcp(self, meta: Any, _: list) -> MatchNode:
        return self._match("proto", "tcp", meta)

    @v_args(meta=True)
    def proto_udp(self, meta: Any, _: list) -> MatchNode:
        return self._match("proto", "udp", meta)

    @v_args(meta=True)
    def proto_sctp(self, meta: Any, _: list) -> MatchNode:
        return self._match("proto", "sctp", meta)

    @v_args(meta=True)
    def proto_icmp(self, meta: Any, _: list) -> MatchNode:
        return self._match("proto", "icmp", meta)

    @v_args(meta=True)
    def proto_icmpv6(self, meta: Any, _: list) -> MatchNode:
        return self._match("proto", "icmpv6", meta)

    @v_args(meta=True)
    def proto_other(self, meta: Any, children: list) -> MatchNode:
        token = children[0]
        value: str | int = int(token) if token.type == "INT" else str(token)
        return MatchNode("proto", value, self._loc(token))

    @v_args(meta=True)
    def dport(self, meta: Any, children: list) -> MatchNode:
        return self._match("dport", children[0], meta)

    @v_args(meta=True)
    def sport(self, meta: Any, children: list) -> MatchNode:
        return self._match("sport", children[0], meta)

    @v_args(meta=True)
    def saddr(self, meta: Any, children: list) -> MatchNode:
        return self._match("saddr", children[0], meta)

    @v_args(meta=True)
    def daddr(self, meta: Any, children: list) -> MatchNode:
        return self._match("daddr", children[0], meta)

    @v_args(meta=True)
    def iif(self, meta: Any, children: list) -> MatchNode:
        return self._match("iif", children[0], meta)

    @v_args(meta=True)
    def oif(self, meta: Any, children: list) -> MatchNode:
        return self._match("oif", children[0], meta)

    def _names(self, kind: str, meta: Any, tokens: list[Token]) -> MatchNode:
        return self._match(kind, tuple((str(t), self._loc(t)) for t in tokens), meta)

    @v_args(meta=True)
    def ct_state(self, meta: Any, children: list) -> MatchNode:
        return self._names("ct_state", meta, children)

    @v_args(meta=True)
    def icmp_type(self, meta: Any, children: list) -> MatchNode:
        return self._names("icmp_type", meta, children)

    @v_args(meta=True)
    def icmpv6_type(self, meta: Any, children: list) -> MatchNode:
        return self._names("icmpv6_type", meta, children)

    # ports and addresses
    def ports(self, children: list) -> tuple[PortItem, ...]:
        return tuple(children)

    def port_set(self, children: list) -> tuple[PortItem, ...]:
        return tuple(children)

    def port_number(self, children: list) -> PortItem:
        return PortItem("number", int(children[0]), None, self._loc(children[0]))

    def port_range(self, children: list) -> PortItem:
        return PortItem("range", int(children[0]), int(children[1]), self._loc(children[0]))

    def port_service(self, children: list) -> PortItem:
        return PortItem("service", str(children[0]), None, self._loc(children[0]))

    def port_var(self, children: list) -> PortItem:
        return PortItem("var", str(children[0])[1:], None, self._loc(children[0]))

    @v_args(meta=True)
    def addrs(self, meta: Any, children: list) -> Addrs:
        negated = isinstance(children[0], Token) and children[0].type == "NOT"
        items = tuple(c for c in children if isinstance(c, AddrItem))
        return Addrs(items, negated, self._loc(meta))

    addr_set = addrs

    def addr_literal(self, children: list) -> AddrItem:
        return AddrItem("literal", str(children[0]), self._loc(children[0]))

    def addr_var(self, children: list) -> AddrItem:
        return AddrItem("var", str(children[0])[1:], self._loc(children[0]))

    def ifname(self, children: list) -> str:
        text = str(children[0])
        return text[1:-1] if text.startswith('"') else text

    # trailing clauses
    def packet_rate(self, children: list) -> tuple[int, None, str]:
        return int(children[0]), None, str(children[1])

    def byte_rate(self, children: list) -> tuple[int, str, str]:
        return int(children[0]), str(children[1]), str(children[2])

    def burst(self, children: list) -> tuple[str, int, str | None]:
        return "burst", int(children[0]), str(children[1]) if len(children) > 1 else None

    def mask(self, children: list) -> tuple[int, ...]:
        return tuple(int(c) for c in children)

    def per(self, children: list) -> tuple[str, str, tuple[int, ...]]:
        return "per", str(children[0]), children[1] if len(children) > 1 else ()

    def size(self, children: list) -> tuple[str, int]:
        return "size", int(children[0])

    def meter_name(self, children: list) -> tuple[str, str]:
        return "name", str(children[0])

    @v_args(meta=True)
    def limit(self, meta: Any, children: list) -> LimitNode:
        over = bool(children) and isinstance(children[0], Token) and children[0].type == "OVER"
        rest = children[1:] if over else children
        (rate, byte_unit, time_unit), options = rest[0], {c[0]: c[1:] for c in rest[1:]}
        burst, burst_unit = options.get("burst", (None, None))
        per, masks = options.get("per", (None, ()))
        return LimitNode(
            over=over,
            rate=rate,
            byte_unit=byte_unit,
            time_unit=time_unit,
            burst=burst,
            burst_unit=burst_unit,
            per=per,
            v4_mask=masks[0] if masks else None,
            v6_mask=masks[1] if len(masks) > 1 else None,
            size=options["size"][0] if "size" in options else None,
            name=options["name"][0] if "name" in options else None,
            loc=self._loc(meta),
        )

    def log_prefix(self, children: list) -> tuple[str, str]:
        return "prefix", str(children[0])[1:-1]

    def log_level(self, children: list) -> tuple[str, str]:
        return "level", str(children[0])

    @v_args(meta=True)
    def log(self, meta: Any, children: list) -> LogNode:
        options = dict(children)
        return LogNode(options.get("prefix"), options.get("level"), self._loc(meta))

    @v_args(meta=True)
    def counter(self, meta: Any, _: list) -> tuple[str, Loc]:
        return "counter", self._loc(meta)

    @v_args(meta=True)
    def comment(self, meta: Any, children: list) -> tuple[str, str, Loc]:
        return "comment", str(children[0])[1:-1], self._loc(children[0])

    # whole rules
    @v_args(meta=True)
    def rule(self, meta: Any, children: list) -> RuleNode:
        return self._rule(children[0], children[1:], meta)

    @v_args(meta=True)
    def entry(self, meta: Any, children: list) -> RuleNode:
        return self._rule(None, children, meta)

    def _rule(self, verdict: VerdictNode | None, parts: list, meta: Any) -> RuleNode:
        matches = [p for p in parts if isinstance(p, MatchNode)]
        limit = log = None
        counter = False
        comment = comment_loc = None
        seen: dict[str, Loc] = {}
        for part in parts:
            if isinstance(part, MatchNode):
                continue
            if isinstance(part, LimitNode):
                clause, loc, limit = "limit", part.loc, part
            elif isinstance(part, LogNode):
                clause, loc, log = "log", part.loc, part
            elif part[0] == "counter":
                clause, loc, counter = "counter", part[1], True
            else:
                clause, comment, comment_loc = "comment", part[1], part[2]
                loc = comment_loc
            if clause in seen:
                raise PolicyError(loc, f"'{clause}' is given twice (first at {seen[clause]})")
            seen[clause] = loc
        return RuleNode(verdict, tuple(matches), limit, log, counter, comment, comment_loc, self._loc(meta))


_TRANSFORMER = _ToAst()


def _syntax_error(exc: UnexpectedInput, text: str, locate: Locate, start: str) -> PolicyError:
    if isinstance(exc, UnexpectedEOF):
        loc = locate(1, len(text) + 1)
        expected = _expected_words(set(exc.expected))
        return PolicyError(loc, "rule ends too early", "expected " + " or ".join(expected))
    token = getattr(exc, "token", None)
    if token is not None and token.type == "$END":
        loc = locate(1, len(text) + 1)
    else:
        loc = locate(exc.line, exc.column)
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else "?"
        shown = repr(char) if not char.isprintable() else f"'{char}'"
        if char == '"' and "\n" in text[exc.pos_in_stream :]:
            return PolicyError(loc, "a quoted string cannot hold a line break")
        return PolicyError(loc, f"unexpected character {shown} in rule")
    expected = _expected_words(set(exc.expected))
    if token.type == "$END":
        return PolicyError(loc, "rule ends too early", "expected " + " or ".join(expected))
    keywords = [w.strip("'") for w in expected if w.startswith("'")]
    hint = None
    if keywords:
        close = did_you_mean(str(token), keywords)
        hint = close if close and close.startswith("did you mean") else None
    if hint is None and expected:
        hint = "expected " + ", ".join(expected)
    if start == "rule" and exc.line == 1 and exc.column == 1:
        hint = "a rule starts with accept, drop or reject"
    shown = str(token)[:40]
    return PolicyError(loc, f"unexpected '{shown}' in {'rule' if start == 'rule' else 'entry'}", hint)


def _parse(text: str, locate: Locate, start: str) -> RuleNode:
    if len(text) > MAX_RULE_CHARS:
        raise PolicyError(locate(1, 1), f"rule is longer than {MAX_RULE_CHARS} characters")
    if not text.strip():
        raise PolicyError(locate(1, 1), "empty rule")
    # One Transformer serves every rule (lark builds its callbacks once per
    # instance); it is pointed at this rule's source position first.
    _TRANSFORMER.locate = locate
    fast = fastparse.parse(text, locate, start, _TRANSFORMER)
    if fast is not None:
        return fast
    return _lark_parse(text, locate, start)


def _lark_parse(text: str, locate: Locate, start: str) -> RuleNode:
    """The reference parser, and the only one that reports syntax errors."""
    _TRANSFORMER.locate = locate
    try:
        return _TRANSFORMER.transform(_parser().parse(text, start=start))
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, locate, start) from None
    except VisitError as exc:
        if isinstance(exc.orig_exc, PolicyError):
            raise exc.orig_exc from None
        raise


def parse_rule(text: str, locate: Locate) -> RuleNode:
    """Parse a filter rule: verdict, matches, then limit/log/counter/comment."""
    return _parse(text, locate, "rule")


def parse_entry(text: str, locate: Locate) -> RuleNode:
    """Parse a conntrack.notrack entry: matches and an optional comment."""
    return _parse(text, locate, "entry")


from nfc import fastparse  # noqa: E402 - it builds the trees defined above
