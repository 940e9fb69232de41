"""The match space's interval and cube arithmetic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nfc.ir import Family, Match, Ports
from nfc.space import Space, intersect, minus, subtract

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
