"""What every lint check shares: the context it reads, the record of a
check (its stable code, name, severity and rationale) and the decorator
that files a check in a list. The checks live in nfc.lint (hygiene: expiry,
lockout, open services, meters), nfc.lint_conntrack (notrack and state),
nfc.lint_reach (shadowed, redundant and empty rules) and nfc.lint_nat (NAT)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from nfc.errors import Loc
from nfc.ir import Chain, Match, NotrackRule, Rule, RuleRole, Ruleset
from nfc.space import Cube, Space


class Coverage(NamedTuple):
    """A user rule, its place in its chain, the part of its packets earlier
    rules leave to it and the earlier terminal rules that take the rest."""

    number: int
    rule: Rule
    remaining: list[Cube]
    takers: list[Rule]


@dataclass(frozen=True)
class Context:
    ruleset: Ruleset
    space: Space
    today: dt.date
    management_port: int
    # each chain's coverage (nfc.lint_reach), computed once for the checks that read it
    coverage: dict[str, list[Coverage]] = field(default_factory=dict, compare=False)
    # each match's cubes, by identity: the checks ask for a rule's many times
    matched: dict[int, tuple[Match, list[Cube]]] = field(default_factory=dict, compare=False)

    def cubes(self, match: Match) -> list[Cube]:
        """`space.cubes(match)`, computed once per match of the ruleset."""
        known = self.matched.get(id(match))
        if known is None or known[0] is not match:
            known = self.matched[id(match)] = (match, self.space.cubes(match))
        return known[1]

    def chain(self, name: str) -> Chain | None:
        return next((c for c in self.ruleset.chains if c.name == name), None)

    def user_rules(self, chain: Chain) -> list[Rule]:
        return [r for r in chain.rules if r.role is RuleRole.USER]

    def for_other_hosts(self, chain: Chain) -> list[Rule]:
        """The rules that decide traffic with other hosts: all but the
        loopback accept, which only sees the host talking to itself."""
        return [r for r in chain.rules if r.role is not RuleRole.LOOPBACK]

    def entries(self, chain: str) -> list[NotrackRule]:
        """The notrack rules whose packets go on to `chain`: prerouting's to
        input when addressed to the host, to forward when not; output's."""
        if chain == "output":
            return [n for n in self.ruleset.notrack if n.hook == "output"]
        other = "routed" if chain == "input" else "host"
        return [n for n in self.ruleset.notrack if n.hook == "prerouting" and n.destination != other]


# A check yields where, what and how to fix it (None: no hint).
CheckFunction = Callable[[Context], Iterator[tuple[Loc, str, str | None]]]


@dataclass(frozen=True)
class Check:
    code: str
    name: str
    severity: str
    rationale: str
    run: CheckFunction


def filed_in(checks: list[Check]) -> Callable[[str, str, str, str], Callable[[CheckFunction], CheckFunction]]:
    """A decorator `check(code, name, severity, rationale)` that files each check it decorates in `checks`."""

    def check(
        code: str, name: str, severity: str, rationale: str
    ) -> Callable[[CheckFunction], CheckFunction]:
        def register(function: CheckFunction) -> CheckFunction:
            checks.append(Check(code, name, severity, rationale, function))
            return function

        return register

    return check


def accepts(rule: Rule) -> bool:
    return rule.verdict.kind == "accept"
