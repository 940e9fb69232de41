"""Real web software in the namespace labs: nginx as the server, wrk and ab
as its load clients, and their own reports read back.

nginx runs in the foreground (`daemon off`) with a configuration of its own
in a temporary directory (pid file, logs and temporary files there too),
listening only on the lab addresses it is given: never the system nginx,
never the host's addresses. Every process started here dies with its lab.

Also the router of policies/router.yaml in namespaces, with the interface
names that policy uses:

    LAN host (eth0) ── (eth1) router (eth0) ── (eth0) WAN host

The LAN host is the web server of the policy's port forward
(192.168.1.10:80), the WAN host a web server on the internet."""

from __future__ import annotations

import re
import secrets
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from conftest import ROOT, missing_prerequisite, require_tools
from lab import SERVER_A4, SERVER_A6, Lab, Namespace, _batch, _ip, _kill_namespace_processes, wait_until

# Debian: nginx-light, wrk, apache2-utils (ab), and conntrack to list the table
TOOLS = ("wrk", "ab", "conntrack")
# nginx is in /usr/sbin, which a non-root PATH lacks
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
BODY = "nfc"  # what every nginx of the labs answers, with its own name
BIG = 256 * 1024  # the size of /big: a download of full-sized segments
# nginx's log of each request: who asked (as nginx saw it), on which port, and the status
LOG_FORMAT = "$remote_addr $server_port $status"

WEB = ROOT / "policies" / "web-notrack.yaml"
ROUTER = ROOT / "policies" / "router.yaml"
WEB_PORTS = (80, 81, 82)  # web-notrack.yaml's $web: opened and untracked
CLOSED = 8080  # the web server serves it too; web-notrack.yaml does not open it


def require_web_software() -> None:
    require_tools(*TOOLS)
    if not Path(NGINX).is_file():
        missing_prerequisite("'nginx' is not installed (make install sets it up: nginx-light)")


def nginx_config(directory: Path, name: str, listen: list[str]) -> str:
    """An nginx that answers 200 with its name on each `ADDRESS:PORT` of
    `listen`, and /big with BIG bytes, logging every request (LOG_FORMAT)
    under `directory`."""
    listens = "\n".join(f"        listen {address};" for address in listen)
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # `user root`: the namespace tests run as root, and minimal images have
    # no `nobody` for nginx's default. Keep-alive connections are never
    # closed by the server during a run, so that wrk's connections are the
    # only ones it opens.
    return f"""daemon off;
master_process on;
worker_processes 1;
user root;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    log_format peers '{LOG_FORMAT}';
    access_log {directory / "access.log"} peers;
{temp}
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server {{
{listens}
        location / {{
            default_type text/plain;
            return 200 "{BODY} {name}\\n";
        }}
        location = /big {{
            default_type application/octet-stream;
            alias {directory / "big"};
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """One nginx in a namespace, started by `start` and stopped by `stop`."""

    ns: Namespace
    directory: Path
    name: str
    listen: list[str]
    process: subprocess.Popen[str] | None = None

    def start(self) -> Nginx:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "nginx.conf"
        config.write_text(nginx_config(self.directory, self.name, self.listen))
        (self.directory / "big").write_bytes(bytes(range(256)) * (BIG // 256))
        # -e: the error log from the start on, not the compiled-in one of the system nginx
        command = [
            NGINX,
            "-p",
            str(self.directory),
            "-c",
            str(config),
            "-e",
            str(self.directory / "error.log"),
        ]
        self.process = self.ns.popen(*command)
        ports = {address.rsplit(":", 1)[1] for address in self.listen}
        ready = wait_until(lambda: self.process_ended() or self._listening(ports), timeout=10, interval=0.1)
        assert ready and not self.process_ended(), f"nginx did not start: {self.errors()}"
        return self

    def process_ended(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def _listening(self, ports: set[str]) -> bool:
        sockets = self.ns.run("ss", "-Hltn", check=False).stdout.split()
        return all(any(word.endswith(f":{port}") for word in sockets) for port in ports)

    def stop(self) -> None:
        """Fast shutdown (SIGTERM to the master, which stops its worker)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def errors(self) -> str:
        log = self.directory / "error.log"
        stderr = (
            self.process.stderr.read()
            if self.process_ended() and self.process and self.process.stderr
            else ""
        )
        return (log.read_text() if log.exists() else "(no log)") + stderr

    def requests(self) -> list[tuple[str, str, str]]:
        """Every request nginx has logged: (peer, port, status)."""
        log = self.directory / "access.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [(peer, port, status) for peer, port, status in (line.split() for line in lines)]

    def peers(self, port: int) -> Counter[str]:
        """How many requests to `port` each peer made, as nginx saw the peer."""
        return Counter(peer for peer, logged, _ in self.requests() if logged == str(port))

    def statuses(self) -> Counter[str]:
        return Counter(status for _, _, status in self.requests())


@dataclass(frozen=True)
class LoadReport:
    """What a load client says it did: requests completed, the responses not
    2xx (wrk counts 3xx with 2xx; nginx here answers only 200), socket
    errors (connect, read, write, timeout) and the rate."""

    tool: str
    requests: int
    non_2xx: int
    socket_errors: int
    rate: float

    def __str__(self) -> str:
        return (
            f"{self.tool}: {self.requests} requests, {self.non_2xx} non-2xx, "
            f"{self.socket_errors} socket errors, {self.rate:.0f} requests/s"
        )


def _number(pattern: str, output: str, default: int | None = None) -> str:
    match = re.search(pattern, output, re.MULTILINE)
    if match is None:
        assert default is not None, f"no {pattern!r} in:\n{output}"
        return str(default)
    return match.group(1)


def parse_wrk(output: str) -> LoadReport:
    """wrk's summary; "Socket errors:" and "Non-2xx or 3xx responses:" are
    printed only when not zero."""
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return LoadReport(
        tool="wrk",
        requests=int(_number(r"^\s*(\d+) requests in ", output)),
        non_2xx=int(_number(r"Non-2xx or 3xx responses: (\d+)", output, default=0)),
        socket_errors=sum(map(int, socket_errors.groups())) if socket_errors else 0,
        rate=float(_number(r"^Requests/sec:\s+([\d.]+)", output)),
    )


def parse_ab(output: str) -> LoadReport:
    """ab's summary; "Non-2xx responses:" is printed only when not zero.
    Its failed requests (connect, receive, length, exceptions) are the
    socket errors."""
    return LoadReport(
        tool="ab",
        requests=int(_number(r"^Complete requests:\s+(\d+)", output)),
        non_2xx=int(_number(r"^Non-2xx responses:\s+(\d+)", output, default=0)),
        socket_errors=int(_number(r"^Failed requests:\s+(\d+)", output)),
        rate=float(_number(r"^Requests per second:\s+([\d.]+)", output)),
    )


def stateful_control(directory: Path) -> Path:
    """web-notrack.yaml without its conntrack section: the same rules, tracked."""
    policy = yaml.safe_load(WEB.read_text())
    assert policy.pop("conntrack")["notrack"], "web-notrack.yaml has no notrack entry"
    policy["name"] = "control-web-stateful"
    control = directory / "control-web-stateful.yaml"
    control.write_text(yaml.safe_dump(policy, sort_keys=False))
    return control


def serve_web(lab: Lab, directory: Path) -> Nginx:
    """nginx in the lab's server on the web ports and CLOSED (IPv4), and the
    last web port over IPv6, on client A's side; stopped with the lab."""
    listen = [f"{SERVER_A4}:{port}" for port in (*WEB_PORTS, CLOSED)] + [f"[{SERVER_A6}]:{WEB_PORTS[-1]}"]
    nginx = Nginx(lab.server, directory, "web", listen).start()
    assert nginx.process is not None
    lab.servers.append(nginx.process)
    return nginx


def url(address: str, port: int, path: str = "/") -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}{path}"


def wrk_command(address: str, port: int, *, connections: int = 20, seconds: int = 2) -> list[str]:
    """wrk: `connections` keep-alive connections (one thread) for `seconds`."""
    return ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", url(address, port)]


def wrk(ns: Namespace, address: str, port: int, *, connections: int = 20, seconds: int = 2) -> LoadReport:
    """wrk_command(...) run in ns, to its end."""
    result = ns.run(
        *wrk_command(address, port, connections=connections, seconds=seconds), timeout=seconds + 30
    )
    return parse_wrk(result.stdout)


def ab_command(
    address: str,
    port: int,
    *,
    requests: int | None = None,
    seconds: int | None = None,
    concurrency: int = 10,
    keep_alive: bool = False,
    path: str = "/",
) -> list[str]:
    """ab: `requests` requests for `path` (or as many as `seconds` allow),
    `concurrency` at a time, each on a connection of its own (HTTP/1.0,
    closed by the server) unless `keep_alive`. -r: a socket error is
    counted, not the end of the run; an answer shorter than the first is a
    failed request too."""
    command = ["ab", "-q", "-r", "-s", "5", "-c", str(concurrency)]
    command += ["-n", str(requests)] if requests is not None else []
    command += ["-t", str(seconds)] if seconds is not None else []
    command += ["-k"] if keep_alive else []
    return [*command, url(address, port, path)]


def ab(
    ns: Namespace,
    address: str,
    port: int,
    *,
    requests: int,
    concurrency: int = 10,
    keep_alive: bool = False,
    path: str = "/",
) -> LoadReport:
    """ab_command(...) for `requests` requests, run in ns to its end."""
    command = ab_command(
        address, port, requests=requests, concurrency=concurrency, keep_alive=keep_alive, path=path
    )
    return parse_ab(ns.run(*command, timeout=60).stdout)


def collect(process: subprocess.Popen[str], parse: Callable[[str], LoadReport]) -> LoadReport:
    """The report of a load client started with Namespace.popen(*wrk_command(...)) or ab_command."""
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return parse(out)


def conntrack_entries(ns: Namespace, *filters: str) -> list[str]:
    """The TCP entries of ns's conntrack table that match conntrack's -L `filters`."""
    result = ns.run("conntrack", "-L", "-p", "tcp", *filters, check=False)
    return [line for line in result.stdout.splitlines() if line.startswith("tcp")]


# --------------------------------------------------------------------------
# the router of policies/router.yaml

ROUTER_LAN4, LAN4 = "192.168.1.1", "192.168.1.10"  # the port forward's target
ROUTER_WAN4, WAN4 = "203.0.113.1", "203.0.113.2"
FORWARDED = 8080  # the router's port that router.yaml forwards to LAN4:80
UNFORWARDED = 81  # a port the LAN web server also serves, which nothing forwards


@dataclass
class WebRouter:
    """The router, its LAN and WAN hosts, and their nginx servers."""

    home: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    router: Namespace = field(init=False)
    lan: Namespace = field(init=False)
    wan: Namespace = field(init=False)
    servers: list[Nginx] = field(default_factory=list)

    def __post_init__(self) -> None:
        lock = {"XTABLES_LOCKFILE": str(self.home / "xtables.lock")}
        self.router = Namespace(f"nfc-{self.tag}-r", lock)
        self.lan = Namespace(f"nfc-{self.tag}-l")
        self.wan = Namespace(f"nfc-{self.tag}-w")

    @property
    def namespaces(self) -> list[Namespace]:
        return [self.router, self.lan, self.wan]

    def build(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        for ns in self.namespaces:
            _ip("netns", "add", ns.name)
        router = ["link set lo up"]
        for side, host, router4 in (("eth1", self.lan, ROUTER_LAN4), ("eth0", self.wan, ROUTER_WAN4)):
            router += [
                f"link add {side} type veth peer name eth0 netns {host.name}",
                f"address add {router4}/24 dev {side}",
                f"link set {side} up",
            ]
        _batch(self.router, router)
        lan = ["link set lo up", f"address add {LAN4}/24 dev eth0", "link set eth0 up"]
        _batch(self.lan, [*lan, f"route add default via {ROUTER_LAN4}"])
        wan = ["link set lo up", f"address add {WAN4}/24 dev eth0", "link set eth0 up"]
        # The WAN host could reach the LAN untranslated: only the firewall stops it.
        _batch(self.wan, [*wan, f"route add 192.168.1.0/24 via {ROUTER_WAN4}"])
        self.router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")

    def serve(self, ns: Namespace, name: str, listen: list[str]) -> Nginx:
        server = Nginx(ns, self.home / f"nginx-{name}", name, listen)
        self.servers.append(server)
        return server.start()

    def apply(self, policy: Path, backend: str) -> None:
        result = self.router.nfc("apply", str(policy), "-b", backend, "--state-dir", str(self.home / "state"))
        assert result.returncode == 0, result.stderr

    def teardown(self) -> None:
        for server in self.servers:
            server.stop()
        for ns in self.namespaces:
            _kill_namespace_processes(ns.name)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=30)
