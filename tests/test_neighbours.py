"""The warning about other tables hooking forward, on captured kernel
output: Docker's rules as iptables-nft and iptables-legacy write them,
nfc's own table beside them, and a kube-proxy-like legacy filter table."""

from __future__ import annotations

import json

import pytest

import nfc.neighbours
from nfc.neighbours import Table, forward_warning, parse_legacy, parse_nft, warning_here

from conftest import ROOT

CAPTURED = ROOT / "tests" / "data" / "neighbours"  # real `nft -j list ruleset` and iptables-legacy-save
# Docker's iptables-nft tables beside nfc's web-notrack policy (forward: policy drop).
DOCKER_NFT = parse_nft(json.loads((CAPTURED / "docker-nft.json").read_text())["nftables"])
# The same, nfc's forward chain accepting iifname { "docker0", "br-*" } and ct status dnat.
ACCEPTED_NFT = parse_nft(json.loads((CAPTURED / "docker-nft-accepted.json").read_text())["nftables"])
DOCKER_LEGACY = parse_legacy("iptables-legacy", (CAPTURED / "docker-legacy.txt").read_text())
KUBE_LEGACY = parse_legacy(
    "iptables-legacy",
    """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
""",
)
DOCKER_WARNING = (
    "nfc: warning: nfc's forward chain drops by policy, and a drop there is final whatever another "
    "table accepts: table ip filter (chain FORWARD; Docker's) accepts forwarded traffic on docker0; "
    "table ip nat (Docker's) translates destinations (published ports) with dnat; nfc drops that "
    """traffic. Fix: in nfc's forward chain, 'accept iif {docker0, "br-*"}' and 'accept ct status dnat' """
    "(see policies/docker-host.yaml)"
)


def test_docker_tables_as_iptables_nft_writes_them() -> None:
    table = DOCKER_NFT["ip", "filter"]
    assert table.owner == "Docker's"
    assert [(c.name, c.policy) for c in table.forward_chains()] == [("FORWARD", "drop")]
    reached = [chain.name for chain in table.reachable("FORWARD")]
    assert set(reached) == {"FORWARD", "DOCKER-USER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2",
                            "DOCKER"}  # fmt: skip
    accepts = table.accepts("FORWARD")
    assert {name for rule in accepts for name in rule.interfaces} == {"docker0"}
    assert DOCKER_NFT["ip", "nat"].dnats and not table.dnats


def test_the_warning_names_dockers_tables_and_the_fix() -> None:
    assert forward_warning(DOCKER_NFT, "nft", "nfc") == DOCKER_WARNING


def test_no_warning_when_nfc_accepts_the_bridges_and_the_translated_connections() -> None:
    assert forward_warning(ACCEPTED_NFT, "nft", "nfc") is None


def test_an_interface_set_by_name_is_read_with_its_elements() -> None:
    """nft -j lists a named set's elements apart from the rule that names it."""
    listing = [
        {"table": {"family": "inet", "name": "nfc", "handle": 1}},
        {"set": {"family": "inet", "name": "containers", "table": "nfc", "type": "ifname",
                 "flags": ["interval"], "elem": ["br-*", "docker0"]}},
        {"chain": {"family": "inet", "table": "nfc", "name": "forward", "type": "filter", "hook": "forward",
                   "prio": 0, "policy": "drop"}},
        {"rule": {"family": "inet", "table": "nfc", "chain": "forward", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@containers"}},
            {"accept": None}]}},
        {"rule": {"family": "inet", "table": "nfc", "chain": "forward", "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"accept": None}]}},
    ]  # fmt: skip
    ours = parse_nft(listing)
    assert ours["inet", "nfc"].accepts("forward")[0].iif == ("br-*", "docker0")
    tables = {k: v for k, v in DOCKER_NFT.items() if k != ("inet", "nfc")} | ours
    assert forward_warning(tables, "nft", "nfc") is None


def test_jumps_through_a_verdict_map_are_followed() -> None:
    """nfc -O1 dispatches a run of rules by protocol (`meta l4proto vmap
    { tcp : jump CHAIN, ... }`, anonymous, or a named map): the accepts in
    the chains it jumps to are the forward chain's too."""
    forward = {"family": "inet", "table": "nfc", "chain": "forward"}
    listing = [
        {"table": {"family": "inet", "name": "nfc", "handle": 1}},
        {"map": {"family": "inet", "name": "protos", "table": "nfc", "type": "inet_proto", "map": "verdict",
                 "elem": [["udp", {"jump": {"target": "forward_udp"}}]]}},
        {"chain": {"family": "inet", "table": "nfc", "name": "forward_tcp"}},
        {"chain": {"family": "inet", "table": "nfc", "name": "forward_udp"}},
        {"chain": {"family": "inet", "table": "nfc", "name": "forward", "type": "filter", "hook": "forward",
                   "prio": 0, "policy": "drop"}},
        {"rule": {"family": "inet", "table": "nfc", "chain": "forward_tcp", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                       "right": {"set": ["br-*", "docker0"]}}}, {"accept": None}]}},
        {"rule": {"family": "inet", "table": "nfc", "chain": "forward_udp", "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"accept": None}]}},
        {"rule": {**forward, "expr": [{"vmap": {"key": {"meta": {"key": "l4proto"}}, "data": {"set": [
            ["tcp", {"jump": {"target": "forward_tcp"}}], ["sctp", {"drop": None}]]}}}]}},
        {"rule": {**forward, "expr": [{"vmap": {"key": {"meta": {"key": "l4proto"}}, "data": "@protos"}}]}},
    ]  # fmt: skip
    ours = parse_nft(listing)
    accepted = ours["inet", "nfc"].accepts("forward")
    assert sorted((rule.iif, rule.ct_dnat) for rule in accepted) == [((), True), (("br-*", "docker0"), False)]
    neighbours = {k: v for k, v in DOCKER_NFT.items() if k != ("inet", "nfc")}
    assert forward_warning(neighbours | ours, "nft", "nfc") is None
    unmapped = parse_nft([item for item in listing if "vmap" not in json.dumps(item)])
    assert forward_warning(neighbours | unmapped, "nft", "nfc") is not None
    # a map on the connection state accepts established connections only, as `ct state established accept`
    states = {"vmap": {"key": {"ct": {"key": "state"}}, "data": {"set": [["established", {"accept": None}]]}}}
    stateful = parse_nft([listing[0], listing[4], {"rule": {**forward, "expr": [states]}}])["inet", "nfc"]
    assert [(rule.ct_state, rule.narrowed) for rule in stateful.accepts("forward")] == [(True, False)]


def test_no_warning_without_a_forward_drop() -> None:
    tables = dict(DOCKER_NFT)
    ours = tables["inet", "nfc"]
    forward = ours.chains["forward"]
    forward.policy = "accept"
    try:
        assert forward_warning(tables, "nft", "nfc") is None
    finally:
        forward.policy = "drop"
    assert forward_warning({k: v for k, v in tables.items() if k != ("inet", "nfc")}, "nft", "nfc") is None


def test_iptables_legacy_beside_docker_on_nft() -> None:
    """Debian's usual case: Docker through iptables-nft, nfc on iptables-legacy."""
    ours = parse_legacy(
        "iptables-legacy", "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    )
    tables = {k: v for k, v in DOCKER_NFT.items() if k != ("inet", "nfc")} | ours
    assert forward_warning(tables, "iptables-legacy", "nfc") == DOCKER_WARNING
    accepting = parse_legacy(
        "iptables-legacy",
        """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i docker0 -m comment --comment "docker-host.yaml:40" -j ACCEPT
-A FORWARD -i br-+ -m comment --comment "docker-host.yaml:40" -j ACCEPT
-A FORWARD -m conntrack --ctstatus DNAT -m comment --comment "docker-host.yaml:41" -j ACCEPT
COMMIT
""",
    )
    assert forward_warning(tables | accepting, "iptables-legacy", "nfc") is None
    # nfc writes ct status dnat as the conntrack match's virtual state DNAT
    dnat_state = "-A FORWARD -m conntrack --ctstate DNAT -j ACCEPT"
    as_nfc_writes = parse_legacy("iptables-legacy", f"*filter\n:FORWARD DROP [0:0]\n{dnat_state}\nCOMMIT\n")
    assert as_nfc_writes["iptables-legacy", "filter"].chains["FORWARD"].rules[0].ct_dnat


def test_docker_on_iptables_legacy_beside_nfc_on_nft() -> None:
    tables = {("inet", "nfc"): DOCKER_NFT["inet", "nfc"]} | DOCKER_LEGACY
    warning = forward_warning(tables, "nft", "nfc")
    assert warning is not None
    assert "iptables-legacy filter (chain FORWARD; Docker's) accepts forwarded traffic on docker0" in warning
    assert "iptables-legacy nat (Docker's) translates destinations (published ports) with dnat" in warning


def test_an_accept_that_names_a_port_is_not_an_accept_of_the_bridge() -> None:
    narrowed = parse_legacy(
        "iptables-legacy",
        "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -i docker0 -p tcp -m tcp --dport 80 -j ACCEPT\nCOMMIT\n",
    )
    tables = {k: v for k, v in DOCKER_NFT.items() if k != ("inet", "nfc")} | narrowed
    assert forward_warning(tables, "iptables-legacy", "nfc") == DOCKER_WARNING


def test_kube_proxy_accepts_by_mark() -> None:
    ours = {("inet", "nfc"): DOCKER_NFT["inet", "nfc"]}
    warning = forward_warning(ours | KUBE_LEGACY, "nft", "nfc")
    assert warning is not None
    assert (
        "iptables-legacy filter (chain FORWARD; kube-proxy's) accepts forwarded traffic that names no "
        "interface (by address or mark); nfc drops that traffic. Fix: in nfc's forward chain, accept "
        "what those tables forward" in warning
    )


def test_nfcs_own_nft_table_beside_its_legacy_rules_is_no_neighbour() -> None:
    ours = parse_legacy("iptables-legacy", "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n")
    leftover = {("inet", "nfc"): DOCKER_NFT["inet", "nfc"]}  # of an earlier apply with the nft backend
    assert forward_warning(leftover | ours, "iptables-legacy", "nfc") is None


def test_unreadable_kernel_output_gives_no_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def damaged() -> dict[tuple[str, str], Table]:
        return parse_nft([{"rule": {"family": "ip", "table": "gone", "chain": "x", "expr": []}}])

    monkeypatch.setattr(nfc.neighbours, "kernel_tables", damaged)
    assert warning_here("nft", "nfc") is None


def test_nfc_1_shows_the_warning_the_code_prints() -> None:
    from test_man import NFC_1, plain  # the page's source with its escapes undone

    assert DOCKER_WARNING in plain(NFC_1).splitlines()
