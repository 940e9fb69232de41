"""The nft optimizer against the kernel: seeded random policies full of
overlapping and shadowed rules, of shapes that fold into sets and verdict
maps, are loaded at -O0 and at -O1, each into a server namespace of its own, and
meet the same random packets; both kernels and `nfc explain` must give every packet
the same verdict."""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from campaign import TCP_PORTS, UDP_PORTS, campaign, ready_for_probes

from nfc import api

from lab import Lab

pytestmark = pytest.mark.netns

POLICIES = 2
PACKETS = 100
SEED = 1313
# Networks around the lab's client addresses (tests/lab.py), in the shapes
# that fold: /28s and /64s (masked hash keys), hosts, and wider networks
# that overlap them (interval sets, and rules that block a move).
V4_NETS = ["10.77.1.0/28", "10.77.1.16/28", "10.77.1.32/28", "10.77.1.48/28"]
V4_HOSTS = [
    "10.77.1.2",
    "10.77.2.2",
    "192.0.2.10",
    "198.51.100.7",
    *(f"10.77.1.{i}" for i in range(10, 60, 3)),
]
V6_NETS = ["fd00:77:1::/64", "fd00:77:2::/64", *(f"fd00:77:1:{i:x}::/64" for i in range(1, 40, 2))]
WIDE = ["10.77.1.0/24", "10.77.1.0/26", "10.77.0.0/16", "fd00:77:1::/48", "198.51.100.0/24"]


def random_rule(rng: random.Random) -> str:
    verdict = rng.choice(["accept"] * 9 + ["drop"] * 6 + ["reject"] * 3 + ["reject with tcp reset"])
    proto = "tcp" if verdict.endswith("reset") else rng.choice(["tcp", "tcp", "udp"])
    ports = TCP_PORTS if proto == "tcp" else UDP_PORTS
    style = rng.random()
    if style < 0.25:
        words = [verdict, proto, f"dport {rng.choice(ports)}", f"from {rng.choice(V4_NETS)}"]
    elif style < 0.4:
        words = [verdict, proto, f"dport {rng.choice(ports)}", f"from {rng.choice(V4_HOSTS)}"]
    elif style < 0.55:
        words = [verdict, proto, f"dport {rng.choice(ports)}", f"from {rng.choice(V6_NETS)}"]
    elif style < 0.7:  # prefixes of two lengths, port ranges: interval sets
        low = rng.choice(ports)
        words = [verdict, proto, f"dport {low}-{low + rng.choice((1, 3))}"]
        words.append(f"from {{{rng.choice(V4_NETS)}, {rng.choice(V4_HOSTS)}}}")
    elif style < 0.78:
        low = rng.choice(ports)
        words = [verdict, proto, f"dport {low}-{low + rng.choice((1, 3, 100))}", f"from {rng.choice(WIDE)}"]
    elif style < 0.84:
        words = [verdict, proto, f"dport {rng.choice(ports)}", f"iif {rng.choice(['eth-a', 'eth-b'])}"]
    elif style < 0.88:  # a protocol without ports
        words = [verdict, proto, f"from {rng.choice(V4_HOSTS)}"]
    else:
        words = [verdict, proto, "dport {" + ", ".join(map(str, rng.sample(ports, 2))) + "}"]
        words.append(f"from {{{rng.choice(V4_HOSTS)}, {rng.choice(V4_HOSTS)}}}")
    if rng.random() < 0.06:
        words.append(rng.choice(["log", "counter", 'log prefix "opt: "']))
    return " ".join(words)


def random_policy(rng: random.Random) -> str:
    lines = [
        "nfc: 1",
        "input:",
        f"  policy: {rng.choice(['drop', 'drop', 'accept'])}",
        f"  state: {rng.choice(['auto', 'manual'])}",
        "  rules:",
        *(f"    - '{random_rule(rng)}'" for _ in range(rng.randint(40, 70))),
    ]
    return "\n".join(lines) + "\n"


# Before the random ones: one policy with each kind of lookup the optimizer writes.
KNOWN_CASES = """\
nfc: 1
define:
  dns: [53, 5353]
input:
  policy: drop
  rules:
    # a protocol without ports: a set of addresses
    - drop udp from 10.77.1.10
    - drop udp from 10.77.1.13
    - drop udp from 10.77.1.16
    - drop udp from 10.77.1.19
    # TCP and UDP, accepts and drops of one shape: one verdict map
    - accept tcp dport 22 from 10.77.1.0/28
    - accept udp dport 53 from 10.77.1.16/28
    - drop tcp dport 80 from 10.77.1.32/28
    - accept udp dport 5353 from 10.77.1.48/28
    - accept tcp dport 8080 from 10.77.1.32/28
    # interface names
    - accept tcp dport 8080 iif eth-b
    - accept tcp dport 81 iif eth-b
    - accept udp dport 123 iif eth-b
    - drop tcp dport 82 iif eth-b
    # prefixes of two lengths and port ranges: interval sets
    - reject tcp dport 80-83 from {10.77.1.0/26, 192.0.2.10}
    - reject tcp dport 8080-8081 from {10.77.2.0/24, 198.51.100.7}
    - reject tcp dport 22-23 from {10.77.1.0/27, 10.77.1.2}
    - reject tcp dport 53-54 from {10.77.1.32/27, 10.77.2.2}
    # masked IPv6 keys
    - accept tcp dport 22 from fd00:77:1:1::/64
    - accept tcp dport 80 from fd00:77:1:3::/64
    - drop udp dport 53 from fd00:77:1:5::/64
    - accept udp dport 123 from fd00:77:1:7::/64
    # a port set by name stays outside the key
    - accept udp sport $dns dport 40000 from 10.77.1.0/28
    - accept udp sport $dns dport 40000 from 10.77.1.16/28
    - accept udp sport $dns dport 40000 from 10.77.1.32/28
    - accept udp sport $dns dport 40000 from 10.77.1.48/28
"""


def test_optimized_and_plain_rulesets_give_the_same_verdicts(
    make_lab: Callable[[], Lab], tmp_path: Path
) -> None:
    with ThreadPoolExecutor(2) as pool:
        labs = list(pool.map(lambda _: make_lab(), range(2)))
        list(pool.map(ready_for_probes, labs))
    variants = {
        level: (lab, lambda lab, policy, level=level: lab.apply(policy, level))
        for level, lab in zip(("-O0", "-O1"), labs, strict=True)
    }
    rng = random.Random(SEED)
    lookups = 0
    policies = []
    for index in range(POLICIES + 1):
        policy = tmp_path / f"optimize-{index}.yaml"
        policy.write_text(random_policy(rng) if index else KNOWN_CASES)
        ruleset, sources = api.compile_policy(str(policy))
        folded = api.build(ruleset, "nft", sources)["ruleset.nft"]
        lookups += folded.count("\tset input_set") + folded.count("\tmap input_map")
        policies.append((policy, SEED + index))
    tally = campaign(variants, policies, PACKETS)
    compared, disagreements = tally.compared, tally.disagreements
    print(f"optimizer campaign: {POLICIES + 1} policies, {lookups} lookups, {compared} verdicts compared")
    assert disagreements == [], "\n".join(disagreements)
    assert {"accept", "drop", "reject"} <= tally.seen
    assert lookups >= 6 + 2 * POLICIES  # the optimizer really folded the rules the packets met
    assert compared == 2 * (POLICIES + 1) * PACKETS
