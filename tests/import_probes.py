"""The boundary packets of the import equivalence tests: for a ruleset, the
edges of every port, port range and network its rules name, IPv4 and IPv6,
TCP, UDP and ICMP echo, new flows from both clients and flows the server
opens itself (their answers are established, or untracked).

Also runnable in a namespace as `python3 import_probes.py ping JSON`: an ICMP
echo per target over a raw socket, printing which were answered."""

from __future__ import annotations

import ipaddress
import json
import re
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

SERVER = {"a": ("10.77.1.1", "fd00:77:1::1"), "b": ("10.77.2.1", "fd00:77:2::1")}
CLIENT = {"a": ("10.77.1.2", "fd00:77:1::2"), "b": ("10.77.2.2", "fd00:77:2::2")}
LAB_NETS = {"a": ("10.77.1.0/24", "fd00:77:1::/64"), "b": ("10.77.2.0/24", "fd00:77:2::/64")}
OTHER_PORT = 9999  # named by no fixture: what the chain's policy does
PORT_WORD = re.compile(
    r"(?:--d?s?ports?|--destination-ports?|--source-ports?|dport|sport)\s+([0-9][0-9,:\- ]*)"
)
SET_BODY = re.compile(r"(?:dport|sport)\s+\{([^}]*)\}")
ADDRESS = re.compile(
    r"(?<![\w:.])(\d+\.\d+\.\d+\.\d+(?:/\d+)?|[0-9a-f]*:[0-9a-f:]+(?:/\d+)?)(?![\w:.])", re.I
)


@dataclass
class Plan:
    """What to send, and the client addresses it needs."""

    ports: set[int] = field(default_factory=set)  # destination ports to probe and listen on
    sports: set[int] = field(default_factory=set)
    extra: dict[str, list[str]] = field(default_factory=lambda: {"a": [], "b": []})  # addresses to add
    probes: dict[str, list[dict]] = field(default_factory=lambda: {"a": [], "b": []})


def edges(low: int, high: int) -> set[int]:
    return {p for p in (low - 1, low, high, high + 1) if 1 <= p <= 65535}


def plan(text: str) -> Plan:
    """The boundary probes for a ruleset given as text (iptables-save or nft)."""
    result = Plan()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    singles: set[int] = set()
    spans: list[str] = [m[1] for m in PORT_WORD.finditer(text)] + [m[1] for m in SET_BODY.finditer(text)]
    for span in spans:
        for item in re.split(r"[,\s]+", span.strip()):
            numbers = [int(n) for n in re.split(r"[:-]", item) if n.isdigit()]
            if numbers:
                result.ports |= edges(numbers[0], numbers[-1])
                singles |= {numbers[0], numbers[-1]}
    result.sports = {p for p in result.ports if p in singles or p - 1 in singles or p + 1 in singles}
    result.ports.add(OTHER_PORT)
    networks = set()
    for match in ADDRESS.finditer(text):
        try:
            networks.add(ipaddress.ip_network(match[1], strict=False))
        except ValueError:
            continue
    sources = {side: list(CLIENT[side]) for side in "ab"}
    for network in sorted(networks, key=lambda n: (n.version, n)):
        if network.prefixlen < 8 or network.is_link_local or network.is_loopback:
            continue
        first, last = int(network.network_address), int(network.broadcast_address)
        for value in (first - 1, first, last, last + 1):
            address = ipaddress.ip_address(value) if value >= 0 else None
            if address is None or address.is_multicast or str(address) in {*SERVER["a"], *SERVER["b"]}:
                continue
            side = "b" if any(address in ipaddress.ip_network(n) for n in LAB_NETS["b"]) else "a"
            if str(address) not in sources[side]:
                sources[side].append(str(address))
                if str(address) not in CLIENT[side]:
                    result.extra[side].append(str(address))
    keys = sorted({p for p in result.ports if p in singles} | {OTHER_PORT})
    for side in "ab":
        for source in sources[side]:
            server = SERVER[side][1 if ":" in source else 0]
            ports = sorted(result.ports) if source in CLIENT[side] else keys
            for proto in ("tcp", "udp"):
                result.probes[side] += [
                    {"proto": proto, "server": server, "port": p, "source": source} for p in ports
                ]
        for source in CLIENT[side] if side == "b" else ():  # client A serves the server's own flows
            server = SERVER[side][1 if ":" in source else 0]
            for proto in ("tcp", "udp"):
                result.probes[side] += [
                    {"proto": proto, "server": server, "port": OTHER_PORT, "source": source, "sport": p}
                    for p in sorted(result.sports)
                    if p != OTHER_PORT
                ]
    return result


def key(probe: dict) -> str:
    sport = f":{probe['sport']}" if probe.get("sport") else ""
    return f"{probe['proto']} {probe['source']}{sport} > {probe['server']}:{probe['port']}"


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def ping(targets: list[tuple[str, str]], timeout: float) -> list[str]:
    """One ICMP echo request per (source, target); 'accept' when answered."""
    socks = []
    for index, (source, target) in enumerate(targets):
        v6 = ":" in target
        sock = socket.socket(
            socket.AF_INET6 if v6 else socket.AF_INET,
            socket.SOCK_RAW,
            socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP,
        )
        sock.bind((source, 0))
        header = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 0x4E46, index)
        packet = header if v6 else struct.pack("!BBHHH", 8, 0, _checksum(header), 0x4E46, index)
        sock.sendto(packet, (target, 0))
        socks.append(sock)
    verdicts = ["drop"] * len(targets)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and "drop" in verdicts:
        ready, _, _ = select.select(socks, [], [], max(0.0, deadline - time.monotonic()))
        for sock in ready:
            data = sock.recv(2048)
            payload = data if sock.family == socket.AF_INET6 else data[(data[0] & 0x0F) * 4 :]
            kind, _, _, ident, index = struct.unpack("!BBHHH", payload[:8])
            if kind in (0, 129) and ident == 0x4E46 and index < len(verdicts):
                verdicts[index] = "accept"
    return verdicts


if __name__ == "__main__":
    print(json.dumps(ping([tuple(t) for t in json.loads(sys.argv[2])], float(sys.argv[3]))), flush=True)


def router_probes(text: str, hosts: dict[str, str]) -> list[tuple[str, str, str, int, str | None]]:
    """The questions through a router (tests/test_netns_router.py's lab) for
    a ruleset with NAT: (asking host, proto, address, port, source). From the
    WAN host, the edges of every port the ruleset names at the router's WAN
    addresses (translated or not) and the LAN host itself; from the LAN
    hosts, the WAN host's listeners (masquerade, snat, redirect of 53);
    from the container and DMZ hosts, the WAN host. `hosts` names the
    addresses: wan4, wan6 (the router's), wan_host4, wan_host6, lan4,
    lan6, lan_snatted4."""
    ports = router_ports(text)
    questions: list[tuple[str, str, str, int, str | None]] = []
    for port in sorted(ports):
        for proto in ("tcp", "udp"):
            questions += [
                ("wan", proto, hosts["wan4"], port, None),
                ("wan", proto, hosts["wan6"], port, None),
            ]
    questions += [("wan", "tcp", hosts["lan4"], 80, None), ("wan", "tcp", hosts["lan6"], 80, None)]
    for proto, port in (("tcp", 80), ("udp", 5300), ("udp", 53), ("tcp", 9001), ("tcp", 9002)):
        for source in (hosts["lan4"], hosts["lan_snatted4"]):
            questions.append(("lan", proto, hosts["wan_host4"], port, source))
        questions.append(("lan", proto, hosts["wan_host6"], port, hosts["lan6"]))
        for role in ("ctr", "dmz"):
            questions.append((role, proto, hosts["wan_host4"], port, None))
    return questions


def router_ports(text: str) -> set[int]:
    """The edges of every destination port the ruleset names, and port 80."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    ports = {80}
    for span in [m[1] for m in PORT_WORD.finditer(body)] + [m[1] for m in SET_BODY.finditer(body)]:
        for item in re.split(r"[,\s]+", span.strip()):
            numbers = [int(n) for n in re.split(r"[:-]", item) if n.isdigit()]
            if numbers:
                ports |= edges(numbers[0], numbers[-1])
    return ports
