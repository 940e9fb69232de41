"""Static checks of reachability: rules that earlier rules shadow, rules
whose removal changes nothing, rules that match nothing. Each rule meets
only the earlier rules that may overlap it (nfc.space_index), and what
earlier rules leave to each rule is computed once for all the checks."""

from __future__ import annotations

from collections.abc import Iterator

from nfc.errors import Loc
from nfc.ir import Chain, Rule, RuleRole
from nfc.lint_registry import Check, Context, Coverage, filed_in
from nfc.space import Cube, overlap
from nfc.space_index import Index

REACH_CHECKS: list[Check] = []
check = filed_in(REACH_CHECKS)


def _terminal(rule: Rule) -> bool:
    """Decides every packet it matches (a meter decides only some)."""
    return rule.meter is None


def _coverage(ctx: Context, chain: Chain) -> list[Coverage]:
    """Each user rule (with its place in the chain), the part of its packets
    earlier rules leave to it, and the earlier terminal rules that take the
    rest; computed once per chain for every check that asks. The index
    offers only the earlier rules that may overlap: a chain of ten thousand
    rules is not fifty million comparisons."""
    if chain.name in ctx.coverage:
        return ctx.coverage[chain.name]
    terminal = Index([ctx.cubes(r.match) if _takes_for_sure(r) else [] for r in chain.rules])
    found = []
    # The first terminal rule of each match, with its takers and whether it has packets left:
    # a later copy of it (common in a long policy) is taken by the same rules and the rest by it.
    seen: Seen = {}
    for number, rule in enumerate(chain.rules):
        if rule.role is not RuleRole.USER:
            continue
        mine = ctx.cubes(rule.match)
        earlier = _copied(seen, mine)
        if earlier is not None:
            first, numbers, left = earlier
            remaining, taken = [], [*numbers, first] if left else numbers
        else:
            parts = terminal.first_match(mine, before=number)
            remaining = [cube for cube, taker in parts if taker is None]
            taken = sorted({t for _, t in parts if t is not None})
            if terminal.rules[number]:
                seen[tuple(mine)] = number, taken, bool(remaining)
        found.append(Coverage(number, rule, remaining, [chain.rules[t] for t in taken]))
    ctx.coverage[chain.name] = found
    return found


Seen = dict[tuple[Cube, ...], tuple[int, list[int], bool]]


def _copied(seen: Seen, cubes: list[Cube]) -> tuple[int, list[int], bool] | None:
    """The earlier terminal rule that matches exactly `cubes`, with its
    takers and whether it had packets left."""
    return seen.get(tuple(cubes)) if cubes else None


def _takes_for_sure(rule: Rule) -> bool:
    """Whether `rule` ends the walk of every packet it matches, as far as lint
    knows: a runtime set may be empty, so its rule takes nothing for sure."""
    addresses = (rule.match.saddr, rule.match.daddr)
    return _terminal(rule) and not any(a is not None and a.runtime for a in addresses)


def _named(rules: list[Rule]) -> str:
    """'the rules at lines 4, 7' in words a reader can find. The loopback
    accept is named only when it alone takes the packets: it takes a share of
    almost every rule's (those on lo), which is no news."""
    rules = [r for r in rules if r.role is not RuleRole.LOOPBACK] or rules
    names = sorted(
        {f"line {r.origin.line}" if r.role is RuleRole.USER else f"the {r.role.value} rules" for r in rules}
    )
    return ", ".join(names)


def _contradicting(rule: Rule, takers: list[Rule]) -> list[Rule]:
    """The earlier rules that decide some of `rule`'s packets otherwise. The
    implied state rules count only where no user rule takes part: `accept
    tcp dport 80` does not mean to accept invalid packets."""
    users = [t for t in takers if t.role is RuleRole.USER]
    return [t for t in (users or takers) if t.verdict.kind != rule.verdict.kind]


@check(
    "NFC030",
    "shadowed-rule",
    "error",
    "Earlier rules decide every packet this rule matches, some differently: it never takes effect.",
)
def shadowed_rule(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for chain in ctx.ruleset.chains:
        for _, rule, remaining, takers in _coverage(ctx, chain):
            if not remaining and ctx.cubes(rule.match) and _contradicting(rule, takers):
                yield (
                    rule.origin,
                    f"never matches a packet: {_named(takers)} decide them all first",
                    "move it above them, or delete it",
                )


@check("NFC031", "redundant-rule", "warning", "Removing this rule would change no packet's fate.")
def redundant_rule(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for chain in ctx.ruleset.chains:
        # The later rules that would decide a packet unlike the policy, if this one did not.
        unlike = Index([
            ctx.cubes(r.match) if r.verdict.kind != chain.policy or r.meter is not None else []
            for r in chain.rules
        ])  # fmt: skip
        for number, rule, remaining, takers in _coverage(ctx, chain):
            mine = ctx.cubes(rule.match)
            if not mine or rule.log is not None or rule.counter or rule.meter:
                continue
            if not remaining:
                if not _contradicting(rule, takers):
                    yield (
                        rule.origin,
                        f"{_named(takers)} already decide its packets alike",
                        "delete it",
                    )
                continue
            if rule.verdict.kind != chain.policy:
                continue
            # searched by the rule's own cubes: fewer than what is left of them, and a superset
            if not any(
                overlap(remaining, unlike.rules[other]) for other in unlike.candidates(mine, after=number)
            ):
                yield rule.origin, f"does what the chain's policy ({chain.policy}) does anyway", "delete it"


@check("NFC080", "matches-nothing", "error", "A rule whose match is empty in every family is dead text.")
def matches_nothing(ctx: Context) -> Iterator[tuple[Loc, str, str | None]]:
    for chain in ctx.ruleset.chains:
        for rule in ctx.user_rules(chain):
            if not ctx.cubes(rule.match):
                yield rule.origin, "matches no packet in any family", "check its 'not' and address lists"
    for nat in ctx.ruleset.nat:
        if not ctx.cubes(nat.match):
            yield nat.origin, "matches no packet in any family", "check its 'not' and address lists"
