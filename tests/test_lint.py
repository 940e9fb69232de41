"""Each lint code fires on a minimal policy and stays quiet once the policy
is corrected; the flagship policies lint clean; the output formats are what
editors, GitHub and code scanning read."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jsonschema
import pytest

from nfc.lint import CHECKS, lint, render

from conftest import FLAGSHIP, ROOT, run_nfc
from helpers import ruleset_of

TODAY = dt.date(2026, 11, 24)
SSH = "    - accept tcp dport 22 from 192.0.2.10\n"
BASE = "nfc: 1\ninput:\n  policy: drop\n  rules:\n" + SSH

# code: (policy that must fire it, at this line; the corrected policy)
CASES = {
    "NFC001": (
        BASE + "    - accept udp dport 53\n",
        6,
        "nfc: 1\nconntrack: {notrack: [udp dport 53]}\ninput:\n  policy: drop\n  rules:\n"
        + SSH
        + "    - accept udp dport 53\n",
    ),
    "NFC010": (
        "nfc: 1\nconntrack: {notrack: [udp dport 53]}\ninput:\n  policy: drop\n  rules:\n" + SSH,
        2,
        "nfc: 1\nconntrack: {notrack: [udp dport 53]}\ninput:\n  policy: drop\n  rules:\n"
        + SSH
        + "    - accept udp dport 53 from 10.0.0.0/8\n",
    ),
    "NFC011": (
        "nfc: 1\nconntrack: {notrack: [udp sport 53 dport 1024-65535]}\n"
        "input:\n  policy: drop\n  state: manual\n  rules:\n" + SSH,
        2,
        "nfc: 1\nconntrack: {notrack: [udp sport 53 dport 1024-65535]}\n"
        "input:\n  policy: drop\n  state: manual\n  rules:\n"
        + SSH
        + "    - accept ct state untracked udp sport 53 dport 1024-65535\n",
    ),
    "NFC012": (
        "nfc: 1\nconntrack: {notrack: [udp dport 53]}\ninput:\n  policy: drop\n  state: manual\n  rules:\n"
        + SSH
        + "    - accept ct state untracked\n"
        "    - drop udp dport 53 limit over 10/second per saddr/32,/64\n    - accept udp dport 53\n",
        8,
        "nfc: 1\nconntrack: {notrack: [udp dport 53]}\ninput:\n  policy: drop\n  rules:\n"
        + SSH
        + "    - drop udp dport 53 limit over 10/second per saddr/32,/64\n    - accept udp dport 53\n",
    ),
    "NFC013": (
        "nfc: 1\nconntrack: {notrack: [udp sport 53]}\n",
        2,
        "nfc: 1\nconntrack: {notrack: [udp sport 53 dport 1024-65535]}\n",
    ),
    "NFC020": (
        "nfc: 1\nconntrack: {notrack: [udp dport 53]}\ninput:\n  policy: drop\n  rules:\n"
        + SSH
        + "    - accept udp dport 53\n    - accept udp sport 53 ct state established\n",
        8,
        "nfc: 1\nconntrack: {notrack: [udp dport 53]}\ninput:\n  policy: drop\n  rules:\n"
        + SSH
        + "    - accept udp dport 53\n",
    ),
    "NFC030": (
        BASE + "    - drop tcp dport 1-1000\n    - accept tcp dport 80 from 10.0.0.0/8\n",
        7,
        BASE + "    - accept tcp dport 80 from 10.0.0.0/8\n    - drop tcp dport 1-1000\n",
    ),
    "NFC031": (
        BASE + "    - accept tcp dport 80-90\n    - accept tcp dport 85\n",
        7,
        BASE + "    - accept tcp dport 80-90\n    - accept tcp dport 95\n",
    ),
    "NFC040": (
        BASE + "    - {rule: accept tcp dport 80, expires: 2026-11-01}\n",
        6,
        BASE + "    - {rule: accept tcp dport 80, expires: 2027-06-01}\n",
    ),
    "NFC041": (
        BASE + "    - {rule: accept tcp dport 80, expires: 2026-12-01}\n",
        6,
        BASE + "    - {rule: accept tcp dport 80, expires: 2027-06-01}\n",
    ),
    "NFC050": (
        "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - accept tcp dport 80\n",
        3,
        "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - accept tcp dport 80\n" + SSH,
    ),
    "NFC060": (
        "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - accept tcp dport {22, 5432}\n",
        5,
        "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - accept tcp dport {22, 5432} from 192.0.2.0/24\n",
    ),
    "NFC051": (
        "nfc: 1\ninput:\n  policy: drop\n  loopback: manual\n  rules:\n" + SSH,
        3,  # the chain's section
        "nfc: 1\ninput:\n  policy: drop\n  loopback: manual\n  rules:\n" + SSH + "    - accept iif lo\n",
    ),
    "NFC070": (
        BASE + "    - drop udp dport 53 limit over 10/second per saddr\n",
        6,
        BASE + "    - drop udp dport 53 limit over 10/second per saddr/32,/64\n",
    ),
    "NFC080": (
        BASE + "    - accept from not 0.0.0.0/0\n",
        6,
        BASE + "    - accept from not 10.0.0.0/8\n",
    ),
    "NFC090": (
        "nfc: 1\nnat:\n  - dnat to 192.168.1.10:80 tcp dport 8080 iif eth0\n"
        "forward:\n  policy: drop\n  state: manual\n  rules:\n    - accept ct state established,related\n",
        3,
        "nfc: 1\nnat:\n  - dnat to 192.168.1.10:80 tcp dport 8080 iif eth0\n"
        "forward:\n  policy: drop\n  state: manual\n  rules:\n    - accept ct state established,related\n"
        "    - accept tcp dport 80 to 192.168.1.10\n",
    ),
    "NFC091": (
        "nfc: 1\nnat:\n  - masquerade oif eht0 from 192.168.1.0/24\n"
        "forward:\n  policy: drop\n  rules:\n    - accept iif eth1 oif eth0\n",
        3,
        "nfc: 1\nnat:\n  - masquerade oif eth0 from 192.168.1.0/24\n"
        "forward:\n  policy: drop\n  rules:\n    - accept iif eth1 oif eth0\n",
    ),
    "NFC092": (
        "nfc: 1\nnat:\n  - dnat to 192.168.1.10 tcp dport 8000-8100 iif eth0\n"
        "  - dnat to 192.168.1.11 tcp dport 8080 iif eth0\n",
        4,
        "nfc: 1\nnat:\n  - dnat to 192.168.1.11 tcp dport 8080 iif eth0\n"
        "  - dnat to 192.168.1.10 tcp dport 8000-8100 iif eth0\n",
    ),
    "NFC093": (
        "nfc: 1\nnat:\n  - masquerade from 192.168.1.0/24\n",
        3,
        "nfc: 1\nnat:\n  - masquerade oif eth0 from 192.168.1.0/24\n",
    ),
}


def codes_at(tmp_path: Path, text: str) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for finding in lint(ruleset_of(tmp_path, text), today=TODAY):
        found.setdefault(finding.code, set()).add(finding.loc.line)
    return found


def test_every_check_has_a_case() -> None:
    assert {c.code for c in CHECKS} == set(CASES)
    assert len({c.code for c in CHECKS}) == len(CHECKS)
    assert all(c.rationale and c.severity in ("error", "warning", "note") for c in CHECKS)


@pytest.mark.parametrize("code", sorted(CASES))
def test_fires_then_quiet_when_corrected(tmp_path: Path, code: str) -> None:
    bad, line, good = CASES[code]
    assert line in codes_at(tmp_path, bad).get(code, set())
    assert code not in codes_at(tmp_path, good)


@pytest.mark.parametrize("policy", FLAGSHIP, ids=lambda p: p.stem)
def test_flagships_lint_clean(policy: Path) -> None:
    result = run_nfc("lint", str(policy))
    assert (result.returncode, result.stdout) == (0, "")


def test_reordering_that_changes_nothing_changes_no_finding(tmp_path: Path) -> None:
    first = codes_at(tmp_path, BASE + "    - accept tcp dport 80\n    - accept udp dport 53\n")
    second = codes_at(tmp_path, BASE + "    - accept udp dport 53\n    - accept tcp dport 80\n")
    assert first.keys() == second.keys()


def _bad_policy(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(CASES["NFC030"][0])
    return path


def test_exit_codes_and_text(tmp_path: Path) -> None:
    result = run_nfc("lint", str(_bad_policy(tmp_path)), "--today", "2026-11-24")
    assert result.returncode == 1
    assert f"{tmp_path / 'bad.yaml'}:7:7: error: NFC030" in result.stdout
    warnings_only = tmp_path / "warn.yaml"
    warnings_only.write_text(CASES["NFC001"][0])
    assert run_nfc("lint", str(warnings_only)).returncode == 0


def test_github_format(tmp_path: Path) -> None:
    out = run_nfc("lint", str(_bad_policy(tmp_path)), "--format", "github").stdout
    assert f"::error file={tmp_path / 'bad.yaml'},line=7,col=7,title=NFC030::" in out


def test_sarif_is_valid_sarif_2_1_0(tmp_path: Path) -> None:
    out = run_nfc("lint", str(_bad_policy(tmp_path)), "--format", "sarif").stdout
    document = json.loads(out)
    schema = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())
    jsonschema.validate(document, schema)
    (result,) = [r for r in document["runs"][0]["results"] if r["ruleId"] == "NFC030"]
    assert result["locations"][0]["physicalLocation"]["region"]["startLine"] == 7
    rules = document["runs"][0]["tool"]["driver"]["rules"]
    assert rules[result["ruleIndex"]]["id"] == "NFC030"


def test_json_format(tmp_path: Path) -> None:
    data = json.loads(run_nfc("lint", str(_bad_policy(tmp_path)), "--format", "json").stdout)
    assert any(d["code"] == "NFC030" and d["line"] == 7 and d["severity"] == "error" for d in data)


def test_render_is_deterministic(tmp_path: Path) -> None:
    findings = lint(ruleset_of(tmp_path, CASES["NFC060"][0]), today=TODAY)
    assert render(findings, "text") == render(list(findings), "text")


@pytest.mark.parametrize(
    ("rule", "fires"),
    [
        ("accept from 127.0.0.0/8", False),
        ("accept ip6 to ::1", False),
        ("accept iif lo*", False),
        ("accept from not 127.0.0.0/8", True),  # an IPv4 list makes the rule IPv4-only
        ("accept from not 10.0.0.0/8", False),
        ("accept iif eth0", True),
        ("drop iif lo", True),
    ],
)
def test_loopback_dropped_asks_if_the_host_can_reach_itself(tmp_path: Path, rule: str, fires: bool) -> None:
    policy = f"nfc: 1\ninput:\n  policy: drop\n  loopback: manual\n  rules:\n    - {rule}\n"
    assert ("NFC051" in codes_at(tmp_path, policy)) is fires


@pytest.mark.parametrize(
    ("ports", "named"),
    [("53", "DNS (udp 53)"), ("{53, 123}", "DNS, NTP (udp {53, 123})"), ("{53, 67}", "udp dport {53, 67}")],
)
def test_stateful_udp_names_a_service_only_for_its_own_ports(tmp_path: Path, ports: str, named: str) -> None:
    policy = f"nfc: 1\ninput:\n  policy: drop\n  rules:\n    - accept udp dport {ports}\n"
    (finding,) = [f for f in lint(ruleset_of(tmp_path, policy), today=TODAY) if f.code == "NFC001"]
    assert finding.message.startswith(f"{named} is accepted with connection tracking")
