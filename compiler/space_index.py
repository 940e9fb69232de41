"""Which rules may share packets with a set of packets, found by port or
by source network instead of by trying every rule. NAT rules come by the
thousand (a port forward each, and the forward rule each implies): checks
that compare a rule with the earlier ones must grow with the rules that
overlap it, not with the square of the rule count."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from nfc.ir import Family
from nfc.space import ADDRESS_SPACE, Cube, Intervals, minus, overlap

FEW_PORTS = 256  # a destination port set up to this size is filed under each port
FEW_NETWORKS = 8  # a source address set of up to this many networks is filed under each

Network = tuple[Family, int, int]  # family, first address, prefix length


class Index:
    """The cube lists of rules, in order, filed by destination port where a
    rule names few, else by source network where it names few, else kept
    aside as wide (tried for every query)."""

    def __init__(self, rules: Sequence[list[Cube]]) -> None:
        self.rules = rules
        self.by_port: dict[tuple[Family, int], set[int]] = {}
        self.inside: dict[Network, set[int]] = {}  # filed at each network that holds one of theirs
        self.at: dict[Network, set[int]] = {}  # filed at their own networks
        self.port_filed: set[int] = set()
        self.network_filed: set[int] = set()
        self.wide: set[int] = set()
        for number, cubes in enumerate(rules):
            if (ports := _ports(cubes)) is not None:
                self.port_filed.add(number)
                for port in ports:
                    self.by_port.setdefault(port, set()).add(number)
            elif (networks := _networks(cubes)) is not None:
                self.network_filed.add(number)
                for network in networks:
                    self.at.setdefault(network, set()).add(number)
                    for outer in _outer(network):
                        self.inside.setdefault(outer, set()).add(number)
            else:
                self.wide.add(number)

    def candidates(self, cubes: list[Cube], before: int | None = None) -> list[int]:
        """The rules (numbers, in order, only those before `before`) that may
        share packets with `cubes`: a superset of those that do."""
        found = set(self.wide)
        ports = _ports(cubes)
        if ports is None:
            found |= self.port_filed
        else:
            found.update(n for port in ports for n in self.by_port.get(port, ()))
        networks = _networks(cubes)
        if networks is None:
            found |= self.network_filed
        else:
            for network in networks:
                found |= self.inside.get(network, set())
                found.update(n for outer in _outer(network) for n in self.at.get(outer, ()))
        return sorted(n for n in found if before is None or n < before)

    def first_match(self, cubes: list[Cube], before: int | None = None) -> list[tuple[Cube, int | None]]:
        """`cubes` split by the first rule that matches each part (None: none does)."""
        parts: list[tuple[Cube, int | None]] = []
        remaining = cubes
        for number in self.candidates(cubes, before):
            if not remaining:
                break
            theirs = self.rules[number]
            parts += [(cube, number) for cube in overlap(remaining, theirs)]
            remaining = minus(remaining, theirs)
        return parts + [(cube, None) for cube in remaining]

    def decided(self, number: int) -> list[Cube]:
        """The packets rule `number` decides: its own, less what earlier rules take."""
        return [cube for cube, taker in self.first_match(self.rules[number], before=number) if taker is None]


def _ports(cubes: list[Cube]) -> set[tuple[Family, int]] | None:
    """The destination ports of `cubes`, when few."""
    ports: set[tuple[Family, int]] = set()
    for cube in cubes:
        if sum(high - low + 1 for low, high in cube.dport) > FEW_PORTS:
            return None
        ports.update((cube.family, port) for low, high in cube.dport for port in range(low, high + 1))
    return ports


def _networks(cubes: list[Cube]) -> set[Network] | None:
    """The source networks of `cubes`, when few and not everything."""
    networks: set[Network] = set()
    for cube in cubes:
        if cube.saddr == ADDRESS_SPACE[cube.family] or len(cube.saddr) > FEW_NETWORKS:
            return None
        networks.update(_summary(cube.saddr, cube.family))
        if len(networks) > FEW_NETWORKS:
            return None
    return networks


def _summary(intervals: Intervals, family: Family) -> list[Network]:
    make = ipaddress.IPv4Address if family is Family.V4 else ipaddress.IPv6Address
    return [
        (family, int(network.network_address), network.prefixlen)
        for low, high in intervals
        for network in ipaddress.summarize_address_range(make(low), make(high))
    ]


def _outer(network: Network) -> list[Network]:
    """The networks that hold `network`, itself included."""
    family, first, length = network
    bits = family.max_prefix
    return [(family, first >> (bits - p) << (bits - p) if p else 0, p) for p in range(length + 1)]
