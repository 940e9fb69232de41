"""NAT rules over the match space: what a rule translates once earlier
rules of its hook have taken theirs, what a translated packet looks like
to the filter, and whether a chain accepts some of a set of packets. lint
and diff share it; an index (nfc.space_index) keeps the work near-linear
in the number of rules."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property

from nfc.ir import Chain, NatHook, NatRule, RuleRole, Ruleset
from nfc.space import Cube, Space, intersect, subtract
from nfc.space_index import Index
from nfc.values import merge_ranges

NEW = frozenset({"new"})  # NAT sees a connection's first packet only


def target_text(rule: NatRule) -> str:
    """Where a NAT rule sends packets: 192.168.1.10:80, [2001:db8::10]:443, port 5353."""
    ports = None
    if rule.ports:
        low, high = rule.ports
        ports = str(low) if low == high else f"{low}-{high}"
    if rule.address is None:
        return f"port {ports}" if ports else "this host"
    address = f"[{rule.address}]" if rule.address.version == 6 and ports else str(rule.address)
    return f"{address}:{ports}" if ports else address


def translated(rule: NatRule, cube: Cube) -> list[Cube]:
    """The first packets of connections in `cube` as `rule` (dnat or
    redirect) leaves them, as the filter sees them: to the new address
    (dnat; redirect keeps the address, as `nfc explain` does) and port, with
    ct status dnat. A port outside a new range becomes the range's first
    (the kernel's choice for an unused one). Packets that already have the
    new address and port are left as they are, and the kernel does not
    mark their connections ct status dnat."""
    if rule.address is not None and (rule.address.version == 4) != (cube.family.value == "ipv4"):
        return []
    ports = ((rule.ports[0], rule.ports[1]),) if rule.ports else cube.dport
    address = ((int(rule.address), int(rule.address)),) if rule.address is not None else cube.daddr
    target = replace(cube, daddr=address, dport=ports)
    kept = cube & target
    result = [replace(kept, ct=NEW, status=frozenset({"none"}))] if kept else []
    for moved in cube - target:
        dport = moved.dport
        if rule.ports is not None:
            inside, outside = intersect(dport, ports), subtract(dport, ports)
            dport = merge_ranges([*inside, *([(rule.ports[0],) * 2] if outside else [])])
        result.append(replace(moved, dport=dport, daddr=address, ct=NEW, status=frozenset({"dnat"})))
    return result


@dataclass
class NatView:
    """Each NAT rule of one hook with the packets it translates (its match
    less what earlier rules of the hook take) and the rules that take the rest."""

    rules: list[NatRule]
    space: Space

    @cached_property
    def index(self) -> Index:
        return Index([self.space.cubes(r.match, ct=NEW) for r in self.rules])

    def effective(self) -> Iterator[tuple[NatRule, list[Cube], list[NatRule]]]:
        for number, rule in enumerate(self.rules):
            parts = self.index.first_match(self.index.rules[number], before=number)
            mine = [cube for cube, taker in parts if taker is None]
            takers = sorted({taker for _, taker in parts if taker is not None})
            yield rule, mine, [self.rules[t] for t in takers]


def nat_view(ruleset: Ruleset, space: Space, hook: NatHook) -> NatView:
    return NatView([n for n in ruleset.nat if n.hook == hook], space)


def chain_index(chain: Chain, space: Space) -> Index:
    """The chain's rules that decide connections, as an index. The
    essential ICMP accepts let through errors, which follow their
    connection's translation: no connection of their own. A `limit over`
    rule matches no sender within its limits, which these checks assume
    (as explain does)."""
    return Index([
        [] if (r.meter and r.meter.over) or r.role is RuleRole.ESSENTIAL_ICMP else space.cubes(r.match)
        for r in chain.rules
    ])  # fmt: skip


def accepted_somewhere(chain: Chain | None, index: Index | None, cubes: list[Cube]) -> bool:
    """Whether `chain` accepts any packet of `cubes` (no chain: the kernel does)."""
    if chain is None or index is None:
        return bool(cubes)
    return any(
        (chain.rules[number].verdict.kind if number is not None else chain.policy) == "accept"
        for _, number in index.first_match(cubes)
    )
