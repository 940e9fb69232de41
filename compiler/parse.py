"""The parse stage: every rule string of a loaded policy → a syntax tree
(`nfc.syntax`), with the lark grammar in grammar/rules.lark.

Well-formed single-line rules take the fast path (`fastparse`); lark reads
the rest and is the only one that reports syntax errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from nfc import fastparse, grammar, vocab
from nfc.errors import Loc, PolicyError, PolicyErrors, did_you_mean, printable
from nfc.load import PolicySource, RuleText
from nfc.syntax import (
    AddrItem,
    Addrs,
    CommentClause,
    CounterClause,
    LimitNode,
    Locate,
    LogNode,
    MatchNode,
    ParsedRule,
    PolicyTree,
    PortItem,
    RuleNode,
    VerdictNode,
    assemble_rule,
)

MAX_RULE_CHARS = 4096


@cache
def _parser() -> Lark:
    rules = resources.files("nfc.grammar").joinpath("rules.lark").read_text(encoding="utf-8")
    return Lark(
        rules + grammar.lark_terminals(), start=["rule", "entry"], parser="lalr", propagate_positions=True
    )


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


class _ToAst(Transformer[Token, Any]):
    """lark tree → RuleNode. Positions become file locations via `locate`."""

    def __init__(self, locate: Locate) -> None:
        super().__init__()
        self.locate = locate

    def _loc(self, meta_or_token: Any) -> Loc:
        return self.locate(meta_or_token.line, meta_or_token.column)

    # verdicts
    @v_args(meta=True)
    def accept(self, meta: Any, _: list[Any]) -> VerdictNode:
        return VerdictNode("accept", None, self._loc(meta))

    @v_args(meta=True)
    def drop(self, meta: Any, _: list[Any]) -> VerdictNode:
        return VerdictNode("drop", None, self._loc(meta))

    @v_args(meta=True)
    def reject(self, meta: Any, _: list[Any]) -> VerdictNode:
        return VerdictNode("reject", None, self._loc(meta))

    @v_args(meta=True)
    def reject_tcp_reset(self, meta: Any, _: list[Any]) -> VerdictNode:
        return VerdictNode("reject", "tcp reset", self._loc(meta))

    @v_args(meta=True)
    def reject_icmp(self, meta: Any, children: list[Any]) -> VerdictNode:
        return VerdictNode("reject", str(children[0]), self._loc(meta))

    # matches
    def _match(self, kind: str, value: Any, meta: Any) -> MatchNode:
        return MatchNode(kind, value, self._loc(meta))

    @v_args(meta=True)
    def family_ip(self, meta: Any, _: list[Any]) -> MatchNode:
        return self._match("family", "ip", meta)

    @v_args(meta=True)
    def family_ip6(self, meta: Any, _: list[Any]) -> MatchNode:
        return self._match("family", "ip6", meta)

    @v_args(meta=True)
    def proto_tcp(self, meta: Any, _: list[Any]) -> MatchNode:
        return self._match("proto", "tcp", meta)

    @v_args(meta=True)
    def proto_udp(self, meta: Any, _: list[Any]) -> MatchNode:
        return self._match("proto", "udp", meta)

    @v_args(meta=True)
    def proto_sctp(self, meta: Any, _: list[Any]) -> MatchNode:
        return self._match("proto", "sctp", meta)

    @v_args(meta=True)
    def proto_icmp(self, meta: Any, _: list[Any]) -> MatchNode:
        return self._match("proto", "icmp", meta)

    @v_args(meta=True)
    def proto_icmpv6(self, meta: Any, _: list[Any]) -> MatchNode:
        return self._match("proto", "icmpv6", meta)

    @v_args(meta=True)
    def proto_other(self, meta: Any, children: list[Any]) -> MatchNode:
        token = children[0]
        value: str | int = int(token) if token.type == "INT" else str(token)
        return MatchNode("proto", value, self._loc(token))

    @v_args(meta=True)
    def dport(self, meta: Any, children: list[Any]) -> MatchNode:
        return self._match("dport", children[0], meta)

    @v_args(meta=True)
    def sport(self, meta: Any, children: list[Any]) -> MatchNode:
        return self._match("sport", children[0], meta)

    @v_args(meta=True)
    def saddr(self, meta: Any, children: list[Any]) -> MatchNode:
        return self._match("saddr", children[0], meta)

    @v_args(meta=True)
    def daddr(self, meta: Any, children: list[Any]) -> MatchNode:
        return self._match("daddr", children[0], meta)

    @v_args(meta=True)
    def iif(self, meta: Any, children: list[Any]) -> MatchNode:
        return self._match("iif", children[0], meta)

    @v_args(meta=True)
    def oif(self, meta: Any, children: list[Any]) -> MatchNode:
        return self._match("oif", children[0], meta)

    def _names(self, kind: str, meta: Any, tokens: list[Token]) -> MatchNode:
        return self._match(kind, tuple((str(t), self._loc(t)) for t in tokens), meta)

    @v_args(meta=True)
    def ct_state(self, meta: Any, children: list[Any]) -> MatchNode:
        return self._names("ct_state", meta, children)

    @v_args(meta=True)
    def icmp_type(self, meta: Any, children: list[Any]) -> MatchNode:
        return self._names("icmp_type", meta, children)

    @v_args(meta=True)
    def icmpv6_type(self, meta: Any, children: list[Any]) -> MatchNode:
        return self._names("icmpv6_type", meta, children)

    # ports and addresses
    def ports(self, children: list[Any]) -> tuple[PortItem, ...]:
        return tuple(children)

    def port_set(self, children: list[Any]) -> tuple[PortItem, ...]:
        return tuple(children)

    def port_number(self, children: list[Any]) -> PortItem:
        return PortItem("number", int(children[0]), None, self._loc(children[0]))

    def port_range(self, children: list[Any]) -> PortItem:
        return PortItem("range", int(children[0]), int(children[1]), self._loc(children[0]))

    def port_service(self, children: list[Any]) -> PortItem:
        return PortItem("service", str(children[0]), None, self._loc(children[0]))

    def port_var(self, children: list[Any]) -> PortItem:
        return PortItem("var", str(children[0])[1:], None, self._loc(children[0]))

    @v_args(meta=True)
    def addrs(self, meta: Any, children: list[Any]) -> Addrs:
        negated = isinstance(children[0], Token) and children[0].type == "NOT"
        items = tuple(c for c in children if isinstance(c, AddrItem))
        return Addrs(items, negated, self._loc(meta))

    addr_set = addrs

    def addr_literal(self, children: list[Any]) -> AddrItem:
        return AddrItem("literal", str(children[0]), self._loc(children[0]))

    def addr_var(self, children: list[Any]) -> AddrItem:
        return AddrItem("var", str(children[0])[1:], self._loc(children[0]))

    def ifname(self, children: list[Any]) -> str:
        text = str(children[0])
        return text[1:-1] if text.startswith('"') else text

    # trailing clauses
    def packet_rate(self, children: list[Any]) -> tuple[int, None, str]:
        return int(children[0]), None, str(children[1])

    def byte_rate(self, children: list[Any]) -> tuple[int, str, str]:
        return int(children[0]), str(children[1]), str(children[2])

    def burst(self, children: list[Any]) -> tuple[str, int, str | None]:
        return "burst", int(children[0]), str(children[1]) if len(children) > 1 else None

    def mask(self, children: list[Any]) -> tuple[int, ...]:
        return tuple(int(c) for c in children)

    def per(self, children: list[Any]) -> tuple[str, str, tuple[int, ...]]:
        return "per", str(children[0]), children[1] if len(children) > 1 else ()

    def size(self, children: list[Any]) -> tuple[str, int]:
        return "size", int(children[0])

    def meter_name(self, children: list[Any]) -> tuple[str, str]:
        return "name", str(children[0])

    @v_args(meta=True)
    def limit(self, meta: Any, children: list[Any]) -> LimitNode:
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

    def log_prefix(self, children: list[Any]) -> tuple[str, str]:
        return "prefix", str(children[0])[1:-1]

    def log_level(self, children: list[Any]) -> tuple[str, str]:
        return "level", str(children[0])

    @v_args(meta=True)
    def log(self, meta: Any, children: list[Any]) -> LogNode:
        options = dict(children)
        return LogNode(options.get("prefix"), options.get("level"), self._loc(meta))

    @v_args(meta=True)
    def counter(self, meta: Any, _: list[Any]) -> CounterClause:
        return CounterClause(self._loc(meta))

    @v_args(meta=True)
    def comment(self, meta: Any, children: list[Any]) -> CommentClause:
        return CommentClause(str(children[0])[1:-1], self._loc(children[0]))

    # whole rules
    @v_args(meta=True)
    def rule(self, meta: Any, children: list[Any]) -> RuleNode:
        return assemble_rule(children[0], children[1:], self._loc(meta))

    @v_args(meta=True)
    def entry(self, meta: Any, children: list[Any]) -> RuleNode:
        return assemble_rule(None, children, self._loc(meta))


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
        at = exc.pos_in_stream
        assert at is not None  # lark sets it where it refuses a character
        char = text[at] if at < len(text) else "?"
        shown = repr(char) if not char.isprintable() else f"'{char}'"
        if char == '"' and "\n" in text[at:]:
            return PolicyError(loc, "a quoted string cannot hold a line break")
        return PolicyError(loc, f"unexpected character {shown} in rule")
    assert isinstance(exc, UnexpectedToken)  # the one kind of UnexpectedInput left
    token = exc.token
    expected = _expected_words(set(exc.expected))
    previous = exc.token_history[-1] if exc.token_history else None
    if previous is not None and previous.end_pos == token.start_pos and _wordy(previous) and _wordy(token):
        # `udpp` is `udp` then an unexpected `p` to the lexer: say what was written
        return _glued(text, previous, locate, f"put a space between '{previous}' and '{token}'", _keywords())
    if token.type == "$END":
        return PolicyError(loc, "rule ends too early", "expected " + " or ".join(expected))
    keywords = [w.strip("'") for w in expected if w.startswith("'")]
    hint = vocab.foreign_word_hint(str(token))
    if hint is None and keywords:
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
    fast = fastparse.parse(text, locate, start)
    if fast is not None:
        return fast
    return lark_parse(text, locate, start)


def lark_parse(text: str, locate: Locate, start: str) -> RuleNode:
    """The reference parser, and the only one that reports syntax errors.
    `start` is "rule" or "entry"."""
    try:
        interactive = _parser().parse_interactive(text, start=start)
        previous: Token | None = None
        for token in interactive.iter_parse():
            if previous is not None:
                _check_separated(previous, token, text, locate)
            previous = token
        tree = interactive.feed_eof()  # type: ignore[no-untyped-call]  # lark leaves it unannotated
        node: RuleNode = _ToAst(locate).transform(tree)
        return node
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, locate, start) from None
    except VisitError as exc:
        if isinstance(exc.orig_exc, PolicyError):
            raise exc.orig_exc from None
        raise


# Tokens that need no space around them: `{22,80}`, `1024-65535`, `10/second`.
PUNCTUATION = frozenset("{},/-")
WORD = re.compile(r"[^\s{},]+")


def _wordy(token: Token) -> bool:
    """A token that must stand apart from its neighbours (not `{`, `,`, `/`,
    nor a quoted string, whose quotes end it)."""
    return str(token) not in PUNCTUATION and token.type != "STRING"


@cache
def _keywords() -> tuple[str, ...]:
    """Every word of the grammar, for 'did you mean'."""
    return tuple(
        sorted(
            t.pattern.value
            for t in _parser().terminals
            if t.pattern.type == "str" and t.pattern.value.isalpha()
        )
    )


def _check_separated(previous: Token, token: Token, text: str, locate: Locate) -> None:
    """Words are separated by spaces: lark's lexer would read `acceptudp`
    as `accept udp`, and `iifname eth0` as `iif name eth0`."""
    if token.start_pos != previous.end_pos or not (_wordy(previous) and _wordy(token)):
        return
    raise _glued(text, previous, locate, f"put a space between '{previous}' and '{token}'", ())


def _glued(text: str, first: Token, locate: Locate, hint: str, keywords: Sequence[str]) -> PolicyError:
    """The error for a word the lexer read as two tokens, the first `first`."""
    found = WORD.match(text, first.start_pos or 0)
    word = found.group() if found else str(first)
    close = did_you_mean(word, tuple(keywords)) if keywords else None
    return PolicyError(
        locate(first.line or 1, first.column or 1),
        f"unknown word '{printable(word[:40])}'",
        vocab.foreign_word_hint(word) or (close if close and close.startswith("did you mean") else hint),
    )


def parse_rule(text: str, locate: Locate) -> RuleNode:
    """Parse a filter rule: verdict, matches, then limit/log/counter/comment."""
    return _parse(text, locate, "rule")


def parse_entry(text: str, locate: Locate) -> RuleNode:
    """Parse a conntrack.notrack entry: matches and an optional comment."""
    return _parse(text, locate, "entry")


MAX_SYNTAX_ERRORS = 20  # beyond that, the rest is most likely one mistake repeated


def _parsed(texts: tuple[RuleText, ...], start: str, errors: list[PolicyError]) -> tuple[ParsedRule, ...]:
    """The rules that parse; the syntax errors of the others go to `errors`."""
    rules = []
    for text in texts:
        if len(errors) >= MAX_SYNTAX_ERRORS:
            break
        try:
            rules.append(ParsedRule(text, _parse(text.text, text.node.locator(), start)))
        except PolicyError as error:
            errors.append(error)
    return tuple(rules)


def parse_policy(source: PolicySource) -> PolicyTree:
    """Parse every notrack entry, then every chain's rules in order. The
    syntax errors of all of them (up to MAX_SYNTAX_ERRORS) are raised at
    once, so that one run shows every one."""
    errors: list[PolicyError] = []
    notrack = _parsed(source.conntrack.notrack, "entry", errors)
    chains = {name: _parsed(section.rules, "rule", errors) for name, section in source.chains.items()}
    if errors:
        raise errors[0] if len(errors) == 1 else PolicyErrors(errors)
    return PolicyTree(source, notrack, chains)
