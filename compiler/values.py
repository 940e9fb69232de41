"""Values written in a policy: addresses and networks, ports, port ranges
and service names, checked and normalised. Used by define resolution, rule
checking and `diff` alike."""

from __future__ import annotations

import functools
import ipaddress
import itertools
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from nfc import vocab
from nfc.errors import Loc, PolicyError, did_you_mean, printable
from nfc.ir import Family, Network

MAX_DIGITS = 20  # as many as 2**64 has: more than any number nfc reads
# IFNAMSIZ holds 15 bytes and a NUL; a final '*' takes a byte of them in nft
# and in iptables (as '+') alike.
IFNAME = re.compile(r"(?=.{1,15}\Z)[A-Za-z0-9_.:@+-]+\*?\Z")


@dataclass(frozen=True)
class AddressValue:
    v4: tuple[Network, ...]
    v6: tuple[Network, ...]
    runtime: bool = False  # a runtime set's: its addresses are known only at run time

    def of(self, family: Family) -> tuple[Network, ...]:
        return self.v4 if family is Family.V4 else self.v6


@dataclass(frozen=True)
class PortValue:
    ranges: tuple[tuple[int, int], ...]


DefineValue = AddressValue | PortValue


# One netmask object per prefix length, shared by every network `network_of` builds.
_MASKS: dict[bool, list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {
    False: [ipaddress.IPv4Network((0, length)).netmask for length in range(33)],
    True: [ipaddress.IPv6Network((0, length)).netmask for length in range(129)],
}


def network_of(value: int, length: int, is_v6: bool) -> Network:
    """What ipaddress's own constructor makes of a network already checked
    (`value` its first address, without host bits), without parsing again:
    its parser costs several times what the check did."""
    address_class: type[ipaddress.IPv4Address | ipaddress.IPv6Address]
    address_class = ipaddress.IPv6Address if is_v6 else ipaddress.IPv4Address
    network_class: type[Network] = ipaddress.IPv6Network if is_v6 else ipaddress.IPv4Network
    address = address_class.__new__(address_class)
    address._ip = value  # type: ignore[union-attr]
    if is_v6:
        address._scope_id = None  # type: ignore[union-attr]
    network = network_class.__new__(network_class)
    network.network_address = address
    network.netmask = _MASKS[is_v6][length]
    network._prefixlen = length  # type: ignore[union-attr]
    return network


def strict_prefix(text: str) -> tuple[int, int, bool] | None:
    """The first address and prefix length of a network written as
    `inet_pton` takes it, with a prefix length in digits and no host bits,
    and whether it is IPv6; None for anything else, which ipaddress then
    judges. The fast path of policy addresses and of list files alike."""
    is_v6 = ":" in text
    address, slash, length_text = text.partition("/")
    bits = 128 if is_v6 else 32
    if not slash:
        length = bits
    elif length_text.isascii() and length_text.isdigit() and len(length_text) <= 3:
        length = int(length_text)
    else:
        return None
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6 if is_v6 else socket.AF_INET, address))
    except (OSError, ValueError):
        return None
    if length > bits or value & ((1 << (bits - length)) - 1):
        return None
    return value, length, is_v6


@functools.lru_cache(maxsize=65536)
def _network(text: str) -> Network:
    """A network written in a policy; ValueError if it is none. Cached: the
    same addresses recur across rules. What `strict_prefix` takes is built
    directly; the rest goes to ipaddress, the reference, which takes it or
    says why not."""
    prefix = strict_prefix(text)
    if prefix is not None:
        return network_of(*prefix)
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


def ascii_int(text: str) -> int | None:
    """`text` as a whole number when it is written with the digits 0-9 and
    nothing else, in at most MAX_DIGITS significant digits; else None.
    `str.isdigit()` and `int()` read the digits of every script ('٣' is 3),
    `isdigit()` also takes '²', which `int()` then refuses, and `int()`
    refuses more than 4300 digits: nfc reads numbers through this only."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0")
    return int(digits or "0") if len(digits) <= MAX_DIGITS else None


def check_port(value: int, loc: Loc) -> int:
    if not 1 <= value <= 65535:
        raise PolicyError(loc, f"port {value} is out of range (1-65535)")
    return value


def port_number(digits: str, loc: Loc) -> int:
    """A port written as `digits`, which are 0-9 and nothing else."""
    value = ascii_int(digits)
    if value is None:  # more digits than any port has
        raise PolicyError(loc, f"port {printable(digits)} is out of range (1-65535)")
    return check_port(value, loc)


def port_range(low: int, high: int, loc: Loc) -> tuple[int, int]:
    check_port(low, loc)
    check_port(high, loc)
    if low > high:
        raise PolicyError(loc, f"port range {low}-{high} is reversed", f"write {high}-{low}")
    return low, high


def service_port(name: str, loc: Loc) -> int:
    if name not in vocab.SERVICES:
        if all(ch.isnumeric() or ch == "-" for ch in name):  # numbers, in other digits than 0-9
            raise PolicyError(
                loc, f"'{printable(name)}' is not a port (1-65535)", "write a port with the digits 0-9"
            )
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
    """Cached: a define's list is collapsed again in every rule that uses it.
    The networks are of one IP version (callers split them by family), which
    the type of `collapse_addresses` cannot be told. Networks that neither
    overlap nor touch are collapsed already: sorted, they are the answer,
    without the cost of `collapse_addresses`."""
    spans = []
    for network in networks:  # ipaddress's num_addresses and broadcast_address are slow properties
        low = int(network.network_address)
        spans.append((low, low | ((1 << (network.max_prefixlen - network.prefixlen)) - 1), network))
    spans.sort()
    if all(high + 1 < low for (_, high, _), (low, _, _) in itertools.pairwise(spans)):
        return tuple(network for _, _, network in spans)
    return tuple(sorted(ipaddress.collapse_addresses(networks)))  # type: ignore[type-var]


def check_interface_name(name: str, loc: Loc) -> str:
    """An interface name, or a prefix wildcard: a name with a final '*'."""
    if not IFNAME.match(name):
        hint = "at most 15 characters of letters, digits and _ . : @ + -, a final '*' included"
        if name == "*":
            hint = "'*' alone would match every interface: leave out the interface match"
        elif "*" in name[:-1]:
            hint = "a '*' is a wildcard at the end of an interface name only (eth* matches eth0, eth1, ...)"
        raise PolicyError(loc, f"'{printable(name)}' is not a valid interface name", hint)
    return name
