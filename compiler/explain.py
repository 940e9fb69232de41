"""nfc's executable semantics: walk a packet through the IR exactly as the
kernel walks the generated ruleset — the raw-priority notrack chain first,
then the destination NAT of prerouting (which may turn a packet for this
host into a forwarded one, or the reverse), then the filter chain of its
direction, then that chain's policy, and last the source NAT of postrouting.

Meters are the one thing a single packet cannot decide: explain assumes
the sender is within every limit (or over all of them, with `over_limit`)
and names each meter the packet passes through."""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right
from dataclasses import dataclass, field, replace

from nfc import vocab
from nfc.errors import Loc, printable
from nfc.ir import (
    Addresses,
    CtStatus,
    Family,
    Interfaces,
    Match,
    Meter,
    NatHook,
    NatRule,
    Ports,
    Rule,
    RuleRole,
    Ruleset,
)
from nfc.values import ascii_int

# A name as a rule's iif takes it, less the wildcard: what no rule can name
# (a byte that is not UTF-8, a terminal escape) is refused, not echoed.
INTERFACE = re.compile(r"[A-Za-z0-9_.:@+-]{1,15}\Z")
DIRECTIONS = {"in": ("prerouting", "input"), "fwd": ("prerouting", "forward"), "out": ("output", "output")}


class PacketError(Exception):
    """A packet description that cannot be read; exit code 2."""

    def __init__(self, column: int, message: str) -> None:
        super().__init__(message)
        self.column = column
        self.message = message


@dataclass(frozen=True)
class Packet:
    family: Family
    protocol: str
    saddr: ipaddress.IPv4Address | ipaddress.IPv6Address
    daddr: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int | None = None
    dport: int | None = None
    iif: str | None = None
    oif: str | None = None
    ct: str | None = None  # as the user says; None: new unless untracked
    direction: str = "in"
    icmp_type: str | None = None

    def describe(self) -> str:
        words = [self.protocol, self.source(), ">", self.destination()]
        for key, value in (("type", self.icmp_type), ("iif", self.iif), ("oif", self.oif), ("ct", self.ct)):
            if value is not None:
                words += [key, value]
        return " ".join([*words, "dir", self.direction])

    def source(self) -> str:
        return _endpoint_text(self.saddr, self.sport)

    def destination(self) -> str:
        return _endpoint_text(self.daddr, self.dport)


def _endpoint_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int | str | None) -> str:
    text = f"[{address}]" if address.version == 6 and port is not None else str(address)
    return f"{text}:{port}" if port is not None else text


def _endpoint(word: str, column: int) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]:
    if word.startswith("["):
        host, _, rest = word[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise PacketError(column, f"'{printable(word)}' is not ADDRESS, ADDRESS:PORT or [IPV6]:PORT")
    elif word.count(":") == 1:
        host, port_text = word.split(":")
    else:
        host, port_text = word, None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise PacketError(column, f"'{printable(host)}' is not an IP address") from None
    port = None
    if port_text is not None:
        port = ascii_int(port_text)
        if port is None or not 0 < port < 65536:
            raise PacketError(column, f"'{printable(port_text)}' is not a port (1-65535)")
    return address, port


def parse_packet(text: str) -> Packet:
    """`PROTO SRC[:PORT] > DST[:PORT] [type T] [iif N] [oif N] [ct STATE] [dir in|out|fwd]`."""
    words: list[tuple[str, int]] = []
    for found in re.finditer(r"\S+", text):
        words.append((found.group(), found.start() + 1))
    if len(words) < 4 or words[2][0] != ">":
        raise PacketError(1, "a packet is written PROTO SRC[:PORT] > DST[:PORT] ..., e.g. "
                          "'udp 198.51.100.7:5353 > 192.0.2.1:53 iif eth0'")  # fmt: skip
    protocol, column = words[0]
    if (number := ascii_int(protocol)) is not None:
        if number > 255:
            raise PacketError(column, f"protocol number {number} is out of range (0-255)")
        numbers = {number: name for name, number in vocab.PROTOCOLS.items()}
        protocol = numbers.get(number, str(number))
    elif protocol not in vocab.PROTOCOLS:
        raise PacketError(column, f"unknown protocol '{printable(protocol)}'")
    saddr, sport = _endpoint(*words[1])
    daddr, dport = _endpoint(*words[3])
    if saddr.version != daddr.version:
        raise PacketError(words[3][1], "source and destination are of different IP versions")
    has_ports = protocol in vocab.PORT_PROTOCOLS
    if (sport is not None or dport is not None) and not has_ports:
        raise PacketError(words[1][1], f"'{protocol}' has no ports")
    options: dict[str, str] = {}
    rest = words[4:]
    if len(rest) % 2:
        raise PacketError(rest[-1][1], f"'{printable(rest[-1][0])}' needs a value")
    for (key, column), (value, value_column) in zip(rest[::2], rest[1::2], strict=True):
        if key not in ("iif", "oif", "ct", "dir", "type"):
            raise PacketError(column, f"unknown word '{printable(key)}': expected iif, oif, ct, dir or type")
        if key in options:
            raise PacketError(column, f"'{key}' is given twice")
        if key == "ct" and value not in vocab.CT_STATES:
            raise PacketError(value_column, f"unknown connection state '{printable(value)}'")
        if key == "dir" and value not in DIRECTIONS:
            raise PacketError(value_column, "dir is in, out or fwd")
        if key in ("iif", "oif") and not INTERFACE.match(value):
            raise PacketError(value_column, f"'{printable(value)}' is not an interface name")
        options[key] = value
    family = Family.V4 if saddr.version == 4 else Family.V6
    icmp_type = options.get("type")
    if icmp_type is not None:
        types = vocab.ICMP_TYPES if protocol == "icmp" else vocab.ICMPV6_TYPES if protocol == "icmpv6" else {}
        if icmp_type not in types:
            raise PacketError(1, f"'{printable(icmp_type)}' is not a type of '{protocol}'")
    wrong_family = {"icmp": Family.V6, "icmpv6": Family.V4}.get(protocol)
    if family is wrong_family:
        raise PacketError(1, f"'{protocol}' does not travel over {'IPv6' if family is Family.V6 else 'IPv4'}")
    return Packet(
        family=family,
        protocol=protocol,
        saddr=saddr,
        daddr=daddr,
        sport=sport if has_ports else None,
        dport=dport if has_ports else None,
        iif=options.get("iif"),
        oif=options.get("oif"),
        ct=options.get("ct"),
        direction=options.get("dir", "in"),
        icmp_type=icmp_type,
    )


# --------------------------------------------------------------------------
# matching


def _ports_match(ports: Ports | None, port: int | None) -> bool:
    if ports is None:
        return True
    return port is not None and any(low <= port <= high for low, high in ports.ranges)


def _addresses_match(
    addresses: Addresses | None, address: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> bool:
    if addresses is None:
        return True
    if addresses.family.value != ("ipv4" if address.version == 4 else "ipv6"):
        return False
    # Collapsed and sorted (the IR's promise): only the last network that
    # starts at or below the address can hold it, so a list of a million
    # networks is searched, not walked.
    networks = addresses.networks
    at = bisect_right(networks, int(address), key=lambda network: int(network.network_address)) - 1
    inside = at >= 0 and address in networks[at]
    return inside != addresses.negated


def _interface_match(interfaces: Interfaces | None, name: str | None) -> bool:
    if interfaces is None:
        return True
    return name is not None and interfaces.admits(name)


def matches(match: Match, packet: Packet, ct: str | None, status: tuple[CtStatus, ...] = ()) -> bool:
    """Whether `packet`, in connection state `ct`, its connection translated
    as `status` says, matches `match`."""
    if match.family is not None and match.family is not packet.family:
        return False
    if not set(match.ct_status) <= set(status):
        return False
    if match.protocol is not None and match.protocol != packet.protocol:
        return False
    if match.icmp_types and packet.icmp_type not in match.icmp_types:
        return False
    if match.ct_state and ct not in match.ct_state:
        return False
    return (
        _ports_match(match.sport, packet.sport)
        and _ports_match(match.dport, packet.dport)
        and _addresses_match(match.saddr, packet.saddr)
        and _addresses_match(match.daddr, packet.daddr)
        and _interface_match(match.iifname, packet.iif)
        and _interface_match(match.oifname, packet.oif)
    )


# --------------------------------------------------------------------------
# the walk


@dataclass(frozen=True)
class MeterStep:
    meter: Meter
    origin: Loc
    matched: bool  # whether the rule matched under the assumption made


@dataclass(frozen=True)
class Translation:
    """What a NAT rule made of the packet: `before` and `after` differ in
    the destination (prerouting) or the source (postrouting)."""

    rule: NatRule
    before: Packet
    after: Packet

    @property
    def changes(self) -> bool:
        """Whether the packet's addresses or ports change. The kernel marks
        a connection translated (ct status dnat, snat) only when they do:
        a dnat to the address and port the packet already has is not one.
        A redirect of a forwarded packet changes its address (to this host's)."""
        if self.rule.kind == "redirect" and self.before.direction == "fwd":
            return True
        ends = ("saddr", "sport", "daddr", "dport")
        return any(getattr(self.before, end) != getattr(self.after, end) for end in ends)

    def line(self) -> str:
        rule, before, after = self.rule, self.before, self.after
        moved = {
            ("in", "fwd"): ", so the packet is forwarded",
            ("fwd", "in"): ", so the packet goes to input",
        }.get((before.direction, after.direction), "")
        if rule.kind in ("dnat", "redirect") and not self.changes:
            what = f"destination {before.destination()} stays as it is: no ct status dnat"
        elif rule.kind == "dnat":
            what = f"destination {before.destination()} becomes {after.destination()}"
        elif rule.kind == "redirect":
            port = f"port {after.dport} of " if after.dport is not None else ""
            what = f"destination {before.destination()} becomes {port}this host"
        elif rule.kind == "snat":
            new = after.source()
            if rule.ports and after.sport != before.sport:  # the kernel picks a free port of the range
                new = _endpoint_text(after.saddr, f"{rule.ports[0]}-{rule.ports[1]}")
            what = f"source {before.source()} becomes {new}"
        else:
            interface = f"oif {before.oif}" if before.oif else "the outgoing interface"
            what = f"source {before.saddr} becomes the address of {interface}"
        return f"{rule.origin}: {rule.kind}: {what}{moved}"

    def to_json(self) -> dict[str, object]:
        rule = self.rule
        return {
            "kind": rule.kind,
            "hook": rule.hook,
            "file": rule.origin.file,
            "line": rule.origin.line,
            "address": str(rule.address) if rule.address else None,
            "ports": list(rule.ports) if rule.ports else None,
        }


@dataclass
class Explanation:
    packet: Packet
    untracked_by: Loc | None = None
    ct: str | None = None
    chain: str | None = None
    verdict: str = "accept"  # accept | drop | reject
    rule: Rule | None = None  # None: the chain's policy (or no chain)
    meters: list[MeterStep] = field(default_factory=list)
    over_limit: bool = False
    dnat: Translation | None = None  # prerouting's: the filter judges its `after`
    snat: Translation | None = None  # postrouting's, after an accept

    @property
    def judged(self) -> Packet:
        """The packet as the filter chain sees it."""
        return self.dnat.after if self.dnat else self.packet

    def to_json(self) -> dict[str, object]:
        rule = self.rule
        data: dict[str, object] = {
            "packet": self.packet.describe(),
            "untracked": self.untracked_by is not None,
            "notrack_entry": str(self.untracked_by) if self.untracked_by else None,
            "ct_state": self.ct,
            "chain": self.chain,
            "verdict": self.verdict,
            "decided_by": (
                {"file": rule.origin.file, "line": rule.origin.line, "role": rule.role.value}
                if rule
                else {"chain_policy": self.chain}
            ),
            "meters": [
                {
                    "name": step.meter.name,
                    "file": step.origin.file,
                    "line": step.origin.line,
                    "rule_matched": step.matched,
                }
                for step in self.meters
            ],
            "assumed": "over every limit" if self.over_limit else "within every limit",
        }
        translations = [t for t in (self.dnat, self.snat) if t]
        if translations:  # absent without NAT: the output of earlier versions stays as it was
            data["nat"] = [t.to_json() for t in translations]
            data["translated_packet"] = self.judged.describe()
        return data

    def lines(self) -> list[str]:
        out = [f"packet: {self.packet.describe()}"]
        if self.untracked_by:
            out.append(f"{self.untracked_by}: untracked by this notrack entry (ct state untracked)")
        else:
            out.append(f"connection state: {self.ct}")
        if self.dnat:
            out += [self.dnat.line(), f"translated packet: {self.dnat.after.describe()}"]
        for step in self.meters:
            meter = step.meter
            name = f"meter {meter.name}" if meter.name else "a limit"
            key = f" per {meter.key}/{meter.prefix_len}" if meter.key else ""
            over = "over " if meter.over else ""
            rate = f"{over}{meter.rate.value}/{meter.rate.time_unit} burst {meter.burst}"
            effect = "the rule matches" if step.matched else "the rule does not match"
            assumed = "over the limit" if self.over_limit else "within the limit"
            out.append(f"{step.origin}: passes {name} ({rate}{key}): {assumed}, {effect}")
        if self.chain is None:
            out.append(f"verdict: {self.verdict.upper()}: no {DIRECTIONS[self.judged.direction][1]} chain")
        elif self.rule is None:
            out.append(f"verdict: {self.verdict.upper()} by the policy of chain {self.chain}")
        else:
            role = "" if self.rule.role is RuleRole.USER else f" ({self.rule.role.value})"
            out.append(f"{self.rule.origin}: verdict: {self.verdict.upper()} in chain {self.chain}{role}")
        if self.snat:
            out.append(self.snat.line())
        return out


def explain(ruleset: Ruleset, packet: Packet, over_limit: bool = False) -> Explanation:
    hook = DIRECTIONS[packet.direction][0]
    result = Explanation(packet, over_limit=over_limit)
    # In prerouting, a packet `dir in` is addressed to the host, `dir fwd` is not.
    destination = {"in": "host", "fwd": "routed"}.get(packet.direction)
    for entry in ruleset.notrack:
        if entry.destination not in (None, destination):
            continue
        if entry.hook == hook and matches(entry.match, packet, None):
            result.untracked_by = entry.origin
            break
    result.ct = "untracked" if result.untracked_by else (packet.ct or "new")
    # NAT sees only the first packet of a connection; later ones follow its
    # translation, which a single packet cannot show.
    translating = result.ct == "new"
    if translating and hook == "prerouting":
        result.dnat = _translate(ruleset, "prerouting", packet)
    status: tuple[CtStatus, ...] = ("dnat",) if result.dnat and result.dnat.changes else ()
    judged = result.judged
    _filter(ruleset, judged, result, status)
    if translating and result.verdict == "accept" and judged.direction != "in":
        result.snat = _translate(ruleset, "postrouting", judged, status)
    return result


def _filter(ruleset: Ruleset, packet: Packet, result: Explanation, status: tuple[CtStatus, ...]) -> None:
    """The verdict of the filter chain of `packet`'s direction, into `result`."""
    chain = next((c for c in ruleset.chains if c.name == DIRECTIONS[packet.direction][1]), None)
    if chain is None:
        return  # no base chain at this hook: the kernel accepts
    result.chain = chain.name
    for rule in chain.rules:
        if not matches(rule.match, packet, result.ct, status):
            continue
        if rule.meter is not None:
            # Within the limit a `limit over` rule does not match, a plain
            # `limit` rule does; over the limit the reverse.
            matched = rule.meter.over == result.over_limit
            result.meters.append(MeterStep(rule.meter, rule.origin, matched))
            if not matched:
                continue
        result.verdict = rule.verdict.kind
        result.rule = rule
        return
    result.verdict = chain.policy


def _translate(
    ruleset: Ruleset, hook: NatHook, packet: Packet, status: tuple[CtStatus, ...] = ()
) -> Translation | None:
    """The first NAT rule of `hook` that matches `packet` (a new connection), and what it makes of it."""
    rule = next((n for n in ruleset.nat if n.hook == hook and matches(n.match, packet, "new", status)), None)
    if rule is None:
        return None
    if rule.kind == "dnat":
        address = rule.address or packet.daddr
        after = replace(
            packet,
            daddr=address,
            dport=_port(rule.ports, packet.dport),
            # a packet for this host sent on to another one is forwarded
            direction="fwd" if address != packet.daddr else packet.direction,
        )
    elif rule.kind == "redirect":
        # The kernel writes the incoming interface's address, which explain
        # does not know: it keeps the destination address for the rules.
        after = replace(packet, dport=_port(rule.ports, packet.dport), direction="in")
    elif rule.kind == "snat":
        after = replace(packet, saddr=rule.address or packet.saddr, sport=_port(rule.ports, packet.sport))
    else:  # masquerade: the address of the outgoing interface, which explain does not know
        after = packet
    return Translation(rule, packet, after)


def _port(ports: tuple[int, int] | None, port: int | None) -> int | None:
    """The port a translation to `ports` gives a packet from or to `port`:
    kept when inside the range (the kernel keeps an unused one), else the
    range's first (dnat's choice; snat's is random, which `line` says)."""
    if ports is None or port is None:
        return port
    low, high = ports
    return port if low <= port <= high else low
