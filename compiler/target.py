"""The machine a ruleset is for, where it matters: `conntrack: max: auto`
sizes the connection table from the host's memory."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from nfc.ir import Sysctl
from nfc.load import MAX_SYSCTL_INT, TIMEOUT_SYSCTLS, ConntrackSection

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


def conntrack_sysctls(conntrack: ConntrackSection, target: Target) -> list[Sysctl]:
    """The kernel settings a policy's `conntrack` section asks for."""
    result = []
    if conntrack.max is not None and conntrack.max_loc is not None:
        value = target.conntrack_max() if conntrack.max == "auto" else int(conntrack.max)
        result.append(Sysctl(CONNTRACK_MAX_SYSCTL, value, conntrack.max_loc))
    for name, seconds, loc in conntrack.timeouts:
        result.append(Sysctl(TIMEOUT_SYSCTLS[name], seconds, loc))
    return result
