"""Lowering: mirroring, family split, state/icmp defaults, meters, validation."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from nfc.errors import PolicyError
from nfc.ir import Family, Interfaces, RuleRole

from conftest import nft_check
from helpers import input_policy, nft_of, ruleset_of

HEADER = "nfc: 1\n"


def test_notrack_entries_are_mirrored(tmp_path: Path) -> None:
    ruleset = ruleset_of(
        tmp_path,
        HEADER + "conntrack:\n  notrack:\n    - udp dport 53 from 10.0.0.0/8 iif eth0\n",
    )
    pre, out = ruleset.notrack
    assert (pre.hook, out.hook) == ("prerouting", "output")
    assert pre.match.dport.ranges == ((53, 53),) and pre.match.sport is None
    assert out.match.sport.ranges == ((53, 53),) and out.match.dport is None
    assert out.match.daddr == pre.match.saddr and out.match.saddr is None
    assert (pre.match.iifname, out.match.oifname) == (Interfaces(("eth0",)), Interfaces(("eth0",)))


def test_answers_go_to_the_chain_where_they_arrive(tmp_path: Path) -> None:
    ruleset = ruleset_of(
        tmp_path,
        HEADER
        + "conntrack:\n  notrack: [udp dport 53, udp sport 123 dport 1024-65535, proto gre]\n"
        + "input: {policy: drop}\noutput: {policy: drop}\n",
    )
    answers = {
        chain.name: [r.match for r in chain.rules if r.role is RuleRole.UNTRACKED_ANSWER]
        for chain in ruleset.chains
    }
    # served (dport only): the mirrored answers leave through output
    assert [(m.sport.ranges, m.dport) for m in answers["output"]] == [(((53, 53),), None)]
    # queried (sport): the answers arrive as written, in input
    assert [(m.sport.ranges, m.dport.ranges) for m in answers["input"]] == [(((123, 123),), ((1024, 65535),))]
    assert all(m.ct_state == ("untracked",) for ms in answers.values() for m in ms)


def test_untracked_requests_are_not_accepted_wholesale(tmp_path: Path) -> None:
    ruleset = ruleset_of(tmp_path, HEADER + "conntrack: {notrack: [udp dport 53]}\ninput: {policy: drop}\n")
    (chain,) = ruleset.chains
    untracked = [r for r in chain.rules if "untracked" in r.match.ct_state]
    assert untracked == []  # the served entry's answers are output's business


def test_state_auto_order(tmp_path: Path) -> None:
    ruleset = ruleset_of(tmp_path, HEADER + "input:\n  policy: drop\n  rules: [accept tcp dport 22]\n")
    roles = [(r.role, r.match.ct_state, r.verdict.kind) for r in ruleset.chains[0].rules]
    assert roles == [
        (RuleRole.LOOPBACK, (), "accept"),  # first: the host talking to itself meets no other rule
        (RuleRole.ESSENTIAL_ICMP, (), "accept"),
        (RuleRole.ESSENTIAL_ICMP, (), "accept"),
        (RuleRole.ESSENTIAL_ICMP, (), "accept"),  # MLD
        (RuleRole.STATE, ("invalid",), "drop"),
        (RuleRole.STATE, ("established", "related"), "accept"),
        (RuleRole.USER, (), "accept"),
    ]


def test_essential_icmp_includes_errors_of_untracked_flows(tmp_path: Path) -> None:
    ruleset = ruleset_of(tmp_path, HEADER + "input: {policy: drop}\nforward: {policy: drop}\n")
    inbound, forward = ruleset.chains
    v4, v6, mld = [r for r in inbound.rules if r.role is RuleRole.ESSENTIAL_ICMP]
    assert set(mld.match.icmp_types) == {
        "mld-listener-query",
        "mld-listener-report",
        "mld-listener-done",
        "mld2-listener-report",
    }
    assert mld.match.saddr is not None and [str(n) for n in mld.match.saddr.networks] == ["fe80::/10"]
    assert v4.match.family is Family.V4 and "destination-unreachable" in v4.match.icmp_types
    assert {"packet-too-big", "nd-neighbor-solicit", "nd-router-advert"} <= set(v6.match.icmp_types)
    assert "nd-neighbor-solicit" not in forward.rules[1].match.icmp_types


def test_manual_and_accept_chains_get_no_implicit_rules(tmp_path: Path) -> None:
    ruleset = ruleset_of(
        tmp_path,
        HEADER
        + "input: {policy: drop, state: manual, icmp: manual, loopback: manual}\noutput: {policy: accept}\n",
    )
    assert [c.rules for c in ruleset.chains] == [(), ()]


def test_family_split_never_widens(tmp_path: Path) -> None:
    ruleset = ruleset_of(
        tmp_path,
        HEADER
        + "define: {lan: [10.0.0.0/8, 'fd00::/8'], v4: [192.0.2.0/24, 198.51.100.0/24]}\n"
        + "input:\n  policy: drop\n  state: manual\n  icmp: manual\n  rules:\n"
        + "    - accept tcp dport 22 from $lan\n    - accept from $v4\n    - accept from not 10.0.0.0/8\n"
        + "  loopback: manual\n",
    )
    rules = ruleset.chains[0].rules
    assert [(r.origin.line, r.match.family) for r in rules] == [
        (8, Family.V4),
        (8, Family.V6),
        (9, Family.V4),
        (10, Family.V4),
    ]
    assert rules[0].match.saddr.networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert rules[2].match.saddr.set_name == "v4_v4"
    assert rules[3].match.saddr.negated


def test_addresses_and_ports_are_normalised(tmp_path: Path) -> None:
    ruleset = ruleset_of(
        tmp_path,
        HEADER + "input:\n  policy: drop\n  rules:\n"
        "    - accept tcp dport {80, 81, 79, 100-200, 150-250} from {10.1.0.0/16, 10.0.0.0/8}\n",
    )
    rule = ruleset.chains[0].rules[-1]
    assert rule.match.dport.ranges == ((79, 81), (100, 250))
    assert rule.match.saddr.networks == (ipaddress.ip_network("10.0.0.0/8"),)


def test_meters(tmp_path: Path) -> None:
    ruleset = ruleset_of(
        tmp_path,
        HEADER + "input:\n  policy: drop\n  rules:\n"
        "    - drop udp dport 53 limit over 10/second burst 20 per saddr/24,/64 name dns\n"
        "    - drop tcp dport 53 limit over 10/second burst 20 per saddr/24,/64 name dns\n"
        "    - accept limit 100/minute\n",
    )
    by_name = {(m.name, m.family): m for m in ruleset.meters}
    v4 = by_name[("dns", Family.V4)]
    assert (v4.prefix_len, by_name[("dns", Family.V6)].prefix_len) == (24, 64)
    assert v4.size == 65535 and v4.burst == 20
    assert v4.timeout == 2  # burst 20 at 10/s refills in 2 s
    assert len(ruleset.meters) == 2  # the shared name is one meter per family
    anonymous = ruleset.chains[0].rules[-1].meter
    assert anonymous.name is None and anonymous.key is None and anonymous.burst == 5


def test_sysctls(tmp_path: Path) -> None:
    ruleset = ruleset_of(tmp_path, HEADER + "conntrack: {max: auto, timeouts: {udp: 10}}\n")
    assert [(s.key, s.value) for s in ruleset.sysctls] == [
        ("net.netfilter.nf_conntrack_max", (8 << 30) // 16384 // 2),
        ("net.netfilter.nf_conntrack_udp_timeout", 10),
    ]


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ("accept ip6 from 10.0.0.1", "can match no packet"),
        ("accept icmp from 2001:db8::1", "can match no packet"),
        ("accept from 10.0.0.1 to 2001:db8::1", "can match no packet"),
        ("accept icmpv6 type echo-request ip", "can match no packet"),
        ("accept dport 53", "needs a protocol"),
        ("accept tcp udp", "given twice"),
        ("accept tcp dport 0", "out of range"),
        ("accept tcp dport 65536", "out of range"),
        ("accept tcp dport 90-80", "reversed"),
        ("accept from 10.0.0.1/8", "host bits"),
        ("accept from $nowhere", "unknown name"),
        ("accept tcp dport $lan", "holds addresses"),
        ("accept tcp dport dommain", "did you mean 'domain'"),
        ("reject with tcp reset udp", "needs 'tcp'"),
        ("reject with icmp prot-unreachable", "no ICMPv6 counterpart"),
        ("accept ct state fresh", "unknown connection state"),
        ("accept oif eth0", "can match nothing"),
        ("accept limit 0/second", "out of range"),
        ("accept limit 10/second burst 5 bytes", "does not fit"),
        ("accept limit 10/second per saddr/33", "out of range"),
        ('accept comment "a;b\\"c"', "unexpected"),
    ],
)
def test_invalid_rules(tmp_path: Path, rule: str, fragment: str) -> None:
    text = (
        HEADER + "define: {lan: [10.0.0.0/8]}\ninput:\n  policy: drop\n  rules:\n    - " + repr(rule) + "\n"
    )
    with pytest.raises(PolicyError) as caught:
        ruleset_of(tmp_path, text)
    assert caught.value.loc.line == 6
    assert fragment in caught.value.render()


def test_meter_name_reused_with_other_parameters(tmp_path: Path) -> None:
    text = HEADER + (
        "input:\n  policy: drop\n  rules:\n"
        "    - drop limit over 10/second per saddr name m\n"
        "    - drop limit over 20/second per saddr name m\n"
    )
    with pytest.raises(PolicyError, match="different parameters") as caught:
        ruleset_of(tmp_path, text)
    assert caught.value.loc.line == 6


def test_notrack_entries_refuse_state_and_oif(tmp_path: Path) -> None:
    for entry in ("udp dport 53 ct state new", "udp dport 53 oif eth0", "icmp type echo-request"):
        with pytest.raises(PolicyError):
            ruleset_of(tmp_path, HEADER + f"conntrack:\n  notrack: [{entry}]\n")


@pytest.mark.parametrize(
    ("largest", "too_large"),
    [
        ("limit 1/day burst 213503", "limit 1/day burst 213504"),
        ("limit 1 kbytes/hour burst 5123071 bytes", "limit 1 kbytes/hour burst 5123072 bytes"),
    ],
)
def test_token_bucket_bounds_match_the_kernel(tmp_path: Path, largest: str, too_large: str) -> None:
    """The largest bucket compiles and the kernel takes it; one more is a compile error."""
    text = nft_of(tmp_path, input_policy(f"accept {largest}"))
    (tmp_path / "largest.nft").write_text(text)
    result = nft_check(tmp_path / "largest.nft")
    assert result.returncode == 0, result.stderr
    with pytest.raises(PolicyError, match="overflow the kernel's token bucket"):
        nft_of(tmp_path, input_policy(f"accept {too_large}"))


def test_a_global_limit_split_by_family_keeps_one_bucket(tmp_path: Path) -> None:
    ruleset = ruleset_of(tmp_path, input_policy("accept tcp from {192.0.2.1, 2001:db8::1} limit 5/second"))
    v4, v6 = ruleset.chains[0].rules
    assert v4.match.family is Family.V4 and v6.match.family is Family.V6
    assert v4.meter.name == v6.meter.name == "input_1"
    assert v4.meter.key is None


def test_output_with_policy_drop_keeps_neighbour_discovery(tmp_path: Path) -> None:
    ruleset = ruleset_of(tmp_path, HEADER + "output: {policy: drop}\n")
    types = {t for rule in ruleset.chains[0].rules for t in rule.match.icmp_types}
    assert {"nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit"} <= types


def test_meter_timeouts_stay_within_what_the_kernel_takes(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="remember each saddr"):
        ruleset_of(tmp_path, input_policy("accept limit 1/day burst 5000 per saddr"))
    ruleset = ruleset_of(tmp_path, input_policy("accept limit 1/day burst 49 per saddr"))
    assert ruleset.meters[0].timeout == 49 * 86400


def test_loopback_accept_comes_first_where_the_host_talks_to_itself(tmp_path: Path) -> None:
    ruleset = ruleset_of(
        tmp_path,
        HEADER + "input: {policy: drop, rules: [drop udp dport 53]}\n"
        "output: {policy: accept, rules: [drop udp dport 53]}\nforward: {policy: drop}\n",
    )
    first = {chain.name: chain.rules[0] for chain in ruleset.chains}
    assert first["input"].role is RuleRole.LOOPBACK and first["input"].match.iifname == Interfaces(("lo",))
    assert first["output"].role is RuleRole.LOOPBACK and first["output"].match.oifname == Interfaces(("lo",))
    assert first["forward"].role is not RuleRole.LOOPBACK  # never sees loopback traffic
    assert all(r.verdict.kind == "accept" for r in (first["input"], first["output"]))


def test_loopback_manual_leaves_it_to_the_rules_and_forward_refuses_accept(tmp_path: Path) -> None:
    ruleset = ruleset_of(tmp_path, HEADER + "input: {policy: drop, loopback: manual}\n")
    assert all(r.role is not RuleRole.LOOPBACK for r in ruleset.chains[0].rules)
    quiet = ruleset_of(tmp_path, HEADER + "output: {policy: accept}\n")
    assert quiet.chains[0].rules == ()  # nothing to get out of the way of
    with pytest.raises(PolicyError, match="never sees loopback traffic") as error:
        ruleset_of(tmp_path, HEADER + "forward:\n  policy: drop\n  loopback: accept\n")
    assert (error.value.loc.line, error.value.loc.col) == (4, 13)


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        # (hook, destination, the entry as written or mirrored); the host's
        # traffic to itself passes output alone before conntrack: "output, dport"
        ("host", {("prerouting", "host", "dport"), ("output", None, "sport"), ("output", None, "dport")}),
        ("routed", {("prerouting", "routed", "dport"), ("prerouting", "routed", "sport")}),
        (
            "all",
            {
                ("prerouting", None, "dport"),
                ("output", None, "sport"),
                ("output", None, "dport"),
                ("prerouting", "routed", "sport"),
            },
        ),
    ],
)
def test_notrack_scope_untracks_both_directions_of_whose_traffic(
    tmp_path: Path, scope: str, expected: set[tuple[str, str | None, str]]
) -> None:
    entry = "udp dport 53" if scope == "host" else f"{{rule: udp dport 53, scope: {scope}}}"
    ruleset = ruleset_of(
        tmp_path,
        HEADER + f"conntrack: {{notrack: [{entry}]}}\ninput: {{policy: drop}}\nforward: {{policy: drop}}\n",
    )
    written = {(n.hook, n.destination, "dport" if n.match.dport else "sport") for n in ruleset.notrack}
    assert written == expected
    for notrack in ruleset.notrack:
        to_itself = notrack.hook == "output" and notrack.match.dport is not None
        assert (notrack.match.oifname == Interfaces(("lo",))) == to_itself, notrack
    answers = {c.name for c in ruleset.chains for r in c.rules if r.role is RuleRole.UNTRACKED_ANSWER}
    assert answers == ({"forward"} if scope in ("routed", "all") else set())  # the host's: output has none


def test_notrack_scope_is_checked_where_it_is_written(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="'scope' must be one of host, routed, all") as error:
        ruleset_of(tmp_path, HEADER + "conntrack:\n  notrack:\n    - {rule: udp dport 53, scope: router}\n")
    assert (error.value.loc.line, error.value.loc.col) == (4, 35)
    with pytest.raises(PolicyError, match="unknown key 'scope' in rule"):
        ruleset_of(tmp_path, HEADER + "input:\n  policy: drop\n  rules:\n    - {rule: accept, scope: host}\n")


def test_an_iptables_port_range_in_a_define_says_how_nfc_writes_it(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="is how iptables writes a port range") as error:
        ruleset_of(tmp_path, HEADER + "define:\n  ephemeral: 1024:65535\n")
    assert error.value.hint == "write 1024-65535"
    assert (error.value.loc.line, error.value.loc.col) == (3, 14)
