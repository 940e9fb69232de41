"""Which rules may share packets with a set of packets, found without
trying every rule: lint and diff compare each rule with the rules that
overlap it, and that must grow with those overlaps, not with the square of
the rule count (10,000 rules are 50 million pairs).

Each cube of a rule is filed in a class of its family, its protocol and
the dimensions it narrows (of destination port, source, destination,
source port: those that are not the whole space); within the class, under
the aligned blocks (prefixes) of each of them. Aligned blocks are nested
or apart, never partly overlapping, so the blocks that share values with a
range [low, high] are those that start in it (a slice of the blocks sorted
by start) and those that hold `low` (the last block that starts before it,
and the blocks that hold that one). A query searches each class by the
dimension of the class it narrows most; a class whose dimensions it does
not narrow overlaps it there whole, and is taken whole. So a rule that
takes every port costs nothing to a query by source network, and the rules
found are mostly those that do overlap."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from nfc.ir import Family
from nfc.space import ADDRESS_SPACE, PORT_SPACE, Cube, Intervals, split

DIMENSIONS = ("dport", "saddr", "daddr", "sport")
FEW_PROTOCOLS = 4  # a query over more protocols than this looks in every protocol's classes
MAX_QUERY_RANGES = 64  # a query of more ranges than this in a dimension takes the whole class
BROAD = 1 / 16  # a query with at least this share of every dimension is broad: a rule may hold it
HOLDERS = 16  # the rules of a class tried as a broad query's holder
REQUERY = 64  # a piece that meets none of this many rules in turn looks up its own candidates
FIRST_WINDOW = 64  # the rules of the first window; each next one holds twice as many


@dataclass
class _Axis:
    """Rule numbers filed by the aligned blocks of one dimension."""

    width: int  # bits of the dimension: 16 for ports, 32 or 128 for addresses
    filed: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (first, last) -> rules
    # every (block, rule), sorted by the block's first value
    firsts: list[int] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    # each block once, sorted by first value and then widest first, with the
    # nearest block that holds it (-1: none)
    block_firsts: list[int] = field(default_factory=list)
    block_lasts: list[int] = field(default_factory=list)
    block_numbers: list[list[int]] = field(default_factory=list)
    holder: list[int] = field(default_factory=list)

    def add(self, number: int, intervals: Intervals) -> None:
        for block in _blocks(intervals, self.width):
            self.filed.setdefault(block, []).append(number)

    def freeze(self) -> None:
        pairs = sorted((first, number) for (first, _), numbers in self.filed.items() for number in numbers)
        self.firsts = [first for first, _ in pairs]
        self.numbers = [number for _, number in pairs]
        open_blocks: list[int] = []  # the blocks that hold the current one, innermost last
        for index, (first, last) in enumerate(sorted(self.filed, key=lambda b: (b[0], -b[1]))):
            while open_blocks and self.block_lasts[open_blocks[-1]] < first:
                open_blocks.pop()
            self.holder.append(open_blocks[-1] if open_blocks else -1)
            self.block_firsts.append(first)
            self.block_lasts.append(last)
            self.block_numbers.append(self.filed[first, last])
            open_blocks.append(index)

    def find(self, intervals: Intervals, found: set[int]) -> None:
        """Add to `found` the rules with a block that shares values with `intervals`."""
        for low, high in intervals:
            first = bisect_left(self.firsts, low)
            last = bisect_right(self.firsts, high, first)
            if last > first:
                found.update(self.numbers[first:last])
            block = bisect_left(self.block_firsts, low) - 1  # the last block that starts before `low`
            while block >= 0:
                if self.block_lasts[block] >= low:  # it holds `low`, and so do the blocks that hold it
                    found.update(self.block_numbers[block])
                block = self.holder[block]


@dataclass
class _Class:
    """The cubes of one family and protocol (None: several) that narrow
    exactly `dimensions` of DIMENSIONS (none: they overlap every query of
    their family and protocol there), filed by each of them."""

    axes: dict[str, _Axis]
    numbers: set[int] = field(default_factory=set)
    ordered: list[int] = field(default_factory=list)  # `numbers`, sorted


class _Window:
    """The cubes of the rules numbered [start, stop), filed by class."""

    def __init__(self, rules: Sequence[list[Cube]], start: int, stop: int) -> None:
        self.start, self.stop = start, stop
        self.classes: dict[Family, dict[tuple[str | None, tuple[str, ...]], _Class]] = {}
        for number in range(start, stop):
            for cube in rules[number]:
                dimensions = tuple(d for d in DIMENSIONS if getattr(cube, d) != _whole(d, cube.family))
                protocol = next(iter(cube.protocol)) if len(cube.protocol) == 1 else None
                classes = self.classes.setdefault(cube.family, {})
                found = classes.get((protocol, dimensions))
                if found is None:
                    axes = {d: _Axis(_width(d, cube.family)) for d in dimensions}
                    found = classes[protocol, dimensions] = _Class(axes)
                found.numbers.add(number)
                for dimension, axis in found.axes.items():
                    axis.add(number, getattr(cube, dimension))
        for classes in self.classes.values():
            for each in classes.values():
                each.ordered = sorted(each.numbers)
                for axis in each.axes.values():
                    axis.freeze()

    def candidates(self, queries: list[_Query], before: int | None) -> list[int]:
        """The rules of this window (numbers, in order, only those before
        `before`) that may share packets with the queries' cubes: a superset of those that do."""
        found: set[int] = set()
        for cube, protocols, share in queries:
            for (protocol, dimensions), each in self.classes.get(cube.family, {}).items():
                if protocols is not None and protocol is not None and protocol not in protocols:
                    continue
                narrowest = min(dimensions, key=share.__getitem__, default=None)
                if narrowest is None or share[narrowest] == 1:
                    whole = each.ordered
                    found.update(whole if before is None else whole[: bisect_left(whole, before)])
                    continue
                ranges = getattr(cube, narrowest)
                if len(ranges) > MAX_QUERY_RANGES:
                    found |= each.numbers
                else:
                    each.axes[narrowest].find(ranges, found)
        ordered = sorted(found)
        return ordered if before is None else ordered[: bisect_left(ordered, before)]


# A cube asked about, the protocols whose classes it looks in (None: all)
# and its share of each dimension: a class is searched by the one it narrows most.
_Query = tuple[Cube, frozenset[str] | None, dict[str, float]]


def _queries(cubes: list[Cube]) -> list[_Query]:
    return [
        (
            cube,
            cube.protocol if len(cube.protocol) <= FEW_PROTOCOLS else None,
            {d: _share(getattr(cube, d), d, cube.family) for d in DIMENSIONS},
        )
        for cube in cubes
    ]


class Index:
    """The cube lists of rules, in order, filed so that the rules that may
    share packets with a query are found without trying the others.

    The rules are filed in windows of consecutive rules, each twice as
    long as the one before: a query that the early rules take whole (a
    shadowed rule, most of an imported policy's) stops there, and never
    collects the thousands of later rules that overlap it too. The work of
    a query grows with the rules before the one that takes its last part."""

    def __init__(self, rules: Sequence[list[Cube]]) -> None:
        self.rules = rules
        self.windows: list[_Window] = []
        start, size = 0, FIRST_WINDOW
        while start < len(rules):
            self.windows.append(_Window(rules, start, min(start + size, len(rules))))
            start, size = start + size, size * 2

    def candidates(self, cubes: list[Cube], after: int = -1, before: int | None = None) -> Iterator[int]:
        """The rules (numbers, in order, only those after `after` and before
        `before`) that may share packets with `cubes`: a superset of those
        that do, window by window, so that a caller that stops early pays
        for the windows it looked in only."""
        queries = _queries(cubes)
        for window in self._windows(after, before):
            yield from (n for n in window.candidates(queries, before) if n > after)

    def _windows(self, after: int, before: int | None) -> Iterator[_Window]:
        for window in self.windows:
            if before is not None and window.start >= before:
                return
            if window.stop > after + 1:
                yield window

    def first_match(self, cubes: list[Cube], before: int | None = None) -> list[tuple[Cube, int | None]]:
        """`cubes` split by the first rule that matches each part (None: none does)."""
        return self._split(cubes, self._held_by(cubes, before), holders=False)

    def _held_by(self, cubes: list[Cube], before: int | None) -> int | None:
        """`before`, or less: one past the first rule found that holds all of
        `cubes` (no later rule gets any of them), when they are broad. A
        broad rule late in a chain overlaps every earlier rule of its
        protocol; the first that holds it is usually early. Only the first
        HOLDERS rules of each class that takes every value (in the first
        window that has it) are tried."""
        if not cubes or any(_share(getattr(c, d), d, c.family) < BROAD for c in cubes for d in DIMENSIONS):
            return before
        limit = len(self.rules) if before is None else before
        for cube in cubes:
            tried: set[tuple[str | None, tuple[str, ...]]] = set()
            for window in self._windows(-1, limit):
                for key, each in window.classes.get(cube.family, {}).items():
                    if key[1] or key in tried:
                        continue
                    tried.add(key)
                    for number in each.ordered[:HOLDERS]:
                        if number >= limit:
                            break
                        if _holds(self.rules[number], cubes):
                            limit = number + 1
                            break
        return limit if limit < len(self.rules) else before

    def unmatched(self, cubes: list[Cube]) -> list[Cube]:
        """The parts of `cubes` that no rule matches: `minus(cubes, every rule's cubes)`."""
        return [cube for cube, taker in self.first_match(cubes) if taker is None]

    def decided(self, number: int) -> list[Cube]:
        """The packets rule `number` decides: its own, less what earlier rules take.
        Nothing, at once, when an earlier rule holds all of them: a broad
        rule late in a chain would otherwise be cut into hundreds of pieces
        by the narrow rules before the one that holds it."""
        mine = self.rules[number]
        limit = self._held_by(mine, number)
        if limit is not None and limit < number:
            return []
        return [cube for cube, taker in self._split(mine, number, holders=True) if taker is None]

    def _split(self, cubes: list[Cube], before: int | None, holders: bool) -> list[tuple[Cube, int | None]]:
        """`cubes` split by the rules before `before`, window by window:
        each window's candidates take their shares of what the earlier
        windows left, and the walk ends when nothing is left. `holders`:
        only what no rule takes is wanted, and a rule that holds all of
        `cubes` leaves nothing at once (no cutting by the rules before it)."""
        parts: list[tuple[Cube, int | None]] = []
        remaining = cubes
        queries = _queries(cubes)
        for window in self._windows(-1, before):
            if not remaining:
                break
            numbers = window.candidates(queries, before)
            if holders and any(_holds(self.rules[other], cubes) for other in numbers):
                return []
            taken = self._first_match(window, remaining, numbers, before)
            if taken[0][1] is not None:  # some rule took a share: ask about what is left
                remaining = [cube for cube, taker in taken if taker is None]
                parts += [(cube, taker) for cube, taker in taken if taker is not None]
                if len(remaining) <= len(cubes):  # as few cubes, and narrower
                    queries = _queries(remaining)
        return parts + [(cube, None) for cube in remaining]

    def _first_match(
        self, window: _Window, cubes: list[Cube], numbers: list[int], before: int | None
    ) -> list[tuple[Cube, int | None]]:
        """The parts that splitting `cubes` by the rules `numbers` (of
        `window`) in turn gives: each rule's share, in order, then what none takes.

        Split as a whole, a broad set is cut by each rule into more and
        more pieces, and every later rule is tried on every piece: a
        final 'drop' after thousands of rules is millions of tries. So a
        long list goes piece by piece instead: the first rule that meets a
        piece takes its share, and each piece of the rest goes on from the
        next rule; a piece that meets none of the next REQUERY rules looks
        up its own candidates, which are few when it is narrow. The parts
        are the same, in the same order."""
        if len(numbers) <= REQUERY:
            parts: list[tuple[Cube, int | None]] = []
            remaining = cubes
            for number in numbers:
                if not remaining:
                    break
                taken, remaining = split(remaining, self.rules[number])
                parts += [(cube, number) for cube in taken]
            return parts + [(cube, None) for cube in remaining]
        found: list[tuple[int, Cube, int | None]] = []  # the taker's number first, to sort by
        stack = [(cube, numbers, 0) for cube in reversed(cubes)]
        while stack:
            cube, ahead, at = stack.pop()
            tried = 0
            while at < len(ahead) and not _meets(cube, self.rules[ahead[at]]):
                at, tried = at + 1, tried + 1
                if tried == REQUERY and len(ahead) - at > REQUERY:  # its own candidates, once
                    ahead, at = (
                        [n for n in window.candidates(_queries([cube]), before) if n > ahead[at - 1]],
                        0,
                    )
            if at == len(ahead):
                found.append((len(self.rules), cube, None))
                continue
            number = ahead[at]
            taken, rest = split([cube], self.rules[number])
            found += [(number, piece, number) for piece in taken]
            stack += [(piece, ahead, at + 1) for piece in reversed(rest)]
        # Pieces are visited left to right: sorted by taker (stably), they
        # are in the order of splitting the whole list rule by rule.
        found.sort(key=lambda each: each[0])
        return [(cube, taker) for _, cube, taker in found]


def _meets(cube: Cube, theirs: list[Cube]) -> bool:
    return any(cube.meets(other) for other in theirs)


def _holds(theirs: list[Cube], mine: list[Cube]) -> bool:
    """Whether the cubes `theirs` hold every packet of `mine` (each of mine in one of theirs)."""
    return all(any(cube.within(other) for other in theirs) for cube in mine)


def _whole(dimension: str, family: Family) -> Intervals:
    return PORT_SPACE if dimension.endswith("port") else ADDRESS_SPACE[family]


def _share(intervals: Intervals, dimension: str, family: Family) -> float:
    """The fraction of the dimension's values `intervals` hold."""
    return sum(high - low + 1 for low, high in intervals) / (1 << _width(dimension, family))


def _width(dimension: str, family: Family) -> int:
    return 16 if dimension.endswith("port") else family.max_prefix


def _blocks(intervals: Intervals, width: int) -> list[tuple[int, int]]:
    """`intervals` as aligned blocks (first and last value): the fewest
    prefixes that cover them exactly."""
    blocks = []
    for low, high in intervals:
        while low <= high:
            aligned = (low & -low).bit_length() - 1 if low else width
            bits = min(aligned, (high - low + 1).bit_length() - 1)
            blocks.append((low, low + (1 << bits) - 1))
            low += 1 << bits
    return blocks
