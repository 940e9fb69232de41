"""NAT rulesets built as the front end builds them (nfc-policy(5), NAT):
a policy's chains, plus NAT rules and, for each `dnat` under forward's
`state: auto`, the forward rule that accepts its translated connections."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from nfc.errors import Loc
from nfc.ir import (
    Addresses,
    Family,
    Interfaces,
    Match,
    NatKind,
    NatRule,
    Ports,
    Rule,
    RuleRole,
    Ruleset,
    Verdict,
)
from nfc.load import load_policy
from nfc.lower import lower
from nfc.parse import parse_policy
from nfc.space import Cube

from helpers import TARGET, write_policy

ROUTER = """\
nfc: 1
input:
  policy: drop
  rules:
    - accept tcp dport 22 from 192.168.1.0/24
    - accept udp dport 5353 iif eth1
forward:
  policy: drop
  STATE
  rules:
    - accept iif eth1 oif eth0
"""


def nat(
    kind: NatKind,
    line: int,
    to: str | None = None,
    ports: tuple[int, int] | None = None,
    file: str = "router.yaml",
    **match: object,
) -> NatRule:
    """A NAT rule at `file`:`line`; `match` holds Match fields, written
    short: saddr/daddr as text, dport as a port, iif/oif as names."""
    fields: dict[str, object] = {}
    for key, value in match.items():
        if key in ("saddr", "daddr"):
            network = ipaddress.ip_network(str(value))
            family = Family.V4 if network.version == 4 else Family.V6
            fields[key] = Addresses(family, (network,))
            fields["family"] = family
        elif key in ("sport", "dport"):
            low, high = value if isinstance(value, tuple) else (value, value)
            fields[key] = Ports(((low, high),))
        elif key in ("iif", "oif"):
            names = (value,) if isinstance(value, str) else tuple(value)  # type: ignore[arg-type]
            fields[f"{key}name"] = Interfaces(names)
        else:
            fields[key] = value
    address = ipaddress.ip_address(to) if to else None
    if address is not None:
        fields["family"] = Family.V4 if address.version == 4 else Family.V6
    return NatRule(kind, Match(**fields), Loc(file, line, 5), address, ports)  # type: ignore[arg-type]


def dnat_forward(rule: NatRule) -> Rule:
    """The forward accept the front end adds for a `dnat` under `state: auto`."""
    assert rule.kind == "dnat" and rule.address is not None
    family = Family.V4 if rule.address.version == 4 else Family.V6
    match = replace(
        rule.match,
        family=family,
        ct_status=("dnat",),
        daddr=Addresses(family, (ipaddress.ip_network(rule.address),)),
        dport=Ports((rule.ports,)) if rule.ports else rule.match.dport,
        oifname=None,
    )
    return Rule(match, Verdict("accept"), rule.origin, role=RuleRole.DNAT_FORWARD)


def port_forwards(count: int) -> list[NatRule]:
    """`count` port forwards from the WAN, each of a port of its own to a host of its own."""
    return [
        nat("dnat", 100 + i, to=f"192.168.{i // 250}.{i % 250 + 1}", protocol="tcp", dport=10000 + i,
            iif="eth0")
        for i in range(count)
    ]  # fmt: skip


class Intersections:
    """Counts cube intersections, the work an analysis does, in `count`
    (set it to 0 to start counting afresh)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        intersect = Cube.__and__

        def counted(cube: Cube, other: Cube) -> Cube | None:
            self.count += 1
            return intersect(cube, other)

        monkeypatch.setattr(Cube, "__and__", counted)


def with_nat(ruleset: Ruleset, *rules: NatRule, auto: bool = True) -> Ruleset:
    """`ruleset` with `rules`; under `auto` forward accepts each dnat's
    connections after its state rules and before the user's."""
    chains = []
    for chain in ruleset.chains:
        if chain.name == "forward" and auto:
            implied = [dnat_forward(r) for r in rules if r.kind == "dnat"]
            first_user = next(
                (i for i, r in enumerate(chain.rules) if r.role is RuleRole.USER), len(chain.rules)
            )
            chain = replace(chain, rules=(*chain.rules[:first_user], *implied, *chain.rules[first_user:]))
        chains.append(chain)
    return replace(ruleset, chains=tuple(chains), nat=rules)


def router(directory: Path, *rules: NatRule, auto: bool = True, policy: str = ROUTER) -> Ruleset:
    """The policy, written as `directory`/router.yaml (the NAT rules' file), with `rules`."""
    text = policy.replace("STATE", "state: auto" if auto else "state: manual")
    path = write_policy(directory, text, "router.yaml")
    return with_nat(lower(parse_policy(load_policy(path)), TARGET), *rules, auto=auto)


def shown(lines: list[str], directory: Path) -> list[str]:
    """Output lines with the policy's directory left out, as the NAT rules name their file."""
    return [line.replace(f"{directory}/", "") for line in lines]


MASQUERADE = nat("masquerade", 20, oif="eth0", saddr="192.168.1.0/24")
PORT_FORWARD = nat("dnat", 21, to="192.168.1.10", ports=(80, 80), protocol="tcp", dport=8080, iif="eth0")
REDIRECT = nat("redirect", 22, ports=(5353, 5353), protocol="udp", dport=53, iif="eth1")
SNAT = nat("snat", 23, to="203.0.113.7", oif="eth2", saddr="10.0.0.0/8")
