"""A differential campaign: seeded random policies, each compiled for both
backends and loaded into its own server namespace, meet the same random
packets; the nftables kernel, the iptables-legacy kernel and `nfc explain`
must give the same verdict for every one. What a backend cannot express is
a compile error, counted apart, never a different verdict.

Then routers: random policies with interface lists, wildcards and NAT,
loaded into the router of a router lab (tests/lab.py), where
each listener answers with its name and the address it saw: explain's
translation (who answers, and which source it sees) must be the kernel's."""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from campaign import TCP_PORTS, UDP_PORTS, campaign, ready_for_probes

from nfc.api import compile_policy
from nfc.explain import Explanation, explain, parse_packet

from lab import (
    LAN_HOST4,
    LAN_HOST6,
    LAN_SNATTED4,
    ROUTER_LINKS,
    ROUTER_LISTENERS,
    ROUTER_SNAT4,
    ROUTER_WAN4,
    ROUTER_WAN6,
    WAN_HOST4,
    WAN_HOST6,
    Lab,
    Router,
    router_labs,
)

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


def test_random_policies_get_the_same_verdicts_everywhere(
    make_lab: Callable[[], Lab], tmp_path: Path
) -> None:
    with ThreadPoolExecutor(2) as pool:
        labs = list(pool.map(lambda _: make_lab(), range(2)))
        list(pool.map(ready_for_probes, labs))
    variants = {
        backend: (lab, lambda lab, policy, backend=backend: lab.apply(policy, backend=backend))
        for backend, lab in zip(("nft", "iptables-legacy"), labs, strict=True)
    }
    rng = random.Random(SEED)
    policies = []
    for index in range(POLICIES + 1):
        policy = tmp_path / f"random-{index}.yaml"
        policy.write_text(random_policy(rng) if index else KNOWN_CASES)
        policies.append((policy, SEED + index))
    tally = campaign(variants, policies, PACKETS)
    compared, refused, disagreements = tally.compared, tally.refused, tally.disagreements
    print(f"random campaign: {POLICIES + 1} policies, {compared} packet verdicts compared, "
          f"{refused} backend refusals, {len(disagreements)} disagreements")  # fmt: skip
    assert disagreements == [], "\n".join(disagreements)
    assert {"accept", "drop", "reject"} <= tally.seen  # the sample exercises every outcome
    assert compared >= 2 * (POLICIES + 1) * PACKETS - refused * PACKETS


# --------------------------------------------------------------------------
# routers: interface lists, wildcards and NAT

ROUTER_POLICIES = 5
# the router's device toward each host (the LAN's is a bridge), and the addresses on both ends
INTERFACE_OF = {role: device for _, device, role, _, _ in ROUTER_LINKS}
HOST_ADDRESSES = {role: {4: v4[1], 6: v6[1] if v6 else None} for _, _, role, v4, v6 in ROUTER_LINKS}
ROUTER_ADDRESSES = {device: {4: v4[0], 6: v6[0] if v6 else None} for _, device, _, v4, v6 in ROUTER_LINKS}
OWNER = {
    **{a: role for role, by_family in HOST_ADDRESSES.items() for a in by_family.values() if a},
    **{a: "router" for by_family in ROUTER_ADDRESSES.values() for a in by_family.values() if a},
    LAN_SNATTED4: "lan",
    ROUTER_SNAT4: "router",
}
NAT_POOL = [
    "masquerade oif $wan",
    "masquerade oif eth* from {192.168.1.0/24, 10.88.0.0/24}",
    "snat to 203.0.113.7 oif $wan from 192.168.1.20",
    "dnat to 192.168.1.10:80 tcp dport 8080 iif $wan",
    "dnat to [fd00:1::10]:80 tcp dport 8080 iif $wan",
    "dnat to 192.168.1.10 tcp dport 80 iif eth*",
    "redirect to 5353 udp dport 53 iif $lan",
    "redirect to 5353 udp dport 5300 iif {br-lan, dmz0}",
]
INPUT_POOL = [
    "accept udp dport 5353 iif $lan",
    "drop udp dport 5353 iif ctr*",
    "accept udp dport 5353 from 192.168.1.0/24",
    "reject udp dport 5353 iif {dmz0, eth0}",
    "accept udp dport 5353",
]
FORWARD_POOL = [
    "accept iif $lan oif $wan",
    "drop tcp dport 80 iif ctr*",
    "accept oif eth*",
    "reject udp dport 5300 iif br-*",
    "accept tcp dport 80 to 192.168.1.10",
    "drop udp iif {dmz0, ctr1}",
    "accept tcp iif dmz0 oif eth0",
    "accept ip6",
]
# (client, protocol, server, port, source: None for the client's own address)
ROUTER_PROBES = [
    ("lan", "tcp", WAN_HOST4, 80, LAN_HOST4),
    ("lan", "udp", WAN_HOST4, 5300, LAN_HOST4),
    ("lan", "udp", WAN_HOST4, 53, LAN_HOST4),
    ("lan", "tcp", WAN_HOST4, 80, LAN_SNATTED4),
    ("lan", "udp", WAN_HOST4, 5300, LAN_SNATTED4),
    ("lan", "tcp", WAN_HOST6, 80, LAN_HOST6),
    ("lan", "udp", WAN_HOST6, 53, LAN_HOST6),
    ("lan", "udp", "192.168.1.1", 5353, LAN_HOST4),
    ("ctr", "tcp", WAN_HOST4, 80, None),
    ("ctr", "udp", WAN_HOST4, 5300, None),
    ("ctr", "udp", "10.88.0.1", 5353, None),
    ("dmz", "tcp", WAN_HOST4, 80, None),
    ("dmz", "udp", WAN_HOST4, 5300, None),
    ("dmz", "udp", WAN_HOST4, 53, None),
    ("wan", "tcp", ROUTER_WAN4, 8080, None),
    ("wan", "tcp", ROUTER_WAN6, 8080, None),
    ("wan", "tcp", ROUTER_WAN4, 80, None),
    ("wan", "tcp", LAN_HOST4, 80, None),
    ("wan", "udp", ROUTER_WAN4, 5353, None),
]
KNOWN_ROUTER = """\
nfc: 1
interfaces:
  wan: eth0
  lan: [br-lan, "ctr*"]
nat:
  - snat to 203.0.113.7 oif $wan from 192.168.1.20
  - masquerade oif eth* from {192.168.1.0/24, 10.88.0.0/24}
  - dnat to 192.168.1.10:80 tcp dport 8080 iif $wan
  - dnat to [fd00:1::10]:80 tcp dport 8080 iif $wan
  - redirect to 5353 udp dport 53 iif $lan
input:
  policy: drop
  rules:
    - accept udp dport 5353 iif $lan
forward:
  policy: drop
  rules:
    - drop tcp dport 80 iif ctr*
    - accept iif $lan oif $wan
"""


def random_router_policy(rng: random.Random) -> str:
    lan = rng.choice(['[br-lan, "ctr*"]', '["br-*", ctr1]', "br-lan"])
    lines = ["nfc: 1", "interfaces:", "  wan: eth0", f"  lan: {lan}", "nat:"]
    lines += [f"  - {rule}" for rule in rng.sample(NAT_POOL, rng.randint(2, 6))]
    for chain, pool in (("input", INPUT_POOL), ("forward", FORWARD_POOL)):
        # forward's replies come back through it: state auto accepts them
        lines += [f"{chain}:", f"  policy: {rng.choice(['drop', 'drop', 'accept'])}", "  rules:"]
        lines += [f"    - '{rule}'" for rule in rng.sample(pool, rng.randint(1, 4))]
    return "\n".join(lines) + "\n"


def router_packet(client: str, proto: str, server: str, port: int, source: str | None) -> str:
    """The probe as explain reads it, with the interfaces the router sees:
    in from the client's side, out toward the server's host (a packet for
    the router that a port forward sends on goes out to the LAN)."""
    family = 6 if ":" in server else 4
    source = source or HOST_ADDRESSES[client][family]
    owner = OWNER[server]
    words = [proto, f"[{source}]:40000" if family == 6 else f"{source}:40000", ">"]
    words.append(f"[{server}]:{port}" if family == 6 else f"{server}:{port}")
    words += ["iif", INTERFACE_OF[client]]
    if owner == "router":
        words += ["oif", INTERFACE_OF["lan"], "dir", "in"] if client == "wan" else ["dir", "in"]
    else:
        words += ["oif", INTERFACE_OF[owner], "dir", "fwd"]
    return " ".join(words)


def router_answer(result: Explanation, proto: str) -> str | None:
    """What the client hears when explain is right: the answering host's
    name and the source address it saw, or nothing."""
    if result.verdict != "accept":
        return None
    judged = result.judged
    redirected = result.dnat is not None and result.dnat.rule.kind == "redirect"
    host = "router" if redirected else OWNER[str(judged.daddr)]
    udp, tcp = ROUTER_LISTENERS.get(host, ((), ()))
    if judged.dport not in (udp if proto == "udp" else tcp):
        return None
    seen = str(judged.saddr)
    if result.snat is not None:  # snat's address, or masquerade's: the router's on the way out
        family = 6 if judged.saddr.version == 6 else 4
        seen = str(result.snat.rule.address or ROUTER_ADDRESSES[judged.oif or ""][family])
    return f"{host} {seen}"


def test_random_router_policies_translate_as_explain_says(tmp_path: Path) -> None:
    with router_labs(tmp_path, {b: b for b in ("nft", "iptables-legacy")}) as routers:
        for router in routers.values():
            for network in ("10.88.0.0/24", "10.99.0.0/24"):  # the WAN host answers every client
                router.namespaces["wan"].run("ip", "route", "add", network, "via", ROUTER_WAN4)
        router_campaign(routers, tmp_path)


def router_campaign(routers: dict[str, Router], tmp_path: Path) -> None:
    rng = random.Random(SEED)
    compared = refused = 0
    disagreements: list[str] = []
    translations: set[str] = set()
    packets = [router_packet(*probe) for probe in ROUTER_PROBES]
    for index in range(ROUTER_POLICIES + 1):
        text = random_router_policy(rng) if index else KNOWN_ROUTER
        policy = tmp_path / f"router-{index}.yaml"
        policy.write_text(text)
        ruleset, _ = compile_policy(str(policy))
        results = [explain(ruleset, parse_packet(packet)) for packet in packets]
        expected = [router_answer(r, probe[1]) for r, probe in zip(results, ROUTER_PROBES, strict=True)]
        translations |= {t.rule.kind for r, e in zip(results, expected, strict=True) if e
                         for t in (r.dnat, r.snat) if t}  # fmt: skip
        with ThreadPoolExecutor(len(routers)) as pool:
            heard = {name: pool.submit(load_and_ask, lab, text, expected) for name, lab in routers.items()}
        for backend, future in heard.items():
            answers = future.result()
            if answers is None:
                refused += 1
                continue
            for packet, want, got in zip(packets, expected, answers, strict=True):
                compared += 1
                if got != want:
                    disagreements.append(f"{policy.name} {backend}: {packet}: explain {want}, heard {got}")
    print(f"router campaign: {ROUTER_POLICIES + 1} policies, {compared} answers compared, "
          f"{refused} backend refusals, {len(disagreements)} disagreements")  # fmt: skip
    assert disagreements == [], "\n".join(disagreements)
    assert {"dnat", "redirect", "masquerade", "snat"} <= translations  # every kind was seen to act
    assert compared >= 2 * (ROUTER_POLICIES + 1) * len(ROUTER_PROBES) - refused * len(ROUTER_PROBES)


def load_and_ask(router: Router, text: str, expected: list[str | None]) -> list[str | None] | None:
    """Every probe's answer under the policy `text`, each client asking all of
    its own at once (the ones explain says are answered waited for longer);
    None when the backend refuses the policy as one it cannot express exactly."""
    applied = router.nfc("apply", str(router.write(text)), "-b", router.backend)
    if applied.returncode == 2 and "cannot express this exactly" in applied.stderr:
        return None
    assert applied.returncode == 0, (text, applied.stderr)
    router.applied = text
    router.namespaces["router"].run("conntrack", "-F")  # explain judges new connections
    return router.ask_everyone(ROUTER_PROBES, answered=[want is not None for want in expected])
