"""The YAML front end: locations, schema, includes and defines."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nfc import yaml_source
from nfc.errors import Loc, PolicyError
from nfc.load import load_policy
from nfc.yaml_source import MAX_DEPTH, MAX_NODES, load_yaml

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


# --------------------------------------------------------------------------
# nesting: refused at the first node more than MAX_DEPTH levels below the
# top level, in every form YAML writes levels in, by libyaml's parser and by
# PyYAML's own (the fallback where PyYAML was built without libyaml)

PARSERS = [pytest.param(yaml_source.LOADER, id="libyaml"), pytest.param(yaml.SafeLoader, id="python")]
ALIASED_LEVELS = 30


def nested(form: str, levels: int) -> str:
    """A document whose deepest node is `levels` below the top level, with
    `@^` before the first node at that level."""
    if form == "flow-sequences":
        return "top: " + "[" * (levels - 1) + "@^[" + "]" * levels + "\n"
    if form == "flow-mappings":  # the last mapping's key is as deep as its value
        return "top: " + "{a: " * (levels - 2) + "{@^a: x" + "}" * (levels - 1) + "\n"
    if form == "block-mappings":  # the mapping at level L is indented 2L
        lines = ["  " * depth + "a:" for depth in range(1, levels - 1)] + ["  " * (levels - 1) + "@^a: x"]
        return "top:\n" + "\n".join(lines) + "\n"
    if form == "compact-sequences":
        return "top:\n" + "- " * (levels - 1) + "@^x\n"
    assert form == "alias"  # *d stands where its node's deepest level is `levels` below the top
    outer = levels - ALIASED_LEVELS
    anchored = "[" * ALIASED_LEVELS + "]" * ALIASED_LEVELS
    return f"d: &d {anchored}\ntop: " + "[" * outer + "@^*d" + "]" * outer + "\n"


FORMS = ["flow-sequences", "flow-mappings", "block-mappings", "compact-sequences", "alias"]


def marked(text: str) -> tuple[str, tuple[int, int]]:
    before, _, after = text.partition("@^")
    return before + after, (before.count("\n") + 1, len(before) - before.rfind("\n"))


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("form", FORMS)
def test_nesting_is_refused_one_level_past_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parser: type, form: str
) -> None:
    monkeypatch.setattr(yaml_source, "LOADER", parser)
    deepest, _ = marked(nested(form, MAX_DEPTH))
    load_yaml(str(write_policy(tmp_path, deepest)))
    text, (line, col) = marked(nested(form, MAX_DEPTH + 1))
    path = write_policy(tmp_path, text)
    with pytest.raises(PolicyError, match=f"YAML nesting is deeper than {MAX_DEPTH} levels") as caught:
        load_yaml(str(path))
    assert caught.value.loc == Loc(str(path), line, col)


@pytest.mark.parametrize("parser", PARSERS)
def test_an_alias_inside_the_node_it_names_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parser: type
) -> None:
    monkeypatch.setattr(yaml_source, "LOADER", parser)
    path = write_policy(tmp_path, "a: &x {b: [1, {c: *x}]}\n")
    with pytest.raises(PolicyError, match="inside the node it names") as caught:
        load_yaml(str(path))
    assert (caught.value.loc.line, caught.value.loc.col) == (1, 19)


@pytest.mark.parametrize("parser", PARSERS)
def test_an_alias_bomb_is_refused_at_the_alias_that_overflows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parser: type
) -> None:
    """Twenty levels of ten aliases name 10**20 nodes: each alias counts as
    the size of what it names, so the budget runs out at once, at the
    first alias of a5 (a4 names 111111 nodes), without expanding any."""
    monkeypatch.setattr(yaml_source, "LOADER", parser)
    lines = ["nfc: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 20)]
    path = write_policy(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(PolicyError, match=f"more than {MAX_NODES} YAML nodes") as caught:
        load_yaml(str(path))
    assert (caught.value.loc.line, caught.value.loc.col) == (7, 10)


def test_aliases_load_as_the_node_they_name(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "a: &x {b: [1, 2]}\nc: [*x, *x]\n")
    root = load_yaml(str(path))
    assert root.plain() == {"a": {"b": [1, 2]}, "c": [{"b": [1, 2]}, {"b": [1, 2]}]}
    assert root.value["c"].value[0].loc == Loc(str(path), 1, 4)  # where the named node is written


def test_nfc_policy_5_states_the_limits() -> None:
    from conftest import ROOT

    text = " ".join((ROOT / "man" / "nfc-policy.5").read_text(encoding="utf-8").split())
    assert (
        f"at most 8 MiB and {MAX_NODES} YAML nodes, none of them more than {MAX_DEPTH} levels below" in text
    )
    assert yaml_source.MAX_FILE_BYTES == 8 * 1024 * 1024


def test_a_long_document_is_refused_at_the_node_past_the_budget(tmp_path: Path) -> None:
    """The top-level mapping, nfc, 1, a and its list are 5 nodes: item
    MAX_NODES - 4 is one too many, on line MAX_NODES - 2."""
    path = tmp_path / "policy.yaml"
    path.write_text("nfc: 1\na:\n" + "- x\n" * MAX_NODES)
    with pytest.raises(PolicyError, match=f"more than {MAX_NODES} YAML nodes") as caught:
        load_yaml(str(path))
    assert caught.value.loc == Loc(str(path), MAX_NODES - 2, 3)


@pytest.mark.parametrize(("value", "col"), [("20:30", 6), ("2001:0:0:0:0:0:0:1", 6), ("1:2:3.5", 6)])
def test_yaml_base_60_numbers_are_refused(tmp_path: Path, value: str, col: int) -> None:
    """YAML 1.1 reads 20:30 as 1230 and a full IPv6 address as a number:
    either is a mistake in a policy, said at its place."""
    path = write_policy(tmp_path, f"nfc: 1\ndefine:\n  x: {value}\ninput:\n  policy: drop\n")
    with pytest.raises(PolicyError, match="as a number in base 60") as error:
        load_policy(path)
    assert (error.value.loc.line, error.value.loc.col) == (3, col)
    quoted = write_policy(tmp_path, f"nfc: 1\ndefine:\n  x: '{value}'\ninput:\n  policy: drop\n")
    assert load_policy(quoted).defines["x"].node.value == value
