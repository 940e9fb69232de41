"""The parse stage: every rule of a loaded policy becomes a syntax tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nfc import grammar
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
