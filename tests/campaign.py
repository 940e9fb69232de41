"""Differential campaigns against the kernel: seeded random packets sent
through server labs (tests/lab.py) under seeded random policies, each
kernel's verdict held to `nfc explain`'s. The variants of a policy (a
backend, an optimization level) are each loaded into a lab of their own
and probed at the same time: the probes mostly wait."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nfc.api import compile_policy
from nfc.explain import explain, parse_packet

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

UDP_PORTS = (53, 123, 5353, 40000)
TCP_PORTS = (22, 53, 80, 81, 82, 83, 8080)
# (client, server address, server interface, candidate sources)
LINKS = [
    ("a", SERVER_A4, "eth-a", [CLIENT_A4, OUTSIDER4, *SPREAD4[:50]]),
    ("a", SERVER_A6, "eth-a", [CLIENT_A6, OUTSIDER6, *SPREAD6[:50]]),
    ("b", SERVER_B4, "eth-b", [CLIENT_B4, ADMIN4]),
    ("b", SERVER_B6, "eth-b", [CLIENT_B6]),
]
# How long a probe that explain says is dropped is given to be answered all
# the same: a TCP connection refused over IPv6 (an ICMPv6 port unreachable)
# learns so only from the retransmitted SYN, a second after the first.
SILENCE = 2.0
# How long an answer explain foresees is waited for: it comes in
# milliseconds, but a busy machine must not turn it into a drop.
PATIENCE = 20.0


def random_probes(seed: int, count: int) -> list[tuple[str, dict, str]]:
    """(client, probe, packet text) triples; every 5-tuple distinct."""
    rng = random.Random(seed)
    used_sports: set[int] = set()
    probes: list[tuple[str, dict, str]] = []
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


def ready_for_probes(lab: Lab) -> None:
    """Servers on every probed port, and no ICMP rate limit: a hundred
    rejects at once would be rate-limited, and a reject would look like a
    drop. Before any ruleset, every source talks to the server once (the
    positive control: each path answers), so that the server knows each
    one's link address: a reject's ICMP error must not wait on neighbour
    discovery for 50 addresses at once."""
    lab.server.run(
        "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0",
        "net.ipv4.icmp_msgs_per_sec=1000000", "net.ipv4.icmp_msgs_burst=1000000",
    )  # fmt: skip
    lab.start_servers(udp=UDP_PORTS, tcp=TCP_PORTS)
    for name, client in (("a", lab.client_a), ("b", lab.client_b)):
        hello = [
            {"proto": "udp", "server": server, "port": 53, "source": source, "answer": True}
            for owner, server, _, sources in LINKS
            if owner == name
            for source in sources
        ]
        assert set(lab.probe(client, hello, SILENCE, PATIENCE)) == {"accept"}


def observed(lab: Lab, probes: list[tuple[str, dict, str]], predicted: list[str]) -> list[str]:
    """What became of each probe (sorted by client), both clients sending at
    once; the ones explain says are dropped share one wait of `SILENCE`."""
    clients = {"a": lab.client_a, "b": lab.client_b}
    expecting = [
        (owner, {**probe, "answer": verdict != "drop"})
        for (owner, probe, _), verdict in zip(probes, predicted, strict=True)
    ]
    with ThreadPoolExecutor(len(clients)) as pool:
        futures = {
            name: pool.submit(
                lab.probe, client, [p for owner, p in expecting if owner == name], SILENCE, PATIENCE
            )
            for name, client in clients.items()
        }
        return [verdict for name in clients for verdict in futures[name].result()]


@dataclass
class Tally:
    compared: int = 0
    refused: int = 0  # a variant refused the policy as one it cannot express exactly
    lookups: int = 0
    disagreements: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # explain's verdicts


Load = Callable[[Lab, Path], subprocess.CompletedProcess[str]]


def campaign(
    variants: dict[str, tuple[Lab, Load]], policies: Iterable[tuple[Path, int]], packets: int
) -> Tally:
    """Each (policy, probe seed): `packets` random probes, explain's verdicts,
    and each variant's kernel's, the variants loaded and probed side by side."""
    tally = Tally()
    for policy, seed in policies:
        ruleset, _ = compile_policy(str(policy))
        probes = sorted(random_probes(seed=seed, count=packets), key=lambda p: p[0])
        predicted = [explain(ruleset, parse_packet(text)).verdict for _, _, text in probes]
        tally.seen.update(predicted)
        with ThreadPoolExecutor(len(variants)) as pool:
            running = {
                name: pool.submit(_load_and_probe, lab, load, policy, probes, predicted)
                for name, (lab, load) in variants.items()
            }
            for name, future in running.items():
                kernel = future.result()
                if kernel is None:
                    tally.refused += 1
                    continue
                for (_, _, text), expected, verdict in zip(probes, predicted, kernel, strict=True):
                    tally.compared += 1
                    if verdict != expected:
                        tally.disagreements.append(
                            f"{policy.name} {name}: {text}: explain {expected}, kernel {verdict}"
                        )
    return tally


def _load_and_probe(
    lab: Lab, load: Load, policy: Path, probes: list[tuple[str, dict, str]], predicted: list[str]
) -> list[str] | None:
    """The kernel's verdicts under `policy`; None when the variant refuses it
    as a policy it cannot express exactly."""
    applied = load(lab, policy)
    if applied.returncode == 2 and "cannot express this exactly" in applied.stderr:
        return None
    assert applied.returncode == 0, (policy.read_text(), applied.stderr)
    lab.server.run("conntrack", "-F")  # explain judges new connections: forget earlier rounds' flows
    return observed(lab, probes, predicted)
