"""The match space's interval and cube arithmetic."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from nfc.ir import Family, Interfaces, Match, Ports
from nfc.space import OTHER, STATUSES, Space, _address_text, describe, intersect, minus, status_of, subtract

spans = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=5).map(
    lambda pairs: tuple(sorted({(min(a, b), max(a, b)) for a, b in pairs}))
)


def points(intervals: tuple[tuple[int, int], ...]) -> set[int]:
    return {p for low, high in intervals for p in range(low, high + 1)}


def normal(intervals: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for low, high in intervals:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


@given(spans, spans)
def test_interval_operations_agree_with_sets(a: tuple, b: tuple) -> None:
    a, b = normal(a), normal(b)
    assert points(intersect(a, b)) == points(a) & points(b)
    assert points(subtract(a, b)) == points(a) - points(b)


def test_cube_difference_is_exact() -> None:
    space = Space()
    wide = space.cubes(Match(protocol="tcp", dport=Ports(((1, 1000),))))
    narrow = space.cubes(Match(family=Family.V4, protocol="tcp", dport=Ports(((80, 80),))))
    left = minus(wide, narrow)
    assert not minus(narrow, wide)  # narrow lies inside wide
    assert left and not minus(left, wide)  # what is left lies inside wide ...
    assert all((piece & cube) is None for piece in left for cube in narrow)  # ... and outside narrow


def test_interface_patterns_admit_exactly_the_atoms_they_cover() -> None:
    """A wildcard atom stands for the names it covers that no other atom
    names: 'veth*' covers 'vethx*' and 'veth0', not 've*' (which holds
    'vexx'), and only a bare '*' holds the names nobody wrote."""
    space = Space()
    space.interfaces = frozenset({OTHER, "ve*", "veth*", "vethx*", "veth0", "eth0", "eth0*"})
    assert space.interfaces_of(Interfaces(("veth*",))) == {"veth*", "vethx*", "veth0"}
    assert space.interfaces_of(Interfaces(("ve*",))) == {"ve*", "veth*", "vethx*", "veth0"}
    assert space.interfaces_of(Interfaces(("eth0",))) == {"eth0"}
    assert space.interfaces_of(Interfaces(("eth0*", "veth0"))) == {"eth0", "eth0*", "veth0"}
    assert space.interfaces_of(Interfaces(("*",))) == space.interfaces
    assert space.interfaces_of(Interfaces(("e[th]?",))) == frozenset()  # no glob but the trailing '*'


def test_descriptions_write_interface_lists_and_ct_status_as_rules_do() -> None:
    match = Match(family=Family.V4, iifname=Interfaces(("eth1", "eth2")), oifname=Interfaces(("veth*",)))
    forward = Match(family=Family.V4, oifname=Interfaces(("veth0", "eth0")), ct_status=("dnat",))
    space = Space()
    space.interfaces = frozenset({OTHER, "eth1", "eth2", "veth*", "veth0", "eth0"})
    (cube,) = space.cubes(match)
    assert describe(cube, space) == "ip iif {eth1, eth2} oif veth* from any"
    (translated,) = space.cubes(forward)
    assert describe(translated, space) == "ip oif {eth0, veth0} ct status dnat from any"
    (plain,) = space.cubes(Match(family=Family.V4), status=STATUSES - status_of(("dnat",)))
    assert describe(plain, space) == "ip from any except ct status dnat"


def _reference_address_text(intervals: tuple[tuple[int, int], ...], family: Family) -> str:
    """What describe wrote before it counted networks in integers: every network made by ipaddress."""
    make = ipaddress.IPv4Address if family is Family.V4 else ipaddress.IPv6Address

    def networks(spans: tuple[tuple[int, int], ...]) -> list[str]:
        return [
            str(n) if n.prefixlen != n.max_prefixlen else str(n.network_address)
            for low, high in spans
            for n in ipaddress.summarize_address_range(make(low), make(high))
        ]

    inside = networks(intervals)
    outside = networks(subtract(((0, (1 << family.max_prefix) - 1),), intervals))
    prefix, shown = ("not ", outside) if len(outside) < len(inside) else ("", inside)
    if len(shown) > 6:
        shown = [*shown[:5], f"... ({len(shown)} prefixes)"]
    return prefix + (shown[0] if len(shown) == 1 else "{" + ", ".join(shown) + "}")


@given(
    st.sampled_from([Family.V4, Family.V6]), st.lists(st.integers(0, (1 << 128) - 1), min_size=2, max_size=24)
)
def test_address_text_counts_and_shows_networks_as_ipaddress_would(family: Family, points: list[int]) -> None:
    top = (1 << family.max_prefix) - 1
    ends = sorted({point & top for point in points})
    intervals = tuple((low, high) for low, high in zip(ends[::2], ends[1::2], strict=False) if low < high)
    if intervals:
        assert _address_text(intervals, family) == _reference_address_text(intervals, family)
