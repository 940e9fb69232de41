"""The match space: sets of packets as unions of cubes, one interval or
finite set per dimension. lint and diff reason over it, so two rules are
compared by the packets they match, never by their text."""

from __future__ import annotations

import functools
import ipaddress
import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from nfc import vocab
from nfc.ir import Addresses, CtStatus, Family, Interfaces, Match, Ports, Ruleset

OTHER = "*other*"  # every value of a finite dimension that no rule names
# conntrack's translation records as atoms: each combination of the flags is
# one value, so "ct status dnat" is the atoms that hold dnat.
STATUS_FLAGS: tuple[CtStatus, ...] = ("dnat", "snat")
UNTRANSLATED = "none"
STATUSES = frozenset({UNTRANSLATED, "dnat", "snat", "dnat+snat"})
Intervals = tuple[tuple[int, int], ...]
PORT_SPACE: Intervals = ((0, 65535),)
ADDRESS_SPACE = {Family.V4: ((0, 2**32 - 1),), Family.V6: ((0, 2**128 - 1),)}


ABOVE = 1 << 129  # above every port and address
SHORT = 8  # lists this long together are walked side by side: bisection pays only for longer ones


def _span(intervals: Intervals, low: int, high: int) -> tuple[int, int]:
    """The indices [first, last) of the sorted, disjoint `intervals` that
    share values with [low, high], found by bisection: the set of a broad
    rule less a thousand narrow ones is a thousand ranges, and walking
    them for every rule is quadratic."""
    first = bisect_left(intervals, (low, low))
    if first and intervals[first - 1][1] >= low:
        first -= 1
    return first, bisect_right(intervals, (high, ABOVE), first)


def _walked_intersect(a: Intervals, b: Intervals) -> Intervals:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        low, high = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if low <= high:
            out.append((low, high))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def intersect(a: Intervals, b: Intervals) -> Intervals:
    if len(a) == 1 and len(b) == 1:  # most are one range: the analysis of a large policy does millions
        low, high = max(a[0][0], b[0][0]), min(a[0][1], b[0][1])
        return ((low, high),) if low <= high else ()
    if len(a) + len(b) <= SHORT:
        return _walked_intersect(a, b)
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    out = []
    for low, high in short:
        first, last = _span(long, low, high)
        out += [(max(low, other_low), min(high, other_high)) for other_low, other_high in long[first:last]]
    return tuple(out)


def meet(a: Intervals, b: Intervals) -> bool:
    """Whether `a` and `b` share a value: `intersect` without building it."""
    if len(a) == 1 and len(b) == 1:
        return a[0][0] <= b[0][1] and b[0][0] <= a[0][1]
    if len(a) + len(b) <= SHORT:
        i = j = 0
        while i < len(a) and j < len(b):
            if a[i][0] <= b[j][1] and b[j][0] <= a[i][1]:
                return True
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return False
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return any(first < last for first, last in (_span(long, low, high) for low, high in short))


def subtract(a: Intervals, b: Intervals) -> Intervals:
    if len(b) < len(a):  # cut each of b out of a, keeping the rest of a as it is
        for low, high in b:
            first, last = _span(a, low, high)
            if first == last:
                continue
            ends: Intervals = ((a[first][0], low - 1),) if a[first][0] < low else ()
            if a[last - 1][1] > high:
                ends += ((high + 1, a[last - 1][1]),)
            a = a[:first] + ends + a[last:]
        return a
    out = []
    for low, high in a:
        first, last = _span(b, low, high)
        start = low
        for b_low, b_high in b[first:last]:
            if b_low > start:
                out.append((start, b_low - 1))
            start = b_high + 1
        if start <= high:
            out.append((start, high))
    return tuple(out)


@dataclass(frozen=True)
class Cube:
    """Packets of one family whose every field lies in its dimension's set."""

    family: Family
    protocol: frozenset[str]
    sport: Intervals
    dport: Intervals
    saddr: Intervals
    daddr: Intervals
    iif: frozenset[str]
    oif: frozenset[str]
    ct: frozenset[str]
    icmp: frozenset[str]
    status: frozenset[str]

    INTERVALS = ("sport", "dport", "saddr", "daddr")
    FINITE = ("protocol", "iif", "oif", "ct", "icmp", "status")

    def dims(self) -> dict[str, Any]:  # Intervals or frozenset[str], by dimension
        return {name: getattr(self, name) for name in (*self.INTERVALS, *self.FINITE)}

    def meets(self, other: Cube) -> bool:
        """Whether the cubes share a packet: most pairs differ early, in a
        protocol or a port, so this is far cheaper than `&`. Called millions
        of times on a large policy: one range against one is compared here."""
        if self.family is not other.family or self.protocol.isdisjoint(other.protocol):
            return False
        for mine, theirs in (
            (self.dport, other.dport),
            (self.saddr, other.saddr),
            (self.daddr, other.daddr),
            (self.sport, other.sport),
        ):
            if mine is theirs:
                continue
            if len(mine) == 1 and len(theirs) == 1:
                if mine[0][0] > theirs[0][1] or theirs[0][0] > mine[0][1]:
                    return False
            elif not meet(mine, theirs):
                return False
        return not (
            self.iif.isdisjoint(other.iif)
            or self.oif.isdisjoint(other.oif)
            or self.ct.isdisjoint(other.ct)
            or self.icmp.isdisjoint(other.icmp)
            or self.status.isdisjoint(other.status)
        )

    def within(self, other: Cube) -> bool:
        """Whether every packet of this cube is in `other`."""
        return (
            self.family is other.family
            and all(not subtract(getattr(self, n), getattr(other, n)) for n in self.INTERVALS)
            and all(getattr(self, n) <= getattr(other, n) for n in self.FINITE)
        )

    def __and__(self, other: Cube) -> Cube | None:
        if not self.meets(other):
            return None  # else every dimension of the intersection holds something
        mine, theirs = self.__dict__, other.__dict__
        fields: dict[str, Any] = {"family": self.family}
        for name in self.INTERVALS:
            fields[name] = intersect(mine[name], theirs[name])
        for name in self.FINITE:
            fields[name] = mine[name] & theirs[name]
        return _cube(fields)

    def __sub__(self, other: Cube) -> list[Cube]:
        if not self.meets(other):
            return [self]
        pieces = []
        current = dict(self.__dict__)
        theirs = other.__dict__
        for name in self.INTERVALS:
            value = current[name]
            outside, current[name] = subtract(value, theirs[name]), intersect(value, theirs[name])
            if outside:
                pieces.append(_cube({**current, name: outside}))
        for name in self.FINITE:
            value = current[name]
            outside, current[name] = value - theirs[name], value & theirs[name]
            if outside:
                pieces.append(_cube({**current, name: outside}))
        return pieces


def _cube(fields: dict[str, Any]) -> Cube:
    """A Cube of `fields` (every field, none empty), built without the
    frozen dataclass's __init__: its checked assignment of each field was
    half the cost of lint on a large policy, which builds millions."""
    cube = object.__new__(Cube)
    cube.__dict__.update(fields)
    return cube


def minus(cubes: Iterable[Cube], others: Iterable[Cube]) -> list[Cube]:
    remaining = list(cubes)
    for other in others:
        remaining = [piece for cube in remaining for piece in cube - other]
        if not remaining:
            break
    return remaining


def cut(mine: Cube, theirs: Cube) -> tuple[Cube, list[Cube]]:
    """`mine & theirs` and `mine - theirs` (the same cubes, in the same
    order) of cubes that meet, in one pass: what the two share is what is
    left after the last piece is cut off. Most dimensions of the pair are
    one range each, or one held in the other."""
    current = dict(mine.__dict__)
    other = theirs.__dict__
    pieces = []
    for name in Cube.INTERVALS:
        value, edge = current[name], other[name]
        if value is edge:
            continue
        if len(value) == 1 and len(edge) == 1:
            (low, high), (edge_low, edge_high) = value[0], edge[0]
            if edge_low <= low and high <= edge_high:
                continue
            outside: Intervals = ((low, edge_low - 1),) if edge_low > low else ()
            if edge_high < high:
                outside += ((edge_high + 1, high),)
            inside: Intervals = ((max(low, edge_low), min(high, edge_high)),)
        else:
            outside, inside = subtract(value, edge), intersect(value, edge)
        if outside:
            pieces.append(_cube({**current, name: outside}))
        current[name] = inside
    for name in Cube.FINITE:
        value, edge = current[name], other[name]
        if value <= edge:
            continue
        pieces.append(_cube({**current, name: value - edge}))
        current[name] = value & edge
    return _cube(current), pieces


def split(cubes: Sequence[Cube], others: Sequence[Cube]) -> tuple[list[Cube], list[Cube]]:
    """`overlap(cubes, others)` and `minus(cubes, others)`, the same cubes in
    the same order, in one pass: most cubes meet none of `others`, and are
    found so once instead of twice."""
    inside: list[Cube] = []
    outside: list[Cube] = []
    for cube in cubes:
        met = [other for other in others if cube.meets(other)]
        if not met:
            outside.append(cube)
            continue
        both, left = cut(cube, met[0])
        inside.append(both)
        for other in met[1:]:  # a piece meets only what its cube meets
            inside.append(cut(cube, other)[0])
            left = [piece for each in left for piece in each - other]
        outside += left
    return inside, outside


def overlap(cubes: Sequence[Cube], others: Sequence[Cube]) -> list[Cube]:
    return [both for a in cubes for b in others if a.meets(b) and (both := a & b) is not None]


class Space:
    """The finite dimensions' universes, from every ruleset compared."""

    def __init__(self, *rulesets: Ruleset) -> None:
        matches = [m for r in rulesets for m in _matches(r)]
        self.protocols = frozenset({*vocab.PORT_PROTOCOLS, "icmp", "icmpv6", OTHER} | {
            m.protocol for m in matches if m.protocol
        })  # fmt: skip
        # Every name and wildcard written anywhere is an atom; OTHER the names none admits.
        self.interfaces = frozenset(
            {OTHER} | {n for m in matches for i in (m.iifname, m.oifname) if i is not None for n in i.names}
        )
        self.icmp_types = frozenset({OTHER} | set(vocab.ICMP_TYPES) | set(vocab.ICMPV6_TYPES))
        self.ct_states = frozenset(vocab.CT_STATES)

    def interfaces_of(self, interfaces: Interfaces | None) -> frozenset[str]:
        """The atoms `interfaces` admits. A wildcard atom ('veth*') stands for
        the names it covers that no other atom names, so a pattern admits it
        only when the pattern covers the wildcard itself: 'veth*' admits
        'vethx*' and 'veth0', not 've*'."""
        if interfaces is None:
            return self.interfaces
        return frozenset(
            atom for atom in self.interfaces if any(_covers(pattern, atom) for pattern in interfaces.names)
        )

    def cubes(
        self, match: Match, ct: Iterable[str] | None = None, status: frozenset[str] | None = None
    ) -> list[Cube]:
        """The packets `match` matches, as cubes (one or two families)."""
        families = [match.family] if match.family else [Family.V4, Family.V6]
        protocol = frozenset({match.protocol}) if match.protocol else self.protocols
        sport, dport = _ports(match.sport), _ports(match.dport)
        iif, oif = self.interfaces_of(match.iifname), self.interfaces_of(match.oifname)
        states = frozenset(ct if ct is not None else (match.ct_state or self.ct_states))
        icmp = frozenset(match.icmp_types) if match.icmp_types else self.icmp_types
        statuses = status_of(match.ct_status) if status is None else status
        result = []
        for family in families:
            saddr = _addresses(match.saddr, family)
            daddr = _addresses(match.daddr, family)
            if saddr is None or daddr is None:
                continue
            fields = {
                "family": family, "protocol": protocol, "sport": sport, "dport": dport, "saddr": saddr,
                "daddr": daddr, "iif": iif, "oif": oif, "ct": states, "icmp": icmp, "status": statuses,
            }  # fmt: skip
            if all(fields.values()):  # a family is never empty, so this is "no dimension is empty"
                result.append(_cube(fields))
        return result


def _covers(pattern: str, atom: str) -> bool:
    """Whether every name `atom` stands for matches `pattern` (either may be a wildcard)."""
    if not pattern.endswith("*"):
        return atom == pattern
    return pattern == "*" if atom == OTHER else atom.startswith(pattern[:-1])


@functools.cache
def status_of(required: tuple[CtStatus, ...]) -> frozenset[str]:
    """The status atoms in which every flag of `required` is set."""
    return frozenset(atom for atom in STATUSES if all(flag in atom.split("+") for flag in required))


def _matches(ruleset: Ruleset) -> list[Match]:
    return (
        [r.match for c in ruleset.chains for r in c.rules]
        + [n.match for n in ruleset.notrack]
        + [n.match for n in ruleset.nat]
    )


def _ports(ports: Ports | None) -> Intervals:
    return PORT_SPACE if ports is None else ports.ranges


def _addresses(addresses: Addresses | None, family: Family) -> Intervals | None:
    """The address intervals of `family`, or None where the family cannot match."""
    if addresses is None:
        return ADDRESS_SPACE[family]
    if addresses.family is not family:
        return None
    if addresses.runtime:
        return ADDRESS_SPACE[family]  # any address may be in the set: as far as order goes, it takes them all
    bits = family.max_prefix  # not `broadcast_address`: it makes and keeps two objects per network
    spans = [(low := int(n.network_address), low | (1 << bits - n.prefixlen) - 1) for n in addresses.networks]
    ranges = tuple(sorted(spans))
    return subtract(ADDRESS_SPACE[family], ranges) if addresses.negated else ranges


# The ICMP protocol of each family and the names of its types.
ICMP_OF = {
    Family.V4: ("icmp", frozenset(vocab.ICMP_TYPES)),
    Family.V6: ("icmpv6", frozenset(vocab.ICMPV6_TYPES)),
}


def describe(cube: Cube, space: Space) -> str:
    """A cube in the words of the rule grammar, for its family: ICMP of the
    other family never shows, and a set that holds what no rule names
    (OTHER) is written as everything "except" what it lacks."""
    icmp, type_names = ICMP_OF[cube.family]
    protocols_here = space.protocols - {p for p, _ in ICMP_OF.values() if p != icmp}
    types_here = type_names | {OTHER}
    words: list[str] = []
    exceptions: list[str] = []

    def finite(label: str, value: frozenset[str], universe: frozenset[str], listed: bool = False) -> None:
        """`listed`: interface names, written as the rule grammar's list {a, b},
        a wildcard standing for the names it covers."""
        if value >= universe:
            return
        where, values = (exceptions, universe - value) if OTHER in value else (words, value)
        if listed:
            values = _as_written(values, universe)
        if listed and len(values) > 1:
            where.append(f"{label} {{{', '.join(sorted(values))}}}")
        else:
            where.append(f"{label} {','.join(sorted(values))}")

    protocols = cube.protocol & protocols_here
    if protocols < protocols_here:
        if OTHER in protocols:
            exceptions += sorted(protocols_here - protocols)
        else:
            words.append(
                "{" + ", ".join(sorted(protocols)) + "}" if len(protocols) > 1 else next(iter(protocols))
            )
    if icmp in protocols:
        finite(f"{icmp} type" if OTHER in cube.icmp else "type", cube.icmp & types_here, types_here)
    for name in ("sport", "dport"):
        value = getattr(cube, name)
        if value != PORT_SPACE:
            words.append(f"{name} " + _ports_text(value))
    for name, word in (("saddr", "from"), ("daddr", "to")):
        value = getattr(cube, name)
        words.append(
            f"{word} {_address_text(value, cube.family)}" if value != ADDRESS_SPACE[cube.family] else ""
        )
    # Every interface but lo is "any interface" to a reader: lo is the host
    # talking to itself, which 'loopback: accept' decides before every rule.
    interfaces = space.interfaces - {"lo"}
    for word in ("iif", "oif"):
        finite(word, getattr(cube, word) - {"lo"}, interfaces, listed=True)
    if cube.ct != space.ct_states:
        words.append("ct state " + ",".join(s for s in vocab.CT_STATES if s in cube.ct))
    _describe_status(cube.status, words, exceptions)
    family = "ip" if cube.family is Family.V4 else "ip6"
    if cube.saddr == ADDRESS_SPACE[cube.family]:
        words.append("from any")
    text = " ".join(w for w in words if w)
    if exceptions:
        text += " except " + " and ".join(exceptions)
    return f"{family} {text}".strip()


def _as_written(names: frozenset[str], universe: frozenset[str]) -> frozenset[str]:
    """Interface atoms less those a wildcard among them already covers
    (with every atom it covers present): {veth*, veth0} is 'veth*'."""
    whole = {
        pattern
        for pattern in names
        if pattern.endswith("*") and {a for a in universe if _covers(pattern, a)} <= names
    }
    return frozenset(n for n in names if not any(w != n and _covers(w, n) for w in whole))


def _describe_status(status: frozenset[str], words: list[str], exceptions: list[str]) -> None:
    """`ct status dnat` for the atoms that hold dnat; the complement as an exception."""
    if status == STATUSES:
        return
    for count in (1, 2):
        for flags in itertools.combinations(STATUS_FLAGS, count):
            text = "ct status " + ",".join(flags)
            if status == status_of(flags):
                words.append(text)
                return
            if status == STATUSES - status_of(flags):
                exceptions.append(text)
                return
    words.append("ct status " + " or ".join(sorted(status)))


def interval_text(intervals: Intervals, show: Callable[[int], str] = str) -> str:
    """Ranges as the rule grammar writes them: 53, 1024-65535 or {53, 80-82}."""
    parts = [show(low) if low == high else f"{show(low)}-{show(high)}" for low, high in intervals]
    return parts[0] if len(parts) == 1 else "{" + ", ".join(parts) + "}"


def _ports_text(intervals: Intervals) -> str:
    """Ports, or 'not PORTS' where the complement is the shorter list."""
    outside = subtract(PORT_SPACE, intervals)
    if len(outside) < len(intervals):
        return "not " + interval_text(outside, str)
    return interval_text(intervals, str)


def _prefixes(intervals: Intervals, bits: int) -> Iterator[tuple[int, int]]:
    """The networks (address, length) covering `intervals`, as `summarize_address_range` finds them."""
    for low, high in intervals:
        while low <= high:
            size = low & -low if low else 1 << bits  # the largest block aligned at `low`
            while low + size - 1 > high:
                size >>= 1
            yield low, bits - size.bit_length() + 1
            low += size


def _address_text(intervals: Intervals, family: Family) -> str:
    """Networks, or 'not NETWORKS' where the complement is the shorter list."""
    bits, make = family.max_prefix, ipaddress.IPv4Address if family is Family.V4 else ipaddress.IPv6Address
    outside = subtract(ADDRESS_SPACE[family], intervals)
    counts = [sum(1 for _ in _prefixes(side, bits)) for side in (intervals, outside)]
    choice = ("not ", outside, counts[1]) if counts[1] < counts[0] else ("", intervals, counts[0])
    prefix, side, count = choice
    networks = [
        str(make(low)) if length == bits else f"{make(low)}/{length}"
        for low, length in itertools.islice(_prefixes(side, bits), 6 if count <= 6 else 5)
    ]
    if count > 6:
        networks.append(f"... ({count} prefixes)")
    return prefix + (networks[0] if len(networks) == 1 else "{" + ", ".join(networks) + "}")
