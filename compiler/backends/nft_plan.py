"""Planning for the nft optimizer (nft_optimize): which rules of a chain
become one lookup, and where it is evaluated.

Each plain rule (no log, counter or limit) that matches addresses, ports,
protocols or interface names by value has a `Shape`, the rest of its
matches, and elements, one per combination of its values. `plan` walks the
chain in order: a rule joins the latest group of its shape if it can move
up to that group's place, that is if every rule in between either has its
verdict or shares no packet with it (quick tests, then `nfc.space`), and
if none of its elements cuts across an element of the group; an element
within one already there is left out, since the earlier rule decides those
packets. Otherwise it starts a group, or stays a rule of its own."""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

from nfc.ir import Addresses, Family, Interfaces, Match, Ports, Rule, Verdict
from nfc.space import Cube, Space, intersect, overlap

MIN_MERGE = 4  # rules in a group before one lookup beats a rule each
MAX_PLANS = 8  # rounds of planning, each without the rules of the last one's small groups
MAX_ELEMENTS_PER_RULE = 4096  # a rule with more (a product of long lists) stays a rule
MOVE_BUDGET = 256  # groups and rules one rule may examine on its way up to its group
SCAN_BUDGET = 4096  # elements an interval group may compare one new element with
KEY_FIELDS = ("iifname", "oifname", "saddr", "daddr", "sport", "dport")  # the order of a key
KEY_SPACE = ("protocol", *KEY_FIELDS)  # what a key may hold
# The values of the matches a key never holds, in one call.
OTHER_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Match) if f.name not in KEY_SPACE))
MAP_VERDICTS = ("accept", "drop")  # the verdicts a verdict map may hold
NAME = -1  # the low and high of a name's atom: an interface's or a protocol's
INTERVAL_ONLY = -1  # a field that only an interval set can look up

Interval = tuple[int, int]
# One field of one element: an address or port interval (low, high, ""), or
# an interface or protocol name (NAME, NAME, name).
Atom = tuple[int, int, str]
Element = tuple[Atom, ...]
# What a plain rule does to the packets it matches (see `_outcome`).
Outcome = tuple[Verdict, Family | None] | None


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


@dataclass
class Group:
    """Rules evaluated at one place: one rule, or the members of one lookup."""

    shape: Shape | None
    members: list[int]
    elements: dict[Element, int] = field(default_factory=dict)  # element -> the member it came from
    outcomes: set[Outcome] = field(default_factory=set)
    # An interval group's elements by the prefix of their first address
    # field, and those prefixes sorted: what `_overlapping` searches.
    by_prefix: dict[Interval, list[Element]] = field(default_factory=dict)
    prefixes: list[Interval] = field(default_factory=list)


def plan(rules: Sequence[Rule], space: Space) -> list[Group]:
    """Groups in evaluation order. A group too small to pay sends its rules
    back to their own places, which changes what later rules may jump over,
    so planning repeats until every group is one rule or worth a lookup.
    After MAX_PLANS rounds a small group left is written as its rules at
    its place: still the policy's verdicts, in an order -O0 would not use."""
    outcomes = [_outcome(rule) for rule in rules]
    keyed = [
        _keyed(rule) if outcome is not None else None for rule, outcome in zip(rules, outcomes, strict=True)
    ]
    planner = _Planner(rules, space, outcomes)
    blocked: set[int] = set()
    for _ in range(MAX_PLANS):
        plan = planner.run([None if i in blocked else k for i, k in enumerate(keyed)])
        small = [g for g in plan if 1 < len(g.members) < MIN_MERGE]
        if not small:
            break
        blocked.update(i for g in small for i in g.members)
    return plan


class _Planner:
    def __init__(self, rules: Sequence[Rule], space: Space, outcomes: list[Outcome]) -> None:
        self.rules = rules
        self.space = space
        self.outcomes = outcomes
        self.cubes: dict[int, list[Cube]] = {}

    def run(self, keyed: list[tuple[Shape, list[Element]] | None]) -> list[Group]:
        """One round: each rule with a shape in `keyed` joins the latest
        group of its shape if it can move there, else starts one."""
        plan: list[Group] = []
        last_of_shape: dict[Shape, int] = {}  # shape -> index in plan of its latest group
        for index, this in enumerate(keyed):
            if this is not None:
                shape, elements = this
                at = last_of_shape.get(shape)
                if (
                    at is not None
                    and self._can_move(index, plan, at + 1)
                    and _join(plan[at], index, elements, self.outcomes[index])
                ):
                    continue
                group = Group(shape, [])
                _join(group, index, elements, self.outcomes[index])
                last_of_shape[shape] = len(plan)
            else:
                group = Group(None, [index], outcomes={self.outcomes[index]})
            plan.append(group)
        return plan

    def _can_move(self, index: int, plan: list[Group], start: int) -> bool:
        """Whether rule `index`, a plain one, may be evaluated before every
        rule in plan[start:]: each has its verdict or shares no packet with it."""
        mine = self.outcomes[index]
        budget = MOVE_BUDGET
        for group in itertools.islice(plan, start, None):
            same = group.outcomes == {mine}  # either order gives every packet the same fate
            budget -= 1 if same else 1 + len(group.members)
            if budget < 0:
                return False
            if not same and any(
                self.outcomes[other] != mine and not self._apart(index, other) for other in group.members
            ):
                return False
        return True

    def _apart(self, index: int, other: int) -> bool:
        """Whether no packet matches both rules: first by the quick tests,
        then by the match space."""
        a, b = self.rules[index].match, self.rules[other].match
        if a.protocol and b.protocol and a.protocol != b.protocol:
            return True
        if a.family and b.family and a.family is not b.family:
            return True
        for mine, theirs in ((a.sport, b.sport), (a.dport, b.dport)):
            if mine and theirs and not intersect(mine.ranges, theirs.ranges):
                return True
        for here, there in ((a.saddr, b.saddr), (a.daddr, b.daddr)):
            if here and there and not (here.negated or there.negated):
                if here.family is not there.family:
                    return True
                few = len(here.networks) * len(there.networks) <= 64
                if few and not any(x.overlaps(y) for x in here.networks for y in there.networks):
                    return True
        return not overlap(self._cubes(index), self._cubes(other))

    def _cubes(self, index: int) -> list[Cube]:
        if index not in self.cubes:
            self.cubes[index] = self.space.cubes(self.rules[index].match)
        return self.cubes[index]


def _outcome(rule: Rule) -> Outcome:
    """What a plain rule does to every packet it matches; None for a rule
    with a side effect (log, counter) or one that may let packets on (meter).
    A reject's message depends on the family it is written for."""
    if rule.meter is not None or rule.log is not None or rule.counter:
        return None
    return rule.verdict, rule.match.family if rule.verdict.kind == "reject" else None


def _join(group: Group, index: int, elements: list[Element], outcome: Outcome) -> bool:
    """Add rule `index`'s elements to `group`, leaving out those an earlier
    member already decides; False, with `group` unchanged, if an element
    would cut across another's intervals."""
    shape = group.shape
    assert shape is not None
    fresh = [e for e in elements if e not in group.elements]
    if shape.interval:
        kept = []
        budget = SCAN_BUDGET
        for element in fresh:
            relations = set()
            for other in _overlapping(group, element):
                budget -= 1
                if budget < 0:
                    return False
                relations.add(_relation(element, other))
            if "crossing" in relations:
                return False
            if "inside" not in relations:
                kept.append(element)
        fresh = kept
    at = _first_address(shape)
    for element in fresh:
        group.elements[element] = index
        if shape.interval and at is not None:
            prefix = element[at][:2]
            if prefix not in group.by_prefix:
                bisect.insort(group.prefixes, prefix)
            group.by_prefix.setdefault(prefix, []).append(element)
    group.members.append(index)
    group.outcomes.add(outcome)
    return True


def _first_address(shape: Shape) -> int | None:
    return next((i for i, name in enumerate(shape.fields) if name in ("saddr", "daddr")), None)


def _overlapping(group: Group, element: Element) -> list[Element]:
    """The elements of an interval group that may share packets with
    `element`: with an address field, those whose first address prefix
    holds the element's or lies within it (prefixes nest or are apart);
    without one, all of them."""
    shape = group.shape
    at = None if shape is None else _first_address(shape)
    if shape is None or shape.family is None or at is None:
        return list(group.elements)
    low, high, _ = element[at]
    found: list[Element] = []
    span, space = high - low + 1, 1 << shape.family.max_prefix
    while span < space:  # the prefixes holding this one
        span *= 2
        start = low - low % span
        found += group.by_prefix.get((start, start + span - 1), [])
    position = bisect.bisect_left(group.prefixes, (low, -1))
    while position < len(group.prefixes) and group.prefixes[position][0] <= high:  # those within
        found += group.by_prefix[group.prefixes[position]]
        position += 1
    return found


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


def _keyed(rule: Rule) -> tuple[Shape, list[Element]] | None:
    """A plain rule's shape and elements, or None if it cannot be one lookup's."""
    match = rule.match
    fields = [name for name in KEY_FIELDS if _keyable(getattr(match, name))]
    if not fields:
        return None
    ports = [name for name in ("sport", "dport") if getattr(match, name) is not None]
    if ports and all(name in fields for name in ports):
        # The protocol is a dimension of the elements, so that TCP and UDP
        # rules of one shape share a lookup: `meta l4proto . th dport`. (A
        # port left outside the key, a named set, needs its protocol there.)
        fields.insert(0, "protocol")
    columns = [_column(getattr(match, name)) for name in fields]
    if _product(columns) > MAX_ELEMENTS_PER_RULE:
        return None
    masks = [_hash_mask(name, column) for name, column in zip(fields, columns, strict=True)]
    interval = any(mask == INTERVAL_ONLY for mask in masks)
    addresses = match.saddr if "saddr" in fields else match.daddr if "daddr" in fields else None
    shape = Shape(
        others=(
            OTHER_FIELDS(match),
            *(None if name in fields else getattr(match, name) for name in KEY_SPACE),
        ),
        family=addresses.family if addresses is not None else None,
        fields=tuple(fields),
        masks=tuple(None if interval else mask for mask in masks),
        interval=interval,
        reject=rule.verdict if rule.verdict.kind not in MAP_VERDICTS else None,
        sample=match,
    )
    elements = [tuple(atom[:3] for atom in atoms) for atoms in itertools.product(*columns)]
    return shape, elements


def _keyable(value: Interfaces | Addresses | Ports | None) -> bool:
    """A field the key may hold: present, listed by value (a named set is
    referred to as it is) and, for interfaces, without wildcards."""
    if value is None or value.set_name is not None:
        return False
    if isinstance(value, Addresses):
        return not value.negated
    if isinstance(value, Interfaces):
        return not any(name.endswith("*") for name in value.names)
    return True


# A field's values as atoms with a prefix length (of addresses).
Column = list[tuple[int, int, str, int | None]]


def _column(value: str | Interfaces | Addresses | Ports) -> Column:
    if isinstance(value, str):  # a protocol
        return [(NAME, NAME, value, None)]
    if isinstance(value, Interfaces):
        return [(NAME, NAME, name, None) for name in value.names]
    if isinstance(value, Addresses):
        bits = value.family.max_prefix
        column: Column = []
        for network in value.networks:
            low, length = int(network.network_address), network.prefixlen
            column.append((low, low + (1 << (bits - length)) - 1, "", length))
        return column
    return [(low, high, "", None) for low, high in value.ranges]


def _product(columns: list[Column]) -> int:
    count = 1
    for column in columns:
        count *= len(column)
    return count


def _hash_mask(name: str, column: Column) -> int | None:
    """How a hash set looks a field up: an address by its one prefix length,
    anything else as it is (None); INTERVAL_ONLY where prefix lengths or
    port ranges leave only an interval set."""
    if name in ("saddr", "daddr"):
        length = column[0][3]
        return length if all(prefix == length for _, _, _, prefix in column) else INTERVAL_ONLY
    if name in ("sport", "dport") and any(low != high for low, high, _, _ in column):
        return INTERVAL_ONLY
    return None
