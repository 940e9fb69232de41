"""Real DNS software in the namespace lab: dnsmasq as an authoritative
server or as a forwarding resolver, dnsperf and dig as its clients, and
dnsperf's own report read back.

dnsmasq runs in the foreground (`-k`) with no configuration but its command
line: no /etc/resolv.conf, no /etc/hosts, so that it never asks anything
outside the lab. Every process started here is the lab's and dies with it."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import require_tools
from lab import Lab, Namespace, wait_until

# Debian: dnsmasq-base, dnsperf, bind9-dnsutils, and conntrack to list the table
TOOLS = ("dnsmasq", "dnsperf", "dig", "conntrack")

ZONE = "example.test"
WWW = f"www.{ZONE}"
WWW4, WWW6 = "10.77.9.9", "fd00:77:9::9"  # answers only: nothing has these addresses
MISSING = f"nope.{ZONE}"  # in the zone but without records: NXDOMAIN
BIG = f"big.{ZONE}"
# Six 200-byte TXT strings: an answer of about 1,300 bytes, over the 512 of
# a query without EDNS, so that the server sets TC and the client retries
# over TCP.
BIG_TXT = ["x" * 200] * 6
# Twelve 250-byte strings: about 3,100 bytes, which fit an EDNS buffer of
# 4,096 but not one Ethernet frame, so the answer travels over UDP in IP
# fragments.
HUGE = f"huge.{ZONE}"
HUGE_TXT = ["y" * 250] * 12
EDNS_MAX = 4096
# What dnsperf asks, in turn: one name the zone has, one it has not.
QUERIES = f"{WWW} A\n{MISSING} A\n"


def require_dns_software() -> None:
    require_tools(*TOOLS)


def authoritative(interfaces: list[str]) -> list[str]:
    """dnsmasq's arguments to serve the zone authoritatively on these interfaces."""
    return [
        f"--auth-server=ns.{ZONE},{','.join(interfaces)}",
        f"--auth-zone={ZONE}",
        f"--host-record={WWW},{WWW4},{WWW6}",
        f"--txt-record={BIG},{','.join(BIG_TXT)}",
        f"--txt-record={HUGE},{','.join(HUGE_TXT)}",
        f"--edns-packet-max={EDNS_MAX}",
    ]


def resolver(upstream: str, interfaces: list[str]) -> list[str]:
    """dnsmasq's arguments to forward every query to upstream. With no
    cache each query the resolver answers is one it asked upstream, so the
    upstream answers' path carries the whole load."""
    return [
        f"--server={upstream}",
        "--cache-size=0",
        f"--edns-packet-max={EDNS_MAX}",
        *(f"--interface={name}" for name in interfaces),
        "--bind-interfaces",
    ]


def start_dnsmasq(lab: Lab, ns: Namespace, arguments: list[str], probe: str) -> subprocess.Popen[str]:
    """dnsmasq in ns, ready once it answers `probe` (an address of ns, asked from ns)."""
    log = lab.state_dir.parent / f"dnsmasq-{ns.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    process = ns.popen(
        "dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--pid-file=",
        "--user=root", f"--log-facility={log}", *arguments,
    )  # fmt: skip
    lab.servers.append(process)
    ready = wait_until(lambda: process.poll() is not None or _answers(ns, probe), timeout=10)
    assert ready and process.poll() is None, f"dnsmasq did not start: {_read(log)}"
    return process


def _answers(ns: Namespace, server: str) -> bool:
    result = ns.run("dig", "+time=1", "+tries=1", f"@{server}", WWW, timeout=5, check=False)
    return "status:" in result.stdout


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else "(no log)"


def dig(ns: Namespace, server: str, *args: str) -> subprocess.CompletedProcess[str]:
    return ns.run("dig", "+time=2", "+tries=2", f"@{server}", *args, timeout=20)


def udp_datagrams_received(ns: Namespace) -> int:
    """The IPv4 UDP datagrams ns has received (Udp InDatagrams of /proc/net/snmp)."""
    header, values = [
        line.split()
        for line in ns.run("cat", "/proc/net/snmp").stdout.splitlines()
        if line.startswith("Udp:")
    ]
    return int(values[header.index("InDatagrams")])


@dataclass(frozen=True)
class PerfReport:
    """What dnsperf says it did ("Statistics:" at the end of its output)."""

    sent: int
    completed: int
    lost: int
    rcodes: dict[str, int]
    qps: float

    def __str__(self) -> str:
        codes = ", ".join(f"{code} {count}" for code, count in sorted(self.rcodes.items()))
        return f"sent {self.sent}, completed {self.completed}, lost {self.lost} ({codes}), {self.qps:.0f} qps"


def parse_report(output: str) -> PerfReport:
    def number(label: str) -> str:
        match = re.search(rf"^\s*{label}:\s+([\d.]+)", output, re.MULTILINE)
        assert match, f"dnsperf's report has no '{label}':\n{output}"
        return match.group(1)

    codes = re.search(r"^\s*Response codes:\s+(.*)$", output, re.MULTILINE)
    rcodes = {
        code: int(count) for code, count in re.findall(r"(\w+) (\d+) \(", codes.group(1) if codes else "")
    }
    return PerfReport(
        sent=int(number("Queries sent")),
        completed=int(number("Queries completed")),
        lost=int(number("Queries lost")),
        rcodes=rcodes,
        qps=float(number("Queries per second")),
    )


def dnsperf_command(
    lab: Lab,
    server: str,
    *,
    seconds: float,
    rate: int,
    clients: int = 1,
    source: str | None = None,
    outstanding: int = 100,
) -> list[str]:
    """dnsperf to server: `rate` queries a second for `seconds`, from
    `clients` sockets (each its own source port), at most `outstanding`
    unanswered at a time; a query not answered within a second is lost."""
    queries = lab.state_dir.parent / "queries.txt"
    queries.parent.mkdir(parents=True, exist_ok=True)
    queries.write_text(QUERIES)
    command = ["dnsperf", "-s", server, "-d", str(queries), "-l", str(seconds), "-Q", str(rate)]
    command += ["-c", str(clients), "-q", str(outstanding), "-t", "1"]
    return [*command, "-a", source] if source else command


def collect_report(process: subprocess.Popen[str]) -> PerfReport:
    """The report of a dnsperf started with Namespace.popen(*dnsperf_command(...))."""
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return parse_report(out)


def dnsperf(lab: Lab, ns: Namespace, server: str, **options: Any) -> PerfReport:
    """dnsperf_command(...) run in ns, to its end."""
    return collect_report(ns.popen(*dnsperf_command(lab, server, **options)))
