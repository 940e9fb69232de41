"""The named objects a ruleset holds besides its rules: address sets and
port sets made from defines, and meters made from limits. Each gets a name
the backends use as is, so two owners of one name are refused here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nfc.errors import Loc, PolicyError, printable
from nfc.ir import (
    BYTE_UNIT_FACTOR,
    TIME_UNIT_SECONDS,
    Family,
    Meter,
    NamedAddressSet,
    NamedPortSet,
    Network,
    Rate,
    RuntimeSet,
)
from nfc.load import IDENTIFIER, Define
from nfc.runtime_sets import SetDeclaration
from nfc.syntax import LimitNode
from nfc.values import PortValue

MAX_RATE = 2**32 - 1
MAX_METER_SIZE = 1 << 24
MAX_TIMEOUT_MS = 2**32 - 1  # hashlimit's htable-expire, and what nft takes for a set timeout
DEFAULT_METER_SIZE = 65535
DEFAULT_PACKET_BURST = 5

# What a meter's parameters must agree on where rules share its name.
MeterSignature = tuple[Rate, bool, int, str | None, int, int, int | None]


@dataclass
class NamedObjects:
    """The sets and meters allocated so far, by the name they will have."""

    defines: dict[str, Define]
    address_sets: dict[str, NamedAddressSet] = field(default_factory=dict)
    port_sets: dict[str, NamedPortSet] = field(default_factory=dict)
    meters: dict[str, Meter] = field(default_factory=dict)  # by nft-independent key: name + family
    meter_signatures: dict[str, tuple[MeterSignature, Loc]] = field(default_factory=dict)
    runtime: dict[str, RuntimeSet] = field(default_factory=dict)  # the sets of `sets:`, by name
    object_names: dict[str, str] = field(default_factory=dict)  # generated object name -> what made it

    def claim(self, name: str, owner: str, loc: Loc) -> None:
        previous = self.object_names.get(name)
        if previous is not None and previous != owner:
            raise PolicyError(
                loc, f"{owner} would be named '{name}', which {previous} already uses", "rename one of them"
            )
        self.object_names[name] = owner

    def address_set(self, define: str, family: Family, networks: tuple[Network, ...]) -> str | None:
        list_file = self.defines[define].list_file
        # A list file's set is named even with one element: `nfc refresh` refills it.
        if len(networks) < 2 and list_file is None:
            return None
        name = f"{define}_{family.suffix}"
        if name in self.address_sets:
            return name
        self.claim(name, f"define '{define}'", self.defines[define].loc)
        self.address_sets[name] = NamedAddressSet(name, family, networks, list_file)
        return name

    def runtime_sets(self, declaration: SetDeclaration) -> None:
        """A set per family, whether or not a rule uses it: `nfc set add` may fill either."""
        for family in (Family.V4, Family.V6):
            name = f"{declaration.name}_{family.suffix}"
            self.claim(name, f"set '{declaration.name}'", declaration.loc)
            self.runtime[name] = RuntimeSet(
                name, declaration.name, family, declaration.timeout_ms, declaration.size
            )

    def port_set(self, define: str, value: PortValue) -> str:
        name = f"{define}_ports"
        self.claim(name, f"define '{define}'", self.defines[define].loc)
        self.port_sets[name] = NamedPortSet(name, value.ranges)
        return name

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
        signature: MeterSignature = (rate, node.over, burst, node.per, v4_mask, v6_mask, size)
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
            self.claim(object_name, f"meter '{name}'", node.loc)
            self.meters.setdefault(object_name, meter)
        return meter


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
