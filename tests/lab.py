"""The namespace lab: a server and two clients joined by veth pairs.

    client A (eth0) ── (eth-a) server (eth-b) ── (eth0) client B

Every namespace and link is made fresh for a test and deleted afterwards,
also when the test fails. Nothing touches the host's own namespace except
creating and deleting these namespaces; traffic goes only to their
addresses. Every command runs with a timeout."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, missing_prerequisite

TRAFFIC = str(Path(__file__).with_name("traffic.py"))

SERVER_A4, CLIENT_A4 = "10.77.1.1", "10.77.1.2"
SERVER_B4, CLIENT_B4 = "10.77.2.1", "10.77.2.2"
SERVER_A6, CLIENT_A6 = "fd00:77:1::1", "fd00:77:1::2"
SERVER_B6, CLIENT_B6 = "fd00:77:2::1", "fd00:77:2::2"
ADMIN4 = "192.0.2.10"  # the flagship policies' $admins, on client B
OUTSIDER4 = "198.51.100.7"  # not in $internal, on client A
OUTSIDER6 = "2001:db8:77::7"
# Many client addresses on A, so that a flood looks like many real clients.
SPREAD4 = [f"10.77.1.{i}" for i in range(10, 210)]
SPREAD6 = [f"fd00:77:1:{i:x}::2" for i in range(1, 201)]  # one per /64


@dataclass
class Namespace:
    name: str
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *command: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} in {self.name}: {result.stderr.strip()}")
        return result

    def popen(self, *command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.name, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **self.env},
        )

    def nfc(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "nfc", *args, timeout=timeout, check=False)

    def nft(self, *args: str) -> str:
        return self.run("nft", *args).stdout

    def conntrack_count(self) -> int:
        result = self.run("cat", "/proc/sys/net/netfilter/nf_conntrack_count", check=False)
        return int(result.stdout) if result.returncode == 0 else 0

    def traffic(self, *args: str, timeout: float = 60) -> dict:
        result = self.run(sys.executable, TRAFFIC, *args, timeout=timeout)
        return json.loads(result.stdout.strip().splitlines()[-1])


@dataclass
class Lab:
    tag: str
    state_dir: Path
    server: Namespace = field(init=False)
    client_a: Namespace = field(init=False)
    client_b: Namespace = field(init=False)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    extra: list[Namespace] = field(default_factory=list)

    def __post_init__(self) -> None:
        # iptables-legacy's lock is a host file; keep the lab's to itself.
        lock = {"XTABLES_LOCKFILE": str(self.state_dir.parent / "xtables.lock")}
        self.server = Namespace(f"nfc-{self.tag}-s", lock)
        self.client_a = Namespace(f"nfc-{self.tag}-a")
        self.client_b = Namespace(f"nfc-{self.tag}-b")

    @property
    def namespaces(self) -> list[Namespace]:
        return [self.server, self.client_a, self.client_b, *self.extra]

    def build(self) -> None:
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        for ns in self.namespaces:
            _ip("netns", "add", ns.name)
            ns.run("ip", "link", "set", "lo", "up")
            ns.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        for client, side, server4, client4, server6, client6 in (
            (self.client_a, "eth-a", SERVER_A4, CLIENT_A4, SERVER_A6, CLIENT_A6),
            (self.client_b, "eth-b", SERVER_B4, CLIENT_B4, SERVER_B6, CLIENT_B6),
        ):
            self.server.run(
                "ip", "link", "add", side, "type", "veth", "peer", "name", "eth0", "netns", client.name
            )
            for ns, dev, v4, v6 in (
                (self.server, side, server4, server6),
                (client, "eth0", client4, client6),
            ):
                ns.run("ip", "addr", "add", f"{v4}/24", "dev", dev)
                ns.run("ip", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
                ns.run("ip", "link", "set", dev, "up")
        self._extra_addresses(self.client_a, "eth-a", [OUTSIDER4, *SPREAD4], [OUTSIDER6, *SPREAD6])
        self._extra_addresses(self.client_b, "eth-b", [ADMIN4], [])

    def attach(
        self, suffix: str, server_dev: str, server: tuple[str, str], peer: tuple[str, str]
    ) -> Namespace:
        """A further namespace on its own veth from the server (an upstream
        server, say), deleted with the lab. `server` and `peer` are each an
        (IPv4, IPv6) pair of the link's /24 and /64."""
        ns = Namespace(f"nfc-{self.tag}-{suffix}")
        _ip("netns", "add", ns.name)
        self.extra.append(ns)
        ns.run("ip", "link", "set", "lo", "up")
        ns.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        self.server.run(
            "ip", "link", "add", server_dev, "type", "veth", "peer", "name", "eth0", "netns", ns.name
        )
        for each, dev, (v4, v6) in ((self.server, server_dev, server), (ns, "eth0", peer)):
            each.run("ip", "addr", "add", f"{v4}/24", "dev", dev)
            each.run("ip", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            each.run("ip", "link", "set", dev, "up")
        return ns

    def _extra_addresses(self, client: Namespace, server_dev: str, v4: list[str], v6: list[str]) -> None:
        commands = [f"address add {a}/32 dev eth0" for a in v4]
        commands += [f"address add {a}/128 dev eth0 nodad" for a in v6]
        _batch(client, commands)
        server_routes = [f"route add {a}/32 dev {server_dev}" for a in v4 if not a.startswith("10.77.")]
        if v6:
            server_routes.append(f"route add fd00:77:1::/48 dev {server_dev}")
            server_routes += [
                f"route add {a}/128 dev {server_dev}" for a in v6 if not a.startswith("fd00:77:")
            ]
        _batch(self.server, server_routes)
        client.run("ip", "route", "add", "default", "dev", "eth0")
        client.run("ip", "-6", "route", "add", "default", "dev", "eth0")

    def teardown(self) -> None:
        for process in self.servers:
            process.kill()
            process.wait(timeout=10)
        for ns in self.namespaces:
            _kill_namespace_processes(ns.name)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=30)

    def start_servers(
        self, udp: tuple[int, ...] = (53, 5353), tcp: tuple[int, ...] = (22, 53, 80, 8080)
    ) -> None:
        process = self.server.popen(
            sys.executable, TRAFFIC, "serve", "--udp", *map(str, udp), "--tcp", *map(str, tcp)
        )
        self.servers.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "ready", process.stderr.read() if process.stderr else line

    def apply(
        self, target: str | Path, *options: str, backend: str = "nft"
    ) -> subprocess.CompletedProcess[str]:
        return self.server.nfc(
            "apply", str(target), "-b", backend, "--state-dir", str(self.state_dir), *options
        )

    def query(self, client: Namespace, server: str, sources: list[str], count: int, **options: float) -> dict:
        args = ["query", "--server", server, "--sources", ",".join(sources), "--count", str(count)]
        for key, value in options.items():
            args += [f"--{key}", str(value)]
        return client.traffic(*args)

    def probe(self, client: Namespace, probes: list[dict], timeout: float = 1.0) -> list[str]:
        result = client.run(sys.executable, TRAFFIC, "probe", json.dumps(probes), "--timeout", str(timeout))
        return json.loads(result.stdout.strip().splitlines()[-1])

    def connects(self, client: Namespace, server: str, port: int, source: str, count: int = 1) -> int:
        result = client.traffic(
            "connect", "--server", server, "--port", str(port), "--source", source, "--count", str(count)
        )
        return result["connected"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _batch(ns: Namespace, commands: list[str]) -> None:
    if not commands:
        return
    result = subprocess.run(
        ["ip", "-n", ns.name, "-batch", "-"],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def _kill_namespace_processes(name: str) -> None:
    result = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10)
    for pid in result.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)


def require_lab() -> None:
    if os.geteuid() != 0:
        missing_prerequisite("the namespace tests need root (ip netns add)")
    for tool in ("ip", "nft", "iptables-legacy-restore", "ip6tables-legacy-restore"):
        if shutil.which(tool) is None:
            missing_prerequisite(f"'{tool}' is not installed (make install sets it up)")


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[[], Lab]]:
    """Builds fresh server/client/client labs, all removed afterwards whatever happens."""
    require_lab()
    built: list[Lab] = []

    def make() -> Lab:
        new = Lab(secrets.token_hex(3), tmp_path / f"lab{len(built)}" / "state")
        built.append(new)
        new.build()
        return new

    try:
        yield make
    finally:
        for each in built:
            each.teardown()


@pytest.fixture
def lab(make_lab: Callable[[], Lab]) -> Lab:
    """A fresh server/client/client lab."""
    return make_lab()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


FLAGSHIP_DIR = ROOT / "policies"
