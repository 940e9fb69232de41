"""Checking one rule: its matches (names resolved, values in range, one
protocol, families that agree), its verdict, comment and log prefix. The
result is IR `Match`es, one per family where the rule needs a split."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import cast

from nfc import vocab
from nfc.defines import Defines
from nfc.errors import Loc, PolicyError, did_you_mean, printable
from nfc.ir import (
    BOTH_FAMILIES,
    Addresses,
    CtState,
    CtStatus,
    Family,
    Interfaces,
    Log,
    Match,
    NatKind,
    Network,
    Ports,
    RejectWith,
    Verdict,
)
from nfc.objects import NamedObjects
from nfc.schema import COMMENT_MAX, RuleText, check_text
from nfc.syntax import Addrs, IfaceItem, LogNode, MatchNode, PortItem, RuleNode
from nfc.values import (
    AddressValue,
    PortValue,
    check_interface_name,
    check_port,
    collapse,
    merge_ranges,
    parse_network,
    port_range,
    service_port,
)

LOG_PREFIX_MAX = 64
# The hook where each kind of NAT acts, and the interface match it cannot have:
# prerouting comes before routing picks the output interface, and
# postrouting in iptables' nat table knows no input interface.
NAT_HOOK_WITHOUT = {"dnat": "oif", "redirect": "oif", "masquerade": "iif", "snat": "iif"}


# The families a rule may still cover, by (IPv4 admitted, IPv6 admitted):
# shared frozensets, so that no rule builds sets of its own.
FAMILY_SETS = {
    (v4, v6): frozenset(f for f, admitted in zip(BOTH_FAMILIES, (v4, v6), strict=True) if admitted)
    for v4 in (False, True)
    for v6 in (False, True)
}
V4_ONLY, V6_ONLY, ANY_FAMILY = FAMILY_SETS[True, False], FAMILY_SETS[False, True], FAMILY_SETS[True, True]


@dataclass(slots=True)
class RuleParts:
    """The matches of one rule, checked and resolved, before family split."""

    families: frozenset[Family] = ANY_FAMILY
    protocol: str | None = None
    sport: Ports | None = None
    dport: Ports | None = None
    saddr: tuple[AddressValue, bool, str | None] | None = None
    daddr: tuple[AddressValue, bool, str | None] | None = None
    iifname: Interfaces | None = None
    oifname: Interfaces | None = None
    ct_state: tuple[CtState, ...] = ()
    icmp_types: tuple[str, ...] = ()
    ct_status: tuple[CtStatus, ...] = ()


def _describe_families(families: Iterable[Family]) -> str:
    return (
        " and ".join("IPv4" if f is Family.V4 else "IPv6" for f in sorted(families, key=lambda f: f.value))
        or "no family"
    )


class RuleChecker:
    """Checks one parsed rule's matches and turns them into IR matches, one
    per family it covers. `chain` is None for a notrack entry and for a NAT
    rule, which names its `nat` kind."""

    def __init__(
        self,
        defines: Defines,
        objects: NamedObjects,
        node: RuleNode,
        chain: str | None,
        nat: NatKind | None = None,
    ) -> None:
        self.defines = defines
        self.objects = objects
        self.node = node
        self.chain = chain
        self.nat = nat
        self.parts = RuleParts()

    @property
    def notrack(self) -> bool:
        return self.chain is None and self.nat is None

    def restrict(self, families: frozenset[Family], why: str, loc: Loc) -> None:
        remaining = self.parts.families & families
        if not remaining:
            raise PolicyError(
                loc,
                f"this rule can match no packet: {why} is {_describe_families(families)}-only, "
                f"but the rest of the rule is {_describe_families(self.parts.families)}-only",
            )
        self.parts.families = remaining

    def check_matches(self) -> RuleParts:
        seen: dict[str, Loc] = {}
        for match in self.node.matches:
            kind = match.kind
            key = "icmp_type" if kind == "icmpv6_type" else kind
            if key in seen:
                raise PolicyError(match.loc, f"'{_match_word(match)}' is given twice (first at {seen[key]})")
            seen[key] = match.loc
            MATCHERS[kind](self, match)
        parts = self.parts
        if parts.protocol not in vocab.PORT_PROTOCOLS:
            for kind in ("sport", "dport"):
                if kind in seen:
                    raise PolicyError(
                        seen[kind],
                        f"'{kind}' needs a protocol with ports",
                        "add tcp, udp or sctp before it",
                    )
        return parts

    def _match_family(self, match: MatchNode) -> None:
        self.restrict(V4_ONLY if match.value == "ip" else V6_ONLY, f"'{match.value}'", match.loc)

    def _match_proto(self, match: MatchNode) -> None:
        value = match.value
        if isinstance(value, int):
            if not 0 <= value <= 255:
                raise PolicyError(match.loc, f"protocol number {value} is out of range (0-255)")
            names = {number: name for name, number in vocab.PROTOCOLS.items()}
            value = names.get(value, str(value))
        elif value not in vocab.PROTOCOLS:
            raise PolicyError(
                match.loc,
                f"unknown protocol '{printable(value)}'",
                vocab.foreign_word_hint(value) or did_you_mean(value, tuple(vocab.PROTOCOLS)),
            )
        if self.parts.protocol is not None and self.parts.protocol != value:
            raise PolicyError(
                match.loc, f"a rule has one protocol; this one already has '{self.parts.protocol}'"
            )
        self.parts.protocol = value
        if value == "icmp":
            self.restrict(V4_ONLY, "'icmp'", match.loc)
        elif value == "icmpv6":
            self.restrict(V6_ONLY, "'icmpv6'", match.loc)

    def _ports(self, match: MatchNode) -> Ports:
        ranges: list[tuple[int, int]] = []
        set_name = None
        items: tuple[PortItem, ...] = match.value
        if len(items) == 1 and (first := items[0]).kind == "number":  # most rules: one port
            port = check_port(int(first.value), first.loc)
            return Ports(((port, port),))
        for item in items:
            if item.kind == "number":
                ranges.append((check_port(int(item.value), item.loc),) * 2)
            elif item.kind == "range":
                ranges.append(port_range(int(item.value), int(item.end or 0), item.loc))
            elif item.kind == "service":
                ranges.append((service_port(str(item.value), item.loc),) * 2)
            else:
                value = self.defines.value(str(item.value), item.loc)
                if not isinstance(value, PortValue):
                    raise PolicyError(item.loc, f"'${item.value}' holds addresses, not ports")
                ranges.extend(value.ranges)
                if len(items) == 1 and len(value.ranges) > 1:
                    set_name = self.objects.port_set(str(item.value), value)
        return Ports(tuple(ranges) if len(ranges) == 1 else merge_ranges(ranges), set_name)

    def _match_dport(self, match: MatchNode) -> None:
        self.parts.dport = self._ports(match)

    def _match_sport(self, match: MatchNode) -> None:
        self.parts.sport = self._ports(match)

    def _addresses(self, match: MatchNode, what: str) -> tuple[AddressValue, bool, str | None]:
        addrs: Addrs = match.value
        items = addrs.items
        if len(items) == 1 and items[0].kind == "literal":  # most rules: one network, nothing to collapse
            network = parse_network(items[0].text, items[0].loc)
            v4 = isinstance(network, IPv4Network)
            self.restrict(V4_ONLY if v4 else V6_ONLY, what, addrs.loc)
            single = AddressValue((network,), ()) if v4 else AddressValue((), (network,))
            return single, addrs.negated, None
        networks: list[Network] = []
        set_name = None
        for item in items:
            if item.kind == "literal":
                networks.append(parse_network(item.text, item.loc))
            elif len(items) == 1 and item.text in self.defines.sets:
                return AddressValue((), (), runtime=True), addrs.negated, item.text
            else:
                value = self.defines.value(item.text, item.loc)
                if not isinstance(value, AddressValue):
                    raise PolicyError(item.loc, f"'${item.text}' holds ports, not addresses")
                if len(items) == 1:
                    set_name = item.text
                else:
                    networks.extend(value.v4 + value.v6)
        if set_name is not None:
            # a define's value is collapsed already: a long list is not collapsed twice
            value = self.defines.value(set_name, items[0].loc)
            assert isinstance(value, AddressValue)
        elif len(networks) == 1:  # nothing to collapse, one family to find
            value = (
                AddressValue(tuple(networks), ())
                if isinstance(networks[0], IPv4Network)
                else AddressValue((), tuple(networks))
            )
        else:
            value = AddressValue(
                collapse(n for n in networks if isinstance(n, IPv4Network)),
                collapse(n for n in networks if not isinstance(n, IPv4Network)),
            )
        self.restrict(FAMILY_SETS[bool(value.v4), bool(value.v6)], what, addrs.loc)
        return value, addrs.negated, set_name

    def _match_saddr(self, match: MatchNode) -> None:
        self.parts.saddr = self._addresses(match, "the 'from' address list")

    def _match_daddr(self, match: MatchNode) -> None:
        self.parts.daddr = self._addresses(match, "the 'to' address list")

    def _interface(self, match: MatchNode, word: str, chain_without: str) -> Interfaces:
        if self.chain == chain_without:
            raise PolicyError(match.loc, f"'{word}' can match nothing in the {chain_without} chain")
        if self.nat is not None and NAT_HOOK_WITHOUT[self.nat] == word:
            hook = "prerouting, before routing picks the output interface" if word == "oif" else "postrouting"
            raise PolicyError(
                match.loc,
                f"'{word}' can match nothing in a {self.nat} rule: {self.nat} acts in {hook}",
                "use 'iif' (where the packet comes in)" if word == "oif" else "use 'oif' or 'from'",
            )
        if isinstance(match.value, str):
            return Interfaces((check_interface_name(match.value, match.loc),))
        items: tuple[IfaceItem, ...] = match.value
        names: list[str] = []
        for item in items:
            if item.kind == "var":
                listed = self.defines.interfaces(item.text, item.loc).names
            else:
                listed = (check_interface_name(item.text, item.loc),)
            for name in listed:
                if name not in names:  # merged in the order written, each name once
                    names.append(name)
        set_name = items[0].text if len(items) == 1 and items[0].kind == "var" else None
        return Interfaces(tuple(names), set_name)

    def _match_iif(self, match: MatchNode) -> None:
        self.parts.iifname = self._interface(match, "iif", "output")

    def _match_oif(self, match: MatchNode) -> None:
        if self.notrack:
            raise PolicyError(
                match.loc,
                "a notrack entry is written as the packet arrives: use 'iif'",
                "the output direction gets the mirrored 'oif' automatically",
            )
        self.parts.oifname = self._interface(match, "oif", "input")

    def _names(self, match: MatchNode, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
        names: list[str] = []
        for name, loc in match.value:
            if name not in allowed:
                raise PolicyError(loc, f"unknown {what} '{printable(name)}'", did_you_mean(name, allowed))
            if name not in names:
                names.append(name)
        return tuple(names)

    def _refuse_ct(self, match: MatchNode, word: str) -> None:
        if self.notrack:
            raise PolicyError(match.loc, f"a notrack entry cannot match '{word}': it runs before conntrack")
        if self.nat is not None:
            raise PolicyError(
                match.loc,
                f"a NAT rule cannot match '{word}': it sees only the first packet of each connection",
            )

    def _match_ct_state(self, match: MatchNode) -> None:
        self._refuse_ct(match, "ct state")
        # `_names` admits only vocab.CT_STATES, the words of the IR's CtState
        self.parts.ct_state = cast(
            tuple[CtState, ...], self._names(match, vocab.CT_STATES, "connection state")
        )

    def _match_ct_status(self, match: MatchNode) -> None:
        self._refuse_ct(match, "ct status")
        # `_names` admits only vocab.CT_STATUSES, the words of the IR's CtStatus
        self.parts.ct_status = cast(
            tuple[CtStatus, ...], self._names(match, vocab.CT_STATUSES, "connection status")
        )

    def _icmp_types(self, match: MatchNode, protocol: str, types: tuple[str, ...]) -> None:
        if self.notrack:
            raise PolicyError(
                match.loc, "a notrack entry cannot match ICMP types", f"untrack all of '{protocol}' instead"
            )
        self._match_proto(MatchNode("proto", protocol, match.loc))
        self.parts.icmp_types = self._names(match, types, f"{protocol} type")

    def _match_icmp_type(self, match: MatchNode) -> None:
        self._icmp_types(match, "icmp", tuple(vocab.ICMP_TYPES))

    def _match_icmpv6_type(self, match: MatchNode) -> None:
        self._icmp_types(match, "icmpv6", tuple(vocab.ICMPV6_TYPES))

    def matches(self, parts: RuleParts, families: Collection[Family]) -> list[Match]:
        """IR matches, one per family, or one for both when nothing needs a split."""
        needs_split = parts.saddr is not None or parts.daddr is not None
        if not needs_split and len(parts.families) == len(BOTH_FAMILIES):  # both: an enum's hash is slow
            return [self.match_for(parts, None)]
        if len(families) == 1:  # the one family, found without that hash
            return [self.match_for(parts, next(iter(families)))]
        return [self.match_for(parts, f) for f in BOTH_FAMILIES if f in families]

    def match_for(self, parts: RuleParts, family: Family | None) -> Match:
        only = family or (next(iter(parts.families)) if len(parts.families) == 1 else None)
        saddr = daddr = None
        if family is not None:
            if parts.saddr is not None:
                saddr = self._ir_addresses(parts.saddr, family)
            if parts.daddr is not None:
                daddr = self._ir_addresses(parts.daddr, family)
        return Match.of(
            family=only,
            protocol=parts.protocol,
            sport=parts.sport,
            dport=parts.dport,
            saddr=saddr,
            daddr=daddr,
            iifname=parts.iifname,
            oifname=parts.oifname,
            ct_state=parts.ct_state,
            icmp_types=parts.icmp_types,
            ct_status=parts.ct_status,
        )

    def _ir_addresses(self, spec: tuple[AddressValue, bool, str | None], family: Family) -> Addresses:
        value, negated, define = spec
        if value.runtime:
            return Addresses(family, (), negated, f"{define}_{family.suffix}", runtime=True)
        networks = value.v4 if family is Family.V4 else value.v6
        set_name = self.objects.address_set(define, family, networks) if define else None
        return Addresses(family, networks, negated, set_name)


# Each kind of match node's check, by its `kind`.
MATCHERS: dict[str, Callable[[RuleChecker, MatchNode], None]] = {
    "family": RuleChecker._match_family,
    "proto": RuleChecker._match_proto,
    "dport": RuleChecker._match_dport,
    "sport": RuleChecker._match_sport,
    "saddr": RuleChecker._match_saddr,
    "daddr": RuleChecker._match_daddr,
    "iif": RuleChecker._match_iif,
    "oif": RuleChecker._match_oif,
    "ct_state": RuleChecker._match_ct_state,
    "ct_status": RuleChecker._match_ct_status,
    "icmp_type": RuleChecker._match_icmp_type,
    "icmpv6_type": RuleChecker._match_icmpv6_type,
}


def _match_word(match: MatchNode) -> str:
    return {
        "saddr": "from",
        "daddr": "to",
        "proto": "protocol",
        "family": "ip/ip6",
        "icmp_type": "icmp type",
        "icmpv6_type": "icmp type",
        "ct_state": "ct state",
        "ct_status": "ct status",
    }.get(match.kind, match.kind)


def check_verdict(node: RuleNode, parts: RuleParts) -> Verdict:
    """The rule's verdict, where its reject type fits the rule's protocol and families."""
    verdict = node.verdict
    assert verdict is not None
    if verdict.reject_with == "tcp reset":
        if parts.protocol != "tcp":
            raise PolicyError(verdict.loc, "'reject with tcp reset' needs 'tcp' in the rule")
    elif verdict.reject_with is not None:
        kind = verdict.reject_with
        if kind not in vocab.REJECT_ICMP_TYPES:
            raise PolicyError(
                verdict.loc,
                f"unknown reject type '{printable(kind)}'",
                did_you_mean(kind, tuple(vocab.REJECT_ICMP_TYPES)),
            )
        if vocab.REJECT_ICMP_TYPES[kind] is None and Family.V6 in parts.families:
            raise PolicyError(
                verdict.loc, f"'{kind}' has no ICMPv6 counterpart", "add 'ip' to limit the rule to IPv4"
            )
    # checked above: None, 'tcp reset' or a key of vocab.REJECT_ICMP_TYPES
    # (The type as a string: `RejectWith | None` would build a Union on every call.)
    return _verdict(verdict.kind, cast("RejectWith | None", verdict.reject_with))


# A handful of distinct verdicts serve every rule: one object each.
_verdict = functools.cache(Verdict)


def check_comment(text: RuleText, node: RuleNode) -> str | None:
    """The comment written in the rule or as `comment:`, not both."""
    if text.comment is not None and node.comment is not None:
        raise PolicyError(node.comment_loc or text.loc, "comment given both in the rule and as 'comment:'")
    if node.comment is not None:
        return check_text(node.comment, node.comment_loc or text.loc, "comment", COMMENT_MAX)
    return text.comment


def check_log(node: LogNode | None) -> Log | None:
    """The rule's log clause, with a prefix that fits in a quoted string."""
    if node is None:
        return None
    if node.prefix is not None:
        check_text(node.prefix, node.loc, "log prefix", LOG_PREFIX_MAX)
    return Log(node.prefix, node.level)
