"""nfc diff: the effective change of a policy edit, per chain, over the
match space: reorders that change nothing report nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nfc import vocab
from nfc.diff import diff
from nfc.errors import Loc
from nfc.parse import parse_entry

from conftest import run_nfc
from helpers import ruleset_of

HEAD = "nfc: 1\ninput:\n  policy: drop\n  rules:\n"


def changes(
    tmp_path: Path, old_rules: str, new_rules: str, extra_old: str = "", extra_new: str = ""
) -> list[str]:
    (tmp_path / "old").mkdir(exist_ok=True)
    (tmp_path / "new").mkdir(exist_ok=True)
    old = ruleset_of(tmp_path / "old", extra_old + HEAD + old_rules)
    new = ruleset_of(tmp_path / "new", extra_new + HEAD + new_rules)
    return [f"{c.section}: {c.kind} {c.what} (was: {c.was})" for c in diff(old, new)]


TABLE = [
    # (old rules, new rules, expected changes)
    (
        "    - accept tcp dport 22 from 192.0.2.10\n    - accept udp dport 53\n",
        "    - accept udp dport 53\n    - accept tcp dport 22 from 192.0.2.10\n",
        [],
    ),
    (
        "    - accept tcp dport {80, 443}\n",
        "    - accept tcp dport 443\n    - accept tcp dport 80\n",
        [],
    ),
    (
        "    - accept tcp dport 22 from 192.0.2.10\n",
        "    - accept tcp dport 22\n",
        [
            "input: newly ACCEPTS ip tcp dport 22 from not 192.0.2.10 ct state new,untracked (was: DROP)",
            "input: newly ACCEPTS ip6 tcp dport 22 ct state new,untracked from any (was: DROP)",
        ],
    ),
    (
        "    - accept tcp dport 80\n",
        "    - accept ip tcp dport 80\n",
        ["input: newly DROPS ip6 tcp dport 80 ct state new,untracked from any (was: ACCEPT)"],
    ),
    (
        "    - accept tcp dport 80\n    - drop tcp dport 80 from 10.0.0.0/8\n",
        "    - drop tcp dport 80 from 10.0.0.0/8\n    - accept tcp dport 80\n",
        ["input: newly DROPS ip tcp dport 80 from 10.0.0.0/8 ct state new,untracked (was: ACCEPT)"],
    ),
    (
        "    - accept tcp dport 25\n",
        "    - reject tcp dport 25\n",
        [
            "input: newly REJECTS ip tcp dport 25 ct state new,untracked from any (was: ACCEPT)",
            "input: newly REJECTS ip6 tcp dport 25 ct state new,untracked from any (was: ACCEPT)",
        ],
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), TABLE)
def test_effective_changes(tmp_path: Path, old: str, new: str, expected: list[str]) -> None:
    assert changes(tmp_path, old, new) == expected


def test_untracked_meters_and_sysctls(tmp_path: Path) -> None:
    found = changes(
        tmp_path,
        "    - drop udp dport 53 limit over 10/second per saddr/32,/64 name dns\n",
        "    - drop udp dport 53 limit over 50/second per saddr/32,/64 name dns\n",
        extra_old="conntrack: {notrack: [udp dport 53], max: 1000}\n",
        extra_new="conntrack: {notrack: [udp dport 53, udp sport 123 dport 1024-65535], max: 2000}\n",
    )
    assert (
        "notrack prerouting: newly UNTRACKED: ip udp sport 123 dport 1024-65535 from any (was: tracked)"
        in found
    )
    assert any(line.startswith("meter: dns (ipv4): over 50/second") for line in found)
    assert "conntrack: net.netfilter.nf_conntrack_max: 2000 (was: 1000)" in found
    # the new entry's answers are accepted in input now, untracked
    assert any(line.startswith("input: newly ACCEPTS ip udp sport 123 dport 1024-65535") for line in found)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, timeout=30)


def test_base_revision_and_formats(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "fw").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.invalid")
    _git(repo, "config", "user.name", "t")
    policy = repo / "fw" / "host.yaml"
    (repo / "fw" / "common.yaml").write_text("define: {admins: 192.0.2.10}\n")
    policy.write_text(
        HEAD.replace("nfc: 1\n", "nfc: 1\ninclude: [common.yaml]\n")
        + "    - accept tcp dport 22 from $admins\n"
    )
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    assert run_nfc("diff", "--base", "HEAD", str(policy), "--exit-code").returncode == 0
    policy.write_text(policy.read_text() + "    - accept tcp dport 443\n")
    result = run_nfc("diff", "--base", "HEAD", str(policy), "--exit-code")
    assert result.returncode == 1
    assert "input: newly ACCEPTS ip tcp dport 443" in result.stdout
    markdown = run_nfc("diff", "--base", "HEAD", str(policy), "--format", "markdown").stdout
    assert markdown.startswith("### nfc diff") and "`ip tcp dport 443" in markdown
    data = json.loads(run_nfc("diff", "--base", "HEAD", str(policy), "--format", "json").stdout)
    assert {d["change"] for d in data} == {"newly ACCEPTS"}
    missing = run_nfc("diff", "--base", "no-such-rev", str(policy))
    assert missing.returncode == 2 and "no-such-rev" in missing.stderr


def test_base_reads_a_repository_of_odd_names_and_links(tmp_path: Path) -> None:
    """Any YAML file of the repository named with a space (the listing was
    split at whitespace: exit 2 for every policy), a policy named with a
    non-ASCII letter (quoted by git: left out), a link out of the repository
    (tarfile refused it: exit 70), and a revision git would read as an option."""
    repo = tmp_path / "repo"
    (repo / "my fw").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.invalid")
    _git(repo, "config", "user.name", "t")
    policy = repo / "my fw" / "hôte.yaml"
    (repo / "my fw" / "common.yaml").write_text("define: {admins: 192.0.2.10}\n")
    policy.write_text(HEAD.replace("nfc: 1\n", "nfc: 1\ninclude: [common.yaml]\n"))
    (repo / "passwd.yaml").symlink_to("/etc/passwd")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    policy.write_text(policy.read_text() + "    - accept tcp dport 443\n")
    result = run_nfc("diff", "--base", "HEAD", str(policy))
    assert result.returncode == 0, result.stderr
    assert "input: newly ACCEPTS ip tcp dport 443" in result.stdout
    option = run_nfc("diff", f"--base=--output={tmp_path / 'written'}", str(policy))
    assert option.returncode == 2
    assert option.stderr == f"nfc: error: '--output={tmp_path}/written' is not a git revision\n"
    assert not (tmp_path / "written").exists()


def rule_text_of(description: str) -> list[str]:
    """The parts of a description that are rule-language matches: the text
    before 'except' and each exception, 'from any' (the diff's reminder)
    dropped."""
    head, *exceptions = description.split(" except ")
    return [head.replace(" from any", ""), *(e for part in exceptions for e in part.split(" and "))]


PAIRS = [
    # the case: loopback named in the old policy, a drop removed
    (
        "    - accept iif lo\n    - drop from 203.0.113.0/24\n    - accept\n",
        "    - accept iif lo\n    - accept\n",
    ),
    ("    - drop from 203.0.113.0/24\n    - accept\n", "    - accept\n"),
    ("    - accept icmpv6 type echo-request\n    - accept icmp\n", "    - accept icmp\n"),
    ("    - accept iif eth0\n", "    - accept\n"),
    ("    - accept tcp dport 22\n", "    - accept tcp dport 22\n    - accept udp\n"),
    ("    - drop ip6 from 2001:db8::/32\n    - accept\n", "    - accept\n"),
]


@pytest.mark.parametrize(("old", "new"), PAIRS)
def test_every_description_is_rule_language_of_its_family(tmp_path: Path, old: str, new: str) -> None:
    found = changes(tmp_path, old, new)
    assert found, "each pair changes something"
    for line in found:
        description = line.split(": ", 1)[1].split(" ", 2)[2].rsplit(" (was: ", 1)[0]
        assert "*other*" not in description, line
        family = description.split()[0]
        names = vocab.ICMPV6_TYPES if family == "ip6" else vocab.ICMP_TYPES
        other_names = set(vocab.ICMPV6_TYPES if family == "ip" else vocab.ICMP_TYPES) - set(names)
        assert not any(name in description.split(" ")[-1].split(",") for name in other_names), line
        assert ("icmpv6" in description.split()) <= (family == "ip6"), line
        for text in rule_text_of(description):
            entry = text if text.startswith(("ip ", "ip6 ")) else f"{family} {text}"
            parse_entry(entry, lambda line, col: Loc("<diff>", line, col))  # raises if not rule language
