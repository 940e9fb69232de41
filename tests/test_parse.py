"""The parse stage: every rule of a loaded policy becomes a syntax tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nfc import grammar, parse
from nfc.errors import Loc, PolicyError
from nfc.load import load_policy
from nfc.parse import _parser, parse_policy

from helpers import write_policy

POLICY = """\
nfc: 1
conntrack:
  notrack:
    - udp dport 53
    - 'udp sport 123 comment "ntp"'
input:
  policy: drop
  rules:
    - accept tcp dport 22
    - rule: drop udp
      comment: second
output:
  policy: accept
  rules:
    - reject
"""


def test_the_tree_holds_one_parsed_rule_per_rule_in_order(tmp_path: Path) -> None:
    source = load_policy(write_policy(tmp_path, POLICY))
    tree = parse_policy(source)
    assert tree.source is source
    assert [p.text for p in tree.notrack] == list(source.conntrack.notrack)
    assert [p.node.verdict for p in tree.notrack] == [None, None]
    assert tree.notrack[1].node.comment == "ntp"
    assert list(tree.chains) == ["input", "output"]
    for name, parsed in tree.chains.items():
        assert [p.text for p in parsed] == list(source.chains[name].rules)
    assert [p.node.verdict.kind for p in tree.chains["input"] if p.node.verdict] == ["accept", "drop"]
    assert [[m.kind for m in p.node.matches] for p in tree.chains["input"]] == [["proto", "dport"], ["proto"]]
    assert tree.chains["output"][0].node.loc == Loc(str(tmp_path / "policy.yaml"), 15, 7)


def test_a_syntax_error_in_a_chain_rule_is_placed_exactly(tmp_path: Path) -> None:
    text = POLICY.replace("accept tcp dport 22", "accept tcp dprt 22")
    with pytest.raises(PolicyError) as caught:
        parse_policy(load_policy(write_policy(tmp_path, text)))
    assert caught.value.loc == Loc(str(tmp_path / "policy.yaml"), 9, 18)
    assert "did you mean 'dport'" in caught.value.render()


def test_a_syntax_error_in_a_notrack_entry_is_placed_exactly(tmp_path: Path) -> None:
    text = POLICY.replace("'udp sport 123 comment \"ntp\"'", "'udp sport 123 counter'")
    with pytest.raises(PolicyError) as caught:
        parse_policy(load_policy(write_policy(tmp_path, text)))
    assert caught.value.loc == Loc(str(tmp_path / "policy.yaml"), 5, 22)
    assert "unexpected 'counter' in entry" in caught.value.message


def test_the_shared_terminals_reach_the_grammar() -> None:
    terminals = {t.name: t.pattern.to_regexp() for t in _parser().terminals}
    for name, words in grammar.WORDS.items():
        assert all(re.fullmatch(terminals[name], word) for word in words), name
        assert not re.fullmatch(terminals[name], "x" + words[0]), name
    for name, pattern in grammar.PATTERNS.items():
        # lark keeps the escaped '/' of its /.../ literals, and reads '\n' as a line break
        assert terminals[name].replace("\\/", "/").replace("\n", "\\n") == pattern, name


def first_error(tmp_path: Path, rule: str) -> PolicyError:
    path = write_policy(tmp_path, f"nfc: 1\ninput:\n  policy: drop\n  rules:\n    - {rule}\n")
    with pytest.raises(PolicyError) as error:
        parse_policy(load_policy(path))
    return error.value


@pytest.mark.parametrize(
    ("rule", "col", "word", "hint"),
    [
        ("acceptudp dport 53", 7, "acceptudp", "put a space between 'accept' and 'udp'"),
        ("accept udp dport 53 from10.0.0.0/8", 27, "from10.0.0.0/8", "put a space between 'from'"),
        ("drop iifname", 12, "iifname", "nfc writes 'iif' where nft writes 'iifname'"),
        ("accept oifname eth0", 14, "oifname", "nfc writes 'oif'"),
        ("accept ipv6-icmp", 14, "ipv6-icmp", "nfc writes 'icmpv6'"),
        ("accept udpp dport 53", 14, "udpp", "did you mean 'udp'?"),
        ("accept tcp dport 22log", 24, "22log", "put a space between '22' and 'log'"),
    ],
)
def test_words_stand_apart(tmp_path: Path, rule: str, col: int, word: str, hint: str) -> None:
    """lark's lexer would read `acceptudp` as `accept udp`: a word glued to
    the next is an error at the start of the word as written."""
    error = first_error(tmp_path, rule)
    assert (error.loc.line, error.loc.col) == (5, col)
    assert error.message == f"unknown word '{word}'"
    assert error.hint is not None and hint in error.hint


@pytest.mark.parametrize(
    ("rule", "hint"),
    [
        ("accept ip saddr 10.0.0.1", "nfc writes 'from' where nft writes 'saddr'"),
        ("accept tcp port 22", "nfc writes 'dport' or 'sport' where nft writes 'port'"),
        ("accept meta l4proto tcp", "nfc writes 'proto' where nft writes 'meta'"),
    ],
)
def test_nft_words_point_to_nfc_words(tmp_path: Path, rule: str, hint: str) -> None:
    assert first_error(tmp_path, rule).hint == hint


def test_punctuation_and_quotes_need_no_spaces(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        "nfc: 1\ninput:\n  policy: drop\n  rules:\n"
        '    - accept tcp dport {22,80,1024-2048} from {10.0.0.0/8,192.0.2.1} comment"x"\n'
        "    - drop udp limit over 10/second per saddr/32,/64\n",
    )
    assert len(parse_policy(load_policy(path)).chains["input"]) == 2


def test_every_syntax_error_of_a_policy_is_reported_at_once(tmp_path: Path) -> None:
    rules = "".join(f"    - acept tcp dport {port}\n" for port in range(1, 31))
    path = write_policy(
        tmp_path,
        "nfc: 1\nconntrack:\n  notrack:\n    - udpp dport 53\ninput:\n  policy: drop\n  rules:\n"
        "    - accept tcp dport 22\n" + rules,
    )
    with pytest.raises(PolicyError) as raised:
        parse_policy(load_policy(path))
    lines = [line for line in raised.value.render().splitlines() if ": error: " in line]
    assert lines[0].startswith(f"{path}:4:7: error: unknown word 'udpp'")
    assert len(lines) == parse.MAX_SYNTAX_ERRORS  # the notrack entry, then the first 19 rules
    assert [int(line.split(":")[1]) for line in lines[1:]] == list(range(9, 9 + parse.MAX_SYNTAX_ERRORS - 1))
