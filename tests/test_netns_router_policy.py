"""policies/router.yaml as it is, on a router in namespaces with the
interface names it uses:

    LAN host (eth0) ── (eth1) router (eth0) ── (eth0) WAN host

The LAN host is also the web server of the port forward (192.168.1.10:80);
the WAN host holds the admins' address 192.0.2.10 besides its own. On both
backends: the WAN host sees LAN traffic from the router's address (TCP and
UDP), the router's port 8080 reaches the LAN web server with no forward
rule of the policy's, the SSH rule spliced in from
policies/shared/base-rules.yaml lets the admins in and no one else, and
nothing from the WAN reaches the LAN directly. Every namespace is removed
afterwards, also on failure."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT
from lab import TRAFFIC, Namespace, _batch, require_lab

pytestmark = pytest.mark.netns

ROUTER = ROOT / "policies" / "router.yaml"
ROUTER_LAN4, LAN4 = "192.168.1.1", "192.168.1.10"
ROUTER_WAN4, WAN4, ADMIN4 = "203.0.113.1", "203.0.113.2", "192.0.2.10"
WAN_TCP, WAN_UDP = 7000, 7001


class RouterLab:
    def __init__(self, state_dir: Path) -> None:
        tag = secrets.token_hex(3)
        self.state_dir = state_dir
        self.router = Namespace(f"nfc-{tag}-r", {"XTABLES_LOCKFILE": str(state_dir.parent / "xtables.lock")})
        self.lan = Namespace(f"nfc-{tag}-l")
        self.wan = Namespace(f"nfc-{tag}-w")
        self.servers: list[subprocess.Popen[str]] = []

    def build(self) -> None:
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        for ns in (self.router, self.lan, self.wan):
            subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True, timeout=30)
        router = ["link set lo up"]
        for side, host, router4 in (("eth1", self.lan, ROUTER_LAN4), ("eth0", self.wan, ROUTER_WAN4)):
            router += [
                f"link add {side} type veth peer name eth0 netns {host.name}",
                f"address add {router4}/24 dev {side}",
                f"link set {side} up",
            ]
        router.append(f"route add {ADMIN4}/32 dev eth0")
        _batch(self.router, router)
        lan = ["link set lo up", f"address add {LAN4}/24 dev eth0", "link set eth0 up"]
        _batch(self.lan, [*lan, f"route add default via {ROUTER_LAN4}"])
        wan = ["link set lo up", f"address add {WAN4}/24 dev eth0", "link set eth0 up"]
        wan.append(f"address add {ADMIN4}/32 dev eth0")
        wan.append(f"route add 192.168.1.0/24 via {ROUTER_WAN4}")  # to try the LAN directly
        _batch(self.wan, wan)
        self.router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.tell_peer(self.lan, "lan", "--tcp", "80")
        self.tell_peer(self.wan, "wan", "--tcp", str(WAN_TCP), "--udp", str(WAN_UDP))
        self.tell_peer(self.router, "router", "--tcp", "22")

    def tell_peer(self, ns: Namespace, name: str, *ports: str) -> None:
        process = ns.popen(sys.executable, TRAFFIC, "tell-peer", "--name", name, *ports)
        self.servers.append(process)
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"

    def teardown(self) -> None:
        for process in self.servers:
            process.kill()
            process.wait(timeout=10)
        for ns in (self.router, self.lan, self.wan):
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=30)

    def ask(self, ns: Namespace, *questions: tuple[str, str, int, str]) -> list[str | None]:
        asked = [{"proto": p, "server": s, "port": port, "source": src} for p, s, port, src in questions]
        result = ns.run(sys.executable, TRAFFIC, "ask", json.dumps(asked), "--timeout", "1.5")
        return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def router_lab(tmp_path: Path) -> Iterator[RouterLab]:
    require_lab()
    lab = RouterLab(tmp_path / "lab" / "state")
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()


@pytest.mark.parametrize("backend", ["nft", "iptables-legacy"])
def test_the_router_policy_masquerades_and_forwards_a_port(router_lab: RouterLab, backend: str) -> None:
    lab = router_lab
    applied = lab.router.nfc("apply", str(ROUTER), "-b", backend, "--state-dir", str(lab.state_dir))
    assert applied.returncode == 0, applied.stderr
    # masquerade: the WAN host sees the router's address, for TCP and UDP
    out = lab.ask(lab.lan, ("tcp", WAN4, WAN_TCP, LAN4), ("udp", WAN4, WAN_UDP, LAN4))
    assert out == [f"wan {ROUTER_WAN4}", f"wan {ROUTER_WAN4}"]
    answers = lab.ask(
        lab.wan,
        ("tcp", ROUTER_WAN4, 8080, WAN4),  # the port forward, accepted by ct status dnat alone
        ("tcp", ROUTER_WAN4, 22, ADMIN4),  # ssh from the admins: the included rule
        ("tcp", ROUTER_WAN4, 22, WAN4),  # ssh from anyone else
        ("tcp", LAN4, 80, WAN4),  # the LAN host's address, not through the port forward
    )
    assert answers == [f"lan {WAN4}", f"router {ADMIN4}", None, None]
