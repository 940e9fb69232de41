"""`nfc doctor`: is connection tracking the problem here?

It reads what the kernel says about its conntrack table (count, max,
buckets, per-CPU drop counters, 'table full' log lines, UDP timeouts and
the flows in the table), gives a verdict, and prints the policy lines that
fix what it found. What it cannot read it says it skipped."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nfc.ir import Match, Ports, Ruleset
from nfc.space import Space, minus
from nfc.target import Target
from nfc.values import ascii_int

PROC_SYS = Path("/proc/sys/net/netfilter")
STAT_FILE = Path("/proc/net/stat/nf_conntrack")
TABLE_FILE = Path("/proc/net/nf_conntrack")
DROP_COUNTERS = ("drop", "early_drop", "insert_failed")
TABLE_FULL = "table full, dropping packet"
# Older kernels say "table full, dropping packet"; newer ones name the netns.
# [0-9], not \d: the kernel writes ASCII, and anything else must not pass for a number.
KERNEL_TIME = re.compile(r"\[\s*([0-9]+\.[0-9]+)\]")
DEFAULT_LOG_WINDOW = 3600  # seconds of kernel log that count as recent
TABLE_FULL_LINE = re.compile(r"table full(?: in netns (?P<netns>[0-9]+))?, dropping packet")
COUNTER = re.compile(r"([A-Za-z0-9_]+)=([0-9]+)(?!\S)")  # a number to its end, or none
SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?\Z")
HEX = re.compile(r"[0-9A-Fa-f]+\Z")
CRITICAL_FILL = 0.9
DEFAULT_WARN_FILL = 0.75
TOP = 5
EPHEMERAL = "1024-65535"
WELL_KNOWN = 1024  # ports below it are services' own, above it clients' ephemeral ones
# With nothing wrong, a service is worth untracking only once it holds this
# share of the table's room: two ssh sessions are no reason to change a policy.
QUIET_SUGGESTION_SHARE = 0.1


# --------------------------------------------------------------------------
# parsing what the kernel prints (pure functions, tested on captured output)


def parse_conntrack_stats(text: str) -> dict[str, int]:
    """`conntrack -S`: per-CPU key=value lines, summed."""
    totals: Counter[str] = Counter()
    for line in text.splitlines():
        for key, value in COUNTER.findall(line):
            number = ascii_int(value)
            if key != "cpu" and number is not None:
                totals[key] += number
    return dict(totals)


def parse_proc_stats(text: str) -> dict[str, int]:
    """/proc/net/stat/nf_conntrack: a header, then one hex row per CPU."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    header, rows = lines[0], lines[1:]
    totals: Counter[str] = Counter()
    for row in rows:
        for name, value in zip(header, row, strict=False):
            if name == "entries":
                continue  # the same global count on every row
            if HEX.match(value):
                totals[name] += int(value, 16)
    return dict(totals)


@dataclass(frozen=True)
class Flow:
    protocol: str
    src: str
    dst: str
    sport: int | None
    dport: int | None


def parse_flows(text: str) -> list[Flow]:
    """`conntrack -L` or /proc/net/nf_conntrack: the original direction of each entry."""
    flows = []
    for line in text.splitlines():
        words = line.split()
        protocol = next(
            (w for w in words if w in ("tcp", "udp", "icmp", "icmpv6", "sctp", "udplite", "gre")), None
        )
        fields: dict[str, str] = {}
        for key, value in re.findall(r"\b(src|dst|sport|dport)=(\S+)", line):
            fields.setdefault(key, value)  # the first tuple is the original direction
        if protocol is None or "src" not in fields or "dst" not in fields:
            continue
        flows.append(
            Flow(
                protocol,
                _address(fields["src"]),
                _address(fields["dst"]),
                ascii_int(fields.get("sport", "")),
                ascii_int(fields.get("dport", "")),
            )
        )
    return flows


def _address(text: str) -> str:
    """/proc/net/nf_conntrack writes IPv6 in full; `ip` in short. Compare alike."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def count_table_full(
    text: str, netns: str | None = None, since: float | None = None
) -> tuple[int, list[str]]:
    """'table full' lines of the kernel log: those of other namespaces left
    out where the kernel names the namespace, and with `since` (seconds
    after boot) those older than that."""
    lines = []
    for line in text.splitlines():
        found = TABLE_FULL_LINE.search(line)
        if not found or (netns is not None and found["netns"] not in (None, netns)):
            continue
        stamp = KERNEL_TIME.match(line)
        if since is not None and stamp and float(stamp[1]) < since:
            continue
        lines.append(line.strip())
    return len(lines), lines[-3:]


def uptime() -> float | None:
    try:
        seconds = Path("/proc/uptime").read_text(errors="replace").split()[0]
    except (OSError, IndexError):
        return None
    return float(seconds) if SECONDS.match(seconds) else None


def current_netns() -> str | None:
    try:
        return re.sub(r"[^0-9]", "", os.readlink("/proc/self/ns/net")) or None
    except OSError:
        return None


# --------------------------------------------------------------------------
# reading the live system


@dataclass
class Readings:
    count: int | None = None
    max: int | None = None
    buckets: int | None = None
    stats: dict[str, int] = field(default_factory=dict)
    table_full: int | None = None
    table_full_lines: list[str] = field(default_factory=list)
    udp_timeout: int | None = None
    udp_stream_timeout: int | None = None
    flows: list[Flow] = field(default_factory=list)
    local_addresses: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)


def _read_int(path: Path, readings: Readings) -> int | None:
    try:
        number = ascii_int(path.read_text(errors="replace").split()[0])
    except (OSError, IndexError):
        number = None
    if number is None:
        readings.skipped.append(f"{path}: not readable (is nf_conntrack loaded here?)")
    return number


def _run(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        # errors="replace": a byte that is not UTF-8 must not stop the diagnosis
        result = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def read_system(log_window: float = DEFAULT_LOG_WINDOW) -> Readings:
    readings = Readings()
    readings.count = _read_int(PROC_SYS / "nf_conntrack_count", readings)
    readings.max = _read_int(PROC_SYS / "nf_conntrack_max", readings)
    readings.buckets = _read_int(PROC_SYS / "nf_conntrack_buckets", readings)
    readings.udp_timeout = _read_int(PROC_SYS / "nf_conntrack_udp_timeout", readings)
    readings.udp_stream_timeout = _read_int(PROC_SYS / "nf_conntrack_udp_timeout_stream", readings)
    stats = _run(["conntrack", "-S"])
    if stats is not None:
        readings.stats = parse_conntrack_stats(stats)
    else:
        try:
            readings.stats = parse_proc_stats(STAT_FILE.read_text(errors="replace"))
        except OSError:
            readings.skipped.append(
                "per-CPU counters: neither 'conntrack -S' nor /proc/net/stat/nf_conntrack"
            )
    log = _run(["dmesg"])
    if log is None:
        readings.skipped.append("kernel log: dmesg is not readable (needs CAP_SYSLOG)")
    else:
        now = uptime()
        since = now - log_window if now is not None else None
        readings.table_full, readings.table_full_lines = count_table_full(log, current_netns(), since)
    table = _run(["conntrack", "-L"])
    if table is None:
        try:
            table = TABLE_FILE.read_text(errors="replace")
        except OSError:
            readings.skipped.append("flows: neither 'conntrack -L' nor /proc/net/nf_conntrack")
    if table is not None:
        readings.flows = parse_flows(table)
    addresses = _run(["ip", "-o", "addr", "show"])
    if addresses is not None:
        readings.local_addresses = {m.split("/")[0] for m in re.findall(r"inet6? (\S+)", addresses)}
    else:
        readings.skipped.append("local addresses: 'ip' is not available; suggestions assume served traffic")
    return readings


# --------------------------------------------------------------------------
# judging


@dataclass(frozen=True)
class Suggestion:
    entry: str  # a conntrack.notrack entry
    flows: int
    covered: bool | None = None  # by --policy, where given


@dataclass
class Diagnosis:
    readings: Readings
    verdict: str  # OK | WARNING | CRITICAL
    reasons: list[str]
    by_service: list[tuple[str, int]]
    by_source: list[tuple[str, int]]
    suggestions: list[Suggestion]
    suggested_max: int
    max_in_policy: bool | None = None
    forward_warning: str | None = None  # nfc.neighbours: another table's forward accepts cut off

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict == "OK" else 1

    def yaml(self) -> str:
        entries = [s for s in self.suggestions if not s.covered]
        lines = ["conntrack:"]
        if entries:
            lines.append("  notrack:")
            lines += [f"    - {s.entry}" for s in entries]
        if not self.max_in_policy:
            lines.append(f"  max: {self.suggested_max}   # RAM / 16384 / (word bits / 32); or 'max: auto'")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, object]:
        r = self.readings
        return {
            "verdict": self.verdict,
            "reasons": self.reasons,
            "count": r.count,
            "max": r.max,
            "buckets": r.buckets,
            "fill": _fill(r),
            "counters": {k: r.stats.get(k) for k in (*DROP_COUNTERS, "search_restart")},
            "table_full_messages": r.table_full,
            "udp_timeout": r.udp_timeout,
            "udp_stream_timeout": r.udp_stream_timeout,
            "top_services": [{"service": s, "entries": n} for s, n in self.by_service],
            "top_sources": [{"source": s, "entries": n} for s, n in self.by_source],
            "suggestions": [
                {"notrack": s.entry, "entries": s.flows, "covered": s.covered} for s in self.suggestions
            ],
            "suggested_max": self.suggested_max,
            "skipped": r.skipped,
            "forward_warning": self.forward_warning,
            "yaml": self.yaml(),
        }

    def text(self) -> str:
        r = self.readings
        fill = _fill(r)
        out = [f"verdict: {self.verdict}"]
        out += [f"  - {reason}" for reason in self.reasons]
        out.append(
            f"conntrack: {r.count if r.count is not None else '?'} entries of max "
            f"{r.max if r.max is not None else '?'}"
            + (f" ({fill:.0%} full)" if fill is not None else "")
            + f", {r.buckets if r.buckets is not None else '?'} buckets"
        )
        counters = ", ".join(f"{k}={r.stats[k]}" for k in (*DROP_COUNTERS, "search_restart") if k in r.stats)
        out.append(f"counters (all CPUs): {counters or 'not read'}")
        if r.table_full is not None:
            out.append(f"kernel log: {r.table_full} recent '{TABLE_FULL}' messages")
            out += [f"  {line}" for line in r.table_full_lines]

        def seconds(value: int | None) -> str:
            return "?" if value is None else f"{value}s"

        out.append(f"udp timeouts: {seconds(r.udp_timeout)}, stream {seconds(r.udp_stream_timeout)}")
        if self.by_service:
            out.append("top flows by service: " + ", ".join(f"{s} {n}" for s, n in self.by_service))
            out.append("top flows by source: " + ", ".join(f"{s} {n}" for s, n in self.by_source))
        for suggestion in self.suggestions:
            state = {True: " (the policy has it)", False: " (missing from the policy)", None: ""}[
                suggestion.covered
            ]
            out.append(f"suggest: notrack '{suggestion.entry}' for {suggestion.flows} entries{state}")
        if self.verdict != "OK" or self.suggestions:
            out.append("add to the policy:")
            out += ["  " + line for line in self.yaml().splitlines()]
        out += [f"skipped: {item}" for item in r.skipped]
        return "\n".join(out) + "\n"


def _fill(readings: Readings) -> float | None:
    if readings.count is None or not readings.max:
        return None
    return readings.count / readings.max


def _forward(flow: Flow) -> Flow:
    """The flow as its client started it. An entry evicted while a reply was
    on its way is created again by the reply, reversed: from the service's
    well-known port to the client's ephemeral one."""
    if flow.sport is not None and flow.dport is not None and flow.sport < WELL_KNOWN <= flow.dport:
        return Flow(flow.protocol, flow.dst, flow.src, flow.dport, flow.sport)
    return flow


def _service(flow: Flow, local: set[str]) -> tuple[str, str]:
    """(label, notrack entry) for a flow: served here, or queried from here."""
    served = not local or flow.dst in local
    if flow.dport is None:
        return flow.protocol, flow.protocol
    if served:
        return f"{flow.protocol}/{flow.dport}", f"{flow.protocol} dport {flow.dport}"
    # the answers come back to the port the query left from: ephemeral, or
    # a fixed low one (NTP clients query from 123)
    local_port = EPHEMERAL if flow.sport is None or flow.sport >= 1024 else str(flow.sport)
    return (
        f"{flow.protocol}/{flow.dport} (queried)",
        f"{flow.protocol} sport {flow.dport} dport {local_port}",
    )


def diagnose(
    readings: Readings,
    target: Target,
    warn_fill: float = DEFAULT_WARN_FILL,
    policy: Ruleset | None = None,
) -> Diagnosis:
    fill = _fill(readings)
    drops = sum(readings.stats.get(k, 0) for k in DROP_COUNTERS)
    reasons = []
    verdict = "OK"
    if drops:
        verdict = "CRITICAL"
        counts = ", ".join(f"{k}={readings.stats[k]}" for k in DROP_COUNTERS if readings.stats.get(k))
        reasons.append(f"the table has overflowed: new connections dropped or old ones evicted ({counts})")
    counters_read = any(key in readings.stats for key in DROP_COUNTERS)
    if readings.table_full and counters_read and not drops:
        # The kernel reuses namespace numbers: lines that name this one can
        # be an earlier namespace's, and this one's own counters say no.
        reasons.append(
            f"the kernel log has {readings.table_full} '{TABLE_FULL}' messages, but this network "
            "namespace has dropped nothing: they are another (earlier) namespace's"
        )
    elif readings.table_full:
        verdict = "CRITICAL"
        reasons.append(f"the kernel log has {readings.table_full} '{TABLE_FULL}' messages")
    if fill is not None and fill >= CRITICAL_FILL:
        verdict = "CRITICAL"
        reasons.append(f"the table is {fill:.0%} full (critical at {CRITICAL_FILL:.0%})")
    elif fill is not None and fill >= warn_fill and verdict == "OK":
        verdict = "WARNING"
        reasons.append(f"the table is {fill:.0%} full (warning at {warn_fill:.0%})")
    services: Counter[str] = Counter()
    entries: dict[str, str] = {}
    sources: Counter[str] = Counter()
    for flow in map(_forward, readings.flows):
        label, entry = _service(flow, readings.local_addresses)
        services[label] += 1
        entries[label] = entry
        sources[flow.src] += 1
    suggestions = []
    total = len(readings.flows)
    for label, count in services.most_common(TOP):
        # a service worth untracking: UDP, or any service that dominates the table
        if entries[label].startswith("udp") or count * 2 >= total:
            suggestions.append(Suggestion(entries[label], count, _covered(entries[label], policy)))
    if verdict == "OK":
        room = QUIET_SUGGESTION_SHARE * (readings.max or 0)
        suggestions = [s for s in suggestions if s.flows * 2 >= max(total, 1) and room and s.flows >= room]
    return Diagnosis(
        readings=readings,
        verdict=verdict,
        reasons=reasons
        or (
            ["no drops, no 'table full' messages, the table has room"]
            if fill is not None
            else ["nothing showed a problem, but the table could not be read (see skipped)"]
        ),
        by_service=services.most_common(TOP),
        by_source=sources.most_common(TOP),
        suggestions=suggestions,
        suggested_max=max(target.conntrack_max(), readings.max or 0),
        max_in_policy=None
        if policy is None
        else any(s.key.endswith("nf_conntrack_max") for s in policy.sysctls),
    )


def _covered(entry: str, policy: Ruleset | None) -> bool | None:
    """Whether the policy already untracks everything `entry` would."""
    if policy is None:
        return None
    words = entry.split()
    match = Match(protocol=words[0])
    for key, value in zip(words[1::2], words[2::2], strict=False):
        low, _, high = value.partition("-")
        ports = Ports(((int(low), int(high or low)),))
        match = Match(protocol=match.protocol, sport=ports if key == "sport" else match.sport,
                      dport=ports if key == "dport" else match.dport)  # fmt: skip
    space = Space(policy)
    untracked = [c for n in policy.notrack if n.hook == "prerouting" for c in space.cubes(n.match)]
    return not minus(space.cubes(match), untracked)


def render(diagnosis: Diagnosis, as_json: bool) -> str:
    if as_json:
        return json.dumps(diagnosis.to_json(), indent=2) + "\n"
    return diagnosis.text()
