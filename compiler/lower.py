"""The lower stage: a parsed policy (`PolicyTree`) → IR (`Ruleset`).

Lowering is a list of passes over one shared `Lowering` context, run in
order; each finds the policy's mistakes in its part as PolicyErrors at
their file:line:col, so the first pass to object reports first."""

from __future__ import annotations

from collections.abc import Callable

from nfc.context import Lowering
from nfc.desugar import add_implied_rules, lower_rules, mirror_notrack
from nfc.ir import Ruleset
from nfc.nat import accept_dnat_forward, lower_nat
from nfc.syntax import PolicyTree
from nfc.target import Target, conntrack_sysctls


def resolve_defines(lowering: Lowering) -> None:
    """Every define, used or not: unknown names, cycles and mixed lists."""
    lowering.defines.resolve_all()


def set_sysctls(lowering: Lowering) -> None:
    """The conntrack table size and timeouts the policy asks for."""
    lowering.sysctls.extend(conntrack_sysctls(lowering.tree.source.conntrack, lowering.target))


PASSES: tuple[Callable[[Lowering], None], ...] = (
    resolve_defines,
    mirror_notrack,  # notrack entries checked, mirrored into both directions; the answers they imply
    lower_nat,  # each NAT rule checked and split by family; refused where a notrack entry untracks it
    add_implied_rules,  # icmp: essential and state: auto, at the head of each chain
    accept_dnat_forward,  # forward accepts what a dnat translated, after the state rules
    lower_rules,  # each rule checked, split by family, its named sets and meters allocated
    set_sysctls,
)


def lower(tree: PolicyTree, target: Target | None = None) -> Ruleset:
    """Validate a parsed policy and turn it into IR."""
    lowering = Lowering.start(tree, target or Target.this_host())
    for lowering_pass in PASSES:
        lowering_pass(lowering)
    return lowering.ruleset()
