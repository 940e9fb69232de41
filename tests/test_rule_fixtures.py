"""One rule per line: tests/fixtures/rules.txt holds a rule and what each
backend must generate for it (its format is described at the top of that
file). A new construct is one line to test, like nftables' tests/py/*.t.

Each rule is compiled alone in an input chain with state, icmp and loopback manual;
then all the rules that compile are put in one policy, which the kernel
validates with both backends in a throwaway namespace."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from nfc.errors import PolicyError

from conftest import iptables_check, nft_check
from helpers import input_policy, iptables_of, nft_of

FIXTURES = Path(__file__).parent / "fixtures" / "rules.txt"
# Every fixture policy has these defines, so that rules can use $names.
DEFINES = (
    "define:\n"
    "  admins: [192.0.2.10, 2001:db8::10]\n"
    "  internal: [10.0.0.0/8, 172.16.0.0/12]\n"
    "  web: [80, 443, 8080-8090]\n"
    "  dns: 53\n"
)
SAME_AS_V4 = "="
NOTHING = "-"
JOIN = " | "
BUG = "bug:"
# The provenance part of a comment: the source position, then ": " and the rest, if any.
PROVENANCE = re.compile(r'( -m comment --comment| comment) "policy\.yaml:\d+(?:"|: )')


@dataclass(frozen=True)
class Fixture:
    number: int  # line in rules.txt
    rule: str
    nft: str = ""
    v4: str = ""
    v6: str = ""
    error: str | None = None  # the compile fails with this
    iptables_error: str | None = None  # only the iptables backend fails, with this
    bug: str | None = None  # a known bug: the expected text is right, nfc is not yet

    @property
    def id(self) -> str:
        return f"{self.number}:{self.rule}"


def read_fixtures(path: Path = FIXTURES) -> list[Fixture]:
    fixtures = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [field.strip() for field in line.split(" ; ")]
        bug = fields.pop()[len(BUG) :].strip() if fields[-1].startswith(BUG) else None
        rule = fields[0]
        if len(fields) == 2 and fields[1].startswith("!"):
            fixtures.append(Fixture(number, rule, error=fields[1][1:].strip(), bug=bug))
            continue
        if len(fields) == 3 and fields[2].startswith("!"):
            fixtures.append(Fixture(number, rule, fields[1], iptables_error=fields[2][1:].strip(), bug=bug))
            continue
        assert len(fields) == 4, f"rules.txt:{number}: not one of the forms its header describes"
        _, nft, v4, v6 = fields
        fixtures.append(Fixture(number, rule, nft, v4, v4 if v6 == SAME_AS_V4 else v6, bug=bug))
    return fixtures


def without_provenance(line: str) -> str:
    """`line` without the comment's source position: each fixture's rule sits
    at the same line, so it says nothing; a comment that said only where the
    rule came from goes entirely."""

    def replace(match: re.Match[str]) -> str:
        return "" if match[0].endswith('"') else f'{match[1]} "'

    return PROVENANCE.sub(replace, line)


def joined(lines: list[str]) -> str:
    return JOIN.join(without_provenance(line) for line in lines) if lines else NOTHING


def nft_rules(nft: str) -> list[str]:
    """The rules of the input chain, without its hook line."""
    chain = nft.split("chain input {", 1)[1].split("\n\t}", 1)[0]
    return [line.strip() for line in chain.strip().splitlines()[1:]]


def append_lines(rules: str) -> list[str]:
    """The `-A` lines of an iptables-restore file's filter table."""
    filter_table = rules.split("*filter\n", 1)[1].split("COMMIT", 1)[0]
    return [line for line in filter_table.splitlines() if line.startswith("-A ")]


def policy_of(*rules: str) -> str:
    return input_policy(*rules, extra=DEFINES)


FIXTURE_LIST = read_fixtures()


def params(fixtures: list[Fixture]) -> list[object]:
    """A known bug is an expected failure, strict: once fixed, its mark must go."""
    return [
        pytest.param(f, id=f.id, marks=[pytest.mark.xfail(reason=f.bug, strict=True)] if f.bug else [])
        for f in fixtures
    ]


@pytest.mark.parametrize("fixture", params(FIXTURE_LIST))
def test_rule_generates_the_expected_text(tmp_path: Path, fixture: Fixture) -> None:
    policy = policy_of(fixture.rule)
    if fixture.error is not None:
        with pytest.raises(PolicyError) as raised:
            nft_of(tmp_path, policy)
        assert fixture.error in raised.value.render()
        return
    assert joined(nft_rules(nft_of(tmp_path, policy))) == fixture.nft
    if fixture.iptables_error is not None:
        with pytest.raises(PolicyError) as raised:
            iptables_of(tmp_path, policy)
        assert fixture.iptables_error in raised.value.render()
        return
    v4, v6 = iptables_of(tmp_path, policy)
    assert joined(append_lines(v4)) == fixture.v4, "iptables v4"
    assert joined(append_lines(v6)) == fixture.v6, "iptables v6"


def test_the_table_covers_the_rule_grammar() -> None:
    """Every keyword of grammar/rules.lark appears in some rule (oif as an
    error: the table's rules sit in the input chain), and there are rules
    that fail, in the compiler and in one backend."""
    grammar = (Path(__file__).parent.parent / "grammar" / "rules.lark").read_text()
    keywords = {
        word
        for quoted in re.findall(r'"([^"]+)"', grammar)
        for word in [quoted]
        if re.fullmatch(r"[a-z]+", word)
    }
    words = {word for f in FIXTURE_LIST for word in re.findall(r"[a-z]+", f.rule)}
    assert keywords - words == set()
    assert sum(f.error is None for f in FIXTURE_LIST) >= 40
    assert any(f.error is not None for f in FIXTURE_LIST)
    assert any(f.iptables_error is not None for f in FIXTURE_LIST)


@pytest.mark.netns
def test_the_kernel_accepts_every_rule_of_the_table(tmp_path: Path) -> None:
    """All the rules that compile (known bugs aside), in one policy (for
    iptables, those it can express): nft -c and iptables-restore --test."""
    compiled = [f for f in FIXTURE_LIST if f.error is None and f.bug is None]
    (tmp_path / "ruleset.nft").write_text(nft_of(tmp_path, policy_of(*(f.rule for f in compiled))))
    v4, v6 = iptables_of(tmp_path, policy_of(*(f.rule for f in compiled if f.iptables_error is None)))
    (tmp_path / "rules.v4").write_text(v4)
    (tmp_path / "rules.v6").write_text(v6)
    for result in (
        nft_check(tmp_path / "ruleset.nft"),
        iptables_check(tmp_path / "rules.v4"),
        iptables_check(tmp_path / "rules.v6"),
    ):
        assert result.returncode == 0, result.stderr
