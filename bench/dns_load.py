"""Real DNS software under load, with and without notrack (root; Debian
packages dnsmasq-base, dnsperf, bind9-dnsutils):

    sudo nice -n 10 .venv/bin/python bench/dns_load.py
    sudo nice -n 10 .venv/bin/python bench/dns_load.py --rate 5000 --seconds 5 --clients 250

The lab of the namespace tests (tests/lab.py), fresh for every row. Rows,
for each backend:

- authoritative: dnsmasq serves a zone in the server namespace behind
  policies/dns-authoritative.yaml, or behind the same policy without its
  notrack entry (tests/policies/control-dns-authoritative-stateful.yaml);
  dnsperf asks it from a client namespace;
- resolver: dnsmasq forwards every query (no cache) to an authoritative
  dnsmasq in a namespace of its own, behind policies/dns-recursive.yaml or
  its stateful control (tests/policies/control-dns-stateful.yaml); dnsperf
  asks it over loopback from the server itself (the policy's meter would
  throttle a single remote source).

Each row prints dnsperf's own figures (queries sent, completed, lost, the
rate it reached) and the server namespace's nf_conntrack_count after the
load. It asserts nothing. The namespaces are deleted on exit, also on an
error or a signal."""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
# dns_software imports conftest before lab (they import each other, conftest first)

from dns_software import authoritative, dnsperf, resolver, start_dnsmasq, udp_datagrams_received  # noqa: E402

from nfc.backends import BACKENDS  # noqa: E402

from lab import SERVER_A4, Lab, Namespace  # noqa: E402

POLICIES = ROOT / "policies"
CONTROLS = ROOT / "tests" / "policies"
UPSTREAM = "10.77.3.2"


# where dnsperf runs, the address it asks, and the resolver's upstream if any
Setup = tuple[Namespace, str, Namespace | None]


def serve_authoritative(lab: Lab) -> Setup:
    start_dnsmasq(lab, lab.server, authoritative(["eth-a", "eth-b"]), probe=SERVER_A4)
    return lab.client_a, SERVER_A4, None


def serve_resolver(lab: Lab) -> Setup:
    upstream = lab.attach("u", "eth-u", ("10.77.3.1", "fd00:77:3::1"), (UPSTREAM, "fd00:77:3::2"))
    start_dnsmasq(lab, upstream, authoritative(["eth0"]), probe=UPSTREAM)
    start_dnsmasq(lab, lab.server, resolver(UPSTREAM, ["lo", "eth-a", "eth-b"]), probe="127.0.0.1")
    return lab.server, "127.0.0.1", upstream


ROWS: list[tuple[str, Callable[[Lab], Setup], Path, Path]] = [
    (
        "authoritative",
        serve_authoritative,
        POLICIES / "dns-authoritative.yaml",
        CONTROLS / "control-dns-authoritative-stateful.yaml",
    ),
    ("resolver", serve_resolver, POLICIES / "dns-recursive.yaml", CONTROLS / "control-dns-stateful.yaml"),
]


def measure(
    directory: Path,
    backend: str,
    serve: Callable[[Lab], Setup],
    policy: Path,
    args: argparse.Namespace,
) -> str:
    lab = Lab(secrets.token_hex(3), directory / secrets.token_hex(3) / "state")
    try:
        lab.build()
        applied = lab.apply(policy, backend=backend)
        if applied.returncode != 0:
            return f"nfc apply failed: {applied.stderr.strip()}"
        client, server, upstream = serve(lab)
        before = udp_datagrams_received(upstream) if upstream else 0
        report = dnsperf(lab, client, server, seconds=args.seconds, rate=args.rate, clients=args.clients)
        asked = f", upstream asked {udp_datagrams_received(upstream) - before}" if upstream else ""
        return f"{report}{asked}, conntrack {lab.server.conntrack_count()}"
    finally:
        lab.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rate", type=int, default=2000, help="queries a second dnsperf aims at")
    parser.add_argument("--clients", type=int, default=200, help="dnsperf's sockets (source ports)")
    args = parser.parse_args()
    # a signal unwinds through the finally blocks that delete the namespaces
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="nfc-dns-load-") as directory:
        for backend in BACKENDS:
            for name, serve, policy, control in ROWS:
                for label, each in (("notrack", policy), ("stateful", control)):
                    row = measure(Path(directory), backend, serve, each, args)
                    print(f"{backend:16} {name:14} {label:9} {each.name:40} {row}", flush=True)


if __name__ == "__main__":
    main()
