"""lark's parse tree of a rule → the syntax tree (`nfc.syntax`), with
every position turned into a file location. The fast path
(`fastparse`) builds the same nodes without lark."""

from __future__ import annotations

from typing import Any

from lark import Token, Transformer, v_args

from nfc.errors import Loc
from nfc.syntax import (
    AddrItem,
    Addrs,
    CommentClause,
    CounterClause,
    IfaceItem,
    LimitNode,
    Locate,
    LogNode,
    MatchNode,
    NatAction,
    NatNode,
    PortItem,
    RuleNode,
    RulePart,
    VerdictNode,
    assemble_rule,
)


class ToSyntax(Transformer[Token, Any]):
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

    # NAT actions
    @v_args(meta=True)
    def masquerade(self, meta: Any, _: list[Any]) -> NatAction:
        return NatAction("masquerade", None, None, self._loc(meta), None)

    @v_args(meta=True)
    def snat(self, meta: Any, children: list[Any]) -> NatAction:
        return NatAction("snat", str(children[0]), None, self._loc(meta), self._loc(children[0]))

    @v_args(meta=True)
    def dnat(self, meta: Any, children: list[Any]) -> NatAction:
        return NatAction("dnat", str(children[0]), None, self._loc(meta), self._loc(children[0]))

    @v_args(meta=True)
    def redirect(self, meta: Any, children: list[Any]) -> NatAction:
        port: PortItem = children[0]
        return NatAction("redirect", None, port, self._loc(meta), port.loc)

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
    def ct_status(self, meta: Any, children: list[Any]) -> MatchNode:
        return self._names("ct_status", meta, children)

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

    def ifname_var(self, children: list[Any]) -> tuple[IfaceItem, ...]:
        return (IfaceItem("var", str(children[0])[1:], self._loc(children[0])),)

    def ifname_set(self, children: list[Any]) -> tuple[IfaceItem, ...]:
        return tuple(children)

    def ifitem(self, children: list[Any]) -> IfaceItem:
        token = children[0]
        text, loc = str(token), self._loc(token)
        if token.type == "VAR":
            return IfaceItem("var", text[1:], loc)
        return IfaceItem("name", text[1:-1] if token.type == "STRING" else text, loc)

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
        return _rule(children[0], children[1:], self._loc(meta))

    @v_args(meta=True)
    def entry(self, meta: Any, children: list[Any]) -> RuleNode:
        return _rule(None, children, self._loc(meta))

    @v_args(meta=True)
    def nat(self, meta: Any, children: list[Any]) -> NatNode:
        return NatNode(children[0], _rule(None, children[1:], self._loc(meta)))


def _rule(verdict: VerdictNode | None, parts: list[RulePart], loc: Loc) -> RuleNode:
    """A rule from its parts as the grammar gives them: its matches, then its clauses."""
    matches = tuple(part for part in parts if isinstance(part, MatchNode))
    return assemble_rule(verdict, matches, [part for part in parts if not isinstance(part, MatchNode)], loc)
