"""What every backend shares."""

from __future__ import annotations

import functools
import os
import socket
from ipaddress import IPv4Address, IPv6Address

from nfc.errors import Loc, printable
from nfc.ir import Network, Rule, RuleRole, Ruleset

ROLE_NOTES = {
    RuleRole.ESSENTIAL_ICMP: "icmp essential",
    RuleRole.STATE: "state auto",
    RuleRole.UNTRACKED_ANSWER: "answers of notrack entry",
    RuleRole.LOOPBACK: "loopback accept",
    RuleRole.DNAT_FORWARD: "dnat forward",
}


USER = RuleRole.USER  # an enum member read through its class is a Python call


def rule_note(rule: Rule) -> str | None:
    """The text after FILE:LINE in a generated rule's comment."""
    return rule.comment if rule.role is USER else ROLE_NOTES[rule.role]


def network_text(network: Network) -> str:
    """A network as both tools write it: a host without its /32 or /128.
    Cached by identity: the front end shares one object per network
    written, a network recurs across rules, and ipaddress's `str` and hash
    are slow Python code. The cached entry keeps its network alive, so an
    id is never reused while it is in the cache."""
    cached = _TEXTS.get(id(network))
    if cached is not None and cached[0] is network:
        return cached[1]
    if len(_TEXTS) >= MAX_CACHED_TEXTS:
        _TEXTS.clear()
    text = _address_text(network.network_address)
    length = network.prefixlen
    if length != network.max_prefixlen:
        text += f"/{length}"
    _TEXTS[id(network)] = (network, text)
    return text


def _address_text(address: IPv4Address | IPv6Address) -> str:
    """`str(address)`, in C where it can: ipaddress's IPv6 text is Python
    code, slow for a list's tens of thousands of networks. inet_ntop writes
    the same text but for ::/96 and ::ffff:0:0/96, whose last 32 bits it may
    write as IPv4 (`::ffff:1.2.3.4`, ipaddress `::ffff:102:304`), and for scoped addresses."""
    value = int(address)
    if isinstance(address, IPv4Address):
        return f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"
    if value >> 32 in (0, 0xFFFF) or address.scope_id is not None:
        return str(address)
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


MAX_CACHED_TEXTS = 1 << 18  # networks whose text is kept: a bound on the memory a long list holds
_TEXTS: dict[int, tuple[Network, str]] = {}


def origin_label(ruleset: Ruleset, origin: Loc, limit: int) -> str:
    """`FILE:LINE` for a generated comment, FILE relative to the policy's directory."""
    line = f":{origin.line}"
    path, size = _path_text(origin.file, ruleset.source, limit)
    label = path + line
    if size + len(line) > limit:  # `line` is ASCII: its UTF-8 is as long as it
        name = printable(os.path.basename(origin.file), limit)
        while len((name + line).encode()) > limit:
            name = name[1:]
        label = name + line
    return label


@functools.lru_cache(maxsize=1024)
def _path_text(file: str, policy: str, limit: int) -> tuple[str, int]:
    """`file` as seen from the directory of `policy`, printable, and the
    length of its UTF-8: once per file and limit, not once per rule."""
    base = os.path.dirname(policy)
    text = printable(os.path.relpath(file, base) if base else file, limit)
    return text, len(text.encode())
