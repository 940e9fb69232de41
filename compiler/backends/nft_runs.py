"""Runs of rules the nft optimizer (nft_optimize) writes one by one, each
folded where one rule decides exactly as the run does.

- Plain rules that match a connection state alone (`ct state invalid
  drop`, `ct state established,related accept`) become one verdict map on
  the state, which a packet has exactly one of; a state keeps the verdict
  of the first rule that names it.
- ICMP rules (`icmp type ...`, `icmpv6 type ...`) move, in their order, to
  a chain of their own that only ICMP packets jump to.
- A long run of rules of TCP, UDP and SCTP moves, rule by rule, to a chain
  per protocol, in order, and one named verdict map on the protocol jumps
  there: a packet meets the rules of its protocol alone, which are the
  only ones of the run that could match it, in their order, so its first
  match is the same. A packet the chain does not decide comes back and
  goes on after the run.

Every other packet then meets one rule where it met each of the run's.

A load costs the kernel little per rule, but each anonymous set (an inline
list `{ a, b }`, an inline verdict map) is bound to its rule by a walk of
everything the load has added so far, and each new set's name is checked
against the table's sets: a table of thousands of sets loads in time that
grows with their number times the ruleset's size. So:

- A rule with short inline lists (`from { a, b } dport { 80, 443 }`) is
  written as one rule per combination of their values (`split`). The
  values of a list never share a packet (addresses are collapsed, ports
  merged, interface names exact), so at most one of the rules matches a
  packet, and its verdict ends the packet's walk as the rule's did: a
  counter or a log counts and logs each packet once (`nfc stats` adds up
  the counters of a policy line's rules), and a meter's table or a named
  limit is shared by name. An inline `limit rate` is a bucket of the
  rule's own, so its rule stays whole.
- A list of addresses or ports a rule keeps (a long one, a negated one,
  one beside an inline limit) is a named set, one per distinct list of
  the chain (`named_lists`), and so is the verdict map of a run by
  protocol."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import TypeVar

import nfc.backends.nft as nft
from nfc import vocab
from nfc.backends.common import network_text, rule_note
from nfc.backends.nft_groups import MAP_VERDICTS
from nfc.ir import Addresses, Chain, Interfaces, Match, Ports, Rule, Ruleset

ICMP_PROTOCOLS = ("icmp", "icmpv6")
MIN_DISPATCH = 8  # rules of a run before a jump per protocol beats a rule each
# Rules a rule with inline lists may become: a packet meets each of them
# where it met one set lookup, so only short lists are split.
MAX_SPLIT = 8
# The fields a rule may be split by.
SPLIT_FIELDS = ("iifname", "oifname", "saddr", "daddr", "sport", "dport")
SPLIT_VALUES = operator.attrgetter(*SPLIT_FIELDS)
T = TypeVar("T")


class Declarations:
    """What a chain's optimized text declares besides its rules: the blocks
    (a list the caller shares with its lookups' sets), the chain names
    taken, each once, the numbers of its sets and maps, and the named sets
    of the inline lists its rules keep."""

    def __init__(self, chain: str, blocks: list[list[str]]) -> None:
        self.chain = chain
        self.blocks = blocks
        self.taken: set[str] = set()
        self.numbers: dict[str, int] = {}  # a chain name asked for -> the number to try first
        self.lookups = 0
        self.lists: dict[tuple[object, ...], str] = {}  # a list's values -> its set's name

    def lookup_name(self, kind: str) -> str:
        """CHAIN_setN or CHAIN_mapN: policy objects' names end in _v4, _v6,
        _ports or _limit, never in a digit."""
        self.lookups += 1
        return f"{self.chain}_{kind}{self.lookups}"

    def declare(self, ruleset: Ruleset, name: str, rules: list[Rule]) -> str:
        """A chain of `rules` under `name`, or NAME2, NAME3, ... where taken; its name."""
        number = self.numbers.get(name, 1)  # every one below is taken: not walked again for each chain
        while (f"{name}{number}" if number > 1 else name) in self.taken:
            number += 1
        self.numbers[name] = number + 1
        name = f"{name}{number}" if number > 1 else name
        self.taken.add(name)
        body = _each(ruleset, rules, self)
        self.blocks.append([f"chain {name} {{", *[f"\t{line}" for line in body], "}"])
        return name

    def list_set(self, ruleset: Ruleset, rule: Rule, value: Addresses | Ports) -> str:
        """The name of a set of `value`'s networks or ports, declared the first
        time, each element with the comment FILE:LINE of `rule`."""
        key = (value.family, value.networks) if isinstance(value, Addresses) else (value.ranges,)
        if key not in self.lists:
            name = self.lists[key] = self.lookup_name("set")
            if isinstance(value, Addresses):
                kind, texts = nft.ADDRESS_TYPE[value.family], [network_text(n) for n in value.networks]
            else:
                kind, texts = "inet_service", [nft._port_range(bounds) for bounds in value.ranges]
            comment = nft._comment(ruleset, rule.origin, None)
            entries = [f"\t\t{text} {comment}," for text in texts]
            entries[-1] = entries[-1][:-1]
            self.blocks.append(
                [
                    f"set {name} {{",
                    f"\ttype {kind}",
                    "\tflags interval",
                    "\telements = {",
                    *entries,
                    "\t}",
                    "}",
                ]
            )
        return self.lists[key]


# A run's text, or None where folding it would not pay.
Writer = Callable[[Ruleset, Chain, list[Rule], Declarations], str | None]


def single_rules(ruleset: Ruleset, chain: Chain, rules: list[Rule], declared: Declarations) -> list[str]:
    """Consecutive rules as nft text, the runs above folded. The kinds of
    run exclude each other (no protocol, ICMP, TCP, UDP or SCTP), so a run
    not folded is written rule by rule."""
    lines: list[str] = []
    start = 0
    while start < len(rules):
        end = start
        for fits, write in RUNS:
            while end < len(rules) and fits(rules[end]):
                end += 1
            if end > start:
                folded = write(ruleset, chain, rules[start:end], declared)
                lines += [folded] if folded is not None else _each(ruleset, rules[start:end], declared)
                break
        else:
            lines += _each(ruleset, rules[start : start + 1], declared)
            end = start + 1
        start = end
    return lines


def _each(ruleset: Ruleset, rules: list[Rule], declared: Declarations) -> list[str]:
    """Rules as nft text, each split (see `split`) and the inline lists it
    keeps named (see `named_lists`)."""
    return [
        line
        for rule in rules
        for line in nft._rule(
            ruleset, rule, [named_lists(ruleset, rule, part, declared) for part in split(rule)]
        )
    ]


def named_lists(ruleset: Ruleset, rule: Rule, match: Match, declared: Declarations) -> Match:
    """`match`, of `rule`, with each inline list of networks or ports it
    keeps a named set's, one per list of the chain: a named set costs the
    load a lookup by name, an anonymous one a walk of the whole transaction
    so far (its every rule, set and element) to bind it to its rule."""
    saddr, daddr, sport, dport = match.saddr, match.daddr, match.sport, match.dport
    if (
        (saddr is None or len(saddr.networks) < 2)
        and (daddr is None or len(daddr.networks) < 2)
        and (sport is None or len(sport.ranges) < 2)
        and (dport is None or len(dport.ranges) < 2)
    ):
        return match  # nothing listed: most rules, once split
    changes: dict[str, Addresses | Ports] = {}
    for name, addresses in (("saddr", saddr), ("daddr", daddr)):
        if addresses is not None and addresses.set_name is None and len(addresses.networks) > 1:
            changes[name] = _replaced(addresses, set_name=declared.list_set(ruleset, rule, addresses))
    for name, ports in (("sport", sport), ("dport", dport)):
        if ports is not None and ports.set_name is None and len(ports.ranges) > 1:
            changes[name] = Ports(ports.ranges, declared.list_set(ruleset, rule, ports))
    return _replaced(match, **changes) if changes else match


def split(rule: Rule) -> list[Match]:
    """The matches of `rule` as one rule per combination of the values of
    its inline lists, where they are at most MAX_SPLIT and the rule has no
    bucket of its own (see the module's docstring); else its match alone."""
    match = rule.match
    meter = rule.meter
    if meter is not None and meter.key is None and meter.name is None:
        return [match]
    fields = SPLIT_VALUES(match)
    iifname, oifname, saddr, daddr, sport, dport = fields
    if (
        (saddr is None or len(saddr.networks) < 2)
        and (dport is None or len(dport.ranges) < 2)
        and (daddr is None or len(daddr.networks) < 2)
        and (sport is None or len(sport.ranges) < 2)
        and (iifname is None or len(iifname.names) < 2)
        and (oifname is None or len(oifname.names) < 2)
    ):
        return [match]  # nothing listed: most rules
    columns: dict[str, list[Interfaces | Addresses | Ports]] = {}
    count = 1
    for name, value in zip(SPLIT_FIELDS, fields, strict=True):
        if value is not None:
            values = _values(value)
            if len(values) > 1:
                columns[name] = values
                count *= len(values)
    if count == 1 or count > MAX_SPLIT:
        return [match]
    return [
        _replaced(match, **dict(zip(columns, values, strict=True)))
        for values in itertools.product(*columns.values())
    ]


def _replaced(instance: T, **changes: object) -> T:
    """`dataclasses.replace` of an IR object, a frozen dataclass, without
    its checks and `__init__`: copied by its `__dict__`, ten times as fast,
    for the tens of thousands of rules a big policy's lists become."""
    copy = object.__new__(type(instance))
    copy.__dict__.update(instance.__dict__, **changes)
    return copy


def _values(value: Interfaces | Addresses | Ports) -> list[Interfaces | Addresses | Ports]:
    """An inline list's values, each a list of its own, in order; [] for
    anything else: a single value, a named set, a negation, a runtime set, a
    wildcard (it may share packets with another name). (An `interfaces`
    entry is written inline: its name is only for the policy.)"""
    if isinstance(value, Ports):
        if len(value.ranges) < 2 or value.set_name is not None:
            return []
        return [_replaced(value, ranges=(bounds,)) for bounds in value.ranges]
    if isinstance(value, Addresses):
        if len(value.networks) < 2 or value.set_name is not None or value.negated or value.runtime:
            return []
        return [_replaced(value, networks=(network,)) for network in value.networks]
    if len(value.names) < 2 or any(name.endswith("*") for name in value.names):
        return []
    return [_replaced(value, names=(name,), set_name=None) for name in value.names]


def _state_alone(rule: Rule) -> bool:
    states = rule.match.ct_state
    if not states or rule.meter is not None or rule.log is not None or rule.counter:
        return False
    return rule.verdict.kind in MAP_VERDICTS and rule.match == Match(ct_state=states)


def _state_map(ruleset: Ruleset, chain: Chain, rules: list[Rule], declared: Declarations) -> str | None:
    """`ct state vmap { ... }`: each state maps to the verdict of the first rule that names it."""
    if len(rules) < 2:
        return None
    entries: dict[str, str] = {}
    for rule in rules:
        for state in rule.match.ct_state:
            if state not in entries:
                comment = nft._comment(ruleset, rule.origin, rule_note(rule))
                entries[state] = f"{state} {comment} : {rule.verdict.kind}"
    return f"ct state vmap {{ {', '.join(entries.values())} }} {_run_comment(ruleset, rules, 'verdict map')}"


def _icmp(rule: Rule) -> bool:
    return rule.match.protocol in ICMP_PROTOCOLS


def _icmp_chain(ruleset: Ruleset, chain: Chain, rules: list[Rule], declared: Declarations) -> str | None:
    """A jump to a chain of `rules`, for the ICMP packets alone."""
    if len(rules) < 2:
        return None
    name = declared.declare(ruleset, f"{chain.name}_icmp", rules)
    protocols = sorted({str(rule.match.protocol) for rule in rules})
    guard = protocols[0] if len(protocols) == 1 else f"{{ {', '.join(protocols)} }}"
    return f"meta l4proto {guard} jump {name} {_run_comment(ruleset, rules, name)}"


def _with_ports(rule: Rule) -> bool:
    return rule.match.protocol in vocab.PORT_PROTOCOLS


def _dispatch(ruleset: Ruleset, chain: Chain, rules: list[Rule], declared: Declarations) -> str | None:
    """`meta l4proto vmap @CHAIN_mapN`, a named map (see `named_lists`) of
    each protocol to a jump to a chain of the run's rules of that protocol."""
    protocols = sorted({str(rule.match.protocol) for rule in rules})
    if len(rules) < MIN_DISPATCH or len(protocols) < 2:
        return None
    entries = []
    for protocol in protocols:
        mine = [rule for rule in rules if rule.match.protocol == protocol]
        entries.append(f"{protocol} : jump {declared.declare(ruleset, f'{chain.name}_{protocol}', mine)}")
    name = declared.lookup_name("map")
    declared.blocks.append(
        [f"map {name} {{", "\ttype inet_proto : verdict", f"\telements = {{ {', '.join(entries)} }}", "}"]
    )
    return f"meta l4proto vmap @{name} {_run_comment(ruleset, rules, 'chains by protocol')}"


# How each run is recognised, and its writer; the first that folds wins.
RUNS: tuple[tuple[Callable[[Rule], bool], Writer], ...] = (
    (_state_alone, _state_map),
    (_icmp, _icmp_chain),
    (_with_ports, _dispatch),
)


def _run_comment(ruleset: Ruleset, rules: list[Rule], where: str) -> str:
    """The first rule's place, and its note when the run shares it (the
    rules a chain setting implies), else how many rules went where."""
    notes = {rule_note(rule) for rule in rules}
    note = notes.pop() if len(notes) == 1 else None
    return nft._comment(ruleset, rules[0].origin, note or f"{len(rules)} rules in {where}")
