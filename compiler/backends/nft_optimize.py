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
`_plan`). Only nft is optimized: iptables-legacy stays linear."""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import nfc.backends.nft as nft
from nfc.backends.common import rule_note
from nfc.ir import Addresses, Chain, Family, Interfaces, Match, Ports, Rule, Ruleset, Verdict
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


def optimized_chain(ruleset: Ruleset, chain: Chain) -> nft.ChainText:
    """`chain` as nft text with its worthwhile groups folded into lookups."""
    plan = _plan(chain.rules, Space(ruleset))
    declarations: list[list[str]] = []
    lines: list[str] = []
    for group in plan:
        if group.shape is None or len(group.members) < MIN_MERGE:
            lines += [line for i in group.members for line in nft._rule(ruleset, chain.rules[i])]
            continue
        is_map = len({chain.rules[i].verdict.kind for i in group.members}) > 1
        # Policy objects' names end in _v4, _v6, _ports or _limit, never in a digit.
        name = f"{chain.name}_{'map' if is_map else 'set'}{len(declarations) + 1}"
        declarations.append(_declaration(ruleset, chain.rules, group, name, is_map))
        lines.append(_lookup_rule(ruleset, chain.rules, group, name, is_map))
    return nft.ChainText(declarations, lines)


def generate(ruleset: Ruleset) -> dict[str, str]:
    return {nft.RULESET: nft.render(ruleset, optimized_chain)}


# ---- planning


def _plan(rules: Sequence[Rule], space: Space) -> list[Group]:
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
