"""`nfc explain` is nfc's executable semantics: for each flagship policy,
a few hundred seeded-random packets are sent through a server namespace
running the generated ruleset, and the kernel's verdict must be explain's."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from nfc.api import compile_policy
from nfc.explain import explain, parse_packet

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
    SPREAD4,
    SPREAD6,
    Lab,
)

PACKETS = 240
UDP_PORTS = (53, 123, 5353, 40000)
TCP_PORTS = (22, 53, 80, 81, 82, 83, 8080)
# (client, server address, server interface, candidate sources)
LINKS = [
    ("a", SERVER_A4, "eth-a", [CLIENT_A4, OUTSIDER4, *SPREAD4[:50]]),
    ("a", SERVER_A6, "eth-a", [CLIENT_A6, OUTSIDER6, *SPREAD6[:50]]),
    ("b", SERVER_B4, "eth-b", [CLIENT_B4, ADMIN4]),
    ("b", SERVER_B6, "eth-b", [CLIENT_B6]),
]


def random_probes(seed: int, count: int = PACKETS) -> list[tuple[str, dict, str]]:
    """(client, probe, packet text) triples; every 5-tuple distinct."""
    rng = random.Random(seed)
    used_sports: set[int] = set()
    probes = []
    while len(probes) < count:
        client, server, interface, sources = rng.choice(LINKS)
        proto = rng.choice(("udp", "tcp"))
        dport = rng.choice(UDP_PORTS if proto == "udp" else TCP_PORTS)
        sport = 53 if proto == "udp" and rng.random() < 0.15 else rng.randrange(20000, 60000)
        source = rng.choice(sources)
        if sport != 53:
            if sport in used_sports:
                continue
            used_sports.add(sport)
        elif any(p["source"] == source and p.get("sport") == 53 for _, p, _ in probes):
            continue  # one socket per source address and port
        probe = {"proto": proto, "server": server, "port": dport, "source": source, "sport": sport}
        bracket = (lambda a: f"[{a}]") if ":" in server else (lambda a: a)
        text = f"{proto} {bracket(source)}:{sport} > {bracket(server)}:{dport} iif {interface}"
        probes.append((client, probe, text))
    return probes


@pytest.mark.parametrize("policy", FLAGSHIP, ids=lambda p: p.stem)
def test_explain_agrees_with_the_kernel(lab: Lab, policy: Path) -> None:
    ruleset, _ = compile_policy(str(policy))
    result = lab.apply(policy)
    assert result.returncode == 0, result.stderr
    lab.start_servers(udp=UDP_PORTS, tcp=TCP_PORTS)
    probes = random_probes(seed=sum(map(ord, policy.stem)))
    disagreements = []
    seen = set()
    for name, client in (("a", lab.client_a), ("b", lab.client_b)):
        mine = [(probe, text) for owner, probe, text in probes if owner == name]
        observed = lab.probe(client, [probe for probe, _ in mine])
        for (_, text), kernel in zip(mine, observed, strict=True):
            predicted = explain(ruleset, parse_packet(text)).verdict
            seen.add(predicted)
            if predicted != kernel:
                disagreements.append(f"{text}: explain says {predicted}, the kernel {kernel}")
    assert disagreements == []
    assert {"accept", "drop"} <= seen  # the sample exercises both outcomes
