"""The `nat` section (contract 7.5) up to the IR: NatRule per family, the
forward accepts a dnat implies, and the NAT + notrack conflict."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfc import api
from nfc.errors import PolicyError
from nfc.ir import Addresses, Family, Interfaces, Match, Ports, RuleRole, Verdict

from helpers import ruleset_of, write_policy

HEAD = "nfc: 1\ninterfaces:\n  lan: [eth1, br-lan]\n  wan: eth0\n"


def nat_policy(*rules: str, head: str = HEAD, tail: str = "") -> str:
    body = "".join(f"  - {rule!r}\n" for rule in rules)
    return f"{head}nat:\n{body}{tail}"


def nat_of(tmp_path: Path, *rules: str, head: str = HEAD, tail: str = ""):
    return ruleset_of(tmp_path, nat_policy(*rules, head=head, tail=tail)).nat


def test_the_contract_examples(tmp_path: Path) -> None:
    masquerade, snat, dnat4, dnat6, redirect = nat_of(
        tmp_path,
        "masquerade oif $wan from 192.168.1.0/24",
        "snat to 203.0.113.7 oif $wan from 10.0.0.0/8",
        "dnat to 192.168.1.10:80 tcp dport 8080 iif $wan",
        "dnat to [2001:db8::10]:443 tcp dport 443 iif $wan",
        "redirect to 5353 udp dport 53 iif $lan",
    )
    wan, lan = Interfaces(("eth0",), "wan"), Interfaces(("eth1", "br-lan"), "lan")
    assert (masquerade.kind, masquerade.hook, masquerade.address, masquerade.ports) == (
        "masquerade",
        "postrouting",
        None,
        None,
    )
    assert masquerade.match.oifname == wan and masquerade.match.family is Family.V4
    assert (snat.kind, snat.address, snat.match.family) == (
        "snat",
        ipaddress.ip_address("203.0.113.7"),
        Family.V4,
    )
    assert (dnat4.hook, dnat4.address, dnat4.ports) == (
        "prerouting",
        ipaddress.ip_address("192.168.1.10"),
        (80, 80),
    )
    assert dnat4.match == Match(family=Family.V4, protocol="tcp", dport=Ports(((8080, 8080),)), iifname=wan)
    assert (dnat6.address, dnat6.ports, dnat6.match.family) == (
        ipaddress.ip_address("2001:db8::10"),
        (443, 443),
        Family.V6,
    )
    # no address: one rule for both families, as a filter rule would be
    assert (redirect.kind, redirect.ports, redirect.match.family, redirect.match.iifname) == (
        "redirect",
        (5353, 5353),
        None,
        lan,
    )
    assert masquerade.origin.line == 6 and dnat6.origin.line == 9


def test_targets_with_port_ranges_and_bare_ipv6(tmp_path: Path) -> None:
    rules = nat_of(
        tmp_path,
        "dnat to 192.0.2.1:8000-8010 tcp dport 80",
        "dnat to 2001:db8::1 tcp dport 80",
        "dnat to [2001:db8::2] tcp dport 80",
        "snat to 192.0.2.1:1024-65535 udp oif $wan",
        "redirect to 8000-8010 tcp dport 80",
        "redirect to domain udp dport 53",
        "redirect to $proxy tcp dport 80",
        head=HEAD + "define:\n  proxy: 3128\n",
    )
    assert [(str(r.address) if r.address else None, r.ports) for r in rules] == [
        ("192.0.2.1", (8000, 8010)),
        ("2001:db8::1", None),
        ("2001:db8::2", None),
        ("192.0.2.1", (1024, 65535)),
        (None, (8000, 8010)),
        (None, (53, 53)),
        (None, (3128, 3128)),
    ]


def test_addresses_split_a_rule_by_family(tmp_path: Path) -> None:
    v4, v6 = nat_of(tmp_path, "masquerade oif $wan from {10.0.0.0/8, fd00::/8}")
    assert (v4.match.family, v6.match.family) == (Family.V4, Family.V6)
    assert v4.match.saddr == Addresses(Family.V4, (ipaddress.ip_network("10.0.0.0/8"),))


def test_an_ipv4_target_keeps_the_ipv4_part_of_a_mixed_rule(tmp_path: Path) -> None:
    (rule,) = nat_of(tmp_path, "snat to 192.0.2.1 oif $wan from {10.0.0.0/8, fd00::/8}")
    assert rule.match.family is Family.V4 and rule.match.saddr is not None
    assert rule.match.saddr.family is Family.V4


def test_comments_and_expiry(tmp_path: Path) -> None:
    text = HEAD + (
        "nat:\n"
        '  - masquerade oif $wan comment "lan out"\n'
        "  - {rule: dnat to 192.0.2.9 tcp dport 22, comment: ssh box, expires: 2027-03-01}\n"
    )
    masquerade_v4, dnat = ruleset_of(tmp_path, text).nat
    assert masquerade_v4.comment == "lan out"
    assert (dnat.comment, dnat.expires) == ("ssh box", dt.date(2027, 3, 1))
    assert dnat.origin.line == 7 and dnat.origin.col == 12


FORWARD = "forward:\n  policy: drop\n  rules:\n    - accept iif $lan oif $wan\n"


def forward_rules(tmp_path: Path, *rules: str, forward: str = FORWARD):
    ruleset = ruleset_of(tmp_path, nat_policy(*rules, tail=forward))
    (chain,) = (c for c in ruleset.chains if c.name == "forward")
    return chain.rules


def test_dnat_is_accepted_in_forward_after_the_state_rules(tmp_path: Path) -> None:
    rules = forward_rules(
        tmp_path,
        "dnat to 192.168.1.10:80 tcp dport 8080 iif $wan from 198.51.100.0/24",
        "dnat to [2001:db8::10] tcp dport {443, 8443} iif $wan",
        "redirect to 3128 tcp dport 80 iif $lan",
        "masquerade oif $wan",
    )
    roles = [r.role for r in rules]
    last_state = max(i for i, role in enumerate(roles) if role is RuleRole.STATE)
    dnat_rules = [r for r in rules if r.role is RuleRole.DNAT_FORWARD]
    assert roles[last_state + 1 : last_state + 3] == [RuleRole.DNAT_FORWARD] * 2
    assert roles[last_state + 3] is RuleRole.USER
    port_forward, kept_port = dnat_rules
    wan = Interfaces(("eth0",), "wan")
    assert port_forward.match == Match(
        family=Family.V4,
        protocol="tcp",
        saddr=Addresses(Family.V4, (ipaddress.ip_network("198.51.100.0/24"),)),
        daddr=Addresses(Family.V4, (ipaddress.ip_network("192.168.1.10/32"),)),
        dport=Ports(((80, 80),)),
        iifname=wan,
        ct_status=("dnat",),
    )
    assert port_forward.verdict == Verdict("accept")
    assert port_forward.origin.line == 6
    # the port kept: the rule's own dport
    assert kept_port.match.dport == Ports(((443, 443), (8443, 8443)))
    assert kept_port.match.daddr == Addresses(Family.V6, (ipaddress.ip_network("2001:db8::10/128"),))


@pytest.mark.parametrize(
    "forward",
    [
        "forward:\n  policy: drop\n  state: manual\n",
        "forward:\n  policy: accept\n",
        "input:\n  policy: drop\n",
    ],
    ids=["state-manual", "accept-without-rules", "no-forward-chain"],
)
def test_dnat_adds_nothing_without_the_state_rules(tmp_path: Path, forward: str) -> None:
    ruleset = ruleset_of(tmp_path, nat_policy("dnat to 192.0.2.1 tcp dport 80", tail=forward))
    assert not [r for c in ruleset.chains for r in c.rules if r.role is RuleRole.DNAT_FORWARD]


def test_compile_policy_stops_at_the_ir(tmp_path: Path) -> None:
    path = write_policy(tmp_path, nat_policy("masquerade oif $wan", tail=FORWARD))
    ruleset, sources = api.compile_policy(str(path))
    assert [r.kind for r in ruleset.nat] == ["masquerade"]
    assert sources == (str(path),)


def error_of(tmp_path: Path, text: str) -> PolicyError:
    with pytest.raises(PolicyError) as raised:
        ruleset_of(tmp_path, text)
    return raised.value


# Each NAT rule is on line 7, its text from column 5.
@pytest.mark.parametrize(
    ("rule", "col", "message"),
    [
        ("dnat to 192.0.2.1 oif $wan", 23, "'oif' can match nothing in a dnat rule: dnat acts in prerouting"),
        ("redirect to 53 udp oif eth0", 24, "'oif' can match nothing in a redirect rule"),
        (
            "masquerade iif $lan",
            16,
            "'iif' can match nothing in a masquerade rule: masquerade acts in postrouting",
        ),
        ("snat to 192.0.2.1 iif eth1", 23, "'iif' can match nothing in a snat rule"),
        ("dnat to 192.0.2.1:80", 13, "a dnat to a port needs a protocol with ports"),
        ("redirect to 53 icmp", 17, "a redirect to a port needs a protocol with ports"),
        (
            "dnat to 192.0.2.1 tcp dport 80 from 2001:db8::/32",
            13,
            "dnat to an IPv4 address, but the rule matches IPv6",
        ),
        ("snat to 2001:db8::1 ip", 13, "snat to an IPv6 address, but the rule matches IPv4"),
        ("dnat to [2001:db8::1] icmp", 13, "dnat to an IPv6 address, but the rule matches IPv4"),
        ("dnat to 192.0.2.300 tcp dport 80", 13, "'192.0.2.300' is not a valid IP address"),
        ("dnat to 0.0.0.0 tcp dport 80", 13, "dnat needs the address of one host, not 0.0.0.0"),
        ("snat to [ff02::1]", 13, "snat needs the address of one host, not ff02::1"),
        ("snat to 255.255.255.255", 13, "snat needs the address of one host"),
        ("dnat to 192.0.2.1:0 tcp dport 80", 23, "port 0 is out of range"),
        ("dnat to 192.0.2.1:90-80 tcp dport 80", 23, "port range 90-80 is reversed"),
        ("dnat to [2001:db8::1]:70000 tcp", 27, "port 70000 is out of range"),
        ("'dnat to 192.0.2.1: tcp'", 24, "'' is not a port or a port range"),
        ("dnat to 2001:db8::1-2 tcp", 13, "'2001:db8::1-2' is not a valid IP address"),
        ("dnat to [2001:db8::1]x tcp", 13, "unknown word '[2001:db8::1]x'"),
        ("masquerade ct state new", 16, "a NAT rule cannot match 'ct state'"),
        ("masquerade ct status dnat", 16, "a NAT rule cannot match 'ct status'"),
        ("masquerade limit 10/second", 16, "unexpected 'limit' in NAT rule"),
        ("accept tcp", 5, "unexpected 'accept' in NAT rule"),
        ("dnat 192.0.2.1", 10, "unexpected '192.0.2.1' in NAT rule"),
        ("redirect to :5353 udp", 17, "unexpected ':5353' in NAT rule"),
        ("redirect to $nets tcp", 17, "'$nets' holds addresses, not ports"),
        ("redirect to $web tcp", 17, "'$web' holds several ports"),
        ("masquerade oif $nets", 20, "'$nets' holds addresses, not interface names"),
        ("dnat to 192.0.2.1 tcp dport 80 dport 81", 36, "'dport' is given twice"),
    ],
)
def test_mistakes_in_nat_rules(tmp_path: Path, rule: str, col: int, message: str) -> None:
    head = "nfc: 1\ndefine:\n  nets: 10.0.0.0/8\n  web: [80, 443]\n"
    error = error_of(
        tmp_path, f"{head}nat:\n  - {rule}\n".replace("nat:\n", "interfaces: {wan: eth0, lan: eth1}\nnat:\n")
    )
    assert (error.loc.line, error.loc.col) == (7, col), error.render()
    assert message in error.message


def test_nft_port_syntax_gets_a_hint(tmp_path: Path) -> None:
    error = error_of(tmp_path, "nfc: 1\nnat:\n  - redirect to :5353 udp dport 53\n")
    assert error.hint == "nfc writes 'to 5353' where nft writes 'to :5353'"


def test_a_nat_word_in_a_filter_rule_points_to_nat(tmp_path: Path) -> None:
    error = error_of(tmp_path, "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - masquerade oif eth0\n")
    assert error.hint == "a NAT rule goes in the top-level 'nat' list"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nfc: 1\nnat: masquerade\n", "'nat' must be a list, not a string"),
        ("nfc: 1\nnat:\n  - {rule: masquerade, scope: all}\n", "unknown key 'scope' in NAT rule"),
        ("nfc: 1\nnat:\n  - {include: x.yaml}\n", "an 'include' item splices rules into a chain's 'rules'"),
        ("nfc: 1\nnat:\n  - 5\n", "NAT rule must be a string or a mapping"),
    ],
)
def test_the_nat_section_schema(tmp_path: Path, text: str, message: str) -> None:
    assert message in error_of(tmp_path, text).message


# --------------------------------------------------------------------------
# NAT needs connection tracking


def conflict(tmp_path: Path, entry: str, rule: str) -> PolicyError | None:
    text = f"nfc: 1\nconntrack:\n  notrack:\n    - {entry}\nnat:\n  - {rule}\n"
    try:
        ruleset_of(tmp_path, text)
    except PolicyError as error:
        return error
    return None


def test_the_conflict_names_both_lines(tmp_path: Path) -> None:
    error = conflict(tmp_path, "udp dport 53", "redirect to 5353 udp dport 53")
    assert error is not None
    path = tmp_path / "policy.yaml"
    assert error.render().splitlines()[0] == (
        f"{path}:6:5: error: NAT needs connection tracking, but the notrack entry at {path}:4:7 "
        "untracks these packets"
    )


@pytest.mark.parametrize(
    ("entry", "rule", "conflicts"),
    [
        # prerouting: every scope, a dnat'd packet may be for the host or routed
        ("udp dport 53", "dnat to 192.0.2.1 udp dport 53", True),
        ("{rule: udp dport 53, scope: routed}", "dnat to 192.0.2.1 udp dport 53", True),
        ("{rule: udp dport 53, scope: all}", "redirect to 5353 udp dport 53", True),
        ("udp dport 53", "dnat to 192.0.2.1 tcp dport 53", False),
        ("udp dport 53 iif eth1", "dnat to 192.0.2.1 udp dport 53 iif eth0", False),
        ("udp dport 53 iif eth1", "dnat to 192.0.2.1 udp dport 53 iif eth*", True),
        ("udp dport 53 from 10.0.0.0/8", "dnat to 192.0.2.1 udp dport 53 from 192.168.0.0/16", False),
        ("udp dport 53 from 10.0.0.0/8", "dnat to [2001:db8::1] udp dport 53", False),
        # the mirrored half in prerouting (routed flows' other direction) counts too
        ("{rule: udp sport 53, scope: routed}", "dnat to 192.0.2.1 udp dport 53", True),
        (
            "{rule: udp sport 53 from 10.0.0.0/8, scope: routed}",
            "dnat to 192.0.2.1 udp dport 5353 from 192.168.0.0/16",
            False,
        ),
        ("{rule: udp dport 53, scope: routed}", "dnat to 192.0.2.1 udp sport 53", True),
        # postrouting: forwarded packets (scope routed, all) ...
        ("{rule: udp dport 53, scope: routed}", "masquerade udp", True),
        ("{rule: udp dport 53, scope: all}", "snat to 192.0.2.1 oif eth0", True),
        ("{rule: udp dport 53, scope: routed}", "masquerade tcp", False),
        # ... and what the host sends (the output half of an entry)
        ("udp dport 53", "masquerade oif eth0", True),
        ("udp dport 53", "masquerade tcp oif eth0", False),
        ("udp dport 53 iif eth1", "masquerade oif eth0", False),
        ("udp dport 53 iif eth1", "masquerade oif eth1", True),
    ],
)
def test_which_notrack_entries_conflict(tmp_path: Path, entry: str, rule: str, conflicts: bool) -> None:
    error = conflict(tmp_path, entry, rule)
    assert (error is not None) == conflicts, error.render() if error else f"{entry} / {rule}"
    if error is not None:
        assert "NAT needs connection tracking" in error.message


# --------------------------------------------------------------------------
# anything in a NAT rule gives IR or an error placed in the policy

NAT_VOCABULARY = st.sampled_from(
    (
        "masquerade", "snat to", "dnat to", "redirect to", "to", "192.0.2.1", "192.0.2.1:80", "10.0.0.1:0",
        "192.0.2.1:80-90", "[2001:db8::1]:443", "[2001:db8::1]", "2001:db8::1", "[::1", "1.2.3.4:", ":53",
        "53", "53-54", "70000", "domain", "$dns", "$nets", "$wan", "tcp", "udp", "icmp", "ip6", "dport 80",
        "sport 53", "iif", "oif", "$lan", "{eth1, $wan}", "eth*", "ct status dnat", "ct state new",
        'comment "x"', "from 10.0.0.0/8", "to fd00::/8", "from {10.0.0.0/8, fd00::/8}", "limit 1/second",
    )
)  # fmt: skip


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=st.lists(NAT_VOCABULARY, min_size=1, max_size=8).map(" ".join),
    entry=st.sampled_from(("udp dport 53", "{rule: tcp dport 80, scope: routed}", "icmp")),
)
def test_any_nat_rule_lowers_or_fails_in_place(
    tmp_path_factory: pytest.TempPathFactory, rule: str, entry: str
) -> None:
    directory = tmp_path_factory.mktemp("nat")
    text = (
        "nfc: 1\ndefine: {dns: 53, nets: [10.0.0.0/8, fd00::/8]}\n"
        "interfaces: {wan: eth0, lan: [eth1, eth2]}\n"
        f"conntrack:\n  notrack:\n    - {entry}\nforward:\n  policy: drop\nnat:\n  - {rule!r}\n"
    )
    path = write_policy(directory, text)
    try:
        ruleset, _ = api.compile_policy(str(path))
    except PolicyError as error:
        assert error.loc.file == str(path) and 1 <= error.loc.line <= 11, error.render()
        return
    for nat in ruleset.nat:
        assert nat.match.ct_state == () and nat.match.ct_status == ()
        if nat.address is not None:
            assert nat.match.family is (Family.V4 if nat.address.version == 4 else Family.V6)
