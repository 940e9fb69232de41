"""explain's packet grammar and walk, on small policies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nfc.explain import PacketError, explain, parse_packet
from nfc.ir import Family

from conftest import FLAGSHIP, run_nfc
from helpers import input_policy, ruleset_of

RECURSIVE = next(p for p in FLAGSHIP if p.stem == "dns-recursive")


def test_packet_grammar() -> None:
    packet = parse_packet("udp [2001:db8::7]:5353 > [2001:db8::1]:53 iif eth0 ct established dir out")
    assert packet.family is Family.V6 and (packet.sport, packet.dport) == (5353, 53)
    assert (packet.iif, packet.ct, packet.direction) == ("eth0", "established", "out")
    icmp = parse_packet("icmp 192.0.2.7 > 192.0.2.1 type echo-request")
    assert icmp.icmp_type == "echo-request" and icmp.dport is None


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("udp 1.2.3.4:53", 1),
        ("udp 1.2.3.4:53 > 5.6.7.8:0", 18),
        ("udp 1.2.3.4 > ::1", 15),
        ("gre 1.2.3.4:5 > 5.6.7.8", 5),
        ("udp 1.2.3.4 > 5.6.7.8:53 ct fresh", 29),
        ("udp 1.2.3.4 > 5.6.7.8:53 color red", 26),
        ("tcp 1.2.3.400 > 5.6.7.8:53", 5),
        ("icmpv6 1.2.3.4 > 5.6.7.8", 1),
    ],
)
def test_bad_packets_are_located(text: str, column: int) -> None:
    with pytest.raises(PacketError) as caught:
        parse_packet(text)
    assert caught.value.column == column


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("udp 1.2.3.4:53 > 5.6.7.8:5\u00b3", 18),  # superscript three: isdigit(), and int() refused it
        ("udp 1.2.3.4:\u0665\u0663 > 5.6.7.8:53", 5),  # Arabic-Indic 53: int() took it
        pytest.param("udp 1.2.3.4:53 > 5.6.7.8:" + "9" * 5000, 18, id="more digits than int() reads"),
        ("\u0661\u0667 1.2.3.4 > 5.6.7.8", 1),
        ("256 1.2.3.4 > 5.6.7.8", 1),
    ],
)
def test_numbers_in_a_packet_are_the_digits_0_to_9(text: str, column: int) -> None:
    with pytest.raises(PacketError) as caught:
        parse_packet(text)
    assert caught.value.column == column


def test_a_protocol_number_is_its_name() -> None:
    packet = parse_packet("17 192.0.2.7:5353 > 192.0.2.1:0053")
    assert (packet.protocol, packet.dport) == ("udp", 53)


def test_first_matching_rule_decides(tmp_path: Path) -> None:
    ruleset = ruleset_of(tmp_path, input_policy("drop tcp dport 22 from 192.0.2.0/24", "accept tcp dport 22"))
    blocked = explain(ruleset, parse_packet("tcp 192.0.2.7:4000 > 198.51.100.1:22"))
    assert blocked.verdict == "drop" and blocked.rule is not None and blocked.rule.origin.line == 8
    allowed = explain(ruleset, parse_packet("tcp 203.0.113.7:4000 > 198.51.100.1:22"))
    assert allowed.verdict == "accept" and allowed.rule.origin.line == 9
    fallthrough = explain(ruleset, parse_packet("tcp 203.0.113.7:4000 > 198.51.100.1:23"))
    assert fallthrough.verdict == "drop" and fallthrough.rule is None


def test_meters_under_and_over_the_limit() -> None:
    from nfc.api import compile_policy

    ruleset, _ = compile_policy(str(RECURSIVE))
    packet = parse_packet("udp 10.1.2.3:5353 > 10.0.0.1:53")
    within = explain(ruleset, packet)
    over = explain(ruleset, packet, over_limit=True)
    assert within.verdict == "accept" and over.verdict == "drop"
    assert within.untracked_by is not None and within.untracked_by.line == 25
    assert [step.meter.name for step in within.meters] == ["dns_too_frequent"]


def test_answers_of_backending_are_accepted_untracked_requests_are_not(tmp_path: Path) -> None:
    from nfc.api import compile_policy

    ruleset, _ = compile_policy(str(RECURSIVE))
    answer = explain(ruleset, parse_packet("udp 192.0.2.53:53 > 10.0.0.1:40000"))
    assert answer.verdict == "accept" and answer.rule.role.value == "untracked-answer"
    outsider = explain(ruleset, parse_packet("udp 198.51.100.9:40000 > 10.0.0.1:53"))
    assert outsider.ct == "untracked" and outsider.verdict == "drop"


def test_cli_text_and_json() -> None:
    text = run_nfc("explain", str(RECURSIVE), "tcp 192.0.2.10:4000 > 10.0.0.1:22")
    assert text.returncode == 0
    assert "dns-recursive.yaml:45:7: verdict: ACCEPT in chain input" in text.stdout
    data = json.loads(run_nfc("explain", str(RECURSIVE), "udp 8.8.8.8:53 > 10.0.0.1:40000", "--json").stdout)
    assert data["verdict"] == "accept" and data["untracked"] is True
    bad = run_nfc("explain", str(RECURSIVE), "udp nowhere > 10.0.0.1:53")
    assert bad.returncode == 2 and bad.stderr.startswith("<packet>:1:5: error:")
