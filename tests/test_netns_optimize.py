"""The nft optimizer against the kernel: seeded random policies full of
overlapping and shadowed rules, of shapes that fold into sets and verdict
maps, are loaded at -O0 and at -O1, each into a server namespace of its own, and
meet the same random packets; both kernels and `nfc explain` must give every packet
the same verdict. What a chain starts with (loopback, essential ICMP, the
state rules, untracked answers), which -O1 writes as a jump and a verdict
map, meets crafted packets at both levels: ICMP errors about no flow
(invalid to conntrack), invalid TCP, untracked answers, loopback."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from campaign import TCP_PORTS, UDP_PORTS, campaign, ready_for_probes

from nfc import api

from lab import CLIENT_A4, CLIENT_A6, SERVER_A4, SERVER_A6, Lab

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
    # short inline lists with a counter, a log, a meter: a rule per value
    - drop tcp dport {22, 80} from {10.77.1.2, 10.77.2.2} counter
    - accept udp dport {53, 123} from {10.77.1.0/28, fd00:77:2::/64} log prefix "split-"
    - drop tcp dport {81, 8080} limit over 1/second burst 1 packets per saddr name knock counter
    - accept tcp dport {53, 82} iif {eth-a, eth-b} counter
    # lists a rule keeps: named sets
    - accept tcp dport {22, 53, 80, 82, 8080} from {10.77.1.0/28, 10.77.1.32/28} counter
    - drop udp dport {123, 5353} from not {10.77.1.0/28, 10.77.2.0/24}
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


# ---- what a chain starts with: loopback, essential ICMP, the state rules, untracked answers

PRELUDE = """\
nfc: 1
conntrack:
  notrack:
    - udp sport 53
input:
  policy: drop
  rules:
    - accept tcp dport 22
"""
# Sends one packet: KIND SOURCE DESTINATION. Raw sockets, so that a packet
# may be what no socket would send: an ICMP error about a flow that never
# was (conntrack finds no connection: ct state invalid), TCP SYN+FIN (invalid).
SEND = r"""
import socket, struct, sys

def checksum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

kind, source, destination = sys.argv[1:]
udp_header = struct.pack("!HHHH", 33333, 44444, 8, 0)
if kind == "icmp-error":  # port unreachable, about UDP from `destination` to `source`
    inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0,
                        socket.inet_aton(destination), socket.inet_aton(source)) + udp_header
    body = struct.pack("!BBHI", 3, 3, 0, 0) + inner
    packet, family, proto = body[:2] + struct.pack("!H", checksum(body)) + body[4:], socket.AF_INET, 1
elif kind == "icmp6-error":  # the kernel sums ICMPv6 itself
    inner = struct.pack("!IHBB16s16s", 6 << 28, 8, 17, 64, socket.inet_pton(socket.AF_INET6, destination),
                        socket.inet_pton(socket.AF_INET6, source)) + udp_header
    packet, family, proto = struct.pack("!BBHI", 1, 4, 0, 0) + inner, socket.AF_INET6, 58
elif kind == "icmp-echo":
    body = struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"nfc"
    packet, family, proto = body[:2] + struct.pack("!H", checksum(body)) + body[4:], socket.AF_INET, 1
elif kind.startswith("tcp-"):  # tcp-FLAGS-PORT: syn or synfin
    _, flags, port = kind.split("-")
    bits = 2 if flags == "syn" else 3
    header = struct.pack("!HHIIBBHHH", 40001, int(port), 1, 0, 5 << 4, bits, 65535, 0, 0)
    pseudo = socket.inet_aton(source) + socket.inet_aton(destination) + struct.pack("!BBH", 0, 6, 20)
    header = header[:16] + struct.pack("!H", checksum(pseudo + header)) + header[18:]
    packet, family, proto = header, socket.AF_INET, 6
else:  # udp-from-PORT, to a port nothing listens on
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, int(kind.split("-")[-1])))
    sock.sendto(b"nfc", (destination, 40000))
    sys.exit(0)
sock = socket.socket(family, socket.SOCK_RAW, proto)
sock.bind((source, 0))
sock.sendto(packet, (destination, 0))
"""
# (kind, from the client or the server itself over lo, the counter that
# counts the packet when the server's stack takes it, the verdict the policy gives)
PRELUDE_PROBES = [
    ("icmp-error", "client", ("Icmp", "InDestUnreachs"), "accept"),  # invalid, yet essential: accepted first
    ("icmp6-error", "client", ("Icmp6", "Icmp6InDestUnreachs"), "accept"),
    ("icmp-echo", "client", ("Icmp", "InEchos"), "drop"),  # ICMP, but not essential
    ("tcp-synfin-22", "client", ("Tcp", "InSegs"), "drop"),  # invalid
    ("tcp-syn-22", "client", ("Tcp", "InSegs"), "accept"),
    ("tcp-syn-23", "client", ("Tcp", "InSegs"), "drop"),
    ("udp-from-53", "client", ("Udp", "NoPorts"), "accept"),  # untracked: the answers' rule
    ("udp-from-54", "client", ("Udp", "NoPorts"), "drop"),
    ("udp-from-54", "loopback", ("Udp", "NoPorts"), "accept"),
]


def _counters(lab: Lab) -> dict[tuple[str, str], int]:
    counters = {}
    lines = lab.server.run("cat", "/proc/net/snmp").stdout.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        group = names.split(":")[0]
        counters |= {(group, n): int(v) for n, v in zip(names.split()[1:], values.split()[1:], strict=True)}
    for line in lab.server.run("cat", "/proc/net/snmp6").stdout.splitlines():
        name, value = line.split()
        counters["Icmp6", name] = int(value)
    return counters


def test_the_chains_start_gives_the_same_verdicts_at_both_levels(
    make_lab: Callable[[], Lab], tmp_path: Path
) -> None:
    lab = make_lab()
    policy = tmp_path / "prelude.yaml"
    policy.write_text(PRELUDE)
    ruleset, sources = api.compile_policy(str(policy))
    folded = api.build(ruleset, "nft", sources)["ruleset.nft"]
    assert "ct state vmap {" in folded and "jump input_icmp" in folded  # what -O1 writes of them
    for level in ("-O0", "-O1"):
        applied = lab.apply(policy, level)
        assert applied.returncode == 0, applied.stderr
        lab.server.run("conntrack", "-F")
        for kind, sender, counter, expected in PRELUDE_PROBES:
            client, source, destination = (lab.client_a, CLIENT_A4, SERVER_A4)
            if sender == "loopback":
                client, source, destination = lab.server, "127.0.0.1", "127.0.0.1"
            elif kind.startswith("icmp6"):
                source, destination = CLIENT_A6, SERVER_A6
            before = _counters(lab)[counter]
            client.run(sys.executable, "-c", SEND, kind, source, destination)
            time.sleep(0.2)  # the veth delivers in the receiver's softirq, not in the sender's call
            seen = "accept" if _counters(lab)[counter] > before else "drop"
            assert seen == expected, f"{level}: {kind} from {sender}: {seen}, the policy says {expected}"
