"""The scope of notrack entries (nfc-policy(5), CONNTRACK): on a router,
an entry's default scope (host) leaves forwarded DNS tracked, so NAT and
stateful forwarding keep working; `scope: routed` untracks it, and the
router's conntrack table stays empty while every query is answered. The
server namespace routes between client A (the querier) and client B (a
DNS server), with real queries, on both backends."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lab import CLIENT_A4, CLIENT_B4, SERVER_A4, SERVER_B4, TRAFFIC, Lab

pytestmark = pytest.mark.netns

QUERIES = 200


def router(lab: Lab) -> None:
    """The server forwards between A and B, and B answers DNS."""
    lab.server.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    lab.client_a.run("ip", "route", "replace", "10.77.2.0/24", "via", SERVER_A4)
    lab.client_b.run("ip", "route", "replace", "10.77.1.0/24", "via", SERVER_B4)
    process = lab.client_b.popen(sys.executable, TRAFFIC, "serve", "--udp", "53", "--tcp", "53")
    lab.servers.append(process)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"


def policy(directory: Path, entry: str) -> Path:
    path = directory / "router.yaml"
    path.write_text(
        "nfc: 1\nconntrack:\n  notrack:\n"
        f"    - {entry}\n"
        "input:\n  policy: drop\n  rules:\n    - accept udp dport 53\n"
        "forward:\n  policy: drop\n  rules:\n    - accept udp dport 53\n"
    )
    return path


@pytest.mark.parametrize("backend", ["nft", "iptables-legacy"])
def test_forwarded_dns_is_tracked_by_default_and_untracked_when_routed(
    lab: Lab, tmp_path: Path, backend: str
) -> None:
    router(lab)
    applied = lab.apply(policy(tmp_path, "udp dport 53"), backend=backend)
    assert applied.returncode == 0, applied.stderr
    result = lab.query(lab.client_a, CLIENT_B4, [CLIENT_A4], QUERIES)
    assert result["answered"] >= 0.99 * QUERIES, result  # state: auto lets the tracked answers back
    assert lab.server.conntrack_count() >= 0.9 * QUERIES  # one entry per forwarded query

    lab.server.run("conntrack", "-F")
    applied = lab.apply(policy(tmp_path, "{rule: udp dport 53, scope: routed}"), backend=backend)
    assert applied.returncode == 0, applied.stderr
    result = lab.query(lab.client_a, CLIENT_B4, [CLIENT_A4], QUERIES)
    assert result["answered"] >= 0.99 * QUERIES, result  # the untracked answers are accepted in forward
    assert lab.server.conntrack_count() <= 5
