"""The iptables-legacy generator: the seeds' recipes, expansion without
widening, and compile errors for what it cannot express exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfc.backends.iptables import RULES_V4, RULES_V6
from nfc.errors import PolicyError

from conftest import iptables_check
from helpers import input_policy, iptables_of


def input_lines(rules_file: str) -> list[str]:
    return [line for line in rules_file.splitlines() if line.startswith(("-A INPUT", "-A nfc-"))]


def test_notrack_is_ct_notrack_in_raw_both_ways(tmp_path: Path) -> None:
    v4, v6 = iptables_of(tmp_path, "nfc: 1\nconntrack: {notrack: ['udp dport 53 from 192.0.2.0/24']}\n")
    raw = v4.split("*raw", 1)[1].split("COMMIT", 1)[0]
    assert "-A PREROUTING -p udp -s 192.0.2.0/24 -m udp --dport 53" in raw
    assert "-A OUTPUT -p udp -d 192.0.2.0/24 -m udp --sport 53" in raw
    # the host asking itself: over lo only output's notrack comes before conntrack
    assert "-A OUTPUT -o lo -p udp -s 192.0.2.0/24 -m udp --dport 53" in raw
    assert raw.count("-j CT --notrack") == 3
    assert "-j CT" not in v6  # an IPv4-only entry stays out of rules.v6


def test_untracked_answers_use_ctstate(tmp_path: Path) -> None:
    v4, _ = iptables_of(tmp_path, "nfc: 1\nconntrack: {notrack: ['udp sport 53']}\ninput: {policy: drop}\n")
    assert "-A INPUT -p udp -m udp --sport 53 -m conntrack --ctstate UNTRACKED" in v4
    assert "--ctstate ESTABLISHED,RELATED" in v4 and "--ctstate INVALID" in v4


def test_meter_is_hashlimit(tmp_path: Path) -> None:
    v4, v6 = iptables_of(
        tmp_path,
        input_policy("drop udp dport 53 limit over 10/second burst 20 per saddr/24,/56 size 1000 name dns"),
    )
    (rule,) = input_lines(v4)
    for option in (
        "--hashlimit-above 10/sec",
        "--hashlimit-burst 20",
        "--hashlimit-mode srcip",
        "--hashlimit-srcmask 24",
        "--hashlimit-htable-max 1000",
        "--hashlimit-htable-expire 2000",
        "--hashlimit-name dns",
    ):
        assert option in rule
    assert "--hashlimit-srcmask 56" in input_lines(v6)[0]


def test_plain_limit_is_limit_and_shared_limit_stays_one_bucket(tmp_path: Path) -> None:
    v4, _ = iptables_of(
        tmp_path,
        input_policy(
            "accept ip tcp dport 22 limit 10/minute burst 3",
            "accept udp from {192.0.2.0/24, 198.51.100.0/24} limit 5/second",
        ),
    )
    first, *expanded = input_lines(v4)
    assert "-m limit --limit 10/min --limit-burst 3" in first
    # two expanded rules must not get a bucket each: one hashlimit name
    assert len(expanded) == 2
    names = {line.split("--hashlimit-name ")[1].split()[0] for line in expanded}
    assert len(names) == 1


def test_multiport_splits_past_fifteen(tmp_path: Path) -> None:
    ports = ", ".join(str(p) for p in range(1000, 1040, 2))  # 20 single ports
    v4, _ = iptables_of(tmp_path, input_policy(f"accept tcp dport {{{ports}, 2000-2010}}"))
    lines = input_lines(v4)
    assert len(lines) == 2
    listed = [line.split("--dports ")[1].split()[0].split(",") for line in lines]
    assert [len(p) for p in listed] == [15, 6]
    assert "2000:2010" in listed[1]


def test_negated_lists_use_a_user_chain(tmp_path: Path) -> None:
    v4, _ = iptables_of(tmp_path, input_policy("accept udp dport 5353 from not {10.0.0.0/8, 172.16.0.0/12}"))
    assert input_lines(v4) == [
        '-A INPUT -p udp -m udp --dport 5353 -m comment --comment "policy.yaml:8" -j nfc-not-1',
        "-A nfc-not-1 -s 10.0.0.0/8 -j RETURN",
        "-A nfc-not-1 -s 172.16.0.0/12 -j RETURN",
        '-A nfc-not-1 -m comment --comment "policy.yaml:8" -j ACCEPT',
    ]
    single, _ = iptables_of(tmp_path, input_policy("accept from not 10.0.0.0/8"))
    assert "! -s 10.0.0.0/8" in input_lines(single)[0]


def test_log_goes_through_a_chain_of_its_own(tmp_path: Path) -> None:
    v4, _ = iptables_of(
        tmp_path, input_policy('drop ip tcp dport 23 limit 1/second log prefix "telnet: " level warn')
    )
    jump, log, verdict = input_lines(v4)
    assert "-m limit" in jump and jump.endswith("-j nfc-log-1")
    assert log == '-A nfc-log-1 -j LOG --log-prefix "telnet: " --log-level warning'
    assert verdict == "-A nfc-log-1 -j DROP"


def test_families_stay_apart(tmp_path: Path) -> None:
    v4, v6 = iptables_of(
        tmp_path,
        input_policy(
            "accept from 2001:db8::/32", "accept icmp type echo-request", "reject with icmp host-prohibited"
        ),
    )
    assert "2001:db8" not in v4 and "2001:db8" in v6
    assert "--icmp-type 8" in v4 and "icmp-type" not in v6
    assert "--reject-with icmp-host-prohibited" in v4
    assert "--reject-with icmp6-adm-prohibited" in v6


@pytest.mark.parametrize(
    ("rule", "feature"),
    [
        ("accept ip limit 10 kbytes/second", "a rate in bytes"),
        ("accept tcp dport 22 limit 10/minute", "for both IPv4 and IPv6"),
        ('accept log prefix "this prefix is far longer than 29"', "longer than 29"),
    ],
)
def test_what_iptables_cannot_say_is_a_compile_error(tmp_path: Path, rule: str, feature: str) -> None:
    with pytest.raises(PolicyError) as caught:
        iptables_of(tmp_path, input_policy(rule))
    message = caught.value.render()
    assert caught.value.loc.line == 8
    assert feature in message and "iptables-legacy backend" in message


def test_output_is_accepted_by_the_kernel(tmp_path: Path) -> None:
    v4, v6 = iptables_of(
        tmp_path,
        input_policy(
            "accept udp dport 5353 from not {10.0.0.0/8, 172.16.0.0/12}",
            'drop ip tcp dport 23 limit 1/second log prefix "telnet: " level warn',
            "accept ip6 tcp dport 22 limit 10/minute",
            "drop udp dport 53 limit over 10/second burst 20 per saddr/24,/56",
        ),
    )
    for name, text in ((RULES_V4, v4), (RULES_V6, v6)):
        path = tmp_path / name
        path.write_text(text)
        result = iptables_check(path)
        assert result.returncode == 0, result.stderr


def test_rules_sharing_a_long_meter_name_share_one_hashlimit_table(tmp_path: Path) -> None:
    v4, _ = iptables_of(
        tmp_path,
        input_policy(
            "drop udp dport 53 limit over 10/second per saddr/32,/64 name a_rather_long_meter_name",
            "drop tcp dport 53 limit over 10/second per saddr/32,/64 name a_rather_long_meter_name",
        ),
    )
    names = {line.split("--hashlimit-name ")[1].split()[0] for line in input_lines(v4)}
    assert len(names) == 1 and len(names.pop()) <= 15


def test_fast_plain_limits_move_to_hashlimit(tmp_path: Path) -> None:
    v4, _ = iptables_of(tmp_path, input_policy("accept ip limit 20000/second burst 5"))
    assert "-m hashlimit --hashlimit-upto 20000/sec" in v4
    path = tmp_path / RULES_V4
    path.write_text(v4)
    assert iptables_check(path).returncode == 0
    with pytest.raises(PolicyError, match="over 1000000/second"):
        iptables_of(tmp_path, input_policy("accept ip limit 2000000/second"))
