"""List files (`define: NAME: {file: PATH}`): plain text, one address or
network per line, read by a fast path that must agree with `ipaddress`."""

from __future__ import annotations

import ipaddress
import json
import random
from pathlib import Path

import pytest

from nfc import api
from nfc.backends import iptables
from nfc.errors import Loc, PolicyError
from nfc.ir import Family
from nfc.listfile import read_address_list
from nfc.yaml_source import MAX_NODES

from helpers import nft_of, ruleset_of

POLICY = """
nfc: 1
define:
  block: {file: lists/drop.txt}
input:
  policy: drop
  rules:
    - drop from $block
    - accept tcp dport 22
"""


def write_list(directory: Path, text: str, name: str = "lists/drop.txt") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_comments_blank_lines_and_both_families(tmp_path: Path) -> None:
    write_list(
        tmp_path,
        "# spam sources\n\n203.0.113.9   # seen 2026-11-30\n\t198.51.100.0/24\r\n2001:db8::/32\n"
        "198.51.100.7\n203.0.113.8\n",
    )
    nft = nft_of(tmp_path, POLICY)
    assert "elements = { 198.51.100.0/24, 203.0.113.8/31 }" in nft
    assert "elements = { 2001:db8::/32 }" in nft
    assert "ip saddr @block_v4 drop" in nft and "ip6 saddr @block_v6 drop" in nft


def test_a_one_entry_list_is_still_a_named_set(tmp_path: Path) -> None:
    """`nfc refresh` refills the set, so it exists whatever the list's length."""
    write_list(tmp_path, "192.0.2.1\n")
    ruleset = ruleset_of(tmp_path, POLICY)
    (listed,) = ruleset.address_sets
    assert (listed.name, listed.family, listed.list_file) == (
        "block_v4",
        Family.V4,
        str(tmp_path / "lists/drop.txt"),
    )


def test_the_path_is_relative_to_the_file_that_names_it(tmp_path: Path) -> None:
    (tmp_path / "inc").mkdir()
    write_list(tmp_path, "192.0.2.1\n192.0.2.3\n", "inc/lists/drop.txt")
    (tmp_path / "inc" / "defs.yaml").write_text("define:\n  block: {file: lists/drop.txt}\n")
    policy = POLICY.replace("define:\n  block: {file: lists/drop.txt}\n", "include: [inc/defs.yaml]\n")
    assert "elements = { 192.0.2.1, 192.0.2.3 }" in nft_of(tmp_path, policy)


def test_the_list_file_is_a_source_of_the_artifact(tmp_path: Path) -> None:
    """Its hash is part of the manifest's policy hash: a changed list is a changed policy."""
    write_list(tmp_path, "192.0.2.1\n")
    (tmp_path / "p.yaml").write_text(POLICY)
    compiled = api.compile_policy(str(tmp_path / "p.yaml"))
    assert str(tmp_path / "lists/drop.txt") in compiled.sources
    before = json.loads(api.build(compiled.ruleset, "nft", compiled.sources)["manifest.json"])
    write_list(tmp_path, "192.0.2.2\n")
    compiled = api.compile_policy(str(tmp_path / "p.yaml"))
    after = json.loads(api.build(compiled.ruleset, "nft", compiled.sources)["manifest.json"])
    assert before["policy_sha256"] != after["policy_sha256"]


def test_the_fast_path_agrees_with_ipaddress(tmp_path: Path) -> None:
    """Same networks as `collapse_addresses`, objects equal, hashed and
    printed as `ipaddress` makes them."""
    rng = random.Random(13)
    lines = []
    for _ in range(3000):
        if rng.random() < 0.5:
            length = rng.choice((8, 16, 24, 28, 30, 31, 32))
            network = ipaddress.IPv4Network((rng.getrandbits(32) >> (32 - length) << (32 - length), length))
        else:
            length = rng.choice((32, 48, 64, 127, 128))
            base = (0x20010DB8 << 96) | rng.getrandbits(40) << 56
            network = ipaddress.IPv6Network((base >> (128 - length) << (128 - length), length))
        lines.append(str(network))
    path = write_list(tmp_path, "\n".join(lines) + "\n")
    value = read_address_list(str(path), Loc("p.yaml", 1, 1))
    for got, version in ((value.v4, 4), (value.v6, 6)):
        nets = [ipaddress.ip_network(line) for line in lines]
        expected = sorted(ipaddress.collapse_addresses(n for n in nets if n.version == version))  # type: ignore[arg-type]
        assert list(got) == expected
        assert [str(n) for n in got] == [str(n) for n in expected]
        assert {hash(n) for n in got} == {hash(n) for n in expected}
        assert [(n.broadcast_address, n.hostmask, n.num_addresses) for n in got] == [
            (n.broadcast_address, n.hostmask, n.num_addresses) for n in expected
        ]
        assert all(n.network_address in n for n in got)


def test_the_yaml_node_cap_does_not_apply(tmp_path: Path) -> None:
    entries = MAX_NODES + 10_000
    write_list(
        tmp_path, "".join(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in range(0, 2 * entries, 2))
    )
    (listed,) = ruleset_of(tmp_path, POLICY).address_sets
    assert len(listed.networks) == entries


def test_iptables_legacy_refuses_a_list_longer_than_its_threshold(tmp_path: Path) -> None:
    entries = iptables.MAX_LISTED_NETWORKS + 1
    write_list(
        tmp_path, "".join(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in range(0, 2 * entries, 2))
    )
    with pytest.raises(
        PolicyError, match=f"a list of {entries} networks: the iptables-legacy backend"
    ) as raised:
        iptables.generate(ruleset_of(tmp_path, POLICY))
    assert raised.value.loc.line == 7
