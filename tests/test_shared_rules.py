"""Shared rules (contract 7.4): `{include: FILE}` items in a chain's rules
splice FILE's rules in place, with FILE's own positions."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from nfc import api
from nfc.errors import PolicyError
from nfc.ir import Interfaces, RuleRole
from nfc.load import MAX_INCLUDE_DEPTH, load_policy

from helpers import nft_of, ruleset_of, write_policy

ADMIN = """\
define:
  admins: 192.0.2.10
interfaces:
  mgmt: [eth9]
rules:
  - accept tcp dport 22 from $admins iif $mgmt
  - {rule: accept icmp type echo-request, comment: ping}
"""


def policy(rules: str, head: str = "") -> str:
    settings = "  policy: drop\n  state: manual\n  icmp: manual\n"
    return f"nfc: 1\n{head}input:\n{settings}  rules:\n{rules}  loopback: manual\n"


def user_rules(ruleset, chain: str = "input"):
    (found,) = (c for c in ruleset.chains if c.name == chain)
    return [r for r in found.rules if r.role is RuleRole.USER]


def test_the_rules_are_spliced_at_the_item(tmp_path: Path) -> None:
    write_policy(tmp_path, ADMIN, "admin.yaml")
    ruleset = ruleset_of(
        tmp_path, policy("    - accept udp dport 53\n    - {include: admin.yaml}\n    - drop tcp dport 23\n")
    )
    rules = user_rules(ruleset)
    admin = str(tmp_path / "admin.yaml")
    main = str(tmp_path / "policy.yaml")
    assert [(r.origin.file, r.origin.line, r.origin.col) for r in rules] == [
        (main, 7, 7),
        (admin, 6, 5),
        (admin, 7, 12),
        (main, 9, 7),
    ]
    ssh = rules[1]
    assert ssh.match.iifname == Interfaces(("eth9",), "mgmt")
    assert rules[2].comment == "ping"


def test_generated_comments_name_the_included_file(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    write_policy(tmp_path / "shared", ADMIN, "admin.yaml")
    nft = nft_of(tmp_path, policy("    - {include: shared/admin.yaml}\n"))
    assert 'comment "shared/admin.yaml:6"' in nft
    assert 'comment "shared/admin.yaml:7: ping"' in nft


def test_splices_nest_relative_to_their_own_file(tmp_path: Path) -> None:
    (tmp_path / "shared" / "deeper").mkdir(parents=True)
    write_policy(
        tmp_path / "shared", "rules:\n  - {include: deeper/b.yaml}\n  - accept tcp dport 2\n", "a.yaml"
    )
    write_policy(tmp_path / "shared" / "deeper", "rules:\n  - accept tcp dport 1\n", "b.yaml")
    ruleset = ruleset_of(tmp_path, policy("    - {include: shared/a.yaml}\n    - {include: shared/a.yaml}\n"))
    assert [r.match.dport.ranges[0][0] for r in user_rules(ruleset)] == [1, 2, 1, 2]
    assert load_policy(tmp_path / "policy.yaml").files == (
        str(tmp_path / "policy.yaml"),
        str(tmp_path / "shared" / "a.yaml"),
        str(tmp_path / "shared" / "deeper" / "b.yaml"),
    )


def test_one_file_serves_several_chains(tmp_path: Path) -> None:
    write_policy(tmp_path, "rules:\n  - accept icmp\n", "icmp.yaml")
    text = "nfc: 1\ninput:\n  policy: drop\n  rules: [{include: icmp.yaml}]\nforward:\n  policy: drop\n"
    text += "  rules:\n    - {include: icmp.yaml}\n"
    ruleset = ruleset_of(tmp_path, text)
    assert [r.match.protocol for r in user_rules(ruleset, "input") + user_rules(ruleset, "forward")] == [
        "icmp",
        "icmp",
    ]


def test_a_file_of_defines_only_splices_nothing(tmp_path: Path) -> None:
    write_policy(tmp_path, "nfc: 1\ndefine:\n  ssh: 22\n", "defs.yaml")
    ruleset = ruleset_of(tmp_path, policy("    - {include: defs.yaml}\n    - accept tcp dport $ssh\n"))
    assert [r.match.dport.ranges for r in user_rules(ruleset)] == [((22, 22),)]


def error_of(tmp_path: Path, rules: str, files: dict[str, str], head: str = "") -> PolicyError:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    with pytest.raises(PolicyError) as raised:
        ruleset_of(tmp_path, policy(rules, head))
    return raised.value


def place(tmp_path: Path, error: PolicyError) -> tuple[str, int, int]:
    return (str(Path(error.loc.file).relative_to(tmp_path)), error.loc.line, error.loc.col)


@pytest.mark.parametrize(
    ("rules", "files", "where", "message"),
    [
        # a mistake in a spliced rule is at its place in its own file
        (
            "    - {include: r.yaml}\n",
            {"r.yaml": "rules:\n  - accept tcp dport 70000\n"},
            ("r.yaml", 2, 22),
            "port 70000",
        ),
        (
            "    - {include: r.yaml}\n",
            {"r.yaml": "rules:\n  - acept tcp\n"},
            ("r.yaml", 2, 5),
            "unexpected 'acept'",
        ),
        # cycles: direct, indirect, and through the policy itself
        (
            "    - {include: r.yaml}\n",
            {"r.yaml": "rules:\n  - {include: r.yaml}\n"},
            ("r.yaml", 2, 15),
            "include cycle",
        ),
        (
            "    - {include: a.yaml}\n",
            {"a.yaml": "rules: [{include: b.yaml}]\n", "b.yaml": "rules:\n  - {include: ./a.yaml}\n"},
            ("b.yaml", 2, 15),
            "include cycle",
        ),
        ("    - {include: policy.yaml}\n", {}, ("policy.yaml", 7, 17), "include cycle"),
        (
            "    - {include: r.yaml}\n",
            {"r.yaml": "rules: [{include: policy.yaml}]\n"},
            ("r.yaml", 1, 19),
            "cycle",
        ),
        # what such a file may hold
        (
            "    - {include: r.yaml}\n",
            {"r.yaml": "input:\n  policy: drop\n"},
            ("r.yaml", 1, 1),
            "unknown key 'input'",
        ),
        (
            "    - {include: r.yaml}\n",
            {"r.yaml": "include: [x.yaml]\n"},
            ("r.yaml", 1, 1),
            "unknown key 'include'",
        ),
        ("    - {include: r.yaml}\n", {"r.yaml": "nfc: 2\n"}, ("r.yaml", 1, 6), "unsupported policy format"),
        ("    - {include: r.yaml}\n", {"r.yaml": "- accept\n"}, ("r.yaml", 1, 1), "must be a mapping"),
        (
            "    - {include: r.yaml}\n",
            {"r.yaml": "rules: accept\n"},
            ("r.yaml", 1, 8),
            "'rules' must be a list",
        ),
        # the item itself
        (
            "    - {include: r.yaml, comment: x}\n",
            {},
            ("policy.yaml", 7, 25),
            "unknown key 'comment' in a rules",
        ),
        ("    - {include: 5}\n", {}, ("policy.yaml", 7, 17), "an include must be a string"),
        ("    - {include: ''}\n", {}, ("policy.yaml", 7, 17), "an include must name a file"),
        # hostile files
        ("    - {include: missing.yaml}\n", {}, ("policy.yaml", 7, 17), "cannot read"),
        ("    - {include: sub}\n", {"sub/x": ""}, ("policy.yaml", 7, 17), "cannot read"),
        ("    - {include: r.yaml}\n", {"r.yaml": ""}, ("r.yaml", 1, 1), "empty policy file"),
    ],
)
def test_mistakes_are_placed(
    tmp_path: Path, rules: str, files: dict[str, str], where: tuple[str, int, int], message: str
) -> None:
    error = error_of(tmp_path, rules, files)
    assert place(tmp_path, error) == where, error.render()
    assert message in error.message


def test_a_binary_file_is_refused_at_its_first_bad_byte(tmp_path: Path) -> None:
    (tmp_path / "r.bin").write_bytes(b"rules:\n  - accept\x00\xff\xfe\n")
    error = error_of(tmp_path, "    - {include: r.bin}\n", {})
    assert place(tmp_path, error) == ("r.bin", 2, 12)
    assert "UTF-8" in error.message


def test_a_deep_chain_of_splices_stops(tmp_path: Path) -> None:
    for level in range(MAX_INCLUDE_DEPTH + 5):
        (tmp_path / f"r{level}.yaml").write_text(f"rules:\n  - {{include: r{level + 1}.yaml}}\n")
    error = error_of(tmp_path, "    - {include: r0.yaml}\n", {})
    assert f"includes nest deeper than {MAX_INCLUDE_DEPTH} levels" in error.message
    assert error.loc.line == 2


def test_a_define_clash_names_both_files(tmp_path: Path) -> None:
    error = error_of(
        tmp_path,
        "    - {include: r.yaml}\n",
        {"r.yaml": "define:\n  ssh: 2222\nrules: []\n"},
        head="define:\n  ssh: 22\n",
    )
    assert place(tmp_path, error) == ("r.yaml", 2, 3)
    assert f"{tmp_path / 'policy.yaml'}:3:3" in error.message


def test_an_interfaces_clash_with_a_define_names_both_files(tmp_path: Path) -> None:
    error = error_of(
        tmp_path,
        "    - {include: r.yaml}\n",
        {"r.yaml": "interfaces:\n  ssh: eth0\n"},
        head="define:\n  ssh: 22\n",
    )
    assert place(tmp_path, error) == ("r.yaml", 2, 3)
    assert "under 'define' at" in error.message and "policy.yaml:3:3" in error.message


@pytest.mark.parametrize("where", ["notrack", "nat"])
def test_include_items_belong_in_chains(tmp_path: Path, where: str) -> None:
    section = "conntrack:\n  notrack:\n" if where == "notrack" else "nat:\n"
    indent = "    " if where == "notrack" else "  "
    path = write_policy(tmp_path, f"nfc: 1\n{section}{indent}- {{include: r.yaml}}\n")
    with pytest.raises(PolicyError, match="splices rules into a chain's 'rules'"):
        load_policy(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nfc: 1\ninclude: [r.yaml]\n", "'rules' belong in a chain, not in a file under include"),
        ("nfc: 1\nrules: []\n", "'rules' belong in a chain"),
    ],
)
def test_rules_outside_a_chain_point_to_the_splice(tmp_path: Path, text: str, message: str) -> None:
    write_policy(tmp_path, "rules:\n  - accept\n", "r.yaml")
    with pytest.raises(PolicyError) as raised:
        load_policy(write_policy(tmp_path, text))
    assert raised.value.message == message and raised.value.loc.col == 1
    hint = raised.value.hint
    assert hint is not None and "with an item {include: FILE} in its 'rules'" in hint


def test_lint_findings_name_the_included_file(tmp_path: Path) -> None:
    write_policy(tmp_path, "rules:\n  - {rule: accept tcp dport 8080, expires: 2020-01-01}\n", "r.yaml")
    path = write_policy(tmp_path, policy("    - accept tcp dport 22\n    - {include: r.yaml}\n"))
    findings = api.lint([str(path)], today=dt.date(2026, 1, 1))
    expired = [f for f in findings if "expire" in f.message]
    assert expired and all(f.loc.file == str(tmp_path / "r.yaml") and f.loc.line == 2 for f in expired)
