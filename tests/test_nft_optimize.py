"""The optimizing nft backend without a kernel: what it folds, what it
leaves alone, and, on seeded random chains full of overlapping and
shadowed rules, that its plan gives every packet the fate the policy's own
first match gives it (the kernel differential is test_netns_optimize)."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

from nfc.backends import nft_optimize
from nfc.backends.nft import render
from nfc.backends.nft_groups import NAME, Group
from nfc.backends.nft_optimize import optimized_chain
from nfc.backends.nft_plan import MIN_MERGE, plan
from nfc.backends.nft_runs import MIN_DISPATCH
from nfc.explain import Packet, matches
from nfc.ir import Family, Rule
from nfc.space import Space

from conftest import nft_check, run_nfc
from helpers import input_policy, ruleset_of, write_policy


def optimized(directory: Path, *rules: str) -> str:
    return nft_optimize.generate(ruleset_of(directory, input_policy(*rules)))["ruleset.nft"]


def chain_lines(text: str) -> list[str]:
    chain = text.split("chain input {", 1)[1].split("\n\t}", 1)[0]
    return [line.strip() for line in chain.strip().splitlines()[1:]]


def allow_list(count: int, prefix: int = 24) -> list[str]:
    return [f"accept tcp dport {1000 + i} from 10.{i // 256}.{i % 256}.0/{prefix}" for i in range(count)]


def test_an_allow_list_becomes_one_hash_lookup_on_a_masked_key(tmp_path: Path) -> None:
    text = optimized(tmp_path, *allow_list(6))
    lookup = "ip saddr and 255.255.255.0 . tcp dport @input_set1 accept"
    assert chain_lines(text) == [f'{lookup} comment "policy.yaml:8: 6 rules in @input_set1"']
    assert "\ttype ipv4_addr . inet_service\n" in text and "flags interval" not in text
    assert '\t\t10.0.0.0 . 1000 comment "policy.yaml:8",\n' in text
    assert '\t\t10.0.5.0 . 1005 comment "policy.yaml:13"\n' in text  # every element names its line
    assert nft_check(write_policy(tmp_path, text, "ruleset.nft")).returncode == 0


def test_mixed_prefixes_and_port_ranges_take_an_interval_set(tmp_path: Path) -> None:
    rules = [f"drop udp dport {2000 + 10 * i}-{2005 + 10 * i} from 10.9.{i}.0/{24 + i % 3}" for i in range(5)]
    text = optimized(tmp_path, *rules)
    assert chain_lines(text)[0].startswith("ip saddr . udp dport @input_set1 drop")
    assert "\tflags interval\n" in text and "10.9.1.0/25 . 2010-2015" in text
    assert nft_check(write_policy(tmp_path, text, "ruleset.nft")).returncode == 0


def test_accepts_and_drops_of_one_shape_share_a_verdict_map(tmp_path: Path) -> None:
    rules = [f"{'drop' if i % 2 else 'accept'} tcp dport 22 from 192.0.2.{i}" for i in range(5)]
    text = optimized(tmp_path, *rules)
    assert chain_lines(text) == [
        'ip saddr . tcp dport vmap @input_map1 comment "policy.yaml:8: 5 rules in @input_map1"'
    ]
    assert '192.0.2.1 . 22 comment "policy.yaml:9" : drop' in text
    assert nft_check(write_policy(tmp_path, text, "ruleset.nft")).returncode == 0


def test_a_shadowed_rule_leaves_no_element(tmp_path: Path) -> None:
    rules = [*allow_list(4), "drop tcp dport 1001 from 10.0.1.0/24", "drop tcp dport 1001 from 10.0.1.7"]
    text = optimized(tmp_path, *rules)
    assert "10.0.1.0 . 1001" in text and ": drop" not in text  # the accept decides it first
    assert chain_lines(text)[-1].startswith("ip saddr 10.0.1.7 tcp dport 1001 drop")


def test_a_rule_does_not_jump_over_an_overlapping_one_with_another_verdict(tmp_path: Path) -> None:
    rules = [*allow_list(4), "drop tcp dport 1000-2000 from 10.0.0.0/8", *allow_list(8)[4:]]
    lines = chain_lines(optimized(tmp_path, *rules))
    assert len(lines) == 3 and "4 rules in @input_set1" in lines[0] and "4 rules in @input_set2" in lines[2]
    assert lines[1].startswith("ip saddr 10.0.0.0/8 tcp dport 1000-2000 drop")


def test_a_rule_jumps_over_a_disjoint_log_rule_but_not_an_overlapping_one(tmp_path: Path) -> None:
    disjoint = optimized(tmp_path, *allow_list(2), "drop udp dport 53 log", *allow_list(4)[2:])
    assert "4 rules in @input_set1" in chain_lines(disjoint)[0]
    assert chain_lines(disjoint)[1].startswith("udp dport 53 log drop")
    overlapping = optimized(tmp_path, *allow_list(2), "accept tcp dport 1003 log", *allow_list(4)[2:])
    assert not any("@input" in line for line in chain_lines(overlapping))  # two groups of two: no gain


def test_small_groups_stay_rules_in_policy_order(tmp_path: Path) -> None:
    rules = [*allow_list(MIN_MERGE - 1), "accept udp dport 53", "accept tcp dport 22 from 192.0.2.1"]
    policy = input_policy(*rules)
    ruleset = ruleset_of(tmp_path, policy)
    assert nft_optimize.generate(ruleset)["ruleset.nft"] == render(ruleset)


def test_interface_names_join_the_key_and_wildcards_stay_outside(tmp_path: Path) -> None:
    rules = [f"accept tcp dport {p} iif eth{p % 3}" for p in range(80, 85)]
    text = optimized(tmp_path, *rules, "accept tcp dport 22 iif ppp*")
    assert chain_lines(text)[0].startswith("iifname . tcp dport @input_set1 accept")
    assert '"eth2" . 80 comment' in text and chain_lines(text)[1].startswith('iifname "ppp*" tcp dport 22')


def test_minus_o0_compiles_a_rule_per_policy_rule(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, input_policy(*allow_list(5)))
    default = run_nfc("compile", str(policy), "--stdout")
    plain = run_nfc("compile", str(policy), "--stdout", "-O0")
    assert default.returncode == plain.returncode == 0
    assert "@input_set1" in default.stdout and "@input_set1" not in plain.stdout
    assert plain.stdout == render(ruleset_of(tmp_path, input_policy(*allow_list(5))))
    assert run_nfc("compile", str(policy), "-O2").returncode == 2


# ---- the plan against the policy's own first match, packet by packet

NETWORKS = ["10.1.0.0/16", "10.1.2.0/24", "10.1.2.0/25", "10.1.2.128/25", "10.1.3.0/24", "10.1.2.7"]
PORTS = [22, 53, 80, 443, 8080]


def random_rule(rng: random.Random) -> str:
    verdict = rng.choice(["accept", "accept", "accept", "drop", "drop", "reject"])
    words = [verdict, rng.choice(["tcp", "tcp", "udp"])]
    shape = rng.random()
    if shape < 0.55:
        words.append(f"dport {rng.choice(PORTS)}")
    elif shape < 0.7:
        words.append("dport {" + ", ".join(map(str, rng.sample(PORTS, 2))) + "}")
    else:  # intervals
        low = rng.choice(PORTS)
        words.append(f"dport {low}-{low + 30}")
    if rng.random() < 0.85:
        networks = rng.sample(NETWORKS, rng.choice((1, 1, 2)))  # two of mixed lengths: intervals
        words.append(f"from {networks[0]}" if len(networks) == 1 else f"from {{{', '.join(networks)}}}")
    if rng.random() < 0.1:
        words.append("iif eth1")
    if rng.random() < 0.08:
        words.append(rng.choice(["log", "counter", "limit 5/second"]))
    return " ".join(words)


def first_match(rules: list[Rule], order: list[list[int]], packet: Packet) -> tuple[int | None, str]:
    """The deciding rule and verdict when the groups in `order` are tried in
    turn and a group's members in the order they joined. A limit is taken
    to be within its rate: its rule passes every packet on."""
    for members in order:
        for index in members:
            rule = rules[index]
            if rule.meter is None and matches(rule.match, packet, "new"):
                return index, rule.verdict.kind
    return None, "policy"


def element_of(group: Group, rules: list[Rule], packet: Packet) -> int | None:
    """The member whose set element `packet` meets, read from the elements
    themselves as the kernel reads them (masked keys, intervals)."""
    shape = group.shape
    assert shape is not None
    if not matches(shape.context, packet, "new"):
        return None
    values = {"saddr": int(packet.saddr), "daddr": int(packet.daddr), "sport": packet.sport}
    values["protocol"] = packet.protocol
    values |= {"dport": packet.dport, "iifname": packet.iif, "oifname": packet.oif}
    if shape.family is not None and shape.family is not packet.family:
        return None
    hits = []
    for element, member in group.elements.items():
        inside = True
        for name, mask, (low, high, text) in zip(shape.fields, shape.masks, element, strict=True):
            value = values[name]
            if low == NAME:
                inside &= value == text
            elif mask is not None:
                bits = shape.family.max_prefix if shape.family else 0
                inside &= value is not None and value >> (bits - mask) == low >> (bits - mask)
            else:
                inside &= value is not None and low <= value <= high
        if inside:
            hits.append(member)
    assert len(hits) <= 1, "a packet meets two elements of one set"
    return hits[0] if hits else None


def test_random_chains_keep_every_packets_fate(tmp_path: Path) -> None:
    rng = random.Random(13)
    folded = 0
    for index in range(120):
        rules_text = [random_rule(rng) for _ in range(rng.randint(8, 40))]
        ruleset = ruleset_of(tmp_path, input_policy(*rules_text))
        rules = list(ruleset.chains[0].rules)
        groups = plan(rules, Space(ruleset))
        assert sorted(i for g in groups for i in g.members) == list(range(len(rules)))
        folded += sum(1 for g in groups if len(g.members) >= MIN_MERGE)
        for _ in range(300):
            source = ipaddress.ip_address(f"10.1.{rng.choice((2, 3, 4))}.{rng.choice((7, 9, 100, 200))}")
            packet = Packet(
                Family.V4, rng.choice(["tcp", "udp"]), source, ipaddress.ip_address("10.9.9.9"),
                sport=40000, dport=rng.choice([*PORTS, 60, 100]), iif=rng.choice(["eth1", "eth2"]),
            )  # fmt: skip
            expected = first_match(rules, [[i] for i in range(len(rules))], packet)
            got = first_match(rules, [g.members for g in groups], packet)
            context = (index, packet.describe(), rules_text)
            assert got[1] == expected[1], context
            if expected[0] is not None and _side_effects(rules[expected[0]]):
                assert got[0] == expected[0], context  # the same rule logs or counts it
            # the sets' own elements decide as the members do
            for group in groups:
                if len(group.members) >= MIN_MERGE:
                    member = element_of(group, rules, packet)
                    first = next((i for i in group.members if matches(rules[i].match, packet, "new")), None)
                    assert (member is None) == (first is None), context
                    if member is not None and first is not None:
                        assert rules[member].verdict == rules[first].verdict, context
        text = nft_optimize.generate(ruleset)["ruleset.nft"]
        elements = [line for line in text.splitlines() if line.startswith("\t\t\t")]
        assert all('comment "policy.yaml:' in line for line in elements)  # every element says where from
    assert folded >= 30  # the sample folds often enough to prove something


def _side_effects(rule: Rule) -> bool:
    return rule.log is not None or rule.counter


def test_optimized_chain_of_an_empty_chain_is_empty(tmp_path: Path) -> None:
    ruleset = ruleset_of(tmp_path, input_policy())
    assert optimized_chain(ruleset, ruleset.chains[0]) == ([], [])


def test_tcp_and_udp_rules_of_one_shape_share_a_lookup(tmp_path: Path) -> None:
    rules = [f"accept {proto} dport 53 from 192.0.2.{i}" for i, proto in enumerate(["tcp", "udp"] * 3)]
    text = optimized(tmp_path, *rules)
    assert chain_lines(text)[0].startswith("meta l4proto . ip saddr . th dport @input_set1 accept")
    assert "\ttype inet_proto . ipv4_addr . inet_service\n" in text and "udp . 192.0.2.1 . 53 comment" in text
    assert nft_check(write_policy(tmp_path, text, "ruleset.nft")).returncode == 0


def test_nfc_1_gives_the_optimizers_threshold() -> None:
    page = (Path(__file__).resolve().parent.parent / "man" / "nfc.1").read_text()
    assert f"than {MIN_MERGE} rules, which gain nothing" in " ".join(page.split())


def test_a_port_set_by_name_stays_outside_the_key_with_its_protocol(tmp_path: Path) -> None:
    rules = [f"accept tcp sport $web dport {2000 + i} from 10.0.{i}.0/24" for i in range(5)]
    ruleset = ruleset_of(tmp_path, input_policy(*rules, extra="define: {web: [80, 443]}"))
    text = nft_optimize.generate(ruleset)["ruleset.nft"]
    key = "ip saddr and 255.255.255.0 . tcp dport @input_set1"
    assert chain_lines(text)[0].startswith(f"tcp sport @web_ports {key}")
    assert nft_check(write_policy(tmp_path, text, "ruleset.nft")).returncode == 0


def test_a_protocol_without_ports_stays_a_match_of_the_lookup_rule(tmp_path: Path) -> None:
    text = optimized(tmp_path, *(f"accept udp from 10.0.{i}.0/24" for i in range(5)))
    assert chain_lines(text)[0].startswith("meta l4proto udp ip saddr and 255.255.255.0 @input_set1 accept")


# ---- runs of rules written one by one (nft_runs)

DEFAULTS_POLICY = "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - accept tcp dport 22\n"


def test_the_state_rules_become_one_verdict_map_after_the_icmp_chains_jump(tmp_path: Path) -> None:
    text = nft_optimize.generate(ruleset_of(tmp_path, DEFAULTS_POLICY))["ruleset.nft"]
    lines = chain_lines(text)
    assert lines[0].startswith('iifname "lo" accept')
    assert lines[1].startswith("meta l4proto { icmp, icmpv6 } jump input_icmp comment")
    # ICMP errors about flows conntrack does not know are invalid: the ICMP accepts come first
    assert lines[2].startswith(
        'ct state vmap { invalid comment "policy.yaml:3: state auto" : drop, established comment'
    )
    assert ": accept, related comment" in lines[2] and lines[3].startswith("tcp dport 22 accept")
    icmp_chain = text.split("\tchain input_icmp {\n", 1)[1].split("\n\t}", 1)[0].splitlines()
    assert len(icmp_chain) == 3 and all(" type { " in line and " accept " in line for line in icmp_chain)
    assert nft_check(write_policy(tmp_path, text, "ruleset.nft")).returncode == 0
    plain = render(ruleset_of(tmp_path, DEFAULTS_POLICY))
    assert "ct state invalid drop" in plain and "jump" not in plain  # -O0 keeps a rule each


def test_a_long_run_of_tcp_and_udp_rules_jumps_by_protocol(tmp_path: Path) -> None:
    rules = [f"accept {'tcp' if i % 3 else 'udp'} dport {2000 + i} log" for i in range(9)]
    text = optimized(tmp_path, *rules, "accept from 192.0.2.1")  # no protocol: the run ends
    assert chain_lines(text)[0].startswith('meta l4proto vmap @input_map1 comment "policy.yaml:8: 9 rules')
    dispatch = "\tmap input_map1 {\n\t\ttype inet_proto : verdict\n"
    assert dispatch + "\t\telements = { tcp : jump input_tcp, udp : jump input_udp }\n\t}" in text
    tcp_chain = text.split("\tchain input_tcp {\n", 1)[1].split("\n\t}", 1)[0].splitlines()
    assert [line.split()[2] for line in tcp_chain] == ["2001", "2002", "2004", "2005", "2007", "2008"]
    assert chain_lines(text)[1].startswith("ip saddr 192.0.2.1 accept")
    assert nft_check(write_policy(tmp_path, text, "ruleset.nft")).returncode == 0
    few = optimized(tmp_path, *rules[:7])  # fewer rules than a jump per protocol is worth
    assert "jump" not in few and len(chain_lines(few)) == 7


def test_nfc_1_gives_the_dispatch_threshold() -> None:
    page = (Path(__file__).resolve().parent.parent / "man" / "nfc.1").read_text()
    assert f"a run of at least {MIN_DISPATCH} consecutive rules of" in " ".join(page.split())


def test_short_inline_lists_become_a_rule_per_value_and_long_ones_named_sets(tmp_path: Path) -> None:
    text = optimized(
        tmp_path,
        "drop tcp dport {22, 80} from {192.0.2.1, 10.0.0.0/8} counter",
        "accept udp dport {1-9, 53} limit 5/second",  # a bucket of its own: one rule
        "drop tcp dport {1, 3, 5} from {10.1.0.0/16, 10.3.0.0/16, 10.5.0.0/16}",  # 9 rules: named sets
        "accept tcp dport 443 iif {eth0, eth1}",
        "accept tcp dport 444 iif {eth0, ppp*}",  # a wildcard may share packets with a name
        "accept tcp dport {1-9, 53} limit 1/second",
    )
    assert chain_lines(text) == [
        'ip saddr 10.0.0.0/8 tcp dport 22 counter drop comment "policy.yaml:8"',
        'ip saddr 10.0.0.0/8 tcp dport 80 counter drop comment "policy.yaml:8"',
        'ip saddr 192.0.2.1 tcp dport 22 counter drop comment "policy.yaml:8"',
        'ip saddr 192.0.2.1 tcp dport 80 counter drop comment "policy.yaml:8"',
        'udp dport @input_set1 limit rate 5/second burst 5 packets accept comment "policy.yaml:9"',
        'ip saddr @input_set2 tcp dport @input_set3 drop comment "policy.yaml:10"',
        'iifname "eth0" tcp dport 443 accept comment "policy.yaml:11"',
        'iifname "eth1" tcp dport 443 accept comment "policy.yaml:11"',
        'iifname { "eth0", "ppp*" } tcp dport 444 accept comment "policy.yaml:12"',
        'tcp dport @input_set1 limit rate 1/second burst 5 packets accept comment "policy.yaml:13"',
    ]
    assert "\tset input_set1 {\n\t\ttype inet_service\n\t\tflags interval\n\t\telements = {\n" in text
    assert '\t\t\t1-9 comment "policy.yaml:9",\n\t\t\t53 comment "policy.yaml:9"\n\t\t}' in text
    assert '\t\t\t10.5.0.0/16 comment "policy.yaml:10"\n' in text
    assert nft_check(write_policy(tmp_path, text, "ruleset.nft")).returncode == 0
