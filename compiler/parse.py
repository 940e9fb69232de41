"""The parse stage: every rule string of a loaded policy → a syntax tree
(`nfc.syntax`), with the lark grammar in grammar/rules.lark.

Well-formed rules written on one line of their file take the fast path
(`fastparse`); lark reads the rest and is the only one that reports syntax
errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from importlib import resources

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from nfc import fastparse, grammar, vocab
from nfc.errors import PolicyError, PolicyErrors, did_you_mean, printable
from nfc.load import PolicySource
from nfc.schema import RuleText
from nfc.syntax import (
    Locate,
    NatNode,
    ParsedNat,
    ParsedRule,
    PolicyTree,
    RuleNode,
    SyntaxNode,
)
from nfc.transform import ToSyntax

MAX_RULE_CHARS = 4096


@cache
def _parser() -> Lark:
    rules = resources.files("nfc.grammar").joinpath("rules.lark").read_text(encoding="utf-8")
    return Lark(
        rules + grammar.lark_terminals(),
        start=["rule", "entry", "nat"],
        parser="lalr",
        propagate_positions=True,
    )


# Human names for the grammar's named terminals, used in "expected ..." messages.
_TERMINAL_WORDS = {
    "INT": "a number",
    "NAME": "a name",
    "VAR": "a $name",
    "ADDRESS": "an address",
    "NAT_ADDRESS": "an address",
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


# What each start symbol is called in messages, and how it starts.
START_WORDS = {"rule": "rule", "entry": "entry", "nat": "NAT rule"}
NAT_ACTIONS = ("masquerade", "snat", "dnat", "redirect")
FIRST_WORDS = {
    "rule": "a rule starts with accept, drop or reject",
    "nat": "a NAT rule starts with masquerade, snat, dnat or redirect",
}


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
    if start == "nat" and str(token).startswith(":") and str(token)[1:].replace("-", "").isdigit():
        hint = f"nfc writes 'to {str(token)[1:]}' where nft writes 'to {token}'"
    if exc.line == 1 and exc.column == 1 and start in FIRST_WORDS:
        hint = FIRST_WORDS[start]
    if start != "nat" and str(token) in NAT_ACTIONS:
        hint = "a NAT rule goes in the top-level 'nat' list"
    shown = str(token)[:40]
    return PolicyError(loc, f"unexpected '{shown}' in {START_WORDS[start]}", hint)


def _parse(text: str, locate: Locate, start: str) -> SyntaxNode:
    if len(text) > MAX_RULE_CHARS:
        raise PolicyError(locate(1, 1), f"rule is longer than {MAX_RULE_CHARS} characters")
    if not text.strip():
        raise PolicyError(locate(1, 1), "empty rule")
    return lark_parse(text, locate, start)


def _parse_text(text: RuleText, start: str) -> SyntaxNode:
    """A rule as written in a policy: by the fast path where the rule is one
    line of its file as written (most are), else by lark."""
    node = text.node
    value: str = node.value  # checked to be a string when loaded
    origin = node.text_origin()
    if origin is not None and len(value) <= MAX_RULE_CHARS:
        fast = fastparse.parse(value, origin, start)
        if fast is not None:
            return fast
    return _parse(value, node.locator(), start)


def lark_parse(text: str, locate: Locate, start: str) -> SyntaxNode:
    """The reference parser, and the only one that reports syntax errors.
    `start` is "rule", "entry" or "nat" (a NatNode)."""
    try:
        interactive = _parser().parse_interactive(text, start=start)
        previous: Token | None = None
        for token in interactive.iter_parse():
            if previous is not None:
                _check_separated(previous, token, text, locate)
            previous = token
        tree = interactive.feed_eof()  # type: ignore[no-untyped-call]  # lark leaves it unannotated
        node: SyntaxNode = ToSyntax(locate).transform(tree)
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
    if first.type == "IFNAME" and first.endswith("*"):
        hint = "a '*' is a wildcard at the end of an interface name only (eth* matches eth0, eth1, ...)"
    return PolicyError(
        locate(first.line or 1, first.column or 1),
        f"unknown word '{printable(word[:40])}'",
        vocab.foreign_word_hint(word) or (close if close and close.startswith("did you mean") else hint),
    )


def parse_rule(text: str, locate: Locate) -> RuleNode:
    """Parse a filter rule: verdict, matches, then limit/log/counter/comment."""
    node = _parse(text, locate, "rule")
    assert isinstance(node, RuleNode)
    return node


def parse_entry(text: str, locate: Locate) -> RuleNode:
    """Parse a conntrack.notrack entry: matches and an optional comment."""
    node = _parse(text, locate, "entry")
    assert isinstance(node, RuleNode)
    return node


def parse_nat(text: str, locate: Locate) -> NatNode:
    """Parse an item of `nat:`: its action, matches and an optional comment."""
    node = _parse(text, locate, "nat")
    assert isinstance(node, NatNode)
    return node


MAX_SYNTAX_ERRORS = 20  # beyond that, the rest is most likely one mistake repeated


def _parsed(
    texts: tuple[RuleText, ...], start: str, errors: list[PolicyError]
) -> list[tuple[RuleText, SyntaxNode]]:
    """The rules that parse, with their trees; the syntax errors of the others go to `errors`."""
    parsed = []
    for text in texts:
        if len(errors) >= MAX_SYNTAX_ERRORS:
            break
        try:
            parsed.append((text, _parse_text(text, start)))
        except PolicyError as error:
            errors.append(error)
    return parsed


def _rules(texts: tuple[RuleText, ...], start: str, errors: list[PolicyError]) -> tuple[ParsedRule, ...]:
    return tuple(ParsedRule(t, n) for t, n in _parsed(texts, start, errors) if isinstance(n, RuleNode))


def parse_policy(source: PolicySource) -> PolicyTree:
    """Parse every notrack entry, every chain's rules, then the NAT rules. The
    syntax errors of all of them (up to MAX_SYNTAX_ERRORS) are raised at
    once, so that one run shows every one."""
    errors: list[PolicyError] = []
    notrack = _rules(source.conntrack.notrack, "entry", errors)
    chains = {name: _rules(section.rules, "rule", errors) for name, section in source.chains.items()}
    nat = tuple(ParsedNat(t, n) for t, n in _parsed(source.nat, "nat", errors) if isinstance(n, NatNode))
    if errors:
        raise errors[0] if len(errors) == 1 else PolicyErrors(errors)
    return PolicyTree(source, notrack, chains, nat)
