"""Loopback (nfc-policy(5), CHAINS): a resolver host asks itself on
127.0.0.1 and ::1, and rndc talks to 127.0.0.1:953. With the flagship
resolver policy and the default `loopback: accept`, real queries and
connections over lo are answered on both backends; the same policy with
`loopback: manual` drops them, which shows the accept is what lets them
through."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import ROOT
from lab import SERVER_A4, SERVER_A6, Lab

pytestmark = pytest.mark.netns

LOOPBACK = ("127.0.0.1", "::1")
PROBES = [
    {"proto": proto, "server": address, "port": port, "source": address}
    for address in LOOPBACK
    for proto, port in (("udp", 53), ("tcp", 53), ("tcp", 953))
]


def manual_copy(directory: Path) -> Path:
    """The flagship resolver policy with 'loopback: manual' in input."""
    policy = directory / "dns-recursive.yaml"
    shutil.copy(ROOT / "policies" / "dns-recursive.yaml", policy)
    text = policy.read_text()
    assert "\ninput:\n" in text
    policy.write_text(text.replace("\ninput:\n", "\ninput:\n  loopback: manual\n", 1))
    return policy


@pytest.mark.parametrize("backend", ["nft", "iptables-legacy"])
def test_the_resolver_answers_itself_on_loopback(lab: Lab, tmp_path: Path, backend: str) -> None:
    lab.start_servers(udp=(53,), tcp=(53, 953))
    applied = lab.apply(ROOT / "policies" / "dns-recursive.yaml", backend=backend)
    assert applied.returncode == 0, applied.stderr
    assert lab.probe(lab.server, PROBES) == ["accept"] * len(PROBES)

    applied = lab.apply(manual_copy(tmp_path), backend=backend)
    assert applied.returncode == 0, applied.stderr
    assert lab.probe(lab.server, PROBES) == ["drop"] * len(PROBES)


@pytest.mark.parametrize("backend", ["nft", "iptables-legacy"])
def test_a_server_asking_itself_leaves_no_conntrack_entry(lab: Lab, backend: str) -> None:
    """The authoritative policy untracks `udp dport domain` alone. The
    server's own queries to itself (on loopback and on its own address) go
    through output and lo, where prerouting's notrack comes after conntrack
    has made the entry: nfc untracks them in output, so neither the queries
    nor the answers leave a half-tracked entry (each query comes from a
    fresh source port, so each would be one)."""
    lab.start_servers(udp=(53,), tcp=())
    applied = lab.apply(ROOT / "policies" / "dns-authoritative.yaml", backend=backend)
    assert applied.returncode == 0, applied.stderr
    queries = 40
    for address in (*LOOPBACK, SERVER_A4, SERVER_A6):
        result = lab.query(lab.server, address, [address], queries)
        assert result["answered"] == queries, (address, result)
    assert lab.server.conntrack_count() == 0, lab.server.run("conntrack", "-L", check=False).stdout[:500]
