"""Living beside Docker (nfc-policy(5), FORWARD BESIDE OTHER TABLES): a
Docker-like host in namespaces.

    container (eth0) ── vethc ── [docker0] host (eth0) ── (eth0) outside

The host holds Docker's own rules as Docker's iptables-nft writes them
(`table ip filter` with FORWARD and DOCKER-USER, `table ip nat` with
MASQUERADE and the DNAT of a published port, host 8080 → container 80).
A forward policy of nfc that drops without accepting the containers cuts
both flows, whatever Docker's table accepts, and apply and doctor say so,
naming Docker's tables; policies/docker-host.yaml lets both flows through
and draws no warning; Docker's tables are the same after apply and after
rollback. Every namespace is removed afterwards, also on failure."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT
from lab import TRAFFIC, Namespace, _batch, require_lab

pytestmark = pytest.mark.netns

DOCKER_HOST = ROOT / "policies" / "docker-host.yaml"
HOST_BRIDGE4, CONTAINER4 = "172.17.0.1", "172.17.0.2"
HOST_UPLINK4, OUTSIDE4 = "10.78.0.1", "10.78.0.2"
PUBLISHED, CONTAINER_PORT, OUTSIDE_PORT = 8080, 80, 8000
FOREIGN = ("table ip filter", "table ip nat")
TO = f"{CONTAINER4}:{CONTAINER_PORT}"

# `iptables-save` of a Docker host with one container publishing 8080:80.
DOCKER_RULES = f"""\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s {CONTAINER4}/32 -d {CONTAINER4}/32 -p tcp -m tcp --dport {CONTAINER_PORT} -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport {PUBLISHED} -j DNAT --to-destination {TO}
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d {CONTAINER4}/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport {CONTAINER_PORT} -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"""

# A host policy written without the containers in mind: forward drops all.
NAIVE = """\
nfc: 1
name: naive-docker-host
input:
  policy: drop
  rules:
    - accept tcp dport ssh
forward:
  policy: drop
output:
  policy: accept
"""


@dataclass
class DockerLab:
    tag: str
    state_dir: Path
    host: Namespace = field(init=False)
    container: Namespace = field(init=False)
    outside: Namespace = field(init=False)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        lock = {"XTABLES_LOCKFILE": str(self.state_dir.parent / "xtables.lock")}
        self.host = Namespace(f"nfc-{self.tag}-h", lock)
        self.container = Namespace(f"nfc-{self.tag}-c")
        self.outside = Namespace(f"nfc-{self.tag}-o")

    @property
    def namespaces(self) -> list[Namespace]:
        return [self.host, self.container, self.outside]

    def build(self) -> None:
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True, timeout=30)
        host, container, outside = self.host, self.container, self.outside
        _batch(host, [
            "link set lo up",
            "link add docker0 type bridge",
            f"address add {HOST_BRIDGE4}/16 dev docker0",
            f"link add vethc type veth peer name eth0 netns {container.name}",
            f"link add eth0 type veth peer name eth0 netns {outside.name}",
            "link set vethc master docker0",
            f"address add {HOST_UPLINK4}/24 dev eth0",
            *(f"link set {dev} up" for dev in ("docker0", "vethc", "eth0")),
        ])  # fmt: skip
        _batch(container, [
            "link set lo up",
            f"address add {CONTAINER4}/16 dev eth0",
            "link set eth0 up",
            f"route add default via {HOST_BRIDGE4}",
        ])  # fmt: skip
        _batch(outside, [
            "link set lo up",
            f"address add {OUTSIDE4}/24 dev eth0",
            "link set eth0 up",
            f"route add 172.17.0.0/16 via {HOST_UPLINK4}",  # a neighbour on the link
        ])  # fmt: skip
        host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        result = subprocess.run(
            ["ip", "netns", "exec", host.name, "iptables-nft-restore"],
            input=DOCKER_RULES, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        self.serve(container, CONTAINER_PORT)
        self.serve(outside, OUTSIDE_PORT)

    def serve(self, ns: Namespace, port: int) -> None:
        process = ns.popen(sys.executable, TRAFFIC, "serve", "--tcp", str(port))
        self.servers.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"

    def teardown(self) -> None:
        for process in self.servers:
            process.kill()
            process.wait(timeout=10)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=30)

    def nfc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.host.nfc(*args, "--state-dir", str(self.state_dir))

    def apply(self, policy: Path, backend: str) -> subprocess.CompletedProcess[str]:
        return self.nfc("apply", str(policy), "-b", backend)

    def container_reaches_outside(self) -> bool:
        return self.container.traffic(
            "connect", "--server", OUTSIDE4, "--port", str(OUTSIDE_PORT), "--source", CONTAINER4
        )["connected"] == 1  # fmt: skip

    def outside_reaches_published_port(self) -> bool:
        return self.outside.traffic(
            "connect", "--server", HOST_UPLINK4, "--port", str(PUBLISHED), "--source", OUTSIDE4
        )["connected"] == 1  # fmt: skip

    def outside_reaches_container_directly(self) -> bool:
        """To the container's own address, not through the published port."""
        return self.outside.traffic(
            "connect", "--server", CONTAINER4, "--port", str(CONTAINER_PORT), "--source", OUTSIDE4
        )["connected"] == 1  # fmt: skip

    def foreign_tables(self) -> dict[str, str]:
        """Docker's tables as the kernel lists them, counters left out."""
        return {table: self.host.nft("-s", "list", *table.split()) for table in FOREIGN}


@pytest.fixture
def docker_lab(tmp_path: Path) -> Iterator[DockerLab]:
    require_lab()
    lab = DockerLab(secrets.token_hex(3), tmp_path / "lab" / "state")
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()


@pytest.fixture
def naive(tmp_path: Path) -> Path:
    policy = tmp_path / "naive.yaml"
    policy.write_text(NAIVE)
    return policy


def test_docker_rules_alone_forward_both_ways(docker_lab: DockerLab) -> None:
    """The lab itself: Docker's rules let the container out and the published
    port in, and (as Docker's do) a neighbour on the uplink straight to the
    container's port."""
    assert docker_lab.container_reaches_outside()
    assert docker_lab.outside_reaches_published_port()
    assert docker_lab.outside_reaches_container_directly()


@pytest.mark.parametrize("backend", ["nft", "iptables-legacy"])
def test_the_docker_host_policy_lets_the_containers_work(docker_lab: DockerLab, backend: str) -> None:
    before = docker_lab.foreign_tables()
    applied = docker_lab.apply(DOCKER_HOST, backend)
    assert applied.returncode == 0, applied.stderr
    assert "nfc: warning" not in applied.stderr + applied.stdout
    assert docker_lab.container_reaches_outside()
    assert docker_lab.outside_reaches_published_port()
    # nfc's forward drop still decides what neither rule accepts
    assert not docker_lab.outside_reaches_container_directly()
    doctor = docker_lab.host.nfc("doctor")
    assert doctor.returncode in (0, 1) and "nfc: warning" not in doctor.stderr, doctor.stderr
    assert docker_lab.foreign_tables() == before
    rolled = docker_lab.nfc("rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert docker_lab.foreign_tables() == before


@pytest.mark.parametrize("backend", ["nft", "iptables-legacy"])
def test_a_forward_drop_cuts_docker_off_and_apply_and_doctor_say_so(
    docker_lab: DockerLab, naive: Path, backend: str
) -> None:
    before = docker_lab.foreign_tables()
    applied = docker_lab.apply(naive, backend)
    assert applied.returncode == 0, applied.stderr
    warning = next(line for line in applied.stderr.splitlines() if line.startswith("nfc: warning: "))
    assert "nfc's forward chain drops by policy" in warning
    assert "table ip filter (chain FORWARD; Docker's) accepts forwarded traffic on docker0" in warning
    assert "table ip nat (Docker's) translates destinations (published ports) with dnat" in warning
    assert """'accept iif {docker0, "br-*"}' and 'accept ct status dnat'""" in warning
    assert "nfc: warning" not in applied.stdout
    # the warning is true: Docker's accepts no longer get anything through
    assert not docker_lab.container_reaches_outside()
    assert not docker_lab.outside_reaches_published_port()
    doctor = docker_lab.host.nfc("doctor", "--json")
    assert doctor.returncode in (0, 1), doctor.stderr
    assert warning in doctor.stderr.splitlines()
    assert json.loads(doctor.stdout)["forward_warning"] == warning
    assert docker_lab.foreign_tables() == before

    rolled = docker_lab.nfc("rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert docker_lab.foreign_tables() == before
    assert docker_lab.container_reaches_outside()
    assert docker_lab.outside_reaches_published_port()
