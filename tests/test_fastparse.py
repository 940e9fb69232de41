"""The hand-written fast path must build exactly lark's tree, or step aside.

For every string, where the fast path gives a tree, lark must give the equal
tree (positions included); where the fast path fails with a PolicyError,
lark must fail with the same one."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_property import near_grammar, token_soup

from nfc import fastparse
from nfc.errors import Loc, PolicyError
from nfc.parse import lark_parse

SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def locate(line: int, col: int) -> Loc:
    return Loc("p.yaml", 7 + line, 4 + col)


ORIGIN = locate(1, 0)  # where the fast path, given one line, counts columns from


def outcome(parse, text: str, start: str):
    try:
        return parse(text, start)
    except PolicyError as exc:
        return ("error", exc.loc, exc.message)


def fast(text: str, start: str):
    return fastparse.parse(text, ORIGIN, start)


def lark(text: str, start: str):
    return lark_parse(text, locate, start)


def agree(text: str, start: str) -> bool:
    """Whether the fast path answered (and, if it did, agreed with lark)."""
    mine = outcome(fast, text, start)
    if mine is None:
        return False
    assert outcome(lark, text, start) == mine, text
    return True


CASES = [
    ("rule", "accept"),
    ("rule", "drop udp dport 53 limit over 10/second burst 20 per saddr/32,/64 name dns_too_frequent"),
    ("rule", 'accept tcp dport 22 from $admins log prefix "ssh: " level info counter comment "admin ssh"'),
    ("rule", "accept tcp dport { 80, 443, 8000-8080, $web, https, } from not { 10.0.0.0/8, fd00::/8, $lan }"),
    ("rule", "reject with icmp host-prohibited ip6 to 2001:db8::1 iif eth* oif \"wg0\""),
    ("rule", "reject with tcp reset tcp sport 1024-65535"),
    ("rule", "accept ct state new,established icmp type echo-request, echo-reply"),
    ("rule", "accept icmpv6 type nd-router-advert proto 47 proto gre sctp"),
    ("rule", "accept limit 10 kbytes/second burst 64 kbytes per daddr size 100"),
    ("rule", 'accept comment "a" comment "b"'),
    ("rule", "accept counter log counter"),
    ("entry", "udp sport 53 dport 1024-65535 from 192.0.2.0/24 iif eth0 comment \"x\""),
    ("rule", "accept iif $lan oif { eth0, \"wg*\", $wan, } ct status dnat,snat"),
    ("entry", "udp dport 53 iif {eth1,$lan}"),
    ("nat", "masquerade"),
    ("nat", "masquerade oif $wan from 192.168.1.0/24 comment \"lan\""),
    ("nat", "snat to 203.0.113.7:1024-65535 udp oif {eth0, ppp*}"),
    ("nat", "dnat to 192.168.1.10:80 tcp dport 8080 iif $wan"),
    ("nat", "dnat to [2001:db8::10]:443 tcp dport 443"),
    ("nat", "dnat to 2001:db8::10 tcp dport 443"),
    ("nat", "redirect to 5353-5360 udp dport 53"),
    ("nat", "redirect to $proxy tcp dport http"),
]


@pytest.mark.parametrize(("start", "text"), CASES)
def test_the_fast_path_reads_the_language(start: str, text: str) -> None:
    assert agree(text, start)


@pytest.mark.parametrize(
    "text",
    [
        "accept tcp dport 1 - 2",
        "acceptudp",
        "accept\ttcp",
        "accept from 10",
        "accept limit 10 / second",
        "accept é",
    ],
)
def test_it_steps_aside_where_unsure(text: str) -> None:
    assert fast(text, "rule") is None


@pytest.mark.parametrize(
    ("start", "text"),
    [
        ("nat", "accept"),
        ("nat", "dnat 192.0.2.1"),
        ("nat", "redirect to :53"),
        ("nat", "masquerade limit 1/second"),
        ("nat", "snat to eth0"),
        ("nat", "masquerade to"),
        # lark refuses the second comment as an unexpected word, not as one given twice
        ("nat", 'masquerade comment "a" comment "b"'),
        ("entry", 'udp comment "a" comment "b"'),
    ],
)
def test_it_steps_aside_from_entries_and_nat_rules_where_unsure(start: str, text: str) -> None:
    assert fast(text, start) is None


NAT_WORDS = st.sampled_from(
    (
        "masquerade", "snat", "dnat", "redirect", "to", "192.0.2.1", "192.0.2.1:80", "192.0.2.1:80-90",
        "[2001:db8::1]:443", "[2001:db8::1]", "2001:db8::1", "[::1", ":53", "53", "53-54", "domain", "$p",
        "tcp", "udp", "dport", "iif", "oif", "$lan", "{", "}", ",", "eth*", "ct", "status", "dnat,snat",
        "comment", '"x"', "from", "10.0.0.0/8",
    )
)  # fmt: skip


@SETTINGS
@given(st.lists(NAT_WORDS, max_size=10).map(" ".join))
def test_fast_path_equals_lark_on_nat_rules(text: str) -> None:
    agree(text, "nat")


@SETTINGS
@given(near_grammar())
@example(("accept from not not 10.0.0.1", "input"))
def test_fast_path_equals_lark_near_the_grammar(case: tuple[str, str]) -> None:
    text, where = case
    agree(text, "entry" if where == "notrack" else "rule")


@SETTINGS
@given(token_soup(), st.sampled_from(["rule", "entry"]))
def test_fast_path_equals_lark_on_word_soup(text: str, start: str) -> None:
    agree(text, start)


@SETTINGS
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80))
def test_fast_path_equals_lark_on_printable_text(text: str) -> None:
    agree(text, "rule")
