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
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nfc.artifacts import MANIFEST
from nfc.backends.iptables import RULES_V6
from nfc.backends.nft import RULESET

from conftest import run_nfc
from lab import TRAFFIC, Namespace, _ip, _kill_namespace_processes, require_lab

pytestmark = pytest.mark.netns

ROUTER_WAN4, WAN_HOST4, ROUTER_SNAT4 = "203.0.113.1", "203.0.113.2", "203.0.113.7"
ROUTER_WAN6, WAN_HOST6 = "2001:db8:ff::1", "2001:db8:ff::2"
LAN_HOST4, LAN_SNATTED4, LAN_HOST6 = "192.168.1.10", "192.168.1.20", "fd00:1::10"
CTR_HOST4, DMZ_HOST4 = "10.88.0.2", "10.99.0.2"
# router side, the router's device with the addresses (a bridge of that side,
# as on home routers, or the side itself), host namespace, (router address,
# host address, prefix length) per family
LINKS = (
    ("lan0", "br-lan", "lan", ("192.168.1.1", LAN_HOST4, 24), ("fd00:1::1", LAN_HOST6, 64)),
    ("ctr1", "ctr1", "ctr", ("10.88.0.1", CTR_HOST4, 24), None),
    ("dmz0", "dmz0", "dmz", ("10.99.0.1", DMZ_HOST4, 24), None),
    ("eth0", "eth0", "wan", (ROUTER_WAN4, WAN_HOST4, 24), (ROUTER_WAN6, WAN_HOST6, 64)),
)
LISTENERS = {  # namespace: (udp ports, tcp ports), each answering "NAMESPACE PEER"
    "wan": ((53, 5300), (80, 9001, 9002)),
    "lan": ((), (80,)),
    "router": ((5353,), ()),
}

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


@dataclass
class Router:
    tag: str
    home: Path
    backend: str
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    listeners: list[subprocess.Popen[str]] = field(default_factory=list)
    applied: str | None = None

    def build(self) -> None:
        lock = {"XTABLES_LOCKFILE": str(self.home / "xtables.lock")}
        for role in ("router", "lan", "ctr", "dmz", "wan"):
            ns = Namespace(f"nfc-{self.tag}-{role}", lock if role == "router" else {})
            self.namespaces[role] = ns
            _ip("netns", "add", ns.name)
            ns.run("ip", "link", "set", "lo", "up")
            ns.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        router = self.namespaces["router"]
        router.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        for side, device, role, v4, v6 in LINKS:
            host = self.namespaces[role]
            router.run("ip", "link", "add", side, "type", "veth", "peer", "name", "eth0", "netns", host.name)
            if device != side:
                router.run("ip", "link", "add", device, "type", "bridge")
                router.run("ip", "link", "set", side, "master", device, "up")
            for ns, dev, index in ((router, device, 0), (host, "eth0", 1)):
                for family in (v4, v6):
                    if family is not None:
                        ns.run("ip", "addr", "add", f"{family[index]}/{family[2]}", "dev", dev, "nodad")
                ns.run("ip", "link", "set", dev, "up")
            if role != "wan":
                host.run("ip", "route", "add", "default", "via", v4[0])
                if v6 is not None:
                    host.run("ip", "-6", "route", "add", "default", "via", v6[0])
        # The WAN host could reach the LAN untranslated: only the firewall stops it.
        self.namespaces["wan"].run("ip", "route", "add", "192.168.1.0/24", "via", ROUTER_WAN4)
        self.namespaces["wan"].run("ip", "-6", "route", "add", "fd00:1::/64", "via", ROUTER_WAN6)
        self.namespaces["lan"].run("ip", "addr", "add", f"{LAN_SNATTED4}/24", "dev", "eth0")
        router.run("ip", "addr", "add", f"{ROUTER_SNAT4}/32", "dev", "eth0")
        for role, (udp, tcp) in LISTENERS.items():
            ports = ["--udp", *map(str, udp), "--tcp", *map(str, tcp)]
            process = self.namespaces[role].popen(
                sys.executable, TRAFFIC, "tell-peer", "--name", role, *ports
            )
            self.listeners.append(process)
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"

    def teardown(self) -> None:
        for process in self.listeners:
            process.kill()
            process.wait(timeout=10)
        for ns in self.namespaces.values():
            _kill_namespace_processes(ns.name)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=30)

    def write(self, policy: str) -> Path:
        """`policy` as router.yaml, with its shared include beside it."""
        directory = self.home / f"policy-{secrets.token_hex(2)}"
        directory.mkdir()
        (directory / "shared-rules.yaml").write_text(SHARED)
        (directory / "router.yaml").write_text(policy)
        return directory / "router.yaml"

    def apply(self, policy: str) -> None:
        """`nfc apply` of `policy` in the router, unless it is the one in force."""
        if self.applied == policy:
            return
        result = self.nfc("apply", str(self.write(policy)), "-b", self.backend)
        assert result.returncode == 0, result.stderr
        self.applied = policy

    def nfc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.namespaces["router"].nfc(*args, "--state-dir", str(self.home / "state"))

    def ask(self, role: str, *questions: tuple[str, str, int, str | None]) -> list[str | None]:
        """What the listener behind each (proto, server, port, source) answered, at once."""
        items = [{"proto": p, "server": s, "port": n, "source": src} for p, s, n, src in questions]
        # a question that gets no answer takes the whole timeout: long enough
        # for a busy machine, short enough to keep the module fast
        command = [sys.executable, TRAFFIC, "ask", json.dumps(items), "--timeout", "2"]
        result = self.namespaces[role].run(*command)
        return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=["nft", "iptables-legacy"])
def router(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """One router lab per backend, shared by this module's tests, removed whatever happens."""
    require_lab()
    lab = Router(secrets.token_hex(3), tmp_path_factory.mktemp("router"), request.param)
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()


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
