"""What a group of the nft optimizer (nft_plan) holds: a rule as a key
(`Shape`) and its elements, and how a rule's elements join a group's.

An interval group's elements never cut across each other: an element
within one already there is left out (the earlier rule decides those
packets) and one that cuts across another keeps its rule out of the
group. So each element meets only the few filed near it: those with its
names (protocol, interfaces: equal or apart), and among them those whose
first address prefix holds its own or lies within it, or, without an
address, whose port interval meets its own."""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import operator
from dataclasses import dataclass, field

from nfc.ir import Addresses, Family, Interfaces, Match, Ports, Rule, Verdict

MAX_ELEMENTS_PER_RULE = 4096  # a rule with more (a product of long lists) stays a rule
SCAN_BUDGET = 4096  # elements of an interval group one rule's elements may be compared with
KEY_FIELDS = ("iifname", "oifname", "saddr", "daddr", "sport", "dport")  # the order of a key
KEY_SPACE = ("protocol", *KEY_FIELDS)  # what a key may hold
# The values of the matches a key never holds, in one call.
OTHER_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Match) if f.name not in KEY_SPACE))
KEY_VALUES = operator.attrgetter(*KEY_SPACE)
SADDR, DADDR, SPORT, DPORT = (KEY_SPACE.index(name) for name in ("saddr", "daddr", "sport", "dport"))
MAP_VERDICTS = ("accept", "drop")  # the verdicts a verdict map may hold
NAME = -1  # the low and high of a name's atom: an interface's or a protocol's
INTERVAL_ONLY = -1  # a field that only an interval set can look up

Interval = tuple[int, int]
# One field of one element: an address or port interval (low, high, ""), or
# an interface or protocol name (NAME, NAME, name).
Atom = tuple[int, int, str]
Element = tuple[Atom, ...]
# What a plain rule does to the packets it matches (see `_outcome`).


@dataclass(frozen=True)
class Shape:
    """What rules must share to be one lookup: the matches left out of the
    key, the key's fields and how each is looked up, and, for a reject, the
    verdict (a map holds only accept and drop)."""

    others: tuple[object, ...]  # the values of the matches outside the key
    family: Family | None  # of the key's addresses
    fields: tuple[str, ...]
    masks: tuple[int | None, ...]  # prefix length of a masked address field; None otherwise
    interval: bool
    reject: Verdict | None
    sample: Match = field(compare=False)  # one member's match, for `context`

    @property
    def context(self) -> Match:
        """The matches the lookup rule keeps besides the key."""
        match = self.sample
        return dataclasses.replace(
            match,
            protocol=None if "protocol" in self.fields else match.protocol,
            iifname=None if "iifname" in self.fields else match.iifname,
            oifname=None if "oifname" in self.fields else match.oifname,
            saddr=None if "saddr" in self.fields else match.saddr,
            daddr=None if "daddr" in self.fields else match.daddr,
            sport=None if "sport" in self.fields else match.sport,
            dport=None if "dport" in self.fields else match.dport,
        )


class Nearby:
    """The elements of an interval group that share their names (names are
    equal or apart), filed by their lead field so that an element meets
    only those near it: the first address by prefix (prefixes nest or are
    apart); a lone port field by interval (the group's elements are apart,
    so these intervals are too, and sorted they end in order). Anything
    else, two port fields, is scanned."""

    def __init__(self, lead: int, by_prefix: bool) -> None:
        self.lead = lead
        self.by_prefix = by_prefix
        self.filed: dict[Interval, list[Element]] = {}
        self.intervals: list[Interval] = []  # sorted
        self.spans: set[int] = set()  # the sizes of the prefixes filed
        self.scanned: list[Element] | None = None  # every element, once filing by interval cannot tell

    def near(self, element: Element) -> list[Element]:
        """A superset of the elements filed here that share packets with `element`."""
        if self.scanned is not None:
            return self.scanned
        low, high, _ = element[self.lead]
        found: list[Element] = []
        position = bisect.bisect_left(self.intervals, (low, -1))
        if self.by_prefix:
            span = high - low + 1
            for size in self.spans:  # the prefixes holding this one
                if size > span:
                    found += self.filed.get((low - low % size, low - low % size + size - 1), ())
            while position < len(self.intervals) and self.intervals[position][0] <= high:  # those within
                if self.intervals[position][1] <= high:
                    found += self.filed[self.intervals[position]]
                position += 1
            return found
        # Apart and sorted: the one that may start before `low`, then those starting up to `high`.
        if position and self.intervals[position - 1][1] >= low:
            found += self.filed[self.intervals[position - 1]]
        while position < len(self.intervals) and self.intervals[position][0] <= high:
            found += self.filed[self.intervals[position]]
            position += 1
        return found

    def file(self, element: Element) -> None:
        if self.scanned is not None:
            self.scanned.append(element)
            return
        interval = element[self.lead][:2]
        if interval not in self.filed:
            position = bisect.bisect_left(self.intervals, interval)
            if not self.by_prefix and self._touches(position, interval):
                # Elements of one rule are not compared with each other (a
                # rule's own values never cut across each other): scan from now on.
                self.scanned = [e for elements in self.filed.values() for e in elements] + [element]
                return
            self.intervals.insert(position, interval)
            self.spans.add(interval[1] - interval[0] + 1)
        self.filed.setdefault(interval, []).append(element)

    def _touches(self, position: int, interval: Interval) -> bool:
        before = position and self.intervals[position - 1][1] >= interval[0]
        return bool(before) or (position < len(self.intervals) and self.intervals[position][0] <= interval[1])


@dataclass
class Group:
    """Rules evaluated at one place: one rule, or the members of one lookup."""

    shape: Shape | None
    members: list[int]
    elements: dict[Element, int] = field(default_factory=dict)  # element -> the member it came from
    outcomes: set[int] = field(default_factory=set)  # the members', numbered (see `_Planner`)
    nearby: dict[tuple[str, ...], Nearby] = field(default_factory=dict)  # an interval group's, by names
    unfiled: list[Element] | None = None  # its first member's elements, until another rule tries to join


def start(shape: Shape, index: int, elements: list[Element], outcome: int) -> Group:
    """A group of rule `index` alone, as `join` would start it. Most groups
    stay one rule's, so its elements are filed in `nearby` only once another
    rule tries to join: in the same order, so the filing is the same."""
    return Group(
        shape, [index], dict.fromkeys(elements, index), {outcome}, {}, elements if shape.interval else None
    )


def join(group: Group, index: int, elements: list[Element], outcome: int) -> bool:
    """Add rule `index`'s elements to `group`, leaving out those an earlier
    member already decides; False, with `group` unchanged, if an element
    would cut across another's intervals or the comparisons exceed SCAN_BUDGET."""
    shape = group.shape
    assert shape is not None
    if group.unfiled is not None:
        for element in group.unfiled:
            _file(group, shape, element)
        group.unfiled = None
    fresh = [e for e in elements if e not in group.elements]
    if shape.interval:
        kept = []
        budget = SCAN_BUDGET
        for element in fresh:
            nearby = group.nearby.get(_names(element))
            inside = False
            for other in nearby.near(element) if nearby is not None else ():
                budget -= 1
                if budget < 0:
                    return False
                relation = _relation(element, other)
                if relation == "crossing":
                    return False
                inside = inside or relation == "inside"
            if not inside:
                kept.append(element)
        fresh = kept
        for element in fresh:
            _file(group, shape, element)
    for element in fresh:
        group.elements[element] = index
    group.members.append(index)
    group.outcomes.add(outcome)
    return True


def _file(group: Group, shape: Shape, element: Element) -> None:
    names = _names(element)
    if names not in group.nearby:
        group.nearby[names] = _lead(shape)
    group.nearby[names].file(element)


def _names(element: Element) -> tuple[str, ...]:
    return tuple(text for low, _, text in element if low == NAME)


def _lead(shape: Shape) -> Nearby:
    """How an interval group files the elements of one set of names: by its
    first address, else by its one port field, else not at all (scanned)."""
    fields = shape.fields
    address = next((i for i, name in enumerate(fields) if name in ("saddr", "daddr")), None)
    if address is not None:
        return Nearby(address, by_prefix=True)
    ports = [i for i, name in enumerate(fields) if name in ("sport", "dport")]
    nearby = Nearby(ports[0], by_prefix=False)
    if len(ports) > 1:
        nearby.scanned = []
    return nearby


def _relation(element: Element, other: Element) -> str:
    """'apart' (no packet in both), 'inside' (element within other) or 'crossing'."""
    inside = True
    for (low, high, text), (other_low, other_high, other_text) in zip(element, other, strict=True):
        if low > other_high or high < other_low or (low == NAME and text != other_text):
            return "apart"
        if low < other_low or high > other_high:
            inside = False
    return "inside" if inside else "crossing"


# ---- a rule as a key and its elements


def as_key(rule: Rule) -> tuple[Shape, list[Element]] | None:
    """A plain rule's shape and elements, or None if it cannot be one lookup's."""
    match = rule.match
    values = KEY_VALUES(match)
    outside = list(values)  # the values the key leaves out, for the shape: None where the key holds them
    fields: list[str] = []
    columns: list[list[Atom]] = []
    masks: list[int | None] = []
    family = None  # of the first address field in the key
    count = 1
    for position in range(1, len(KEY_SPACE)):  # the protocol joins the key below, if at all
        value = values[position]
        if value is not None:
            column = _column(value)
            if column is not None:
                fields.append(KEY_SPACE[position])
                columns.append(column[0])
                masks.append(column[1])
                outside[position] = None
                count *= len(column[0])
                if family is None and isinstance(value, Addresses):
                    family = value.family
    if not fields or count > MAX_ELEMENTS_PER_RULE:
        return None
    if (values[SPORT] is not None or values[DPORT] is not None) and outside[SPORT] is outside[DPORT] is None:
        # The protocol is a dimension of the elements, so that TCP and UDP
        # rules of one shape share a lookup: `meta l4proto . th dport`. (A
        # port left outside the key, a named set, needs its protocol there.)
        fields.insert(0, "protocol")
        columns.insert(0, [(NAME, NAME, values[0])])
        masks.insert(0, None)
        outside[0] = None
    interval = INTERVAL_ONLY in masks
    # Built by its `__dict__`, as `Match.of` builds a match: a frozen dataclass's
    # `__init__` costs a call per field, and every plain rule has a shape.
    shape = object.__new__(Shape)
    object.__setattr__(
        shape,
        "__dict__",
        {
            "others": (OTHER_FIELDS(match), *outside),
            "family": family,
            "fields": tuple(fields),
            "masks": (None,) * len(masks) if interval else tuple(masks),
            "interval": interval,
            "reject": rule.verdict if rule.verdict.kind not in MAP_VERDICTS else None,
            "sample": match,
        },
    )
    return shape, list(itertools.product(*columns))


# A field's values as atoms, and how a hash set looks it up: an address by
# its one prefix length, anything else as it is (None); INTERVAL_ONLY where
# prefix lengths or port ranges leave only an interval set.
Column = tuple[list[Atom], int | None]


def _column(value: Interfaces | Addresses | Ports) -> Column | None:
    """None for a field the key cannot hold: a named set (it is referred to
    as it is), a negation, an interface wildcard."""
    if value.set_name is not None:
        return None
    if isinstance(value, Ports):
        ranges = value.ranges
        mask = INTERVAL_ONLY if any(low != high for low, high in ranges) else None
        return [(low, high, "") for low, high in ranges], mask
    if isinstance(value, Addresses):
        if value.negated:
            return None
        bits = value.family.max_prefix
        atoms: list[Atom] = []
        lengths = set()
        for network in value.networks:
            low, length = int(network.network_address), network.prefixlen
            atoms.append((low, low + (1 << (bits - length)) - 1, ""))
            lengths.add(length)
        return atoms, lengths.pop() if len(lengths) == 1 else INTERVAL_ONLY
    if any(name.endswith("*") for name in value.names):
        return None
    return [(NAME, NAME, name) for name in value.names], None
