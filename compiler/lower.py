"""PolicySource → IR: resolve names, validate, split by family, mirror
notrack entries and add the rules that `state: auto` and `icmp: essential`
imply. Every mistake in the policy is a PolicyError at its file:line:col."""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from nfc import vocab
from nfc.errors import Loc, PolicyError, did_you_mean, printable
from nfc.ir import (
    BOTH_FAMILIES,
    BYTE_UNIT_FACTOR,
    TIME_UNIT_SECONDS,
    Addresses,
    Chain,
    Family,
    Log,
    Match,
    Meter,
    NamedAddressSet,
    NamedPortSet,
    Network,
    NotrackRule,
    Ports,
    Rate,
    Rule,
    RuleRole,
    Ruleset,
    Sysctl,
    Verdict,
)
from nfc.load import (
    COMMENT_MAX,
    IDENTIFIER,
    MAX_SYSCTL_INT,
    TIMEOUT_SYSCTLS,
    ChainSection,
    Define,
    PolicySource,
    RuleText,
    check_text,
    type_name,
)
from nfc.parse import Addrs, LimitNode, MatchNode, PortItem, RuleNode, parse_entry, parse_rule
from nfc.yaml_source import YNode

MAX_RATE = 2**32 - 1
MAX_METER_SIZE = 1 << 24
MAX_TIMEOUT_MS = 2**32 - 1  # hashlimit's htable-expire, and what nft takes for a set timeout
DEFAULT_METER_SIZE = 65535
DEFAULT_PACKET_BURST = 5
LOG_PREFIX_MAX = 64
IFNAME = re.compile(r"[A-Za-z0-9_.:@+-]{1,15}\*?\Z")
PORT_RANGE = re.compile(r"(\d+)-(\d+)\Z")
CONNTRACK_MAX_SYSCTL = "net.netfilter.nf_conntrack_max"


@dataclass(frozen=True)
class Target:
    """The machine a ruleset is for, where it matters (conntrack.max: auto)."""

    memory_bytes: int
    word_bits: int

    @classmethod
    def this_host(cls) -> Target:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return cls(memory_bytes=memory, word_bits=struct.calcsize("P") * 8)

    def conntrack_max(self) -> int:
        """RAM bytes / 16384 / (word bits / 32), the kernel documentation's sizing."""
        return min(MAX_SYSCTL_INT, self.memory_bytes // 16384 // (self.word_bits // 32))


# --------------------------------------------------------------------------
# defines


@dataclass(frozen=True)
class AddressValue:
    v4: tuple[Network, ...]
    v6: tuple[Network, ...]

    def of(self, family: Family) -> tuple[Network, ...]:
        return self.v4 if family is Family.V4 else self.v6


@dataclass(frozen=True)
class PortValue:
    ranges: tuple[tuple[int, int], ...]


DefineValue = AddressValue | PortValue


@functools.lru_cache(maxsize=65536)
def _network(text: str) -> Network:
    """A network written in a policy; ValueError if it is none. Cached: the
    same addresses recur across rules."""
    if ":" in text:
        return ipaddress.IPv6Network(text, strict=True)
    return ipaddress.IPv4Network(text, strict=True)


def parse_network(text: str, loc: Loc) -> Network:
    try:
        return _network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise PolicyError(loc, f"'{printable(text)}' is not a valid IP address or prefix") from None
        raise PolicyError(loc, f"'{printable(text)}' has host bits set", f"did you mean {loose}?") from None


def check_port(value: int, loc: Loc) -> int:
    if not 1 <= value <= 65535:
        raise PolicyError(loc, f"port {value} is out of range (1-65535)")
    return value


def port_range(low: int, high: int, loc: Loc) -> tuple[int, int]:
    check_port(low, loc)
    check_port(high, loc)
    if low > high:
        raise PolicyError(loc, f"port range {low}-{high} is reversed", f"write {high}-{low}")
    return low, high


def service_port(name: str, loc: Loc) -> int:
    if name not in vocab.SERVICES:
        raise PolicyError(
            loc, f"unknown service name '{printable(name)}'", did_you_mean(name, tuple(vocab.SERVICES))
        )
    return vocab.SERVICES[name]


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def collapse(networks: Iterable[Network]) -> tuple[Network, ...]:
    networks = tuple(networks)
    if len(networks) < 2:
        return networks
    return _collapsed(networks)


@functools.lru_cache(maxsize=4096)
def _collapsed(networks: tuple[Network, ...]) -> tuple[Network, ...]:
    """Cached: a define's list is collapsed again in every rule that uses it."""
    return tuple(sorted(ipaddress.collapse_addresses(networks)))


class Defines:
    """Resolves `$name` references, each define once, with cycle detection."""

    def __init__(self, defines: dict[str, Define]) -> None:
        self.defines = defines
        self.resolved: dict[str, DefineValue] = {}
        self.resolving: list[str] = []
        for name in sorted(defines):
            self.value(name, defines[name].loc)

    def value(self, name: str, use: Loc) -> DefineValue:
        if name in self.resolved:
            return self.resolved[name]
        if name not in self.defines:
            raise PolicyError(
                use,
                f"unknown name '${printable(name)}'",
                did_you_mean(name, tuple(self.defines)) if self.defines else "add it under 'define'",
            )
        if name in self.resolving:
            cycle = " -> ".join(f"${n}" for n in [*self.resolving[self.resolving.index(name) :], name])
            raise PolicyError(use, f"define cycle: {cycle}")
        self.resolving.append(name)
        define = self.defines[name]
        node = define.node
        items = node.value if isinstance(node.value, list) else [node]
        if not items:
            raise PolicyError(node.loc, f"define '{name}' is an empty list")
        addresses: list[Network] = []
        ports: list[tuple[int, int]] = []
        for item in items:
            self._item(item, addresses, ports)
        if addresses and ports:
            raise PolicyError(node.loc, f"define '{name}' mixes addresses and ports")
        self.resolving.pop()
        value: DefineValue
        if addresses:
            value = AddressValue(
                collapse(n for n in addresses if n.version == 4),
                collapse(n for n in addresses if n.version == 6),
            )
        else:
            value = PortValue(merge_ranges(ports))
        self.resolved[name] = value
        return value

    def _item(self, item: YNode, addresses: list[Network], ports: list[tuple[int, int]]) -> None:
        raw = item.value
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise PolicyError(
                item.loc,
                "a define value must be an address, a port, a port range or a service name, "
                f"not {type_name(raw)}",
            )
        if isinstance(raw, int):
            ports.append((check_port(raw, item.loc),) * 2)
            return
        text = raw.strip()
        if text.startswith("$"):
            value = self.value(text[1:], item.loc)
            if isinstance(value, AddressValue):
                addresses.extend(value.v4 + value.v6)
            else:
                ports.extend(value.ranges)
        elif match := PORT_RANGE.match(text):
            ports.append(port_range(int(match[1]), int(match[2]), item.loc))
        elif text.isdigit():
            ports.append((check_port(int(text), item.loc),) * 2)
        elif ":" in text or "." in text:
            addresses.append(parse_network(text, item.loc))
        else:
            ports.append((service_port(text, item.loc),) * 2)


# --------------------------------------------------------------------------
# one rule


@dataclass
class _Parts:
    """The matches of one rule, checked and resolved, before family split."""

    families: set[Family] = field(default_factory=lambda: set(BOTH_FAMILIES))
    protocol: str | None = None
    sport: Ports | None = None
    dport: Ports | None = None
    saddr: tuple[AddressValue, bool, str | None] | None = None
    daddr: tuple[AddressValue, bool, str | None] | None = None
    iifname: str | None = None
    oifname: str | None = None
    ct_state: tuple[str, ...] = ()
    icmp_types: tuple[str, ...] = ()


def _describe_families(families: Iterable[Family]) -> str:
    return (
        " and ".join("IPv4" if f is Family.V4 else "IPv6" for f in sorted(families, key=lambda f: f.value))
        or "no family"
    )


class RuleLowering:
    """Turns one parsed rule into IR matches, one per family it covers."""

    def __init__(self, lowering: Lowering, node: RuleNode, chain: str | None) -> None:
        self.lowering = lowering
        self.node = node
        self.chain = chain
        self.parts = _Parts()

    def restrict(self, families: set[Family], why: str, loc: Loc) -> None:
        remaining = self.parts.families & families
        if not remaining:
            raise PolicyError(
                loc,
                f"this rule can match no packet: {why} is {_describe_families(families)}-only, "
                f"but the rest of the rule is {_describe_families(self.parts.families)}-only",
            )
        self.parts.families = remaining

    def lower_matches(self) -> _Parts:
        seen: dict[str, Loc] = {}
        for match in self.node.matches:
            key = "icmp_type" if match.kind == "icmpv6_type" else match.kind
            if key in seen:
                raise PolicyError(match.loc, f"'{_match_word(match)}' is given twice (first at {seen[key]})")
            seen[key] = match.loc
            getattr(self, f"_match_{match.kind}")(match)
        parts = self.parts
        for kind in ("sport", "dport"):
            if getattr(parts, kind) is not None and parts.protocol not in vocab.PORT_PROTOCOLS:
                raise PolicyError(
                    seen[kind],
                    f"'{kind}' needs a protocol with ports",
                    "add tcp, udp or sctp before it",
                )
        return parts

    def _match_family(self, match: MatchNode) -> None:
        family = Family.V4 if match.value == "ip" else Family.V6
        self.restrict({family}, f"'{match.value}'", match.loc)

    def _match_proto(self, match: MatchNode) -> None:
        value = match.value
        if isinstance(value, int):
            if not 0 <= value <= 255:
                raise PolicyError(match.loc, f"protocol number {value} is out of range (0-255)")
            names = {number: name for name, number in vocab.PROTOCOLS.items()}
            value = names.get(value, str(value))
        elif value not in vocab.PROTOCOLS:
            raise PolicyError(
                match.loc,
                f"unknown protocol '{printable(value)}'",
                did_you_mean(value, tuple(vocab.PROTOCOLS)),
            )
        if self.parts.protocol is not None and self.parts.protocol != value:
            raise PolicyError(
                match.loc, f"a rule has one protocol; this one already has '{self.parts.protocol}'"
            )
        self.parts.protocol = value
        if value == "icmp":
            self.restrict({Family.V4}, "'icmp'", match.loc)
        elif value == "icmpv6":
            self.restrict({Family.V6}, "'icmpv6'", match.loc)

    def _ports(self, match: MatchNode) -> Ports:
        ranges: list[tuple[int, int]] = []
        set_name = None
        items: tuple[PortItem, ...] = match.value
        for item in items:
            if item.kind == "number":
                ranges.append((check_port(int(item.value), item.loc),) * 2)
            elif item.kind == "range":
                ranges.append(port_range(int(item.value), int(item.end or 0), item.loc))
            elif item.kind == "service":
                ranges.append((service_port(str(item.value), item.loc),) * 2)
            else:
                value = self.lowering.defines.value(str(item.value), item.loc)
                if not isinstance(value, PortValue):
                    raise PolicyError(item.loc, f"'${item.value}' holds addresses, not ports")
                ranges.extend(value.ranges)
                if len(items) == 1 and len(value.ranges) > 1:
                    set_name = self.lowering.port_set(str(item.value), value)
        return Ports(merge_ranges(ranges), set_name)

    def _match_dport(self, match: MatchNode) -> None:
        self.parts.dport = self._ports(match)

    def _match_sport(self, match: MatchNode) -> None:
        self.parts.sport = self._ports(match)

    def _addresses(self, match: MatchNode, direction: str) -> tuple[AddressValue, bool, str | None]:
        addrs: Addrs = match.value
        networks: list[Network] = []
        set_name = None
        for item in addrs.items:
            if item.kind == "literal":
                networks.append(parse_network(item.text, item.loc))
            else:
                value = self.lowering.defines.value(item.text, item.loc)
                if not isinstance(value, AddressValue):
                    raise PolicyError(item.loc, f"'${item.text}' holds ports, not addresses")
                networks.extend(value.v4 + value.v6)
                if len(addrs.items) == 1:
                    set_name = item.text
        value = AddressValue(
            collapse(n for n in networks if n.version == 4),
            collapse(n for n in networks if n.version == 6),
        )
        families = {f for f in BOTH_FAMILIES if value.of(f)}
        self.restrict(families, f"the '{direction}' address list", addrs.loc)
        return value, addrs.negated, set_name

    def _match_saddr(self, match: MatchNode) -> None:
        self.parts.saddr = self._addresses(match, "from")

    def _match_daddr(self, match: MatchNode) -> None:
        self.parts.daddr = self._addresses(match, "to")

    def _interface(self, match: MatchNode, hook_without: str) -> str:
        name = match.value
        if not IFNAME.match(name):
            raise PolicyError(
                match.loc,
                f"'{printable(name)}' is not a valid interface name",
                "at most 15 characters of letters, digits and _ . : @ + -, optionally ending in '*'",
            )
        if self.chain == hook_without:
            word = "iif" if hook_without == "output" else "oif"
            raise PolicyError(match.loc, f"'{word}' can match nothing in the {hook_without} chain")
        return name

    def _match_iif(self, match: MatchNode) -> None:
        self.parts.iifname = self._interface(match, "output")

    def _match_oif(self, match: MatchNode) -> None:
        if self.chain is None:
            raise PolicyError(
                match.loc,
                "a notrack entry is written as the packet arrives: use 'iif'",
                "the output direction gets the mirrored 'oif' automatically",
            )
        self.parts.oifname = self._interface(match, "input")

    def _names(self, match: MatchNode, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
        names: list[str] = []
        for name, loc in match.value:
            if name not in allowed:
                raise PolicyError(loc, f"unknown {what} '{printable(name)}'", did_you_mean(name, allowed))
            if name not in names:
                names.append(name)
        return tuple(names)

    def _match_ct_state(self, match: MatchNode) -> None:
        if self.chain is None:
            raise PolicyError(match.loc, "a notrack entry cannot match 'ct state': it runs before conntrack")
        self.parts.ct_state = self._names(match, vocab.CT_STATES, "connection state")

    def _icmp_types(self, match: MatchNode, protocol: str, types: tuple[str, ...]) -> None:
        if self.chain is None:
            raise PolicyError(
                match.loc, "a notrack entry cannot match ICMP types", f"untrack all of '{protocol}' instead"
            )
        self._match_proto(MatchNode("proto", protocol, match.loc))
        self.parts.icmp_types = self._names(match, types, f"{protocol} type")

    def _match_icmp_type(self, match: MatchNode) -> None:
        self._icmp_types(match, "icmp", tuple(vocab.ICMP_TYPES))

    def _match_icmpv6_type(self, match: MatchNode) -> None:
        self._icmp_types(match, "icmpv6", tuple(vocab.ICMPV6_TYPES))

    def matches(self, parts: _Parts, families: Iterable[Family]) -> list[Match]:
        """IR matches, one per family, or one for both when nothing needs a split."""
        needs_split = parts.saddr is not None or parts.daddr is not None
        if not needs_split and parts.families == set(BOTH_FAMILIES):
            return [self.match_for(parts, None)]
        return [self.match_for(parts, f) for f in BOTH_FAMILIES if f in families]

    def match_for(self, parts: _Parts, family: Family | None) -> Match:
        only = family or (next(iter(parts.families)) if len(parts.families) == 1 else None)

        def addresses(spec: tuple[AddressValue, bool, str | None] | None) -> Addresses | None:
            if spec is None or family is None:
                return None
            value, negated, define = spec
            networks = value.of(family)
            set_name = self.lowering.address_set(define, family, networks) if define else None
            return Addresses(family, networks, negated, set_name)

        return Match(
            family=only,
            protocol=parts.protocol,
            sport=parts.sport,
            dport=parts.dport,
            saddr=addresses(parts.saddr),
            daddr=addresses(parts.daddr),
            iifname=parts.iifname,
            oifname=parts.oifname,
            ct_state=parts.ct_state,
            icmp_types=parts.icmp_types,
        )


def _match_word(match: MatchNode) -> str:
    return {
        "saddr": "from",
        "daddr": "to",
        "proto": "protocol",
        "family": "ip/ip6",
        "icmp_type": "icmp type",
        "icmpv6_type": "icmp type",
        "ct_state": "ct state",
    }.get(match.kind, match.kind)


# --------------------------------------------------------------------------
# the whole policy


class Lowering:
    def __init__(self, source: PolicySource, target: Target) -> None:
        self.source = source
        self.target = target
        self.defines = Defines(source.defines)
        self.address_sets: dict[str, NamedAddressSet] = {}
        self.port_sets: dict[str, NamedPortSet] = {}
        self.meters: dict[str, Meter] = {}  # by nft-independent key: name + family
        self.meter_signatures: dict[str, tuple[tuple, Loc]] = {}
        self.object_names: dict[str, str] = {}  # generated object name -> what made it

    # named objects -------------------------------------------------------
    def _claim(self, name: str, owner: str, loc: Loc) -> None:
        previous = self.object_names.get(name)
        if previous is not None and previous != owner:
            raise PolicyError(
                loc, f"{owner} would be named '{name}', which {previous} already uses", "rename one of them"
            )
        self.object_names[name] = owner

    def address_set(self, define: str, family: Family, networks: tuple[Network, ...]) -> str | None:
        if len(networks) < 2:
            return None
        name = f"{define}_{family.suffix}"
        if name in self.address_sets:
            return name
        self._claim(name, f"define '{define}'", self.source.defines[define].loc)
        self.address_sets[name] = NamedAddressSet(name, family, networks)
        return name

    def port_set(self, define: str, value: PortValue) -> str:
        name = f"{define}_ports"
        self._claim(name, f"define '{define}'", self.source.defines[define].loc)
        self.port_sets[name] = NamedPortSet(name, value.ranges)
        return name

    # helpers ---------------------------------------------------------------

    def parse(self, text: RuleText, entry: bool) -> RuleNode:
        parser = parse_entry if entry else parse_rule
        return parser(text.text, text.node.locator())

    def comment(self, text: RuleText, node: RuleNode) -> str | None:
        if text.comment is not None and node.comment is not None:
            raise PolicyError(
                node.comment_loc or text.loc, "comment given both in the rule and as 'comment:'"
            )
        if node.comment is not None:
            return check_text(node.comment, node.comment_loc or text.loc, "comment", COMMENT_MAX)
        return text.comment

    # conntrack -----------------------------------------------------------------
    def notrack(self) -> tuple[list[NotrackRule], list[tuple[Match, Loc, str]]]:
        """Raw-table rules and the answers each entry implies, with the chain
        that sees those answers. An entry naming `sport` describes this host
        as a client of that remote port: its answers arrive as written, in
        input. An entry naming only `dport` describes a service this host
        offers: its answers are the mirror image, in output. An entry with
        neither implies no answers."""
        rules: list[NotrackRule] = []
        answers: list[tuple[Match, Loc, str]] = []
        for text in self.source.conntrack.notrack:
            node = self.parse(text, entry=True)
            comment = self.comment(text, node)
            lowering = RuleLowering(self, node, chain=None)
            parts = lowering.lower_matches()
            origin = text.loc
            for match in lowering.matches(parts, sorted(parts.families, key=lambda f: f.value)):
                rules.append(NotrackRule("prerouting", match, origin, comment, text.expires))
                rules.append(NotrackRule("output", match.mirrored(), origin, comment, text.expires))
                if match.sport is not None:
                    answers.append((match, origin, "input"))
                elif match.dport is not None:
                    answers.append((match.mirrored(), origin, "output"))
        rules.sort(key=lambda r: r.hook != "prerouting")
        return rules, answers

    def sysctls(self) -> list[Sysctl]:
        conntrack = self.source.conntrack
        result = []
        if conntrack.max is not None and conntrack.max_loc is not None:
            value = self.target.conntrack_max() if conntrack.max == "auto" else int(conntrack.max)
            result.append(Sysctl(CONNTRACK_MAX_SYSCTL, value, conntrack.max_loc))
        for name, seconds, loc in conntrack.timeouts:
            result.append(Sysctl(TIMEOUT_SYSCTLS[name], seconds, loc))
        return result

    # meters ----------------------------------------------------------------------
    def meter(self, node: LimitNode, chain: str, ordinal: int, family: Family | None) -> Meter:
        if not 1 <= node.rate <= MAX_RATE:
            raise PolicyError(node.loc, f"rate {node.rate} is out of range (1-{MAX_RATE})")
        byte_rate = node.byte_unit is not None
        if node.burst_unit is not None and (node.burst_unit == "packets") == byte_rate:
            raise PolicyError(
                node.loc,
                f"burst in {node.burst_unit} does not fit a rate in {node.byte_unit or 'packets'}",
                "a packet rate takes a burst in packets, a byte rate a burst in bytes",
            )
        rate = Rate(node.rate, node.time_unit, node.byte_unit)
        if node.burst is None:
            burst = (
                DEFAULT_PACKET_BURST
                if not byte_rate
                else max(1, round(rate.per_second() * TIME_UNIT_SECONDS[node.time_unit]))
            )
        else:
            burst = node.burst * (
                1024 if node.burst_unit == "kbytes" else 1024 * 1024 if node.burst_unit == "mbytes" else 1
            )
        if not 1 <= burst <= MAX_RATE:
            raise PolicyError(node.loc, f"burst {node.burst} is out of range (1-{MAX_RATE})")
        _check_token_bucket(rate, burst, node.loc)
        size = node.size
        if size is not None and not 1 <= size <= MAX_METER_SIZE:
            raise PolicyError(node.loc, f"meter size {size} is out of range (1-{MAX_METER_SIZE})")
        if node.per is None and (size is not None):
            raise PolicyError(node.loc, "'size' needs 'per saddr' or 'per daddr'")
        v4_mask = 32 if node.v4_mask is None else node.v4_mask
        v6_mask = 128 if node.v6_mask is None else node.v6_mask
        if not 1 <= v4_mask <= 32:
            raise PolicyError(node.loc, f"IPv4 mask /{v4_mask} is out of range (/1-/32)")
        if not 1 <= v6_mask <= 128:
            raise PolicyError(node.loc, f"IPv6 mask /{v6_mask} is out of range (/1-/128)")
        if node.name is not None and not IDENTIFIER.match(node.name):
            raise PolicyError(node.loc, f"meter name '{printable(node.name)}' is not a valid name")
        name = node.name
        if name is None and node.per is not None:
            name = f"{chain}_{ordinal}"
        # Keep a key only as long as its bucket takes to refill: forgetting
        # it sooner would hand an abuser a fresh burst.
        refill = math.ceil(burst / rate.per_second())
        timeout = max(TIME_UNIT_SECONDS[node.time_unit], refill)
        if node.per and timeout * 1000 > MAX_TIMEOUT_MS:
            raise PolicyError(
                node.loc,
                f"this meter would have to remember each {node.per} for {timeout} s, beyond the kernel's "
                f"{MAX_TIMEOUT_MS // 1000} s (burst / rate)",
                "use a shorter time unit or a smaller burst",
            )
        signature = (rate, node.over, burst, node.per, v4_mask, v6_mask, size)
        if name is not None:
            first = self.meter_signatures.get(name)
            if first is None:
                self.meter_signatures[name] = (signature, node.loc)
            elif first[0] != signature:
                raise PolicyError(
                    node.loc,
                    f"meter '{name}' is defined again with different parameters (first at {first[1]})",
                    "rules that share a meter name must give the same limit",
                )
        meter = Meter(
            name=name,
            rate=rate,
            over=node.over,
            burst=burst,
            burst_bytes=byte_rate,
            family=family if node.per else None,
            key=node.per,
            prefix_len=(v4_mask if family is Family.V4 else v6_mask) if node.per else None,
            size=(size or DEFAULT_METER_SIZE) if node.per else None,
            timeout=timeout,
            origin=node.loc,
            defaulted=tuple(
                name
                for name, given in (("ipv4 mask", node.v4_mask), ("ipv6 mask", node.v6_mask), ("size", size))
                if node.per and given is None
            ),
        )
        if name is not None:
            object_name = f"{name}_{family.suffix}" if node.per and family else f"{name}_limit"
            self._claim(object_name, f"meter '{name}'", node.loc)
            self.meters.setdefault(object_name, meter)
        return meter

    # chains ------------------------------------------------------------------------
    def chain(self, section: ChainSection, answers: list[tuple[Match, Loc, str]]) -> Chain:
        rules: list[Rule] = []
        if section.icmp == "essential":
            rules.extend(self.essential_icmp(section))
        if section.state == "auto" and (section.policy == "drop" or section.rules):
            origin = section.state_loc
            rules.append(Rule(Match(ct_state=("invalid",)), Verdict("drop"), origin, role=RuleRole.STATE))
            rules.append(
                Rule(
                    Match(ct_state=("established", "related")), Verdict("accept"), origin, role=RuleRole.STATE
                )
            )
            for match, entry_origin, chain in answers:
                if chain == section.name:
                    rules.append(
                        Rule(
                            replace(match, ct_state=("untracked",)),
                            Verdict("accept"),
                            entry_origin,
                            role=RuleRole.UNTRACKED_ANSWER,
                        )
                    )
        for ordinal, text in enumerate(section.rules, start=1):
            rules.extend(self.rule(text, section.name, ordinal))
        return Chain(section.name, section.policy, tuple(rules))

    def essential_icmp(self, section: ChainSection) -> list[Rule]:
        origin = section.icmp_loc
        v6_types = vocab.ESSENTIAL_ICMPV6_ERRORS + vocab.ESSENTIAL_ICMPV6_DISCOVERY[section.name]
        return [
            Rule(
                Match(family=Family.V4, protocol="icmp", icmp_types=vocab.ESSENTIAL_ICMP_ERRORS),
                Verdict("accept"),
                origin,
                role=RuleRole.ESSENTIAL_ICMP,
            ),
            Rule(
                Match(family=Family.V6, protocol="icmpv6", icmp_types=v6_types),
                Verdict("accept"),
                origin,
                role=RuleRole.ESSENTIAL_ICMP,
            ),
        ]

    def rule(self, text: RuleText, chain: str, ordinal: int) -> list[Rule]:
        node = self.parse(text, entry=False)
        assert node.verdict is not None
        lowering = RuleLowering(self, node, chain)
        parts = lowering.lower_matches()
        verdict = self.verdict(node, parts)
        # A keyed meter holds addresses of one family, and some reject types
        # differ between ICMP and ICMPv6: such rules get one copy per family.
        if (node.limit is not None and node.limit.per is not None) or (
            verdict.reject_with in vocab.REJECT_NEEDS_FAMILY
        ):
            families = [f for f in BOTH_FAMILIES if f in parts.families]
            matches = [lowering.match_for(parts, f) for f in families]
        else:
            matches = lowering.matches(parts, sorted(parts.families, key=lambda f: f.value))
        log = None
        if node.log is not None:
            prefix = node.log.prefix
            if prefix is not None:
                check_text(prefix, node.log.loc, "log prefix", LOG_PREFIX_MAX)
            log = Log(prefix, node.log.level)
        comment = self.comment(text, node)
        origin = text.loc
        limit = node.limit
        if limit is not None and limit.per is None and limit.name is None and len(matches) > 1:
            # One rule split in several still has one global bucket.
            limit = replace(limit, name=f"{chain}_{ordinal}")
        rules = []
        for match in matches:
            meter = self.meter(limit, chain, ordinal, match.family) if limit else None
            rules.append(
                Rule(
                    match=match,
                    verdict=verdict,
                    origin=origin,
                    meter=meter,
                    log=log,
                    counter=node.counter,
                    comment=comment,
                    expires=text.expires,
                )
            )
        return rules

    def verdict(self, node: RuleNode, parts: _Parts) -> Verdict:
        verdict = node.verdict
        assert verdict is not None
        if verdict.reject_with == "tcp reset":
            if parts.protocol != "tcp":
                raise PolicyError(verdict.loc, "'reject with tcp reset' needs 'tcp' in the rule")
        elif verdict.reject_with is not None:
            kind = verdict.reject_with
            if kind not in vocab.REJECT_ICMP_TYPES:
                raise PolicyError(
                    verdict.loc,
                    f"unknown reject type '{printable(kind)}'",
                    did_you_mean(kind, tuple(vocab.REJECT_ICMP_TYPES)),
                )
            if vocab.REJECT_ICMP_TYPES[kind] is None and Family.V6 in parts.families:
                raise PolicyError(
                    verdict.loc, f"'{kind}' has no ICMPv6 counterpart", "add 'ip' to limit the rule to IPv4"
                )
        return Verdict(verdict.kind, verdict.reject_with)

    def ruleset(self) -> Ruleset:
        notrack, answers = self.notrack()
        chains = tuple(
            self.chain(self.source.chains[name], answers)
            for name in ("input", "forward", "output")
            if name in self.source.chains
        )
        return Ruleset(
            name=self.source.name,
            table=self.source.table,
            source=self.source.path,
            notrack=tuple(notrack),
            chains=chains,
            address_sets=tuple(self.address_sets[n] for n in sorted(self.address_sets)),
            port_sets=tuple(self.port_sets[n] for n in sorted(self.port_sets)),
            meters=tuple(self.meters[n] for n in sorted(self.meters)),
            sysctls=tuple(self.sysctls()),
        )


def _check_token_bucket(rate: Rate, burst: int, loc: Loc) -> None:
    """The kernel keeps a limit's bucket in 64-bit nanosecond arithmetic;
    refuse what would overflow it rather than let the load fail."""
    unit_ns = TIME_UNIT_SECONDS[rate.time_unit] * 10**9
    if rate.byte_unit is not None:
        per_unit = rate.value * BYTE_UNIT_FACTOR[rate.byte_unit]
        too_big = unit_ns * (per_unit + burst) >= 2**64
    else:
        too_big = (unit_ns // rate.value) * burst >= 2**64
    if too_big:
        raise PolicyError(
            loc,
            "this rate and burst overflow the kernel's token bucket",
            "use a shorter time unit or a smaller burst",
        )


def lower(source: PolicySource, target: Target | None = None) -> Ruleset:
    """Validate a loaded policy and turn it into IR."""
    return Lowering(source, target or Target.this_host()).ruleset()
