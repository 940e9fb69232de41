"""The intermediate representation: the only thing backends see.

Everything here is a frozen dataclass holding validated, normalised values:
addresses are `ipaddress` networks of one family, ports are closed ranges,
names are already resolved. Nothing refers to YAML. `Origin` is a plain
source position so that generated rules can say where they came from.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
from dataclasses import dataclass
from typing import Literal

from nfc.errors import Loc

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Origin = Loc  # where a rule came from in the policy

# The closed vocabularies of the IR, as the policy writes them.
VerdictKind = Literal["accept", "drop", "reject"]
ChainName = Literal["input", "forward", "output"]
CHAIN_NAMES: tuple[ChainName, ...] = ("input", "forward", "output")  # in hook order
ChainPolicy = Literal["accept", "drop"]
NotrackHook = Literal["prerouting", "output"]  # raw priority: arriving packets, locally sent ones
NotrackScope = Literal["host", "routed", "all"]  # whose traffic a notrack entry untracks
Destination = Literal["host", "routed"]  # where a packet arriving in prerouting goes
CtState = Literal["new", "established", "related", "invalid", "untracked"]
CtStatus = Literal["dnat", "snat"]  # conntrack's record of a translation (nft `ct status`)
NatKind = Literal["masquerade", "snat", "dnat", "redirect"]
NatHook = Literal["prerouting", "postrouting"]
MeterKey = Literal["saddr", "daddr"]
TimeUnit = Literal["second", "minute", "hour", "day"]
ByteUnit = Literal["bytes", "kbytes", "mbytes"]
LogLevel = Literal["emerg", "alert", "crit", "err", "warn", "notice", "info", "debug"]
# `reject with icmp TYPE` as written (ICMP names; the backends map them to ICMPv6).
RejectIcmpType = Literal[
    "port-unreachable",
    "host-unreachable",
    "net-unreachable",
    "admin-prohibited",
    "host-prohibited",
    "net-prohibited",
    "prot-unreachable",
]
RejectWith = Literal["tcp reset"] | RejectIcmpType


class Family(enum.Enum):
    V4 = "ipv4"
    V6 = "ipv6"

    # A member is a singleton, equal only to itself: hash it as such, in C.
    # (Enum's own __hash__ is Python code, and lowering hashes families
    # several times per rule.)
    __hash__ = object.__hash__

    @property
    def suffix(self) -> str:
        return "v4" if self is Family.V4 else "v6"

    @property
    def max_prefix(self) -> int:
        return 32 if self is Family.V4 else 128


BOTH_FAMILIES = (Family.V4, Family.V6)
TIME_UNIT_SECONDS: dict[TimeUnit, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
BYTE_UNIT_FACTOR: dict[ByteUnit, int] = {"bytes": 1, "kbytes": 1024, "mbytes": 1024 * 1024}


@dataclass(frozen=True)
class Ports:
    """A set of ports as sorted, disjoint closed ranges.

    `set_name` names the `define` they came from, so a backend may render a
    named set instead of listing them."""

    ranges: tuple[tuple[int, int], ...]
    set_name: str | None = None

    def count(self) -> int:
        return sum(high - low + 1 for low, high in self.ranges)


@dataclass(frozen=True)
class Addresses:
    """Networks of one family, collapsed and sorted; `negated` means "not in"."""

    family: Family
    networks: tuple[Network, ...]
    negated: bool = False
    set_name: str | None = None
    runtime: bool = False  # the elements of a runtime set (`sets:`): unknown until run time, `networks` empty

    def admits(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Whether a packet with `address` here matches: never one of the
        other family, as nft's `ip saddr != ...` matches no IPv6 packet."""
        if (address.version == 4) != (self.family is Family.V4):
            return False
        return any(address in network for network in self.networks) != self.negated


@dataclass(frozen=True)
class Interfaces:
    """Interface names, any of which matches. A name ending in '*' matches
    every name with that prefix (nft's wildcard; iptables writes it '+').
    `set_name` names the `interfaces` entry they came from."""

    names: tuple[str, ...]
    set_name: str | None = None

    def admits(self, name: str) -> bool:
        return any(
            name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern
            for pattern in self.names
        )


@dataclass(frozen=True)
class Match:
    """What a packet must look like. `family` None means both IPv4 and IPv6."""

    family: Family | None = None
    protocol: str | None = None  # tcp, udp, sctp, icmp, icmpv6, or another l4proto name/number
    sport: Ports | None = None
    dport: Ports | None = None
    saddr: Addresses | None = None
    daddr: Addresses | None = None
    iifname: Interfaces | None = None
    oifname: Interfaces | None = None
    ct_state: tuple[CtState, ...] = ()
    icmp_types: tuple[str, ...] = ()  # of `protocol` (icmp or icmpv6)
    ct_status: tuple[CtStatus, ...] = ()  # all of them must be set

    @classmethod
    def of(
        cls,
        family: Family | None,
        protocol: str | None,
        sport: Ports | None,
        dport: Ports | None,
        saddr: Addresses | None,
        daddr: Addresses | None,
        iifname: Interfaces | None,
        oifname: Interfaces | None,
        ct_state: tuple[CtState, ...],
        icmp_types: tuple[str, ...],
        ct_status: tuple[CtStatus, ...],
    ) -> Match:
        """`Match(...)` with every field given, built by filling its `__dict__`:
        a frozen dataclass's `__init__` sets each field by `object.__setattr__`,
        slow for the hundreds of thousands of rules a big policy lowers to."""
        match = object.__new__(cls)
        object.__setattr__(
            match,
            "__dict__",
            {
                "family": family,
                "protocol": protocol,
                "sport": sport,
                "dport": dport,
                "saddr": saddr,
                "daddr": daddr,
                "iifname": iifname,
                "oifname": oifname,
                "ct_state": ct_state,
                "icmp_types": icmp_types,
                "ct_status": ct_status,
            },
        )
        return match

    def mirrored(self) -> Match:
        """The reverse path: ports, addresses and interfaces swap roles."""
        return Match(
            family=self.family,
            protocol=self.protocol,
            sport=self.dport,
            dport=self.sport,
            saddr=self.daddr,
            daddr=self.saddr,
            iifname=self.oifname,
            oifname=self.iifname,
            ct_state=self.ct_state,
            icmp_types=self.icmp_types,
            ct_status=self.ct_status,
        )


@dataclass(frozen=True)
class Rate:
    value: int
    time_unit: TimeUnit
    byte_unit: ByteUnit | None = None  # None: packets

    def per_second(self) -> float:
        factor = BYTE_UNIT_FACTOR[self.byte_unit] if self.byte_unit else 1
        return self.value * factor / TIME_UNIT_SECONDS[self.time_unit]


@dataclass(frozen=True)
class Meter:
    """A rate limit. With `key` (saddr/daddr) it keeps one token bucket per
    masked address, in a table of at most `size` entries that forgets a key
    after `timeout` seconds without packets; without `key` it is one global
    bucket. A meter with a key belongs to one family. A full meter table
    drops the packet (fail closed), as hashlimit does. An unnamed global
    limit on one rule has no name: it is written inline."""

    name: str | None
    rate: Rate
    over: bool
    burst: int
    burst_bytes: bool
    family: Family | None = None
    key: MeterKey | None = None
    prefix_len: int | None = None
    size: int | None = None
    timeout: int = 1  # seconds without packets before a bucket may be forgotten
    origin: Origin | None = None
    defaulted: tuple[str, ...] = ()  # parameters the policy left to defaults, for lint


@dataclass(frozen=True)
class Log:
    prefix: str | None = None
    level: LogLevel | None = None


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    reject_with: RejectWith | None = None  # None: the backend's default


class RuleRole(enum.Enum):
    """Why a rule exists: written by the user, or implied by a chain setting."""

    USER = "user"
    ESSENTIAL_ICMP = "essential-icmp"
    STATE = "state"
    UNTRACKED_ANSWER = "untracked-answer"
    LOOPBACK = "loopback"
    DNAT_FORWARD = "dnat-forward"  # forward accepts the connections a `dnat` translated


@dataclass(frozen=True)
class Rule:
    match: Match
    verdict: Verdict
    origin: Origin
    meter: Meter | None = None
    log: Log | None = None
    counter: bool = False
    comment: str | None = None
    expires: dt.date | None = None
    role: RuleRole = RuleRole.USER

    @classmethod
    def of(
        cls,
        match: Match,
        verdict: Verdict,
        origin: Origin,
        meter: Meter | None,
        log: Log | None,
        counter: bool,
        comment: str | None,
        expires: dt.date | None,
        role: RuleRole,
    ) -> Rule:
        """`Rule(...)` with every field given, built as `Match.of` builds a match."""
        rule = object.__new__(cls)
        object.__setattr__(
            rule,
            "__dict__",
            {
                "match": match,
                "verdict": verdict,
                "origin": origin,
                "meter": meter,
                "log": log,
                "counter": counter,
                "comment": comment,
                "expires": expires,
                "role": role,
            },
        )
        return rule


@dataclass(frozen=True)
class NotrackRule:
    """Untrack packets matching `match` at raw priority in `hook`; in
    prerouting, only those addressed to this host (`destination` "host") or
    only those it forwards ("routed"), or both (None)."""

    hook: NotrackHook
    match: Match
    origin: Origin
    comment: str | None = None
    expires: dt.date | None = None
    destination: Destination | None = None


@dataclass(frozen=True)
class NatRule:
    """Translate the connections whose first packet matches `match`.
    `masquerade` and `snat` rewrite the source in postrouting; `dnat` and
    `redirect` rewrite the destination in prerouting. `address` is the new
    address of `snat` and `dnat` (its family is the match's); `ports` the
    new port range (low, high) of `dnat`, `snat` or `redirect`, None to keep
    the port."""

    kind: NatKind
    match: Match
    origin: Origin
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    ports: tuple[int, int] | None = None
    comment: str | None = None
    expires: dt.date | None = None

    @property
    def hook(self) -> NatHook:
        return "postrouting" if self.kind in ("masquerade", "snat") else "prerouting"


@dataclass(frozen=True)
class Chain:
    name: ChainName
    policy: ChainPolicy
    rules: tuple[Rule, ...]
    origin: Origin  # the chain's section in the policy


@dataclass(frozen=True)
class NamedAddressSet:
    name: str
    family: Family
    networks: tuple[Network, ...]
    list_file: str | None = None  # the list file (`{file: PATH}`) it holds, which `nfc refresh` reloads


@dataclass(frozen=True)
class RuntimeSet:
    """One family's set of a `sets` entry, filled at run time (`nfc set add`)."""

    name: str  # as the backend names it: banned_v4
    declared: str  # as the policy names it: banned
    family: Family
    timeout_ms: int | None
    size: int | None


@dataclass(frozen=True)
class NamedPortSet:
    name: str
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Sysctl:
    key: str
    value: int
    origin: Origin


@dataclass(frozen=True)
class Ruleset:
    name: str
    table: str
    source: str  # the main policy file
    notrack: tuple[NotrackRule, ...]
    chains: tuple[Chain, ...]
    address_sets: tuple[NamedAddressSet, ...]
    port_sets: tuple[NamedPortSet, ...]
    meters: tuple[Meter, ...]
    sysctls: tuple[Sysctl, ...]
    nat: tuple[NatRule, ...] = ()  # in policy order
    runtime_sets: tuple[RuntimeSet, ...] = ()  # by name
