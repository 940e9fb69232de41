"""The same policy behaves the same on both backends: a packet matrix sent
through a server under nftables and through one under iptables-legacy must
meet identical verdicts, observed as real answers, refusals and silences."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import FLAGSHIP
from lab import (
    ADMIN4,
    CLIENT_A4,
    CLIENT_A6,
    CLIENT_B4,
    CLIENT_B6,
    OUTSIDER4,
    OUTSIDER6,
    SERVER_A4,
    SERVER_A6,
    SERVER_B4,
    SERVER_B6,
    TRAFFIC,
    Lab,
)

UDP_PORTS = (53, 5353)
TCP_PORTS = (22, 53, 80, 8080, 9999)
CLIENT_PORT = 9999  # a listener on client A that the server connects out to


def matrix() -> list[tuple[str, dict]]:
    """(client, probe) pairs: protocols, ports, sources inside and outside
    the allowed networks, IPv4 and IPv6."""
    sources = [
        ("a", SERVER_A4, CLIENT_A4),
        ("a", SERVER_A4, OUTSIDER4),
        ("a", SERVER_A6, CLIENT_A6),
        ("a", SERVER_A6, OUTSIDER6),
        ("b", SERVER_B4, ADMIN4),
        ("b", SERVER_B4, CLIENT_B4),
        ("b", SERVER_B6, CLIENT_B6),
    ]
    probes = []
    for (client, server, source), (proto, port) in itertools.product(
        sources, [("udp", p) for p in UDP_PORTS] + [("tcp", p) for p in TCP_PORTS]
    ):
        probes.append((client, {"proto": proto, "server": server, "port": port, "source": source}))
    return probes


def verdicts(lab: Lab, policy: Path, backend: str) -> dict[str, str]:
    result = lab.apply(policy, backend=backend)
    assert result.returncode == 0, result.stderr
    lab.start_servers(udp=UDP_PORTS, tcp=TCP_PORTS)
    listener = lab.client_a.popen(
        sys.executable, TRAFFIC, "serve", "--tcp", str(CLIENT_PORT), "--lifetime", "60"
    )
    lab.servers.append(listener)
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    # established versus new: the server opens a connection to client A, and
    # the answers come back as an established flow that no input rule names
    outbound = [
        {"proto": "tcp", "server": CLIENT_A4, "port": CLIENT_PORT, "source": SERVER_A4},
        {"proto": "tcp", "server": CLIENT_A6, "port": CLIENT_PORT, "source": SERVER_A6},
    ]
    batches = [(name, client, [probe for owner, probe in matrix() if owner == name])
               for name, client in (("a", lab.client_a), ("b", lab.client_b))]  # fmt: skip
    batches.append(("established", lab.server, outbound))
    found: dict[str, str] = {}
    with ThreadPoolExecutor(len(batches)) as pool:  # the batches' silences elapse together
        running = [(name, probes, pool.submit(lab.probe, sender, probes)) for name, sender, probes in batches]
        for name, probes, future in running:
            prefix = "established " if name == "established" else ""
            for p, verdict in zip(probes, future.result(), strict=True):
                found[f"{prefix}{p['proto']} {p['source']} > {p['server']}:{p['port']}"] = verdict
    return found


@pytest.mark.parametrize("policy", FLAGSHIP, ids=lambda p: p.stem)
def test_both_backends_give_the_same_verdicts(make_lab: Callable[[], Lab], policy: Path) -> None:
    with ThreadPoolExecutor(2) as pool:  # each backend in a lab of its own, side by side
        nft, legacy = pool.map(lambda b: verdicts(make_lab(), policy, b), ("nft", "iptables-legacy"))
    differences = {probe: (nft[probe], legacy[probe]) for probe in nft if nft[probe] != legacy[probe]}
    assert differences == {}
    # the matrix discriminates: some probes pass, some do not
    assert {"accept", "drop"} <= set(nft.values())
    assert nft[f"established tcp {SERVER_A4} > {CLIENT_A4}:{CLIENT_PORT}"] == "accept"
    assert nft[f"tcp {CLIENT_A4} > {SERVER_A4}:{CLIENT_PORT}"] == "drop"
