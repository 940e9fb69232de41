"""A differential campaign: seeded random policies, each compiled for both
backends and loaded into its own server namespace, meet the same random
packets; the nftables kernel, the iptables-legacy kernel and `nfc explain`
must give the same verdict for every one. What a backend cannot express is
a compile error, counted apart, never a different verdict."""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_netns_explain import LINKS, TCP_PORTS, UDP_PORTS, random_probes

from nfc.api import compile_policy
from nfc.explain import explain, parse_packet

from lab import Lab

pytestmark = pytest.mark.netns

POLICIES = 6
PACKETS = 100
SEED = 2026
# Networks around the lab's addresses (tests/lab.py), both families.
NETWORKS = [
    "10.77.1.0/24",
    "10.77.1.128/25",
    "10.77.2.0/24",
    "192.0.2.10",
    "198.51.100.7",
    "fd00:77:1::/48",
    "fd00:77:1:10::/60",
    "fd00:77:2::/64",
    "2001:db8:77::7",
]


def random_rule(rng: random.Random) -> str:
    proto = rng.choice([None, "tcp", "udp"])
    verdict = rng.choice(["accept", "accept", "drop", "reject"])
    if verdict == "reject" and proto == "tcp" and rng.random() < 0.5:
        verdict = "reject with tcp reset"
    words = [verdict]
    if proto:
        words.append(proto)
        ports = UDP_PORTS if proto == "udp" else TCP_PORTS
        shape = rng.random()
        if shape < 0.4:
            words.append(f"dport {rng.choice(ports)}")
        elif shape < 0.6:
            words.append("dport {" + ", ".join(map(str, rng.sample(ports, 2))) + "}")
        elif shape < 0.75:
            low = rng.choice(ports)
            words.append(f"dport {low}-{low + rng.choice((1, 30, 1000))}")
    if rng.random() < 0.5:
        networks = rng.sample(NETWORKS, rng.choice((1, 1, 2, 3)))
        negated = "not " if rng.random() < 0.3 else ""
        listed = networks[0] if len(networks) == 1 else "{" + ", ".join(networks) + "}"
        words.append(f"from {negated}{listed}")
    if rng.random() < 0.3:
        words.append(f"iif {rng.choice(['eth-a', 'eth-b', 'eth-*'])}")
    if rng.random() < 0.25:  # on iptables-legacy, a chain of nfc's own decides
        words.append(rng.choice(["log", "log level err", 'log prefix "nfc: " level info']))
    return " ".join(words)


def random_policy(rng: random.Random) -> str:
    notrack = rng.choice([[], ["udp dport 53"], ["udp dport {53, 5353}", "udp sport 53 dport 40000"]])
    lines = ["nfc: 1"]
    if notrack:
        lines += ["conntrack:", "  notrack:", *(f"    - {entry}" for entry in notrack)]
    lines += [
        "input:",
        f"  policy: {rng.choice(['drop', 'drop', 'accept'])}",
        f"  state: {rng.choice(['auto', 'manual'])}",
        "  rules:",
        *(f"    - '{random_rule(rng)}'" for _ in range(rng.randint(2, 7))),
    ]
    return "\n".join(lines) + "\n"


# A TCP connection refused over IPv6 (an ICMPv6 port unreachable) learns so
# only from the retransmitted SYN, a second after the first: wait longer.
PROBE_TIMEOUT = 2.0


# Before the random ones: the constructs iptables-legacy got wrong once
# (tcp-reset rejects in nfc's own chains, log level err, wildcards).
KNOWN_CASES = """\
nfc: 1
input:
  policy: drop
  rules:
    - 'reject with tcp reset tcp dport 80 log level err'
    - 'reject with tcp reset tcp dport 81 from not {198.51.100.7, 10.77.1.128/25, fd00:77:1::/64}'
    - 'accept tcp dport 22 iif eth-* log prefix "ssh: "'
    - 'reject udp dport 5353 from not {10.77.2.0/24, 192.0.2.10}'
    - 'accept udp dport 53'
"""


def observed(lab: Lab, probes: list[tuple[str, dict, str]]) -> list[str]:
    """What became of each probe, both clients sending at once."""
    clients = {"a": lab.client_a, "b": lab.client_b}
    with ThreadPoolExecutor(len(clients)) as pool:
        futures = {
            name: pool.submit(
                lab.probe, client, [p for owner, p, _ in probes if owner == name], PROBE_TIMEOUT
            )
            for name, client in clients.items()
        }
        return [verdict for name in clients for verdict in futures[name].result()]


def test_random_policies_get_the_same_verdicts_everywhere(
    make_lab: Callable[[], Lab], tmp_path: Path
) -> None:
    labs = {"nft": make_lab(), "iptables-legacy": make_lab()}
    for lab in labs.values():
        # A hundred rejects at once: the kernel would rate-limit their ICMP
        # errors, and a reject would look like a drop.
        lab.server.run(
            "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0",
            "net.ipv4.icmp_msgs_per_sec=1000000", "net.ipv4.icmp_msgs_burst=1000000",
        )  # fmt: skip
        lab.start_servers(udp=UDP_PORTS, tcp=TCP_PORTS)
        # Before any ruleset, every source talks to the server once, so that
        # the server knows each one's link address: a reject's ICMP error must
        # not wait on neighbour discovery for 50 addresses at once.
        for name, client in (("a", lab.client_a), ("b", lab.client_b)):
            hello = [
                {"proto": "udp", "server": server, "port": 53, "source": source}
                for owner, server, _, sources in LINKS
                if owner == name
                for source in sources
            ]
            assert set(lab.probe(client, hello)) == {"accept"}
    rng = random.Random(SEED)
    compared = refused = 0
    disagreements: list[str] = []
    seen: set[str] = set()
    for index in range(POLICIES + 1):
        policy = tmp_path / f"random-{index}.yaml"
        policy.write_text(random_policy(rng) if index else KNOWN_CASES)
        ruleset, _ = compile_policy(str(policy))
        probes = sorted(random_probes(seed=SEED + index, count=PACKETS), key=lambda p: p[0])
        predicted = [explain(ruleset, parse_packet(text)).verdict for _, _, text in probes]
        seen.update(predicted)
        for backend, lab in labs.items():
            applied = lab.apply(policy, backend=backend)
            if applied.returncode == 2 and "cannot express this exactly" in applied.stderr:
                refused += 1
                continue
            assert applied.returncode == 0, (policy.read_text(), applied.stderr)
            # explain judges new connections: forget the flows of earlier rounds
            lab.server.run("conntrack", "-F")
            for (_, _, text), expected, kernel in zip(probes, predicted, observed(lab, probes), strict=True):
                compared += 1
                if kernel != expected:
                    disagreements.append(
                        f"{policy.name} {backend}: {text}: explain {expected}, kernel {kernel}"
                    )
    print(f"random campaign: {POLICIES + 1} policies, {compared} packet verdicts compared, "
          f"{refused} backend refusals, {len(disagreements)} disagreements")  # fmt: skip
    assert disagreements == [], "\n".join(disagreements)
    assert {"accept", "drop", "reject"} <= seen  # the sample exercises every outcome
    assert compared >= 2 * (POLICIES + 1) * PACKETS - refused * PACKETS
