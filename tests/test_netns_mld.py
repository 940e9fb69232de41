"""IPv6 multicast listener discovery (nfc-policy(5), CHAINS): with `icmp:
essential`, a router's MLD query from a link-local address reaches the
host, on both backends; one from a global address does not, and with
`icmp: manual` none does. What reached the host is read from its own
kernel's ICMPv6 counters (Icmp6InType130 in /proc/net/snmp6)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from lab import CLIENT_A6, Lab, Namespace

pytestmark = pytest.mark.netns

# An MLDv1 general query (type 130, code 0, checksum filled in by the
# kernel, maximum response delay 1000 ms, the unspecified group) to every
# node on the link, sent from `source` (link-local: the kernel's pick).
SEND_QUERY = """
import socket, struct, sys
sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
link = socket.if_nametoindex("eth0")
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, link)
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
if sys.argv[1] != "link-local":
    sock.bind((sys.argv[1], 0))
sock.sendto(struct.pack("!BBHHH16s", 130, 0, 0, 1000, 0, bytes(16)), ("ff02::1", 0, 0, link))
"""


def queries_received(server: Namespace) -> int:
    for line in server.run("cat", "/proc/net/snmp6").stdout.splitlines():
        name, _, value = line.partition(" ")
        if name == "Icmp6InType130":
            return int(value)
    return 0  # the kernel lists a type only once it has counted one


def reaches(lab: Lab, source: str) -> bool:
    before = queries_received(lab.server)
    lab.client_a.run(sys.executable, "-c", SEND_QUERY, source)
    time.sleep(0.3)
    return queries_received(lab.server) > before


def policy(directory: Path, icmp: str) -> Path:
    path = directory / f"mld-{icmp}.yaml"
    path.write_text(f"nfc: 1\ninput:\n  policy: drop\n  icmp: {icmp}\n  rules:\n    - accept tcp dport 22\n")
    return path


@pytest.mark.parametrize("backend", ["nft", "iptables-legacy"])
def test_mld_queries_from_link_local_routers_reach_the_host(lab: Lab, tmp_path: Path, backend: str) -> None:
    applied = lab.apply(ROOT / "policies" / "dns-recursive.yaml", backend=backend)
    assert applied.returncode == 0, applied.stderr
    assert reaches(lab, "link-local")
    assert not reaches(lab, CLIENT_A6)  # MLD never comes from a global address

    applied = lab.apply(policy(tmp_path, "manual"), backend=backend)
    assert applied.returncode == 0, applied.stderr
    assert not reaches(lab, "link-local")
