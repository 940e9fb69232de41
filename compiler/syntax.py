"""The syntax tree: what `parse` makes of a policy's rule strings.

The nodes keep the rule's words and the file position of each; meaning
(what a `$name` holds, which family a rule covers) is `lower`'s job. Both
parsers (the lark grammar and the fast path) build these nodes and finish a
rule with `assemble_rule`, so they cannot disagree on what a rule is.

Nothing changes a node once built, yet the nodes made per word are not
frozen dataclasses: those set each field through `object.__setattr__`,
which made building the tree of 100,000 rules cost a third more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nfc.errors import Loc, PolicyError
from nfc.ir import ByteUnit, ChainName, LogLevel, MeterKey, NatKind, TimeUnit, VerdictKind
from nfc.load import PolicySource
from nfc.schema import RuleText

# Turns a 1-based (line, col) inside a rule's text into its file position.
Locate = Callable[[int, int], Loc]


@dataclass(slots=True)
class PortItem:
    kind: str  # number | range | service | var
    value: str | int
    end: int | None
    loc: Loc


@dataclass(slots=True)
class AddrItem:
    kind: str  # literal | var
    text: str
    loc: Loc


@dataclass(slots=True)
class Addrs:
    items: tuple[AddrItem, ...]
    negated: bool
    loc: Loc


@dataclass(slots=True)
class IfaceItem:
    """An interface in a list: a name (`kind` "name", a final '*' included)
    or a `$name` of the `interfaces` section ("var", `text` without '$')."""

    kind: str
    text: str
    loc: Loc


# `iif`/`oif` as written: one name, or a `$name` or `{...}` list of them.
Ifnames = str | tuple[IfaceItem, ...]


@dataclass(slots=True)
class MatchNode:
    """One match clause: `kind` is family, proto, dport, sport, saddr, daddr,
    iif, oif (their value `Ifnames`), ct_state, ct_status, icmp_type or
    icmpv6_type."""

    kind: str
    value: Any
    loc: Loc


@dataclass(slots=True)
class VerdictNode:
    kind: VerdictKind
    reject_with: str | None  # None, "tcp reset" or an ICMP type name
    loc: Loc


@dataclass(slots=True)
class LimitNode:
    over: bool
    rate: int
    byte_unit: ByteUnit | None  # None for packet rates
    time_unit: TimeUnit
    burst: int | None
    burst_unit: str | None
    per: MeterKey | None
    v4_mask: int | None
    v6_mask: int | None
    size: int | None
    name: str | None
    loc: Loc


@dataclass(slots=True)
class LogNode:
    prefix: str | None
    level: LogLevel | None
    loc: Loc


@dataclass(slots=True)
class CounterClause:
    loc: Loc


@dataclass(slots=True)
class CommentClause:
    text: str
    loc: Loc  # of the quoted string


# What follows a rule's verdict, in the order written: its matches, then its clauses.
Clause = LimitNode | LogNode | CounterClause | CommentClause
RulePart = MatchNode | Clause


@dataclass(slots=True)
class RuleNode:
    verdict: VerdictNode | None  # None for a notrack entry
    matches: tuple[MatchNode, ...]
    limit: LimitNode | None
    log: LogNode | None
    counter: bool
    comment: str | None
    comment_loc: Loc | None
    loc: Loc


def assemble_rule(
    verdict: VerdictNode | None, matches: tuple[MatchNode, ...], clauses: Iterable[Clause], loc: Loc
) -> RuleNode:
    """A rule from its verdict, its matches and then its clauses. The
    grammar lets the trailing clauses come in any order, so a clause given
    twice is refused here."""
    limit = log = None
    counter = False
    comment = comment_loc = None
    seen: dict[str, Loc] = {}
    for part in clauses:
        if isinstance(part, LimitNode):
            clause, limit = "limit", part
        elif isinstance(part, LogNode):
            clause, log = "log", part
        elif isinstance(part, CounterClause):
            clause, counter = "counter", True
        else:
            clause, comment, comment_loc = "comment", part.text, part.loc
        if clause in seen:
            raise PolicyError(part.loc, f"'{clause}' is given twice (first at {seen[clause]})")
        seen[clause] = part.loc
    return RuleNode(verdict, matches, limit, log, counter, comment, comment_loc, loc)


@dataclass(slots=True)
class NatAction:
    """What a NAT rule does: `target` is the new address as written (one
    token, `ADDR[:PORTS]` or `[IPV6]:PORTS`, for snat and dnat), `port` the
    new port of redirect."""

    kind: NatKind
    target: str | None
    port: PortItem | None
    loc: Loc  # of the action's first word
    target_loc: Loc | None  # of the target or port


@dataclass(slots=True)
class NatNode:
    """A NAT rule: its action, and its matches and comment as a verdict-less rule."""

    action: NatAction
    rule: RuleNode


SyntaxNode = RuleNode | NatNode


@dataclass(slots=True)
class ParsedRule:
    """A rule or notrack entry: as written, and as parsed."""

    text: RuleText
    node: RuleNode


@dataclass(slots=True)
class ParsedNat:
    """An item of `nat:`: as written, and as parsed."""

    text: RuleText
    node: NatNode


@dataclass(frozen=True, slots=True)
class PolicyTree:
    """The parse stage's result: the loaded policy with every rule parsed."""

    source: PolicySource
    notrack: tuple[ParsedRule, ...]
    chains: dict[ChainName, tuple[ParsedRule, ...]]  # by chain name, in the order of source.chains
    nat: tuple[ParsedNat, ...] = ()
