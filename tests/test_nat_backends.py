"""Both generators on interface lists, `ct status` and NAT, from IR built
here: the exact text each backend writes, and the kernel accepting it."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from nfc.backends import iptables
from nfc.backends.iptables import RULES_V4, RULES_V6
from nfc.backends.iptables_kernel import _owned
from nfc.backends.nft import render
from nfc.errors import Loc, PolicyError
from nfc.ir import (
    Addresses,
    Family,
    Interfaces,
    Match,
    Meter,
    NatRule,
    Ports,
    Rate,
    Rule,
    RuleRole,
    Ruleset,
    Verdict,
)
from nfc.state_shapes import saved_state

from conftest import iptables_check, nft_check
from helpers import ruleset_of

BASE = "nfc: 1\nforward: {policy: drop}\n"


def at(path: Path, line: int) -> Loc:
    return Loc(str(path / "policy.yaml"), line, 5)


def one_port(port: int) -> Ports:
    return Ports(((port, port),))


def network(text: str) -> Addresses:
    parsed = ipaddress.ip_network(text)
    return Addresses(Family.V4 if parsed.version == 4 else Family.V6, (parsed,))


def with_ir(directory: Path, forward: tuple[Rule, ...] = (), nat: tuple[NatRule, ...] = ()) -> Ruleset:
    """BASE compiled, with `forward` rules appended to its forward chain and `nat` as its NAT."""
    ruleset = ruleset_of(directory, BASE)
    chains = tuple(
        dataclasses.replace(chain, rules=chain.rules + forward) if chain.name == "forward" else chain
        for chain in ruleset.chains
    )
    return dataclasses.replace(ruleset, chains=chains, nat=nat)


def router_nat(directory: Path) -> tuple[NatRule, ...]:
    wan = Interfaces(("eth0",))
    tcp = {"protocol": "tcp", "iifname": wan}
    return (
        NatRule(
            "masquerade",
            Match(family=Family.V4, oifname=Interfaces(("eth0", "ppp*")), saddr=network("192.168.1.0/24")),
            at(directory, 20),
        ),
        NatRule(
            "snat",
            Match(family=Family.V4, oifname=wan, saddr=network("10.0.0.0/8")),
            at(directory, 21),
            address=ipaddress.ip_address("203.0.113.7"),
        ),
        NatRule(
            "dnat",
            Match(family=Family.V4, dport=one_port(8080), **tcp),  # type: ignore[arg-type]
            at(directory, 22),
            address=ipaddress.ip_address("192.168.1.10"),
            ports=(80, 80),
            comment="web",
        ),
        NatRule(
            "dnat",
            Match(family=Family.V6, dport=one_port(443), **tcp),  # type: ignore[arg-type]
            at(directory, 23),
            address=ipaddress.ip_address("2001:db8::10"),
            ports=(443, 443),
        ),
        NatRule(
            "redirect",
            Match(protocol="udp", dport=one_port(53), iifname=Interfaces(("lan0",))),
            at(directory, 24),
            ports=(5353, 5353),
        ),
        NatRule(
            "dnat",
            Match(family=Family.V4, daddr=network("198.51.100.1")),
            at(directory, 25),
            address=ipaddress.ip_address("192.168.1.11"),
        ),
        NatRule(
            "redirect",
            Match(protocol="tcp", dport=one_port(21)),
            at(directory, 26),
            ports=(2100, 2110),
        ),
    )


def dnat_forward(directory: Path) -> Rule:
    return Rule(
        Match(
            family=Family.V4,
            protocol="tcp",
            dport=one_port(80),
            daddr=network("192.168.1.10"),
            iifname=Interfaces(("eth0",)),
            ct_status=("dnat",),
        ),
        Verdict("accept"),
        at(directory, 22),
        role=RuleRole.DNAT_FORWARD,
    )


def listed(directory: Path, line: int, names: tuple[str, ...], family: Family | None = None) -> Rule:
    return Rule(
        Match(family=family, iifname=Interfaces(names), oifname=Interfaces(("eth0",))),
        Verdict("accept"),
        at(directory, line),
    )


def nat_lines(text: str) -> list[str]:
    return text.split("*nat\n", 1)[1].split("\nCOMMIT", 1)[0].splitlines()


def forward_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("-A FORWARD")]


# ---- nft


def test_nft_nat_chains_hold_the_rules_in_policy_order(tmp_path: Path) -> None:
    text = render(with_ir(tmp_path, (dnat_forward(tmp_path),), router_nat(tmp_path)))
    prerouting = text.split("chain nat_prerouting {\n", 1)[1].split("\n\t}", 1)[0].splitlines()
    postrouting = text.split("chain nat_postrouting {\n", 1)[1].split("\n\t}", 1)[0].splitlines()
    assert [line.strip() for line in prerouting] == [
        "type nat hook prerouting priority dstnat; policy accept;",
        'iifname "eth0" meta nfproto ipv4 tcp dport 8080 dnat ip to 192.168.1.10:80 '
        'comment "policy.yaml:22: web"',
        'iifname "eth0" meta nfproto ipv6 tcp dport 443 dnat ip6 to [2001:db8::10]:443 '
        'comment "policy.yaml:23"',
        'iifname "lan0" udp dport 53 redirect to :5353 comment "policy.yaml:24"',
        'ip daddr 198.51.100.1 dnat ip to 192.168.1.11 comment "policy.yaml:25"',
        'tcp dport 21 redirect to :2100-2110 comment "policy.yaml:26"',
    ]
    assert [line.strip() for line in postrouting] == [
        "type nat hook postrouting priority srcnat; policy accept;",
        'oifname { "eth0", "ppp*" } ip saddr 192.168.1.0/24 masquerade comment "policy.yaml:20"',
        'oifname "eth0" ip saddr 10.0.0.0/8 snat ip to 203.0.113.7 comment "policy.yaml:21"',
    ]
    assert (
        'iifname "eth0" ip daddr 192.168.1.10 tcp dport 80 ct status dnat accept '
        'comment "policy.yaml:22: dnat forward"' in text
    )
    path = tmp_path / "ruleset.nft"
    path.write_text(text)
    result = nft_check(path)
    assert result.returncode == 0, result.stderr


def test_nft_writes_no_nat_chain_without_nat(tmp_path: Path) -> None:
    assert " nat " not in render(with_ir(tmp_path)) and "nat_" not in render(with_ir(tmp_path))


def test_nft_interface_lists_and_wildcards_are_one_set(tmp_path: Path) -> None:
    text = render(with_ir(tmp_path, (listed(tmp_path, 30, ("eth1", "br-lan", "veth*")),)))
    assert 'iifname { "eth1", "br-lan", "veth*" } oifname "eth0" accept comment "policy.yaml:30"' in text
    path = tmp_path / "ruleset.nft"
    path.write_text(text)
    assert nft_check(path).returncode == 0


def test_nft_every_ct_status_must_be_set(tmp_path: Path) -> None:
    rule = Rule(Match(ct_status=("dnat", "snat")), Verdict("accept"), at(tmp_path, 31))
    assert 'ct status dnat ct status snat accept comment "policy.yaml:31"' in render(
        with_ir(tmp_path, (rule,))
    )


# ---- iptables-legacy


def test_iptables_nat_table_in_each_family(tmp_path: Path) -> None:
    files = iptables.generate(with_ir(tmp_path, (dnat_forward(tmp_path),), router_nat(tmp_path)))
    v4, v6 = files[RULES_V4], files[RULES_V6]
    assert v4.splitlines()[1] == "# Replaces the whole raw, filter and nat tables (this backend owns them)."
    comment = '-m comment --comment "policy.yaml:{}"'
    assert nat_lines(v4) == [
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        f"-A POSTROUTING -o eth0 -s 192.168.1.0/24 {comment.format(20)} -j MASQUERADE",
        f"-A POSTROUTING -o ppp+ -s 192.168.1.0/24 {comment.format(20)} -j MASQUERADE",
        f"-A POSTROUTING -o eth0 -s 10.0.0.0/8 {comment.format(21)} -j SNAT --to-source 203.0.113.7",
        '-A PREROUTING -i eth0 -p tcp -m tcp --dport 8080 -m comment --comment "policy.yaml:22: web" '
        "-j DNAT --to-destination 192.168.1.10:80",
        f"-A PREROUTING -i lan0 -p udp -m udp --dport 53 {comment.format(24)} -j REDIRECT --to-ports 5353",
        f"-A PREROUTING -d 198.51.100.1 {comment.format(25)} -j DNAT --to-destination 192.168.1.11",
        f"-A PREROUTING -p tcp -m tcp --dport 21 {comment.format(26)} -j REDIRECT --to-ports 2100-2110",
    ]
    ah = "-m ipv6header ! --header ah --soft"
    assert nat_lines(v6)[4:] == [
        f"-A PREROUTING -i eth0 -p tcp {ah} -m tcp --dport 443 {comment.format(23)} "
        "-j DNAT --to-destination [2001:db8::10]:443",
        f"-A PREROUTING -i lan0 -p udp {ah} -m udp --dport 53 {comment.format(24)} "
        "-j REDIRECT --to-ports 5353",
        f"-A PREROUTING -p tcp {ah} -m tcp --dport 21 {comment.format(26)} -j REDIRECT --to-ports 2100-2110",
    ]
    assert forward_lines(v4)[-1] == (
        "-A FORWARD -i eth0 -p tcp -d 192.168.1.10 -m tcp --dport 80 -m conntrack --ctstate DNAT "
        '-m comment --comment "policy.yaml:22: dnat forward" -j ACCEPT'
    )
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text)
        result = iptables_check(path)
        assert result.returncode == 0, result.stderr


def test_iptables_writes_no_nat_table_without_nat(tmp_path: Path) -> None:
    files = iptables.generate(with_ir(tmp_path))
    assert all("*nat" not in text and "NAT" not in text for text in files.values())


def test_iptables_interface_list_is_one_rule_per_interface(tmp_path: Path) -> None:
    rules = (listed(tmp_path, 30, ("eth1", "br-lan", "veth*")),)
    lines = forward_lines(iptables.generate(with_ir(tmp_path, rules))[RULES_V4])
    comment = '-m comment --comment "policy.yaml:30"'
    assert lines[-3:] == [
        f"-A FORWARD -i eth1 -o eth0 {comment} -j ACCEPT",
        f"-A FORWARD -i br-lan -o eth0 {comment} -j ACCEPT",
        f"-A FORWARD -i veth+ -o eth0 {comment} -j ACCEPT",
    ]


def test_iptables_names_a_wildcard_covers_are_left_out(tmp_path: Path) -> None:
    """'veth1' beside 'veth*' would match a packet twice, and a limit in the
    rule would count it twice."""
    meter = Meter(None, Rate(5, "second"), over=True, burst=5, burst_bytes=False)
    names = ("veth1", "veth*", "eth1", "ve*", "eth1")
    rule = dataclasses.replace(listed(tmp_path, 30, names, Family.V4), verdict=Verdict("drop"), meter=meter)
    lines = forward_lines(iptables.generate(with_ir(tmp_path, (rule,)))[RULES_V4])
    mine = [line for line in lines if "policy.yaml:30" in line]
    assert [line.split()[3] for line in mine] == ["eth1", "ve+"]
    # two rules, one bucket: the limit is a hashlimit of one name
    assert len({line.split("--hashlimit-name ")[1].split()[0] for line in mine}) == 1


def test_iptables_every_ct_status_is_a_match_of_its_own(tmp_path: Path) -> None:
    rule = Rule(Match(ct_state=("new",), ct_status=("dnat", "snat")), Verdict("accept"), at(tmp_path, 31))
    lines = forward_lines(iptables.generate(with_ir(tmp_path, (rule,)))[RULES_V6])
    assert lines[-1] == (
        "-A FORWARD -m conntrack --ctstate NEW -m conntrack --ctstate DNAT -m conntrack --ctstate SNAT "
        '-m comment --comment "policy.yaml:31" -j ACCEPT'
    )


def test_iptables_refuses_a_plus_in_a_list(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"'eth\+'.*iptables-legacy backend"):
        iptables.generate(with_ir(tmp_path, (listed(tmp_path, 30, ("eth1", "eth+")),)))


def test_iptables_nat_rule_with_a_negated_list_returns_from_a_chain(tmp_path: Path) -> None:
    negated = Addresses(Family.V4, network("10.0.0.0/8").networks + network("172.16.0.0/12").networks, True)
    match = Match(family=Family.V4, protocol="tcp", dport=one_port(8080), saddr=negated)
    address = ipaddress.ip_address("192.168.1.10")
    rule = NatRule("dnat", match, at(tmp_path, 40), address=address, ports=(80, 80))
    files = iptables.generate(with_ir(tmp_path, nat=(rule,)))
    comment = '-m comment --comment "policy.yaml:40"'
    assert nat_lines(files[RULES_V4])[4:] == [
        ":nfc-not-1 - [0:0]",
        f"-A PREROUTING -p tcp -m tcp --dport 8080 {comment} -j nfc-not-1",
        "-A nfc-not-1 -s 10.0.0.0/8 -j RETURN",
        "-A nfc-not-1 -s 172.16.0.0/12 -j RETURN",
        f"-A nfc-not-1 -p tcp {comment} -j DNAT --to-destination 192.168.1.10:80",
    ]
    path = tmp_path / RULES_V4
    path.write_text(files[RULES_V4])
    result = iptables_check(path)
    assert result.returncode == 0, result.stderr


# ---- the kernel side's ownership of nat


def test_a_load_without_nat_empties_the_nat_table() -> None:
    filter_only = "*raw\nCOMMIT\n*filter\nCOMMIT\n"
    assert _owned(filter_only) == filter_only + (
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        ":POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
    )
    with_nat = filter_only + "*nat\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n"
    assert _owned(with_nat) == with_nat


@pytest.mark.parametrize("tables", [("raw", "filter"), ("raw", "filter", "nat"), ("nat", "raw", "filter")])
def test_saved_dumps_may_hold_nat(tables: tuple[str, ...]) -> None:
    dump = "".join(f"*{table}\nCOMMIT\n" for table in tables)
    state = {"backend": "iptables-legacy", RULES_V4: dump, RULES_V6: dump, "sysctl": {}}
    assert saved_state(state) is None
    assert saved_state({**state, RULES_V4: "*nat\nCOMMIT\n"}) is not None
