"""The lark grammar and its Transformer: every construct, and near-misses."""

from __future__ import annotations

import pytest

from nfc.errors import Loc, PolicyError
from nfc.parse import parse_entry, parse_nat, parse_rule
from nfc.syntax import IfaceItem


def locate(line: int, col: int) -> Loc:
    return Loc("p.yaml", 10, 7 + col - 1)


def kinds(text: str) -> dict:
    rule = parse_rule(text, locate)
    return {m.kind: m.value for m in rule.matches}


def test_verdicts() -> None:
    assert parse_rule("accept", locate).verdict.kind == "accept"
    assert parse_rule("drop", locate).verdict.kind == "drop"
    assert parse_rule("reject", locate).verdict.reject_with is None
    assert parse_rule("reject with tcp reset tcp", locate).verdict.reject_with == "tcp reset"
    assert parse_rule("reject with icmp admin-prohibited", locate).verdict.reject_with == "admin-prohibited"


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("accept ip", "family", "ip"),
        ("accept ip6", "family", "ip6"),
        ("accept tcp", "proto", "tcp"),
        ("accept udp", "proto", "udp"),
        ("accept sctp", "proto", "sctp"),
        ("accept icmp", "proto", "icmp"),
        ("accept icmpv6", "proto", "icmpv6"),
        ("accept proto gre", "proto", "gre"),
        ("accept proto 47", "proto", 47),
        ("accept iif eth0", "iif", "eth0"),
        ('accept oif "wg*"', "oif", "wg*"),
    ],
)
def test_simple_matches(text: str, kind: str, value: object) -> None:
    assert kinds(text)[kind] == value


def test_ports() -> None:
    ports = kinds("accept tcp dport {53, 853, 5353-5360, domain, $web}")["dport"]
    assert [(p.kind, p.value, p.end) for p in ports] == [
        ("number", 53, None),
        ("number", 853, None),
        ("range", 5353, 5360),
        ("service", "domain", None),
        ("var", "web", None),
    ]
    assert kinds("accept udp sport 1024-65535")["sport"][0].kind == "range"


def test_addresses() -> None:
    found = kinds("accept from not {10.0.0.0/8, fd00::/8, $lan} to 192.0.2.1")
    assert found["saddr"].negated
    assert [i.text for i in found["saddr"].items] == ["10.0.0.0/8", "fd00::/8", "lan"]
    assert not found["daddr"].negated
    assert found["daddr"].items[0].text == "192.0.2.1"


def test_states_and_icmp_types() -> None:
    found = kinds("accept ct state new, established icmp type echo-request,echo-reply")
    assert [n for n, _ in found["ct_state"]] == ["new", "established"]
    assert [n for n, _ in found["icmp_type"]] == ["echo-request", "echo-reply"]
    assert [n for n, _ in kinds("accept icmpv6 type nd-router-advert")["icmpv6_type"]] == ["nd-router-advert"]


def test_limit_in_full() -> None:
    limit = parse_rule(
        "drop udp dport 53 limit over 10/second burst 20 packets per saddr/24,/64 size 1000 name dns",
        locate,
    ).limit
    assert limit is not None
    assert (limit.over, limit.rate, limit.time_unit, limit.burst, limit.burst_unit) == (
        True,
        10,
        "second",
        20,
        "packets",
    )
    assert (limit.per, limit.v4_mask, limit.v6_mask, limit.size, limit.name) == ("saddr", 24, 64, 1000, "dns")


def test_byte_rate_and_minimal_limit() -> None:
    limit = parse_rule("accept limit 10 kbytes/second burst 64 kbytes", locate).limit
    assert limit is not None and limit.byte_unit == "kbytes" and limit.burst_unit == "kbytes"
    plain = parse_rule("accept limit 3/hour", locate).limit
    assert plain is not None and not plain.over and plain.per is None and plain.burst is None


def test_trailing_clauses_in_any_order() -> None:
    rule = parse_rule('accept tcp comment "c" counter log prefix "p: " level info', locate)
    assert rule.counter and rule.comment == "c"
    assert rule.log is not None and (rule.log.prefix, rule.log.level) == ("p: ", "info")


def test_entry_has_no_verdict() -> None:
    entry = parse_entry('udp dport 53 from 10.0.0.0/8 comment "dns"', locate)
    assert entry.verdict is None and entry.comment == "dns" and len(entry.matches) == 3


@pytest.mark.parametrize(
    ("text", "col", "fragment"),
    [
        ("acept tcp", 1, "starts with accept"),
        ("accept tcp dport", 17, "ends too early"),
        ("accept tcp dprt 22", 12, "did you mean 'dport'"),
        ("accept limit 10/sec", 17, "unexpected"),
        ("accept from 10", 13, "unexpected"),
        ("accept comment 'x'", 16, "unexpected character"),
        ('accept comment "a" comment "b"', 28, "given twice"),
        ("accept counter counter", 16, "given twice"),
        ("accept from not not 10.0.0.1", 17, "unexpected 'not'"),
        ("accept tcp dport 1--2", 20, "unexpected"),
        ("accept log level loud", 18, "unexpected"),
        ("accept ; drop", 8, "unexpected character"),
        ("drop limit over 10/second per host", 31, "unexpected"),
    ],
)
def test_near_misses_are_located(text: str, col: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_rule(text, locate)
    error = caught.value
    assert error.loc == Loc("p.yaml", 10, 7 + col - 1), error.render()
    assert fragment in error.render()


def test_entry_rejects_a_verdict() -> None:
    with pytest.raises(PolicyError):
        parse_entry("accept udp dport 53", locate)


def test_interface_lists() -> None:
    found = kinds('accept iif {eth1, "wg*", $lan,} oif $wan')
    assert found["iif"] == (
        IfaceItem("name", "eth1", Loc("p.yaml", 10, 19)),
        IfaceItem("name", "wg*", Loc("p.yaml", 10, 25)),
        IfaceItem("var", "lan", Loc("p.yaml", 10, 32)),
    )
    assert found["oif"] == (IfaceItem("var", "wan", Loc("p.yaml", 10, 43)),)
    assert kinds("accept iif eth*")["iif"] == "eth*"  # one name stays a name


def test_ct_status() -> None:
    assert [n for n, _ in kinds("accept ct status dnat, snat")["ct_status"]] == ["dnat", "snat"]


@pytest.mark.parametrize(
    ("text", "kind", "target", "port"),
    [
        ("masquerade", "masquerade", None, None),
        ("snat to 203.0.113.7", "snat", "203.0.113.7", None),
        ("dnat to 192.0.2.1:80-81", "dnat", "192.0.2.1:80-81", None),
        ("dnat to [2001:db8::1]:443", "dnat", "[2001:db8::1]:443", None),
        ("dnat to 2001:db8::1", "dnat", "2001:db8::1", None),
        ("redirect to 5353", "redirect", None, ("number", 5353, None)),
        ("redirect to 8000-8010", "redirect", None, ("range", 8000, 8010)),
        ("redirect to domain", "redirect", None, ("service", "domain", None)),
    ],
)
def test_nat_actions(text: str, kind: str, target: str | None, port: tuple | None) -> None:
    node = parse_nat(text + ' tcp iif $wan comment "c"', locate)
    assert (node.action.kind, node.action.target) == (kind, target)
    new_port = node.action.port
    assert (None if new_port is None else (new_port.kind, new_port.value, new_port.end)) == port
    assert [m.kind for m in node.rule.matches] == ["proto", "iif"] and node.rule.comment == "c"
    assert node.rule.verdict is None and node.action.loc == Loc("p.yaml", 10, 7)


@pytest.mark.parametrize(
    ("text", "col", "fragment"),
    [
        ("accept", 1, "a NAT rule starts with masquerade, snat, dnat or redirect"),
        ("dnat 192.0.2.1", 6, "expected 'to'"),
        ("snat to", 8, "ends too early"),
        ("masquerade to [::1]", 15, "unexpected '[::1]'"),
        ("masquerade log", 12, "unexpected 'log' in NAT rule"),
        ("masquerade counter", 12, "unexpected 'counter'"),
        ("redirect to :53", 13, "nfc writes 'to 53' where nft writes 'to :53'"),
        ('masquerade comment "a" comment "b"', 24, "unexpected 'comment'"),
    ],
)
def test_nat_near_misses_are_located(text: str, col: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_nat(text, locate)
    assert caught.value.loc == Loc("p.yaml", 10, 7 + col - 1), caught.value.render()
    assert fragment in caught.value.render()
