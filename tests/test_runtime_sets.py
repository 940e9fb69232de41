"""Runtime sets (`sets:`): their declarations, the rules that use them, the
nft sets they become, what the manifest says of them, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nfc import api, cli
from nfc.backends import iptables
from nfc.errors import PolicyError
from nfc.ir import Family
from nfc.runtime_sets import duration_ms

from helpers import nft_of, ruleset_of, write_policy

POLICY = """
nfc: 1
sets:
  banned: {type: address, timeout: 1h, size: 65536}
  watch: {}
input:
  policy: drop
  rules:
    - drop from $banned
    - accept tcp dport 22 from not $watch
"""


def test_a_set_per_family_declared_empty(tmp_path: Path) -> None:
    nft = nft_of(tmp_path, POLICY)
    assert (
        "\tset banned_v4 {\n\t\ttype ipv4_addr\n\t\tcomment \"nfc runtime set banned\"\n\t\tsize 65536\n"
        "\t\tflags timeout\n\t\ttimeout 3600s\n\t}" in nft
    )
    assert '\tset watch_v6 {\n\t\ttype ipv6_addr\n\t\tcomment "nfc runtime set watch"\n\t}' in nft
    assert "ip saddr @banned_v4 drop" in nft and "ip6 saddr @banned_v6 drop" in nft
    assert "ip saddr != @watch_v4 tcp dport 22 accept" in nft


def test_the_ir_and_the_manifest(tmp_path: Path) -> None:
    ruleset = ruleset_of(tmp_path, POLICY)
    banned = [s for s in ruleset.runtime_sets if s.declared == "banned"]
    assert [(s.name, s.family, s.timeout_ms, s.size) for s in banned] == [
        ("banned_v4", Family.V4, 3_600_000, 65536),
        ("banned_v6", Family.V6, 3_600_000, 65536),
    ]
    rule = ruleset.chains[0].rules[-3]
    assert rule.match.saddr is not None and rule.match.saddr.runtime
    manifest = json.loads(api.build(ruleset, "nft", ())["manifest.json"])
    assert manifest["runtime_sets"] == {
        "banned_v4": True,
        "banned_v6": True,
        "watch_v4": False,
        "watch_v6": False,
    }


def test_iptables_legacy_refuses_a_rule_that_uses_one(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="runtime set") as raised:
        iptables.generate(ruleset_of(tmp_path, POLICY))
    assert raised.value.loc.line == 8


RULE = "input: {{policy: drop, rules: ['{}']}}"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("sets: {banned: {type: adress}}", 2, "adress"),
        ("sets: {banned: {timout: 1h}}", 2, "timout"),
        ("sets: {banned: {timeout: 1y}}", 2, "not a timeout"),
        ("sets: {banned: {timeout: 0}}", 2, "between"),
        ("sets: {banned: {size: 0}}", 2, "size"),
        ("define: {banned: 10.0.0.1}\nsets: {banned: {}}", 3, "defined again"),
        (f"sets: {{banned: {{}}}}\n{RULE.format('drop from {$banned, 10.0.0.1}')}", 3, "is a runtime set"),
        (f"sets: {{banned: {{}}}}\n{RULE.format('drop tcp dport $banned')}", 3, "runtime set"),
    ],
)
def test_mistakes(tmp_path: Path, text: str, line: int, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as raised:
        ruleset_of(tmp_path, f"nfc: 1\n{text}\n")
    assert raised.value.loc.line == line


def test_durations() -> None:
    assert duration_ms("1h30m") == 5_400_000
    assert duration_ms("500ms") == 500
    assert duration_ms("1d") == 86_400_000
    assert duration_ms("10") is None and duration_ms("") is None and duration_ms("\u0661m") is None


def test_nfc_set_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before nfc looks at the kernel."""
    assert cli.main(["set", "add", "banned"]) == 2
    assert cli.main(["set", "add", "banned", "192.0.2.1", "--timeout", "soon"]) == 2
    # longer than the kernel's 2**32-1 ms, as a policy's set timeout: was exit 70 (struct.error)
    for too_long in ("4294968s", "99999999999999h"):
        assert cli.main(["set", "add", "banned", "192.0.2.1", "--timeout", too_long]) == 2
    assert cli.main(["set", "list", "a", "b"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 5 and all(e.startswith("nfc: error: ") for e in errors)
    assert errors[2] == "nfc: error: '4294968s' is not a timeout such as 90s or 10m (at most 4294967s)"


def test_refresh_needs_a_list_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write_policy(tmp_path, POLICY)
    assert cli.main(["refresh", str(policy), "--state-dir", str(tmp_path / "state")]) == 2
    assert "no list file" in capsys.readouterr().err


def test_lint_and_explain_know_the_set_may_be_empty(tmp_path: Path) -> None:
    """A runtime set may hold nothing, so the rules after it are not shadowed,
    and explain decides a packet as if the set did not hold its address."""
    policy = write_policy(tmp_path, POLICY.replace("from not $watch", "").replace("size: 65536", "size: 64"))
    codes = {finding.code for finding in api.lint([str(policy)])}
    assert not codes & {"NFC030", "NFC031"}, codes
    explained = api.explain(str(policy), "tcp 192.0.2.7:40000 > 192.0.2.1:22")
    assert explained.verdict == "accept" and explained.rule is not None and explained.rule.origin.line == 9


def test_a_refresh_whose_record_cannot_be_written_says_the_kernel_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk after the kernel took the new lists: the error says the
    lists are in force, and what boot would load instead."""
    from nfc import refresh
    from nfc.apply import confirmed_path
    from nfc.state import State, StateError

    (tmp_path / "drop.txt").write_text("192.0.2.1\n")
    text = "nfc: 1\ndefine:\n  bad: {file: drop.txt}\n"
    text += "input:\n  policy: accept\n  rules:\n    - drop from $bad\n"
    policy = write_policy(tmp_path, text)
    out = tmp_path / "out"
    assert cli.main(["compile", str(policy), "-o", str(out)]) == 0
    state = State(tmp_path / "state")
    loaded = {"backend": "nft", "table": "nfc", "listing": (out / "ruleset.nft").read_text(), "sysctl": {}}
    state.write(confirmed_path(state), {"action": "apply", "target": str(out), "to": loaded})
    scripts: list[str] = []
    monkeypatch.setattr(refresh, "run_script", scripts.append)
    monkeypatch.setattr(refresh, "_generation", lambda: None)

    def full(self: State, path: Path, data: object) -> None:
        raise StateError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(State, "write", full)
    assert cli.main(["refresh", str(out), "--state-dir", str(state.dir)]) == 2
    assert scripts and "add element inet nfc bad_v4 { 192.0.2.1 }" in scripts[0]
    error = capsys.readouterr().err
    assert error.startswith("nfc: error: the lists are refreshed in the kernel, but cannot write "), error
    assert "No space left on device: 'nfc restore' and a rollback would load them as they were" in error
