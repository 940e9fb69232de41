"""explain with NAT: the destination NAT of prerouting comes first and
the filter judges the translated packet; the source NAT of postrouting
follows an accept. Packets no NAT rule matches are explained as before."""

from __future__ import annotations

from pathlib import Path

from nat_ir import MASQUERADE, PORT_FORWARD, REDIRECT, SNAT, nat, router, shown

from nfc.explain import explain, parse_packet

FROM_LAN = "tcp 192.168.1.20:40000 > 198.51.100.7:443 iif eth1"


def test_a_port_forward_is_translated_then_forwarded(tmp_path: Path) -> None:
    ruleset = router(tmp_path, MASQUERADE, PORT_FORWARD, REDIRECT, SNAT)
    result = explain(ruleset, parse_packet("tcp 198.51.100.7:40000 > 203.0.113.1:8080 iif eth0"))
    assert result.dnat is not None and result.dnat.rule is PORT_FORWARD
    assert (result.chain, result.verdict) == ("forward", "accept")
    assert result.rule is not None and result.rule.role.value == "dnat-forward"
    assert shown(result.lines(), tmp_path) == [
        "packet: tcp 198.51.100.7:40000 > 203.0.113.1:8080 iif eth0 dir in",
        "connection state: new",
        "router.yaml:21:5: dnat: destination 203.0.113.1:8080 becomes 192.168.1.10:80, "
        "so the packet is forwarded",
        "translated packet: tcp 198.51.100.7:40000 > 192.168.1.10:80 iif eth0 dir fwd",
        "router.yaml:21:5: verdict: ACCEPT in chain forward (dnat-forward)",
    ]
    data = result.to_json()
    assert data["translated_packet"] == "tcp 198.51.100.7:40000 > 192.168.1.10:80 iif eth0 dir fwd"
    assert data["nat"] == [
        {"kind": "dnat", "hook": "prerouting", "file": "router.yaml", "line": 21,
         "address": "192.168.1.10", "ports": [80, 80]},
    ]  # fmt: skip


def test_under_state_manual_forward_drops_the_translated_packet(tmp_path: Path) -> None:
    ruleset = router(tmp_path, PORT_FORWARD, auto=False)
    result = explain(ruleset, parse_packet("tcp 198.51.100.7:40000 > 203.0.113.1:8080 iif eth0"))
    assert result.dnat is not None and (result.chain, result.verdict, result.rule) == (
        "forward",
        "drop",
        None,
    )
    assert result.snat is None  # a dropped packet never reaches postrouting


def test_the_ct_status_is_the_translation_s(tmp_path: Path) -> None:
    """The dnat-forward rule accepts only what a dnat translated: the same
    packet sent straight to 192.168.1.10:80 is not accepted by it."""
    ruleset = router(tmp_path, PORT_FORWARD)
    direct = explain(ruleset, parse_packet("tcp 198.51.100.7:40000 > 192.168.1.10:80 iif eth0 dir fwd"))
    assert direct.dnat is None and (direct.verdict, direct.rule) == ("drop", None)


def test_masquerade_follows_the_forward_accept(tmp_path: Path) -> None:
    ruleset = router(tmp_path, MASQUERADE, PORT_FORWARD)
    result = explain(ruleset, parse_packet(f"{FROM_LAN} oif eth0 dir fwd"))
    assert result.verdict == "accept" and result.snat is not None and result.snat.rule is MASQUERADE
    assert shown(result.lines(), tmp_path)[-2:] == [
        "router.yaml:11:7: verdict: ACCEPT in chain forward",
        "router.yaml:20:5: masquerade: source 192.168.1.20 becomes the address of oif eth0",
    ]
    elsewhere = explain(ruleset, parse_packet(f"{FROM_LAN} oif eth3 dir fwd"))
    assert elsewhere.snat is None and elsewhere.verdict == "drop"


def test_snat_of_the_host_s_own_packets(tmp_path: Path) -> None:
    ruleset = router(tmp_path, SNAT, nat("snat", 24, to="203.0.113.8", ports=(1024, 2047), oif="eth3"))
    result = explain(ruleset, parse_packet("udp 10.1.1.1:5000 > 198.51.100.7:53 oif eth2 dir out"))
    assert (
        shown(result.lines(), tmp_path)[-1]
        == "router.yaml:23:5: snat: source 10.1.1.1:5000 becomes 203.0.113.7:5000"
    )
    ranged = explain(ruleset, parse_packet("udp 10.1.1.1:5000 > 198.51.100.7:53 oif eth3 dir out"))
    assert (
        shown(ranged.lines(), tmp_path)[-1]
        == "router.yaml:24:5: snat: source 10.1.1.1:5000 becomes 203.0.113.8:1024-2047"
    )
    kept = explain(ruleset, parse_packet("udp 10.1.1.1:1500 > 198.51.100.7:53 oif eth3 dir out"))
    assert (
        shown(kept.lines(), tmp_path)[-1]
        == "router.yaml:24:5: snat: source 10.1.1.1:1500 becomes 203.0.113.8:1500"
    )


def test_a_redirect_makes_a_forwarded_packet_local(tmp_path: Path) -> None:
    ruleset = router(tmp_path, REDIRECT)
    result = explain(ruleset, parse_packet("udp 192.168.1.20:40000 > 8.8.8.8:53 iif eth1 dir fwd"))
    assert result.dnat is not None and result.judged.direction == "in"
    assert (result.chain, result.verdict) == ("input", "accept")
    assert shown(result.lines(), tmp_path)[2:4] == [
        "router.yaml:22:5: redirect: destination 8.8.8.8:53 becomes port 5353 of this host, "
        "so the packet goes to input",
        "translated packet: udp 192.168.1.20:40000 > 8.8.8.8:5353 iif eth1 dir in",
    ]


def test_first_nat_rule_wins_and_families_and_interfaces_must_match(tmp_path: Path) -> None:
    first = nat("dnat", 30, to="192.168.1.11", protocol="tcp", dport=(8000, 8100), iif=("eth0", "ppp*"))
    second = nat("dnat", 31, to="192.168.1.12", protocol="tcp", dport=8080)
    six = nat("dnat", 32, to="fd00::10", ports=(443, 443), protocol="tcp", dport=443)
    ruleset = router(tmp_path, first, second, six)
    on_ppp = explain(ruleset, parse_packet("tcp 198.51.100.7:40000 > 203.0.113.1:8080 iif ppp0"))
    assert on_ppp.dnat is not None and on_ppp.dnat.rule is first
    assert on_ppp.judged.daddr.compressed == "192.168.1.11" and on_ppp.judged.dport == 8080  # port kept
    on_eth1 = explain(ruleset, parse_packet("tcp 198.51.100.7:40000 > 203.0.113.1:8080 iif eth1"))
    assert on_eth1.dnat is not None and on_eth1.dnat.rule is second
    v6 = explain(ruleset, parse_packet("tcp [2001:db8::7]:40000 > [2001:db8::1]:443 iif eth0"))
    assert v6.dnat is not None and v6.dnat.line().endswith(
        "becomes [fd00::10]:443, so the packet is forwarded"
    )
    v4 = explain(ruleset, parse_packet("tcp 198.51.100.7:40000 > 203.0.113.1:443 iif eth0"))
    assert v4.dnat is None


def test_untracked_and_established_packets_are_not_translated(tmp_path: Path) -> None:
    ruleset = router(tmp_path, PORT_FORWARD)
    for ct in ("established", "related", "invalid"):
        result = explain(ruleset, parse_packet(f"tcp 198.51.100.7:40000 > 203.0.113.1:8080 iif eth0 ct {ct}"))
        assert result.dnat is None and result.chain == "input"


def test_a_dnat_to_the_same_address_stays_local(tmp_path: Path) -> None:
    port_only = nat("dnat", 40, to="203.0.113.1", ports=(22, 22), protocol="tcp", dport=2222)
    ruleset = router(tmp_path, port_only)
    result = explain(ruleset, parse_packet("tcp 192.168.1.20:40000 > 203.0.113.1:2222 iif eth1"))
    assert result.judged.direction == "in" and (result.chain, result.verdict) == ("input", "accept")
    assert (
        shown(result.lines(), tmp_path)[2]
        == "router.yaml:40:5: dnat: destination 203.0.113.1:2222 becomes 203.0.113.1:22"
    )


def test_without_a_matching_nat_rule_the_output_is_as_before(tmp_path: Path) -> None:
    plain = router(tmp_path)
    with_nat = router(tmp_path, MASQUERADE, PORT_FORWARD, REDIRECT, SNAT)
    for text in (
        "tcp 192.168.1.20:4000 > 203.0.113.1:22 iif eth1",
        "udp 198.51.100.7:4000 > 203.0.113.1:53 iif eth0",
        "tcp 192.168.1.20:4000 > 198.51.100.7:443 iif eth1 oif eth3 dir fwd",
        "udp 203.0.113.1:4000 > 198.51.100.7:53 dir out",
    ):
        packet = parse_packet(text)
        before, after = explain(plain, packet), explain(with_nat, packet)
        assert after.lines() == before.lines() and after.to_json() == before.to_json(), text
        assert "nat" not in after.to_json()


def test_a_dnat_that_changes_nothing_marks_no_translation(tmp_path: Path) -> None:
    """The kernel sets ct status dnat only when the address or port
    changes: a packet already sent to the port forward's target is judged
    as untranslated, so the dnat-forward accept does not take it (the
    random router campaign found this)."""
    keep_port = nat("dnat", 50, to="192.168.1.10", protocol="tcp", dport=80, iif="eth*")
    ruleset = router(tmp_path, keep_port)
    result = explain(ruleset, parse_packet("tcp 203.0.113.2:40000 > 192.168.1.10:80 iif eth0 dir fwd"))
    assert result.dnat is not None and not result.dnat.changes
    assert (result.verdict, result.rule) == ("drop", None)
    assert shown(result.lines(), tmp_path)[2] == (
        "router.yaml:50:5: dnat: destination 192.168.1.10:80 stays as it is: no ct status dnat"
    )
    moved = explain(ruleset, parse_packet("tcp 203.0.113.2:40000 > 203.0.113.1:80 iif eth0"))
    assert moved.dnat is not None and moved.dnat.changes and moved.verdict == "accept"
