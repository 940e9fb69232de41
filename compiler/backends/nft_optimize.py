"""The optimizing nft backend: a chain's rules folded into set and map lookups.

A long run of rules that differ only in their addresses, ports, protocols
or interface names costs one comparison per rule per packet. Here rules of
one shape (the same other matches, the same keyed fields) become the
elements of one named set (one verdict) or verdict map (accept and drop),
matched by one rule: `ip saddr and 255.255.255.0 . tcp dport @input_set1
accept`, or `meta l4proto . ip saddr . th dport vmap @input_map2` where TCP
and UDP rules share it.

First-match semantics stay exact. A rule joins an earlier rule's group,
and so is evaluated at that group's place, only if it can move there: every
rule it jumps over either matches none of its packets (`nfc.space` decides
overlap) or is a plain rule with the same verdict. Rules with a meter, a
log or a counter never join a group and keep their order among themselves;
plain rules move across them only where no packet matches both. Inside a
group the earliest rule wins: an element that lies within one already
there is left out (its rule is shadowed there), and a rule whose intervals
would cut across another's starts a group of its own.

Hash lookups on masked keys are preferred: a group whose addresses all have
one prefix length and whose ports are single ports is a hash set; anything
else an interval set. Every element carries its rule's `comment
"FILE:LINE"`. Groups of fewer than MIN_MERGE rules gain nothing and are
written as rules, in policy order, exactly as `-O0` writes them (see
`nft_plan.plan`), but for runs that one rule decides as well (nft_runs):
the state rules become a verdict map, ICMP rules and long runs of TCP,
UDP and SCTP rules chains of their own. Only nft is optimized:
iptables-legacy stays linear."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import nfc.backends.nft as nft
from nfc.backends.common import rule_note
from nfc.backends.nft_groups import NAME, Element, Group, Shape
from nfc.backends.nft_plan import MIN_MERGE, plan
from nfc.backends.nft_runs import Declarations, single_rules
from nfc.ir import Chain, Family, Rule, Ruleset
from nfc.space import Space


def optimized_chain(ruleset: Ruleset, chain: Chain, space: Space | None = None) -> nft.ChainText:
    """`chain` as nft text with its worthwhile groups folded into lookups;
    `space` is the ruleset's, when the caller has it already."""
    groups = plan(chain.rules, space or Space(ruleset))
    declarations: list[list[str]] = []
    declared = Declarations(chain.name, declarations)  # the runs' chains and sets, among the lookups'
    lines: list[str] = []
    single: list[Rule] = []  # the rules written one by one since the last lookup
    for group in groups:
        if group.shape is None or len(group.members) < MIN_MERGE:
            single += [chain.rules[i] for i in group.members]
            continue
        lines += single_rules(ruleset, chain, single, declared)
        single = []
        is_map = len({chain.rules[i].verdict.kind for i in group.members}) > 1
        name = declared.lookup_name("map" if is_map else "set")
        declarations.append(_declaration(ruleset, chain.rules, group, name, is_map))
        lines.append(_lookup_rule(ruleset, chain.rules, group, name, is_map))
    lines += single_rules(ruleset, chain, single, declared)
    return nft.ChainText(declarations, lines)


def generate(ruleset: Ruleset) -> dict[str, str]:
    space = Space(ruleset)  # once: it reads every rule of the ruleset
    return {nft.RULESET: nft.render(ruleset, lambda _, chain: optimized_chain(ruleset, chain, space))}


# ---- text


TYPES = {
    "protocol": "inet_proto",
    "iifname": "ifname",
    "oifname": "ifname",
    "sport": "inet_service",
    "dport": "inet_service",
}


def _layout(group: Group) -> tuple[Shape, dict[Element, int], str]:
    """The shape and elements as written, and the ports' keyword: a group
    of one protocol writes `tcp dport` and leaves the protocol out of its
    elements; one of several looks up `meta l4proto . th dport`."""
    shape = group.shape
    assert shape is not None
    if "protocol" not in shape.fields:  # no port in the key, or one beside a named port set
        keyed_ports = "sport" in shape.fields or "dport" in shape.fields
        return shape, group.elements, (shape.sample.protocol or "") if keyed_ports else ""
    protocols = {element[0][2] for element in group.elements}
    if len(protocols) > 1:
        return shape, group.elements, "th"
    narrow = dataclasses.replace(shape, fields=shape.fields[1:], masks=shape.masks[1:])
    return narrow, {element[1:]: member for element, member in group.elements.items()}, protocols.pop()


def _key(shape: Shape, ports: str) -> tuple[str, str]:
    """The lookup's key expression and the set's type."""
    expressions, types = [], []
    family = shape.family
    for name, mask in zip(shape.fields, shape.masks, strict=True):
        if name in ("saddr", "daddr"):
            assert family is not None
            expression = f"{nft.ADDRESS_KEYWORD[family]} {name}"
            if mask is not None and mask < family.max_prefix:
                network = IPv4Network if family is Family.V4 else IPv6Network
                expression += f" and {network((0, mask)).netmask}"
            expressions.append(expression)
            types.append(nft.ADDRESS_TYPE[family])
        elif name in ("sport", "dport"):
            expressions.append(f"{ports} {name}")
            types.append(TYPES[name])
        else:
            expressions.append("meta l4proto" if name == "protocol" else name)
            types.append(TYPES[name])
    return " . ".join(expressions), " . ".join(types)


def _element_text(element: Element, shape: Shape) -> str:
    texts = []
    for name, (low, high, text) in zip(shape.fields, element, strict=True):
        if low == NAME:
            texts.append(text if name == "protocol" else f'"{text}"')
        elif name in ("sport", "dport"):
            texts.append(nft._port_range((low, high)))
        else:
            texts.append(_address_text(low, high, shape.family))
    return " . ".join(texts)


def _address_text(low: int, high: int, family: Family | None) -> str:
    """A host, a network (a masked key's network is its own address) or a range."""
    address = IPv4Address if family is Family.V4 else IPv6Address
    size = high - low + 1
    if size & (size - 1) == 0 and low % size == 0:  # a prefix
        bits = 32 if family is Family.V4 else 128
        length = bits - size.bit_length() + 1
        return str(address(low)) if length == bits else f"{address(low)}/{length}"
    return f"{address(low)}-{address(high)}"


def _declaration(ruleset: Ruleset, rules: Sequence[Rule], group: Group, name: str, is_map: bool) -> list[str]:
    shape, elements, ports = _layout(group)
    _, key_type = _key(shape, ports)
    lines = [f"{'map' if is_map else 'set'} {name} {{", f"\ttype {key_type}{' : verdict' if is_map else ''}"]
    if shape.interval:
        lines.append("\tflags interval")
    entries = []
    for element, index in elements.items():
        rule = rules[index]
        if not shape.interval:  # a hash set holds a masked address as the network's address
            element = tuple((low, low, text) for low, _, text in element)
        entry = f"{_element_text(element, shape)} {nft._comment(ruleset, rule.origin, rule_note(rule))}"
        entries.append(f"{entry} : {rule.verdict.kind}" if is_map else entry)
    lines.append("\telements = {")
    lines += [f"\t\t{entry}," for entry in entries[:-1]]
    lines += [f"\t\t{entries[-1]}", "\t}", "}"] if entries else ["\t}", "}"]
    return lines


def _lookup_rule(ruleset: Ruleset, rules: Sequence[Rule], group: Group, name: str, is_map: bool) -> str:
    shape, _, ports = _layout(group)
    implied = set()
    if shape.family is not None:  # `ip saddr` matches IPv4 packets only
        implied.add(f"meta nfproto {shape.family.value}")
    if ports:  # `tcp dport` matches TCP packets only
        implied.add(f"meta l4proto {ports}")
    context = shape.context
    parts = [part for part in nft._match(context) if part not in implied]
    key, _ = _key(shape, ports)
    first = rules[group.members[0]]
    if is_map:
        parts.append(f"{key} vmap @{name}")
    else:
        parts += [f"{key} @{name}", nft._verdict(first.verdict, context.family)]
    parts.append(nft._comment(ruleset, first.origin, f"{len(group.members)} rules in @{name}"))
    return " ".join(parts)
