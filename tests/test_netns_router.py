"""A home router in namespaces, through `nfc apply`, on both backends:
masquerade, snat, a port forward, a redirect, interface lists with a
wildcard, and a rule spliced in by `{include: FILE}`, with real TCP and
UDP. Every listener answers with the address it saw.

    lan host (eth0) ── (lan0 in bridge br-lan) ─┐
    ctr host (eth0) ── (ctr1) ──────────────────┤ router (eth0) ── (eth0) wan host
    dmz host (eth0) ── (dmz0) ──────────────────┘
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from nfc.artifacts import MANIFEST
from nfc.backends.iptables import RULES_V6
from nfc.backends.nft import RULESET

from conftest import run_nfc
from lab import (
    LAN_HOST4,
    LAN_HOST6,
    LAN_SNATTED4,
    ROUTER_SNAT4,
    ROUTER_WAN4,
    ROUTER_WAN6,
    WAN_HOST4,
    WAN_HOST6,
    Router,
    router_labs,
)

pytestmark = pytest.mark.netns

SHARED = """\
rules:
  - accept tcp dport {9001, 9002}
"""
ROUTER = """\
nfc: 1
interfaces:
  wan: eth0
  lan: [br-lan, "ctr*"]
nat:
  - snat to 203.0.113.7 oif $wan from 192.168.1.20
  - masquerade oif $wan
  - dnat to 192.168.1.10:80 tcp dport 8080 iif $wan
  - dnat to [fd00:1::10]:80 tcp dport 8080 iif $wan
  - redirect to 5353 udp dport 53 iif $lan
input:
  policy: drop
  rules:
    - accept udp dport 5353 iif $lan
forward:
  policy: drop
  rules:
    - drop tcp dport 9002
    - include: shared-rules.yaml
    - drop tcp dport 9001
    - accept iif $lan oif $wan
"""
MANUAL = """\
nfc: 1
interfaces:
  wan: eth0
  lan: [br-lan, "ctr*"]
nat:
  - masquerade oif $wan
  - dnat to 192.168.1.10:80 tcp dport 8080 iif $wan
forward:
  policy: drop
  state: manual
  rules:
    - accept ct state established,related
    - accept iif $lan oif $wan
"""
NO_NAT = """\
nfc: 1
forward:
  policy: accept
  rules:
    - accept udp dport 9
"""


@pytest.fixture(scope="module", params=["nft", "iptables-legacy"])
def router(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """One router lab per backend, shared by this module's tests, removed whatever happens."""
    with router_labs(tmp_path_factory.mktemp("router"), {request.param: request.param}) as routers:
        lab = routers[request.param]
        lab.include = SHARED
        yield lab


def test_masquerade_shows_the_wan_side_the_routers_address(router: Router) -> None:
    router.apply(ROUTER)
    answers = router.ask(
        "lan",
        ("tcp", WAN_HOST4, 80, LAN_HOST4),
        ("udp", WAN_HOST4, 5300, LAN_HOST4),
        ("tcp", WAN_HOST6, 80, LAN_HOST6),
        ("udp", WAN_HOST6, 5300, LAN_HOST6),
    )
    assert answers == [f"wan {ROUTER_WAN4}"] * 2 + [f"wan {ROUTER_WAN6}"] * 2


def test_snat_comes_first_for_its_source(router: Router) -> None:
    router.apply(ROUTER)
    answers = router.ask("lan", ("tcp", WAN_HOST4, 80, LAN_SNATTED4), ("udp", WAN_HOST4, 5300, LAN_SNATTED4))
    assert answers == [f"wan {ROUTER_SNAT4}"] * 2


def test_port_forward_reaches_the_lan_listener_without_a_forward_rule(router: Router) -> None:
    router.apply(ROUTER)
    answers = router.ask("wan", ("tcp", ROUTER_WAN4, 8080, None), ("tcp", ROUTER_WAN6, 8080, None))
    assert answers == [f"lan {WAN_HOST4}", f"lan {WAN_HOST6}"]  # translated, not masqueraded
    # the forward accepts only what the dnat translated: the listener itself is not open
    assert router.ask("wan", ("tcp", LAN_HOST4, 80, None), ("tcp", LAN_HOST6, 80, None)) == [None, None]


def test_redirect_answers_from_the_router(router: Router) -> None:
    router.apply(ROUTER)
    answers = router.ask("lan", ("udp", WAN_HOST4, 53, LAN_HOST4), ("udp", WAN_HOST4, 5300, LAN_HOST4))
    assert answers == [f"router {LAN_HOST4}", f"wan {ROUTER_WAN4}"]


def test_interface_lists_and_wildcards(router: Router) -> None:
    """lan is [br-lan, "ctr*"]: the LAN host's packets come in on the bridge
    br-lan, the container's on ctr1; dmz0 is in no list."""
    router.apply(ROUTER)
    assert router.ask("lan", ("tcp", WAN_HOST4, 80, LAN_HOST4)) == [f"wan {ROUTER_WAN4}"]
    assert router.ask("ctr", ("tcp", WAN_HOST4, 80, None)) == [f"wan {ROUTER_WAN4}"]
    assert router.ask("dmz", ("tcp", WAN_HOST4, 80, None), ("udp", WAN_HOST4, 5300, None)) == [None, None]


def test_an_included_rule_applies_at_its_position(router: Router) -> None:
    router.apply(ROUTER)
    # 9001: the included accept comes before `drop tcp dport 9001`; 9002: after `drop tcp dport 9002`
    answers = router.ask("lan", ("tcp", WAN_HOST4, 9001, LAN_HOST4), ("tcp", WAN_HOST4, 9002, LAN_HOST4))
    assert answers == [f"wan {ROUTER_WAN4}", None]


def test_port_forward_needs_a_forward_rule_under_state_manual(router: Router) -> None:
    router.apply(MANUAL)
    assert router.ask("lan", ("tcp", WAN_HOST4, 80, LAN_HOST4)) == [f"wan {ROUTER_WAN4}"]
    assert router.ask("wan", ("tcp", ROUTER_WAN4, 8080, None)) == [None]


def test_nat_goes_with_the_policy_and_comes_back_with_rollback(router: Router) -> None:
    router.apply(ROUTER)
    router.apply(NO_NAT)  # forwards everything, translates nothing
    assert router.ask("lan", ("tcp", WAN_HOST4, 80, LAN_HOST4)) == [f"wan {LAN_HOST4}"]
    if router.backend == "iptables-legacy":  # nfc owns the nat table: a policy without NAT empties it
        nat = router.namespaces["router"].run("iptables-legacy-save", "-t", "nat").stdout
        assert "-A " not in nat
    result = router.nfc("rollback")
    assert result.returncode == 0, result.stderr
    router.applied = ROUTER
    assert router.ask("lan", ("tcp", WAN_HOST4, 80, LAN_HOST4)) == [f"wan {ROUTER_WAN4}"]


def test_a_refused_load_leaves_the_translations_in_force(router: Router) -> None:
    """On iptables-legacy, rules.v6 is refused at commit (CT in the filter
    table passes --test), after rules.v4 emptied the IPv4 nat table: nfc
    puts every table back. On nft the kernel refuses the file as a whole."""
    router.apply(ROUTER)
    artifact = router.home / f"refused-{router.backend}"
    compiled = run_nfc("compile", str(router.write(NO_NAT)), "-b", router.backend, "-o", str(artifact))
    assert compiled.returncode == 0, compiled.stderr
    if router.backend == "iptables-legacy":
        name, right, wrong = RULES_V6, "-j ACCEPT", "-j CT --notrack"
    else:
        name, right, wrong = RULESET, "accept comment", "acept comment"
    path = artifact / name
    path.write_text(path.read_text().replace(right, wrong, 1))
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["artifacts"][name] = hashlib.sha256(path.read_bytes()).hexdigest()
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    result = router.nfc("apply", str(artifact))
    assert result.returncode == 3, result.stderr
    assert "still in force" in result.stderr
    assert router.ask("lan", ("tcp", WAN_HOST4, 80, LAN_HOST4), ("tcp", WAN_HOST6, 80, LAN_HOST6)) == [
        f"wan {ROUTER_WAN4}",
        f"wan {ROUTER_WAN6}",
    ]
    assert router.ask("wan", ("tcp", ROUTER_WAN4, 8080, None)) == [f"lan {WAN_HOST4}"]
