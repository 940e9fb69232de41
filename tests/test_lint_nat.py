"""The NAT checks on rulesets built as the front end builds them; each
fires on a minimal case and stays quiet once it is corrected."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest
from nat_ir import MASQUERADE, PORT_FORWARD, ROUTER, Intersections, nat, port_forwards, router

from nfc.ir import Interfaces, Ruleset
from nfc.lint import lint
from nfc.space import Space
from nfc.space_index import Index

TODAY = dt.date(2026, 11, 24)


def found(ruleset: Ruleset) -> dict[str, list[str]]:
    by_code: dict[str, list[str]] = {}
    for finding in lint(ruleset, today=TODAY):
        by_code.setdefault(finding.code, []).append(f"{finding.loc.line}: {finding.message}")
    return by_code


def test_a_port_forward_that_forward_drops(tmp_path: Path) -> None:
    manual = found(router(tmp_path, MASQUERADE, PORT_FORWARD, auto=False))
    assert manual["NFC090"] == [
        "21: nothing in forward accepts the connections this dnat sends to 192.168.1.10:80: "
        "the port forward cannot work"
    ]
    assert "NFC090" not in found(router(tmp_path, MASQUERADE, PORT_FORWARD))  # state: auto accepts them
    accepting = ROUTER.replace(
        "    - accept iif eth1 oif eth0\n", "    - accept tcp dport 80 to 192.168.1.10\n"
    )
    assert "NFC090" not in found(router(tmp_path, PORT_FORWARD, auto=False, policy=accepting))
    elsewhere = ROUTER.replace(
        "    - accept iif eth1 oif eth0\n", "    - accept tcp dport 80 to 192.168.1.11\n"
    )
    assert "NFC090" in found(router(tmp_path, PORT_FORWARD, auto=False, policy=elsewhere))


def test_source_nat_that_nothing_forwarded_reaches(tmp_path: Path) -> None:
    typo = nat("masquerade", 20, oif="eht0", saddr="192.168.1.0/24")
    assert found(router(tmp_path, typo, auto=False))["NFC091"] == [
        "20: forward drops by default and no forward rule accepts what this masquerade matches: "
        "only the host's own packets out oif eht0 reach it"
    ]
    assert "NFC091" not in found(router(tmp_path, MASQUERADE))
    wildcard = nat("masquerade", 20, oif=("ppp*", "eth*"), saddr="192.168.1.0/24")
    assert "NFC091" not in found(router(tmp_path, wildcard))  # eth* covers eth0, where forward sends
    other = nat("masquerade", 20, oif=("ppp*", "wlan0"), saddr="192.168.1.0/24")
    assert "oif {ppp*, wlan0}" in found(router(tmp_path, other))["NFC091"][0]
    accepting = ROUTER.replace("  policy: drop\n  STATE", "  policy: accept\n  STATE")
    assert "NFC091" not in found(router(tmp_path, typo, policy=accepting))


def test_translated_connections_reach_source_nat(tmp_path: Path) -> None:
    """A port forward to a host behind eth2, masqueraded there: forward
    accepts only what the dnat translated, and that reaches the masquerade."""
    dnat = nat("dnat", 21, to="10.9.0.5", protocol="tcp", dport=8080, iif="eth0")
    hairpin = nat("masquerade", 20, oif="eth2")
    assert "NFC091" not in found(router(tmp_path, hairpin, dnat))
    assert "NFC091" in found(router(tmp_path, hairpin, dnat, auto=False))


def test_nat_rules_shadowed_by_earlier_ones(tmp_path: Path) -> None:
    wide = nat("dnat", 30, to="192.168.1.11", protocol="tcp", dport=(8000, 8100), iif=("eth0", "ppp*"))
    narrow = nat("dnat", 31, to="192.168.1.12", protocol="tcp", dport=8080, iif="ppp0")
    partly = nat("dnat", 32, to="192.168.1.12", protocol="tcp", dport=8080, iif="eth*")
    masquerade = nat("masquerade", 33, oif="eth0")
    later = nat("snat", 34, to="203.0.113.9", oif="eth0", saddr="192.168.1.0/24")
    findings = found(router(tmp_path, wide, narrow, partly, masquerade, later))["NFC092"]
    assert findings == [
        "31: never translates a connection: line 30 takes them all first",
        "34: never translates a connection: line 33 takes them all first",
    ]


def test_source_nat_without_an_interface_and_expired_or_empty_nat_rules(tmp_path: Path) -> None:
    everywhere = nat("masquerade", 20, saddr="192.168.1.0/24")
    expired = replace(PORT_FORWARD, expires=dt.date(2026, 11, 1))
    codes = found(router(tmp_path, everywhere, expired))
    assert codes["NFC093"] == ["20: masquerade applies whatever interface a connection leaves by"]
    assert codes["NFC040"] == ["21: expired on 2026-11-01"]
    assert "NFC093" not in found(router(tmp_path, MASQUERADE))


def test_the_index_finds_every_overlap() -> None:
    """Index.candidates is a superset of the rules that share packets; here
    against a brute-force pairing over rules filed every way."""
    rules = [
        nat("dnat", 1, to="10.0.0.1", protocol="tcp", dport=80),
        nat("dnat", 2, to="10.0.0.1", protocol="tcp", dport=(79, 81)),
        nat("snat", 3, to="10.0.0.1", saddr="192.168.0.0/16"),
        nat("snat", 4, to="10.0.0.1", saddr="192.168.7.0/24"),
        nat("snat", 5, to="10.0.0.1", saddr="10.0.0.0/8"),
        nat("masquerade", 6, oif="eth0"),
        nat("dnat", 7, to="fd00::1", protocol="udp", dport=53),
        nat("masquerade", 8, saddr="fd00::/8"),
    ]
    space = Space()
    cubes = [space.cubes(r.match) for r in rules]
    index = Index(cubes)
    for number, mine in enumerate(cubes):
        sharing = {o for o, theirs in enumerate(cubes) if any(a & b for a in mine for b in theirs)}
        assert sharing <= set(index.candidates(mine)), rules[number]
    assert 4 not in index.candidates(cubes[4 - 1])  # 192.168.7.0/24 and 10.0.0.0/8 are apart


def test_thousands_of_port_forwards_are_checked_in_near_linear_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted in cube intersections, the work lint does (the forward rules
    that the port forwards imply included) grows with the rule count, not
    with its square."""
    intersections = Intersections(monkeypatch)

    def work(count: int) -> int:
        ruleset = router(tmp_path, MASQUERADE, *port_forwards(count))
        intersections.count = 0
        assert "NFC092" not in found(ruleset) and "NFC090" not in found(ruleset)
        return intersections.count

    small, large = work(100), work(800)
    assert large < 8 * small * 2  # eight times the rules; a quadratic check would do 64 times the work


def test_a_sensitive_port_forwarded_from_anywhere(tmp_path: Path) -> None:
    ssh = nat("dnat", 40, to="192.168.1.10", ports=(22, 22), protocol="tcp", dport=2222, iif="eth0")
    kept = nat("dnat", 41, to="192.168.1.11", protocol="tcp", dport=(5432, 5432), iif="eth0")
    admins = nat("dnat", 42, to="192.168.1.12", ports=(22, 22), protocol="tcp", saddr="192.0.2.0/24")
    assert found(router(tmp_path, ssh, kept, admins))["NFC060"] == [
        "40: ssh (22) of 192.168.1.10 forwarded from any address",
        "41: postgresql (5432) of 192.168.1.11 forwarded from any address",
    ]


def test_interface_lists_and_wildcards_in_shadowing(tmp_path: Path) -> None:
    """A wildcard takes the names it covers; a list takes each of its names."""
    policy = "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - accept tcp dport 22 from 192.0.2.10\n{}\n"

    def findings(*rules: tuple[str, tuple[str, ...]]) -> dict[str, list[str]]:
        text = policy.format("\n".join(f"    - {verdict} iif placeholder" for verdict, _ in rules))
        ruleset = router(tmp_path, policy=text)
        (chain,) = ruleset.chains
        users = iter(names for _, names in rules)
        patched = tuple(
            replace(r, match=replace(r.match, iifname=Interfaces(next(users))))
            if r.match.iifname and r.match.iifname.names == ("placeholder",)
            else r
            for r in chain.rules
        )
        return found(replace(ruleset, chains=(replace(chain, rules=patched),)))

    assert "NFC030" in findings(("accept", ("eth*",)), ("drop", ("eth0",)))
    assert "NFC030" not in findings(("accept", ("eth0",)), ("drop", ("eth*",)))
    assert "NFC030" not in findings(("accept", ("eth1*",)), ("drop", ("eth*",)))
    assert "NFC030" in findings(("accept", ("eth1", "ppp*")), ("drop", ("ppp0", "eth1")))
    assert "NFC031" in findings(("accept", ("eth1", "eth2")), ("accept", ("eth2",)))
    assert "NFC031" not in findings(("accept", ("eth1", "eth2")), ("accept", ("eth2", "eth3")))


def test_what_a_dnat_leaves_as_it_is_is_not_translated(tmp_path: Path) -> None:
    """Packets that already go to the target keep no ct status dnat: the
    dnat-forward accept does not take them, so forward's rules must."""
    keep = nat("dnat", 50, to="192.168.1.10", ports=(80, 80), protocol="tcp", dport=80, iif="eth0",
               daddr="192.168.1.10/32")  # fmt: skip
    assert found(router(tmp_path, keep))["NFC090"] == [
        "50: nothing in forward accepts the connections this dnat sends to 192.168.1.10:80: "
        "the port forward cannot work"
    ]
