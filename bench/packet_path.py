"""Packet-path benchmark: what a ruleset costs the core that receives packets.

    sudo nice -n 10 .venv/bin/python bench/packet_path.py                  # N = 1,000, 10,000, 50,000
    sudo nice -n 10 .venv/bin/python bench/packet_path.py --sizes 500,2000 --seconds 0.5 --repeat 2

Two fresh network namespaces joined by a veth pair. In the sender, a C
generator (built here with cc) writes one Ethernet frame again and again
into an AF_PACKET socket with sendmmsg. The receiver's veth runs its NAPI
in a kernel thread of its own (GRO on, `threaded` 1), pinned to one core:
everything the receiver does for a packet (the IP layer, conntrack, the
input hook's rules) is that thread's CPU time, read from
/proc/PID/schedstat. The figure is packets per CPU-second of that thread,
so the generator's speed does not enter it.

The policy is an allow-list of N rules, rule i `accept tcp dport 1000+i
from 10.A.B.0/24`, and every packet is the last rule's: the worst case of
a linear chain. Its TCP checksum is wrong on purpose, and conntrack (in the
receiver only) is told not to check checksums: a packet the rules accept
then ends in TCP's checksum counter (InCsumErrors), which is what is
counted, with no reply to send that would add its own cost.

Rows: no ruleset; the state rules alone (conntrack and an almost empty
chain); nfc -O0; nfc -O1 (the default); `nft -o` of the -O0 output; and
two hand-written ideals with a hash set on the masked key: one that gives
every packet the policy's verdicts (loopback, essential ICMP and the state
rules the policy's defaults add, written as a person would: ICMP in a chain
of its own, the states in one verdict map), and the lookup alone after the
established rule. The machine may be busy: the rows take turns, --repeat
times, and each row's best turn counts. Load is the wall time of `nft -f`
(with `-o` for that row) into an empty namespace; compile is nfc's own, in
this process. It prints a table and asserts nothing. The namespaces are
deleted on exit, also on an error or a signal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from nfc import api

DEFAULT_SIZES = (1000, 10_000, 50_000)
RECEIVER_ADDRESS = "192.168.77.1"
RX_CORE = 1  # the receive core; the generator runs on the other one
GEN_CORE = 0

GENERATOR_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* gen IFNAME HEXFRAME SECONDS: send the frame as fast as the socket takes it. */
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    size_t len = strlen(argv[2]) / 2;
    unsigned char frame[1600];
    for (size_t i = 0; i < len; i++) sscanf(argv[2] + 2 * i, "%2hhx", &frame[i]);
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = if_nametoindex(argv[1]), .sll_halen = 6};
    memcpy(to.sll_addr, frame, 6);
    enum { BATCH = 64 };
    struct iovec iov = {.iov_base = frame, .iov_len = len};
    struct mmsghdr msgs[BATCH];
    for (int i = 0; i < BATCH; i++)
        msgs[i].msg_hdr = (struct msghdr){
            .msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &iov, .msg_iovlen = 1};
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    double seconds = atof(argv[3]);
    unsigned long sent = 0;
    for (;;) {
        int n = sendmmsg(fd, msgs, BATCH, 0);
        if (n > 0) sent += n;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec + (now.tv_nsec - start.tv_nsec) / 1e9 > seconds) break;
    }
    printf("%lu\n", sent);
    return 0;
}
"""

# `ethtool -K DEV FEATURE on|off` through SIOCETHTOOL (0x8946), without the
# ethtool command: ETHTOOL_SGRO (0x2c) on the receiver gives its veth a NAPI
# instance; ETHTOOL_STSO (0x1f) off on the sender, or veth hands every
# packet to the sending core's backlog instead of that NAPI.
SET_FEATURE = r"""
import ctypes, fcntl, socket, struct, sys
value = ctypes.create_string_buffer(struct.pack("II", int(sys.argv[2], 0), int(sys.argv[3])))
request = struct.pack("16sP", sys.argv[1].encode(), ctypes.addressof(value))
fcntl.ioctl(socket.socket(), 0x8946, request)
"""
ETHTOOL_SGRO, ETHTOOL_STSO = "0x2c", "0x1f"


# --------------------------------------------------------------------------
# the rulesets


def allow_list(size: int) -> str:
    lines = ["nfc: 1", "name: allow-list", "input:", "  policy: drop", "  rules:"]
    for i in range(size):
        lines.append(f"    - accept tcp dport {1000 + i} from 10.{i // 256 % 256}.{i % 256}.0/24")
    return "\n".join(lines) + "\n"


def last_rule_source(size: int) -> tuple[str, int]:
    i = size - 1
    return f"10.{i // 256 % 256}.{i % 256}.7", 1000 + i


def ideal(size: int, same_verdicts: bool) -> str:
    """A hash set on the masked key, written by hand. With `same_verdicts`,
    also what the policy's defaults say (loopback, essential ICMP, invalid
    and established packets), as a person would write it: ICMP in a chain of
    its own, the states in one verdict map. Without, the lookup alone."""
    elements = ",\n".join(f"\t\t10.{i // 256 % 256}.{i % 256}.0 . {1000 + i}" for i in range(size))
    prelude = "\t\tct state established,related accept\n"
    icmp = ""
    if same_verdicts:
        prelude = (
            '\t\tiifname "lo" accept\n\t\tmeta l4proto { icmp, icmpv6 } jump essential_icmp\n'
            "\t\tct state vmap { invalid : drop, established : accept, related : accept }\n"
        )
        icmp = (
            "\tchain essential_icmp {\n"
            "\t\ticmp type { destination-unreachable, time-exceeded, parameter-problem } accept\n"
            "\t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, "
            "nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept\n"
            "\t\tip6 saddr fe80::/10 icmpv6 type { mld-listener-query, mld-listener-report, "
            "mld-listener-done, mld2-listener-report } accept\n\t}\n"
        )
    return (
        "table inet ideal {\n"
        "\tset allow {\n\t\ttype ipv4_addr . inet_service\n\t\telements = {\n"
        f"{elements}\n\t\t}}\n\t}}\n{icmp}"
        "\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n"
        f"{prelude}"
        "\t\tip saddr & 255.255.255.0 . tcp dport @allow accept\n\t}\n}\n"
    )


STATE_ONLY = (
    "table inet state {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
    "\t\tct state invalid drop\n\t\tct state established,related accept\n\t}\n}\n"
)


# --------------------------------------------------------------------------
# the namespaces


class Bench:
    def __init__(self, workdir: Path) -> None:
        tag = secrets.token_hex(2)
        self.sender, self.receiver = f"nfcbench-{tag}-tx", f"nfcbench-{tag}-rx"
        self.tx_dev, self.rx_dev = f"pt{tag}", f"pr{tag}"
        self.workdir = workdir
        self.generator = workdir / "gen"
        self.made: list[str] = []

    def run(self, namespace: str, *command: str, check: bool = True, **kwargs: object) -> str:
        command = ("ip", "netns", "exec", namespace, *command)
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
        return str(result.stdout)

    def build(self) -> None:
        source = self.workdir / "gen.c"
        source.write_text(GENERATOR_C)
        subprocess.run(["cc", "-O2", "-o", str(self.generator), str(source)], check=True)
        for namespace in (self.sender, self.receiver):
            subprocess.run(["ip", "netns", "add", namespace], check=True)
            self.made.append(namespace)
            self.run(namespace, "ip", "link", "set", "lo", "up")
        subprocess.run(
            ["ip", "-n", self.sender, "link", "add", self.tx_dev, "type", "veth", "peer", "name", self.rx_dev,
             "netns", self.receiver],
            check=True,
        )  # fmt: skip
        self.run(self.sender, "ip", "link", "set", self.tx_dev, "up")
        rx = self.receiver
        self.run(rx, "ip", "addr", "add", f"{RECEIVER_ADDRESS}/24", "dev", self.rx_dev)
        self.run(rx, "ip", "link", "set", self.rx_dev, "up")
        self.run(rx, "ip", "route", "add", "10.0.0.0/8", "dev", self.rx_dev)
        self.run(rx, sys.executable, "-c", SET_FEATURE, self.rx_dev, ETHTOOL_SGRO, "1")
        self.run(self.sender, sys.executable, "-c", SET_FEATURE, self.tx_dev, ETHTOOL_STSO, "0")
        self.run(rx, "sh", "-c", f"echo 1 > /sys/class/net/{self.rx_dev}/threaded")
        for key in ("all", "default", self.rx_dev):
            self.run(rx, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
        # conntrack is per namespace; its module may load only with the first ruleset
        self.run(rx, "nft", "-f", "-", input=STATE_ONLY)
        self.run(rx, "sysctl", "-qw", "net.netfilter.nf_conntrack_checksum=0")
        self.run(rx, "nft", "flush", "ruleset")
        self.napi_pid = self._napi_thread()
        subprocess.run(["taskset", "-pc", str(RX_CORE), str(self.napi_pid)], check=True, capture_output=True)

    def _napi_thread(self) -> int:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if (entry / "comm").read_text().startswith(f"napi/{self.rx_dev}-"):
                        return int(entry.name)
        raise RuntimeError(f"no threaded NAPI kthread for {self.rx_dev}")

    def teardown(self) -> None:
        for namespace in self.made:
            pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.made.clear()

    def frame(self, source: str, dport: int) -> str:
        rx_mac = self.run(self.receiver, "cat", f"/sys/class/net/{self.rx_dev}/address").strip()
        tx_mac = self.run(self.sender, "cat", f"/sys/class/net/{self.tx_dev}/address").strip()
        tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 65535, 0xDEAD, 0)
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
            socket.inet_aton(source), socket.inet_aton(RECEIVER_ADDRESS),
        )  # fmt: skip
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        ethernet = bytes.fromhex(rx_mac.replace(":", "") + tx_mac.replace(":", "")) + b"\x08\x00"
        return (ethernet + header + tcp).hex()

    def load(self, text: str, optimize: bool = False) -> float:
        self.run(self.receiver, "nft", "flush", "ruleset")
        path = self.workdir / "load.nft"
        path.write_text(text)
        start = time.perf_counter()
        self.run(self.receiver, "nft", *(["-o"] if optimize else []), "-f", str(path))
        return time.perf_counter() - start

    def measure(self, frame: str, seconds: float) -> tuple[float, int]:
        """Packets accepted per CPU-second of the receive thread, and how many."""
        self.run(self.receiver, "conntrack", "-F", check=False)
        sender = subprocess.Popen(
            ["ip", "netns", "exec", self.sender, "taskset", "-c", str(GEN_CORE), str(self.generator),
             self.tx_dev, frame, str(seconds + 0.6)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            time.sleep(0.3)
            cpu, packets = self._napi_cpu(), self._accepted()
            time.sleep(seconds)
            cpu, packets = self._napi_cpu() - cpu, self._accepted() - packets
        finally:
            sender.wait(timeout=seconds + 30)
        return (packets / cpu if cpu > 0 else 0.0), packets

    def _napi_cpu(self) -> float:
        return int(Path(f"/proc/{self.napi_pid}/schedstat").read_text().split()[0]) / 1e9

    def _accepted(self) -> int:
        lines = [line.split() for line in self.run(self.receiver, "cat", "/proc/net/snmp").splitlines()]
        tcp = [line for line in lines if line[0] == "Tcp:"]
        return int(tcp[1][tcp[0].index("InCsumErrors")])


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# --------------------------------------------------------------------------
# the table


def rows(size: int, workdir: Path) -> Iterator[tuple[str, str | None, bool, float | None]]:
    """(row, ruleset text, load with nft -o, compile seconds)."""
    policy = workdir / f"allow-{size}.yaml"
    policy.write_text(allow_list(size))
    start = time.perf_counter()
    ruleset, sources = api.compile_policy(str(policy))
    lowered = time.perf_counter() - start
    compiled = {}
    for level in (0, 1):
        start = time.perf_counter()
        compiled[level] = api.build(ruleset, "nft", sources, optimize=bool(level))["ruleset.nft"]
        compiled[level, "s"] = lowered + time.perf_counter() - start  # type: ignore[index]
    yield "no ruleset", None, False, None
    yield "state rules only", STATE_ONLY, False, None
    yield "nfc -O0", compiled[0], False, compiled[0, "s"]  # type: ignore[index]
    yield "nfc -O1", compiled[1], False, compiled[1, "s"]  # type: ignore[index]
    yield "nft -o of -O0", compiled[0], True, None
    yield "ideal, same verdicts", ideal(size, True), False, None
    yield "ideal, lookup only", ideal(size, False), False, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated N")
    parser.add_argument("--seconds", type=float, default=1.0, help="measured seconds per row and turn")
    parser.add_argument("--repeat", type=int, default=3, help="turns over the rows; each row's best counts")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if os.geteuid() != 0:
        print("packet_path.py needs root (ip netns add)", file=sys.stderr)
        return 2
    for tool in ("cc", "ip", "nft", "taskset", "conntrack"):
        if shutil.which(tool) is None:
            print(f"packet_path.py needs '{tool}'", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="nfc-packet-path-") as scratch:
        bench = Bench(Path(scratch))
        try:
            bench.build()
            print(f"receive core {RX_CORE} (napi thread {bench.napi_pid}); best of {args.repeat} turns "
                  f"of {args.seconds:g} s a row; load: best of {args.repeat}")  # fmt: skip
            print(f"{'N':>7} {'ruleset':<22} {'compile s':>9} {'load s':>8} {'pkts/CPU-s':>12} "
                  f"{'% of none':>9} {'packets':>9}")  # fmt: skip
            for size in sizes:
                frame = bench.frame(*last_rule_source(size))
                table = list(rows(size, Path(scratch)))
                loads: dict[str, float] = {}
                rates: dict[str, float] = {}
                counts = dict.fromkeys((name for name, *_ in table), 0)
                for _ in range(args.repeat):  # rows in turn, so that a busy spell hits them alike
                    for name, text, nft_optimize, _ in table:
                        if text is None:
                            bench.run(bench.receiver, "nft", "flush", "ruleset")
                        else:
                            load = bench.load(text, nft_optimize)
                            loads[name] = min(loads.get(name, load), load)
                        rate, packets = bench.measure(frame, args.seconds)
                        rates[name] = max(rates.get(name, rate), rate)
                        counts[name] += packets
                baseline = rates["no ruleset"]
                for name, _, _, compile_seconds in table:
                    compile_text = f"{compile_seconds:.2f}" if compile_seconds is not None else "-"
                    load_text = f"{loads[name]:.2f}" if name in loads else "-"
                    share = f"{100 * rates[name] / baseline:.1f}%" if baseline else "-"
                    print(f"{size:>7} {name:<22} {compile_text:>9} {load_text:>8} {rates[name]:>12,.0f} "
                          f"{share:>9} {counts[name]:>9}", flush=True)  # fmt: skip
        finally:
            bench.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
