"""IPv6 packets behind an authentication header (AH): nftables and `nfc
explain` read their protocol as AH, while ip6tables would look past the
header to what it wraps. The iptables-legacy backend matches nft: a rule
for a protocol never catches an AH-wrapped packet of it, and `proto ah`
catches every AH-wrapped packet. What got past the input chain is read
from the server's own kernel, which has no AH handler here and counts each
such packet it is handed as of an unknown protocol (Ip6InUnknownProtos)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from nfc import api

from lab import CLIENT_A6, SERVER_A6, Lab, Namespace

pytestmark = pytest.mark.netns

# AH (RFC 4302) with a 96-bit ICV, wrapping `inner` bytes of protocol `next`.
SEND_AH = """
import socket, struct, sys
next_header, count = int(sys.argv[2]), int(sys.argv[3])
inner = struct.pack("!HHHH", 40000, 9, 8, 0) if next_header == 17 else b"payload!"
ah = struct.pack("!BBHII", next_header, 4, 0, 0x1000, 1) + bytes(12)
sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_AH)
for _ in range(count):
    sock.sendto(ah + inner, (sys.argv[1], 0))
"""
PACKETS = 5


def ah_received(server: Namespace) -> int:
    for line in server.run("cat", "/proc/net/snmp6").stdout.splitlines():
        name, _, value = line.partition(" ")
        if name == "Ip6InUnknownProtos":
            return int(value)
    raise AssertionError("no Ip6InUnknownProtos in /proc/net/snmp6")


def passed(lab: Lab, next_header: int) -> int:
    """How many of PACKETS AH-wrapped packets got through the input chain."""
    before = ah_received(lab.server)
    lab.client_a.run(sys.executable, "-c", SEND_AH, SERVER_A6, str(next_header), str(PACKETS))
    time.sleep(0.3)
    return ah_received(lab.server) - before


def explained(policy: Path) -> str:
    """explain's verdict for an AH packet from client A, the third opinion."""
    return api.explain(str(policy), f"ah [{CLIENT_A6}] > [{SERVER_A6}]").verdict


@pytest.mark.parametrize("backend", ["nft", "iptables-legacy"])
def test_ah_wrapped_packets_meet_the_same_rules_on_both_backends(
    lab: Lab, tmp_path: Path, backend: str
) -> None:
    wraps = tmp_path / "wraps.yaml"
    wraps.write_text(
        "nfc: 1\ninput:\n  policy: accept\n  rules:\n    - drop ip6 proto 253\n    - drop udp dport 9\n"
    )
    applied = lab.apply(wraps, backend=backend)
    assert applied.returncode == 0, applied.stderr
    assert passed(lab, 253) == PACKETS  # the packet's protocol is AH, not 253
    assert passed(lab, 17) == PACKETS  # nor UDP
    assert explained(wraps) == "accept"

    ah = tmp_path / "ah.yaml"
    ah.write_text("nfc: 1\ninput:\n  policy: accept\n  rules:\n    - drop ip6 proto ah\n")
    applied = lab.apply(ah, backend=backend)
    assert applied.returncode == 0, applied.stderr
    assert passed(lab, 253) == 0
    assert passed(lab, 17) == 0
    assert explained(ah) == "drop"
