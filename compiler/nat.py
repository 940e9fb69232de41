"""The lowering passes of the `nat` section: each NAT rule checked and
split by family, the `forward` accepts that a `dnat` implies, and the
refusal of NAT where a notrack entry untracks the packets (NAT works on
connections, so it needs connection tracking)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from nfc import space, vocab
from nfc.check import RuleChecker, check_comment
from nfc.context import Lowering
from nfc.defines import Defines
from nfc.errors import Loc, PolicyError, printable
from nfc.ir import (
    BOTH_FAMILIES,
    Addresses,
    Chain,
    Family,
    Match,
    NatRule,
    NotrackRule,
    Ports,
    Rule,
    RuleRole,
    Ruleset,
    Verdict,
)
from nfc.syntax import NatAction, ParsedNat, PortItem
from nfc.values import PortValue, port_number, port_range, service_port

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
PORTS = re.compile(r"[0-9]+(-[0-9]+)?\Z")


@dataclass(frozen=True)
class Target:
    """Where a NAT rule sends a connection: a new address, new ports, or both."""

    address: Address | None
    ports: tuple[int, int] | None


def lower_nat(lowering: Lowering) -> None:
    """Each NAT rule, one per family where it needs a split; then the
    notrack entries that would keep any of them from working."""
    for parsed in lowering.tree.nat:
        lowering.nat.extend(_lower_nat_rule(lowering, parsed))
    _refuse_untracked(lowering.nat, lowering.notrack)


def _lower_nat_rule(lowering: Lowering, parsed: ParsedNat) -> list[NatRule]:
    text, action, node = parsed.text, parsed.node.action, parsed.node.rule
    checker = RuleChecker(lowering.defines, lowering.objects, node, chain=None, nat=action.kind)
    parts = checker.check_matches()
    target = _target(action, lowering.defines)
    where = action.target_loc or action.loc
    if target.ports is not None and parts.protocol not in vocab.PORT_PROTOCOLS:
        raise PolicyError(
            where, f"a {action.kind} to a port needs a protocol with ports", "add tcp, udp or sctp"
        )
    if target.address is not None:
        family = Family.V4 if target.address.version == 4 else Family.V6
        if family not in parts.families:
            raise PolicyError(
                where,
                f"{action.kind} to an {_family_word(family)} address, "
                f"but the rule matches {_family_word(next(iter(parts.families)))} packets only",
            )
        parts.families = frozenset((family,))
    comment = check_comment(text, node)
    families = [f for f in BOTH_FAMILIES if f in parts.families]
    return [
        NatRule(
            kind=action.kind,
            match=match,
            origin=text.loc,
            address=target.address,
            ports=target.ports,
            comment=comment,
            expires=text.expires,
        )
        for match in checker.matches(parts, families)
    ]


def _family_word(family: Family) -> str:
    return "IPv4" if family is Family.V4 else "IPv6"


def _target(action: NatAction, defines: Defines) -> Target:
    if action.port is not None:
        return Target(None, _redirect_port(action.port, defines))
    if action.target is None or action.target_loc is None:
        return Target(None, None)  # masquerade: the address of the output interface
    text, loc = action.target, action.target_loc
    address_text, ports_text, ports_at = _split_target(text, loc)
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        raise PolicyError(loc, f"'{printable(address_text)}' is not a valid IP address") from None
    if address.is_unspecified or address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
        raise PolicyError(loc, f"{action.kind} needs the address of one host, not {address}")
    if ports_text is None:
        return Target(address, None)
    ports_loc = Loc(loc.file, loc.line, loc.col + ports_at)
    if not PORTS.match(ports_text):
        raise PolicyError(
            ports_loc, f"'{printable(ports_text)}' is not a port or a port range (80, 8000-8080)"
        )
    low, _, high = ports_text.partition("-")
    first = port_number(low, ports_loc)
    return Target(
        address, port_range(first, port_number(high, ports_loc), ports_loc) if high else (first, first)
    )


def _split_target(text: str, loc: Loc) -> tuple[str, str | None, int]:
    """The address and the port part of `ADDR[:PORTS]` or `[IPV6][:PORTS]`,
    and the offset of the ports in `text`."""
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise PolicyError(loc, f"'{printable(text)}' is not an address with a port")
        return address, rest[1:] or None, len(address) + 3
    if text.count(":") == 1:  # IPv4 with a port: an IPv6 address holds two colons at least
        address, _, ports = text.partition(":")
        return address, ports, len(address) + 1
    if "-" in text and ":" in text:
        raise PolicyError(
            loc,
            f"'{printable(text)}' is not a valid IP address",
            "an IPv6 address with a port goes in brackets: [2001:db8::10]:443",
        )
    return text, None, 0


def _redirect_port(item: PortItem, defines: Defines) -> tuple[int, int]:
    if item.kind == "number":
        return port_range(int(item.value), int(item.value), item.loc)
    if item.kind == "range":
        return port_range(int(item.value), int(item.end or 0), item.loc)
    if item.kind == "service":
        port = service_port(str(item.value), item.loc)
        return port, port
    value = defines.value(str(item.value), item.loc)
    if not isinstance(value, PortValue):
        raise PolicyError(item.loc, f"'${item.value}' holds addresses, not ports")
    if len(value.ranges) != 1:
        raise PolicyError(item.loc, f"'${item.value}' holds several ports; redirect takes one port or range")
    return value.ranges[0]


def accept_dnat_forward(lowering: Lowering) -> None:
    """Under `state: auto`, forward accepts what each `dnat` translated, so
    a port forward works without a rule of its own: after the state rules,
    before the chain's own rules. The match is the translated packet's: the
    new address and port, the rule's protocol, source and input interface."""
    section = lowering.tree.source.chains.get("forward")
    if section is None or not section.has_state_rules:
        return
    rules = lowering.chain_rules.setdefault("forward", [])
    for nat in lowering.nat:
        if nat.kind != "dnat" or nat.address is None:
            continue
        family = Family.V4 if nat.address.version == 4 else Family.V6
        new_address = Addresses(family, (ipaddress.ip_network(nat.address),))
        match = Match(
            family=family,
            protocol=nat.match.protocol,
            saddr=nat.match.saddr,
            iifname=nat.match.iifname,
            daddr=new_address,
            dport=Ports((nat.ports,)) if nat.ports else nat.match.dport,
            ct_status=("dnat",),
        )
        rules.append(Rule(match, Verdict("accept"), nat.origin, role=RuleRole.DNAT_FORWARD))


def _refuse_untracked(nat_rules: list[NatRule], notrack: list[NotrackRule]) -> None:
    """NAT acts on connections: an untracked packet is never translated. A
    dnat or redirect sees every packet in prerouting, whether it is for the
    host or routed after translation, so every prerouting entry counts; a
    masquerade or snat sees forwarded packets (prerouting entries with scope
    routed or all) and the host's own (output entries)."""
    if not nat_rules or not notrack:
        return
    probe = _probe(nat_rules, notrack)
    packets = space.Space(probe)
    entry_cubes = [(entry, packets.cubes(entry.match)) for entry in notrack]
    for nat in nat_rules:
        cubes = packets.cubes(nat.match)
        for entry, untracked in entry_cubes:
            if _sees(nat, entry) and space.overlap(cubes, untracked):
                hint = (
                    "narrow the notrack entry, or give it 'scope: host' so that it leaves forwarded "
                    "packets alone"
                    if nat.hook == "postrouting" and entry.hook == "prerouting"
                    else "narrow the notrack entry or the NAT rule so that they share no packet"
                )
                raise PolicyError(
                    nat.origin,
                    f"NAT needs connection tracking, but the notrack entry at {entry.origin} "
                    "untracks these packets",
                    hint,
                )


def _sees(nat: NatRule, entry: NotrackRule) -> bool:
    """Whether packets that `entry` untracks can reach `nat`'s hook."""
    if nat.hook == "prerouting":
        return entry.hook == "prerouting"
    return entry.hook == "output" or entry.destination != "host"


def _probe(nat_rules: list[NatRule], notrack: list[NotrackRule]) -> Ruleset:
    """A ruleset holding the NAT rules' and the notrack entries' matches:
    `space.Space` draws its interface names and protocols from rulesets."""
    origin = nat_rules[0].origin
    chain = Chain(
        "forward", "accept", tuple(Rule(n.match, Verdict("accept"), n.origin) for n in nat_rules), origin
    )
    return Ruleset("probe", "probe", origin.file, tuple(notrack), (chain,), (), (), (), ())
