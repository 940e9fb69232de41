"""Planning for the nft optimizer (nft_optimize): which rules of a chain
become one lookup, and where it is evaluated.

Each plain rule (no log, counter or limit) that matches addresses, ports,
protocols or interface names by value has a `Shape`, the rest of its
matches, and elements, one per combination of its values (nft_groups). `plan` walks the
chain in order: a rule joins the latest group of its shape if it can move
up to that group's place, that is if every rule in between either has its
verdict or shares no packet with it (quick tests, then `nfc.space`), and
if none of its elements cuts across an element of the group; an element
within one already there is left out, since the earlier rule decides those
packets. Otherwise it starts a group, or stays a rule of its own.

The walk stays near-linear: what a move may jump over is bounded
(MOVE_BUDGET), its cost is read from running sums, and only the rules of a
protocol, family and outcome that can conflict are tried, found by
position; an element meets only the elements of its group near it."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import NamedTuple

from nfc.backends.nft_groups import Element, Group, Interval, Shape, as_key, join, start
from nfc.ir import Addresses, Family, Interfaces, Match, Rule, Verdict
from nfc.space import Cube, Space, overlap

MIN_MERGE = 4  # rules in a group before one lookup beats a rule each
MAX_PLANS = 8  # rounds of planning, each without the rules of the last one's small groups
# A round walks the whole chain again: not worth it once the small groups
# hold fewer than one rule in FEW_LEFT of the chain's (see `plan`).
FEW_LEFT = 1000
MOVE_BUDGET = 256  # groups and rules one rule may jump over on its way up to its group
MIXED = -1  # the outcome of a group whose members' outcomes differ (outcomes are numbered from 0)

# What a plain rule does to the packets it matches (see `_outcome`).
Outcome = tuple[Verdict, Family | None] | None
# Rules that may share packets only with rules of a compatible key: protocol, family, outcome.
# (The family by `_family_name`: an enum member hashes in Python, slowly.)
ConflictKey = tuple[str | None, str | None, int]


def plan(rules: Sequence[Rule], space: Space) -> list[Group]:
    """Groups in evaluation order. A group too small to pay sends its rules
    back to their own places, which changes what later rules may jump over,
    so planning repeats until every group is one rule or worth a lookup,
    or the small groups hold fewer than one rule in FEW_LEFT of the chain's
    (a few dozen of a long chain's), or for MAX_PLANS rounds. A small group
    left is written as its rules at its place: still the policy's verdicts,
    in an order -O0 would not use."""
    outcomes = [_outcome(rule) for rule in rules]
    shapes: dict[Shape, int] = {}  # numbered once: a shape's hash walks its matches
    keyed: list[Keyed | None] = []
    for rule, outcome in zip(rules, outcomes, strict=True):
        found = as_key(rule) if outcome is not None else None
        keyed.append(
            None if found is None else (found[0], shapes.setdefault(found[0], len(shapes)), found[1])
        )
    planner = _Planner(rules, space, outcomes)
    blocked: set[int] = set()
    for _ in range(MAX_PLANS):
        plan = planner.run([None if i in blocked else k for i, k in enumerate(keyed)])
        small = [i for g in plan if 1 < len(g.members) < MIN_MERGE for i in g.members]
        if not small or len(small) * FEW_LEFT < len(rules):  # none left, or too few to pay for a round
            break
        blocked.update(small)
    return plan


# A keyed rule: its shape, the shape's number and its elements.
Keyed = tuple[Shape, int, list[Element]]


class _Planner:
    """One chain's planning. Outcomes are numbered; rules are filed by
    conflict key so that a move tries only the rules it could conflict with."""

    def __init__(self, rules: Sequence[Rule], space: Space, outcomes: list[Outcome]) -> None:
        self.rules = rules
        self.space = space
        numbers: dict[Outcome, int] = {}
        self.outcomes = [numbers.setdefault(outcome, len(numbers)) for outcome in outcomes]
        self.keys: list[ConflictKey] = [
            (rule.match.protocol, _family_name(rule.match.family), number)
            for rule, number in zip(rules, self.outcomes, strict=True)
        ]
        self.distinct_keys = list(dict.fromkeys(self.keys))
        self.conflicting: dict[ConflictKey, list[ConflictKey]] = {}
        self.cubes: dict[int, list[Cube]] = {}
        self.apart: dict[tuple[int, int], bool] = {}
        self.bounds: list[Bounds | None] = [None] * len(rules)  # each rule's, once asked for
        self.alone: dict[int, Group] = {}  # the groups of rules that stay rules of their own
        # The round's groups, their member counts, by outcome the positions
        # and member counts of the groups all of whose members have it (what
        # a rule of that outcome jumps for 1), and the rules placed, by
        # conflict key, as (group position, rule) in order.
        self.plan: list[Group] = []
        self.counts: list[int] = []
        self.same: dict[int, tuple[list[int], list[int]]] = {}
        self.placed: dict[ConflictKey, list[tuple[int, int]]] = {}

    def run(self, keyed: list[Keyed | None]) -> list[Group]:
        """One round: each rule with a shape in `keyed` joins the latest
        group of its shape if it can move there, else starts one."""
        self.plan, self.counts, self.same, self.placed = [], [], {}, {}
        last_of_shape: dict[int, int] = {}  # shape number -> position of its latest group
        plan, keys, alone = self.plan, self.keys, self.alone
        for index, this in enumerate(keyed):
            outcome = self.outcomes[index]
            if this is not None:
                shape, number, elements = this
                at = last_of_shape.get(number)
                if at is not None and self._can_move(index, at + 1):
                    group = plan[at]
                    was = next(iter(group.outcomes)) if len(group.outcomes) == 1 else MIXED
                    if join(group, index, elements, outcome):
                        self._grown(index, at, was)
                        continue
                group = start(shape, index, elements, outcome)
                last_of_shape[number] = len(plan)
            elif index in alone:
                group = alone[index]
            else:  # never joined: the same group in every round
                group = alone[index] = Group(None, [index], outcomes={outcome})
            # Filed inline, as `_file` and `same` would: this runs once per group of every round,
            # and a new group's position is the latest, so each list stays in order by appending.
            position = len(plan)
            plan.append(group)
            self.counts.append(1)
            same = self.same.get(outcome)
            if same is None:
                same = self.same[outcome] = ([], [])
            same[0].append(position)
            same[1].append(1)
            placed = self.placed.get(keys[index])
            if placed is None:
                placed = self.placed[keys[index]] = []
            placed.append((position, index))
        return plan

    def _grown(self, index: int, position: int, was: int) -> None:
        """Rule `index` joined the group at `position`, whose members all had outcome `was` (or MIXED)."""
        self.counts[position] += 1
        if was != MIXED:
            positions, counts = self.same[was]
            at = bisect.bisect_left(positions, position)
            if len(self.plan[position].outcomes) == 1:
                counts[at] += 1
            else:
                del positions[at], counts[at]
        self._file(index, position)

    def _file(self, index: int, position: int) -> None:
        placed = self.placed.setdefault(self.keys[index], [])
        if placed and placed[-1][0] > position:
            bisect.insort(placed, (position, index))
        else:
            placed.append((position, index))

    def _can_move(self, index: int, start: int) -> bool:
        """Whether rule `index`, a plain one, may be evaluated before every
        rule in plan[start:]: each has its verdict or shares no packet with
        it, and jumping them costs at most MOVE_BUDGET (a group 1, and 1 per
        member unless all its members have this rule's outcome)."""
        count = len(self.plan) - start
        if count > MOVE_BUDGET:
            return False
        positions, counts = self.same.get(self.outcomes[index], ([], []))
        same = sum(counts[bisect.bisect_left(positions, start) :])
        if count + sum(self.counts[start:]) - same > MOVE_BUDGET:
            return False
        # The loop of every move: the pair cache read inline, not through a method.
        apart = self.apart
        own = self.keys[index]
        conflicting = self.conflicting.get(own)
        for key in self._conflicting(own) if conflicting is None else conflicting:
            placed = self.placed.get(key)
            if placed:
                for _, other in placed[bisect.bisect_left(placed, (start, -1)) :]:
                    pair = (index, other)
                    known = apart.get(pair)
                    if known is None:
                        known = apart[pair] = self._disjoint(index, other)
                    if not known:
                        return False
        return True

    def _conflicting(self, key: ConflictKey) -> list[ConflictKey]:
        """The conflict keys of the rules that may share packets with a rule
        of `key` and differ in outcome."""
        if key not in self.conflicting:
            protocol, family, outcome = key
            self.conflicting[key] = [
                (p, f, o)
                for p, f, o in self.distinct_keys
                if o != outcome
                and (protocol is None or p is None or p == protocol)
                and (family is None or f is None or f == family)
            ]
        return self.conflicting[key]

    def _disjoint(self, index: int, other: int) -> bool:
        """Whether no packet matches both rules: by their bounds where they
        tell (protocols are apart by conflict key already), else by the
        match space."""
        bounds = self.bounds
        mine = bounds[index] or self._bounds(index)
        theirs = bounds[other] or self._bounds(other)
        if mine.family and theirs.family and mine.family != theirs.family:
            return True
        for here, there in zip(mine.intervals, theirs.intervals, strict=True):
            if here is None or there is None:
                continue
            if len(here) == 1 and len(there) == 1:  # one interval each, most fields of most rules: inline
                if here[0][0] > there[0][1] or there[0][0] > here[0][1]:
                    return True
            elif not _meet(here, there):
                return True
        for names, others in zip(mine.names, theirs.names, strict=True):
            if names is not None and others is not None and names.isdisjoint(others):
                return True
        if mine.exact and theirs.exact:
            return False  # every dimension meets, and no other match narrows either rule
        return not overlap(self._cubes(index), self._cubes(other))

    def _bounds(self, index: int) -> Bounds:
        found = self.bounds[index] = _bounds(self.rules[index].match)
        return found

    def _cubes(self, index: int) -> list[Cube]:
        if index not in self.cubes:
            self.cubes[index] = self.space.cubes(self.rules[index].match)
        return self.cubes[index]


class Bounds(NamedTuple):
    """What a rule matches, as far as quick tests go: its family (of the
    rule or its addresses), its sport, dport, saddr and daddr as sorted
    intervals and its interface names, each None where it does not narrow
    it down (negated or run-time addresses, wildcards). `exact` if the
    rule matches nothing else, so that two such rules whose every
    dimension meets share packets."""

    family: str | None
    intervals: tuple[tuple[Interval, ...] | None, ...]
    names: tuple[frozenset[str] | None, ...]
    exact: bool


def _bounds(match: Match) -> Bounds:
    # Field by field, without loops over pairs: this runs once per rule.
    saddr, daddr, iifname, oifname = match.saddr, match.daddr, match.iifname, match.oifname
    source = None if saddr is None or saddr.negated or saddr.runtime else saddr
    destination = None if daddr is None or daddr.negated or daddr.runtime else daddr
    incoming = None if iifname is None or _wildcard(iifname) else frozenset(iifname.names)
    outgoing = None if oifname is None or _wildcard(oifname) else frozenset(oifname.names)
    family, mixed = match.family, False  # the one family of the rule and its addresses, if one
    for addresses in (source, destination):
        if addresses is not None:
            if family is None:
                family = addresses.family
            elif addresses.family is not family:
                mixed = True
    return Bounds(
        family=None if mixed else _family_name(family),
        intervals=(
            None if match.sport is None else match.sport.ranges,
            None if match.dport is None else match.dport.ranges,
            None if source is None else _intervals(source),
            None if destination is None else _intervals(destination),
        ),
        names=(incoming, outgoing),
        exact=(
            source is saddr
            and destination is daddr
            and (incoming is None) == (iifname is None)
            and (outgoing is None) == (oifname is None)
            and not (match.ct_state or match.icmp_types or match.ct_status)
        ),
    )


def _meet(a: tuple[Interval, ...], b: tuple[Interval, ...]) -> bool:
    """Whether sorted disjoint intervals share a point: `nfc.space.intersect`
    walked as far as the first point, without building the intersection."""
    i = j = 0
    while i < len(a) and j < len(b):
        (a_low, a_high), (b_low, b_high) = a[i], b[j]
        if a_low <= b_high and b_low <= a_high:
            return True
        if a_high < b_high:
            i += 1
        else:
            j += 1
    return False


def _wildcard(interfaces: Interfaces) -> bool:
    return any(name.endswith("*") for name in interfaces.names)


def _family_name(family: Family | None) -> str | None:
    """A family as a plain string: an enum member's value and hash are Python code, slow."""
    return None if family is None else "4" if family is Family.V4 else "6"


def _intervals(addresses: Addresses) -> tuple[Interval, ...]:
    """Networks as sorted intervals, IPv6 ones above every IPv4 one: of
    different families, they are apart."""
    offset, bits = (0, 32) if addresses.family is Family.V4 else (1 << 128, 128)
    return tuple(
        [
            (low := offset + int(network.network_address), low + (1 << (bits - network.prefixlen)) - 1)
            for network in addresses.networks
        ]
    )


def _outcome(rule: Rule) -> Outcome:
    """What a plain rule does to every packet it matches; None for a rule
    with a side effect (log, counter) or one that may let packets on (meter).
    A reject's message depends on the family it is written for."""
    if rule.meter is not None or rule.log is not None or rule.counter:
        return None
    return rule.verdict, rule.match.family if rule.verdict.kind == "reject" else None
