"""The nftables generator: the transaction idiom, sets, meters, comments."""

from __future__ import annotations

from pathlib import Path

from conftest import nft_check
from helpers import input_rules, nft_of


def test_replaces_only_its_own_table(tmp_path: Path) -> None:
    text = nft_of(tmp_path, "nfc: 1\ntable: edge\ninput: {policy: drop}\n")
    lines = text.splitlines()
    assert lines[3:5] == ["table inet edge", "delete table inet edge"]
    assert "flush ruleset" not in text
    assert [line for line in lines if line.startswith("table ")] == ["table inet edge", "table inet edge {"]


def test_raw_chains_only_with_notrack(tmp_path: Path) -> None:
    assert "raw_prerouting" not in nft_of(tmp_path, "nfc: 1\ninput: {policy: drop}\n")
    text = nft_of(tmp_path, "nfc: 1\nconntrack: {notrack: [udp dport 53]}\n")
    assert "type filter hook prerouting priority raw; policy accept;" in text
    assert "type filter hook output priority raw; policy accept;" in text


def test_every_rule_names_its_source_line(tmp_path: Path) -> None:
    text = nft_of(
        tmp_path,
        "nfc: 1\nconntrack: {notrack: [udp dport 53]}\ninput:\n  policy: drop\n  rules:\n"
        "    - accept tcp dport 22\n    - drop limit over 1/second per saddr\n",
    )
    declarations = ("type", "size", "flags", "timeout", "elements", "rate")
    rule_lines = [
        line
        for line in text.splitlines()
        if line.startswith("\t\t") and not line.strip().startswith(declarations)
    ]
    assert rule_lines
    assert all('comment "policy.yaml:' in line for line in rule_lines)


def test_defines_become_named_sets(tmp_path: Path) -> None:
    body = input_rules(
        tmp_path,
        "accept tcp dport $web from $lan",
        extra="define: {web: [80, 443], lan: [10.0.0.0/8, 192.168.0.0/16, 'fd00::/8']}",
    )
    assert body.splitlines()[:2] == [
        'ip saddr @lan_v4 tcp dport @web_ports accept comment "policy.yaml:8"',
        'ip6 saddr fd00::/8 tcp dport @web_ports accept comment "policy.yaml:8"',
    ]


def test_meter_is_a_dynamic_set_and_fails_closed(tmp_path: Path) -> None:
    text = nft_of(
        tmp_path,
        "nfc: 1\ninput:\n  policy: drop\n  state: manual\n  icmp: manual\n  loopback: manual\n  rules:\n"
        "    - drop ip udp dport 53 limit over 10/second burst 20 per saddr/24 size 1000 name dns\n",
    )
    assert (
        "set dns_v4 {\n\t\ttype ipv4_addr\n\t\tsize 1000\n\t\tflags dynamic,timeout\n\t\ttimeout 2s\n\t}"
        in text
    )
    assert (
        "update @dns_v4 { ip saddr and 255.255.255.0 limit rate over 10/second burst 20 packets } drop"
        in text
    )
    assert "ip saddr and 255.255.255.0 != @dns_v4 drop" in text
    assert "dns_v6" not in text


def test_reject_types_per_family(tmp_path: Path) -> None:
    body = input_rules(
        tmp_path,
        "reject with icmp port-unreachable",
        "reject with icmp host-prohibited",
        "reject with icmp net-unreachable ip6",
    )
    assert "reject with icmpx type port-unreachable" in body
    assert "meta nfproto ipv4 reject with icmp type host-prohibited" in body
    assert "meta nfproto ipv6 reject with icmpv6 type admin-prohibited" in body
    assert "meta nfproto ipv6 reject with icmpv6 type no-route" in body


def test_hostile_file_names_cannot_break_out_of_comments(tmp_path: Path) -> None:
    name = 'x" ; flush ruleset ; ".yaml'
    (tmp_path / name).write_text("define: {a: 1}\nconntrack: {notrack: [udp dport 53]}\n")
    text = nft_of(tmp_path, f"nfc: 1\ninclude: ['{name}']\n")
    assert "flush ruleset" not in text.replace("x? ; flush ruleset ; ?.yaml", "")
    assert text.count('"') % 2 == 0
    result_file = tmp_path / "out.nft"
    result_file.write_text(text)
    assert nft_check(result_file).returncode == 0


def test_long_paths_are_shortened_to_fit_the_kernel_limit(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 130)
    deep.mkdir()
    (deep / "inc.yaml").write_text("conntrack: {notrack: [udp dport 53]}\n")
    text = nft_of(tmp_path, f"nfc: 1\ninclude: ['{deep.name}/inc.yaml']\n")
    comments = [line.split('comment "', 1)[1] for line in text.splitlines() if 'comment "' in line]
    assert comments and all(len(c.rstrip('"').encode()) <= 128 for c in comments)
    assert all(c.startswith("inc.yaml:1") for c in comments)
