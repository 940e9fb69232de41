"""Runs of rules the nft optimizer (nft_optimize) writes one by one, each
folded where one rule decides exactly as the run does.

- Plain rules that match a connection state alone (`ct state invalid
  drop`, `ct state established,related accept`) become one verdict map on
  the state, which a packet has exactly one of; a state keeps the verdict
  of the first rule that names it.
- ICMP rules (`icmp type ...`, `icmpv6 type ...`) move, in their order, to
  a chain of their own that only ICMP packets jump to.
- A long run of rules of TCP, UDP and SCTP moves, rule by rule, to a chain
  per protocol, in order, and one verdict map on the protocol jumps there:
  a packet meets the rules of its protocol alone, which are the only ones
  of the run that could match it, in their order, so its first match is
  the same. A packet the chain does not decide comes back and goes on
  after the run.

Every other packet then meets one rule where it met each of the run's."""

from __future__ import annotations

from collections.abc import Callable

import nfc.backends.nft as nft
from nfc import vocab
from nfc.backends.common import rule_note
from nfc.backends.nft_groups import MAP_VERDICTS
from nfc.ir import Chain, Match, Rule, Ruleset

ICMP_PROTOCOLS = ("icmp", "icmpv6")
MIN_DISPATCH = 8  # rules of a run before a jump per protocol beats a rule each


class Chains:
    """What a chain's runs declare: the blocks (a list the caller shares
    with its sets) and the chain names taken, each once."""

    def __init__(self, blocks: list[list[str]]) -> None:
        self.blocks = blocks
        self.taken: set[str] = set()

    def declare(self, ruleset: Ruleset, name: str, rules: list[Rule]) -> str:
        """A chain of `rules` under `name`, or NAME2, NAME3, ... where taken; its name."""
        number = 1
        while (f"{name}{number}" if number > 1 else name) in self.taken:
            number += 1
        name = f"{name}{number}" if number > 1 else name
        self.taken.add(name)
        body = [line for rule in rules for line in nft._rule(ruleset, rule)]
        self.blocks.append([f"chain {name} {{", *(f"\t{line}" for line in body), "}"])
        return name


# A run's text, or None where folding it would not pay.
Writer = Callable[[Ruleset, Chain, list[Rule], Chains], str | None]


def single_rules(ruleset: Ruleset, chain: Chain, rules: list[Rule], chains: Chains) -> list[str]:
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
                folded = write(ruleset, chain, rules[start:end], chains)
                lines += [folded] if folded is not None else _each(ruleset, rules[start:end])
                break
        else:
            lines += nft._rule(ruleset, rules[start])
            end = start + 1
        start = end
    return lines


def _each(ruleset: Ruleset, rules: list[Rule]) -> list[str]:
    return [line for rule in rules for line in nft._rule(ruleset, rule)]


def _state_alone(rule: Rule) -> bool:
    states = rule.match.ct_state
    if not states or rule.meter is not None or rule.log is not None or rule.counter:
        return False
    return rule.verdict.kind in MAP_VERDICTS and rule.match == Match(ct_state=states)


def _state_map(ruleset: Ruleset, chain: Chain, rules: list[Rule], chains: Chains) -> str | None:
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


def _icmp_chain(ruleset: Ruleset, chain: Chain, rules: list[Rule], chains: Chains) -> str | None:
    """A jump to a chain of `rules`, for the ICMP packets alone."""
    if len(rules) < 2:
        return None
    name = chains.declare(ruleset, f"{chain.name}_icmp", rules)
    protocols = sorted({str(rule.match.protocol) for rule in rules})
    guard = protocols[0] if len(protocols) == 1 else f"{{ {', '.join(protocols)} }}"
    return f"meta l4proto {guard} jump {name} {_run_comment(ruleset, rules, name)}"


def _with_ports(rule: Rule) -> bool:
    return rule.match.protocol in vocab.PORT_PROTOCOLS


def _dispatch(ruleset: Ruleset, chain: Chain, rules: list[Rule], chains: Chains) -> str | None:
    """`meta l4proto vmap { tcp : jump CHAIN_tcp, ... }`, each chain the run's rules of its protocol."""
    protocols = sorted({str(rule.match.protocol) for rule in rules})
    if len(rules) < MIN_DISPATCH or len(protocols) < 2:
        return None
    entries = []
    for protocol in protocols:
        mine = [rule for rule in rules if rule.match.protocol == protocol]
        entries.append(f"{protocol} : jump {chains.declare(ruleset, f'{chain.name}_{protocol}', mine)}")
    return (
        f"meta l4proto vmap {{ {', '.join(entries)} }} {_run_comment(ruleset, rules, 'chains by protocol')}"
    )


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
