"""The YAML front end: locations, schema, includes and defines."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfc.errors import PolicyError
from nfc.load import load_policy
from nfc.yaml_source import load_yaml

from helpers import write_policy


def test_every_node_carries_its_position(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - accept tcp dport 22\n")
    root = load_yaml(str(path))
    rule = root.value["input"].value["rules"].value[0]
    assert (rule.loc.line, rule.loc.col) == (5, 7)
    assert root.key_locs["input"].line == 2
    assert rule.loc_in_text(1, 8).col == 14  # "tcp" of "accept tcp dport 22"


def test_quoted_rule_positions_skip_the_quote(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "nfc: 1\nx: 'accept tcp'\n")
    node = load_yaml(str(path)).value["x"]
    assert node.loc_in_text(1, 8).col == 12  # the quote is column 4, "tcp" starts at 12


def test_defaults(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "nfc: 1\ninput: {policy: drop}\noutput: {policy: accept}\n", "my-host.yaml")
    source = load_policy(path)
    assert source.name == "my-host"
    assert source.table == "nfc"
    assert source.chains["input"].state == "auto"
    assert source.chains["input"].icmp == "essential"
    assert source.chains["output"].icmp == "manual"
    assert "forward" not in source.chains


def test_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "nfc: 1\ninput:\n  polcy: drop\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.loc.line == 3
    assert "did you mean 'policy'" in (caught.value.hint or "")


def test_include_merges_defines_and_notrack(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write_policy(tmp_path / "sub", "define: {dns: 53}\nconntrack: {notrack: [udp dport 53]}\n", "inc.yaml")
    path = write_policy(tmp_path, "nfc: 1\ninclude: [sub/inc.yaml]\ndefine: {dns: 53, x: 1}\n")
    source = load_policy(path)
    assert sorted(source.defines) == ["dns", "x"]
    assert [entry.text for entry in source.conntrack.notrack] == ["udp dport 53"]
    assert source.files == (str(path), str(tmp_path / "sub" / "inc.yaml"))


def test_include_conflict_names_both_places(tmp_path: Path) -> None:
    write_policy(tmp_path, "define: {dns: 53}\n", "inc.yaml")
    path = write_policy(tmp_path, "nfc: 1\ninclude: inc.yaml\ndefine: {dns: 54}\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.loc.line == 3
    assert "inc.yaml:1:" in caught.value.message


def test_include_cycle(tmp_path: Path) -> None:
    write_policy(tmp_path, "include: [b.yaml]\n", "a.yaml")
    write_policy(tmp_path, "include: [a.yaml]\n", "b.yaml")
    path = write_policy(tmp_path, "nfc: 1\ninclude: [a.yaml]\n")
    with pytest.raises(PolicyError, match="include cycle") as caught:
        load_policy(path)
    assert caught.value.loc.file.endswith("b.yaml")


def test_a_file_included_twice_counts_once(tmp_path: Path) -> None:
    write_policy(tmp_path, "define: {dns: 53}\nconntrack: {notrack: [udp dport 53]}\n", "inc.yaml")
    write_policy(tmp_path, "include: [inc.yaml]\n", "mid.yaml")
    path = write_policy(tmp_path, "nfc: 1\ninclude: [inc.yaml, mid.yaml]\n")
    source = load_policy(path)
    assert "dns" in source.defines
    assert len(source.conntrack.notrack) == 1
    assert [Path(f).name for f in source.files] == ["policy.yaml", "inc.yaml", "mid.yaml"]


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["nfc: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    path = write_policy(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(PolicyError, match="more than"):
        load_yaml(str(path))


def test_expires_takes_a_date(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - {rule: accept, expires: 2027-03-01, comment: tmp}\n",
    )
    rule = load_policy(path).chains["input"].rules[0]
    assert str(rule.expires) == "2027-03-01"
    assert rule.comment == "tmp"


def test_nft_keywords_cannot_name_the_table(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "nfc: 1\ntable: counter\n")
    with pytest.raises(PolicyError, match="nft keyword") as caught:
        load_policy(path)
    assert (caught.value.loc.line, caught.value.loc.col) == (2, 8)


@pytest.mark.parametrize("word", ["ip", "counter", "limit", "accept", "meta"])
def test_the_keyword_list_is_what_nft_refuses(tmp_path: Path, word: str) -> None:
    from nfc.vocab import NFT_KEYWORDS

    from conftest import nft_check

    assert word in NFT_KEYWORDS
    script = tmp_path / "t.nft"
    script.write_text(f"table inet {word}\n")
    assert nft_check(script).returncode != 0
    script.write_text(f"table inet {word}x\n")
    assert nft_check(script).returncode == 0
