"""nfc diff with NAT and interface lists: translations that change are
said in a reviewer's words, port forwards with the forward verdict of
what they translate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from nat_ir import MASQUERADE, PORT_FORWARD, REDIRECT, SNAT, Intersections, nat, port_forwards, router

from nfc.diff import diff
from nfc.ir import Ruleset


def lines(old: Ruleset, new: Ruleset, section: str = "nat") -> list[str]:
    """The changes of `section`, with the rules' file named as the NAT rules name it."""
    return [c.text() for c in diff(old, new) if c.section == section]


def test_a_new_port_forward_newly_forwards(tmp_path: Path) -> None:
    old, new = router(tmp_path, MASQUERADE), router(tmp_path, MASQUERADE, PORT_FORWARD)
    assert lines(old, new) == [
        "nat: newly FORWARDS ip tcp dport 8080 iif eth0 from any to 192.168.1.10:80 (router.yaml:21:5) "
        "(was: not translated)"
    ]
    assert lines(new, old) == [
        "nat: no longer FORWARDS ip tcp dport 8080 iif eth0 from any to 192.168.1.10:80 "
        "(was: dnat at router.yaml:21:5)"
    ]
    # forward accepts what the dnat translated, and says where that comes from
    (accept,) = lines(old, new, "forward")
    assert accept.startswith("forward: newly ACCEPTS ip tcp dport 80 to 192.168.1.10 iif eth0")
    assert "ct status dnat" in accept and "(router.yaml:21:5)" in accept


def test_a_port_forward_under_state_manual_is_said_to_be_dropped(tmp_path: Path) -> None:
    old, new = router(tmp_path, auto=False), router(tmp_path, PORT_FORWARD, auto=False)
    assert lines(old, new) == [
        "nat: newly DNATS ip tcp dport 8080 iif eth0 from any to 192.168.1.10:80, which forward drops "
        "(router.yaml:21:5) (was: not translated)"
    ]


def test_source_nat_and_redirects(tmp_path: Path) -> None:
    old, new = router(tmp_path, MASQUERADE), router(tmp_path, REDIRECT, SNAT)
    assert lines(old, new) == [
        "nat: newly REDIRECTS ip udp dport 53 iif eth1 from any to port 5353 (router.yaml:22:5) "
        "(was: not translated)",
        "nat: newly REDIRECTS ip6 udp dport 53 iif eth1 from any to port 5353 (router.yaml:22:5) "
        "(was: not translated)",
        "nat: newly SNATS ip from 10.0.0.0/8 oif eth2 to 203.0.113.7 (router.yaml:23:5) "
        "(was: not translated)",
        "nat: no longer MASQUERADES ip from 192.168.1.0/24 oif eth0 (was: masquerade at router.yaml:20:5)",
    ]


def test_a_changed_target_names_the_old_one(tmp_path: Path) -> None:
    moved = replace(PORT_FORWARD, address=PORT_FORWARD.address + 1)  # type: ignore[operator]
    assert lines(router(tmp_path, PORT_FORWARD), router(tmp_path, moved)) == [
        "nat: newly FORWARDS ip tcp dport 8080 iif eth0 from any to 192.168.1.11:80 (router.yaml:21:5) "
        "(was: dnat 192.168.1.10:80 at router.yaml:21:5)"
    ]


def test_interface_lists_are_written_as_the_policy_writes_them(tmp_path: Path) -> None:
    old = router(tmp_path, nat("masquerade", 20, oif=("eth1", "eth2"), saddr="192.168.1.0/24"))
    new = router(tmp_path, nat("masquerade", 20, oif=("eth1", "eth2", "veth*"), saddr="192.168.1.0/24"))
    assert lines(old, new) == [
        "nat: newly MASQUERADES ip from 192.168.1.0/24 oif veth* (router.yaml:20:5) (was: not translated)"
    ]
    assert lines(new, old) == [
        "nat: no longer MASQUERADES ip from 192.168.1.0/24 oif veth* (was: masquerade at router.yaml:20:5)"
    ]
    back = router(tmp_path, nat("masquerade", 20, oif="eth3", saddr="192.168.1.0/24"))
    assert any(
        line.startswith("nat: no longer MASQUERADES ip from 192.168.1.0/24 oif {eth1, eth2} ")
        for line in lines(old, back)
    )


def test_reordering_or_rewording_nat_rules_that_changes_nothing_says_nothing(tmp_path: Path) -> None:
    first = nat("dnat", 30, to="192.168.1.11", protocol="tcp", dport=8080, iif="eth0")
    second = nat("dnat", 31, to="192.168.1.12", protocol="tcp", dport=8081, iif="eth0")
    assert lines(router(tmp_path, first, second), router(tmp_path, second, first)) == []
    moved = replace(first, origin=first.origin._replace(line=40))
    assert lines(router(tmp_path, first, MASQUERADE), router(tmp_path, MASQUERADE, moved)) == []


def test_the_nat_diff_is_near_linear_in_the_rule_count(tmp_path: Path, monkeypatch) -> None:
    intersections = Intersections(monkeypatch)

    def work(count: int) -> int:
        forwards = port_forwards(count)
        old, new = router(tmp_path, MASQUERADE, *forwards[:-1]), router(tmp_path, MASQUERADE, *forwards)
        intersections.count = 0
        assert len(lines(old, new)) == 1
        return intersections.count

    small, large = work(100), work(800)
    assert large < 8 * small * 2  # eight times the rules; a quadratic diff would do 64 times the work


def test_long_lists_of_cubes_are_joined_by_buckets_without_changing_their_packets() -> None:
    from nfc.diff import PAIRWISE, _merge
    from nfc.ir import Family, Match, Ports
    from nfc.space import Space, minus

    space = Space()
    ports = [
        space.cubes(Match(family=Family.V4, protocol="tcp", dport=Ports(((p, p),))))[0] for p in range(1, 200)
    ]
    both = [
        cube
        for p in range(1, 100)
        for cube in space.cubes(
            Match(
                family=Family.V4,
                protocol=("udp", "tcp")[p % 2],
                dport=Ports(((p, p),)),
            )
        )
    ]
    for cubes in (ports, both):
        assert len(cubes) > PAIRWISE
        merged = _merge(cubes)
        assert len(merged) < len(cubes)
        assert not minus(cubes, merged) and not minus(merged, cubes)
    assert len(_merge(ports)) == 1  # tcp dport 1-199
