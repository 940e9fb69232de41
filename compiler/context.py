"""What the lowering passes share: the parsed policy and the target going
in, the resolved defines and named objects along the way, and the IR parts
each pass adds. `ruleset()` puts the parts together at the end."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nfc.defines import Defines
from nfc.errors import Loc
from nfc.ir import CHAIN_NAMES, Chain, Match, NatRule, NotrackRule, Rule, Ruleset, Sysctl
from nfc.objects import NamedObjects
from nfc.syntax import PolicyTree
from nfc.target import Target


@dataclass(frozen=True)
class Answer:
    """A reply that a notrack entry implies, and the chain that sees it."""

    match: Match
    origin: Loc
    chain: str


@dataclass
class Lowering:
    tree: PolicyTree
    target: Target
    defines: Defines
    objects: NamedObjects
    notrack: list[NotrackRule] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    chain_rules: dict[str, list[Rule]] = field(default_factory=dict)  # by chain name
    sysctls: list[Sysctl] = field(default_factory=list)
    nat: list[NatRule] = field(default_factory=list)

    @classmethod
    def start(cls, tree: PolicyTree, target: Target) -> Lowering:
        source = tree.source
        objects = NamedObjects(source.defines)
        for declaration in source.sets.values():
            objects.runtime_sets(declaration)
        return cls(tree, target, Defines(source.defines, source.interfaces, source.sets), objects)

    def ruleset(self) -> Ruleset:
        source = self.tree.source
        objects = self.objects
        return Ruleset(
            name=source.name,
            table=source.table,
            source=source.path,
            notrack=tuple(self.notrack),
            chains=tuple(
                Chain(
                    name,
                    source.chains[name].policy,
                    tuple(
                        replace(rule, counter=True) if source.counters else rule
                        for rule in self.chain_rules.get(name, ())
                    ),
                    source.chains[name].loc,
                )
                for name in CHAIN_NAMES
                if name in source.chains
            ),
            address_sets=tuple(objects.address_sets[n] for n in sorted(objects.address_sets)),
            port_sets=tuple(objects.port_sets[n] for n in sorted(objects.port_sets)),
            meters=tuple(objects.meters[n] for n in sorted(objects.meters)),
            sysctls=tuple(self.sysctls),
            nat=tuple(self.nat),
            runtime_sets=tuple(objects.runtime[n] for n in sorted(objects.runtime)),
        )
