"""The namespace labs: a server and two clients joined by veth pairs,

    client A (eth0) ── (eth-a) server (eth-b) ── (eth0) client B

and a home router with four hosts around it (`Router`, below).

Every namespace and link is made fresh for a test (or a module) and deleted
afterwards, also when the test fails. Nothing touches the host's own namespace except
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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
        """The namespaces, then each one's links, addresses and routes in one
        `ip -batch` (hundreds of addresses: one process, not hundreds)."""
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        for ns in self.namespaces:
            _ip("netns", "add", ns.name)
            ns.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        server = ["link set lo up"]
        clients: list[tuple[Namespace, list[str]]] = []
        for client, side, server4, client4, server6, client6, extra4, extra6 in (
            (self.client_a, "eth-a", SERVER_A4, CLIENT_A4, SERVER_A6, CLIENT_A6,
             [OUTSIDER4, *SPREAD4], [OUTSIDER6, *SPREAD6]),
            (self.client_b, "eth-b", SERVER_B4, CLIENT_B4, SERVER_B6, CLIENT_B6, [ADMIN4], []),
        ):  # fmt: skip
            server += [
                f"link add {side} type veth peer name eth0 netns {client.name}",
                f"address add {server4}/24 dev {side}",
                f"address add {server6}/64 dev {side} nodad",
                f"link set {side} up",
            ]
            # the extra client addresses outside the link's own networks are routed to it
            server += [f"route add {a}/32 dev {side}" for a in extra4 if not a.startswith("10.77.")]
            if extra6:
                server.append(f"route add fd00:77:1::/48 dev {side}")
                server += [f"route add {a}/128 dev {side}" for a in extra6 if not a.startswith("fd00:77:")]
            commands = [
                "link set lo up",
                f"address add {client4}/24 dev eth0",
                f"address add {client6}/64 dev eth0 nodad",
                "link set eth0 up",
                *(f"address add {a}/32 dev eth0" for a in extra4),
                *(f"address add {a}/128 dev eth0 nodad" for a in extra6),
                "route add default dev eth0",
                "route add ::/0 dev eth0",
            ]
            clients.append((client, commands))
        _batch(self.server, server)  # first: it makes the clients' ends of the links
        for client, commands in clients:
            _batch(client, commands)

    def attach(
        self, suffix: str, server_dev: str, server: tuple[str, str], peer: tuple[str, str]
    ) -> Namespace:
        """A further namespace on its own veth from the server (an upstream
        server, say), deleted with the lab. `server` and `peer` are each an
        (IPv4, IPv6) pair of the link's /24 and /64."""
        ns = Namespace(f"nfc-{self.tag}-{suffix}")
        _ip("netns", "add", ns.name)
        self.extra.append(ns)
        ns.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        _batch(
            self.server,
            [
                f"link add {server_dev} type veth peer name eth0 netns {ns.name}",
                f"address add {server[0]}/24 dev {server_dev}",
                f"address add {server[1]}/64 dev {server_dev} nodad",
                f"link set {server_dev} up",
            ],
        )
        _batch(
            ns,
            [
                "link set lo up",
                f"address add {peer[0]}/24 dev eth0",
                f"address add {peer[1]}/64 dev eth0 nodad",
                "link set eth0 up",
            ],
        )
        return ns

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

    def probe(
        self, client: Namespace, probes: list[dict], timeout: float = 1.0, patience: float = 0.0
    ) -> list[str]:
        """What became of each probe: all sent at once, a silence waited for
        `timeout` seconds, an answer the probe says it expects (`"answer":
        true`) up to `patience` seconds."""
        wait = ("--timeout", str(timeout), "--patience", str(patience))
        command = (sys.executable, TRAFFIC, "probe", json.dumps(probes), *wait)
        result = client.run(*command, timeout=60 + patience)
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
        tag = secrets.token_hex(3)  # threads may build labs at once: a name each of its own
        new = Lab(tag, tmp_path / f"lab-{tag}" / "state")
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


# --------------------------------------------------------------------------
# the router lab
#
#     lan host (eth0) ── (lan0 in bridge br-lan) ─┐
#     ctr host (eth0) ── (ctr1) ──────────────────┤ router (eth0) ── (eth0) wan host
#     dmz host (eth0) ── (dmz0) ──────────────────┘

ROUTER_WAN4, WAN_HOST4, ROUTER_SNAT4 = "203.0.113.1", "203.0.113.2", "203.0.113.7"
ROUTER_WAN6, WAN_HOST6 = "2001:db8:ff::1", "2001:db8:ff::2"
LAN_HOST4, LAN_SNATTED4, LAN_HOST6 = "192.168.1.10", "192.168.1.20", "fd00:1::10"
CTR_HOST4, DMZ_HOST4 = "10.88.0.2", "10.99.0.2"
# router side, the router's device with the addresses (a bridge of that side,
# as on home routers, or the side itself), host namespace, (router address,
# host address, prefix length) per family
ROUTER_LINKS = (
    ("lan0", "br-lan", "lan", ("192.168.1.1", LAN_HOST4, 24), ("fd00:1::1", LAN_HOST6, 64)),
    ("ctr1", "ctr1", "ctr", ("10.88.0.1", CTR_HOST4, 24), None),
    ("dmz0", "dmz0", "dmz", ("10.99.0.1", DMZ_HOST4, 24), None),
    ("eth0", "eth0", "wan", (ROUTER_WAN4, WAN_HOST4, 24), (ROUTER_WAN6, WAN_HOST6, 64)),
)
ROUTER_LISTENERS = {  # namespace: (udp ports, tcp ports), each answering "NAMESPACE PEER"
    "wan": ((53, 5300), (80, 9001, 9002)),
    "lan": ((), (80,)),
    "router": ((5353,), ()),
}
# a question through the router: (proto, server, port, source: None for the asking host's own address)
Question = tuple[str, str, int, str | None]
Asked = tuple[str, str, str, int, str | None]  # (asking host, *question)


@dataclass
class Router:
    tag: str
    home: Path
    backend: str
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    listeners: list[subprocess.Popen[str]] = field(default_factory=list)
    applied: str | None = None  # the policy in force, as `apply` last applied it
    include: str = ""  # what a policy's `{include: shared-rules.yaml}` splices in

    def build(self) -> None:
        """The namespaces, then each one's links, addresses and routes in one `ip -batch`."""
        lock = {"XTABLES_LOCKFILE": str(self.home / "xtables.lock")}
        for role in ("router", "lan", "ctr", "dmz", "wan"):
            ns = Namespace(f"nfc-{self.tag}-{role}", lock if role == "router" else {})
            self.namespaces[role] = ns
            _ip("netns", "add", ns.name)
            settings = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
            if role == "router":
                settings += ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
            ns.run("sysctl", "-qw", *settings)
        commands: dict[str, list[str]] = {role: ["link set lo up"] for role in self.namespaces}
        router = commands["router"]
        for side, device, role, v4, v6 in ROUTER_LINKS:
            router.append(f"link add {side} type veth peer name eth0 netns {self.namespaces[role].name}")
            if device != side:
                router += [f"link add {device} type bridge", f"link set {side} master {device} up"]
            for mine, dev, index in ((router, device, 0), (commands[role], "eth0", 1)):
                mine += [f"address add {f[index]}/{f[2]} dev {dev} nodad" for f in (v4, v6) if f is not None]
                mine.append(f"link set {dev} up")
            if role != "wan":
                commands[role] += [f"route add default via {v4[0]}"]
                commands[role] += [f"route add ::/0 via {v6[0]}"] if v6 is not None else []
        # The WAN host could reach the LAN untranslated: only the firewall stops it.
        commands["wan"] += [f"route add 192.168.1.0/24 via {ROUTER_WAN4}"]
        commands["wan"] += [f"route add fd00:1::/64 via {ROUTER_WAN6}"]
        commands["lan"].append(f"address add {LAN_SNATTED4}/24 dev eth0")
        router.append(f"address add {ROUTER_SNAT4}/32 dev eth0")
        for role, batch in commands.items():  # the router first: it makes the hosts' ends of the links
            _batch(self.namespaces[role], batch)
        for role, (udp, tcp) in ROUTER_LISTENERS.items():
            self.listen(role, role, udp, tcp)

    def listen(self, role: str, name: str, udp: Iterable[int], tcp: Iterable[int]) -> None:
        """A listener in `role`'s namespace that answers as `name`, with the peer it saw."""
        ports = ["--udp", *map(str, udp), "--tcp", *map(str, tcp)]
        process = self.namespaces[role].popen(sys.executable, TRAFFIC, "tell-peer", "--name", name, *ports)
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
        """`policy` as router.yaml, with `include` beside it as shared-rules.yaml."""
        directory = self.home / f"policy-{secrets.token_hex(2)}"
        directory.mkdir()
        (directory / "shared-rules.yaml").write_text(self.include)
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

    def ask(self, role: str, *questions: Question, answered: Sequence[bool] = ()) -> list[str | None]:
        """What the listener behind each question answered, all asked at once.
        A question that gets no answer takes the whole timeout, long enough
        for a busy machine; one that `answered` says will be answered is
        waited for longer, so that a slow answer is not taken for silence."""
        items = [{"proto": p, "server": s, "port": n, "source": src} for p, s, n, src in questions]
        for item, expected in zip(items, answered, strict=False):
            item["answer"] = expected
        command = [sys.executable, TRAFFIC, "ask", json.dumps(items), "--timeout", "2", "--patience", "20"]
        result = self.namespaces[role].run(*command)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def ask_everyone(
        self, questions: Sequence[Asked], answered: Sequence[bool] = ()
    ) -> list[str | None]:
        """The answer to each (asking host, *question), in order: the hosts
        ask at once, each all of its own questions at once."""
        roles = sorted({q[0] for q in questions})
        flags = list(answered) or [False] * len(questions)
        with ThreadPoolExecutor(len(roles)) as pool:
            futures = {
                role: pool.submit(
                    self.ask,
                    role,
                    *[q[1:] for q in questions if q[0] == role],
                    answered=[f for q, f in zip(questions, flags, strict=True) if q[0] == role],
                )
                for role in roles
            }
            answers = {role: iter(future.result()) for role, future in futures.items()}
        return [next(answers[q[0]]) for q in questions]


@contextlib.contextmanager
def router_labs(home: Path, backends: dict[str, str]) -> Iterator[dict[str, Router]]:
    """A router lab per name in `backends` (name: the backend nfc applies
    with there), built side by side and removed whatever happens."""
    require_lab()
    routers = {name: Router(secrets.token_hex(3), home / name, backend) for name, backend in backends.items()}
    try:
        for router in routers.values():
            router.home.mkdir(parents=True)
        with ThreadPoolExecutor(len(routers)) as pool:
            for built in [pool.submit(router.build) for router in routers.values()]:
                built.result()
        yield routers
    finally:
        for router in routers.values():
            router.teardown()
