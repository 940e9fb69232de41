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
from lab import Lab

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
